"""The systems ``bench/train.py`` compares, each training the same network the same way.

Every system trains the same network, ``--model mlp`` (``D-H-C``: Linear, ReLU, Linear) or
``--model cnn`` (rawgpu.SmallCNN: three 5x5 conv + 2x2 max-pool stages, two linear layers, with
or without ReLUs), with mean cross-entropy and SGD (learning rate 0.01, momentum 0.9), on inputs
scaled to ``(x/255 - 0.5)/0.5``, from the same initial weights (rawgpu's, drawn from the seed),
on the same batches (rawgpu's permutation of each epoch). The whole data set sits on the
system's device before the first epoch, and an epoch's clock covers its training steps only:
the shuffle before it and the test evaluation after it are outside, as in rawgpu's trainer.
Each runner returns one record per epoch: ``seconds``, ``train_loss``, ``test_accuracy``.

* ``rawgpu-cuda``, ``rawgpu-numpy``: ``rawgpu.train.train`` on that engine, unchanged.
* ``torch-cuda``, ``torch-cpu``: PyTorch eager, the textbook loop (its convolutions: cuDNN on
  the GPU, oneDNN or PyTorch's own CPU kernels on the host). It accumulates the loss on
  the device and reads it once per epoch, so no step waits for the GPU; rawgpu's trainer keeps
  its loss sums on the device too and reads them every ``log_every`` (100) steps and at the end
  of each epoch.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np

from common import NO_GPU, summarize

SYSTEMS = ("rawgpu-cuda", "rawgpu-numpy", "torch-cuda", "torch-cpu")
LR, MOMENTUM = 0.01, 0.9
EVAL_BATCH = 1000


def unavailable(system: str) -> tuple[str, str] | None:
    """(status, reason) when ``system`` cannot run here, e.g. ("no GPU", "CuPy sees no CUDA device");
    None when it can."""
    if system == "rawgpu-numpy":
        return None
    if system == "rawgpu-cuda":
        from rawgpu.engine import probe_gpu

        usable, why = probe_gpu()
        return None if usable else (NO_GPU, why)
    try:
        import torch
    except ImportError:
        return "no PyTorch", "PyTorch is not installed (pip install torch)"
    if system == "torch-cuda" and not torch.cuda.is_available():
        return NO_GPU, "torch.cuda.is_available() is False"
    return None


@dataclass(frozen=True)
class Net:
    """Which network a run trains: the model kind and what sizes it (see rawgpu.train.build_model)."""

    model: str = "mlp"  # or "cnn"
    hidden: int = 128  # the MLP's hidden units; the CNN's first linear layer
    activation: str = "none"  # the CNN's: none (the seed's network) or relu

    def config(self, **settings):
        from rawgpu.train import TrainConfig

        return TrainConfig(model=self.model, hidden=self.hidden, activation=self.activation, lr=LR, momentum=MOMENTUM, **settings)

    def build(self, data, seed: int):
        """rawgpu's network for ``data`` on the current engine, initialised from ``seed``."""
        from rawgpu.train import build_model

        return build_model(self.config(seed=seed), data, int(np.prod(np.shape(data.train_images)[1:])))


def initial_weights(net: Net, data, seed: int) -> dict:
    """The weights rawgpu's network starts from for ``seed`` (NumPy; linear W stored (in, out),
    conv W (out, in, K, K))."""
    import rawgpu

    rawgpu.use("numpy")  # the runners pick their own engine again; this only draws the weights
    return net.build(data, seed).state_dict()


# ---------------------------------------------------------------------------------------------
# rawgpu
# ---------------------------------------------------------------------------------------------


def run_rawgpu(engine: str, data, net: Net, batch: int, epochs: int, seed: int) -> list[dict]:
    import rawgpu
    from rawgpu.train import train

    rawgpu.use(engine)
    records = train(data, net.config(epochs=epochs, batch_size=batch, seed=seed), progress=False, log=lambda msg: None)
    return [{k: r[k] for k in ("epoch", "seconds", "train_loss", "test_accuracy")} for r in records]


class _CallRecorder:
    """Records the op calls an engine's backend receives (the kernels of a training step).

    rawgpu's op layer validates arguments, then calls the backend; wrapping the backend's methods
    captures exactly the kernel launches of a step, with their arrays, so they can be replayed.
    """

    METHODS = (
        "matmul", "bias_add", "bias_relu", "relu_backward", "col_sum", "softmax_cross_entropy", "sgd_momentum_", "correct_count",
        "linear_relu", "linear_softmax_ce", "linear_backward_relu", "weight_grad",  # the fused step: one launch each
        "conv2d", "conv2d_input_grad", "conv2d_weight_grad", "maxpool2x2", "maxpool2x2_backward",  # the CNN's
    )

    def __init__(self, backend):
        self.backend, self.calls = backend, []

    def __enter__(self):
        for name in self.METHODS:
            original = getattr(self.backend, name)

            def wrapper(*args, _original=original, **kwargs):
                self.calls.append((_original, args, kwargs))
                return _original(*args, **kwargs)

            setattr(self.backend, name, wrapper)  # an instance attribute shadows the method
        return self

    def __exit__(self, *exc):
        for name in self.METHODS:
            delattr(self.backend, name)


