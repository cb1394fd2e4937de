"""Matrix multiply, ``C = op(A) @ op(B)``, as a ladder of three kernels.

``A`` is M x K, ``B`` is K x N and ``C`` is M x N, all float32 and row-major. Every output element
is a dot product of length K: 2K floating-point operations (a multiply and an add per step) that
need K values of A and K values of B. What separates a slow matmul from a fast one is not the
arithmetic, which is fixed at 2MNK, but how often those values are fetched from global memory
(slow, far away) instead of shared memory or registers (fast, on the chip). Each rung of the
ladder fetches less.

``naive``: one thread per element of C
    Thread ``(x, y)`` of block ``(bx, by)`` computes ``C[by * block_y + y, bx * block_x + x]`` by
    walking the whole row of A and column of B: 2K global reads for 2K flops, one read per
    multiply-add, and nothing is shared between threads. threadIdx.x runs along the columns j of
    C, so the 32 threads of a warp read 32 neighbouring values of a row of B and write 32
    neighbouring values of C: each of those is one wide, *coalesced* memory transaction instead
    of 32 narrow ones. The row of A is the same for the whole warp, so that read is a broadcast.

``tiled``: shared-memory tiles
    A block of tile x tile threads still computes one tile x tile tile of C, one element each,
    but walks K one tile at a time: the block first copies a tile x tile piece of A and one of B
    into shared memory (every thread copies one value of each), waits for all of them
    (``syncthreads``), then every thread runs its partial dot product out of shared memory.
    Each value fetched from global memory now serves ``tile`` threads, so a thread's global
    reads drop from 2K to 2K / tile. The cost moves to shared memory: still two shared loads
    per multiply-add, and shared memory, though fast, is not free.

``regblock``: 2-D register blocking
    A block computes a bm x bn tile of C with (bm / tm) * (bn / tn) threads, and each thread owns
    a tm x tn block of that tile, accumulated in registers (``cuda.local.array`` of constant
    size, which the compiler keeps in registers). Per step k the thread loads tm values of A and
    tn values of B from shared memory into registers and does tm * tn multiply-adds with them:
    with 4 x 4 that is 16 multiply-adds for 8 shared loads instead of 1 for 2, so the thread
    spends its time on arithmetic rather than on memory instructions (higher *arithmetic
    intensity*). The larger tile also cuts global traffic again: a block reads (bm + bn) * K
    values for bm * bn outputs, K * (1/bm + 1/bn) per output, a 32-fold saving for 64 x 64. The
    shared tiles (a bk-deep slice of A and of B) are loaded cooperatively: all threads of the
    block stride over the tile's elements, since a block has fewer threads than tile elements.

Transposes. ``trans_a`` means ``a`` is stored as K x M and the product uses its transpose;
``trans_b`` means ``b`` is stored as N x K. The kernels never copy: they index the stored layout
(``a[k, i]`` instead of ``a[i, k]``), and where a tile is copied to shared memory the threads are
laid along the stored array's contiguous axis so the copy stays coalesced. The flags and the tile
sizes are compile-time constants: each (variant, tile sizes, trans_a, trans_b) combination is a
separately compiled kernel, built on first use by a cached factory (``naive_kernel`` and friends),
so dead branches vanish and loops over tiles have constant trip counts. Tests build tiny tiles
for Numba's CUDA simulator; benchmarks build large ones for a GPU.

Edges. Every kernel is correct for any M, N, K >= 1: loads outside the matrices read as zero and
stores outside C are skipped. The grid covers the columns on its x axis (up to 2**31 - 1 blocks)
and the rows on its y axis, which CUDA caps at 65535 blocks; past that each block loops over
row tiles with a stride of the grid's height.

Accumulation is in float32, like cuBLAS's SGEMM: relative error around 1e-6 to 1e-7 of the
result's norm for K up to a few thousand.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from numba import cuda, float32

VARIANTS = ("naive", "tiled", "regblock")

#: CUDA's limit on gridDim.y. Row tiles beyond it are covered by a loop inside the kernels;
#: tests lower this to exercise that loop at tiny sizes.
MAX_GRID_Y = 65535

#: Hardware limits every current NVIDIA GPU shares: threads per block and static shared memory.
MAX_THREADS_PER_BLOCK = 1024
MAX_SHARED_BYTES = 48 * 1024

#: Defaults are sized for a GPU: 256 threads per block, a multiple of the 32-thread warp.
_DEFAULTS = {
    "naive": {"block_x": 16, "block_y": 16},
    "tiled": {"tile": 16},
    "regblock": {"bm": 64, "bn": 64, "bk": 8, "tm": 4, "tn": 4},
}


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatmulConfig:
    """The launch shape of one variant. Build it with :func:`config`, which checks it.

    Only the fields of its variant are set; the others are None. Hashable, so it can key the
    cache of compiled kernels.
    """

    variant: str
    block_x: int | None = None
    block_y: int | None = None
    tile: int | None = None
    bm: int | None = None
    bn: int | None = None
    bk: int | None = None
    tm: int | None = None
    tn: int | None = None

    @property
    def params(self) -> dict:
        """The variant's parameters, by name, e.g. ``{"tile": 16}``."""
        return {name: getattr(self, name) for name in _DEFAULTS[self.variant]}

    @property
    def block(self) -> tuple[int, int]:
        """Threads per block as (x, y): x along the columns of C, y along its rows."""
        if self.variant == "naive":
            return self.block_x, self.block_y
        if self.variant == "tiled":
            return self.tile, self.tile
        return self.bn // self.tn, self.bm // self.tm

    @property
    def tile_shape(self) -> tuple[int, int]:
        """Rows and columns of C that one block computes."""
        if self.variant == "naive":
            return self.block_y, self.block_x
        if self.variant == "tiled":
            return self.tile, self.tile
        return self.bm, self.bn

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"MatmulConfig({self.variant!r}, {args})"


