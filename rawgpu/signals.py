"""Ctrl-C and SIGTERM in the ``rawgpu`` command: one line, exit 130 or 143, nothing half-written.

Ctrl-C sends SIGINT; ``kill``, batch schedulers and containers that stop send SIGTERM. Both end
the command the same way: the handler below raises :class:`KeyboardInterrupt` (for SIGTERM its
subclass :class:`Terminated`) wherever the program is, so everything that cleans up after a
Ctrl-C (temporary files, the checkpoint folder's lock, the progress bar) cleans up after a
SIGTERM too, and the command ends with ``rawgpu: interrupted`` (130) or ``rawgpu: terminated``
(143), the statuses a shell reports for a process those signals killed (128 + the signal).

A few steps must not be cut in two: the epoch's checkpoint and its metrics line are written
together (:func:`deferred`), and a signal that arrives while they are written is held until
both are done. Anywhere else a stop is safe: every file is written to a temporary name and
renamed, and a resumed run repairs a metrics file that a kill left one epoch ahead.

Python's own Ctrl-C handler raises KeyboardInterrupt too, but inside C code that is not always
what arrives: tried 150 times at random moments of a run, a Ctrl-C once came out of CPython's
warnings machinery as ``TypeError: expected a message argument``. So the handler also notes
which signal came (:attr:`Signals.seen`), and whatever error follows one is reported as the
interruption it was.
"""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager

#: The exit status and the word for each signal the command handles.
EXITS = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same clean-up runs."""


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


class Signals:
    """The command's handler for SIGINT and SIGTERM, and what it has seen."""

    seen: int | None = None  # the first signal that came, if any
    _holding = 0  # how many deferred() blocks are running
    _held: int | None = None  # a signal that came during one
    _quiet = False  # the work is done: a signal is only noted (see quiet())

    @classmethod
    def handler(cls, signum, frame):
        if cls.seen is None:
            cls.seen = signum
        if cls._quiet:
            return
        if cls._holding:
            cls._held = cls._held or signum
            return
        raise _exception(signum)

    @classmethod
    def install(cls) -> dict:
        """Put the handler in place of the default ones; return {signal: previous handler} to restore.

        A signal someone chose to ignore (a job started with ``nohup`` ignores SIGINT) stays
        ignored, and where the handler is already in place (``run`` put it there) nothing changes.
        Not on a thread other than the main one: handlers cannot be set there."""
        defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
        previous = {}
        try:
            for signum, default in defaults.items():
                if signal.getsignal(signum) is default:
                    previous[signum] = signal.signal(signum, cls.handler)
        except ValueError:  # not the main thread
            pass
        if previous:
            cls.seen, cls._held, cls._quiet = None, None, False
        return previous

    @classmethod
    def quiet(cls) -> None:
        """From now on a signal is only noted in :attr:`seen`, never raised: for the command's
        last moments, when the work is done and the exit status is being settled."""
        cls._quiet = True

    @staticmethod
    def restore(previous: dict) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    @classmethod
    def report(cls) -> int:
        """Say how the command was stopped, on stderr; return its exit status."""
        code, word = EXITS[cls.seen or signal.SIGINT]
        print(f"rawgpu: {word}", file=sys.stderr, flush=True)
        return code


@contextmanager
def deferred():
    """Hold SIGINT and SIGTERM while the block runs; one that came meanwhile is raised at its end.

    For a few steps that belong together (a checkpoint and its metrics line), never for long:
    a second Ctrl-C during the block is held too."""
    Signals._holding += 1
    try:
        yield
    finally:
        Signals._holding -= 1
        if not Signals._holding and Signals._held is not None:
            signum, Signals._held = Signals._held, None
            raise _exception(signum)
