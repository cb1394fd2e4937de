"""The CNN's ops (conv2d, its two gradients, 2x2 max-pool and its backward) on the NumPy engine
and this process's kernel engine, against rawgpu/reference.py in float64, outputs poisoned with
NaN first; and their argument checks, one line each."""

import numpy as np
import pytest
from conftest import KERNEL_ENGINE
from helpers import assert_close, poisoned

import rawgpu
from rawgpu import ops, reference

ON_GPU = KERNEL_ENGINE == "cuda"
# (N, C, H, W, O, K, pad): odd channels and sizes, 'same' padding and none; the seed's layer on a GPU.
CASES = [(1, 1, 1, 1, 1, 1, 0), (2, 3, 5, 4, 5, 3, 1), (3, 2, 6, 5, 3, 5, 2)]
if ON_GPU:
    CASES += [(64, 3, 32, 32, 32, 5, 2), (7, 33, 9, 11, 65, 5, 2)]
IDS = ["N{}C{}H{}W{}O{}K{}p{}".format(*c) for c in CASES]


@pytest.fixture(params=["numpy", KERNEL_ENGINE])
def eng(request):
    engine = rawgpu.use(request.param)
    yield engine
    rawgpu.use("numpy")


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("relu", [False, True], ids=["bias", "relu"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conv2d_forward_and_gradients(eng, rng, case, relu):
    n, c, h, w, o, k, pad = case
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    x, wt, b, dy = rand(rng, n, c, h, w), rand(rng, o, c, k, k), rand(rng, o), rand(rng, n, o, ho, wo)
    dev = {name: eng.asarray(a.copy()) for name, a in (("x", x), ("w", wt), ("b", b), ("dy", dy))}
    out = ops.conv2d(dev["x"], dev["w"], dev["b"], pad=pad, relu=relu, out=eng.asarray(poisoned((n, o, ho, wo))))
    ref = reference.conv2d(x, wt, b, pad=pad)
    assert_close(eng.to_host(out), np.maximum(ref, 0) if relu else ref, what="conv2d")
    dx = ops.conv2d_input_grad(dev["dy"], dev["w"], pad=pad, out=eng.asarray(poisoned(x.shape)))
    assert_close(eng.to_host(dx), reference.conv2d_input_grad(dy, wt, pad=pad), what="conv2d input grad")
    dw, db = ops.conv2d_weight_grad(dev["x"], dev["dy"], pad=pad, w_out=eng.asarray(poisoned(wt.shape)), b_out=eng.asarray(poisoned(b.shape)))
    ref_dw, ref_db = reference.conv2d_weight_grad(x, dy, k, pad=pad)
    assert_close(eng.to_host(dw), ref_dw, what="conv2d weight grad")
    assert_close(eng.to_host(db), ref_db, what="conv2d bias grad")
    assert np.array_equal(eng.to_host(dev["x"]), x) and np.array_equal(eng.to_host(dev["dy"]), dy)  # inputs untouched


@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (2, 3, 5, 4), (3, 2, 7, 6)] + ([(64, 32, 32, 32)] if ON_GPU else []),
                         ids=lambda s: "x".join(map(str, s)))
def test_maxpool_forward_and_backward(eng, rng, shape):
    x = rand(rng, *shape)
    out, arg = ops.maxpool2x2(eng.asarray(x.copy()))
    ref_out, ref_arg = reference.maxpool2x2(x)
    np.testing.assert_array_equal(eng.to_host(out), ref_out.astype(np.float32))
    np.testing.assert_array_equal(eng.to_host(arg), ref_arg)
    dy = rand(rng, *ref_out.shape)
    dx = ops.maxpool2x2_backward(eng.asarray(dy), arg, out=eng.asarray(poisoned(shape)))
    np.testing.assert_array_equal(eng.to_host(dx), reference.maxpool2x2_backward(dy, ref_arg, shape).astype(np.float32))


