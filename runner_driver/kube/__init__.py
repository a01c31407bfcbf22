"""The only package that talks to Kubernetes: connection, pod calls, watch and exec.

Stages ask for what they need in their own terms (create this pod, follow it, run
this command there) and get plain values or the driver's own errors back. Every
client exception is translated here into `ClusterError` or `ConfigError`, keeping the
API server's message, and stating the action and the object first. Every wait is
bounded, and only transient failures (connection errors, 5xx, 429 and the messages
GitLab's own executor learned to retry) are retried, with one backoff policy, within
`[kubernetes] retry_timeout_seconds`, each retry logged. This package must not decide
what a job means: it never maps outcomes to exit codes and never prints to the job log.

`connection` finds credentials, `errors` classifies failures, `retry` says how long to
wait, `rest` sends the requests, `pods` holds the calls and the watch, `streams` runs
commands over exec.
"""

from .connection import Connection, connect
from .errors import api_error
from .pods import Cluster, owner_reference
from .rest import ExecSocket
from .retry import RetryPolicy
from .streams import Sink, exit_code, usable, write_all

__all__ = ["Cluster", "Connection", "ExecSocket", "RetryPolicy", "Sink", "api_error",
           "connect", "exit_code", "owner_reference", "usable", "write_all"]
