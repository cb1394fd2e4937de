"""What every rung of the matmul ladder shares: its config object, the launch, and the command line.

Nothing here imports ``numba.cuda`` at module level: ``python -m rawgpu.kernels.matmul.RUNG`` imports
this package before the rung's own code runs, and the rung must still be able to switch Numba's
CUDA simulator on (which has to happen before ``numba.cuda`` is first imported) when no GPU is usable.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from dataclasses import dataclass

#: Hardware limits every current NVIDIA GPU shares: threads per block and static shared memory.
MAX_THREADS_PER_BLOCK = 1024
MAX_SHARED_BYTES = 48 * 1024

#: The signature every rung is launched with: C-contiguous float32 matrices a, b, c.
SIGNATURE = "void(float32[:, ::1], float32[:, ::1], float32[:, ::1])"


@dataclass(frozen=True)
class MatmulConfig:
    """The compile-time shape of one rung: its parameters, its threads per block and its tile.

    Build it with :func:`rawgpu.kernels.matmul.config`, which checks it. Hashable, so it keys the
    cache of compiled kernels.
    """

    variant: str
    items: tuple  # ((name, value), ...) in the rung's parameter order
    block: tuple  # threads per block as (x, y)
    tile_shape: tuple  # (rows, columns) of C one block computes

    @property
    def params(self) -> dict:
        """The rung's parameters by name, e.g. ``{"tile": 32}``."""
        return dict(self.items)

    @property
    def threads(self) -> int:
        return self.block[0] * self.block[1]

    def text(self) -> str:
        """The parameters in words, e.g. ``"bm=128 bn=128 bk=8 tm=8 tn=8"``."""
        return " ".join(f"{k}={v}" for k, v in self.items)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.items)
        return f"MatmulConfig({self.variant!r}, {args})"


def make_config(variant, defaults, params, geometry):
    """Merge ``params`` into ``defaults``, check them, and build the config.

    ``geometry(values)`` returns ``(block, tile_shape, shared_bytes)`` or raises ValueError naming
    the offending parameter.
    """
    for name in params:
        if name not in defaults:
            raise ValueError(f"{name}: not a parameter of matmul variant {variant!r} (it takes {', '.join(defaults)})")
    values = {**defaults, **params}
    for name, value in values.items():
        least = 0 if name == "pad" else 1  # padding may be none; everything else counts something
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name}: must be an integer >= {least}, got {value!r}")
    block, tile_shape, shared = geometry(values)
    if shared > MAX_SHARED_BYTES:
        raise ValueError(f"bk: shared tiles need {shared} bytes, more than {MAX_SHARED_BYTES}; lower bk or the tile sizes")
    threads = block[0] * block[1]
    if threads > MAX_THREADS_PER_BLOCK:
        raise ValueError(f"{' * '.join(values)}: {threads} threads per block, more than {MAX_THREADS_PER_BLOCK}")
    return MatmulConfig(variant, tuple(values.items()), tuple(block), tuple(tile_shape))


def divides(name, small, big_name, big):
    if big % small:
        raise ValueError(f"{name}: must divide {big_name} ({big_name}={big}, {name}={small})")


def launch_2d(kernel, cfg, a, b, out, grid, stream):
    """The launch of the first rungs (``naive``, ``coalesced``, ``smem``): one block per tile of C,
    no allocation, no sync."""
    kernel[grid, cfg.block, stream](a, b, out)


def launch_tiled(kernel, cfg, a, b, out, grid, stream):
    """The plain launch of a tiled rung (kernels/matmul/_tiles.py), whose kernels take an
    epilogue's operand ``e`` and split-K's scratch after C. With no epilogue ``e`` is not read,
    and ``a`` stands in for it (not C: Numba's simulator copies each argument back after the
    launch, and a second copy of C, never written, would be copied back over the first); a rung
    that does not split K takes no scratch, ``()``."""
    kernel[grid, cfg.block, stream](a, b, out, a, ())


# ---------------------------------------------------------------------------------------------
# The command line of every rung: python -m rawgpu.kernels.matmul.RUNG
# ---------------------------------------------------------------------------------------------


