"""Kernel benchmark: every op and every matmul variant, checked, then timed.

    python bench/kernels.py                      # on a GPU: the full sweep against cuBLAS and the ceilings
    python bench/kernels.py --quick --json k.json
    python bench/kernels.py --sim                # no GPU needed: the kernels in the simulator, correctness only

For each problem (an op at a shape: square sizes 128..8192, the shapes one training step of
the 784-128-10 network uses, and the CNN's conv and max-pool layers at batch 64) and each
implementation (the matmul ladder or the op's kernel on the GPU; cuBLAS through CuPy for
matmul, PyTorch for the CNN's ops, cuDNN on the GPU and its CPU ops on the host; NumPy on the host), the output is first checked
against a float64 NumPy reference on fresh random inputs with the output poisoned (NaN);
a wrong result stops the run. Then it is timed (see timing.py) and reported as median time,
spread, GFLOP/s (matmul) or GB/s (the rest), % of the device's measured ceilings and, for
matmul, % of cuBLAS. Without a GPU the kernel rows say "no GPU" and only NumPy is timed; with
``--sim`` the kernels run in Numba's CUDA simulator and are checked but never timed.
See bench/README.md for the method and every JSON field.
"""

from __future__ import annotations

import os

# CuPy reads CUPY_TF32 when it is imported: "0" keeps cuBLAS's float32 products in full FP32
# (no TF32 tensor-core rounding), so the reference computes what our kernels compute.
os.environ["CUPY_TF32"] = "0"

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

from common import (  # noqa: E402
    emit, NO_GPU, SCHEMA, BenchError, check_outputs, choice_list, describe_environment, environment, fmt_ms,
    fmt_num, int_list, positive_float, positive_int, require_plotting, seed_int, run_main, save_plot, text_table,
)
from kernel_cases import (  # noqa: E402
    OPS, BackendOps, CublasOps, TorchOps, cnn_problems, mlp_problems, spec_for, square_problems,
)

from rawgpu.kernels.matmul import VARIANTS  # noqa: E402  (the ladder, slow to fast; loads no numba.cuda)
TOLERANCE = 1e-4  # ||out - ref|| / ||ref||: FP32 lands far below; TF32 (~3e-4) or a wrong element above
SIM_ONLY = "correctness only (simulator)"

