"""The matmul kernels, launched directly, against a float64 NumPy reference.

Simulator lane (``sim``): tiny tiles and tiny odd shapes, because the simulator runs one OS
thread per CUDA thread. GPU lane (``gpu``): the default configs at large odd shapes. Every run
writes into an output poisoned with NaN, so an element a kernel forgets to write fails.
"""

import numpy as np
import pytest
from helpers import assert_close, poisoned

from rawgpu.kernels import matmul as mm

TRANS = [(False, False), (False, True), (True, False), (True, True)]
TRANS_IDS = ["NN", "NT", "TN", "TT"]

# Tiny tiles for the simulator, none of them square in every respect: a 4x2 naive block, a tile
# of 3 (not a power of two), and register blocks whose threads do not divide the shared tiles
# evenly (6x4 tile, bk=3: 18 and 12 values copied by 4 threads).
SIM_CFGS = {
    "naive": mm.config("naive", block_x=4, block_y=2),
    "tiled": mm.config("tiled", tile=3),
    "regblock": mm.config("regblock", bm=6, bn=4, bk=3, tm=3, tn=2),
}
# (M, N, K): 1x1x1, K = 1, tall, wide, and shapes that are not multiples of any tile above and
# span several tiles in every dimension.
SIM_SHAPES = [(1, 1, 1), (4, 5, 1), (5, 7, 3), (13, 2, 4), (2, 11, 5), (14, 10, 8)]


def operands(rng, m, n, k, trans_a, trans_b):
    """Random a, b in their stored layouts, and the float64 reference op(a) @ op(b)."""
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    ref = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    return a, b, ref


def run(lane, a, b, m, n, **kwargs):
    out = lane.to_device(poisoned((m, n)))
    mm.matmul(lane.to_device(a), lane.to_device(b), out, **kwargs)
    return lane.to_host(out)


def check(lane, rng, shape, trans, variant, cfg):
    m, n, k = shape
    a, b, ref = operands(rng, m, n, k, *trans)
    got = run(lane, a, b, m, n, trans_a=trans[0], trans_b=trans[1], variant=variant, cfg=cfg)
    assert_close(got, ref, tol=1e-5, what=f"{cfg} trans={trans} shape={shape}")


# --- simulator lane --------------------------------------------------------------------------


@pytest.mark.sim
@pytest.mark.parametrize("trans", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("variant", mm.VARIANTS)
def test_matches_float64(lane, rng, variant, trans):
    for shape in SIM_SHAPES:
        check(lane, rng, shape, trans, variant, SIM_CFGS[variant])


@pytest.mark.sim
@pytest.mark.parametrize("trans", TRANS, ids=TRANS_IDS)
def test_regblock_square_tiles(lane, rng, trans):
    """The textbook shape (bm = bn, tm = tn), where the copy loops divide evenly."""
    cfg = mm.config("regblock", bm=4, bn=4, bk=2, tm=2, tn=2)
    for shape in [(1, 1, 1), (9, 6, 5)]:
        check(lane, rng, shape, trans, "regblock", cfg)


@pytest.mark.sim
@pytest.mark.parametrize("variant", mm.VARIANTS)
def test_rows_beyond_grid_loop(lane, rng, variant, monkeypatch):
    """When M needs more row tiles than gridDim.y allows, each block loops over row tiles."""
    monkeypatch.setattr(mm, "MAX_GRID_Y", 2)
    check(lane, rng, (17, 3, 4), (False, True), variant, SIM_CFGS[variant])


@pytest.mark.sim
@pytest.mark.parametrize("variant", mm.VARIANTS)
def test_empty_inner_dimension_gives_zeros(lane, variant):
    got = run(lane, np.zeros((3, 0), np.float32), np.zeros((0, 2), np.float32), 3, 2,
              variant=variant, cfg=SIM_CFGS[variant])
    np.testing.assert_array_equal(got, np.zeros((3, 2), np.float32))


# --- launcher checks (no kernel runs) --------------------------------------------------------


def test_empty_output_launches_nothing():
    # A zero-sized grid is a CUDA error; the launcher must return before launching.
    out = poisoned((0, 4))
    mm.matmul(np.zeros((0, 3), np.float32), np.zeros((3, 4), np.float32), out)
    assert out.shape == (0, 4)


@pytest.mark.parametrize("a_shape, b_shape, out_shape, flags", [
    ((3, 4), (5, 2), (3, 2), {}),                      # inner sizes differ
    ((3, 4), (4, 2), (2, 3), {}),                      # out is the wrong way round
    ((3, 4), (4, 2), (3, 2), {"trans_a": True}),       # a would have to be (4, 3)
    ((3, 4), (4, 2), (3, 2), {"trans_b": True}),       # b would have to be (2, 4)
])
def test_shape_mismatch_is_refused(a_shape, b_shape, out_shape, flags):
    with pytest.raises(ValueError, match="out"):
        mm.matmul(np.zeros(a_shape, np.float32), np.zeros(b_shape, np.float32),
                  poisoned(out_shape), **flags)


def test_config_of_another_variant_is_refused():
    a, b = np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="cfg"):
        mm.matmul(a, b, poisoned((2, 2)), variant="naive", cfg=mm.config("tiled"))


