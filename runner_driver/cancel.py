"""One home for cancellation: SIGTERM, time limits, and the sections that must finish.

gitlab-runner cancels a stage by sending SIGTERM to its process group (the agent's stage
process gets it forwarded by its client). A canceled stage must stop what it waits for
at once, yet some work must still land: the pod delete of a failed `prepare`, the stop of
a `run` script in the pod, `cleanup` itself. And a few waits have no timeout of their own
(the client's exec handshake). Both used to juggle SIGTERM handlers and `ITIMER_REAL` in
several modules, each resetting the other's timer. Here one owner holds both:

- `install()` makes SIGTERM raise `Canceled` in the stage (further SIGTERMs are noted, not
  raised: the runner escalates to SIGKILL anyway);
- `shielded(seconds)` runs a section that a cancel does not interrupt, for at most
  `seconds` after both the cancel and the section's start, then raises `Canceled`;
- `time_limit(seconds)` raises `TimeoutError` in a block that runs too long.

Signals reach only the main thread, so outside it the shield and the limit are plain
blocks and the callers' own timeouts bound them. This module must not know what a
stage does: it only decides when `Canceled` and `TimeoutError` are raised.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .errors import Canceled

REASON = "received SIGTERM"


class _Timers:
    """Deadlines on the one ITIMER_REAL: the earliest is armed, each raises its own error."""

    def __init__(self) -> None:
        self.due: dict[int, tuple[float, Callable[[], BaseException]]] = {}
        self.ids = itertools.count()

    def add(self, at: float, error: Callable[[], BaseException]) -> int:
        key = next(self.ids)
        self.due[key] = (at, error)
        self._arm()
        return key

    def remove(self, key: int) -> None:
        if self.due.pop(key, None) is not None:
            self._arm()

    def fire(self, _signum: int, _frame: Any) -> None:
        now = time.monotonic()
        expired = [k for k, (at, _) in self.due.items() if at <= now]
        if not expired:
            self._arm()  # early: a timer moved meanwhile
            return
        key = min(expired, key=lambda k: self.due[k][0])
        _at, error = self.due.pop(key)
        self._arm()
        raise error()

    def _arm(self) -> None:
        if not self.due:
            signal.setitimer(signal.ITIMER_REAL, 0)
            return
        signal.signal(signal.SIGALRM, self.fire)
        soonest = min(at for at, _ in self.due.values())
        signal.setitimer(signal.ITIMER_REAL, max(soonest - time.monotonic(), 0.001))


class _Scope:
    """The process's cancel state, as seen by its main thread."""

    def __init__(self) -> None:
        self.canceled_at: float | None = None
        self.shields: list[tuple[int, float]] = []  # (id, seconds) of open sections
        self.expiry: dict[int, int] = {}  # shield id -> its timer
        self.ids = itertools.count()
        self.timers = _Timers()

    def reset(self) -> None:
        """A new stage: not canceled, nothing shielded, no timer armed."""
        self.clear_timers()
        self.canceled_at = None
        self.shields = []
        self.expiry = {}

    def clear_timers(self) -> None:
        for key in list(self.timers.due):
            self.timers.remove(key)

    def on_term(self, _signum: int, _frame: Any) -> None:
        if self.canceled_at is not None:
            return
        self.canceled_at = time.monotonic()
        if not self.shields:
            raise Canceled(REASON)
        for key, seconds in self.shields:
            self._expire(key, self.canceled_at + seconds)

    def _expire(self, key: int, at: float) -> None:
        self.expiry[key] = self.timers.add(at, lambda: Canceled(REASON))


_scope = _Scope()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install() -> None:
    """Make SIGTERM cancel this stage (main thread only); a SIGTERM held back is delivered."""
    if not _main_thread():
        return
    _scope.reset()
    signal.signal(signal.SIGTERM, _scope.on_term)
    # The agent's stage processes hold SIGTERM back until here (see `agent`): one that
    # came early is delivered now, as a cancel.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def uninstall() -> None:
    """The stage is over: a later SIGTERM must not cut its report short; timers off.

    (SIGTERM is ignored, not blocked: a blocked signal would stay blocked in every child
    the process starts.)
    """
    if not _main_thread():
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _scope.clear_timers()


def canceled() -> bool:
    """Whether SIGTERM has arrived."""
    return _scope.canceled_at is not None


@contextmanager
def shielded(seconds: float) -> Iterator[None]:
    """Run the block through a cancel, for at most `seconds` after the cancel and its start.

    A cancel that came while the block ran and that it outlived is not raised at its end:
    every shielded section is the last work of its stage (the delete after a failed
    start, the stop of a canceled script, `cleanup`), which reports what it did.

    Raises:
        Canceled: the block was still running when its time after the cancel ran out.
    """
    if not _main_thread():
        yield
        return
    scope = _scope
    key = next(scope.ids)
    started = time.monotonic()
    scope.shields.append((key, seconds))
    if scope.canceled_at is not None:
        scope._expire(key, max(scope.canceled_at, started) + seconds)
    try:
        yield
    finally:
        scope.shields = [(k, s) for k, s in scope.shields if k != key]
        timer = scope.expiry.pop(key, None)
        if timer is not None:
            scope.timers.remove(timer)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the block after `seconds` (main thread only; else unbounded)."""
    if not _main_thread():
        yield
        return
    timer = _scope.timers.add(time.monotonic() + seconds,
                              lambda: TimeoutError(f"no answer within {seconds:g}s"))
    try:
        yield
    finally:
        _scope.timers.remove(timer)
