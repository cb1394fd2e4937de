"""Nothing lost, nothing clobbered: every way a hostile (or hurried) user can point rawgpu's outputs
at the wrong place, kill it, or feed it a broken checkpoint.

Each test here failed on the code before issue 7: the case is named in its docstring.
"""

import errno
import gzip
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import rawgpu
from rawgpu import checkpoint as ckpt
from rawgpu import cli, memory, ops
from rawgpu.data import DataError, read_idx
from rawgpu.model import TwoLayerMLP
from rawgpu.optim import SGD
from rawgpu.outputs import LOCK_NAME
from test_cli import assert_short_error, run, write_dataset

SAMPLE = ["--dataset", "sample", "--no-progress", "--hidden", "16"]


@pytest.fixture(autouse=True)
def numpy_engine(monkeypatch):
    monkeypatch.setenv("RAWGPU_DEVICE", "numpy")
    rawgpu.use("numpy")


def snapshot(path: Path):
    """What a file is, to compare before and after: its bytes, mode and modification time."""
    st = path.stat()
    return path.read_bytes(), st.st_mode, st.st_mtime_ns


def trained_checkpoint(capsys, folder: Path, *extra) -> Path:
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "1", "--checkpoint-dir", str(folder), *extra)
    assert code == 0, err
    return folder / ckpt.FILENAME


# --- outputs that are not plain writable files ------------------------------------------------


@pytest.mark.parametrize("kind", ["device", "pipe"])
def test_a_device_or_pipe_is_never_replaced(capsys, tmp_path, kind):
    """--plot /dev/full as root turned the device into a PNG file.

    The device is a node of our own (a twin of /dev/null, made in tmp_path): on code with the
    bug this test must fail without taking the machine's /dev/null with it."""
    node = tmp_path / kind
    if kind == "device":
        try:
            os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("making a device node needs root")
    else:
        os.mkfifo(node)
    before = os.stat(node)
    code, _, err = run(capsys, "train", *SAMPLE, "--plot", str(node))
    assert_short_error(code, err, f"--plot {node} is a {kind}")
    after = os.stat(node)
    assert (after.st_mode, after.st_rdev, after.st_ino) == (before.st_mode, before.st_rdev, before.st_ino)


@pytest.mark.parametrize("flag", ["--metrics", "--plot"])
def test_a_read_only_output_is_refused_even_as_root(capsys, tmp_path, flag):
    target = tmp_path / "out"
    target.write_bytes(b"")
    target.chmod(0o444)
    before = snapshot(target)
    code, _, err = run(capsys, "train", *SAMPLE, flag, str(target))
    assert_short_error(code, err, flag, "is read-only")
    assert snapshot(target) == before


def test_a_symbolic_link_is_refused_and_kept(capsys, tmp_path):
    real = tmp_path / "real.jsonl"
    real.write_text('{"epoch": 1}\n')
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    code, _, err = run(capsys, "train", *SAMPLE, "--metrics", str(link))
    assert_short_error(code, err, "--metrics", "is a symbolic link")
    assert link.is_symlink() and os.readlink(link) == str(real) and real.read_text() == '{"epoch": 1}\n'


def test_a_file_that_rawgpu_did_not_write_is_not_replaced(capsys, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my thesis\n")
    code, _, err = run(capsys, "train", *SAMPLE, "--metrics", str(notes))
    assert_short_error(code, err, "not a rawgpu metrics file")
    code, _, err = run(capsys, "train", *SAMPLE, "--plot", str(notes))
    assert_short_error(code, err, "not a PNG")
    assert notes.read_text() == "my thesis\n"


# --- checkpoints are not overwritten by accident -----------------------------------------------


def test_a_fresh_run_refuses_a_folder_holding_a_checkpoint(capsys, tmp_path):
    """A run without --resume silently replaced a 5-epoch checkpoint with another network."""
    path = trained_checkpoint(capsys, tmp_path)
    before = snapshot(path)
    code, _, err = run(capsys, "train", *SAMPLE, "--hidden", "32", "--epochs", "1", "--checkpoint-dir", str(tmp_path))
    assert_short_error(code, err, "already holds a checkpoint", "--resume", "--overwrite")
    assert snapshot(path) == before
    code, _, err = run(capsys, "train", *SAMPLE, "--resume", "--overwrite", "--checkpoint-dir", str(tmp_path))
    assert_short_error(code, err, "--resume and --overwrite")
    code, _, err = run(capsys, "train", *SAMPLE, "--hidden", "32", "--epochs", "1", "--checkpoint-dir", str(tmp_path), "--overwrite")
    assert code == 0, err
    assert ckpt.load(tmp_path)[2]["architecture"]["hidden"] == 32


# --- outputs against each other and against the inputs -----------------------------------------


def test_metrics_and_plot_on_one_file(capsys, tmp_path):
    same = tmp_path / "x"
    code, _, err = run(capsys, "train", *SAMPLE, "--metrics", str(same), "--plot", str(same))
    assert_short_error(code, err, "--metrics and --plot are the same file")
    assert not same.exists()


def test_metrics_on_the_checkpoint_file(capsys, tmp_path):
    path = trained_checkpoint(capsys, tmp_path)
    before = snapshot(path)
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "2", "--resume", "--checkpoint-dir", str(tmp_path), "--metrics", str(path))
    assert_short_error(code, err, "--metrics")
    assert snapshot(path) == before
    # Written the other way round (a metrics path spelled differently), it is still one file.
    os.remove(path)
    metrics = tmp_path / "sub" / ".." / ckpt.FILENAME
    (tmp_path / "sub").mkdir()
    code, _, err = run(capsys, "train", *SAMPLE, "--checkpoint-dir", str(tmp_path), "--metrics", str(metrics))
    assert_short_error(code, err, "--metrics and --checkpoint-dir are the same file")


