"""TensorBoard event files for a training run (needs the ``tensorboard`` extra).

    from rawgpu.tensorboard_log import TensorBoardLog, require_tensorboard

    require_tensorboard()                          # before any work: a one-line error if the extra is missing
    tb = TensorBoardLog("runs/cifar", {"lr": 0.01, "batch_size": 128, "dataset": "cifar10"})
    tb.step(global_step, loss)                     # every --log-every steps
    tb.epoch(epoch, global_step, record)           # once per epoch, record as in --metrics
    tb.close()                                     # or use it as a context manager

What lands in the event file, every value at x = the global step (optimizer steps since the
start of training), so all the charts share one axis:

    train_loss        the training loss every N steps (as the example's add_scalar('train_loss', ...))
    test_loss         after each epoch, on the whole test set
    test_accuracy     after each epoch
    train_loss_epoch  the mean training loss of the epoch (its own tag: 'train_loss' is the per-step series)
    samples_per_s     the epoch's training throughput
    epoch             the epoch number, to map steps to epochs
    hparams (text)    the hyperparameters as a Markdown table (TensorBoard's TEXT tab)

and the hyperparameters once more in the format of TensorBoard's HPARAMS tab: an experiment and
a session in this very run, with test_accuracy, test_loss and train_loss_epoch as its metrics,
so the tab shows each run's final figures beside its settings.

The writer is the tensorboard package's own EventFileWriter: the one its TF-free
``tensorboard.summary.Writer`` and PyTorch's ``torch.utils.tensorboard`` write with. The
summaries are TensorBoard's protocol buffers, filled in here the way PyTorch fills them (the
package's helpers that build them need TensorFlow). So the extra is one package, the same one
that shows the logs, and neither TensorFlow nor PyTorch is imported.

The values given to ``step`` are plain Python floats: reading a loss from the GPU waits for the
GPU, so the training loop reads it every N steps, never per step, and hands it over here.
"""

from __future__ import annotations

import numbers
import os
import time

from rawgpu.outputs import writing

EXTRA = "pip install 'rawgpu[tensorboard]'"

# Tags, in one place so the trainer, the tests and the README agree.
STEP_LOSS = "train_loss"
EPOCH_TAGS = {  # --metrics record key -> TensorBoard tag
    "test_loss": "test_loss",
    "test_accuracy": "test_accuracy",
    "train_loss": "train_loss_epoch",
    "samples_per_s": "samples_per_s",
}
EPOCH = "epoch"
HPARAMS_TEXT = "hparams"
HPARAM_METRICS = ("test_accuracy", "test_loss", "train_loss_epoch")


def require_tensorboard():
    """Import the tensorboard package's writer, or raise a one-line ValueError naming the extra."""
    try:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise ValueError(f"--tensorboard needs the tensorboard package: {EXTRA}") from None
    return EventFileWriter


def _hparam_value(value):
    """A value TensorBoard's HPARAMS tab can hold: bool, number or text (None becomes 'none')."""
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Real):
        return float(value) if not isinstance(value, numbers.Integral) else int(value)
    return "none" if value is None else str(value)


def _markdown_table(hparams: dict) -> str:
    rows = "".join(f"\n| {k} | {v} |" for k, v in hparams.items())
    return "| hyperparameter | value |\n|---|---|" + rows


# --------------------------------------------------------------------------------------------
# The summaries, as TensorBoard's protocol buffers


