"""Which engine is live: the one place in rawgpu that asks "am I on a GPU?".

Three engines run the same network:

=========  ==================  ==========================================================
engine     arrays              ops
=========  ==================  ==========================================================
``cuda``   CuPy, on the GPU    the Numba kernels in ``rawgpu.kernels``, on CuPy's stream
``sim``    NumPy               the same kernels, in Numba's CUDA simulator (slow, anywhere)
``numpy``  NumPy               vectorised NumPy: the CPU baseline
=========  ==================  ==========================================================

The engine comes from ``rawgpu.use(name)``, else from the environment variable
``RAWGPU_DEVICE``, else it is picked automatically: ``cuda`` where CuPy sees a GPU, otherwise
``numpy``. Everything else in rawgpu asks :func:`current` for the live engine and calls its
backend; nothing else branches on the kind of machine.

The simulator has one awkward rule: Numba reads ``NUMBA_ENABLE_CUDASIM`` when ``numba.cuda`` is
first imported, and a process can hold either the simulator or a real CUDA driver, never both.
This module owns that moment: ``sim`` switches the simulator on before ``numba.cuda`` loads, and
asking for it (or for ``cuda``) after the other one has loaded is an :class:`EngineError`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import numpy as np

ENGINES = ("cuda", "sim", "numpy")
ENV_VAR = "RAWGPU_DEVICE"


class EngineError(RuntimeError):
    """The requested engine cannot run here; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------
# Probing the machine (no side effects beyond importing CuPy)
# ---------------------------------------------------------------------------------------------


def _cupy_extra_hint() -> str:
    return "install the GPU extra that matches your driver: pip install 'rawgpu[cuda12]' or 'rawgpu[cuda13]'"


def probe_gpu() -> tuple[bool, str]:
    """Return (usable, reason): whether CuPy can see a GPU, and a sentence saying why or why not."""
    try:
        import cupy
    except ImportError:
        return False, f"CuPy is not installed ({_cupy_extra_hint()})"
    except Exception as exc:  # a broken CuPy install raises all sorts of things
        return False, f"CuPy failed to import: {exc}"

    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        # CuPy's runtime calls a missing driver "insufficient", as if an upgrade would help:
        # ask the driver itself first, which names a missing libcuda.so.1 as such.
        from rawgpu.kernels.matmul._common import driver_gpus

        has_driver, why = driver_gpus()
        if not has_driver:
            return False, why
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "InsufficientDriver" in message or "NoDevice" in message or "driver" in message.lower():
            return False, f"no usable NVIDIA driver or GPU ({message})"
        return False, f"CuPy cannot reach a GPU ({message})"
    if count < 1:
        return False, "CuPy sees no CUDA device"
    return True, f"CuPy sees {count} CUDA device(s)"


def _simulator_loaded() -> bool | None:
    """True/False when numba.cuda is already imported (simulator or not), None when it is not."""
    mod = sys.modules.get("numba.cuda")
    if mod is None:
        return None
    return "simulator" in getattr(mod.jit, "__module__", "")


#: Python's thread switch interval while the simulator runs, in seconds (Python's default: 0.005).
#: Numba's simulator runs each CUDA thread of a block as a Python thread, and its block manager
#: finds the threads waiting at a barrier by polling them in a loop that never sleeps. Every time
#: a thread wants the interpreter back from that loop it waits up to one switch interval, so at
#: the default most of a kernel's time goes to waiting at barriers. Measured on a 2-core machine:
#: a CNN training step (2 CIFAR-sized images, conv widths 4, 4, 8) took 146 s at 0.005, 75 s at
#: 0.001, 69 s at 0.0005, 72 s at 0.0002 and 75 s at 0.0001 (below that, switching costs more
#: than it saves).
SIM_SWITCH_INTERVAL = 0.0005


def pace_simulator() -> None:
    """Shorten Python's thread switch interval to :data:`SIM_SWITCH_INTERVAL` for the simulator.
    Process-wide, like the simulator itself; a process that chose the simulator runs little else."""
    sys.setswitchinterval(SIM_SWITCH_INTERVAL)


def _switch_on_simulator() -> None:
    loaded = _simulator_loaded()
    if loaded is True:
        return
    if loaded is False:
        raise EngineError(
            "the 'sim' engine must be chosen before numba.cuda is imported, and this process has "
            "already loaded the real CUDA target; set RAWGPU_DEVICE=sim (or NUMBA_ENABLE_CUDASIM=1) "
            "before starting Python"
        )
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    if "numba" in sys.modules:  # numba is loaded but numba.cuda is not: re-read the environment
        import numba.core.config

        numba.core.config.reload_config()


