"""Rung 5, ``blocktile2d``: 2-D register blocking, each thread a ``tm x tn`` block of C.

The idea. Rung 4 reused one value of B for ``tm`` multiply-adds; now reuse A's values too. A block
of ``(bn / tn) x (bm / tm)`` threads computes a ``bm x bn`` tile of C, and thread ``(x, y)`` owns
the ``tm x tn`` block of it at rows ``row0 + y*tm + r`` and columns ``col0 + x*tn + s``
(``r < tm``, ``s < tn``), held in ``tm * tn`` float32 accumulators in registers. At each step kk
of the shared tiles it loads ``tm`` values of A's column kk and ``tn`` values of B's row kk into
registers and multiplies every pair: an *outer product*, ``tm * tn`` multiply-adds for
``tm + tn`` shared loads.

What it changes. Shared loads per FMA fall to ``(tm + tn) / (tm * tn)``: 1/2 at the default
4 x 4 (1/4 at 8 x 8), against 9/8 for rung 4 and 2 for rung 3. Global loads per FMA are
``(1/bm + 1/bn) / 2``: 1/64 at the default 64 x 64. Now the thread's time goes to arithmetic.
The price is registers: ``tm * tn`` accumulators plus ``tm + tn`` operands plus addresses per
thread, and registers cap how many threads an SM holds (*occupancy*: 65536 registers per SM, at
most 2048 threads). ptxas may spend up to 255 registers per thread on scheduling freedom: an
earlier 4 x 4 version of this kernel took 156 (12.5% occupancy), until ``launch_bounds`` (CUDA
C's ``__launch_bounds__``) capped it at 64. The kernel of today (kernels/matmul/_tiles.py, with
32-bit indexes and a counted inner loop) takes 64-65 on its own on sm_90 and up to 76 on sm_80,
just over the 64 that 4 blocks of 256 threads allow, so it keeps the bound: 64 registers, 50%
occupancy, no spills.
Its loops have compile-time trip counts, so the accumulator arrays live in registers, never in
local memory. The compile report (``rawgpu kernels``) prints the counts. At 8 x 8 per thread
(128 x 128 tiles) an earlier version needed more than 128 registers and spilled, so the default
is 4 x 4. The anchor ladder (CUDA C, 8 x 8)
measures the step at 1.5x rung 4 (51% of cuBLAS on an H100).

What is left on the table, on purpose (the next rung's idea): shared memory is laid out like the
matrices, ``As[i, k]`` and ``Bs[k, j]``, and each thread's elements are adjacent. Reading
``As[y*tm + r, kk]`` walks down a column of As, and a warp's ``Bs[kk, x*tn + s]`` addresses are
``tn`` floats apart, so several of them fall in the same one of shared memory's 32 banks and are
served one after another (*bank conflicts*: 4-way at tn = 8 with 16 threads across a warp).
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

DEFAULTS = {"bm": 64, "bn": 64, "bk": 8, "tm": 4, "tn": 4}  # 16 x 16 = 256 threads, 4 KiB shared
SIM_PARAMS = {"bm": 6, "bn": 4, "bk": 3, "tm": 3, "tn": 2}


def _geometry(p):
    divides("tm", p["tm"], "bm", p["bm"])
    divides("tn", p["tn"], "bn", p["bn"])
    return (p["bn"] // p["tn"], p["bm"] // p["tm"]), (p["bm"], p["bn"]), 4 * p["bk"] * (p["bm"] + p["bn"])


def config(**params):
    return make_config("blocktile2d", DEFAULTS, params, _geometry)


@functools.lru_cache(maxsize=None)
def kernel(trans_a: bool, trans_b: bool, bm: int, bn: int, bk: int, tm: int, tn: int, epilogue: str = NONE):
    """``kernel(a, b, c, e)``: ``c = epilogue(op(a) @ op(b))`` (see kernels/matmul/_tiles.py)."""
    threads_x = bn // tn

    @cuda.jit(device=True, inline="always")
    def thread_map(tx, ty):  # thread (x, y) owns the tm x tn block at rows y*tm + r, columns x*tn + s
        return ty * threads_x + tx, ty * tm, tx * tn

    return tiled_kernel(thread_map, bm=bm, bn=bn, bk=bk, tm=tm, tn=tn, i_step=1, j_step=1,
                        threads=threads_x * (bm // tm), a_k_major=False, pad=0,
                        trans_a=trans_a, trans_b=trans_b, epilogue=epilogue, blocks_per_sm=4)


if __name__ == "__main__":
    import sys

    from rawgpu.kernels.matmul._common import main

    sys.exit(main("blocktile2d", SIM_PARAMS))
