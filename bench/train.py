"""End-to-end training benchmark: rawgpu (cuda, numpy) against PyTorch (GPU, CPU).

    python bench/train.py                         # Fashion-MNIST, 784-128-10, batch 128, plus the sweeps
    python bench/train.py --quick --json t.json   # the bundled sample, tiny sweeps: a smoke test
    python bench/train.py --systems rawgpu-numpy,torch-cpu --no-sweep
    python bench/train.py --model cnn             # the CIFAR-10 example's CNN, batch 64, on 10,000 Fashion-MNIST images
    python bench/train.py --model cnn --dataset cifar10 --data-dir DIR --limit-train 0   # all of CIFAR-10

Each system trains the same network from the same initial weights and on the same batches (see
train_systems.py) for ``--epochs`` epochs at the main setting (MLP: hidden 128, batch 128; CNN:
rawgpu.SmallCNN, hidden 64, batch 64) and ``--sweep-epochs`` at every point of a sweep of the
hidden size and of the batch size (the MLP's default; the CNN sweeps only when asked). Reported per run: the first epoch
(warm-up) apart, the median epoch time over the rest with its spread, the final test accuracy,
and the time per step; on a GPU the step is split into kernel time and overhead. Systems that
cannot run here (no GPU, no PyTorch) are listed with the reason, never estimated.
See bench/README.md for the method and every JSON field.
"""

from __future__ import annotations

import os

os.environ.setdefault("CUPY_TF32", "0")  # before CuPy loads: FP32 products stay FP32

import argparse  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

from common import (  # noqa: E402
    emit, SCHEMA, BenchError, check_outputs, choice_list, describe_environment, environment, fmt_ms, int_list,
    positive_int, require_plotting, run_main, save_plot, seed_int, text_table,
)
from train_systems import (  # noqa: E402
    LR, MOMENTUM, SYSTEMS, Net, TorchRun, run_rawgpu, split_rawgpu_step, summarize_epochs, torch_threads, unavailable,
)

