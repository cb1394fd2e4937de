"""Matrix multiply, ``C = op(A) @ op(B)``, as a ladder of kernels: one module per rung, one idea per rung.

``A`` is M x K, ``B`` is K x N and ``C`` is M x N, all float32 and row-major. Every output element
is a dot product of length K: 2K floating-point operations that need K values of A and K values
of B. The arithmetic is fixed at 2MNK; what separates a slow matmul from a fast one is where those
values come from (global memory, far away; shared memory, on the chip; registers, in the core) and
how many of the GPU's threads are kept busy. Read the rungs in order; each module opens with an
essay on the one idea it adds and what that should change:

==============  =================================================================================
``naive``       one thread per element of C, threadIdx.x along the rows: loads do not coalesce
``coalesced``   the same, threadIdx.x along the columns: a warp's loads merge into wide transactions
``smem``        shared-memory tiles: each value fetched from global memory serves a whole tile row
``blocktile1d`` each thread computes a column of ``tm`` results: fewer shared loads per multiply-add
``blocktile2d`` each thread computes a ``tm x tn`` block in registers: an outer product per step of K
``transposed``  A's tile stored transposed and each thread's elements strided: conflict-free shared
                loads (the half of CUDA C's "vectorised" step Numba can express: no float4)
``warptile``    the block tile split into warp tiles: a warp's threads share a small working set
``splitk``      for thin products: K split across blocks, partial tiles summed in a fixed order
==============  =================================================================================

Transposes. ``trans_a`` means ``a`` is stored as K x M and the product uses its transpose;
``trans_b`` means ``b`` is stored as N x K. No rung ever copies an operand: each indexes the stored
layout, and where a tile is copied to shared memory consecutive threads take consecutive addresses
of the *stored* array so the copy stays coalesced. The flags and the tile sizes are compile-time
constants: each (rung, tile sizes, trans_a, trans_b) is a separately compiled kernel, built on
first use by the rung's cached factory, so dead branches vanish and loops have constant trip
counts. Tests build tiny tiles for Numba's CUDA simulator; the GPU uses each rung's defaults.

Edges. Every rung is correct for any M, N, K >= 1: loads outside the matrices read as zero and
stores outside C are skipped. The grid covers the columns on its x axis and the rows on its y
axis, which CUDA caps at 65535 blocks (:data:`MAX_GRID_Y`); past that, blocks loop over row tiles.

Accumulation is in float32, like cuBLAS's SGEMM (relative error about 1e-7 of the result's norm).

This package imports its rungs (and with them ``numba.cuda``) on first use, so that
``python -m rawgpu.kernels.matmul.RUNG`` can still switch the simulator on when there is no GPU.
"""

from __future__ import annotations

import importlib

from ._common import MAX_SHARED_BYTES, MAX_THREADS_PER_BLOCK, SIGNATURE, MatmulConfig  # noqa: F401

#: The rungs, slowest idea first.
VARIANTS = ("naive", "coalesced", "smem", "blocktile1d", "blocktile2d", "transposed", "warptile", "splitk")

#: CUDA's limit on gridDim.y. Row tiles beyond it are covered by a loop inside the kernels;
#: tests lower this to exercise that loop at tiny sizes.
MAX_GRID_Y = 65535

TRANSPOSES = ((False, False), (False, True), (True, False), (True, True))


def rung(variant: str):
    """The module of one rung (imported on first use)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: unknown matmul variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return importlib.import_module(f"{__name__}.{variant}")


def config(variant: str, **params) -> MatmulConfig:
    """Launch settings for ``variant``: its GPU defaults, overridden by ``params``.

    Each rung's module lists its parameters in ``DEFAULTS``. Raises ValueError naming the
    offending parameter.
    """
    return rung(variant).config(**params)


def sim_config(variant: str) -> MatmulConfig:
    """Tiny tiles for Numba's CUDA simulator (one OS thread per CUDA thread), not powers of two."""
    mod = rung(variant)
    return mod.config(**mod.SIM_PARAMS)


def kernel(variant: str, trans_a: bool, trans_b: bool, cfg: MatmulConfig):
    """The compiled (cached) @cuda.jit dispatcher of one rung at one configuration."""
    return rung(variant).kernel(bool(trans_a), bool(trans_b), **cfg.params)


def new_workspace(cfg: MatmulConfig, m: int, n: int, xp=None):
    """The scratch an M x N product needs at ``cfg``, made with the array module ``xp`` (NumPy by
    default), or None when the rung needs none. Only ``splitk`` needs one: ``(ws, counters)``, its
    partial tiles and its per-tile counters (see kernels/matmul/splitk.py)."""
    make = getattr(rung(cfg.variant), "new_workspace", None)
    if make is None:
        return None
    import numpy as np

    return make(cfg, m, n, np if xp is None else xp)


