"""Rung 7, ``warptile``: the block tile split into warp tiles, each computed by one warp.

The idea. In rungs 5 and 6 the threads of a block are laid over the whole ``bm x bn`` tile, so
the 32 threads of a warp cover a long thin strip of it (two rows of threads, 16 apart in the
columns, at 4 x 4) and together touch many rows of As and many columns of Bs. Here the hierarchy
the hardware has (block -> warp -> thread) becomes the hierarchy of the tile: the block's tile is
cut into ``(bm / wm) x (bn / wn)`` *warp tiles*, warp w computes warp tile w, and inside it lane
``(lx, ly)`` owns rows ``wrow0 + ly + r * (wm / tm)`` and columns ``wcol0 + lx + s * (wn / tn)``
(strided, as in rung 6, so a warp's shared loads are conflict-free and its stores coalesce).
Threads are numbered along one axis (``block = (threads, 1)``): warp = tid // 32, lane = tid % 32.

What it changes. Shared loads and global loads per FMA are fixed by ``tm x tn`` and ``bm x bn``
as before: ``(tm + tn) / (tm * tn)`` = 3/8 at the default 4 x 8, and ``(1/bm + 1/bn) / 2`` = 3/256
at 128 x 64. What changes is the *working set of a warp*: at each step kk it reads only ``wm``
values of As and ``wn`` of Bs (32 + 32 at the defaults) instead of a strip across the whole tile,
and those reads are broadcasts within groups of lanes. Fewer distinct shared addresses per warp
instruction, and a warp's part of the tile is a square-ish block whose operands could also be
staged warp-locally (the next step in CUDA C, with shuffles or tensor cores). The tile size grows
to 128 x 64 with 32 accumulators per thread; ``launch_bounds`` keeps it at 128 registers or
fewer (2 blocks of 256 threads per SM, 25% occupancy) without spills. The anchor ladder measures
warp tiling at 71% of cuBLAS on an H100 (CUDA C, with float4 loads Numba cannot emit).

``wm / tm * wn / tn`` threads share a warp tile: 32 on a GPU (one warp). The simulator's tests
use fewer, which changes nothing about correctness.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m: pick GPU or simulator before numba.cuda loads
    from rawgpu.kernels.matmul._common import choose_engine

    choose_engine()

import functools  # noqa: E402

from numba import cuda, float32  # noqa: E402

from rawgpu.kernels.matmul._common import divides, jit, make_config  # noqa: E402
from rawgpu.kernels.matmul._common import launch_2d as launch  # noqa: E402,F401

DEFAULTS = {"bm": 128, "bn": 64, "bk": 8, "wm": 32, "wn": 32, "tm": 4, "tn": 8, "pad": 4}  # 8 warps
SIM_PARAMS = {"bm": 6, "bn": 4, "bk": 3, "wm": 3, "wn": 2, "tm": 3, "tn": 1, "pad": 1}


def _geometry(p):
    divides("wm", p["wm"], "bm", p["bm"])
    divides("wn", p["wn"], "bn", p["bn"])
    divides("tm", p["tm"], "wm", p["wm"])
    divides("tn", p["tn"], "wn", p["wn"])
    lanes = (p["wm"] // p["tm"]) * (p["wn"] // p["tn"])
    threads = lanes * (p["bm"] // p["wm"]) * (p["bn"] // p["wn"])
    shared = 4 * p["bk"] * (p["bm"] + p["bn"] + 2 * p["pad"])
    return (threads, 1), (p["bm"], p["bn"]), shared


def config(**params):
    return make_config("warptile", DEFAULTS, params, _geometry)


@functools.lru_cache(maxsize=None)
def kernel(trans_a: bool, trans_b: bool, bm: int, bn: int, bk: int, wm: int, wn: int, tm: int, tn: int, pad: int):
    lanes_x = wn // tn  # lanes across a warp tile's columns
    lanes_y = wm // tm
    lanes = lanes_x * lanes_y  # 32 on a GPU: one warp per warp tile
    warps_x = bn // wn
    threads = lanes * warps_x * (bm // wm)
    loads_a = -(-(bm * bk) // threads)
    loads_b = -(-(bk * bn) // threads)
    even_a = (bm * bk) % threads == 0
    even_b = (bk * bn) % threads == 0
    a_cols = bm + pad
    b_cols = bn + pad

    @jit(threads, tm * tn)
    def warptile(a, b, c):
        As = cuda.shared.array((bk, a_cols), float32)  # As[k, i]
        Bs = cuda.shared.array((bk, b_cols), float32)  # Bs[k, j]
        acc = cuda.local.array((tm, tn), float32)
        a_reg = cuda.local.array(tm, float32)
        b_reg = cuda.local.array(tn, float32)
        m, n = c.shape
        k_len = a.shape[0] if trans_a else a.shape[1]
        tid = cuda.threadIdx.x
        warp = tid // lanes
        lane = tid % lanes
        i0 = (warp // warps_x) * wm + lane // lanes_x  # the thread's first row in the block tile
        j0 = (warp % warps_x) * wn + lane % lanes_x  # and its first column
        col0 = cuda.blockIdx.x * bn

        for row0 in range(cuda.blockIdx.y * bm, m, cuda.gridDim.y * bm):
            for r in range(tm):
                for s in range(tn):
                    acc[r, s] = 0.0
            for k0 in range(0, k_len, bk):
                for load in range(loads_a):  # the copies are the block's, as in rung 6
                    e = tid + load * threads
                    if even_a or e < bm * bk:
                        if trans_a:
                            kk = e // bm
                            ii = e % bm
                        else:
                            ii = e // bk
                            kk = e % bk
                        v = float32(0.0)
                        if row0 + ii < m and k0 + kk < k_len:
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
                        if col0 + jj < n and k0 + kk < k_len:
                            v = b[col0 + jj, k0 + kk] if trans_b else b[k0 + kk, col0 + jj]
                        Bs[kk, jj] = v
                cuda.syncthreads()

                for kk in range(bk):  # the warp reads only its wm rows of As and wn columns of Bs
                    for r in range(tm):
                        a_reg[r] = As[kk, i0 + r * lanes_y]
                    for s in range(tn):
                        b_reg[s] = Bs[kk, j0 + s * lanes_x]
                    for r in range(tm):
                        for s in range(tn):
                            acc[r, s] += a_reg[r] * b_reg[s]
                cuda.syncthreads()

            for r in range(tm):
                i = row0 + i0 + r * lanes_y
                if i < m:
                    for s in range(tn):
                        j = col0 + j0 + s * lanes_x
                        if j < n:
                            c[i, j] = acc[r, s]

    return warptile


if __name__ == "__main__":
    import sys

    from rawgpu.kernels.matmul._common import main

    sys.exit(main("warptile", SIM_PARAMS))