@pytest.mark.parametrize("flag", ["--metrics", "--plot"])
def test_an_output_that_is_an_input_file(capsys, tmp_path, flag):
    """A --metrics that was one of the data files in --data-dir exited 0 after destroying it."""
    folder = write_dataset(tmp_path / "data")
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    before = snapshot(labels)
    code, _, err = run(capsys, "train", "--data-dir", str(folder), "--no-progress", "--hidden", "8", flag, str(labels))
    assert_short_error(code, err, flag, str(labels))
    assert snapshot(labels) == before


def test_check_distinct_names_the_input(tmp_path):
    from rawgpu.outputs import OutputError, check_distinct

    data_file = tmp_path / "train-images-idx3-ubyte"
    data_file.write_bytes(b"x")
    with pytest.raises(OutputError, match=r"--metrics .* is the run's input train images file"):
        check_distinct({"--metrics": str(tmp_path / "." / "train-images-idx3-ubyte")}, {"train images file": str(data_file)})


# --- issue 16: what rawgpu replaces, what it locks, and what a failed write says ---------------

EPOCH_RECORD = {"epoch": 1, "train_loss": 0.5, "test_loss": 0.6, "test_accuracy": 0.8, "seconds": 1.0, "samples_per_s": 40.0}
STEP_RECORD = {"epoch": 1, "step": 100, "train_loss": 0.5}


@pytest.mark.parametrize("content", [
    "\nmy notes\n",  # a blank first line, then notes
    '{"epoch": 3, "loss": 0.1, "lr": 0.01}\n',  # another tool's JSON log with an epoch key
    json.dumps(EPOCH_RECORD) + "\nnotes of my own\n",  # a rawgpu-looking first line, then not JSON
    json.dumps(EPOCH_RECORD) + "\n" + json.dumps(dict(EPOCH_RECORD, epoch=2, test_loss=float("nan"))) + "\n",
    json.dumps(dict(EPOCH_RECORD, epoch="1")) + "\n",
    json.dumps(dict(STEP_RECORD, step=1.5)) + "\n",
    json.dumps(dict(EPOCH_RECORD, note="kept")) + "\n",
    '{"epoch": 1}',  # a whole line without its newline is no torn record
])
def test_a_metrics_file_is_replaced_only_if_every_line_is_a_rawgpu_record(capsys, tmp_path, content):
    """Each of these was accepted, and emptied, by a fresh run: only the first line was looked at."""
    metrics = tmp_path / "m.jsonl"
    metrics.write_text(content)
    before = snapshot(metrics)
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "1", "--metrics", str(metrics))
    assert_short_error(code, err, "--metrics", "is not a rawgpu metrics file (line ")
    assert "engine:" not in err and snapshot(metrics) == before


def test_a_metrics_file_of_rawgpu_records_with_a_torn_last_line_is_ours(tmp_path):
    from rawgpu import metrics_file

    metrics = tmp_path / "m.jsonl"
    metrics.write_text(json.dumps(STEP_RECORD) + "\n" + json.dumps(EPOCH_RECORD) + "\n" + json.dumps(STEP_RECORD)[:20])
    assert metrics_file.file_problem(metrics) is None
    metrics.write_text("")
    assert metrics_file.file_problem(metrics) is None


def test_a_fresh_run_that_fails_leaves_the_old_metrics_whole(capsys, tmp_path):
    """A fresh run emptied the old metrics file at its start; diverging at epoch 1, it lost them."""
    metrics = tmp_path / "m.jsonl"
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "2", "--metrics", str(metrics))
    assert code == 0, err
    before = snapshot(metrics)
    code, _, err = run(capsys, "train", *SAMPLE, "--lr", "1e30", "--batch-size", "100000", "--epochs", "1", "--metrics", str(metrics))
    assert_short_error(code, err, "non-finite")
    assert snapshot(metrics) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]  # no temporary file, no lock file left
    # A fresh run that gets through its first epoch replaces the file, atomically, with its own.
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "1", "--metrics", str(metrics), "--log-every", "1")
    assert code == 0, err
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records if "step" not in r] == [1] and any("step" in r for r in records)


