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
        np.add.reduce(x, axis=0, out=out)

    def softmax_cross_entropy(self, logits, labels, grad):
        # Every NumPy call costs about a microsecond of overhead, which at (128, 10) is more than
        # its arithmetic: so as few calls as possible, reductions called directly, no temporaries
        # beyond the two per-row columns and the picked target logits.
        rows = logits.shape[0]
        idx = self._row_index(rows)
        row_max = self._buf("row_max", (rows, 1))
        row_sum = self._buf("row_sum", (rows, 1))
        np.maximum.reduce(logits, axis=1, keepdims=True, out=row_max)
        np.subtract(logits, row_max, out=grad)  # shifted logits: the largest is 0, exp cannot overflow
        target = grad[idx, labels]  # z_y - max, picked before grad is overwritten
        np.exp(grad, out=grad)
        np.add.reduce(grad, axis=1, keepdims=True, out=row_sum)
        # row loss = log(sum_j exp(z_j - max)) - (z_y - max); the loss is their mean
        loss = (np.log(row_sum).sum(dtype=np.float32) - target.sum(dtype=np.float32)) / np.float32(rows)
        np.divide(grad, row_sum, out=grad)  # softmax
        grad[idx, labels] -= 1.0  # minus the one-hot target
        grad *= np.float32(1.0 / rows)  # the mean over the batch
        return np.asarray(loss, dtype=np.float32)

    # --- the fused ops of the training step ---------------------------------------------------

    def linear_relu(self, x, w, b, out):
        np.matmul(x, w, out=out)
        self.bias_relu(out, b, out)

    def linear_softmax_ce(self, a, w, b, labels, z, dz, stats):
        np.matmul(a, w, out=z)
        np.add(z, b, out=z)
        loss = self.softmax_cross_entropy(z, labels, dz)
        if stats is not None:  # what the kernel does on the device, done here on the host
            counters, sums = stats.counters, stats.sums
            counters[0] += 1
            sums[0] += float(loss) * len(labels)
            sums[1] += float(loss)
            if not np.isfinite(loss) and counters[1] == 0:
                counters[1] = counters[0]
        return loss

    def linear_backward_relu(self, d, w, act, out):
        np.matmul(d, w.T, out=out)
        self.relu_backward(out, act, out)

    def weight_grad(self, inp, d, w_out, b_out):
        np.matmul(inp.T, d, out=w_out)
        np.add.reduce(d, axis=0, out=b_out)

    def _row_index(self, rows):
        idx = self._scratch.get(("row_index", rows))
        if idx is None:
            idx = self._scratch[("row_index", rows)] = np.arange(rows)
        return idx

    def sgd_momentum_(self, param, grad, velocity, settings):
        lr, momentum, weight_decay, nesterov = settings
        # Four passes over the parameter without weight decay or Nesterov (the common case):
        # v *= mu; v += g; step = lr * v; p -= step.
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
            np.multiply(step, np.float32(lr), out=step)
        else:
            np.multiply(velocity, np.float32(lr), out=step)
        np.subtract(param, step, out=param)

    def correct_count(self, logits, labels):
        return int(np.count_nonzero(np.argmax(logits, axis=1) == labels))