def split_rawgpu_step(data, net: Net, batch: int, seed: int, steps: int) -> dict:
    """Kernel time versus everything else in one rawgpu-cuda training step (see bench/README.md).

    wall: host clock around ``loss_and_grads`` + ``opt.step()`` and a final synchronize.
    kernel: the same step's backend calls replayed back to back behind a GPU delay, timed with
    CUDA events, so only the kernels' own execution is counted.
    overhead = wall - kernel: Python, argument checks, launch latency and the loss read-back. The
    step is the training loop's: labels checked once up front, not at every step.
    """
    import rawgpu
    from rawgpu import ops
    from rawgpu.train import prepare_images

    eng = rawgpu.use("cuda")
    c = int(data.num_classes)
    model = net.build(data, seed)
    opt = rawgpu.SGD(model, LR, MOMENTUM)
    x = eng.asarray(prepare_images(data.train_images[:batch]))
    y = eng.asarray(np.asarray(data.train_labels[:batch], dtype=np.int32))

    ops.validate_labels(y, batch, c)

    def step():
        model.loss_and_grads(x, y)
        opt.step()

    for _ in range(10):  # warm-up: JIT compilation, allocator, caches
        step()
    eng.synchronize()
    wall = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        eng.synchronize()
        wall.append((time.perf_counter() - t0) * 1e3)

    syncs = []  # every read of device memory or wait for the device goes through these two
    to_host, synchronize = type(eng).to_host, type(eng).synchronize
    eng.to_host = lambda arr: syncs.append("to_host") or to_host(eng, arr)
    eng.synchronize = lambda: syncs.append("synchronize") or synchronize(eng)
    try:
        with _CallRecorder(eng.backend) as rec:
            step()
    finally:
        del eng.to_host, eng.synchronize
    calls = rec.calls

    def replay(_):
        for fn, args, kwargs in calls:
            fn(*args, **kwargs)

    gpu = _gpu_timer().time(replay, 1, warmup=3, min_reps=steps, max_reps=steps, budget_s=0.0, flush=False)
    split = _split(summarize(wall), gpu, len(calls), "replayed backend calls behind a GPU delay kernel, CUDA events")
    return {**split, "launches_per_step": len(calls), "host_syncs_per_step": len(syncs)}


@functools.lru_cache(maxsize=1)
def _gpu_timer():
    from timing import GpuTimer

    return GpuTimer()


def _split(wall: dict, gpu: dict, ops: int | None, how: str) -> dict:
    kernel = gpu["ms"]["median"]
    return {
        "wall_ms": wall,
        "kernel_ms": gpu["ms"],
        "overhead_ms": wall["median"] - kernel,
        "kernel_fraction": kernel / wall["median"],
        "ops_per_step": ops,
        "host_behind": gpu["host_behind"],
        "how": how,
    }


# ---------------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------------


def torch_network(net: Net, weights: dict):
    """The PyTorch module of ``net``, holding rawgpu's ``weights`` (float32, on the CPU).

    The CNN is rawgpu/cnn.py's network written the textbook PyTorch way: Conv2d(pad K//2) ->
    [ReLU] -> MaxPool2d(2), three times, Flatten, Linear -> [ReLU] -> Linear, each layer sized
    from rawgpu's weights (so a 1x28x28 network gets its 576-input linear layer as rawgpu's does).
    """
    import torch
    from torch import nn

    if net.model == "cnn":
        act = [nn.ReLU()] if net.activation == "relu" else []
        stages = []
        for i in (1, 2, 3):
            out_c, in_c, k, _ = weights[f"W{i}"].shape
            stages += [nn.Conv2d(in_c, out_c, k, padding=k // 2), *act, nn.MaxPool2d(2)]
        module = nn.Sequential(*stages, nn.Flatten(), nn.Linear(*weights["W4"].shape), *act, nn.Linear(*weights["W5"].shape))
    else:
        (d, h), (_, c) = weights["W1"].shape, weights["W2"].shape
        module = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, c))
    layers = [m for m in module if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for i, layer in enumerate(layers, start=1):
            w = weights[f"W{i}"]
            # nn.Linear stores weights (out, in): the transpose of rawgpu's; conv weights match.
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w if w.ndim == 4 else w.T)))
            layer.bias.copy_(torch.from_numpy(weights[f"b{i}"]))
    return module


