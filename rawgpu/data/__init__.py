"""Datasets on the host: IDX files read with NumPy, verified downloads, a bundled sample.

    from rawgpu import data
    ds = data.load("mnist")            # downloaded once into the cache, SHA-256 verified
    ds = data.load("fashion-mnist")    # Debian's copy where installed, else downloaded
    ds = data.load("sample")           # 3000 + 1000 Fashion-MNIST images inside the package
    ds = data.load("cifar10")          # CIFAR-10's binary tar.gz, cached and verified like MNIST
    ds = data.load_dir("path/to/idx")  # any folder with the four standard files
    ds = data.load(data_dir="path")    # that, or a folder of CIFAR-10's .bin batches (or its tar.gz)
    x = data.prepare(ds.train_images)  # float32 (N, 784) in [-1, 1]

Every problem with the data raises ``DataError`` (a ValueError) with one line naming the file,
what is wrong and what to do.
"""

from rawgpu.data import cifar
from rawgpu.data.datasets import (
    CIFAR10,
    DATASETS,
    FASHION_MNIST,
    MNIST,
    SAMPLE_DIR,
    STANDARD_FILES,
    Dataset,
    Remote,
    fetch,
    find_files,
    is_cached,
    load,
    load_cifar,
    load_dir,
    load_path,
    load_sample,
    prepare,
)
from rawgpu.data.download import cache_dir, download_file, sha256_file
from rawgpu.data.errors import DataError
from rawgpu.data.idx import read_idx, write_idx

__all__ = [
    "CIFAR10", "DATASETS", "FASHION_MNIST", "MNIST", "SAMPLE_DIR", "STANDARD_FILES",
    "DataError", "Dataset", "Remote",
    "cache_dir", "download_file", "fetch", "find_files", "is_cached", "load", "load_cifar", "load_dir", "load_path", "load_sample",
    "cifar", "prepare", "read_idx", "sha256_file", "write_idx",
]
