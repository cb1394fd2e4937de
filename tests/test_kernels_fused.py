"""The training step's kernels (kernels/fused.py), launched through their launch plans.

The step's matmuls are the ladder's tiled rungs with an epilogue (kernels/matmul/_tiles.py): each
epilogue is checked on every tiled rung, split-K included, against rawgpu/reference.py in float64
on fresh random inputs, with every output (and split-K's workspace) poisoned (NaN) before the
run, at shapes that are not multiples of the tiny simulator tiles (1 x 1 x 1 included). The loss
kernel's in-kernel bookkeeping is checked over consecutive launches: the step counter, the
float64 sums, the first non-finite step, bad labels, the last-block counter back at 0, and a loss
that is bitwise the same run after run. The GPU lane runs the real network's shapes at the
autotuner's picks.
"""

import math

import numpy as np
import pytest
from helpers import assert_close, poisoned

from rawgpu import reference
from rawgpu.kernels import fused
from rawgpu.kernels import matmul as mm
from rawgpu.kernels.matmul import tuning

# (B, D, H): one element, and odd shapes that no tiny tile divides.
SHAPES = [(1, 1, 1), (7, 5, 3), (13, 11, 9)]
SHAPE_IDS = ["x".join(map(str, s)) for s in SHAPES]
#: Every rung that takes an epilogue, at its simulator tiles (split-K in 3 slices).
RUNGS = {variant: mm.sim_config(variant) for variant in mm.TILED}
# A second tiling for the simulator: 3 threads for 6 tile columns, so each thread sums two
# columns of d in weight_grad, and a bk that is not the sim default.
NARROW = {"bm": 2, "bn": 6, "bk": 2, "tm": 2, "tn": 2}


# The two row-wise epilogues: every rung at the largest shape (several tiles each way), and the
# other shapes on the two rungs most unlike the rest (one column per thread; split K). The
# column-sum epilogue, the intricate one, runs everywhere (test_weight_grad).
ROW_CASES = [(v, SHAPES[-1]) for v in mm.TILED] + [(v, s) for v in ("blocktile1d", "splitk") for s in SHAPES[:-1]]
ROW_IDS = [f"{v}-{'x'.join(map(str, s))}" for v, s in ROW_CASES]


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def dev(lane, *arrays):
    return [lane.to_device(a) for a in arrays]


def product(lane, op, variant, cfg, a, b, e, out_shape):
    """One of the step's products through its launch plan, into a poisoned output (and a poisoned
    split-K workspace); returns the output and ``e`` on the host."""
    out = lane.to_device(poisoned(out_shape))
    a, b, e = dev(lane, a, b, e)
    ws = mm.new_workspace(cfg, *out_shape)
    split = () if ws is None else (lane.to_device(poisoned(ws[0].shape)), lane.to_device(ws[1]))
    launch = fused.product_launch(op, variant, cfg, *out_shape)
    if launch is not None:
        launch(a, b, out, e, split)
    if split:
        assert not lane.to_host(split[1]).any(), "split-K must leave its tile counters at 0"
    return lane.to_host(out), lane.to_host(e)


# --- linear_relu and linear_backward_relu -----------------------------------------------------


@pytest.mark.sim
@pytest.mark.parametrize("variant, shape", ROW_CASES, ids=ROW_IDS)
def test_linear_relu(lane, rng, variant, shape):
    b_, d_, h_ = shape
    x, w, b = rand(rng, b_, d_), rand(rng, d_, h_), rand(rng, h_)
    got, _ = product(lane, "linear_relu", variant, RUNGS[variant], x, w, b, (b_, h_))
    assert_close(got, reference.linear_relu(x, w, b), what=f"linear_relu on {variant}")


@pytest.mark.sim
@pytest.mark.parametrize("variant", ["blocktile2d", "splitk"])
def test_linear_relu_passes_nan_on(lane, rng, variant):
    """A NaN input must reach the loss (which counts the first non-finite step), not be clipped to 0."""
    x, w, b = rand(rng, 3, 4), rand(rng, 4, 5), rand(rng, 5)
    x[1, 2] = np.nan
    got, _ = product(lane, "linear_relu", variant, RUNGS[variant], x, w, b, (3, 5))
    assert np.isnan(got[1]).all()
    assert_close(got[[0, 2]], reference.linear_relu(x[[0, 2]], w, b))


