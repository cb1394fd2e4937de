"""Element-wise kernels of the hidden layer: bias (+ ReLU) forward, ReLU backward.

These do one or two flops per element, so they are limited by memory bandwidth, never by
arithmetic: the only thing that matters is that each element is read and written once, with
neighbouring threads touching neighbouring addresses (coalesced). That is also why the bias add
and the ReLU are *fused* into one kernel: done separately, the (B, H) activation would make a
second round trip through global memory.

Every kernel is a *grid-stride loop* over the flattened array: thread ``t`` of the whole grid
handles elements ``t, t + T, t + 2T, ...`` where ``T`` is the number of threads in the grid. A
grid smaller than the array is then still correct, which lets the launcher cap the grid (and
the tests force several passes with a tiny ``max_blocks``).
"""

from __future__ import annotations

import functools

from numba import cuda, float32

from ._launch import check_threads, grid_stride_blocks


@functools.lru_cache(maxsize=None)
def bias_kernel(relu: bool):
    """``out = x + bias[None, :]``, then ``max(., 0)`` when ``relu`` (a compile-time constant)."""

    @cuda.jit(cache=True)
    def bias_act(x, bias, out):
        rows, cols = x.shape
        for idx in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
            # The flat index walks along the rows, so neighbouring threads touch neighbouring
            # addresses; the bias needs the column back.
            i = idx // cols
            j = idx - i * cols
            v = x[i, j] + bias[j]
            if relu and v < float32(0.0):
                v = float32(0.0)
            out[i, j] = v

    return bias_act


@cuda.jit(cache=True)
def _relu_backward_kernel(grad, act, out):
    # Flat (1-D) views: every element is independent and no column index is needed.
    for idx in range(cuda.grid(1), grad.shape[0], cuda.gridsize(1)):
        # relu(h) = max(h, 0) has derivative 1 where h > 0 and 0 elsewhere; a = relu(h) > 0
        # exactly where h > 0, so the activation (which the forward pass kept) is the mask.
        out[idx] = grad[idx] if act[idx] > float32(0.0) else float32(0.0)


def _launch(kernel, arrays, threads, max_blocks, stream):
    check_threads("threads", threads)
    n = arrays[0].size
    if n == 0:
        return  # nothing to do, and CUDA refuses a grid of zero blocks
    kernel[grid_stride_blocks(n, threads, max_blocks), threads, stream](*arrays)


def bias_add(x, bias, out, *, threads=256, max_blocks=None, stream=0):
    """``out = x + bias[None, :]`` for x (B, N); ``out`` may be ``x``. The output layer's bias."""
    _launch(bias_kernel(False), (x, bias, out), threads, max_blocks, stream)


def bias_relu(x, bias, out, *, threads=256, max_blocks=None, stream=0):
    """``out = max(x + bias[None, :], 0)`` for x (B, H); ``out`` may be ``x``."""
    _launch(bias_kernel(True), (x, bias, out), threads, max_blocks, stream)


def relu_backward(grad, act, out, *, threads=256, max_blocks=None, stream=0):
    """``out = grad * (act > 0)``, the gradient through a ReLU; ``out`` may be ``grad``."""
    n = grad.size  # contiguous, so a flat view is free
    _launch(_relu_backward_kernel, (grad.reshape(n), act.reshape(n), out.reshape(n)), threads, max_blocks, stream)


# --- what rawgpu kernels compiles ------------------------------------------------------------


def compile_targets() -> list:
    """The three kernels as rawgpu's ``cuda`` engine launches them: 256 threads per block
    (``LAUNCH["cuda"]["threads"]`` in rawgpu/backends/kernel_backend.py; the tests check they
    agree), C-contiguous float32 arrays, the bias 1-D and ReLU backward over flat views."""
    from ._compile import CompileTarget

    bias_sig = "void(float32[:, ::1], float32[::1], float32[:, ::1])"
    return [
        CompileTarget("bias_act", "relu=False (bias_add)", bias_kernel(False), bias_sig, 256),
        CompileTarget("bias_act", "relu=True (bias_relu)", bias_kernel(True), bias_sig, 256),
        CompileTarget("relu_backward", "flat views", _relu_backward_kernel,
                      "void(float32[::1], float32[::1], float32[::1])", 256),
    ]