def test_maxpool_passes_nan_on_and_breaks_ties_first(eng):
    x = np.array([[[[1.0, 1.0, 0.0, np.nan], [1.0, 0.0, 5.0, 0.0]]]], np.float32)
    out, arg = ops.maxpool2x2(eng.asarray(x))
    assert eng.to_host(arg).tolist() == [[[[0, 3]]]]
    assert np.isnan(eng.to_host(out)[0, 0, 0, 1])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda z: ops.conv2d(z((1, 3, 5, 5)), z((4, 2, 3, 3)), z((4,)), pad=1), "w must have 3 input channels"),
        (lambda z: ops.conv2d(z((1, 3, 5, 5)), z((4, 3, 3, 3)), z((4,)), pad=3), r"pad must be an integer in 0\.\.2"),
        (lambda z: ops.conv2d(z((1, 3, 5, 5)), z((4, 3, 3, 3)), z((4,)), pad=True), "pad must be an integer"),
        (lambda z: ops.conv2d(z((1, 3, 5, 5)), z((4, 3, 3, 3)), z((5,)), pad=1), r"b must have shape \(4,\)"),
        (lambda z: ops.conv2d(z((1, 3, 2, 2)), z((4, 3, 5, 5)), z((4,)), pad=0), "smaller than the 5x5 kernel"),
        (lambda z: ops.conv2d(z((3, 5, 5)), z((4, 3, 3, 3)), z((4,)), pad=1), "x must be 4-D"),
        (lambda z: ops.conv2d_input_grad(z((1, 4, 4, 4)), z((4, 3, 3, 3)), pad=1, out=z((1, 3, 5, 5))), r"dy must have shape \(1, 4, 5, 5\)"),
        (lambda z: ops.conv2d_weight_grad(z((1, 3, 5, 5)), z((1, 4, 5, 5)), pad=1, w_out=z((4, 3, 3, 3)), b_out=z((3,))), "b_out must have shape"),
        (lambda z: ops.maxpool2x2(z((1, 1, 1, 5))), "at least 2x2"),
        (lambda z: ops.maxpool2x2_backward(z((1, 1, 2, 2)), z((1, 1, 2, 2)), out=z((1, 1, 4, 4))), "argmax must be int32"),
    ],
)
def test_bad_arguments_get_one_line(call, match):
    rawgpu.use("numpy")
    with pytest.raises((ValueError, TypeError), match=match):
        call(lambda shape: np.zeros(shape, np.float32))


# The numpy engine's two im2col layouts, channels last (inputs of CHANNELS_LAST_MIN channels or
# more) and channels first (fewer channels), both in chunks of images. Each case is run twice
# through the same scratch buffers, with fresh values, and with a chunk budget of two images' im2col,
# so that the batch of 5 goes through as 2 + 2 + 1 (a partial last chunk; the weight gradient sums them).
@pytest.mark.parametrize("c, o, pad", [(9, 8, 2), (8, 3, 0), (3, 9, 1), (2, 2, 2)], ids=["wide", "wide-in", "wide-out", "narrow"])
def test_numpy_conv_layouts_and_chunks(rng, monkeypatch, c, o, pad):
    from rawgpu.backends import numpy_backend

    rawgpu.use("numpy")
    n, h, w, k = 5, 6, 5, 3
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1

    def chunks_of_two(row_floats, rows):  # im2col bytes per image: rows of K K channels floats
        monkeypatch.setattr(numpy_backend, "CHUNK_BYTES", 2 * 4 * row_floats * rows)

    for _ in range(2):
        x, wt, b, dy = rand(rng, n, c, h, w), rand(rng, o, c, k, k), rand(rng, o), rand(rng, n, o, ho, wo)
        chunks_of_two(k * k * c, ho * wo)
        out = ops.conv2d(x, wt, b, pad=pad, out=poisoned((n, o, ho, wo)))
        assert_close(out, reference.conv2d(x, wt, b, pad=pad), what="conv2d")
        dw, db = ops.conv2d_weight_grad(x, dy, pad=pad, w_out=poisoned(wt.shape), b_out=poisoned(b.shape))
        ref_dw, ref_db = reference.conv2d_weight_grad(x, dy, k, pad=pad)
        assert_close(dw, ref_dw, what="conv2d weight grad")
        assert_close(db, ref_db, what="conv2d bias grad")
        chunks_of_two(k * k * o, h * w)  # the input gradient's im2col is dy's
        dx = ops.conv2d_input_grad(dy, wt, pad=pad, out=poisoned(x.shape))
        assert_close(dx, reference.conv2d_input_grad(dy, wt, pad=pad), what="conv2d input grad")
