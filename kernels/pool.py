"""2x2 max-pooling with stride 2 (NCHW): the forward pass keeping the argmax, and its backward.

Both are pure data movement (three comparisons per output, no arithmetic to speak of), so, like
kernels/elementwise.py, what matters is that every element is read and written once, coalesced,
in a grid-stride loop (thread ``t`` of the grid takes flat elements ``t, t + T, ...``).

* forward: one thread per *output* element ``(n, c, y, x)``: it reads the window
  ``x[n, c, 2y:2y+2, 2x:2x+2]`` and writes the largest value and its index ``h * W + w`` in the
  image plane (int32, as PyTorch's ``return_indices``). Ties go to the first in row-major order;
  a NaN wins, so a step gone bad reaches the loss. An odd last row or column is dropped (floor).
* backward: one thread per *input* element ``(n, c, h, w)``: its gradient is ``dy`` of the window
  it sits in if the forward pass picked it, else 0. Windows do not overlap, so no two outputs
  send gradient to the same input: each input is written exactly once (zeros included), with no
  atomics and no separate zeroing pass, and neighbouring threads write neighbouring addresses.
"""

from __future__ import annotations

import math

from numba import cuda, float32

from ._launch import Launch, check_threads, grid_stride_blocks


@cuda.jit(device=True, inline="always")
def _unflatten(idx, chans, height, width):
    """A flat NCHW index as ``(n, c, y, x)``."""
    x = idx % width
    rest = idx // width
    y = rest % height
    rest //= height
    return rest // chans, rest % chans, y, x


@cuda.jit(cache=True)
def maxpool2x2_kernel(x, out, argmax):
    n_img, chans, ho, wo = out.shape
    w_in = x.shape[3]
    total = n_img * chans * ho * wo
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        n, c, oy, ox = _unflatten(idx, chans, ho, wo)
        h0, w0 = 2 * oy, 2 * ox
        best = x[n, c, h0, w0]
        pick = h0 * w_in + w0
        for k in range(1, 4):
            h = h0 + k // 2
            w = w0 + k % 2
            v = x[n, c, h, w]
            if v > best or (math.isnan(v) and not math.isnan(best)):
                best = v
                pick = h * w_in + w
        out[n, c, oy, ox] = best
        argmax[n, c, oy, ox] = pick


@cuda.jit(cache=True)
def maxpool2x2_backward_kernel(dy, argmax, dx):
    n_img, chans, h_in, w_in = dx.shape
    ho, wo = dy.shape[2], dy.shape[3]
    total = n_img * chans * h_in * w_in
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        n, c, h, w = _unflatten(idx, chans, h_in, w_in)
        oy, ox = h // 2, w // 2
        g = float32(0.0)
        if oy < ho and ox < wo and argmax[n, c, oy, ox] == h * w_in + w:
            g = dy[n, c, oy, ox]
        dx[n, c, h, w] = g


def _check_shapes(x_shape, out_shape, what):
    n, c, h, w = x_shape
    want = (n, c, h // 2, w // 2)
    if tuple(out_shape) != want:
        raise ValueError(f"{what}: must have shape {want} for an input of shape {tuple(x_shape)}, got {tuple(out_shape)}")


def maxpool_launch(kernel, n, threads, max_blocks=None, stream=0):
    """The launch of a pool kernel over ``n`` elements; None when there are none."""
    check_threads("threads", threads)
    if n == 0:
        return None
    return Launch(kernel, grid_stride_blocks(n, threads, max_blocks), threads, stream)


def maxpool2x2(x, out, argmax, *, threads=256, max_blocks=None, stream=0) -> None:
    """``out`` (N, C, H//2, W//2) = the max of each 2x2 window of ``x`` (N, C, H, W); ``argmax``
    (int32, the same shape as ``out``) = its index ``h * W + w`` in the image plane."""
    _check_shapes(x.shape, out.shape, "out")
    _check_shapes(x.shape, argmax.shape, "argmax")
    launch = maxpool_launch(maxpool2x2_kernel, out.size, threads, max_blocks, stream)
    if launch is not None:
        launch(x, out, argmax)


def maxpool2x2_backward(dy, argmax, dx, *, threads=256, max_blocks=None, stream=0) -> None:
    """``dx`` (N, C, H, W) = ``dy`` (N, C, H//2, W//2) sent back to the inputs ``argmax`` picked,
    0 everywhere else."""
    _check_shapes(dx.shape, dy.shape, "dy")
    _check_shapes(dx.shape, argmax.shape, "argmax")
    launch = maxpool_launch(maxpool2x2_backward_kernel, dx.size, threads, max_blocks, stream)
    if launch is not None:
        launch(dy, argmax, dx)


# --- what rawgpu kernels compiles ------------------------------------------------------------

_T4 = "float32[:, :, :, ::1]"
_I4 = "int32[:, :, :, ::1]"


def compile_targets() -> list:
    """The two pool kernels at 256 threads per block, as the ``cuda`` engine launches them."""
    from ._compile import CompileTarget

    return [
        CompileTarget("maxpool2x2", "grid-stride, argmax", maxpool2x2_kernel, f"void({_T4}, {_T4}, {_I4})", 256),
        CompileTarget("maxpool2x2_backward", "grid-stride, one thread per input", maxpool2x2_backward_kernel,
                      f"void({_T4}, {_I4}, {_T4})", 256),
    ]