def test_a_fresh_run_killed_before_its_first_epoch_record_keeps_another_runs_steps_out(capsys, tmp_path, monkeypatch):
    """The kill between a fresh run's first checkpoint and its metrics rename: on --resume the old
    file's step records of epoch 1 belong to another run and must not join this run's."""
    from rawgpu import metrics_file

    metrics, ck = tmp_path / "m.jsonl", tmp_path / "ck"
    old = [dict(STEP_RECORD, step=1, train_loss=99.0), dict(EPOCH_RECORD, train_loss=99.0)]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in old))

    def killed(pending, path):
        raise KeyboardInterrupt  # the process dies after the checkpoint, before the rename

    real_commit = metrics_file.commit
    monkeypatch.setattr(metrics_file, "commit", killed)
    code, _, _ = run(capsys, "train", *SAMPLE, "--epochs", "2", "--checkpoint-dir", str(ck), "--metrics", str(metrics), "--log-every", "1")
    assert code == 130 and [json.loads(line) for line in metrics.read_text().splitlines()] == old
    monkeypatch.setattr(metrics_file, "commit", real_commit)
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "2", "--checkpoint-dir", str(ck), "--metrics", str(metrics), "--resume")
    assert code == 0, err
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records if "step" not in r] == [1, 2]
    assert all(r["train_loss"] != 99.0 for r in records)


def _foreign_png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 1))
    fig.savefig(path, format="png")  # matplotlib's own "Software" text, not rawgpu's
    plt.close(fig)


def test_a_png_that_rawgpu_did_not_write_needs_overwrite(capsys, tmp_path):
    """--plot replaced any PNG: only the 8-byte signature was looked at."""
    pytest.importorskip("matplotlib")
    plot = tmp_path / "photo.png"
    _foreign_png(plot)
    before = snapshot(plot)
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "1", "--plot", str(plot))
    assert_short_error(code, err, "--plot", "a PNG that rawgpu did not write", "--overwrite")
    assert "engine:" not in err and snapshot(plot) == before
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "1", "--plot", str(plot), "--overwrite")
    assert code == 0, err
    assert b"Software\x00rawgpu" in plot.read_bytes()
    # Its own plot, rawgpu replaces without being asked.
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "1", "--plot", str(plot))
    assert code == 0, err


def _hold(code: str, *args):
    """A process that runs ``code`` (which takes a lock), prints 'locked' and then waits."""
    holder = subprocess.Popen([sys.executable, "-c", f"import sys, time\n{code}\nprint('locked', flush=True)\ntime.sleep(60)", *args],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.parametrize("flag", ["--metrics", "--tensorboard"])
def test_two_runs_on_one_metrics_file_or_tensorboard_folder(capsys, tmp_path, flag):
    """Two runs sharing one --metrics file both succeeded and interleaved their epochs."""
    if flag == "--tensorboard":
        pytest.importorskip("tensorboard")
    target = tmp_path / ("m.jsonl" if flag == "--metrics" else "tb")
    lock = ("from rawgpu.outputs import lock_outputs; lock_outputs({'--metrics': sys.argv[1]}, {})" if flag == "--metrics"
            else "from rawgpu.outputs import FolderLock; FolderLock(sys.argv[1], '--tensorboard')")
    if flag == "--tensorboard":
        target.mkdir()
    holder = _hold(lock, str(target))
    try:
        code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "1", flag, str(target))
        assert_short_error(code, err, f"{flag} {target} is in use by another rawgpu run (process {holder.pid})")
        assert not target.is_file() or target.read_text() == ""
    finally:
        holder.kill()
        holder.wait()
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "1", flag, str(target))  # the lock died with its holder
    assert code == 0, err


def test_a_removed_lock_file_stops_its_run_before_the_next_write(capsys, tmp_path, monkeypatch):
    """Deleting .rawgpu.lock while a run held it let a second run in, and both wrote on."""
    from rawgpu import train as train_mod

    ck, metrics = tmp_path / "ck", tmp_path / "m.jsonl"
    real_append = train_mod._append_metrics

    def append_then_lose_the_lock(path, record, **kw):
        real_append(path, record, **kw)
        if "step" not in record and record["epoch"] == 1:
            os.unlink(ck / LOCK_NAME)  # someone removes it; another run could now take the lock

    monkeypatch.setattr(train_mod, "_append_metrics", append_then_lose_the_lock)
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "3", "--checkpoint-dir", str(ck), "--metrics", str(metrics))
    assert_short_error(code, err, f"--checkpoint-dir {ck}", "was removed or replaced while this run held it")
    assert ckpt.load(ck)[2]["epochs_done"] == 1 and _epochs(metrics) == [1]


