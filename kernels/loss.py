"""Softmax cross-entropy, fused: the mean loss and its gradient w.r.t. the logits.

For one row ``z`` (C logits) with label ``y``, softmax ``p_j = exp(z_j) / sum_k exp(z_k)`` and

    loss = -log p_y = logsumexp(z) - z_y
    dloss/dz_j = p_j - [j == y]

and the batch loss is the mean over B rows, so each row's gradient is divided by B.

Numerical stability: ``exp(1e4)`` overflows float32, so the kernel subtracts the row maximum
``m`` first, ``logsumexp(z) = m + log(sum_k exp(z_k - m))``: every exponent is then <= 0 and the
sum is >= 1 (the maximum contributes exp(0) = 1), so neither overflows nor the log sees zero.
The row loss is then summed as ``(m - z_y) + log(s)``, never ``(m + log(s)) - z_y``: with logits
near 1e4 the second form rounds ``m + log(s)`` to float32's spacing there (about 1e-3) and a loss
of order 1 loses three digits.

One block per row: its threads stride over the C columns and combine partial results with
shared-memory trees (max, then sum), then write the C gradients in the same pass. Rows beyond
the grid are taken by the same block on its next turn (a grid-stride loop over rows, uniform
across the block so its barriers stay legal). A second, single-block kernel then averages the
per-row losses (in float64) with a tree: deterministic, with no float atomics.

A label outside ``[0, C)`` cannot be read safely: that row's loss and gradient become NaN (the
ops layer rejects such labels before they get here).
"""

from __future__ import annotations

import functools
import math

from numba import cuda, float32, float64

from ._launch import check_threads
from .reductions import block_tree_max, block_tree_sum

#: Blocks for the row kernel. CUDA allows 2**31 - 1; rows past this loop inside the kernel.
MAX_ROW_BLOCKS = 65535


@functools.lru_cache(maxsize=None)
def rows_kernel(threads: int):
    @cuda.jit(cache=True)
    def softmax_ce_rows(logits, labels, grad, row_loss):
        buf = cuda.shared.array(threads, float32)
        rows, classes = logits.shape
        tid = cuda.threadIdx.x
        inv_rows = float32(1.0) / float32(rows)
        nan = float32(math.nan)
        for i in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
            # 1. the row maximum
            m = -float32(math.inf)
            for j in range(tid, classes, threads):
                if logits[i, j] > m:
                    m = logits[i, j]
            buf[tid] = m
            cuda.syncthreads()
            block_tree_max(buf, tid, threads)
            m = buf[0]
            cuda.syncthreads()  # all have read buf[0] before it is overwritten below
            # 2. the sum of exp(z - m)
            s = float32(0.0)
            for j in range(tid, classes, threads):
                s += math.exp(logits[i, j] - m)
            buf[tid] = s
            cuda.syncthreads()
            block_tree_sum(buf, tid, threads)
            s = buf[0]
            cuda.syncthreads()  # the next row's step 1 reuses buf
            # 3. the loss and the gradient of this row
            y = labels[i]
            valid = 0 <= y < classes
            if tid == 0:
                # (m - z_y) first: both are float32 near each other's size, so their difference is
                # exact or one rounding of it, and log(s) keeps its bits; m + log(s) would round
                # to the ulp of m (1e-3 at m = 1e4) before z_y came off.
                row_loss[i] = ((m - logits[i, y]) + math.log(s)) if valid else nan
            inv_s = float32(1.0) / s
            for j in range(tid, classes, threads):
                p = math.exp(logits[i, j] - m) * inv_s
                if j == y:
                    p -= float32(1.0)
                grad[i, j] = p * inv_rows if valid else nan

    return softmax_ce_rows


@functools.lru_cache(maxsize=None)
def mean_kernel(threads: int):
    @cuda.jit(cache=True)
    def mean(values, out):
        # float64: each thread adds up B / threads row losses in sequence, and a float32
        # running sum of thousands of terms would lose digits. It is one tiny block.
        buf = cuda.shared.array(threads, float64)
        tid = cuda.threadIdx.x
        n = values.shape[0]
        acc = float64(0.0)
        for i in range(tid, n, threads):
            acc += values[i]
        buf[tid] = acc
        cuda.syncthreads()
        block_tree_sum(buf, tid, threads)
        if tid == 0:
            out[0] = float32(buf[0] / n)

    return mean


def softmax_cross_entropy(logits, labels, grad, row_loss, loss, *, threads=128, stream=0):
    """Fill ``grad`` (B, C) with dL/dlogits and ``loss[0]`` with the mean loss L.

    ``row_loss`` (B,) is scratch for the per-row losses. ``threads`` (a power of two) per row:
    about the number of classes, since each thread takes every threads-th column.
    """
    check_threads("threads", threads, power_of_two=True)
    rows = logits.shape[0]
    if rows == 0:
        raise ValueError("logits: the mean loss of zero rows is undefined; pass at least one row")
    blocks = min(rows, MAX_ROW_BLOCKS)
    rows_kernel(threads)[blocks, threads, stream](logits, labels, grad, row_loss)
    mean_kernel(threads)[1, threads, stream](row_loss, loss)


# --- what rawgpu kernels compiles ------------------------------------------------------------

#: Classes of every dataset rawgpu trains on (MNIST, Fashion-MNIST, CIFAR-10): what fixes the
#: ``cuda`` engine's thread count for the softmax kernels below.
CLASSES = 10


def compile_targets() -> list:
    """Both kernels as rawgpu's ``cuda`` engine launches them for 10 classes: 16 threads per row,
    the power of two at or above the row length (``_row_threads`` in
    rawgpu/backends/kernel_backend.py; the tests check they agree), float32 logits and
    gradient, int32 labels, float32 per-row losses and a one-element float32 loss."""
    from ._compile import CompileTarget

    threads = 16
    return [
        CompileTarget("softmax_ce_rows", f"threads={threads} ({CLASSES} classes)", rows_kernel(threads),
                      "void(float32[:, ::1], int32[::1], float32[:, ::1], float32[::1])", threads),
        CompileTarget("mean", f"threads={threads}, float64 sum", mean_kernel(threads),
                      "void(float32[::1], float32[::1])", threads),
    ]
