"""The matmul ladder (kernels/matmul/, every rung), launched directly, against rawgpu/reference.py (float64).

Simulator lane (``sim``): tiny tiles and tiny odd shapes, because the simulator runs one OS
thread per CUDA thread. GPU lane (``gpu``): the default configs at large odd shapes. Every run
writes into an output poisoned with NaN, so an element a kernel forgets to write fails.
"""

import numpy as np
import pytest
from helpers import assert_close, poisoned

from rawgpu import reference
from rawgpu.kernels import matmul as mm

TRANS = [(False, False), (False, True), (True, False), (True, True)]
TRANS_IDS = ["NN", "NT", "TN", "TT"]

# Tiny tiles for the simulator (each rung's SIM_PARAMS), none of them square in every respect:
# a 4x2 naive block, a tile of 3 (not a power of two), register blocks whose threads do not
# divide the shared tiles evenly (6x4 tile, bk=3: 18 and 12 values copied by 4 threads), warp
# tiles of 2 lanes, and split-K into 3 slices (some of them empty at small K).
SIM_CFGS = {variant: mm.sim_config(variant) for variant in mm.VARIANTS}
# (M, N, K): 1x1x1, K = 1, tall, wide, and shapes that are not multiples of any tile above and
# span several tiles in every dimension.
SIM_SHAPES = [(1, 1, 1), (4, 5, 1), (13, 2, 4), (2, 11, 5), (9, 7, 8)]


def operands(rng, m, n, k, trans_a, trans_b):
    """Random a, b in their stored layouts, and the float64 reference op(a) @ op(b)."""
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    return a, b, reference.matmul(a, b, trans_a=trans_a, trans_b=trans_b)


def workspace(lane, cfg, m, n, fill=poisoned):
    """split-K's (ws, counters) on the lane's device, ws filled by ``fill(shape)`` (NaN by
    default), or None for a rung that takes none."""
    ws = mm.new_workspace(cfg, m, n)
    return None if ws is None else (lane.to_device(fill(ws[0].shape)), lane.to_device(ws[1]))


def run(lane, a, b, m, n, **kwargs):
    """Launch into a NaN-poisoned output (and a NaN-poisoned workspace where the rung takes one)."""
    out = lane.to_device(poisoned((m, n)))
    cfg = kwargs.get("cfg") or mm.config(kwargs.get("variant", "blocktile2d"))
    mm.matmul(lane.to_device(a), lane.to_device(b), out, workspace=workspace(lane, cfg, m, n), **kwargs)
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
    # Every shape untransposed; with a transpose, the one-element case, a tall and the
    # several-tiles-each-way shapes (the simulator's time goes to launches: ~0.2 s each).
    shapes = SIM_SHAPES if trans == (False, False) else [SIM_SHAPES[0], SIM_SHAPES[2], SIM_SHAPES[4]]
    for shape in shapes:
        check(lane, rng, shape, trans, variant, SIM_CFGS[variant])


@pytest.mark.sim
@pytest.mark.parametrize("trans", [TRANS[0], TRANS[3]], ids=["NN", "TT"])
@pytest.mark.parametrize("variant, params", [
    ("blocktile2d", {"bm": 4, "bn": 4, "bk": 2, "tm": 2, "tn": 2}),
    ("transposed", {"bm": 4, "bn": 4, "bk": 2, "tm": 2, "tn": 2, "pad": 0}),
    ("warptile", {"bm": 4, "bn": 4, "bk": 2, "wm": 4, "wn": 2, "tm": 2, "tn": 1, "pad": 1}),
    ("splitk", {"bm": 4, "bn": 4, "bk": 2, "tm": 2, "tn": 2, "pad": 1, "splits": 1}),
])
def test_square_tiles_and_one_split(lane, rng, variant, params, trans):
    """The textbook shape (bm = bn, tm = tn), where the copy loops divide evenly; split-K at 1."""
    cfg = mm.config(variant, **params)
    for shape in [(1, 1, 1), (9, 6, 5)]:
        check(lane, rng, shape, trans, variant, cfg)


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


@pytest.mark.sim
@pytest.mark.parametrize("trans", [TRANS[0], TRANS[3]], ids=["NN", "TT"])
def test_splitk_is_bitwise_reproducible(lane, rng, trans):
    """The partial tiles are summed in a fixed order (no atomics): two runs agree to the bit,
    and a workspace left dirty by another product changes nothing."""
    m, n, k = 9, 7, 20  # 3 slices of K, each several bk-tiles long
    a, b, ref = operands(rng, m, n, k, *trans)
    cfg = SIM_CFGS["splitk"]
    first = run(lane, a, b, m, n, trans_a=trans[0], trans_b=trans[1], variant="splitk", cfg=cfg)
    assert_close(first, ref, tol=1e-5, what=f"splitk trans={trans}")
    ws = workspace(lane, cfg, m, n, fill=lambda shape: rng.standard_normal(shape).astype(np.float32))
    out = lane.to_device(poisoned((m, n)))
    for _ in range(2):  # the second launch finds the counters the first left: zero
        mm.matmul(lane.to_device(a), lane.to_device(b), out, trans_a=trans[0], trans_b=trans[1],
                  variant="splitk", cfg=cfg, workspace=ws)
        assert lane.to_host(out).tobytes() == first.tobytes()
    np.testing.assert_array_equal(lane.to_host(ws[1]), 0)


# --- launcher checks (no kernel runs) --------------------------------------------------------


def test_workspace_shapes():
    cfg = mm.config("splitk", splits=5)  # 64 x 64 tiles
    ws, counters = mm.new_workspace(cfg, 128, 10)
    assert (ws.shape, ws.dtype) == ((5, 129, 10), np.float32)  # row M: the column sums
    assert (counters.shape, counters.dtype) == ((2,), np.int32) and not counters.any()
    assert mm.new_workspace(mm.config("transposed"), 128, 10) is None


