"""The ``numpy`` engine: the CPU baseline, the same ops in vectorised NumPy.

Float32 throughout, matmuls through NumPy's BLAS, and no allocation in the hot path where NumPy
allows it: outputs are written with ``out=`` and the few temporaries live in a scratch cache
keyed by shape, so a training step at a fixed batch size allocates almost nothing.
"""

from __future__ import annotations

import numpy as np


class NumpyBackend:
    name = "numpy"

    def __init__(self):
        self._scratch: dict = {}

    def _buf(self, tag, shape, dtype=np.float32):
        key = (tag, shape, np.dtype(dtype))
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = np.empty(shape, dtype)
        return buf

    def matmul(self, a, b, out, trans_a, trans_b, variant):
        # .T is a free view; BLAS reads the transposed layout directly.
        np.matmul(a.T if trans_a else a, b.T if trans_b else b, out=out)

    def bias_add(self, x, bias, out):
        np.add(x, bias, out=out)

    def bias_relu(self, x, bias, out):
        np.add(x, bias, out=out)
        np.maximum(out, 0.0, out=out)

    def relu_backward(self, grad, act, out):
        mask = self._buf("mask", act.shape, np.bool_)
        np.greater(act, 0.0, out=mask)
        np.multiply(grad, mask, out=out)

    def col_sum(self, x, out):
        np.sum(x, axis=0, out=out)

    def softmax_cross_entropy(self, logits, labels, grad):
        # A diverged run has inf logits: let the NaN loss reach the trainer, which explains it.
        with np.errstate(over="ignore", invalid="ignore"):
            return self._softmax_cross_entropy(logits, labels, grad)

    def _softmax_cross_entropy(self, logits, labels, grad):
        rows = logits.shape[0]
        idx = np.arange(rows)
        row_max = self._buf("row_max", (rows, 1))
        row_sum = self._buf("row_sum", (rows, 1))
        np.max(logits, axis=1, keepdims=True, out=row_max)
        np.subtract(logits, row_max, out=grad)  # shifted logits: the largest is 0, exp cannot overflow
        np.exp(grad, out=grad)
        np.sum(grad, axis=1, keepdims=True, out=row_sum)
        # row loss = log(sum_j exp(z_j - max)) + max - z_y
        row_loss = np.log(row_sum[:, 0]) + row_max[:, 0] - logits[idx, labels]
        np.divide(grad, row_sum, out=grad)  # softmax
        grad[idx, labels] -= 1.0  # minus the one-hot target
        grad *= np.float32(1.0 / rows)  # the mean over the batch
        return np.asarray(row_loss.mean(dtype=np.float32), dtype=np.float32)

    def sgd_momentum_(self, param, grad, velocity, lr, momentum, weight_decay, nesterov):
        step = self._buf("sgd_step", param.shape)
        g = grad
        if weight_decay:
            g = self._buf("sgd_g", param.shape)
            np.multiply(param, np.float32(weight_decay), out=g)
            np.add(g, grad, out=g)
        np.multiply(velocity, np.float32(momentum), out=velocity)
        np.add(velocity, g, out=velocity)
        if nesterov:
            np.multiply(velocity, np.float32(momentum), out=step)
            np.add(step, g, out=step)
        else:
            np.copyto(step, velocity)
        np.multiply(step, np.float32(lr), out=step)
        np.subtract(param, step, out=param)

    def correct_count(self, logits, labels):
        return int(np.count_nonzero(np.argmax(logits, axis=1) == labels))
