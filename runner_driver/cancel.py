"""One home for cancellation: SIGTERM, and the sections that must finish.

gitlab-runner cancels a stage by sending SIGTERM to its process group; a stage the agent
runs is canceled by its client (which got that SIGTERM, or died). A canceled stage must
stop what it waits for at once, yet some work must still land: the pod delete of a
failed `prepare`, the stop of a `run` script in the pod, `cleanup` itself. Each stage
has one `Scope` here, and everything else asks it:

- `cancel()` (SIGTERM, or the agent on the client's word) marks the stage canceled.
  In a stage process's main thread it raises `Canceled` at once, as the signal arrives;
  in an agent's stage thread the stage meets it at its next `check()` or `sleep()`, and
  the waits it is blocked in are broken by the `interrupting` callbacks it registered.
- `shielded(seconds)` runs a section that a cancel does not interrupt, for at most
  `seconds` after both the cancel and the section's start, then raises `Canceled`.

Signals and the one ITIMER_REAL belong to the main thread, so only it gets the
immediate raise and the timers (one per open shield, on that one timer); threads rely
on the checks and on their callers' timeouts. This module must not know what a stage
does: it only decides when `Canceled` is raised.
"""

from __future__ import annotations

import contextlib
import contextvars
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

    def clear(self) -> None:
        for key in list(self.due):
            self.remove(key)

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


class Scope:
    """One stage's cancellation: whether and when it was canceled, and what it shields."""

    def __init__(self, main: bool = False) -> None:
        self.main = main  # the process's main thread: signals and timers are ours
        self.ids = itertools.count()
        self.timers = _Timers()
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """A new stage: not canceled, nothing shielded, no timer armed."""
        self.timers.clear()
        self.canceled_at: float | None = None
        self.event = threading.Event()
        self.shields: dict[int, tuple[float, float]] = {}  # id -> (started, seconds)
        self.expiry: dict[int, int] = {}  # shield id -> its timer (main thread)
        self.interrupts: dict[int, Callable[[], object]] = {}

    def cancel(self) -> None:
        """Mark the stage canceled; break its waits unless a shield holds them."""
        with self.lock:
            if self.canceled_at is not None:
                return
            self.canceled_at = time.monotonic()
            self.event.set()
            shielded = bool(self.shields)
            breakers = [] if shielded else list(self.interrupts.values())
        for breaker in breakers:
            with contextlib.suppress(Exception):  # breaking a wait is best effort
                breaker()

    def on_term(self, _signum: int, _frame: Any) -> None:
        """The SIGTERM handler of a stage process's main thread."""
        if self.canceled_at is not None:
            return  # the runner escalates to SIGKILL anyway
        self.cancel()
        if not self.shields:
            raise Canceled(REASON)
        for key, (started, seconds) in self.shields.items():
            self._expire(key, max(started, self.canceled_at or 0.0) + seconds)

    def check(self) -> None:
        """Raise Canceled if the stage was canceled outside a shield, or past the time of
        an open one (as its timer does in a main thread)."""
        if self.canceled_at is None:
            return
        now = time.monotonic()
        if not self.shields or any(max(started, self.canceled_at) + seconds <= now
                                   for started, seconds in self.shields.values()):
            raise Canceled(REASON)

    def sleep(self, seconds: float) -> None:
        """Sleep, or less if the stage is canceled meanwhile (then raise)."""
        self.check()
        if seconds > 0:
            self.event.wait(seconds)
        self.check()

    def _expire(self, key: int, at: float) -> None:
        if self.main:
            self.expiry[key] = self.timers.add(at, lambda: Canceled(REASON))


_process = Scope(main=True)
_current: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("cancel_scope",
                                                                        default=None)


def current() -> Scope:
    """This stage's scope: the thread's own in the agent, else the process's."""
    return _current.get() or _process


def install() -> None:
    """Make SIGTERM cancel this stage (main thread only); a SIGTERM held back is delivered."""
    if threading.current_thread() is not threading.main_thread():
        return
    _process.reset()
    signal.signal(signal.SIGTERM, _process.on_term)
    # A stage process started with SIGTERM blocked gets one that came early, now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def uninstall() -> None:
    """The stage is over: a later SIGTERM must not cut its report short; timers off.

    (SIGTERM is ignored, not blocked: a blocked signal would stay blocked in every child
    the process starts.)
    """
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _process.timers.clear()


@contextmanager
def entered(scope: Scope) -> Iterator[Scope]:
    """Make `scope` the current one in this thread (an agent's stage thread)."""
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)


def check() -> None:
    """Raise Canceled if this stage was canceled outside a shield."""
    current().check()


def sleep(seconds: float) -> None:
    """Sleep at most `seconds`; raise Canceled as soon as this stage is canceled."""
    current().sleep(seconds)


@contextmanager
def interrupting(breaker: Callable[[], object]) -> Iterator[None]:
    """While in the block, a cancel calls `breaker` (e.g. closes the socket it waits on)."""
    scope = current()
    with scope.lock:
        key = next(scope.ids)
        scope.interrupts[key] = breaker
        canceled = scope.canceled_at is not None and not scope.shields
    try:
        if canceled:
            breaker()
        yield
    finally:
        with scope.lock:
            scope.interrupts.pop(key, None)


@contextmanager
def shielded(seconds: float) -> Iterator[None]:
    """Run the block through a cancel, for at most `seconds` after the cancel and its start.

    A cancel that came while the block ran and that it outlived is not raised at its end:
    every shielded section is the last work of its stage (the delete after a failed
    start, the stop of a canceled script, `cleanup`), which reports what it did.

    Raises:
        Canceled: the block was still running when its time after the cancel ran out
            (at once in a main thread; at its next check in an agent's stage thread).
    """
    scope = current()
    started = time.monotonic()
    with scope.lock:
        key = next(scope.ids)
        scope.shields[key] = (started, seconds)
        canceled_at = scope.canceled_at
    if canceled_at is not None:
        scope._expire(key, max(canceled_at, started) + seconds)
    try:
        yield
    finally:
        with scope.lock:
            scope.shields.pop(key, None)
        timer = scope.expiry.pop(key, None)
        if timer is not None:
            scope.timers.remove(timer)
