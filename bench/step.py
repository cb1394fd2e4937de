"""One training step of D-H-C at batch B, timed: rawgpu (eager, graphed) against PyTorch (eager,
CUDA graphs, torch.compile) and the floor that kernel launches set.

    python bench/step.py                              # on a GPU: 784-H-10, B 128, H in 128, 512, 1024, 4096
    python bench/step.py --quick --json step.json     # H 128 only, few steps: a smoke test
    python bench/step.py --sim --json step-sim.json   # anywhere: launches and host syncs per step, and rawgpu's own Python per step

At this network's size a step is a handful of small kernels, so what it costs is launches and
host synchronisations, not FLOPs. Every system trains the same network (Linear, ReLU, Linear;
mean cross-entropy; SGD lr 0.01, momentum 0.9) on one fixed batch resident on the GPU, and no
step reads its loss back. Each is warmed up, then timed with CUDA events around a batch of
``--steps`` back-to-back steps on one stream, ``--reps`` times; reported per step in
microseconds (median, p10..p90). The floor: rawgpu's launches per step times one empty Numba
kernel launch, and one replay of a CUDA graph holding that many empty kernels.

Without a GPU this prints one line and exits 0 (with ``--json``, every row says "no GPU");
``--sim`` counts rawgpu's launches and host syncs per step in Numba's CUDA simulator.
See bench/README.md ("One training step") for the method and every JSON field.
"""

from __future__ import annotations

import os

os.environ.setdefault("CUPY_TF32", "0")  # before CuPy loads: FP32 products stay FP32

import argparse  # noqa: E402
import contextlib  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

from common import (  # noqa: E402
    NO_GPU, SCHEMA, BenchError, check_output_path, choice_list, describe_environment, environment, int_list,
    positive_int, run_main, seed_int, summarize, text_table, write_json,
)
from train_systems import _CallRecorder  # noqa: E402  (the backend-call recorder split_rawgpu_step uses)

LR, MOMENTUM = 0.01, 0.9  # the same as bench/train_systems.py

RAWGPU_EAGER, RAWGPU_GRAPHED = "rawgpu-eager", "rawgpu-graphed"
TORCH_EAGER, TORCH_GRAPH, TORCH_COMPILE = "torch-eager", "torch-cudagraph", "torch-compile"
SYSTEMS = (RAWGPU_EAGER, RAWGPU_GRAPHED, TORCH_EAGER, TORCH_GRAPH, TORCH_COMPILE)
FLOOR_LAUNCHES, FLOOR_GRAPH = "floor-launches", "floor-graph"

#: Per mode: the network (D, C), hidden sizes, batch, and how many steps / repetitions / warm-up steps.
DEFAULTS = {
    "gpu": {"mlp": [784, 10], "hidden": [128, 512, 1024, 4096], "batch": 128, "steps": 200, "reps": 20, "warmup": 20},
    "sim": {"mlp": [20, 5], "hidden": [12], "batch": 8, "steps": 1, "reps": 1, "warmup": 1},
}
QUICK = {"hidden": [128], "steps": 20, "reps": 3, "warmup": 5}

#: The issue's goals for 784-128-10 at batch 128 (see bench/README.md); checked only on a GPU run.
GOAL_SPEEDUP_VS_TORCH_EAGER = 5.0
GOAL_GRAPHED_STEP_US = 20.0

MODE_NOTES = {
    "gpu": "each step timed with CUDA events around batches of back-to-back steps, data resident on the GPU, no loss read",
    "sim": "Numba's CUDA simulator: rawgpu's launches and host syncs per step counted, and its own Python per step timed with the launches stubbed out; no kernel timed (the simulator says nothing about GPU speed)",
    "none": "no GPU: nothing timed; every row says 'no GPU' (--sim counts launches and host syncs without one)",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/step.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="hidden 128 only, 20 steps x 3 repetitions: a smoke test")
    p.add_argument("--sim", action="store_true", help="in Numba's CUDA simulator (tiny shape): count rawgpu's launches and host syncs per step, and time its own Python per step with the launches stubbed out; no kernel timed")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON (fields: bench/README.md)")
    p.add_argument("--hidden", type=int_list, metavar="H,...", help="hidden sizes (default 128,512,1024,4096; --sim 12)")
    p.add_argument("--batch", type=positive_int, help="batch size (default 128; --sim 8)")
    p.add_argument("--mlp", type=int_list, metavar="D,C", help="inputs and classes (default 784,10; --sim 20,5)")
    p.add_argument("--steps", type=positive_int, help="steps per timed batch, between two CUDA events (default 200)")
    p.add_argument("--reps", type=positive_int, help="timed batches per system (default 20)")
    p.add_argument("--warmup", type=positive_int, help="steps run before timing (default 20)")
    p.add_argument("--systems", type=choice_list(SYSTEMS), metavar="S,...", default=list(SYSTEMS), help=f"default all: {', '.join(SYSTEMS)}")
    p.add_argument("--seed", type=seed_int, default=0, help="initial weights and the batch (default 0)")
    return p


