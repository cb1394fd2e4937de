"""Rung 2, ``coalesced``: the same one-thread-per-element kernel, with the warp along a row of C.

The idea. Swap which thread index runs where: threadIdx.x now runs along the *columns* j of C,
``j = bx * block_x + x`` and ``i = by * block_y + y``.

What it changes. The arithmetic and the number of loads are unchanged (2K loads per element,
one per multiply-add), but what a warp asks of memory is not:
at step k its 32 threads read ``B[k, j .. j+31]``, 32 neighbouring floats, which the hardware
*coalesces* into four 32-byte sectors (one 128-byte line) instead of 32 separate ones; its read
of ``A[i, k]`` is one address for the whole warp (a broadcast); and its stores to C are 32
neighbouring floats too. Bytes moved per useful byte drop from about 8 to about 1, and the L1 and
L2 caches now serve most of the repeated reads (each row of A is read by every column block).
The anchor ladder measures this step at about 12x the naive rung (12% of cuBLAS on an H100).

With ``trans_b`` (B stored N x K) the read ``b[j, k]`` walks down a stored column: that operand
does not coalesce in this rung; the shared-memory rungs that follow fix it by copying tiles
along the stored array's contiguous axis. Still 2 global loads per FMA: what limits this rung
is memory traffic, not arithmetic.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m: pick GPU or simulator before numba.cuda loads
    from rawgpu.kernels.matmul._common import choose_engine

    choose_engine()

import functools  # noqa: E402

from numba import cuda  # noqa: E402

from rawgpu.kernels.matmul._common import launch_2d as launch  # noqa: E402,F401
from rawgpu.kernels.matmul._common import make_config  # noqa: E402
# Rung 1's parameters (256 threads by default), with x now along the columns of C.
from rawgpu.kernels.matmul.naive import DEFAULTS, SIM_PARAMS, dot_product  # noqa: E402,F401


def _geometry(p):
    return (p["block_x"], p["block_y"]), (p["block_y"], p["block_x"]), 0


def config(**params):
    return make_config("coalesced", DEFAULTS, params, _geometry)


@functools.lru_cache(maxsize=None)
def kernel(trans_a: bool, trans_b: bool, block_x: int, block_y: int):
    dot = dot_product(trans_a, trans_b)  # a thread's work is rung 1's; only who does which changes

    @cuda.jit(cache=True)
    def coalesced(a, b, c):
        m, n = c.shape
        k_len = a.shape[0] if trans_a else a.shape[1]
        j = cuda.blockIdx.x * block_x + cuda.threadIdx.x  # x: the column, so a warp spans a row of C
        if j >= n:
            return
        for i in range(cuda.blockIdx.y * block_y + cuda.threadIdx.y, m, cuda.gridDim.y * block_y):
            c[i, j] = dot(a, b, i, j, k_len)

    return coalesced


if __name__ == "__main__":
    import sys

    from rawgpu.kernels.matmul._common import main

    sys.exit(main("coalesced", SIM_PARAMS))
