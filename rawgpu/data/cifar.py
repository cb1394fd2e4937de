"""CIFAR-10 in its official binary form, read with nothing but NumPy and tarfile (no pickle).

The binary version (cifar-10-binary.tar.gz, from https://www.cs.toronto.edu/~kriz/cifar.html)
holds six batch files in the folder ``cifar-10-batches-bin/``::

    data_batch_1.bin ... data_batch_5.bin   the 50000 training images, 10000 per file
    test_batch.bin                          the 10000 test images

Each file is a plain run of fixed-length records, nothing before, between or after them::

    byte 0          the label, 0..9 (airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck)
    bytes 1..3072   the 32x32 colour image, channel-major: 1024 red bytes, 1024 green, 1024 blue,
                    each plane row by row

So a record is 3073 bytes and an image is 3072 uint8 values in the order a 3072-input MLP
takes them: the reader returns images as (N, 3072) arrays exactly as stored.

The reader takes the six files from a folder, or straight out of the tar.gz, member by member,
without extracting anything to disk. Either way every size is checked before anything is read:
a file must be a positive whole number of records and no larger than an official batch (a
truncated copy, a file of another format or a tar bomb is refused first, not after reading it).
Labels outside 0..9 are refused too, naming the file and the record. The real files hold 10000
records each; smaller ones (a few records, as in the tests) are read the same way.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from rawgpu.data.errors import DataError

IMAGE_BYTES = 3 * 32 * 32  # 3072: red, green, blue planes of 32x32
RECORD_BYTES = 1 + IMAGE_BYTES  # 3073: the label byte, then the image
NUM_CLASSES = 10
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
BATCH_FILES = TRAIN_FILES + (TEST_FILE,)
ARCHIVE = "cifar-10-binary.tar.gz"
ARCHIVE_FOLDER = "cifar-10-batches-bin"  # where the batches sit inside the archive (and after `tar xzf`)

#: The most records one batch file may hold: the official count. A size above it is a corrupt or
#: hostile file, refused from its size alone, before a byte of it is read (or inflated).
MAX_RECORDS = 10000
MAX_BATCH_BYTES = MAX_RECORDS * RECORD_BYTES  # 30,730,000

#: The most bytes all members of an archive may declare together: six full batches plus room for
#: the official archive's two small extras (batches.meta.txt and readme.html). Members that are
#: not batches are skipped, but skipping still inflates them, so their sizes count too.
MAX_ARCHIVE_MEMBER_BYTES = len(BATCH_FILES) * MAX_BATCH_BYTES + (1 << 20)

FIX = (
    f"re-download it, or point --data-dir at a folder with {TRAIN_FILES[0]} ... {TRAIN_FILES[-1]} and "
    f"{TEST_FILE} (or {ARCHIVE})"
)


def _fail(where, what: str, fix: str = FIX) -> DataError:
    return DataError(f"{where}: {what}; {fix}")


def _check_size(where, size: int) -> None:
    """Refuse a batch whose byte count cannot be CIFAR-10 records, before reading it."""
    if size == 0:
        raise _fail(where, f"is empty; a CIFAR-10 batch holds records of {RECORD_BYTES} bytes")
    if size % RECORD_BYTES:
        raise _fail(
            where,
            f"{size} bytes is not a whole number of {RECORD_BYTES}-byte records (1 label byte + {IMAGE_BYTES} pixels; "
            f"{size // RECORD_BYTES} records and {size % RECORD_BYTES} bytes over): a truncated or foreign file",
        )
    if size > MAX_BATCH_BYTES:
        raise _fail(
            where, f"{size} bytes is {size // RECORD_BYTES} records, more than the {MAX_RECORDS} of an official batch: a corrupt file",
        )


def parse_batch(raw: bytes, where="<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """The records in ``raw`` -> (images uint8 (N, 3072), labels uint8 (N,)); ``where`` names them in errors."""
    _check_size(where, len(raw))
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].copy()
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        i = int(bad[0])
        raise _fail(
            where,
            f"label {int(labels[i])} in record {i} ({bad.size} of {len(labels)} records) is outside 0..{NUM_CLASSES - 1}: "
            f"not a CIFAR-10 batch (CIFAR-100's binary files have 2 label bytes per record)",
        )
    return records[:, 1:].copy(), labels


def read_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file (``data_batch_1.bin``, ...) -> (images (N, 3072) uint8, labels (N,) uint8)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            _check_size(path, size)  # from the size alone: a 10 GB file is refused unread
            raw = fh.read(size)
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except IsADirectoryError:
        raise _fail(path, "is a folder, not a CIFAR-10 batch file") from None
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})") from None
    if len(raw) != size:
        raise _fail(path, f"changed while being read ({len(raw)} of {size} bytes)")
    return parse_batch(raw, path)


def read_archive(path) -> dict:
    """The six batches straight out of ``cifar-10-binary.tar.gz``: file name -> (images, labels).

    The archive is read as a stream, member by member (tarfile's ``r|gz`` mode), so nothing is
    extracted to disk and nothing is read twice. Only members named like the six batch files (in
    any folder, normally ``cifar-10-batches-bin/``) are read, each after its size in the tar header
    has been checked; the stream stops as soon as all six are in hand.
    """
    batches: dict = {}
    declared = 0
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            for member in tar:
                declared += member.size
                if declared > MAX_ARCHIVE_MEMBER_BYTES:
                    raise _fail(
                        path, f"its members declare more than {MAX_ARCHIVE_MEMBER_BYTES} bytes (at {member.name}), "
                        f"far more than CIFAR-10's six batches: a corrupt archive or a tar bomb",
                    )
                name = PurePosixPath(member.name).name
                if name not in BATCH_FILES:
                    continue  # batches.meta.txt, readme.html: skipped
                where = f"{path}:{member.name}"
                if name in batches:
                    raise _fail(path, f"holds {name} twice (the second at {member.name}): not the official archive")
                if not member.isreg():
                    raise _fail(where, "is a link or a special file, not a batch file: not the official archive")
                _check_size(where, member.size)
                raw = tar.extractfile(member).read(member.size)
                if len(raw) != member.size:
                    raise _fail(where, f"the archive ends inside it ({len(raw)} of {member.size} bytes): a truncated download")
                batches[name] = parse_batch(raw, where)
                if len(batches) == len(BATCH_FILES):
                    break  # all six read: the rest of the stream is not needed
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except IsADirectoryError:
        raise _fail(path, "is a folder, not a tar.gz archive") from None
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise _fail(path, f"not a readable tar.gz archive ({exc or type(exc).__name__}): a truncated or damaged download") from None
    except OSError as exc:  # gzip's BadGzipFile is an OSError; so are read errors
        raise _fail(path, f"cannot be read as a tar.gz archive ({exc.strerror or exc})") from None
    missing = [f for f in BATCH_FILES if f not in batches]
    if missing:
        raise _fail(path, f"the archive has no {', '.join(missing)} (it should hold {ARCHIVE_FOLDER}/ with all six batches)")
    return batches


# --------------------------------------------------------------------------------------------
# Finding the files


def batch_folder(folder) -> Path | None:
    """The folder holding CIFAR-10's .bin batches: ``folder`` itself, or its ``cifar-10-batches-bin``
    (what ``tar xzf cifar-10-binary.tar.gz`` makes); None when neither holds any of them."""
    folder = Path(folder)
    for candidate in (folder, folder / ARCHIVE_FOLDER):
        if any((candidate / f).exists() for f in BATCH_FILES):
            return candidate
    return None


def looks_like_cifar(path) -> bool:
    """True when ``path`` is the archive, or a folder with the archive or any of the six batch files."""
    path = Path(path)
    if path.is_file():
        return path.name.endswith(".tar.gz")
    return path.is_dir() and ((path / ARCHIVE).is_file() or batch_folder(path) is not None)


def find_cifar(path) -> tuple[str, object]:
    """Where the batches are: ('bins', {file name: path}) or ('archive', path); DataError when neither.

    ``path`` is a folder holding the six .bin files (or a ``cifar-10-batches-bin`` folder of them),
    or holding ``cifar-10-binary.tar.gz``, or the archive itself. Loose .bin files win over an
    archive beside them (they are what the user extracted); a partial set is an error naming
    what is missing, never silently completed from elsewhere.
    """
    path = Path(path)
    listing = f"{TRAIN_FILES[0]} ... {TRAIN_FILES[-1]} and {TEST_FILE}, or {ARCHIVE}"
    if path.is_file():
        return "archive", path
    if not path.exists():
        raise DataError(f"{path}: no such folder; point --data-dir at a folder holding CIFAR-10's {listing}")
    if not path.is_dir():
        raise DataError(f"{path}: not a folder or a tar.gz archive; point --data-dir at a folder holding CIFAR-10's {listing}")
    folder = batch_folder(path)
    if folder is not None:
        missing = [f for f in BATCH_FILES if not (folder / f).is_file()]
        if missing:
            raise DataError(
                f"{folder}: missing {', '.join(missing)} of CIFAR-10's six batch files; put all of "
                f"{', '.join(BATCH_FILES)} there (extract {ARCHIVE} again), or point --data-dir at {ARCHIVE}'s folder"
            )
        return "bins", {f: folder / f for f in BATCH_FILES}
    if (path / ARCHIVE).is_file():
        return "archive", path / ARCHIVE
    raise DataError(f"{path}: none of CIFAR-10's files; put {listing} there, or point --data-dir at a folder that has them")


def read_cifar(path) -> tuple[dict, dict]:
    """The four arrays of CIFAR-10 from ``path`` (see :func:`find_cifar`), and the files read.

    Returns ({'train_images', 'train_labels', 'test_images', 'test_labels'} -> array, files) where
    the images are uint8 (N, 3072) channel-major and the labels uint8 (N,), the five training
    batches concatenated in order, and ``files`` maps what was read to its path (for errors, and
    so that no output of a run can overwrite its input).
    """
    kind, where = find_cifar(path)
    if kind == "archive":
        batches = read_archive(where)
        files = {"archive": str(where)}
    else:
        batches = {name: read_batch(p) for name, p in where.items()}
        files = {name.removesuffix(".bin"): str(p) for name, p in where.items()}
    arrays = {
        "train_images": np.concatenate([batches[f][0] for f in TRAIN_FILES]),
        "train_labels": np.concatenate([batches[f][1] for f in TRAIN_FILES]),
        "test_images": batches[TEST_FILE][0],
        "test_labels": batches[TEST_FILE][1],
    }
    return arrays, files


# --------------------------------------------------------------------------------------------
# Writing (for tests and for anyone making a small CIFAR-format set)


def encode_batch(images, labels) -> bytes:
    """The bytes of a batch file holding ``images`` (uint8, (N, 3072) or (N, 3, 32, 32)) and ``labels``."""
    images = np.asarray(images, dtype=np.uint8).reshape(len(images), -1)
    labels = np.asarray(labels)
    if images.shape[1] != IMAGE_BYTES or labels.shape != (len(images),):
        raise ValueError(f"need images of {IMAGE_BYTES} bytes and one label each, got {images.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("labels must fit in one byte")
    return np.concatenate([labels.astype(np.uint8)[:, None], images], axis=1).tobytes()
