"""The float64 references of the CNN's ops (rawgpu/reference.py), the oracle every conv and
pool kernel is checked against, checked themselves two ways: by central finite differences of
``L = sum(out * g)`` for a random ``g`` (so ``dL/dout = g``), and against PyTorch's own conv2d,
max_pool2d and autograd where torch is installed. Odd channels, odd image sizes, padding 0..K-1.
"""

import numpy as np
import pytest

from rawgpu import reference

# (N, C, H, W, O, K, pad): odd everything, 'same' padding and none, a 1x1 kernel.
CASES = [(1, 1, 3, 3, 1, 1, 0), (2, 3, 5, 4, 2, 3, 1), (3, 2, 4, 5, 3, 3, 0), (1, 3, 6, 5, 2, 5, 2)]
IDS = ["N{}C{}H{}W{}O{}K{}p{}".format(*c) for c in CASES]


def numeric_grad(f, x, eps=1e-6):
    """Central differences of the scalar ``f()`` with respect to every element of ``x`` (in place)."""
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        saved = x[idx]
        x[idx] = saved + eps
        up = f()
        x[idx] = saved - eps
        down = f()
        x[idx] = saved
        out[idx] = (up - down) / (2 * eps)
    return out


def conv_case(rng, n, c, h, w, o, k, pad):
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((o, c, k, k))
    b = rng.standard_normal(o)
    g = rng.standard_normal((n, o, h + 2 * pad - k + 1, w + 2 * pad - k + 1))
    return x, wt, b, g


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conv2d_gradients_match_finite_differences(rng, case):
    x, w, b, g = conv_case(rng, *case)
    pad = case[-1]
    loss = lambda: float((reference.conv2d(x, w, b, pad=pad) * g).sum())  # noqa: E731
    np.testing.assert_allclose(reference.conv2d_input_grad(g, w, pad=pad), numeric_grad(loss, x), rtol=1e-6, atol=1e-7)
    dw, db = reference.conv2d_weight_grad(x, g, w.shape[2], pad=pad)
    np.testing.assert_allclose(dw, numeric_grad(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, numeric_grad(loss, b), rtol=1e-6, atol=1e-7)


def test_conv2d_input_grad_refuses_too_much_padding():
    with pytest.raises(ValueError, match="pad must be at most"):
        reference.conv2d_input_grad(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), pad=3)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conv2d_matches_pytorch(rng, case):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: the autograd oracle is skipped")
    x, w, b, g = conv_case(rng, *case)
    pad = case[-1]
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    out = torch.nn.functional.conv2d(tx, tw, tb, padding=pad)
    np.testing.assert_allclose(reference.conv2d(x, w, b, pad=pad), out.detach().numpy(), rtol=1e-10, atol=1e-12)
    out.backward(torch.tensor(g))
    np.testing.assert_allclose(reference.conv2d_input_grad(g, w, pad=pad), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    dw, db = reference.conv2d_weight_grad(x, g, w.shape[2], pad=pad)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-10, atol=1e-12)


POOL_SHAPES = [(1, 1, 2, 2), (2, 3, 5, 4), (3, 2, 7, 7)]


@pytest.mark.parametrize("shape", POOL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_maxpool_forward_backward(rng, shape):
    x = rng.standard_normal(shape)
    out, arg = reference.maxpool2x2(x)
    n, c, h, w = shape
    assert out.shape == arg.shape == (n, c, h // 2, w // 2) and arg.dtype == np.int32
    for idx in np.ndindex(out.shape):  # the slow, obvious way
        window = x[idx[0], idx[1], 2 * idx[2] : 2 * idx[2] + 2, 2 * idx[3] : 2 * idx[3] + 2]
        assert out[idx] == window.max()
        assert x[idx[0], idx[1]].ravel()[arg[idx]] == window.max()
    g = rng.standard_normal(out.shape)
    loss = lambda: float((reference.maxpool2x2(x)[0] * g).sum())  # noqa: E731  (no ties: random data)
    np.testing.assert_allclose(reference.maxpool2x2_backward(g, arg, shape), numeric_grad(loss, x), rtol=1e-6, atol=1e-7)


def test_maxpool_ties_go_to_the_first_and_nan_wins():
    x = np.array([[[[1.0, 1.0, 0.0, np.nan], [1.0, 0.0, 5.0, 0.0]]]])
    out, arg = reference.maxpool2x2(x)
    assert out[0, 0, 0, 0] == 1.0 and arg[0, 0, 0, 0] == 0
    assert np.isnan(out[0, 0, 0, 1]) and arg[0, 0, 0, 1] == 3


@pytest.mark.parametrize("shape", POOL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_maxpool_matches_pytorch(rng, shape):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: the autograd oracle is skipped")
    x = rng.standard_normal(shape)
    tx = torch.tensor(x, requires_grad=True)
    out, arg = torch.nn.functional.max_pool2d(tx, 2, return_indices=True)
    ref_out, ref_arg = reference.maxpool2x2(x)
    np.testing.assert_array_equal(ref_out, out.detach().numpy())
    np.testing.assert_array_equal(ref_arg, arg.numpy())
    g = rng.standard_normal(ref_out.shape)
    out.backward(torch.tensor(g))
    np.testing.assert_array_equal(reference.maxpool2x2_backward(g, ref_arg, shape), tx.grad.numpy())
