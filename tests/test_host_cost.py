"""The host side of a launch: the view cache holds no array past its life, and a step reuses the
argument tuples it built on its first call.

Run in the simulator, where the ``sim`` engine's launchers go through the same view cache and kept
launches as the ``cuda`` engine's (its views are NumPy arrays with no owner, the host's twin of
Numba's device views). Where a test only needs the host side, the kernels themselves are stubbed
out, as bench/step.py does, so that ten thousand launches take a fraction of a second.
"""

import gc
import weakref

import numpy as np
import pytest

import rawgpu
from rawgpu import ops
from rawgpu.backends.kernel_backend import ViewCache, _numpy_key, _numpy_view
from rawgpu.same_arrays import ids, keep_while_alive


@pytest.fixture
def no_kernels(monkeypatch):
    """Kernel launches that do nothing: the host's work alone (as bench/step.py --sim times it)."""
    from numba.cuda.simulator import kernel as simkernel

    monkeypatch.setattr(simkernel.FakeCUDAKernel, "__getitem__", lambda self, config: self)
    monkeypatch.setattr(simkernel.FakeCUDAKernel, "__call__", lambda self, *args: None)


@pytest.mark.sim
def test_ten_thousand_fresh_outputs_leave_the_view_cache_flat(sim, no_kernels, rng):
    a = sim.asarray(rng.standard_normal((3, 2), dtype=np.float32))
    b = sim.asarray(rng.standard_normal((2, 5), dtype=np.float32))
    views = sim.backend.views
    first = ops.matmul(a, b)
    held = len(views)  # a, b, first (and whatever earlier tests left alive)
    first_ref = weakref.ref(first)
    del first
    for _ in range(10_000):
        ops.matmul(a, b)  # a fresh output each time, dropped at once
    gc.collect()
    assert first_ref() is None, "the view cache keeps a dead output alive"
    assert len(views) <= held - 1, f"{len(views) - held + 1} views of dead outputs are still cached"


@pytest.mark.sim
def test_a_view_is_made_once_per_buffer_and_dropped_with_it(rng):
    made = []
    views = ViewCache(_numpy_key, lambda arr: made.append(arr.shape) or _numpy_view(arr))
    data = rng.standard_normal((6, 4)).astype(np.float32)
    # A fresh slice of the same memory (a training batch) finds the view made for the first one.
    v = views(data[2:4])
    assert views(data[2:4]) is v and made == [(2, 4)]
    assert np.shares_memory(v, data) and v.base is not data  # a view of the memory, not of the owner
    views(data[0:2])
    assert len(views) == 2
    owner = weakref.ref(data)
    del data  # the slices are gone too: the memory's owner is collected ...
    gc.collect()
    assert owner() is None
    assert len(views) == 0  # ... and takes its views out of the cache


@pytest.mark.sim
def test_an_entry_kept_by_ids_leaves_with_its_arrays():
    table = {}
    x, w = np.zeros((2, 3), np.float32), np.ones((3, 4), np.float32)
    keep_while_alive(table, ("op", *ids((x, w))), (x, w), "ready")
    assert table[("op", *ids((x, w)))][0] == "ready"
    x_ref = weakref.ref(x)
    del x  # its id may now go to a new array: the entry must not be found by it
    gc.collect()
    assert x_ref() is None and table == {}


@pytest.mark.sim
def test_a_step_makes_no_view_after_its_first(sim, no_kernels, rng, monkeypatch):
    model = rawgpu.TwoLayerMLP(9, 7, 3, seed=1)
    opt = rawgpu.SGD(model, lr=0.1, momentum=0.9)
    x = sim.asarray(rng.standard_normal((10, 9), dtype=np.float32))
    y = sim.asarray(rng.integers(0, 3, 10).astype(np.int32))
    model.loss_and_grads(x[:5], y[:5])
    opt.step()
    looked_up = []
    views = sim.backend.views
    monkeypatch.setattr(sim.backend, "views", lambda arr: looked_up.append(arr.shape) or views(arr))
    xb, yb = x[:5], y[:5]
    model.loss_and_grads(xb, yb)  # new batch objects (the training loop's slices) ...
    opt.step()
    # ... so the two launches that read x and the loss launch that reads y make their tuples again
    # (from cached views); the other three launches reuse theirs.
    assert len(looked_up) == 4 + 10 + 4
    looked_up.clear()
    model.loss_and_grads(xb, yb)
    opt.step()
    assert looked_up == []


@pytest.mark.sim
def test_the_step_ops_check_each_new_array_and_the_labels_values_every_call(sim, no_kernels, rng):
    model = rawgpu.TwoLayerMLP(9, 7, 3, seed=1)
    x = sim.asarray(rng.standard_normal((5, 9), dtype=np.float32))
    y = sim.asarray(rng.integers(0, 3, 5).astype(np.int32))
    model.loss_and_grads(x, y)  # every array of the step is checked, once
    p, buf = model.params, model._work(5)
    y[0] = 7  # the same labels array, its values changed in place: still refused on a host engine
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        model.loss_and_grads(x, y)
    with pytest.raises(ValueError, match="out must have shape"):  # a new array is checked
        ops.linear_relu(x, p["W1"], p["b1"], out=sim.empty((5, 8)))
    with pytest.raises(TypeError, match="must be float32"):
        ops.weight_grad(x, buf["dh"], w_out=sim.empty((9, 7), np.float64), b_out=model.grads["b1"])


