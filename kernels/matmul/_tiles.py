"""The pieces every tiled rung is built from: the tile copy, the inner product step, the epilogues.

Rungs 4 to 8 (``blocktile1d`` .. ``splitk``) and the convolution kernels (kernels/conv.py) differ
in *who computes what*: which thread owns which elements of C, and how the shared tiles are laid
out. What they do with those choices is the same three things, written once here:

1. :func:`tile_loader` copies one tile of an operand from global to shared memory, every thread
   of the block taking its share, consecutive threads on consecutive addresses of the *stored*
   array (so every warp's read coalesces), zeros where the tile hangs over the matrix's edge.
2. :func:`outer_products` is the inner loop: for each step ``kk`` of the shared tiles, load the
   thread's ``tm`` values of A and ``tn`` of B into registers and multiply every pair into the
   ``tm x tn`` accumulators.
3. :func:`epilogue_store` applies the epilogue to the accumulators, still in registers, and
   stores them: nothing (a plain matmul), bias + ReLU, the ReLU mask of the backward pass, or a
   plain store beside the bias gradient's column sums (:func:`column_sums`). The training step's
   five matmuls are these epilogues on the ladder's rungs (see kernels/fused.py).

Each is a *factory*: the tile sizes and layout flags are Python ints and bools closed over by the
device function it returns, so Numba compiles them as constants (dead branches vanish, loops have
constant trip counts). The kernel itself is :func:`tiled_kernel`; a rung module passes its thread
map and its tiles. The device functions are declared ``inline="always"``: Numba splices them
into each kernel before typing, so a kernel compiles as one function for whatever architecture it
is compiled for (see kernels/reductions.py for why that matters), and costs exactly what the same
code written inside the kernel would.

Three things here are for the compiled machine code, found by reading it (``rawgpu kernels``
reports each kernel's ``ffma_share``, the fraction of its main loop's instructions that are the
multiply-adds it exists for):

* **Indexes are 32-bit and unsigned.** Numba indexes with 64-bit signed integers and wraps a
  negative index around (Python's ``a[-1]``): a compare and a select per index, and address
  arithmetic the compiler cannot fold. A ``uint32`` index cannot be negative, so there is no
  wraparound, and each shared address becomes one base register plus a constant offset folded
  into the load. All of an index or none of it: Numba compares a uint64 with an int64 *as
  float64*, so sizes are cast too (``uint32(c.shape[0])``).
* **The inner loop counts with a uint32.** ``for kk in range(bk)`` keeps a 64-bit trip count that
  NVVM does not unroll: every step paid for the count and recomputed each shared address. A
  ``while`` over a uint32 counter it unrolls four steps at a time (:func:`outer_products`).
* **Global loads are issued together.** The tile copy first loads every value a thread copies
  into registers, then stores them all to shared memory. Written as load, store, load, store, each
  store waits for its load; loads issued back to back are in flight together.

And one thing is mostly left out: ``launch_bounds``. With the code above, ptxas takes 40 to 80
registers for these kernels on its own, without spilling; told to fit 2 to 4 blocks per SM it
spent the whole budget it was given instead (113 for ``warptile``) and spilled in
``blocktile1d``. Only ``blocktile2d`` keeps its bound: left alone it takes 64-65 registers on
sm_90 and 68-76 on sm_80, one block short of 4 per SM.

Together these take the ``warptile`` main loop (sm_90, ptxas 12.9) from 93 instructions for 32
FFMA (34.4%) at 116 registers and 25% occupancy to 183 instructions for 128 FFMA (69.9%) at 72-80
registers and 37.5%; ``blocktile2d``'s from 29.1% to 49-52% (at its bound of 64).
"""

from __future__ import annotations

import functools

from numba import cuda, float32, int32, uint32

from ._common import jit

#: The epilogues: what a tiled kernel ``kernel(a, b, c, e)`` does between its accumulators and C.
NONE = "none"  # c = op(a) @ op(b); e is not read (the launchers pass a)
BIAS_RELU = "bias_relu"  # c = relu(op(a) @ op(b) + e), e (N,): the forward layer
RELU_MASK = "relu_mask"  # c = (op(a) @ op(b)) * [e > 0], e (M, N): the backward through a ReLU
WEIGHT_GRAD = "weight_grad"  # c = op(a) @ op(b), and e (N,) = the column sums of op(b)
EPILOGUES = (NONE, BIAS_RELU, RELU_MASK, WEIGHT_GRAD)


