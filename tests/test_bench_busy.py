"""bench/train.py on a busy machine (issue 16): the load average before and after the runs is
recorded, and a run whose timed epochs spread more than 1.5x is marked, noted and warned about."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def bench(monkeypatch):
    """bench/train.py and bench/make_tables.py as modules (they import their siblings by plain name)."""
    monkeypatch.syspath_prepend(str(BENCH))
    modules = {}
    for name in ("train", "make_tables"):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[name])
    monkeypatch.delitem(sys.modules, "train", raising=False)  # make_tables imported it by plain name
    return SimpleNamespace(**modules)


def _run(bench, monkeypatch, seconds):
    records = [{"seconds": t, "test_accuracy": 0.8, "train_loss": 0.5} for t in seconds]
    monkeypatch.setattr(bench.train, "run_rawgpu", lambda *args: records)
    ds = SimpleNamespace(train_labels=np.zeros(1000))
    point = {"hidden": 128, "batch": 128, "roles": ["main"], "epochs": len(seconds)}
    return bench.train.run_one("rawgpu-numpy", point, ds, {"seed": 0, "profile_steps": 0, "model": "mlp", "activation": "none"}, None)


def test_a_wide_spread_of_epoch_times_is_marked_with_the_load_average(bench, monkeypatch):
    quiet = _run(bench, monkeypatch, [2.0, 1.0, 1.1, 1.2])
    busy = _run(bench, monkeypatch, [2.0, 0.5, 1.0, 0.6])  # the warm-up epoch apart: 0.5..1.0, 2x
    assert not quiet["wide_spread"] and busy["wide_spread"] and busy["epoch_spread"] == pytest.approx(2.0)
    result = {"runs": [quiet, busy], "load_average": {"before": [3.5, 2.0, 1.0], "after": [4.25, 3.0, 1.5]},
              "settings": {"hidden": 128, "batch_size": 128, "epochs": 4}}
    headers, rows, notes = bench.train.main_table(result)
    spread = headers.index("range of timed epochs")
    assert "busy" not in rows[0][spread] and rows[1][spread].endswith("(busy: x2.0)")
    (note,) = notes
    assert "1 of 2 runs spread more than 1.5x" in note and "load average (1 min) 3.5 before the runs, 4.25 after" in note
    assert bench.train.busy_note({"runs": [quiet]}) is None


def test_the_tables_name_the_load_before_and_after(bench):
    env = {"gpu": {}, "machine": {"cpu_model": "CPU", "cpus": 2, "load_average_1m": 3.5}, "versions": {},
           "command": "python bench/train.py", "date": "2026-12-01"}
    run = {"environment": env, "_file": "t.json", "load_average": {"before": [3.5, 0, 0], "after": [4.25, 0, 0]}}
    assert "load average 3.5 before the runs, 4.25 after" in bench.make_tables.provenance(run)
    del run["load_average"]  # results written before it was recorded read as they did
    assert "load average 3.5 at the start" in bench.make_tables.provenance(run)
