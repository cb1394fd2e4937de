"""A lean training step: six kernel launches, no read back to the host, counted in the simulator.

On a GPU, one step of 784-128-10 at batch 128 is a few microseconds of work; what it costs is
launches and host synchronisations. Both can be counted without a GPU: the simulator runs the very
kernels the GPU would, one launch at a time, and every read of device memory goes through the
engine's ``to_host``.
"""

import numpy as np
import pytest

import rawgpu
from rawgpu import reference
from rawgpu.engine import Engine
from rawgpu.train import TrainConfig, train

pytestmark = pytest.mark.sim


@pytest.fixture
def sim():
    eng = rawgpu.use("sim")
    yield eng
    rawgpu.use("numpy")


@pytest.fixture
def launches(monkeypatch):
    """The names of the kernels launched (not device functions) while the test runs."""
    from numba.cuda.simulator import kernel as simkernel

    names = []
    original = simkernel.FakeCUDAKernel.__call__

    def counting(self, *args):
        if not self._device and not simkernel._kernel_context:
            names.append(self.fn.__name__)
        return original(self, *args)

    monkeypatch.setattr(simkernel.FakeCUDAKernel, "__call__", counting)
    return names


@pytest.fixture
def host_reads(monkeypatch):
    """How often device memory is read back to the host (or the host waits for the device)."""
    calls = []
    to_host, synchronize = Engine.to_host, Engine.synchronize
    monkeypatch.setattr(Engine, "to_host", lambda self, arr: calls.append("to_host") or to_host(self, arr))
    monkeypatch.setattr(Engine, "synchronize", lambda self: calls.append("synchronize") or synchronize(self))
    return calls


def _batch(eng, rng, b, d, c):
    x = eng.asarray(rng.standard_normal((b, d), dtype=np.float32))
    y = eng.asarray(rng.integers(0, c, b).astype(np.int32))
    return x, y


def test_a_training_step_is_six_launches_and_no_host_read(sim, rng, launches, host_reads):
    model = rawgpu.TwoLayerMLP(9, 7, 3, seed=1)
    opt = rawgpu.SGD(model, lr=0.1, momentum=0.9)
    x, y = _batch(sim, rng, 5, 9, 3)
    model.loss_and_grads(x, y)  # first step: buffers are made (allocation is not a launch)
    opt.step()
    launches.clear()
    host_reads.clear()
    for _ in range(3):
        model.loss_and_grads(x, y)
        opt.step()
    assert len(launches) == 3 * 6, launches
    assert host_reads == []
    assert model.stats.read()["steps"] == 4  # counted on the device


def test_the_fused_step_matches_the_float64_reference(sim, rng):
    model = rawgpu.TwoLayerMLP(11, 6, 4, seed=2)
    x, y = _batch(sim, rng, 7, 11, 4)
    params = {k: sim.to_host(v).copy() for k, v in model.params.items()}
    loss = model.loss_and_grads(x, y)
    ref_loss, ref_grads = reference.mlp_loss_and_grads(sim.to_host(x), sim.to_host(y), params)
    assert abs(float(loss) - ref_loss) <= 1e-5 * abs(ref_loss)
    for name, g in ref_grads.items():
        got = sim.to_host(model.grads[name])
        assert np.linalg.norm(got - g) <= 1e-5 * max(np.linalg.norm(g), 1e-30), name


def test_an_epoch_reads_the_device_only_every_log_every_steps(sim, rng, host_reads, monkeypatch):
    """Zero host reads per step: the loop looks at the device's sums every N steps and at the end."""
    from types import SimpleNamespace

    from rawgpu.optim import SGD

    n, d, c = 12, 5, 3  # 4 steps of 3 an epoch
    data = SimpleNamespace(
        train_images=rng.integers(0, 256, (n, d), dtype=np.uint8), train_labels=rng.integers(0, c, n).astype(np.uint8),
        test_images=rng.integers(0, 256, (6, d), dtype=np.uint8), test_labels=rng.integers(0, c, 6).astype(np.uint8),
        num_classes=c,
    )
    real_step = SGD.step
    monkeypatch.setattr(SGD, "step", lambda self: host_reads.append("step") or real_step(self))
    train(data, TrainConfig(epochs=2, batch_size=3, hidden=4, lr=0.05), progress=False, log=lambda m: None, log_every=3)
    # What was read between one optimizer step and the next: StepStats.read (two arrays) after
    # global steps 3 and 6 (--log-every 3) and at each epoch's end (steps 4 and 8), nothing after
    # the others. After step 4 come the end of epoch 1's reads too (its weights checked finite:
    # four arrays).
    marks = [i for i, call in enumerate(host_reads) if call == "step"]
    between = [host_reads[a + 1 : b].count("to_host") for a, b in zip(marks, marks[1:])]
    assert len(marks) == 8
    assert between == [0, 0, 2, 2 + 4, 0, 2, 0], between
