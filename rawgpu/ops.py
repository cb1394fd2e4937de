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

import numpy as np

from rawgpu import engine as _engine

__all__ = [
    "matmul",
    "bias_add",
    "bias_relu",
    "relu_backward",
    "col_sum",
    "softmax_cross_entropy",
    "sgd_momentum_",
    "correct_count",
    "MATMUL_VARIANTS",
]

#: The matmul ladder's rungs, slowest idea first (kernels/matmul/). Imported from the kernels
#: package's numba-free part, so this module still loads before an engine is chosen.
from rawgpu.kernels.matmul import VARIANTS as MATMUL_VARIANTS  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------


def _check(name, arr, eng, *, ndim, dtype=np.float32, shape=None):
    """Check one array argument; return its shape."""
    if not isinstance(arr, eng.array_type):
        raise TypeError(
            f"{name} must be {eng.describe_kind()} on the {eng.name!r} engine, got {type(arr).__module__}.{type(arr).__name__}"
        )
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(arr.shape)}")
    if arr.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must be {np.dtype(dtype).name}, got {arr.dtype}; convert it with .astype({np.dtype(dtype).name})")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous; pass a contiguous copy (e.g. xp.ascontiguousarray({name}))")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(arr.shape)}")
    return tuple(arr.shape)


def _output(name, out, eng, shape, dtype=np.float32):
    if out is None:
        return eng.empty(shape, dtype)
    _check(name, out, eng, ndim=len(shape), dtype=dtype, shape=shape)
    return out


def validate_labels(labels, rows, classes, eng=None):
    """Check ``labels`` (int32, ``(rows,)``) against ``classes``; a ValueError says what is wrong."""
    eng = eng or _engine.current()
    _check("labels", labels, eng, ndim=1, dtype=np.int32, shape=(rows,))
    if rows:
        # One comparison, one host read: seen as unsigned, a negative int32 is >= 2**31, so
        # "label >= classes" also catches every negative label.
        bad = int((labels.view(np.uint32) >= classes).sum())
        if bad:
            lo, hi = int(labels.min()), int(labels.max())
            raise ValueError(f"labels must lie in [0, {classes}) for {classes} classes; got values from {lo} to {hi}")


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


def softmax_cross_entropy(logits, labels, *, grad_out=None, check_labels=True):
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    For a batch of ``B`` rows, ``loss = mean_i(logsumexp(z_i) - z_i[y_i])`` and
    ``d loss / d z_ij = (softmax(z_i)_j - [j == y_i]) / B``. Returns ``(loss, grad)`` where
    ``loss`` is a 0-d float32 array of the engine's kind (``float(loss)`` reads it) and ``grad``
    has the shape of ``logits`` (written into ``grad_out`` when given). Computed with the row
    maximum subtracted, so logits of +-1e4 stay finite.

    ``check_labels=False`` skips the range check of the labels on the ``cuda`` engine, where it
    costs a read back to the host, a synchronisation, at every call: for callers that checked
    their labels once already, like the training loop. A label out of range then makes the loss
    NaN (the kernels never read or write out of bounds). The host engines check always: there
    the check is cheap, and NumPy's indexing would quietly wrap a negative label.
    """
    eng = _engine.current()
    rows, classes = _check("logits", logits, eng, ndim=2)
    if rows < 1 or classes < 1:
        raise ValueError(f"logits must have at least one row and one class, got shape {(rows, classes)}")
    if check_labels or not eng.is_device:
        validate_labels(labels, rows, classes, eng)
    else:
        _check("labels", labels, eng, ndim=1, dtype=np.int32, shape=(rows,))
    grad = _output("grad_out", grad_out, eng, (rows, classes))
    loss = eng.backend.softmax_cross_entropy(logits, labels, grad)
    return loss, grad


def sgd_momentum_(param, grad, velocity, *, lr, momentum, weight_decay=0.0, nesterov=False):
    """One SGD-with-momentum step, in place on ``param`` and ``velocity`` (PyTorch's rule).

    ``g = grad + weight_decay * param``; ``v = momentum * v + g``;
    ``param -= lr * (g + momentum * v if nesterov else v)``. ``grad`` is left unchanged.
    """
    eng = _engine.current()
    ndim = getattr(param, "ndim", None)
    if ndim not in (1, 2):
        raise ValueError(f"param must be a 1-D or 2-D float32 array, got {type(param).__name__} with ndim {ndim}")
    shape = _check("param", param, eng, ndim=ndim)
    _check("grad", grad, eng, ndim=ndim, shape=shape)
    _check("velocity", velocity, eng, ndim=ndim, shape=shape)
    lr, momentum, weight_decay = _hyper("lr", lr, positive=True), _hyper("momentum", momentum), _hyper("weight_decay", weight_decay)
    if nesterov and momentum == 0.0:
        raise ValueError("nesterov=True needs momentum > 0")
    eng.backend.sgd_momentum_(param, grad, velocity, lr, momentum, weight_decay, bool(nesterov))
    return param


def correct_count(logits, labels):
    """How many rows' argmax equals the label (ties go to the lowest index). Returns an int."""
    eng = _engine.current()
    rows, classes = _check("logits", logits, eng, ndim=2)
    _check("labels", labels, eng, ndim=1, dtype=np.int32, shape=(rows,))
    if rows == 0:
        return 0
    return int(eng.backend.correct_count(logits, labels))


def _hyper(name, value, *, positive=False):
    # A real number only: float("0.1") would quietly accept a string, float(True) a flag.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
    return value
