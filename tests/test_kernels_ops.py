"""The element-wise, reduction, loss and optimizer kernels, launched directly.

tests/test_ops.py checks the ops on every engine with the launch settings the engines use. Here
the launch itself is under test: grids too small for the array (so grid-stride loops take
several passes), thread counts smaller and larger than a row, rows beyond the grid, bad launch
settings, and exact repeatability. Outputs are poisoned with NaN; the expected values come from
rawgpu/reference.py (float64).
"""

import math

import numpy as np
import pytest
from helpers import assert_close, poisoned

from rawgpu import reference
from rawgpu.kernels import elementwise, loss, optimizer, reductions

# (rows, cols): one element, a single row and column, and odd shapes bigger than the tiny grids.
SHAPES = [(1, 1), (1, 9), (7, 1), (13, 10)]
SHAPE_IDS = ["x".join(map(str, s)) for s in SHAPES]


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# --- element-wise ------------------------------------------------------------------------------


@pytest.mark.sim
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("max_blocks", [1, 2, None])
def test_elementwise_grid_stride(lane, rng, shape, max_blocks):
    x, bias, act = rand(rng, *shape), rand(rng, shape[1]), np.maximum(rand(rng, *shape), 0)
    cases = [
        (elementwise.bias_add, (x, bias), reference.bias_add(x, bias)),
        (elementwise.bias_relu, (x, bias), reference.bias_relu(x, bias)),
        (elementwise.relu_backward, (x, act), reference.relu_backward(x, act)),
    ]
    for launch, args, ref in cases:
        out = lane.to_device(poisoned(shape))
        launch(*map(lane.to_device, args), out, threads=4, max_blocks=max_blocks)
        assert_close(lane.to_host(out), ref, what=f"{launch.__name__} max_blocks={max_blocks}")


@pytest.mark.sim
def test_relu_backward_in_place(lane, rng):
    grad, act = rand(rng, 5, 6), np.maximum(rand(rng, 5, 6), 0)
    d_grad = lane.to_device(grad)
    elementwise.relu_backward(d_grad, lane.to_device(act), d_grad, threads=8, max_blocks=1)
    assert_close(lane.to_host(d_grad), reference.relu_backward(grad, act))


# --- reductions --------------------------------------------------------------------------------


@pytest.mark.sim
@pytest.mark.parametrize("shape", SHAPES + [(40, 3)], ids=SHAPE_IDS + ["40x3"])
@pytest.mark.parametrize("threads", [(4, 2), (2, 8), (1, 1)], ids=["4x2", "2x8", "1x1"])
def test_col_sum(lane, rng, shape, threads):
    x = rand(rng, *shape)
    out = lane.to_device(poisoned(shape[1]))
    reductions.col_sum(lane.to_device(x), out, threads_x=threads[0], threads_y=threads[1])
    assert_close(lane.to_host(out), reference.col_sum(x))


@pytest.mark.sim
@pytest.mark.parametrize("max_blocks", [1, None])
def test_correct_count_accumulates_over_blocks(lane, rng, max_blocks):
    logits = rand(rng, 37, 5)
    labels = rng.integers(0, 5, 37).astype(np.int32)
    labels[:10] = logits[:10].argmax(axis=1)  # at least ten hits
    count = lane.to_device(np.zeros(1, np.int32))
    reductions.correct_count(lane.to_device(logits), lane.to_device(labels), count, threads=4, max_blocks=max_blocks)
    assert int(lane.to_host(count)[0]) == reference.correct_count(logits, labels)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda x, o: reductions.col_sum(x, o, threads_x=4, threads_y=3), "threads_y"),
        (lambda x, o: reductions.col_sum(x, o, threads_x=64, threads_y=32), "threads_x * threads_y"),
        (lambda x, o: elementwise.bias_relu(x, o, x, threads=0), "threads"),
        (lambda x, o: elementwise.bias_relu(x, o, x, threads=4, max_blocks=0), "max_blocks"),
    ],
    ids=["threads_y-not-power-of-two", "too-many-threads", "zero-threads", "zero-blocks"],
)
def test_bad_launch_settings_name_the_setting(call, name):
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=name.replace("*", r"\*")):
        call(x, np.zeros(4, np.float32))


# --- softmax cross-entropy ---------------------------------------------------------------------


def run_softmax_ce(lane, logits, labels, threads):
    rows, classes = logits.shape
    grad = lane.to_device(poisoned((rows, classes)))
    out = lane.to_device(poisoned(1))
    loss.softmax_cross_entropy(
        lane.to_device(logits), lane.to_device(labels), grad, lane.to_device(poisoned(rows)), out, threads=threads
    )
    return float(lane.to_host(out)[0]), lane.to_host(grad)


