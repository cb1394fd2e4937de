"""2-D convolution (stride 1, zero padding, NCHW) as implicit GEMMs: forward, input and weight
gradients, with nothing the size of im2col ever written to memory.

The GEMM view. A convolution of images ``x`` (N, C, H, W) with weights ``w`` (O, C, K, K) is a
matrix product in disguise: list every output pixel ``m = (n, y, x)`` as a row and every
``k = (c, i, j)`` (an input channel and a kernel offset) as a column, and the *im2col* matrix
``A[m, k] = xpad[n, c, y + i, x + j]`` times ``B[k, o] = w[o, c, i, j]`` is the output,
``out[n, o, y, x] = sum_k A[m, k] B[k, o]``: an (N Ho Wo) x (C K K) by (C K K) x O product. A
library that materialises ``A`` (im2col) writes K*K copies of the image to memory and reads them
back. Here ``A`` is never stored: the kernel is the ladder's block-tiled matmul
(kernels/matmul/blocktile2d.py, read its essay first) whose *tile load* works out, for each of
the ``bk x bm`` values it stages in shared memory, which image element ``A[m, k]`` is, and reads
it straight from ``x`` (0 where the window hangs over the padding). Everything after the load --
the inner product over the shared tiles (``outer_products`` of kernels/matmul/_tiles.py, with its
counted inner loop), the accumulators in registers -- is the matmul's.

The three kernels of a training step, and which GEMM each is:

====================  =======================  ===============================  ================
kernel                rows (M)                 columns (N)                      sum over (K)
====================  =======================  ===============================  ================
forward               output pixels (n, y, x)  output channels o                (c, i, j)
input gradient        input pixels (n, h, w)   input channels c                 (o, i, j)
weight gradient       taps (c, i, j)           output channels o                pixels (n, y, x)
====================  =======================  ===============================  ================

* **forward** (``conv_kernel(flip=False, bias=True, relu)``): ``out = conv(x, w) + b``, the bias
  (and, as a compile-time choice, a ReLU) applied to the accumulators before the one store.
* **input gradient** (``conv_kernel(flip=True, bias=False, relu=False)``): the same kernel.
  ``x[n, c, h, w]`` met ``w[o, c, i, j]`` in output pixel ``(h + pad - i, w + pad - j)``, so
  ``dx[n, c, h, w] = sum_{o,i,j} dy[n, o, h + pad - i, w + pad - j] w[o, c, i, j]``. Renaming
  ``i -> K - 1 - i`` turns that into a *convolution of dy, padded by K - 1 - pad, with the kernel
  flipped in both spatial axes and its channel axes swapped*: ``B[(o, i, j), c] = w[o, c, K-1-i,
  K-1-j]``. ``flip`` only changes how the B tile is read; nothing is copied or flipped in memory.
* **weight gradient** (``weight_grad_kernel``): ``dw[o, c, i, j] = sum_{n,y,x} dy[n, o, y, x]
  xpad[n, c, y + i, x + j]``, a *correlation of the input with the output gradient*: im2col of
  ``x`` transposed, (C K K) x (N Ho Wo), times ``dy`` read as an (N Ho Wo) x O matrix. The bias
  gradient ``db[o] = sum dy[:, o]`` is summed from the ``dy`` tiles already in shared memory by
  the blocks of the first row tile (each ``db[o]`` by one thread, in a fixed order: no atomics),
  as the linear layers' weight gradient does. Its depth is long and its output small (75 x 32
  summed over 65,536 pixels for the first conv at batch 64: one tile), so the pixels are cut
  into slices, one block each, that meet like the matmul's split-K.

Who computes what. A block computes a ``bm x bn`` tile of the GEMM's output with
``(bm / tm) x (bn / tn)`` threads; thread ``(tx, ty)`` owns the ``tm x tn`` outputs at rows
``row0 + tx + r * (bm / tm)`` and columns ``col0 + ty + s * (bn / tn)`` -- strided, not
contiguous, so that the 32 threads of a warp (consecutive ``tx``) store 32 consecutive rows. In
the two pixel-row kernels rows are pixels, which NCHW keeps contiguous, so the stores coalesce;
so do the tile loads, where consecutive threads walk consecutive pixels. Shared tiles are kept
k-major (``As[k, row]``), so those loads and the inner product's reads hit distinct banks.
Edges: rows, columns and K past the end load zeros and store nothing, so any N, C, O, H, W, K
works with any tile. In the pixel-row kernels row tiles sit on ``blockIdx.x`` (2**31 - 1 of them
allowed); the weight gradient's grid is (column tiles, row tiles, slices), as the matmul's.

Compile-time constants (tiles, the flags) come from the cached factories below and ``config``;
``SIM_PARAMS`` are tiny tiles that divide nothing, for the simulator. The kernel size and the
padding are runtime values (read from ``w.shape`` and an argument).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda, float32, int32, uint32

from ._launch import Launch
from .matmul._common import divides, jit, make_config
from .matmul import splitk
from .matmul._tiles import column_sum_slots, column_sums, outer_products, slice_gatherer

#: GPU tiles: 128 pixels x 32 channels, bk 8, 4 x 4 per thread = 32 x 8 = 256 threads, 5 KiB shared.
DEFAULTS = {"bm": 128, "bn": 32, "bk": 8, "tm": 4, "tn": 4}
#: The simulator's: 2 x 2 = 4 threads, tiles that divide none of the tests' sizes.
SIM_PARAMS = {"bm": 6, "bn": 4, "bk": 5, "tm": 3, "tn": 2}
# No launch_bounds: as for the matmul's tiled rungs, ptxas does better left alone. The index
# arithmetic of the tile copies is incremental (_advance: the divisions by run-time
# sizes happen once per thread, not at every step of K), which took the forward kernel's main loop
# on sm_90 from 1,172 instructions for its 128 FFMA to 482 (FFMA 10.9% -> 26.6%), and the weight
# gradient's from 1,062 to 515 (12.1% -> 24.9%). Bounded to 3 blocks per SM (85 registers) the
# forward kernel then spilled 32 bytes, the weight gradient (which also keeps each value's tap
# and meets its slices) 500; unbounded, ptxas takes 79 registers for the forward (3 blocks of 256
# threads per SM) and 122 for the weight gradient (2 blocks), with no spills.


def _geometry(p):
    divides("tm", p["tm"], "bm", p["bm"])
    divides("tn", p["tn"], "bn", p["bn"])
    return (p["bm"] // p["tm"], p["bn"] // p["tn"]), (p["bm"], p["bn"]), 4 * p["bk"] * (p["bm"] + p["bn"])


def config(**params):
    """The conv kernels' tiles: ``DEFAULTS`` overridden by ``params`` (bm, bn, bk, tm, tn), checked.
    The block is ``(bm / tm, bn / tn)`` threads: x along the GEMM's rows, y along its columns."""
    return make_config("conv", DEFAULTS, params, _geometry)


