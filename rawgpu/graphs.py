"""CUDA graphs: a training step recorded once, then replayed with one call instead of six launches.

Launching a kernel from Python costs microseconds of host time (Numba builds its arguments, the
driver queues the launch), which at this network's size is more than the kernel's own work. A
CUDA graph is a recording of a sequence of launches, with all their arguments, that the GPU can
replay as one unit: ``graph.launch()`` is one call. CuPy records one by *stream capture*: while a
stream is capturing, work sent to it is recorded instead of run (Numba launches included, since
rawgpu launches on CuPy's current stream).

What a replay cannot do is change its arguments: every address is baked in. A training step's
arrays qualify: the parameters, gradients and work buffers are allocated once, and each epoch's
shuffled copy of the data goes into the same buffer, so step ``k``'s batch is always the same
slice of it. One graph per step position ``k`` (each a different slice), recorded the first time
that position comes round, then replayed every epoch. The host still reads the device's loss
sums every ``--log-every`` steps, exactly as in the eager loop, and the results are bit for bit
the eager ones: the same kernels, in the same order, on the same data.

Capture must not allocate or wait for the device, so it starts only after a first eager epoch
has compiled every kernel and made every buffer (both batch sizes, full and last). Where capture
fails (an old driver, a CuPy without graph support) the step runs eagerly and the rest of the run
stays eager, after one line saying why.
"""

from __future__ import annotations

import contextlib


class StepGraphs:
    """Replays one recorded graph per step position; records it on first use.

    ``run(key, step)``: ``step`` is a function that launches one training step on the current
    stream; ``key`` names its position in the epoch (the same key must mean the same arrays).
    """

    def __init__(self, eng, log):
        self.engine, self.log = eng, log
        self.enabled = eng.is_device
        self._graphs: dict = {}

    def run(self, key, step) -> None:
        graph = self._graphs.get(key) if self.enabled else None
        if graph is None and self.enabled:
            graph = self._capture(key, step)
        if graph is None:
            step()  # eager: graphs are off, or this capture failed (the step has not run yet)
        else:
            graph.launch(stream=self.engine.xp.cuda.get_current_stream())

    def _capture(self, key, step):
        stream = self.engine.xp.cuda.get_current_stream()
        try:
            stream.begin_capture()
        except Exception as exc:  # noqa: BLE001 - any failure means: no graphs here
            return self._give_up(exc)
        try:
            step()
        except Exception as exc:  # noqa: BLE001
            with contextlib.suppress(Exception):
                stream.end_capture()  # leave the stream usable; the recorded work is dropped
            return self._give_up(exc)
        try:
            graph = stream.end_capture()
        except Exception as exc:  # noqa: BLE001
            return self._give_up(exc)
        self._graphs[key] = graph
        return graph

    def _give_up(self, exc):
        self.enabled = False
        self._graphs.clear()
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self.log(f"note: CUDA graphs are not available here ({reason}); training on with eager launches")
        return None


def training_stream(eng):
    """The stream a training run works on: a fresh non-default stream on the GPU (capture needs
    one), nothing on the CPU engines. Everything of the run, CuPy's and Numba's, goes on it."""
    if not eng.is_device:
        return contextlib.nullcontext()
    return eng.xp.cuda.Stream(non_blocking=True)
