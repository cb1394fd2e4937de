"""What this machine offers rawgpu: the engine auto would pick, the GPU, and package versions.

Used by ``rawgpu info`` and by the benchmarks, which stamp every result with these facts.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

from rawgpu import engine as _engine


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cupy_dist() -> tuple[str | None, str | None]:
    """The installed CuPy distribution (cupy, cupy-cuda12x, cupy-cuda13x, ...) and its version."""
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name == "cupy" or name.startswith("cupy-cuda"):
            return name, dist.version
    return None, None


def versions() -> dict:
    """Versions of the packages a result depends on (None where not installed)."""
    cupy_name, cupy_version = _cupy_dist()
    return {
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "numba": _version("numba"),
        "numba-cuda": _version("numba-cuda"),
        "cupy": f"{cupy_version} ({cupy_name})" if cupy_name else None,
        "torch": _version("torch"),
        "rawgpu": _version("rawgpu"),
    }


def _cuda_version(code: int) -> str:
    return f"{code // 1000}.{(code % 1000) // 10}"


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version, from nvidia-smi (CuPy only knows which CUDA the driver supports)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out else None


def gpu() -> dict:
    """The first GPU as CuPy sees it, or ``{"available": False, "reason": ...}``."""
    usable, why = _engine.probe_gpu()
    if not usable:
        return {"available": False, "reason": why}
    import cupy

    rt = cupy.cuda.runtime
    props = rt.getDeviceProperties(0)
    name = props["name"]
    return {
        "available": True,
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "compute_capability": f"{props['major']}.{props['minor']}",
        "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
        "multiprocessors": props["multiProcessorCount"],
        "driver": nvidia_driver(),
        "driver_cuda": _cuda_version(rt.driverGetVersion()),
        "runtime_cuda": _cuda_version(rt.runtimeGetVersion()),
        "count": rt.getDeviceCount(),
    }


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()}


def report() -> str:
    """The text ``rawgpu info`` prints."""
    try:
        name, why = _engine.requested()
    except Exception as exc:  # an odd environment must not stop `info` from reporting
        name, why = "?", str(exc)
    lines = [f"engine:     {name}  ({why})"]
    g = gpu()
    if g["available"]:
        lines.append(
            f"gpu:        {g['name']}, compute capability {g['compute_capability']}, {g['memory_gib']} GiB, "
            f"{g['multiprocessors']} SMs; driver {g['driver'] or '?'} supports CUDA {g['driver_cuda']}, CuPy runtime CUDA {g['runtime_cuda']}"
        )
    else:
        lines.append(f"gpu:        none ({g['reason']})")
    for key, value in versions().items():
        lines.append(f"{key + ':':12}{value or 'not installed'}")
    lines.append(
        "warnings:   Numba's low-occupancy warning (a grid under 128 blocks) is off for rawgpu's own launches, where they are "
        "configured: the step's grids at 784-128-10 are small by design (below); your own Numba kernels still get it"
    )
    lines.extend(matmul_picks(g))
    return "\n".join(lines)


def matmul_picks(g: dict) -> list:
    """The matmul autotuner's rung for each training product, and why (on this GPU, or an H100's 132 SMs)."""
    from rawgpu.kernels.matmul import tuning  # no numba.cuda import: safe before the engine is picked

    products = tuning.step_products()
    shapes = [shape for _, *shape in products]
    if g["available"]:
        where, picks = f"on this {g['name']}", tuning.explain(shapes, gpu=g["name"], sms=g["multiprocessors"])
    else:
        where, picks = "as the cuda engine would on an H100 (132 SMs; no GPU here)", tuning.explain(shapes, sms=132)
    return [f"matmul:     the autotuner's rung per matmul launch of a 784-128-10 training step at batch 128, {where}:"] + [
        f"              {op}: {line}" for (op, *_), line in zip(products, picks)
    ] + ["              (the output layer's product runs inside the loss kernel, one block per row)"]