def sim_config():
    """Tiny tiles for Numba's CUDA simulator (one OS thread per CUDA thread)."""
    return config(**SIM_PARAMS)


@functools.lru_cache(maxsize=None)
def fitted(cfg, rows: int, cols: int):
    """``cfg`` with a tile side longer than the GEMM's ``rows`` or ``cols`` cut to the next power
    of two that holds them (and the thread's tile cut to match, where it was longer than that).

    For the simulator: there every row and column of a tile is a Python computation, those past
    the GEMM's edge included, and a narrow network's GEMMs are narrow (a first conv of width 1 is
    a 2048 x 1 product for two CIFAR-10 images, which an 8-column tile computes 8 times over). A
    GPU runs the tile's spare lanes in parallel for almost nothing, so the ``cuda`` engine keeps
    its tiles."""
    p = dict(cfg.params)
    for tile, thread, side in (("bm", "tm", rows), ("bn", "tn", cols)):
        cut = 1 << max(0, int(side) - 1).bit_length()  # the next power of two >= side
        if cut < p[tile] and p[tile] % cut == 0 and cut % min(p[thread], cut) == 0:
            p[tile], p[thread] = cut, min(p[thread], cut)
    return config(**p)


# The index arithmetic of the implicit GEMM is 32-bit and unsigned: a 64-bit division by a
# run-time value (the plane, the width, the kernel's area) is a long call on a GPU, a 32-bit one
# a few instructions, and an unsigned index needs no negative-index wraparound. (Sizes stay far
# below 2**32: the op layer checks that an image batch fits in memory.)


