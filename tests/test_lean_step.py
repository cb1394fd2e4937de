"""A lean training step: six kernel launches, no read back to the host, counted in the simulator.

On a GPU, one step of 784-128-10 at batch 128 is a few microseconds of work; what it costs is
launches and host synchronisations. Both can be counted without a GPU: the simulator runs the very
kernels the GPU would, one launch at a time, and every read of device memory goes through the
engine's ``to_host``.
"""

import numpy as np
import pytest

import rawgpu
from rawgpu import checkpoint as ckpt
from rawgpu import reference
from rawgpu.engine import Engine
from rawgpu.train import TrainConfig, train

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


@pytest.mark.sim
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


@pytest.mark.sim
def test_the_call_path_is_model_ops_launcher_kernel(sim, rng, monkeypatch):
    """train -> model -> ops -> launcher -> kernel: from the model down to each kernel launch, a
    step passes through the op layer, the engine's launcher and the kept launch, nothing else."""
    import traceback

    from numba.cuda.simulator import kernel as simkernel

    model = rawgpu.TwoLayerMLP(9, 7, 3, seed=1)
    opt = rawgpu.SGD(model, lr=0.1, momentum=0.9)
    x, y = _batch(sim, rng, 5, 9, 3)
    model.loss_and_grads(x, y)  # the first step works the launches out
    opt.step()
    paths, original = [], simkernel.FakeCUDAKernel.__call__

    def recording(self, *args):
        if not self._device and not simkernel._kernel_context:
            frames = traceback.extract_stack()[:-1]
            top = max(i for i, f in enumerate(frames) if f.filename.endswith(("rawgpu/model.py", "rawgpu/optim.py")))
            paths.append([f"{f.filename.split('/')[-2]}/{f.filename.split('/')[-1]}" for f in frames[top + 1 :]])
        return original(self, *args)

    monkeypatch.setattr(simkernel.FakeCUDAKernel, "__call__", recording)
    model.loss_and_grads(x, y)
    opt.step()
    assert len(paths) == 6
    for path in paths:
        # Each module once, in this order (a module may take more than one frame).
        modules = [m for i, m in enumerate(path) if i == 0 or path[i - 1] != m]
        assert modules == ["rawgpu/ops.py", "backends/kernel_backend.py", "kernels/_launch.py"], path


@pytest.mark.sim
def test_launches_are_worked_out_once_per_shape(sim, rng, monkeypatch):
    from rawgpu.kernels import fused, optimizer

    planned = []
    for module, name in ((fused, "product_launch"), (fused, "softmax_ce_launch"), (optimizer, "sgd_launch")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, _name=name, **k: planned.append(_name) or _real(*a, **k))
    model = rawgpu.TwoLayerMLP(9, 7, 3, seed=1)
    opt = rawgpu.SGD(model, lr=0.1, momentum=0.9)
    x, y = _batch(sim, rng, 5, 9, 3)
    for _ in range(3):
        model.loss_and_grads(x, y)
        opt.step()
    # Four fused matmuls with four output shapes, the loss, SGD: six plans for three steps.
    assert sorted(planned) == sorted(["product_launch"] * 4 + ["softmax_ce_launch", "sgd_launch"]), planned
    x2, y2 = _batch(sim, rng, 4, 9, 3)  # another batch size: the batch-shaped launches again
    model.loss_and_grads(x2, y2)
    opt.step()
    assert planned[6:] == ["product_launch", "softmax_ce_launch", "product_launch"], planned


