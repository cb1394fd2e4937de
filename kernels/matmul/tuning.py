"""Which rung, at which configuration, the ``cuda`` engine launches for a given product.

Training multiplies at a handful of fixed shapes (128 x 128 from K = 784, 784 x 128 from K = 128,
...), and the fastest rung differs between them: a large square product wants the biggest tiles
(``warptile``), a thin one wants enough blocks to fill the GPU (smaller tiles, or ``splitk``).
:func:`pick` decides, in two ways, and says which:

1. *measured*: ``tuning.json`` beside this file holds, per GPU name, the winners that
   ``python bench/kernels.py --write-tuning kernels/matmul/tuning.json`` timed on that GPU
   (every rung at its default config, and split-K at several splits, per training shape). An
   entry for this GPU and this exact (M, N, K, trans_a, trans_b) is used as is.
2. *heuristic*, otherwise: count the blocks each choice launches against the GPU's SM count,
   aiming at one block per SM at least. The tiles tried, largest first (:data:`TILES`):
   ``warptile`` 128 x 64, ``transposed`` 64 x 64, ``transposed`` 32 x 32. The first whose tiles
   alone give every SM a block wins. Failing that, ``splitk`` on the largest tile that reaches
   one block per SM with its slices, each slice at least :data:`MIN_K_PER_SLICE` deep. Failing
   that too (K too short to split that far), the choice with the most blocks, and the reason
   says how many SMs it leaves idle and why.

The training step asks for each of its products (kernels/fused.py), and ``rawgpu info`` prints
the picks with their reasons. Whatever it picks, the results are reproducible bit for bit:
``splitk`` adds its slices in a fixed order (through a workspace, not float atomics), like every
other rung's dot products.

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
#: The shallowest slice of K split-K gives a block: below it a block's few steps cost less than
#: its share of the workspace traffic and the final sum.
MIN_K_PER_SLICE = 32
#: The tiles the heuristic tries, largest first: (rung, parameters over its defaults, tile rows, columns).
SMALL_TILE = {"bm": 32, "bn": 32, "tm": 2, "tn": 2}  # 16 x 16 threads, 2 x 2 each
TILES = (("warptile", {}, 128, 64), ("transposed", {}, 64, 64), ("transposed", SMALL_TILE, 32, 32))
#: The split-K tiles, largest first: (parameters over splitk's defaults, tile rows, columns).
SPLIT_TILES = (({}, 64, 64), (SMALL_TILE, 32, 32))
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
    return _heuristic(m, n, k, sms)


def _heuristic(m, n, k, sms):
    def blocks(rows, cols):
        return math.ceil(m / rows) * math.ceil(n / cols)

    for variant, params, rows, cols in TILES:
        if blocks(rows, cols) >= sms:
            return variant, dict(params), f"heuristic: {blocks(rows, cols)} tiles of {rows}x{cols} fill the {sms} SMs"
    most_splits = max(1, min(k // MIN_K_PER_SLICE, 65535))
    for params, rows, cols in SPLIT_TILES:
        tiles = blocks(rows, cols)
        splits = min(math.ceil(sms / tiles), most_splits)
        if splits > 1 and tiles * splits >= sms:
            return "splitk", {**params, "splits": splits}, (
                f"heuristic: {tiles} tiles of {rows}x{cols} for {sms} SMs; K={k} split {splits} ways gives {tiles * splits} blocks"
            )
    # Nothing fills the GPU: take the most blocks, and say what stops it.
    variant, params, rows, cols = TILES[-1]
    tiles = blocks(rows, cols)
    if most_splits > 1:
        return "splitk", {**params, "splits": most_splits}, (
            f"heuristic: {tiles} tiles of {rows}x{cols} split {most_splits} ways give {tiles * most_splits} blocks for {sms} SMs: "
            f"K={k} is too short to split further (slices of at least {MIN_K_PER_SLICE})"
        )
    return variant, dict(params), (
        f"heuristic: {tiles} tiles of {rows}x{cols} for {sms} SMs, and K={k} is too short to split "
        f"(under {2 * MIN_K_PER_SLICE}): the product is too small to fill the GPU"
    )


def step_products(batch: int = 128, d: int = 784, h: int = 128, c: int = 10) -> list:
    """``(op, M, N, K, trans_a, trans_b)`` of the four matmul launches of one training step of the
    d-h-c network at ``batch`` (kernels/fused.py; the output layer's product is inside the loss
    kernel). What ``rawgpu info`` explains and ``rawgpu kernels`` compiles at the tuner's picks."""
    return [
        ("linear_relu", batch, h, d, False, False),  # a = relu(x W1 + b1)
        ("weight_grad", h, c, batch, True, False),  # dW2 = a^T dz, db2
        ("linear_backward_relu", batch, h, c, False, True),  # dh = (dz W2^T) * [a > 0]
        ("weight_grad", d, h, batch, True, False),  # dW1 = x^T dh, db1
    ]


def explain(shapes, *, gpu: str | None = None, sms: int = 132) -> list[str]:
    """One line per (M, N, K, trans_a, trans_b): the rung picked and why (for ``rawgpu info``)."""
    lines = []
    for m, n, k, ta, tb in shapes:
        variant, params, reason = pick(m, n, k, ta, tb, gpu=gpu, sms=sms)
        flags = ("T" if ta else "N") + ("T" if tb else "N")
        extra = " ".join(f"{key}={value}" for key, value in params.items())
        lines.append(f"{m}x{n}x{k} {flags}: {variant}{' ' + extra if extra else ''} ({reason})")
    return lines
