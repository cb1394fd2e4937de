"""The datasets rawgpu trains on, and where each comes from.

The MNIST family is four IDX files with the standard names (raw or gzip-compressed)::

    train-images-idx3-ubyte   train-labels-idx1-ubyte   t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte

``load(name)`` finds them:

* ``mnist``: the handwritten digits, downloaded on first use from public mirrors into the cache
  folder (see ``download.cache_dir``), each file checked against the SHA-256 written below.
* ``fashion-mnist``: Zalando's clothing images, from the Debian package ``dataset-fashion-mnist``
  where it is installed (/usr/share/datasets/fashion-mnist), else downloaded like MNIST.
* ``sample``: 3000 train + 1000 test Fashion-MNIST images shipped inside the package (see
  ``make_sample.py``), for machines that cannot download anything.
* ``cifar10``: CIFAR-10's official binary version (cifar-10-binary.tar.gz, read straight from
  the archive; see ``cifar.py``), downloaded into the cache and checked like MNIST.
* any folder holding the four files: ``load(name, data_dir=folder)`` or ``load_dir(folder)``;
  a folder of CIFAR-10's six .bin batches (or its tar.gz) is recognised too.

Images stay uint8 on the host; ``prepare`` turns them into the float32 rows the network eats,
and the trainer copies those to the device once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from rawgpu.data import cifar as _cifar
from rawgpu.data import download as _download
from rawgpu.data.download import DEFAULT_TIMEOUT, download_file, sha256_file
from rawgpu.data.errors import FIX_LOCAL, DataError
from rawgpu.data.idx import read_idx

DATASETS = ("mnist", "fashion-mnist", "cifar10", "sample")
_ALIASES = {"cifar-10": "cifar10"}

# role -> standard file name (without .gz)
STANDARD_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class Remote:
    """A dataset downloaded from mirrors: its .gz files with their SHA-256 digests and sizes."""

    name: str
    title: str
    mirrors: tuple[str, ...]
    files: dict  # file name ("<standard name>.gz", or the archive) -> (sha256, size in bytes)
    local: str = "the four standard files"  # what --data-dir must hold instead of a download


# MNIST (LeCun, Cortes, Burges). Digests and sizes as published by TensorFlow Datasets
# (tensorflow/datasets, tensorflow_datasets/url_checksums/mnist.txt) for the files on the
# storage.googleapis.com mirror; the same four digests are used by many independent loaders
# with the ossci-datasets mirror, which serves byte-identical copies of the original files.
MNIST = Remote(
    name="mnist",
    title="MNIST",
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    files={
        "train-images-idx3-ubyte.gz": ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
        "train-labels-idx1-ubyte.gz": ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
        "t10k-images-idx3-ubyte.gz": ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
        "t10k-labels-idx1-ubyte.gz": ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
    },
)

# Fashion-MNIST (Zalando SE, MIT licence). Digests and sizes of the original .gz files, as
# published by TensorFlow Datasets (url_checksums/fashion_mnist.txt), and checked here: the
# label files hash to these values in zalandoresearch/fashion-mnist at commit b2617bb, and
# Debian's copies carry the very same deflate streams under a normalised gzip header (no
# file name, a fixed time), so putting the original header back reproduces these digests.
# Debian's .gz files themselves therefore hash differently; they are read from their own
# folder, never served as a download.
FASHION_MNIST = Remote(
    name="fashion-mnist",
    title="Fashion-MNIST",
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/b2617bb6d3ffa2e429640350f613e3291e10b141/data/fashion/",
    ),
    files={
        "train-images-idx3-ubyte.gz": ("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880),
        "train-labels-idx1-ubyte.gz": ("a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515),
        "t10k-images-idx3-ubyte.gz": ("346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102),
        "t10k-labels-idx1-ubyte.gz": ("67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148),
    },
)

# CIFAR-10 (Krizhevsky, Nair, Hinton), the binary version: one tar.gz read in place. The page
# https://www.cs.toronto.edu/~kriz/cifar.html publishes its MD5, c32a1d4ab5d03f1284b67883e8d87530,
# and its size, 170052171 bytes; the SHA-256 below is the one that many independent loaders pin
# for that same file (e.g. Julia's MLDatasets and several training repositories, each alongside
# the published MD5 and size).
CIFAR10 = Remote(
    name="cifar10",
    title="CIFAR-10",
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    files={_cifar.ARCHIVE: ("c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd", 170052171)},
    local=f"{_cifar.ARCHIVE} or its six .bin batch files",
)

REMOTES = {r.name: r for r in (MNIST, FASHION_MNIST, CIFAR10)}


# --------------------------------------------------------------------------------------------
# The dataset object


@dataclass
class Dataset:
    """Train and test images (uint8, (N, 28, 28), (N, 784) or (N, 3072)) with their integer labels.

    ``source`` is a sentence saying where the data came from (a folder, the cache, the bundled
    sample); ``files`` maps each role (``train_images``, ...) to the file it was read from, so
    that an inconsistency is reported against a file the user can look at.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    num_classes: int = 10
    files: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.num_classes, (int, np.integer)) or self.num_classes < 2:
            raise DataError(f"dataset {self.name!r}: num_classes must be a whole number >= 2, got {self.num_classes!r}")
        for split in ("train", "test"):
            _check_split(self, split)
        train_px = self.train_images[0].size
        test_px = self.test_images[0].size
        if train_px != test_px:
            raise DataError(
                f"{self._where('train_images')} has images of {train_px} pixels but {self._where('test_images')} "
                f"has {test_px}; train and test must come from the same dataset ({FIX_LOCAL})"
            )

    def _where(self, role: str) -> str:
        return str(self.files.get(role) or f"the {role.replace('_', ' ')} of {self.name!r}")

    @property
    def image_shape(self) -> tuple:
        return tuple(self.train_images.shape[1:])

    def first(self, n_train: int | None = None, n_test: int | None = None) -> "Dataset":
        """The same dataset cut to its first ``n_train`` training and ``n_test`` test images
        (None: all of that split; more than there are: all of them). The slices are views, and
        the source sentence says what was kept."""
        keep_train = len(self.train_labels) if n_train is None else min(n_train, len(self.train_labels))
        keep_test = len(self.test_labels) if n_test is None else min(n_test, len(self.test_labels))
        if (keep_train, keep_test) == (len(self.train_labels), len(self.test_labels)):
            return self
        return replace(
            self, train_images=self.train_images[:keep_train], train_labels=self.train_labels[:keep_train],
            test_images=self.test_images[:keep_test], test_labels=self.test_labels[:keep_test],
            source=f"{self.source}; its first {keep_train} train / {keep_test} test images",
        )

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train {self.train_images.shape}, test {self.test_images.shape}, "
            f"{self.num_classes} classes; {self.source})"
        )