def test_a_lock_checks_that_its_name_still_leads_to_the_locked_file(tmp_path, monkeypatch):
    """Taking the lock: a file its last holder removed on letting go is no lock; the new one is taken."""
    import fcntl

    from rawgpu import outputs

    real_flock, swapped = fcntl.flock, []

    def flock_after_a_swap(fd, op):
        if not swapped:  # between our open and our flock, the holder lets go: removes the file
            swapped.append(True)
            os.unlink(tmp_path / LOCK_NAME)
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_swap)
    lock = outputs.FolderLock(str(tmp_path), "--checkpoint-dir")
    try:
        assert os.fstat(lock.fd).st_ino == os.stat(tmp_path / LOCK_NAME).st_ino
    finally:
        lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_pipe_in_place_of_the_checkpoint_does_not_hang_resume(tmp_path):
    """A FIFO named checkpoint.npz made --resume wait forever in open()."""
    ck = tmp_path / "ck"
    ck.mkdir()
    os.mkfifo(ck / ckpt.FILENAME)
    env = dict(os.environ, RAWGPU_DEVICE="numpy")
    try:
        proc = subprocess.run([sys.executable, "-m", "rawgpu", "train", *SAMPLE, "--checkpoint-dir", str(ck), "--resume"],
                              env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("--resume hung on a pipe")
    assert_short_error(proc.returncode, proc.stderr, "is a pipe, not a regular file")
    assert stat.S_ISFIFO(os.lstat(ck / ckpt.FILENAME).st_mode)
    with pytest.raises(ckpt.CheckpointError, match="not a regular file"):
        ckpt.load(ck)


@pytest.mark.parametrize("flag", ["--metrics", "--checkpoint-dir", "--plot"])
def test_a_full_disk_names_the_output_and_the_fix(capsys, tmp_path, monkeypatch, flag):
    """A full disk surfaced as a bare "[Errno 28] No space left on device"."""
    if flag == "--plot":
        pytest.importorskip("matplotlib")
    target = tmp_path / {"--metrics": "m.jsonl", "--checkpoint-dir": "ck", "--plot": "p.png"}[flag]

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)  # every durable write of rawgpu ends in an fsync
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "1", flag, str(target))
    assert_short_error(code, err, f"{flag} {target}", "No space left on device", "the disk is full: free some space")


def test_os_errors_name_the_output(tmp_path):
    from rawgpu.outputs import OutputError, writing

    with pytest.raises(OutputError, match=r"^--tensorboard tb: writing it failed \(Invalid argument\); the filesystem refused it"):
        with writing("--tensorboard", "tb"):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))


@pytest.mark.parametrize("flag, name, needle", [
    ("--metrics", "m.jsonl/", "names a folder"),
    ("--plot", "p.png/", "names a folder"),
    ("--plot", "p" * 246 + ".png", "choose a name of at most 241 bytes"),
    ("--metrics", "m" * 238 + ".jsonl", "choose a name of at most 241 bytes"),  # fresh runs took it; --resume could not
])
def test_output_names_are_checked_with_their_temporary_names_before_any_work(capsys, tmp_path, flag, name, needle):
    """--metrics m.jsonl/ failed with [Errno 21] after loading the data, a long --plot name with
    [Errno 36] after training, and a 244-character --metrics name only on --resume."""
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "1", flag, f"{tmp_path}/{name}")
    assert_short_error(code, err, flag, needle)
    assert "engine:" not in err and sorted(os.listdir(tmp_path)) == []


def test_the_checkpoint_folders_temporary_name_is_checked_before_any_work(capsys, tmp_path):
    """A checkpoint folder whose path fits, and so do the lock and probe files in it, but not the
    checkpoint's temporary file (.checkpoint.npz.XXXXXXXX.tmp): it failed after the first epoch."""
    deep = tmp_path
    while len(os.fsencode(str(deep))) < 4070:
        deep = deep / ("d" * min(200, 4070 - 1 - len(os.fsencode(str(deep)))))
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "1", "--checkpoint-dir", str(deep))
    assert_short_error(code, err, "--checkpoint-dir")
    assert "engine:" not in err


# --- one run per checkpoint folder -------------------------------------------------------------


def test_a_second_run_on_one_checkpoint_folder_is_refused_naming_the_first(capsys, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from rawgpu.outputs import FolderLock; FolderLock(sys.argv[1], 'x'); print('locked', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "1", "--checkpoint-dir", str(tmp_path))
        assert_short_error(code, err, "in use by another rawgpu run", f"process {holder.pid}")
        assert not (tmp_path / ckpt.FILENAME).exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder died (SIGKILL): the lock died with it.
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "1", "--checkpoint-dir", str(tmp_path))
    assert code == 0, err


# --- crash consistency -------------------------------------------------------------------------


def _epochs(path: Path) -> list:
    """The epochs of a metrics file's epoch records (step records carry a "step")."""
    return [r["epoch"] for r in map(json.loads, path.read_text().splitlines()) if "step" not in r]


def test_a_kill_between_checkpoint_and_metrics_is_repaired_on_resume(capsys, tmp_path, monkeypatch):
    """The window the random kills below hit 21 times in 30: the checkpoint is one epoch ahead."""
    from rawgpu import train as train_mod

    metrics = tmp_path / "m.jsonl"
    real_append = train_mod._append_metrics

    def killed_at_epoch_2(path, record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt  # the process dies after the checkpoint, before the line
        real_append(path, record)

    monkeypatch.setattr(train_mod, "_append_metrics", killed_at_epoch_2)
    code, _, _ = run(capsys, "train", *SAMPLE, "--epochs", "3", "--checkpoint-dir", str(tmp_path / "ck"), "--metrics", str(metrics))
    assert code == 130 and _epochs(metrics) == [1] and ckpt.load(tmp_path / "ck")[2]["epochs_done"] == 2
    monkeypatch.setattr(train_mod, "_append_metrics", real_append)
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "3", "--checkpoint-dir", str(tmp_path / "ck"), "--metrics", str(metrics), "--resume")
    assert code == 0, err
    assert _epochs(metrics) == [1, 2, 3]


