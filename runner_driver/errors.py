"""The driver's error hierarchy: what can go wrong, split by who has to act.

gitlab-runner distinguishes only two outcomes of a failed stage: the user's script
failed (build failure, not retried) and anything else (system failure, prepare is
retried). Every error the driver raises belongs to exactly one of those, and only
`cli` turns them into exit codes. This module must not import anything heavy: the
CLI imports it on every call.
"""

from __future__ import annotations


class DriverError(Exception):
    """Base class: a system failure unless a subclass says otherwise."""


class ConfigError(DriverError):
    """The driver's configuration file or the runner's environment is wrong."""


class ClusterError(DriverError):
    """The Kubernetes API, or the transport to it, failed an operation."""

    def __init__(self, message: str, *, status: int | None = None,
                 reason: str | None = None, transient: bool = False,
                 retry_after: float | None = None, unsent: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        # The request certainly never reached a server (no connection could be made),
        # so it changed nothing there: a create that failed so left no object behind.
        self.unsent = unsent
        # Worth trying again: the connection failed, the server was overloaded or
        # restarting, or it said so (429 with Retry-After seconds).
        self.transient = transient
        self.retry_after = retry_after


class PodStartError(DriverError):
    """The job's pod could not be started (pull error, bad config, unschedulable)."""


class Canceled(BaseException):
    """The runner asked the driver to stop (SIGTERM).

    Like `asyncio.CancelledError` it is not an `Exception`, so no `except Exception`
    on the way up can mistake a cancel for a failure of the call it interrupted.
    """


class JobFailed(DriverError):
    """The user's job failed: a build failure, never retried by the runner.

    `exit_code` is the script's own exit code, reported to GitLab through
    BUILD_EXIT_CODE_FILE so `allow_failure: exit_codes` works.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
