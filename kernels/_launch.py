"""Launch arithmetic shared by the launchers (how many blocks a grid-stride loop gets), and
:class:`Launch`, a launch worked out once for a caller that repeats it."""

from __future__ import annotations

import math

from numba import config

#: Enough blocks to fill any current GPU many times over (an H100 holds 132 SMs x 2048 threads);
#: past this the grid-stride loops take over and each thread handles several elements.
DEFAULT_MAX_BLOCKS = 4096


def check_threads(name: str, threads: int, *, power_of_two: bool = False) -> None:
    """A thread count a block can have (and, for tree reductions, a power of two)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 1024:
        raise ValueError(f"{name}: threads per block must be an integer in 1..1024, got {threads!r}")
    if power_of_two and threads & (threads - 1):
        raise ValueError(f"{name}: must be a power of two for the tree reduction, got {threads}")


def grid_stride_blocks(n: int, threads: int, max_blocks: int | None) -> int:
    """Blocks for ``n`` elements at ``threads`` per block, capped at ``max_blocks``."""
    cap = DEFAULT_MAX_BLOCKS if max_blocks is None else max_blocks
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"max_blocks: must be a positive integer or None, got {max_blocks!r}")
    return max(1, min(math.ceil(n / threads), cap))


class Launch:
    """One kernel with its grid, block and stream, worked out once and then called with arguments.

    A launcher computes its grid from the shapes every time it is called; a caller that launches
    the same shapes again and again (the training step) asks the launcher for a ``Launch`` once per
    shape instead, keeps it, and calls it each step with nothing left to decide.
    """

    __slots__ = ("kernel", "grid", "block", "stream")

    def __init__(self, kernel, grid, block, stream=0):
        self.kernel, self.grid, self.block, self.stream = kernel, grid, block, stream

    def __call__(self, *args) -> None:
        self.kernel[self.grid, self.block, self.stream](*args)

    def specialised(self, *args) -> "Launch":
        """This launch, for arguments of exactly the types of ``args`` from now on.

        Numba picks a kernel's compiled version by looking at the type of every argument at every
        launch; ``Dispatcher.specialize`` compiles one version for these types and skips that
        look, and the launch configuration (``kernel[grid, block, stream]``, an object of its own
        on a GPU) is built once here instead of at every call. The caller promises the types will
        not change: rawgpu's op layer checks dtype, dimensions and contiguity before it launches.
        The specialised kernel comes from Numba's disk cache where an earlier process compiled it
        (see :func:`specialise`).

        In Numba's simulator there is nothing to skip, and ``kernel[...]`` configures the kernel
        object itself rather than making a new one, so a configuration cannot be kept: there the
        launch is returned as it is, and configures the kernel at each call.
        """
        if config.ENABLE_CUDASIM:
            return self
        return _Specialised(specialise(self.kernel, args), self.grid, self.block, self.stream)


#: (kernel, argument types) -> the kernel compiled for exactly those types: see specialise().
_SPECIALISED: dict = {}


def specialise(kernel, args):
    """``kernel.specialize(*args)``, but compiled through Numba's disk cache (GPU only).

    ``Dispatcher.specialize`` makes a new dispatcher with no disk cache, so every process would pay
    the whole JIT compile (NVVM, then the link) of every kernel of its first step. ``cuda.jit``
    given a signature makes the same thing, a dispatcher compiled for exactly these argument types
    that skips the per-launch type dispatch, and with ``cache=True`` it first looks in the cache
    that the kernel's own ``@cuda.jit(cache=True)`` keeps: the same function, closure constants,
    argument types and GPU find the same compiled kernel. Its options are the kernel's. Kept per
    kernel and types, as ``specialize`` keeps its own.
    """
    from numba import cuda

    types = tuple(kernel.typeof_pyval(arg) for arg in args)
    compiled = _SPECIALISED.get((kernel, types))
    if compiled is None:
        compiled = _SPECIALISED[kernel, types] = cuda.jit(types, cache=True, **kernel.targetoptions)(kernel.py_func)
    return compiled


class _Specialised(Launch):
    """A :class:`Launch` with its kernel specialised and its configuration built once (GPU only)."""

    __slots__ = ("_configured",)

    def __init__(self, kernel, grid, block, stream):
        super().__init__(kernel, grid, block, stream)
        self._configured = kernel[grid, block, stream]

    def __call__(self, *args) -> None:
        self._configured(*args)
