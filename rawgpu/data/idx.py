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
dropped or zero-filled.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from rawgpu.atomic import atomic_file
from rawgpu.data.errors import FIX_LOCAL, DataError

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


def read_bytes(path, *, fix: str = FIX_LOCAL) -> bytes:
    """The contents of ``path``, gunzipped when it starts with the gzip magic bytes."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise _fail(path, "no such file", fix) from None
    except IsADirectoryError:
        raise _fail(path, "is a folder, not an IDX file", fix) from None
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})", fix) from None
    if raw[:2] == GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except EOFError:
            raise _fail(path, "the gzip stream ends early (a truncated download?)", fix) from None
        except (OSError, zlib.error) as exc:
            raise _fail(path, f"corrupt gzip data ({exc})", fix) from None
    if os.fspath(path).endswith(".gz"):
        raise _fail(path, f"is named .gz but is not gzip-compressed (it starts with {raw[:4].hex(' ') or 'nothing'})", fix)
    return raw


def parse_idx(data: bytes, path="<bytes>", *, fix: str = FIX_LOCAL) -> np.ndarray:
    """Decode the IDX bytes ``data`` (``path`` only names them in errors) into a native-endian array."""
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
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _fail(path, f"truncated IDX header: {ndim} dimensions need {header} header bytes, the file has {len(data)}", fix)
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    dims = "x".join(map(str, shape))
    if got < expected:
        raise _fail(
            path, f"truncated IDX file: the header says {dims} {_TYPE_NAMES[code]} ({expected} data bytes) but only {got} follow", fix
        )
    if got > expected:
        raise _fail(
            path, f"{got - expected} unexpected bytes after the data: the header says {dims} {_TYPE_NAMES[code]} ({expected} data bytes)", fix
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path, *, fix: str = FIX_LOCAL) -> np.ndarray:
    """Read the IDX file at ``path`` (raw or gzip) into a native-endian NumPy array.

    Raises ``DataError`` naming the file, the problem and ``fix`` (what the user should do).
    """
    return parse_idx(read_bytes(path, fix=fix), path, fix=fix)


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