class TorchRun:
    """One PyTorch training run: the same network, data and initial weights as rawgpu's."""

    def __init__(self, device: str, data, net: Net, batch: int, seed: int):
        import torch
        from torch import nn

        from rawgpu.cnn import image_shape
        from rawgpu.train import prepare_images

        self.torch, self.dev, self.batch = torch, torch.device(device), batch
        self.cuda = self.dev.type == "cuda"
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = False  # FP32 products, as rawgpu computes them
            torch.backends.cudnn.allow_tf32 = False  # and FP32 convolutions in cuDNN
        # The MLP eats rows of pixels; the CNN images in their channel layout (N, C, H, W).
        pixels = np.shape(data.train_images)[1:]
        shape = (-1, *image_shape(pixels)) if net.model == "cnn" else (-1, int(np.prod(pixels)))
        put = lambda a: torch.from_numpy(np.ascontiguousarray(prepare_images(a).reshape(shape))).to(self.dev)  # noqa: E731
        self.x, self.x_test = put(data.train_images), put(data.test_images)
        self.y = torch.from_numpy(np.asarray(data.train_labels, dtype=np.int64)).to(self.dev)
        self.y_test = torch.from_numpy(np.asarray(data.test_labels, dtype=np.int64)).to(self.dev)
        self.model = torch_network(net, initial_weights(net, data, seed)).to(self.dev)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.loss_fn = nn.CrossEntropyLoss()
        self.seed = seed

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def step(self, xb, yb):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(xb), yb)
        loss.backward()
        self.opt.step()
        return loss

    def epochs(self, epochs: int) -> list[dict]:
        torch, n, bs = self.torch, self.x.shape[0], self.batch
        records = []
        for epoch in range(1, epochs + 1):
            # rawgpu's trainer's permutation for (seed, epoch): the very same batches, in the same order
            perm = torch.from_numpy(np.random.default_rng([self.seed, epoch]).permutation(n)).to(self.dev)
            xs, ys = self.x[perm], self.y[perm]
            self.sync()
            start = time.perf_counter()
            loss_sum = torch.zeros((), device=self.dev)
            for lo in range(0, n, bs):
                xb, yb = xs[lo : lo + bs], ys[lo : lo + bs]
                loss_sum += self.step(xb, yb).detach() * xb.shape[0]
            self.sync()
            seconds = time.perf_counter() - start
            records.append({"epoch": epoch, "seconds": seconds, "train_loss": float(loss_sum) / n, "test_accuracy": self.accuracy()})
        return records

    def accuracy(self) -> float:
        torch, correct = self.torch, 0
        with torch.no_grad():
            for lo in range(0, self.x_test.shape[0], EVAL_BATCH):
                z = self.model(self.x_test[lo : lo + EVAL_BATCH])
                correct += int((z.argmax(dim=1) == self.y_test[lo : lo + EVAL_BATCH]).sum())
        return correct / self.x_test.shape[0]

    def split_step(self, steps: int) -> dict | None:
        """Kernel time versus the rest of one step, like ``split_rawgpu_step`` (GPU only).

        The GPU delay is ``torch.cuda._sleep`` (cycles, calibrated here against CUDA events).
        """
        torch = self.torch
        if not self.cuda or not hasattr(torch.cuda, "_sleep"):
            return None
        xb, yb = self.x[: self.batch], self.y[: self.batch]
        for _ in range(10):
            self.step(xb, yb)
        self.sync()
        wall = []
        for _ in range(steps):
            t0 = time.perf_counter()
            self.step(xb, yb)
            self.sync()
            wall.append((time.perf_counter() - t0) * 1e3)
        cycles_per_ms = self._sleep_rate()
        delay_ms = max(0.2, 3 * float(np.median(wall)))
        gpu, behind = [], 0
        for _ in range(steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(int(delay_ms * cycles_per_ms))
            h0 = time.perf_counter()
            start.record()
            self.step(xb, yb)
            end.record()
            behind += (time.perf_counter() - h0) * 1e3 > delay_ms
            end.synchronize()
            gpu.append(start.elapsed_time(end))
        return _split(summarize(wall), {"ms": summarize(gpu), "host_behind": behind}, None, "torch.cuda._sleep ahead of the step, CUDA events")

    def _sleep_rate(self) -> float:
        torch = self.torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(1000)  # warm-up
        start.record()
        torch.cuda._sleep(10_000_000)
        end.record()
        end.synchronize()
        return 10_000_000 / start.elapsed_time(end)


def torch_threads(threads: int) -> dict:
    """Give PyTorch's CPU ops as many threads as NumPy's BLAS has, and report what it took."""
    import torch

    torch.set_num_threads(threads)
    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}


def summarize_epochs(records: list[dict], n_train: int, batch: int) -> dict:
    """First epoch apart (warm-up: compilation, allocation), median and spread of the others."""
    timed = records[1:] if len(records) > 1 else records
    seconds = summarize(r["seconds"] for r in timed)
    steps = math.ceil(n_train / batch)
    return {
        "first_epoch_s": records[0]["seconds"],
        "epoch_s": seconds,
        "median_epoch_s": seconds["median"],
        "steps_per_epoch": steps,
        "step_ms": seconds["median"] / steps * 1e3,
        "samples_per_s": n_train / seconds["median"],
        "final_test_accuracy": records[-1]["test_accuracy"],
        "final_train_loss": records[-1]["train_loss"],
    }
