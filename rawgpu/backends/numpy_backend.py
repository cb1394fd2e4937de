"""The ``numpy`` engine: the CPU baseline, the same ops in vectorised NumPy.

Float32 throughout, matmuls through NumPy's BLAS, and no allocation in the hot path where NumPy
allows it: outputs are written with ``out=`` and the few temporaries live in a scratch cache
keyed by shape, so a training step at a fixed batch size allocates almost nothing.
"""

from __future__ import annotations

import numpy as np

#: Inputs of at least this many channels take the channels-last im2col (see the CNN ops).
CHANNELS_LAST_MIN = 8
#: The im2col chunk budget, in bytes: a few MB, so that the GEMM reads it from cache.
CHUNK_BYTES = 4 << 20


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
    # it from strides, no copy), copied into a scratch matrix laid out for BLAS, one GEMM with the
    # weights. The copy is K*K times the image, the price of turning a convolution into GEMMs; no
    # Python loop ever runs over pixels. Two layouts, each where it is the faster (timed at the
    # seed's shapes, batch 64, one BLAS thread):
    #
    #   channels last, rows (N Ho Wo, K K C), for inputs of many channels (the seed's layers 2 and
    #     3, and every input gradient). A window's row is then K runs of K*C contiguous floats
    #     (K whole pixels of every channel), so the copy streams; one GEMM over many images makes
    #     the product wide. The batch goes through in chunks of a few MB of im2col, which the GEMM
    #     reads while it is still in cache: unchunked, its 40 MB (layer 2, batch 64) came back
    #     from memory and the GEMM ran at two thirds of the speed.
    #   channels first, per image (N, C K K, Ho Wo), for an input of one to a few channels (the
    #     first layer). Channels last would copy runs of K*C = 5 to 15 floats; here the runs are
    #     image rows, and the per-image products land straight in NCHW.
    #
    # The input gradient is the forward conv of dy with the flipped kernel, not a GEMM followed by
    # col2im (a scatter-add of K*K shifted slabs): at the seed's middle layer the col2im alone
    # took longer than this im2col and its GEMM together.

    def _padded(self, tag, x, pad):
        """``x`` (N, C, H, W) with ``pad`` zeros around each image plane, in a scratch buffer
        (the border is zeroed once, when the buffer is made; only the inside is rewritten)."""
        if pad == 0:
            return x
        n, c, h, w = x.shape
        buf = self._zeroed(tag, (n, c, h + 2 * pad, w + 2 * pad))
        buf[:, :, pad : pad + h, pad : pad + w] = x
        return buf

    def _padded_nhwc(self, tag, x, pad):
        """``x`` (N, C, H, W) as channels-last (N, H + 2 pad, W + 2 pad, C), zero-padded: one
        transposing copy into the inside of a scratch buffer whose border stays zero."""
        n, c, h, w = x.shape
        buf = self._zeroed(tag, (n, h + 2 * pad, w + 2 * pad, c))
        np.copyto(buf[:, pad : pad + h, pad : pad + w, :], x.transpose(0, 2, 3, 1))
        return buf

    def _zeroed(self, tag, shape):
        key = (tag, shape, np.dtype(np.float32))
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = np.zeros(shape, np.float32)
        return buf

    @staticmethod
    def _channels_last(c):
        return c >= CHANNELS_LAST_MIN

    @staticmethod
    def _images_per_chunk(n, image_bytes):
        """How many of ``n`` images' im2col (``image_bytes`` each) fit in the chunk budget (at
        least one)."""
        return max(1, min(n, CHUNK_BYTES // image_bytes))

    def _chunks(self, tag, xp, k, ho, wo):
        """For each chunk of images: (first image, count, its im2col rows (count Ho Wo, K K C)),
        from the channels-last padded ``xp``. The rows live in one scratch buffer, rewritten per
        chunk."""
        n, c = xp.shape[0], xp.shape[3]
        win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))  # (N, Ho, Wo, C, k, k)
        step = self._images_per_chunk(n, 4 * k * k * c * ho * wo)
        cols = self._buf(tag + "_cols", (step, ho, wo, k, k, c))
        for first in range(0, n, step):
            m = min(step, n - first)
            np.copyto(cols[:m], win[first : first + m].transpose(0, 1, 2, 4, 5, 3))
            yield first, m, cols[:m].reshape(m * ho * wo, k * k * c)

    def _correlate_nhwc(self, tag, xp, w_t, k, out, bias):
        """``out`` (N, O, Ho, Wo) = the correlation of the channels-last padded ``xp`` with the
        weights ``w_t`` as (K K C, O), plus ``bias`` (or None): per chunk, one GEMM into
        channels-last rows, then one transposing pass (with the bias) into NCHW."""
        n, o, ho, wo = out.shape
        step = self._images_per_chunk(n, 4 * w_t.shape[0] * ho * wo)  # as _chunks's
        y = self._buf(tag + "_y", (step * ho * wo, o))
        for first, m, rows in self._chunks(tag, xp, k, ho, wo):
            ym = y[: len(rows)]
            np.matmul(rows, w_t, out=ym)
            src = ym.reshape(m, ho * wo, o).transpose(0, 2, 1)
            dst = out[first : first + m].reshape(m, o, ho * wo)
            if bias is None:
                np.copyto(dst, src)
            else:
                np.add(src, bias[:, None], out=dst)

    def _correlate_per_image(self, tag, img, w2, k, pad, out):
        """``out`` (N, O, Ho, Wo) = ``w2`` (O, C k k) times each image's (C k k, Ho Wo) im2col: a
        stack of GEMMs, one per image, that NumPy's matmul hands to BLAS one after the other."""
        n, o, ho, wo = out.shape
        win = np.lib.stride_tricks.sliding_window_view(self._padded(tag, img, pad), (k, k), axis=(2, 3))
        c = win.shape[1]
        cols = self._buf(tag + "_cols", (n, c, k, k, ho, wo))
        np.copyto(cols, win.transpose(0, 1, 4, 5, 2, 3))
        np.matmul(w2, cols.reshape(n, c * k * k, ho * wo), out=out.reshape(n, o, ho * wo))

    def conv2d(self, x, w, b, out, pad, relu):
        o, c, k, _ = w.shape
        if self._channels_last(c):
            w_t = self._buf("conv_fwd_w", (k, k, c, o))
            np.copyto(w_t, w.transpose(2, 3, 1, 0))  # rows (i, j, c), as the im2col rows
            self._correlate_nhwc("conv_fwd", self._padded_nhwc("conv_fwd", x, pad), w_t.reshape(-1, o), k, out, b)
        else:
            self._correlate_per_image("conv_fwd", x, w.reshape(o, -1), k, pad, out)
            np.add(out, b[:, None, None], out=out)
        if relu:
            np.maximum(out, 0.0, out=out)

    def conv2d_input_grad(self, dy, w, dx, pad):
        # A convolution of dy (padded by K - 1 - pad) with the kernel flipped in both spatial
        # axes and its channel axes swapped (the derivation is in rawgpu/reference.py): dy's O
        # channels are its input channels, so channels last whenever the forward's were.
        o, c, k, _ = w.shape
        flipped = w[:, :, ::-1, ::-1]
        back = k - 1 - pad
        if self._channels_last(o):
            w_t = self._buf("conv_dx_w", (k, k, o, c))
            np.copyto(w_t, flipped.transpose(2, 3, 0, 1))
            self._correlate_nhwc("conv_dx", self._padded_nhwc("conv_dx", dy, back), w_t.reshape(-1, c), k, dx, None)
        else:
            w2 = self._buf("conv_dx_w", (c, o, k, k))
            np.copyto(w2, flipped.transpose(1, 0, 2, 3))
            self._correlate_per_image("conv_dx", dy, w2.reshape(c, -1), k, back, dx)

    def conv2d_weight_grad(self, x, dy, dw, db, pad):
        # dw[o, (c, i, j)] = sum over every output pixel (n, y, x) of dy[n, o, y, x] times the
        # input under that pixel's window: a GEMM of the im2col rows with dy as (N Ho Wo, O),
        # whose inner dimension is every pixel of the batch.
        n, o, ho, wo = dy.shape
        c, k = x.shape[1], dw.shape[2]
        dy_rows = self._buf("conv_dw_dy", (n, ho, wo, o))
        np.copyto(dy_rows, dy.transpose(0, 2, 3, 1))
        dy_rows = dy_rows.reshape(-1, o)
        np.add.reduce(dy_rows, axis=0, out=db)
        if self._channels_last(c):
            dw_t = self._buf("conv_dw_t", (k * k * c, o))  # rows (i, j, c)
            part = self._buf("conv_dw_part", dw_t.shape)
            for first, m, rows in self._chunks("conv_dw", self._padded_nhwc("conv_dw", x, pad), k, ho, wo):
                lo, hi = first * ho * wo, (first + m) * ho * wo
                np.matmul(rows.T, dy_rows[lo:hi], out=dw_t if first == 0 else part)
                if first:
                    np.add(dw_t, part, out=dw_t)
            np.copyto(dw, dw_t.reshape(k, k, c, o).transpose(3, 2, 0, 1))
        else:
            # Few channels: the whole batch's im2col as (C K K, N Ho Wo), every image's side by
            # side, its inner runs image rows; dw^T = cols dy_rows, (C K K) x O.
            win = np.lib.stride_tricks.sliding_window_view(self._padded("conv_dw", x, pad), (k, k), axis=(2, 3))
            cols = self._buf("conv_dw_cols", (c, k, k, n, ho, wo))
            np.copyto(cols, win.transpose(1, 4, 5, 0, 2, 3))
            dw_t = self._buf("conv_dw_t", (c * k * k, o))
            np.matmul(cols.reshape(c * k * k, -1), dy_rows, out=dw_t)
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
