"""Checkpoints: an ``.npz`` of plain arrays plus a JSON header, written atomically, read without pickle.

A checkpoint holds the parameters, the optimizer's velocities and a header (``meta``) with the
number of epochs done, the architecture, the training settings, the dataset it was trained on
(name, sizes and a fingerprint of its labels) and the metrics record of every epoch so far. It
is written to a temporary file in the same folder and renamed over the old one, so a crash
mid-write never leaves a half-written checkpoint, and it is read with ``allow_pickle=False``, so
a checkpoint cannot run code.

The loader trusts nothing in the file: an empty or truncated file, a header of the wrong shape,
a missing array, any dtype but float32, a shape that does not match the header's architecture or
a non-finite weight is refused with one line naming the file, and the file is left as it was.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
import zlib

import numpy as np

from rawgpu.atomic import atomic_file

FILENAME = "checkpoint.npz"
FORMAT = "rawgpu-checkpoint-2"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def path_in(directory) -> str:
    return os.path.join(os.fspath(directory), FILENAME)


def dataset_identity(dataset) -> dict:
    """What a checkpoint records of its dataset: the name, the sizes and a fingerprint.

    The fingerprint is a SHA-256 of the label arrays and the image shapes: cheap (labels are
    small), and it tells two datasets apart even when a folder is renamed or the same name
    (``custom``) stands for different files.
    """
    h = hashlib.sha256()
    for images, labels in ((dataset.train_images, dataset.train_labels), (dataset.test_images, dataset.test_labels)):
        h.update(repr(tuple(images.shape)).encode())
        h.update(np.ascontiguousarray(labels, dtype="<i4").tobytes())
    return {
        "name": str(getattr(dataset, "name", "custom")),
        "train": int(len(dataset.train_labels)),
        "test": int(len(dataset.test_labels)),
        "fingerprint": h.hexdigest()[:16],
    }


def save(directory, *, params: dict, velocity: dict, meta: dict) -> str:
    """Write the checkpoint atomically into ``directory`` (created if needed); return its path."""
    os.makedirs(directory, exist_ok=True)
    arrays = {f"param/{k}": np.asarray(v) for k, v in params.items()}
    arrays.update({f"velocity/{k}": np.asarray(v) for k, v in velocity.items()})
    header = dict(meta, format=FORMAT)
    # allow_nan=False: the header is strict JSON, readable by any JSON parser.
    arrays["meta"] = np.array(json.dumps(header, sort_keys=True, allow_nan=False))
    final = path_in(directory)
    with atomic_file(final) as fh:
        np.savez(fh, **arrays)
    return final


def _refuse(path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}; the file was left untouched: delete it, or pick another --checkpoint-dir")


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_meta(meta, path) -> None:
    """The header's keys and types; anything else is a damaged or foreign file."""
    if not isinstance(meta, dict):
        raise _refuse(path, f"its header is a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a rawgpu checkpoint of format {FORMAT} (found {meta.get('format')!r}); "
            f"delete it, or pick another --checkpoint-dir"
        )
    expected = {"epochs_done": int, "architecture": dict, "config": dict, "dataset": dict, "history": list}
    for key, kind in expected.items():
        if key not in meta:
            raise _refuse(path, f"its header has no {key!r}")
        value = meta[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _refuse(path, f"{key!r} in its header is a {type(value).__name__}, not a{'n' if kind is int else ''} {kind.__name__}")
    if meta["epochs_done"] < 1:
        raise _refuse(path, f"'epochs_done' is {meta['epochs_done']}, a checkpoint holds at least one epoch")
    arch = meta["architecture"]
    cnn = arch.get("model") == "cnn"  # the CNN records its kind; an MLP's architecture has no "model"
    for key in ("hidden", "classes") if cnn else ("in_features", "hidden", "classes"):
        if not _whole(arch.get(key)) or arch[key] < 1:
            raise _refuse(path, f"architecture {key!r} is {arch.get(key)!r}, not a whole number >= 1")
    if cnn:
        for key in ("in_shape", "channels"):
            value = arch.get(key)
            if not isinstance(value, list) or len(value) != 3 or not all(_whole(v) and v >= 1 for v in value):
                raise _refuse(path, f"architecture {key!r} is {value!r}, not three whole numbers >= 1")
        if arch.get("activation") not in ("none", "relu"):
            raise _refuse(path, f"architecture 'activation' is {arch.get('activation')!r}, not 'none' or 'relu'")
    ds = meta["dataset"]
    if not isinstance(ds.get("name"), str) or not isinstance(ds.get("fingerprint"), str):
        raise _refuse(path, "its header does not say which dataset it was trained on")
    history = meta["history"]
    if [r.get("epoch") if isinstance(r, dict) else None for r in history] != list(range(1, meta["epochs_done"] + 1)):
        raise _refuse(path, f"its metrics history does not hold epochs 1..{meta['epochs_done']} in order")


def _shapes(arch: dict) -> dict:
    if arch.get("model") == "cnn":
        from rawgpu.cnn import param_shapes

        return param_shapes(arch["in_shape"], arch["channels"], arch["hidden"], arch["classes"])
    d, h, c = arch["in_features"], arch["hidden"], arch["classes"]
    return {"W1": (d, h), "b1": (h,), "W2": (h, c), "b2": (c,)}


def _check_arrays(kind: str, arrays: dict, arch: dict, path) -> None:
    names, shapes = sorted(arrays), _shapes(arch)
    if names != sorted(shapes):
        raise _refuse(path, f"its {kind} arrays are {names or 'missing'}, not {', '.join(shapes)}")
    for name, want in shapes.items():
        arr = arrays[name]
        if arr.dtype != np.float32:
            raise _refuse(path, f"{kind} {name} is {arr.dtype}, not float32")
        if arr.shape != want:
            raise _refuse(path, f"{kind} {name} has shape {arr.shape}, but the header's architecture needs {want}")
        if not np.isfinite(arr).all():
            bad = int(arr.size - np.isfinite(arr).sum())
            raise _refuse(path, f"{kind} {name} holds {bad} non-finite value(s) (NaN or inf): the run that wrote it had diverged")


def load(directory) -> tuple[dict, dict, dict]:
    """Read ``(params, velocity, meta)`` from the checkpoint in ``directory``, checking everything."""
    path = path_in(directory)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint to resume from: {path} does not exist (train once with --checkpoint-dir first)")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise _refuse(path, "it is empty (0 bytes), not a checkpoint")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "meta" not in data.files:
                raise _refuse(path, "it has no 'meta' header")
            raw_meta = data["meta"]
            if raw_meta.dtype.kind != "U" or raw_meta.ndim != 0:
                raise _refuse(path, f"its 'meta' is a {raw_meta.dtype} array, not a JSON string")
            meta = json.loads(str(raw_meta), parse_constant=lambda name: math.nan)
            params = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("param/")}
            velocity = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("velocity/")}
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _refuse(path, f"not a readable rawgpu checkpoint ({reason})") from None
    _check_meta(meta, path)
    _check_arrays("param", params, meta["architecture"], path)
    _check_arrays("velocity", velocity, meta["architecture"], path)
    return params, velocity, meta