def test_metrics_past_the_checkpoint_are_dropped_on_resume(capsys, tmp_path):
    metrics = tmp_path / "m.jsonl"
    trained_checkpoint(capsys, tmp_path / "ck", "--metrics", str(metrics))
    with open(metrics, "a") as fh:  # an epoch logged by a run killed before its checkpoint landed
        fh.write(json.dumps({"epoch": 2, "train_loss": 9.0, "test_loss": 9.0, "test_accuracy": 0.1, "seconds": 1.0, "samples_per_s": 1.0}) + "\n")
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "2", "--checkpoint-dir", str(tmp_path / "ck"), "--metrics", str(metrics), "--resume")
    assert code == 0, err
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and lines[1]["train_loss"] != 9.0


def test_sigkill_at_random_moments_then_resume(tmp_path):
    """SIGKILL at random moments, at least twelve times (six of them in runs that resumed),
    resuming each time: the metrics end up holding epochs 1..E once each, in order, and no
    temporary file of ours is left anywhere."""
    epochs = 6
    ck, metrics = tmp_path / "ck", tmp_path / "m.jsonl"
    base = [sys.executable, "-m", "rawgpu", "train", *SAMPLE[:-2], "--hidden", "64", "--epochs", str(epochs),
            "--checkpoint-dir", str(ck), "--metrics", str(metrics)]
    env = dict(os.environ, RAWGPU_DEVICE="numpy", OPENBLAS_NUM_THREADS="1")
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"kill-time seed: {seed}")
    rng = np.random.default_rng(seed)
    # A whole run, timed: until its first checkpoint lands (start-up and one epoch), and to the end.
    start = time.perf_counter()
    proc = subprocess.Popen(base, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (ck / ckpt.FILENAME).exists() and proc.poll() is None:
        time.sleep(0.005)
    first = time.perf_counter() - start
    assert proc.wait() == 0
    per_epoch = max(time.perf_counter() - start - first, 0.0) / (epochs - 1)
    for f in ck.iterdir():
        f.unlink()
    metrics.unlink()
    kills = resumed_kills = 0
    for runs in range(80):
        if kills >= 12 and resumed_kills >= 6:
            break
        resume = (ck / ckpt.FILENAME).exists()
        done = len(_epochs(metrics)) if resume and metrics.exists() else 0
        # The kill lands at a random moment of the run's expected life: a resumed run has fewer
        # epochs left, and a kill timed on a whole run would mostly come after it had finished.
        life = first + max(epochs - done - 1, 0) * per_epoch
        proc = subprocess.Popen(base + (["--resume"] if resume else []), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.2, max(life, 0.3)))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        if proc.returncode == -signal.SIGKILL:
            kills += 1
            resumed_kills += resume
        elif "nothing to do" in err.decode() or not resume:  # it finished first: start over
            for f in ck.iterdir():
                f.unlink()
    print(f"{kills} kills ({resumed_kills} of resumed runs) in {runs} runs")
    final = subprocess.run(base + (["--resume"] if (ck / ckpt.FILENAME).exists() else []), env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert kills >= 12 and resumed_kills >= 6, (kills, resumed_kills)
    assert _epochs(metrics) == list(range(1, epochs + 1))
    leftovers = [p.name for p in list(ck.iterdir()) + list(tmp_path.iterdir()) if p.name.endswith((".tmp", ".part"))]
    assert leftovers == []
    assert sorted(p.name for p in ck.iterdir()) == [ckpt.FILENAME]  # the lock file goes with the lock


def test_stale_temporary_files_are_removed(capsys, tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    stale = [ck / ".checkpoint.npz.abcd1234.tmp", tmp_path / ".m.jsonl.x_y_z_12.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    unrelated = tmp_path / ".m.jsonl.notours.tmp"
    unrelated.write_bytes(b"keep")
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "1", "--checkpoint-dir", str(ck), "--metrics", str(tmp_path / "m.jsonl"))
    assert code == 0, err
    assert not any(p.exists() for p in stale) and unrelated.exists()


def test_stale_download_parts_are_removed(tmp_path):
    from rawgpu.data import download

    old = tmp_path / ".f.gz.abcdefgh.part"
    fresh = tmp_path / ".f.gz.ijklmnop.part"
    for path in (old, fresh):
        path.write_bytes(b"x")
    long_ago = time.time() - 2 * download.STALE_PART_SECONDS
    os.utime(old, (long_ago, long_ago))
    with pytest.raises(DataError):
        download.download_file("f.gz", tmp_path, ["http://127.0.0.1:9/"], "0" * 64, progress=False, timeout=1)
    assert not old.exists() and fresh.exists()  # a fresh one may belong to a download in progress


# --- divergence --------------------------------------------------------------------------------


def test_a_blow_up_in_the_last_step_is_a_failure(capsys, tmp_path):
    """--lr 1e30 with one step per epoch exited 0, wrote NaN to the metrics and saved the weights."""
    metrics = tmp_path / "m.jsonl"
    code, _, err = run(capsys, "train", *SAMPLE, "--lr", "1e30", "--batch-size", "100000", "--epochs", "1",
                       "--metrics", str(metrics), "--checkpoint-dir", str(tmp_path / "ck"))
    assert_short_error(code, err, "epoch 1, step 1", "--lr")
    assert not (tmp_path / "ck" / ckpt.FILENAME).exists()
    assert not metrics.exists() and list(tmp_path.glob(".m.jsonl*")) == []  # no epoch: no file, and no temporary one


def test_metrics_are_strict_json(capsys, tmp_path):
    metrics = tmp_path / "m.jsonl"
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "2", "--metrics", str(metrics))
    assert code == 0, err
    for line in metrics.read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in the metrics file"))


# --- memory ------------------------------------------------------------------------------------


def test_a_huge_hidden_layer_is_refused_before_allocating(capsys):
    code, _, err = run(capsys, "train", *SAMPLE[:-2], "--hidden", "1000000000")
    assert_short_error(code, err, "--hidden", "--batch-size", "GiB")


def test_a_run_that_would_not_fit_is_refused_before_training(capsys, monkeypatch):
    """--hidden 1000000 trained a whole epoch, then died in evaluation."""
    monkeypatch.setattr(memory, "host_available", lambda: 2 << 30)
    code, _, err = run(capsys, "train", *SAMPLE[:-2], "--hidden", "100000")
    assert_short_error(code, err, "needs about", "2.0 GiB", "lower --hidden or --batch-size")
    assert "epoch 1" not in err


def test_a_memory_error_anywhere_is_one_line(capsys, monkeypatch):
    from rawgpu import train as train_mod

    def boom(*args, **kwargs):
        raise MemoryError("Unable to allocate 3.0 GiB")

    monkeypatch.setattr(train_mod, "_run", boom)
    code, _, err = run(capsys, "train", *SAMPLE)
    assert_short_error(code, err, "out of memory", "--hidden")


def test_the_estimate_counts_every_part():
    parts = memory.estimate(n_train=1000, n_test=500, in_features=10, hidden=20, classes=3, batch_size=300)
    p = 10 * 20 + 20 + 20 * 3 + 3
    assert parts["parameters"] == 4 * p and parts["gradients and velocities"] == 8 * p
    # batches of 300 and the last one of 100, evaluation of 500 (no last one)
    assert parts["activations"] == sum(4 * (2 * b * 20 + 2 * b * 3) for b in (300, 100, 500))


def test_a_sparse_idx_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    with open(path, "wb") as fh:
        fh.write(bytes([0, 0, 8, 3]) + np.array([10, 28, 28], ">u4").tobytes())
        fh.truncate(8 << 30)  # 8 GiB, sparse: reading it whole would take the machine down
    start = time.perf_counter()
    with pytest.raises(DataError, match=f"{path}: .*unexpected bytes after the data"):
        read_idx(path)
    assert time.perf_counter() - start < 1.0


def test_a_gzip_bomb_is_not_inflated_whole(tmp_path):
    path = tmp_path / "labels.gz"
    header = bytes([0, 0, 8, 1]) + np.array([10], ">u4").tobytes()
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(header + bytes(10))
        for _ in range(16):
            fh.write(bytes(8 << 20))  # 128 MiB of zeros in half a megabyte of gzip
    start = time.perf_counter()
    with pytest.raises(DataError, match="more than 1048576 unexpected bytes after the data"):
        read_idx(path)
    assert time.perf_counter() - start < 2.0


def test_an_idx_header_declaring_too_much_names_the_file(tmp_path):
    """The product of the dimensions overflowed NumPy's int64 and the error named no file."""
    path = tmp_path / "images"
    path.write_bytes(bytes([0, 0, 8, 3]) + np.array([2**32 - 1] * 3, ">u4").tobytes())
    with pytest.raises(DataError, match=f"{path}: the header says 4294967295x4294967295x4294967295 uint8"):
        read_idx(path)


# --- the checkpoint loader trusts nothing ------------------------------------------------------


def _rewrite(path: Path, *, meta=None, arrays=None, drop=()):
    """Write a checkpoint file by hand: the good one's contents with some parts replaced."""
    with np.load(path, allow_pickle=False) as data:
        contents = {k: data[k] for k in data.files if k not in drop}
    if meta is not None:
        contents["meta"] = np.array(meta if isinstance(meta, str) else json.dumps(meta))
    contents.update(arrays or {})
    with open(path, "wb") as fh:
        np.savez(fh, **contents)


def _meta(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["meta"]))


