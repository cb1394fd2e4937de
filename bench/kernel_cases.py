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


@dataclass(frozen=True)
class Problem:
    op: str
    group: str  # "square" (the size sweep) or "mlp" (a shape training uses)
    label: str  # "1024", or what the product is in the network, e.g. "fwd x@W1"
    dims: tuple  # matmul: (m, n, k, trans_a, trans_b); the others: the shape of their main array

    @property
    def shape_text(self) -> str:
        if self.op == "matmul":
            m, n, k, ta, tb = self.dims
            flags = "".join(f" {f}" for f, on in (("a^T", ta), ("b^T", tb)) if on)
            return f"{m}x{n}x{k}{flags}"
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
        """name -> shape of each freshly allocated float32 output."""
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


SPECS = {
    "matmul": Matmul,
    "bias_relu": lambda: BiasAct(relu=True),
    "bias_add": lambda: BiasAct(relu=False),
    "relu_backward": ReluBackward,
    "col_sum": ColSum,
    "softmax_cross_entropy": SoftmaxCE,
    "sgd_momentum_": SgdMomentum,
    "correct_count": CorrectCount,
}
OPS = tuple(SPECS)


def spec_for(problem: Problem) -> Spec:
    return SPECS[problem.op]()


# ---------------------------------------------------------------------------------------------
# The problems: a square sweep, and the shapes one training step of the MLP uses
# ---------------------------------------------------------------------------------------------


def square_problems(sizes, ops) -> list[Problem]:
    """Every op at n x n (matmul: n x n x n) for each size n."""
    out = []
    for op in ops:
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
