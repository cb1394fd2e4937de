"""SGD with momentum, in place, with PyTorch's semantics (torch.optim.SGD):

    g = grad + weight_decay * param          (L2 regularisation folded into the gradient)
    v = momentum * v + g                     (the velocity: a running sum of past gradients)
    param -= lr * (g + momentum * v)         with nesterov (look ahead along the velocity)
    param -= lr * v                          without

PyTorch sets ``v = g`` on its first step; starting from ``v = 0`` gives the same value
(``momentum * 0 + g``), so the velocity can simply start at zero. ``grad`` is not modified.

Each element is independent: a grid-stride loop over the flattened parameter, reading three
arrays and writing two (about 20 bytes per element, a few flops: bandwidth-bound). ``nesterov``
is a compile-time constant (one kernel each), so the branch costs nothing.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda, float32

from ._launch import Launch, check_threads, grid_stride_blocks


@functools.lru_cache(maxsize=None)
def sgd_kernel(nesterov: bool):
    @cuda.jit(cache=True)
    def sgd_momentum(param, grad, velocity, lr, momentum, weight_decay):
        # float32 arithmetic whatever type the scalars arrive as. A Python float reaches Numba
        # as a float64, and one float64 operand makes the whole update float64 (the real
        # compile showed 50 float64 instructions): an H100 runs those at half the float32 rate,
        # a consumer GPU at 1/64. The launcher below passes float32 already; these casts make
        # a direct launch safe too, and cost nothing when the scalars are float32.
        lr32, mom32, wd32 = float32(lr), float32(momentum), float32(weight_decay)
        for idx in range(cuda.grid(1), param.shape[0], cuda.gridsize(1)):
            g = grad[idx] + wd32 * param[idx]
            v = mom32 * velocity[idx] + g
            velocity[idx] = v
            if nesterov:
                param[idx] -= lr32 * (g + mom32 * v)
            else:
                param[idx] -= lr32 * v

    return sgd_momentum


def sgd_momentum(param, grad, velocity, lr, momentum, weight_decay, nesterov, *, threads=256, max_blocks=None, stream=0):
    """One SGD-momentum step on ``param`` and ``velocity`` (same shape as ``grad``, 1-D or 2-D)."""
    check_threads("threads", threads)
    n = param.size
    if n == 0:
        return
    # The update does not care about the shape: run over the flat (contiguous) buffer.
    flat = [arr.reshape(n) for arr in (param, grad, velocity)]
    sgd_launch(n, nesterov, threads=threads, max_blocks=max_blocks, stream=stream)(*flat, *hyper_args(lr, momentum, weight_decay))


def sgd_launch(n, nesterov, threads=256, max_blocks=None, stream=0):
    """The launch of one SGD step over ``n`` (> 0) elements, a grid-stride loop: called as
    ``launch(param, grad, velocity, *hyper_args(lr, momentum, weight_decay))`` on flat arrays."""
    return Launch(sgd_kernel(bool(nesterov)), grid_stride_blocks(n, threads, max_blocks), threads, stream)


def hyper_args(lr, momentum, weight_decay):
    """The three hyperparameters as the kernel takes them: float32 scalars (see the kernel).
    NumPy's float32, not Numba's: calling Numba's type as a converter costs microseconds."""
    return np.float32(lr), np.float32(momentum), np.float32(weight_decay)


# --- what rawgpu kernels compiles ------------------------------------------------------------


def compile_targets() -> list:
    """Both kernels (plain and Nesterov) as rawgpu's ``cuda`` engine launches them: 256 threads
    per block (``LAUNCH["cuda"]["threads"]``; the tests check they agree), flat float32 arrays
    and the three hyperparameters as float32 scalars, which is what :func:`sgd_momentum` passes."""
    from ._compile import CompileTarget

    sig = "void(float32[::1], float32[::1], float32[::1], float32, float32, float32)"
    return [CompileTarget("sgd_momentum", f"nesterov={flag}", sgd_kernel(flag), sig, 256) for flag in (False, True)]
