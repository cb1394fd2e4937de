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


# --- the CNN's ops: convolution (stride 1, zero padding) and 2x2 max-pooling, NCHW ------------
#
# Images are (N, C, H, W); a convolution's weights (O, C, KH, KW) and bias (O,), as in PyTorch.
# "Convolution" here is what deep learning means by it, a correlation: the kernel is not flipped.


def _windows(x, kh: int, kw: int, pad: int) -> np.ndarray:
    """Every ``kh x kw`` window of ``x`` zero-padded by ``pad``: shape (N, C, Ho, Wo, kh, kw).
    A view (stride tricks), so nothing the size of im2col is copied."""
    xp = np.pad(_f64(x), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    return np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))


def conv2d(x, w, b=None, *, pad: int) -> np.ndarray:
    """``out[n, o, y, x] = b[o] + sum_{c, i, j} xpad[n, c, y + i, x + j] w[o, c, i, j]``.

    Stride 1, so ``Ho = H + 2 pad - KH + 1`` (and the same for W)."""
    w = _f64(w)
    out = np.einsum("ncyxij,ocij->noyx", _windows(x, w.shape[2], w.shape[3], pad), w, optimize=True)
    return out if b is None else out + _f64(b)[None, :, None, None]


def conv2d_input_grad(dy, w, *, pad: int) -> np.ndarray:
    """``dL/dx`` of :func:`conv2d` from ``dy = dL/dout``: a convolution of ``dy``, padded by
    ``K - 1 - pad``, with the kernel flipped in both spatial axes and its two channel axes swapped.

    Why: ``x[n, c, h, w]`` meets ``w[o, c, i, j]`` in output ``(h + pad - i, w + pad - j)``, so
    ``dx[n, c, h, w] = sum_{o, i, j} dy[n, o, h + pad - i, w + pad - j] w[o, c, i, j]``; with
    ``i' = K - 1 - i`` that is a correlation of ``dy`` (shifted by ``K - 1 - pad``) with
    ``w[o, c, K - 1 - i', K - 1 - j']``. Needs ``pad <= K - 1`` (true of every 'same' conv)."""
    w = _f64(w)
    kh, kw = w.shape[2], w.shape[3]
    if pad > min(kh, kw) - 1:
        raise ValueError(f"pad must be at most kernel size - 1 ({min(kh, kw) - 1}), got {pad}")
    flipped = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # (C, O, KH, KW)
    return conv2d(dy, flipped, pad=kh - 1 - pad)


def conv2d_weight_grad(x, dy, kernel_size: int, *, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(``dL/dw``, ``dL/db``) of :func:`conv2d`: ``dw[o, c, i, j] = sum_{n, y, x} dy[n, o, y, x]
    xpad[n, c, y + i, x + j]``, a correlation of the input with the output gradient, and
    ``db[o]`` = the sum of ``dy[:, o]`` (the bias is added at every pixel of every image)."""
    dy = _f64(dy)
    dw = np.einsum("ncyxij,noyx->ocij", _windows(x, kernel_size, kernel_size, pad), dy, optimize=True)
    return dw, dy.sum(axis=(0, 2, 3))


def maxpool2x2(x) -> tuple[np.ndarray, np.ndarray]:
    """(``out``, ``argmax``) of 2x2 max-pooling with stride 2: ``out[n, c, y, x]`` is the largest
    of ``x[n, c, 2y:2y+2, 2x:2x+2]``; ``argmax`` (int32) its index ``h * W + w`` within the image
    plane, as PyTorch's ``return_indices``. An odd last row or column is dropped (floor). Ties go
    to the first in row-major order; a NaN wins (it is passed on)."""
    x = _f64(x)
    n, c, h, w = x.shape
    ho, wo = h // 2, w // 2
    win = x[:, :, : 2 * ho, : 2 * wo].reshape(n, c, ho, 2, wo, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, ho, wo, 4)
    k = np.argmax(np.where(np.isnan(win), np.inf, win), axis=-1)  # argmax returns the first maximum
    out = np.take_along_axis(win, k[..., None], axis=-1)[..., 0]
    rows = 2 * np.arange(ho)[:, None] + k // 2
    cols = 2 * np.arange(wo)[None, :] + k % 2
    return out, (rows * w + cols).astype(np.int32)


def maxpool2x2_backward(dy, argmax, in_shape) -> np.ndarray:
    """``dL/dx`` of :func:`maxpool2x2`: each window's gradient goes to the input it picked, and
    every other input (and a dropped odd row or column) gets 0."""
    n, c, h, w = in_shape
    dx = np.zeros((n, c, h * w))
    np.put_along_axis(dx, np.asarray(argmax).reshape(n, c, -1), _f64(dy).reshape(n, c, -1), axis=2)
    return dx.reshape(in_shape)


def cnn_loss_and_grads(x, labels, params: dict, *, pad: int, relu: bool = False) -> tuple[float, dict]:
    """The CNN's (rawgpu/cnn.py) loss and gradients: three conv -> [ReLU] -> 2x2 max-pool
    stages, flatten, ``fc1`` (W4, b4) -> [ReLU] -> ``fc2`` (W5, b5), softmax cross-entropy; the
    backward pass straight from the derivation table in cnn.py. ``x`` is (N, C, H, W)."""
    act = (lambda h: np.maximum(h, 0.0)) if relu else (lambda h: h)
    mask = (lambda d, h: d * (h > 0)) if relu else (lambda d, h: d)
    feats, hs, picks = [_f64(x)], [], []
    for i in (1, 2, 3):  # the conv stages
        h = act(conv2d(feats[-1], params[f"W{i}"], params[f"b{i}"], pad=pad))
        p, arg = maxpool2x2(h)
        hs.append(h)
        picks.append(arg)
        feats.append(p)
    f = feats[-1].reshape(len(feats[-1]), -1)
    a4 = act(f @ _f64(params["W4"]) + _f64(params["b4"]))
    _, loss, dz = linear_softmax_ce(a4, params["W5"], params["b5"], labels)
    grads = {}
    grads["W5"], grads["b5"] = weight_grad(a4, dz)
    dh4 = mask(dz @ _f64(params["W5"]).T, a4)
    grads["W4"], grads["b4"] = weight_grad(f, dh4)
    dp = (dh4 @ _f64(params["W4"]).T).reshape(feats[-1].shape)
    for i in (3, 2, 1):
        dh = mask(maxpool2x2_backward(dp, picks[i - 1], hs[i - 1].shape), hs[i - 1])
        grads[f"W{i}"], grads[f"b{i}"] = conv2d_weight_grad(feats[i - 1], dh, _f64(params[f"W{i}"]).shape[2], pad=pad)
        if i > 1:
            dp = conv2d_input_grad(dh, params[f"W{i}"], pad=pad)
    return loss, grads