def check_epilogue(epilogue: str) -> str:
    if epilogue not in EPILOGUES:
        raise ValueError(f"epilogue: unknown {epilogue!r}; choose one of {', '.join(EPILOGUES)}")
    return epilogue


@functools.lru_cache(maxsize=None)
def tile_loader(rows: int, cols: int, threads: int, stored_transposed: bool, shared_transposed: bool):
    """``load(src, dst, tid, p0, q0, p_end, q_end)``: copy a ``rows x cols`` tile of an operand.

    The tile is ``T[p, q] = op(src)[p0 + p, q0 + q]``, read as ``src[p0 + p, q0 + q]``, or as
    ``src[q0 + q, p0 + p]`` when the operand is ``stored_transposed``, and 0 where ``p0 + p >=
    p_end`` or ``q0 + q >= q_end``. It lands in shared memory as ``dst[p, q]``, or as ``dst[q, p]``
    when ``shared_transposed``. Thread ``tid`` of ``threads`` copies the tile's values ``tid,
    tid + threads, ...``, counted along the stored array's rows, so a warp reads consecutive
    addresses whichever way round the operand is stored.
    """
    size = rows * cols
    loads = -(-size // threads)  # values of the tile one thread copies
    even = size % threads == 0  # no thread falls off the end of the tile: no test needed
    # The tile position of a copy number, counted along the stored rows.
    span = rows if stored_transposed else cols

    @cuda.jit(device=True, inline="always")
    def load(src, dst, tid, p0, q0, p_end, q_end):
        vals = cuda.local.array(loads, float32)
        for n in range(loads):  # all the global loads first, so that they are in flight together
            e = uint32(tid + n * threads)
            outer = e // uint32(span)
            inner = e % uint32(span)
            p, q = (inner, outer) if stored_transposed else (outer, inner)
            gp = uint32(p0) + p
            gq = uint32(q0) + q
            v = float32(0.0)
            if (even or e < uint32(size)) and gp < uint32(p_end) and gq < uint32(q_end):
                v = src[gq, gp] if stored_transposed else src[gp, gq]
            vals[n] = v
        for n in range(loads):  # then the shared stores
            e = uint32(tid + n * threads)
            outer = e // uint32(span)
            inner = e % uint32(span)
            p, q = (inner, outer) if stored_transposed else (outer, inner)
            if even or e < uint32(size):
                if shared_transposed:
                    dst[q, p] = vals[n]
                else:
                    dst[p, q] = vals[n]

    return load


@functools.lru_cache(maxsize=None)
def outer_products(bk: int, tm: int, tn: int, a_step: int, b_step: int, a_k_major: bool):
    """``steps(As, Bs, i0, j0, acc, a_reg, b_reg)``: the ``bk`` steps of the inner loop.

    Step ``kk`` loads the thread's A values ``As[kk, i0 + r * a_step]`` (``As[i0 + r * a_step,
    kk]`` when A's tile is stored row-major, not ``a_k_major``) for ``r < tm`` and its B values
    ``Bs[kk, j0 + s * b_step]`` for ``s < tn`` into registers, then adds their outer product into
    the ``tm x tn`` accumulators: ``tm * tn`` multiply-adds for ``tm + tn`` shared loads.

    The loop is a ``while`` over a uint32 counter, not ``for kk in range(bk)``: Numba lowers a
    range loop with a 64-bit trip count that NVVM does not unroll (each step then paid for the
    count and recomputed every shared address), while this loop it unrolls four steps at a time,
    each shared address a base register plus a constant folded into the load.
    """
    @cuda.jit(device=True, inline="always")
    def steps(As, Bs, i0, j0, acc, a_reg, b_reg):
        kk = uint32(0)
        while kk < uint32(bk):
            for r in range(tm):
                i = uint32(i0) + uint32(r * a_step)
                a_reg[r] = As[kk, i] if a_k_major else As[i, kk]
            for s in range(tn):
                b_reg[s] = Bs[kk, uint32(j0) + uint32(s * b_step)]
            for r in range(tm):
                for s in range(tn):
                    acc[r, s] += a_reg[r] * b_reg[s]
            kk += uint32(1)

    return steps


@functools.lru_cache(maxsize=None)
def zero_accumulators(tm: int, tn: int):
    """``zero(acc)``: set the ``tm x tn`` accumulators to 0."""

    @cuda.jit(device=True, inline="always")
    def zero(acc):
        for r in range(tm):
            for s in range(tn):
                acc[r, s] = float32(0.0)

    return zero


@functools.lru_cache(maxsize=None)
def epilogue_store(epilogue: str, tm: int, tn: int, i_step: int, j_step: int):
    """``store(c, e, acc, i0, j0)``: ``c[i0 + r * i_step, j0 + s * j_step] = epilogue(acc[r, s])``
    for the elements inside C.

    ``BIAS_RELU``: ``max(acc + e[j], 0)``, with a NaN passed on (not clipped to 0) so that a step
    gone bad reaches the loss, which records it. ``RELU_MASK``: ``acc`` where ``e[i, j] > 0``, else
    0. ``NONE`` and ``WEIGHT_GRAD``: ``acc`` (the column sums are :func:`column_sums`'s).
    """
    check_epilogue(epilogue)
    bias_relu = epilogue == BIAS_RELU
    relu_mask = epilogue == RELU_MASK

    @cuda.jit(device=True, inline="always")
    def store(c, e, acc, i0, j0):
        m = uint32(c.shape[0])
        n = uint32(c.shape[1])
        bias = cuda.local.array(tn, float32)  # the thread's tn bias values, read once, not per row
        if bias_relu:
            for s in range(tn):
                j = uint32(j0 + s * j_step)
                bias[s] = e[j] if j < n else float32(0.0)
        for r in range(tm):
            i = uint32(i0 + r * i_step)
            if i < m:
                for s in range(tn):
                    j = uint32(j0 + s * j_step)
                    if j < n:
                        v = acc[r, s]
                        if bias_relu:
                            v += bias[s]
                            if v < float32(0.0):  # not max(): a NaN must pass, for the loss to see it
                                v = float32(0.0)
                        if relu_mask:
                            if not e[i, j] > float32(0.0):
                                v = float32(0.0)
                        c[i, j] = v

    return store


@functools.lru_cache(maxsize=None)
def column_sums(bk: int, bn: int, threads: int):
    """``add(Bs, sums, tid)`` and ``write(e, sums, tid, col0)``: the bias gradient of the
    ``WEIGHT_GRAD`` epilogue, from B's shared tiles as they pass.

    Thread ``tid`` keeps the running sums of tile columns ``tid, tid + threads, ...`` in
    ``sums`` (a local array of :func:`column_sum_slots` values); ``add`` adds the ``bk`` rows of
    the current tile ``Bs[kk, jj]``, ``write`` stores ``e[col0 + jj]`` for the columns inside
    ``e``. Only the blocks of the first row tile call them: each column of B then passes through
    exactly one block, in order of k, so each sum is added in a fixed order by one thread
    (deterministic, with no float atomics and no second read of B).
    """
    slots = column_sum_slots(bn, threads)

    @cuda.jit(device=True, inline="always")
    def add(Bs, sums, tid):
        for q in range(slots):
            jj = uint32(tid + q * threads)
            if jj < uint32(bn):
                for kk in range(bk):
                    sums[q] += Bs[kk, jj]

    @cuda.jit(device=True, inline="always")
    def write(e, sums, tid, col0):
        for q in range(slots):
            jj = uint32(tid + q * threads)
            j = uint32(col0) + jj
            if jj < uint32(bn) and j < uint32(e.shape[0]):
                e[j] = sums[q]

    return add, write


def column_sum_slots(bn: int, threads: int) -> int:
    """How many tile columns' sums one thread keeps (at least 1: local arrays cannot be empty)."""
    return max(1, -(-bn // threads))


def shared_shapes(bm: int, bn: int, bk: int, pad: int, a_k_major: bool):
    """The shapes of the shared tiles: A's as ``(bm, bk)`` or, ``a_k_major``, ``(bk, bm + pad)``;
    B's as ``(bk, bn + pad)``. ``pad`` floats at the end of each row move a column's addresses
    into different banks."""
    return ((bk, bm + pad) if a_k_major else (bm, bk)), (bk, bn + pad)


@functools.lru_cache(maxsize=None)
def slice_gatherer(bm: int, bn: int, tm: int, tn: int, i_step: int, j_step: int, threads: int, splits: int):
    """``gather(split, acc, sums, last, tid, i0, j0, row0, col0, first_rows) -> bool``: split-K's
    meeting point, where the ``splits`` blocks of one output tile (one per slice of K,
    ``blockIdx.z``) add up their partial tiles (see kernels/matmul/splitk.py).

    Each block stores its partial tile ``acc`` into plane ``z`` of ``ws`` (with ``first_rows``,
    its column sums ``sums`` into row M of that plane), makes the stores visible device-wide, and
    counts itself in ``done[tile]`` with an atomic. The block that counts last knows every other
    partial is in memory: it adds the planes in the fixed order ``z = 0, 1, ...`` into ``acc``
    (and ``sums``), sets the count back to 0 for the next launch, and returns True; the others
    return False (uniformly across each block). ``split`` is ``(ws, done)``; ``last`` is a shared
    int32[1]. Elements past the edge of C are neither stored nor read; a slice past the end of K
    stores zeros.
    """
    slots = column_sum_slots(bn, threads)

    @cuda.jit(device=True, inline="always")
    def gather(split, acc, sums, last, tid, i0, j0, row0, col0, first_rows):
        ws, done = split
        m = uint32(ws.shape[1] - 1)  # row M holds the column sums
        n = uint32(ws.shape[2])
        z = cuda.blockIdx.z
        for r in range(tm):
            i = uint32(row0 + i0 + r * i_step)
            for s in range(tn):
                j = uint32(col0 + j0 + s * j_step)
                if i < m and j < n:
                    ws[z, i, j] = acc[r, s]
        if first_rows:
            for q in range(slots):
                jj = uint32(tid + q * threads)
                if jj < uint32(bn) and uint32(col0) + jj < n:
                    ws[z, m, uint32(col0) + jj] = sums[q]
        cuda.threadfence()  # this block's partials are visible device-wide ...
        cuda.syncthreads()  # ... for all its threads, before it counts itself in
        tile = cuda.blockIdx.x + cuda.gridDim.x * (row0 // bm)
        if tid == 0:
            last[0] = 1 if cuda.atomic.add(done, tile, 1) == splits - 1 else 0
        cuda.syncthreads()
        if last[0] == 0:
            return False
        # The last block: every plane is in memory (it never read them before, so no stale copy
        # can sit in its L1). Each thread adds up the elements it stored itself, in plane order.
        for r in range(tm):
            i = uint32(row0 + i0 + r * i_step)
            for s in range(tn):
                j = uint32(col0 + j0 + s * j_step)
                if i < m and j < n:
                    total = float32(0.0)
                    for zz in range(splits):
                        total += ws[zz, i, j]
                    acc[r, s] = total
        if first_rows:
            for q in range(slots):
                jj = uint32(tid + q * threads)
                if jj < uint32(bn) and uint32(col0) + jj < n:
                    total = float32(0.0)
                    for zz in range(splits):
                        total += ws[zz, m, uint32(col0) + jj]
                    sums[q] = total
        if tid == 0:
            done[tile] = 0  # ready for the next launch (or CUDA-graph replay)
        return True

    return gather


def tiled_kernel(thread_map, *, bm: int, bn: int, bk: int, tm: int, tn: int, i_step: int, j_step: int,
                 threads: int, a_k_major: bool, pad: int, trans_a: bool, trans_b: bool, epilogue: str,
                 splits: int = 1, blocks_per_sm: int | None = None):
    """The tiled matmul ``kernel(a, b, c, e, split)`` of one rung: ``c = epilogue(op(a) @ op(b))``.

    A block computes the ``bm x bn`` tiles of C at column ``blockIdx.x * bn`` and rows
    ``blockIdx.y * bm``, ``+ gridDim.y * bm``, ... (a loop, for row tiles past CUDA's grid limit).
    ``thread_map(tx, ty)`` is the rung's idea, the thread's place in the tile: it returns the
    thread's number ``tid`` and the tile row and column ``(i0, j0)`` of its first element; its
    others are ``i_step`` rows and ``j_step`` columns apart. ``e`` is the epilogue's operand
    (see ``EPILOGUES``). ``blocks_per_sm``: ``launch_bounds`` asking ptxas to fit that many
    blocks on an SM (None: no bound).

    ``split`` is ``()`` when ``splits`` is 1. Otherwise K is cut into ``splits`` slices, block
    ``blockIdx.z`` takes one, and ``split = (ws, done)`` is where the slices meet: ``ws`` float32
    (splits, M + 1, N), ``done`` int32 with one zero per output tile (the kernel leaves it zero).
    The code for slices is compiled only into the kernels that split (``splits`` is a constant,
    and Numba drops the branches it rules out before typing, so ``split`` may be empty).
    """
    check_epilogue(epilogue)
    col_sums = epilogue == WEIGHT_GRAD
    load_a = tile_loader(bm, bk, threads, trans_a, a_k_major)
    load_b = tile_loader(bk, bn, threads, trans_b, False)
    steps = outer_products(bk, tm, tn, i_step, j_step, a_k_major)
    zero = zero_accumulators(tm, tn)
    store = epilogue_store(epilogue, tm, tn, i_step, j_step)
    add_sums, write_sums = column_sums(bk, bn, threads)
    slots = column_sum_slots(bn, threads)
    gather = slice_gatherer(bm, bn, tm, tn, i_step, j_step, threads, splits)
    a_shape, b_shape = shared_shapes(bm, bn, bk, pad, a_k_major)

    # No launch_bounds unless the rung asks (blocks_per_sm): with 32-bit indexes and the counted
    # inner loop, ptxas takes 40-80 registers on its own (no spills), fewer than any bound set
    # before; told to fit 2-4 blocks per SM it spent the whole budget instead (113 for warptile)
    # and spilled in blocktile1d.
    @jit(threads, tm * tn, blocks_per_sm, bounded=blocks_per_sm is not None)
    def tiled(a, b, c, e, split):
        As = cuda.shared.array(a_shape, float32)
        Bs = cuda.shared.array(b_shape, float32)
        last = cuda.shared.array(1, int32)
        acc = cuda.local.array((tm, tn), float32)
        a_reg = cuda.local.array(tm, float32)
        b_reg = cuda.local.array(tn, float32)
        sums = cuda.local.array(slots, float32)
        m = c.shape[0]
        n = c.shape[1]
        k_begin = 0
        k_end = a.shape[0] if trans_a else a.shape[1]
        if splits > 1:  # this block's slice of K: whole bk-deep tiles, as even as they divide
            per_slice = (-(-k_end // bk) + splits - 1) // splits * bk
            k_begin = cuda.blockIdx.z * per_slice
            k_end = min(k_end, k_begin + per_slice)
        tid, i0, j0 = thread_map(cuda.threadIdx.x, cuda.threadIdx.y)
        col0 = cuda.blockIdx.x * bn
        for row0 in range(cuda.blockIdx.y * bm, m, cuda.gridDim.y * bm):
            first_rows = col_sums and row0 == 0  # these blocks also sum the columns of op(b)
            zero(acc)
            for q in range(slots):
                sums[q] = float32(0.0)
            for k0 in range(k_begin, k_end, bk):
                load_a(a, As, tid, row0, k0, m, k_end)
                load_b(b, Bs, tid, k0, col0, k_end, n)
                cuda.syncthreads()
                if first_rows:  # the bias gradient, from the tile already here
                    add_sums(Bs, sums, tid)
                steps(As, Bs, i0, j0, acc, a_reg, b_reg)
                cuda.syncthreads()
            finished = True
            if splits > 1:
                finished = gather(split, acc, sums, last, tid, i0, j0, row0, col0, first_rows)
            if finished:
                store(c, e, acc, row0 + i0, col0 + j0)
                if first_rows:
                    write_sums(e, sums, tid, col0)

    return tiled
