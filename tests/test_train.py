"""The training loop: reproducibility, metrics, checkpoints and resume, divergence."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

import rawgpu
from rawgpu import checkpoint as ckpt
from rawgpu.train import TrainConfig, TrainingError, prepare_images, train


@pytest.fixture(autouse=True)
def numpy_engine():
    rawgpu.use("numpy")


def blobs(n_train=300, n_test=100, classes=4, seed=0):
    """A small learnable image set: one noisy prototype per class, as uint8 28x28 images."""
    rng = np.random.default_rng(seed)
    protos = rng.integers(0, 256, (classes, 28, 28))

    def make(n):
        y = rng.integers(0, classes, n)
        x = np.clip(protos[y] + rng.normal(0, 60, (n, 28, 28)), 0, 255).astype(np.uint8)
        return x, y.astype(np.uint8)

    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    return SimpleNamespace(train_images=xtr, train_labels=ytr, test_images=xte, test_labels=yte, num_classes=classes, source="blobs")


QUIET = dict(progress=False, log=lambda msg: None)


def test_prepare_images_scales_to_minus_one_one():
    x = prepare_images(np.array([[[0, 255], [51, 102]]], np.uint8))
    assert x.dtype == np.float32 and x.shape == (1, 4)
    np.testing.assert_allclose(x, [[-1.0, 1.0, -0.6, -0.2]], atol=1e-6)


def test_training_learns_and_writes_metrics(tmp_path):
    metrics = tmp_path / "m.jsonl"
    records = train(blobs(), TrainConfig(epochs=3, batch_size=32, hidden=16, lr=0.05), metrics_path=metrics, **QUIET)
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert lines == records and [r["epoch"] for r in lines] == [1, 2, 3]
    for r in lines:
        assert set(r) == {"epoch", "train_loss", "test_loss", "test_accuracy", "seconds", "samples_per_s"}
        assert r["seconds"] > 0 and r["samples_per_s"] > 0
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert lines[-1]["test_accuracy"] > 0.9


def test_same_seed_same_numbers_other_seed_other_numbers():
    cfg = TrainConfig(epochs=2, batch_size=50, hidden=8, lr=0.05, seed=5)
    strip = lambda recs: [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in recs]  # noqa: E731
    first, second = strip(train(blobs(), cfg, **QUIET)), strip(train(blobs(), cfg, **QUIET))
    assert first == second
    cfg.seed = 6
    assert strip(train(blobs(), cfg, **QUIET)) != first


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    cfg = dict(batch_size=40, hidden=8, lr=0.05, seed=1)
    straight = train(blobs(), TrainConfig(epochs=3, **cfg), **QUIET)
    train(blobs(), TrainConfig(epochs=2, **cfg), checkpoint_dir=tmp_path, **QUIET)
    resumed = train(blobs(), TrainConfig(epochs=3, **cfg), checkpoint_dir=tmp_path, resume=True, **QUIET)
    assert [r["epoch"] for r in resumed] == [3]
    assert resumed[0]["train_loss"] == straight[2]["train_loss"]
    assert resumed[0]["test_accuracy"] == straight[2]["test_accuracy"]
    params, velocity, meta = ckpt.load(tmp_path)
    assert meta["epochs_done"] == 3 and set(params) == {"W1", "b1", "W2", "b2"} == set(velocity)
    # no temporary files left, and no lock file: the run removes it as it lets go of the lock
    assert sorted(os.listdir(tmp_path)) == [ckpt.FILENAME]


def _records(path):
    """A metrics file's records, without the timings (which no two runs share)."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in lines]


