"""Test setup shared by every test file.

The kernel tests run on one kernel engine per pytest process: on a real GPU where CuPy sees one
(the `gpu` lane, large shapes), otherwise in Numba's CUDA simulator (tiny shapes, tiny tiles).
A process cannot hold both, and the simulator must be switched on before anything imports
numba.cuda, so this decision is made here, at collection time, before any test module loads.
Set RAWGPU_TEST_SIM=1 to force the simulator lane on a GPU machine.
"""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from rawgpu.engine import pace_simulator, probe_gpu  # noqa: E402  (imports CuPy at most, never numba.cuda)

_GPU_OK, _GPU_WHY = probe_gpu()
if os.environ.get("RAWGPU_TEST_SIM") == "1":
    _GPU_OK, _GPU_WHY = False, "RAWGPU_TEST_SIM=1"
KERNEL_ENGINE = "cuda" if _GPU_OK else "sim"
if KERNEL_ENGINE == "sim":
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    pace_simulator()  # the kernel tests launch straight into the simulator, not through rawgpu.use


def pytest_report_header(config):
    return f"rawgpu kernel lane: {KERNEL_ENGINE} ({_GPU_WHY})"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason=f"needs a GPU: {_GPU_WHY}")
    skip_sim = pytest.mark.skip(reason="simulator lane: this process runs on a real GPU (set RAWGPU_TEST_SIM=1 to run it)")
    for item in items:
        if "gpu" in item.keywords and KERNEL_ENGINE != "cuda":
            item.add_marker(skip_gpu)
        if "sim" in item.keywords and KERNEL_ENGINE != "sim":
            item.add_marker(skip_sim)


@pytest.fixture
def rng(request):
    """A fresh random generator per test; its seed is printed if the test fails."""
    seed = int.from_bytes(os.urandom(4), "little")
    request.node.user_properties.append(("seed", seed))
    print(f"random seed: {seed}")
    return np.random.default_rng(seed)


class KernelLane:
    """How a kernel test moves arrays to and from the live kernel engine."""

    def __init__(self, name):
        self.name = name
        self.on_gpu = name == "cuda"

    def to_device(self, host):
        host = np.ascontiguousarray(host)
        if not self.on_gpu:
            return host.copy()
        from numba import cuda

        return cuda.to_device(host)

    def to_host(self, arr):
        if not self.on_gpu:
            return np.asarray(arr)
        from numba import cuda

        cuda.synchronize()
        return arr.copy_to_host()


@pytest.fixture(scope="session")
def lane():
    """The kernel lane of this process: 'sim' (NumPy arrays, simulator) or 'cuda' (device arrays)."""
    return KernelLane(KERNEL_ENGINE)


@pytest.fixture
def sim():
    """The 'sim' engine for one test (tests marked ``sim``), and 'numpy' again after it."""
    import rawgpu

    eng = rawgpu.use("sim")
    yield eng
    rawgpu.use("numpy")
