"""What ``bench/kernels.py`` measures: the problems (an op at a shape) and how to run and check each.

A *problem* is one op at one shape, e.g. ``matmul 128x128x784``. Each op has a spec here that
knows how to draw random inputs for a problem, compute its float64 reference (from
``rawgpu/reference.py``, the one the tests use too), call the op
through an op interface (``rawgpu.ops``, or :class:`BackendOps` below), and count the work: the
floating-point operations and the fewest bytes the op must move (each input read once, each
output written once), which turn a time into GFLOP/s and GB/s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rawgpu import reference
from rawgpu.ops import sgd_settings

LR, MOMENTUM = 0.01, 0.9  # the SGD step that sgd_momentum_ is checked and timed with


#: The CNN's ops; a conv problem's dims are (N, C, H, W, O, K, pad), a pool's its input (N, C, H, W).
CONV_OPS = ("conv2d", "conv2d_input_grad", "conv2d_weight_grad")
POOL_OPS = ("maxpool2x2", "maxpool2x2_backward")


@dataclass(frozen=True)
class Problem:
    op: str
    group: str  # "square" (the size sweep), "mlp" or "cnn" (a shape training uses)
    label: str  # "1024", or what the product is in the network, e.g. "fwd x@W1"
    dims: tuple  # matmul: (m, n, k, trans_a, trans_b); conv: (n, c, h, w, o, k, pad); the others: the shape of their main array

    @property
    def shape_text(self) -> str:
        if self.op == "matmul":
            m, n, k, ta, tb = self.dims
            flags = "".join(f" {f}" for f, on in (("a^T", ta), ("b^T", tb)) if on)
            return f"{m}x{n}x{k}{flags}"
        if self.op in CONV_OPS:
            n, c, h, w, o, k, pad = self.dims
            return f"{n}x{c}x{h}x{w} -> {o}, {k}x{k} pad {pad}"
        return "x".join(map(str, self.dims))


# ---------------------------------------------------------------------------------------------
# The op specs
# ---------------------------------------------------------------------------------------------


def _normal(rng, shape):
    return rng.standard_normal(shape, dtype=np.float32)


class Spec:
    """One op: inputs, outputs, reference, call, work. Subclasses fill these in."""

    unit = "GB/s"  # how its speed is reported: bandwidth for everything but matmul
    in_place = ()  # inputs the op overwrites (they are also its outputs)

    def inputs(self, rng, dims) -> dict:
        raise NotImplementedError

    def outputs(self, dims) -> dict:
        """name -> shape of each freshly allocated float32 output, or -> (shape, dtype) for another type."""
        return {}

    def reference(self, x: dict, dims) -> dict:
        """name -> float64 NumPy result, for every output (and scalar result) the op produces."""
        raise NotImplementedError

    def call(self, api, a: dict, out: dict, dims, variant=None) -> dict:
        """Run the op; return a dict of results that are not in ``out`` (scalars)."""
        raise NotImplementedError

    def work(self, dims) -> tuple[int, int]:
        """(floating-point operations, fewest bytes moved)."""
        raise NotImplementedError


class Matmul(Spec):
    unit = "GFLOP/s"

    def inputs(self, rng, dims):
        m, n, k, ta, tb = dims
        return {"a": _normal(rng, (k, m) if ta else (m, k)), "b": _normal(rng, (n, k) if tb else (k, n))}

    def outputs(self, dims):
        return {"out": (dims[0], dims[1])}

    def reference(self, x, dims):
        _, _, _, ta, tb = dims
        return {"out": reference.matmul(x["a"], x["b"], trans_a=ta, trans_b=tb)}

    def call(self, api, a, out, dims, variant=None):
        _, _, _, ta, tb = dims
        api.matmul(a["a"], a["b"], trans_a=ta, trans_b=tb, out=out["out"], variant=variant)
        return {}

    def work(self, dims):
        m, n, k, _, _ = dims
        return 2 * m * n * k, 4 * (m * k + k * n + m * n)


class BiasAct(Spec):
    """bias_relu and bias_add: out = x + bias (then max(., 0) for ReLU)."""

    def __init__(self, relu: bool):
        self.relu = relu

    def inputs(self, rng, dims):
        return {"x": _normal(rng, dims), "bias": _normal(rng, dims[1:])}

    def outputs(self, dims):
        return {"out": dims}

    def reference(self, x, dims):
        return {"out": (reference.bias_relu if self.relu else reference.bias_add)(x["x"], x["bias"])}

    def call(self, api, a, out, dims, variant=None):
        (api.bias_relu if self.relu else api.bias_add)(a["x"], a["bias"], out=out["out"])
        return {}

    def work(self, dims):
        r, c = dims
        return r * c * (2 if self.relu else 1), 4 * (2 * r * c + c)


class ReluBackward(Spec):
    def inputs(self, rng, dims):
        return {"grad": _normal(rng, dims), "act": np.maximum(_normal(rng, dims), 0)}  # half closed, like a real ReLU

    def outputs(self, dims):
        return {"out": dims}

    def reference(self, x, dims):
        return {"out": reference.relu_backward(x["grad"], x["act"])}

    def call(self, api, a, out, dims, variant=None):
        api.relu_backward(a["grad"], a["act"], out=out["out"])
        return {}

    def work(self, dims):
        r, c = dims
        return r * c, 4 * 3 * r * c


class ColSum(Spec):
    def inputs(self, rng, dims):
        return {"x": _normal(rng, dims)}

    def outputs(self, dims):
        return {"out": dims[1:]}

    def reference(self, x, dims):
        return {"out": reference.col_sum(x["x"])}

    def call(self, api, a, out, dims, variant=None):
        api.col_sum(a["x"], out=out["out"])
        return {}

    def work(self, dims):
        r, c = dims
        return r * c, 4 * (r * c + c)


def _labels(rng, rows, classes):
    return rng.integers(0, classes, rows, dtype=np.int32)


class SoftmaxCE(Spec):
    def inputs(self, rng, dims):
        return {"logits": 3 * _normal(rng, dims), "labels": _labels(rng, *dims)}

    def outputs(self, dims):
        return {"grad": dims}

    def reference(self, x, dims):
        loss, grad = reference.softmax_cross_entropy(x["logits"], x["labels"])
        return {"grad": grad, "loss": np.float64(loss)}

    def call(self, api, a, out, dims, variant=None):
        loss, _ = api.softmax_cross_entropy(a["logits"], a["labels"], grad_out=out["grad"])
        return {"loss": loss}

    def work(self, dims):
        r, c = dims
        # per element: max, subtract, exp, add, divide, scale; plus log per row
        return 6 * r * c, 4 * (2 * r * c + r + 1)


class SgdMomentum(Spec):
    in_place = ("param", "velocity")

    def inputs(self, rng, dims):
        return {"param": _normal(rng, dims), "grad": _normal(rng, dims), "velocity": _normal(rng, dims)}

    def reference(self, x, dims):
        param, velocity = reference.sgd_momentum(x["param"], x["grad"], x["velocity"], lr=LR, momentum=MOMENTUM)
        return {"param": param, "velocity": velocity}

    def call(self, api, a, out, dims, variant=None):
        api.sgd_momentum_(a["param"], a["grad"], a["velocity"], lr=LR, momentum=MOMENTUM)
        return {}

    def work(self, dims):
        n = int(np.prod(dims))
        return 4 * n, 4 * 5 * n  # read param, grad, velocity; write param, velocity


class CorrectCount(Spec):
    def inputs(self, rng, dims):
        logits = _normal(rng, dims)
        labels = _labels(rng, *dims)
        hits = rng.random(dims[0]) < 0.5  # make about half the rows right, so the count means something
        labels[hits] = np.argmax(logits[hits], axis=1)
        return {"logits": logits, "labels": labels}

    def reference(self, x, dims):
        return {"count": np.int64(reference.correct_count(x["logits"], x["labels"]))}

    def call(self, api, a, out, dims, variant=None):
        return {"count": api.correct_count(a["logits"], a["labels"])}

    def work(self, dims):
        r, c = dims
        return r * c, 4 * (r * c + r + 1)


# --- the CNN's ops -----------------------------------------------------------------------------


class Conv(Spec):
    """One of a conv layer's three products, each an implicit GEMM on the GPU:

    forward       out (N, O, H', W') = conv(x, w) + b
    input_grad    dx (N, C, H, W) from dy (N, O, H', W'): a conv of dy with the flipped kernel
    weight_grad   dw (O, C, K, K) and db (O,) from x and dy: a correlation of x with dy
    """

    unit = "GFLOP/s"

    def __init__(self, which: str):
        self.which = which

    @staticmethod
    def _out_hw(dims):
        _, _, h, w, _, k, pad = dims
        return h + 2 * pad - k + 1, w + 2 * pad - k + 1

    def inputs(self, rng, dims):
        n, c, h, w, o, k, _ = dims
        ho, wo = self._out_hw(dims)
        weights = _normal(rng, (o, c, k, k)) / np.float32(np.sqrt(c * k * k))  # outputs of order 1, like a trained layer's
        if self.which == "forward":
            return {"x": _normal(rng, (n, c, h, w)), "w": weights, "b": _normal(rng, (o,))}
        if self.which == "input_grad":
            return {"dy": _normal(rng, (n, o, ho, wo)), "w": weights}
        return {"x": _normal(rng, (n, c, h, w)), "dy": _normal(rng, (n, o, ho, wo))}

    def outputs(self, dims):
        n, c, h, w, o, k, _ = dims
        if self.which == "forward":
            return {"out": (n, o, *self._out_hw(dims))}
        if self.which == "input_grad":
            return {"dx": (n, c, h, w)}
        return {"dw": (o, c, k, k), "db": (o,)}

    def reference(self, x, dims):
        k, pad = dims[5], dims[6]
        if self.which == "forward":
            return {"out": reference.conv2d(x["x"], x["w"], x["b"], pad=pad)}
        if self.which == "input_grad":
            return {"dx": reference.conv2d_input_grad(x["dy"], x["w"], pad=pad)}
        dw, db = reference.conv2d_weight_grad(x["x"], x["dy"], k, pad=pad)
        return {"dw": dw, "db": db}

    def call(self, api, a, out, dims, variant=None):
        pad = dims[6]
        if self.which == "forward":
            api.conv2d(a["x"], a["w"], a["b"], pad=pad, out=out["out"])
        elif self.which == "input_grad":
            api.conv2d_input_grad(a["dy"], a["w"], pad=pad, out=out["dx"])
        else:
            api.conv2d_weight_grad(a["x"], a["dy"], pad=pad, w_out=out["dw"], b_out=out["db"])
        return {}

    def work(self, dims):
        n, c, h, w, o, k, _ = dims
        ho, wo = self._out_hw(dims)
        x, y, wt = n * c * h * w, n * o * ho * wo, o * c * k * k
        # every product is the same GEMM, (N H' W') x O x (C K K); bytes: its operands once each
        return 2 * n * ho * wo * o * c * k * k, 4 * (x + y + wt + o)


class MaxPool(Spec):
    """2x2 max-pool: forward (out and the int32 argmax of each window) or backward (dx from dy and argmax)."""

    def __init__(self, backward: bool):
        self.backward = backward

    def inputs(self, rng, dims):
        x = _normal(rng, dims)
        if not self.backward:
            return {"x": x}
        _, argmax = reference.maxpool2x2(x)  # a real argmax: what the forward pass would pick
        n, c, h, w = dims
        return {"dy": _normal(rng, (n, c, h // 2, w // 2)), "argmax": argmax.astype(np.int32)}

    def outputs(self, dims):
        n, c, h, w = dims
        if self.backward:
            return {"dx": dims}
        return {"out": (n, c, h // 2, w // 2), "argmax": ((n, c, h // 2, w // 2), np.int32)}

    def reference(self, x, dims):
        if self.backward:
            return {"dx": reference.maxpool2x2_backward(x["dy"], x["argmax"], dims)}
        out, argmax = reference.maxpool2x2(x["x"])
        return {"out": out, "argmax": argmax.astype(np.int32)}

    def call(self, api, a, out, dims, variant=None):
        if self.backward:
            api.maxpool2x2_backward(a["dy"], a["argmax"], out=out["dx"])
        else:
            api.maxpool2x2(a["x"], out=out["out"], argmax_out=out["argmax"])
        return {}

    def work(self, dims):
        n, c, h, w = dims
        small = n * c * (h // 2) * (w // 2)
        # forward: read x, write out and argmax; backward: read dy and argmax, write dx
        return n * c * h * w, 4 * (n * c * h * w + 2 * small)


SPECS = {
    "matmul": Matmul,
    "bias_relu": lambda: BiasAct(relu=True),
    "bias_add": lambda: BiasAct(relu=False),
    "relu_backward": ReluBackward,
    "col_sum": ColSum,
    "softmax_cross_entropy": SoftmaxCE,
    "sgd_momentum_": SgdMomentum,
    "correct_count": CorrectCount,
    "conv2d": lambda: Conv("forward"),
    "conv2d_input_grad": lambda: Conv("input_grad"),
    "conv2d_weight_grad": lambda: Conv("weight_grad"),
    "maxpool2x2": lambda: MaxPool(backward=False),
    "maxpool2x2_backward": lambda: MaxPool(backward=True),
}
OPS = tuple(SPECS)


def spec_for(problem: Problem) -> Spec:
    return SPECS[problem.op]()


# ---------------------------------------------------------------------------------------------
# The problems: a square sweep, and the shapes one training step of the MLP uses
# ---------------------------------------------------------------------------------------------


def square_problems(sizes, ops) -> list[Problem]:
    """Every op at n x n (matmul: n x n x n) for each size n (the CNN's ops have shapes of their own)."""
    out = []
    for op in (op for op in ops if op not in CONV_OPS + POOL_OPS):
        for n in sizes:
            dims = (n, n, n, False, False) if op == "matmul" else (n, n)
            out.append(Problem(op, "square", str(n), dims))
    return out


def mlp_problems(batch: int, d: int, h: int, c: int, ops) -> list[Problem]:
    """The ops of one training step of a d-h-c network at batch size ``batch``, at their real shapes.

    The backward matmuls read their transposed operand in place, as rawgpu's model does.
    """
    table = [
        ("matmul", "fwd x@W1", (batch, h, d, False, False)),
        ("matmul", "fwd a@W2", (batch, c, h, False, False)),
        ("matmul", "bwd dW2=a^T dz", (h, c, batch, True, False)),
        ("matmul", "bwd da=dz W2^T", (batch, h, c, False, True)),
        ("matmul", "bwd dW1=x^T dh", (d, h, batch, True, False)),
        ("bias_relu", "fwd hidden", (batch, h)),
        ("bias_add", "fwd logits", (batch, c)),
        ("softmax_cross_entropy", "loss and dz", (batch, c)),
        ("col_sum", "bwd db2", (batch, c)),
        ("relu_backward", "bwd dh", (batch, h)),
        ("col_sum", "bwd db1", (batch, h)),
        ("sgd_momentum_", "step W1", (d, h)),
        ("sgd_momentum_", "step W2", (h, c)),
        ("correct_count", "accuracy", (batch, c)),
    ]
    return [Problem(op, "mlp", label, dims) for op, label, dims in table if op in ops]


def cnn_problems(batch: int, in_shape, channels, ops, k: int = 5, pad: int = 2) -> list[Problem]:
    """The conv and pool ops of one training step of rawgpu.SmallCNN at batch size ``batch``.

    The seed's network at batch 64: conv 3->32 on 32x32, 32->32 on 16x16, 32->64 on 8x8, all 5x5
    with padding 2, each followed by a 2x2 max-pool. The first conv's input gradient is not
    computed in training (nothing needs dL/dx), so it is not a case.
    """
    c, h, w = in_shape
    table = []
    for i, o in enumerate(channels, start=1):
        dims = (batch, c, h, w, o, k, pad)
        table += [("conv2d", f"conv{i} fwd", dims), ("conv2d_weight_grad", f"conv{i} dW, db", dims)]
        if i > 1:
            table.append(("conv2d_input_grad", f"conv{i} dx", dims))
        table += [("maxpool2x2", f"pool{i} fwd", (batch, o, h, w)), ("maxpool2x2_backward", f"pool{i} bwd", (batch, o, h, w))]
        c, h, w = o, h // 2, w // 2
    return [Problem(op, "cnn", label, dims) for op, label, dims in table if op in ops]


# ---------------------------------------------------------------------------------------------
# An op interface straight onto a backend, for timing
# ---------------------------------------------------------------------------------------------


class BackendOps:
    """The op interface of ``rawgpu.ops``, calling an engine's backend directly.

    Used to *time* kernels (correctness is checked through ``rawgpu.ops`` as well). The op
    layer's argument checks cost host time on every call, and two ops read a value back from
    the GPU (softmax-cross-entropy checks the label range; correct_count returns a Python int):
    that host synchronisation would land between the timing events and measure a round trip,
    not a kernel. Here the labels are known to be valid, and on the GPU correct_count leaves
    its count on the device.
    """

    def __init__(self, backend, *, device_count: bool = False):
        self.b = backend
        self._count = None
        self._device_count = device_count

    def matmul(self, a, b, *, trans_a=False, trans_b=False, out, variant=None):
        self.b.matmul(a, b, out, trans_a, trans_b, variant)

    def bias_relu(self, x, bias, *, out):
        self.b.bias_relu(x, bias, out)

    def bias_add(self, x, bias, *, out):
        self.b.bias_add(x, bias, out)

    def relu_backward(self, grad, act, *, out):
        self.b.relu_backward(grad, act, out)

    def col_sum(self, x, *, out):
        self.b.col_sum(x, out)

    def softmax_cross_entropy(self, logits, labels, *, grad_out):
        return self.b.softmax_cross_entropy(logits, labels, grad_out), grad_out

    def sgd_momentum_(self, param, grad, velocity, *, lr, momentum):
        self.b.sgd_momentum_(param, grad, velocity, sgd_settings(lr, momentum))

    def correct_count(self, logits, labels):
        if not self._device_count:
            return self.b.correct_count(logits, labels)
        return _device_correct_count(self, logits, labels)

    def conv2d(self, x, w, b, *, pad, out, relu=False):
        self.b.conv2d(x, w, b, out, pad, relu)

    def conv2d_input_grad(self, dy, w, *, pad, out):
        self.b.conv2d_input_grad(dy, w, out, pad)

    def conv2d_weight_grad(self, x, dy, *, pad, w_out, b_out):
        self.b.conv2d_weight_grad(x, dy, w_out, b_out, pad)

    def maxpool2x2(self, x, *, out, argmax_out):
        self.b.maxpool2x2(x, out, argmax_out)

    def maxpool2x2_backward(self, dy, argmax, *, out):
        self.b.maxpool2x2_backward(dy, argmax, out)


def _device_correct_count(api, logits, labels):
    """correct_count on the GPU without the read-back: the same kernel and launch settings as
    rawgpu's cuda backend, with the count left in a device array (zeroed first, as it must be)."""
    import cupy
    from numba import cuda

    from rawgpu.backends.kernel_backend import LAUNCH
    from rawgpu.kernels import reductions

    if api._count is None:
        api._count = cupy.zeros((1,), np.int32)
    api._count.fill(0)
    stream = cupy.cuda.get_current_stream().ptr
    view = lambda arr: cuda.as_cuda_array(arr, sync=False)  # noqa: E731
    reductions.correct_count(
        view(logits), view(labels), view(api._count), threads=LAUNCH["cuda"]["threads"],
        stream=cuda.external_stream(stream) if stream else cuda.default_stream(),
    )
    return api._count


class CublasOps:
    """The matmul reference: cuBLAS SGEMM through ``cupy.matmul`` (transposes as strided views,
    which CuPy hands to cuBLAS as transpose flags, not copies)."""

    def matmul(self, a, b, *, trans_a=False, trans_b=False, out, variant=None):
        import cupy

        cupy.matmul(a.T if trans_a else a, b.T if trans_b else b, out=out)


class TorchOps:
    """The CNN's references: PyTorch's own ops, on the GPU (cuDNN for the convolutions, TF32 off)
    or on the CPU, called the way autograd calls them in a training step.

    The arrays arrive as CuPy arrays (wrapped for PyTorch without a copy, through the CUDA array
    interface) or NumPy arrays (wrapped with ``torch.from_numpy``). PyTorch returns fresh
    tensors: with ``copy_out`` (the correctness check) they are copied into the outputs; without
    it (timing) they are dropped, so only the op itself is timed. Its max-pool indices are int64:
    the int32 argmax is converted once per input array and kept, outside the timing.
    """

    def __init__(self, device: str, *, copy_out: bool):
        import torch

        self.torch, self.device, self.copy_out = torch, device, copy_out
        if device == "cuda":
            torch.backends.cudnn.allow_tf32 = False
        self._indices: dict = {}

    def _t(self, arr):
        torch = self.torch
        return torch.from_numpy(arr) if isinstance(arr, np.ndarray) else torch.as_tensor(arr, device=self.device)

    def _put(self, out, value):
        if self.copy_out:
            self._t(out).copy_(value)

    def _conv_backward(self, dy, x, w, pad, mask):
        t = self.torch
        return t.ops.aten.convolution_backward(dy, x, w, [w.shape[0]], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, mask)

    def conv2d(self, x, w, b, *, pad, out, relu=False):
        y = self.torch.nn.functional.conv2d(self._t(x), self._t(w), self._t(b), padding=pad)
        self._put(out, self.torch.relu(y) if relu else y)

    def _placeholder(self, shape, like):
        """A tensor of ``shape`` where ``like`` lives, made once: the backward ops take the input
        (or the weights) only for its shape when that gradient is not asked for."""
        key = ("placeholder", tuple(shape))
        if key not in self._indices:
            self._indices[key] = self.torch.empty(tuple(shape), device=self._t(like).device)
        return self._indices[key]

    def conv2d_input_grad(self, dy, w, *, pad, out):
        dx, _, _ = self._conv_backward(self._t(dy), self._placeholder(out.shape, dy), self._t(w), pad, [True, False, False])
        self._put(out, dx)

    def conv2d_weight_grad(self, x, dy, *, pad, w_out, b_out):
        _, dw, db = self._conv_backward(self._t(dy), self._t(x), self._placeholder(w_out.shape, dy), pad, [False, True, True])
        self._put(w_out, dw)
        self._put(b_out, db)

    def maxpool2x2(self, x, *, out, argmax_out):
        y, idx = self.torch.nn.functional.max_pool2d(self._t(x), 2, return_indices=True)
        self._put(out, y)
        self._put(argmax_out, idx)

    def maxpool2x2_backward(self, dy, argmax, *, out):
        key = id(argmax)
        if key not in self._indices:  # keep the array too: its id stays its own while it lives
            self._indices[key] = (argmax, self._t(argmax).long())
        x_like = self._placeholder(out.shape, dy)
        dx = self.torch.ops.aten.max_pool2d_with_indices_backward(self._t(dy), x_like, [2, 2], [2, 2], [0, 0], [1, 1], False, self._indices[key][1])
        self._put(out, dx)
