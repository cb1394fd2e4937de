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

* The three matmul kernels are the ladder's ``blocktile2d`` rung (kernels/matmul/blocktile2d.py:
  read its essay): a block computes a ``bm x bn`` tile of the output, thread ``(x, y)`` the
  ``tm x tn`` block at rows ``row0 + y*tm + r`` and columns ``col0 + x*tn + s`` in registers, from
  ``bm x bk`` and ``bk x bn`` tiles of the operands staged in shared memory; operands stored
  transposed are indexed in place (``trans_a``/``trans_b``), never copied. ``launch_bounds``
  holds them to 64 registers at 4 x 4. What differs is only the *epilogue*, what happens to the
  accumulators before the store, a compile-time choice (one compiled kernel each):

  - ``linear_relu``: ``out[i, j] = max(acc + b[j], 0)``, with NaN passed on (not clipped to 0),
    so that a step gone bad reaches the loss, which records it;
  - ``linear_backward_relu``: ``out[i, j] = acc if act[i, j] > 0 else 0`` (``w`` read as
    ``trans_b``);
  - ``weight_grad``: ``dw[i, j] = acc`` (``inp`` read as ``trans_a``, so K is the batch), and
    the blocks of the first row tile (``blockIdx.y == 0``, on their first pass over row tiles)
    also add up, per column, the ``d`` values passing through their shared ``bk x bn`` tile over
    the whole K loop: thread ``t`` keeps the running sum of tile columns ``t, t + threads, ...``
    in registers and writes ``db`` for them at the end. Every ``d`` row reaches exactly one such
    block per column, in order of k, so each ``db[j]`` is summed in a fixed order by one thread:
    deterministic, with no float atomics and no second read of ``d``.

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

