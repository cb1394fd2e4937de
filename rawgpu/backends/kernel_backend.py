"""The ``cuda`` and ``sim`` engines' launchers: the ops run as the Numba kernels in ``rawgpu.kernels``.

The op layer (rawgpu/ops.py) has checked the arguments; a method here turns them into the
kernel's arguments (views, from :class:`ViewCache`) and launches on the engine's stream. The
training step's six launches are worked out once per shape and kept with their argument tuples
(see ``_launch``).

The two engines share this code. On ``cuda`` the arrays are CuPy arrays, handed to Numba as
device-array views (no copy) and launched on CuPy's current stream, so Numba kernels and CuPy
work queue up in order without host synchronisation. On ``sim`` the arrays are NumPy arrays, their
views NumPy arrays made the same way, and the kernels run in Numba's CUDA simulator, with small
tiles and thread blocks because the simulator runs one OS thread per CUDA thread.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
import weakref

import numpy as np

from rawgpu.kernels import conv, elementwise, fused, loss, matmul, optimizer, pool, reductions
from rawgpu.kernels.matmul import tuning as matmul_tuning
from rawgpu.same_arrays import ids, keep_while_alive

#: Launch settings per engine. The simulator's are small: every CUDA thread is an OS thread there.
LAUNCH = {
    "cuda": {
        # None: the autotuner (kernels/matmul/tuning.py) picks rung and config per product shape.
        "matmul_variant": None,
        "matmul": {variant: matmul.config(variant) for variant in matmul.VARIANTS},
        "threads": 256,
        "col_sum": {"threads_x": 32, "threads_y": 8},
        "row_threads_max": 128,
        # The step's matmuls (kernels/fused.py): None, the autotuner's pick per product shape.
        "step_rungs": None,
        "fused_threads": fused.THREADS,  # the fused output layer + loss, per row
    },
    "sim": {
        "matmul_variant": "blocktile2d",
        "matmul": {
            "naive": matmul.config("naive", block_x=8, block_y=4),
            "coalesced": matmul.config("coalesced", block_x=8, block_y=4),
            "smem": matmul.config("smem", tile=4),
            "blocktile1d": matmul.config("blocktile1d", bm=8, bn=4, bk=4, tm=2),
            "blocktile2d": matmul.config("blocktile2d", bm=8, bn=8, bk=4, tm=2, tn=2),
            "transposed": matmul.config("transposed", bm=8, bn=8, bk=4, tm=2, tn=2, pad=1),
            "warptile": matmul.config("warptile", bm=8, bn=8, bk=4, wm=4, wn=4, tm=2, tn=2, pad=1),
            "splitk": matmul.config("splitk", bm=8, bn=8, bk=4, tm=2, tn=2, pad=1, splits=2),
        },
        "threads": 32,
        "col_sum": {"threads_x": 8, "threads_y": 4},
        "row_threads_max": 16,
        # Fixed rungs for the step in the simulator (the tuner's tiles are a GPU's): three rungs,
        # split-K and warp tiles among them, so that the step's tests run the most intricate ones;
        # weight_grad (two launches a step) on the cheapest to simulate, 2-D block tiles.
        "step_rungs": {"linear_relu": "splitk", "linear_backward_relu": "warptile", "weight_grad": "blocktile2d"},
        "fused_threads": fused.SIM_THREADS,
    },
}


#: Numba's warning for a grid of fewer than 128 blocks, which it gives where a launch is configured.
SMALL_GRID_WARNING = r"Grid size \d+ will likely result in GPU under-utilization"


@contextlib.contextmanager
def quiet_small_grids():
    """Numba's low-occupancy warning, silenced for rawgpu's own launches made inside.

    At this network's size the step's grids are small by design (a 128 x 128 product is four
    64 x 64 tiles; ``rawgpu info`` lists them), and the warning would print in the middle of the
    progress bar. It is silenced where rawgpu configures its launches and nowhere else: a user's
    own Numba kernels still get it. (``warnings.catch_warnings`` costs microseconds, so the step
    pays it once per shape, when its launches are configured, not at every launch.)
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SMALL_GRID_WARNING)
        yield


