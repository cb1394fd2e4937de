"""Checkpoints: an ``.npz`` of plain arrays plus a JSON header, written atomically, read without pickle.

A checkpoint holds the parameters, the optimizer's velocities and a header (``meta``) with the
number of epochs done, the architecture, the training settings, the dataset it was trained on
(name, sizes and a fingerprint of its labels), the metrics record of every epoch so far, and the
device's loss sums with the open ``--log-every`` window (``step_sums``, so a resumed run's step
records equal the uninterrupted run's). It is written to a temporary file in the same folder and
renamed over the old one, so a crash mid-write never leaves a half-written checkpoint, and it is
read with ``allow_pickle=False``, so a checkpoint cannot run code.

The loader trusts nothing in the file: an empty or truncated file, a header field that does not
match its schema (missing, of the wrong type, NaN, out of range: named in the message),
a missing array, any dtype but float32, a shape that does not match the header's architecture or
a non-finite weight is refused with one line naming the file, and the file is left as it was.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import zipfile
import zlib

import numpy as np

from rawgpu.atomic import atomic_file
from rawgpu.outputs import writing
from rawgpu.memory import gib, host_available

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
    with writing("--checkpoint-dir", final), atomic_file(final) as fh:  # a full disk: one line naming the file
        np.savez(fh, **arrays)
    return final


def _refuse(path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}; the file was left untouched: delete it, or pick another --checkpoint-dir")


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# The header's schema, field by field: (test, what the value must be). A header edited by hand
# (or by another program) is refused at load time, in one line naming the field, rather than
# failing with a KeyError after an epoch of training.
_WHOLE_1 = (lambda v: _whole(v) and v >= 1, "a whole number >= 1")
_COUNT = (lambda v: _number(v) and v >= 0, "a finite number >= 0")
_POSITIVE = (lambda v: _number(v) and v > 0, "a finite number > 0")
CONFIG_SCHEMA = {
    "epochs": _WHOLE_1,
    "batch_size": (lambda v: _whole(v) and 1 <= v <= 2**31 - 1, "a whole number from 1 to 2**31 - 1"),
    "lr": _POSITIVE,
    "momentum": _COUNT,
    "weight_decay": _COUNT,
    "nesterov": (lambda v: isinstance(v, bool), "true or false"),
    "hidden": (lambda v: _whole(v) and 1 <= v <= 2**31 - 1, "a whole number from 1 to 2**31 - 1"),
    "seed": (lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
}
RECORD_SCHEMA = {  # one epoch's metrics record (rawgpu.train._epoch_record)
    "epoch": _WHOLE_1,
    "train_loss": _COUNT,
    "test_loss": _COUNT,
    "test_accuracy": (lambda v: _number(v) and 0 <= v <= 1, "a finite number from 0 to 1"),
    "seconds": _POSITIVE,
    "samples_per_s": _POSITIVE,
}

STEP_SUMS_SCHEMA = {  # the device's loss sums at the epoch's end, and the open --log-every window
    "loss_sum": _COUNT,
    "mean_sum": _COUNT,
    "window_mean_sum": _COUNT,
    "window_steps": (lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
}


def _check_fields(where: str, value, schema: dict, path, *, exact: bool) -> None:
    """``value`` must be an object holding every field of ``schema``, each passing its test (and,
    where ``exact``, no other field: history records are copied into the metrics file as they are)."""
    if not isinstance(value, dict):
        raise _refuse(path, f"{where} is a JSON {type(value).__name__}, not an object")
    for key, (ok, what) in schema.items():
        if key not in value:
            raise _refuse(path, f"{where} has no {key!r}")
        if not ok(value[key]):
            raise _refuse(path, f"{where} {key!r} is {value[key]!r}, not {what}")
    extra = sorted(set(value) - set(schema))
    if exact and extra:
        raise _refuse(path, f"{where} has fields a rawgpu checkpoint does not write: {', '.join(map(repr, extra))}")


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
    _check_fields("its config", meta["config"], CONFIG_SCHEMA, path, exact=False)
    if "step_sums" in meta:  # absent from checkpoints written before it was kept
        _check_fields("its step_sums", meta["step_sums"], STEP_SUMS_SCHEMA, path, exact=True)
    history = meta["history"]
    for i, record in enumerate(history):
        _check_fields(f"history[{i}]", record, RECORD_SCHEMA, path, exact=True)
    if [r["epoch"] for r in history] != list(range(1, meta["epochs_done"] + 1)):
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


def _declared_arrays(npz) -> dict:
    """{member: (shape, dtype, bytes stored)} as each array's .npy header declares it, read
    without reading (or allocating) its data."""
    declared = {}
    for name in npz.files:
        info = npz.zip.getinfo(name + ".npy")
        with npz.zip.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = read_header(fh)
            declared[name] = (shape, dtype, info.file_size - fh.tell())
    return declared


def _check_sizes(declared: dict, path) -> None:
    """Refuse, naming the member, an array that declares more data than the file holds (a shape of
    (1000000, 1000000) in a small file), and arrays that cannot fit in the memory available: both
    would otherwise end in an out-of-memory error that blames the run's settings."""
    total = 0
    for name, (shape, dtype, stored) in declared.items():
        need = math.prod(shape) * dtype.itemsize
        if need > stored:
            raise _refuse(path, f"its array {name!r} declares shape {shape} {dtype} ({gib(need)}) but holds {stored} bytes: a damaged file")
        total += need
    free = host_available()
    if free is not None and total > 0.9 * free:
        raise _refuse(path, f"its arrays need {gib(total)} of memory but {gib(free)} is available; resume on a machine with more memory")


def load(directory) -> tuple[dict, dict, dict]:
    """Read ``(params, velocity, meta)`` from the checkpoint in ``directory``, checking everything."""
    path = path_in(directory)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint to resume from: {path} does not exist (train once with --checkpoint-dir first)") from None
    if not stat.S_ISREG(st.st_mode):  # before opening it: a pipe would block the open forever
        raise _refuse(path, "it is not a regular file (a pipe, a device, a folder or a symbolic link)")
    if st.st_size == 0:
        raise _refuse(path, "it is empty (0 bytes), not a checkpoint")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "meta" not in data.files:
                raise _refuse(path, "it has no 'meta' header")
            _check_sizes(_declared_arrays(data), path)  # before any array is read
            raw_meta = data["meta"]
            if raw_meta.dtype.kind != "U" or raw_meta.ndim != 0:
                raise _refuse(path, f"its 'meta' is a {raw_meta.dtype} array, not a JSON string")
            meta = json.loads(str(raw_meta), parse_constant=lambda name: math.nan)
            _check_meta(meta, path)  # before the weights are read
            params = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("param/")}
            velocity = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("velocity/")}
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _refuse(path, f"not a readable rawgpu checkpoint ({reason})") from None
    except MemoryError:
        raise _refuse(path, "its arrays do not fit in the memory available") from None
    _check_arrays("param", params, meta["architecture"], path)
    _check_arrays("velocity", velocity, meta["architecture"], path)
    return params, velocity, meta
