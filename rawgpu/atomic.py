"""Atomic file writes: whatever is saved is complete, or not there at all.

Every file rawgpu writes (checkpoints, IDX files, downloads, plots, benchmark results) goes to a
temporary file in the destination's folder and is renamed over the destination only once it is
complete and flushed to disk. A rename within one folder is atomic, so a crash, a full disk or a
Ctrl-C leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


def file_mode() -> int:
    """The mode a plainly created file gets (0o666 less the umask); mkstemp's own is 0o600."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_file(path, mode: str = "wb", *, suffix: str = ".tmp"):
    """``with atomic_file(path) as fh: fh.write(...)``: ``path`` appears only when the block succeeds."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix, dir=folder)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
