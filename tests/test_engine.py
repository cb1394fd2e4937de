"""Engine selection: auto, RAWGPU_DEVICE, rawgpu.use, and the simulator's import-order rule.

Most of these run in a fresh Python process, because the rule under test is about what a
process has already imported.
"""

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import KERNEL_ENGINE

import rawgpu
from rawgpu import engine


def run_python(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "RAWGPU_DEVICE")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env, timeout=120)


def test_unknown_engine_is_a_clear_error():
    with pytest.raises(engine.EngineError, match="unknown engine 'tpu'"):
        rawgpu.use("tpu")


def test_environment_variable_picks_the_engine():
    out = run_python("import rawgpu; print(rawgpu.current().name)", RAWGPU_DEVICE="numpy")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "numpy"


def test_bad_environment_variable_is_a_clear_error():
    out = run_python("import rawgpu; rawgpu.current()", RAWGPU_DEVICE="gpu0")
    assert out.returncode != 0
    assert "RAWGPU_DEVICE='gpu0' is not an engine" in out.stderr


@pytest.mark.skipif(KERNEL_ENGINE == "cuda", reason="this machine has a GPU")
def test_auto_without_a_gpu_is_numpy_and_says_why():
    out = run_python("import rawgpu; e = rawgpu.current(); print(e.name); print(e.reason)")
    assert out.returncode == 0, out.stderr
    name, reason = out.stdout.strip().splitlines()
    assert name == "numpy"
    assert "no GPU" in reason


@pytest.mark.skipif(KERNEL_ENGINE == "cuda", reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_why():
    out = run_python("import rawgpu; rawgpu.use('cuda')")
    assert out.returncode != 0
    assert "the 'cuda' engine needs an NVIDIA GPU" in out.stderr


def test_cuda_without_cupy_names_the_extra():
    code = """
        import sys
        sys.modules['cupy'] = None  # as if CuPy were not installed
        import rawgpu
        try:
            rawgpu.use('cuda')
        except rawgpu.EngineError as exc:
            print(exc)
    """
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert "CuPy is not installed" in out.stdout and "rawgpu[cuda12]" in out.stdout


def test_sim_switches_the_simulator_on_even_after_numba_is_imported():
    code = """
        import numba, rawgpu
        rawgpu.use('sim')
        from numba import cuda
        import numpy as np
        from rawgpu import ops
        print(type(cuda.jit).__module__ if not callable(cuda.jit) else cuda.jit.__module__)
        print(float(ops.col_sum(np.ones((3, 2), np.float32))[1]))
    """
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    module, value = out.stdout.strip().splitlines()
    assert "simulator" in module
    assert value == "3.0"


def test_sim_after_numba_cuda_is_loaded_is_refused():
    out = run_python("import numba.cuda, rawgpu; rawgpu.use('sim')")
    assert out.returncode != 0
    assert "must be chosen before numba.cuda is imported" in out.stderr


def test_cuda_after_the_simulator_is_loaded_is_refused():
    out = run_python("import rawgpu; rawgpu.use('sim'); rawgpu.use('cuda')")
    assert out.returncode != 0
    assert "already runs Numba's CUDA simulator" in out.stderr


def test_rawgpu_info_runs_and_reports():
    out = subprocess.run([sys.executable, "-m", "rawgpu", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for key in ("engine:", "gpu:", "numpy:", "numba:", "numba-cuda:", "cupy:"):
        assert key in out.stdout
    if KERNEL_ENGINE != "cuda":
        assert "gpu:        none (" in out.stdout
    else:
        assert "compute capability" in out.stdout
    # Numba's low-occupancy warning is off for rawgpu's own launches, and info says so.
    assert "warnings:   Numba's low-occupancy warning (a grid under 128 blocks) is off for rawgpu's own launches" in out.stdout
    # The matmul autotuner's pick for each of the step's four matmul launches, with its reason;
    # the output layer's product is inside the loss kernel, and info says so.
    from rawgpu.kernels.matmul import TILED

    lines = out.stdout.split("matmul:", 1)[1].splitlines()[1:]
    picks, rest = lines[:4], lines[4]
    assert [line.strip().split(": ")[:2] for line in picks] == [
        ["linear_relu", "128x128x784 NN"], ["weight_grad", "128x10x128 TN"],
        ["linear_backward_relu", "128x128x10 NT"], ["weight_grad", "784x128x128 TN"]]
    assert all(line.split(": ", 2)[2].split()[0] in TILED and "(" in line for line in picks)
    assert "inside the loss kernel" in rest
