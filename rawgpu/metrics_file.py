"""The ``--metrics`` file: what counts as one rawgpu wrote, and how a fresh run replaces one.

rawgpu writes two kinds of record, one JSON object per line, always with ``epoch`` first:

* an epoch record, after every epoch: ``epoch``, ``train_loss``, ``test_loss``,
  ``test_accuracy``, ``seconds``, ``samples_per_s``;
* a step record, every ``--log-every`` steps: ``epoch``, ``step``, ``train_loss``.

An existing file is taken as rawgpu's only when every line is one of those, with exactly those
keys, whole numbers >= 1 for ``epoch`` and ``step`` and finite numbers for the rest. The one
exception is the last line of a run killed in mid-write: a line without its newline that begins
like a record. Anything else (notes, a blank line, another tool's JSON log with an ``epoch``
key) is someone else's file, and rawgpu refuses it rather than replace it.

A fresh run does not empty the old file at its start: it writes into a temporary file beside it
(:func:`start_fresh`) and renames that over the old file when the first epoch record is on disk
(:func:`commit`). A run that fails or is stopped before its first epoch ends leaves the old file
exactly as it was.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

from rawgpu.atomic import file_mode

EPOCH_KEYS = frozenset({"epoch", "train_loss", "test_loss", "test_accuracy", "seconds", "samples_per_s"})
STEP_KEYS = frozenset({"epoch", "step", "train_loss"})
MAX_LINE = 1 << 12  # a record is about 200 bytes; a longer line is not one of ours
RECORD_START = b'{"epoch": '  # how json.dumps begins every record rawgpu writes


def _no_constants(name):
    raise ValueError(f"{name} is not strict JSON")


def record_problem(record) -> str | None:
    """Why ``record`` (parsed JSON) is not a rawgpu epoch or step record, or None if it is one."""
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not a record"
    keys = set(record)
    if keys not in (EPOCH_KEYS, STEP_KEYS):
        return f"has the keys {', '.join(sorted(keys)) or 'none'}, not those of a rawgpu epoch or step record"
    for key, value in record.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"has {key} {value!r}, not a number"
        if key in ("epoch", "step") and (not isinstance(value, int) or value < 1):
            return f"has {key} {value!r}, not a whole number >= 1"
        if not math.isfinite(value):
            return f"has {key} {value!r}, not a finite number"
    return None


def _line_problem(line: bytes) -> str | None:
    try:
        record = json.loads(line, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError):
        return "is not JSON"
    return record_problem(record)


def file_problem(path) -> str | None:
    """Why the existing file ``path`` is not a rawgpu metrics file, or None if it is one (or empty).

    Reads line by line and stops at the first line that is not a record, so a large file of
    someone else's costs one line, not the whole file.
    """
    with open(path, "rb") as fh:
        number = 0
        while True:
            line = fh.readline(MAX_LINE + 1)
            if not line:
                return None
            number += 1
            if len(line) > MAX_LINE:
                return f"line {number} is longer than any rawgpu record"
            if line.endswith(b"\n"):
                problem = _line_problem(line)
                if problem:
                    return f"line {number} {problem}"
                continue
            # The last line, without its newline: a record cut short by a kill is ours (a cut
            # record is never valid JSON); a whole line that is not a record is not.
            problem = _line_problem(line)
            if problem == "is not JSON" and line.startswith(RECORD_START):
                return None
            return f"line {number} {problem}" if problem else None


def start_fresh(path) -> str:
    """Create the (empty) temporary file a fresh run writes its metrics into; return its path.

    It is named the way :func:`rawgpu.atomic.atomic_file` names its temporary files, so a run
    killed before its first epoch leaves one that the next run removes as stale.
    """
    path = os.fspath(path)
    fd, pending = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
    os.fchmod(fd, file_mode())
    os.close(fd)
    return pending


def commit(pending: str, path) -> None:
    """Replace ``path`` with the fresh run's file ``pending`` (its first epoch record is on disk)."""
    os.replace(pending, path)
    try:
        folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself on disk, so a crash now cannot bring the old file back
        finally:
            os.close(folder)
    except OSError:
        pass  # not every filesystem can sync a folder (EINVAL); the rename is done all the same
