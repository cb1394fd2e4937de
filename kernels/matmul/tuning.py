"""Which rung, at which configuration, the ``cuda`` engine launches for a given product.

Training multiplies at a handful of fixed shapes (128 x 128 from K = 784, 784 x 128 from K = 128,
...), and the fastest rung differs between them: a large square product wants the biggest tiles
(``warptile``), a thin one wants enough blocks to fill the GPU (``transposed`` with 64 x 64 tiles,
or ``splitk``). :func:`pick` decides, in two ways, and says which:

1. *measured*: ``tuning.json`` beside this file holds, per GPU name, the winners that
   ``python bench/kernels.py --write-tuning kernels/matmul/tuning.json`` timed on that GPU
   (every rung at its default config, and split-K at several splits, per training shape). An
   entry for this GPU and this exact (M, N, K, trans_a, trans_b) is used as is.
2. *heuristic*, otherwise: count the blocks each choice launches against the GPU's SM count.
   ``warptile`` if its 128 x 64 tiles alone give every SM a block; else ``transposed`` (64 x 64)
   if those do; else ``splitk`` with enough slices of K to reach one block per SM, keeping at
   least 64 values of K per slice.

Whatever it picks, the results are reproducible bit for bit: ``splitk`` sums its slices' partial
tiles in a fixed order (through a workspace, not atomics), like every other rung's dot products.

The table shipped today holds no measurements (it was written on a machine without a GPU), so
every pick is the heuristic's until the benchmark has run on a GPU. Nothing here imports
numba.cuda: the compile report and ``rawgpu info`` can call :func:`pick` and :func:`explain`.
"""

from __future__ import annotations

import functools
import json
import math
import os

TABLE_PATH = os.path.join(os.path.dirname(__file__), "tuning.json")
MIN_K_PER_SLICE = 64


@functools.lru_cache(maxsize=1)
def table() -> dict:
    """The shipped measurements: ``{"gpus": {name: [entry, ...]}}`` (empty when never measured)."""
    try:
        with open(TABLE_PATH) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"gpus": {}}


def _measured(gpu, m, n, k, trans_a, trans_b):
    for entry in table().get("gpus", {}).get(gpu or "", []):
        if entry["shape"] == [m, n, k, bool(trans_a), bool(trans_b)]:
            return entry
    return None


def pick(m: int, n: int, k: int, trans_a: bool, trans_b: bool, *, gpu: str | None = None, sms: int = 132):
    """``(variant, params, reason)`` for ``op(a) @ op(b)`` of M x N from K on a GPU with ``sms`` SMs.

    ``params`` overrides the rung's defaults (pass them to :func:`rawgpu.kernels.matmul.config`).
    """
    entry = _measured(gpu, m, n, k, trans_a, trans_b)
    if entry:
        cublas = f"{entry['cublas_us']:.1f} us" if entry.get("cublas_us") is not None else "not measured"
        return entry["variant"], dict(entry["params"]), (
            f"measured on {gpu}: {entry['us']:.1f} us, cuBLAS {cublas} ({entry['source']})"
        )
    big = math.ceil(m / 128) * math.ceil(n / 64)
    if big >= sms:
        return "warptile", {}, f"heuristic: {big} tiles of 128x64 fill the {sms} SMs"
    small = math.ceil(m / 64) * math.ceil(n / 64)
    if small >= sms:
        return "transposed", {}, f"heuristic: {big} tiles of 128x64 leave SMs idle; {small} of 64x64 fill the {sms} SMs"
    splits = min(math.ceil(sms / small), max(1, k // MIN_K_PER_SLICE))
    if splits <= 1:
        return "transposed", {}, (
            f"heuristic: {small} tiles of 64x64 for {sms} SMs, but K={k} is too short to split (under {2 * MIN_K_PER_SLICE})"
        )
    return "splitk", {"splits": splits}, (
        f"heuristic: {small} tiles of 64x64 for {sms} SMs; K={k} split {splits} ways gives {small * splits} blocks"
    )


def explain(shapes, *, gpu: str | None = None, sms: int = 132) -> list[str]:
    """One line per (M, N, K, trans_a, trans_b): the rung picked and why (for ``rawgpu info``)."""
    lines = []
    for m, n, k, ta, tb in shapes:
        variant, params, reason = pick(m, n, k, ta, tb, gpu=gpu, sms=sms)
        flags = ("T" if ta else "N") + ("T" if tb else "N")
        extra = " ".join(f"{key}={value}" for key, value in params.items())
        lines.append(f"{m}x{n}x{k} {flags}: {variant}{' ' + extra if extra else ''} ({reason})")
    return lines
