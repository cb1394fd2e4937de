"""Launch arithmetic shared by the element-wise kernels: how many blocks a grid-stride loop gets."""

from __future__ import annotations

import math

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
