"""Out of memory because of a file: the message names the file, not --hidden (issue 16).

A checkpoint whose zip member declares an array of shape (1000000, 1000000), or an IDX set that
cannot fit in memory, ended in "out of memory ...; lower --hidden or --batch-size". The sizes
the files declare are now checked against the memory available when they are loaded.
"""

import io
import zipfile

import numpy as np
import pytest

import rawgpu
from rawgpu import checkpoint as ckpt
from rawgpu import memory
from rawgpu.data import DataError, idx, read_idx
from test_cli import assert_short_error, run, write_dataset

SAMPLE = ["--dataset", "sample", "--no-progress", "--hidden", "16"]


@pytest.fixture(autouse=True)
def numpy_engine(monkeypatch):
    monkeypatch.setenv("RAWGPU_DEVICE", "numpy")
    rawgpu.use("numpy")


def _replace_member(path, name: str, shape: tuple) -> None:
    """Rewrite the checkpoint at ``path`` with member ``name`` declaring ``shape`` (float32) but
    holding a few bytes of data, as a damaged or hostile file would."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path) as old:
        members = {n: old.read(n) for n in old.namelist()}
    members[name + ".npy"] = header.getvalue() + b"\0" * 64  # the header (with its magic), then 64 bytes
    with zipfile.ZipFile(path, "w") as new:
        for n, data in members.items():
            new.writestr(n, data)


def test_a_checkpoint_member_declaring_a_huge_shape_names_the_file(capsys, tmp_path):
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "1", "--checkpoint-dir", str(tmp_path))
    assert code == 0, err
    path = tmp_path / ckpt.FILENAME
    _replace_member(path, "param/W1", (10**6, 10**6))
    before = path.read_bytes()
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "2", "--resume", "--checkpoint-dir", str(tmp_path))
    assert_short_error(code, err, str(path), "'param/W1' declares shape (1000000, 1000000) float32 (3.6 TiB)", "damaged")
    assert "--hidden" not in err and path.read_bytes() == before


def test_a_checkpoint_too_big_for_memory_names_the_file(capsys, tmp_path, monkeypatch):
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "1", "--checkpoint-dir", str(tmp_path))
    assert code == 0, err
    monkeypatch.setattr(ckpt, "host_available", lambda: 100_000)  # the weights are ~100 kB
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "2", "--resume", "--checkpoint-dir", str(tmp_path))
    assert_short_error(code, err, str(tmp_path / ckpt.FILENAME), "its arrays need", "is available")
    assert "--hidden" not in err


def test_an_idx_file_too_big_for_memory_names_the_file(capsys, tmp_path, monkeypatch):
    """A set just under the reader's 4 GiB cap on a machine with less free memory."""
    folder = write_dataset(tmp_path / "data", n_train=40, n_test=20)
    monkeypatch.setattr(idx, "host_available", lambda: 40_000)  # 40 images of 784 bytes, read twice, do not fit
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: the header says 40x28x28 uint8 \(0 MiB\); reading it needs"):
        read_idx(folder / "train-images-idx3-ubyte.gz")
    code, _, err = run(capsys, "train", "--data-dir", str(folder), "--no-progress")
    assert_short_error(code, err, "train-images-idx3-ubyte.gz", "a machine with more memory")
    assert "--hidden" not in err


def test_a_dataset_too_big_to_train_on_names_the_data_and_the_limits(capsys, monkeypatch):
    monkeypatch.setattr(memory, "host_available", lambda: 20 << 20)  # the sample's 3000 images need ~30 MiB as float32
    code, _, err = run(capsys, "train", *SAMPLE)
    assert_short_error(code, err, "the largest part is the dataset (the bundled Fashion-MNIST sample", "--limit-train/--limit-test")
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "1", "--limit-train", "500", "--limit-test", "100")
    assert code == 0, err
