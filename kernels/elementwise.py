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

from numba import cuda, float32

from ._launch import check_threads, grid_stride_blocks


@cuda.jit
def _bias_add_kernel(x, bias, out):
    rows, cols = x.shape
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for idx in range(start, rows * cols, stride):
        i = idx // cols
        j = idx - i * cols
        out[i, j] = x[i, j] + bias[j]


@cuda.jit
def _bias_relu_kernel(x, bias, out):
    rows, cols = x.shape
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for idx in range(start, rows * cols, stride):
        i = idx // cols
        j = idx - i * cols
        v = x[i, j] + bias[j]
        out[i, j] = v if v > float32(0.0) else float32(0.0)


@cuda.jit
def _relu_backward_kernel(grad, act, out):
    rows, cols = grad.shape
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for idx in range(start, rows * cols, stride):
        i = idx // cols
        j = idx - i * cols
        # relu(h) = max(h, 0) has derivative 1 where h > 0 and 0 elsewhere; a = relu(h) > 0
        # exactly where h > 0, so the activation (which the forward pass kept) is the mask.
        out[i, j] = grad[i, j] if act[i, j] > float32(0.0) else float32(0.0)


def _launch(kernel, arrays, threads, max_blocks, stream):
    check_threads("threads", threads)
    rows, cols = arrays[0].shape
    if rows * cols == 0:
        return  # nothing to do, and CUDA refuses a grid of zero blocks
    blocks = grid_stride_blocks(rows * cols, threads, max_blocks)
    kernel[blocks, threads, stream](*arrays)


def bias_add(x, bias, out, *, threads=256, max_blocks=None, stream=0):
    """``out = x + bias[None, :]`` for x (B, N); ``out`` may be ``x``. The output layer's bias."""
    _launch(_bias_add_kernel, (x, bias, out), threads, max_blocks, stream)


def bias_relu(x, bias, out, *, threads=256, max_blocks=None, stream=0):
    """``out = max(x + bias[None, :], 0)`` for x (B, H); ``out`` may be ``x``."""
    _launch(_bias_relu_kernel, (x, bias, out), threads, max_blocks, stream)


def relu_backward(grad, act, out, *, threads=256, max_blocks=None, stream=0):
    """``out = grad * (act > 0)``, the gradient through a ReLU; ``out`` may be ``grad``."""
    _launch(_relu_backward_kernel, (grad, act, out), threads, max_blocks, stream)