def matmul(a, b, out, *, trans_a=False, trans_b=False, variant="blocktile2d", cfg=None, stream=0, workspace=None) -> None:
    """``out[:] = op(a) @ op(b)``, with ``op(x) = x.T`` where the flag is set.

    ``a`` is (M, K), or (K, M) with ``trans_a``; ``b`` is (K, N), or (N, K) with ``trans_b``;
    ``out`` is (M, N). All float32 and C-contiguous: NumPy arrays in the simulator, device arrays
    on a GPU. ``cfg`` comes from :func:`config` (the variant's defaults when None). ``workspace``
    is the scratch of :func:`new_workspace` for the rungs that need one (``splitk``), None for
    the others. Launches on ``stream`` and returns at once: no allocation, no synchronisation.
    """
    mod = rung(variant)
    if cfg is None:
        cfg = mod.config()
    elif cfg.variant != variant:
        raise ValueError(f"cfg: a {cfg.variant!r} config cannot launch variant {variant!r}")
    m_a, k_a = (a.shape[1], a.shape[0]) if trans_a else a.shape
    k_b, n_b = (b.shape[1], b.shape[0]) if trans_b else b.shape
    m, n = out.shape
    # Cheap host-side check: a mismatch here would make the kernel read or write out of bounds.
    if k_a != k_b or (m_a, n_b) != (m, n):
        raise ValueError(
            f"out: op(a) is {m_a}x{k_a} and op(b) is {k_b}x{n_b}, so out must be {m_a}x{n_b} "
            f"with matching inner sizes; got out {m}x{n}"
        )
    takes_workspace = hasattr(mod, "new_workspace")
    if workspace is not None and not takes_workspace:
        raise ValueError(f"workspace: matmul variant {variant!r} takes no workspace (only splitk does); pass None")
    if m == 0 or n == 0:
        return  # nothing to write, and CUDA refuses an empty grid
    rows, cols = cfg.tile_shape
    grid = (-(-n // cols), min(-(-m // rows), MAX_GRID_Y))
    dispatcher = mod.kernel(bool(trans_a), bool(trans_b), **cfg.params)
    if takes_workspace:
        mod.launch(dispatcher, cfg, a, b, out, grid, stream, workspace)
    else:
        mod.launch(dispatcher, cfg, a, b, out, grid, stream)


#: The rungs built on the shared tiled kernel (kernels/matmul/_tiles.py): they take an epilogue.
TILED = ("blocktile1d", "blocktile2d", "transposed", "warptile", "splitk")

#: The signature of a tiled rung's kernel that does not split K: a, b, c, e (a where no
#: epilogue), and the empty tuple where split-K's scratch would be.
TILED_SIGNATURE = "void(float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[:, ::1], Tuple(()))"


def tiled_launch(variant: str, cfg: MatmulConfig, epilogue: str, trans_a: bool, trans_b: bool, m: int, n: int, stream=0):
    """The launch of one product on a tiled rung with an epilogue (kernels/matmul/_tiles.py),
    worked out once for a caller that repeats it (the training step): called as
    ``launch(a, b, c, e, split)``, with ``split`` ``()``, or for ``splitk`` the
    ``(ws, counters)`` of :func:`new_workspace`. C is ``m x n``. None when C is empty (nothing to
    write, and CUDA refuses an empty grid)."""
    from .._launch import Launch
    from ._tiles import check_epilogue

    if variant not in TILED:
        raise ValueError(f"variant: {variant!r} takes no epilogue; choose one of {', '.join(TILED)}")
    if cfg.variant != variant:
        raise ValueError(f"cfg: a {cfg.variant!r} config cannot launch variant {variant!r}")
    check_epilogue(epilogue)
    if m == 0 or n == 0:
        return None
    rows, cols = cfg.tile_shape
    grid = (-(-n // cols), min(-(-m // rows), MAX_GRID_Y), cfg.params.get("splits", 1))
    kernel = rung(variant).kernel(bool(trans_a), bool(trans_b), **cfg.params, epilogue=epilogue)
    return Launch(kernel, grid, cfg.block, stream)


def compile_targets() -> list:
    """Every rung x every transpose pair at its GPU default configuration.

    What ``rawgpu kernels`` compiles through NVVM and ptxas to report registers, spills, shared
    memory and occupancy: the same configurations the ``cuda`` engine and the benchmarks launch.
    """
    from .._compile import CompileTarget

    targets = []
    for variant in VARIANTS:
        mod = rung(variant)
        cfg = mod.config()
        for ta, tb in TRANSPOSES:
            flags = ("T" if ta else "N") + ("T" if tb else "N")
            signature = getattr(mod, "SIGNATURE", TILED_SIGNATURE if variant in TILED else SIGNATURE)
            targets.append(CompileTarget(variant, f"{cfg.text()} {flags}", mod.kernel(ta, tb, **cfg.params), signature, cfg.threads))
    return targets