# Sizes per mode. The simulator runs one OS thread per CUDA thread: its shapes must stay tiny,
# and odd, so the kernels' edge handling is exercised.
# The CNN's layers: the seed's (3x32x32 images, conv widths 32, 32, 64) at batch 64 on a GPU and
# the host; in the simulator a narrow network on tiny odd images.
SEED_CNN = {"cnn_batch": 64, "cnn_image": (3, 32, 32), "cnn_channels": (32, 32, 64)}
DEFAULTS = {
    "gpu": {"sizes": [128, 256, 512, 1024, 2048, 4096, 8192], "mlp": [784, 128, 10], "batch": 128, **SEED_CNN},
    "host": {"sizes": [128, 256, 512, 1024, 2048, 4096, 8192], "mlp": [784, 128, 10], "batch": 128, **SEED_CNN},
    "sim": {"sizes": [8, 17, 24], "mlp": [20, 12, 5], "batch": 8, "cnn_batch": 2, "cnn_image": (3, 8, 9), "cnn_channels": (4, 5, 3)},
}
QUICK = {
    "gpu": {"sizes": [128, 512], "mlp": [784, 128, 10], "batch": 128, **SEED_CNN},
    "host": {"sizes": [64, 128], "mlp": [784, 128, 10], "batch": 128, **SEED_CNN},
    "sim": {"sizes": [5], "mlp": [7, 6, 3], "batch": 4, "cnn_batch": 1, "cnn_image": (2, 8, 8), "cnn_channels": (3, 2, 2)},
}
# Repetitions: (warm-up, fewest timed runs, most timed runs); runs continue until --budget seconds.
REPS = {"gpu": (3, 10, 200), "host": (2, 5, 50)}
QUICK_REPS = {"gpu": (2, 3, 10), "host": (1, 3, 5)}
#: A nominal host cache size for sizing the input rotation (the CPU's L3 is not queried).
HOST_CACHE_BYTES = 64 << 20
#: How much memory the rotated input sets may take.
SET_MEMORY_CAP = {"gpu": 8 << 30, "host": 2 << 30}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/kernels.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--sim", action="store_true", help="run the kernels in Numba's CUDA simulator: correctness only, no timings")
    p.add_argument("--quick", action="store_true", help="a short run (few sizes, few repetitions) for smoke tests")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON (fields: bench/README.md)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG: GFLOP/s and GB/s against size (needs matplotlib)")
    p.add_argument("--sizes", type=int_list, metavar="N,N,...", help="square sizes (default 128..8192; simulator 8,17,24)")
    p.add_argument("--mlp", type=int_list, metavar="D,H,C", help="network whose training shapes are measured (default 784,128,10)")
    p.add_argument("--batch", type=positive_int, help="batch size of those shapes (default 128)")
    p.add_argument("--cnn-batch", type=positive_int, help="batch size of the CNN's conv and pool shapes (default 64; simulator 2)")
    p.add_argument("--ops", type=choice_list(OPS), metavar="OP,...", default=list(OPS), help=f"ops to run (default all: {', '.join(OPS)})")
    p.add_argument("--variants", type=choice_list(VARIANTS), metavar="V,...", default=list(VARIANTS), help="matmul variants (default all)")
    p.add_argument("--budget", type=positive_float, default=0.3, metavar="SECONDS", help="time spent timing each implementation of a problem (default 0.3)")
    p.add_argument("--host-max-size", type=positive_int, default=4096, metavar="N", help="skip NumPy matmuls with a side above N (default 4096)")
    p.add_argument("--no-host", action="store_true", help="do not time NumPy on the host")
    p.add_argument("--seed", type=seed_int, default=None, help="seed for the random inputs (default: fresh each run)")
    p.add_argument("--write-tuning", metavar="PATH", help="GPU only: record the fastest rung per training-shape matmul in this "
                   "tuning table (kernels/matmul/tuning.json ships with the package), under this GPU's name")
    return p


# ---------------------------------------------------------------------------------------------
# Where arrays live: the GPU (CuPy) or the host (NumPy)
# ---------------------------------------------------------------------------------------------


def out_type(spec) -> tuple:
    """(shape, dtype) of an output as a spec gives it: a shape (float32) or (shape, dtype)."""
    if len(spec) == 2 and isinstance(spec[1], type):
        return tuple(spec[0]), np.dtype(spec[1])
    return tuple(spec), np.dtype(np.float32)


class Place:
    def __init__(self, xp):
        self.xp = xp
        self.device = xp is not np

    def put(self, host):
        return self.xp.array(np.ascontiguousarray(host), copy=True)

    def empty(self, shape):
        shape, dtype = out_type(shape)
        return self.xp.empty(shape, dtype=dtype)

    def poisoned(self, shape):
        """NaN in a float output, -1 in an integer one (no index is negative)."""
        shape, dtype = out_type(shape)
        return self.xp.full(shape, np.nan if np.issubdtype(dtype, np.floating) else -1, dtype=dtype)

    def get(self, x):
        if self.device and hasattr(x, "get"):
            return x.get()
        return np.asarray(x)


# ---------------------------------------------------------------------------------------------
# Checking and timing one implementation
# ---------------------------------------------------------------------------------------------


class Reference:
    """Random inputs for a problem and their float64 result, drawn once when first asked for."""

    def __init__(self, problem, spec, rng):
        self.problem, self.spec, self.rng = problem, spec, rng
        self._value = None

    def get(self):
        if self._value is None:
            inputs = self.spec.inputs(self.rng, self.problem.dims)
            self._value = (inputs, self.spec.reference(inputs, self.problem.dims))
        return self._value