@cuda.jit(device=True, inline="always")
def _pixel(m, plane, width):
    """GEMM row ``m`` as the output pixel ``(n, y, x)`` (``plane = height * width``)."""
    m = uint32(m)
    n = m // uint32(plane)
    yx = m - n * uint32(plane)
    y = yx // uint32(width)
    return n, y, yx - y * uint32(width)


@cuda.jit(device=True, inline="always")
def _tap(k, kh, kw):
    """GEMM index ``k`` as ``(c, i, j)``: an input channel and a kernel offset."""
    k = uint32(k)
    area = uint32(kh * kw)
    c = k // area
    ij = k - c * area
    i = ij // uint32(kw)
    return c, i, ij - i * uint32(kw)


@cuda.jit(device=True, inline="always")
def _advance(hi, mid, lo, d_hi, d_mid, d_lo, mid_radix, lo_radix):
    """``(hi, mid, lo) + (d_hi, d_mid, d_lo)`` in the mixed radix (any, ``mid_radix``,
    ``lo_radix``), every digit of both below its radix, so one carry at most per digit.

    A tile copy's tap ``(c, i, j)`` (radix: kernel rows, kernel columns) or pixel ``(n, y, x)``
    (radix: image rows, image columns) moved ``bk`` along the GEMM's depth, given ``bk`` in the
    same radix (``_tap(bk, ...)`` or ``_pixel(bk, ...)``, worked out once): a few adds and
    compares instead of the two divisions by run-time sizes that :func:`_tap` and :func:`_pixel`
    cost at every step."""
    lo = uint32(lo + d_lo)
    if lo >= uint32(lo_radix):
        lo -= uint32(lo_radix)
        mid += uint32(1)
    mid = uint32(mid + d_mid)
    if mid >= uint32(mid_radix):
        mid -= uint32(mid_radix)
        hi += uint32(1)
    return uint32(hi + d_hi), mid, lo


@cuda.jit(device=True, inline="always")
def _window_at(img, n, y, x, c, i, j, pad):
    """``im2col[(n, y, x), (c, i, j)]``: image ``img`` (zero-padded by ``pad``) under kernel offset
    ``(i, j)`` of channel ``c`` for output pixel ``(n, y, x)``; 0 where the window hangs over the
    padding. The kernels work out the pixel and the tap where they change, and hand them here."""
    hh = int32(y + i) - int32(pad)  # signed: the window may hang over the top or left edge
    ww = int32(x + j) - int32(pad)
    if 0 <= hh < int32(img.shape[2]) and 0 <= ww < int32(img.shape[3]):
        return img[n, c, uint32(hh), uint32(ww)]
    return float32(0.0)


