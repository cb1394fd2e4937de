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

from numba import cuda  # noqa: E402

from rawgpu.kernels.matmul._common import divides, make_config  # noqa: E402
from rawgpu.kernels.matmul._common import launch_tiled as launch  # noqa: E402,F401
from rawgpu.kernels.matmul._tiles import NONE, tiled_kernel  # noqa: E402

DEFAULTS = {"bm": 64, "bn": 64, "bk": 8, "tm": 8}  # 64 x 8 = 512 threads, 4 KiB shared
SIM_PARAMS = {"bm": 6, "bn": 4, "bk": 3, "tm": 3}


def _geometry(p):
    divides("tm", p["tm"], "bm", p["bm"])
    return (p["bn"], p["bm"] // p["tm"]), (p["bm"], p["bn"]), 4 * p["bk"] * (p["bm"] + p["bn"])


def config(**params):
    return make_config("blocktile1d", DEFAULTS, params, _geometry)


@functools.lru_cache(maxsize=None)
def kernel(trans_a: bool, trans_b: bool, bm: int, bn: int, bk: int, tm: int, epilogue: str = NONE):
    """``kernel(a, b, c, e, split)``: ``c = epilogue(op(a) @ op(b))`` (see kernels/matmul/_tiles.py)."""

    @cuda.jit(device=True, inline="always")
    def thread_map(tx, ty):  # thread (x, y) owns column x and the tm rows y*tm + r
        return ty * bn + tx, ty * tm, tx

    # A tm x 1 block per thread: its one value of B per step serves tm multiply-adds.
    return tiled_kernel(thread_map, bm=bm, bn=bn, bk=bk, tm=tm, tn=1, i_step=1, j_step=1,
                        threads=bn * (bm // tm), a_k_major=False, pad=0,
                        trans_a=trans_a, trans_b=trans_b, epilogue=epilogue)


if __name__ == "__main__":
    import sys

    from rawgpu.kernels.matmul._common import main

    sys.exit(main("blocktile1d", SIM_PARAMS))