# --- config ----------------------------------------------------------------------------------


def test_config_defaults():
    assert mm.config("naive").params == {"block_x": 16, "block_y": 16}
    assert mm.config("tiled").params == {"tile": 16}
    assert mm.config("regblock").params == {"bm": 64, "bn": 64, "bk": 8, "tm": 4, "tn": 4}
    for variant in mm.VARIANTS:
        cfg = mm.config(variant)
        assert cfg.variant == variant
        assert np.prod(cfg.block) == 256
        hash(cfg)  # keys the kernel cache


def test_config_overrides_and_block():
    cfg = mm.config("regblock", bm=8, bn=16, tm=2, tn=4)
    assert cfg.params == {"bm": 8, "bn": 16, "bk": 8, "tm": 2, "tn": 4}
    assert cfg.block == (4, 4)  # (bn / tn, bm / tm)
    assert cfg.tile_shape == (8, 16)
    assert mm.config("naive", block_x=32, block_y=2).block == (32, 2)


@pytest.mark.parametrize("variant, params, name", [
    ("strassen", {}, "variant"),
    ("tiled", {"block_x": 8}, "block_x"),
    ("tiled", {"tile": 0}, "tile"),
    ("naive", {"block_y": -2}, "block_y"),
    ("naive", {"block_x": 4.0}, "block_x"),
    ("regblock", {"bk": True}, "bk"),
    ("regblock", {"bm": 64, "tm": 3}, "tm"),
    ("regblock", {"bn": 10, "tn": 4}, "tn"),
    ("naive", {"block_x": 64, "block_y": 32}, "block_x"),
    ("tiled", {"tile": 33}, "tile"),
    ("regblock", {"bm": 128, "bn": 128, "tm": 2, "tn": 2}, "bm"),
    ("regblock", {"bm": 128, "bn": 128, "bk": 64, "tm": 8, "tn": 8}, "bk"),
])
def test_config_rejects(variant, params, name):
    with pytest.raises(ValueError, match=name):
        mm.config(variant, **params)


# --- GPU lane --------------------------------------------------------------------------------

GPU_SHAPES = [(1, 1, 1), (1000, 1001, 999), (777, 1531, 1), (3, 2049, 67), (1537, 5, 130)]


@pytest.mark.gpu
@pytest.mark.parametrize("trans", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("variant", mm.VARIANTS)
def test_gpu_default_configs(lane, rng, variant, trans):
    for shape in GPU_SHAPES:
        check(lane, rng, shape, trans, variant, mm.config(variant))


@pytest.mark.gpu
@pytest.mark.parametrize("variant", mm.VARIANTS)
def test_gpu_rows_beyond_grid_limit(lane, rng, variant):
    """More row tiles than CUDA's 65535 gridDim.y, at the default (largest) row tile of 64."""
    m = mm.MAX_GRID_Y * 64 + 37
    check(lane, rng, (m, 3, 2), (True, False), variant, mm.config(variant))
