"""The matmul ladder as a learner uses it: each rung runnable on its own, and the autotuner's picks.

``python -m rawgpu.kernels.matmul.RUNG`` checks the rung against NumPy (in the simulator where
there is no GPU) and exits non-zero on a wrong result; the tuning table picks a rung per shape
and says why.
"""

import os
import subprocess
import sys

import pytest

from rawgpu.kernels import matmul as mm
from rawgpu.kernels.matmul import _common, tuning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.sim
def test_rung_command_line_checks_and_says_timing_needs_a_gpu():
    """A whole `python -m` run in a fresh process, as a reader types it (the simulator is chosen
    by the rung itself, before numba.cuda loads)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-m", "rawgpu.kernels.matmul.coalesced"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(": ok (") == 12  # 4 transpose pairs x 3 shapes
    assert "timing needs a GPU" in proc.stdout


@pytest.mark.sim
@pytest.mark.parametrize("variant", ["naive", "splitk"])  # the others: test_kernels_matmul.py, same kernels
def test_rung_main_passes_in_the_simulator(variant, capsys):
    mod = mm.rung(variant)
    assert _common.main(variant, mod.SIM_PARAMS, argv=[]) == 0
    assert "FAILED" not in capsys.readouterr().out


@pytest.mark.sim
def test_rung_main_fails_on_a_wrong_kernel(monkeypatch, capsys):
    """The check is real: a launcher that writes nothing (outputs stay NaN) exits 1."""
    monkeypatch.setattr(mm, "matmul", lambda *args, **kwargs: None)
    assert _common.main("naive", mm.rung("naive").SIM_PARAMS, argv=[]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_every_rung_module_has_an_essay_and_the_ladder_interface():
    for variant in mm.VARIANTS:
        mod = mm.rung(variant)
        assert len(mod.__doc__) > 800, f"{variant}: the essay is missing or short"
        assert "What it changes" in mod.__doc__ or "What is wrong" in mod.__doc__
        for name in ("DEFAULTS", "SIM_PARAMS", "config", "kernel", "launch"):
            assert hasattr(mod, name), f"{variant}.{name}"


# --- the autotuner ---------------------------------------------------------------------------


def test_heuristic_picks_by_blocks_per_sm():
    assert tuning.pick(4096, 4096, 4096, False, False, sms=132)[0] == "warptile"
    assert tuning.pick(1024, 1024, 1024, False, False, sms=132)[0] == "transposed"
    variant, params, reason = tuning.pick(128, 128, 784, False, False, sms=132)
    assert variant == "splitk" and params["splits"] > 1 and "784" in reason
    assert tuning.pick(128, 128, 10, False, True, sms=132)[0] == "transposed"  # K too short to split
    for m, n, k in [(1, 1, 1), (784, 128, 128), (128, 10, 128)]:
        variant, params, _ = tuning.pick(m, n, k, True, False, sms=132)
        mm.config(variant, **params)  # every pick is a valid config


def test_measured_entry_wins(monkeypatch):
    entry = {"shape": [128, 128, 784, False, False], "variant": "blocktile2d", "params": {"bm": 32, "bn": 32, "tm": 2, "tn": 2},
             "us": 9.5, "cublas_us": 8.0, "source": "bench/kernels.py 2099-01-01"}
    monkeypatch.setattr(tuning, "table", lambda: {"gpus": {"Some GPU": [entry]}})
    variant, params, reason = tuning.pick(128, 128, 784, False, False, gpu="Some GPU")
    assert (variant, params) == ("blocktile2d", entry["params"])
    assert reason.startswith("measured on Some GPU")
    assert tuning.pick(128, 128, 784, False, False, gpu="Other GPU")[2].startswith("heuristic")
    lines = tuning.explain([(128, 128, 784, False, False)], gpu="Some GPU")
    assert lines[0].startswith("128x128x784 NN: blocktile2d bm=32")


def test_shipped_table_is_valid_json_with_a_gpus_map():
    tuning.table.cache_clear()
    assert isinstance(tuning.table()["gpus"], dict)