def config(variant: str, **params) -> MatmulConfig:
    """Launch settings for ``variant``: its defaults, overridden by ``params``.

    naive: ``block_x``, ``block_y``; tiled: ``tile``; regblock: ``bm``, ``bn``, ``bk``, ``tm``,
    ``tn``. Raises ValueError naming the offending parameter.
    """
    if variant not in _DEFAULTS:
        raise ValueError(f"variant: unknown matmul variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    defaults = _DEFAULTS[variant]
    for name in params:
        if name not in defaults:
            raise ValueError(f"{name}: not a parameter of matmul variant {variant!r} (it takes {', '.join(defaults)})")
    values = {**defaults, **params}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be a positive integer, got {value!r}")

    if variant == "regblock":
        if values["bm"] % values["tm"]:
            raise ValueError(f"tm: must divide bm (bm={values['bm']}, tm={values['tm']})")
        if values["bn"] % values["tn"]:
            raise ValueError(f"tn: must divide bn (bn={values['bn']}, tn={values['tn']})")
        shared = 4 * values["bk"] * (values["bm"] + values["bn"] + 2)  # + 2: the padding columns
        if shared > MAX_SHARED_BYTES:
            raise ValueError(
                f"bk: shared tiles need {shared} bytes, more than {MAX_SHARED_BYTES}; lower bk, bm or bn"
            )

    cfg = MatmulConfig(variant, **values)
    threads = math.prod(cfg.block)
    if threads > MAX_THREADS_PER_BLOCK:
        names = {"naive": "block_x * block_y", "tiled": "tile", "regblock": "(bm / tm) * (bn / tn)"}[variant]
        raise ValueError(f"{names}: {threads} threads per block, more than {MAX_THREADS_PER_BLOCK}")
    return cfg


# ---------------------------------------------------------------------------------------------
# Kernels, one factory per variant (cached: each combination compiles once)
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def naive_kernel(trans_a: bool, trans_b: bool, block_x: int, block_y: int):
    """One thread per element of C; rows loop with the grid's stride when M outgrows the grid."""

    @cuda.jit
    def naive(a, b, c):
        m, n = c.shape
        k_len = a.shape[0] if trans_a else a.shape[1]
        j = cuda.blockIdx.x * block_x + cuda.threadIdx.x
        if j >= n:
            return  # no shared memory, no barrier: a thread past the edge can simply leave
        for i in range(cuda.blockIdx.y * block_y + cuda.threadIdx.y, m, cuda.gridDim.y * block_y):
            acc = float32(0.0)
            for k in range(k_len):
                x = a[k, i] if trans_a else a[i, k]
                y = b[j, k] if trans_b else b[k, j]
                acc += x * y
            c[i, j] = acc

    return naive


@functools.lru_cache(maxsize=None)
def tiled_kernel(trans_a: bool, trans_b: bool, tile: int):
    """A tile x tile block computes a tile x tile tile of C, one element per thread, from
    shared-memory tiles of A and B that the block refills once per ``tile`` steps of K."""
    # Shared-array shapes must be compile-time constants: computed here, not in the kernel.
    padded = tile + 1

    @cuda.jit
    def tiled(a, b, c):
        # As[i, k] and Bs[k, j]. The spare column staggers each column across the 32
        # shared-memory banks, so the transposed stores (trans_a / trans_b) do not all queue on
        # one bank.
        As = cuda.shared.array((tile, padded), float32)
        Bs = cuda.shared.array((tile, padded), float32)
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
                # Each thread copies one value of each tile. Consecutive tx must read
                # consecutive addresses of the *stored* array for the warp's reads to coalesce,
                # so the roles of tx and ty swap when the operand is stored transposed.
                # Threads past an edge store zeros, which add nothing to the dot products.
                v = float32(0.0)
                if trans_a:  # a is (K, M): M is contiguous, tx walks rows of A
                    if row0 + tx < m and k0 + ty < k_len:
                        v = a[k0 + ty, row0 + tx]
                    As[tx, ty] = v
                else:  # a is (M, K): tx walks K
                    if i < m and k0 + tx < k_len:
                        v = a[i, k0 + tx]
                    As[ty, tx] = v
                v = float32(0.0)
                if trans_b:  # b is (N, K): K is contiguous, tx walks K
                    if col0 + ty < n and k0 + tx < k_len:
                        v = b[col0 + ty, k0 + tx]
                    Bs[tx, ty] = v
                else:  # b is (K, N): tx walks columns of B
                    if k0 + ty < k_len and j < n:
                        v = b[k0 + ty, j]
                    Bs[ty, tx] = v
                cuda.syncthreads()  # the tiles are complete before anyone reads them

                for kk in range(tile):
                    acc += As[ty, kk] * Bs[kk, tx]
                cuda.syncthreads()  # everyone is done reading before the next copy overwrites

            # Threads past the edge took part in the copies and barriers above; only now may
            # they sit out.
            if i < m and j < n:
                c[i, j] = acc

    return tiled


@functools.lru_cache(maxsize=None)
def regblock_kernel(trans_a: bool, trans_b: bool, bm: int, bn: int, bk: int, tm: int, tn: int):
    """A block of (bm/tm) x (bn/tn) threads computes a bm x bn tile of C; each thread a tm x tn
    block of it, in registers, from bk-deep shared tiles of A and B."""
    threads_x = bn // tn  # threads across the tile's columns
    threads_y = bm // tm  # threads down the tile's rows
    threads = threads_x * threads_y
    # Shared-array shapes must be compile-time constants: computed here, not in the kernel.
    bm_padded = bm + 1
    bn_padded = bn + 1

    @cuda.jit
    def regblock(a, b, c):
        # As[k, i] holds A's tile transposed, so the inner loop reads both tiles along a row.
        # The spare column spreads the column-wise stores of the copy loops across banks.
        As = cuda.shared.array((bk, bm_padded), float32)
        Bs = cuda.shared.array((bk, bn_padded), float32)
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
                # Cooperative copy: the block's threads stride over the tile's bk * bm values.
                # Consecutive threads take consecutive addresses of the stored array, so the
                # reads coalesce whichever way round A is stored.
                for e in range(tid, bk * bm, threads):
                    if trans_a:  # a is (K, M): walk M fastest
                        kk = e // bm
                        ii = e % bm
                    else:  # a is (M, K): walk K fastest
                        ii = e // bk
                        kk = e % bk
                    v = float32(0.0)
                    if row0 + ii < m and k0 + kk < k_len:
                        v = a[k0 + kk, row0 + ii] if trans_a else a[row0 + ii, k0 + kk]
                    As[kk, ii] = v
                for e in range(tid, bk * bn, threads):
                    if trans_b:  # b is (N, K): walk K fastest
                        jj = e // bk
                        kk = e % bk
                    else:  # b is (K, N): walk N fastest
                        kk = e // bn
                        jj = e % bn
                    v = float32(0.0)
                    if col0 + jj < n and k0 + kk < k_len:
                        v = b[col0 + jj, k0 + kk] if trans_b else b[k0 + kk, col0 + jj]
                    Bs[kk, jj] = v
                cuda.syncthreads()

                # The thread's rows are ty, ty + threads_y, ...; its columns tx, tx + threads_x,
                # ... Interleaved rather than adjacent so that a warp's shared loads hit
                # consecutive banks and its final stores to C coalesce.
                for kk in range(bk):
                    for r in range(tm):
                        a_reg[r] = As[kk, ty + r * threads_y]
                    for s in range(tn):
                        b_reg[s] = Bs[kk, tx + s * threads_x]
                    for r in range(tm):  # tm * tn multiply-adds for tm + tn shared loads
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

    return regblock


_FACTORIES = {"naive": naive_kernel, "tiled": tiled_kernel, "regblock": regblock_kernel}


# ---------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------


def matmul(a, b, out, *, trans_a=False, trans_b=False, variant="tiled", cfg=None, stream=0) -> None:
    """``out[:] = op(a) @ op(b)``, with ``op(x) = x.T`` where the flag is set.

    ``a`` is (M, K), or (K, M) with ``trans_a``; ``b`` is (K, N), or (N, K) with ``trans_b``;
    ``out`` is (M, N). All float32 and C-contiguous: NumPy arrays in the simulator, device arrays
    on a GPU. ``cfg`` comes from :func:`config` (the variant's defaults when None). Launches on
    ``stream`` and returns at once: no allocation, no synchronisation.
    """
    if cfg is None:
        cfg = config(variant)
    elif cfg.variant != variant:
        raise ValueError(f"cfg: a {cfg.variant!r} config cannot launch variant {variant!r}")
    m_a, k_a = (a.shape[1], a.shape[0]) if trans_a else a.shape
    k_b, n_b = (b.shape[1], b.shape[0]) if trans_b else b.shape
    m, n = out.shape
    # Cheap host-side check: a mismatch here would make the kernel read or write out of bounds.
    if k_a != k_b or (m_a, n_b) != (m, n):
        raise ValueError(
            f"out: op(a) is {m_a}x{k_a} and op(b) is {k_b}x{n_b}, so out must be {m_a}x{n_b} "
            f"with matching inner sizes; got out {m}x{n}"
        )
    if m == 0 or n == 0:
        return  # nothing to write, and CUDA refuses an empty grid
    rows, cols = cfg.tile_shape
    grid = (-(-n // cols), min(-(-m // rows), MAX_GRID_Y))
    kernel = _FACTORIES[variant](bool(trans_a), bool(trans_b), **cfg.params)
    kernel[grid, cfg.block, stream](a, b, out)
