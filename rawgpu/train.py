"""The training loop: a whole run, top to bottom.

1. Check every output (:mod:`rawgpu.outputs`) and lock the checkpoint folder; check the run fits
   in memory (:mod:`rawgpu.memory`).
2. Copy the dataset to the engine once (scaled to [-1, 1], labels as int32).
3. Build the network and the optimizer (or load both from a checkpoint with ``resume``).
4. Every epoch: shuffle with a permutation seeded by ``(seed, epoch)``, so a run and a resumed
   run see the same batches; step through the batches (forward, hand-written backward, SGD);
   then measure loss and accuracy on the test set, save the checkpoint, and only then append
   the epoch's metrics record.

Crash consistency. The checkpoint carries the metrics record of every epoch it holds. A run
killed at any moment leaves a checkpoint of some epoch ``e`` (or none) and a metrics file that
may run ahead of it; resuming rewrites the metrics file to exactly epochs ``1..e`` from the
checkpoint before going on, so after any number of kills and resumes it holds each epoch once,
in order. A Ctrl-C or SIGTERM (:mod:`rawgpu.signals`) that comes while an epoch's checkpoint
and metrics line are written waits for both. A diverged run (a non-finite loss at any step,
non-finite weights or test loss after an epoch) stops with an error naming the epoch and step,
and saves nothing.

Only the training steps count towards an epoch's ``seconds``; evaluation and checkpointing
are outside the clock.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from rawgpu import checkpoint as ckpt
from rawgpu import engine as _engine
from rawgpu import memory, metrics_file, ops, outputs, signals
from rawgpu.atomic import atomic_file
from rawgpu.graphs import StepGraphs, training_stream
from rawgpu.cnn import ACTIVATIONS, CHANNELS, SmallCNN, image_shape
from rawgpu.model import TwoLayerMLP
from rawgpu.optim import SGD
from rawgpu.progress import Progress


class TrainingError(RuntimeError):
    """Training cannot go on (a diverged loss, a checkpoint of another network); says why."""


#: The networks ``--model`` picks from.
MODELS = ("mlp", "cnn")

#: The largest --hidden or --batch-size: array sizes the kernels index with 32-bit integers.
MAX_SIZE = 2**31 - 1


@dataclass
class TrainConfig:
    """The hyperparameters of a run (the defaults are the classic MNIST setup)."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    hidden: int = 128  # the MLP's hidden units; the CNN's first linear layer (the seed's: 64)
    seed: int = 0
    model: str = "mlp"  # or "cnn", rawgpu.SmallCNN
    activation: str = "none"  # the CNN's: none (the seed's network) or relu; the MLP always has its ReLU
    channels: tuple = CHANNELS  # the CNN's three conv widths (the seed's: 32, 32, 64)

    def validate(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.model == "mlp" and self.activation != "none":
            raise ValueError("--activation applies to --model cnn; the MLP always has its ReLU")
        widths = tuple(self.channels) if isinstance(self.channels, (tuple, list)) else ()
        if len(widths) != 3 or any(not isinstance(c, (int, np.integer)) or isinstance(c, bool) or not 1 <= c <= MAX_SIZE for c in widths):
            raise ValueError(f"channels must be three whole numbers from 1 to {MAX_SIZE} (the CNN's conv widths, like 32,32,64), got {self.channels!r}")
        self.channels = tuple(int(c) for c in widths)
        if self.model == "mlp" and self.channels != CHANNELS:
            raise ValueError("--channels applies to --model cnn; the MLP has no convolutions")
        for name in ("epochs", "batch_size", "hidden", "seed"):
            value = getattr(self, name)
            low = 0 if name == "seed" else 1
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name.replace('_', '-')} must be a whole number >= {low}, got {value!r}")
        for name in ("batch_size", "hidden"):  # the kernels index with 32-bit integers
            if getattr(self, name) > MAX_SIZE:
                raise ValueError(f"{name.replace('_', '-')} {getattr(self, name)} is more than {MAX_SIZE}, the largest size the kernels index")
        ops.sgd_settings(self.lr, self.momentum, self.weight_decay, self.nesterov)  # the optimizer's own checks


