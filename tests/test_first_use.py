"""What a new user meets first (issue 16): --version and --help, a small run on any engine with
--limit-train/--limit-test, a --plot name that says what it holds, and `rawgpu info` on a
machine with CuPy but no NVIDIA driver."""

import ctypes
import json
import types
from pathlib import Path

import pytest

import rawgpu
from rawgpu import cli, engine
from test_cli import assert_short_error, run

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def numpy_engine(monkeypatch):
    monkeypatch.setenv("RAWGPU_DEVICE", "numpy")
    rawgpu.use("numpy")


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"rawgpu {rawgpu.__version__}"


def test_every_train_flag_has_help_with_its_default(capsys):
    """The hyperparameters had no help and showed no defaults."""
    train = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    flags = [a for a in train._actions if a.option_strings and "--help" not in a.option_strings]
    assert flags
    for action in flags:
        assert action.help and "default" in action.help, action.option_strings
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0
    text = " ".join(out.split())  # argparse wraps the lines
    for shown in ("--lr LR learning rate, > 0 (default: 0.01)", "(default: 0.9)", "(default: 128)", "(default: 5)", "(default: 100)"):
        assert shown in text


def test_limit_train_and_test_cut_the_dataset(capsys, tmp_path):
    metrics = tmp_path / "m.jsonl"
    code, _, err = run(capsys, "train", "--dataset", "sample", "--no-progress", "--hidden", "8", "--epochs", "1",
                       "--limit-train", "200", "--limit-test", "50", "--batch-size", "64", "--log-every", "1", "--metrics", str(metrics))
    assert code == 0, err
    assert "its first 200 train / 50 test images" in err and "200 train / 50 test images, SGD" in err
    steps = [r for r in map(json.loads, metrics.read_text().splitlines()) if "step" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]  # ceil(200 / 64)


def test_limits_beyond_the_dataset_keep_all_of_it(capsys):
    ds = rawgpu.data.load("sample")
    assert ds.first(10**6, None) is ds
    small = ds.first(7, 3)
    assert small.train_images.shape[0] == 7 and small.test_labels.shape == (3,)
    assert (small.train_labels == ds.train_labels[:7]).all()


@pytest.mark.parametrize("flag", ["--limit-train", "--limit-test"])
def test_a_limit_must_be_positive(capsys, flag):
    code, _, err = run(capsys, "train", flag, "0")
    assert code == 2 and flag in err and "must be >= 1" in err, err


@pytest.mark.parametrize("name", ["out.jpg", "out.PDF", "curves", "plot.png.txt"])
def test_a_plot_name_that_is_not_png_is_refused_before_any_work(capsys, tmp_path, name):
    """--plot out.jpg wrote PNG bytes into a .jpg."""
    code, _, err = run(capsys, "train", "--dataset", "sample", "--no-progress", "--plot", str(tmp_path / name))
    assert_short_error(code, err, "--plot", "*.png")
    assert "engine:" not in err and not (tmp_path / name).exists()


def test_info_names_a_missing_driver(monkeypatch):
    """With CuPy installed and no driver, CuPy's runtime says 'CUDA driver version is
    insufficient', as if an upgrade would help; the driver probe names the missing library."""

    def no_gpu():
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version")

    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_gpu)))
    monkeypatch.setitem(__import__("sys").modules, "cupy", fake_cupy)
    real_cdll = ctypes.CDLL

    def cdll(name, *args, **kwargs):
        if name == "libcuda.so.1":
            raise OSError("libcuda.so.1: cannot open shared object file: No such file or directory")
        return real_cdll(name, *args, **kwargs)

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    usable, why = engine.probe_gpu()
    assert not usable and why == "no NVIDIA driver found (libcuda.so.1)"
    from rawgpu.info import report

    assert "gpu:        none (no NVIDIA driver found (libcuda.so.1))" in report()


def test_the_license_is_mit_and_names_the_samples_notice():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "rawgpu/data/sample/LICENSE" in text
    assert "Zalando" in (ROOT / "rawgpu" / "data" / "sample" / "LICENSE").read_text()
