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
most 2048 threads). Left alone, ptxas spends up to 255 registers per thread on scheduling
freedom (156 for an earlier 4 x 4 version of this kernel: 12.5% occupancy); the kernel therefore
declares ``launch_bounds`` (CUDA C's ``__launch_bounds__``), which caps it at 64 registers for
4 x 4 (50% occupancy) and 128 for 8 x 8. Its loops have compile-time trip counts, so the
accumulator arrays live in registers, never in local memory. The compile report
(``rawgpu kernels``) prints the counts. At 8 x 8 per thread (128 x 128 tiles) this code needs
more than 128 registers and spills, so the default is 4 x 4. The anchor ladder (CUDA C, 8 x 8)
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

from numba import cuda, float32  # noqa: E402

from rawgpu.kernels.matmul._common import divides, jit, make_config  # noqa: E402
from rawgpu.kernels.matmul._common import launch_2d as launch  # noqa: E402,F401

DEFAULTS = {"bm": 64, "bn": 64, "bk": 8, "tm": 4, "tn": 4}  # 16 x 16 = 256 threads, 4 KiB shared
SIM_PARAMS = {"bm": 6, "bn": 4, "bk": 3, "tm": 3, "tn": 2}


def _geometry(p):
    divides("tm", p["tm"], "bm", p["bm"])
    divides("tn", p["tn"], "bn", p["bn"])
    return (p["bn"] // p["tn"], p["bm"] // p["tm"]), (p["bm"], p["bn"]), 4 * p["bk"] * (p["bm"] + p["bn"])


def config(**params):
    return make_config("blocktile2d", DEFAULTS, params, _geometry)


@functools.lru_cache(maxsize=None)
def kernel(trans_a: bool, trans_b: bool, bm: int, bn: int, bk: int, tm: int, tn: int):
    threads_x = bn // tn
    threads = threads_x * (bm // tm)
    loads_a = -(-(bm * bk) // threads)  # values of each shared tile one thread copies
    loads_b = -(-(bk * bn) // threads)
    even_a = (bm * bk) % threads == 0  # no thread falls off the end of the tile: no test needed
    even_b = (bk * bn) % threads == 0

    @jit(threads, tm * tn)
    def blocktile2d(a, b, c):
        As = cuda.shared.array((bm, bk), float32)  # As[i, k]
        Bs = cuda.shared.array((bk, bn), float32)  # Bs[k, j]
        acc = cuda.local.array((tm, tn), float32)
        a_reg = cuda.local.array(tm, float32)
        b_reg = cuda.local.array(tn, float32)
        m, n = c.shape
        k_len = a.shape[0] if trans_a else a.shape[1]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * threads_x + tx
        col0 = cuda.blockIdx.x * bn

        for row0 in range(cuda.blockIdx.y * bm, m, cuda.gridDim.y * bm):
            for r in range(tm):
                for s in range(tn):
                    acc[r, s] = 0.0
            for k0 in range(0, k_len, bk):
                for load in range(loads_a):  # cooperative copy of A's bm x bk tile
                    e = tid + load * threads
                    if even_a or e < bm * bk:
                        if trans_a:  # a is (K, M): consecutive threads walk M
                            kk = e // bm
                            ii = e % bm
                        else:  # a is (M, K): consecutive threads walk K
                            ii = e // bk
                            kk = e % bk
                        v = float32(0.0)
                        if row0 + ii < m and k0 + kk < k_len:
                            v = a[k0 + kk, row0 + ii] if trans_a else a[row0 + ii, k0 + kk]
                        As[ii, kk] = v
                for load in range(loads_b):  # and of B's bk x bn tile
                    e = tid + load * threads
                    if even_b or e < bk * bn:
                        if trans_b:  # b is (N, K): consecutive threads walk K
                            jj = e // bk
                            kk = e % bk
                        else:  # b is (K, N): consecutive threads walk N
                            kk = e // bn
                            jj = e % bn
                        v = float32(0.0)
                        if col0 + jj < n and k0 + kk < k_len:
                            v = b[col0 + jj, k0 + kk] if trans_b else b[k0 + kk, col0 + jj]
                        Bs[kk, jj] = v
                cuda.syncthreads()

                for kk in range(bk):
                    for r in range(tm):
                        a_reg[r] = As[ty * tm + r, kk]
                    for s in range(tn):
                        b_reg[s] = Bs[kk, tx * tn + s]
                    for r in range(tm):  # the outer product: tm * tn FMAs for tm + tn loads
                        for s in range(tn):
                            acc[r, s] += a_reg[r] * b_reg[s]
                cuda.syncthreads()

            for r in range(tm):
                i = row0 + ty * tm + r
                if i < m:
                    for s in range(tn):
                        j = col0 + tx * tn + s
                        if j < n:
                            c[i, j] = acc[r, s]

    return blocktile2d


if __name__ == "__main__":
    import sys

    from rawgpu.kernels.matmul._common import main

    sys.exit(main("blocktile2d", SIM_PARAMS))
