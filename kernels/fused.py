"""Fused kernels for a lean training step: six launches, no host synchronisation.

One training step of the two-layer network

    a = relu(x @ W1 + b1)            x (B, D), W1 (D, H): the hidden layer
    z = a @ W2 + b2                  W2 (H, C): the logits
    L = mean_i (logsumexp(z_i) - z_i[y_i])

and its hand-derived backward pass runs as exactly six launches:

    1. linear_relu            a   = relu(x @ W1 + b1)
    2. linear_softmax_ce      z, dz = dL/dz, the per-row losses, the mean loss, the step counters
    3. weight_grad            dW2 = a.T @ dz,  db2 = column sums of dz
    4. linear_backward_relu   dh  = (dz @ W2.T) * [a > 0]
    5. weight_grad            dW1 = x.T @ dh,  db1 = column sums of dh
    6. SGD-momentum over one flat buffer holding W1, b1, W2, b2 (kernels/optimizer.py)

Why fuse. At this network's size (B = 128, D = 784, H = 128, C = 10) a step is a few dozen
MFLOP: the GPU finishes each kernel in microseconds, and what costs is the launches themselves
(a few microseconds each) and every trip of an activation out to global memory and back in.
Each fusion below removes one launch and one such round trip: the bias and ReLU are applied to
the matmul's accumulators while they are still in registers (no ``x @ W1`` matrix written and
re-read by a bias kernel); the ReLU mask is applied the same way in the backward matmul; the bias
gradient is summed from the tiles of ``d`` that the weight-gradient matmul already brings into
shared memory (no second pass over ``d``); and the output layer, the softmax, the loss, its mean
and the training counters are one kernel (no logits round trip, no separate mean kernel, and no
copy of the loss to the host each step: the counters and sums stay on the device, where a CUDA
graph can replay the step, and the host reads them when it wants to).

Who computes what.

* The three matmul launches (1, 3, 4, 5) are rungs of the matmul ladder with an *epilogue*:
  the shared tiled kernel of kernels/matmul/_tiles.py (read it, then the rung modules), built
  with what happens to the accumulators before the store as a compile-time choice (one compiled
  kernel each). Which rung and tile each product runs on is the autotuner's choice per shape
  (kernels/matmul/tuning.py): at this network's size, ``splitk`` for the forward product (16
  tiles of 32 x 32, K = 784 in 9 slices: 144 blocks for 132 SMs) and for dW1, smaller tiles for
  the rest; ``rawgpu info`` prints every pick and why. The products (:data:`STEP_PRODUCTS`):

  - ``linear_relu`` (``BIAS_RELU``): ``out[i, j] = max(acc + b[j], 0)``, with NaN passed on (not
    clipped to 0), so that a step gone bad reaches the loss, which records it;
  - ``linear_backward_relu`` (``RELU_MASK``): ``out[i, j] = acc if act[i, j] > 0 else 0``
    (``w`` read as ``trans_b``);
  - ``weight_grad`` (``WEIGHT_GRAD``): ``dw[i, j] = acc`` (``inp`` read as ``trans_a``, so K is
    the batch), and the blocks of the first row tile also add up, per column, the ``d`` values
    passing through their shared tiles: each ``db[j]`` is summed in a fixed order by one thread,
    deterministic, with no float atomics and no second read of ``d``. (Split over K, each slice's
    block sums its slice, and the tile's last block adds the slices' sums in order.)

* ``linear_softmax_ce``: one block per row ``i`` (a grid-stride loop over rows past
  ``MAX_ROW_BLOCKS``, uniform across the block so its barriers stay legal). Thread ``t`` owns the
  classes ``j = t, t + threads, ...`` (for C <= threads, just class ``t``): it computes the logit
  ``z[i, j] = b[j] + sum_h a[i, h] w[h, j]`` from ``a[i, :]``, which the block stages in shared
  memory ``threads`` values at a time, while the warp reads ``w[h, j0:j0 + 32]`` coalesced. Then
  the stable softmax cross-entropy of the row exactly as in kernels/loss.py: a shared-memory tree
  for the row maximum ``m``, another for ``s = sum_j exp(z_j - m)``, ``row_loss[i] = (m - z[i, y])
  + log(s)`` and ``dz[i, j] = (p_j - [j == y]) / B``. A label outside ``[0, C)`` makes the row's
  loss and gradient NaN and adds 1 to ``counters[2]`` (an integer atomic: exact in any order).

  The batch mean, in the same launch: a *last-block reduction*. Each block, having written its
  rows, makes the writes visible device-wide (``threadfence``) and then one of its threads
  increments ``counters[3]`` with an atomic. The block that draws ``gridDim.x - 1`` knows every
  other block's rows are in memory; it alone sums ``row_loss[0:B]`` -- each thread a fixed strided
  subset in float64, then a float64 tree in shared memory -- so the order of additions, and the
  loss's bits, are the same every run. (It has never loaded those addresses before, so no stale
  copy can sit in its L1.) Its thread 0 writes ``loss[0] = sum / B`` in float32 and sets
  ``counters[3]`` back to 0, so the next launch or CUDA-graph replay starts clean. float64 here
  is the one float64 in these kernels: one block, a few instructions per row, and a float32 sum
  of many rows would lose digits. With ``accumulate`` (compile-time; training True, evaluation
  False) it also keeps the running statistics the host used to need a sync for:

    counters (int32[4]) = [steps, first_bad_step, bad_labels, blocks_done]
    sums (float64[2])   = [sum of row losses, sum of step means]

  ``counters[0]`` counts launches (the step number, 1-based after the increment); ``sums[0] +=``
  the row-loss sum and ``sums[1] +=`` the mean; if the mean is not finite and ``counters[1]`` is
  still 0, ``counters[1]`` becomes this step's number. The caller zeroes both arrays once.

What is here: the loss kernel and the step's *launch plans* (:func:`product_launch`,
:func:`softmax_ce_launch`), which work out a launch once per shape; the training step
(rawgpu/backends/kernel_backend.py) keeps them and calls them each step with nothing left to
decide. The op layer (rawgpu/ops.py) has checked the arrays by then. Arrays are C-contiguous:
float32 matrices and vectors, int32 labels and counters, float64 sums; NumPy arrays in the
simulator, device arrays on a GPU. The launches never allocate or synchronise.
"""

