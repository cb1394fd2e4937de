"""Atomic file writes: whatever is saved is complete, or not there at all.

Every file rawgpu writes (checkpoints, IDX files, downloads, plots, benchmark results) goes to a
temporary file in the destination's folder and is renamed over the destination only once it is
complete and flushed to disk. A rename within one folder is atomic, so a crash, a full disk or a
Ctrl-C leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import re
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


def _temp_pattern(basename: str, suffix: str):
    # mkstemp names: the prefix, eight random letters, digits or underscores, the suffix.
    return re.compile(r"\." + re.escape(basename) + r"\.[A-Za-z0-9_]{8}" + re.escape(suffix) + r"\Z")


def remove_stale_temps(path, *, older_than: float, now: float, suffix: str = ".tmp") -> list[str]:
    """Delete the temporary files that interrupted writes of ``path`` left beside it.

    Only files named the way :func:`atomic_file` (or the downloader, ``suffix=".part"``) names
    them for this very ``path``, and only those last modified more than ``older_than`` seconds
    before ``now``. Returns the paths removed.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    pattern = _temp_pattern(os.path.basename(path), suffix)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not pattern.match(name):
            continue
        full = os.path.join(folder, name)
        try:
            st = os.lstat(full)
            if os.path.isfile(full) and not os.path.islink(full) and now - st.st_mtime >= older_than:
                os.unlink(full)
                removed.append(full)
        except OSError:
            pass  # gone already, or not ours to remove
    return removed