def check(name, problem, spec, ref, api, place, variant=None) -> dict:
    """Run once on the reference inputs with poisoned outputs; raise BenchError if anything is off."""
    inputs, expected = ref.get()
    dev = {k: place.put(v) for k, v in inputs.items()}
    outs = {k: place.poisoned(shape) for k, shape in spec.outputs(problem.dims).items()}
    extra = spec.call(api, dev, outs, problem.dims, variant)
    got = {**outs, **{k: dev[k] for k in spec.in_place}, **extra}
    worst = 0.0
    where = f"{name} on {problem.op} {problem.shape_text} ({problem.label})"
    for key, want in expected.items():
        have = np.asarray(place.get(got[key]))
        if np.issubdtype(np.asarray(want).dtype, np.integer) and np.ndim(want):  # indices: every one exact
            wrong = int(np.count_nonzero(have != want)) if have.shape == np.shape(want) else -1
            if wrong:
                raise BenchError(f"{where}: WRONG {key}: {'shape ' + str(have.shape) if wrong < 0 else f'{wrong} index(es) differ'}")
            continue
        if np.issubdtype(np.asarray(want).dtype, np.integer):
            if int(have.reshape(-1)[0]) != int(want):
                raise BenchError(f"{where}: WRONG {key}: got {int(have.reshape(-1)[0])}, expected {int(want)}")
            continue
        if have.shape != np.shape(want):
            raise BenchError(f"{where}: WRONG {key}: shape {have.shape}, expected {np.shape(want)}")
        if not np.all(np.isfinite(have)):
            bad = int(np.count_nonzero(~np.isfinite(have)))
            raise BenchError(f"{where}: WRONG {key}: {bad} element(s) NaN or infinite (unwritten outputs are poisoned with NaN)")
        diff = np.linalg.norm(have.astype(np.float64) - want)
        norm = np.linalg.norm(want)
        err = float(diff / norm if norm > 0 else diff)
        if err > TOLERANCE:
            raise BenchError(f"{where}: WRONG {key}: relative error {err:.2e} > {TOLERANCE:g}")
        worst = max(worst, err)
    return {"rel_error": worst, "tolerance": TOLERANCE, "passed": True}


def input_sets(problem, spec, place, rng, cache_bytes, cap_bytes):
    """Enough independent input/output sets that, cycled through, they outgrow the cache."""
    sample = spec.inputs(rng, problem.dims)
    set_bytes = sum(a.nbytes for a in sample.values()) + sum(4 * math.prod(out_type(s)[0]) for s in spec.outputs(problem.dims).values())
    n = min(8, max(2, math.ceil(2 * cache_bytes / set_bytes)))
    while n > 1 and n * set_bytes > cap_bytes:
        n -= 1
    sets = []
    for i in range(n):
        host = sample if i == 0 else spec.inputs(rng, problem.dims)
        sets.append(({k: place.put(v) for k, v in host.items()}, {k: place.empty(s) for k, s in spec.outputs(problem.dims).items()}))
    return sets


def timed(problem, spec, api, place, rng, timer, ctx, variant=None) -> dict:
    sets = input_sets(problem, spec, place, rng, ctx.cache_bytes(place), SET_MEMORY_CAP["gpu" if place.device else "host"])
    warmup, min_reps, max_reps = ctx.reps["gpu" if place.device else "host"]

    def run(i):
        spec.call(api, sets[i][0], sets[i][1], problem.dims, variant)

    result = timer(run, len(sets), warmup=warmup, min_reps=min_reps, max_reps=max_reps, budget_s=ctx.args.budget)
    result["input_sets"] = len(sets)
    return result


def entry(name, status, chk=None, timing=None) -> dict:
    return {"name": name, "status": status, "check": chk, "timing": timing, "rate": None, "pct_of_ceiling": None, "pct_of_reference": None}


