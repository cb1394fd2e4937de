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


@pytest.fixture(scope="module")
def train_cnn(out):
    """The CNN path at a tiny size: 64 train / 64 test images of the sample, batch 32, 2 epochs."""
    path = out / "train-cnn.json"
    args = ["--model", "cnn", "--quick", "--limit-train", "64", "--limit-test", "64", "--batch-size", "32", "--json", path]
    proc = ok(run_bench("train.py", *args))
    return json.loads(path.read_text()), proc


@pytest.fixture(scope="module")
def kernels_cnn_host(out):
    """The CNN's kernel cases without --sim at batch 2: NumPy and PyTorch CPU timed on the host
    (and the kernels and cuDNN where this machine has a GPU)."""
    path = out / "kernels-cnn.json"
    args = ["--quick", "--cnn-batch", "2", "--ops", "conv2d,conv2d_input_grad,conv2d_weight_grad,maxpool2x2,maxpool2x2_backward",
            "--budget", "0.01", "--json", path]
    proc = ok(run_bench("kernels.py", *args))
    return json.loads(path.read_text()), proc


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


CNN_OPS = {"conv2d", "conv2d_input_grad", "conv2d_weight_grad", "maxpool2x2", "maxpool2x2_backward"}


def test_kernels_sim_checks_the_cnn_layers(kernels_sim):
    cnn = [rec for rec in kernels_sim["results"] if rec["group"] == "cnn"]
    assert {rec["op"] for rec in cnn} == CNN_OPS
    # three conv stages: forward and weight gradient each, the input gradient for stages 2 and 3 only
    labels = [rec["label"] for rec in cnn]
    assert labels.count("conv1 fwd") == 1 and "conv1 dx" not in labels and {"conv2 dx", "conv3 dx", "pool3 bwd"} <= set(labels)
    for rec in cnn:
        (e,) = rec["kernels"]
        assert e["check"]["passed"] and e["timing"] is None


def test_kernels_cnn_cases_on_the_host(kernels_cnn_host):
    r, proc = kernels_cnn_host
    check_environment(r)
    assert r["settings"]["cnn_batch"] == 2 and r["settings"]["cnn_image"] == [3, 32, 32]
    convs = [rec for rec in r["results"] if rec["op"] in CNN_OPS - {"maxpool2x2", "maxpool2x2_backward"}]
    assert len(convs) == 8 and all(rec["unit"] == "GFLOP/s" for rec in convs)
    fwd1 = next(rec for rec in convs if rec["label"] == "conv1 fwd")
    assert fwd1["dims"] == [2, 3, 32, 32, 32, 5, 2] and fwd1["flops"] == 2 * 2 * 32 * 32 * 32 * 3 * 25
    for rec in r["results"]:
        assert rec["host"]["check"]["passed"] and rec["host"]["rate"] > 0  # the numpy engine, checked then timed
        torch_cpu = rec["host_reference"]
        if HAS_TORCH:
            assert torch_cpu["check"]["passed"] and torch_cpu["rate"] > 0
        else:
            assert torch_cpu["status"].startswith("no PyTorch") and torch_cpu["timing"] is None
        if r["mode"] == "host":
            assert rec["kernels"][0]["status"] == rec["reference"]["status"] == "no GPU"
    if HAS_TORCH:
        assert r["settings"]["torch_threads"] == r["environment"]["numpy_threads"]["threads"]
    assert "PyTorch CPU" in proc.stdout and "conv3 dx" in proc.stdout


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


def test_train_cnn_tiny(train_cnn):
    r, proc = train_cnn
    check_environment(r)
    s, d = r["settings"], r["dataset"]
    assert s["model"] == "cnn" and s["activation"] == "none" and s["hidden"] == 64 and s["batch_size"] == 32
    assert d["train"] == 64 and d["test"] == 64 and d["image_shape"] == [1, 28, 28] and d["flat_features"] == 576
    (run,) = _runs(r, "rawgpu-numpy")
    assert run["status"] == "ok" and len(run["epochs"]) == 2 and run["steps_per_epoch"] == 2
    assert run["median_epoch_s"] > 0 and run["samples_per_s"] == pytest.approx(64 / run["median_epoch_s"])
    assert 0 <= run["final_test_accuracy"] <= 1
    if not r["environment"]["gpu"]["available"]:
        assert all(x["status"] == "no GPU" for x in _runs(r, "rawgpu-cuda"))
        assert all(x["status"] == ("no GPU" if HAS_TORCH else "no PyTorch") for x in _runs(r, "torch-cuda"))
    assert "CNN on 1x28x28 images" in proc.stdout and "goal: <= 1.5" in proc.stdout
    if not HAS_TORCH:
        assert _runs(r, "torch-cpu")[0]["status"] == "no PyTorch"
        pytest.skip("PyTorch is not installed: torch-cpu is not benchmarked")
    (torch_run,) = _runs(r, "torch-cpu")
    # The same weights and the same batches: PyTorch's losses are rawgpu's, to float32 rounding.
    for ours, theirs in zip(run["epochs"], torch_run["epochs"]):
        assert theirs["train_loss"] == pytest.approx(ours["train_loss"], rel=1e-4)
    assert s["torch_threads"]["intra_op"] == r["environment"]["numpy_threads"]["threads"]
    assert "CPU threads: NumPy's BLAS" in proc.stdout


