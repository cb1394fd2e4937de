"""The benchmarks run end to end (--quick), write the JSON bench/README.md documents, and feed
make_tables.py; bad flags end in one line, not a traceback.

Each bench runs in a subprocess, as a user runs it. The kernel bench runs in Numba's simulator
with tiny shapes (and, without --sim, times only NumPy where there is no GPU); the training bench
uses the bundled sample. PyTorch-dependent checks skip, with the reason, where torch is absent.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_MPL = importlib.util.find_spec("matplotlib") is not None
ENV_FIELDS = {"date", "command", "git", "device", "gpu", "machine", "versions", "numpy_threads"}
VERSION_FIELDS = {"python", "numpy", "numba", "numba-cuda", "cupy", "torch", "rawgpu"}


def run_bench(script, *args, timeout=300):
    # conftest.py may have switched the simulator on for this process; each bench picks its own engine.
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "RAWGPU_DEVICE")}
    return subprocess.run(
        [sys.executable, str(BENCH / script), *map(str, args)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="module")
def kernels_sim(out):
    path = out / "kernels-sim.json"
    ok(run_bench("kernels.py", "--sim", "--quick", "--json", path))
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def kernels_timed(out):
    """Without --sim: NumPy on the host (and the kernels, where this machine has a GPU), tiny sizes."""
    path, png = out / "kernels-timed.json", out / "kernels.png"
    args = ["--quick", "--sizes", "32,48", "--ops", "matmul,bias_relu,softmax_cross_entropy,correct_count", "--json", path]
    if HAS_MPL:
        args += ["--plot", png]
    proc = ok(run_bench("kernels.py", *args))
    return json.loads(path.read_text()), proc, png


@pytest.fixture(scope="module")
def train_quick(out):
    path, png = out / "train.json", out / "train.png"
    args = ["--quick", "--json", path] + (["--plot", png] if HAS_MPL else [])
    proc = ok(run_bench("train.py", *args))
    return json.loads(path.read_text()), proc, png


def check_environment(result):
    env = result["environment"]
    assert ENV_FIELDS <= set(env)
    assert VERSION_FIELDS <= set(env["versions"])
    assert env["command"].startswith("python ") and "--json" in env["command"]
    assert env["date"][:2] == "20"
    if not env["gpu"]["available"]:
        assert env["device"] == "no GPU"


# --- kernels ---------------------------------------------------------------------------------


def test_kernels_sim_checks_every_op_and_variant_and_times_nothing(kernels_sim):
    r = kernels_sim
    check_environment(r)
    assert r["bench"] == "kernels" and r["mode"] == "sim" and r["ceilings"] is None
    assert {rec["op"] for rec in r["results"]} == set(r["settings"]["ops"])
    matmuls = [rec for rec in r["results"] if rec["op"] == "matmul"]
    from rawgpu.kernels.matmul import VARIANTS

    assert {e["name"] for rec in matmuls for e in rec["kernels"]} == set(VARIANTS)
    assert any(rec["dims"][3] for rec in matmuls) and any(rec["dims"][4] for rec in matmuls)  # backward's transposes
    for rec in r["results"]:
        assert rec["host"] is None and rec["reference"] is None
        for e in rec["kernels"]:
            assert e["check"]["passed"] and e["check"]["rel_error"] <= e["check"]["tolerance"]
            assert e["timing"] is None and e["rate"] is None  # the simulator is never timed


def test_kernels_timed_run(kernels_timed):
    r, proc, png = kernels_timed
    check_environment(r)
    assert r["mode"] in ("gpu", "host")
    for rec in r["results"]:
        assert rec["unit"] == ("GFLOP/s" if rec["op"] == "matmul" else "GB/s")
        host = rec["host"]
        assert host["status"] == "ok" and host["check"]["passed"]
        assert host["timing"]["ms"]["median"] > 0 and host["rate"] > 0
        assert host["timing"]["ms"]["p10"] <= host["timing"]["ms"]["median"] <= host["timing"]["ms"]["p90"]
        for e in rec["kernels"] + ([rec["reference"]] if rec["op"] == "matmul" else []):
            if r["mode"] == "host":  # no GPU: said so, nothing invented
                assert e["status"] == "no GPU" and e["timing"] is None and e["rate"] is None
            else:
                assert e["check"]["passed"] and e["rate"] > 0
    if r["mode"] == "host":
        assert "no GPU" in proc.stdout
    if HAS_MPL:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- training --------------------------------------------------------------------------------


def _runs(result, system):
    return [run for run in result["runs"] if run["system"] == system]


def test_train_quick_numpy_and_missing_gpu(train_quick):
    r, proc, png = train_quick
    check_environment(r)
    assert r["bench"] == "train" and r["dataset"]["name"] == "sample"
    assert {"epochs", "sweep_epochs", "hidden_sweep", "batch_sweep", "lr", "momentum"} <= set(r["settings"])
    main = [run for run in _runs(r, "rawgpu-numpy") if "main" in run["roles"]]
    assert len(main) == 1
    run = main[0]
    assert run["status"] == "ok" and len(run["epochs"]) == r["settings"]["epochs"]
    assert run["median_epoch_s"] > 0 and run["first_epoch_s"] > 0 and 0.3 < run["final_test_accuracy"] <= 1
    assert run["step_ms"] > 0 and run["steps_per_epoch"] == -(-r["dataset"]["train"] // run["batch"])
    roles = {role for run in _runs(r, "rawgpu-numpy") for role in run["roles"]}
    assert roles == {"main", "hidden-sweep", "batch-sweep"}
    if not r["environment"]["gpu"]["available"]:
        for run in _runs(r, "rawgpu-cuda"):
            assert run["status"] == "no GPU" and "epochs" not in run
    assert r["main_ratios"]["hidden"] == r["settings"]["hidden"]
    assert "rawgpu-numpy / torch-cpu" in proc.stdout
    if HAS_MPL:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed: torch-cpu is not benchmarked")
def test_train_quick_torch_cpu_and_ratio(train_quick):
    r, _, _ = train_quick
    (run,) = [run for run in _runs(r, "torch-cpu") if "main" in run["roles"]]
    assert run["status"] == "ok" and run["median_epoch_s"] > 0 and 0.3 < run["final_test_accuracy"] <= 1
    assert r["settings"]["torch_threads"]["intra_op"] == r["environment"]["numpy_threads"]["threads"]
    ratio = r["main_ratios"]["numpy_over_torch_cpu"]
    numpy_run = [x for x in _runs(r, "rawgpu-numpy") if "main" in x["roles"]][0]
    assert ratio == pytest.approx(numpy_run["median_epoch_s"] / run["median_epoch_s"])


# --- make_tables -----------------------------------------------------------------------------


def region(text, kind):
    return text.split(f"<!-- results:{kind}:start -->")[1].split(f"<!-- results:{kind}:end -->")[0]


def outside_regions(text):
    for kind in ("kernels", "train"):
        head, rest = text.split(f"<!-- results:{kind}:start -->")
        text = head + rest.split(f"<!-- results:{kind}:end -->")[1]
    return text


def test_make_tables_fills_only_the_marked_regions(kernels_sim, kernels_timed, train_quick, out, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for name in ("kernels-sim.json", "kernels-timed.json", "train.json"):
        shutil.copy(out / name, results / name)
    readme = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", readme)
    before = readme.read_text()
    ok(run_bench("make_tables.py", "--results", results, "--readme", readme))
    after = readme.read_text()
    assert outside_regions(after) == outside_regions(before)  # nothing outside the markers moves
    for kind in ("kernels", "train"):
        assert "do not edit by hand" in region(after, kind) and "Command: `python bench/" in region(after, kind)
    kernels, train = region(after, "kernels"), region(after, "train")
    assert "--sim" in kernels and "Correctness only" in kernels
    assert "rawgpu-numpy / torch-cpu" in train
    if not kernels_timed[0]["environment"]["gpu"]["available"]:
        assert "no GPU" in kernels and "no GPU" in train
    assert ok(run_bench("make_tables.py", "--results", results, "--readme", readme, "--check"))
    readme.write_text(before)
    stale = run_bench("make_tables.py", "--results", results, "--readme", readme, "--check")
    assert stale.returncode == 1 and readme.read_text() == before


def test_readme_tables_match_the_committed_results():
    proc = run_bench("make_tables.py", "--check")
    assert proc.returncode == 0, f"README.md's results tables are stale: run python bench/make_tables.py\n{proc.stderr}"


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script, args, code, says",
    [
        ("kernels.py", ["--sizes", "0"], 2, "must be >= 1"),
        ("kernels.py", ["--ops", "matmul,nope"], 2, "unknown 'nope'"),
        ("kernels.py", ["--sim", "--plot", "x.png"], 1, "correctness-only"),
        ("kernels.py", ["--sim", "--mlp", "1,2"], 1, "three numbers"),
        ("train.py", ["--systems", "torch-tpu"], 2, "unknown 'torch-tpu'"),
        ("train.py", ["--json", "/no/such/folder/t.json"], 1, "does not exist"),
        ("make_tables.py", ["--results", "/no/such/folder"], 1, "no such folder"),
    ],
)
def test_bad_input_is_one_line_and_no_traceback(script, args, code, says):
    proc = run_bench(script, *args, timeout=120)
    assert proc.returncode == code
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if "error" in line]) == 1


def test_make_tables_refuses_a_file_without_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n")
    proc = run_bench("make_tables.py", "--readme", readme)
    assert proc.returncode == 1 and "markers" in proc.stderr and "Traceback" not in proc.stderr
    assert readme.read_text() == "# no markers here\n"


def test_resources_are_stamped_beside_the_timings():
    """On a GPU run, each timed kernel gets its registers and occupancy from the compile report."""
    # bench/kernels.py imports its siblings (common, timing) by plain name: load it with bench/ on
    # the path, under a name of its own, and take the path entry out again.
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_kernels", BENCH / "kernels.py")
        bench_kernels = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench_kernels)
    finally:
        sys.path.remove(str(BENCH))

    results = [
        {"op": "matmul", "dims": [128, 128, 784, False, True], "kernels": [{"name": "blocktile2d"}, {"name": "naive"}]},
        {"op": "bias_relu", "dims": [128, 128], "kernels": [{"name": "kernel"}]},
    ]
    rec = lambda kernel, config, regs: {"kernel": kernel, "config": config, "registers": regs, "spill_bytes": 0,  # noqa: E731
                                        "shared_bytes": 0, "occupancy": 0.5, "limiter": "registers"}
    records = [rec("blocktile2d", "bm=64 NN", 60), rec("blocktile2d", "bm=64 NT", 62),
               rec("bias_act", "relu=False (bias_add)", 20), rec("bias_act", "relu=True (bias_relu)", 22)]
    bench_kernels.stamp_resources(results, records)
    assert results[0]["kernels"][0]["resources"]["registers"] == 62  # the NT compile, as launched
    assert "resources" not in results[0]["kernels"][1]  # no record for it: nothing invented
    assert results[1]["kernels"][0]["resources"]["registers"] == 22