def torch_unavailable(device: str) -> str | None:
    """Why PyTorch cannot be the CNN's reference on ``device`` here, or None when it can."""
    try:
        import torch
    except ImportError:
        return "no PyTorch (pip install torch)"
    if device == "cuda" and not torch.cuda.is_available():
        return "PyTorch sees no CUDA device"
    return None


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class Context:
    """What every problem needs: the mode, the engine's op interfaces, the timers, the ceilings."""

    def __init__(self, args, mode):
        self.args, self.mode = args, mode
        self.rng = np.random.default_rng(args.seed)
        self.reps = QUICK_REPS if args.quick else REPS
        self.host_api = None
        self.gpu_timer = None
        self.ceilings = None
        if mode in ("gpu", "sim"):
            import rawgpu
            from rawgpu import ops

            self.engine = rawgpu.use("cuda" if mode == "gpu" else "sim")
            self.ops = ops  # correctness through the op layer: its argument checks apply
            self.fast = BackendOps(self.engine.backend, device_count=mode == "gpu")
            self.place = Place(self.engine.xp)
        if mode == "gpu":
            from timing import GpuTimer

            self.gpu_timer = GpuTimer()
        if mode != "sim" and not args.no_host:
            from rawgpu.backends.numpy_backend import NumpyBackend

            self.host_api = BackendOps(NumpyBackend())
        self.torch_threads = None
        if mode != "sim" and torch_unavailable("cpu") is None:
            import torch

            from common import numpy_threads

            torch.set_num_threads(numpy_threads()["threads"])  # PyTorch's CPU ops get as many threads as NumPy's BLAS
            self.torch_threads = torch.get_num_threads()

    def cache_bytes(self, place):
        return self.gpu_timer.l2_bytes if place.device else HOST_CACHE_BYTES


def measure_ceilings(ctx) -> dict:
    """The device's measured limits: a large device-to-device copy (GB/s, bytes read + written)
    and cuBLAS SGEMM at a large size (FP32 TFLOP/s, TF32 off)."""
    import cupy

    timer = ctx.gpu_timer
    warmup, min_reps, max_reps = ctx.reps["gpu"]
    reps = {"warmup": warmup, "min_reps": min_reps, "max_reps": max_reps, "budget_s": ctx.args.budget}
    n_copy = (256 << 20) if not ctx.args.quick else (32 << 20)  # float32 elements: 1 GiB (quick: 128 MiB)
    arrays = {"src": cupy.random.random(n_copy, dtype=cupy.float32)}
    arrays["dst"] = cupy.empty_like(arrays["src"])
    copy = timer.time(lambda i: cupy.copyto(arrays["dst"], arrays["src"]), 1, **reps)
    copy_gbps = 2 * 4 * n_copy / (copy["ms"]["median"] / 1e3) / 1e9
    arrays.clear()  # give the 2 GiB back before the SGEMM

    n = 8192 if not ctx.args.quick else 2048
    a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    b = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    c = cupy.empty((n, n), dtype=cupy.float32)
    cupy.matmul(a, b, out=c)
    # A TF32 product would be ~3e-4 off; FP32 is far below the tolerance. Check a slab of rows.
    slab = cupy.matmul(a[:256].astype(cupy.float64), b.astype(cupy.float64))
    err = float(cupy.linalg.norm(c[:256] - slab) / cupy.linalg.norm(slab))
    if err > TOLERANCE:
        raise BenchError(f"cuBLAS SGEMM is {err:.1e} off a float64 product: TF32 seems on (CUPY_TF32={os.environ.get('CUPY_TF32')})")
    sgemm = timer.time(lambda i: cupy.matmul(a, b, out=c), 1, **reps)
    tflops = 2 * n**3 / (sgemm["ms"]["median"] / 1e3) / 1e12
    return {
        "copy": {"bytes": 2 * n_copy * 4, "timing": copy, "gbps": copy_gbps,
                 "how": "cupy.copyto of a float32 array (cudaMemcpyAsync device to device); bytes read + written"},
        "sgemm": {"n": n, "timing": sgemm, "tflops": tflops, "rel_error": err,
                  "how": f"cupy.matmul of float32 {n}x{n} (cuBLAS SGEMM), CUPY_TF32=0"},
    }


