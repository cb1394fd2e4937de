"""The ``cuda`` and ``sim`` engines: the ops run as the Numba kernels in ``rawgpu.kernels``.

The two engines share this code. On ``cuda`` the arrays are CuPy arrays, handed to Numba as
device-array views (no copy) and launched on CuPy's current stream, so Numba kernels and CuPy
work queue up in order without host synchronisation. On ``sim`` the arrays are NumPy arrays and
the kernels run in Numba's CUDA simulator, with small tiles and thread blocks because the
simulator runs one OS thread per CUDA thread.
"""

from __future__ import annotations

import numpy as np

from rawgpu.kernels import elementwise, loss, matmul, optimizer, reductions

#: Launch settings per engine. The simulator's are small: every CUDA thread is an OS thread there.
LAUNCH = {
    "cuda": {
        "matmul_variant": "regblock",
        "matmul": {
            "naive": matmul.config("naive"),
            "tiled": matmul.config("tiled"),
            "regblock": matmul.config("regblock"),
        },
        "threads": 256,
        "col_sum": {"threads_x": 32, "threads_y": 8},
        "row_threads_max": 128,
    },
    "sim": {
        "matmul_variant": "tiled",
        "matmul": {
            "naive": matmul.config("naive", block_x=8, block_y=4),
            "tiled": matmul.config("tiled", tile=4),
            "regblock": matmul.config("regblock", bm=8, bn=8, bk=4, tm=2, tn=2),
        },
        "threads": 32,
        "col_sum": {"threads_x": 8, "threads_y": 4},
        "row_threads_max": 16,
    },
}


def _row_threads(classes, cap):
    """Threads per row for the softmax kernel: a power of two near the row length, at most cap."""
    threads = 1
    while threads < classes and threads < cap:
        threads *= 2
    return max(threads, 1)


class KernelBackend:
    def __init__(self, simulator: bool):
        self.name = "sim" if simulator else "cuda"
        self.settings = LAUNCH[self.name]
        self._scratch: dict = {}
        if simulator:
            self.xp = np
            self._view = lambda arr: arr
            self._stream = lambda: 0
        else:
            import cupy
            from numba import cuda

            self.xp = cupy
            # sync=False: CuPy arrays export their stream, and by default Numba would wait on it
            # before every launch. We launch on that same stream, so the wait is never needed.
            self._view = lambda arr: cuda.as_cuda_array(arr, sync=False)
            streams: dict = {}

            def current_stream():
                ptr = cupy.cuda.get_current_stream().ptr
                stream = streams.get(ptr)
                if stream is None:
                    stream = streams[ptr] = cuda.external_stream(ptr) if ptr else cuda.default_stream()
                return stream

            self._stream = current_stream

    def _buf(self, tag, shape, dtype=np.float32):
        key = (tag, shape, np.dtype(dtype))
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = self.xp.empty(shape, dtype)
        return buf

    # --- the op interface -------------------------------------------------------------------

    def matmul(self, a, b, out, trans_a, trans_b, variant):
        variant = variant or self.settings["matmul_variant"]
        v = self._view
        matmul.matmul(
            v(a), v(b), v(out), trans_a=trans_a, trans_b=trans_b, variant=variant,
            cfg=self.settings["matmul"][variant], stream=self._stream(),
        )

    def bias_add(self, x, bias, out):
        v = self._view
        elementwise.bias_add(v(x), v(bias), v(out), threads=self.settings["threads"], stream=self._stream())

    def bias_relu(self, x, bias, out):
        v = self._view
        elementwise.bias_relu(v(x), v(bias), v(out), threads=self.settings["threads"], stream=self._stream())

    def relu_backward(self, grad, act, out):
        v = self._view
        elementwise.relu_backward(v(grad), v(act), v(out), threads=self.settings["threads"], stream=self._stream())

    def col_sum(self, x, out):
        v = self._view
        reductions.col_sum(v(x), v(out), stream=self._stream(), **self.settings["col_sum"])

    def softmax_cross_entropy(self, logits, labels, grad):
        rows, classes = logits.shape
        row_loss = self._buf("row_loss", (rows,))
        result = self.xp.empty((1,), np.float32)  # fresh: the caller may keep the loss of every step
        v = self._view
        loss.softmax_cross_entropy(
            v(logits), v(labels), v(grad), v(row_loss), v(result),
            threads=_row_threads(classes, self.settings["row_threads_max"]), stream=self._stream(),
        )
        return result.reshape(())

    def sgd_momentum_(self, param, grad, velocity, lr, momentum, weight_decay, nesterov):
        v = self._view
        optimizer.sgd_momentum(
            v(param), v(grad), v(velocity), lr, momentum, weight_decay, nesterov,
            threads=self.settings["threads"], stream=self._stream(),
        )

    def correct_count(self, logits, labels):
        count = self.xp.zeros((1,), np.int32)
        v = self._view
        reductions.correct_count(v(logits), v(labels), v(count), threads=self.settings["threads"], stream=self._stream())
        return int(count[0])