@pytest.mark.sim
@pytest.mark.parametrize("variant, shape", ROW_CASES, ids=ROW_IDS)
def test_linear_backward_relu(lane, rng, variant, shape):
    b_, c_, h_ = shape
    d, w = rand(rng, b_, c_), rand(rng, h_, c_)
    act = np.maximum(rand(rng, b_, h_), 0)  # about half the ReLUs closed
    got, _ = product(lane, "linear_backward_relu", variant, RUNGS[variant], d, w, act, (b_, h_))
    assert_close(got, reference.linear_backward_relu(d, w, act), what=f"linear_backward_relu on {variant}")


# --- weight_grad -------------------------------------------------------------------------------


def run_weight_grad(lane, inp, d, variant, cfg):
    return product(lane, "weight_grad", variant, cfg, inp, d, poisoned(d.shape[1]), (inp.shape[1], d.shape[1]))


@pytest.mark.sim
@pytest.mark.parametrize(
    "variant, shape, params",
    [(v, s, None) for v in mm.TILED for s in SHAPES]
    + [("blocktile2d", (1, 1, 1), NARROW), ("blocktile2d", (10, 3, 14), NARROW), ("splitk", (10, 3, 14), {**NARROW, "pad": 1})],
    ids=[f"{v}-{i}" for v in mm.TILED for i in SHAPE_IDS] + ["narrow-1x1x1", "narrow-10x3x14", "splitk-narrow-10x3x14"],
)
def test_weight_grad(lane, rng, variant, shape, params):
    b_, d_, n_ = shape
    inp, d = rand(rng, b_, d_), rand(rng, b_, n_)
    cfg = RUNGS[variant] if params is None else mm.config(variant, **params)
    dw, db = run_weight_grad(lane, inp, d, variant, cfg)
    ref_dw, ref_db = reference.weight_grad(inp, d)
    assert_close(dw, ref_dw, what="dw")
    assert_close(db, ref_db, what="db")


@pytest.mark.sim
@pytest.mark.parametrize("variant", ["blocktile2d", "splitk"])
def test_weight_grad_row_tiles_beyond_the_grid(lane, rng, monkeypatch, variant):
    """One block row looping over every row tile of dw: db is still summed once, on the first."""
    monkeypatch.setattr(mm, "MAX_GRID_Y", 1)
    inp, d = rand(rng, 9, 13), rand(rng, 9, 5)
    dw, db = run_weight_grad(lane, inp, d, variant, RUNGS[variant])
    ref_dw, ref_db = reference.weight_grad(inp, d)
    assert_close(dw, ref_dw, what="dw")
    assert_close(db, ref_db, what="db")


@pytest.mark.sim
def test_split_weight_grad_is_bitwise_repeatable(lane, rng):
    """Split-K's slices, and their column sums, are added in a fixed order: two runs agree to the bit."""
    inp, d = rand(rng, 11, 7), rand(rng, 11, 9) * 30
    (dw1, db1), (dw2, db2) = (run_weight_grad(lane, inp, d, "splitk", RUNGS["splitk"]) for _ in range(2))
    assert np.array_equal(dw1, dw2) and np.array_equal(db1, db2)


# --- linear_softmax_ce -------------------------------------------------------------------------


class Loss:
    """The loss kernel's outputs and bookkeeping arrays on the lane, launched step after step."""

    def __init__(self, lane, rows, classes, threads, accumulate):
        self.lane, self.threads, self.accumulate = lane, threads, accumulate
        self.counters = lane.to_device(np.zeros(4, np.int32))
        self.sums = lane.to_device(np.zeros(2, np.float64))
        self.rows, self.classes = rows, classes

    def __call__(self, a, w, b, labels):
        lane = self.lane
        z = lane.to_device(poisoned((self.rows, self.classes)))
        dz = lane.to_device(poisoned((self.rows, self.classes)))
        row_loss = lane.to_device(poisoned(self.rows))
        loss = lane.to_device(poisoned(1))
        launch = fused.softmax_ce_launch(self.rows, self.classes, self.threads, self.accumulate)
        launch(*dev(lane, a, w, b, labels), z, dz, row_loss, loss, self.counters, self.sums)
        return {"z": lane.to_host(z), "dz": lane.to_host(dz), "row_loss": lane.to_host(row_loss),
                "loss": float(lane.to_host(loss)[0])}

    def state(self):
        return self.lane.to_host(self.counters).tolist(), self.lane.to_host(self.sums).tolist()