def prepare_images(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28) or (N, 784) -> float32 (N, 784) scaled to (x/255 - 0.5)/0.5."""
    flat = np.asarray(images).reshape(len(images), -1).astype(np.float32)
    return (flat / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)


class DeviceSplit:
    """One split of a dataset on the engine, with a shuffle buffer reused every epoch.

    Its labels are checked here, once, so the training step need not check them again (on a GPU
    that check would cost a synchronisation per step).
    """

    def __init__(self, eng, images, labels, num_classes: int):
        self.engine = eng
        self.x = eng.asarray(prepare_images(images))
        self.y = eng.asarray(np.asarray(labels, dtype=np.int32))
        ops.validate_labels(self.y, len(self), num_classes)
        self._x_shuffled = None
        self._y_shuffled = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def shuffled(self, seed: int, epoch: int):
        """The split in the order of a permutation drawn from ``(seed, epoch)``, gathered on the engine."""
        xp = self.engine.xp
        if self._x_shuffled is None:
            self._x_shuffled = xp.empty_like(self.x)
            self._y_shuffled = xp.empty_like(self.y)
        perm = np.random.default_rng([seed, epoch]).permutation(len(self))
        perm = self.engine.asarray(perm.astype(np.int64))
        xp.take(self.x, perm, axis=0, out=self._x_shuffled)
        xp.take(self.y, perm, axis=0, out=self._y_shuffled)
        return self._x_shuffled, self._y_shuffled


def _rate(per_s: float) -> str:
    """A throughput for people: 12,345 on a GPU, 0.83 in the simulator."""
    return f"{per_s:,.0f}" if per_s >= 100 else f"{per_s:.3g}"


def _fmt_arch(a: dict) -> str:
    if a.get("model") == "cnn":
        shape = "x".join(map(str, a.get("in_shape") or ()))
        return f"cnn ({shape} images, channels {a.get('channels')}, hidden {a.get('hidden')}, {a.get('classes')} classes, activation {a.get('activation')})"
    return f"{a.get('in_features')}-{a.get('hidden')}-{a.get('classes')}"


def _check_resumable(meta: dict, model: TwoLayerMLP, dataset_id: dict, config: "TrainConfig", directory, log) -> None:
    """Refuse a checkpoint of another network or dataset; list the settings that changed."""
    kind = meta["architecture"].get("model", "mlp")  # MLP checkpoints say nothing: they came first
    if kind != config.model:
        raise ckpt.CheckpointError(
            f"the checkpoint in {directory} was trained with --model {kind}, but this run has --model {config.model}; "
            f"pass --model {kind} to resume it, or use another --checkpoint-dir (the checkpoint was left untouched)"
        )
    if meta["architecture"] != model.architecture:
        flags = "--channels, --hidden and --activation" if kind == "cnn" else "--hidden"
        raise ckpt.CheckpointError(
            f"the checkpoint in {directory} is for a {_fmt_arch(meta['architecture'])} network, but this run builds "
            f"{_fmt_arch(model.architecture)}; pass the same {flags} (and data) as that run, or use another --checkpoint-dir "
            f"(the checkpoint was left untouched)"
        )
    have = meta["dataset"]
    if have.get("fingerprint") != dataset_id["fingerprint"]:
        describe = lambda d: f"{d.get('name')} ({d.get('train')} train / {d.get('test')} test images, fingerprint {d.get('fingerprint')})"  # noqa: E731
        raise ckpt.CheckpointError(
            f"the checkpoint in {directory} was trained on {describe(have)}, but this run loads {describe(dataset_id)}; "
            f"pass the same --dataset/--data-dir as that run, or use another --checkpoint-dir (the checkpoint was left untouched)"
        )
    # Other settings may change on purpose (a lower learning rate for the last epochs): the run
    # goes on with the new ones, but says so, since the result is then not the uninterrupted run's.
    # (Through JSON, as the checkpoint stored them: the conv widths are a tuple here, a list there.)
    old, new, default = meta["config"], json.loads(json.dumps(asdict(config))), json.loads(json.dumps(asdict(TrainConfig())))
    # A setting an older checkpoint does not record (model, activation) had its default then.
    changed = [f"{k.replace('_', '-')} {old.get(k, default[k])!r} -> {new[k]!r}" for k in new
               if k != "epochs" and old.get(k, default[k]) != new[k]]
    if changed:
        log(f"warning: resuming with settings that differ from the checkpoint's: {', '.join(changed)}; the run goes on with the new ones")


def _finite_params(model: TwoLayerMLP) -> bool:
    return all(bool(np.isfinite(model.engine.to_host(p)).all()) for p in model.params.values())


def _json_line(record: dict) -> str:
    # allow_nan=False: the metrics file is strict JSON (a NaN never gets this far, see _end_of_epoch).
    return json.dumps(record, allow_nan=False) + "\n"


def _read_records(path) -> list:
    """The records of a metrics file; a torn last line (a write cut off by a kill) is dropped."""
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        lines = [line for line in fh.read().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise ValueError(f"--metrics {path}: line {i + 1} is not JSON; it is not a rawgpu metrics file: delete it or choose another name") from None
    return records


def _restore_metrics(path, history: list) -> None:
    """Make the metrics file hold exactly the checkpoint's epochs, in order (atomically).

    Epoch records come from the checkpoint's history; step records (``--log-every``) are kept
    from the file for those epochs only, each epoch's steps before its epoch record.
    """
    done = len(history)
    found = _read_records(path)
    # An epoch whose record in the file is not the checkpoint's is another run's (a fresh run
    # killed before its first epoch record replaced an older file): its steps are not ours.
    other = {r["epoch"] for r in found if "step" not in r and r["epoch"] <= done and r != history[r["epoch"] - 1]}
    steps = [r for r in found if "step" in r and r["epoch"] <= done and r["epoch"] not in other]
    ordered = sorted(steps + history, key=lambda r: (r["epoch"], "step" not in r, r.get("step", 0)))
    with atomic_file(path, "w") as fh:
        fh.writelines(_json_line(r) for r in ordered)


def _append_metrics(path, record: dict, *, durable: bool = True) -> None:
    outputs.PathLock.verify_held()  # a run whose lock file was removed stops before it writes
    with open(path, "a") as fh:
        fh.write(_json_line(record))
        if durable:  # epoch records: on disk before the run goes on (step records need not be)
            fh.flush()
            os.fsync(fh.fileno())


#: The ranges SGD settings usually come from: a run that diverges outside them is blamed on them.
USUAL = {
    "lr": (0.0, 0.1, "usually 0.1 or less"),
    "momentum": (0.0, 0.99, "usually 0 to 0.99: from 1 on the velocity grows without bound"),
    "weight_decay": (0.0, 0.01, "usually 0 to 0.01"),
}


def divergence_hint(config: "TrainConfig") -> str:
    """What to change after a divergence: the settings outside their usual range, else --lr."""
    unusual = [
        f"--{name.replace('_', '-')} {getattr(config, name):g} ({why})"
        for name, (low, high, why) in USUAL.items() if not low <= getattr(config, name) <= high
    ]
    if unusual:
        return f"these settings are outside the usual range: {'; '.join(unusual)}"
    return f"try a lower learning rate (--lr, now {config.lr:g})"


def _stop_if_diverged(now: dict, done: int, steps: int, config: "TrainConfig") -> None:
    """Raise if the device recorded a non-finite loss: it kept the exact step, the host names it."""
    if now["first_bad_step"]:
        bad = done * steps + now["first_bad_step"]  # the device counts the steps of this run
        epoch, step = (bad - 1) // steps + 1, (bad - 1) % steps + 1
        raise TrainingError(
            f"the loss became non-finite at epoch {epoch}, step {step}; training stopped: {divergence_hint(config)}"
        )


def _epoch_record(epoch, loss_sum, n, test_loss, test_acc, seconds) -> dict:
    return {
        "epoch": epoch,
        "train_loss": loss_sum / n,
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "seconds": seconds,
        "samples_per_s": n / seconds,
    }


def _check_memory(eng, dataset, config: "TrainConfig", in_features: int) -> None:
    sizes = dict(n_train=len(dataset.train_labels), n_test=len(dataset.test_labels), hidden=config.hidden,
                 classes=dataset.num_classes, batch_size=config.batch_size)
    if config.model == "cnn":
        parts = memory.estimate_cnn(in_shape=image_shape(np.shape(dataset.train_images)[1:]), channels=config.channels, **sizes)
    else:
        parts = memory.estimate(in_features=in_features, **sizes)
    memory.check_fits(
        parts, engine=eng.name, hidden=config.hidden, batch_size=config.batch_size,
        available_engine=memory.device_available(eng.xp) if eng.is_device else None,
        available_host=memory.host_available(), data=getattr(dataset, "source", None),
        channels=config.channels if config.model == "cnn" else None,
    )


# A diverging run overflows in the numpy engine's matmuls before its loss turns inf or NaN; the
# loss check below stops it with an explanation, so NumPy's overflow warnings would only be noise.
@np.errstate(over="ignore", invalid="ignore")
def train(
    dataset,
    config: TrainConfig,
    *,
    metrics_path=None,
    checkpoint_dir=None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log=print,
    other_outputs: dict | None = None,
    log_every: int = 100,
    tensorboard=None,
    graphs: bool | None = None,
) -> list[dict]:
    """Train on ``dataset`` (train/test images and labels) and return one record per epoch run.

    ``resume`` continues from the checkpoint in ``checkpoint_dir``; without it a folder that
    already holds a checkpoint is refused unless ``overwrite``. ``other_outputs`` (flag -> path)
    names files the caller will write after training (the plot), so they are checked too.
    Every ``log_every`` steps the mean training loss of those steps goes to the metrics file (a
    step record), to the TensorBoard folder ``tensorboard`` where given, and to ``log`` when
    there is no progress bar. ``graphs`` (default: on where the engine is ``cuda``) replays each
    step as a recorded CUDA graph from the second epoch of the run on (:mod:`rawgpu.graphs`).
    """
    config.validate()
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"--log-every must be a whole number >= 1, got {log_every!r}")
    tensorboard = outputs.prepare_folder(tensorboard, "--tensorboard")
    if tensorboard is not None:
        from rawgpu.tensorboard_log import require_tensorboard

        require_tensorboard()
    if resume and checkpoint_dir is None:
        raise ValueError("--resume needs --checkpoint-dir (the folder holding the checkpoint)")
    metrics_path = outputs.check_file(metrics_path, "--metrics", "metrics")
    checkpoint_dir = outputs.prepare_folder(checkpoint_dir, "--checkpoint-dir")
    files = {"--metrics": metrics_path, **(other_outputs or {})}
    if checkpoint_dir is not None:  # a pipe there would hang --resume; a long folder name, the save
        files["--checkpoint-dir"] = outputs.check_file(ckpt.path_in(checkpoint_dir), "--checkpoint-dir")
    inputs = {f"{role.replace('_', ' ')} file": path for role, path in getattr(dataset, "files", {}).items()}
    outputs.check_distinct(files, inputs)

    locks = outputs.lock_outputs({"--metrics": metrics_path}, {"--checkpoint-dir": checkpoint_dir, "--tensorboard": tensorboard})
    locked = {metrics_path, files.get("--checkpoint-dir")}  # what the locks cover
    try:
        for path in files.values():
            if path is not None:
                outputs.clean_stale_temps(path, locked=path in locked)
        if checkpoint_dir is not None and not resume and not overwrite and os.path.exists(ckpt.path_in(checkpoint_dir)):
            raise outputs.OutputError(
                f"--checkpoint-dir {checkpoint_dir} already holds a checkpoint ({ckpt.path_in(checkpoint_dir)}); "
                f"continue it with --resume, replace it with --overwrite, or use another folder"
            )
        return _run(dataset, config, metrics_path, checkpoint_dir, resume, progress, log, log_every, tensorboard, graphs)
    finally:
        if metrics_path is not None:  # a fresh run stopped before its first epoch record: its file goes
            outputs.clean_stale_temps(metrics_path, locked=True)
        outputs.release_all(locks)


def _open_tensorboard(folder, config, dataset_id, eng, done: int, steps: int):
    if folder is None:
        return contextlib.nullcontext(None)
    from rawgpu.tensorboard_log import TensorBoardLog

    hparams = {**asdict(config), "dataset": dataset_id["name"], "engine": eng.name}
    # Resuming after epoch `done`: drop what a killed run logged past that epoch's last step.
    return TensorBoardLog(folder, hparams, purge_step=done * steps + 1 if done else None)


@dataclass
class _Run:
    """Everything one training run works with, built once by :func:`_run`."""

    eng: object
    config: TrainConfig
    model: TwoLayerMLP
    opt: SGD
    train_split: DeviceSplit
    test_split: DeviceSplit
    dataset_id: dict
    steps: int  # per epoch
    metrics_path: str | None  # where records are appended (a fresh run: a temporary file, until its first epoch)
    checkpoint_dir: str | None
    progress: bool
    log: object
    log_every: int
    graphs: StepGraphs | None = None  # CUDA graphs of the steps (cuda engine)
    tb: object = None  # the TensorBoard log, where asked for
    metrics_final: str | None = None  # a fresh run's --metrics, replaced by metrics_path at its first epoch record
    window: dict | None = None  # resumed: where the open --log-every window began (see _restore_sums)


def build_model(config: TrainConfig, dataset, in_features: int):
    """The network ``config.model`` names, sized for ``dataset``: the CNN takes its images in their
    channel layout (CIFAR-10 3x32x32, MNIST and Fashion 1x28x28), its linear input worked out."""
    if config.model == "cnn":
        in_shape = image_shape(np.shape(dataset.train_images)[1:])
        return SmallCNN(in_shape, dataset.num_classes, activation=config.activation, seed=config.seed,
                        channels=config.channels, hidden=config.hidden)
    return TwoLayerMLP(in_features, config.hidden, dataset.num_classes, seed=config.seed)


def _run(dataset, config, metrics_path, checkpoint_dir, resume, progress, log, log_every=100, tensorboard=None, graphs=None) -> list[dict]:
    eng = _engine.current()
    if graphs and not eng.is_device:
        log(f"note: --graphs applies to the cuda engine; the {eng.name} engine launches eagerly")
    in_features = int(np.prod(np.shape(dataset.train_images)[1:]))
    _check_memory(eng, dataset, config, in_features)
    # Everything of the run goes on one stream (on the GPU a fresh one: graph capture needs it).
    with training_stream(eng):
        train_split = DeviceSplit(eng, dataset.train_images, dataset.train_labels, dataset.num_classes)
        model = build_model(config, dataset, in_features)
        run = _Run(
            eng=eng, config=config, model=model, opt=SGD(model, config.lr, config.momentum, config.weight_decay, config.nesterov),
            train_split=train_split, test_split=DeviceSplit(eng, dataset.test_images, dataset.test_labels, dataset.num_classes),
            dataset_id=ckpt.dataset_identity(dataset), steps=math.ceil(len(train_split) / config.batch_size),
            metrics_path=metrics_path, checkpoint_dir=checkpoint_dir, progress=progress, log=log, log_every=log_every,
            graphs=StepGraphs(eng, log) if graphs is not False and eng.is_device else None,
        )
        done, history = _start(run, resume)
        if done >= config.epochs:
            if resume:
                log(f"nothing to do: the checkpoint has {done} epoch(s) and --epochs is {config.epochs}")
            return []
        with _open_tensorboard(tensorboard, config, run.dataset_id, eng, done, run.steps) as run.tb:
            return _epochs(run, done, history)


def _start(run: _Run, resume: bool) -> tuple[int, list]:
    """A fresh start, or the state of the checkpoint: (epochs done, their metrics records)."""
    if not resume:
        if run.metrics_path is not None:  # the old file stays whole until this run's first epoch record
            with outputs.writing("--metrics", run.metrics_path):
                run.metrics_final, run.metrics_path = run.metrics_path, metrics_file.start_fresh(run.metrics_path)
        return 0, []
    params, velocity, meta = ckpt.load(run.checkpoint_dir)
    _check_resumable(meta, run.model, run.dataset_id, run.config, run.checkpoint_dir, run.log)
    run.model.load_state_dict(params)
    run.opt.load_state_dict(velocity)
    _restore_sums(run, meta.get("step_sums"))
    run.log(f"resumed from {ckpt.path_in(run.checkpoint_dir)} after epoch {meta['epochs_done']}")
    if run.metrics_path is not None:
        with outputs.writing("--metrics", run.metrics_path):
            _restore_metrics(run.metrics_path, meta["history"])  # drops epochs a killed run logged past its checkpoint
    return meta["epochs_done"], meta["history"]


def _restore_sums(run: _Run, sums: dict | None) -> None:
    """Carry the loss sums over a resume, so its step and epoch records equal the uninterrupted run's.

    A --log-every window can straddle an epoch's end: a record's mean then covers steps from
    before the checkpoint. The checkpoint keeps the device's loss sums at its epoch's end and the
    open window (the mean-loss sum at the last step record, and the steps since); they go back
    into the fresh model's sums, so every later difference is the very same float64 subtraction
    the uninterrupted run makes. (Checkpoints from before this field simply start a new window.)
    The step counter is not restored: the device counts this run's steps (see _stop_if_diverged).
    """
    if sums is None:
        return
    run.model.stats.sums[...] = run.eng.asarray(np.array([sums["loss_sum"], sums["mean_sum"]], dtype=np.float64))
    run.window = {"mean_sum": sums["window_mean_sum"], "steps": -sums["window_steps"]}


def _epochs(run: _Run, done: int, history: list) -> list[dict]:
    """Epochs ``done + 1 .. epochs``: train, evaluate, checkpoint, log."""
    records = []
    # The device keeps the running loss sums and the first non-finite step (model.stats); the
    # host reads them every log_every steps and at each epoch's end, never per step.
    last = run.model.stats.read()  # at the last epoch's end
    seen = {**last, **run.window} if run.window else last  # at the last step record
    for epoch in range(done + 1, run.config.epochs + 1):
        bar = Progress(run.steps, f"epoch {epoch}/{run.config.epochs}", enabled=run.progress)
        run.eng.synchronize()
        start = time.perf_counter()
        now, seen = _train_epoch(run, epoch, done, bar, start, seen)
        run.eng.synchronize()
        seconds = time.perf_counter() - start
        loss_sum, last = now["loss_sum"] - last["loss_sum"], now  # the sum of this epoch's row losses
        record = _evaluate(run, epoch, loss_sum, seconds, bar)
        records.append(record)
        history = history + [record]
        sums = {"loss_sum": now["loss_sum"], "mean_sum": now["mean_sum"],
                "window_mean_sum": seen["mean_sum"], "window_steps": now["steps"] - seen["steps"]}
        with signals.deferred():  # a Ctrl-C or SIGTERM waits until the checkpoint and its metrics line are both written
            _save_epoch(run, epoch, record, history, sums)
    return records


def _train_epoch(run: _Run, epoch: int, done: int, bar, start: float, seen: dict) -> tuple[dict, dict]:
    """One epoch of steps. ``seen``: the device's sums at the last step record (a record's window
    of log_every steps may start in the epoch before). Returns the sums read at the epoch's end,
    and those of its last step record."""
    config, model, opt, steps = run.config, run.model, run.opt, run.steps
    bs = config.batch_size
    x_all, y_all = run.train_split.shuffled(config.seed, epoch)
    for step in range(steps):
        lo = step * bs
        xb, yb = x_all[lo : lo + bs], y_all[lo : lo + bs]  # labels checked once, in DeviceSplit

        def one_step(xb=xb, yb=yb):  # six launches
            model.loss_and_grads(xb, yb)
            opt.step()

        if run.graphs is None or epoch == done + 1:
            one_step()  # eager (the run's first epoch always: it compiles and allocates)
        else:
            run.graphs.run(step, one_step)  # step k's recorded graph: the same slice every epoch
        bar.update(1)
        global_step = (epoch - 1) * steps + step + 1
        if global_step % run.log_every and step < steps - 1:
            continue  # no look at the device this step: the GPU runs ahead
        now = model.stats.read()  # the one host synchronisation every log_every steps
        _stop_if_diverged(now, done, steps, config)
        if global_step % run.log_every == 0:
            running = (now["mean_sum"] - seen["mean_sum"]) / (now["steps"] - seen["steps"])
            _log_step(run, epoch, global_step, running)
            bar.update(0, f"loss {running:.4f}  {_rate((lo + bs) / max(time.perf_counter() - start, 1e-9))} samples/s")
            seen = now
    return now, seen


def _log_step(run: _Run, epoch: int, global_step: int, running: float) -> None:
    """A step record: the mean loss of the last log_every steps, to every log the run keeps."""
    if run.metrics_path is not None:
        with outputs.writing("--metrics", run.metrics_final or run.metrics_path):
            _append_metrics(run.metrics_path, {"epoch": epoch, "step": global_step, "train_loss": running}, durable=False)
    if run.tb is not None:
        run.tb.step(global_step, running)
    if not run.progress:
        run.log(f"epoch {epoch}/{run.config.epochs} step {global_step}: train loss {running:.4f}")


def _evaluate(run: _Run, epoch: int, loss_sum: float, seconds: float, bar) -> dict:
    """Test loss and accuracy after an epoch, refusing weights that blew up; the epoch's record."""
    # Every step's loss was finite, but the last update can still blow the weights up (one
    # huge step): then nothing of this epoch may be saved or reported as a result.
    test_loss, test_acc = run.model.evaluate(run.test_split.x, run.test_split.y)
    if not (math.isfinite(test_loss) and _finite_params(run.model)):
        bar.close()
        raise TrainingError(
            f"the weights became non-finite at epoch {epoch}, step {run.steps} (its last update; the test loss is {test_loss}); "
            f"training stopped and nothing of this epoch was saved: {divergence_hint(run.config)}"
        )
    record = _epoch_record(epoch, loss_sum, len(run.train_split), test_loss, test_acc, seconds)
    summary = (
        f"train loss {record['train_loss']:.4f}  test loss {test_loss:.4f}  test acc {test_acc:.4f}  "
        f"{_rate(record['samples_per_s'])} samples/s"
    )
    bar.close(summary)
    if not run.progress:  # no bar, but a log still gets one line per epoch
        run.log(f"epoch {epoch}/{run.config.epochs}: {summary}")
    return record


def _save_epoch(run: _Run, epoch: int, record: dict, history: list, step_sums: dict) -> None:
    # The checkpoint first, then the metrics line: a kill between the two leaves a metrics
    # file one epoch behind, which the next --resume restores from the checkpoint's history.
    outputs.PathLock.verify_held()
    if run.checkpoint_dir is not None:
        ckpt.save(
            run.checkpoint_dir,
            params=run.model.state_dict(),
            velocity=run.opt.state_dict(),
            meta={
                "epochs_done": epoch, "architecture": run.model.architecture, "config": asdict(run.config),
                "dataset": run.dataset_id, "engine": run.eng.name, "history": history, "step_sums": step_sums,
            },
        )
    if run.metrics_path is not None:
        with outputs.writing("--metrics", run.metrics_final or run.metrics_path):
            _append_metrics(run.metrics_path, record)
            if run.metrics_final is not None:  # a fresh run's first epoch record is on disk: now it replaces the old file
                metrics_file.commit(run.metrics_path, run.metrics_final)
                run.metrics_path, run.metrics_final = run.metrics_final, None
    if run.tb is not None:
        run.tb.epoch(epoch, epoch * run.steps, record)