_COUNTERS = np.zeros((1,), np.int32)  # one 4 x 4 tile


@pytest.mark.parametrize("ws", [None, np.zeros((2, 4, 4), np.float32), (np.zeros((2, 4, 4), np.float32), _COUNTERS),
                                (np.zeros((3, 4, 4), np.float32), _COUNTERS.astype(np.int64)),
                                (np.zeros((3, 4, 4), np.float64), _COUNTERS)],
                         ids=["missing", "no counters", "splits", "int64 counters", "float64"])
def test_splitk_refuses_a_missing_or_wrong_workspace(ws):
    cfg = mm.config("splitk", bm=4, bn=4, bk=2, tm=2, tn=2, pad=1, splits=3)
    a, b = np.zeros((3, 5), np.float32), np.zeros((5, 4), np.float32)
    with pytest.raises(ValueError, match=r"^workspace: splitk needs \(ws, counters\)") as info:
        mm.matmul(a, b, poisoned((3, 4)), variant="splitk", cfg=cfg, workspace=ws)
    assert "\n" not in str(info.value)


def test_workspace_refused_by_a_rung_that_takes_none():
    a, b = np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="workspace"):
        mm.matmul(a, b, poisoned((2, 2)), variant="naive", workspace=np.zeros((1, 2, 2), np.float32))



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
        mm.matmul(a, b, poisoned((2, 2)), variant="naive", cfg=mm.config("smem"))


# --- config ----------------------------------------------------------------------------------


def test_variants_are_the_ladder_in_order():
    assert mm.VARIANTS == ("naive", "coalesced", "smem", "blocktile1d", "blocktile2d", "transposed", "warptile", "splitk")


def test_config_defaults():
    assert mm.config("naive").params == {"block_x": 32, "block_y": 8}
    assert mm.config("smem").params == {"tile": 32}
    assert mm.config("blocktile2d").params == {"bm": 64, "bn": 64, "bk": 8, "tm": 4, "tn": 4}
    for variant in mm.VARIANTS:
        cfg = mm.config(variant)
        assert cfg.variant == variant
        assert np.prod(cfg.block) == (1024 if variant == "smem" else 512 if variant == "blocktile1d" else 256)
        assert cfg.threads == np.prod(cfg.block)
        hash(cfg)  # keys the kernel cache


def test_config_overrides_and_block():
    cfg = mm.config("blocktile2d", bm=8, bn=16, tm=2, tn=4)
    assert cfg.params == {"bm": 8, "bn": 16, "bk": 8, "tm": 2, "tn": 4}
    assert cfg.block == (4, 4)  # (bn / tn, bm / tm)
    assert cfg.tile_shape == (8, 16)
    assert mm.config("coalesced", block_x=32, block_y=2).block == (32, 2)
    assert mm.config("naive", block_x=32, block_y=2).tile_shape == (32, 2)  # x runs down the rows
    assert mm.config("blocktile1d").block == (64, 8)
    assert mm.config("warptile").block == (256, 1)  # 8 warp tiles of 32 lanes
    assert "splits=4" in mm.config("splitk").text()


@pytest.mark.parametrize("variant, params, name", [
    ("strassen", {}, "variant"),
    ("smem", {"block_x": 8}, "block_x"),
    ("smem", {"tile": 0}, "tile"),
    ("naive", {"block_y": -2}, "block_y"),
    ("coalesced", {"block_x": 4.0}, "block_x"),
    ("blocktile2d", {"bk": True}, "bk"),
    ("blocktile2d", {"bm": 64, "tm": 3}, "tm"),
    ("transposed", {"bn": 10, "tn": 4}, "tn"),
    ("blocktile1d", {"bm": 12, "tm": 5}, "tm"),
    ("warptile", {"wm": 48}, "wm"),
    ("naive", {"block_x": 64, "block_y": 32}, "block_x"),
    ("smem", {"tile": 33}, "tile"),
    ("blocktile2d", {"bm": 128, "bn": 128, "tm": 2, "tn": 2}, "bm"),
    ("blocktile2d", {"bm": 128, "bn": 128, "bk": 64, "tm": 8, "tn": 8}, "bk"),
    ("splitk", {"splits": 70000}, "splits"),
])
def test_config_rejects(variant, params, name):
    with pytest.raises(ValueError, match=name):
        mm.config(variant, **params)


def test_compile_targets_cover_every_rung_and_transpose_pair():
    targets = mm.compile_targets()
    rungs = [t for t in targets if t.kernel in mm.VARIANTS]
    assert len(rungs) == 4 * len(mm.VARIANTS)
    assert {t.config.split()[-1] for t in rungs} == {"NN", "NT", "TN", "TT"}
    m = "float32[:, ::1]"
    for t in rungs:
        if t.kernel in ("naive", "coalesced", "smem"):
            assert t.signature == f"void({m}, {m}, {m})"
        else:  # the tiled rungs: a, b, c, the epilogue's operand, split-K's scratch (none unless split)
            split = "Tuple((float32[:, :, ::1], int32[::1]))" if t.kernel == "splitk" else "Tuple(())"
            assert t.signature == f"void({m}, {m}, {m}, {m}, {split})"
        assert t.threads_per_block == mm.config(t.kernel).threads
        assert hasattr(t.dispatcher, "py_func")
    assert len(targets) == len(rungs)  # split-K is one kernel now: no second summing launch


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
    """More row tiles than CUDA's 65535 gridDim.y, at each rung's default row tile."""
    m = mm.MAX_GRID_Y * mm.config(variant).tile_shape[0] + 37
    check(lane, rng, (m, 3, 2), (True, False), variant, mm.config(variant))