from __future__ import annotations

import functools
import math

from numba import cuda, float32, float64, int32

from . import matmul
from ._launch import Launch, check_threads
from .matmul._common import jit
from .matmul._tiles import BIAS_RELU, RELU_MASK, WEIGHT_GRAD
from .reductions import block_tree_max, block_tree_sum

#: Threads per row of the loss kernel on a GPU (a power of two for the trees).
THREADS = 256
SIM_THREADS = 4  # fewer than 10 classes: each thread owns several

#: Blocks for the loss kernel; rows past it loop inside the kernel. Tests lower it.
MAX_ROW_BLOCKS = 65535
#: The largest class count ``linear_softmax_ce`` takes: the loop over a row's classes is short.
MAX_CLASSES = 1024

#: The step's matmuls: (epilogue, trans_a, trans_b) per op. Called as ``launch(a, b, c, e, split)``:
#:   linear_relu           a = x (B, D), b = w (D, H), c = out (B, H), e = bias (H,)
#:   linear_backward_relu  a = d (B, C), b = w (H, C), c = out (B, H), e = act (B, H)
#:   weight_grad           a = inp (B, D), b = d (B, N), c = dw (D, N), e = db (N,)
STEP_PRODUCTS = {
    "linear_relu": (BIAS_RELU, False, False),
    "linear_backward_relu": (RELU_MASK, False, True),
    "weight_grad": (WEIGHT_GRAD, True, False),
}


def product_shape(op: str, a_shape, b_shape):
    """``(M, N, K, trans_a, trans_b)`` of one of the step's products from its operands' shapes:
    what the autotuner is asked about."""
    _, trans_a, trans_b = STEP_PRODUCTS[op]
    m, k = (a_shape[1], a_shape[0]) if trans_a else a_shape
    n = b_shape[0] if trans_b else b_shape[1]
    return m, n, k, trans_a, trans_b


