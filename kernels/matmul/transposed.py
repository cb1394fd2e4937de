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

Registers: ptxas needs a few more here than for rung 5 (the strided indices), so the launch
bounds ask for 3 blocks of 256 threads per SM (at most 85 registers, 37.5% occupancy); at 4 blocks
(64 registers) it spilled 4 bytes.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m: pick GPU or simulator before numba.cuda loads
    from rawgpu.kernels.matmul._common import choose_engine

    choose_engine()

import functools  # noqa: E402

from numba import cuda, float32  # noqa: E402

from rawgpu.kernels.matmul._common import divides, jit, make_config  # noqa: E402
from rawgpu.kernels.matmul._common import launch_2d as launch  # noqa: E402,F401

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
def kernel(trans_a: bool, trans_b: bool, bm: int, bn: int, bk: int, tm: int, tn: int, pad: int):
    threads_x = bn // tn
    threads_y = bm // tm
    threads = threads_x * threads_y
    loads_a = -(-(bm * bk) // threads)
    loads_b = -(-(bk * bn) // threads)
    even_a = (bm * bk) % threads == 0
    even_b = (bk * bn) % threads == 0
    a_cols = bm + pad  # shared-array shapes must be compile-time constants: computed here
    b_cols = bn + pad

    # 3 blocks per SM (at most 85 registers): at 4 blocks (64) ptxas spills 4 bytes.
    @jit(threads, tm * tn, blocks=3)
    def transposed(a, b, c):
        As = cuda.shared.array((bk, a_cols), float32)  # As[k, i]: A's tile, transposed
        Bs = cuda.shared.array((bk, b_cols), float32)  # Bs[k, j]
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
                for load in range(loads_a):
                    e = tid + load * threads
                    if even_a or e < bm * bk:
                        if trans_a:  # a is (K, M): consecutive threads walk M
                            kk = e // bm
                            ii = e % bm
                        else:  # a is (M, K): consecutive threads walk K; the store transposes
                            ii = e // bk
                            kk = e % bk
                        v = float32(0.0)
                        if row0 + ii < m and k0 + kk < k_len:
                            v = a[k0 + kk, row0 + ii] if trans_a else a[row0 + ii, k0 + kk]
                        As[kk, ii] = v
                for load in range(loads_b):
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
                    for r in range(tm):  # a row of As: neighbouring threads, neighbouring banks
                        a_reg[r] = As[kk, ty + r * threads_y]
                    for s in range(tn):
                        b_reg[s] = Bs[kk, tx + s * threads_x]
                    for r in range(tm):
                        for s in range(tn):
                            acc[r, s] += a_reg[r] * b_reg[s]
                cuda.syncthreads()

            for r in range(tm):
                i = row0 + ty + r * threads_y
                if i < m:
                    for s in range(tn):
                        j = col0 + tx + s * threads_x
                        if j < n:
                            c[i, j] = acc[r, s]

    return transposed


if __name__ == "__main__":
    import sys

    from rawgpu.kernels.matmul._common import main

    sys.exit(main("transposed", SIM_PARAMS))