def _quietly(method):
    """A launcher method whose kernel launch is configured under :func:`quiet_small_grids`."""

    @functools.wraps(method)
    def launcher(self, *args, **kwargs):
        with quiet_small_grids():
            return method(self, *args, **kwargs)

    return launcher


#: The CNN's kernels per engine: the tiles of the conv implicit GEMMs whose rows are pixels (the
#: forward pass and the input gradient) and of the weight gradient (rows: the taps (c, i, j)), the
#: blocks the weight gradient's slices of the pixels aim at (None: two per SM of the GPU), and the
#: pool kernels' block size. The simulator's tiles are its own: it runs every CUDA thread as a
#: Python thread, so its cost is per thread, per barrier and per index computed more than per
#: flop: eight threads a block (Numba's block manager, polling them in a loop, takes less of the
#: interpreter from eight than from one or four), each with a large tile of outputs, and few
#: barriers. Measured on 2 cores: a training step of the CNN on two 3 x 32 x 32 images, conv
#: widths 4, 4, 8, took 66 s with 12 x 8 tiles of 4 x 4 per thread for all three GEMMs and 47 s
#: with four threads a block; at widths 1, 1, 1, 32 s with four and 27 s with eight. The depths
#: (bk 32 and 64, not 64 and 128) took the CLI test of the CNN in the simulator from 34 s to 29 s
#: once the tile copies kept their indexes incrementally. Cut further to fit narrow GEMMs: conv.fitted.
CNN_LAUNCH = {
    "cuda": {"conv": conv.config(), "conv_weight_grad": conv.config(), "wgrad_target_blocks": None, "pool_threads": 256},
    "sim": {"conv": conv.config(bm=64, bn=8, bk=32, tm=8, tn=8),
            "conv_weight_grad": conv.config(bm=64, bn=8, bk=64, tm=8, tn=8), "wgrad_target_blocks": 4, "pool_threads": 32},
}


#: Marks a launch not yet worked out (None means "nothing to launch").
_UNPLANNED = object()


def _nothing():
    """The launch of an empty output."""


def _row_threads(classes, cap):
    """Threads per row for the softmax kernel: a power of two near the row length, at most cap."""
    threads = 1
    while threads < classes and threads < cap:
        threads *= 2
    return max(threads, 1)


@functools.lru_cache(maxsize=64)
def _sgd_scalars(lr, momentum, weight_decay):
    """The SGD kernel's scalar arguments, made once per setting (a schedule makes a few)."""
    return optimizer.hyper_args(lr, momentum, weight_decay)


class ViewCache:
    """The kernels' views of engine arrays: made once per buffer, dropped when the buffer dies.

    A kernel takes a *view* of an array: on ``cuda``, a Numba device array made from the CuPy
    array's ``__cuda_array_interface__``. Making one costs more host time than the launch it
    serves, so a view is made once per buffer and kept, keyed by what it describes (address,
    shape, strides, dtype): a fresh slice of the same memory, as each training batch is, finds it.

    What the cache must not do is keep memory alive. A view here is made *without* an owner (it
    holds the address, not the array), and each entry holds only a weak reference to the array at
    the root of its array's ``.base`` chain, the one that owns the memory. When that array is
    collected, the weak reference's callback removes the entry, before the memory can be handed to
    a new array. So the cache holds exactly one entry per live buffer that was launched on, and a
    loop of ``ops.matmul(a, b)`` with fresh outputs leaves it (and the GPU's memory) flat.

    The ``sim`` engine runs the same code with NumPy arrays: its view is a NumPy array made from the
    array's ``__array_interface__`` with no owner, the host's twin of the device view.
    """

    def __init__(self, key, make):
        self._key = key  # array -> (address, shape, strides, dtype)
        self._make = make  # array -> a view of it that does not keep it alive
        self._views: dict = {}  # key -> (view, weak reference to the memory's owner)

    def __len__(self) -> int:
        return len(self._views)

    def __call__(self, arr):
        key = self._key(arr)
        entry = self._views.get(key)
        if entry is None:
            owner = arr
            while isinstance(owner.base, type(owner)):  # a view's .base leads to the array owning the memory
                owner = owner.base
            entry = self._views[key] = (self._make(arr), weakref.ref(owner, lambda _, key=key: self._views.pop(key, None)))
        return entry[0]


