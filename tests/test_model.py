"""The network's hand-derived backward pass, its optimizer, and the engines' agreement.

The gradients are checked two ways: against central finite differences of the float64 loss of
rawgpu/reference.py, and against PyTorch autograd on the same weights. The optimizer is checked
against torch.optim.SGD (a 25-step trajectory on every engine), and the engines against each
other, step by step.
"""

import numpy as np
import pytest
from conftest import KERNEL_ENGINE
from helpers import assert_close

import rawgpu
from rawgpu import reference
from rawgpu.model import PARAM_NAMES


@pytest.fixture(autouse=True)
def numpy_engine():
    rawgpu.use("numpy")
    yield
    rawgpu.use("numpy")


def batch(rng, rows, features, classes):
    x = rng.standard_normal((rows, features)).astype(np.float32)
    y = rng.integers(0, classes, rows).astype(np.int32)
    return x, y


def loss64(params, x, y):
    """The network's float64 loss (rawgpu/reference.py): what the finite differences are taken of."""
    return reference.mlp_loss_and_grads(x, y, params)[0]


def torch_loss(torch, t, x, y):
    """The same network in PyTorch (float64), on the parameters ``t``: the autograd oracle."""
    z = torch.relu(torch.tensor(x, dtype=torch.float64) @ t["W1"] + t["b1"]) @ t["W2"] + t["b2"]
    return torch.nn.functional.cross_entropy(z, torch.tensor(y, dtype=torch.long))


def test_init_is_pytorch_linear_default_and_seeded():
    m = rawgpu.TwoLayerMLP(50, 20, 4, seed=3)
    state = m.state_dict()
    assert set(state) == set(PARAM_NAMES)
    assert state["W1"].shape == (50, 20) and state["b1"].shape == (20,)
    assert state["W2"].shape == (20, 4) and state["b2"].shape == (4,)
    for w, b, fan_in in (("W1", "b1", 50), ("W2", "b2", 20)):
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(state[w]).max() <= bound and np.abs(state[b]).max() <= bound
        assert np.abs(state[w]).max() > 0.9 * bound  # really spread over the range
    again = rawgpu.TwoLayerMLP(50, 20, 4, seed=3).state_dict()
    other = rawgpu.TwoLayerMLP(50, 20, 4, seed=4).state_dict()
    assert all(np.array_equal(state[k], again[k]) for k in PARAM_NAMES)
    assert not np.array_equal(state["W1"], other["W1"])


def test_gradients_match_central_finite_differences(rng):
    m = rawgpu.TwoLayerMLP(7, 6, 4, seed=int(rng.integers(1 << 30)))
    x, y = batch(rng, 5, 7, 4)
    loss = m.loss_and_grads(x, y)
    params = {k: v.astype(np.float64) for k, v in m.state_dict().items()}
    assert abs(loss - loss64(params, x, y)) < 1e-5
    eps = 1e-6
    for name in PARAM_NAMES:
        numeric = np.zeros_like(params[name])
        for idx in np.ndindex(params[name].shape):
            saved = params[name][idx]
            params[name][idx] = saved + eps
            up = loss64(params, x, y)
            params[name][idx] = saved - eps
            down = loss64(params, x, y)
            params[name][idx] = saved
            numeric[idx] = (up - down) / (2 * eps)
        # float32 analytic gradient against a float64 numeric one
        assert_close(m.grads[name], numeric, tol=1e-4, what=f"d loss / d {name}")


def test_gradients_match_pytorch_autograd(rng):
    torch = pytest.importorskip("torch", reason="PyTorch is the autograd oracle; pip install torch")
    m = rawgpu.TwoLayerMLP(30, 16, 5, seed=1)
    x, y = batch(rng, 9, 30, 5)
    loss = m.loss_and_grads(x, y)
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in m.state_dict().items()}
    ref = torch_loss(torch, t, x, y)
    ref.backward()
    assert abs(loss - ref.item()) <= 1e-5 * abs(ref.item())
    for name in PARAM_NAMES:
        assert_close(m.grads[name], t[name].grad.numpy(), what=f"d loss / d {name}")


@pytest.mark.parametrize("nesterov,weight_decay", [(False, 0.0), (True, 5e-4)])
def test_training_matches_torch_optim_sgd(rng, nesterov, weight_decay):
    torch = pytest.importorskip("torch", reason="PyTorch is the optimizer oracle; pip install torch")
    m = rawgpu.TwoLayerMLP(12, 10, 3, seed=2)
    opt = rawgpu.SGD(m, lr=0.1, momentum=0.9, weight_decay=weight_decay, nesterov=nesterov)
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in m.state_dict().items()}
    topt = torch.optim.SGD(list(t.values()), lr=0.1, momentum=0.9, weight_decay=weight_decay, nesterov=nesterov)
    for _ in range(5):
        x, y = batch(rng, 8, 12, 3)
        m.loss_and_grads(x, y)
        opt.step()
        topt.zero_grad()
        torch_loss(torch, t, x, y).backward()
        topt.step()
    state = m.state_dict()
    for name in PARAM_NAMES:
        assert_close(state[name], t[name].detach().numpy(), tol=1e-5, what=name)


