"""The op interface: the seven operations the network is written against.

Every function here has the same name and meaning on every engine (see :mod:`rawgpu.engine`).
This layer checks the arguments (shape, dtype, contiguity, kind of array), allocates an output
when none is given, and hands the call to the live engine's backend, which may assume that
everything is valid. Wrong input raises a ``ValueError`` or ``TypeError`` that names the
argument and says what was expected.

Data is float32 and labels are int32; arrays are NumPy arrays on the ``numpy`` and ``sim``
engines and CuPy arrays on ``cuda``.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

from rawgpu import engine as _engine
from rawgpu.same_arrays import ids, keep_while_alive

__all__ = [
    "matmul",
    "bias_add",
    "bias_relu",
    "relu_backward",
    "col_sum",
    "softmax_cross_entropy",
    "sgd_momentum_",
    "sgd_settings",
    "SGDSettings",
    "correct_count",
    "linear_relu",
    "linear_softmax_ce",
    "linear_backward_relu",
    "weight_grad",
    "StepStats",
    "MATMUL_VARIANTS",
    "conv2d",
    "conv2d_input_grad",
    "conv2d_weight_grad",
    "maxpool2x2",
    "maxpool2x2_backward",
]

#: The matmul ladder's rungs, slowest idea first (kernels/matmul/). Imported from the kernels
#: package's numba-free part, so this module still loads before an engine is chosen.
from rawgpu.kernels.matmul import VARIANTS as MATMUL_VARIANTS  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------


_F32, _I32 = np.dtype(np.float32), np.dtype(np.int32)


def _check(name, arr, eng, *, ndim, dtype=_F32, shape=None):
    """Check one array argument; return its shape. (Every op of every step comes through here,
    so the common case is a handful of attribute reads and comparisons, nothing built.)"""
    if not isinstance(arr, eng.array_type):
        raise TypeError(
            f"{name} must be {eng.describe_kind()} on the {eng.name!r} engine, got {type(arr).__module__}.{type(arr).__name__}"
        )
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(arr.shape)}")
    if arr.dtype != dtype:
        want = np.dtype(dtype).name
        raise TypeError(f"{name} must be {want}, got {arr.dtype}; convert it with .astype({want})")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous; pass a contiguous copy (e.g. xp.ascontiguousarray({name}))")
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(arr.shape)}")
    return arr.shape


def _check_inner(name, w, eng, k, left):
    """Check a weight matrix whose rows must match the columns (``k``) of ``left``."""
    k_w, cols = _check(name, w, eng, ndim=2)
    if k_w != k:
        raise ValueError(f"{name} must have {k} rows, one per column of {left}, got shape {(k_w, cols)}")
    return k_w, cols


def _output(name, out, eng, shape, dtype=np.float32):
    if out is None:
        return eng.empty(shape, dtype)
    _check(name, out, eng, ndim=len(shape), dtype=dtype, shape=shape)
    return out


def validate_labels(labels, rows, classes, eng=None):
    """Check ``labels`` (int32, ``(rows,)``) against ``classes``; a ValueError says what is wrong."""
    eng = eng or _engine.current()
    _check("labels", labels, eng, ndim=1, dtype=_I32, shape=(rows,))
    _check_label_values(labels, classes)


def _check_label_values(labels, classes):
    if labels.shape[0]:
        # One comparison, one host read: seen as unsigned, a negative int32 is >= 2**31, so
        # "label >= classes" also catches every negative label.
        bad = int((labels.view(np.uint32) >= classes).sum())
        if bad:
            lo, hi = int(labels.min()), int(labels.max())
            raise ValueError(f"labels must lie in [0, {classes}) for {classes} classes; got values from {lo} to {hi}")


#: What the training step's ops have checked: (op, engine name, the arrays' ids) -> entry, while they live.
_CHECKED: dict = {}


def _checked_before(op, eng, arrays) -> bool:
    """Whether ``op`` has already checked these very arrays, on this engine.

    A training step passes the same parameters and work buffers to the same ops every step, and an
    array's shape, dtype and layout are its own for life (rawgpu does not follow an array whose
    ``.shape`` is assigned in place), so the step's ops check them on the first step only: the
    arguments are checked where they enter, once. A new array, such as each batch's slice, is
    checked when it comes. Call :func:`_passed` when the checks have passed.
    """
    return (op, eng.name, *ids(arrays)) in _CHECKED


def _passed(op, eng, arrays) -> None:
    keep_while_alive(_CHECKED, (op, eng.name, *ids(arrays)), arrays, True)


# ---------------------------------------------------------------------------------------------
# The ops
# ---------------------------------------------------------------------------------------------


def matmul(a, b, *, trans_a=False, trans_b=False, out=None, variant=None):
    """``out = op(a) @ op(b)`` where ``op(x)`` is ``x.T`` when its flag is set.

    The transposes are read in place (``a`` stored as ``(K, M)`` when ``trans_a``), so the
    backward pass needs no transposed copies. ``variant`` picks a rung of the ladder
    (:data:`MATMUL_VARIANTS`, ``naive`` ... ``splitk``) on the kernel engines; None takes the
    engine's default (on ``cuda``, the autotuner's pick for this shape).
    The NumPy engine accepts the names and always uses BLAS.
    """
    eng = _engine.current()
    sa = _check("a", a, eng, ndim=2)
    sb = _check("b", b, eng, ndim=2)
    m, k = (sa[1], sa[0]) if trans_a else sa
    kb, n = (sb[1], sb[0]) if trans_b else sb
    if k != kb:
        raise ValueError(
            f"a and b do not chain: op(a) is {m}x{k} and op(b) is {kb}x{n} "
            f"(trans_a={trans_a}, trans_b={trans_b}); inner sizes must match"
        )
    if variant is not None and variant not in MATMUL_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(MATMUL_VARIANTS)} or None, got {variant!r}")
    out = _output("out", out, eng, (m, n))
    eng.backend.matmul(a, b, out, bool(trans_a), bool(trans_b), variant)
    return out


def bias_add(x, bias, *, out=None):
    """``out = x + bias`` with ``bias`` broadcast over rows (the output layer's bias).

    ``out`` may be ``x`` itself (in place).
    """
    eng = _engine.current()
    rows, cols = _check("x", x, eng, ndim=2)
    _check("bias", bias, eng, ndim=1, shape=(cols,))
    out = _output("out", out, eng, (rows, cols))
    eng.backend.bias_add(x, bias, out)
    return out


def bias_relu(x, bias, *, out=None):
    """``out = max(x + bias, 0)`` with ``bias`` broadcast over rows (the hidden layer's forward).

    ``out`` may be ``x`` itself (in place).
    """
    eng = _engine.current()
    rows, cols = _check("x", x, eng, ndim=2)
    _check("bias", bias, eng, ndim=1, shape=(cols,))
    out = _output("out", out, eng, (rows, cols))
    eng.backend.bias_relu(x, bias, out)
    return out


def relu_backward(grad, act, *, out=None):
    """``out = grad * (act > 0)``: the gradient passes only where the ReLU was open.

    ``act`` is the ReLU's output; ``out`` may be ``grad`` itself (in place).
    """
    eng = _engine.current()
    shape = _check("grad", grad, eng, ndim=2)
    _check("act", act, eng, ndim=2, shape=shape)
    out = _output("out", out, eng, shape)
    eng.backend.relu_backward(grad, act, out)
    return out


def col_sum(x, *, out=None):
    """``out[j] = sum_i x[i, j]``: the gradient of a bias broadcast over the batch."""
    eng = _engine.current()
    _, cols = _check("x", x, eng, ndim=2)
    out = _output("out", out, eng, (cols,))
    eng.backend.col_sum(x, out)
    return out


def softmax_cross_entropy(logits, labels, *, grad_out=None):
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    For a batch of ``B`` rows, ``loss = mean_i(logsumexp(z_i) - z_i[y_i])`` and
    ``d loss / d z_ij = (softmax(z_i)_j - [j == y_i]) / B``. Returns ``(loss, grad)`` where
    ``loss`` is a 0-d float32 array of the engine's kind (``float(loss)`` reads it) and ``grad``
    has the shape of ``logits`` (written into ``grad_out`` when given). Computed with the row
    maximum subtracted, so logits of +-1e4 stay finite.

    Labels are range-checked on the host engines, where it is cheap (and NumPy's indexing would
    quietly wrap a negative label). On the ``cuda`` engine a check would read the labels back
    to the host, a synchronisation, at every call; there the kernel flags a label out of range
    itself, by making that row's loss and gradient NaN, and callers validate their labels once
    per dataset (:func:`validate_labels`), as the training loop does.
    """
    eng = _engine.current()
    rows, classes = _check("logits", logits, eng, ndim=2)
    if rows < 1 or classes < 1:
        raise ValueError(f"logits must have at least one row and one class, got shape {(rows, classes)}")
    if eng.is_device:
        _check("labels", labels, eng, ndim=1, dtype=_I32, shape=(rows,))
    else:
        validate_labels(labels, rows, classes, eng)
    grad = _output("grad_out", grad_out, eng, (rows, classes))
    loss = eng.backend.softmax_cross_entropy(logits, labels, grad)
    return loss, grad


class SGDSettings(NamedTuple):
    """The hyperparameters of an SGD step, checked once by :func:`sgd_settings`."""

    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool


def sgd_settings(lr, momentum=0.0, weight_decay=0.0, nesterov=False) -> SGDSettings:
    """Check SGD's hyperparameters once and keep them: ``lr > 0``, ``momentum >= 0`` and
    ``weight_decay >= 0`` finite real numbers, Nesterov only with momentum."""
    lr, momentum, weight_decay = _hyper("lr", lr, positive=True), _hyper("momentum", momentum), _hyper("weight_decay", weight_decay)
    if not isinstance(nesterov, (bool, np.bool_)):
        raise TypeError(f"nesterov must be True or False, got {type(nesterov).__name__} {nesterov!r}")
    if nesterov and momentum == 0.0:
        raise ValueError("nesterov=True needs momentum > 0")
    return SGDSettings(lr, momentum, weight_decay, bool(nesterov))


def sgd_momentum_(param, grad, velocity, settings=None, *, lr=None, momentum=0.0, weight_decay=0.0, nesterov=False):
    """One SGD-with-momentum step, in place on ``param`` and ``velocity`` (PyTorch's rule).

    ``g = grad + weight_decay * param``; ``v = momentum * v + g``;
    ``param -= lr * (g + momentum * v if nesterov else v)``. ``grad`` is left unchanged.

    Pass the hyperparameters either as keywords (checked at this call) or as ``settings``, an
    :class:`SGDSettings` from :func:`sgd_settings`, checked when it was made: the optimizer makes
    its settings once, so a training step does not check the same four numbers again.
    """
    eng = _engine.current()
    if not _checked_before("sgd_momentum_", eng, (param, grad, velocity)):
        ndim = getattr(param, "ndim", None)
        if ndim not in (1, 2):
            raise ValueError(f"param must be a 1-D or 2-D float32 array, got {type(param).__name__} with ndim {ndim}")
        shape = _check("param", param, eng, ndim=ndim)
        _check("grad", grad, eng, ndim=ndim, shape=shape)
        _check("velocity", velocity, eng, ndim=ndim, shape=shape)
        _passed("sgd_momentum_", eng, (param, grad, velocity))
    if settings is None:
        if lr is None:
            raise TypeError("sgd_momentum_ needs lr=... (or settings=ops.sgd_settings(...))")
        settings = sgd_settings(lr, momentum, weight_decay, nesterov)
    elif not isinstance(settings, SGDSettings):
        raise TypeError(f"settings must be an ops.SGDSettings (make it with ops.sgd_settings), got {type(settings).__name__}")
    elif lr is not None:
        raise TypeError("pass the hyperparameters as settings or as keywords, not both")
    eng.backend.sgd_momentum_(param, grad, velocity, settings)
    return param


# ---------------------------------------------------------------------------------------------
# The fused ops of one training step (six launches in all, with one SGD launch)
# ---------------------------------------------------------------------------------------------


class StepStats:
    """What the training step keeps on the device so the host need not read it every step.

    ``counters`` (int32): steps taken, the first step whose loss was not finite (0: none yet),
    labels found outside [0, classes), and a scratch slot the loss kernel uses to find its last
    block. ``sums`` (float64): the sum of the row losses (mean x batch size, summed over steps)
    and the sum of the steps' mean losses. They only ever grow: the training loop reads them every
    N steps (:meth:`read`) and works with the differences between two reads.
    """

    def __init__(self, eng=None):
        self.engine = eng or _engine.current()
        self.counters = self.engine.zeros((4,), np.int32)
        self.sums = self.engine.zeros((2,), np.float64)

    def read(self) -> dict:
        """One read of the device: steps, first_bad_step, bad_labels, loss_sum, mean_sum."""
        counters, sums = self.engine.to_host(self.counters), self.engine.to_host(self.sums)
        return {
            "steps": int(counters[0]), "first_bad_step": int(counters[1]), "bad_labels": int(counters[2]),
            "loss_sum": float(sums[0]), "mean_sum": float(sums[1]),
        }


def linear_relu(x, w, b, *, out):
    """``out = relu(x @ w + b)``: a hidden layer's forward pass in one kernel (matmul, bias, ReLU)."""
    eng = _engine.current()
    if not _checked_before("linear_relu", eng, (x, w, b, out)):
        rows, k = _check("x", x, eng, ndim=2)
        _, cols = _check_inner("w", w, eng, k, "x")
        _check("b", b, eng, ndim=1, shape=(cols,))
        _check("out", out, eng, ndim=2, shape=(rows, cols))
        _passed("linear_relu", eng, (x, w, b, out))
    eng.backend.linear_relu(x, w, b, out)
    return out


def linear_softmax_ce(a, w, b, labels, *, logits_out, grad_out, stats=None):
    """The output layer and its loss in one kernel: ``z = a @ w + b``, the mean softmax
    cross-entropy of ``z`` against ``labels``, and ``dL/dz = (softmax(z) - onehot) / B``.

    Returns the loss as a 0-d float32 array of the engine's kind (``float()`` reads it; the next
    call overwrites it). With ``stats`` (a :class:`StepStats`)
    the step is also counted on the device: the loss sums grow and the first non-finite loss's
    step is kept, with no read back to the host. A label outside ``[0, classes)`` makes the loss
    NaN and is counted in ``stats``; the host engines refuse it outright.
    """
    eng = _engine.current()
    arrays = (a, w, b, labels, logits_out, grad_out)
    if not _checked_before("linear_softmax_ce", eng, arrays):
        rows, hidden = _check("a", a, eng, ndim=2)
        _, classes = _check_inner("w", w, eng, hidden, "a")
        _check("b", b, eng, ndim=1, shape=(classes,))
        if rows < 1:
            raise ValueError("a must have at least one row: the mean loss of zero rows is undefined")
        _check("labels", labels, eng, ndim=1, dtype=_I32, shape=(rows,))
        _check("logits_out", logits_out, eng, ndim=2, shape=(rows, classes))
        _check("grad_out", grad_out, eng, ndim=2, shape=(rows, classes))
        _passed("linear_softmax_ce", eng, arrays)
    if not eng.is_device:  # the labels' values may have changed since: checked at every call
        _check_label_values(labels, w.shape[1])
    if stats is not None and not isinstance(stats, StepStats):
        raise TypeError(f"stats must be an ops.StepStats or None, got {type(stats).__name__}")
    return eng.backend.linear_softmax_ce(a, w, b, labels, logits_out, grad_out, stats)


def linear_backward_relu(d, w, act, *, out):
    """``out = (d @ w.T) * [act > 0]``: the gradient back through a linear layer and the ReLU
    before it (``w`` is read transposed in place; ``out`` must not be ``act``)."""
    eng = _engine.current()
    if not _checked_before("linear_backward_relu", eng, (d, w, act, out)):
        rows, n = _check("d", d, eng, ndim=2)
        cols, n_w = _check("w", w, eng, ndim=2)
        if n_w != n:
            raise ValueError(f"w must have {n} columns, one per column of d, got shape {(cols, n_w)}")
        _check("act", act, eng, ndim=2, shape=(rows, cols))
        _check("out", out, eng, ndim=2, shape=(rows, cols))
        if out is act:
            raise ValueError("out must not be act: the ReLU mask is read while out is written")
        _passed("linear_backward_relu", eng, (d, w, act, out))
    eng.backend.linear_backward_relu(d, w, act, out)
    return out


def weight_grad(inp, d, *, w_out, b_out):
    """A linear layer's gradients in one kernel: ``w_out = inp.T @ d`` and ``b_out`` the column
    sums of ``d`` (each bias is added to every row, so its gradient sums over the batch)."""
    eng = _engine.current()
    if not _checked_before("weight_grad", eng, (inp, d, w_out, b_out)):
        rows, k = _check("inp", inp, eng, ndim=2)
        rows_d, n = _check("d", d, eng, ndim=2)
        if rows_d != rows:
            raise ValueError(f"d must have {rows} rows, one per row of inp, got shape {(rows_d, n)}")
        if k == 0 and n > 0:  # the kernel's blocks tile w_out, and an empty w_out has none to write b_out
            raise ValueError("inp must have at least one column (feature): with none there is no weight to train")
        _check("w_out", w_out, eng, ndim=2, shape=(k, n))
        _check("b_out", b_out, eng, ndim=1, shape=(n,))
        _passed("weight_grad", eng, (inp, d, w_out, b_out))
    eng.backend.weight_grad(inp, d, w_out, b_out)
    return w_out, b_out


def correct_count(logits, labels):
    """How many rows' argmax equals the label (ties go to the lowest index). Returns an int."""
    eng = _engine.current()
    rows, classes = _check("logits", logits, eng, ndim=2)
    _check("labels", labels, eng, ndim=1, dtype=_I32, shape=(rows,))
    if rows == 0:
        return 0
    return int(eng.backend.correct_count(logits, labels))


# ---------------------------------------------------------------------------------------------
# The CNN's ops: 2-D convolution (stride 1, zero padding) and 2x2 max-pooling, on NCHW images
# ---------------------------------------------------------------------------------------------


def _check_pad(pad, k):
    if isinstance(pad, bool) or not isinstance(pad, numbers.Integral) or not 0 <= pad <= k - 1:
        raise ValueError(f"pad must be an integer in 0..{k - 1} for a {k}x{k} kernel, got {pad!r}")


def _conv_shapes(eng, x, w, pad, x_name="x"):
    """Check a conv's image and weights; return (N, O, Ho, Wo)."""
    n, c, h, wd = _check(x_name, x, eng, ndim=4)
    o, c_w, kh, kw = _check("w", w, eng, ndim=4)
    if c_w != c:
        raise ValueError(f"w must have {c} input channels (w.shape[1]), one per channel of {x_name}, got shape {(o, c_w, kh, kw)}")
    if kh != kw:
        raise ValueError(f"w must hold square kernels, got {kh}x{kw}")
    _check_pad(pad, kh)
    ho, wo = h + 2 * pad - kh + 1, wd + 2 * pad - kh + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"{x_name}'s {h}x{wd} images are smaller than the {kh}x{kh} kernel with pad {pad}")
    return n, o, ho, wo


def conv2d(x, w, b, *, pad, relu=False, out=None):
    """``out[n, o, y, x] = b[o] + sum_{c,i,j} xpad[n, c, y + i, x + j] w[o, c, i, j]`` (then
    ReLU when ``relu``): x (N, C, H, W), w (O, C, K, K) as PyTorch's Conv2d, b (O,), stride 1,
    ``pad`` zeros on each side (``0 <= pad < K``), out (N, O, H + 2 pad - K + 1, ...)."""
    eng = _engine.current()
    n, o, ho, wo = _conv_shapes(eng, x, w, pad)
    _check("b", b, eng, ndim=1, shape=(o,))
    out = _output("out", out, eng, (n, o, ho, wo))
    eng.backend.conv2d(x, w, b, out, int(pad), bool(relu))
    return out


def conv2d_input_grad(dy, w, *, pad, out):
    """``out = dL/dx`` of :func:`conv2d` (with this ``pad``) from ``dy = dL/dout``: a convolution
    of ``dy`` with the flipped kernel. ``out`` (N, C, H, W) gives the input's shape."""
    eng = _engine.current()
    n, c, h, wd = _check("out", out, eng, ndim=4)
    o, c_w, kh, _ = _check("w", w, eng, ndim=4)
    if c_w != c:
        raise ValueError(f"w must have {c} input channels like out, got shape {tuple(w.shape)}")
    _check_pad(pad, kh)
    _check("dy", dy, eng, ndim=4, shape=(n, o, h + 2 * pad - kh + 1, wd + 2 * pad - kh + 1))
    eng.backend.conv2d_input_grad(dy, w, out, int(pad))
    return out


def conv2d_weight_grad(x, dy, *, pad, w_out, b_out):
    """``w_out = dL/dw`` (a correlation of the input ``x`` with ``dy = dL/dout``) and ``b_out =
    dL/db`` (``dy`` summed over images and pixels) of :func:`conv2d`, in one call."""
    eng = _engine.current()
    n, o, ho, wo = _conv_shapes(eng, x, w_out, pad)
    _check("dy", dy, eng, ndim=4, shape=(n, o, ho, wo))
    _check("b_out", b_out, eng, ndim=1, shape=(o,))
    eng.backend.conv2d_weight_grad(x, dy, w_out, b_out, int(pad))
    return w_out, b_out


def maxpool2x2(x, *, out=None, argmax_out=None):
    """2x2 max-pooling, stride 2: ``(out, argmax)``, both (N, C, H // 2, W // 2); ``argmax``
    (int32) is the picked input's index ``h * W + w`` in its image plane (PyTorch's
    ``return_indices``). Ties go to the first in row-major order, a NaN wins, and an odd last row
    or column is dropped."""
    eng = _engine.current()
    n, c, h, wd = _check("x", x, eng, ndim=4)
    if h < 2 or wd < 2:
        raise ValueError(f"x's images must be at least 2x2 to pool, got {h}x{wd}")
    shape = (n, c, h // 2, wd // 2)
    out = _output("out", out, eng, shape)
    argmax_out = _output("argmax_out", argmax_out, eng, shape, np.int32)
    eng.backend.maxpool2x2(x, out, argmax_out)
    return out, argmax_out


def maxpool2x2_backward(dy, argmax, *, out):
    """``out = dL/dx`` of :func:`maxpool2x2`: ``dy`` sent to the inputs ``argmax`` picked, 0 at
    every other input. ``out`` (N, C, H, W) gives the input's shape."""
    eng = _engine.current()
    n, c, h, wd = _check("out", out, eng, ndim=4)
    shape = (n, c, h // 2, wd // 2)
    _check("dy", dy, eng, ndim=4, shape=shape)
    _check("argmax", argmax, eng, ndim=4, dtype=_I32, shape=shape)
    eng.backend.maxpool2x2_backward(dy, argmax, out)
    return out


def _hyper(name, value, *, positive=False):
    # A real number only: float("0.1") would quietly accept a string, float(True) a flag.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
    return value
