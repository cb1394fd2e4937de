"""Rung 6, ``transposed``: conflict-free shared loads (A's tile stored transposed, elements strided).

The idea. Rung 5 does few shared loads per FMA, but many of them are *bank conflicts*. Shared
memory is 32 banks, 4 bytes wide; the 32 threads of a warp are served in one pass only when their
addresses fall in 32 different banks (or are the same address: a broadcast).

What it changes: two things, both about addresses, none about arithmetic (shared and global
loads per FMA stay those of rung 5; what falls is how many passes each load costs):

* A's tile is stored transposed, ``As[k, i]``, so that at step kk the thread reads a *row* of As,
  like it reads a row of Bs. Its copy from global memory stays coalesced (consecutive threads
  still read consecutive addresses of the stored A) and the transpose happens in the store to
  shared memory, whose rows are padded by ``pad`` floats (4 by default) so that those column-wise
  stores land in different banks.
* Thread ``(x, y)`` owns rows ``row0 + y + r * (bm / tm)`` and columns ``col0 + x + s * (bn / tn)``:
  strided by the thread count rather than adjacent. A warp's ``Bs[kk, x + s*threads_x]`` are then
  consecutive floats (32 distinct banks) and its ``As[kk, y + r*threads_y]`` are one or two
  neighbouring floats (broadcasts): no conflicts, where rung 5 had 2-way conflicts on both reads
  at 4 x 4. The same striding makes each warp's stores to C runs of consecutive floats
  (coalesced), where rung 5's were ``tn`` floats apart.

What Numba cannot express. CUDA C's version of this step (SGEMM_CUDA's kernel 6, "vectorised")
also loads global and shared memory as ``float4``, 16 bytes per instruction: Numba's ``@cuda.jit``
has no way to reinterpret a float32 array as float4 or to emit ``ld.global.v4.f32``, and its
LLVM does not merge four adjacent scalar loads into one because it cannot prove 16-byte
alignment. The compiled PTX of this rung has no ``.v4`` loads. So this rung takes the half of
that step Numba can take: the transposed, conflict-free layout.

One part of float4 happens anyway, below Numba: ptxas merges a thread's adjacent *shared* loads
into 128-bit ``LDS.128`` by itself, so rung 5's ``Bs[kk, x*tn + s]`` (``tn`` adjacent floats)
costs one load instruction where this rung's strided reads cost ``tn``. That is why this rung's
main loop has the smaller FFMA share in ``rawgpu kernels`` (47% against 49-52%, and against 57%
for rung 5 left without its register bound) though it has no bank conflicts: which one is
faster is for a GPU to say.

Registers: 40-48 per thread, 62.5-75% occupancy, with no launch bounds (see
kernels/matmul/_tiles.py).
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

DEFAULTS = {"bm": 64, "bn": 64, "bk": 8, "tm": 4, "tn": 4, "pad": 4}  # 256 threads
SIM_PARAMS = {"bm": 6, "bn": 4, "bk": 3, "tm": 3, "tn": 2, "pad": 1}


def _geometry(p):
    divides("tm", p["tm"], "bm", p["bm"])
    divides("tn", p["tn"], "bn", p["bn"])
    shared = 4 * p["bk"] * (p["bm"] + p["bn"] + 2 * p["pad"])
    return (p["bn"] // p["tn"], p["bm"] // p["tm"]), (p["bm"], p["bn"]), shared


def config(**params):
    return make_config("transposed", DEFAULTS, params, _geometry)


@functools.lru_cache(maxsize=None)
def kernel(trans_a: bool, trans_b: bool, bm: int, bn: int, bk: int, tm: int, tn: int, pad: int, epilogue: str = NONE):
    """``kernel(a, b, c, e, split)``: ``c = epilogue(op(a) @ op(b))`` (see kernels/matmul/_tiles.py)."""
    threads_x = bn // tn
    threads_y = bm // tm

    @cuda.jit(device=True, inline="always")
    def thread_map(tx, ty):  # thread (x, y) owns rows y + r * threads_y and columns x + s * threads_x
        return ty * threads_x + tx, ty, tx

    # A's tile stored k-major (As[k, i], rows padded): a step reads a row of As, like a row of Bs.
    return tiled_kernel(thread_map, bm=bm, bn=bn, bk=bk, tm=tm, tn=tn, i_step=threads_y, j_step=threads_x,
                        threads=threads_x * threads_y, a_k_major=True, pad=pad,
                        trans_a=trans_a, trans_b=trans_b, epilogue=epilogue)


if __name__ == "__main__":
    import sys

    from rawgpu.kernels.matmul._common import main

    sys.exit(main("transposed", SIM_PARAMS))