# --- make_tables -----------------------------------------------------------------------------


def region(text, kind):
    return text.split(f"<!-- results:{kind}:start -->")[1].split(f"<!-- results:{kind}:end -->")[0]


def outside_regions(text):
    for kind in ("kernels", "train"):
        head, rest = text.split(f"<!-- results:{kind}:start -->")
        text = head + rest.split(f"<!-- results:{kind}:end -->")[1]
    return text


def test_make_tables_fills_only_the_marked_regions(kernels_sim, kernels_timed, train_quick, train_cnn, out, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for name in ("kernels-sim.json", "kernels-timed.json", "train.json", "train-cnn.json"):
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
    assert "784-128-10" in train and "CNN on 1x28x28 images" in train  # the newest run of each model
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
        ("train.py", ["--activation", "relu"], 1, "applies to --model cnn"),
        ("train.py", ["--model", "rnn"], 2, "invalid choice: 'rnn'"),
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


# --- bench/step.py: one training step ----------------------------------------------------------

import math  # noqa: E402


def load_step_bench():
    """bench/step.py as a module (it imports its siblings by plain name, like kernels.py)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_step", BENCH / "step.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_step_sim_counts_six_launches_and_no_host_syncs(out):
    path = out / "step-sim.json"
    proc = ok(run_bench("step.py", "--sim", "--json", path))
    assert "6 launches per step" in proc.stdout and "0 host syncs per step" in proc.stdout
    result = json.loads(path.read_text())
    check_environment(result)
    assert result["bench"] == "step" and result["schema"] == 1 and result["mode"] == "sim"
    counts = result["counts"]
    assert counts["launches_per_step"] == 6 and counts["host_syncs_per_step"] == 0
    assert counts["kernels"] == ["linear_relu", "linear_softmax_ce", "weight_grad", "linear_backward_relu", "weight_grad", "sgd_momentum_"]
    assert result["floor"] is None and result["goals"] is None
    for python in counts["python_us_per_step"], counts["python_wall_us_per_step"]:  # rawgpu's own Python per step, launches stubbed out
        assert python["n"] == 9 and 0 < python["p10"] <= python["median"] <= python["p90"]
    assert "rawgpu's own Python per step, kernel launches stubbed out" in proc.stdout
    for r in result["rows"]:
        assert r["timing"] is None and r["us"] is None  # the simulator times no kernel
        assert r["launches_per_step"] == 6 and r["host_syncs_per_step"] == 0


def test_step_without_gpu_is_one_line_and_exit_0(out):
    from rawgpu.engine import probe_gpu

    if probe_gpu()[0]:
        pytest.skip("this machine has a GPU: bench/step.py times instead")
    proc = ok(run_bench("step.py", timeout=120))
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and "needs a GPU" in lines[0]
    path = out / "step-nogpu.json"
    proc = ok(run_bench("step.py", "--json", path, timeout=120))
    assert len((proc.stdout + proc.stderr).strip().splitlines()) == 1
    result = json.loads(path.read_text())
    check_environment(result)
    assert result["mode"] == "none" and result["rows"]
    systems = {(r["system"], r["hidden"]) for r in result["rows"]}
    assert {("rawgpu-eager", 4096), ("torch-compile", 128), ("floor-graph", None)} <= systems
    assert all(r["status"] == "no GPU" and r["us"] is None and r["reason"] for r in result["rows"])


def test_step_bad_flags_are_one_line():
    proc = run_bench("step.py", "--mlp", "784,128,10", timeout=120)
    assert proc.returncode == 1 and "two numbers D,C" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_bench("step.py", "--systems", "torch-tpu", timeout=120)
    assert proc.returncode == 2 and "unknown 'torch-tpu'" in proc.stderr


class HostEvent:
    """A stand-in for a CUDA event: the host clock (the work below is host work)."""

    def record(self):
        import time

        self.t = time.perf_counter()

    def elapsed_ms(self, end):
        return (end.t - self.t) * 1e3


def test_step_timer_batches_steps_between_events():
    step_bench = load_step_bench()
    calls = {"step": 0, "sync": 0}
    timing = step_bench.time_per_step(lambda: calls.__setitem__("step", calls["step"] + 1), event=HostEvent,
                                      sync=lambda: calls.__setitem__("sync", calls["sync"] + 1), steps=7, reps=4, warmup=3)
    assert calls == {"step": 3 + 7 * 4, "sync": 1 + 4}  # the host waits only between batches
    assert timing["us"]["n"] == 4 and timing["steps_per_sample"] == 7 and timing["us"]["median"] >= 0


def test_step_eager_paths_run_on_the_host(monkeypatch):
    """The rawgpu and PyTorch eager paths of a GPU run, on the numpy engine and PyTorch's CPU, with
    host-clock events: the wiring, the counts and the rows (no figure from here means anything)."""
    import rawgpu

    step_bench = load_step_bench()
    monkeypatch.setattr(step_bench, "CupyEvent", HostEvent)
    monkeypatch.setattr(step_bench, "TorchEvent", HostEvent)
    eng = rawgpu.use("numpy")
    s = {"mlp": [12, 3], "batch": 5, "steps": 2, "reps": 2, "warmup": 1, "seed": 0, "systems": ["rawgpu-eager", "torch-eager"]}
    model, step = step_bench.rawgpu_setup(eng, 12, 7, 3, 5, 0)
    counts = step_bench.count_step(eng, step)
    # The numpy backend launches nothing (its fused ops call its plain ones, so more calls are seen).
    assert counts["host_syncs_per_step"] == 0 and counts["launches_per_step"] >= 6
    rows = step_bench.run_rawgpu(eng, s, 7, counts)
    assert [r["system"] for r in rows] == ["rawgpu-eager"] and rows[0]["status"] == "ok"
    assert rows[0]["timing"]["us"]["n"] == 2 and math.isfinite(rows[0]["final_loss"])
    if not HAS_TORCH:
        pytest.skip("PyTorch is not installed: its eager path is not checked")
    weights = model.state_dict()
    x, y = step_bench.random_batch(5, 12, 3, 0)
    # Same network, weights and batch: PyTorch's first loss is rawgpu's.
    net = step_bench.TorchNet("cpu", weights, x, y)
    net.step()
    fresh = rawgpu.TwoLayerMLP(12, 7, 3, seed=0)
    fresh.load_state_dict(weights)
    assert abs(net.final_loss() - float(fresh.loss_and_grads(x, y))) < 1e-5
    torch_rows = step_bench.run_torch(s, 7, weights, (x, y), device="cpu")
    assert [r["system"] for r in torch_rows] == ["torch-eager"] and math.isfinite(torch_rows[0]["final_loss"])
    step_bench.speedups(rows + torch_rows)
    assert torch_rows[0]["speedup_vs_torch_eager"] == pytest.approx(1.0)


def test_step_goals_and_table():
    step_bench = load_step_bench()
    s = {"mlp": [784, 10], "batch": 128, "hidden": [128]}
    timed = lambda system, us: step_bench.row(system, 128, 128, timing={"us": {"median": us, "p10": us, "p90": us, "n": 1}})  # noqa: E731
    rows = [timed("rawgpu-eager", 40.0), timed("rawgpu-graphed", 10.0), timed("torch-eager", 100.0), timed("torch-cudagraph", 30.0),
            step_bench.row("torch-compile", 128, 128, status="torch.compile failed: X")]
    step_bench.speedups(rows)
    assert rows[1]["speedup_vs_torch_eager"] == pytest.approx(10.0) and rows[4]["speedup_vs_torch_eager"] is None
    g = step_bench.goals(rows, s)
    assert g["applies"] and g["rawgpu_best_us"] == 10.0 and g["speedup_vs_torch_eager"] == pytest.approx(10.0)
    assert g["met_speedup_vs_torch_eager"] is True and g["faster_than_torch_cudagraph"] is True and g["met_graphed_us"] is True
    assert step_bench.goals(rows[2:], s)["met_graphed_us"] is None  # unmeasured, not failed
    assert step_bench.goals(rows, {**s, "batch": 64})["applies"] is False


def test_step_prints_the_table_of_a_gpu_run(capsys):
    step_bench = load_step_bench()
    s = {"mlp": [784, 10], "batch": 128, "hidden": [128]}
    timing = {"us": {"median": 50.0, "p10": 45.0, "p90": 60.0, "n": 3}}
    rows = [step_bench.row("torch-eager", 128, 128, timing=timing), step_bench.row("rawgpu-graphed", 128, 128, status="graphs unavailable: X"),
            step_bench.row("floor-graph", None, None, timing=timing)]
    step_bench.speedups(rows)
    result = {"mode": "gpu", "mode_note": "note", "settings": s, "rows": rows, "goals": step_bench.goals(rows, s),
              "counts": {"launches_per_step": 6, "host_syncs_per_step": 0, "kernels": ["linear_relu"] * 6}}
    step_bench.print_results(result)
    text = capsys.readouterr().out
    assert "50 [45..60]" in text and "1.00x" in text and "graphs unavailable: X" in text and "unmeasured" in text
