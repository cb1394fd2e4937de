"""Downloads that are verified before use, and the cache they land in.

A file is streamed from the first mirror that works into a temporary file in the folder where
it will live, hashed on the way, and renamed into place only when its SHA-256 matches the
digest written in the code. A failed, interrupted or mismatched download leaves nothing
behind: not the file, not the temporary file. Mirrors are tried in order; when all fail the
error names the file and what went wrong with each mirror.

The cache folder is ``$RAWGPU_CACHE_DIR``, else ``$XDG_CACHE_HOME/rawgpu``, else
``~/.cache/rawgpu``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from rawgpu.atomic import file_mode, remove_stale_temps
from rawgpu.data.errors import DataError

CHUNK = 1 << 16
DEFAULT_TIMEOUT = 30.0  # seconds without a byte before a mirror counts as failed
DEFAULT_MAX_BYTES = 256 << 20  # no dataset file here is anywhere near this
STALE_PART_SECONDS = 600.0  # a .part file untouched this long belongs to a download that died


def cache_dir() -> Path:
    """Where downloads are kept: $RAWGPU_CACHE_DIR, else $XDG_CACHE_HOME/rawgpu, else ~/.cache/rawgpu."""
    if os.environ.get("RAWGPU_CACHE_DIR"):
        return Path(os.environ["RAWGPU_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "rawgpu"
    return Path.home() / ".cache" / "rawgpu"


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


class _Bar:
    """A plain-text download bar on stderr: redrawn in place on a terminal, else one line at the end."""

    def __init__(self, label: str, total: int | None, enabled: bool, stream=None):
        self.label, self.total, self.enabled = label, total, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.count = 0
        self.start = time.perf_counter()
        self._last = 0.0

    def _line(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = f"{self.count / elapsed / 1e6:.1f} MB/s"
        if self.total:
            frac = min(self.count / self.total, 1.0)
            bar = "#" * int(frac * 24) + "-" * (24 - int(frac * 24))
            return f"{self.label} [{bar}] {_megabytes(self.count)} / {_megabytes(self.total)} {rate}"
        return f"{self.label} {_megabytes(self.count)} {rate}"

    def update(self, n: int) -> None:
        self.count += n
        now = time.perf_counter()
        if self.live and now - self._last > 0.1:
            self._last = now
            self.stream.write("\r" + self._line() + "\033[K")
            self.stream.flush()

    def close(self, note: str) -> None:
        if self.enabled:
            self.stream.write(("\r" if self.live else "") + self._line() + f" {note}" + ("\033[K\n" if self.live else "\n"))
            self.stream.flush()


def _fetch_to(url: str, fh, *, sha256: str, size: int | None, timeout: float, max_bytes: int, bar_label: str, progress: bool) -> None:
    """Stream ``url`` into the open file ``fh``; raise OSError/ValueError with a short reason on failure."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        length = resp.headers.get("Content-Length") if hasattr(resp, "headers") else None
        length = int(length) if length and length.isdigit() else None
        if size is not None and length is not None and length != size:
            raise ValueError(f"the server offers {length} bytes, the file has {size}")
        limit = size if size is not None else max_bytes
        if length is not None and length > limit:
            raise ValueError(f"the server offers {length} bytes, more than the {limit} expected")
        h = hashlib.sha256()
        bar = _Bar(bar_label, length or size, progress)
        ok = False
        try:
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                bar.update(len(chunk))
                if bar.count > limit:
                    raise ValueError(f"more than the {limit} bytes expected")
                h.update(chunk)
                fh.write(chunk)
            if length is not None and bar.count != length:
                raise ValueError(f"the connection closed after {bar.count} of {length} bytes")
            got = h.hexdigest()
            if got != sha256.lower():
                raise ValueError(f"SHA-256 mismatch: got {got}, expected {sha256.lower()}")
            ok = True
        finally:
            bar.close("sha256 ok" if ok else "failed")


def download_file(
    filename: str,
    dest_dir,
    mirrors,
    sha256: str,
    *,
    size: int | None = None,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    local: str = "the four files",
) -> Path:
    """Download ``filename`` from the first working mirror into ``dest_dir``; return its path.

    Each mirror is a base URL (``https://host/path/``, ``file:///folder/``); the file's URL is
    the base joined with ``filename``. The bytes go to a temporary file in ``dest_dir``, are
    checked against ``sha256`` (and ``size`` where given), and only then renamed to
    ``dest_dir/filename``. Raises ``DataError`` naming the file and every mirror's failure, and
    saying that ``local`` (what the user can fetch by hand) could go in a --data-dir folder instead.
    """
    dest_dir = Path(dest_dir)
    created = not dest_dir.exists()
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create the download folder {dest_dir} ({exc.strerror or exc}); "
            f"set RAWGPU_CACHE_DIR to a writable folder or pass --data-dir"
        ) from None
    final = dest_dir / filename
    # A download killed mid-way (SIGKILL, power loss) leaves its .part file: remove those nobody
    # has written to for STALE_PART_SECONDS (a live download writes at least every `timeout`).
    remove_stale_temps(final, older_than=STALE_PART_SECONDS, now=time.time(), suffix=".part")
    reasons = []
    for base in mirrors:
        url = base if base.endswith(filename) else base.rstrip("/") + "/" + filename
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest_dir)
        except OSError as exc:
            raise DataError(
                f"cannot write into the download folder {dest_dir} ({exc.strerror or exc}); "
                f"set RAWGPU_CACHE_DIR to a writable folder or pass --data-dir"
            ) from None
        try:
            os.fchmod(fd, file_mode())
            with os.fdopen(fd, "wb") as fh:
                _fetch_to(
                    url, fh, sha256=sha256, size=size, timeout=timeout, max_bytes=max_bytes,
                    bar_label=f"downloading {filename}", progress=progress,
                )
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            return final
        except urllib.error.HTTPError as exc:
            reasons.append(f"{url}: HTTP {exc.code} {exc.reason}")
        except urllib.error.URLError as exc:
            reasons.append(f"{url}: {getattr(exc.reason, 'strerror', None) or exc.reason}")
        except (OSError, ValueError, http.client.HTTPException) as exc:  # timeouts, resets, short reads, wrong size or digest
            reasons.append(f"{url}: {str(exc) or type(exc).__name__}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    if created:
        try:
            dest_dir.rmdir()  # only succeeds while empty: leave no trace of a failed first download
        except OSError:
            pass
    if not reasons:
        raise DataError(f"cannot download {filename}: no mirror given; pass at least one base URL")
    raise DataError(
        f"cannot download {filename} (" + "; ".join(reasons) + "); "
        f"check the network, or put {local} in a folder and pass --data-dir"
    )