def product_launch(op: str, variant: str, cfg, m: int, n: int, stream=0):
    """The launch of one of the step's products (``STEP_PRODUCTS``) whose output is ``m x n``, on
    the rung ``variant`` at ``cfg``; None when the output is empty."""
    epilogue, trans_a, trans_b = STEP_PRODUCTS[op]
    return matmul.tiled_launch(variant, cfg, epilogue, trans_a, trans_b, m, n, stream)


# --- the output layer, the loss and its mean ---------------------------------------------------


@functools.lru_cache(maxsize=None)
def softmax_ce_kernel(threads: int, accumulate: bool):
    """One block of ``threads`` (a power of two) per row; see the module's essay. Declared with
    ``launch_bounds`` for 64 registers per thread (left alone, ptxas took 72 on sm_90 and 94 on
    sm_80, for no gain: the kernel is bound by its barriers and memory, not by registers)."""

    @jit(threads, 16)
    def linear_softmax_ce(a, w, bias, labels, z, dz, row_loss, loss, counters, sums):
        a_s = cuda.shared.array(threads, float32)  # a chunk of a[i, :]
        buf = cuda.shared.array(threads, float32)  # the row's max and sum trees
        tot = cuda.shared.array(threads, float64)  # the last block's float64 sum
        last = cuda.shared.array(1, int32)  # 1 in the block that finished last
        rows, hidden = a.shape
        classes = w.shape[1]
        tid = cuda.threadIdx.x
        inv_rows = float32(1.0) / float32(rows)
        nan = float32(math.nan)

        for i in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
            # 1. the logits: thread t computes z[i, j] for j = t, t + threads, ...
            for j0 in range(0, classes, threads):
                j = j0 + tid
                acc = float32(0.0)
                for h0 in range(0, hidden, threads):
                    if h0 + tid < hidden:
                        a_s[tid] = a[i, h0 + tid]
                    cuda.syncthreads()
                    if j < classes:
                        for hh in range(min(threads, hidden - h0)):
                            acc += a_s[hh] * w[h0 + hh, j]
                    cuda.syncthreads()  # a_s is rewritten by the next chunk
                if j < classes:
                    z[i, j] = acc + bias[j]
            # 2. the row maximum (each thread re-reads only the logits it wrote itself)
            mx = -float32(math.inf)
            for j in range(tid, classes, threads):
                if z[i, j] > mx:
                    mx = z[i, j]
            buf[tid] = mx
            cuda.syncthreads()
            block_tree_max(buf, tid, threads)
            mx = buf[0]
            cuda.syncthreads()
            # 3. the sum of exp(z - max)
            s = float32(0.0)
            for j in range(tid, classes, threads):
                s += math.exp(z[i, j] - mx)
            buf[tid] = s
            cuda.syncthreads()
            block_tree_sum(buf, tid, threads)
            s = buf[0]
            cuda.syncthreads()  # the next row reuses buf
            # 4. the row's loss and gradient
            y = labels[i]
            valid = 0 <= y < classes
            if not valid and tid == 0:
                row_loss[i] = nan
                cuda.atomic.add(counters, 2, 1)
            inv_s = float32(1.0) / s
            for j in range(tid, classes, threads):
                zj = z[i, j]
                p = math.exp(zj - mx) * inv_s
                if j == y:
                    p -= float32(1.0)
                    row_loss[i] = (mx - zj) + math.log(s)  # why this order: kernels/loss.py
                dz[i, j] = p * inv_rows if valid else nan

        # 5. the batch mean: the block that finishes last adds up every row's loss.
        cuda.threadfence()  # this block's row losses are visible device-wide ...
        cuda.syncthreads()  # ... for all its threads, before it reports done
        if tid == 0:
            done = cuda.atomic.add(counters, 3, 1)
            last[0] = 1 if done == cuda.gridDim.x - 1 else 0
        cuda.syncthreads()
        if last[0] != 0:  # uniform across the block: the tree's barriers are legal
            part = float64(0.0)
            for k in range(tid, rows, threads):
                part += float64(row_loss[k])
            tot[tid] = part
            cuda.syncthreads()
            block_tree_sum(tot, tid, threads)
            if tid == 0:
                total = tot[0]
                mean = total / float64(rows)
                loss[0] = float32(mean)
                counters[3] = 0  # ready for the next launch (or graph replay)
                if accumulate:
                    step = counters[0] + 1
                    counters[0] = step
                    sums[0] += total
                    sums[1] += mean
                    if (math.isnan(mean) or math.isinf(mean)) and counters[1] == 0:
                        counters[1] = step

    return linear_softmax_ce


