"""IDX files, the format of MNIST and Fashion-MNIST, read and written with nothing but NumPy.

An IDX file is a 4-byte magic number, one big-endian uint32 size per dimension, then the
elements in C order, big-endian::

    bytes 0-1   0x00 0x00
    byte  2     the element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64
    byte  3     the number of dimensions, ndim
    then        ndim sizes (uint32, big-endian), then prod(sizes) elements

So MNIST's training images start 00 00 08 03 | 60000 | 28 | 28 and its labels 00 00 08 01 | 60000.

The files are usually shipped gzip-compressed. The reader tells a gzip file by its first two
bytes (1f 8b), never by its name, and it checks that the payload is exactly as long as the
header says: a truncated download or bytes appended after the data are errors, not silently
dropped or zero-filled. It checks that size before reading the data, so a corrupt header, a
huge sparse file or a gzip bomb is refused without reading (or inflating) it whole.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

from rawgpu.atomic import atomic_file
from rawgpu.data.errors import FIX_LOCAL, DataError
from rawgpu.memory import gib, host_available

GZIP_MAGIC = b"\x1f\x8b"

# IDX element type code -> NumPy dtype of the stored (big-endian) elements.
DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {(dt.kind, dt.itemsize): code for code, dt in DTYPES.items()}
_TYPE_NAMES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}


def _fail(path, what: str, fix: str) -> DataError:
    return DataError(f"{os.fspath(path)}: {what}; {fix}")


#: The most data bytes an IDX file may declare (4 GiB: MNIST's largest file holds 47 MB). A header
#: claiming more is corrupt or hostile (a gzip bomb), and is refused before anything is read.
MAX_DATA_BYTES = 4 << 30

#: How much past the declared end of a gzip stream the reader looks to count trailing bytes.
_TRAILING_PEEK = 1 << 20


def _open(path, fix: str):
    """The file at ``path`` opened for reading, and whether it is gzip (told by its first bytes)."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise _fail(path, "no such file", fix) from None
    except IsADirectoryError:
        raise _fail(path, "is a folder, not an IDX file", fix) from None
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})", fix) from None
    start = fh.read(4)
    fh.seek(0)
    if start[:2] == GZIP_MAGIC:
        return fh, True
    if os.fspath(path).endswith(".gz"):
        fh.close()
        raise _fail(path, f"is named .gz but is not gzip-compressed (it starts with {start.hex(' ') or 'nothing'})", fix)
    return fh, False


def _read_exactly(stream, n: int, path, fix: str) -> bytes:
    """Up to ``n`` bytes from ``stream`` (fewer only at its end), with gzip errors named."""
    try:
        return stream.read(n)
    except EOFError:
        raise _fail(path, "the gzip stream ends early (a truncated download?)", fix) from None
    except (OSError, zlib.error) as exc:
        raise _fail(path, f"corrupt gzip data ({exc})", fix) from None


def read_bytes(path, *, fix: str = FIX_LOCAL) -> bytes:
    """The whole contents of ``path``, gunzipped when it starts with the gzip magic bytes.

    For small files of known origin (the bundled sample's digests); :func:`read_idx` reads IDX
    files with their sizes checked first.
    """
    fh, gz = _open(path, fix)
    with fh:
        stream = gzip.GzipFile(fileobj=fh) if gz else fh
        return _read_exactly(stream, -1, path, fix)


def _header(data: bytes, path, fix: str) -> tuple[int, int, int]:
    """Check the 4-byte magic number; return (element type code, ndim, header length)."""
    if len(data) < 4:
        raise _fail(path, f"too short to be an IDX file ({len(data)} bytes, the header alone is at least 8)", fix)
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise _fail(path, f"not an IDX file: magic number {data[:4].hex(' ')}, an IDX file starts 00 00 <type> <ndim>", fix)
    if code not in DTYPES:
        known = ", ".join(f"{c:#04x} {n}" for c, n in _TYPE_NAMES.items())
        raise _fail(path, f"not an IDX file: unknown element type {code:#04x} in the magic number (known: {known})", fix)
    if ndim == 0:
        raise _fail(path, "not an IDX file: the magic number says 0 dimensions", fix)
    return code, ndim, 4 + 4 * ndim


def _declared(data: bytes, code: int, ndim: int, path, fix: str) -> tuple[tuple, int, str]:
    """The shape the header declares, its size in data bytes (a Python int: no overflow), in words."""
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _fail(path, f"truncated IDX header: {ndim} dimensions need {header} header bytes, the file has {len(data)}", fix)
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape) * DTYPES[code].itemsize
    dims = f"{'x'.join(map(str, shape))} {_TYPE_NAMES[code]}"
    if expected > MAX_DATA_BYTES:
        raise _fail(
            path, f"the header says {dims}, {expected} data bytes, more than any IDX dataset holds "
            f"({MAX_DATA_BYTES >> 30} GiB): a corrupt header", fix,
        )
    return shape, expected, dims