# ---------------------------------------------------------------------------------------------
# The engine object
# ---------------------------------------------------------------------------------------------


@dataclass
class Engine:
    """The live engine: its array module and its op backend.

    ``xp`` is the array module (NumPy or CuPy); ``backend`` implements the op interface on
    already-validated arguments (see :mod:`rawgpu.ops`); ``reason`` says why it was picked.
    """

    name: str
    xp: object
    backend: object
    reason: str
    array_type: type = field(repr=False, default=np.ndarray)

    @property
    def is_device(self) -> bool:
        """Whether arrays live in GPU memory (and so must be copied to the host to print)."""
        return self.name == "cuda"

    # Array helpers: the only way the rest of rawgpu makes or moves arrays.
    def empty(self, shape, dtype=np.float32):
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype=np.float32):
        return self.xp.zeros(shape, dtype=dtype)

    def asarray(self, host_array, dtype=None):
        """Copy a host array onto the engine (a no-op view for the NumPy engines)."""
        arr = np.ascontiguousarray(host_array, dtype=dtype)
        return self.xp.asarray(arr)

    def to_host(self, arr) -> np.ndarray:
        """A NumPy copy (or view, on the CPU engines) of an engine array."""
        if self.is_device:
            return self.xp.asnumpy(arr)
        return np.asarray(arr)

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU engines)."""
        if self.is_device:
            self.xp.cuda.get_current_stream().synchronize()

    def describe_kind(self) -> str:
        return "a CuPy array" if self.is_device else "a NumPy array"


def _make_engine(name: str, reason: str) -> Engine:
    if name == "numpy":
        from rawgpu.backends.numpy_backend import NumpyBackend

        return Engine("numpy", np, NumpyBackend(), reason, np.ndarray)
    if name == "sim":
        _switch_on_simulator()
        pace_simulator()
        from rawgpu.backends.kernel_backend import KernelBackend

        return Engine("sim", np, KernelBackend(simulator=True), reason, np.ndarray)
    if name == "cuda":
        if _simulator_loaded() is True or (_simulator_loaded() is None and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"):
            raise EngineError(
                "the 'cuda' engine cannot start: this process already runs Numba's CUDA simulator "
                "(NUMBA_ENABLE_CUDASIM=1 or the 'sim' engine); start a new process without it"
            )
        usable, why = probe_gpu()
        if not usable:
            raise EngineError(f"the 'cuda' engine needs an NVIDIA GPU: {why}")
        import cupy

        from rawgpu.backends.kernel_backend import KernelBackend

        return Engine("cuda", cupy, KernelBackend(simulator=False), reason, cupy.ndarray)
    raise EngineError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)} (or 'auto')")


def pick_auto() -> tuple[str, str]:
    """The engine 'auto' would choose here, and why."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or _simulator_loaded() is True:
        return "sim", "NUMBA_ENABLE_CUDASIM=1 is set, so the kernels run in Numba's simulator"
    usable, why = probe_gpu()
    if usable:
        return "cuda", why
    return "numpy", f"no GPU: {why}; using the NumPy CPU baseline"


def requested() -> tuple[str, str]:
    """The engine named by RAWGPU_DEVICE (or auto), with the reason."""
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env and env != "auto":
        return env, f"{ENV_VAR}={env}"
    name, why = pick_auto()
    return name, f"auto: {why}"


_current: Engine | None = None


def use(name: str = "auto") -> Engine:
    """Make ``name`` ('cuda', 'sim', 'numpy' or 'auto') the live engine and return it."""
    global _current
    key = str(name).strip().lower()
    if key == "auto":
        key, reason = pick_auto()
        reason = f"auto: {reason}"
    else:
        reason = f"rawgpu.use({key!r})"
    if key not in ENGINES:
        raise EngineError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)} (or 'auto')")
    if _current is not None and _current.name == key:
        return _current
    _current = _make_engine(key, reason)
    return _current


def current() -> Engine:
    """The live engine, picked on first use from RAWGPU_DEVICE or automatically."""
    global _current
    if _current is None:
        name, reason = requested()
        if name not in ENGINES:
            raise EngineError(f"{ENV_VAR}={name!r} is not an engine: choose one of {', '.join(ENGINES)} or auto")
        _current = _make_engine(name, reason)
    return _current