def _cupy_key(arr):
    return arr.data.ptr, arr.shape, arr.strides, arr.dtype.char


def _numpy_key(arr):
    return arr.__array_interface__["data"][0], arr.shape, arr.strides, arr.dtype.char


class _Borrowed:
    """An ``__array_interface__`` alone: ``np.asarray`` of it is an array that does not own (or
    keep alive) the memory it describes, as Numba's view made with ``owner=None`` on a GPU."""

    __slots__ = ("__array_interface__",)

    def __init__(self, interface):
        self.__array_interface__ = interface


def _numpy_view(arr):
    return np.asarray(_Borrowed(arr.__array_interface__))


class KernelBackend:
    def __init__(self, simulator: bool):
        self.name = "sim" if simulator else "cuda"
        self.settings = LAUNCH[self.name]
        self._scratch: dict = {}
        self._launches: dict = {}  # (plan function, its arguments) -> the Launch: see _launch below
        self._ready: dict = {}  # (plan function, its arguments, the arrays' ids) -> the launch, its arguments bound
        self.matmul_picks: dict = {}  # (m, n, k, trans_a, trans_b) -> (variant, config, reason)
        self._plans: dict = {}  # (op, a's shape, b's shape) -> a step product's plan: see _product
        self._gpu = None
        if simulator:
            self.xp = np
            self.views = ViewCache(_numpy_key, _numpy_view)
            self._stream = lambda: 0
        else:
            import cupy
            from numba import cuda

            self.xp = cupy
            # sync=False: CuPy arrays export their stream, and by default Numba would wait on it
            # before making the view. We launch on that same stream, so the wait is never needed.
            # owner=None: the view must not keep the CuPy array alive (see ViewCache).
            self.views = ViewCache(
                _cupy_key, lambda arr: cuda.from_cuda_array_interface(arr.__cuda_array_interface__, owner=None, sync=False)
            )
            streams: dict = {}

            def current_stream():
                ptr = cupy.cuda.get_current_stream().ptr
                stream = streams.get(ptr)
                if stream is None:
                    stream = streams[ptr] = cuda.external_stream(ptr) if ptr else cuda.default_stream()
                return stream

            self._stream = current_stream

    def _buf(self, tag, shape, dtype=np.float32):
        key = (tag, shape, dtype)
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = self.xp.empty(shape, dtype)
        return buf

    # --- the op interface -------------------------------------------------------------------

    @_quietly
    def matmul(self, a, b, out, trans_a, trans_b, variant):
        if variant is not None:
            cfg = self.settings["matmul"][variant]
        elif self.settings["matmul_variant"] is not None:
            variant = self.settings["matmul_variant"]
            cfg = self.settings["matmul"][variant]
        else:
            variant, cfg = self.matmul_pick(out.shape[0], out.shape[1], b.shape[1] if trans_b else b.shape[0], trans_a, trans_b)
        v = self.views
        split = self._split_scratch(cfg, *out.shape)
        workspace = tuple(map(v, split)) if split else None
        matmul.matmul(
            v(a), v(b), v(out), trans_a=trans_a, trans_b=trans_b, variant=variant,
            cfg=cfg, stream=self._stream(), workspace=workspace,
        )

    def matmul_pick(self, m, n, k, trans_a, trans_b):
        """The autotuner's (variant, config) for one product shape; cached, with its reason kept in
        ``self.matmul_picks`` (shape -> (variant, config, reason)) for ``rawgpu info``."""
        key = (m, n, k, bool(trans_a), bool(trans_b))
        hit = self.matmul_picks.get(key)
        if hit is None:
            gpu, sms = self._gpu_identity()
            variant, params, reason = matmul_tuning.pick(*key, gpu=gpu, sms=sms)
            hit = self.matmul_picks[key] = (variant, matmul.config(variant, **params), reason)
        return hit[0], hit[1]

    def _split_scratch(self, cfg, m, n):
        """split-K's ``(ws, counters)`` for an m x n product at ``cfg`` (``()`` for a rung that
        does not split), made once per shape and shared by every product of that shape: stream
        order keeps one product's final sums ahead of the next product's partials, and every
        launch leaves the counters zero."""
        key = ("split", cfg, m, n)
        scratch = self._scratch.get(key)
        if scratch is None:
            scratch = self._scratch[key] = matmul.new_workspace(cfg, m, n, self.xp) or ()
        return scratch

    def _gpu_identity(self):
        """(device name, SM count) of the current GPU, as the tuning table keys them."""
        if self._gpu is None:
            import cupy

            dev = cupy.cuda.Device()
            name = cupy.cuda.runtime.getDeviceProperties(dev.id)["name"]
            self._gpu = (name.decode() if isinstance(name, bytes) else str(name), int(dev.attributes["MultiProcessorCount"]))
        return self._gpu

    @_quietly
    def bias_add(self, x, bias, out):
        v = self.views
        elementwise.bias_add(v(x), v(bias), v(out), threads=self.settings["threads"], stream=self._stream())

    @_quietly
    def bias_relu(self, x, bias, out):
        v = self.views
        elementwise.bias_relu(v(x), v(bias), v(out), threads=self.settings["threads"], stream=self._stream())

    @_quietly
    def relu_backward(self, grad, act, out):
        v = self.views
        elementwise.relu_backward(v(grad), v(act), v(out), threads=self.settings["threads"], stream=self._stream())

    @_quietly
    def col_sum(self, x, out):
        v = self.views
        reductions.col_sum(v(x), v(out), stream=self._stream(), **self.settings["col_sum"])

    @_quietly
    def softmax_cross_entropy(self, logits, labels, grad):
        rows, classes = logits.shape
        row_loss = self._buf("row_loss", (rows,))
        result = self.xp.empty((1,), np.float32)  # fresh: the caller may keep the loss of every step
        v = self.views
        loss.softmax_cross_entropy(
            v(logits), v(labels), v(grad), v(row_loss), v(result),
            threads=_row_threads(classes, self.settings["row_threads_max"]), stream=self._stream(),
        )
        return result.reshape(())

    # --- the training step: six launches, each worked out once per shape -----------------------
    #
    # These are the step's launchers. The op layer (rawgpu/ops.py) has checked every argument, so
    # all that is left is to find this launch and call the kernel. The first call for a shape asks
    # the kernel module for the grid and block (a kernels._launch.Launch), specialises it to the
    # argument types (Numba then skips its per-launch type dispatch) and keeps it. The first call
    # with given arrays also makes the argument tuple (their views, then the scalars, then the
    # launch's own scratch) and keeps it bound to the launch, found again by the arrays' ids for as
    # long as they live. A step passes the same arrays every time, so a step's launch is one dict
    # lookup and the call.

    def _launch(self, arrays, plan, *plan_args, scalars=()):
        """Launch ``plan(*plan_args)`` (the kernel's shape, configuration and stream) on the engine
        arrays ``arrays`` followed by ``scalars``."""
        ready = self._ready.get((plan, *plan_args, *scalars, *ids(arrays)))
        if ready is None:
            ready = self._prepare(arrays, plan, plan_args, scalars)
        ready[0]()

    def _prepare(self, arrays, plan, plan_args, scalars, scratch=(), ready_key=None):
        """The launch bound to its arguments (the arrays' views, ``scalars``, then ``scratch``: the
        backend's own arguments that ``plan_args`` determine, split-K's workspace), kept in
        ``self._ready`` under ``ready_key`` (the plan, its arguments and the scalars by default)
        followed by the arrays' ids."""
        key = (plan, *plan_args, *scalars)
        launch = self._launches.get(key, _UNPLANNED)
        if launch is _UNPLANNED:
            if len(self._launches) >= 1024:  # a run needs a handful; this bounds odd callers
                self._launches.clear()
            launch = plan(*plan_args)  # None: an empty output, nothing to launch
            if launch is not None:
                with quiet_small_grids():  # on a GPU the launch is configured here, once
                    launch = launch.specialised(*map(self.views, arrays), *scalars, *scratch)
            self._launches[key] = launch
        if len(self._ready) >= 4096:  # a step needs six; this bounds callers that change scalars at every call
            self._ready.clear()
        bound = _nothing if launch is None else functools.partial(launch, *map(self.views, arrays), *scalars, *scratch)
        return keep_while_alive(self._ready, (*(key if ready_key is None else ready_key), *ids(arrays)), arrays, bound)

    def _product(self, op, a, b, c, e):
        """One of the step's matmuls (kernels/fused.py: ``STEP_PRODUCTS``), ``c = op(a) @ op(b)``
        through the epilogue that reads or writes ``e``, on the rung picked for its shape. Found
        again by the op, the stream and the arrays alone: the same arrays have the same shapes,
        so they have the same plan."""
        arrays = (a, b, c, e)
        stream = self._stream()
        ready = self._ready.get((op, stream, *ids(arrays)))
        if ready is None:
            plan = self._plans.get((op, a.shape, b.shape))
            if plan is None:
                plan = self._plans[(op, a.shape, b.shape)] = self._plan_product(op, a.shape, b.shape)
            variant, cfg, m, n, split = plan
            ready = self._prepare(arrays, fused.product_launch, (op, variant, cfg, m, n, stream), (), (split,),
                                  ready_key=(op, stream))
        ready[0]()

    def _plan_product(self, op, a_shape, b_shape):
        """(variant, config, M, N, split-K's views or ()) for one of the step's products."""
        m, n, k, trans_a, trans_b = fused.product_shape(op, a_shape, b_shape)
        fixed = self.settings["step_rungs"]
        if fixed is None:
            variant, cfg = self.matmul_pick(m, n, k, trans_a, trans_b)
        else:
            variant = fixed[op]
            cfg = self.settings["matmul"][variant]
        return variant, cfg, m, n, tuple(map(self.views, self._split_scratch(cfg, m, n)))

    def linear_relu(self, x, w, b, out):
        self._product("linear_relu", x, w, out, b)

    def linear_softmax_ce(self, a, w, b, labels, z, dz, stats):
        rows = a.shape[0]
        row_loss = self._buf("fused_row_loss", (rows,))
        # One loss buffer, reused by every call: CUDA-graph replay needs fixed addresses, and the
        # caller reads the loss (if at all) before the next call overwrites it.
        result = self._buf("fused_loss", (1,))
        # Evaluation counts nothing (accumulate=False), but the kernel still finds its last block
        # with a counter that must start at 0: the training counters are not to be touched.
        counters, sums = (stats.counters, stats.sums) if stats is not None else self._eval_counters()
        self._launch((a, w, b, labels, z, dz, row_loss, result, counters, sums),
                     fused.softmax_ce_launch, rows, w.shape[1], self.settings["fused_threads"], stats is not None, self._stream())
        return result.reshape(())

    def _eval_counters(self):
        if "eval_counters" not in self._scratch:
            self._scratch["eval_counters"] = (self.xp.zeros((4,), np.int32), self.xp.zeros((2,), np.float64))
        return self._scratch["eval_counters"]

    def weight_grad(self, inp, d, w_out, b_out):
        self._product("weight_grad", inp, d, w_out, b_out)

    def linear_backward_relu(self, d, w, act, out):
        self._product("linear_backward_relu", d, w, out, act)

    def sgd_momentum_(self, param, grad, velocity, settings):
        n = param.size
        if n == 0:
            return
        lr, momentum, weight_decay, nesterov = settings
        # The update does not care about the shape: it runs over the flat (contiguous) buffers. The
        # optimizer's are flat already and are passed as they are, the same objects every step, so
        # the kept launch is found by their ids; a reshape would be a new array at every call.
        flat = [arr if arr.ndim == 1 else arr.reshape(n) for arr in (param, grad, velocity)]
        self._launch(flat, optimizer.sgd_launch, n, nesterov, self.settings["threads"], None, self._stream(),
                     scalars=_sgd_scalars(lr, momentum, weight_decay))

    @_quietly
    def correct_count(self, logits, labels):
        count = self._buf("count", (1,), np.int32)  # one buffer (and view), read back before the next call
        count.fill(0)
        v = self.views
        reductions.correct_count(v(logits), v(labels), v(count), threads=self.settings["threads"], stream=self._stream())
        return int(count[0])

    # --- the CNN's ops (kernels/conv.py, kernels/pool.py), each launch worked out once per shape

    def _conv_tiles(self, key, rows, cols):
        """The engine's tiles for a conv GEMM of ``rows`` x ``cols``; the simulator's cut to fit a
        narrow side (conv.fitted: there a tile's rows and columns past the edge are real work)."""
        cfg = CNN_LAUNCH[self.name][key]
        return conv.fitted(cfg, rows, cols) if self.name == "sim" else cfg

    def conv2d(self, x, w, b, out, pad, relu):
        n, o, ho, wo = out.shape
        self._launch((x, w, b, out), conv.conv_launch, False, True, relu,
                     self._conv_tiles("conv", n * ho * wo, o), n * ho * wo, o, self._stream(), scalars=(pad,))

    def conv2d_input_grad(self, dy, w, dx, pad):
        n, c, h, wd = dx.shape
        # The flipped kernel's padding is K - 1 - pad; its bias argument is not read (a flat view of
        # dx stands in, so no buffer is made for it).
        self._launch((dy, w, dx.reshape(dx.size), dx), conv.conv_launch, True, False, False,
                     self._conv_tiles("conv", n * h * wd, c), n * h * wd, c, self._stream(), scalars=(w.shape[2] - 1 - pad,))

    def conv2d_weight_grad(self, x, dy, dw, db, pad):
        # Found again by the stream, the padding and the arrays alone, as the step's products are
        # (_product): the same arrays have the same shapes, so the same tiles, slices and workspace.
        arrays = (x, dy, dw, db)
        stream = self._stream()
        ready = self._ready.get(("conv_weight_grad", stream, pad, *ids(arrays)))
        if ready is None:
            o, c, k, _ = dw.shape
            taps, pixels = c * k * k, dy.shape[0] * dy.shape[2] * dy.shape[3]
            cfg = self._conv_tiles("conv_weight_grad", taps, o)
            splits = conv.weight_grad_splits(cfg, o, taps, pixels, self._wgrad_target_blocks())
            # One workspace per shape, as for split-K matmuls. The arrays are kept here: a view (what
            # the kernel gets) does not keep its memory alive.
            key = ("conv_split", cfg, o, taps, splits)
            scratch = self._scratch.get(key)
            if scratch is None:
                scratch = self._scratch[key] = conv.weight_grad_workspace(cfg, o, taps, splits, self.xp)
            ready = self._prepare(arrays, conv.weight_grad_launch, (cfg, o, taps, splits, stream), (pad,),
                                  (tuple(map(self.views, scratch)),), ready_key=("conv_weight_grad", stream, pad))
        ready[0]()

    def _wgrad_target_blocks(self):
        """The blocks a conv weight gradient's grid aims at: two per SM on a GPU; in the simulator
        a handful, so that its slices meet there too (kernels/conv.py, weight_grad_splits)."""
        target = CNN_LAUNCH[self.name]["wgrad_target_blocks"]
        return target if target is not None else 2 * self._gpu_identity()[1]

    def maxpool2x2(self, x, out, argmax):
        self._launch((x, out, argmax), pool.maxpool_launch, pool.maxpool2x2_kernel, out.size,
                     CNN_LAUNCH[self.name]["pool_threads"], None, self._stream())

    def maxpool2x2_backward(self, dy, argmax, dx):
        self._launch((dy, argmax, dx), pool.maxpool_launch, pool.maxpool2x2_backward_kernel, dx.size,
                     CNN_LAUNCH[self.name]["pool_threads"], None, self._stream())