def _size_error(path, dims: str, expected: int, got: int, fix: str, *, more: bool = False) -> DataError:
    if got < expected:
        return _fail(path, f"truncated IDX file: the header says {dims} ({expected} data bytes) but only {got} follow", fix)
    extra = f"more than {got - expected}" if more else f"{got - expected}"
    return _fail(path, f"{extra} unexpected bytes after the data: the header says {dims} ({expected} data bytes)", fix)


def parse_idx(data: bytes, path="<bytes>", *, fix: str = FIX_LOCAL) -> np.ndarray:
    """Decode the IDX bytes ``data`` (``path`` only names them in errors) into a native-endian array."""
    code, ndim, header = _header(data, path, fix)
    shape, expected, dims = _declared(data, code, ndim, path, fix)
    if len(data) - header != expected:
        raise _size_error(path, dims, expected, len(data) - header, fix)
    array = np.frombuffer(data, dtype=DTYPES[code], offset=header).reshape(shape)
    return array.astype(DTYPES[code].newbyteorder("="), copy=True)


def _check_fits_in_memory(path, dims: str, expected: int) -> None:
    """Refuse, naming the file, an IDX file whose data cannot fit in memory: reading it takes its
    bytes and a native-endian copy, and an out-of-memory error later would blame --hidden."""
    free = host_available()
    if free is not None and 2 * expected > 0.9 * free:
        raise DataError(
            f"{os.fspath(path)}: the header says {dims} ({gib(expected)}); reading it needs {gib(2 * expected)} of memory "
            f"but {gib(free)} is available: use a smaller dataset, or a machine with more memory"
        )


def read_idx(path, *, fix: str = FIX_LOCAL) -> np.ndarray:
    """Read the IDX file at ``path`` (raw or gzip) into a native-endian NumPy array.

    The header is read first and the size it declares is checked before the data is read: for a
    raw file against the file's size, for a gzip file by decompressing exactly that many bytes
    (and peeking for more), so neither a huge sparse file nor a gzip bomb is ever read whole.
    Raises ``DataError`` naming the file, the problem and ``fix`` (what the user should do).
    """
    fh, gz = _open(path, fix)
    with fh:
        stream = gzip.GzipFile(fileobj=fh) if gz else fh
        head = _read_exactly(stream, 4, path, fix)
        code, ndim, header = _header(head, path, fix)
        head += _read_exactly(stream, header - 4, path, fix)
        shape, expected, dims = _declared(head, code, ndim, path, fix)
        _check_fits_in_memory(path, dims, expected)
        if not gz:
            got = os.fstat(fh.fileno()).st_size - header
            if got != expected:
                raise _size_error(path, dims, expected, got, fix)
        data = _read_exactly(stream, expected, path, fix)
        if len(data) != expected:
            raise _size_error(path, dims, expected, len(data), fix)
        if gz:
            trailing = _read_exactly(stream, _TRAILING_PEEK, path, fix)
            if trailing:
                raise _size_error(path, dims, expected, expected + len(trailing), fix, more=len(trailing) == _TRAILING_PEEK)
    array = np.frombuffer(data, dtype=DTYPES[code]).reshape(shape)
    return array.astype(DTYPES[code].newbyteorder("="), copy=True)


def encode_idx(array) -> bytes:
    """The IDX bytes of ``array`` (uint8, int8, int16, int32, float32 or float64; at least 1-D)."""
    array = np.asarray(array)
    code = _CODES.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; convert the array to one of {', '.join(_TYPE_NAMES.values())}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX stores 1 to 255 dimensions, got an array of shape {array.shape}")
    if any(d >= 2**32 for d in array.shape):
        raise ValueError(f"IDX sizes are uint32, shape {array.shape} does not fit")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=DTYPES[code]).tobytes()


def write_idx(path, array, *, compress: bool | None = None) -> str:
    """Write ``array`` as an IDX file at ``path``, atomically; return the path.

    Compressed with gzip when ``compress`` is true, or when it is None and the name ends in
    ``.gz``. The gzip header carries no name and no time, so the same array always gives the
    same bytes. The file is written to a temporary file in the same folder and renamed over
    ``path``, so a crash never leaves a half-written file.
    """
    path = os.fspath(path)
    if compress is None:
        compress = path.endswith(".gz")
    payload = encode_idx(array)
    if compress:
        payload = gzip.compress(payload, compresslevel=9, mtime=0)
    with atomic_file(path) as fh:
        fh.write(payload)
    return path
