"""Helpers both benchmarks share: the stamp every result carries, statistics, flags, tables, files.

Nothing here times anything (see ``timing.py``) or knows about a particular benchmark.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys

import numpy as np

from rawgpu.atomic import atomic_file
from rawgpu.cli import number_arg
from rawgpu.outputs import check_file

#: Bumped when a field of the JSON results changes meaning; make_tables.py checks it.
SCHEMA = 1

NO_GPU = "no GPU"


class BenchError(Exception):
    """Something the user can fix (a bad flag, a missing package) or a failed correctness check.

    ``main`` prints its message as one line and exits non-zero, without a traceback.
    """


# ---------------------------------------------------------------------------------------------
# What ran, where, and with what: stamped on every result so it can be rerun
# ---------------------------------------------------------------------------------------------


def command_line(argv=None) -> str:
    """The command as a user would type it again, e.g. ``python bench/train.py --quick``."""
    argv = sys.argv if argv is None else argv
    script = os.path.relpath(argv[0]) if os.path.isabs(argv[0]) else argv[0]
    return shlex.join(["python", script, *argv[1:]])


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git_commit() -> dict | None:
    """The repository's commit and whether the tree had local changes when the bench ran."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        run = lambda *a: subprocess.run(["git", "-C", root, *a], capture_output=True, text=True, timeout=20, check=True).stdout  # noqa: E731
        # Untracked files count: a bench not yet committed is a local change too.
        return {"commit": run("rev-parse", "HEAD").strip(), "dirty": bool(run("status", "--porcelain").strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def numpy_threads() -> dict:
    """How many threads NumPy's BLAS uses, and how we know (threadpoolctl when it is installed)."""
    try:
        import threadpoolctl

        pools = [p for p in threadpoolctl.threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            return {"threads": int(pools[0]["num_threads"]), "how": f"threadpoolctl ({pools[0].get('internal_api')})"}
    except ImportError:
        pass
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return {"threads": int(os.environ[var]), "how": f"${var}"}
    # OpenBLAS (NumPy's wheels) starts one thread per CPU unless told otherwise.
    return {"threads": os.cpu_count() or 1, "how": "assumed: one per CPU (threadpoolctl not installed)"}


def environment(gpu: dict | None = None) -> dict:
    """Device, driver, CUDA, package versions, machine, command line and date of this run.

    ``gpu`` is ``rawgpu.info.gpu()`` when the caller already has it.
    """
    from rawgpu import info

    gpu = dict(gpu if gpu is not None else info.gpu())
    machine = info.machine()
    machine["cpu_model"] = _cpu_model()
    if hasattr(os, "getloadavg"):
        # Other work on the machine skews CPU timings; the load when the run started says how busy it was.
        machine["load_average_1m"] = round(os.getloadavg()[0], 2)
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "git": _git_commit(),
        "device": gpu["name"] if gpu.get("available") else NO_GPU,
        "gpu": gpu,
        "machine": machine,
        "versions": info.versions(),
        "numpy_threads": numpy_threads(),
    }


def describe_environment(env: dict) -> str:
    """One line naming the device and the machine, for the head of a printed table."""
    g, m = env["gpu"], env["machine"]
    if g.get("available"):
        dev = f"{g['name']} (driver {g.get('driver') or '?'}, CUDA {g.get('driver_cuda')})"
    else:
        dev = f"no GPU ({g.get('reason', 'none found')})"
    return f"device: {dev}; host: {m.get('cpu_model') or m.get('processor')}, {m.get('cpus')} CPUs"


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def summarize(samples) -> dict:
    """Median and spread of repeated measurements (same unit as the samples)."""
    x = np.asarray(list(samples), dtype=np.float64)
    if x.size == 0:
        raise ValueError("no samples to summarize")
    p10, p25, p50, p75, p90 = np.percentile(x, [10, 25, 50, 75, 90])
    return {
        "median": float(p50), "p10": float(p10), "p25": float(p25), "p75": float(p75), "p90": float(p90),
        "min": float(x.min()), "max": float(x.max()), "n": int(x.size),
    }


# ---------------------------------------------------------------------------------------------
# Command-line flags
# ---------------------------------------------------------------------------------------------


# Flag types: the same parser as `rawgpu train`, so the same one-line messages.
positive_int = number_arg(int, minimum=1)
seed_int = number_arg(int, minimum=0)  # NumPy's generators refuse negative seeds
positive_float = number_arg(float, minimum=0.0, inclusive=False)


def int_list(text: str) -> list[int]:
    """``"128,256,512"`` -> [128, 256, 512]; every entry a whole number >= 1."""
    return [positive_int(part.strip()) for part in text.split(",") if part.strip()] or _empty(text)


def choice_list(choices):
    """An argparse type for a comma-separated subset of ``choices``."""

    def parse(text: str) -> list[str]:
        items = [part.strip() for part in text.split(",") if part.strip()] or _empty(text)
        bad = [item for item in items if item not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(repr, bad))}: choose from {', '.join(choices)}")
        return list(dict.fromkeys(items))

    return parse


def _empty(text):
    raise argparse.ArgumentTypeError(f"{text!r} is an empty list")


def check_output_path(path, flag: str) -> None:
    """Fail before a long run, not after it, when an output file cannot be written."""
    try:
        check_file(path, flag)
    except ValueError as exc:
        raise BenchError(str(exc)) from None


def check_outputs(args) -> None:
    """Before any timing: ``--json`` and ``--plot`` can be written, and matplotlib is there for a plot."""
    check_output_path(args.json, "--json")
    check_output_path(args.plot, "--plot")
    if args.plot:
        require_plotting()


def emit(result: dict, args, print_results, plot) -> None:
    """Print the tables, then write the JSON and the plot where ``--json`` and ``--plot`` ask."""
    print_results(result)
    if args.json:
        write_json(args.json, result)
        print(f"results written to {args.json}", file=sys.stderr)
    if args.plot:
        plot(result, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)


def require_plotting():
    """matplotlib's pyplot with a headless backend, or a BenchError saying how to install it."""
    try:
        from rawgpu.plot import require_matplotlib

        return require_matplotlib()
    except ValueError:
        raise BenchError("--plot needs matplotlib: pip install 'rawgpu[plot]' (or pip install matplotlib)") from None


def save_plot(fig, path) -> None:
    """Write the figure (atomically) and free it."""
    from rawgpu.plot import save_figure

    save_figure(fig, path)
    fig.clear()
    require_plotting().close(fig)


def run_main(main, prog: str, argv=None) -> int:
    """Run a benchmark's ``main``: user errors and failed checks end in one line, never a traceback."""
    from rawgpu.data import DataError
    from rawgpu.engine import EngineError

    try:
        return main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (BenchError, DataError, EngineError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------------------------------------
# Files and tables
# ---------------------------------------------------------------------------------------------


def write_json(path, obj) -> None:
    """Write JSON atomically (a temporary file, then a rename): no half-written result is left."""
    with atomic_file(path, "w") as fh:
        json.dump(obj, fh, indent=1, allow_nan=False)
        fh.write("\n")


def text_table(headers, rows) -> str:
    """A plain-text table with columns padded to fit; the first column left-aligned, the rest right."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + [fmt(r) for r in cells[1:]])


def markdown_table(headers, rows, *, left: int = 1) -> str:
    """A GitHub-flavoured Markdown table; the first ``left`` columns left-aligned (text), the rest right (numbers)."""
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    align = [":---"] * left + ["---:"] * (len(headers) - left)
    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows])


def fmt_ms(ms: float | None) -> str:
    """A duration given in milliseconds, in a unit that keeps three significant figures."""
    if ms is None:
        return "-"
    if ms < 1:
        return f"{ms * 1000:.3g} us"
    if ms < 1000:
        return f"{ms:.3g} ms"
    return f"{ms / 1000:.3g} s"


def fmt_num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 10 ** digits else f"{x:.{digits}g}"
