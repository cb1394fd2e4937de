"""Rung 1, ``naive``: one thread per element of C, and the warp walks down a column of C.

The idea. The most direct mapping there is: thread ``(x, y)`` of block ``(bx, by)`` computes the
single element ``C[i, j]`` with ``i = by * block_x + x`` and ``j = bx * block_y + y``, walking a row
of A and a column of B from global memory: 2K loads for 2K flops, one load per multiply-add, and
nothing is shared between threads except through the caches.

What is wrong with it, on purpose. threadIdx.x is the fastest-varying index: the 32 threads of a
warp have consecutive ``x`` and the same ``y``. Here ``x`` runs down the *rows* i of C. At each
step k the warp's 32 threads read ``A[i, k]`` for 32 different rows: 32 addresses K floats apart,
each in its own 32-byte memory sector, so one warp-wide load costs 32 transactions where 1 or 4
would do. Its read of ``B[k, j]`` is one address for the whole warp (a broadcast), and its stores
``C[i, j]`` are again N floats apart. The memory system moves 8x more bytes than the kernel uses.
This rung exists to be the "before" picture of the next one; the anchor ladder (SGEMM_CUDA, CUDA C
on an H100) measures its equivalent at about 1% of cuBLAS.

Edges: a thread whose element lies outside C does nothing (there is no shared memory and no
barrier, so it may simply leave). When M needs more row tiles than CUDA's 65535 gridDim.y, each
thread loops over rows with the grid's stride.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m: pick GPU or simulator before numba.cuda loads
    from rawgpu.kernels.matmul._common import choose_engine

    choose_engine()

import functools  # noqa: E402

from numba import cuda, float32  # noqa: E402

from rawgpu.kernels.matmul._common import launch_2d as launch  # noqa: E402,F401
from rawgpu.kernels.matmul._common import make_config  # noqa: E402

DEFAULTS = {"block_x": 32, "block_y": 8}  # 256 threads; x along the rows of C
SIM_PARAMS = {"block_x": 4, "block_y": 2}


def _geometry(p):
    # block (x, y); tile (rows, cols): x runs along the rows here, so the tile is block_x rows high
    return (p["block_x"], p["block_y"]), (p["block_x"], p["block_y"]), 0


def config(**params):
    return make_config("naive", DEFAULTS, params, _geometry)


@functools.lru_cache(maxsize=None)
def dot_product(trans_a: bool, trans_b: bool):
    """``dot(a, b, i, j, k_len)``: ``sum_k op(a)[i, k] * op(b)[k, j]``, one thread's whole job on
    the first two rungs (``coalesced`` is this rung with its threads turned, and shares it)."""

    @cuda.jit(device=True, inline="always")
    def dot(a, b, i, j, k_len):
        acc = float32(0.0)
        for k in range(k_len):
            x = a[k, i] if trans_a else a[i, k]
            y = b[j, k] if trans_b else b[k, j]
            acc += x * y
        return acc

    return dot


@functools.lru_cache(maxsize=None)
def kernel(trans_a: bool, trans_b: bool, block_x: int, block_y: int):
    dot = dot_product(trans_a, trans_b)

    @cuda.jit(cache=True)
    def naive(a, b, c):
        m, n = c.shape
        k_len = a.shape[0] if trans_a else a.shape[1]
        j = cuda.blockIdx.x * block_y + cuda.threadIdx.y  # y: the column
        if j >= n:
            return
        for i in range(cuda.blockIdx.y * block_x + cuda.threadIdx.x, m, cuda.gridDim.y * block_x):  # x: the row
            c[i, j] = dot(a, b, i, j, k_len)

    return naive


if __name__ == "__main__":
    import sys

    from rawgpu.kernels.matmul._common import main

    sys.exit(main("naive", SIM_PARAMS))
