"""PNG plots of a training run (needs the ``plot`` extra: matplotlib)."""

from __future__ import annotations

import json
import os

from rawgpu.atomic import atomic_file
from rawgpu.outputs import PLOT_SOFTWARE, writing


def require_matplotlib():
    """Import matplotlib with a headless backend, or explain how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'rawgpu[plot]'") from None
    return plt


def check_suffix(path) -> None:
    """Refuse a --plot name whose suffix names another format than the PNG rawgpu writes (a .jpg
    holding PNG bytes would fool every viewer that trusts the name); checked before any work."""
    suffix = os.path.splitext(os.fspath(path))[1]
    if suffix.lower() != ".png":
        raise ValueError(
            f"--plot {path}: rawgpu writes plots as PNG, but the name ends in {suffix or 'no suffix'!r}; name the file *.png"
        )


def save_figure(fig, path, flag: str = "--plot") -> None:
    """Write a figure atomically (temporary file, then rename), so no half-written PNG is left.

    The PNG carries the text ``Software: rawgpu <version>``: that is how a later run knows the
    file is a plot of ours that it may replace (:func:`rawgpu.outputs.check_file`).
    """
    from rawgpu import __version__

    with writing(flag, path), atomic_file(path) as fh:
        fig.savefig(fh, dpi=120, format="png", metadata={"Software": f"{PLOT_SOFTWARE} {__version__}"})


def plot_metrics(metrics_path, records, path) -> None:
    """Loss and accuracy per epoch; reads the whole metrics file when there is one (resumed runs)."""
    plt = require_matplotlib()
    if metrics_path and os.path.exists(metrics_path):
        with open(metrics_path) as fh:
            records = [json.loads(line) for line in fh if line.strip()]
    records = [r for r in records if "step" not in r]  # epoch records only (step records have a step)
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [r["train_loss"] for r in records], "o-", label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in records], "s-", label="test")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [r["test_accuracy"] for r in records], "s-", color="C1")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
