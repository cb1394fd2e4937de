"""`rawgpu train --dataset cifar10 --tensorboard DIR --log-every N`: the CIFAR-10 example's run.

Trains a 3072-hidden-10 network on small synthetic CIFAR-10 batch files, then reads the event
files back with TensorBoard's own reader and the metrics file's step records, and checks that
both say the same thing, step for step.
"""

import json
import math

import numpy as np
import pytest

import rawgpu
from rawgpu import checkpoint as ckpt
from test_cifar import make_batches, write_bins
from test_cli import assert_short_error, run

N_TRAIN_PER_BATCH, N_TEST = 20, 20  # test_cifar's synthetic batch sizes: 5 x 20 training images


@pytest.fixture(autouse=True)
def numpy_engine(monkeypatch):
    monkeypatch.setenv("RAWGPU_DEVICE", "numpy")
    rawgpu.use("numpy")


@pytest.fixture
def cifar_dir(tmp_path, rng):
    return write_bins(tmp_path / "cifar", make_batches(rng))


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cifar10_with_tensorboard_and_step_records(capsys, tmp_path, cifar_dir):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics, tb = tmp_path / "m.jsonl", tmp_path / "tb"
    code, out, err = run(capsys, "train", "--dataset", "cifar10", "--data-dir", str(cifar_dir), "--tensorboard", str(tb),
                         "--log-every", "3", "--batch-size", "16", "--hidden", "16", "--epochs", "2", "--no-progress",
                         "--metrics", str(metrics), "--checkpoint-dir", str(tmp_path / "ck"))
    assert code == 0, err
    assert "network 3072-16-10" in err
    assert ckpt.load(tmp_path / "ck")[2]["architecture"] == {"in_features": 3072, "hidden": 16, "classes": 10}

    steps_per_epoch = math.ceil(5 * N_TRAIN_PER_BATCH / 16)  # 7
    lines = _lines(metrics)
    step_records = [r for r in lines if "step" in r]
    epoch_records = [r for r in lines if "step" not in r]
    assert [r["step"] for r in step_records] == list(range(3, 2 * steps_per_epoch + 1, 3))
    assert [r["epoch"] for r in step_records] == [math.ceil(r["step"] / steps_per_epoch) for r in step_records]
    assert [r["epoch"] for r in epoch_records] == [1, 2]
    # Printed too, since there is no progress bar.
    assert sum("step 3: train loss" in line for line in err.splitlines()) == 1

    acc = EventAccumulator(str(tb))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"train_loss", "test_loss", "test_accuracy", "train_loss_epoch", "samples_per_s"} <= set(scalars)
    train_loss = acc.Scalars("train_loss")
    assert [e.step for e in train_loss] == [r["step"] for r in step_records]
    np.testing.assert_allclose([e.value for e in train_loss], [r["train_loss"] for r in step_records], rtol=1e-6)
    test_loss = acc.Scalars("test_loss")
    assert [e.step for e in test_loss] == [steps_per_epoch, 2 * steps_per_epoch]
    np.testing.assert_allclose([e.value for e in test_loss], [r["test_loss"] for r in epoch_records], rtol=1e-6)
    assert "hparams" in acc.Tags()["tensors"]  # the hyperparameters, as a text summary


def test_resume_keeps_the_step_records_of_the_checkpointed_epochs(capsys, tmp_path, cifar_dir):
    metrics, ck = tmp_path / "m.jsonl", tmp_path / "ck"
    common = ["train", "--data-dir", str(cifar_dir), "--log-every", "2", "--batch-size", "16", "--hidden", "8",
              "--no-progress", "--metrics", str(metrics), "--checkpoint-dir", str(ck)]
    assert run(capsys, *common, "--epochs", "1")[0] == 0
    with open(metrics, "a") as fh:  # what a run killed in epoch 2 had logged
        fh.write(json.dumps({"epoch": 2, "step": 8, "train_loss": 99.0}) + "\n")
        fh.write('{"epoch": 2, "st')  # torn by the kill
    code, _, err = run(capsys, *common, "--epochs", "2", "--resume")
    assert code == 0, err
    lines = _lines(metrics)
    assert [(r["epoch"], r.get("step")) for r in lines] == [
        (1, 2), (1, 4), (1, 6), (1, None), (2, 8), (2, 10), (2, 12), (2, 14), (2, None)
    ]
    assert all(r["train_loss"] != 99.0 for r in lines)


def test_tensorboard_without_the_extra_is_one_line(capsys, tmp_path, monkeypatch, cifar_dir):
    import sys

    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")] + ["tensorboard"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    code, _, err = run(capsys, "train", "--data-dir", str(cifar_dir), "--tensorboard", str(tmp_path / "tb"), "--no-progress")
    assert_short_error(code, err, "pip install 'rawgpu[tensorboard]'")
    assert "engine:" not in err  # refused before any work


def test_log_every_must_be_positive(capsys):
    code, _, err = run(capsys, "train", "--log-every", "0")
    assert code == 2 and "--log-every" in err


def test_a_step_record_window_may_span_an_epoch_boundary(capsys, tmp_path, cifar_dir):
    """--log-every 5 with 7 steps an epoch: the record at step 10 averages steps 6..10, two of
    them from epoch 1; checked against the step losses of a --log-every 1 run of the same seed."""
    common = ["train", "--data-dir", str(cifar_dir), "--batch-size", "16", "--hidden", "8", "--epochs", "2", "--no-progress"]
    every = {}
    for n in (1, 5):
        metrics = tmp_path / f"m{n}.jsonl"
        assert run(capsys, *common, "--log-every", str(n), "--metrics", str(metrics))[0] == 0
        every[n] = {r["step"]: r["train_loss"] for r in _lines(metrics) if "step" in r}
    assert sorted(every[5]) == [5, 10]
    for step in (5, 10):
        window = [every[1][s] for s in range(step - 4, step + 1)]
        assert every[5][step] == pytest.approx(sum(window) / 5, rel=1e-9)