@pytest.mark.parametrize("stops", [[1], [2], [3], [1, 2, 3]])
def test_resumed_step_records_equal_the_uninterrupted_runs(tmp_path, stops):
    """Issue 16: a --log-every window that straddles an epoch's end restarted on resume, so the
    resumed run's first step record averaged fewer steps than the uninterrupted run's. 300 images
    at batch 43 are 7 steps an epoch and --log-every 5 puts a record at steps 5, 10, 15, 20, 25:
    every epoch's end falls inside a window. A kill after epoch k is a run of k epochs."""
    cfg = dict(batch_size=43, hidden=8, lr=0.05, seed=3)
    kw = dict(QUIET, log_every=5)
    train(blobs(), TrainConfig(epochs=4, **cfg), metrics_path=tmp_path / "straight.jsonl", **kw)
    metrics, ck = tmp_path / "resumed.jsonl", tmp_path / "ck"
    train(blobs(), TrainConfig(epochs=stops[0], **cfg), metrics_path=metrics, checkpoint_dir=ck, **kw)
    for epochs in stops[1:] + [4]:
        train(blobs(), TrainConfig(epochs=epochs, **cfg), metrics_path=metrics, checkpoint_dir=ck, resume=True, **kw)
    straight, resumed = _records(tmp_path / "straight.jsonl"), _records(metrics)
    assert [r.get("step") for r in straight if "step" in r] == [5, 10, 15, 20, 25]
    assert resumed == straight  # exactly: the same float64 sums, subtracted the same way


def test_resume_of_another_architecture_is_refused_and_untouched(tmp_path):
    train(blobs(), TrainConfig(epochs=1, batch_size=50, hidden=8), checkpoint_dir=tmp_path, **QUIET)
    path = tmp_path / ckpt.FILENAME
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    with pytest.raises(ckpt.CheckpointError, match="784-8-4 network, but this run builds 784-16-4"):
        train(blobs(), TrainConfig(epochs=2, batch_size=50, hidden=16), checkpoint_dir=tmp_path, resume=True, **QUIET)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / ckpt.FILENAME).write_bytes(b"not a zip file")
    with pytest.raises(ckpt.CheckpointError, match="not a readable rawgpu checkpoint"):
        ckpt.load(tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load(tmp_path / "nowhere")


def test_a_diverging_loss_stops_with_epoch_and_step():
    with pytest.raises(TrainingError, match=r"at epoch 1, step \d+; training stopped: these settings are outside the usual range: --lr 1e\+06"):
        train(blobs(), TrainConfig(epochs=2, batch_size=10, hidden=8, lr=1e6), **QUIET)


@pytest.mark.parametrize(
    "settings,hint",
    [
        (dict(lr=0.05, momentum=1.5), "outside the usual range: --momentum 1.5 (usually 0 to 0.99"),
        (dict(lr=0.05, weight_decay=100.0), "outside the usual range: --weight-decay 100 (usually 0 to 0.01)"),
        (dict(lr=5.0, momentum=1.2), "--lr 5 (usually 0.1 or less); --momentum 1.2"),
    ],
)
def test_the_divergence_hint_names_the_unusual_settings(settings, hint):
    """It always blamed --lr, even where --momentum 1.5 was the cause."""
    with pytest.raises(TrainingError, match="non-finite") as caught:
        train(blobs(), TrainConfig(epochs=30, batch_size=10, hidden=8, **settings), **QUIET)
    assert hint in str(caught.value) and "try a lower learning rate" not in str(caught.value)


@pytest.mark.parametrize(
    "field,value,message",
    [("lr", 0.0, "lr must be"), ("batch_size", 0, "batch-size must be"), ("epochs", 0, "epochs must be"), ("hidden", 0, "hidden must be"), ("momentum", -0.5, "momentum must be")],
)
def test_bad_hyperparameters_are_refused(field, value, message):
    cfg = TrainConfig()
    setattr(cfg, field, value)
    with pytest.raises(ValueError, match=message):
        train(blobs(), cfg, **QUIET)


def test_labels_outside_the_classes_are_refused_before_training():
    """The loop checks the labels once, up front, and not at every step."""
    ds = blobs(classes=4)
    ds.test_labels = ds.test_labels.copy()
    ds.test_labels[7] = 4
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        train(ds, TrainConfig(epochs=1, hidden=8), **QUIET)
