"""Rung 4, ``blocktile1d``: each thread computes a short column of C, ``tm`` elements.

The idea. The shared-memory rung does one multiply-add per two shared loads; to go faster a thread
must reuse what it loads. Here a block computes a ``bm x bn`` tile of C with ``bn x (bm / tm)``
threads: thread ``(x, y)`` owns column ``j = col0 + x`` and the ``tm`` adjacent rows
``i = row0 + y*tm + r`` (r < tm), kept in ``tm`` float32 accumulators in registers. At each step
kk of the shared tiles it loads ``Bs[kk, x]`` once into a register and uses it for ``tm``
multiply-adds, against ``As[y*tm + r, kk]``, which is the same address for the whole warp (a
broadcast).

What it changes. Shared loads per FMA fall from 2 to ``(1 + tm) / tm``: at ``tm = 8``, 9 loads for
8 FMAs instead of 16. Global loads per FMA fall too, because the tile is larger: a block reads
``(bm + bn) * K`` values for ``bm * bn`` outputs, ``K * (1/bm + 1/bn)`` per output element (1/32
per FMA at 64 x 64, against 1/16 for the 32 x 32 tiles of ``smem``). The shared tiles are
``bk`` deep (8 by default, so the copies stay small) and are filled cooperatively: the block's
threads stride over the tile's values, consecutive threads taking consecutive addresses of the
*stored* array whichever way round it is stored (so every global read coalesces). The anchor
ladder measures this step at nearly 2x the shared-memory rung (34% of cuBLAS on an H100).

The accumulators are ``cuda.local.array(tm, float32)`` indexed only by loops whose trip counts are
compile-time constants: the compiler unrolls them and keeps the array in registers (a local array
indexed by a run-time value would live in slow local memory).
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m: pick GPU or simulator before numba.cuda loads
    from rawgpu.kernels.matmul._common import choose_engine

    choose_engine()

import functools  # noqa: E402

from numba import cuda, float32  # noqa: E402

from rawgpu.kernels.matmul._common import divides, jit, make_config  # noqa: E402
from rawgpu.kernels.matmul._common import launch_2d as launch  # noqa: E402,F401

DEFAULTS = {"bm": 64, "bn": 64, "bk": 8, "tm": 8}  # 64 x 8 = 512 threads, 4 KiB shared
SIM_PARAMS = {"bm": 6, "bn": 4, "bk": 3, "tm": 3}


def _geometry(p):
    divides("tm", p["tm"], "bm", p["bm"])
    return (p["bn"], p["bm"] // p["tm"]), (p["bm"], p["bn"]), 4 * p["bk"] * (p["bm"] + p["bn"])


def config(**params):
    return make_config("blocktile1d", DEFAULTS, params, _geometry)


@functools.lru_cache(maxsize=None)
def kernel(trans_a: bool, trans_b: bool, bm: int, bn: int, bk: int, tm: int):
    threads_x = bn
    threads = bn * (bm // tm)
    loads_a = -(-(bm * bk) // threads)  # values of each shared tile one thread copies
    loads_b = -(-(bk * bn) // threads)
    even_a = (bm * bk) % threads == 0  # no thread falls off the end of the tile: no test needed
    even_b = (bk * bn) % threads == 0

    @jit(threads, tm)
    def blocktile1d(a, b, c):
        As = cuda.shared.array((bm, bk), float32)  # As[i, k]
        Bs = cuda.shared.array((bk, bn), float32)  # Bs[k, j]
        acc = cuda.local.array(tm, float32)
        m, n = c.shape
        k_len = a.shape[0] if trans_a else a.shape[1]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * threads_x + tx
        col0 = cuda.blockIdx.x * bn

        for row0 in range(cuda.blockIdx.y * bm, m, cuda.gridDim.y * bm):
            for r in range(tm):
                acc[r] = 0.0
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
                    bv = Bs[kk, tx]  # one shared load ...
                    for r in range(tm):  # ... reused for tm multiply-adds
                        acc[r] += As[ty * tm + r, kk] * bv
                cuda.syncthreads()

            j = col0 + tx
            if j < n:
                for r in range(tm):
                    i = row0 + ty * tm + r
                    if i < m:
                        c[i, j] = acc[r]

    return blocktile1d


if __name__ == "__main__":
    import sys

    from rawgpu.kernels.matmul._common import main

    sys.exit(main("blocktile1d", SIM_PARAMS))