def run_problem(problem, ctx) -> dict:
    spec = spec_for(problem)
    flops, nbytes = spec.work(problem.dims)
    work = flops if spec.unit == "GFLOP/s" else nbytes
    ref = Reference(problem, spec, ctx.rng)
    rec = {
        "op": problem.op, "group": problem.group, "label": problem.label, "shape": problem.shape_text,
        "dims": list(problem.dims), "flops": flops, "bytes": nbytes, "unit": spec.unit,
        "kernels": [], "reference": None, "host": None, "host_reference": None,
    }
    names = ctx.args.variants if problem.op == "matmul" else ["kernel"]
    for name in names:
        variant = name if problem.op == "matmul" else None
        if ctx.mode == "host":
            rec["kernels"].append(entry(name, NO_GPU))
            continue
        chk = check(name, problem, spec, ref, ctx.ops, ctx.place, variant)
        if ctx.mode == "sim":
            rec["kernels"].append(entry(name, SIM_ONLY, chk))
            continue
        if problem.op in ("softmax_cross_entropy", "correct_count"):
            # The timed path skips the op layer's read-back (see BackendOps): check it too.
            check(name, problem, spec, ref, ctx.fast, ctx.place, variant)
        rec["kernels"].append(entry(name, "ok", chk, timed(problem, spec, ctx.fast, ctx.place, ctx.rng, ctx.gpu_timer.time, ctx, variant)))

    if problem.op == "matmul":
        name = "cuBLAS"
        if ctx.mode == "gpu":
            api = CublasOps()
            chk = check(name, problem, spec, ref, api, ctx.place)
            rec["reference"] = entry(name, "ok", chk, timed(problem, spec, api, ctx.place, ctx.rng, ctx.gpu_timer.time, ctx))
        elif ctx.mode == "host":
            rec["reference"] = entry(name, NO_GPU)
    if problem.group == "cnn":
        rec["reference"], rec["host_reference"] = run_torch(problem, spec, ref, ctx)

    rec["host"] = run_host(problem, spec, ref, ctx)
    for e in rec["kernels"] + [rec["reference"], rec["host"], rec.get("host_reference")]:
        if e and e["timing"]:
            e["rate"] = work / (e["timing"]["ms"]["median"] / 1e3) / 1e9
    _percentages(rec, ctx.ceilings)
    return rec


def run_torch(problem, spec, ref, ctx):
    """The CNN op's references: (PyTorch on the GPU, with cuDNN's convolutions; PyTorch on the
    host CPU, as many threads as NumPy's BLAS). Either is an entry saying why where it cannot run."""
    if ctx.mode == "sim":
        return None, None
    from timing import host_time

    if ctx.mode == "gpu":
        why = torch_unavailable("cuda")
        gpu = entry("PyTorch (cuDNN)", why) if why else entry(
            "PyTorch (cuDNN)", "ok", check("PyTorch (cuDNN)", problem, spec, ref, TorchOps("cuda", copy_out=True), ctx.place),
            timed(problem, spec, TorchOps("cuda", copy_out=False), ctx.place, ctx.rng, ctx.gpu_timer.time, ctx))
    else:
        gpu = entry("PyTorch (cuDNN)", NO_GPU)
    why = torch_unavailable("cpu")
    if why:
        return gpu, entry("PyTorch CPU", why)
    place = Place(np)
    chk = check("PyTorch CPU", problem, spec, ref, TorchOps("cpu", copy_out=True), place)
    return gpu, entry("PyTorch CPU", "ok", chk, timed(problem, spec, TorchOps("cpu", copy_out=False), place, ctx.rng, host_time, ctx))


def run_host(problem, spec, ref, ctx):
    name = "NumPy"
    if ctx.mode == "sim":
        return None
    if ctx.host_api is None:
        return entry(name, "skipped: --no-host")
    if problem.op == "matmul" and max(problem.dims[:3]) > ctx.args.host_max_size:
        return entry(name, f"skipped: side above --host-max-size {ctx.args.host_max_size}")
    from timing import host_time

    place = Place(np)
    chk = check(name, problem, spec, ref, ctx.host_api, place)
    return entry(name, "ok", chk, timed(problem, spec, ctx.host_api, place, ctx.rng, host_time, ctx))


def _percentages(rec, ceilings):
    ref = rec["reference"]
    for e in rec["kernels"]:
        if e["rate"] and ref and ref["rate"]:
            e["pct_of_reference"] = 100 * e["rate"] / ref["rate"]
    if not ceilings:
        return
    ceiling = ceilings["sgemm"]["tflops"] * 1e3 if rec["unit"] == "GFLOP/s" else ceilings["copy"]["gbps"]
    for e in rec["kernels"] + ([ref] if ref else []):
        if e["rate"]:
            e["pct_of_ceiling"] = 100 * e["rate"] / ceiling


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


