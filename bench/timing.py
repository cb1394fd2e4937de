"""Timers: a host clock for CPU work, CUDA events for GPU work.

Both follow the same recipe: warm up (JIT compilation, module loading and first-touch allocation
stay out of the figures), then repeat until at least ``min_reps`` samples and ``budget_s``
seconds have gone by (at most ``max_reps``), cycling through ``sets`` input sets so that a
cache holding the previous call's data is not what is measured. ``fn(i)`` runs the work on
input set ``i``.

On the GPU each timed call is preceded by two things that keep the figure honest:

* an L2 flush: a memset of a buffer several times the size of the L2 cache, so the call starts
  with a cold cache even when its inputs are small;
* a delay kernel that spins for longer than the host takes to queue the call. Kernel launches
  from Python cost tens of microseconds; if the GPU were idle, the start event would fire at
  once and the end event would include that launch latency. With the queue backed up, the two
  events bracket only the GPU's own work. Calls whose queuing outlasted the delay are counted
  (``host_behind``), so a figure polluted by launch latency is visible in the results.
"""

from __future__ import annotations

import time

import numpy as np

from common import summarize


def _reps(min_reps: int, max_reps: int, budget_s: float):
    """Yield rep numbers until min_reps are done and budget_s has passed (never past max_reps)."""
    start = time.perf_counter()
    rep = 0
    while rep < max_reps and (rep < min_reps or time.perf_counter() - start < budget_s):
        yield rep
        rep += 1


def host_time(fn, sets: int, *, warmup: int, min_reps: int, max_reps: int, budget_s: float) -> dict:
    """Median and spread, in milliseconds, of ``fn`` on the host clock."""
    for w in range(warmup):
        fn(w % sets)
    samples = []
    for rep in _reps(min_reps, max_reps, budget_s):
        t0 = time.perf_counter()
        fn(rep % sets)
        samples.append((time.perf_counter() - t0) * 1e3)
    return {"ms": summarize(samples), "clock": "host perf_counter"}


# A one-thread kernel that spins on the GPU's nanosecond timer: the delay described above.
_SPIN_SOURCE = r"""
extern "C" __global__ void rawgpu_bench_spin(unsigned long long ns) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < ns);
}
"""


class GpuTimer:
    """CUDA-event timing on CuPy's current stream (the stream rawgpu launches its kernels on)."""

    def __init__(self, *, flush_factor: int = 4):
        import cupy

        self.cp = cupy
        # 50 MiB (an H100's L2) if the driver does not say.
        self.l2_bytes = int(cupy.cuda.Device().attributes.get("L2CacheSize", 50 << 20))
        # Writing several times the L2 evicts whatever the previous call left there.
        self.flush_bytes = max(flush_factor * self.l2_bytes, 64 << 20)
        self._flush_buf = cupy.empty(self.flush_bytes, dtype=cupy.uint8)
        self.spin_error = None
        try:
            self._spin = cupy.RawKernel(_SPIN_SOURCE, "rawgpu_bench_spin")
            self._spin.compile()
        except Exception as exc:  # no NVRTC: the flush alone has to cover the host's queuing
            self._spin, self.spin_error = None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        self.flush_ms = self._time_flush()

    def describe(self) -> dict:
        return {
            "clock": "CUDA events (cupy.cuda.Event) on CuPy's current stream",
            "l2_bytes": self.l2_bytes,
            "flush_bytes": self.flush_bytes,
            "flush_ms": self.flush_ms,
            "delay_kernel": self._spin is not None,
            "delay_kernel_error": self.spin_error,
        }

    def _sync(self):
        self.cp.cuda.get_current_stream().synchronize()

    def _flush(self):
        self._flush_buf.fill(0)  # a cudaMemsetAsync over the whole buffer

    def _time_flush(self) -> float:
        cp = self.cp
        for _ in range(3):
            self._flush()
        times = []
        for _ in range(10):
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            self._flush()
            end.record()
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end))
        return float(np.median(times))

    def _delay(self, seconds: float) -> None:
        if self._spin is not None:
            self._spin((1,), (1,), (np.uint64(int(seconds * 1e9)),))

    def time(self, fn, sets: int, *, warmup: int, min_reps: int, max_reps: int, budget_s: float, flush: bool = True) -> dict:
        """Median and spread, in milliseconds, of the GPU work ``fn`` queues (see the module doc).

        ``flush=False`` keeps the L2 as the previous call left it: for whole training steps,
        whose weights stay in the cache from one step to the next in real training too.
        """
        cp = self.cp
        for w in range(warmup):
            fn(w % sets)
        self._sync()
        # How long the host takes to queue one call; the delay ahead of each timed call outlasts it.
        t0 = time.perf_counter()
        fn(0)
        queue_s = time.perf_counter() - t0
        self._sync()
        delay_s = min(max(3 * queue_s + 50e-6, 100e-6), 0.05) if self._spin is not None else 0.0
        cover_s = delay_s + (self.flush_ms / 1e3 if flush else 0.0)  # how far ahead of the GPU the host may run

        samples, queued, behind, pending = [], [], 0, []
        for rep in _reps(min_reps, max_reps, budget_s):
            if flush:
                self._flush()
            self._delay(delay_s)
            start, end = cp.cuda.Event(), cp.cuda.Event()
            h0 = time.perf_counter()
            start.record()
            fn(rep % sets)
            end.record()
            dt = time.perf_counter() - h0
            queued.append(dt * 1e3)
            behind += dt > cover_s
            pending.append((start, end))
            if len(pending) >= 16:  # read back in batches: few host syncs, bounded event count
                samples += self._read(pending)
        samples += self._read(pending)
        return {
            "ms": summarize(samples),
            "host_queue_ms": summarize(queued),
            "delay_ms": delay_s * 1e3,
            "host_behind": int(behind),
            "l2_flushed": flush,
            "clock": "CUDA events",
        }

    def _read(self, pending) -> list[float]:
        if not pending:
            return []
        pending[-1][1].synchronize()
        out = [self.cp.cuda.get_elapsed_time(s, e) for s, e in pending]
        pending.clear()
        return out
