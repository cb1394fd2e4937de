"""The ``numpy`` engine: the CPU baseline, the same ops in vectorised NumPy.

Float32 throughout, matmuls through NumPy's BLAS, and no allocation in the hot path where NumPy
allows it: outputs are written with ``out=`` and the few temporaries live in a scratch cache
keyed by shape, so a training step at a fixed batch size allocates almost nothing.
"""

from __future__ import annotations

import numpy as np

#: Inputs of at least this many channels take the channels-last im2col (see the CNN ops).
CHANNELS_LAST_MIN = 8
#: The im2col chunk budget, in bytes: small enough that the GEMM reads it back from cache.
CHUNK_BYTES = 2 << 20


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
    # it from strides, no copy), copied into a scratch matrix laid out for BLAS, then GEMMs with
    # the weights. The copy is K*K times the image, the price of turning a convolution into
    # GEMMs; no Python loop ever runs over pixels. Timed at the seed's shapes, batch 64, one BLAS
    # thread, three choices made it fast:
    #
    #   Chunks. The batch goes through a few images at a time, about 2 MB of im2col, which the
    #     GEMM reads back while it is still in cache. Whole-batch, the middle layer's 40 MB came
    #     back from memory and its GEMM ran at two thirds of the speed.
    #   Channels last, rows (Ho Wo, K K C) per image, for inputs of many channels (the seed's
    #     layers 2 and 3, and their input gradients). A window's row is then K runs of K*C
    #     contiguous floats (K whole pixels, every channel), so the copy streams, and one GEMM
    #     takes the whole chunk: (m Ho Wo, K K C) x (K K C, O), channels-last output rows that
    #     one transposing pass (adding the bias) puts into NCHW. Channels first, the same copy
    #     ran in runs of an image row, 14 floats, and took about as long as the GEMM.
    #   Channels first, (C K K, Ho Wo) per image, for an input of one to a few channels (the first
    #     layer), where channels last would copy runs of K*C = 5 to 15 floats. The runs are image
    #     rows, and the per-image products land straight in NCHW.
    #
    # The input gradient is the forward conv of dy with the flipped kernel, not a GEMM followed by
    # col2im (a scatter-add of K*K shifted slabs), which lost in either layout: channels last and
    # chunked too, at the seed's middle layer (32 x 14 x 14, batch 64), 17 ms against this 9.7.

    def _zeroed(self, tag, shape):
        """A scratch buffer zeroed when it is made: the padded images keep their zero border."""
        key = (tag, shape, np.dtype(np.float32))
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = np.zeros(shape, np.float32)
        return buf

    def _windows(self, tag, x, k, pad):
        """The im2col view of ``x`` (N, C, H, W) padded by ``pad``: channels last, (N, Ho, Wo,
        k, k, C) for inputs of many channels, else channels first, (N, C, k, k, Ho, Wo). The
        padding is one copy into the inside of a scratch buffer (transposing, channels last)."""
        n, c, h, w = x.shape
        if c >= CHANNELS_LAST_MIN:
            xp = self._zeroed(tag + "_pad", (n, h + 2 * pad, w + 2 * pad, c))
            np.copyto(xp[:, pad : pad + h, pad : pad + w, :], x.transpose(0, 2, 3, 1))
            return np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3)
        xp = x
        if pad:
            xp = self._zeroed(tag + "_pad", (n, c, h + 2 * pad, w + 2 * pad))
            xp[:, :, pad : pad + h, pad : pad + w] = x
        return np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3)).transpose(0, 1, 4, 5, 2, 3)

    @staticmethod
    def _images_per_chunk(n, image_bytes):
        """How many of ``n`` images' im2col (``image_bytes`` each) fit in the chunk budget (at
        least one)."""
        return max(1, min(n, CHUNK_BYTES // image_bytes))

    def _chunks(self, tag, windows):
        """Copy the im2col view ``windows`` (N, ...) into scratch a chunk of images at a time;
        yields (first image, image count, the chunk's copy). One buffer, rewritten per chunk."""
        n, image = windows.shape[0], windows.shape[1:]
        step = self._images_per_chunk(n, 4 * int(np.prod(image)))
        cols = self._buf(tag + "_cols", (step, *image))
        for first in range(0, n, step):
            m = min(step, n - first)
            np.copyto(cols[:m], windows[first : first + m])
            yield first, m, cols[:m]

    def _correlate(self, tag, x, w, k, pad, out, bias=None):
        """``out`` (N, O, Ho, Wo) = the correlation of ``x`` (N, C, H, W) padded by ``pad`` with
        ``w`` (O, C, k, k), plus ``bias`` (O,) if given."""
        n, o, ho, wo = out.shape
        c = x.shape[1]
        windows = self._windows(tag, x, k, pad)
        if c >= CHANNELS_LAST_MIN:
            w_t = self._buf(tag + "_w", (k, k, c, o))
            np.copyto(w_t, w.transpose(2, 3, 1, 0))  # rows (i, j, c), as the im2col's columns
            w_t = w_t.reshape(k * k * c, o)
            for first, m, cols in self._chunks(tag, windows):
                y = self._buf(tag + "_y", (m * ho * wo, o))
                np.matmul(cols.reshape(m * ho * wo, k * k * c), w_t, out=y)
                src = y.reshape(m, ho * wo, o).transpose(0, 2, 1)  # channels last -> NCHW
                dst = out[first : first + m].reshape(m, o, ho * wo)
                if bias is None:
                    np.copyto(dst, src)
                else:
                    np.add(src, bias[:, None], out=dst)
        else:
            w2 = self._buf(tag + "_w", (o, c, k, k))
            np.copyto(w2, w)  # w may be a strided view (the flipped kernel)
            w2 = w2.reshape(o, c * k * k)
            for first, m, cols in self._chunks(tag, windows):
                np.matmul(w2, cols.reshape(m, c * k * k, ho * wo), out=out[first : first + m].reshape(m, o, ho * wo))
            if bias is not None:
                np.add(out, bias[:, None, None], out=out)

    def conv2d(self, x, w, b, out, pad, relu):
        self._correlate("conv_fwd", x, w, w.shape[2], pad, out, b)
        if relu:
            np.maximum(out, 0.0, out=out)

    def conv2d_input_grad(self, dy, w, dx, pad):
        # A convolution of dy (padded by K - 1 - pad) with the kernel flipped in both spatial
        # axes and its channel axes swapped (the derivation is in rawgpu/reference.py).
        k = w.shape[2]
        self._correlate("conv_dx", dy, w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), k, k - 1 - pad, dx)

    def conv2d_weight_grad(self, x, dy, dw, db, pad):
        # dw[o, c, i, j] = sum over every output pixel (n, y, x) of dy[n, o, y, x] times the
        # input under that pixel's window: GEMMs of the im2col with dy whose inner dimension is
        # the pixels, summed over the chunks (channels last: one GEMM per chunk) or over the
        # images (channels first: one per image, (C K K, Ho Wo) x (Ho Wo, O), dy read as it is).
        n, o, ho, wo = dy.shape
        c, k = x.shape[1], dw.shape[2]
        np.add.reduce(dy.reshape(n, o, ho * wo), axis=(0, 2), out=db)
        windows = self._windows("conv_dw", x, k, pad)
        if c >= CHANNELS_LAST_MIN:
            dy_rows = self._buf("conv_dw_dy", (n, ho, wo, o))
            np.copyto(dy_rows, dy.transpose(0, 2, 3, 1))
            dy_rows = dy_rows.reshape(n * ho * wo, o)
            dw_t = self._buf("conv_dw_t", (k * k * c, o))  # rows (i, j, c)
            part = self._buf("conv_dw_part", dw_t.shape)
            for first, m, cols in self._chunks("conv_dw", windows):
                rows = cols.reshape(m * ho * wo, k * k * c)
                np.matmul(rows.T, dy_rows[first * ho * wo : (first + m) * ho * wo], out=dw_t if first == 0 else part)
                if first:
                    np.add(dw_t, part, out=dw_t)
            np.copyto(dw, dw_t.reshape(k, k, c, o).transpose(3, 2, 0, 1))
        else:
            per_image = self._buf("conv_dw_images", (n, c * k * k, o))
            for first, m, cols in self._chunks("conv_dw", windows):
                dy_t = dy[first : first + m].reshape(m, o, ho * wo).transpose(0, 2, 1)
                np.matmul(cols.reshape(m, c * k * k, ho * wo), dy_t, out=per_image[first : first + m])
            dw_t = self._buf("conv_dw_t", (c * k * k, o))
            np.add.reduce(per_image, axis=0, out=dw_t)
            np.copyto(dw.reshape(o, -1), dw_t.T)

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