def loss_inputs(rng, rows, hidden, classes, scale=1.0):
    a = np.maximum(rand(rng, rows, hidden), 0)  # like a hidden layer's ReLU output
    w, b = rand(rng, hidden, classes) * scale, rand(rng, classes)
    labels = rng.integers(0, classes, rows).astype(np.int32)
    return a, w, b, labels


def check_loss(got, a, w, b, labels):
    ref_z, ref_loss, ref_dz = reference.linear_softmax_ce(a, w, b, labels)
    assert_close(got["z"], ref_z, what="z")
    assert_close(got["dz"], ref_dz, what="dz")
    rows = np.arange(len(labels))
    ref_rows = np.log(np.exp(ref_z - ref_z.max(1, keepdims=True)).sum(1)) + ref_z.max(1) - ref_z[rows, labels]
    assert_close(got["row_loss"], ref_rows, what="row_loss")
    assert abs(got["loss"] - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss)), (got["loss"], ref_loss)
    return ref_loss


# (B, H, C, threads): one of each; classes fewer and more than the threads (each thread owning
# up to three classes); hidden sizes of one and of several staged chunks.
CE_CASES = [(1, 1, 1, 4), (1, 1, 1, 16), (5, 9, 10, 4), (4, 3, 3, 16), (2, 17, 20, 16)]
CE_IDS = ["x".join(map(str, s[:3])) + f"-t{s[3]}" for s in CE_CASES]


@pytest.mark.sim
@pytest.mark.parametrize("case", CE_CASES, ids=CE_IDS)
def test_linear_softmax_ce_evaluation(lane, rng, case):
    """accumulate=False: z, dz, row losses and the mean; counters and sums left alone."""
    rows, hidden, classes, threads = case
    run = Loss(lane, rows, classes, threads, accumulate=False)
    inputs = loss_inputs(rng, rows, hidden, classes)
    check_loss(run(*inputs), *inputs)
    assert run.state() == ([0, 0, 0, 0], [0.0, 0.0])


@pytest.mark.sim
@pytest.mark.parametrize("max_blocks", [2, None])
def test_linear_softmax_ce_accumulates_three_steps(lane, rng, monkeypatch, max_blocks):
    """Steps 1, 2, 3: the counter counts launches, the sums add the losses in float64, and the
    last-block counter is back at 0 after every launch, whether two blocks share the rows
    (grid-stride) or each row has its own block."""
    if max_blocks is not None:
        monkeypatch.setattr(fused, "MAX_ROW_BLOCKS", max_blocks)
    rows, hidden, classes = 5, 3, 6
    run = Loss(lane, rows, classes, fused.SIM_THREADS, accumulate=True)
    losses = []
    for step in (1, 2, 3):
        inputs = loss_inputs(rng, rows, hidden, classes)
        got = run(*inputs)
        losses.append(check_loss(got, *inputs))
        counters, sums = run.state()
        assert counters == [step, 0, 0, 0]
        assert sums[1] == pytest.approx(sum(losses), rel=1e-6)
        assert sums[0] == pytest.approx(rows * sum(losses), rel=1e-6)


@pytest.mark.sim
def test_linear_softmax_ce_records_the_first_non_finite_step(lane, rng):
    rows, hidden, classes = 3, 2, 3
    run = Loss(lane, rows, classes, fused.SIM_THREADS, accumulate=True)
    for step in (1, 2, 3):
        a, w, b, labels = loss_inputs(rng, rows, hidden, classes)
        if step == 2:
            a[1, 1] = np.nan  # a NaN row of logits at step 2 only
        got = run(a, w, b, labels)
        if step == 2:
            assert math.isnan(got["loss"]) and np.isnan(got["z"][1]).all()
        else:
            check_loss(got, a, w, b, labels)
        counters, sums = run.state()
        assert counters == [step, 0 if step == 1 else 2, 0, 0], f"step {step}"
        assert math.isnan(sums[0]) == (step >= 2)