BROKEN = {
    "empty": (lambda p: p.write_bytes(b""), "is empty"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "not a readable rawgpu checkpoint"),
    "meta a list": (lambda p: _rewrite(p, meta="[1, 2]"), "header is a JSON list"),
    "meta a number array": (lambda p: _rewrite(p, arrays={"meta": np.zeros(3)}), "not a JSON string"),
    "no meta": (lambda p: _rewrite(p, drop=("meta",)), "no 'meta'"),
    "no epochs_done": (lambda p: _rewrite(p, meta={k: v for k, v in _meta(p).items() if k != "epochs_done"}), "no 'epochs_done'"),
    "epochs_done a string": (lambda p: _rewrite(p, meta={**_meta(p), "epochs_done": "1"}), "'epochs_done' in its header is a str"),
    "no W2": (lambda p: _rewrite(p, drop=("param/W2",)), "param arrays are"),
    "W1 strings": (lambda p: _rewrite(p, arrays={"param/W1": np.full((784, 16), "x")}), "param W1 is <U1, not float32"),
    "b1 int8": (lambda p: _rewrite(p, arrays={"param/b1": np.zeros(16, np.int8)}), "param b1 is int8"),
    "b2 bool": (lambda p: _rewrite(p, arrays={"velocity/b2": np.zeros(10, bool)}), "velocity b2 is bool"),
    "W2 complex": (lambda p: _rewrite(p, arrays={"param/W2": np.zeros((16, 10), np.complex64)}), "param W2 is complex64"),
    "W1 NaN": (lambda p: _rewrite(p, arrays={"param/W1": np.full((784, 16), np.nan, np.float32)}), "non-finite"),
    "W2 wrong shape": (lambda p: _rewrite(p, arrays={"param/W2": np.zeros((10, 16), np.float32)}), "has shape (10, 16)"),
    # Issue 16: a header edited by hand, still valid JSON in a valid zip. The first one trained a
    # whole epoch and then died with KeyError: 'train_loss'.
    "history record without its losses": (lambda p: _rewrite(p, meta={**_meta(p), "history": [{"epoch": 1}]}), "history[0] has no 'train_loss'"),
    "NaN in history": (lambda p: _rewrite(p, meta=json.dumps({**_meta(p), "history": [{**_meta(p)["history"][0], "test_loss": float("nan")}]})),
                       "history[0] 'test_loss' is nan, not a finite number >= 0"),
    "history of strings": (lambda p: _rewrite(p, meta={**_meta(p), "history": ["epoch 1"]}), "history[0] is a JSON str, not an object"),
    "history accuracy a string": (lambda p: _rewrite(p, meta={**_meta(p), "history": [{**_meta(p)["history"][0], "test_accuracy": "0.8"}]}),
                                  "history[0] 'test_accuracy' is '0.8', not a finite number from 0 to 1"),
    "config empty": (lambda p: _rewrite(p, meta={**_meta(p), "config": {}}), "its config has no 'epochs'"),
    "lr fast": (lambda p: _rewrite(p, meta={**_meta(p), "config": {**_meta(p)["config"], "lr": "fast"}}), "its config 'lr' is 'fast', not a finite number > 0"),
    "batch_size 0": (lambda p: _rewrite(p, meta={**_meta(p), "config": {**_meta(p)["config"], "batch_size": 0}}), "its config 'batch_size' is 0, not a whole number"),
    "step_sums negative": (lambda p: _rewrite(p, meta={**_meta(p), "step_sums": {**_meta(p)["step_sums"], "window_steps": -1}}),
                           "its step_sums 'window_steps' is -1, not a whole number >= 0"),
    "nesterov a string": (lambda p: _rewrite(p, meta={**_meta(p), "config": {**_meta(p)["config"], "nesterov": "no"}}), "its config 'nesterov' is 'no', not true or false"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_checkpoint_is_refused_in_one_line_and_left_untouched(capsys, tmp_path, case):
    path = trained_checkpoint(capsys, tmp_path)
    damage, message = BROKEN[case]
    damage(path)
    before = snapshot(path)
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "2", "--resume", "--checkpoint-dir", str(tmp_path))
    assert_short_error(code, err, str(path), message)
    assert "learning rate" not in err  # NaN weights were blamed on --lr
    assert snapshot(path) == before


def test_a_broken_checkpoint_header_is_refused_before_the_data_loads(capsys, tmp_path):
    path = trained_checkpoint(capsys, tmp_path)
    _rewrite(path, meta={**_meta(path), "config": {**_meta(path)["config"], "lr": "fast"}})
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "2", "--resume", "--checkpoint-dir", str(tmp_path))
    assert_short_error(code, err, "'lr' is 'fast'")
    assert "data:" not in err and "engine:" not in err


