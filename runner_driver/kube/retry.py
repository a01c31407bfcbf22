"""One backoff policy for every loop that waits before trying the cluster again.

API calls, the pod watch and `run`'s reconnects all back off the same way:
exponentially from `initial` to `maximum` seconds, with jitter so that many drivers
hit by the same outage do not come back in step, never sooner than a `Retry-After`
the server sent, and never past what is left of the caller's time. `retrying` wraps
one API call in that policy (transient `ClusterError`s only, within `budget`, each
retry logged). This module decides only how long to wait: what counts as transient
is `errors`' business, and whether to go on at all is the caller's.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import tenacity

from .. import cancel, logs
from ..errors import ClusterError

# 2 ** 60 times any sensible `initial` is far beyond any `maximum`; larger powers of a
# float would overflow.
_MAX_DOUBLINGS = 60


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, at least a server's Retry-After, within a budget.

    `budget` bounds `retrying` only; loops that sleep on `delay` themselves keep their
    own deadline and pass what is left of it as `remaining`.
    """

    initial: float
    maximum: float
    budget: float = math.inf

    def delay(self, attempt: int, error: BaseException | None = None,
              remaining: float | None = None) -> float:
        """Seconds to wait before try `attempt + 1`, `attempt` (from 1) having just failed.

        `initial * 2 ** (attempt - 1)`, capped at `maximum`, plus up to `initial` of
        jitter; at least the `retry_after` of a ClusterError; at most `remaining`.
        """
        doublings = min(max(attempt - 1, 0), _MAX_DOUBLINGS)
        wait = min(self.initial * 2.0 ** doublings, self.maximum)
        wait += random.uniform(0.0, self.initial)  # noqa: S311 (jitter, not a secret)
        if isinstance(error, ClusterError) and error.retry_after is not None:
            wait = max(wait, error.retry_after)
        if remaining is not None:
            wait = min(wait, max(0.0, remaining))
        return wait

    def retrying(self, what: str) -> tenacity.Retrying:
        """Run one API operation (`policy.retrying(what)(fn, *args)`) under this policy.

        Transient ClusterErrors are retried, each retry logged, until the next wait would
        end after `budget` seconds; then, and for anything else, the error itself goes up.
        """

        def wait(state: tenacity.RetryCallState) -> float:
            return self.delay(state.attempt_number, _error(state))

        def log_retry(state: tenacity.RetryCallState) -> None:
            sleep = state.next_action.sleep if state.next_action else 0.0
            logs.get().warning("retrying a Kubernetes API call after a transient error",
                               attempt=state.attempt_number, action=what,
                               error=str(_error(state)), retry_in=f"{sleep:.1f}s")

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(
                lambda e: isinstance(e, ClusterError) and e.transient),
            stop=tenacity.stop_before_delay(self.budget), wait=wait,
            before_sleep=log_retry, reraise=True, sleep=cancel.sleep)


def _error(state: tenacity.RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome else None


# Kubernetes API requests and the pod watch; `Cluster` sets the budget.
API_RETRY = RetryPolicy(initial=0.2, maximum=5.0)