def _check_split(ds: Dataset, split: str) -> None:
    images = ds.train_images if split == "train" else ds.test_images
    labels = ds.train_labels if split == "train" else ds.test_labels
    img_at, lab_at = ds._where(f"{split}_images"), ds._where(f"{split}_labels")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim not in (2, 3):
        what = f"{images.dtype} array of shape {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(f"{img_at}: expected uint8 images of shape (N, rows, cols) or (N, pixels), got a {what} ({FIX_LOCAL})")
    if len(images) == 0 or images[0].size == 0:
        raise DataError(f"{img_at}: holds no images (shape {images.shape}) ({FIX_LOCAL})")
    if not isinstance(labels, np.ndarray) or labels.ndim != 1 or labels.dtype.kind not in "iu":
        what = f"{labels.dtype} array of shape {labels.shape}" if isinstance(labels, np.ndarray) else type(labels).__name__
        raise DataError(f"{lab_at}: expected a 1-D array of integer labels, got a {what} ({FIX_LOCAL})")
    if len(images) != len(labels):
        raise DataError(
            f"{img_at} has {len(images)} images but {lab_at} has {len(labels)} labels; "
            f"the two files must be the same split of the same dataset ({FIX_LOCAL})"
        )
    bad = np.flatnonzero((labels < 0) | (labels >= ds.num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{lab_at}: label {int(labels[i])} at index {i} ({bad.size} labels in all) is outside 0..{ds.num_classes - 1} "
            f"for a {ds.num_classes}-class dataset; is it the labels file of another dataset? ({FIX_LOCAL})"
        )


def prepare(images) -> np.ndarray:
    """uint8 images (N, 28, 28), (N, 784) or CIFAR-10's (N, 3072) -> float32 rows (N, pixels) in [-1, 1].

    Each pixel x in 0..255 becomes (x/255 - 0.5)/0.5: the usual MNIST normalisation with mean
    and standard deviation 0.5, so 0 -> -1 and 255 -> 1.
    """
    images = np.asarray(images)
    flat = images.reshape(len(images), -1).astype(np.float32)
    return (flat / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)


# --------------------------------------------------------------------------------------------
# A folder of IDX files


def find_files(folder) -> dict:
    """role -> path of the four standard files in ``folder`` (each raw, or .gz when no raw one)."""
    folder = Path(folder)
    listing = ", ".join(STANDARD_FILES.values())
    if not folder.exists():
        raise DataError(f"{folder}: no such folder; point --data-dir at a folder holding {listing} (each raw or .gz)")
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; point --data-dir at a folder holding {listing} (each raw or .gz)")
    found, missing = {}, []
    for role, stem in STANDARD_FILES.items():
        for candidate in (folder / stem, folder / (stem + ".gz")):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            missing.append(stem + "[.gz]")
    if missing:
        what = "none of the four standard files" if len(missing) == 4 else "missing " + ", ".join(missing)
        raise DataError(
            f"{folder}: {what}; put {listing} there (each raw or .gz), or point --data-dir at a folder that has them"
        )
    return found


def load_dir(path, name: str = "custom", *, source: str | None = None, num_classes: int = 10) -> Dataset:
    """Load the four standard IDX files from the folder ``path`` (raw or gzip, in any mix)."""
    files = find_files(path)
    arrays = {role: read_idx(p) for role, p in files.items()}
    return Dataset(
        name=name,
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"],
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"],
        source=source or f"{name} from {Path(path)}",
        num_classes=num_classes,
        files={role: str(p) for role, p in files.items()},
    )


# --------------------------------------------------------------------------------------------
# Downloaded datasets


def _cache_root(cache_dir) -> Path:
    return Path(cache_dir) if cache_dir is not None else _download.cache_dir()


def _files_of(remote: Remote, digests) -> dict:
    """filename -> (sha256, size or None), from the code or from the caller's ``digests``."""
    if digests is None:
        return dict(remote.files)
    out = {}
    for fname in remote.files:
        if fname not in digests:
            raise ValueError(f"digests must give a SHA-256 for each of the {len(remote.files)} files of {remote.title}; {fname} is missing")
        out[fname] = (digests[fname], None)
    return out


def is_cached(name: str, cache_dir=None) -> bool:
    """True when ``load(name)`` needs no download: the files are in the cache (or installed, or bundled).

    The trainer's default is MNIST where it is cached or can be downloaded; this says the first.
    """
    name = _canonical(name)
    if name == "sample":
        return all((SAMPLE_DIR / (s + ".gz")).is_file() for s in STANDARD_FILES.values())
    if name == "fashion-mnist" and _complete(DEBIAN_FASHION_MNIST):
        return True
    folder = _cache_root(cache_dir) / name
    return all((folder / fname).is_file() for fname in REMOTES[name].files)


def _complete(folder: Path) -> bool:
    try:
        find_files(folder)
        return True
    except DataError:
        return False


def fetch(
    name: str,
    *,
    cache_dir=None,
    mirrors=None,
    digests=None,
    download: bool = True,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Make sure the files of ``name`` (four .gz, or CIFAR-10's tar.gz) are in ``<cache>/<name>/``,
    verified; return that folder.

    A cached file is hashed again before use (a few tens of milliseconds); one that does not
    match is downloaded again, atomically replacing it. ``mirrors`` (base URLs) and ``digests``
    (filename -> SHA-256) replace the ones written in this module, for tests and private mirrors.
    """
    key = _canonical(name)
    if key not in REMOTES:
        raise DataError(f"{key!r} is bundled with rawgpu, there is nothing to download; downloadable: {', '.join(REMOTES)}")
    remote = REMOTES[key]
    folder = _cache_root(cache_dir) / remote.name
    mirrors = tuple(mirrors) if mirrors is not None else remote.mirrors
    for fname, (sha, size) in _files_of(remote, digests).items():
        path = folder / fname
        if path.is_file():
            if sha256_file(path) == sha.lower():
                continue
            if not download:
                raise DataError(
                    f"{path}: SHA-256 does not match the published digest (a damaged or foreign file); "
                    f"delete it and run again to download it afresh"
                )
        elif not download:
            raise DataError(
                f"{remote.title} is not in the cache ({path} is missing) and downloading is off; "
                f"allow the download, or pass --data-dir with {remote.local}"
            )
        try:
            download_file(fname, folder, mirrors, sha, size=size, progress=progress, timeout=timeout, local=remote.local)
        except DataError as exc:
            raise DataError(f"{remote.title}: {exc}") from None  # say which dataset failed, too
    return folder


def _canonical(name) -> str:
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or pass --data-dir with a folder of IDX files")
    return key


# --------------------------------------------------------------------------------------------
# CIFAR-10


def load_cifar(path, name: str = "cifar10", *, source: str | None = None) -> Dataset:
    """CIFAR-10 from ``path``: a folder of the six .bin batches or of the tar.gz, or the tar.gz.

    Images are uint8 (N, 3072), channel-major as stored (``prepare`` scales them like MNIST's);
    labels uint8. See ``cifar.py`` for the format and the checks.
    """
    arrays, files = _cifar.read_cifar(path)
    return Dataset(
        name=name, **arrays, source=source or f"{name} (CIFAR-10 binary) from {Path(path)}",
        num_classes=_cifar.NUM_CLASSES, files=files,
    )


def _is_idx_dataset(key) -> bool:
    return key in ("mnist", "fashion-mnist", "sample")


def _has_idx_files(folder: Path) -> bool:
    return any((folder / s).is_file() or (folder / (s + ".gz")).is_file() for s in STANDARD_FILES.values())


def load_path(path, name: str | None = None) -> Dataset:
    """A dataset from a folder (or CIFAR-10 archive) the user named: IDX files or CIFAR-10, told apart here.

    ``name`` 'cifar10' reads CIFAR-10; 'mnist', 'fashion-mnist' or 'sample' read the four IDX
    files; any other name (the CLI's 'custom') looks at what is there: the IDX files when any of
    them is, else CIFAR-10's batches or archive. The name labels the result.
    """
    path = Path(path)
    key = None
    if name is not None:
        try:
            key = _canonical(name)
        except DataError:
            key = None  # a label of the caller's own, not one of ours
    label = name or "custom"
    source = f"{label} from {path}"
    if key == "cifar10":
        return load_cifar(path, name=key, source=f"CIFAR-10 (binary version) from {path}")
    if _is_idx_dataset(key) or not path.exists():
        return load_dir(path, name=label, source=source)  # its errors name the missing folder and files
    if path.is_dir() and _has_idx_files(path):
        return load_dir(path, name=label, source=source)  # even a partial set: the error names what is missing
    if _cifar.looks_like_cifar(path):
        return load_cifar(path, name=label, source=f"{label} (CIFAR-10 binary) from {path}")
    if not path.is_dir():
        raise DataError(f"{path}: not a folder (nor a CIFAR-10 .tar.gz); point --data-dir at a folder of IDX files or CIFAR-10 batches")
    idx = ", ".join(STANDARD_FILES.values())
    raise DataError(
        f"{path}: none of the four standard IDX files ({idx}; each raw or .gz) and none of CIFAR-10's "
        f"({_cifar.TRAIN_FILES[0]} ... {_cifar.TRAIN_FILES[-1]}, {_cifar.TEST_FILE}, or {_cifar.ARCHIVE}); "
        f"put one of those sets there, or point --data-dir at a folder that has them"
    )


# --------------------------------------------------------------------------------------------
# The entry point


def load_sample() -> Dataset:
    """The Fashion-MNIST sample bundled with the package (see sample/README.md)."""
    if not _complete(SAMPLE_DIR):
        raise DataError(f"the bundled sample is missing from {SAMPLE_DIR}; reinstall rawgpu (pip install -e .) to restore it")
    ds = load_dir(SAMPLE_DIR, name="sample")
    ds.source = (
        f"the bundled Fashion-MNIST sample, {len(ds.train_labels)} train / {len(ds.test_labels)} test images "
        f"({SAMPLE_DIR}; MIT licence, Copyright 2017 Zalando SE)"
    )
    return ds


def load(
    name: str | None = None,
    data_dir=None,
    *,
    download: bool = True,
    progress: bool = True,
    cache_dir=None,
    mirrors=None,
    digests=None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Dataset:
    """Load a dataset by name ('mnist', 'fashion-mnist', 'cifar10', 'sample'), or from a folder.

    With ``data_dir`` the files are read from that folder (see ``load_path``: the four IDX
    files, or CIFAR-10's six .bin batches or its tar.gz) and ``name`` labels the result.
    Otherwise MNIST and CIFAR-10 come from the cache, downloaded there first if needed (and
    ``download`` allows); Fashion-MNIST from the Debian package's folder where installed, else
    from the cache like MNIST; the sample from inside the package. ``cache_dir`` replaces the cache
    folder, ``mirrors`` and ``digests`` the download sources (see ``fetch``).
    """
    if data_dir is not None:
        return load_path(data_dir, name)
    if name is None:
        raise DataError(f"no dataset named; choose one of {', '.join(DATASETS)}, or pass --data-dir with a folder of IDX files")
    key = _canonical(name)
    if key == "sample":
        return load_sample()
    if key == "fashion-mnist" and _complete(DEBIAN_FASHION_MNIST):
        return load_dir(
            DEBIAN_FASHION_MNIST, name=key,
            source=f"Fashion-MNIST from the Debian package dataset-fashion-mnist ({DEBIAN_FASHION_MNIST})",
        )
    remote = REMOTES[key]
    folder = fetch(key, cache_dir=cache_dir, mirrors=mirrors, digests=digests, download=download, progress=progress, timeout=timeout)
    if key == "cifar10":
        archive = folder / _cifar.ARCHIVE
        return load_cifar(archive, name=key, source=f"{remote.title} from the cache {archive} (SHA-256 verified)")
    return load_dir(folder, name=key, source=f"{remote.title} from the cache {folder} (SHA-256 verified)")