def gpu_usable() -> tuple[bool, str]:
    """Whether a CUDA GPU can be used: not where the simulator is switched on, else :func:`driver_gpus`."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False, "NUMBA_ENABLE_CUDASIM=1"
    return driver_gpus()


def driver_gpus() -> tuple[bool, str]:
    """Whether the NVIDIA driver sees a GPU, asked of the driver directly (no numba.cuda, no
    CuPy, so the answer names a missing driver rather than a runtime's complaint about it)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False, "no NVIDIA driver found (libcuda.so.1)"
    if lib.cuInit(0) != 0:
        return False, "the CUDA driver found no usable GPU"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return False, "the CUDA driver reports no GPU"
    return True, f"{count.value} GPU(s)"


_CHOSEN: list = []


def choose_engine() -> tuple[bool, str]:
    """Switch on Numba's CUDA simulator when there is no usable GPU. Call before numba.cuda loads."""
    if _CHOSEN:
        return _CHOSEN[0]
    on_gpu, why = gpu_usable()
    if not on_gpu:
        if "numba.cuda" in sys.modules and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
            raise RuntimeError("numba.cuda was imported before the simulator could be switched on")
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    _CHOSEN.append((on_gpu, why))
    return on_gpu, why


#: Shapes of the command-line check. In the simulator: small, odd, not multiples of any tile, and
#: tiny tiles (the simulator runs one OS thread per CUDA thread). On a GPU: real sizes, odd too.
SIM_SHAPES = [(1, 1, 1), (7, 5, 3), (13, 11, 9)]
GPU_CHECK_SHAPES = [(1, 1, 1), (1000, 1001, 999), (257, 130, 1031)]
GPU_TIME_SIZES = [1024, 2048, 4096]
TOLERANCE = 1e-5  # ||out - ref|| / ||ref||; float32 accumulation lands around 1e-7


def _reference(rng, m, n, k, ta, tb):
    import numpy as np

    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    return a, b, ref


def _rel_err(got, ref):
    import numpy as np

    denom = np.linalg.norm(ref)
    diff = np.linalg.norm(np.asarray(got, np.float64) - ref)
    return diff / denom if denom else diff


def main(variant: str, sim_params: dict, argv=None) -> int:
    """Check one rung against NumPy at every transpose pair, then (on a GPU) time it beside cuBLAS.

    Exit status 0 when every check passes, 1 when one fails.
    """
    import argparse

    p = argparse.ArgumentParser(prog=f"python -m rawgpu.kernels.matmul.{variant}",
                                description=f"Check the {variant!r} matmul rung against NumPy; on a GPU, time it beside cuBLAS.")
    p.add_argument("--sizes", default=",".join(map(str, GPU_TIME_SIZES)), help="square sizes to time on a GPU (default 1024,2048,4096)")
    p.add_argument("--reps", type=int, default=20, help="timed repetitions per size after warm-up (default 20)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    on_gpu, why = choose_engine()
    import numpy as np

    from rawgpu.kernels import matmul as mm  # after choose_engine: this may load numba.cuda

    rng = np.random.default_rng(args.seed)
    cfg = mm.config(variant) if on_gpu else mm.config(variant, **sim_params)
    shapes = GPU_CHECK_SHAPES if on_gpu else SIM_SHAPES
    where = "GPU" if on_gpu else f"Numba's CUDA simulator ({why})"
    print(f"{variant}: {cfg.text()}, {cfg.threads} threads per block; checking in {where}")
    failed = 0
    for ta, tb in ((False, False), (False, True), (True, False), (True, True)):
        for m, n, k in shapes:
            a, b, ref = _reference(rng, m, n, k, ta, tb)
            got = _run(mm, a, b, m, n, ta, tb, variant, cfg, on_gpu)
            err = _rel_err(got, ref)
            ok = bool(np.all(np.isfinite(got))) and err <= TOLERANCE
            failed += not ok
            flags = ("T" if ta else "N") + ("T" if tb else "N")
            print(f"  {flags} {m}x{n}x{k}: {'ok' if ok else 'FAILED'} (relative error {err:.1e})")
    if failed:
        print(f"{variant}: {failed} check(s) FAILED")
        return 1
    if not on_gpu:
        print(f"{variant}: all checks passed; timing needs a GPU ({why}), so nothing was timed")
        return 0
    _time_on_gpu(mm, variant, cfg, [int(s) for s in args.sizes.split(",")], args.reps)
    return 0


def _run(mm, a, b, m, n, ta, tb, variant, cfg, on_gpu):
    import numpy as np

    out = np.full((m, n), np.nan, np.float32)
    ws = mm.new_workspace(cfg, m, n)  # split-K's scratch
    if ws is not None:
        ws[0].fill(np.nan)  # poisoned too: every partial must be written before it is read
    if not on_gpu:
        mm.matmul(a, b, out, trans_a=ta, trans_b=tb, variant=variant, cfg=cfg, workspace=ws)
        return out
    from numba import cuda

    d_out = cuda.to_device(out)
    d_ws = None if ws is None else tuple(cuda.to_device(x) for x in ws)
    mm.matmul(cuda.to_device(a), cuda.to_device(b), d_out, trans_a=ta, trans_b=tb, variant=variant, cfg=cfg, workspace=d_ws)
    cuda.synchronize()
    return d_out.copy_to_host()


def _time_on_gpu(mm, variant, cfg, sizes, reps):
    """Median of CUDA-event timings after warm-up, for this rung and cuBLAS (CuPy, TF32 off)."""
    os.environ["CUPY_TF32"] = "0"  # read when CuPy is imported: keep cuBLAS in full FP32
    import cupy
    from numba import cuda

    def median_ms(fn, warmup=3):
        for _ in range(warmup):
            fn()
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        times = []
        for _ in range(reps):
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, stop))
        times.sort()
        return times[len(times) // 2]

    print(f"{'n':>6} {variant + ' ms':>12} {'GFLOP/s':>9} {'cuBLAS ms':>10} {'GFLOP/s':>9} {'% cuBLAS':>9}")
    stream = cuda.external_stream(cupy.cuda.get_current_stream().ptr) if cupy.cuda.get_current_stream().ptr else 0
    for n in sizes:
        a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
        b = cupy.random.standard_normal((n, n), dtype=cupy.float32)
        c = cupy.empty((n, n), dtype=cupy.float32)
        ws = mm.new_workspace(cfg, n, n, cupy)  # kept alive here
        # The Numba views are made here, once: making one costs host time that is no part of the
        # kernel, and inside the timed region it would be measured with it.
        va, vb, vc = (cuda.as_cuda_array(x, sync=False) for x in (a, b, c))
        vws = None if ws is None else tuple(cuda.as_cuda_array(x, sync=False) for x in ws)
        ours = median_ms(lambda: mm.matmul(va, vb, vc, variant=variant, cfg=cfg, stream=stream, workspace=vws))
        theirs = median_ms(lambda: cupy.matmul(a, b, out=c))
        flops = 2.0 * n**3
        print(f"{n:>6} {ours:>12.3f} {flops / ours / 1e6:>9.0f} {theirs:>10.3f} {flops / theirs / 1e6:>9.0f} {100 * theirs / ours:>8.1f}%")


def launch_bounds(threads: int, accumulators: int, blocks: int | None = None) -> tuple[int, int]:
    """``(threads per block, blocks per SM)`` for ``@cuda.jit(launch_bounds=...)``, CUDA C's
    ``__launch_bounds__``: it tells ptxas how many threads must fit on an SM, so that it keeps each
    thread's registers under ``65536 / (threads * blocks)`` instead of spending up to 255 on
    scheduling freedom. The budget: 64 registers for up to 16 accumulators per thread, 128 for
    more (64 accumulators plus operands and addresses fit; the compile report checks for spills).
    """
    if blocks is not None:  # an explicit number of blocks per SM (a looser or tighter budget)
        return threads, blocks
    budget = 64 if accumulators <= 16 else 128
    return threads, max(1, 65536 // (budget * threads))


def jit(threads: int, accumulators: int, blocks: int | None = None, *, bounded: bool = True):
    """``cuda.jit`` with :func:`launch_bounds` (and the disk cache of compiled kernels) on a GPU;
    plain ``cuda.jit`` in the simulator, which has no registers to budget (and refuses the option).
    ``bounded=False`` leaves the register count to ptxas (the tiled rungs: see kernels/matmul/_tiles.py)."""
    from numba import config as numba_config
    from numba import cuda

    if numba_config.ENABLE_CUDASIM:
        return cuda.jit
    if not bounded:
        return cuda.jit(cache=True)
    return cuda.jit(cache=True, launch_bounds=launch_bounds(threads, accumulators, blocks))