def settings_from(args, mode: str) -> dict:
    base = dict(DEFAULTS["sim" if mode == "sim" else "gpu"])
    if args.quick and mode != "sim":
        base.update(QUICK)
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else base[name]  # noqa: E731
    s = {name: pick(name) for name in ("mlp", "hidden", "batch", "steps", "reps", "warmup")}
    if len(s["mlp"]) != 2:
        raise BenchError(f"--mlp takes two numbers D,C (inputs, classes), got {len(s['mlp'])}")
    s["hidden"] = list(dict.fromkeys(s["hidden"]))
    s.update(systems=args.systems, seed=args.seed, quick=args.quick, lr=LR, momentum=MOMENTUM,
             cupy_tf32=os.environ.get("CUPY_TF32"), torch_tf32=False)
    return s


# ---------------------------------------------------------------------------------------------
# Counting: kernel launches and host syncs in one rawgpu step
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def counting(eng):
    """Inside: every backend call (one kernel launch each) and every ``Engine.to_host`` /
    ``Engine.synchronize`` (every read of device memory or wait for the device rawgpu makes)
    is recorded; yields ``{"launches": [names], "syncs": [names]}``."""
    from train_systems import _CallRecorder

    seen = {"launches": [], "syncs": []}
    to_host, synchronize = type(eng).to_host, type(eng).synchronize
    eng.to_host = lambda arr: seen["syncs"].append("to_host") or to_host(eng, arr)
    eng.synchronize = lambda: seen["syncs"].append("synchronize") or synchronize(eng)
    try:
        with _CallRecorder(eng.backend) as rec:
            yield seen
    finally:
        del eng.to_host, eng.synchronize
    seen["launches"] = [fn.__name__ for fn, _, _ in rec.calls]


def rawgpu_setup(eng, d: int, h: int, c: int, batch: int, seed: int):
    """A fresh model, its optimizer, one fixed random batch on the engine, and the step."""
    import rawgpu

    model = rawgpu.TwoLayerMLP(d, h, c, seed=seed)
    opt = rawgpu.SGD(model, LR, MOMENTUM)
    x, y = random_batch(batch, d, c, seed)
    x, y = eng.asarray(x), eng.asarray(y)

    kept = {}

    def step():
        kept["loss"] = model.loss_and_grads(x, y)  # a 0-d device array, never read inside the step
        opt.step()

    step.loss = lambda: float(eng.to_host(kept["loss"])) if "loss" in kept else None
    return model, step


def random_batch(batch: int, d: int, c: int, seed: int):
    """Standard-normal inputs and uniform labels (never zeros: they can run faster than real data)."""
    rng = np.random.default_rng(seed + 1)
    return rng.standard_normal((batch, d), dtype=np.float32), rng.integers(0, c, size=batch).astype(np.int32)


def count_step(eng, step) -> dict:
    """Launches and host syncs of one step, after one warm-up step (which makes the work buffers)."""
    step()
    with counting(eng) as seen:
        step()
    return {"launches_per_step": len(seen["launches"]), "host_syncs_per_step": len(seen["syncs"]),
            "kernels": seen["launches"], "syncs": seen["syncs"]}


# ---------------------------------------------------------------------------------------------
# Timing: CUDA events around batches of back-to-back steps
# ---------------------------------------------------------------------------------------------