def _scalar(tag: str, value: float):
    """The classic scalar summary (``simple_value``), which every TensorBoard reads as a scalar."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    return Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])


def _text(tag: str, markdown: str):
    """A text summary: a string tensor marked for the text plugin (TensorBoard's TEXT tab)."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.compat.proto.types_pb2 import DT_STRING
    from tensorboard.plugins.text import metadata

    tensor = TensorProto(
        dtype=DT_STRING, string_val=[markdown.encode("utf-8")],
        tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
    )
    meta = metadata.create_summary_metadata(display_name=tag, description="")
    return Summary(value=[Summary.Value(tag=tag, metadata=meta, tensor=tensor)])


def _hparams_summaries(hparams: dict, metrics):
    """(experiment, session start, session end) summaries for the HPARAMS tab.

    The experiment says which hyperparameters and metrics exist; the session start gives this
    run's values; the session end says the run finished. The metrics' values are not here: the
    tab reads them from this run's scalars of the same tags.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    infos = []
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in hparams.items():
        if isinstance(value, bool):
            start.hparams[name].bool_value, kind = value, api_pb2.DATA_TYPE_BOOL
        elif isinstance(value, (int, float)):
            start.hparams[name].number_value, kind = float(value), api_pb2.DATA_TYPE_FLOAT64
        else:
            start.hparams[name].string_value, kind = str(value), api_pb2.DATA_TYPE_STRING
        infos.append(api_pb2.HParamInfo(name=name, type=kind))
    experiment = api_pb2.Experiment(
        hparam_infos=infos, metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m)) for m in metrics],
    )
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS)

    def summary(tag, **data):
        content = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **data)
        return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(content))])

    return (
        summary(metadata.EXPERIMENT_TAG, experiment=experiment),
        summary(metadata.SESSION_START_INFO_TAG, session_start_info=start),
        summary(metadata.SESSION_END_INFO_TAG, session_end_info=end),
    )


# --------------------------------------------------------------------------------------------
# The log


class TensorBoardLog:
    """One training run's TensorBoard events, written into the folder ``logdir``.

    ``hparams``: name -> value (numbers, booleans, text; None and anything else become text).
    ``purge_step``: when a run resumes from a checkpoint taken at this global step, pass it:
    TensorBoard then drops whatever earlier runs logged in this folder at that step or later
    (an interrupted run's last steps), so the resumed curve does not overlap the abandoned one.
    """

    def __init__(self, logdir, hparams: dict | None = None, *, purge_step: int | None = None, flush_secs: int = 10):
        EventFileWriter = require_tensorboard()
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        self._Event = Event
        self.logdir = os.fspath(logdir)
        try:
            os.makedirs(self.logdir, exist_ok=True)
            if not os.access(self.logdir, os.W_OK | os.X_OK):
                raise PermissionError(13, "permission denied")
        except OSError as exc:
            raise ValueError(
                f"--tensorboard {self.logdir}: cannot write event files there ({exc.strerror or exc}); choose a writable folder"
            ) from None
        # The file is named by the second, host, process and a counter: two runs never share one.
        with writing("--tensorboard", self.logdir):
            self._writer = EventFileWriter(self.logdir, flush_secs=flush_secs)
        self._closed = False
        start = self._last_step = 0
        if purge_step is not None:
            # A "session start" at step S tells TensorBoard's reader to forget every event at step
            # S or later read before it, i.e. from the older files of this folder.
            start = int(purge_step)
            self._writer.add_event(Event(wall_time=time.time(), step=start, session_log=SessionLog(status=SessionLog.START)))
            self._last_step = start
        self.hparams = {k: _hparam_value(v) for k, v in (hparams or {}).items()}
        experiment, session_start, self._session_end = _hparams_summaries(self.hparams, HPARAM_METRICS)
        for summary in (_text(HPARAMS_TEXT, _markdown_table(self.hparams)), experiment, session_start):
            self._add(summary, start)

    def _add(self, summary, step: int) -> None:
        self._last_step = max(self._last_step, int(step))
        with writing("--tensorboard", self.logdir):  # a full disk: one line naming the folder
            self._writer.add_event(self._Event(wall_time=time.time(), step=int(step), summary=summary))

    def step(self, global_step: int, train_loss: float) -> None:
        """The training loss at ``global_step`` (a host float, read from the device every N steps)."""
        self._add(_scalar(STEP_LOSS, train_loss), global_step)

    def epoch(self, epoch: int, global_step: int, record: dict) -> None:
        """The figures of a finished epoch, from a --metrics record (keys of EPOCH_TAGS; others ignored)."""
        self._add(_scalar(EPOCH, epoch), global_step)
        for key, tag in EPOCH_TAGS.items():
            value = record.get(key)
            if isinstance(value, numbers.Real) and not isinstance(value, bool):  # NaN too: a diverged run shows
                self._add(_scalar(tag, value), global_step)
        with writing("--tensorboard", self.logdir):
            self._writer.flush()  # an open TensorBoard shows the epoch now, not flush_secs later

    def close(self, completed: bool = True) -> None:
        """Flush and close the event file; mark the HPARAMS session finished only if ``completed``."""
        if self._closed:
            return
        self._closed = True
        if completed:
            self._add(self._session_end, self._last_step)
        with writing("--tensorboard", self.logdir):
            self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(completed=exc_type is None)
        return False
