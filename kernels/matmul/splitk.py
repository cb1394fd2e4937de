"""Rung 8, ``splitk``: for thin products, split K across blocks; the last block of each tile adds the slices in a fixed order.

The idea. Every rung so far gives a block one tile of C and the whole of K. That is right when C
has many tiles, and wrong for the products a small network trains with: 128 x 128 from a K of
784 (the first layer's forward product) is 4 tiles of 64 x 64, so 4 blocks for an H100's 132 SMs:
97% of the GPU idles however fast each block is. Split-K cuts K into ``splits`` slices and gives
each (tile, slice) pair its own block (``gridDim.z = splits``): ``splits`` times as many blocks,
each doing ``1 / splits`` of the work. Their partial tiles must then be added up.

How, in one launch. Block (tile, z) stores its partial tile into plane ``z`` of a workspace
``ws`` of shape (splits, M + 1, N), float32, makes its stores visible device-wide
(``threadfence``), and counts itself in the tile's counter with an integer atomic. The block that
draws the last count knows every other slice's partial is in memory: it adds the planes in the
fixed order ``z = 0, 1, ...``, applies the epilogue, stores the tile of C, and sets the counter
back to 0 for the next launch (the same *last-block* pattern as the loss kernel's mean, in
kernels/fused.py). Row M of each plane carries that slice's column sums for the ``WEIGHT_GRAD``
epilogue. The code is the shared tiled kernel's (kernels/matmul/_tiles.py: ``slice_gatherer``),
on rung 6's thread map and conflict-free layout. The launcher allocates nothing: the caller
passes ``(ws, counters)``, the counters zeroed once (:func:`new_workspace` makes both).

What it changes. Not loads per FMA, but *occupancy of the GPU as a whole*: blocks in flight per
SM. The cost: ``splits x M x N`` floats written to the workspace and read back once by the last
blocks (cheap when C is small, which is exactly when split-K pays). What the workspace buys over
adding into C with float atomics: a fixed summation order. Float addition is not associative,
and atomics add in whatever order the blocks happen to finish, so their result can differ in the
last bit from run to run; here every run adds the same numbers in the same order, so the result
is bitwise reproducible (the same seed trains to the same numbers, and a CUDA-graph replay equals
the eager run). The autotuner (``tuning.py``) picks ``splits`` and the tile per shape; split-K
loses when C alone has enough tiles to fill the GPU.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m: pick GPU or simulator before numba.cuda loads
    from rawgpu.kernels.matmul._common import choose_engine

    choose_engine()

import functools  # noqa: E402

import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402

from rawgpu.kernels.matmul._common import divides, make_config  # noqa: E402
from rawgpu.kernels.matmul._tiles import NONE, tiled_kernel  # noqa: E402

DEFAULTS = {"bm": 64, "bn": 64, "bk": 8, "tm": 4, "tn": 4, "pad": 4, "splits": 4}
SIM_PARAMS = {"bm": 6, "bn": 4, "bk": 3, "tm": 3, "tn": 2, "pad": 1, "splits": 3}


def _geometry(p):
    divides("tm", p["tm"], "bm", p["bm"])
    divides("tn", p["tn"], "bn", p["bn"])
    if p["splits"] > 65535:
        raise ValueError(f"splits: at most 65535 (CUDA's gridDim.z), got {p['splits']}")
    shared = 4 * p["bk"] * (p["bm"] + p["bn"] + 2 * p["pad"])
    return (p["bn"] // p["tn"], p["bm"] // p["tm"]), (p["bm"], p["bn"]), shared


def config(**params):
    return make_config("splitk", DEFAULTS, params, _geometry)


#: The signature of a split kernel: a, b, c, e (a stands in where there is no epilogue), (ws, counters).
SIGNATURE = "void(float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[:, ::1], Tuple((float32[:, :, ::1], int32[::1])))"


def workspace_shape(cfg, m: int, n: int) -> tuple:
    """The partial tiles one M x N product needs at ``cfg``: (splits, M + 1, N) float32, C-contiguous
    (row M of each plane holds that slice's column sums, for the ``WEIGHT_GRAD`` epilogue)."""
    return (cfg.params["splits"], m + 1, n)


def counter_shape(cfg, m: int, n: int) -> tuple:
    """The tile counters one M x N product needs: one int32 per output tile, zero before the first
    launch (every launch leaves them zero)."""
    rows, cols = cfg.tile_shape
    return (-(-m // rows) * -(-n // cols),)


def new_workspace(cfg, m: int, n: int, xp=np):
    """``(ws, counters)`` for an M x N product at ``cfg``, made with the array module ``xp``
    (NumPy in the simulator; CuPy, or anything with ``empty`` and ``zeros``, on a GPU)."""
    return xp.empty(workspace_shape(cfg, m, n), np.float32), xp.zeros(counter_shape(cfg, m, n), np.int32)


@functools.lru_cache(maxsize=None)
def kernel(trans_a: bool, trans_b: bool, bm: int, bn: int, bk: int, tm: int, tn: int, pad: int, splits: int,
           epilogue: str = NONE):
    """``kernel(a, b, c, e, (ws, counters))``: ``c = epilogue(op(a) @ op(b))``, K in ``splits``
    slices (see kernels/matmul/_tiles.py)."""
    threads_x = bn // tn
    threads_y = bm // tm

    @cuda.jit(device=True, inline="always")
    def thread_map(tx, ty):  # rung 6's: rows y + r * threads_y, columns x + s * threads_x
        return ty * threads_x + tx, ty, tx

    return tiled_kernel(thread_map, bm=bm, bn=bn, bk=bk, tm=tm, tn=tn, i_step=threads_y, j_step=threads_x,
                        threads=threads_x * threads_y, a_k_major=True, pad=pad, trans_a=trans_a, trans_b=trans_b,
                        epilogue=epilogue, splits=splits)


def check_workspace(cfg, m: int, n: int, workspace) -> None:
    """A one-line ValueError unless ``workspace`` is ``(ws, counters)`` of the shapes and types
    :func:`new_workspace` makes."""
    ws, counters = workspace if isinstance(workspace, tuple) and len(workspace) == 2 else (None, None)
    for name, arr, shape, dtype in (("ws", ws, workspace_shape(cfg, m, n), np.float32),
                                    ("counters", counters, counter_shape(cfg, m, n), np.int32)):
        got = getattr(arr, "shape", None)
        if got is None or tuple(got) != shape or getattr(arr, "dtype", None) != dtype:
            raise ValueError(f"workspace: splitk needs (ws, counters), {name} {np.dtype(dtype).name} of shape {shape}; "
                             f"make them with splitk.new_workspace(cfg, m, n)")


def launch(dispatcher, cfg, a, b, out, grid, stream, workspace=None):
    """One block per (tile, slice of K), one launch, no allocation: ``workspace`` is
    ``(ws, counters)`` from :func:`new_workspace` (``ws`` is overwritten; ``counters`` are left 0)."""
    check_workspace(cfg, out.shape[0], out.shape[1], workspace)
    dispatcher[(grid[0], grid[1], cfg.params["splits"]), cfg.block, stream](a, b, out, a, workspace)


if __name__ == "__main__":
    import sys

    from rawgpu.kernels.matmul._common import main

    sys.exit(main("splitk", SIM_PARAMS))