# --- resuming with other settings --------------------------------------------------------------


def test_resume_on_another_dataset_is_refused(capsys, tmp_path):
    trained_checkpoint(capsys, tmp_path / "ck")
    data_dir = write_dataset(tmp_path / "other", n_train=40, n_test=20)
    code, _, err = run(capsys, "train", "--data-dir", str(data_dir), "--no-progress", "--hidden", "16", "--epochs", "2",
                       "--resume", "--checkpoint-dir", str(tmp_path / "ck"))
    assert_short_error(code, err, "was trained on sample", "--dataset/--data-dir")
    meta = ckpt.load(tmp_path / "ck")[2]
    assert meta["dataset"]["name"] == "sample" and meta["dataset"]["train"] == 3000


def test_resume_with_other_settings_lists_them(capsys, tmp_path):
    trained_checkpoint(capsys, tmp_path)
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "2", "--resume", "--checkpoint-dir", str(tmp_path),
                       "--lr", "0.02", "--seed", "4", "--batch-size", "64")
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1
    for text in ("lr 0.01 -> 0.02", "seed 0 -> 4", "batch-size 128 -> 64"):
        assert text in warning[0]
    assert ckpt.load(tmp_path)[2]["config"]["lr"] == 0.02  # the checkpoint records what the run used


def test_resume_with_the_same_settings_says_nothing(capsys, tmp_path):
    trained_checkpoint(capsys, tmp_path)
    code, _, err = run(capsys, "train", *SAMPLE, "--epochs", "2", "--resume", "--checkpoint-dir", str(tmp_path))
    assert code == 0 and "warning" not in err


# --- failures come first, not after the work ---------------------------------------------------


