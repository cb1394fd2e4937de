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

    # --- the CNN's ops: im2col with stride tricks, then one batched BLAS product -------------
    #
    # im2col: every K x K window of the zero-padded image, as a view (sliding_window_view makes
    # it from strides, no copy), copied once into a scratch matrix laid out for BLAS. The copy is
    # K*K times the image, the price of turning a convolution into one big GEMM; no Python loop
    # ever runs over pixels.

    def _padded(self, tag, x, pad):
        """``x`` with ``pad`` zeros around each image plane, in a scratch buffer (the border is
        zeroed once, when the buffer is made; only the inside is rewritten)."""
        if pad == 0:
            return x
        n, c, h, w = x.shape
        key = (tag, (n, c, h + 2 * pad, w + 2 * pad), np.dtype(np.float32))
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = np.zeros(key[1], np.float32)
        buf[:, :, pad : pad + h, pad : pad + w] = x
        return buf

    def _im2col(self, tag, img, k, pad):
        """im2col of ``img`` (N, C, H, W) padded by ``pad``: the (C k k, N Ho Wo) matrix whose
        column (n, y, x) holds the k x k window under output pixel (n, y, x) of every channel."""
        win = np.lib.stride_tricks.sliding_window_view(self._padded(tag, img, pad), (k, k), axis=(2, 3))
        n, c, ho, wo = win.shape[:4]
        cols = self._buf(tag + "_cols", (c, k, k, n, ho, wo))
        np.copyto(cols, win.transpose(1, 4, 5, 0, 2, 3))
        return cols.reshape(c * k * k, n * ho * wo)

    def _correlate(self, tag, img, w2, k, pad, out):
        """``out`` (N, O, Ho, Wo) = ``w2`` (O, C k k) times im2col of ``img``: one GEMM over every
        image at once (per-image products were several times slower here), then NCHW."""
        n, o, ho, wo = out.shape
        prod = self._buf(tag + "_prod", (o, n, ho, wo))
        np.matmul(w2, self._im2col(tag, img, k, pad), out=prod.reshape(o, n * ho * wo))
        np.copyto(out, prod.transpose(1, 0, 2, 3))

    def conv2d(self, x, w, b, out, pad, relu):
        o, k = w.shape[0], w.shape[2]
        self._correlate("conv_fwd", x, w.reshape(o, -1), k, pad, out)
        np.add(out, b[None, :, None, None], out=out)
        if relu:
            np.maximum(out, 0.0, out=out)

    def conv2d_input_grad(self, dy, w, dx, pad):
        # A convolution of dy (padded by K - 1 - pad) with the kernel flipped in both spatial
        # axes and its channel axes swapped (the derivation is in rawgpu/reference.py).
        o, c, k, _ = w.shape
        flipped = self._buf("conv_flipped", (c, o, k, k))
        np.copyto(flipped, w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        self._correlate("conv_dx", dy, flipped.reshape(c, -1), k, k - 1 - pad, dx)

    def conv2d_weight_grad(self, x, dy, dw, db, pad):
        # dw[o, (c, i, j)] = sum over every output pixel (n, y, x) of dy[n, o, y, x] times the
        # input under that pixel's window: one GEMM of dy as O x (N Ho Wo) with im2col of x.
        n, o, ho, wo = dy.shape
        cols = self._im2col("conv_dw", x, dw.shape[2], pad)
        dy_t = self._buf("conv_dy_t", (o, n, ho, wo))
        np.copyto(dy_t, dy.transpose(1, 0, 2, 3))
        dy_t = dy_t.reshape(o, n * ho * wo)
        np.matmul(dy_t, cols.T, out=dw.reshape(o, -1))
        np.add.reduce(dy_t, axis=1, out=db)

    def maxpool2x2(self, x, out, argmax):
        n, c, h, w = x.shape
        ho, wo = out.shape[2], out.shape[3]
        # The 2x2 windows as a view (every second window of the sliding ones), then flattened to
        # 4 values in row-major order, so argmax's ties go to the first, as PyTorch's do (and
        # NumPy's argmax takes the first NaN as the largest: a NaN is passed on).
        win = np.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(2, 3))[:, :, ::2, ::2]
        flat = self._buf("pool_win", (n, c, ho, wo, 4))
        np.copyto(flat.reshape(n, c, ho, wo, 2, 2), win)
        pick = self._buf("pool_pick", (n, c, ho, wo), np.intp)
        np.argmax(flat, axis=4, out=pick)
        out[...] = np.take_along_axis(flat, pick[..., None], axis=4)[..., 0]
        # The picked input's index in its plane: the window's corner plus the offset of pick.
        corner = 2 * np.arange(ho)[:, None] * w + 2 * np.arange(wo)[None, :]
        offset = np.array([0, 1, w, w + 1])
        np.add(corner, offset[pick], out=argmax, casting="unsafe")

    def maxpool2x2_backward(self, dy, argmax, dx):
        n, c, h, w = dx.shape
        dx.fill(0.0)
        # Windows do not overlap: each dy lands on exactly one input, so a plain put is exact.
        np.put_along_axis(dx.reshape(n * c, h * w), argmax.reshape(n * c, -1), dy.reshape(n * c, -1), axis=1)