DATASETS = ("fashion-mnist", "mnist", "cifar10", "sample")
MODELS = ("mlp", "cnn")
#: Per model: the main setting, the sweeps, and how much of the data set an epoch sees. The
#: NumPy CNN takes about a minute per 10,000 images on two cores (74 MFLOP per CIFAR-10 training
#: image), so its default run trains on the first 10,000 images, and --quick on 256.
FULL = {
    "mlp": {"epochs": 5, "sweep_epochs": 3, "hidden_sweep": [128, 256, 512, 1024, 2048, 4096],
            "batch_sweep": [32, 64, 128, 256, 512, 1024, 2048, 4096], "profile_steps": 50, "dataset": "fashion-mnist",
            "hidden": 128, "batch_size": 128, "limit_train": None, "limit_test": None},
    "cnn": {"epochs": 3, "sweep_epochs": 2, "hidden_sweep": [], "batch_sweep": [], "profile_steps": 20, "dataset": "fashion-mnist",
            "hidden": 64, "batch_size": 64, "limit_train": 10_000, "limit_test": 2_000},
}
#: Timed epochs of one run that differ by more than this factor (max / min) mean the machine was
#: busy with other work: the run is marked in the tables and a warning printed.
WIDE_SPREAD = 1.5
QUICK = {
    "mlp": {"epochs": 2, "sweep_epochs": 2, "hidden_sweep": [32, 128], "batch_sweep": [64, 128], "profile_steps": 5, "dataset": "sample",
            "hidden": 128, "batch_size": 128, "limit_train": None, "limit_test": None},
    "cnn": {"epochs": 2, "sweep_epochs": 2, "hidden_sweep": [], "batch_sweep": [], "profile_steps": 3, "dataset": "sample",
            "hidden": 64, "batch_size": 64, "limit_train": 256, "limit_test": 256},
}
SETTINGS = tuple(FULL["mlp"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/train.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the bundled sample, 2 epochs, tiny sweeps (CNN: 256 images): a smoke test")
    p.add_argument("--model", choices=MODELS, default="mlp", help="the network: mlp (D-H-C, the default) or cnn (rawgpu.SmallCNN)")
    p.add_argument("--activation", choices=("none", "relu"), default="none", help="--model cnn only: none (the seed's network, default) or relu")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON (fields: bench/README.md)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG: epoch time against hidden size and batch size (needs matplotlib)")
    p.add_argument("--dataset", choices=DATASETS, help="default fashion-mnist (--quick: sample)")
    p.add_argument("--data-dir", metavar="DIR", help="load --dataset from this folder: the four IDX files, or CIFAR-10's binary batches or archive")
    p.add_argument("--limit-train", type=seed_int, metavar="N", help="train on the first N images, 0 for all (default all; CNN 10000, --quick 256)")
    p.add_argument("--limit-test", type=seed_int, metavar="N", help="evaluate on the first N images, 0 for all (default all; CNN 2000, --quick 256)")
    p.add_argument("--systems", type=choice_list(SYSTEMS), metavar="S,...", default=list(SYSTEMS), help=f"default all: {', '.join(SYSTEMS)}")
    p.add_argument("--epochs", type=positive_int, help="epochs at the main setting (default 5; the first is warm-up)")
    p.add_argument("--sweep-epochs", type=positive_int, help="epochs at each sweep point (default 3)")
    p.add_argument("--hidden", type=positive_int, help="hidden units at the main setting (default 128; CNN 64)")
    p.add_argument("--batch-size", type=positive_int, help="batch size at the main setting (default 128; CNN 64)")
    p.add_argument("--hidden-sweep", type=int_list, metavar="H,...", help="hidden sizes (at the main batch size); default 128..4096 (CNN: none)")
    p.add_argument("--batch-sweep", type=int_list, metavar="B,...", help="batch sizes (at the main hidden size); default 32..4096 (CNN: none)")
    p.add_argument("--no-sweep", action="store_true", help="only the main setting")
    p.add_argument("--profile-steps", type=int, metavar="N", help="steps timed to split a GPU step into kernels and overhead (0: off)")
    p.add_argument("--seed", type=seed_int, default=0, help="initial weights and shuffling (default 0)")
    return p


def settings_from(args) -> dict:
    base = (QUICK if args.quick else FULL)[args.model]
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else base[name]  # noqa: E731
    s = {name: pick(name) for name in SETTINGS}
    for name in ("limit_train", "limit_test"):  # 0 on the command line: all the images (None)
        s[name] = s[name] or None
    if s["profile_steps"] < 0:
        raise BenchError(f"--profile-steps must be >= 0, got {s['profile_steps']}")
    if args.model == "mlp" and args.activation != "none":
        raise BenchError("--activation applies to --model cnn; the MLP always has its ReLU")
    if args.no_sweep:
        s["hidden_sweep"], s["batch_sweep"] = [], []
    s.update(model=args.model, activation=args.activation, data_dir=args.data_dir, systems=args.systems, seed=args.seed,
             quick=args.quick, lr=LR, momentum=MOMENTUM)
    return s


def plan(s) -> list[dict]:
    """The settings to run: the main one, then each sweep point (a point in both sweeps runs once)."""
    points: dict = {(s["hidden"], s["batch_size"]): ["main"]}
    for h in s["hidden_sweep"]:
        points.setdefault((h, s["batch_size"]), []).append("hidden-sweep")
    for b in s["batch_sweep"]:
        points.setdefault((s["hidden"], b), []).append("batch-sweep")
    return [{"hidden": h, "batch": b, "roles": roles, "epochs": s["epochs"] if "main" in roles else s["sweep_epochs"]}
            for (h, b), roles in points.items()]


def load_data(s):
    """The data set of the settings, cut to ``limit_train`` / ``limit_test`` images (None: all)."""
    from rawgpu import data

    if s["data_dir"] is not None:  # a folder the user named: IDX files or CIFAR-10, as rawgpu train reads it
        ds = data.load(s["dataset"], data_dir=s["data_dir"])
    else:
        ds = data.load(s["dataset"], progress=False)
    return ds.first(s["limit_train"], s["limit_test"])


def dataset_record(ds, s) -> dict:
    """What the runs trained on; for the CNN also the image shape and its linear layer's input."""
    record = {"name": s["dataset"], "source": ds.source, "train": int(len(ds.train_labels)), "test": int(len(ds.test_labels)),
              "classes": int(ds.num_classes), "input_features": int(ds.train_images[0].size)}
    if s["model"] == "cnn":
        from rawgpu.cnn import CHANNELS, image_shape, stage_shapes

        shape = image_shape(np.shape(ds.train_images)[1:])
        c, h, w = stage_shapes(shape, CHANNELS)[-1]
        record.update(image_shape=list(shape), flat_features=c * (h // 2) * (w // 2))
    return record


def run_one(system: str, point: dict, ds, s, why) -> dict:
    """Train ``system`` at one setting; ``why`` is its (status, reason) when it cannot run here."""
    run = {"system": system, "hidden": point["hidden"], "batch": point["batch"], "roles": point["roles"], "epochs_run": point["epochs"]}
    if why:
        return {**run, "status": why[0], "reason": why[1]}
    net = Net(s["model"], point["hidden"], s["activation"])
    b, e, seed = point["batch"], point["epochs"], s["seed"]
    split = None
    if system.startswith("rawgpu"):
        records = run_rawgpu(system.split("-")[1], ds, net, b, e, seed)
        if system == "rawgpu-cuda" and s["profile_steps"]:
            split = split_rawgpu_step(ds, net, b, seed, s["profile_steps"])
    else:
        trainer = TorchRun("cuda" if system == "torch-cuda" else "cpu", ds, net, b, seed)
        records = trainer.epochs(e)
        if s["profile_steps"]:
            split = trainer.split_step(s["profile_steps"])
    summary = summarize_epochs(records, len(ds.train_labels), b)
    spread = summary["epoch_s"]["max"] / summary["epoch_s"]["min"]
    return {**run, "status": "ok", "epochs": records, **summary, "epoch_spread": spread, "wide_spread": spread > WIDE_SPREAD, "step_split": split}


def load_average() -> list | None:
    """The 1-, 5- and 15-minute load averages (runnable processes), or None where the system does not say."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def busy_note(result) -> str | None:
    """A sentence when some runs' epoch times spread widely (a busy machine), with the load average."""
    wide = [r for r in result["runs"] if r.get("wide_spread")]
    if not wide:
        return None
    load = result.get("load_average") or {}
    before, after = load.get("before"), load.get("after")
    where = f"; load average (1 min) {before[0]} before the runs, {after[0]} after" if before and after else ""
    return (f"the timed epochs of {len(wide)} of {sum(r['status'] == 'ok' for r in result['runs'])} runs spread more than "
            f"{WIDE_SPREAD}x (max / min; marked 'busy'): the machine was doing other work{where}; rerun on an idle machine before trusting those times")


def ratios(runs) -> list[dict]:
    """Epoch-time ratios at every setting where both systems of a pair ran."""
    by = {(r["hidden"], r["batch"], r["system"]): r for r in runs if r["status"] == "ok"}
    out = []
    for h, b in dict.fromkeys((r["hidden"], r["batch"]) for r in runs):
        t = lambda sys_: by.get((h, b, sys_), {}).get("median_epoch_s")  # noqa: E731
        pair = lambda x, y: (t(x) / t(y)) if t(x) and t(y) else None  # noqa: E731
        out.append({
            "hidden": h, "batch": b,
            "numpy_over_torch_cpu": pair("rawgpu-numpy", "torch-cpu"),
            "cuda_over_torch_cuda": pair("rawgpu-cuda", "torch-cuda"),
            "numpy_over_cuda": pair("rawgpu-numpy", "rawgpu-cuda"),
        })
    return out


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _busy(run) -> str:
    return f" (busy: x{run['epoch_spread']:.1f})" if run.get("wide_spread") else ""


def _epoch_cell(run) -> str:
    if run is None:
        return ""
    if run["status"] != "ok":
        return run["status"]
    return f"{run['median_epoch_s']:.3g} s{_busy(run)}"


def _ratio(x) -> str:
    return f"{x:.2f}" if x is not None else "-"


def main_table(result):
    """(headers, rows, notes) for the main setting: one row per system, notes for those that did not run."""
    rows, notes = [], []
    for r in (r for r in result["runs"] if "main" in r["roles"]):
        if r["status"] != "ok":
            rows.append([r["system"], r["status"], "", "", "", "", "", ""])
            notes.append(f"{r['system']}: {r['status']}: {r['reason']}")
            continue
        sp, e = r["step_split"], r["epoch_s"]
        rows.append([
            r["system"], f"{r['median_epoch_s']:.3g} s", f"{r['samples_per_s']:,.0f}", f"{e['min']:.3g}..{e['max']:.3g} s (n={e['n']}){_busy(r)}",
            f"{r['first_epoch_s']:.3g} s",
            f"{r['final_test_accuracy']:.4f}", fmt_ms(r["step_ms"]),
            f"{fmt_ms(sp['kernel_ms']['median'])} + {fmt_ms(sp['overhead_ms'])}" if sp else "-",
        ])
    busy = busy_note(result)
    if busy:
        notes.append(busy)
    headers = ["system", "epoch (median)", "samples/s", "range of timed epochs", "first epoch", "test accuracy", "time per step", "step: kernels + overhead"]
    return headers, rows, notes


def network_name(result) -> str:
    """``784-128-10``, or ``CNN on 1x28x28 (conv 32-32-64, linear 576-64-10, no activation)``."""
    s, d = result["settings"], result["dataset"]
    if s.get("model", "mlp") != "cnn":
        return f"{d['input_features']}-{s['hidden']}-{d['classes']}"
    c, h, w = d["image_shape"]
    act = "ReLUs" if s["activation"] == "relu" else "no activation"
    return f"CNN on {c}x{h}x{w} images (conv 5x5 32-32-64 + 2x2 max-pool, linear {d['flat_features']}-{s['hidden']}-{d['classes']}, {act})"


def main_caption(result) -> str:
    s = result["settings"]
    return (f"{network_name(result)}, batch {s['batch_size']}, "
            f"{s['epochs']} epochs (the first is warm-up: shown apart, not in the median)")


def threads_line(result) -> str:
    """How many threads each CPU system had: PyTorch is given as many as NumPy's BLAS uses."""
    nt, tt = result["environment"]["numpy_threads"], result["settings"].get("torch_threads")
    torch_part = f"PyTorch {tt['intra_op']} intra-op (set to match)" if tt else "PyTorch not run"
    return f"CPU threads: NumPy's BLAS {nt['threads']} ({nt['how']}), {torch_part}"


#: Issue 15's goal for the CNN: the NumPy epoch within this factor of PyTorch CPU's.
CNN_NUMPY_GOAL = 1.5


def ratio_line(result) -> str:
    m = result["main_ratios"]
    goal = f" (goal: <= {CNN_NUMPY_GOAL})" if result["settings"].get("model") == "cnn" else ""
    return (f"epoch-time ratio rawgpu-numpy / torch-cpu: {_ratio(m['numpy_over_torch_cpu'])}{goal}; "
            f"rawgpu-cuda / torch-cuda: {_ratio(m['cuda_over_torch_cuda'])}")


def print_results(result) -> None:
    print(f"\n{describe_environment(result['environment'])}")
    load = result.get("load_average") or {}
    if load.get("before") and load.get("after"):
        print(f"load average (1 min): {load['before'][0]} before the runs, {load['after'][0]} after")
    d = result["dataset"]
    print(f"data: {d['source']}")
    print(threads_line(result))
    headers, rows, notes = main_table(result)
    print(f"\nmain setting: {main_caption(result)}")
    print(text_table(headers, rows))
    for note in notes:
        print(f"  {note}")
    print(ratio_line(result))
    for role, key in (("hidden-sweep", "hidden"), ("batch-sweep", "batch")):
        table = sweep_table(result, role, key)
        if table:
            print(f"\n{role}: median epoch time ({result['settings']['sweep_epochs']} epochs per point, first excluded)")
            print(text_table(*table))


def sweep_table(result, role, key):
    """(headers, rows) of epoch time per system along one sweep, with the numpy / torch-cpu ratio."""
    runs = [r for r in result["runs"] if role in r["roles"]]
    if not runs:
        return None
    systems = result["settings"]["systems"]
    values = sorted({r[key] for r in runs})
    ratio = {(x["hidden"], x["batch"]): x["numpy_over_torch_cpu"] for x in result["ratios"]}
    rows = []
    for v in values:
        at = {r["system"]: r for r in runs if r[key] == v}
        some = next(iter(at.values()))
        rows.append([v] + [_epoch_cell(at.get(s)) for s in systems] + [_ratio(ratio.get((some["hidden"], some["batch"])))])
    return [key] + systems + ["numpy/torch-cpu"], rows


def plot(result, path) -> None:
    plt = require_plotting()
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter, NullLocator
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, role, key in ((axes[0], "hidden-sweep", "hidden"), (axes[1], "batch-sweep", "batch")):
        for system in result["settings"]["systems"]:
            pts = sorted((r[key], r["median_epoch_s"]) for r in result["runs"] if role in r["roles"] and r["system"] == system and r["status"] == "ok")
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=system)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("hidden units" if key == "hidden" else "batch size")
        ax.set_ylabel("median epoch time (s)")
        other = "batch" if key == "hidden" else "hidden"
        ax.set_title(f"{key} sweep ({other} {result['settings']['batch_size' if key == 'hidden' else 'hidden']})")
        ax.grid(alpha=0.3, which="both")
        ticks = sorted({r[key] for r in result["runs"] if role in r["roles"]})
        if ticks:  # label the sizes that ran, in plain numbers
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        if ax.lines:
            ax.legend(fontsize=8)
    env = result["environment"]
    skipped = sorted({r["system"] for r in result["runs"] if r["status"] != "ok"})
    note = f"; not run here: {', '.join(skipped)}" if skipped else ""
    fig.suptitle(f"training on {result['dataset']['name']}; device: {env['device']}; host: {env['machine'].get('cpu_model')}; "
                 f"{env['date'][:10]}{note}", fontsize=9)
    fig.tight_layout()
    save_plot(fig, path)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_outputs(args)
    s = settings_from(args)
    ds = load_data(s)
    env = environment()
    from common import numpy_threads

    threads = numpy_threads()["threads"]
    why = {system: unavailable(system) for system in s["systems"]}
    s["torch_threads"] = torch_threads(threads) if unavailable("torch-cpu") is None else None
    print(f"{describe_environment(env)}\ndata: {ds.source}", file=sys.stderr)

    # One system at a time through every setting: alternating NumPy's BLAS threads and PyTorch's
    # OpenMP threads on the same cores would make each wait for the other's spinning threads.
    runs = []
    points = plan(s)
    load_before = load_average()
    for system in s["systems"]:
        for i, point in enumerate(points, 1):
            if not why[system]:
                print(f"{system} [{i}/{len(points)}]: hidden {point['hidden']}, batch {point['batch']}, {point['epochs']} epochs", file=sys.stderr, flush=True)
            runs.append(run_one(system, point, ds, s, why[system]))
    all_ratios = ratios(runs)
    main_ratio = next(x for x in all_ratios if (x["hidden"], x["batch"]) == (s["hidden"], s["batch_size"]))
    result = {
        "bench": "train",
        "schema": SCHEMA,
        "environment": env,
        "dataset": dataset_record(ds, s),
        "settings": s,
        "runs": runs,
        "ratios": all_ratios,
        "main_ratios": main_ratio,
        "load_average": {"before": load_before, "after": load_average()},
    }
    emit(result, args, print_results, plot)
    busy = busy_note(result)
    if busy:
        print(f"warning: {busy}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "bench/train.py"))
