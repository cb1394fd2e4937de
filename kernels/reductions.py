"""Reductions: column sums (the bias gradients) and the correct-prediction count.

A reduction turns many values into few, so threads must combine their partial results. The
fast, *deterministic* way within a block is a tree in shared memory: every thread writes its
partial sum, then half the threads add the other half's values to theirs, then a quarter, ...
``log2(threads)`` rounds, each ending in a barrier (``syncthreads``) so nobody reads a value
before it is written. The order of additions is fixed by the tree, so the float32 result is the
same run after run, unlike float atomics, whose order depends on thread scheduling. (Integer
atomics, as in ``correct_count``, are exact whatever the order.)

No warp shuffles: the shared-memory tree is the readable version and runs in the simulator.
"""

from __future__ import annotations

import functools

from numba import cuda, float32, int32

from ._launch import check_threads, grid_stride_blocks


# The two tree helpers are device functions that kernels here and in loss.py call. They are
# declared ``inline="always"``: Numba pastes their code into each calling kernel *before typing*,
# so each call site is typed with its own buffer (float32, float64 or int32) and compiled as part
# of the kernel, for whatever architecture the kernel is compiled for. Without it, numba-cuda
# compiles a called device function separately, for the compute capability of the current GPU,
# which it asks the driver for: compiling the kernel for sm_90 on a machine with no GPU (as
# ``rawgpu kernels`` does) then fails. NVVM inlined these small functions anyway, so the machine
# code is the same; the simulator ignores the option and calls them like Python functions.


@cuda.jit(device=True, inline="always")
def block_tree_sum(buf, tid, size):
    """Sum ``buf[0:size]`` (size a power of two, one slot per thread) into ``buf[0]``.

    Every thread of the block must call it (it contains barriers). On return ``buf[0]`` holds
    the sum and every thread can read it; call ``syncthreads`` before writing ``buf`` again.
    """
    half = size // 2
    while half > 0:
        if tid < half:
            buf[tid] += buf[tid + half]
        cuda.syncthreads()
        half //= 2


@cuda.jit(device=True, inline="always")
def block_tree_max(buf, tid, size):
    """Like :func:`block_tree_sum`, with ``max`` in place of ``+``."""
    half = size // 2
    while half > 0:
        if tid < half:
            other = buf[tid + half]
            if other > buf[tid]:
                buf[tid] = other
        cuda.syncthreads()
        half //= 2


# --- column sum ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def col_sum_kernel(threads_x: int, threads_y: int):
    """A block of threads_x x threads_y threads sums ``threads_x`` neighbouring columns.

    threadIdx.x runs along a row, so a warp reads neighbouring addresses (coalesced); the
    threads_y threads of a column each walk every threads_y-th row, then a tree over y adds
    their partial sums.
    """
    # Shared-array shapes must be compile-time constants: the factory's arguments are.
    @cuda.jit(cache=True)
    def col_sum(x, out):
        part = cuda.shared.array((threads_y, threads_x), float32)
        rows, cols = x.shape
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        j = cuda.blockIdx.x * threads_x + tx
        acc = float32(0.0)
        if j < cols:
            for i in range(ty, rows, threads_y):
                acc += x[i, j]
        part[ty, tx] = acc
        cuda.syncthreads()
        half = threads_y // 2
        while half > 0:
            if ty < half:
                part[ty, tx] += part[ty + half, tx]
            cuda.syncthreads()
            half //= 2
        if ty == 0 and j < cols:
            out[j] = part[0, tx]

    return col_sum


def col_sum(x, out, *, threads_x=32, threads_y=8, stream=0):
    """``out[j] = sum_i x[i, j]`` for x (B, N): the gradient of a bias added to every row."""
    check_threads("threads_x", threads_x)
    check_threads("threads_y", threads_y, power_of_two=True)
    check_threads("threads_x * threads_y", threads_x * threads_y)
    cols = x.shape[1]
    if cols == 0:
        return
    blocks = (cols + threads_x - 1) // threads_x
    col_sum_kernel(threads_x, threads_y)[blocks, (threads_x, threads_y), stream](x, out)


# --- correct count ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def correct_count_kernel(threads: int):
    """One thread per row finds the row's argmax; the block adds up its hits with a tree and
    one thread adds the block's total to the counter (an integer atomic: exact in any order)."""

    @cuda.jit(cache=True)
    def correct_count(logits, labels, count):
        hits = cuda.shared.array(threads, int32)
        rows, classes = logits.shape
        tid = cuda.threadIdx.x
        mine = int32(0)
        for i in range(cuda.grid(1), rows, cuda.gridsize(1)):
            best = 0
            best_v = logits[i, 0]
            for j in range(1, classes):
                v = logits[i, j]
                if v > best_v:  # strictly greater: ties go to the lowest index, like np.argmax
                    best_v = v
                    best = j
            if best == labels[i]:
                mine += 1
        hits[tid] = mine
        cuda.syncthreads()
        block_tree_sum(hits, tid, threads)
        if tid == 0:
            cuda.atomic.add(count, 0, hits[0])

    return correct_count


def correct_count(logits, labels, count, *, threads=128, max_blocks=None, stream=0):
    """``count[0] += #{i : argmax(logits[i]) == labels[i]}``; the caller zeroes ``count``."""
    check_threads("threads", threads, power_of_two=True)
    rows = logits.shape[0]
    if rows == 0:
        return
    blocks = grid_stride_blocks(rows, threads, max_blocks)
    correct_count_kernel(threads)[blocks, threads, stream](logits, labels, count)


# --- what rawgpu kernels compiles ------------------------------------------------------------


def compile_targets() -> list:
    """Both kernels as rawgpu's ``cuda`` engine launches them (``LAUNCH["cuda"]`` in
    rawgpu/backends/kernel_backend.py: col_sum 32 x 8, correct_count at the engine's 256
    threads), with the argument types it passes (C-contiguous float32 arrays, int32 labels, a
    one-element int32 counter). tests/test_kernel_report.py checks these against ``LAUNCH``."""
    from ._compile import CompileTarget

    return [
        CompileTarget("col_sum", "threads_x=32 threads_y=8", col_sum_kernel(32, 8),
                      "void(float32[:, ::1], float32[::1])", 32 * 8),
        CompileTarget("correct_count", "threads=256", correct_count_kernel(256),
                      "void(float32[:, ::1], int32[::1], int32[::1])", 256),
    ]