@functools.lru_cache(maxsize=None)
def conv_kernel(flip: bool, bias: bool, relu: bool, bm: int, bn: int, bk: int, tm: int, tn: int):
    """``kernel(img, w, b, out, pad)``: ``out = correlate(img padded by pad, B) (+ b) (ReLU)``.

    ``img`` (N, Cin, H, W), ``out`` (N, Cout, Ho, Wo) with ``Ho = H + 2 pad - K + 1``; ``B`` is
    ``w[col, cin, i, j]`` (``flip=False``: ``w`` is (Cout, Cin, K, K), the forward pass) or
    ``w[cin, col, K-1-i, K-1-j]`` (``flip=True``: ``w`` is (Cin, Cout, K, K), the input gradient,
    called with ``img = dy``). ``b`` (Cout,) is read only when ``bias``; ReLU when ``relu``.
    """
    threads_x, threads_y = bm // tm, bn // tn
    threads = threads_x * threads_y
    # Thread (tx, ty)'s rows tx + r * threads_x, columns ty + s * threads_y; As is k-major.
    steps = outer_products(bk, tm, tn, threads_x, threads_y, True)
    loads_a = -(-(bk * bm) // threads)  # values of each shared tile one thread copies
    loads_b = -(-(bk * bn) // threads)
    even_a = (bk * bm) % threads == 0
    even_b = (bk * bn) % threads == 0

    @jit(threads, tm * tn, None, bounded=False)
    def conv(img, w, b, out, pad):
        As = cuda.shared.array((bk, bm), float32)  # im2col rows, k-major
        Bs = cuda.shared.array((bk, bn), float32)
        acc = cuda.local.array((tm, tn), float32)
        a_reg = cuda.local.array(tm, float32)
        b_reg = cuda.local.array(tn, float32)
        n_img, c_in = img.shape[0], img.shape[1]
        c_out, h_out, w_out = out.shape[1], out.shape[2], out.shape[3]
        kh, kw = w.shape[2], w.shape[3]
        plane = h_out * w_out
        m_len = n_img * plane  # GEMM rows: output pixels
        k_len = c_in * kh * kw  # GEMM depth: (input channel, kernel row, kernel column)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * threads_x + tx
        row0 = cuda.blockIdx.x * bm
        col0 = cuda.blockIdx.y * bn

        for r in range(tm):
            for s in range(tn):
                acc[r, s] = 0.0
        # Each A value this thread copies sits in a fixed tile row (its pixel) at every step of K:
        # the pixel's (n, y, x) is worked out once, here. Its tap (c, i, j) moves bk along K at
        # every step, and so does each B value's: worked out once, then advanced by _advance.
        # (A tap's channel c reaching c_in is k reaching the end of K.)
        pix_n = cuda.local.array(loads_a, uint32)
        pix_y = cuda.local.array(loads_a, uint32)
        pix_x = cuda.local.array(loads_a, uint32)
        a_c = cuda.local.array(loads_a, uint32)
        a_i = cuda.local.array(loads_a, uint32)
        a_j = cuda.local.array(loads_a, uint32)
        b_c = cuda.local.array(loads_b, uint32)
        b_i = cuda.local.array(loads_b, uint32)
        b_j = cuda.local.array(loads_b, uint32)
        dc, di, dj = _tap(bk, kh, kw)
        for load in range(loads_a):
            idx = tid + load * threads
            m = row0 + idx % bm
            pix_n[load], pix_y[load], pix_x[load] = _pixel(m if m < m_len else 0, plane, w_out)
            a_c[load], a_i[load], a_j[load] = _tap(idx // bm, kh, kw)
        for load in range(loads_b):
            idx = tid + load * threads
            b_c[load], b_i[load], b_j[load] = _tap(idx - idx // bk * bk, kh, kw)
        for k0 in range(0, k_len, bk):
            # A tile: im2col, computed on the fly. Consecutive threads take consecutive pixels.
            for load in range(loads_a):
                idx = tid + load * threads
                if even_a or idx < bk * bm:
                    kk = idx // bm
                    mm = idx - kk * bm
                    c, i, j = a_c[load], a_i[load], a_j[load]
                    v = float32(0.0)
                    if row0 + mm < m_len and c < uint32(c_in):  # (past either end, the tap stays put)
                        v = _window_at(img, pix_n[load], pix_y[load], pix_x[load], c, i, j, pad)
                        a_c[load], a_i[load], a_j[load] = _advance(c, i, j, dc, di, dj, kh, kw)
                    As[kk, mm] = v
            # B tile: the weights, read in place (flipped and transposed by index when flip).
            for load in range(loads_b):
                idx = tid + load * threads
                if even_b or idx < bk * bn:
                    jj = idx // bk
                    kk = idx - jj * bk
                    col = col0 + jj
                    c, i, j = b_c[load], b_i[load], b_j[load]
                    v = float32(0.0)
                    if col < c_out and c < uint32(c_in):
                        if flip:
                            v = w[c, col, kh - 1 - i, kw - 1 - j]
                        else:
                            v = w[col, c, i, j]
                        b_c[load], b_i[load], b_j[load] = _advance(c, i, j, dc, di, dj, kh, kw)
                    Bs[kk, jj] = v
            cuda.syncthreads()
            steps(As, Bs, tx, ty, acc, a_reg, b_reg)
            cuda.syncthreads()

        # The epilogue, in registers, then the one store: out[n, col, y, x] for row m = (n, y, x).
        for s in range(tn):
            col = col0 + ty + s * threads_y
            b_reg[s] = b[col] if bias and col < c_out else float32(0.0)
        for r in range(tm):
            m = row0 + tx + r * threads_x
            if m < m_len:
                n, y, x = _pixel(m, plane, w_out)
                for s in range(tn):
                    col = col0 + ty + s * threads_y
                    if col < c_out:
                        v = acc[r, s] + b_reg[s]
                        if relu and v < float32(0.0):  # not max(): a NaN is passed on to the loss
                            v = float32(0.0)
                        out[n, col, y, x] = v

    return conv


@functools.lru_cache(maxsize=None)
def weight_grad_kernel(bm: int, bn: int, bk: int, tm: int, tn: int, splits: int = 1):
    """``kernel(img, dy, dw, db, pad, split)``: ``dw[o, c, i, j] = sum_{n,y,x} imgpad[n, c, y + i,
    x + j] dy[n, o, y, x]`` and ``db[o] = sum dy[:, o]``.

    The GEMM is ``C = A^T B``: rows are the taps ``t = (c, i, j)`` (``threadIdx.x``), columns the
    output channels ``o``, depth the output pixels ``(n, y, x)``; ``A`` is im2col of ``img``
    (pixels x taps), ``B`` is ``dy`` read as pixels x channels, and ``dw[o, c, i, j] = C[t, o]``.
    Taps on the rows because there are more of them (75 to 800 at the seed's shapes) than output
    channels (32 or 64): a 128-row tile of channels was three quarters empty. The bias gradient is
    then the column sums of ``B``, summed by the blocks of the first row tile from the ``dy`` tiles
    they already hold (kernels/matmul/_tiles.py's ``column_sums``, as for the linear layers).

    The depth is long and the output small: at batch 64 the first conv's gradient is a 75 x 32
    output summed over 65,536 pixels, one or two tiles. So the pixels are cut into ``splits``
    slices, one per ``blockIdx.z``, that meet as in the matmul's split-K (``slice_gatherer``):
    ``split`` is ``(ws, done)``, ``ws`` float32 (splits, taps + 1, O) and ``done`` int32 with a
    zero per output tile, or ``()`` when ``splits`` is 1. Grid: (column tiles, row tiles, splits).
    """
    threads_x, threads_y = bm // tm, bn // tn
    threads = threads_x * threads_y
    # Thread (tx, ty)'s rows tx + r * threads_x, columns ty + s * threads_y; As is k-major.
    steps = outer_products(bk, tm, tn, threads_x, threads_y, True)
    add_sums, write_sums = column_sums(bk, bn, threads)
    slots = column_sum_slots(bn, threads)
    gather = slice_gatherer(bm, bn, tm, tn, threads_x, threads_y, threads, splits)
    loads_a = -(-(bk * bm) // threads)
    loads_b = -(-(bk * bn) // threads)
    even_a = (bk * bm) % threads == 0
    even_b = (bk * bn) % threads == 0

    @jit(threads, tm * tn, None, bounded=False)
    def conv_weight_grad(img, dy, dw, db, pad, split):
        As = cuda.shared.array((bk, bm), float32)  # im2col of img (pixels, taps), k-major
        Bs = cuda.shared.array((bk, bn), float32)  # dy as (pixels, o)
        last = cuda.shared.array(1, int32)
        acc = cuda.local.array((tm, tn), float32)
        a_reg = cuda.local.array(tm, float32)
        b_reg = cuda.local.array(tn, float32)
        sums = cuda.local.array(slots, float32)
        c_out, h_out, w_out = dy.shape[1], dy.shape[2], dy.shape[3]
        kh, kw = dw.shape[2], dw.shape[3]
        plane = h_out * w_out
        m_len = img.shape[1] * kh * kw  # GEMM rows: taps (c, i, j)
        k_begin = 0
        k_end = dy.shape[0] * plane  # GEMM depth: output pixels
        if splits > 1:  # this block's slice of the pixels: whole bk-deep tiles, as even as they divide
            per_slice = (-(-k_end // bk) + splits - 1) // splits * bk
            k_begin = cuda.blockIdx.z * per_slice
            k_end = min(k_end, k_begin + per_slice)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * threads_x + tx
        col0 = cuda.blockIdx.x * bn
        row0 = cuda.blockIdx.y * bm
        first_rows = row0 == 0  # these blocks also sum the bias gradient

        for r in range(tm):
            for s in range(tn):
                acc[r, s] = float32(0.0)
        for q in range(slots):
            sums[q] = float32(0.0)
        # Each A value this thread copies sits in a fixed tile row (its tap) at every step of the
        # depth: the tap's (c, i, j) is worked out once, here.
        tap_c = cuda.local.array(loads_a, uint32)
        tap_i = cuda.local.array(loads_a, uint32)
        tap_j = cuda.local.array(loads_a, uint32)
        # And each value's pixel moves bk along the depth at every step: worked out once, then
        # advanced by _advance (no division by the image's run-time sizes in the loop).
        a_n = cuda.local.array(loads_a, uint32)
        a_y = cuda.local.array(loads_a, uint32)
        a_x = cuda.local.array(loads_a, uint32)
        b_n = cuda.local.array(loads_b, uint32)
        b_y = cuda.local.array(loads_b, uint32)
        b_x = cuda.local.array(loads_b, uint32)
        dn, dyy, dxx = _pixel(bk, plane, w_out)
        for load in range(loads_a):
            idx = tid + load * threads
            t = row0 + idx // bk
            tap_c[load], tap_i[load], tap_j[load] = _tap(t if t < m_len else 0, kh, kw)
            a_n[load], a_y[load], a_x[load] = _pixel(k_begin + idx % bk, plane, w_out)
        for load in range(loads_b):
            idx = tid + load * threads
            b_n[load], b_y[load], b_x[load] = _pixel(k_begin + idx % bk, plane, w_out)
        for k0 in range(k_begin, k_end, bk):
            # Both tiles walk the pixels k with consecutive threads: contiguous in NCHW.
            for load in range(loads_a):
                idx = tid + load * threads
                if even_a or idx < bk * bm:
                    mm = idx // bk
                    kk = idx - mm * bk
                    n, y, x = a_n[load], a_y[load], a_x[load]
                    v = float32(0.0)
                    if row0 + mm < m_len and k0 + kk < k_end:  # (past either end, the pixel stays put)
                        v = _window_at(img, n, y, x, tap_c[load], tap_i[load], tap_j[load], pad)
                        a_n[load], a_y[load], a_x[load] = _advance(n, y, x, dn, dyy, dxx, h_out, w_out)
                    As[kk, mm] = v
            for load in range(loads_b):
                idx = tid + load * threads
                if even_b or idx < bk * bn:
                    jj = idx // bk
                    kk = idx - jj * bk
                    o = col0 + jj
                    n, y, x = b_n[load], b_y[load], b_x[load]
                    v = float32(0.0)
                    if o < c_out and k0 + kk < k_end:
                        v = dy[n, o, y, x]
                        b_n[load], b_y[load], b_x[load] = _advance(n, y, x, dn, dyy, dxx, h_out, w_out)
                    Bs[kk, jj] = v
            cuda.syncthreads()
            if first_rows:  # the bias gradient, from the dy tile already here
                add_sums(Bs, sums, tid)
            steps(As, Bs, tx, ty, acc, a_reg, b_reg)
            cuda.syncthreads()

        finished = True
        if splits > 1:
            finished = gather(split, acc, sums, last, tid, tx, ty, row0, col0, first_rows)
        if finished:
            for r in range(tm):
                t = row0 + tx + r * threads_x
                if t < m_len:
                    c, i, j = _tap(t, kh, kw)
                    for s in range(tn):
                        o = col0 + ty + s * threads_y
                        if o < c_out:
                            dw[o, c, i, j] = acc[r, s]
            if first_rows:
                write_sums(db, sums, tid, col0)

    return conv_weight_grad


# --- launches ---------------------------------------------------------------------------------


def _check_cfg(cfg):
    if cfg.variant != "conv":
        raise ValueError(f"cfg: a {cfg.variant!r} config cannot launch a conv kernel; build it with conv.config()")


def conv_launch(flip, bias, relu, cfg, rows, cols, stream=0):
    """The launch of :func:`conv_kernel` for a GEMM of ``rows`` pixels x ``cols`` channels;
    None when that is empty (CUDA refuses an empty grid)."""
    _check_cfg(cfg)
    if rows == 0 or cols == 0:
        return None
    bm, bn = cfg.tile_shape
    return Launch(conv_kernel(flip, bias, relu, **cfg.params), (-(-rows // bm), -(-cols // bn)), cfg.block, stream)


def weight_grad_launch(cfg, c_out, taps, splits=1, stream=0):
    """The launch of :func:`weight_grad_kernel` for ``taps`` = C K K by ``c_out`` gradients, the
    pixels cut into ``splits`` slices; None when the output is empty."""
    _check_cfg(cfg)
    if c_out == 0 or taps == 0:
        return None
    bm, bn = cfg.tile_shape
    return Launch(weight_grad_kernel(**cfg.params, splits=splits), (-(-c_out // bn), -(-taps // bm), splits), cfg.block, stream)


#: The weight gradient's slices: at least this many pixels each (a few dozen bk-deep steps at the
#: GPU's bk of 8), so that a slice's partial tile, written to the workspace and read back once,
#: stays small beside the sum it saves; and at most this many slices.
MIN_PIXELS_PER_SLICE = 256
MAX_SPLITS = 128


@functools.lru_cache(maxsize=None)
def weight_grad_splits(cfg, c_out: int, taps: int, pixels: int, target_blocks: int) -> int:
    """How many slices of the pixels the weight gradient takes so that its grid has about
    ``target_blocks`` blocks (a GPU's: two per SM), each slice keeping at least
    ``MIN_PIXELS_PER_SLICE`` pixels. At the seed's shapes, batch 64, and 264 blocks (an H100's 132
    SMs, twice): conv1 (75 x 32 outputs, 65,536 pixels, one tile) 128 slices, conv2 (800 x 32,
    16,384 pixels, 7 tiles) 38, conv3 (800 x 64, 4,096 pixels, 14 tiles) 16."""
    bm, bn = cfg.tile_shape
    tiles = -(-taps // bm) * -(-c_out // bn)
    want = -(-int(target_blocks) // tiles)
    most = max(1, int(pixels) // MIN_PIXELS_PER_SLICE)
    return max(1, min(want, most, MAX_SPLITS))


def weight_grad_workspace_shapes(cfg, c_out: int, taps: int, splits: int) -> tuple:
    """The shapes of ``(ws, done)`` for a weight gradient cut into ``splits`` slices, ``()`` for
    one slice. They are split-K's for the ``taps x c_out`` product (kernels/matmul/splitk.py):
    ``ws`` float32 (splits, taps + 1, c_out), the slices' partial tiles and (row ``taps``) their
    bias sums; ``done`` int32, one counter per output tile."""
    if splits == 1:
        return ()
    return (splits, taps + 1, c_out), splitk.counter_shape(cfg, taps, c_out)


def weight_grad_workspace(cfg, c_out: int, taps: int, splits: int, xp=np):
    """``(ws, done)`` of :func:`weight_grad_workspace_shapes`, made with the array module ``xp``;
    ``done`` starts at zero, and every launch leaves it zero."""
    shapes = weight_grad_workspace_shapes(cfg, c_out, taps, splits)
    return (xp.empty(shapes[0], np.float32), xp.zeros(shapes[1], np.int32)) if shapes else ()


def _out_size(h, k, pad):
    return h + 2 * pad - k + 1


def _check_conv(x, w, pad, what):
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"w: must have {x.shape[1]} input channels like {what}, got shape {tuple(w.shape)}")
    if w.shape[2] != w.shape[3]:
        raise ValueError(f"w: the kernel must be square, got {w.shape[2]}x{w.shape[3]}")
    if not 0 <= pad <= w.shape[2] - 1:
        raise ValueError(f"pad: must be in 0..{w.shape[2] - 1} for a {w.shape[2]}x{w.shape[2]} kernel, got {pad}")
    ho, wo = _out_size(x.shape[2], w.shape[2], pad), _out_size(x.shape[3], w.shape[2], pad)
    if ho < 1 or wo < 1:
        raise ValueError(f"{what}: its {x.shape[2]}x{x.shape[3]} image is smaller than the kernel with pad {pad}")
    return x.shape[0], w.shape[0], ho, wo


def _check_shape(name, arr, shape):
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name}: must have shape {tuple(shape)}, got {tuple(arr.shape)}")


def conv2d(x, w, b, out, *, pad, relu=False, cfg, stream=0) -> None:
    """``out = conv(x, w) + b`` (then ReLU when ``relu``): x (N, C, H, W), w (O, C, K, K), b (O,),
    out (N, O, Ho, Wo), ``Ho = H + 2 pad - K + 1``, ``0 <= pad < K``."""
    n, o, ho, wo = _check_conv(x, w, pad, "x")
    _check_shape("b", b, (o,))
    _check_shape("out", out, (n, o, ho, wo))
    launch = conv_launch(False, True, bool(relu), cfg, n * ho * wo, o, stream)
    if launch is not None:
        launch(x, w, b, out, pad)


def conv2d_input_grad(dy, w, dx, *, pad, cfg, stream=0) -> None:
    """``dx = dL/dx`` from ``dy = dL/dout`` of :func:`conv2d`: dy (N, O, Ho, Wo), w (O, C, K, K),
    dx (N, C, H, W). The forward pass's ``pad``; the kernel pads ``dy`` by ``K - 1 - pad``."""
    k = w.shape[2]
    if dy.shape[1] != w.shape[0]:
        raise ValueError(f"w: must have {dy.shape[1]} output channels like dy, got shape {tuple(w.shape)}")
    if not 0 <= pad <= k - 1:
        raise ValueError(f"pad: must be in 0..{k - 1} for a {k}x{k} kernel, got {pad}")
    n, c, h, wd = dx.shape
    _check_shape("dy", dy, (n, w.shape[0], _out_size(h, k, pad), _out_size(wd, k, pad)))
    _check_shape("w", w, (dy.shape[1], c, k, k))
    launch = conv_launch(True, False, False, cfg, n * h * wd, c, stream)
    if launch is not None:
        # b is not read (bias=False); dx stands in so the argument types match the forward's.
        launch(dy, w, dx.reshape(dx.size), dx, k - 1 - pad)


def conv2d_weight_grad(x, dy, dw, db, *, pad, cfg, stream=0, splits=1, workspace=()) -> None:
    """``dw = dL/dw`` (O, C, K, K) and ``db = dL/db`` (O,) of :func:`conv2d` from its input x and
    ``dy = dL/dout``, in one launch; the pixels cut into ``splits`` slices, which meet in
    ``workspace``, from :func:`weight_grad_workspace`."""
    n, o, ho, wo = _check_conv(x, dw, pad, "x")
    _check_shape("dy", dy, (n, o, ho, wo))
    _check_shape("db", db, (o,))
    taps = x.shape[1] * dw.shape[2] * dw.shape[3]
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= 65535:
        raise ValueError(f"splits: must be an integer in 1..65535 (CUDA's gridDim.z), got {splits!r}")
    want = tuple(zip(weight_grad_workspace_shapes(cfg, o, taps, splits), (np.float32, np.int32)))
    got = tuple(workspace) if isinstance(workspace, (tuple, list)) else None
    if got is None or len(got) != len(want) or any(
            tuple(getattr(g, "shape", ())) != shape or getattr(g, "dtype", None) != dtype for g, (shape, dtype) in zip(got, want)):
        shapes = ", ".join(f"{np.dtype(dtype).name} {shape}" for shape, dtype in want) or "nothing"
        raise ValueError(f"workspace: {splits} slice(s) need ({shapes}); make it with conv.weight_grad_workspace(cfg, O, C*K*K, splits)")
    launch = weight_grad_launch(cfg, o, taps, splits, stream)
    if launch is not None:
        launch(x, dy, dw, db, pad, tuple(workspace))


# --- what rawgpu kernels compiles ------------------------------------------------------------

_T4 = "float32[:, :, :, ::1]"


def compile_targets() -> list:
    """The conv kernels at the GPU default tiles, as the ``cuda`` engine launches them: the
    forward pass with and without the ReLU epilogue, the input gradient, the weight gradient."""
    from ._compile import CompileTarget

    cfg = config()
    sig = f"void({_T4}, {_T4}, float32[::1], {_T4}, int64)"
    return [
        CompileTarget("conv2d", f"{cfg.text()} + bias", conv_kernel(False, True, False, **cfg.params), sig, cfg.threads),
        CompileTarget("conv2d", f"{cfg.text()} + bias + relu", conv_kernel(False, True, True, **cfg.params), sig, cfg.threads),
        CompileTarget("conv2d_input_grad", f"{cfg.text()} flipped", conv_kernel(True, False, False, **cfg.params), sig, cfg.threads),
        CompileTarget("conv2d_weight_grad", f"{cfg.text()} + bias grad, pixels in slices", weight_grad_kernel(**cfg.params, splits=32),
                      f"void({_T4}, {_T4}, {_T4}, float32[::1], int64, Tuple((float32[:, :, ::1], int32[::1])))", cfg.threads),
    ]
