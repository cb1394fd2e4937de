"""How much memory a training run needs, worked out before anything is allocated.

A run holds, on its engine (float32 = 4 bytes, labels int32):

=====================  ==========================================================
the dataset            train and test images ``N x D`` and labels, plus the shuffle
                       buffer (a second copy of the training split, gathered per epoch)
parameters             ``W1 (D, H)``, ``b1``, ``W2 (H, C)``, ``b2``: ``P = DH + H + HC + C``
gradients, velocities  ``P`` each: the backward pass fills one, SGD keeps the other
activations            per batch size the model meets: ``a`` and ``dL/da`` ``(B, H)``,
                       ``z`` and ``dL/dz`` ``(B, C)``; for the training batch, the last
                       (partial) training batch, the evaluation batch and its last one
scratch                the NumPy engine's SGD step buffer and ReLU mask
=====================  ==========================================================

and, on the host, the images once more while they are scaled to float32 (the ``cuda`` engine
then copies them over; on ``numpy`` and ``sim`` that copy is the engine's). The estimate is
compared with what is free: host memory (``MemAvailable``, and the cgroup's limit where one is
set) for ``numpy`` and ``sim``, the GPU's free memory for ``cuda``. A run that cannot fit is
refused in one line, before it spends an epoch, that names ``--hidden`` and ``--batch-size``, or,
where the dataset is the largest part, the data and ``--limit-train``/``--limit-test``.
"""

from __future__ import annotations

import os

import numpy as np

F32 = 4
EVAL_BATCH = 1000  # TwoLayerMLP.evaluate's batch size


class MemoryEstimateError(ValueError):
    """The run cannot fit in the memory available; the message says how much and what to lower."""


def estimate(*, n_train: int, n_test: int, in_features: int, hidden: int, classes: int, batch_size: int) -> dict:
    """Bytes the run needs on its engine, by part, and on the host while preparing the data."""
    D, H, C = in_features, hidden, classes
    params = D * H + H + H * C + C
    batches = {min(batch_size, n_train), n_train % batch_size, min(EVAL_BATCH, n_test), n_test % EVAL_BATCH} - {0}
    return {
        "dataset": F32 * (2 * n_train * D + n_test * D) + 4 * (2 * n_train + n_test),
        "parameters": F32 * params,
        "gradients and velocities": 2 * F32 * params,
        "activations": sum(F32 * (2 * b * H + 2 * b * C) for b in batches),
        # The NumPy engine's scratch: SGD's step buffer (one parameter's size, for W1 the largest)
        # and the ReLU mask (one byte per hidden activation of the largest batch).
        "scratch": F32 * max(D * H, H * C) + max(batches) * H,
        "host staging": F32 * max(n_train, n_test) * D * 2,  # the float32 images and one temporary
    }