#: op -> (kernel name in the compile report, text its configuration contains): the kernel each
#: op's "kernel" row times.
OP_KERNELS = {
    "bias_relu": ("bias_act", "relu=True"), "bias_add": ("bias_act", "relu=False"),
    "relu_backward": ("relu_backward", ""), "col_sum": ("col_sum", ""),
    "softmax_cross_entropy": ("softmax_ce_rows", ""), "sgd_momentum_": ("sgd_momentum", "nesterov=False"),
    "correct_count": ("correct_count", ""),
}


def compile_report(arch: str) -> dict:
    """Every kernel compiled for ``arch`` (rawgpu kernels, in this process: on a GPU numba.cuda is the real one)."""
    from rawgpu import kernel_report

    try:
        return {"arch": arch, "kernels": kernel_report.report([arch])["kernels"], "error": None}
    except Exception as exc:  # no compiler installed, an architecture it does not know: timings stand alone
        return {"arch": arch, "kernels": [], "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}


def stamp_resources(results: list, records: list) -> None:
    """Put each timed kernel's registers and occupancy (from the compile report) beside its timings."""
    for rec in results:
        for e in rec["kernels"]:
            if rec["op"] == "matmul":
                flags = ("T" if rec["dims"][3] else "N") + ("T" if rec["dims"][4] else "N")
                kernel, match = e["name"], lambda config: config.endswith(flags)  # noqa: E731
            elif rec["op"] in OP_KERNELS:
                kernel, text = OP_KERNELS[rec["op"]]
                match = lambda config, text=text: text in config  # noqa: E731
            else:
                continue
            found = [r for r in records if r["kernel"] == kernel and match(r["config"]) and not r.get("error")]
            if found:
                r = found[0]
                e["resources"] = {k: r[k] for k in ("registers", "spill_bytes", "shared_bytes", "occupancy", "limiter")}


def print_results(result) -> None:
    env = result["environment"]
    print(f"\n{describe_environment(env)}")
    print(f"mode: {result['mode']} - {result['mode_note']}")
    c = result["ceilings"]
    if c:
        print(f"measured ceilings: copy {c['copy']['gbps']:,.0f} GB/s; cuBLAS SGEMM {c['sgemm']['tflops']:.1f} TFLOP/s (n={c['sgemm']['n']}, FP32)")
    sim = result["mode"] == "sim"
    headers = ["op", "case", "shape", "impl"] + (["check (rel. error)"] if sim else ["median", "p10..p90", "rate", "% ceiling", "% cuBLAS", "regs / occupancy"])
    rows = []
    for rec in result["results"]:
        entries = [e for e in rec["kernels"] + [rec["reference"], rec.get("host_reference"), rec["host"]] if e is not None]
        missing = [e["name"] for e in entries if e["status"] == NO_GPU]
        if missing:  # one line for all the GPU implementations that could not run
            entries = [{"name": ", ".join(missing), "status": NO_GPU, "timing": None, "check": None}] + [e for e in entries if e["status"] != NO_GPU]
        for e in entries:
            head = [rec["op"], rec["label"], rec["shape"], e["name"]]
            if sim:
                rows.append(head + [f"ok ({e['check']['rel_error']:.1e})" if e["check"] else e["status"]])
            elif e["timing"]:
                ms = e["timing"]["ms"]
                pct = lambda x: f"{x:.1f}%" if x is not None else ""  # noqa: E731
                res = e.get("resources")
                rows.append(head + [fmt_ms(ms["median"]), f"{fmt_ms(ms['p10'])}..{fmt_ms(ms['p90'])}",
                                    f"{fmt_num(e['rate'])} {rec['unit']}", pct(e["pct_of_ceiling"]), pct(e["pct_of_reference"]),
                                    f"{res['registers']} / {100 * res['occupancy']:.0f}%" if res else ""])
            else:
                rows.append(head + [e["status"], "", "", "", "", ""])
    print(text_table(headers, rows))
    behind = sum(e["timing"].get("host_behind", 0) for rec in result["results"] for e in rec["kernels"] + [rec["reference"]] if e and e["timing"])
    if behind:
        print(f"note: {behind} timed GPU call(s) were queued slower than the delay ahead of them; their times may include launch latency")


def plot(result, path) -> None:
    """Left: matmul GFLOP/s against n, per variant, cuBLAS and NumPy. Right: GB/s of the other ops.

    Colour names the implementation (matmul) or the op (the rest); dashed lines are NumPy on the host.
    """
    plt = require_plotting()
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter, NullLocator

    fig, (ax_mm, ax_bw) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict = {}
    for rec in (r for r in result["results"] if r["group"] == "square"):
        for e in rec["kernels"] + [rec["reference"], rec["host"]]:
            if e and e["rate"]:
                who = e["name"] if rec["op"] == "matmul" else rec["op"]
                series.setdefault((rec["op"] == "matmul", who, e["name"] == "NumPy"), []).append((rec["dims"][0], e["rate"]))
    colours: dict = {}
    for (is_mm, who, numpy_line), pts in sorted(series.items()):
        pts.sort()
        colour = colours.setdefault((is_mm, who), f"C{len([k for k in colours if k[0] == is_mm])}")
        label = f"{who} (NumPy)" if numpy_line and who != "NumPy" else who
        (ax_mm if is_mm else ax_bw).plot([p[0] for p in pts], [p[1] for p in pts], "--" if numpy_line else "-",
                                         color=colour, marker="o", ms=3, label=label)
    ceil = result["ceilings"]
    if ceil:
        ax_mm.axhline(ceil["sgemm"]["tflops"] * 1e3, color="grey", lw=0.8, ls=":", label="SGEMM ceiling")
        ax_bw.axhline(ceil["copy"]["gbps"], color="grey", lw=0.8, ls=":", label="copy ceiling")
    sizes = sorted({r["dims"][0] for r in result["results"] if r["group"] == "square"})
    for ax, title, unit in ((ax_mm, "matmul, n x n x n", "GFLOP/s"), (ax_bw, "the other ops, n x n", "GB/s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        if sizes:
            ax.set_xticks(sizes, [str(n) for n in sizes])
            ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("n")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        if ax.lines:
            ax.legend(fontsize=7)
    env = result["environment"]
    what = f"device: {env['device']}" if result["mode"] == "gpu" else "no GPU: NumPy on the host only"
    fig.suptitle(f"rawgpu kernels; {what}; host: {env['machine'].get('cpu_model')}; {env['date'][:10]}", fontsize=10)
    fig.tight_layout()
    save_plot(fig, path)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.sim and args.plot:
        raise BenchError("--plot needs timings, and a --sim run is correctness-only; drop one of them")
    check_outputs(args)
    if args.sim:
        mode = "sim"
    else:
        from rawgpu.engine import probe_gpu

        mode = "gpu" if probe_gpu()[0] else "host"
    defaults = (QUICK if args.quick else DEFAULTS)[mode]
    sizes = args.sizes or defaults["sizes"]
    mlp = args.mlp or defaults["mlp"]
    if len(mlp) != 3:
        raise BenchError(f"--mlp takes three numbers D,H,C (inputs, hidden, classes), got {len(mlp)}")
    batch = args.batch or defaults["batch"]
    cnn_batch = args.cnn_batch or defaults["cnn_batch"]

    ctx = Context(args, mode)  # picks the engine: the simulator must be switched on before anything else loads numba.cuda
    env = environment()
    notes = {
        "gpu": "kernels and cuBLAS timed with CUDA events; NumPy timed on the host clock",
        "host": "no GPU: kernel rows say 'no GPU'; only NumPy on the host is timed",
        "sim": "Numba's CUDA simulator: every kernel checked against float64 NumPy; nothing timed (the simulator says nothing about speed)",
    }
    print(f"{describe_environment(env)}\nmode: {mode} - {notes[mode]}", file=sys.stderr)
    if mode == "gpu":
        print("measuring the device's ceilings ...", file=sys.stderr)
        ctx.ceilings = measure_ceilings(ctx)

    problems = (square_problems(sizes, args.ops) + mlp_problems(batch, *mlp, args.ops)
                + cnn_problems(cnn_batch, defaults["cnn_image"], defaults["cnn_channels"], args.ops))
    results = []
    for i, problem in enumerate(problems, 1):
        print(f"[{i}/{len(problems)}] {problem.op} {problem.shape_text} ({problem.label})", file=sys.stderr, flush=True)
        results.append(run_problem(problem, ctx))

    compiled = None
    if mode == "gpu":  # registers and occupancy beside the timings, for the architecture timed
        import cupy

        print("compiling every kernel for the report of registers and occupancy ...", file=sys.stderr)
        compiled = compile_report(f"sm_{cupy.cuda.Device().compute_capability}")  # "90" on an H100
        stamp_resources(results, compiled["kernels"])

    result = {
        "bench": "kernels",
        "schema": SCHEMA,
        "mode": mode,
        "mode_note": notes[mode],
        "environment": env,
        "settings": {
            "sizes": sizes, "mlp": mlp, "batch": batch, "ops": args.ops, "cnn_batch": cnn_batch,
            "cnn_image": list(defaults["cnn_image"]), "cnn_channels": list(defaults["cnn_channels"]), "torch_threads": ctx.torch_threads, "variants": args.variants,
            "quick": args.quick, "budget_s": args.budget, "host_max_size": args.host_max_size, "seed": args.seed,
            "tolerance": TOLERANCE, "reps": {k: dict(zip(("warmup", "min", "max"), v)) for k, v in ctx.reps.items()},
            "cupy_tf32": os.environ.get("CUPY_TF32"),
            "launch": _launch_settings(mode),
        },
        "timing": ctx.gpu_timer.describe() if ctx.gpu_timer else None,
        "ceilings": ctx.ceilings,
        "results": results,
        "compile": compiled,  # rawgpu kernels for the GPU timed (None off a GPU: nothing was timed)
    }
    emit(result, args, print_results, plot)
    if args.write_tuning:
        write_tuning(result, args.write_tuning)
    return 0


def write_tuning(result, path) -> None:
    """Add this GPU's winners to the autotuner's table: per training-shape matmul, the fastest rung
    (at the launch config it was timed with) beside cuBLAS's time. Other GPUs' entries are kept."""
    import datetime
    import json

    from common import write_json  # atomic: a temporary file, then a rename
    from rawgpu.backends.kernel_backend import LAUNCH

    if result["mode"] != "gpu":
        raise BenchError("--write-tuning needs timings from a GPU; this run had none")
    try:
        with open(path) as f:
            table = json.load(f)
    except FileNotFoundError:
        table = {"gpus": {}}
    entries = []
    for rec in result["results"]:
        if rec["op"] != "matmul" or rec["group"] != "mlp":
            continue
        timed = [e for e in rec["kernels"] if e["timing"]]
        if not timed:
            continue
        best = min(timed, key=lambda e: e["timing"]["ms"]["median"])
        ref = rec["reference"]
        entries.append({
            "shape": [int(d) if i < 3 else bool(d) for i, d in enumerate(rec["dims"])],
            "variant": best["name"], "params": LAUNCH["cuda"]["matmul"][best["name"]].params,
            "us": 1e3 * best["timing"]["ms"]["median"],
            "cublas_us": 1e3 * ref["timing"]["ms"]["median"] if ref and ref["timing"] else None,
            "source": f"bench/kernels.py {datetime.date.today().isoformat()}",
        })
    table.setdefault("gpus", {})[result["environment"]["device"]] = entries
    write_json(path, table)
    print(f"wrote {len(entries)} tuning entries for {result['environment']['device']} to {path}", file=sys.stderr)


def _launch_settings(mode):
    """The kernel engine's launch settings (tile sizes, threads per block), as the results used them."""
    if mode == "host":
        return None
    from rawgpu.backends.kernel_backend import LAUNCH

    settings = LAUNCH["cuda" if mode == "gpu" else "sim"]
    def plain(value):  # configs (MatmulConfig and friends) as their repr; numbers and names as they are
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)

    return plain(settings)


if __name__ == "__main__":
    sys.exit(run_main(main, "bench/kernels.py"))
