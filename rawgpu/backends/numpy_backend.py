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

    # --- the CNN's ops: im2col with stride tricks, then BLAS ---------------------------------
    #
    # im2col: every K x K window of the zero-padded image, as a view (sliding_window_view makes
    # it from strides, no copy), copied once into a scratch matrix laid out for BLAS. The copy is
    # K*K times the image, the price of turning a convolution into GEMMs; no Python loop ever
    # runs over pixels. Two layouts, each chosen for the product that reads it (timed at the
    # seed's shapes, batch 64, one BLAS thread):
    #
    #   per image, (N, C K K, Ho Wo): the forward pass and the input gradient multiply the weights
    #     by each image's block, and the products land straight in NCHW, with no transpose after.
    #     The copy is the cheaper one too (its inner runs are whole rows of the image).
    #   whole batch, (C K K, N Ho Wo): the weight gradient sums over images and pixels at once,
    #     one GEMM; per-image products would need a sum over N products of the weights' size.
    #
    # The input gradient is the forward conv of dy with the flipped kernel, not a GEMM followed by
    # col2im (a scatter-add of K*K shifted slabs): at the seed's middle layer the col2im alone
    # took longer than this im2col and its GEMM together.

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

    def _windows(self, tag, img, k, pad):
        """The (N, C, Ho, Wo, k, k) view of every k x k window of ``img`` padded by ``pad``."""
        return np.lib.stride_tricks.sliding_window_view(self._padded(tag, img, pad), (k, k), axis=(2, 3))

    def _im2col_per_image(self, tag, img, k, pad):
        """(N, C k k, Ho Wo): for each image, the matrix whose column (y, x) holds the k x k
        window under output pixel (y, x), channel by channel."""
        win = self._windows(tag, img, k, pad)
        n, c, ho, wo = win.shape[:4]
        cols = self._buf(tag + "_cols", (n, c, k, k, ho, wo))
        np.copyto(cols, win.transpose(0, 1, 4, 5, 2, 3))
        return cols.reshape(n, c * k * k, ho * wo)

    def _im2col_batch(self, tag, img, k, pad):
        """(C k k, N Ho Wo): the same windows, every image's side by side."""
        win = self._windows(tag, img, k, pad)
        n, c, ho, wo = win.shape[:4]
        cols = self._buf(tag + "_cols", (c, k, k, n, ho, wo))
        np.copyto(cols, win.transpose(1, 4, 5, 0, 2, 3))
        return cols.reshape(c * k * k, n * ho * wo)

    def _correlate(self, tag, img, w2, k, pad, out):
        """``out`` (N, O, Ho, Wo) = ``w2`` (O, C k k) times each image's im2col: a stack of GEMMs,
        one per image, that NumPy's matmul hands to BLAS one after the other."""
        n, o, ho, wo = out.shape
        np.matmul(w2, self._im2col_per_image(tag, img, k, pad), out=out.reshape(n, o, ho * wo))

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
        # input under that pixel's window: one GEMM of im2col of x with dy as (N Ho Wo) x O.
        # It is computed transposed, dw^T = cols dy^T, (C K K) x O: OpenBLAS runs that
        # orientation of the same product about 1.5x faster at the seed's shapes (one thread),
        # and turning the small dw^T around costs nothing.
        n, o, ho, wo = dy.shape
        cols = self._im2col_batch("conv_dw", x, dw.shape[2], pad)
        dy_t = self._buf("conv_dy_t", (o, n, ho * wo))
        np.copyto(dy_t, dy.reshape(n, o, ho * wo).transpose(1, 0, 2))  # dy is small: K*K times smaller than cols
        dy_t = dy_t.reshape(o, n * ho * wo)
        dw_t = self._buf("conv_dw_t", (cols.shape[0], o))
        np.matmul(cols, dy_t.T, out=dw_t)
        np.copyto(dw.reshape(o, -1), dw_t.T)
        np.add.reduce(dy_t, axis=1, out=db)

    # 2x2 max-pooling: the four corners of every window are four strided views of the image (no
    # copy), compared elementwise: three passes of whole-array NumPy, no per-window work.

    @staticmethod
    def _corners(x, ho, wo):
        """The top-left, top-right, bottom-left and bottom-right value of every 2x2 window, as
        views (an odd last row or column is left out), in row-major order."""
        return [x[:, :, dy : 2 * ho : 2, dx : 2 * wo : 2] for dy in (0, 1) for dx in (0, 1)]

    def maxpool2x2(self, x, out, argmax):
        n, c, h, w = x.shape
        ho, wo = out.shape[2], out.shape[3]
        corners = self._corners(x, ho, wo)
        pick = self._buf("pool_pick", out.shape, np.int8)  # which corner won: 0..3
        take = self._buf("pool_take", out.shape, np.bool_)
        keep = self._buf("pool_keep", out.shape, np.bool_)
        step = self._buf("pool_step", out.shape, np.int8)
        np.copyto(out, corners[0])
        pick.fill(0)
        for k, v in enumerate(corners[1:], start=1):
            # A later corner wins only if strictly larger (ties go to the first, as PyTorch's),
            # or if it is NaN and the best so far is not (the first NaN wins and is passed on):
            # take = not (v <= best) and best is not NaN. The updates are arithmetic, not masked
            # copies (copyto with a random mask branches per element: several times slower).
            np.less_equal(v, out, out=take)
            np.logical_not(take, out=take)
            np.equal(out, out, out=keep)  # False where the best so far is NaN
            np.logical_and(take, keep, out=take)
            np.subtract(k, pick, out=step)
            np.multiply(step, take, out=step)
            np.add(pick, step, out=pick)  # pick = k where take, else unchanged
            np.maximum(out, v, out=out)  # the same choice (np.maximum passes a NaN on)
        # The picked input's index in its plane: the window's corner, plus w for the bottom row
        # and 1 for the right column.
        corner = self._pool_corner_index(ho, wo, w)
        np.multiply(pick >> 1, w, out=argmax, casting="unsafe")
        np.add(argmax, pick & 1, out=argmax, casting="unsafe")
        np.add(argmax, corner, out=argmax)

    def _pool_corner_index(self, ho, wo, w):
        key = ("pool_corner", ho, wo, w)
        corner = self._scratch.get(key)
        if corner is None:
            corner = self._scratch[key] = (2 * np.arange(ho)[:, None] * w + 2 * np.arange(wo)[None, :]).astype(np.int32)
        return corner

    def maxpool2x2_backward(self, dy, argmax, dx):
        n, c, h, w = dx.shape
        ho, wo = dy.shape[2], dy.shape[3]
        if (h, w) != (2 * ho, 2 * wo):
            dx.fill(0.0)  # the odd last row or column no window read
        # Windows do not overlap: each dy lands on exactly one of its window's four inputs. The
        # argmax minus its window's corner says which (0, 1, w, w + 1); each corner view of dx
        # gets dy where it was picked and 0 elsewhere.
        offset = self._buf("pool_offset", dy.shape, np.int32)
        np.subtract(argmax, self._pool_corner_index(ho, wo, w), out=offset)
        hit = self._buf("pool_hit", dy.shape, np.bool_)
        for corner, off in zip(self._corners(dx, ho, wo), (0, 1, w, w + 1)):
            np.equal(offset, off, out=hit)
            np.multiply(dy, hit, out=corner)