@pytest.mark.sim
@pytest.mark.parametrize("shape", [(1, 1), (3, 10), (6, 3)], ids=["1x1", "3x10", "6x3"])
@pytest.mark.parametrize("threads", [1, 4, 16])
def test_softmax_ce_any_threads_per_row(lane, rng, shape, threads):
    """Fewer threads than classes (each thread takes several columns) and more (some idle)."""
    logits = rand(rng, *shape)
    labels = rng.integers(0, shape[1], shape[0]).astype(np.int32)
    got_loss, got_grad = run_softmax_ce(lane, logits, labels, threads)
    ref_loss, ref_grad = reference.softmax_cross_entropy(logits, labels)
    assert abs(got_loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))
    assert_close(got_grad, ref_grad)


@pytest.mark.sim
def test_softmax_ce_rows_beyond_the_grid(lane, rng, monkeypatch):
    monkeypatch.setattr(loss, "MAX_ROW_BLOCKS", 2)
    logits = rand(rng, 5, 4)
    labels = rng.integers(0, 4, 5).astype(np.int32)
    got_loss, got_grad = run_softmax_ce(lane, logits, labels, threads=4)
    ref_loss, ref_grad = reference.softmax_cross_entropy(logits, labels)
    assert abs(got_loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))
    assert_close(got_grad, ref_grad)


@pytest.mark.sim
def test_softmax_ce_is_bitwise_repeatable(lane, rng):
    logits = rand(rng, 6, 7) * 30
    labels = rng.integers(0, 7, 6).astype(np.int32)
    first, second = (run_softmax_ce(lane, logits, labels, threads=4) for _ in range(2))
    assert first[0] == second[0]
    assert np.array_equal(first[1], second[1])


@pytest.mark.sim
def test_softmax_ce_label_out_of_range_is_nan_not_a_stray_read(lane, rng):
    logits = rand(rng, 3, 4)
    labels = np.array([0, 4, 1], np.int32)  # row 1's label is out of range
    got_loss, got_grad = run_softmax_ce(lane, logits, labels, threads=4)
    assert math.isnan(got_loss)
    assert np.isnan(got_grad[1]).all()
    _, ref_grad = reference.softmax_cross_entropy(logits[[0, 2]], labels[[0, 2]])
    assert_close(got_grad[[0, 2]] * 3 / 2, ref_grad)  # the other rows are still right (scaled by 1/3, not 1/2)


def test_softmax_ce_zero_rows_is_refused():
    with pytest.raises(ValueError, match="logits"):
        z = np.zeros((0, 3), np.float32)
        loss.softmax_cross_entropy(z, np.zeros(0, np.int32), z, np.zeros(0, np.float32), np.zeros(1, np.float32))


# --- SGD momentum ------------------------------------------------------------------------------


@pytest.mark.sim
@pytest.mark.parametrize("shape", [(1,), (11,), (3, 5)], ids=["1", "11", "3x5"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_steps(lane, rng, shape, nesterov):
    lr, mu, wd = 0.05, 0.9, 0.01
    param, vel = rand(rng, *shape), rand(rng, *shape)
    p_ref, v_ref = param, vel
    d_param, d_vel = lane.to_device(param), lane.to_device(vel)
    for _ in range(3):
        grad = rand(rng, *shape)
        d_grad = lane.to_device(grad)
        optimizer.sgd_momentum(d_param, d_grad, d_vel, lr, mu, wd, nesterov, threads=4, max_blocks=1)
        p_ref, v_ref = reference.sgd_momentum(p_ref, grad, v_ref, lr=lr, momentum=mu, weight_decay=wd, nesterov=nesterov)
        assert np.array_equal(lane.to_host(d_grad), grad), "the gradient must be left alone"
    assert_close(lane.to_host(d_param), p_ref)
    assert_close(lane.to_host(d_vel), v_ref)


# --- GPU lane: the engines' default launch settings at large odd shapes --------------------------


@pytest.mark.gpu
def test_gpu_large_shapes(lane, rng):
    x, bias = rand(rng, 4099, 1031), rand(rng, 1031)
    out = lane.to_device(poisoned(x.shape))
    elementwise.bias_relu(lane.to_device(x), lane.to_device(bias), out)
    assert_close(lane.to_host(out), reference.bias_relu(x, bias))
    col = lane.to_device(poisoned(1031))
    reductions.col_sum(lane.to_device(x), col)
    assert_close(lane.to_host(col), reference.col_sum(x))
    logits = rand(rng, 70001, 10) * 50  # more rows than one grid of row blocks
    labels = rng.integers(0, 10, 70001).astype(np.int32)
    got_loss, got_grad = run_softmax_ce(lane, logits, labels, threads=16)
    ref_loss, ref_grad = reference.softmax_cross_entropy(logits, labels)
    assert abs(got_loss - ref_loss) <= 1e-5 * abs(ref_loss)
    assert_close(got_grad, ref_grad)
    count = lane.to_device(np.zeros(1, np.int32))
    reductions.correct_count(lane.to_device(logits), lane.to_device(labels), count)
    assert int(lane.to_host(count)[0]) == reference.correct_count(logits, labels)