def softmax_ce_launch(rows, classes, threads, accumulate, stream=0):
    """The launch of the loss kernel for ``rows`` rows of ``classes`` logits: one block of
    ``threads`` per row (rows past ``MAX_ROW_BLOCKS`` loop inside the kernel). The output layer
    and the loss in one launch: ``z = a @ w + b``, ``dz = dL/dz``, the per-row losses, ``loss[0]``
    = their mean, and (with ``accumulate``) the step counters. Called as ``launch(a, w, b, labels,
    z, dz, row_loss, loss, counters, sums)``: a (B, H), w (H, C), b (C,), labels int32 (B,), z and
    dz (B, C), row_loss (B,), loss (1,), counters int32 (4,) = [steps, first_bad_step, bad_labels,
    blocks_done], sums float64 (2,) = [sum of row losses, sum of step means]; ``counters[3]`` must
    be 0 (the kernel leaves it so). The limits are checked here, once per shape: at least one row,
    1..MAX_CLASSES classes, a power-of-two thread count."""
    check_threads("threads", threads, power_of_two=True)
    if rows == 0:
        raise ValueError("a: the mean loss of zero rows is undefined; pass at least one row")
    if not 1 <= classes <= MAX_CLASSES:
        raise ValueError(f"w: must have 1..{MAX_CLASSES} columns (classes), got {classes}")
    return Launch(softmax_ce_kernel(threads, bool(accumulate)), min(rows, MAX_ROW_BLOCKS), threads, stream)


# --- what rawgpu kernels compiles ------------------------------------------------------------

_M2 = "float32[:, ::1]"
_V = "float32[::1]"


def compile_targets() -> list:
    """The step's kernels as the ``cuda`` engine launches them: its four matmuls (the ladder's
    rungs with epilogues, :func:`step_targets`) and the loss kernel at 256 threads, both
    ``accumulate`` flavours (training and evaluation), with the exact argument types."""
    from ._compile import CompileTarget

    sig_ce = (f"void({_M2}, {_M2}, {_V}, int32[::1], {_M2}, {_M2}, {_V}, {_V}, int32[::1], float64[::1])")
    return step_targets() + [CompileTarget("linear_softmax_ce", f"threads={THREADS} accumulate={acc}, float64 mean",
                                           softmax_ce_kernel(THREADS, acc), sig_ce, THREADS) for acc in (True, False)]


def step_targets(sms: int = 132) -> list:
    """The step's four matmul launches for the 784-128-10 network at batch 128, each at the rung
    and tile the autotuner picks on a GPU of ``sms`` SMs (an H100's 132 by default), with its
    epilogue: what the ``cuda`` engine launches there."""
    from ._compile import CompileTarget
    from .matmul import tuning

    targets = []
    for op, m, n, k, trans_a, trans_b in tuning.step_products():
        variant, params, _ = tuning.pick(m, n, k, trans_a, trans_b, sms=sms)
        cfg = matmul.config(variant, **params)
        epilogue = STEP_PRODUCTS[op][0]
        e = _M2 if epilogue == RELU_MASK else _V
        split = "Tuple((float32[:, :, ::1], int32[::1]))" if variant == "splitk" else "Tuple(())"
        kernel = matmul.rung(variant).kernel(trans_a, trans_b, **cfg.params, epilogue=epilogue)
        flags = ("T" if trans_a else "N") + ("T" if trans_b else "N")
        targets.append(CompileTarget(op, f"{m}x{n}x{k} {flags}: {variant} {cfg.text()}", kernel,
                                     f"void({_M2}, {_M2}, {_M2}, {e}, {split})", cfg.threads))
    return targets