@pytest.mark.parametrize("engine_name", ["numpy", KERNEL_ENGINE])
def test_25_step_trajectory_matches_torch_optim_sgd(rng, engine_name):
    """25 steps of SGD with momentum, a fresh batch each step: rawgpu in float32 on this engine
    and torch.optim.SGD in float64, from the same initial weights, agree on every step's loss and
    on the final weights. Tiny shapes (one tile per matmul in the simulator, where every launch
    costs about 0.1 s however small it is)."""
    torch = pytest.importorskip("torch", reason="PyTorch is the optimizer oracle; pip install torch")
    eng = rawgpu.use(engine_name)
    m = rawgpu.TwoLayerMLP(4, 4, 3, seed=11)
    opt = rawgpu.SGD(m, lr=0.1, momentum=0.9)
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in m.state_dict().items()}
    topt = torch.optim.SGD(list(t.values()), lr=0.1, momentum=0.9)
    losses, ref_losses = [], []
    for _ in range(25):
        x, y = batch(rng, 2, 4, 3)
        losses.append(float(m.loss_and_grads(eng.asarray(x), eng.asarray(y))))  # read now: the buffer is reused
        opt.step()
        topt.zero_grad()
        ref = torch_loss(torch, t, x, y)
        ref.backward()
        topt.step()
        ref_losses.append(ref.item())
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    state = m.state_dict()
    for name in PARAM_NAMES:
        assert_close(state[name], t[name].detach().numpy(), tol=1e-5, what=f"{name} after 25 steps")


def test_engines_agree_step_by_step(rng):
    """numpy and the kernel engine: same seed, same batches, same losses and weights."""
    x, y = batch(rng, 6, 9, 4)
    losses, states = {}, {}
    for name in ("numpy", KERNEL_ENGINE):
        eng = rawgpu.use(name)
        m = rawgpu.TwoLayerMLP(9, 5, 4, seed=7)
        opt = rawgpu.SGD(m, lr=0.2, momentum=0.9)
        dx, dy = eng.asarray(x), eng.asarray(y)
        losses[name] = []
        for _ in range(3):
            losses[name].append(float(m.loss_and_grads(dx, dy)))  # read now: the buffer is reused
            opt.step()
        states[name] = m.state_dict()
    np.testing.assert_allclose(losses["numpy"], losses[KERNEL_ENGINE], rtol=1e-5)
    for p in PARAM_NAMES:
        assert_close(states[KERNEL_ENGINE][p], states["numpy"][p], tol=1e-5, what=p)


def test_forward_matches_reference_and_evaluate(rng):
    m = rawgpu.TwoLayerMLP(8, 6, 3, seed=0)
    x, y = batch(rng, 10, 8, 3)
    p = m.state_dict()
    ref, ref_loss, _ = reference.linear_softmax_ce(reference.linear_relu(x, p["W1"], p["b1"]), p["W2"], p["b2"], y)
    assert_close(m.forward(x), ref)
    loss, acc = m.evaluate(x, y, batch_size=3)
    assert abs(loss - ref_loss) < 1e-5
    assert acc == reference.correct_count(ref, y) / len(y)


def test_state_dict_round_trip_and_shape_check():
    a, b = rawgpu.TwoLayerMLP(8, 6, 3, seed=0), rawgpu.TwoLayerMLP(8, 6, 3, seed=1)
    b.load_state_dict(a.state_dict())
    assert all(np.array_equal(a.state_dict()[k], b.state_dict()[k]) for k in PARAM_NAMES)
    with pytest.raises(ValueError, match=r"W1 has shape \(8, 7\)"):
        rawgpu.TwoLayerMLP(8, 6, 3).load_state_dict(rawgpu.TwoLayerMLP(8, 7, 3).state_dict())
    with pytest.raises(ValueError, match="missing b2"):
        b.load_state_dict({k: v for k, v in a.state_dict().items() if k != "b2"})


def test_bad_construction_is_refused():
    with pytest.raises(ValueError, match="hidden must be a positive integer"):
        rawgpu.TwoLayerMLP(8, 0, 3)
    with pytest.raises(ValueError, match="lr must be"):
        rawgpu.SGD(rawgpu.TwoLayerMLP(8, 6, 3), lr=-1)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 8\)"):
        rawgpu.TwoLayerMLP(8, 6, 3).forward(np.zeros((2, 5), np.float32))
