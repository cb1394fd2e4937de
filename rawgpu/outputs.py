"""What a training run writes, checked before any work: nothing lost, nothing clobbered.

A run writes up to four things: the metrics file, the plot, the checkpoint folder and (where
asked) a TensorBoard folder. Before the data is even copied to the engine, each is checked:

* a file's name must be a file's (no trailing slash), and the filesystem must take the name of
  the temporary file it is written through (``.NAME.XXXXXXXX.tmp``, 14 bytes longer): that very
  name is created and removed, so a name too long or with a character the filesystem cannot
  store fails now, not after training (nor on a later ``--resume``);
* an existing output must be a plain, writable file: a symbolic link is refused (rawgpu never
  writes through a link, and an atomic rename would replace the link itself), and so are a
  folder, a device, a pipe and a file whose mode bits make it read-only, even for root;
* an existing metrics file must be one rawgpu wrote, every line of it
  (:mod:`rawgpu.metrics_file`), and an existing plot must be a PNG carrying the text
  ``Software: rawgpu`` (any PNG with ``--overwrite``), so a mistyped ``--metrics README.md``
  cannot destroy someone's work;
* no two outputs may be the same file, and no output may be one of the run's input files;
* every output folder must exist and take a new file (tried for real: as root ``os.access`` says
  yes to everything).

The metrics file, the checkpoint folder and the TensorBoard folder are each held with an
exclusive lock (:class:`PathLock`) for the whole run, so a second run on any of them is refused
at once, naming the first one's process id. Holding the lock, a run may safely remove the
temporary files a killed run of ours left behind. An OS error while writing (a full disk, say)
becomes one line naming the output and what to do (:func:`writing`).
"""

from __future__ import annotations

import errno
import contextlib
import os
import socket
import stat
import tempfile
import time

from rawgpu import metrics_file
from rawgpu.atomic import remove_stale_temps

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOT_SOFTWARE = "rawgpu"  # the PNG text chunk "Software" of every plot rawgpu writes begins so
LOCK_NAME = ".rawgpu.lock"
#: How much longer than a file's name is the name of the temporary file it is written through:
#: "." + name + "." + eight random characters + ".tmp" (see rawgpu.atomic.atomic_file).
TEMP_EXTRA = 14


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