@pytest.mark.sim
@pytest.mark.parametrize("accumulate", [False, True])
def test_linear_softmax_ce_counts_bad_labels(lane, rng, accumulate):
    rows, hidden, classes = 4, 5, 6
    run = Loss(lane, rows, classes, fused.SIM_THREADS, accumulate=accumulate)
    a, w, b, _ = loss_inputs(rng, rows, hidden, classes)
    labels = np.array([0, classes, 5, -1], np.int32)  # rows 1 and 3 are out of range
    got = run(a, w, b, labels)
    assert math.isnan(got["loss"])
    assert np.isnan(got["row_loss"][[1, 3]]).all() and np.isnan(got["dz"][[1, 3]]).all()
    good = [0, 2]
    _, _, ref_dz = reference.linear_softmax_ce(a[good], w, b, labels[good])
    assert_close(got["dz"][good] * rows / len(good), ref_dz, what="dz of the good rows")
    assert_close(got["z"], reference.linear_softmax_ce(a, w, b, np.zeros(rows, np.int32))[0], what="z")
    counters, _ = run.state()
    assert counters == ([1, 1, 2, 0] if accumulate else [0, 0, 2, 0])


@pytest.mark.sim
def test_linear_softmax_ce_is_bitwise_repeatable(lane, rng):
    rows, hidden, classes = 5, 3, 5
    run = Loss(lane, rows, classes, fused.SIM_THREADS, accumulate=False)
    inputs = loss_inputs(rng, rows, hidden, classes, scale=10.0)
    first, second = run(*inputs), run(*inputs)
    assert np.float32(first["loss"]).tobytes() == np.float32(second["loss"]).tobytes()
    for key in ("z", "dz", "row_loss"):
        assert np.array_equal(first[key], second[key]), key
    assert run.state()[0] == [0, 0, 0, 0]


@pytest.mark.sim
def test_linear_softmax_ce_huge_logits_are_stable(lane, rng):
    rows, hidden, classes = 3, 4, 5
    run = Loss(lane, rows, classes, fused.SIM_THREADS, accumulate=False)
    inputs = loss_inputs(rng, rows, hidden, classes, scale=3000.0)  # logits in the thousands
    check_loss(run(*inputs), *inputs)



@pytest.mark.sim
def test_linear_softmax_ce_keeps_a_small_loss_beside_huge_logits(lane, rng):
    # Logits near 1e4 (float32's spacing there is about 1e-3) but row losses of order 1: the
    # kernel's own z, taken to float64, must give back its row losses to float32 accuracy.
    rows, hidden, classes = 3, 4, 5
    run = Loss(lane, rows, classes, fused.SIM_THREADS, accumulate=False)
    a, w, _, labels = loss_inputs(rng, rows, hidden, classes)
    b = (np.float32(1e4) + rand(rng, classes)).astype(np.float32)
    got = run(a, w, b, labels)
    z = got["z"].astype(np.float64)
    m = z.max(1)
    want = (m - z[np.arange(rows), labels]) + np.log(np.exp(z - m[:, None]).sum(1))
    assert np.all(np.abs(got["row_loss"] - want) <= 1e-5 * np.maximum(1.0, want)), (got["row_loss"], want)

# --- the training step's five fused launches, chained -------------------------------------------


