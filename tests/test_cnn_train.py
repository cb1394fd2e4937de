"""``rawgpu train --model cnn``: the CNN trained end to end on small CIFAR-10-format batch files
(real CIFAR-10 cannot be downloaded here) on the NumPy engine, its checkpoints (the model kind is
recorded; resuming with another model or activation is refused in one line, the file untouched),
the flags' checks, the image shapes the CNN takes, and its memory estimate."""

import json

import numpy as np
import pytest

import rawgpu
from rawgpu import cli, memory
from rawgpu.cnn import image_shape
from rawgpu.data import cifar
from test_cli import assert_short_error, run  # the CLI in this process, and its one-line errors


@pytest.fixture(autouse=True)
def numpy_engine():
    yield
    rawgpu.use("numpy")


@pytest.fixture
def cifar_dir(tmp_path):
    """Six CIFAR-10 batch files of a few images each: every class a fixed template plus noise."""
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, (10, 3072))
    for name in cifar.BATCH_FILES:
        labels = rng.integers(0, 10, 4 if name != cifar.TEST_FILE else 6)
        images = np.clip(templates[labels] + rng.normal(0, 30, (len(labels), 3072)), 0, 255)
        (tmp_path / name).write_bytes(cifar.encode_batch(images.astype(np.uint8), labels))
    return tmp_path


def base(cifar_dir, ckpt, *extra):
    return ["train", "--model", "cnn", "--device", "numpy", "--dataset", "cifar10", "--data-dir", str(cifar_dir),
            "--batch-size", "8", "--no-progress", "--checkpoint-dir", str(ckpt), *extra]


def test_cnn_trains_on_cifar_files_and_resumes(capsys, cifar_dir, tmp_path):
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "m.jsonl"
    code, out, err = run(capsys, *base(cifar_dir, ckpt, "--epochs", "1", "--metrics", str(metrics)))
    assert code == 0, err
    assert "cnn on 3x32x32 images (conv widths 32,32,64, hidden 64, activation none)" in err and "final test accuracy" in out
    from rawgpu import checkpoint

    params, _, meta = checkpoint.load(ckpt)
    assert meta["architecture"]["model"] == "cnn" and meta["config"]["model"] == "cnn"
    assert params["W4"].shape == (1024, 64) and sum(p.size for p in params.values()) == 145_578
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    # another model, or another activation: refused in one line, the checkpoint untouched
    mlp = [a if a != "cnn" else "mlp" for a in base(cifar_dir, ckpt, "--epochs", "2", "--resume")]
    code, _, err = run(capsys, *mlp)
    assert_short_error(code, err, "--model cnn", "--model mlp")
    code, _, err = run(capsys, *base(cifar_dir, ckpt, "--epochs", "2", "--resume", "--activation", "relu"))
    assert_short_error(code, err, "activation none", "activation relu", "--activation")
    code, _, err = run(capsys, *base(cifar_dir, ckpt, "--epochs", "2", "--resume", "--channels", "32,32,32"))
    assert_short_error(code, err, "channels [32, 32, 64]", "channels [32, 32, 32]", "--channels")
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    code, out, err = run(capsys, *base(cifar_dir, ckpt, "--epochs", "2", "--resume", "--metrics", str(metrics)))
    assert code == 0, err
    assert "resumed from" in err and "after epoch 2" in out
    assert [r["epoch"] for r in map(json.loads, metrics.read_text().splitlines()) if "step" not in r] == [1, 2]


def test_activation_is_refused_for_the_mlp(capsys):
    code, _, err = run(capsys, "train", "--device", "numpy", "--dataset", "sample", "--activation", "relu")
    assert_short_error(code, err, "--activation applies to --model cnn")


def test_channels_are_refused_for_the_mlp_and_checked(capsys):
    code, _, err = run(capsys, "train", "--device", "numpy", "--dataset", "sample", "--channels", "4,4,8")
    assert_short_error(code, err, "--channels applies to --model cnn")
    for bad in ("4,4", "4,0,8", "a,b,c", "4,4,8,8"):
        code, _, err = run(capsys, "train", "--model", "cnn", "--device", "numpy", "--dataset", "sample", "--channels", bad)
        assert code == 2 and "--channels" in err and "three conv widths" in err, (bad, err)


def test_conv_widths_that_cannot_fit_are_refused_naming_the_flag(capsys):
    code, _, err = run(capsys, "train", "--model", "cnn", "--device", "numpy", "--dataset", "sample", "--channels", "100000,100000,100000")
    assert_short_error(code, err, "--channels 100000,100000,100000", "lower --channels, --hidden or --batch-size")


@pytest.mark.sim
def test_cnn_trains_in_the_simulator_on_a_tiny_subset_of_cifar_files(capsys, cifar_dir, tmp_path):
    """The CLI's CNN in the simulator, on CIFAR-10-format files at their real 3 x 32 x 32 size:
    every kernel of the step runs, and one step of the real kernels lands where the NumPy engine's
    does. The conv widths are 1, 1, 1 to keep it to seconds (the simulator runs each CUDA thread
    as a Python thread; see the README for a run at 4, 4, 8)."""
    params = {}
    for device in ("sim", "numpy"):
        ckpt = tmp_path / device
        code, out, err = run(capsys, "train", "--model", "cnn", "--device", device, "--dataset", "cifar10",
                             "--data-dir", str(cifar_dir), "--limit-train", "1", "--limit-test", "1", "--batch-size", "1",
                             "--channels", "1,1,1", "--hidden", "2", "--epochs", "1", "--no-progress",
                             "--checkpoint-dir", str(ckpt))
        assert code == 0, err
        assert f"engine: {device}" in err and "conv widths 1,1,1, hidden 2" in err and "final test accuracy" in out
        from rawgpu import checkpoint

        params[device], _, meta = checkpoint.load(ckpt)
        assert meta["architecture"]["channels"] == [1, 1, 1] and params[device]["W1"].shape == (1, 3, 5, 5)
    for name, value in params["numpy"].items():
        scale = max(float(np.abs(value).max()), 1e-3)
        assert np.abs(params["sim"][name] - value).max() <= 1e-4 * scale, name


@pytest.mark.parametrize(
    "pixels, want", [((3072,), (3, 32, 32)), ((28, 28), (1, 28, 28)), ((784,), (1, 28, 28)), ((3, 16, 16), (3, 16, 16))]
)
def test_image_shapes(pixels, want):
    assert image_shape(pixels) == want


def test_image_shape_that_cannot_be_told():
    with pytest.raises(ValueError, match="square images of 1 or 3 channels"):
        image_shape((1000,))


def test_memory_estimate_counts_the_seed_network():
    parts = memory.estimate_cnn(n_train=50_000, n_test=10_000, in_shape=(3, 32, 32), hidden=64, classes=10, batch_size=64)
    assert parts["parameters"] == 4 * 145_578
    assert parts["gradients and velocities"] == 2 * parts["parameters"]
    # 64 images' activations: conv outputs and their gradients dominate (2 x 32 x 32 x 32 floats each)
    assert parts["activations"] > 64 * 2 * 32 * 32 * 32 * 4
    narrow = memory.estimate_cnn(n_train=50_000, n_test=10_000, in_shape=(3, 32, 32), hidden=64, classes=10, batch_size=64,
                                 channels=(4, 4, 8))
    assert narrow["activations"] * 6 < parts["activations"] and narrow["parameters"] < parts["parameters"]
