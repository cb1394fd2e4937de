"""Rung 8, ``splitk``: for thin products, split K across blocks, then sum the partial tiles in a fixed order.

The idea. Every rung so far gives a block one tile of C and the whole of K. That is right when C
has many tiles, and wrong for the products a small network trains with: 128 x 128 from a K of
784 (the first layer's forward product) is 4 tiles of 64 x 64, so 4 blocks for an H100's 132 SMs:
97% of the GPU idles however fast each block is. Split-K cuts K into ``splits`` slices and gives
each (tile, slice) pair its own block (``gridDim.z = splits``): ``splits`` times as many blocks,
each doing ``1 / splits`` of the work. Their partial tiles must then be summed. Block (tile, z)
writes its partial tile with plain stores into slice ``z`` of a workspace ``ws`` of shape
(splits, M, N), float32; a second kernel, ``splitk_sum``, then computes
``C[i, j] = ws[0, i, j] + ws[1, i, j] + ...`` in that order, one thread per element (grid-stride,
consecutive threads on consecutive j, so every load and store coalesces). The launcher allocates
nothing: the caller passes the workspace (:func:`workspace_shape` says its shape).

What it changes. Not loads per FMA (the block is rung 6's, conflict-free layout and all), but
*occupancy of the GPU as a whole*: blocks in flight per SM. The cost: one extra launch, and
``splits x M x N`` floats written to the workspace and read back once more by the sum (cheap when
C is small, which is exactly when split-K pays). What the workspace buys over adding into C with
``cuda.atomic.add``: a fixed summation order. Float addition is not associative, and atomics add
in whatever order the blocks happen to finish, so their result can differ in the last bit from
run to run; here every run adds the same numbers in the same order, so the result is bitwise
reproducible (the same seed trains to the same numbers, and a CUDA-graph replay equals the eager
run). The autotuner (``tuning.py``) picks ``splits`` per shape; split-K loses when C alone has
enough tiles to fill the GPU.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m: pick GPU or simulator before numba.cuda loads
    from rawgpu.kernels.matmul._common import choose_engine

    choose_engine()

import functools  # noqa: E402

import numpy as np  # noqa: E402
from numba import cuda, float32  # noqa: E402

from rawgpu.kernels.matmul._common import divides, jit, make_config  # noqa: E402

DEFAULTS = {"bm": 64, "bn": 64, "bk": 8, "tm": 4, "tn": 4, "pad": 4, "splits": 4}
SIM_PARAMS = {"bm": 6, "bn": 4, "bk": 3, "tm": 3, "tn": 2, "pad": 1, "splits": 3}
SUM_THREADS = 256


def _geometry(p):
    divides("tm", p["tm"], "bm", p["bm"])
    divides("tn", p["tn"], "bn", p["bn"])
    if p["splits"] > 65535:
        raise ValueError(f"splits: at most 65535 (CUDA's gridDim.z), got {p['splits']}")
    shared = 4 * p["bk"] * (p["bm"] + p["bn"] + 2 * p["pad"])
    return (p["bn"] // p["tn"], p["bm"] // p["tm"]), (p["bm"], p["bn"]), shared


def config(**params):
    return make_config("splitk", DEFAULTS, params, _geometry)


#: The signatures the two kernels are launched with: splitk(a, b, ws) and splitk_sum(ws, c).
SIGNATURE = "void(float32[:, ::1], float32[:, ::1], float32[:, :, ::1])"
SUM_SIGNATURE = "void(float32[:, :, ::1], float32[:, ::1])"


def workspace_shape(cfg, m: int, n: int) -> tuple:
    """The workspace one M x N product needs at ``cfg``: (splits, M, N) float32, C-contiguous."""
    return (cfg.params["splits"], m, n)


@functools.lru_cache(maxsize=None)
def sum_kernel():
    """c[i, j] = ws[0, i, j] + ws[1, i, j] + ..., always in that order: one element per thread, grid stride."""

    @cuda.jit(cache=True)
    def splitk_sum(ws, c):
        splits, m, n = ws.shape
        for e in range(cuda.grid(1), m * n, cuda.gridsize(1)):
            i = e // n
            j = e % n
            total = ws[0, i, j]
            for z in range(1, splits):
                total += ws[z, i, j]
            c[i, j] = total

    return splitk_sum


@functools.lru_cache(maxsize=None)
def kernel(trans_a: bool, trans_b: bool, bm: int, bn: int, bk: int, tm: int, tn: int, pad: int, splits: int):
    threads_x = bn // tn
    threads_y = bm // tm
    threads = threads_x * threads_y
    loads_a = -(-(bm * bk) // threads)
    loads_b = -(-(bk * bn) // threads)
    even_a = (bm * bk) % threads == 0
    even_b = (bk * bn) % threads == 0
    a_cols = bm + pad
    b_cols = bn + pad

    # 3 blocks per SM (at most 85 registers): at 4 blocks (64) ptxas spills 4 bytes.
    @jit(threads, tm * tn, blocks=3)
    def splitk(a, b, ws):
        As = cuda.shared.array((bk, a_cols), float32)
        Bs = cuda.shared.array((bk, b_cols), float32)
        acc = cuda.local.array((tm, tn), float32)
        a_reg = cuda.local.array(tm, float32)
        b_reg = cuda.local.array(tn, float32)
        m = ws.shape[1]
        n = ws.shape[2]
        k_len = a.shape[0] if trans_a else a.shape[1]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * threads_x + tx
        col0 = cuda.blockIdx.x * bn
        # This block's slice of K: whole bk-tiles, as even as they divide.
        per_slice = (-(-k_len // bk) + splits - 1) // splits * bk
        k_begin = cuda.blockIdx.z * per_slice
        k_end = min(k_len, k_begin + per_slice)

        for row0 in range(cuda.blockIdx.y * bm, m, cuda.gridDim.y * bm):
            for r in range(tm):
                for s in range(tn):
                    acc[r, s] = 0.0
            for k0 in range(k_begin, k_end, bk):
                for load in range(loads_a):
                    e = tid + load * threads
                    if even_a or e < bm * bk:
                        if trans_a:
                            kk = e // bm
                            ii = e % bm
                        else:
                            ii = e // bk
                            kk = e % bk
                        v = float32(0.0)
                        if row0 + ii < m and k0 + kk < k_end:
                            v = a[k0 + kk, row0 + ii] if trans_a else a[row0 + ii, k0 + kk]
                        As[kk, ii] = v
                for load in range(loads_b):
                    e = tid + load * threads
                    if even_b or e < bk * bn:
                        if trans_b:
                            jj = e // bk
                            kk = e % bk
                        else:
                            kk = e // bn
                            jj = e % bn
                        v = float32(0.0)
                        if col0 + jj < n and k0 + kk < k_end:
                            v = b[col0 + jj, k0 + kk] if trans_b else b[k0 + kk, col0 + jj]
                        Bs[kk, jj] = v
                cuda.syncthreads()

                for kk in range(bk):
                    for r in range(tm):
                        a_reg[r] = As[kk, ty + r * threads_y]
                    for s in range(tn):
                        b_reg[s] = Bs[kk, tx + s * threads_x]
                    for r in range(tm):
                        for s in range(tn):
                            acc[r, s] += a_reg[r] * b_reg[s]
                cuda.syncthreads()

            # Plain stores into this slice's plane of the workspace; a slice past the end of K
            # stores zeros, so splitk_sum can read every plane.
            z = cuda.blockIdx.z
            for r in range(tm):
                i = row0 + ty + r * threads_y
                if i < m:
                    for s in range(tn):
                        j = col0 + tx + s * threads_x
                        if j < n:
                            ws[z, i, j] = acc[r, s]

    return splitk


def launch(dispatcher, cfg, a, b, out, grid, stream, workspace=None):
    """One block per (tile, slice of K) into ``workspace``, then the fixed-order sum into ``out``.

    Two launches on one stream, no allocation: ``workspace`` is float32 of
    :func:`workspace_shape` and is overwritten.
    """
    m, n = out.shape
    need = workspace_shape(cfg, m, n)
    got = getattr(workspace, "shape", None)
    if got is None or tuple(got) != need or getattr(workspace, "dtype", None) != np.float32:
        what = "none" if workspace is None else f"{getattr(workspace, 'dtype', type(workspace).__name__)} of shape {got}"
        raise ValueError(f"workspace: splitk needs a float32 array of shape {need} (splits, M, N), got {what}")
    dispatcher[(grid[0], grid[1], cfg.params["splits"]), cfg.block, stream](a, b, workspace)
    sum_blocks = min(-(-(m * n) // SUM_THREADS), 4096)
    sum_kernel()[sum_blocks, SUM_THREADS, stream](workspace, out)


def extra_targets(cfg):
    """The summing kernel, for the compile report."""
    from rawgpu.kernels._compile import CompileTarget

    return [CompileTarget("splitk_sum", f"threads={SUM_THREADS}", sum_kernel(), SUM_SIGNATURE, SUM_THREADS)]


if __name__ == "__main__":
    import sys

    from rawgpu.kernels.matmul._common import main

    sys.exit(main("splitk", SIM_PARAMS))