def step_grads(lane, x, labels, params, rungs, threads):
    """Launches 1-5 of the lean step, the matmuls on ``rungs`` (op -> (variant, config)); returns
    the loss and the four gradients on the host."""
    b_, d_ = x.shape
    h_, c_ = params["W2"].shape
    W1, b1, W2, b2 = dev(lane, params["W1"], params["b1"], params["W2"], params["b2"])
    x_d, labels_d = dev(lane, x, labels)
    act = lane.to_device(poisoned((b_, h_)))
    z, dz = (lane.to_device(poisoned((b_, c_))) for _ in range(2))
    row_loss, loss = lane.to_device(poisoned(b_)), lane.to_device(poisoned(1))
    counters, sums = lane.to_device(np.zeros(4, np.int32)), lane.to_device(np.zeros(2, np.float64))
    dh = lane.to_device(poisoned((b_, h_)))
    grads = {"W1": poisoned((d_, h_)), "b1": poisoned(h_), "W2": poisoned((h_, c_)), "b2": poisoned(c_)}
    g = {k: lane.to_device(v) for k, v in grads.items()}

    def launch(op, a, b, c, e):
        variant, cfg = rungs[op]
        ws = mm.new_workspace(cfg, *c.shape)
        split = () if ws is None else tuple(lane.to_device(x) for x in ws)
        fused.product_launch(op, variant, cfg, *c.shape)(a, b, c, e, split)

    launch("linear_relu", x_d, W1, act, b1)
    fused.softmax_ce_launch(b_, c_, threads, True)(act, W2, b2, labels_d, z, dz, row_loss, loss, counters, sums)
    launch("weight_grad", act, dz, g["W2"], g["b2"])
    launch("linear_backward_relu", dz, W2, dh, act)
    launch("weight_grad", x_d, dh, g["W1"], g["b1"])
    assert lane.to_host(counters).tolist() == [1, 0, 0, 0]
    return float(lane.to_host(loss)[0]), {k: lane.to_host(v) for k, v in g.items()}


def check_step(lane, rng, b_, d_, h_, c_, rungs, threads):
    x = rand(rng, b_, d_)
    labels = rng.integers(0, c_, b_).astype(np.int32)
    params = {"W1": rand(rng, d_, h_) * np.float32(1 / math.sqrt(d_)), "b1": rand(rng, h_) * np.float32(0.1),
              "W2": rand(rng, h_, c_) * np.float32(1 / math.sqrt(h_)), "b2": rand(rng, c_) * np.float32(0.1)}
    got_loss, got = step_grads(lane, x, labels, params, rungs, threads)
    ref_loss, ref = reference.mlp_loss_and_grads(x, labels, params)
    assert abs(got_loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))
    for name in ("W1", "b1", "W2", "b2"):
        assert_close(got[name], ref[name], tol=1e-4, what=name)


def tuned_rungs(b_, d_, h_, c_):
    """op -> (variant, config) as the cuda engine picks them on an H100 (132 SMs)."""
    rungs = {}
    for op, m, n, k, ta, tb in tuning.step_products(b_, d_, h_, c_)[:3]:  # dW1 shares dW2's op
        variant, params, _ = tuning.pick(m, n, k, ta, tb, sms=132)
        rungs[op] = (variant, mm.config(variant, **params))
    return rungs


@pytest.mark.sim
def test_step_matches_the_reference_gradients(lane, rng):
    rungs = {"linear_relu": ("splitk", RUNGS["splitk"]), "linear_backward_relu": ("warptile", RUNGS["warptile"]),
             "weight_grad": ("transposed", RUNGS["transposed"])}
    check_step(lane, rng, 5, 7, 6, 10, rungs, fused.SIM_THREADS)


# --- launch errors ----------------------------------------------------------------------------


def _z(*shape, dtype=np.float32):
    return np.zeros(shape, dtype)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: fused.product_launch("linear_relu", "naive", mm.config("naive"), 3, 2), "variant"),
        (lambda: fused.product_launch("linear_relu", "splitk", mm.config("blocktile2d"), 3, 2), "cfg"),
        (lambda: fused.softmax_ce_launch(3, 5, 3, False), "threads"),
        (lambda: fused.softmax_ce_launch(0, 5, 4, False), "a"),
        (lambda: fused.softmax_ce_launch(3, 1025, 4, False), "w"),
        (lambda: fused.softmax_ce_launch(3, 0, 4, False), "w"),
    ],
    ids=["not-tiled", "cfg", "threads", "zero-rows", "classes", "no-classes"],
)
def test_bad_launch_plans_name_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call()


