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
to 128 x 64 with 32 accumulators per thread, in 72-80 registers (3 blocks of 256 threads per SM,
37.5% occupancy) without spills, and its main loop is 70% multiply-adds on sm_90
(kernels/matmul/_tiles.py says what that took). The anchor ladder measures
warp tiling at 71% of cuBLAS on an H100 (CUDA C, with float4 loads Numba cannot emit).

``wm / tm * wn / tn`` threads share a warp tile: 32 on a GPU (one warp). The simulator's tests
use fewer, which changes nothing about correctness.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m: pick GPU or simulator before numba.cuda loads
    from rawgpu.kernels.matmul._common import choose_engine

    choose_engine()

import functools  # noqa: E402

from numba import cuda  # noqa: E402

from rawgpu.kernels.matmul._common import divides, make_config  # noqa: E402
from rawgpu.kernels.matmul._common import launch_tiled as launch  # noqa: E402,F401
from rawgpu.kernels.matmul._tiles import NONE, tiled_kernel  # noqa: E402

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
def kernel(trans_a: bool, trans_b: bool, bm: int, bn: int, bk: int, wm: int, wn: int, tm: int, tn: int, pad: int,
           epilogue: str = NONE):
    """``kernel(a, b, c, e, split)``: ``c = epilogue(op(a) @ op(b))`` (see kernels/matmul/_tiles.py)."""
    lanes_x = wn // tn  # lanes across a warp tile's columns
    lanes_y = wm // tm
    lanes = lanes_x * lanes_y  # 32 on a GPU: one warp per warp tile
    warps_x = bn // wn

    @cuda.jit(device=True, inline="always")
    def thread_map(tx, ty):  # threads along x only: warp = tid // lanes, lane = tid % lanes
        warp = tx // lanes
        lane = tx % lanes
        i0 = (warp // warps_x) * wm + lane // lanes_x  # the warp tile's corner, plus the lane's place in it
        j0 = (warp % warps_x) * wn + lane % lanes_x
        return tx, i0, j0

    return tiled_kernel(thread_map, bm=bm, bn=bn, bk=bk, tm=tm, tn=tn, i_step=lanes_y, j_step=lanes_x,
                        threads=lanes * warps_x * (bm // wm), a_k_major=True, pad=pad,
                        trans_a=trans_a, trans_b=trans_b, epilogue=epilogue)


if __name__ == "__main__":
    import sys

    from rawgpu.kernels.matmul._common import main

    sys.exit(main("warptile", SIM_PARAMS))