def time_per_step(step, *, event, sync, steps: int, reps: int, warmup: int) -> dict:
    """Median and spread of one step, in microseconds.

    ``event()`` makes a CUDA event on the stream the steps run on (``record()``,
    ``elapsed_ms(other)``); ``sync()`` waits for that stream. Warm-up steps first, then ``reps``
    batches of ``steps`` steps, each between two events; a batch's time over ``steps`` is one
    sample. The host waits for the GPU only between batches, never inside one.
    """
    for _ in range(warmup):
        step()
    sync()
    samples = []
    for _ in range(reps):
        start, end = event(), event()
        start.record()
        for _ in range(steps):
            step()
        end.record()
        sync()
        samples.append(start.elapsed_ms(end) * 1e3 / steps)
    return {"us": summarize(samples), "clock": "CUDA events", "steps_per_sample": steps, "samples": reps}


class CupyEvent:
    """A CUDA event on CuPy's current stream (the one rawgpu launches on)."""

    def __init__(self):
        import cupy

        self.cp, self.ev = cupy, cupy.cuda.Event()

    def record(self):
        self.ev.record()  # on the current stream

    def elapsed_ms(self, end) -> float:
        return float(self.cp.cuda.get_elapsed_time(self.ev, end.ev))


class TorchEvent:
    """A CUDA event on PyTorch's current stream."""

    def __init__(self):
        import torch

        self.ev = torch.cuda.Event(enable_timing=True)

    def record(self):
        self.ev.record()

    def elapsed_ms(self, end) -> float:
        return float(self.ev.elapsed_time(end.ev))


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def row(system, hidden, batch, status="ok", reason=None, timing=None, **extra) -> dict:
    loss = extra.pop("final_loss", None)
    extra["final_loss"] = loss if loss is None or np.isfinite(loss) else str(loss)  # JSON has no NaN
    out = {"system": system, "hidden": hidden, "batch": batch, "status": status, "reason": reason,
           "timing": timing, "us": timing["us"]["median"] if timing else None,
           "speedup_vs_torch_eager": None, "launches_per_step": None, "host_syncs_per_step": None,
           "final_loss": None, "how": None}
    out.update(extra)
    return out


# ---------------------------------------------------------------------------------------------
# The systems on a GPU
# ---------------------------------------------------------------------------------------------


def run_rawgpu(eng, s, h: int, counts: dict) -> list[dict]:
    """rawgpu eager and graphed at hidden ``h`` (each on a fresh model), on the run's one stream."""
    from rawgpu.graphs import StepGraphs

    (d, c), b = s["mlp"], s["batch"]
    sync = eng.synchronize
    kw = {"event": CupyEvent, "sync": sync, "steps": s["steps"], "reps": s["reps"], "warmup": s["warmup"]}
    rows = []
    common = {"launches_per_step": counts["launches_per_step"], "host_syncs_per_step": counts["host_syncs_per_step"]}
    if RAWGPU_EAGER in s["systems"]:
        model, step = rawgpu_setup(eng, d, h, c, b, s["seed"])
        timing = time_per_step(step, **kw)
        rows.append(row(RAWGPU_EAGER, h, b, timing=timing, final_loss=step.loss(), **common,
                        how="model.loss_and_grads(x, y); opt.step() on the cuda engine, one fresh non-blocking stream"))
    if RAWGPU_GRAPHED in s["systems"]:
        model, step = rawgpu_setup(eng, d, h, c, b, s["seed"])
        notes = []
        graphs = StepGraphs(eng, notes.append)
        for _ in range(3):  # eager first: compile every kernel and make every buffer before capture
            step()
        sync()
        graphs.run(0, step)  # records the graph (and replays it once)
        sync()
        if not graphs.enabled:
            reason = notes[-1] if notes else "capture failed"
            rows.append(row(RAWGPU_GRAPHED, h, b, status=f"graphs unavailable: {_graph_reason(reason)}", reason=reason, **common))
        else:
            timing = time_per_step(lambda: graphs.run(0, step), **kw)
            rows.append(row(RAWGPU_GRAPHED, h, b, timing=timing, final_loss=step.loss(), **common,
                            how="rawgpu.graphs.StepGraphs(eng, log).run(0, step): the step recorded once, then one graph launch per step"))
    return rows


def _graph_reason(note: str) -> str:
    """The reason inside StepGraphs' note ("note: CUDA graphs are not available here (WHY); ...")."""
    head, sep, rest = note.partition("(")
    return rest.rpartition(")")[0] if sep and ")" in rest else note


