"""The training loop: a whole run, top to bottom.

1. Copy the dataset to the engine once (scaled to [-1, 1], labels as int32).
2. Build the network and the optimizer (or load both from a checkpoint with ``resume``).
3. Every epoch: shuffle with a permutation seeded by ``(seed, epoch)``, so a run and a resumed
   run see the same batches; step through the batches (forward, hand-written backward, SGD);
   then measure loss and accuracy on the test set, append a metrics record and checkpoint.

Only the training steps count towards an epoch's ``seconds``; evaluation and checkpointing
are outside the clock.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from rawgpu import checkpoint as ckpt
from rawgpu import engine as _engine
from rawgpu import ops
from rawgpu.model import TwoLayerMLP
from rawgpu.optim import SGD
from rawgpu.progress import Progress


class TrainingError(RuntimeError):
    """Training cannot go on (a diverged loss, a checkpoint of another network); says why."""


@dataclass
class TrainConfig:
    """The hyperparameters of a run (the defaults are the classic MNIST setup)."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    hidden: int = 128
    seed: int = 0

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "hidden"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a whole number >= 1, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        for name in ("momentum", "weight_decay"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name.replace('_', '-')} must be a finite number >= 0, got {value!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")


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


def _check_resumable(meta: dict, model: TwoLayerMLP, directory) -> None:
    have = meta.get("architecture", {})
    want = model.architecture
    if have != want:
        fmt = lambda a: f"{a.get('in_features')}-{a.get('hidden')}-{a.get('classes')}"  # noqa: E731
        raise ckpt.CheckpointError(
            f"the checkpoint in {directory} is for a {fmt(have)} network, but this run builds {fmt(want)}; "
            f"pass the same --hidden (and data) as that run, or use another --checkpoint-dir (the checkpoint was left untouched)"
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
    progress: bool = True,
    log=print,
) -> list[dict]:
    """Train on ``dataset`` (train/test images and labels) and return one record per epoch run."""
    config.validate()
    eng = _engine.current()
    train_split = DeviceSplit(eng, dataset.train_images, dataset.train_labels, dataset.num_classes)
    test_split = DeviceSplit(eng, dataset.test_images, dataset.test_labels, dataset.num_classes)
    in_features = train_split.x.shape[1]
    model = TwoLayerMLP(in_features, config.hidden, dataset.num_classes, seed=config.seed)
    opt = SGD(model, config.lr, config.momentum, config.weight_decay, config.nesterov)

    done = 0
    if resume:
        if checkpoint_dir is None:
            raise ValueError("--resume needs --checkpoint-dir (the folder holding the checkpoint)")
        params, velocity, meta = ckpt.load(checkpoint_dir)
        _check_resumable(meta, model, checkpoint_dir)
        model.load_state_dict(params)
        opt.load_state_dict(velocity)
        done = int(meta["epochs_done"])
        log(f"resumed from {ckpt.path_in(checkpoint_dir)} after epoch {done}")
        if done >= config.epochs:
            log(f"nothing to do: the checkpoint has {done} epoch(s) and --epochs is {config.epochs}")
            return []

    if metrics_path is not None and not resume:
        open(metrics_path, "w").close()  # a fresh run starts a fresh metrics file

    records = []
    n, bs = len(train_split), config.batch_size
    steps = math.ceil(n / bs)
    for epoch in range(done + 1, config.epochs + 1):
        x_all, y_all = train_split.shuffled(config.seed, epoch)
        bar = Progress(steps, f"epoch {epoch}/{config.epochs}", enabled=progress)
        loss_sum = 0.0
        eng.synchronize()
        start = time.perf_counter()
        for step in range(steps):
            lo = step * bs
            xb, yb = x_all[lo : lo + bs], y_all[lo : lo + bs]
            loss = model.loss_and_grads(xb, yb, check_labels=False)  # checked once, in DeviceSplit
            if not math.isfinite(loss):
                bar.close()
                raise TrainingError(
                    f"the loss became {loss} at epoch {epoch}, step {step + 1}; "
                    f"training stopped: try a lower learning rate (--lr, now {config.lr:g})"
                )
            opt.step()
            loss_sum += loss * xb.shape[0]
            if step % 10 == 0 or step == steps - 1:
                elapsed = time.perf_counter() - start
                bar.update(step + 1 - bar.count, f"loss {loss:.4f}  {_rate((lo + xb.shape[0]) / max(elapsed, 1e-9))} samples/s")
        eng.synchronize()
        seconds = time.perf_counter() - start
        test_loss, test_acc = model.evaluate(test_split.x, test_split.y)
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / n,
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "seconds": seconds,
            "samples_per_s": n / seconds,
        }
        summary = (
            f"train loss {record['train_loss']:.4f}  test loss {test_loss:.4f}  test acc {test_acc:.4f}  "
            f"{_rate(record['samples_per_s'])} samples/s"
        )
        bar.close(summary)
        if not progress:  # no bar, but a log still gets one line per epoch
            log(f"epoch {epoch}/{config.epochs}: {summary}")
        records.append(record)
        if metrics_path is not None:
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        if checkpoint_dir is not None:
            ckpt.save(
                checkpoint_dir,
                params=model.state_dict(),
                velocity=opt.state_dict(),
                meta={"epochs_done": epoch, "architecture": model.architecture, "config": asdict(config), "engine": eng.name},
            )
    return records


def check_writable(path, what: str) -> None:
    """Fail before training, not after it, when an output file cannot be written."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{what} {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"{what} {path} is a folder; give a file name")
