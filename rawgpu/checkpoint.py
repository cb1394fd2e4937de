"""Checkpoints: an ``.npz`` of plain arrays plus a JSON header, written atomically, read without pickle.

A checkpoint holds the parameters, the optimizer's velocities, the number of epochs done, the
architecture and the training settings. It is written to a temporary file in the same folder
and renamed over the old one, so a crash mid-write never leaves a half-written checkpoint, and
it is read with ``allow_pickle=False``, so a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from rawgpu.atomic import atomic_file

FILENAME = "checkpoint.npz"
FORMAT = "rawgpu-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def path_in(directory) -> str:
    return os.path.join(os.fspath(directory), FILENAME)


def save(directory, *, params: dict, velocity: dict, meta: dict) -> str:
    """Write the checkpoint atomically into ``directory`` (created if needed); return its path."""
    os.makedirs(directory, exist_ok=True)
    arrays = {f"param/{k}": np.asarray(v) for k, v in params.items()}
    arrays.update({f"velocity/{k}": np.asarray(v) for k, v in velocity.items()})
    header = dict(meta, format=FORMAT)
    arrays["meta"] = np.array(json.dumps(header, sort_keys=True))
    final = path_in(directory)
    with atomic_file(final) as fh:
        np.savez(fh, **arrays)
    return final


def load(directory) -> tuple[dict, dict, dict]:
    """Read ``(params, velocity, meta)`` from the checkpoint in ``directory``."""
    path = path_in(directory)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint to resume from: {path} does not exist (train once with --checkpoint-dir first)")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            params = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("param/")}
            velocity = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("velocity/")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable rawgpu checkpoint ({exc}); delete it or pick another --checkpoint-dir") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a rawgpu checkpoint of format {FORMAT} (found {meta.get('format')!r})")
    return params, velocity, meta
