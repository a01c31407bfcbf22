"""`cancel`: SIGTERM, shielded sections and time limits, in a process of their own.

Each case runs in a fresh interpreter, because it installs signal handlers and arms
the process's one ITIMER_REAL; it prints what happened and when, in seconds after the
SIGTERM (or after the start when there is none).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import os, signal, sys, threading, time
from runner_driver import cancel
from runner_driver.errors import Canceled
cancel.install()
start = time.monotonic()
def term(after=0.0):
    threading.Timer(after, os.kill, (os.getpid(), signal.SIGTERM)).start()
def say(what):
    print(f"{what} {time.monotonic() - start:.1f}", flush=True)
def busy(seconds):  # sleeps in slices: a signal raises between two
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.02)
"""


def run(body: str) -> list[tuple[str, float]]:
    """What the case said, and when; it must exit 0."""
    result = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return [(what, float(at)) for what, _, at in
            (line.rpartition(" ") for line in result.stdout.splitlines())]


def at(seconds: float) -> object:
    """A time as the case reports it, allowing for a loaded machine (late, not early)."""
    return pytest.approx(seconds + 0.15, abs=0.2)


def test_sigterm_outside_a_shield_cancels_at_once() -> None:
    """SIGTERM raises Canceled in the stage as it arrives."""
    assert run("""
        term(0.2)
        try:
            busy(5)
        except Canceled:
            say("canceled")
        """) == [("canceled", at(0.2))]


def test_a_shielded_block_that_ends_in_time_is_not_canceled() -> None:
    """SIGTERM inside shielded(2): a block ending 0.5 s later finishes; nothing is raised."""
    assert run("""
        term(0.3)
        with cancel.shielded(2.0):
            busy(0.8)
            say("finished")
        say(f"after canceled={cancel.current().canceled_at is not None}")
        """) == [("finished", at(0.8)), ("after canceled=True", at(0.8))]


def test_a_shielded_block_is_cut_its_seconds_after_the_sigterm() -> None:
    """SIGTERM inside shielded(0.5) of a 5 s block: Canceled 0.5 s after the signal."""
    assert run("""
        term(0.3)
        try:
            with cancel.shielded(0.5):
                busy(5)
        except Canceled:
            say("canceled")
        """) == [("canceled", at(0.8))]


def test_a_shield_entered_after_the_cancel_gets_its_seconds_from_its_start() -> None:
    """The stop after a cancel has its whole shield time, counted from when it starts."""
    assert run("""
        term(0.1)
        try:
            busy(5)
        except Canceled:
            busy(0.5)
            try:
                with cancel.shielded(0.6):
                    busy(5)
            except Canceled:
                say("cut")
        """) == [("cut", at(1.2))]


def test_a_second_sigterm_is_ignored() -> None:
    """Once canceled, later SIGTERMs raise nothing (the runner escalates to SIGKILL)."""
    assert run("""
        term(0.1)
        try:
            busy(5)
        except Canceled:
            term(0.1)
            busy(0.4)
            say("stopping undisturbed")
        """) == [("stopping undisturbed", at(0.5))]


def test_nested_shields_share_the_one_timer_and_the_tighter_cuts_first() -> None:
    """One ITIMER_REAL serves both: the inner shield's cut comes first, the outer's follows."""
    assert run("""
        term(0.1)
        try:
            with cancel.shielded(1.0):
                try:
                    with cancel.shielded(0.3):
                        busy(5)
                except Canceled:
                    say("inner cut")
                busy(5)
        except Canceled:
            say("outer cut")
        """) == [("inner cut", at(0.4)), ("outer cut", at(1.1))]


def test_a_shield_left_in_time_leaves_no_timer_behind() -> None:
    """A shield the block left before its cut is disarmed: nothing fires later."""
    assert run("""
        term(0.1)
        with cancel.shielded(0.5):
            busy(0.2)
        busy(0.6)
        say(f"timer={signal.getitimer(signal.ITIMER_REAL)[0]}")
        """) == [("timer=0.0", at(0.8))]


def test_a_thread_scope_is_cut_at_its_tighter_shield_as_the_main_thread_is() -> None:
    """In an agent's stage thread, a check past an open inner shield's time raises, even
    while an outer shield still has time."""
    assert run("""
        scope = cancel.Scope()
        def work():
            with cancel.entered(scope):
                try:
                    with cancel.shielded(1.0), cancel.shielded(0.3):
                        while True:
                            cancel.sleep(0.02)
                except Canceled:
                    say("cut")
        thread = threading.Thread(target=work)
        thread.start()
        time.sleep(0.1)
        scope.cancel()
        thread.join()
        """) == [("cut", at(0.4))]


def test_uninstall_ignores_sigterm_and_disarms_the_timers() -> None:
    """After the stage, SIGTERM is ignored and an open shield's cut never fires."""
    assert run("""
        shield = cancel.shielded(0.3)
        shield.__enter__()
        term(0.0)
        busy(0.1)
        cancel.uninstall()
        term(0.0)
        busy(0.5)
        say(f"alive timer={signal.getitimer(signal.ITIMER_REAL)[0]}")
        """) == [("alive timer=0.0", at(0.6))]


def test_outside_the_main_thread_a_shield_is_a_plain_block() -> None:
    """Signals reach only the main thread: elsewhere the callers' own timeouts bound it."""
    assert run("""
        def work():
            with cancel.shielded(0.1):
                busy(0.3)
            say("thread done")
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        """) == [("thread done", at(0.3))]
