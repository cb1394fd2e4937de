"""Regenerate the README's results tables from the newest runs in bench/results/.

    python bench/make_tables.py                   # rewrite the two marked regions of README.md
    python bench/make_tables.py --check           # exit 1 if README.md is out of date (writes nothing)
    python bench/make_tables.py --results DIR --readme PATH

Only the text between ``<!-- results:kernels:start -->`` / ``<!-- results:kernels:end -->`` and
``<!-- results:train:start -->`` / ``<!-- results:train:end -->`` is replaced. Which runs are
shown: for the kernels, the newest GPU run (or, if there is none, the newest run without a GPU)
and the newest simulator run; for training, per model (the MLP, then the CNN), the newest run
that had a GPU and the newest run that had none. "Newest" is the ``environment.date`` a run records. Every table names the
device, machine, command, date and file it came from.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

from common import SCHEMA, BenchError, fmt_ms, fmt_num, markdown_table, run_main

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MARKERS = {kind: (f"<!-- results:{kind}:start -->", f"<!-- results:{kind}:end -->") for kind in ("kernels", "train")}


def build_parser():
    p = argparse.ArgumentParser(prog="bench/make_tables.py", description="Regenerate the README's results tables from bench/results/.")
    p.add_argument("--results", default=os.path.join(HERE, "results"), metavar="DIR", help="folder of JSON results (default bench/results)")
    p.add_argument("--readme", default=os.path.join(REPO, "README.md"), metavar="PATH", help="file with the marked regions (default README.md)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file is out of date")
    return p


# ---------------------------------------------------------------------------------------------
# Choosing the runs
# ---------------------------------------------------------------------------------------------


def load_results(folder) -> list[dict]:
    if not os.path.isdir(folder):
        raise BenchError(f"--results {folder}: no such folder")
    runs = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        try:
            with open(path) as fh:
                data = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise BenchError(f"{path}: not a readable JSON result ({exc})") from None
        if not isinstance(data, dict) or data.get("bench") not in ("kernels", "train"):
            continue  # some other file; not ours to show
        if data.get("schema") != SCHEMA:
            raise BenchError(f"{path}: results schema {data.get('schema')}, this script reads {SCHEMA}; rerun the bench")
        data["_file"] = os.path.relpath(path, REPO) if os.path.abspath(path).startswith(REPO + os.sep) else path
        runs.append(data)
    return runs


def _newest(runs, keep):
    chosen = [r for r in runs if keep(r)]
    return max(chosen, key=lambda r: (r["environment"]["date"], r["_file"])) if chosen else None


def _train_had_gpu(run) -> bool:
    return any(r["status"] == "ok" and r["system"].endswith("cuda") for r in run["runs"])


def pick(runs):
    """(kernel runs, training runs) to show, newest first within each kind."""
    kernels = [r for r in runs if r["bench"] == "kernels"]
    gpu = _newest(kernels, lambda r: r["mode"] == "gpu")
    host = None if gpu else _newest(kernels, lambda r: r["mode"] == "host")
    sim = _newest(kernels, lambda r: r["mode"] == "sim")
    train = []
    for model in ("mlp", "cnn"):  # runs from before --model trained the MLP
        mine = [r for r in runs if r["bench"] == "train" and r["settings"].get("model", "mlp") == model]
        train += [_newest(mine, _train_had_gpu), _newest(mine, lambda r: not _train_had_gpu(r))]
    return [r for r in (gpu, host, sim) if r], [r for r in train if r]


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def provenance(run) -> str:
    """Which device and machine, which command, when, from which commit and file, with which versions."""
    env = run["environment"]
    g, m, v = env["gpu"], env["machine"], env["versions"]
    if g.get("available"):
        device = f"**{g['name']}** (driver {g.get('driver') or '?'}, CUDA {g.get('driver_cuda')}, CuPy runtime CUDA {g.get('runtime_cuda')})"
    else:
        device = "**no GPU**"
    host = f"{m.get('cpu_model') or m.get('processor')}, {m.get('cpus')} CPUs"
    load = run.get("load_average") or {}  # the training bench's, before and after its runs
    if load.get("before") and load.get("after"):
        host += f" (load average {load['before'][0]} before the runs, {load['after'][0]} after)"
    elif m.get("load_average_1m") is not None:
        host += f" (load average {m['load_average_1m']} at the start)"
    git = env.get("git") or {}
    commit = f"commit {git['commit'][:10]}{' + local changes' if git.get('dirty') else ''}" if git.get("commit") else "commit unknown"
    versions = ", ".join(f"{k} {v[k]}" for k in ("numpy", "numba-cuda", "cupy", "torch") if v.get(k)) or "-"
    return (f"Device: {device}; host: {host}.  \n"
            f"Command: `{env['command']}` on {env['date']} ({commit}); file `{run['_file']}`.  \n"
            f"Versions: Python {v.get('python')}, {versions}.")


def _cell_rate(e, with_pct=False) -> str:
    if e is None:
        return ""
    if not e.get("rate"):
        return e["status"]
    text = fmt_num(e["rate"])
    if with_pct and e.get("pct_of_reference") is not None:
        text += f" ({e['pct_of_reference']:.0f}%)"
    return text


def _cell_time(e, with_pct=False) -> str:
    if e is None:
        return ""
    if not e.get("timing"):
        return e["status"]
    text = fmt_ms(e["timing"]["ms"]["median"])
    if with_pct and e.get("pct_of_reference") is not None:
        text += f" ({e['pct_of_reference']:.0f}%)"
    return text


def _variants(rec) -> dict:
    return {e["name"]: e for e in rec["kernels"]}


def kernels_section(run) -> str:
    if run["mode"] == "sim":
        return sim_section(run)
    res = run["results"]
    out = [provenance(run), ""]
    if run["mode"] == "gpu":
        c = run["ceilings"]
        out.append(f"Measured ceilings: device-to-device copy **{c['copy']['gbps']:,.0f} GB/s**; cuBLAS SGEMM "
                   f"**{c['sgemm']['tflops']:.1f} TFLOP/s** (FP32, TF32 off, n = {c['sgemm']['n']}). Times are medians of many "
                   f"runs with CUDA events, L2 flushed and inputs rotated; NumPy runs on the host CPU.")
    else:
        out.append("No GPU on this machine: the kernel and cuBLAS columns say so; only NumPy on the host CPU was timed.")
    variants = list(run["settings"]["variants"])  # the ladder's rungs as that run had them, in order
    square = [r for r in res if r["op"] == "matmul" and r["group"] == "square"]
    if square:
        headers = ["n"] + variants + ["cuBLAS", "NumPy (host)"]
        rows = [[r["label"]] + [_cell_rate(_variants(r).get(v), True) for v in variants] + [_cell_rate(r["reference"]), _cell_rate(r["host"])]
                for r in square]
        out += ["", "Square matmul n x n x n, GFLOP/s (in brackets: % of cuBLAS):", "", markdown_table(headers, rows)]
    mlp = [r for r in res if r["op"] == "matmul" and r["group"] == "mlp"]
    if mlp:
        headers = ["product", "M x N x K"] + variants + ["cuBLAS", "NumPy (host)"]
        rows = [[r["label"], r["shape"]] + [_cell_time(_variants(r).get(v), True) for v in variants] + [_cell_time(r["reference"]), _cell_time(r["host"])]
                for r in mlp]
        b, (d, h, c) = run["settings"]["batch"], run["settings"]["mlp"]
        out += ["", f"The matmuls of one training step of {d}-{h}-{c} at batch {b}, median time (in brackets: % of cuBLAS's speed):", "",
                markdown_table(headers, rows, left=2)]
    largest = max((r["dims"][0] for r in res if r["group"] == "square" and r["op"] != "matmul"), default=None)
    ops = [r for r in res if r["op"] != "matmul" and (r["group"] == "mlp" or (r["group"] == "square" and r["dims"][0] == largest))]
    if ops:
        headers = ["op", "case", "shape", "kernel time", "kernel GB/s", "% of copy ceiling", "NumPy time", "NumPy GB/s"]
        rows = []
        for r in ops:
            k, hst = r["kernels"][0], r["host"]
            pct = f"{k['pct_of_ceiling']:.1f}%" if k.get("pct_of_ceiling") is not None else ""
            rate = lambda e: _cell_rate(e) if e and e.get("rate") else ""  # noqa: E731
            case = "square" if r["group"] == "square" else r["label"]
            rows.append([r["op"], case, r["shape"], _cell_time(k), rate(k), pct, _cell_time(hst), rate(hst)])
        out += ["", f"The other ops at the training step's shapes and at {largest} x {largest} (all sizes: the JSON file):", "",
                markdown_table(headers, rows, left=3)]
    cnn = [r for r in res if r["group"] == "cnn"]
    if cnn:
        headers = ["layer", "op", "shape", "kernel time", "rate", "cuDNN (PyTorch)", "PyTorch CPU", "NumPy (host)"]
        rows = [[r["label"], r["op"], r["shape"], _cell_time(r["kernels"][0], True), f"{_cell_rate(r['kernels'][0])} {r['unit']}" if r["kernels"][0].get("rate") else "",
                 _cell_time(r["reference"]), _cell_time(r.get("host_reference")), _cell_time(r["host"])] for r in cnn]
        out += ["", f"The CNN's conv and max-pool layers at batch {run['settings'].get('cnn_batch')}, median time (in brackets: % of cuDNN's speed):", "",
                markdown_table(headers, rows, left=3)]
    return "\n".join(out)


def sim_section(run) -> str:
    by_op: dict = {}
    for r in run["results"]:
        entry = by_op.setdefault(r["op"], {"shapes": [], "impls": [], "worst": 0.0})
        entry["shapes"].append(r["shape"])
        for e in r["kernels"]:
            if e["name"] not in entry["impls"]:
                entry["impls"].append(e["name"])
            entry["worst"] = max(entry["worst"], e["check"]["rel_error"])
    rows = [[op, ", ".join(v["impls"]), "; ".join(v["shapes"]), f"{v['worst']:.1e}"] for op, v in by_op.items()]
    head = (f"Correctness only: every kernel run in Numba's CUDA simulator and checked against a float64 NumPy reference "
            f"(outputs poisoned with NaN first, tolerance {run['settings']['tolerance']:g} of the reference's norm). "
            f"The simulator says nothing about speed, so nothing here is timed.")
    return "\n".join([provenance(run), "", head, "", markdown_table(["op", "implementations", "shapes", "worst relative error"], rows, left=3)])


def train_section(run) -> str:
    from train import main_caption, main_table, ratio_line, sweep_table, threads_line

    headers, rows, notes = main_table(run)
    out = [provenance(run), "", f"Data: {run['dataset']['source']}.", "", f"{threads_line(run)}.", "",
           f"Main setting: {main_caption(run)}.", "", markdown_table(headers, rows)]
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    out += ["", f"**{ratio_line(run)}**"]
    for role, key, what in (("hidden-sweep", "hidden", "hidden size"), ("batch-sweep", "batch", "batch size")):
        table = sweep_table(run, role, key)
        if table:
            out += ["", f"Median epoch time against {what} ({run['settings']['sweep_epochs']} epochs per point, the first excluded):", "",
                    markdown_table(*table)]
    return "\n".join(out)


def render(kernel_runs, train_runs) -> dict:
    none = "_No {} results in bench/results/ yet: run `python bench/{}.py --json bench/results/<name>.json`, then this script._"
    sections = {
        "kernels": "\n\n".join(kernels_section(r) for r in kernel_runs) or none.format("kernel", "kernels"),
        "train": "\n\n".join(train_section(r) for r in train_runs) or none.format("training", "train"),
    }
    note = "<!-- generated by python bench/make_tables.py from bench/results/; do not edit by hand -->"
    return {k: f"{note}\n\n{v}\n" for k, v in sections.items()}


def splice(text: str, kind: str, body: str, path) -> str:
    start, end = MARKERS[kind]
    i, j = text.find(start), text.find(end)
    if i < 0 or j < 0 or j < i:
        raise BenchError(f"{path}: the markers {start} ... {end} are missing or out of order")
    return text[: i + len(start)] + "\n" + body + text[j:]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    kernel_runs, train_runs = pick(load_results(args.results))
    try:
        with open(args.readme) as fh:
            text = fh.read()
    except OSError as exc:
        raise BenchError(f"--readme {args.readme}: {exc.strerror}") from None
    new = text
    for kind, body in render(kernel_runs, train_runs).items():
        new = splice(new, kind, body, args.readme)
    if args.check:
        if new != text:
            print(f"{args.readme} is out of date: run python bench/make_tables.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        tmp = f"{args.readme}.tmp-{os.getpid()}"
        with open(tmp, "w") as fh:
            fh.write(new)
        os.replace(tmp, args.readme)  # atomic: the README is never left half-written
    shown = [r["_file"] for r in kernel_runs + train_runs]
    print(f"{args.readme}: tables from {', '.join(shown) if shown else 'no results'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "bench/make_tables.py"))