class TorchNet:
    """The same network in PyTorch, from rawgpu's initial weights, on one fixed batch on ``device``."""

    def __init__(self, device: str, weights: dict, x, y):
        import torch
        from torch import nn

        self.torch = torch
        dev = torch.device(device)
        d, h = weights["W1"].shape
        c = weights["W2"].shape[1]
        self.model = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, c)).to(dev)
        with torch.no_grad():  # nn.Linear stores weights (out, in): the transpose of rawgpu's
            for layer, wn, bn in ((self.model[0], "W1", "b1"), (self.model[2], "W2", "b2")):
                layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(weights[wn].T)))
                layer.bias.copy_(torch.from_numpy(weights[bn]))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.loss_fn = nn.CrossEntropyLoss()
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(dev)
        self.y = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(dev)
        self.loss = None

    def step(self):
        """The textbook step; the loss stays on the device (kept, never read inside the step)."""
        self.opt.zero_grad(set_to_none=True)
        self.loss = self.loss_fn(self.model(self.x), self.y)
        self.loss.backward()
        self.opt.step()

    def capture(self, warmup: int = 3):
        """PyTorch's whole-network capture recipe (docs: CUDA semantics, "Whole-network capture"):
        warm up on a side stream, zero the gradients with set_to_none before capture, capture
        forward, backward and optimizer.step into one graph. Returns the replay function."""
        torch = self.torch
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            self.loss = self.loss_fn(self.model(self.x), self.y)  # x, y: the static input and target
            self.loss.backward()
            self.opt.step()
        self._graph = graph
        return graph.replay

    def compiled(self):
        """The whole step under torch.compile(mode="reduce-overhead") (its own CUDA graphs)."""
        torch = self.torch
        torch._dynamo.reset()  # a fresh cache per network: no recompile limit carried over
        mark = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)
        compiled = torch.compile(self._step_fn, mode="reduce-overhead")

        def step():
            if mark is not None:
                mark()  # a new iteration: cudagraph trees may reuse the last step's outputs
            self.loss = compiled()

        return step

    def _step_fn(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss

    def final_loss(self) -> float | None:
        return None if self.loss is None else float(self.loss.detach())


def run_torch(s, h: int, weights: dict, batch_xy, device: str = "cuda") -> list[dict]:
    """PyTorch eager, with CUDA graphs and under torch.compile at hidden ``h`` (each a fresh network).
    ``device`` is "cuda" in a run; the tests run the eager path on "cpu" with a host-clock event."""
    import torch

    b = s["batch"]
    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 products, as rawgpu computes them
    torch.backends.cudnn.allow_tf32 = False
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    kw = {"event": TorchEvent, "sync": sync, "steps": s["steps"], "reps": s["reps"], "warmup": s["warmup"]}
    rows = []
    if TORCH_EAGER in s["systems"]:
        net = TorchNet(device, weights, *batch_xy)
        timing = time_per_step(net.step, **kw)
        rows.append(row(TORCH_EAGER, h, b, timing=timing, final_loss=net.final_loss(),
                        how="nn.Linear, ReLU, nn.Linear; CrossEntropyLoss; SGD(lr 0.01, momentum 0.9); zero_grad(set_to_none=True)"))
    if TORCH_GRAPH in s["systems"]:
        net = TorchNet(device, weights, *batch_xy)
        try:
            replay = net.capture()
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal
            rows.append(row(TORCH_GRAPH, h, b, status=f"capture failed: {one_line(exc)}", reason=one_line(exc)))
        else:
            timing = time_per_step(replay, **kw)
            rows.append(row(TORCH_GRAPH, h, b, timing=timing, final_loss=net.final_loss(),
                            how="torch.cuda.graph of forward + backward + optimizer.step (whole-network capture recipe); graph.replay() per step"))
    if TORCH_COMPILE in s["systems"]:
        net = TorchNet(device, weights, *batch_xy)
        try:
            step = net.compiled()
            timing = time_per_step(step, **{**kw, "warmup": max(kw["warmup"], 5)})  # compile + cudagraph recording happen here
        except Exception as exc:  # noqa: BLE001
            rows.append(row(TORCH_COMPILE, h, b, status=f"torch.compile failed: {one_line(exc)}", reason=one_line(exc)))
        else:
            rows.append(row(TORCH_COMPILE, h, b, timing=timing, final_loss=net.final_loss(),
                            how='torch.compile(step, mode="reduce-overhead"); torch.compiler.cudagraph_mark_step_begin() before each step'))
    return rows


def measure_floor(s, launches: int) -> tuple[list[dict], dict]:
    """(a) ``launches`` x one empty Numba kernel launch; (b) one replay of a graph of ``launches`` empty kernels."""
    import cupy
    from numba import cuda

    @cuda.jit
    def empty():
        pass

    stream = cupy.cuda.get_current_stream()
    nstream = cuda.external_stream(stream.ptr)
    n = s["steps"] * launches  # launches per timed batch: as many as the steps' batch holds

    def one_launch():
        empty[1, 1, nstream]()

    kw = {"event": CupyEvent, "sync": stream.synchronize, "reps": s["reps"], "warmup": s["warmup"]}
    per_launch = time_per_step(one_launch, steps=n, **kw)
    a = {key: value * launches for key, value in per_launch["us"].items() if key != "n"}
    a["n"] = per_launch["us"]["n"]
    rows = [row(FLOOR_LAUNCHES, None, None, timing={**per_launch, "us": a}, launches_per_step=launches,
                how=f"{launches} x the median time of one empty @cuda.jit kernel launch (events around {n} launches)")]
    floor = {"launches_per_step": launches, "empty_launch_us": per_launch["us"], "launches_us": a, "graph_us": None, "graph_status": "ok"}

    try:
        one_launch()
        stream.synchronize()
        stream.begin_capture()
        try:
            for _ in range(launches):
                one_launch()
        finally:
            graph = stream.end_capture()
    except Exception as exc:  # noqa: BLE001
        status = f"graphs unavailable: {one_line(exc)}"
        rows.append(row(FLOOR_GRAPH, None, None, status=status, reason=one_line(exc), launches_per_step=launches))
        floor["graph_status"] = status
        return rows, floor
    timing = time_per_step(lambda: graph.launch(stream=stream), steps=s["steps"], **kw)
    rows.append(row(FLOOR_GRAPH, None, None, timing=timing, launches_per_step=launches,
                    how=f"one replay of a CUDA graph holding {launches} empty kernels"))
    floor["graph_us"] = timing["us"]
    return rows, floor


def speedups(rows: list[dict]) -> None:
    """Stamp each timed row with (PyTorch eager's median at its hidden size) / (its median)."""
    ref = {r["hidden"]: r["us"] for r in rows if r["system"] == TORCH_EAGER and r["us"]}
    for r in rows:
        base = ref.get(r["hidden"])
        if r["us"] and base:
            r["speedup_vs_torch_eager"] = base / r["us"]


def goals(rows: list[dict], s) -> dict:
    """The issue's goals at 784-128-10, batch 128, from this run's step times (None where unmeasured)."""
    at = lambda system: next((r["us"] for r in rows if r["system"] == system and r["hidden"] == 128 and r["us"]), None)  # noqa: E731
    applies = s["mlp"] == [784, 10] and s["batch"] == 128 and 128 in s["hidden"]
    best = min((u for u in (at(RAWGPU_EAGER), at(RAWGPU_GRAPHED)) if u), default=None) if applies else None
    eager, graph, graphed = (at(TORCH_EAGER), at(TORCH_GRAPH), at(RAWGPU_GRAPHED)) if applies else (None, None, None)
    verdict = lambda value, ok: None if value is None else bool(ok)  # noqa: E731
    return {
        "applies": applies,
        "how": "per-step medians at 784-128-10, batch 128 (an epoch is its steps back to back, data resident, no per-step read)",
        "rawgpu_best_us": best,
        "speedup_vs_torch_eager": eager / best if best and eager else None,
        "target_speedup_vs_torch_eager": GOAL_SPEEDUP_VS_TORCH_EAGER,
        "met_speedup_vs_torch_eager": verdict(eager and best, eager and best and eager / best >= GOAL_SPEEDUP_VS_TORCH_EAGER),
        "faster_than_torch_cudagraph": verdict(graph and best, graph and best and best < graph),
        "rawgpu_graphed_us": graphed,
        "target_graphed_us": GOAL_GRAPHED_STEP_US,
        "met_graphed_us": verdict(graphed, graphed and graphed <= GOAL_GRAPHED_STEP_US),
    }


# ---------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------


def run_gpu(s) -> tuple[list[dict], dict, dict]:
    import rawgpu
    from rawgpu.graphs import training_stream

    eng = rawgpu.use("cuda")
    (d, c), b = s["mlp"], s["batch"]
    rows, counts, floor = [], None, None
    with training_stream(eng):  # one fresh stream for rawgpu and the floor
        for h in s["hidden"]:
            print(f"hidden {h}: rawgpu ...", file=sys.stderr, flush=True)
            model, step = rawgpu_setup(eng, d, h, c, b, s["seed"])
            weights = model.state_dict()  # PyTorch starts from rawgpu's initial weights (a read, outside any timing)
            counts_h = count_step(eng, step)
            counts = counts or counts_h
            rows += run_rawgpu(eng, s, h, counts_h)
            torch_rows = torch_missing(s, h)
            if torch_rows is None:
                print(f"hidden {h}: PyTorch ...", file=sys.stderr, flush=True)
                rows += run_torch(s, h, weights, random_batch(b, d, c, s["seed"]))
            else:
                rows += torch_rows
        print("the floor: empty kernel launches ...", file=sys.stderr, flush=True)
        floor_rows, floor = measure_floor(s, counts["launches_per_step"])
        rows += floor_rows
    speedups(rows)
    return rows, counts, floor


def torch_missing(s, h) -> list[dict] | None:
    """Rows saying why PyTorch cannot run (None when it can)."""
    wanted = [name for name in (TORCH_EAGER, TORCH_GRAPH, TORCH_COMPILE) if name in s["systems"]]
    try:
        import torch
    except ImportError:
        return [row(name, h, s["batch"], status="no PyTorch", reason="PyTorch is not installed (pip install torch)") for name in wanted]
    if not torch.cuda.is_available():
        return [row(name, h, s["batch"], status=NO_GPU, reason="torch.cuda.is_available() is False") for name in wanted]
    return None


def python_per_step(step, *, steps: int = 300, reps: int = 9) -> tuple[dict, dict]:
    """rawgpu's own host time per step, in microseconds, with every kernel launch stubbed out:
    (CPU time of this thread, host clock).

    In the simulator a launch runs the kernel in Python threads, so the simulator's launch (and
    its configuration) are replaced by no-ops; what is left is the model, the op layer's checks
    and the launchers: the call path a step takes before Numba gets the kernel. ``steps`` steps
    per sample, ``reps`` samples, after a warm-up. The headline is the thread's CPU time: the step
    is then pure host work in this thread, and on a shared machine the host clock also counts the
    time other processes held the CPU (it is kept beside it). Not a GPU figure: on the ``cuda``
    engine Numba's launch itself comes on top, and the NumPy-backed ``sim`` engine checks its
    labels' range on the host each step, which ``cuda`` leaves to the kernel.
    """
    import time

    from numba.cuda.simulator import kernel as simkernel

    cls = simkernel.FakeCUDAKernel
    call, getitem = cls.__call__, cls.__getitem__
    cls.__call__, cls.__getitem__ = (lambda self, *args: None), (lambda self, config: self)
    try:
        for _ in range(20):
            step()
        cpu, wall = [], []
        for _ in range(reps):
            start, start_cpu = time.perf_counter(), time.thread_time()
            for _ in range(steps):
                step()
            cpu.append((time.thread_time() - start_cpu) / steps * 1e6)
            wall.append((time.perf_counter() - start) / steps * 1e6)
    finally:
        cls.__call__, cls.__getitem__ = call, getitem
    return summarize(cpu), summarize(wall)


def run_sim(s) -> tuple[list[dict], dict]:
    import rawgpu

    eng = rawgpu.use("sim")
    (d, c), b = s["mlp"], s["batch"]
    rows, counts = [], None
    for h in s["hidden"]:
        _, step = rawgpu_setup(eng, d, h, c, b, s["seed"])
        counts_h = count_step(eng, step)
        counts_h["python_us_per_step"], counts_h["python_wall_us_per_step"] = python_per_step(step)
        counts = counts or counts_h
        rows.append(row(RAWGPU_EAGER, h, b, status="counted (simulator)", launches_per_step=counts_h["launches_per_step"],
                        host_syncs_per_step=counts_h["host_syncs_per_step"], how="one step's backend calls and Engine.to_host/synchronize calls, counted"))
    return rows, counts


def no_gpu_rows(s, reason: str) -> list[dict]:
    rows = [row(name, h, s["batch"], status=NO_GPU, reason=reason) for h in s["hidden"] for name in s["systems"]]
    return rows + [row(name, None, None, status=NO_GPU, reason=reason) for name in (FLOOR_LAUNCHES, FLOOR_GRAPH)]


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def fmt_us(x) -> str:
    return "-" if x is None else (f"{x:.3g}" if x < 100 else f"{x:,.0f}")


def print_results(result: dict) -> None:
    s = result["settings"]
    print(f"one training step of {s['mlp'][0]}-H-{s['mlp'][1]} at batch {s['batch']}; {result['mode_note']}")
    if result["counts"]:
        c = result["counts"]
        print(f"rawgpu: {c['launches_per_step']} launches per step ({', '.join(c['kernels'])}); {c['host_syncs_per_step']} host syncs per step")
        if c.get("python_us_per_step"):
            t, w = c["python_us_per_step"], c["python_wall_us_per_step"]
            print(f"rawgpu's own Python per step, kernel launches stubbed out (CPU time): {fmt_us(t['median'])} us "
                  f"[{fmt_us(t['p10'])}..{fmt_us(t['p90'])}]; host clock {fmt_us(w['median'])} us [{fmt_us(w['p10'])}..{fmt_us(w['p90'])}]")
    if result["mode"] != "gpu":
        return
    table = []
    for r in result["rows"]:
        t = r["timing"]
        when = f"{fmt_us(r['us'])} [{fmt_us(t['us']['p10'])}..{fmt_us(t['us']['p90'])}]" if t else r["status"]
        x = f"{r['speedup_vs_torch_eager']:.2f}x" if r["speedup_vs_torch_eager"] else "-"
        table.append([r["system"], r["hidden"] if r["hidden"] is not None else "-", when, x])
    print(text_table(["system", "hidden", "us per step median [p10..p90]", "x vs torch eager (speed-up)"], table))
    g = result["goals"]
    if g and g["applies"]:
        say = lambda v: "unmeasured" if v is None else ("met" if v else "not met")  # noqa: E731
        print(f"goals at 784-128-10, B 128: >= {g['target_speedup_vs_torch_eager']:g}x PyTorch eager: {say(g['met_speedup_vs_torch_eager'])}; "
              f"faster than PyTorch CUDA graphs: {say(g['faster_than_torch_cudagraph'])}; "
              f"graphed step <= {g['target_graphed_us']:g} us: {say(g['met_graphed_us'])}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_output_path(args.json, "--json")
    if args.sim:
        mode, why = "sim", "--sim"
        import rawgpu

        rawgpu.use("sim")  # before anything loads numba.cuda: the simulator must be on first
    else:
        from rawgpu.engine import probe_gpu

        usable, why = probe_gpu()
        mode = "gpu" if usable else "none"
    s = settings_from(args, mode)
    env = environment()
    result = {"bench": "step", "schema": SCHEMA, "mode": mode, "mode_note": MODE_NOTES[mode], "environment": env,
              "settings": s, "counts": None, "floor": None, "goals": None, "rows": []}

    if mode == "none":
        result["rows"] = no_gpu_rows(s, why)
        if args.json:
            write_json(args.json, result)
        print(f"bench/step.py: needs a GPU ({why}); nothing timed{f', {args.json} says no GPU' if args.json else ''}; --sim counts launches and host syncs per step without one")
        return 0

    print(f"{describe_environment(env)}\nmode: {mode} - {MODE_NOTES[mode]}", file=sys.stderr)
    if mode == "sim":
        result["rows"], result["counts"] = run_sim(s)
    else:
        result["rows"], result["counts"], result["floor"] = run_gpu(s)
        result["goals"] = goals(result["rows"], s)
    print_results(result)
    if args.json:
        write_json(args.json, result)
        print(f"results written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "bench/step.py"))
