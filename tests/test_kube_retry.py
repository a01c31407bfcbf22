"""`kube.retry`: one backoff policy for API calls, the pod watch and `run`'s reconnects.

`delay` is checked as the pure function it is (jitter bounded, not pinned); `retrying`
with callables that fail on cue, no cluster needed.
"""

from __future__ import annotations

import dataclasses
import io
import time

import pytest
import tenacity

from runner_driver.errors import ClusterError
from runner_driver.kube.retry import API_RETRY, RetryPolicy
from tests.conftest import logged


def api_retrying(budget: float) -> tenacity.Retrying:
    """The API's policy with `budget` seconds, wrapping one operation "doing x"."""
    return dataclasses.replace(API_RETRY, budget=budget).retrying("doing x")


# --- delay -------------------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "low"), [(1, 0.2), (2, 0.4), (3, 0.8), (4, 1.6)])
def test_delay_doubles_from_initial_with_at_most_initial_of_jitter(attempt: int,
                                                                   low: float) -> None:
    """Attempt n waits initial * 2**(n-1) plus jitter in [0, initial]."""
    waits = [RetryPolicy(0.2, 5.0).delay(attempt) for _ in range(200)]
    assert all(low <= wait <= low + 0.2 for wait in waits)
    assert len(set(waits)) > 1


def test_delay_is_capped_at_maximum_plus_jitter() -> None:
    """However many attempts failed, the wait stays within maximum + initial."""
    retry = RetryPolicy(0.1, 5.0)
    for attempt in (7, 8, 50, 10**6):
        assert 5.0 <= retry.delay(attempt) <= 5.1


def test_delay_waits_at_least_the_servers_retry_after() -> None:
    """A ClusterError's retry_after lifts the wait to it; a shorter one changes nothing."""
    retry = RetryPolicy(0.2, 5.0)
    assert retry.delay(1, ClusterError("slow down", status=429, retry_after=3.0)) == 3.0
    assert retry.delay(1, ClusterError("slow down", retry_after=7.5)) == 7.5  # past maximum
    assert 1.6 <= retry.delay(4, ClusterError("x", retry_after=0.1)) <= 1.8
    assert retry.delay(1, ClusterError("x")) <= 0.4
    assert retry.delay(1, OSError("reset")) <= 0.4


def test_remaining_time_caps_every_wait() -> None:
    """No wait outlasts `remaining`, not even the server's retry_after; past it, no wait."""
    retry = RetryPolicy(0.2, 5.0)
    assert retry.delay(10, remaining=0.5) == 0.5
    assert retry.delay(1, ClusterError("x", retry_after=3.0), remaining=1.0) == 1.0
    assert retry.delay(1, remaining=-2.0) == 0.0
    assert retry.delay(1, remaining=60.0) <= 0.4


def test_the_api_policy_starts_at_a_fifth_of_a_second_and_stops_at_five() -> None:
    """API calls and the pod watch back off from 0.2 s to 5 s, with no budget of their own."""
    assert (API_RETRY.initial, API_RETRY.maximum, API_RETRY.budget) == (0.2, 5.0, float("inf"))


# --- retrying ----------------------------------------------------------------------------


class Flaky:
    """A callable failing with the given errors in turn, then returning "done"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_retrying_retries_transient_errors_only(retry_log: io.StringIO) -> None:
    """Transient ClusterErrors are retried until the call succeeds; each retry is logged."""
    flaky = Flaky(ClusterError("a", transient=True))
    assert api_retrying(10.0)(flaky) == "done"
    assert flaky.calls == 2
    assert [(e["attempt"], e["action"], e["error"]) for e in logged(retry_log)] == [
        (1, "doing x", "a")]


@pytest.mark.parametrize("error", [
    pytest.param(ClusterError("refused", status=403), id="non-transient-cluster-error"),
    pytest.param(ValueError("a bug"), id="other-exception"),
])
def test_retrying_raises_anything_else_at_once(error: Exception,
                                               retry_log: io.StringIO) -> None:
    """Non-transient errors and other exceptions go up unchanged after one call, unlogged."""
    flaky = Flaky(error)
    with pytest.raises(type(error)) as raised:
        api_retrying(10.0)(flaky)
    assert raised.value is error and flaky.calls == 1
    assert logged(retry_log) == []


def test_retrying_stops_before_the_budget_with_the_last_error() -> None:
    """Within `budget` seconds the policy gives up, raising the last error itself."""
    errors = [ClusterError(f"attempt {n}", transient=True) for n in range(1, 100)]
    flaky = Flaky(*errors)
    started = time.monotonic()
    with pytest.raises(ClusterError) as raised:
        api_retrying(0.5)(flaky)
    assert time.monotonic() - started < 0.5 + 0.4  # the last call and a late wake-up
    assert flaky.calls >= 2
    assert str(raised.value) == f"attempt {flaky.calls}"


def test_retrying_waits_at_least_retry_after() -> None:
    """A transient error carrying retry_after is retried no sooner than that."""
    flaky = Flaky(ClusterError("slow down", status=429, transient=True, retry_after=0.5))
    started = time.monotonic()
    assert api_retrying(10.0)(flaky) == "done"
    assert time.monotonic() - started >= 0.5


def test_backoff_grows_from_a_fifth_of_a_second_to_five_seconds() -> None:
    """Waits between retries double from ~0.2 s and never exceed 5 s (plus jitter)."""
    retrying = api_retrying(1000.0)
    waits: list[float] = []
    for attempt in range(1, 12):
        state = tenacity.RetryCallState(retrying, fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        state.set_exception((ClusterError, ClusterError("x", transient=True), None))
        waits.append(float(retrying.wait(state)))
    assert 0.2 <= waits[0] <= 0.4
    assert waits[2] >= 0.8
    assert all(wait <= 5.0 + 0.2 for wait in waits)
    assert waits[-1] >= 4.0
