"""What a training run writes, checked before any work: nothing lost, nothing clobbered.

A run writes up to four things: the metrics file, the plot, the checkpoint folder and (where
asked) a TensorBoard folder. Before the data is even copied to the engine, each is checked:

* an existing output must be a plain, writable file: a symbolic link is refused (rawgpu never
  writes through a link, and an atomic rename would replace the link itself), and so are a
  folder, a device, a pipe and a file whose mode bits make it read-only, even for root;
* an existing metrics file or plot must be one rawgpu wrote (JSON lines of epochs, a PNG), so a
  mistyped ``--metrics README.md`` cannot destroy someone's work;
* no two outputs may be the same file, and no output may be one of the run's input files;
* every output folder must exist and take a new file (tried for real: as root ``os.access`` says
  yes to everything).

The checkpoint folder is held with an exclusive lock (:class:`FolderLock`) for the whole run, so
a second run on the same folder is refused at once, naming the first one's process id. Holding
the lock, a run may safely remove the temporary files a killed run of ours left behind.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
import time

from rawgpu.atomic import remove_stale_temps

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LOCK_NAME = ".rawgpu.lock"


class OutputError(ValueError):
    """An output path that cannot be used; the message names the flag, the path and the fix."""


def _describe(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _probe_folder(folder: str, flag: str, path) -> None:
    """Fail unless a new file can really be created in ``folder`` (and remove it again)."""
    if not os.path.isdir(folder):
        what = "does not exist" if not os.path.exists(folder) else "is not a folder"
        raise OutputError(f"{flag} {path}: the folder {folder} {what}; create it first or choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".rawgpu-probe.", dir=folder)
    except OSError as exc:
        raise OutputError(f"{flag} {path}: cannot write into the folder {folder} ({exc.strerror or exc}); choose a writable folder") from None
    os.close(fd)
    os.unlink(probe)


def _looks_like_metrics(path: str) -> bool:
    with open(path, "rb") as fh:
        first = fh.readline(1 << 16).strip()
    if not first:
        return True  # an empty file: nothing to lose
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and "epoch" in record


def _looks_like_png(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(len(PNG_MAGIC))
    return head in (b"", PNG_MAGIC)


_KINDS = {"metrics": (_looks_like_metrics, "a rawgpu metrics file (JSON lines of epochs)"), "plot": (_looks_like_png, "a PNG")}


def check_file(path, flag: str, kind: str | None = None) -> str | None:
    """Check one output file path (``None`` means no output); return it as a string."""
    if path is None:
        return None
    path = os.fspath(path)
    if not path.strip():
        raise OutputError(f"{flag} needs a file name, got an empty string")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(f"{flag} {path}: cannot be used ({exc.strerror or exc}); choose another path") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise OutputError(
                f"{flag} {path} is a symbolic link; rawgpu never writes through or replaces a link: "
                f"give the path it points to ({os.path.realpath(path)}) or another name"
            )
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{flag} {path} is {_describe(st.st_mode)}, not a file; give a file name")
        if not st.st_mode & 0o222:
            raise OutputError(
                f"{flag} {path} is read-only (mode {stat.filemode(st.st_mode)}); make it writable (chmod u+w) or choose another name"
            )
        if kind is not None and st.st_size:
            looks_right, what = _KINDS[kind]
            if not looks_right(path):
                raise OutputError(
                    f"{flag} {path} already exists and is not {what}; rawgpu will not replace it: delete it or choose another name"
                )
    _probe_folder(os.path.dirname(os.path.abspath(path)) or ".", flag, path)
    return path


def prepare_folder(path, flag: str) -> str | None:
    """Create the output folder ``path`` if needed and check it takes files; return it."""
    if path is None:
        return None
    path = os.fspath(path)
    if not path.strip():
        raise OutputError(f"{flag} needs a folder name, got an empty string")
    if os.path.islink(path):
        raise OutputError(f"{flag} {path} is a symbolic link; give the folder it points to ({os.path.realpath(path)})")
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{flag} {path} is a file, not a folder; give a folder name")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{flag} {path}: cannot create the folder ({exc.strerror or exc}); choose another path") from None
    _probe_folder(path, flag, path)
    return path


def _identity(path: str):
    """What makes two paths the same file: the inode where it exists, else the resolved path."""
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.realpath(path))


def check_distinct(outputs: dict, inputs: dict) -> None:
    """No two outputs are one file, and no output is an input.

    ``outputs``: flag -> path (None entries are skipped); ``inputs``: what -> path of every file
    the run reads.
    """
    seen: dict = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        key = _identity(path)
        if key in seen:
            raise OutputError(f"{seen[key]} and {flag} are the same file ({path}); give each output its own name")
        seen[key] = flag
    for what, path in inputs.items():
        flag = seen.get(_identity(os.fspath(path)))
        if flag is not None:
            raise OutputError(
                f"{flag} {outputs[flag]} is the run's input {what} ({path}); writing it would destroy the data: choose another name"
            )


class FolderLock:
    """An exclusive lock on a folder, held until :meth:`release` or the process ends.

    ``flock`` on a lock file in the folder: the kernel drops it when the process dies, even by
    SIGKILL, so a killed run never leaves a stale lock. The holder writes its process id into
    the file so a refused run can say who holds it.
    """

    def __init__(self, folder: str, flag: str):
        import fcntl

        self.path = os.path.join(folder, LOCK_NAME)
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise OutputError(f"{flag} {folder}: cannot create the lock file {self.path} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise OutputError(
                f"{flag} {folder} is in use by another rawgpu run (process {holder}); "
                f"wait for it to finish, or use another folder"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def clean_stale_temps(path, *, locked: bool) -> list[str]:
    """Remove temporary files that an interrupted write of ``path`` left in its folder.

    Holding the run's lock (``locked``), every one of ours is stale. Without it another run might
    be writing one right now, so only those untouched for ten minutes go.
    """
    return remove_stale_temps(path, older_than=0.0 if locked else 600.0, now=time.time())