# --- Numba's low-occupancy warning ---------------------------------------------------------------

SMALL_GRID = "Grid size 4 will likely result in GPU under-utilization due to low occupancy."  # numba-cuda 0.30's words


class _NumbaLikeWarning(Warning):
    """Stands for numba-cuda's NumbaPerformanceWarning (the filter goes by its message)."""


def test_quiet_small_grids_silences_numbas_small_grid_warning_and_nothing_else():
    import warnings

    from rawgpu.backends.kernel_backend import quiet_small_grids

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_small_grids():
            warnings.warn(_NumbaLikeWarning(SMALL_GRID))
            warnings.warn(_NumbaLikeWarning("something else is slow"))
        warnings.warn(_NumbaLikeWarning(SMALL_GRID))  # a user's own launch, after: still warned
    assert [str(w.message) for w in seen] == ["something else is slow", SMALL_GRID]


@pytest.mark.sim
def test_rawgpu_configures_its_launches_with_the_small_grid_warning_off(sim, no_kernels, rng, monkeypatch):
    """The simulator gives no occupancy warning, so it is made to give one where a GPU does: where a
    launch is configured (``kernel[grid, block, stream]``; for the step's kept launches, once, in
    ``Launch.specialised``). Any warning that got out would be an error here."""
    import warnings

    from numba.cuda.simulator import kernel as simkernel

    from rawgpu.kernels._launch import Launch

    def configure(self, config):
        warnings.warn(_NumbaLikeWarning(SMALL_GRID))
        return self

    specialised = Launch.specialised

    def specialise(self, *args):  # on a GPU, this is where the kept launch is configured
        warnings.warn(_NumbaLikeWarning(SMALL_GRID))
        return specialised(self, *args)

    model = rawgpu.TwoLayerMLP(9, 7, 3, seed=1)
    opt = rawgpu.SGD(model, lr=0.1, momentum=0.9)
    x = sim.asarray(rng.standard_normal((5, 9), dtype=np.float32))
    y = sim.asarray(rng.integers(0, 3, 5).astype(np.int32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monkeypatch.setattr(Launch, "specialised", specialise)
        model.loss_and_grads(x, y)  # the first step: its six launches are configured
        opt.step()
        # The other launchers configure at each call (in the simulator the kept launches do too,
        # which a GPU does not: so no step from here on).
        monkeypatch.setattr(simkernel.FakeCUDAKernel, "__getitem__", configure)
        ops.correct_count(sim.asarray(rng.standard_normal((5, 3), dtype=np.float32)), y)
        ops.matmul(x, model.params["W1"])
        ops.bias_add(ops.matmul(x, model.params["W1"]), model.params["b1"])
        ops.softmax_cross_entropy(sim.asarray(rng.standard_normal((5, 3), dtype=np.float32)), y)
        with pytest.raises(_NumbaLikeWarning):  # the user's own kernel still warns
            simkernel.FakeCUDAKernel.__getitem__(None, (4, 32))


# --- the step's kernels come from Numba's disk cache ---------------------------------------------


def test_a_kept_launch_is_specialised_through_numbas_disk_cache(monkeypatch):
    """On a GPU, ``Launch.specialised`` compiles with ``cuda.jit(types, cache=True, <the kernel's
    options>)``, which looks in the disk cache first (``Dispatcher.specialize`` would compile afresh
    in every process). Without a GPU nothing can be compiled, so ``cuda.jit`` is stood in for: this
    checks what is asked of it, and that each kernel and types are specialised once."""
    from numba import cuda

    from rawgpu.kernels import _launch

    class Kernel:  # what specialise() reads of a CUDADispatcher: all public attributes
        targetoptions = {"launch_bounds": (256, 4), "lto": True, "fastmath": False}

        @staticmethod
        def py_func(a, b):
            pass

        def typeof_pyval(self, arg):
            return f"type of {arg}"

    asked = []
    monkeypatch.setattr(cuda, "jit", lambda sig, **options: lambda func: asked.append((sig, options, func)) or "compiled")
    monkeypatch.setattr(_launch, "_SPECIALISED", {})
    kernel = Kernel()
    assert _launch.specialise(kernel, (1, 2)) == "compiled"
    assert _launch.specialise(kernel, (1, 2)) == "compiled"  # kept: asked once
    assert asked == [(("type of 1", "type of 2"), {"cache": True, **Kernel.targetoptions}, Kernel.py_func)]


def test_every_kernel_rawgpu_launches_asks_for_the_disk_cache():
    """Every ``@cuda.jit`` kernel in kernels/ is declared with ``cache=True`` (on a GPU the rungs
    with launch bounds get it from ``matmul._common.jit``); device functions are inlined into them."""
    import re
    from pathlib import Path

    from rawgpu import kernels

    root = Path(kernels.__file__).parent
    plain = []
    for path in sorted(root.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*@cuda\.jit\b", line) and "cache=True" not in line and "device=True" not in line:
                plain.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert plain == []
    common = (root / "matmul" / "_common.py").read_text()
    assert "cuda.jit(cache=True, launch_bounds=" in common
