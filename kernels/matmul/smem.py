"""Rung 3, ``smem``: shared-memory tiles, one element of C per thread.

The idea. A block of ``tile x tile`` threads still computes a ``tile x tile`` tile of C, one
element each (thread ``(x, y)`` of block ``(bx, by)``: ``C[by*tile + y, bx*tile + x]``), but it
walks K one tile at a time. For each step the block first copies a ``tile x tile`` piece of A and
one of B into shared memory (every thread copies one value of each), waits at a barrier
(``syncthreads``) until the copy is complete, then every thread runs ``tile`` multiply-adds out of
shared memory, and waits again before the next copy overwrites the tiles.

What it changes. Each value fetched from global memory now serves ``tile`` threads, so global
loads per FMA fall from 2 to ``2 / tile`` (1/16 at the default tile of 32). The cost moves on
chip: still 2 *shared* loads per FMA (``As[y, kk]`` is the same address for a warp, a broadcast;
``Bs[kk, x]`` is 32 consecutive floats, 32 distinct banks: both conflict-free), plus two
barriers per tile. Shared memory is roughly ten times faster than global memory but it is not
free: this rung is bound by shared-memory load instructions, not by arithmetic. The anchor
ladder measures it at about 1.5x the coalesced rung (18% of cuBLAS on an H100).

Transposed operands: consecutive threads must read consecutive addresses of the *stored* array
for the copy to coalesce, so with ``trans_a`` (A stored K x M) thread x reads along M and stores
``As[x, y]``, down a column of the shared tile. Those stores are ``tile``-way bank conflicts (all
of a warp's addresses are a multiple of ``tile`` floats apart); rung 6 (``vectorized``) is about
removing such conflicts. Threads past an edge copy zeros, which add nothing to the dot products,
and take part in every barrier before they sit out the final store.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m: pick GPU or simulator before numba.cuda loads
    from rawgpu.kernels.matmul._common import choose_engine

    choose_engine()

import functools  # noqa: E402

from numba import cuda, float32  # noqa: E402

from rawgpu.kernels.matmul._common import launch_2d as launch  # noqa: E402,F401
from rawgpu.kernels.matmul._common import make_config  # noqa: E402

DEFAULTS = {"tile": 32}  # 1024 threads, 8 KiB of shared memory
SIM_PARAMS = {"tile": 3}


def _geometry(p):
    t = p["tile"]
    return (t, t), (t, t), 2 * 4 * t * t


def config(**params):
    return make_config("smem", DEFAULTS, params, _geometry)


@functools.lru_cache(maxsize=None)
def kernel(trans_a: bool, trans_b: bool, tile: int):
    @cuda.jit(cache=True)
    def smem(a, b, c):
        As = cuda.shared.array((tile, tile), float32)  # As[i, k]: the block's rows of A
        Bs = cuda.shared.array((tile, tile), float32)  # Bs[k, j]: the block's columns of B
        m, n = c.shape
        k_len = a.shape[0] if trans_a else a.shape[1]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        col0 = cuda.blockIdx.x * tile
        j = col0 + tx

        for row0 in range(cuda.blockIdx.y * tile, m, cuda.gridDim.y * tile):
            i = row0 + ty
            acc = float32(0.0)
            for k0 in range(0, k_len, tile):
                v = float32(0.0)
                if trans_a:  # a is (K, M): M is contiguous, so x walks the rows of A
                    if row0 + tx < m and k0 + ty < k_len:
                        v = a[k0 + ty, row0 + tx]
                    As[tx, ty] = v
                else:  # a is (M, K): x walks K
                    if i < m and k0 + tx < k_len:
                        v = a[i, k0 + tx]
                    As[ty, tx] = v
                v = float32(0.0)
                if trans_b:  # b is (N, K): K is contiguous, so x walks K
                    if col0 + ty < n and k0 + tx < k_len:
                        v = b[col0 + ty, k0 + tx]
                    Bs[tx, ty] = v
                else:  # b is (K, N): x walks the columns of B
                    if k0 + ty < k_len and j < n:
                        v = b[k0 + ty, j]
                    Bs[ty, tx] = v
                cuda.syncthreads()  # the tiles are complete before anyone reads them

                for kk in range(tile):
                    acc += As[ty, kk] * Bs[kk, tx]
                cuda.syncthreads()  # everyone has read them before the next copy overwrites

            if i < m and j < n:
                c[i, j] = acc

    return smem


if __name__ == "__main__":
    import sys

    from rawgpu.kernels.matmul._common import main

    sys.exit(main("smem", SIM_PARAMS))