def test_an_empty_output_has_no_launch():
    assert fused.product_launch("weight_grad", "splitk", RUNGS["splitk"], 0, 4) is None


def test_step_products_are_the_tuner_s_questions():
    """The four matmuls of a 784-128-10 step at batch 128, as fused.product_shape derives them."""
    ops = tuning.step_products()
    assert [op for op, *_ in ops] == ["linear_relu", "weight_grad", "linear_backward_relu", "weight_grad"]
    assert fused.product_shape("linear_relu", (128, 784), (784, 128)) == (128, 128, 784, False, False)
    assert fused.product_shape("linear_backward_relu", (128, 10), (128, 10)) == (128, 128, 10, False, True)
    assert fused.product_shape("weight_grad", (128, 784), (128, 128)) == (784, 128, 128, True, False)
    for op, m, n, k, ta, tb in ops:
        variant, params, reason = tuning.pick(m, n, k, ta, tb, sms=132)
        assert variant in mm.TILED, (op, variant)
        blocks = math.ceil(m / mm.config(variant, **params).tile_shape[0]) * math.ceil(n / mm.config(variant, **params).tile_shape[1])
        blocks *= params.get("splits", 1)
        assert blocks >= 132 or "too short" in reason, (op, blocks, reason)  # fills the GPU, or says why not


# --- GPU lane: the network's real shapes at the GPU defaults ------------------------------------


@pytest.mark.gpu
def test_gpu_network_shapes(lane, rng):
    """B=128, D=784, H=128, C=10 on the tuner's rungs and 256 threads per loss row."""
    b_, d_, h_, c_ = 128, 784, 128, 10
    rungs = tuned_rungs(b_, d_, h_, c_)
    x, w1, b1 = rand(rng, b_, d_), rand(rng, d_, h_), rand(rng, h_)
    got, _ = product(lane, "linear_relu", *rungs["linear_relu"], x, w1, b1, (b_, h_))
    assert_close(got, reference.linear_relu(x, w1, b1), what="linear_relu")
    d, w2, act = rand(rng, b_, c_), rand(rng, h_, c_), np.maximum(rand(rng, b_, h_), 0)
    got, _ = product(lane, "linear_backward_relu", *rungs["linear_backward_relu"], d, w2, act, (b_, h_))
    assert_close(got, reference.linear_backward_relu(d, w2, act), what="linear_backward_relu")
    for inp, dd in ((x, rand(rng, b_, h_)), (act, d)):  # dW1/db1 (784 x 128) and dW2/db2 (128 x 10)
        m, n, k, ta, tb = fused.product_shape("weight_grad", inp.shape, dd.shape)
        variant, params, _ = tuning.pick(m, n, k, ta, tb, sms=132)
        dw, db = run_weight_grad(lane, inp, dd, variant, mm.config(variant, **params))
        ref_dw, ref_db = reference.weight_grad(inp, dd)
        assert_close(dw, ref_dw, what="dw")
        assert_close(db, ref_db, what="db")
    run = Loss(lane, b_, c_, fused.THREADS, accumulate=True)
    losses = []
    for step in (1, 2, 3):
        inputs = loss_inputs(rng, b_, h_, c_)
        got = run(*inputs)
        losses.append(check_loss(got, *inputs))
        counters, sums = run.state()
        assert counters == [step, 0, 0, 0]
        assert sums[1] == pytest.approx(sum(losses), rel=1e-6)
    first, second = run(*inputs), run(*inputs)
    assert np.float32(first["loss"]).tobytes() == np.float32(second["loss"]).tobytes()


@pytest.mark.gpu
def test_gpu_step_matches_the_reference_gradients(lane, rng, monkeypatch):
    check_step(lane, rng, 128, 784, 128, 10, tuned_rungs(128, 784, 128, 10), fused.THREADS)
    monkeypatch.setattr(fused, "MAX_ROW_BLOCKS", 7)  # several passes per block, last-block sum
    monkeypatch.setattr(mm, "MAX_GRID_Y", 2)
    check_step(lane, rng, 1000, 784, 128, 10, tuned_rungs(1000, 784, 128, 10), fused.THREADS)
