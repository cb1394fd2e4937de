"""rawgpu.ops on every engine against the float64 references of rawgpu/reference.py.

Each test runs on the NumPy engine and on this process's kernel engine (the simulator without a
GPU, at small odd shapes; the real GPU where there is one, at large odd shapes). Outputs are
poisoned with NaN first, so an element a kernel forgets to write fails the test.
"""

import numpy as np
import pytest
from conftest import KERNEL_ENGINE
from helpers import assert_close, poisoned

import rawgpu
from rawgpu import ops, reference

ON_GPU = KERNEL_ENGINE == "cuda"
# (M, N, K): 1x1x1, and shapes that are not multiples of any tile (the sim engine uses 4x4 tiles
# and 8x8 register blocks; the GPU defaults are 16 to 64).
# In the simulator: tiny and odd (every rung is checked at more shapes in test_kernels_matmul.py).
# Every rung's kernels are checked at more shapes in test_kernels_matmul.py; here, that the op
# reaches each rung at each transpose (and brings split-K its workspace).
MATMUL_SHAPES = [(1, 1, 1), (17, 3, 2)] if not ON_GPU else [(1, 1, 1), (1000, 517, 333), (129, 1031, 2047)]
ROWS_COLS = [(1, 1), (5, 3), (13, 10), (9, 17)] if not ON_GPU else [(1, 1), (4099, 10), (1000, 4097)]


@pytest.fixture(params=["numpy", KERNEL_ENGINE])
def eng(request):
    engine = rawgpu.use(request.param)
    yield engine
    rawgpu.use("numpy")


def put(eng, host):
    # A copy: on the numpy engine asarray may hand back the same array, and in-place tests
    # must not change the inputs their reference is computed from.
    return eng.asarray(np.array(host))


def nan_out(eng, shape):
    return eng.asarray(poisoned(shape))


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("variant", ops.MATMUL_VARIANTS)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("shape", MATMUL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matmul_matches_float64(eng, rng, variant, trans_a, trans_b, shape):
    m, n, k = shape
    a = rand(rng, *((k, m) if trans_a else (m, k)))
    b = rand(rng, *((n, k) if trans_b else (k, n)))
    out = nan_out(eng, (m, n))
    got = ops.matmul(put(eng, a), put(eng, b), trans_a=trans_a, trans_b=trans_b, out=out, variant=variant)
    assert got is out
    ref = reference.matmul(a, b, trans_a=trans_a, trans_b=trans_b)
    assert_close(eng.to_host(got), ref, what=f"{variant} matmul")


def test_matmul_allocates_when_no_out(eng, rng):
    a, b = rand(rng, 3, 5), rand(rng, 5, 2)
    got = ops.matmul(put(eng, a), put(eng, b))
    assert_close(eng.to_host(got), reference.matmul(a, b))


@pytest.mark.parametrize("shape", ROWS_COLS, ids=lambda s: "x".join(map(str, s)))
def test_bias_relu_and_bias_add(eng, rng, shape):
    x, bias = rand(rng, *shape), rand(rng, shape[1])
    got = ops.bias_add(put(eng, x), put(eng, bias), out=nan_out(eng, shape))
    assert_close(eng.to_host(got), reference.bias_add(x, bias))
    got = ops.bias_relu(put(eng, x), put(eng, bias), out=nan_out(eng, shape))
    assert_close(eng.to_host(got), reference.bias_relu(x, bias))


def test_bias_relu_in_place(eng, rng):
    x, bias = rand(rng, 7, 5), rand(rng, 5)
    dx = put(eng, x)
    ops.bias_relu(dx, put(eng, bias), out=dx)
    assert_close(eng.to_host(dx), reference.bias_relu(x, bias))


@pytest.mark.parametrize("shape", ROWS_COLS, ids=lambda s: "x".join(map(str, s)))
def test_relu_backward(eng, rng, shape):
    grad = rand(rng, *shape)
    act = np.maximum(rand(rng, *shape), 0)  # a ReLU output: about half exact zeros
    got = ops.relu_backward(put(eng, grad), put(eng, act), out=nan_out(eng, shape))
    assert_close(eng.to_host(got), reference.relu_backward(grad, act))


@pytest.mark.parametrize("shape", ROWS_COLS, ids=lambda s: "x".join(map(str, s)))
def test_col_sum(eng, rng, shape):
    x = rand(rng, *shape)
    got = ops.col_sum(put(eng, x), out=nan_out(eng, (shape[1],)))
    assert_close(eng.to_host(got), reference.col_sum(x))


@pytest.mark.parametrize("shape", ROWS_COLS, ids=lambda s: "x".join(map(str, s)))
def test_softmax_cross_entropy(eng, rng, shape):
    rows, classes = shape
    z = rand(rng, rows, classes) * 3
    y = rng.integers(0, classes, rows).astype(np.int32)
    loss, grad = ops.softmax_cross_entropy(put(eng, z), put(eng, y), grad_out=nan_out(eng, shape))
    ref_loss, ref_grad = reference.softmax_cross_entropy(z, y)
    assert np.ndim(eng.to_host(loss)) == 0
    assert abs(float(loss) - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))
    assert_close(eng.to_host(grad), ref_grad, what="softmax-CE gradient")