def estimate_cnn(*, n_train: int, n_test: int, in_shape, hidden: int, classes: int, batch_size: int, channels=None) -> dict:
    """The same parts for ``--model cnn`` (rawgpu.SmallCNN, at the seed's conv widths unless
    ``channels`` gives others). Per batch size
    it keeps, for each conv stage, its output ``h`` and ``dL/dh``, and the pooled ``p``, the
    argmax and ``dL/dp``; the NumPy engine's scratch is its im2col buffers, ``C K K`` values per
    output pixel of each conv, made a chunk of images at a time (at most ``CHUNK_BYTES``, or one
    image's), one per stage for the forward pass and each gradient, and the padded inputs."""
    from rawgpu.backends.numpy_backend import CHUNK_BYTES
    from rawgpu.cnn import CHANNELS
    from rawgpu.cnn import EVAL_BATCH as CNN_EVAL
    from rawgpu.cnn import KERNEL, param_shapes, stage_shapes

    channels = tuple(CHANNELS if channels is None else channels)
    D = in_shape[0] * in_shape[1] * in_shape[2]
    params = sum(int(np.prod(shape)) for shape in param_shapes(in_shape, channels, hidden, classes).values())
    stages = stage_shapes(in_shape, channels)
    per_image = sum(2 * c * h * w + 3 * c * (h // 2) * (w // 2) for c, h, w in stages) + 2 * hidden + 2 * classes
    ins = list(zip((in_shape[0], *channels[:2]), stages))  # (input channels, the conv's output shape)
    pad = KERNEL // 2

    def cols(b):  # the im2col chunk of each stage at batch b
        return sum(min(b * F32 * cin * KERNEL * KERNEL * h * w, max(CHUNK_BYTES, F32 * cin * KERNEL * KERNEL * h * w))
                   for cin, (_, h, w) in ins)

    padded_per_image = sum(cin * (h + 2 * pad) * (w + 2 * pad) for cin, (_, h, w) in ins)
    train_batches = {min(batch_size, n_train), n_train % batch_size} - {0}
    eval_batches = {min(CNN_EVAL, n_test), n_test % CNN_EVAL} - {0}
    batches = train_batches | eval_batches
    return {
        "dataset": F32 * (2 * n_train * D + n_test * D) + 4 * (2 * n_train + n_test),
        "parameters": F32 * params,
        "gradients and velocities": 2 * F32 * params,
        "activations": sum(F32 * per_image * b for b in batches),
        # Training batches: an im2col chunk for the forward pass and each gradient (3 per stage),
        # the padded inputs, and the products before the NCHW copy; evaluation: the forward pass's.
        "scratch": (sum(3 * cols(b) + F32 * (2 * padded_per_image + per_image) * b for b in train_batches)
                    + sum(cols(b) + F32 * padded_per_image * b for b in eval_batches)),
        "host staging": F32 * max(n_train, n_test) * D * 2,
    }


def _cgroup_free() -> int | None:
    """Bytes left under this process's cgroup (v2) memory limit, where there is one."""
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as fh:
            return int(limit) - int(fh.read().strip())
    except (OSError, ValueError):
        return None


def host_available() -> int | None:
    """Bytes of host memory a new allocation can have (None where the system does not say)."""
    free = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if free is None and hasattr(os, "sysconf"):
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            pass
    cgroup = _cgroup_free()
    if cgroup is not None:
        free = cgroup if free is None else min(free, cgroup)
    return free


def device_available(xp) -> int | None:
    """Bytes the GPU can still give CuPy: the driver's free memory plus CuPy's cached free blocks."""
    try:
        free, _total = xp.cuda.runtime.memGetInfo()
        return int(free) + int(xp.get_default_memory_pool().free_bytes())
    except Exception:  # a driver that cannot say: no check rather than a wrong one
        return None


def gib(n: int) -> str:
    """A size for people: GiB from a quarter of one up, else MiB (TiB past 1024 GiB)."""
    if n >= 2**40:
        return f"{n / 2**40:.1f} TiB"
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def check_fits(parts: dict, *, engine: str, hidden: int, batch_size: int, available_engine: int | None, available_host: int | None,
               data: str | None = None, channels=None) -> None:
    """Raise :class:`MemoryEstimateError` when the run cannot fit where it will run. Where the
    dataset is the largest part, the message names ``data`` (where it came from) and the flags
    that take part of it, not --hidden; ``channels``, the CNN's conv widths, is named with the
    network's other sizes."""
    on_engine = sum(v for k, v in parts.items() if k != "host staging")
    host_need = parts["host staging"] + (on_engine if engine != "cuda" else 0)
    checks = [("host memory", host_need, available_host)]
    if engine == "cuda":
        checks.append(("free GPU memory", on_engine, available_engine))
    for where, need, have in checks:
        # 90%: the estimate leaves out the interpreter, the libraries and allocator slack.
        if have is not None and need > 0.9 * have:
            biggest = max((k for k in parts if k != "host staging"), key=parts.get)
            if biggest == "dataset":
                raise MemoryEstimateError(
                    f"this run needs about {gib(need)} of {where} but {gib(have)} is available; the largest part is the "
                    f"dataset ({data or 'its images'}), {gib(parts[biggest])} on the engine: train on part of it with "
                    f"--limit-train/--limit-test, or use a machine with more memory"
                )
            widths = f"--channels {','.join(map(str, channels))}, " if channels is not None else ""
            raise MemoryEstimateError(
                f"this run needs about {gib(need)} of {where} but {gib(have)} is available "
                f"(the largest part: {biggest}, {gib(parts[biggest])}, with {widths}--hidden {hidden} and --batch-size {batch_size}); "
                f"lower {'--channels, ' if channels is not None else ''}--hidden or --batch-size"
            )