def _probe_folder(folder: str, flag: str, path, *, prefix: str = ".rawgpu-probe.", suffix: str = "") -> None:
    """Fail unless a new file can really be created in ``folder`` (and remove it again).

    Files are probed under the very name form of the temporary file rawgpu will write them
    through, so a name the filesystem refuses (too long, a character it cannot store) fails now.
    """
    if not os.path.isdir(folder):
        what = "does not exist" if not os.path.exists(folder) else "is not a folder"
        raise OutputError(f"{flag} {path}: the folder {folder} {what}; create it first or choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    except OSError as exc:
        raise OutputError(f"{flag} {path}: cannot create a file like {prefix}XXXXXXXX{suffix} in {folder} ({exc.strerror or exc}); {_advice(exc)}") from None
    os.close(fd)
    os.unlink(probe)


def _metrics_problem(path: str, overwrite: bool) -> str | None:
    problem = metrics_file.file_problem(path)
    return f"is not a rawgpu metrics file ({problem}); rawgpu will not replace it: delete it or choose another name" if problem else None


def _png_text(path: str) -> dict | None:
    """The text chunks (tEXt) of the PNG at ``path`` before its image data, or None if not a PNG."""
    with open(path, "rb") as fh:
        if fh.read(len(PNG_MAGIC)) != PNG_MAGIC:
            return None
        text = {}
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return text
            length, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind in (b"IDAT", b"IEND") or length > 1 << 20:
                return text  # text chunks that matter come before the image data
            body = fh.read(length)
            fh.read(4)  # the CRC
            if kind == b"tEXt" and b"\0" in body:
                key, _, value = body.partition(b"\0")
                text[key.decode("latin-1")] = value.decode("latin-1")


def _plot_problem(path: str, overwrite: bool) -> str | None:
    text = _png_text(path)
    if text is None:
        return "is not a PNG; rawgpu will not replace it: delete it or choose another name"
    if text.get("Software", "").startswith(PLOT_SOFTWARE) or overwrite:
        return None
    return "is a PNG that rawgpu did not write (it has no 'Software: rawgpu' text); replace it with --overwrite, or choose another name"


# kind -> check(path, overwrite): why an existing file of that kind may not be replaced, or None.
# (--overwrite lets a plot replace another program's PNG; a metrics file is never anyone else's.)
_CONTENT_CHECKS = {"metrics": _metrics_problem, "plot": _plot_problem}


def _check_name(path: str, flag: str) -> None:
    """A name that can be a file, and whose temporary sibling the filesystem takes too."""
    base = os.path.basename(path)
    if base in ("", ".", ".."):
        raise OutputError(f"{flag} {path} names a folder (it ends in {base or '/'}); give a file name")
    folder = os.path.dirname(os.path.abspath(path)) or "."
    # NAME_MAX counts the bytes of a name; PATH_MAX counts a path's terminating NUL byte too.
    limits = (("PC_NAME_MAX", len(os.fsencode(base)), "name", 0), ("PC_PATH_MAX", len(os.fsencode(os.path.abspath(path))), "path", 1))
    for limit_name, length, what, nul in limits:
        try:
            limit = os.pathconf(folder, limit_name) - nul
        except (OSError, ValueError):
            continue  # no such folder (said below), or no limit to tell
        if limit > 0 and length + TEMP_EXTRA > limit:
            raise OutputError(
                f"{flag} {path}: the {what} is {length} bytes long, and rawgpu writes through a temporary file "
                f"beside it whose {what} is {TEMP_EXTRA} bytes longer, more than this filesystem's {limit}: "
                f"choose a {what} of at most {limit - TEMP_EXTRA} bytes"
            )


def check_file(path, flag: str, kind: str | None = None, *, overwrite: bool = False) -> str | None:
    """Check one output file path (``None`` means no output); return it as a string.

    ``kind`` ("metrics", "plot") also checks that an existing file is one rawgpu wrote;
    ``overwrite`` lets a plot replace a PNG of someone else's.
    """
    if path is None:
        return None
    path = os.fspath(path)
    if not path.strip():
        raise OutputError(f"{flag} needs a file name, got an empty string")
    _check_name(path, flag)
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
            raise OutputError(
                f"{flag} {path} is {_describe(st.st_mode)}, not a regular file; rawgpu reads and writes only "
                f"regular files (it never opens one that could block or replaces one that is not a file): remove it or choose another path"
            )
        if not st.st_mode & 0o222:
            raise OutputError(
                f"{flag} {path} is read-only (mode {stat.filemode(st.st_mode)}); make it writable (chmod u+w) or choose another name"
            )
        if kind is not None and st.st_size:
            problem = _CONTENT_CHECKS[kind](path, overwrite)
            if problem:
                raise OutputError(f"{flag} {path} already exists and {problem}")
    _probe_folder(os.path.dirname(os.path.abspath(path)) or ".", flag, path, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
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
    # The longest name rawgpu writes in an output folder: a TensorBoard event file's
    # (events.out.tfevents.<time>.<host>.<pid>.<n>); the checkpoint's temporary file is shorter.
    longest = len(f"events.out.tfevents.{0:010d}.{socket.gethostname()}.{2**22}.{999}")
    _probe_folder(path, flag, path, prefix=".rawgpu-probe." + "x" * max(0, longest - 22))
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


class PathLock:
    """An exclusive lock on one output, held until :meth:`release` or the process ends.

    ``flock`` on an open descriptor of a lock file beside (or in) the output: the kernel drops it
    when the process dies, even by SIGKILL, so a killed run never leaves a stale lock. The holder
    writes its process id into the file so a refused run can say who holds it, and removes the
    file when it lets go.

    Removing a lock file does not unlock anything, so two things make sure the lock cannot be
    defeated by an unlink. Taking it: once locked, the name must still lead to the file that was
    locked (a holder that just let go removed it; then the new one is tried). Holding it:
    :meth:`verify` (called before every write of the run) checks the same; if someone removed or
    replaced the file, another run may have taken the lock since, so this run stops before it
    writes anything more.
    """

    held: list = []  # the locks this process holds, for verify_held()

    def __init__(self, lock_path: str, flag: str, target: str, *, tries: int = 20):
        import fcntl

        self.path, self.flag, self.target, self.fd = lock_path, flag, target, None
        for _ in range(tries):
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise OutputError(f"{flag} {target}: cannot create the lock file {lock_path} ({exc.strerror or exc}); choose a writable place") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputError(f"{flag} {target}: cannot lock {lock_path} ({exc.strerror or exc}); choose another place") from None
                raise OutputError(
                    f"{flag} {target} is in use by another rawgpu run (process {holder}); wait for it to finish, or choose another"
                ) from None
            self.fd = fd
            if self._still_ours():
                break
            os.close(fd)  # we locked a file its holder removed on letting go: lock the new one
            self.fd = None
        else:
            raise OutputError(f"{flag} {target}: its lock file {lock_path} keeps changing under rawgpu; is another run starting? try again")
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds all the same, a refused run just cannot name us
        PathLock.held.append(self)

    def _still_ours(self) -> bool:
        """Does the lock file's name still lead to the file this lock holds?"""
        try:
            named = os.lstat(self.path)
        except OSError:
            return False
        mine = os.fstat(self.fd)
        return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)

    def verify(self) -> None:
        if self.fd is not None and not self._still_ours():
            raise OutputError(
                f"{self.flag} {self.target}: its lock file {self.path} was removed or replaced while this run held it, "
                f"so another run may be writing there now; this run stopped before writing more (what it saved is complete)"
            )

    @classmethod
    def verify_held(cls) -> None:
        """Before a write: every lock this process holds is still in place (see :meth:`verify`)."""
        for lock in cls.held:
            lock.verify()

    def release(self) -> None:
        if self.fd is not None:
            if self._still_ours():
                with contextlib.suppress(OSError):  # tidying up: a file left behind locks nothing
                    os.unlink(self.path)  # while still locked: a waiter that opened it sees it gone and retries
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None
            PathLock.held.remove(self)


class FolderLock(PathLock):
    """The lock of an output folder (checkpoints, TensorBoard): a file ``.rawgpu.lock`` in it."""

    def __init__(self, folder: str, flag: str):
        super().__init__(os.path.join(folder, LOCK_NAME), flag, folder)


def file_lock_path(path: str) -> str:
    """The lock file of an output file: ``.NAME.rawgpu.lock`` beside it (shorter than its temporary files' names)."""
    return os.path.join(os.path.dirname(os.path.abspath(path)), "." + os.path.basename(path) + LOCK_NAME)


def lock_outputs(files: dict, folders: dict) -> list:
    """Lock every output of a run: ``files`` and ``folders`` are flag -> path (None: no such output).

    Two flags naming one folder share one lock (flock refuses a second lock on one file even
    within a process). If any lock is refused, those already taken are let go.
    """
    wanted = [(file_lock_path(p), flag, p) for flag, p in files.items() if p is not None]
    wanted += [(os.path.join(p, LOCK_NAME), flag, p) for flag, p in folders.items() if p is not None]
    locks, seen = [], set()
    try:
        for lock_path, flag, target in wanted:
            key = os.path.realpath(lock_path)
            if key not in seen:
                seen.add(key)
                locks.append(PathLock(lock_path, flag, target))
    except BaseException:
        release_all(locks)
        raise
    return locks


def release_all(locks: list) -> None:
    for lock in reversed(locks):
        lock.release()


_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space or choose another folder",
    errno.EDQUOT: "the disk quota is used up: free some space or choose another folder",
    errno.EROFS: "the filesystem is read-only: choose another folder",
    errno.EACCES: "permission denied: make it writable or choose another path",
    errno.EPERM: "the operation is not permitted there: choose another path",
    errno.EISDIR: "a folder is in the way: give a file name",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.ENAMETOOLONG: "the name is too long for this filesystem: choose a shorter one",
    errno.EINVAL: "the filesystem refused it (invalid argument: often a character it cannot store in a name): choose another name or folder",
    errno.EIO: "the disk reported an input/output error: check the disk, or choose another folder",
}


@contextlib.contextmanager
def writing(flag: str, path):
    """Turn an OS error while writing output ``path`` into one line that names it and says what to do.

    Writes are atomic (a temporary file renamed into place), so whatever was saved before the
    failed write is still whole; the message says so.
    """
    try:
        yield
    except OSError as exc:
        raise OutputError(f"{flag} {path}: writing it failed ({exc.strerror or exc}); {_advice(exc)}. What was saved before is complete") from None


def _advice(exc: OSError) -> str:
    return _ADVICE.get(exc.errno, "choose another path")


def clean_stale_temps(path, *, locked: bool) -> list[str]:
    """Remove temporary files that an interrupted write of ``path`` left in its folder.

    Holding the run's lock (``locked``), every one of ours is stale. Without it another run might
    be writing one right now, so only those untouched for ten minutes go.
    """
    return remove_stale_temps(path, older_than=0.0 if locked else 600.0, now=time.time())