@pytest.mark.sim
def test_a_step_does_not_check_the_hyperparameters_again(sim, rng, monkeypatch):
    from rawgpu import ops

    model = rawgpu.TwoLayerMLP(9, 7, 3, seed=1)
    opt = rawgpu.SGD(model, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    checks = []
    real = ops._hyper
    monkeypatch.setattr(ops, "_hyper", lambda *a, **k: checks.append(a[0]) or real(*a, **k))
    x, y = _batch(sim, rng, 5, 9, 3)
    model.loss_and_grads(x, y)
    opt.step()
    assert checks == []
    with pytest.raises(TypeError, match="not both"):
        ops.sgd_momentum_(model.flat_params, model.flat_grads, opt.flat_velocity, opt.settings, lr=0.1)
    with pytest.raises(TypeError, match="ops.sgd_settings"):
        ops.sgd_momentum_(model.flat_params, model.flat_grads, opt.flat_velocity, (0.1, 0.9, 0.0, False))
    with pytest.raises(TypeError, match="nesterov must be True or False"):
        ops.sgd_settings(0.1, 0.9, nesterov="no")


def test_changing_a_hyperparameter_checks_it_once_and_takes_effect():
    """A schedule that sets ``opt.lr`` must not be ignored by a step that reuses checked settings."""
    rawgpu.use("numpy")
    model = rawgpu.TwoLayerMLP(3, 2, 2, seed=0)
    opt = rawgpu.SGD(model, lr=0.1, momentum=0.0)
    opt.lr = 0.5
    assert opt.lr == 0.5 and opt.settings.lr == 0.5 and opt.settings.momentum == 0.0
    model.flat_grads[...] = 1.0
    before = model.flat_params.copy()
    opt.step()
    assert np.allclose(before - model.flat_params, 0.5)  # v = g = 1, p -= lr * v
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        opt.lr = -1.0
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        opt.nesterov = True
    assert opt.settings == (0.5, 0.0, 0.0, False)  # a refused change leaves the settings as they were


@pytest.mark.sim
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


@pytest.mark.sim
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


# --- CUDA graphs: the replay logic without a GPU (a stand-in stream), and bit-for-bit on a GPU ----


class _FakeStream:
    """Records what the graph code asks of a CuPy stream; capture 'records' the calls made."""

    def __init__(self, fail_at=None):
        self.fail_at, self.capturing, self.events = fail_at, False, []

    def begin_capture(self):
        if self.fail_at == "begin":
            raise RuntimeError("cudaErrorStreamCaptureUnsupported: operation not permitted when stream is capturing")
        self.capturing = True

    def end_capture(self):
        self.capturing = False
        recorded = [e for e in self.events if e[0] == "captured"]
        self.events = [e for e in self.events if e[0] != "captured"]

        class Graph:
            def launch(self, stream):
                stream.events.extend(("replayed", key) for _, key in recorded)

        return Graph()


def _fake_engine(stream):
    from types import SimpleNamespace

    xp = SimpleNamespace(cuda=SimpleNamespace(get_current_stream=lambda: stream))
    return SimpleNamespace(is_device=True, xp=xp)


def test_step_graphs_record_once_then_replay():
    from rawgpu.graphs import StepGraphs

    stream, logs = _FakeStream(), []
    graphs = StepGraphs(_fake_engine(stream), logs.append)

    def step(key):
        return lambda: stream.events.append(("captured" if stream.capturing else "ran", key))

    for epoch in range(3):
        for key in (0, 1):
            graphs.run(key, step(key))
    # Each position recorded once (and replayed at once: recording alone runs nothing), then replayed.
    assert stream.events == [("replayed", 0), ("replayed", 1)] * 3 and logs == []


def test_step_graphs_fall_back_to_eager_in_one_line():
    from rawgpu.graphs import StepGraphs

    stream, logs = _FakeStream(fail_at="begin"), []
    graphs = StepGraphs(_fake_engine(stream), logs.append)
    ran = []
    for key in (0, 1, 0):
        graphs.run(key, lambda key=key: ran.append(key))
    assert ran == [0, 1, 0]  # every step ran, eagerly, the failed capture's included
    assert len(logs) == 1 and "CUDA graphs are not available here" in logs[0] and not graphs.enabled


def test_graphs_flag_on_a_cpu_engine_is_a_note(capsys):
    from test_cli import run

    rawgpu.use("numpy")
    code, _, err = run(capsys, "train", "--dataset", "sample", "--epochs", "1", "--hidden", "8", "--no-progress", "--graphs")
    assert code == 0 and "note: --graphs applies to the cuda engine" in err


@pytest.mark.gpu
def test_graph_replay_equals_eager_bit_for_bit(tmp_path):
    """Two epochs each way on the GPU: the second epoch replays recorded graphs, or launches eagerly."""
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    data = SimpleNamespace(
        train_images=rng.integers(0, 256, (700, 784), dtype=np.uint8), train_labels=rng.integers(0, 10, 700).astype(np.uint8),
        test_images=rng.integers(0, 256, (100, 784), dtype=np.uint8), test_labels=rng.integers(0, 10, 100).astype(np.uint8),
        num_classes=10,
    )
    rawgpu.use("cuda")
    try:
        out, weights = {}, {}
        for graphs in (False, True):
            logs, ck = [], tmp_path / str(graphs)
            records = train(data, TrainConfig(epochs=3, batch_size=128, hidden=128, seed=3), progress=False, log=logs.append,
                            graphs=graphs, checkpoint_dir=ck)
            assert not any("not available" in line for line in logs), logs
            out[graphs] = [(r["train_loss"], r["test_loss"], r["test_accuracy"]) for r in records]
            weights[graphs] = ckpt.load(ck)[0]
        assert out[True] == out[False]
        for name, w in weights[False].items():
            assert np.array_equal(weights[True][name], w), name  # bit for bit
    finally:
        rawgpu.use("numpy")


def test_a_specialised_launch_configures_its_kernel_once(monkeypatch):
    """What a Launch does on a GPU, with a stand-in for Numba's dispatcher (no GPU needed)."""
    from rawgpu.kernels import _launch

    log = []

    class Dispatcher:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, config):
            log.append(("configure", self.name, config))
            return lambda *args: log.append(("launch", self.name, args))

    def specialise(kernel, args):  # compiling for these types (through Numba's disk cache: see test_host_cost.py)
        log.append(("specialize", kernel.name, tuple(type(a).__name__ for a in args)))
        return Dispatcher(kernel.name + "'")

    monkeypatch.setattr(_launch, "specialise", specialise)
    monkeypatch.setattr(_launch.config, "ENABLE_CUDASIM", False)
    launch = _launch.Launch(Dispatcher("k"), (3, 2), (16, 16), "s").specialised(np.zeros(2), np.float32(1))
    launch(1, 2)
    launch(3, 4)
    assert log == [
        ("specialize", "k", ("ndarray", "float32")), ("configure", "k'", ((3, 2), (16, 16), "s")),
        ("launch", "k'", (1, 2)), ("launch", "k'", (3, 4)),
    ]
    monkeypatch.setattr(_launch.config, "ENABLE_CUDASIM", True)  # the simulator: configured per call
    log.clear()
    plain = _launch.Launch(Dispatcher("k"), 4, 8)
    assert plain.specialised(1) is plain
    plain(5)
    plain(6)
    assert [entry[0] for entry in log] == ["configure", "launch", "configure", "launch"]


@pytest.mark.sim
def test_the_loss_kernels_class_limit_holds_on_the_step_path(sim, rng, monkeypatch):
    """The launchers check a shape's limits once, when they plan its launch, not at every step."""
    from rawgpu.kernels import fused

    monkeypatch.setattr(fused, "MAX_CLASSES", 2)
    model = rawgpu.TwoLayerMLP(4, 3, 3, seed=0)
    x, y = _batch(sim, rng, 2, 4, 3)
    with pytest.raises(ValueError, match=r"must have 1\.\.2 columns \(classes\), got 3"):
        model.loss_and_grads(x, y)