Launchers validate shapes cheaply (one-line ValueErrors naming the argument), launch on
``stream``, and never allocate or synchronise. Arrays are C-contiguous: float32 matrices and
vectors, int32 labels and counters, float64 sums; NumPy arrays in the simulator, device arrays
on a GPU. Compile-time constants come from cached factories, as in the matmul ladder: ``config``
for the matmul kernels (GPU defaults, ``SIM_PARAMS`` for the simulator's tiny tiles) and
``threads`` for the loss kernel.
"""

from __future__ import annotations

import functools
import math

from numba import cuda, float32, float64, int32

from ._launch import Launch, check_threads
from .matmul._common import divides, jit, make_config
from .reductions import block_tree_max, block_tree_sum

DEFAULTS = {"bm": 64, "bn": 64, "bk": 8, "tm": 4, "tn": 4}  # 16 x 16 = 256 threads, 4 KiB shared
SIM_PARAMS = {"bm": 6, "bn": 4, "bk": 3, "tm": 3, "tn": 2}  # 4 threads: tiles that divide nothing
#: Threads per row of the loss kernel on a GPU (a power of two for the trees).
THREADS = 256
SIM_THREADS = 4  # fewer than 10 classes: each thread owns several

#: CUDA's limit on gridDim.y; row tiles past it are looped over inside the matmul kernels.
MAX_GRID_Y = 65535
#: Blocks for the loss kernel; rows past it loop inside the kernel. Tests lower both.
MAX_ROW_BLOCKS = 65535
#: The largest class count ``linear_softmax_ce`` takes: the loop over a row's classes is short.
MAX_CLASSES = 1024

# The epilogues of the tiled kernel (compile-time constants).
BIAS_RELU, RELU_MASK, WEIGHT_GRAD = "bias_relu", "relu_mask", "weight_grad"


def _geometry(p):
    divides("tm", p["tm"], "bm", p["bm"])
    divides("tn", p["tn"], "bn", p["bn"])
    return (p["bn"] // p["tn"], p["bm"] // p["tm"]), (p["bm"], p["bn"]), 4 * p["bk"] * (p["bm"] + p["bn"])


def config(**params):
    """The matmul kernels' tiles: ``DEFAULTS`` overridden by ``params`` (bm, bn, bk, tm, tn),
    checked. Raises ValueError naming the offending parameter."""
    return make_config("fused", DEFAULTS, params, _geometry)


def sim_config():
    """Tiny tiles for Numba's CUDA simulator (one OS thread per CUDA thread)."""
    return config(**SIM_PARAMS)


# --- the tiled matmul with an epilogue --------------------------------------------------------


@functools.lru_cache(maxsize=None)
def tiled_kernel(epilogue: str, bm: int, bn: int, bk: int, tm: int, tn: int):
    """``blocktile2d`` with an epilogue: ``kernel(a, b, c, e)`` computes ``op(a) @ op(b)`` into
    ``c`` (M x N) through ``e``:

    ``BIAS_RELU``    a (M, K), b (K, N), e = bias (N,):       c = relu(a @ b + e)
    ``RELU_MASK``    a (M, K), b (N, K), e = act (M, N):      c = (a @ b.T) * [e > 0]
    ``WEIGHT_GRAD``  a (K, M), b (K, N), e = column sums (N,): c = a.T @ b, e = sum_k b[k, :]
    """
    if epilogue not in (BIAS_RELU, RELU_MASK, WEIGHT_GRAD):
        raise ValueError(f"epilogue: unknown {epilogue!r}")
    trans_a = epilogue == WEIGHT_GRAD
    trans_b = epilogue == RELU_MASK
    bias_relu = epilogue == BIAS_RELU
    relu_mask = epilogue == RELU_MASK
    col_sums = epilogue == WEIGHT_GRAD
    threads_x = bn // tn
    threads = threads_x * (bm // tm)
    loads_a = -(-(bm * bk) // threads)  # values of each shared tile one thread copies
    loads_b = -(-(bk * bn) // threads)
    even_a = (bm * bk) % threads == 0
    even_b = (bk * bn) % threads == 0
    sum_cols = -(-bn // threads)  # tile columns whose sums one thread keeps (weight_grad)

    @jit(threads, tm * tn)
    def fused_tiled(a, b, c, e):
        As = cuda.shared.array((bm, bk), float32)
        Bs = cuda.shared.array((bk, bn), float32)
        acc = cuda.local.array((tm, tn), float32)
        a_reg = cuda.local.array(tm, float32)
        b_reg = cuda.local.array(tn, float32)
        colsum = cuda.local.array(sum_cols, float32)
        m, n = c.shape
        k_len = a.shape[0] if trans_a else a.shape[1]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * threads_x + tx
        col0 = cuda.blockIdx.x * bn

        for row0 in range(cuda.blockIdx.y * bm, m, cuda.gridDim.y * bm):
            first_rows = row0 == 0  # blockIdx.y == 0 on its first pass: it also sums columns
            for r in range(tm):
                for s in range(tn):
                    acc[r, s] = 0.0
            for q in range(sum_cols):
                colsum[q] = 0.0
            for k0 in range(0, k_len, bk):
                for load in range(loads_a):
                    idx = tid + load * threads
                    if even_a or idx < bm * bk:
                        if trans_a:  # a is (K, M): consecutive threads walk M
                            kk = idx // bm
                            ii = idx % bm
                        else:  # a is (M, K): consecutive threads walk K
                            ii = idx // bk
                            kk = idx % bk
                        v = float32(0.0)
                        if row0 + ii < m and k0 + kk < k_len:
                            v = a[k0 + kk, row0 + ii] if trans_a else a[row0 + ii, k0 + kk]
                        As[ii, kk] = v
                for load in range(loads_b):
                    idx = tid + load * threads
                    if even_b or idx < bk * bn:
                        if trans_b:  # b is (N, K): consecutive threads walk K
                            jj = idx // bk
                            kk = idx % bk
                        else:  # b is (K, N): consecutive threads walk N
                            kk = idx // bn
                            jj = idx % bn
                        v = float32(0.0)
                        if col0 + jj < n and k0 + kk < k_len:
                            v = b[col0 + jj, k0 + kk] if trans_b else b[k0 + kk, col0 + jj]
                        Bs[kk, jj] = v
                cuda.syncthreads()

                if col_sums and first_rows:  # the bias gradient, from the tile already here
                    for q in range(sum_cols):
                        jj = tid + q * threads
                        if jj < bn:
                            for kk in range(bk):
                                colsum[q] += Bs[kk, jj]
                for kk in range(bk):
                    for r in range(tm):
                        a_reg[r] = As[ty * tm + r, kk]
                    for s in range(tn):
                        b_reg[s] = Bs[kk, tx * tn + s]
                    for r in range(tm):
                        for s in range(tn):
                            acc[r, s] += a_reg[r] * b_reg[s]
                cuda.syncthreads()

            # The epilogue: applied in registers, before the one store of the tile.
            if bias_relu:
                for s in range(tn):
                    j = col0 + tx * tn + s
                    b_reg[s] = e[j] if j < n else float32(0.0)
            for r in range(tm):
                i = row0 + ty * tm + r
                if i < m:
                    for s in range(tn):
                        j = col0 + tx * tn + s
                        if j < n:
                            v = acc[r, s]
                            if bias_relu:
                                v += b_reg[s]
                                if v < float32(0.0):  # not max(): a NaN must pass, for the loss to see it
                                    v = float32(0.0)
                            if relu_mask:
                                if not e[i, j] > 0:
                                    v = float32(0.0)
                            c[i, j] = v
            if col_sums and first_rows:
                for q in range(sum_cols):
                    jj = tid + q * threads
                    if jj < bn and col0 + jj < n:
                        e[col0 + jj] = colsum[q]

    return fused_tiled


def tiled_launch(epilogue, cfg, m, n, stream=0):
    """The launch of one fused matmul whose output ``c`` is ``m x n``: called as
    ``launch(a, b, c, e)``. None when the output is empty (nothing to write, and CUDA refuses an
    empty grid). The grid covers ``c`` with output tiles, one block each; row tiles past
    ``MAX_GRID_Y`` are looped over inside the kernel."""
    if cfg.variant != "fused":
        raise ValueError(f"cfg: a {cfg.variant!r} config cannot launch a fused kernel; build it with fused.config()")
    if m == 0 or n == 0:
        return None
    rows, cols = cfg.tile_shape
    grid = (-(-n // cols), min(-(-m // rows), MAX_GRID_Y))
    return Launch(tiled_kernel(epilogue, **cfg.params), grid, cfg.block, stream)


def _tiled_launch(epilogue, cfg, a, b, c, e, stream):
    launch = tiled_launch(epilogue, cfg, c.shape[0], c.shape[1], stream)
    if launch is not None:
        launch(a, b, c, e)


def linear_relu(x, w, b, out, *, cfg, stream=0) -> None:
    """``out = relu(x @ w + b)``: x (B, D), w (D, H), b (H,), out (B, H)."""
    rows, inner = x.shape
    if w.shape[0] != inner:
        raise ValueError(f"w: must have {inner} rows (x is {rows}x{inner}), got {w.shape[0]}x{w.shape[1]}")
    cols = w.shape[1]
    if b.shape != (cols,):
        raise ValueError(f"b: must have shape ({cols},) like w's columns, got {tuple(b.shape)}")
    if tuple(out.shape) != (rows, cols):
        raise ValueError(f"out: must be {rows}x{cols}, got {tuple(out.shape)}")
    _tiled_launch(BIAS_RELU, cfg, x, w, out, b, stream)


def linear_backward_relu(d, w, act, out, *, cfg, stream=0) -> None:
    """``out = (d @ w.T) * (act > 0)``: d (B, C), w (H, C) read transposed in place, act (B, H),
    out (B, H). ``out`` must not be ``act``: a block reads act[i, j] only where it writes
    out[i, j], but the launch does not promise that of every future variant."""
    rows, inner = d.shape
    if w.shape[1] != inner:
        raise ValueError(f"w: must have {inner} columns (d is {rows}x{inner}), got {w.shape[0]}x{w.shape[1]}")
    cols = w.shape[0]
    if tuple(act.shape) != (rows, cols):
        raise ValueError(f"act: must be {rows}x{cols}, got {tuple(act.shape)}")
    if tuple(out.shape) != (rows, cols):
        raise ValueError(f"out: must be {rows}x{cols}, got {tuple(out.shape)}")
    if out is act:
        raise ValueError("out: must not be act (pass a separate buffer)")
    _tiled_launch(RELU_MASK, cfg, d, w, out, act, stream)


def weight_grad(inp, d, dw, db, *, cfg, stream=0) -> None:
    """``dw = inp.T @ d`` and ``db = d.sum(axis=0)`` in one launch: inp (B, D) read transposed in
    place, d (B, N), dw (D, N), db (N,)."""
    batch, feats = inp.shape
    if d.shape[0] != batch:
        raise ValueError(f"d: must have {batch} rows like inp, got {d.shape[0]}")
    cols = d.shape[1]
    if tuple(dw.shape) != (feats, cols):
        raise ValueError(f"dw: must be {feats}x{cols}, got {tuple(dw.shape)}")
    if db.shape != (cols,):
        raise ValueError(f"db: must have shape ({cols},), got {tuple(db.shape)}")
    if feats == 0 and cols > 0:
        raise ValueError("inp: has no columns, so no block would write db; pass at least one feature")
    _tiled_launch(WEIGHT_GRAD, cfg, inp, d, dw, db, stream)


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


def linear_softmax_ce(a, w, b, labels, z, dz, row_loss, loss, counters, sums, *, threads, accumulate, stream=0) -> None:
    """The output layer and the loss in one launch: ``z = a @ w + b``, ``dz = dL/dz``, the
    per-row losses, ``loss[0]`` = their mean, and (with ``accumulate``) the step counters.

    a (B, H), w (H, C), b (C,), labels int32 (B,), z and dz (B, C), row_loss (B,), loss (1,),
    counters int32 (4,) = [steps, first_bad_step, bad_labels, blocks_done], sums float64 (2,) =
    [sum of row losses, sum of step means]; ``counters[3]`` must be 0 (the kernel leaves it so).
    ``threads``: a power of two per row block; C <= 1024.
    """
    rows, hidden = a.shape
    if w.shape[0] != hidden:
        raise ValueError(f"w: must have {hidden} rows (a is {rows}x{hidden}), got {w.shape[0]}x{w.shape[1]}")
    classes = w.shape[1]
    launch = softmax_ce_launch(rows, classes, threads, accumulate, stream)  # checks rows, classes, threads
    if b.shape != (classes,):
        raise ValueError(f"b: must have shape ({classes},), got {tuple(b.shape)}")
    if labels.shape != (rows,):
        raise ValueError(f"labels: must have shape ({rows},), got {tuple(labels.shape)}")
    for name, arr, shape in (("z", z, (rows, classes)), ("dz", dz, (rows, classes)), ("row_loss", row_loss, (rows,)),
                             ("loss", loss, (1,)), ("counters", counters, (4,)), ("sums", sums, (2,))):
        if tuple(arr.shape) != shape:
            raise ValueError(f"{name}: must have shape {shape}, got {tuple(arr.shape)}")
    launch(a, w, b, labels, z, dz, row_loss, loss, counters, sums)


def softmax_ce_launch(rows, classes, threads, accumulate, stream=0):
    """The launch of the loss kernel for ``rows`` rows of ``classes`` logits: one block of
    ``threads`` per row (rows past ``MAX_ROW_BLOCKS`` loop inside the kernel). Called with the
    arguments of :func:`linear_softmax_ce`, in its order. The limits are checked here, once per
    shape: at least one row, 1..MAX_CLASSES classes, a power-of-two thread count."""
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
    """The four fused kernels as the training step launches them: the matmul kernels at the GPU
    default tiles (64 x 64, bk 8, 4 x 4, 256 threads), the loss kernel at 256 threads, both
    ``accumulate`` flavours (training and evaluation), with the exact argument types."""
    from ._compile import CompileTarget

    cfg = config()
    sig_vec = f"void({_M2}, {_M2}, {_M2}, {_V})"
    sig_mat = f"void({_M2}, {_M2}, {_M2}, {_M2})"
    targets = [
        CompileTarget("linear_relu", cfg.text(), tiled_kernel(BIAS_RELU, **cfg.params), sig_vec, cfg.threads),
        CompileTarget("linear_backward_relu", f"{cfg.text()} NT", tiled_kernel(RELU_MASK, **cfg.params), sig_mat, cfg.threads),
        CompileTarget("weight_grad", f"{cfg.text()} TN + column sums", tiled_kernel(WEIGHT_GRAD, **cfg.params), sig_vec, cfg.threads),
    ]
    sig_ce = (f"void({_M2}, {_M2}, {_V}, int32[::1], {_M2}, {_M2}, {_V}, {_V}, int32[::1], float64[::1])")
    for acc in (True, False):
        targets.append(CompileTarget("linear_softmax_ce", f"threads={THREADS} accumulate={acc}, float64 mean",
                                     softmax_ce_kernel(THREADS, acc), sig_ce, THREADS))
    return targets
