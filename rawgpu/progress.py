"""A dependency-free progress bar for long loops (training epochs, downloads).

On a terminal it redraws one line in place; elsewhere (a log file, CI) it prints nothing until
``close``, which writes a single summary line, so logs stay readable.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str = "", *, stream=None, width: int = 24, enabled: bool = True):
        self.total = max(int(total), 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.enabled = enabled
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.count = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self.text = ""

    def update(self, n: int = 1, text: str = "") -> None:
        self.count += n
        if text:
            self.text = text
        now = time.perf_counter()
        if self.live and (now - self._last_draw > 0.1 or self.count >= self.total):
            self._last_draw = now
            self.stream.write("\r" + self._line() + "\033[K")
            self.stream.flush()

    def _line(self) -> str:
        frac = min(self.count / self.total, 1.0)
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        return f"{self.label} [{bar}] {self.count}/{self.total} {elapsed:5.1f}s {self.text}".rstrip()

    def close(self, text: str = "") -> None:
        if text:
            self.text = text
        if not self.enabled:
            return
        if self.live:
            self.stream.write("\r" + self._line() + "\033[K\n")
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()
