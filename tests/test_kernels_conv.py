"""The conv and max-pool kernels (kernels/conv.py, kernels/pool.py), launched directly.

Each is checked against rawgpu/reference.py in float64 on fresh random inputs, every output
poisoned (NaN) first, at odd tiny shapes (odd channels and image sizes, padding 0..K-1, batch
1-3) that the simulator's tiny tiles do not divide.
"""

import numpy as np
import pytest
from helpers import assert_close, poisoned

from rawgpu import reference
from rawgpu.kernels import conv

# (N, C, H, W, O, K, pad)
CASES = [(1, 1, 1, 1, 1, 1, 0), (2, 3, 5, 4, 5, 3, 1), (3, 2, 4, 5, 3, 3, 0), (1, 3, 6, 5, 2, 5, 2)]
IDS = ["N{}C{}H{}W{}O{}K{}p{}".format(*c) for c in CASES]


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def conv_case(rng, n, c, h, w, o, k, pad):
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    return rand(rng, n, c, h, w), rand(rng, o, c, k, k), rand(rng, o), rand(rng, n, o, ho, wo)


@pytest.mark.sim
@pytest.mark.parametrize("relu", [False, True], ids=["bias", "bias+relu"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conv2d_forward(lane, rng, case, relu):
    x, w, b, dy = conv_case(rng, *case)
    out = lane.to_device(poisoned(dy.shape))
    conv.conv2d(*(lane.to_device(a) for a in (x, w, b)), out, pad=case[-1], relu=relu, cfg=conv.sim_config())
    ref = reference.conv2d(x, w, b, pad=case[-1])
    assert_close(lane.to_host(out), np.maximum(ref, 0) if relu else ref, what="conv2d")


@pytest.mark.sim
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conv2d_input_grad(lane, rng, case):
    x, w, _, dy = conv_case(rng, *case)
    dx = lane.to_device(poisoned(x.shape))
    conv.conv2d_input_grad(lane.to_device(dy), lane.to_device(w), dx, pad=case[-1], cfg=conv.sim_config())
    assert_close(lane.to_host(dx), reference.conv2d_input_grad(dy, w, pad=case[-1]), what="conv2d input grad")


@pytest.mark.sim
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conv2d_weight_grad(lane, rng, case):
    x, w, b, dy = conv_case(rng, *case)
    dw, db = lane.to_device(poisoned(w.shape)), lane.to_device(poisoned(b.shape))
    conv.conv2d_weight_grad(lane.to_device(x), lane.to_device(dy), dw, db, pad=case[-1], cfg=conv.sim_config())
    ref_dw, ref_db = reference.conv2d_weight_grad(x, dy, w.shape[2], pad=case[-1])
    assert_close(lane.to_host(dw), ref_dw, what="conv2d weight grad")
    assert_close(lane.to_host(db), ref_db, what="conv2d bias grad")


@pytest.mark.sim
def test_conv2d_weight_grad_sums_bias_over_several_row_tiles(lane, rng):
    """More output channels than one row tile and one thread's share of it: several blocks sum db."""
    x, w, b, dy = conv_case(rng, 2, 1, 3, 3, 13, 3, 1)
    dw, db = lane.to_device(poisoned(w.shape)), lane.to_device(poisoned(b.shape))
    conv.conv2d_weight_grad(lane.to_device(x), lane.to_device(dy), dw, db, pad=1, cfg=conv.sim_config())
    ref_dw, ref_db = reference.conv2d_weight_grad(x, dy, 3, pad=1)
    assert_close(lane.to_host(dw), ref_dw, what="conv2d weight grad")
    assert_close(lane.to_host(db), ref_db, what="conv2d bias grad")


@pytest.mark.sim
def test_fitted_tiles_compute_a_narrow_conv(lane, rng):
    """The simulator's tiles cut to a narrow GEMM (conv.fitted): one output channel, the one column
    of the forward pass and of the weight gradient; still checked against the reference."""
    cfg = conv.config(bm=8, bn=4, bk=8, tm=4, tn=4)
    assert conv.fitted(cfg, 50, 1).tile_shape == (8, 1) and conv.fitted(cfg, 50, 1).block == (2, 1)
    assert conv.fitted(cfg, 2, 27).tile_shape == (2, 4) and conv.fitted(cfg, 2, 27).block == (1, 1)
    assert conv.fitted(cfg, 3, 3) == conv.config(bm=4, bn=4, bk=8, tm=4, tn=4)
    assert conv.fitted(cfg, 100, 100) == cfg
    x, w, b, dy = conv_case(rng, 2, 3, 5, 6, 1, 3, 1)  # 60 pixel rows x 1 channel; dW: 1 x 27
    out = lane.to_device(poisoned(dy.shape))
    conv.conv2d(lane.to_device(x), lane.to_device(w), lane.to_device(b), out, pad=1, cfg=conv.fitted(cfg, 60, 1))
    assert_close(lane.to_host(out), reference.conv2d(x, w, b, pad=1), what="conv2d, fitted tiles")
    dw, db = lane.to_device(poisoned(w.shape)), lane.to_device(poisoned(b.shape))
    conv.conv2d_weight_grad(lane.to_device(x), lane.to_device(dy), dw, db, pad=1, cfg=conv.fitted(cfg, 27, 1))
    ref_dw, ref_db = reference.conv2d_weight_grad(x, dy, 3, pad=1)
    assert_close(lane.to_host(dw), ref_dw, what="conv2d weight grad, fitted tiles")
    assert_close(lane.to_host(db), ref_db, what="conv2d bias grad, fitted tiles")


@pytest.mark.sim
@pytest.mark.parametrize("splits", [2, 3, 9])
def test_conv2d_weight_grad_in_slices_of_the_pixels(lane, rng, splits):
    """The pixels cut into slices that meet in the workspace (9 slices of 2 x 4 x 4 = 32 pixels,
    seven bk-deep tiles at bk 5: two slices are empty): dw and db as the reference's, the workspace poisoned first, its
    counters left zero, and the same bits at every run (the slices are added in a fixed order)."""
    cfg = conv.sim_config()
    x, w, b, dy = conv_case(rng, 2, 3, 4, 4, 5, 3, 1)
    taps = 3 * 3 * 3
    ws, done = conv.weight_grad_workspace(cfg, 5, taps, splits)
    ws[...] = np.nan
    workspace = (lane.to_device(ws), lane.to_device(done))
    runs = []
    for _ in range(2):
        dw, db = lane.to_device(poisoned(w.shape)), lane.to_device(poisoned(b.shape))
        conv.conv2d_weight_grad(lane.to_device(x), lane.to_device(dy), dw, db, pad=1, cfg=cfg, splits=splits, workspace=workspace)
        runs.append((lane.to_host(dw).copy(), lane.to_host(db).copy()))
    ref_dw, ref_db = reference.conv2d_weight_grad(x, dy, 3, pad=1)
    assert_close(runs[0][0], ref_dw, what=f"conv2d weight grad, {splits} slices")
    assert_close(runs[0][1], ref_db, what=f"conv2d bias grad, {splits} slices")
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    assert not lane.to_host(workspace[1]).any()


def test_conv_weight_grad_splits_and_workspace_are_checked():
    cfg = conv.config()  # the GPU's: 128 x 32 tiles
    assert [conv.weight_grad_splits(cfg, o, taps, 64 * hw, 264) for o, taps, hw in ((32, 75, 1024), (32, 800, 256), (64, 800, 64))] == [128, 38, 16]
    assert conv.weight_grad_splits(cfg, 32, 75, 100, 264) == 1  # too few pixels to cut
    assert conv.weight_grad_workspace(cfg, 32, 75, 1) == ()
    ws, done = conv.weight_grad_workspace(cfg, 32, 75, 4)
    assert ws.shape == (4, 76, 32) and done.shape == (1,) and not done.any()
    x, w, b, dy = (np.zeros(s, np.float32) for s in ((1, 3, 5, 5), (4, 3, 3, 3), (4,), (1, 4, 5, 5)))
    with pytest.raises(ValueError, match="workspace: 2 slice"):
        conv.conv2d_weight_grad(x, dy, w, b, pad=1, cfg=conv.sim_config(), splits=2)
    with pytest.raises(ValueError, match="splits: must be an integer"):
        conv.conv2d_weight_grad(x, dy, w, b, pad=1, cfg=conv.sim_config(), splits=0)


def test_conv_launchers_refuse_bad_shapes():
    cfg = conv.sim_config()
    x, w, b = np.zeros((1, 3, 5, 5), np.float32), np.zeros((4, 3, 3, 3), np.float32), np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="pad: must be in 0..2"):
        conv.conv2d(x, w, b, np.zeros((1, 4, 9, 9), np.float32), pad=3, cfg=cfg)
    with pytest.raises(ValueError, match="out: must have shape"):
        conv.conv2d(x, w, b, np.zeros((1, 4, 4, 4), np.float32), pad=1, cfg=cfg)
    with pytest.raises(ValueError, match="input channels"):
        conv.conv2d(x, np.zeros((4, 2, 3, 3), np.float32), b, np.zeros((1, 4, 5, 5), np.float32), pad=1, cfg=cfg)
    with pytest.raises(ValueError, match="conv.config"):
        conv.conv_launch(False, True, False, conv.__dict__["make_config"]("x", {"bm": 1}, {}, lambda p: ((1, 1), (1, 1), 0)), 1, 1)


# --- max-pool ---------------------------------------------------------------------------------

from rawgpu.kernels import pool  # noqa: E402

POOL_SHAPES = [(1, 1, 2, 2), (2, 3, 5, 4), (3, 1, 7, 7)]


@pytest.mark.sim
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_maxpool_forward_and_backward(lane, rng, shape):
    x = rand(rng, *shape)
    n, c, h, w = shape
    out, arg = lane.to_device(poisoned((n, c, h // 2, w // 2))), lane.to_device(poisoned((n, c, h // 2, w // 2), np.int32))
    # max_blocks=1 at 8 threads: the grid-stride loop makes several passes
    pool.maxpool2x2(lane.to_device(x), out, arg, threads=8, max_blocks=1)
    ref_out, ref_arg = reference.maxpool2x2(x)
    np.testing.assert_array_equal(lane.to_host(out), ref_out.astype(np.float32))
    np.testing.assert_array_equal(lane.to_host(arg), ref_arg)
    dy = rand(rng, *ref_out.shape)
    dx = lane.to_device(poisoned(shape))
    pool.maxpool2x2_backward(lane.to_device(dy), arg, dx, threads=8, max_blocks=1)
    np.testing.assert_array_equal(lane.to_host(dx), reference.maxpool2x2_backward(dy, ref_arg, shape).astype(np.float32))


@pytest.mark.sim
def test_maxpool_ties_and_nan_like_the_reference(lane):
    x = np.array([[[[1.0, 1.0, 0.0, np.nan], [1.0, 0.0, 5.0, 0.0]]]], np.float32)
    out, arg = lane.to_device(poisoned((1, 1, 1, 2))), lane.to_device(poisoned((1, 1, 1, 2), np.int32))
    pool.maxpool2x2(lane.to_device(x), out, arg, threads=4)
    assert lane.to_host(arg).tolist() == [[[[0, 3]]]]
    assert np.isnan(lane.to_host(out)[0, 0, 0, 1])


def test_maxpool_refuses_wrong_output_shape():
    with pytest.raises(ValueError, match=r"out: must have shape \(1, 1, 2, 2\)"):
        pool.maxpool2x2(np.zeros((1, 1, 5, 4), np.float32), np.zeros((1, 1, 3, 2), np.float32), np.zeros((1, 1, 2, 2), np.int32))
