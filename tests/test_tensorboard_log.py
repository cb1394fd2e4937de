"""TensorBoard logs: written with rawgpu.tensorboard_log, read back with TensorBoard's own reader.

The reader is tensorboard's EventAccumulator (what the TensorBoard server itself loads runs
with), so a tag, step or value it cannot see would not show in TensorBoard either.
"""

import importlib.util
import math
import sys

import pytest

from rawgpu import tensorboard_log
from rawgpu.tensorboard_log import TensorBoardLog, require_tensorboard

needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed (pip install 'rawgpu[tensorboard]')"
)

HPARAMS = {"dataset": "cifar10", "lr": 0.01, "momentum": 0.9, "batch_size": 128, "hidden": 3072,
           "nesterov": False, "weight_decay": None, "engine": "numpy"}


def load(logdir):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def series(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def write_run(logdir, *, completed=True):
    """Two epochs of 250 steps, the loss logged every 100 steps, as the trainer would."""
    steps = [(s, 2.3 - s / 1000) for s in (100, 200, 300, 400, 500)]
    records = [
        {"epoch": 1, "train_loss": 2.1, "test_loss": 1.9, "test_accuracy": 0.31, "seconds": 1.5, "samples_per_s": 21333.3},
        {"epoch": 2, "train_loss": 1.7, "test_loss": 1.6, "test_accuracy": 0.42, "seconds": 1.4, "samples_per_s": 22857.1},
    ]
    with TensorBoardLog(logdir, HPARAMS) as tb:
        for s, loss in steps[:2]:
            tb.step(s, loss)
        tb.epoch(1, 250, records[0])
        for s, loss in steps[2:]:
            tb.step(s, loss)
        tb.epoch(2, 500, records[1])
        if not completed:
            raise KeyboardInterrupt
    return steps, records


@needs_tensorboard
def test_scalars_read_back(tmp_path):
    steps, records = write_run(tmp_path / "run")
    acc = load(tmp_path / "run")
    tags = set(acc.Tags()["scalars"])
    assert {"train_loss", "test_loss", "test_accuracy", "train_loss_epoch", "samples_per_s", "epoch"} <= tags
    for (step, value), (s, v) in zip(series(acc, "train_loss"), steps, strict=True):
        assert step == s and value == pytest.approx(v, rel=1e-6)  # float32 in the file
    for key, tag in tensorboard_log.EPOCH_TAGS.items():
        assert [s for s, _ in series(acc, tag)] == [250, 500], tag
        assert [v for _, v in series(acc, tag)] == pytest.approx([r[key] for r in records], rel=1e-6), tag
    assert series(acc, "epoch") == [(250, 1.0), (500, 2.0)]


@needs_tensorboard
def test_hyperparameters_read_back(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    write_run(tmp_path / "run")
    acc = load(tmp_path / "run")
    # The HPARAMS tab's records, in this run's own folder (no sub-folder per session).
    content = acc.PluginTagToContent("hparams")
    assert set(content) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    got = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert got == {"dataset": "cifar10", "lr": 0.01, "momentum": 0.9, "batch_size": 128.0, "hidden": 3072.0,
                   "nesterov": False, "weight_decay": "none", "engine": "numpy"}
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == list(tensorboard_log.HPARAM_METRICS)
    # The same settings as a Markdown table in the TEXT tab.
    (text,) = acc.Tensors("hparams")
    table = text.tensor_proto.string_val[0].decode()
    assert "| lr | 0.01 |" in table and "| dataset | cifar10 |" in table
    assert [p.name for p in (tmp_path / "run").iterdir()] == [p.name for p in (tmp_path / "run").glob("events.out.tfevents.*")]


@needs_tensorboard
def test_interrupted_run_is_not_marked_finished(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        write_run(tmp_path / "run", completed=False)
    acc = load(tmp_path / "run")
    assert len(acc.Scalars("train_loss")) == 5  # what was logged is kept
    assert "_hparams_/session_end_info" not in acc.PluginTagToContent("hparams")


@needs_tensorboard
def test_resumed_run_purges_the_abandoned_steps(tmp_path):
    first = TensorBoardLog(tmp_path / "run", HPARAMS)
    for s in (100, 200, 300):
        first.step(s, 1.0)
    first.close(completed=False)  # killed after step 300; the checkpoint was taken at step 250
    resumed = TensorBoardLog(tmp_path / "run", HPARAMS, purge_step=250)
    resumed.step(300, 0.5)
    resumed.close()
    assert series(load(tmp_path / "run"), "train_loss") == [(100, 1.0), (200, 1.0), (300, 0.5)]


@needs_tensorboard
def test_nan_loss_is_logged_and_missing_keys_skipped(tmp_path):
    with TensorBoardLog(tmp_path / "run", {}) as tb:
        tb.step(100, float("nan"))
        tb.epoch(1, 100, {"train_loss": float("nan"), "test_accuracy": 0.1})
    acc = load(tmp_path / "run")
    assert math.isnan(acc.Scalars("train_loss")[0].value) and math.isnan(acc.Scalars("train_loss_epoch")[0].value)
    assert "test_loss" not in acc.Tags()["scalars"] and "samples_per_s" not in acc.Tags()["scalars"]


def test_without_the_extra_the_error_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard.summary.writer.event_file_writer", None)  # as if not installed
    for call in (require_tensorboard, lambda: TensorBoardLog(tmp_path / "run", {})):
        with pytest.raises(ValueError) as exc:
            call()
        assert str(exc.value) == "--tensorboard needs the tensorboard package: pip install 'rawgpu[tensorboard]'"
    assert not (tmp_path / "run").exists()


@needs_tensorboard
def test_unwritable_logdir(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ValueError, match="--tensorboard .*file/run: cannot write event files there") as exc:
        TensorBoardLog(tmp_path / "file" / "run", {})
    assert "\n" not in str(exc.value)
