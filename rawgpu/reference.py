"""The float64 reference of every op and of the whole training step: one readable NumPy copy.

Tests check every kernel against these functions, and the benchmarks check every implementation
against them before timing it. Everything is computed in float64 from whatever it is given, so
the only error in a comparison is the implementation's. Nothing here is fast, and nothing here
is used for training: it is the math, written once, the way it is derived in ``model.py``.
"""

from __future__ import annotations

import numpy as np


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def matmul(a, b, trans_a: bool = False, trans_b: bool = False) -> np.ndarray:
    """``op(a) @ op(b)``, ``op(x) = x.T`` where its flag is set."""
    a, b = _f64(a), _f64(b)
    return (a.T if trans_a else a) @ (b.T if trans_b else b)


def bias_add(x, bias) -> np.ndarray:
    return _f64(x) + _f64(bias)


def bias_relu(x, bias) -> np.ndarray:
    return np.maximum(_f64(x) + _f64(bias), 0.0)


def relu_backward(grad, act) -> np.ndarray:
    """The gradient passes where the ReLU was open (``act > 0``)."""
    return _f64(grad) * (_f64(act) > 0)


def col_sum(x) -> np.ndarray:
    return _f64(x).sum(axis=0)


def softmax_cross_entropy(logits, labels) -> tuple[float, np.ndarray]:
    """(mean loss, d loss / d logits) of softmax cross-entropy; stable for huge logits."""
    z = _f64(logits)
    labels = np.asarray(labels, dtype=np.int64)
    rows = z.shape[0]
    shifted = z - z.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(rows), labels].mean()
    grad = np.exp(logp)
    grad[np.arange(rows), labels] -= 1.0
    return float(loss), grad / rows


def sgd_momentum(param, grad, velocity, *, lr, momentum, weight_decay=0.0, nesterov=False) -> tuple[np.ndarray, np.ndarray]:
    """(new param, new velocity) of one step of PyTorch's SGD rule."""
    p, g, v = _f64(param), _f64(grad), _f64(velocity)
    g = g + weight_decay * p
    v = momentum * v + g
    step = g + momentum * v if nesterov else v
    return p - lr * step, v


def correct_count(logits, labels) -> int:
    return int((np.argmax(_f64(logits), axis=1) == np.asarray(labels)).sum())


# --- the fused ops of the training step -------------------------------------------------------


def linear_relu(x, w, b) -> np.ndarray:
    """``relu(x @ w + b)``: the hidden layer's forward pass."""
    return np.maximum(_f64(x) @ _f64(w) + _f64(b), 0.0)


def linear_softmax_ce(a, w, b, labels) -> tuple[np.ndarray, float, np.ndarray]:
    """(logits ``a @ w + b``, mean loss, d loss / d logits): the output layer and the loss."""
    z = _f64(a) @ _f64(w) + _f64(b)
    loss, dz = softmax_cross_entropy(z, labels)
    return z, loss, dz


def linear_backward_relu(d, w, act) -> np.ndarray:
    """``(d @ w.T) * [act > 0]``: the gradient through a linear layer and the ReLU before it."""
    return (_f64(d) @ _f64(w).T) * (_f64(act) > 0)


def weight_grad(inp, d) -> tuple[np.ndarray, np.ndarray]:
    """(``inp.T @ d``, column sums of ``d``): a linear layer's weight and bias gradients."""
    return _f64(inp).T @ _f64(d), _f64(d).sum(axis=0)


def mlp_loss_and_grads(x, labels, params: dict) -> tuple[float, dict]:
    """The whole two-layer network's loss and gradients, straight from the derivation in model.py."""
    a = linear_relu(x, params["W1"], params["b1"])
    _, loss, dz = linear_softmax_ce(a, params["W2"], params["b2"], labels)
    dW2, db2 = weight_grad(a, dz)
    dh = linear_backward_relu(dz, params["W2"], a)
    dW1, db1 = weight_grad(x, dh)
    return loss, {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}
