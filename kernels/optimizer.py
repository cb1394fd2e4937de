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

from numba import cuda, float32

from ._launch import check_threads, grid_stride_blocks


@functools.lru_cache(maxsize=None)
def sgd_kernel(nesterov: bool):
    @cuda.jit
    def sgd_momentum(param, grad, velocity, lr, momentum, weight_decay):
        for idx in range(cuda.grid(1), param.shape[0], cuda.gridsize(1)):
            g = grad[idx] + weight_decay * param[idx]
            v = momentum * velocity[idx] + g
            velocity[idx] = v
            if nesterov:
                param[idx] -= lr * (g + momentum * v)
            else:
                param[idx] -= lr * v

    return sgd_momentum


def sgd_momentum(param, grad, velocity, lr, momentum, weight_decay, nesterov, *, threads=256, max_blocks=None, stream=0):
    """One SGD-momentum step on ``param`` and ``velocity`` (same shape as ``grad``, 1-D or 2-D)."""
    check_threads("threads", threads)
    n = param.size
    if n == 0:
        return
    # The update does not care about the shape: run over the flat (contiguous) buffer.
    flat = [arr.reshape(n) for arr in (param, grad, velocity)]
    blocks = grid_stride_blocks(n, threads, max_blocks)
    sgd_kernel(bool(nesterov))[blocks, threads, stream](
        *flat, float32(lr), float32(momentum), float32(weight_decay)
    )