def test_softmax_cross_entropy_is_stable_for_huge_logits(eng, rng):
    z = (rng.choice([-1e4, 1e4], size=(6, 5)) + rng.standard_normal((6, 5))).astype(np.float32)
    y = rng.integers(0, 5, 6).astype(np.int32)
    loss, grad = ops.softmax_cross_entropy(put(eng, z), put(eng, y))
    ref_loss, ref_grad = reference.softmax_cross_entropy(z, y)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(eng.to_host(grad)))
    assert abs(float(loss) - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))
    assert_close(eng.to_host(grad), ref_grad)


def test_softmax_cross_entropy_keeps_a_small_loss_beside_huge_logits(eng, rng):
    # Every logit near 1e4, where float32's spacing is about 1e-3, but the loss is of order 1:
    # summing it as (m + log s) - z_y would round away three of its digits in every row.
    z = (np.float32(1e4) + rng.standard_normal((6, 5))).astype(np.float32)
    y = rng.integers(0, 5, 6).astype(np.int32)
    loss, _ = ops.softmax_cross_entropy(put(eng, z), put(eng, y))
    ref_loss, _ = reference.softmax_cross_entropy(z, y)
    assert abs(float(loss) - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_sgd_momentum_three_steps(eng, rng, nesterov, weight_decay):
    shape = (13, 7) if not ON_GPU else (1000, 1001)
    p, v = rand(rng, *shape), np.zeros(shape, np.float32)
    dp, dv = put(eng, p), put(eng, v)
    ref_p, ref_v = p, v
    lr, mu = 0.05, 0.9
    for _ in range(3):
        g = rand(rng, *shape)
        dg = put(eng, g)
        ops.sgd_momentum_(dp, dg, dv, lr=lr, momentum=mu, weight_decay=weight_decay, nesterov=nesterov)
        assert_close(eng.to_host(dg), g, tol=0, what="grad (must be left alone)")
        ref_p, ref_v = reference.sgd_momentum(ref_p, g, ref_v, lr=lr, momentum=mu, weight_decay=weight_decay, nesterov=nesterov)
    assert_close(eng.to_host(dp), ref_p, what="param")
    assert_close(eng.to_host(dv), ref_v, what="velocity")


def test_sgd_momentum_on_a_bias_vector(eng, rng):
    p, g, v = rand(rng, 11), rand(rng, 11), np.zeros(11, np.float32)
    dp, dv = put(eng, p), put(eng, v)
    ops.sgd_momentum_(dp, put(eng, g), dv, lr=0.1, momentum=0.9)
    assert_close(eng.to_host(dp), reference.sgd_momentum(p, g, v, lr=0.1, momentum=0.9)[0])


@pytest.mark.parametrize("shape", ROWS_COLS, ids=lambda s: "x".join(map(str, s)))
def test_correct_count(eng, rng, shape):
    rows, classes = shape
    z = rand(rng, rows, classes)
    y = rng.integers(0, classes, rows).astype(np.int32)
    y[: rows // 2] = z[: rows // 2].argmax(axis=1)  # make about half of them right
    assert ops.correct_count(put(eng, z), put(eng, y)) == reference.correct_count(z, y)


def test_correct_count_ties_go_to_the_lowest_index(eng):
    z = np.zeros((3, 4), np.float32)
    y = np.array([0, 1, 3], np.int32)
    assert ops.correct_count(put(eng, z), put(eng, y)) == 1


# --- argument checking -----------------------------------------------------------------------


def test_bad_arguments_name_the_argument(eng, rng):
    a, b = put(eng, rand(rng, 4, 3)), put(eng, rand(rng, 3, 2))
    with pytest.raises(ValueError, match="inner sizes"):
        ops.matmul(a, a)
    with pytest.raises(TypeError, match="b must be float32"):
        ops.matmul(a, put(eng, np.ones((3, 2), np.float64)))
    with pytest.raises(ValueError, match="a must be 2-D"):
        ops.matmul(put(eng, rand(rng, 4)), b)
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.matmul(put(eng, rand(rng, 3, 4)).T, b)
    with pytest.raises(TypeError, match="a must be"):
        ops.matmul([[1.0]], b)
    with pytest.raises(ValueError, match="out must have shape"):
        ops.matmul(a, b, out=put(eng, np.zeros((4, 3), np.float32)))
    with pytest.raises(ValueError, match="variant"):
        ops.matmul(a, b, variant="fast")
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        ops.bias_relu(a, put(eng, rand(rng, 2)))
    with pytest.raises(ValueError, match="act must have shape"):
        ops.relu_backward(a, b)


def test_labels_are_checked(eng, rng):
    z = put(eng, rand(rng, 4, 3))
    with pytest.raises(TypeError, match="labels must be int32"):
        ops.softmax_cross_entropy(z, put(eng, np.array([0, 1, 2, 0], np.int64)))
    if eng.is_device:
        return  # no read-back on the GPU: the kernel makes the loss NaN (the gpu test below)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        ops.softmax_cross_entropy(z, put(eng, np.array([0, 1, 3, 0], np.int32)))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        ops.softmax_cross_entropy(z, put(eng, np.array([0, -1, 2, 0], np.int32)))


@pytest.mark.gpu
def test_unchecked_bad_label_on_the_gpu_is_a_nan_loss(rng):
    eng = rawgpu.use("cuda")
    try:
        z = put(eng, rand(rng, 4, 3))
        loss, grad = ops.softmax_cross_entropy(z, put(eng, np.array([0, 3, 2, -1], np.int32)))
        assert np.isnan(float(loss))
        assert np.isnan(eng.to_host(grad)[[1, 3]]).all() and np.isfinite(eng.to_host(grad)[[0, 2]]).all()
    finally:
        rawgpu.use("numpy")
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        ops.correct_count(z, put(eng, np.array([0, 1], np.int32)))


def test_hyperparameters_are_checked(eng, rng):
    p = put(eng, rand(rng, 3))
    with pytest.raises(ValueError, match="lr must be"):
        ops.sgd_momentum_(p, p.copy(), p.copy(), lr=0.0, momentum=0.9)
    with pytest.raises(ValueError, match="momentum must be"):
        ops.sgd_momentum_(p, p.copy(), p.copy(), lr=0.1, momentum=-1)
    with pytest.raises(TypeError, match="weight_decay must be a number"):
        ops.sgd_momentum_(p, p.copy(), p.copy(), lr=0.1, momentum=0.9, weight_decay="x")
    with pytest.raises(ValueError, match="velocity must have shape"):
        ops.sgd_momentum_(p, p.copy(), put(eng, rand(rng, 4)), lr=0.1, momentum=0.9)


# --- the fused ops of the training step, at the op boundary --------------------------------------
# The step's launchers trust these checks (kernel_backend.py launches without re-checking), so
# each op is checked here on every engine: values against the float64 reference at odd shapes
# with poisoned outputs, and the one-line refusals.

FUSED_SHAPES = [(1, 1, 1, 1), (5, 7, 3, 4), (9, 2, 6, 11)]  # (B, D, H, C): none a tile multiple


@pytest.mark.parametrize("b_, d_, h_, c_", FUSED_SHAPES)
def test_fused_ops_match_float64(eng, rng, b_, d_, h_, c_):
    x, w1, b1 = rand(rng, b_, d_), rand(rng, d_, h_), rand(rng, h_)
    w2, b2, labels = rand(rng, h_, c_), rand(rng, c_), rng.integers(0, c_, b_).astype(np.int32)
    act = ops.linear_relu(put(eng, x), put(eng, w1), put(eng, b1), out=nan_out(eng, (b_, h_)))
    assert_close(eng.to_host(act), reference.linear_relu(x, w1, b1), what="linear_relu")
    a = np.maximum(rand(rng, b_, h_), 0)  # a ReLU output with zeros in it, for the mask below
    z, dz = nan_out(eng, (b_, c_)), nan_out(eng, (b_, c_))
    loss = ops.linear_softmax_ce(put(eng, a), put(eng, w2), put(eng, b2), put(eng, labels), logits_out=z, grad_out=dz)
    ref_z, ref_loss, ref_dz = reference.linear_softmax_ce(a, w2, b2, labels)
    assert abs(float(loss) - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))
    assert_close(eng.to_host(z), ref_z, what="z")
    assert_close(eng.to_host(dz), ref_dz, what="dz")
    d = rand(rng, b_, c_)
    dh = ops.linear_backward_relu(put(eng, d), put(eng, w2), put(eng, a), out=nan_out(eng, (b_, h_)))
    assert_close(eng.to_host(dh), reference.linear_backward_relu(d, w2, a), what="linear_backward_relu")
    dw, db = ops.weight_grad(put(eng, a), put(eng, d), w_out=nan_out(eng, (h_, c_)), b_out=nan_out(eng, (c_,)))
    ref_dw, ref_db = reference.weight_grad(a, d)
    assert_close(eng.to_host(dw), ref_dw, what="dW")
    assert_close(eng.to_host(db), ref_db, what="db")


def test_fused_ops_refuse_bad_arguments_in_one_line(eng, rng):
    x, w, b = put(eng, rand(rng, 4, 3)), put(eng, rand(rng, 3, 5)), put(eng, rand(rng, 5))
    out = put(eng, rand(rng, 4, 5))
    cases = [
        (lambda: ops.linear_relu(x, w, b, out=put(eng, rand(rng, 4, 6))), ValueError, "out must have shape (4, 5)"),
        (lambda: ops.linear_relu(x, put(eng, rand(rng, 2, 5)), b, out=out), ValueError, "w must have 3 rows"),
        (lambda: ops.linear_relu(x, w, put(eng, rand(rng, 5).astype(np.float64)), out=out), TypeError, "b must be float32"),
        (lambda: ops.linear_relu(put(eng, rand(rng, 3, 4)).T, w, b, out=out), ValueError, "x must be C-contiguous"),
        (lambda: ops.linear_backward_relu(out, w, x, out=x), ValueError, "out must not be act"),
        (lambda: ops.weight_grad(put(eng, rand(rng, 4, 0)), out, w_out=eng.empty((0, 5)), b_out=eng.empty((5,))),
         ValueError, "inp must have at least one column"),
        (lambda: ops.linear_softmax_ce(x, w, b, put(eng, np.zeros(3, np.int32)), logits_out=out, grad_out=out),
         ValueError, "labels must have shape (4,)"),
        (lambda: ops.linear_softmax_ce(x, w, b, put(eng, np.zeros(4, np.int32)), logits_out=out, grad_out=out, stats=object()),
         TypeError, "stats must be an ops.StepStats"),
    ]
    for call, kind, message in cases:
        with pytest.raises(kind) as exc:
            call()
        assert message in str(exc.value) and "\n" not in str(exc.value), (message, str(exc.value))