@pytest.mark.parametrize("where", ["a file", "under a file", "impossible"])
def test_an_unusable_checkpoint_folder_fails_before_the_first_epoch(capsys, tmp_path, where):
    (tmp_path / "f").write_text("x")
    path = {"a file": tmp_path / "f", "under a file": tmp_path / "f" / "ck", "impossible": Path("/proc/rawgpu-ck")}[where]
    code, _, err = run(capsys, "train", *SAMPLE, "--checkpoint-dir", str(path))
    assert_short_error(code, err, "--checkpoint-dir")
    assert "epoch 1" not in err and "engine:" not in err


@pytest.mark.parametrize("plot", ["/proc/self/plot.png", "{tmp}/missing/plot.png", ""])
def test_a_plot_that_cannot_be_written_fails_before_training(capsys, tmp_path, plot):
    code, _, err = run(capsys, "train", *SAMPLE, "--plot", plot.format(tmp=tmp_path))
    assert_short_error(code, err, "--plot")
    assert "epoch 1" not in err


def test_ctrl_c_at_any_moment_is_one_line_and_exit_130(tmp_path):
    """A Ctrl-C in the first ~0.1 s printed a KeyboardInterrupt traceback (NumPy was loading).

    The earliest delays land while modules load, the later ones in data loading and training.
    (Earlier still, the interpreter itself is starting up, before any program's code runs.)"""
    env = dict(os.environ, RAWGPU_DEVICE="numpy")
    for delay in (0.25, 0.35, 0.5, 0.7, 1.0):
        # preexec_fn: Ctrl-C as a terminal delivers it, whatever this test process inherited (a
        # SIGINT ignored here would be ignored by the child too, and it would simply finish).
        # 1000 epochs: far longer than the latest delay (50 epochs of the sample now end in ~0.5 s,
        # and a signal sent after the run has ended tests nothing).
        proc = subprocess.Popen([sys.executable, "-m", "rawgpu", *["train", *SAMPLE, "--epochs", "1000"]], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, (delay, proc.returncode, err)
        assert "Traceback" not in err and err.strip().splitlines()[-1] == "rawgpu: interrupted", (delay, err)



@pytest.mark.parametrize("after", ["another error", "a normal finish"])
def test_whatever_follows_a_ctrl_c_is_reported_as_the_interruption(capsys, monkeypatch, after):
    """A Ctrl-C inside C code can come out as another error (seen once: CPython's warnings code
    raised "TypeError: expected a message argument"), or be swallowed; the command's own handler
    notes that it came, and the run ends as interrupted, 130, whatever followed."""
    handlers = []

    def train(args):
        handlers.append(signal.getsignal(signal.SIGINT))
        with pytest.raises(KeyboardInterrupt):
            handlers[0](signal.SIGINT, None)  # what a Ctrl-C does now: noted, then raised
        if after == "another error":
            raise TypeError("expected a message argument")
        return 0

    monkeypatch.setattr(cli, "_train", train)
    # Python's own Ctrl-C handler to start from: pytest started in the background ('&', nohup)
    # inherits Ctrl-C ignored, and the command then rightly leaves it ignored (the test below).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, _, err = run(capsys, "train", *SAMPLE)
        assert code == 130 and err.strip() == "rawgpu: interrupted", err
        assert handlers[0] is not signal.default_int_handler
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back afterwards
    finally:
        signal.signal(signal.SIGINT, before)


def test_where_ctrl_c_is_ignored_the_command_leaves_it_ignored(capsys, monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_train", lambda args: seen.append(signal.getsignal(signal.SIGINT)) or 0)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a job started with nohup or '&'
    try:
        code, _, _ = run(capsys, "train", *SAMPLE)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 0 and seen == [signal.SIG_IGN]

# --- messages that name the problem ------------------------------------------------------------


def test_a_hidden_size_beyond_the_kernels_names_the_flag(capsys):
    code, _, err = run(capsys, "train", *SAMPLE[:-2], "--hidden", str(10**30))
    assert code == 2 and "--hidden" in err and "must be <= 2147483647" in err


def test_api_errors_name_the_argument():
    with pytest.raises(ValueError, match="seed must be a whole number >= 0"):
        TwoLayerMLP(4, 3, 2, seed=-1)
    model = TwoLayerMLP(4, 3, 2)
    x, y = np.zeros((5, 4), np.float32), np.zeros(5, np.int32)
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
        model.evaluate(x, y, batch_size=0)
    opt = SGD(model, lr=0.1)
    with pytest.raises(TypeError, match="state must be a dict"):
        opt.load_state_dict(None)
    with pytest.raises(TypeError, match="state must be a dict"):
        model.load_state_dict(None)
    p = np.zeros(3, np.float32)
    with pytest.raises(TypeError, match="lr must be a number, got str"):
        ops.sgd_momentum_(p, p.copy(), p.copy(), lr="0.1", momentum=0.9)
    with pytest.raises(TypeError, match="momentum must be a number, got bool"):
        ops.sgd_momentum_(p, p.copy(), p.copy(), lr=0.1, momentum=True)


def test_cli_main_is_importable_without_numpy():
    """`import rawgpu.cli` stays instant, so an early Ctrl-C reaches the command's handler."""
    code = "import sys, rawgpu.cli; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert cli.main is not None
