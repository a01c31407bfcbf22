"""The only module that talks to Kubernetes: connection, pod calls, watch and exec.

Stages ask for what they need in their own terms (create this pod, wait until it
runs, run this script there) and get plain values or the driver's own errors back.
Every client exception is translated here into `ClusterError` or `ConfigError`,
keeping the API server's message, and stating the action and the object first.
Every wait is bounded, and only transient failures (connection errors, 5xx, 429 and
the messages GitLab's own executor learned to retry) are retried, with backoff,
within `[kubernetes] retry_timeout_seconds`, each retry logged. This module must not
decide what a job means: it never maps outcomes to exit codes and never prints to
the job log.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import http
import json
import math
import os
import re
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tenacity
import urllib3
import websocket
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream, ws_client

from . import logs
from .errors import ClusterError, ConfigError, PodStartError
from .podstatus import PodState, assess
from .settings import KubernetesSettings

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
STDIN_CHUNK = 32 * 1024
# `stream()` with the client's own `capture_all` switched off: by default it keeps a
# second copy of every output byte for read_all(), so memory would grow with the log.
_stream_uncaptured = functools.partial(
    stream.func, functools.partial(ws_client.websocket_call, capture_all=False), None)
CHANNEL_STDOUT, CHANNEL_STDERR, CHANNEL_ERROR = 1, 2, 3
PUMP_TICK_SECONDS = 1.0
# Failures GitLab's Kubernetes executor retries (its built-in `retry_limits` list, see
# kubernetes-executor-lessons.md), as they appear in client and server messages.
TRANSIENT_MESSAGES = (
    "error dialing backend", "tls handshake timeout", "connection timed out",
    "timeout occurred", "etcdserver: request timed out", "http2: client connection lost",
    "connection refused", "tls: internal error", "unexpected eof", "connection reset",
    "broken pipe", "connection aborted", "request did not complete within requested timeout",
    "context deadline exceeded",
)
RETRY_AFTER_MAX = 30.0


@dataclass(frozen=True)
class Connection:
    """A configured client and the namespace the driver works in."""

    configuration: Any
    namespace: str
    server: str


def connect(settings: KubernetesSettings, source: str,
            environ: Mapping[str, str] | None = None,
            service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> Connection:
    """Find cluster credentials as every Kubernetes tool does.

    An explicit `[kubernetes] kubeconfig` wins; otherwise the pod's service account
    when running in a cluster, else $KUBECONFIG, else ~/.kube/config.

    Raises:
        ConfigError: no usable credentials, naming where they were looked for.
    """
    env = os.environ if environ is None else environ
    configuration = client.Configuration()
    in_cluster = (not settings.kubeconfig and bool(env.get("KUBERNETES_SERVICE_HOST"))
                  and (service_account_dir / "token").exists())
    if in_cluster:
        where = "the pod's service account"
    else:
        where = settings.kubeconfig or env.get("KUBECONFIG") or "~/.kube/config"
    try:
        if in_cluster:
            config.incluster_config.InClusterConfigLoader(
                token_filename=str(service_account_dir / "token"),
                cert_filename=str(service_account_dir / "ca.crt"),
                environ=env).load_and_set(configuration)
            namespace = settings.namespace or _read(service_account_dir / "namespace")
        else:
            # Load exactly the file(s) `where` names: the client's own default is
            # $KUBECONFIG as it was at import, not that of `environ`.
            path = where
            context = settings.context or None
            config.load_kube_config(config_file=path, context=context,
                                    client_configuration=configuration)
            namespace = settings.namespace or _context_namespace(path, context)
    # TypeError and AttributeError: the client's loader on a YAML document that is not
    # a mapping (a stray string, list or number).
    except (config.ConfigException, OSError, ValueError, yaml.YAMLError, TypeError,
            AttributeError) as error:
        detail = " ".join(str(error).split())  # YAML errors span lines; ours is one line
        raise ConfigError(
            f"loading cluster credentials from {where}: {detail}; set [kubernetes] kubeconfig "
            f"and context in {source}, or KUBECONFIG") from error
    # urllib3 would otherwise retry some failures silently (and others not at all):
    # every retry goes through `Cluster._call`, where it is bounded and logged.
    configuration.retries = False
    return Connection(configuration, namespace or "default", configuration.host)


# The API calls the stages make.
_CALLS = ("connect_get_namespaced_pod_exec", "create_namespaced_pod", "read_namespaced_pod",
          "list_namespaced_pod", "delete_namespaced_pod", "list_namespaced_event",
          "create_namespaced_secret", "list_namespaced_secret", "delete_namespaced_secret")


def warm_up(connection: Connection) -> None:
    """Do now what the client does on first use, so the job's agent does it once.

    The client imports its API classes and their ~250 models lazily (about 0.3 s of
    CPU), and builds each API method's argument validator (pydantic `validate_call`
    with `defer_build`) on its first call, a few ms each. A call with no arguments
    fails that validation before any request is made, and leaves the validator built.
    """
    api = Cluster(connection, 1.0)._exec_core  # CoreV1Api and its models
    for model in ("V1Pod", "V1PodList", "V1Status", "CoreV1EventList", "V1Secret",
                  "V1SecretList", "V1DeleteOptions", "V1WatchEvent"):
        getattr(client, model)
    for name in _CALLS:
        with contextlib.suppress(Exception):
            getattr(api, name)(None, None)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip() if path.exists() else ""


def _context_namespace(path: str | None, context: str | None) -> str:
    contexts, active = config.list_kube_config_contexts(config_file=path)
    chosen = next((c for c in contexts if c.get("name") == context), active) if context \
        else active
    return str(((chosen or {}).get("context") or {}).get("namespace") or "")


def api_error(action: str, error: Exception) -> ClusterError:
    """Translate a client exception into ours: action and object first, then the server's words."""
    if isinstance(error, ApiException):
        status = error.status or None
        body = error.body.decode(errors="replace") if isinstance(error.body, bytes) \
            else error.body
        reason, message = error.reason, ""
        retry_after = _retry_after(error.headers)
        if status is None:
            status, message = _handshake_failure(str(error.reason or ""))
            if status is not None:  # not the raw text with the response headers
                reason = _status_phrase(status)
            if retry_after is None:  # a failed exec handshake has no headers here
                retry_after = _status_retry_after(_handshake_status(str(error.reason or "")))
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                message = str(parsed.get("message") or "")
                reason = str(parsed.get("reason") or reason)
                if retry_after is None:
                    retry_after = _status_retry_after(parsed)
        text = f"{action}: {status} {reason}" if status else f"{action}: {reason}"
        text = f"{text}: {message}" if message else text
        return ClusterError(text, status=status, reason=str(reason),
                            transient=_transient(status, text), retry_after=retry_after)
    if isinstance(error, urllib3.exceptions.SSLError | ssl.SSLError) \
            or "CERTIFICATE_VERIFY_FAILED" in str(error):
        # A certificate the CA does not vouch for stays wrong however often we ask.
        return ClusterError(f"{action}: TLS with the Kubernetes API failed: {error}; check the "
                            "certificate authority in the kubeconfig")
    if isinstance(error, urllib3.exceptions.HTTPError | OSError
                  | websocket.WebSocketException):
        return ClusterError(f"{action}: cannot reach the Kubernetes API: {error}",
                            transient=True)
    return ClusterError(f"{action}: {error}")


def _transient(status: int | None, text: str) -> bool:
    if status is None or status == 429 or status >= 500:
        return True
    lowered = text.lower()
    return any(phrase in lowered for phrase in TRANSIENT_MESSAGES)


def _retry_after(headers: Any) -> float | None:
    """Seconds from a Retry-After header (the API server sends delta-seconds)."""
    try:
        value = float((headers or {}).get("Retry-After") or "")
    except (TypeError, ValueError):
        return None
    return min(max(value, 0.0), RETRY_AFTER_MAX) if math.isfinite(value) else None


class _Backoff:
    """Exponential backoff with jitter that waits at least what the server asked for."""

    def __init__(self, initial: float = 0.2, maximum: float = 5.0) -> None:
        self._exponential = (tenacity.wait_exponential(multiplier=initial, max=maximum)
                             + tenacity.wait_random(0, initial))

    def __call__(self, state: tenacity.RetryCallState) -> float:
        wait = float(self._exponential(state))
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, ClusterError) and error.retry_after is not None:
            wait = max(wait, error.retry_after)
        return wait


def retrying(what: str, budget: float) -> tenacity.Retrying:
    """A retry policy for one API operation: transient errors only, within `budget` s."""

    def log_retry(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        logs.get().warning("retrying a Kubernetes API call after a transient error",
                           attempt=state.attempt_number, action=what, error=str(error),
                           retry_in=f"{wait:.1f}s")

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(
            lambda e: isinstance(e, ClusterError) and e.transient),
        stop=tenacity.stop_before_delay(budget), wait=_Backoff(),
        before_sleep=log_retry, reraise=True)


def _handshake_failure(reason: str) -> tuple[int | None, str]:
    """Status and message of a failed exec handshake, from the client's error text.

    The websocket client reports e.g. `Handshake status 404 Not Found -+-+- {headers}
    -+-+- b'{...Status JSON...}'`.
    """
    found = re.search(r"Handshake status (\d+)", reason)
    status = int(found.group(1)) if found else None
    parsed = _handshake_status(reason)
    message = str(parsed.get("message") or "") if isinstance(parsed, dict) else ""
    return status, message or (reason if status is None else "")


def _handshake_status(reason: str) -> Any:
    """The Status JSON in a failed exec handshake's error text, or None."""
    body = reason.rsplit("-+-+-", 1)[-1].strip() if "-+-+-" in reason else ""
    try:
        # Older websocket-client versions show the body as a bytes repr, newer ones as text.
        return json.loads(ast.literal_eval(body) if body.startswith(("b'", 'b"')) else body)
    except (ValueError, SyntaxError):
        return None


def _status_retry_after(status: Any) -> float | None:
    """A Status's `details.retryAfterSeconds` (the API server sets it with 429), capped."""
    details = status.get("details") if isinstance(status, dict) else None
    value = details.get("retryAfterSeconds") if isinstance(details, dict) else None
    return None if value is None else _retry_after({"Retry-After": value})


def _status_phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "exec handshake refused"


class Cluster:
    """Pod operations in the driver's namespace."""

    def __init__(self, connection: Connection, request_timeout: float,
                 retry_timeout: float = 60.0) -> None:
        self.namespace = connection.namespace
        self.server = connection.server
        self.retry_timeout = retry_timeout
        self._timeout = request_timeout
        self._configuration = connection.configuration
        self._core = client.CoreV1Api(client.ApiClient(connection.configuration))

    @functools.cached_property
    def _exec_core(self) -> Any:
        # `stream()` swaps the request method of the ApiClient it uses: exec gets its own,
        # made only by the stages that exec.
        return client.CoreV1Api(client.ApiClient(self._configuration))

    def _once(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            response = call(*args, _preload_content=False, _request_timeout=self._timeout,
                            **kwargs)
            return json.loads(response.data)
        except Exception as error:
            raise api_error(what, error) from error

    def _call(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One API request, retried while it fails transiently."""
        return retrying(what, self.retry_timeout)(self._once, what, call, *args, **kwargs)

    # --- pods -------------------------------------------------------------------

    def create_pod(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create the pod; a leftover with the same name (an earlier attempt) is replaced.

        A retried create whose first try reached the server also ends here with 409:
        replacing the pod costs a few seconds and is right in both cases.
        """
        name = manifest["metadata"]["name"]
        what = f"creating pod {self.namespace}/{name}"
        try:
            return dict(self._call(what, self._core.create_namespaced_pod,
                                   self.namespace, manifest))
        except ClusterError as error:
            if error.status != 409:
                raise
        self.delete_pod(name, grace_seconds=0)
        self.wait_gone(name, timeout=60)
        return dict(self._call(what, self._core.create_namespaced_pod,
                               self.namespace, manifest))

    def read_pod(self, name: str) -> dict[str, Any] | None:
        """The pod, or None when it does not exist."""
        try:
            return dict(self._call(f"reading pod {self.namespace}/{name}",
                                   self._core.read_namespaced_pod, name, self.namespace))
        except ClusterError as error:
            if error.status == 404:
                return None
            raise

    def list_pods(self, label_selector: str) -> list[dict[str, Any]]:
        """The pods whose labels match `label_selector`."""
        listed = self._call(f"listing pods in {self.namespace} ({label_selector})",
                            self._core.list_namespaced_pod, self.namespace,
                            label_selector=label_selector)
        return list(listed.get("items") or [])

    def delete_pod(self, name: str, grace_seconds: int | None = None, uid: str = "") -> bool:
        """Ask for the pod's deletion; False when it was already gone.

        With `uid`, only that incarnation of the name is deleted: a newer pod of the same
        name makes the API server refuse with 409 Conflict. Objects the pod owns (see
        `owner_reference`) are removed by Kubernetes with it.
        """
        options: dict[str, Any] = {"propagation_policy": "Background"}
        if grace_seconds is not None:
            options["grace_period_seconds"] = grace_seconds
        return self._delete(f"deleting pod {self.namespace}/{name}",
                            self._core.delete_namespaced_pod, name, uid, options)

    def _delete(self, what: str, call: Callable[..., Any], name: str, uid: str,
                options: dict[str, Any]) -> bool:
        """A delete (of incarnation `uid` only, when given); False when already gone."""
        if uid:
            options = {**options, "body": {"preconditions": {"uid": uid}}}
        try:
            self._call(what, call, name, self.namespace, **options)
        except ClusterError as error:
            if error.status == 404:
                return False
            raise
        return True

    def pod_events(self, name: str, uid: str = "") -> list[dict[str, Any]]:
        """The events about the pod, oldest first; with `uid`, only this incarnation's.

        Earlier prepare attempts create pods of the same name: their events would
        otherwise show up again.
        """
        selector = f"involvedObject.name={name}" + (f",involvedObject.uid={uid}" if uid else "")
        listed = self._call(f"listing events of pod {self.namespace}/{name}",
                            self._core.list_namespaced_event, self.namespace,
                            field_selector=selector)
        items = list(listed.get("items") or [])
        items.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        return items

    # --- objects owned by the pod -------------------------------------------------

    def create_secret(self, manifest: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
        """Create a per-job secret owned by the pod `owner`, so it goes when the pod goes."""
        body = {**manifest, "metadata": {**manifest["metadata"],
                                         "ownerReferences": [owner_reference(owner)]}}
        name = body["metadata"]["name"]
        return dict(self._call(f"creating secret {self.namespace}/{name}",
                               self._core.create_namespaced_secret, self.namespace, body))

    def list_secrets(self, label_selector: str) -> list[dict[str, Any]]:
        """The secrets whose labels match `label_selector` (values are not used)."""
        listed = self._call(f"listing secrets in {self.namespace} ({label_selector})",
                            self._core.list_namespaced_secret, self.namespace,
                            label_selector=label_selector)
        return list(listed.get("items") or [])

    def delete_secret(self, name: str, uid: str = "") -> bool:
        """Delete a secret (only incarnation `uid` when given); False when already gone."""
        return self._delete(f"deleting secret {self.namespace}/{name}",
                            self._core.delete_namespaced_secret, name, uid, {})

    # --- waiting ------------------------------------------------------------------

    def _watch_pod(self, name: str, resource_version: str,
                   timeout: float) -> Iterator[tuple[str, dict[str, Any]]]:
        """Events (type, pod) for one pod from `resource_version`, for at most `timeout` s."""
        watcher = watch.Watch()
        try:
            for event in watcher.stream(
                    self._core.list_namespaced_pod, self.namespace,
                    field_selector=f"metadata.name={name}", resource_version=resource_version,
                    allow_watch_bookmarks=True, timeout_seconds=max(1, int(timeout)),
                    _request_timeout=timeout + self._timeout):
                yield str(event.get("type")), dict(event.get("raw_object") or {})
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
            raise api_error(f"watching pod {self.namespace}/{name}", error) from error
        finally:
            watcher.stop()

    def _pod_updates(self, pod: dict[str, Any], deadline: float
                     ) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """("MODIFIED"/"DELETED", pod) for one pod until `deadline`, surviving a flaky API.

        A watch that ends is reopened from the last resource version (bookmarks keep it
        fresh); `410 Gone` re-reads the pod; transient errors are retried with backoff
        until `deadline`. Yields ("DELETED", None) when the pod disappeared.
        """
        name = pod["metadata"]["name"]
        version = str(pod["metadata"].get("resourceVersion") or "")
        failures = 0
        while (remaining := deadline - time.monotonic()) > 0:
            opened, seen = time.monotonic(), False
            try:
                for kind, obj in self._watch_pod(name, version, remaining):
                    failures, seen = 0, True
                    version = str((obj.get("metadata") or {}).get("resourceVersion")
                                  or version)
                    if kind == "BOOKMARK":
                        continue
                    # (ERROR events never get here: the client raises them as ApiException.)
                    yield kind, (None if kind == "DELETED" else obj)
                    if kind == "DELETED":
                        return
                if not seen and time.monotonic() - opened < 1.0:
                    time.sleep(0.2)  # a server that ends watches at once: do not spin
            except ClusterError as error:
                if error.status == 410:
                    # Our resource version is too old: re-list. The list's own version
                    # is current, where an unchanged pod's would be too old again.
                    listed = self._call(f"listing pod {self.namespace}/{name}",
                                        self._core.list_namespaced_pod, self.namespace,
                                        field_selector=f"metadata.name={name}")
                    items = list(listed.get("items") or [])
                    if not items:
                        yield "DELETED", None
                        return
                    version = str((listed.get("metadata") or {}).get("resourceVersion")
                                  or items[0]["metadata"].get("resourceVersion") or "")
                    yield "MODIFIED", dict(items[0])
                    continue
                if not error.transient:
                    raise
                failures += 1
                wait = min(0.2 * 2 ** failures, 5.0, max(0.0, deadline - time.monotonic()))
                if error.retry_after is not None:
                    wait = max(wait, min(error.retry_after,
                                         max(0.0, deadline - time.monotonic())))
                logs.get().warning("watching the pod again after a transient error",
                                   attempt=failures, action=f"watching pod {self.namespace}/"
                                   f"{name}", error=str(error), retry_in=f"{wait:.1f}s")
                time.sleep(wait)

    def wait_running(self, created: dict[str, Any], timeout: float,
                     progress: Callable[[PodState], None],
                     unschedulable_timeout: float | None = None) -> dict[str, Any]:
        """Wait on a watch until every container of the pod runs.

        Fails at once when the pod cannot start (see `podstatus.assess`), after
        `unschedulable_timeout` seconds of the scheduler finding no node, and after
        `timeout` seconds when it still has not started (slow pulls, a lost node).

        Raises:
            PodStartError: naming the reason; ClusterError when the API fails.
        """
        name = created["metadata"]["name"]
        started = time.monotonic()
        pod: dict[str, Any] = created
        last = assess(created)
        progress(last)
        while last.phase == "starting":
            limit = timeout
            if last.unschedulable and unschedulable_timeout is not None:
                limit = min(timeout, unschedulable_timeout)
            if time.monotonic() - started >= limit:
                raise PodStartError(f"pod {self.namespace}/{name} did not start within "
                                    f"{limit:g}s: {last.message}")
            for _kind, obj in self._pod_updates(pod, started + limit):
                if obj is None:
                    raise PodStartError(f"pod {self.namespace}/{name} was deleted while "
                                        "it was starting")
                pod = obj
                state = assess(pod)
                if state.message != last.message:
                    progress(state)
                changed = state.phase != last.phase or state.unschedulable != last.unschedulable
                last = state
                if changed:  # the time limit may be another one now
                    break
        if last.phase == "failed":
            raise PodStartError(last.message)
        return pod

    def wait_gone(self, name: str, timeout: float) -> bool:
        """Wait until the pod no longer exists; False if it is still there after `timeout`."""
        deadline = time.monotonic() + timeout
        pod = self.read_pod(name)
        if pod is None:
            return True
        for _kind, obj in self._pod_updates(pod, deadline):
            if obj is None:
                return True
        return self.read_pod(name) is None

    # --- exec -------------------------------------------------------------------

    @contextmanager
    def _exec_session(self, pod: str, container: str, argv: list[str],
                      stdin: bool) -> Iterator[Any]:
        what = f"starting a command in container {container} of pod {self.namespace}/{pod}"
        try:
            # The client opens exec websockets with no timeout at all: a server that
            # accepts the connection and never answers would block the handshake for
            # ever, so it is bounded from outside, and frame reads by a socket timeout.
            with _time_limit(self._timeout):
                session = _stream_uncaptured(
                    self._exec_core.connect_get_namespaced_pod_exec, pod, self.namespace,
                    container=container, command=argv, stdin=stdin, stdout=True, stderr=True,
                    tty=False, binary=True, _preload_content=False)
            session.sock.settimeout(self._timeout)
        except Exception as error:
            raise api_error(what, error) from error
        try:
            yield session
        finally:
            session.close()

    def exec_stream(self, pod: str, container: str, argv: list[str], stdin: bytes | None,
                    out: Sink, err: Sink, stall_seconds: float) -> bytes:
        """Run `argv` in the container, `stdin` sent first, output passed to the sinks.

        Returns the exec's final status (JSON bytes; empty when the connection ended
        without one).

        Raises:
            ClusterError: the exec could not start, or the connection failed or carried
                nothing for `stall_seconds` (then `transient`).
        """
        what = f"running a command in container {container} of pod {self.namespace}/{pod}"
        with self._exec_session(pod, container, argv, stdin=stdin is not None) as session:
            try:
                for offset in range(0, len(stdin or b""), STDIN_CHUNK):
                    session.write_stdin((stdin or b"")[offset:offset + STDIN_CHUNK])
                return _pump(session, out, err, deadline=None, stall=stall_seconds)
            except _Stalled as error:
                raise ClusterError(f"{what}: the exec connection carried nothing for "
                                   f"{error.seconds:g}s", transient=True) from error
            except (OSError, websocket.WebSocketException) as error:
                raise ClusterError(f"{what}: the exec connection failed: {error}",
                                   transient=True) from error

    def run_quiet(self, pod: str, container: str, argv: list[str],
                  timeout: float) -> tuple[int, bytes]:
        """Run a short command without stdin; its exit code and combined output."""
        what = f"running a command in container {container} of pod {self.namespace}/{pod}"
        output = bytearray()
        with self._exec_session(pod, container, argv, stdin=False) as session:
            try:
                status = _pump(session, output.extend, output.extend,
                               deadline=time.monotonic() + timeout, stall=None)
            except (OSError, websocket.WebSocketException) as error:
                raise ClusterError(f"{what}: the exec connection failed: {error}",
                                   transient=True) from error
        return exit_code(what, status), bytes(output)


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the block after `seconds` (main thread only; else unbounded)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(_signum: int, _frame: Any) -> None:
        raise TimeoutError(f"no answer within {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def owner_reference(pod: dict[str, Any]) -> dict[str, Any]:
    """An ownerReference to the pod: Kubernetes deletes the dependent with it."""
    metadata = pod["metadata"]
    return {"apiVersion": "v1", "kind": "Pod", "name": metadata["name"],
            "uid": metadata["uid"], "blockOwnerDeletion": False}


Sink = Callable[[memoryview], object]  # a view into the frame: copy it to keep it


class _Stalled(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"no data for {seconds:g}s")
        self.seconds = seconds


def _pump(session: Any, out: Sink, err: Sink, deadline: float | None,
          stall: float | None) -> bytes:
    """Pass an exec's stdout and stderr to the sinks frame by frame; its status bytes.

    It reads the websocket itself: the client's `WSClient.update` takes every frame
    already available before it returns, appending each to a bytes buffer, so a fast
    producer makes it copy quadratically and hold all output in memory. Reads wait at
    most a second, so the stall and the deadline are checked without a poll per frame
    (websocket-client resumes a frame that a timeout interrupted).
    """
    ws = session.sock
    ws.settimeout(PUMP_TICK_SECONDS)
    status = bytearray()
    last = time.monotonic()
    while True:
        try:
            opcode, frame = ws.recv_data_frame(True)
        except websocket.WebSocketTimeoutException:
            now = time.monotonic()
            if deadline is not None and now > deadline:
                break
            if stall is not None and now - last > stall:
                raise _Stalled(stall) from None
            continue
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        data = frame.data if opcode in (websocket.ABNF.OPCODE_BINARY,
                                        websocket.ABNF.OPCODE_TEXT) else b""
        if len(data) < 2:
            continue
        last = time.monotonic()
        channel, payload = data[0], memoryview(data)[1:]  # no copy of the payload
        if channel == CHANNEL_STDOUT:
            out(payload)
        elif channel == CHANNEL_STDERR:
            err(payload)
        elif channel == CHANNEL_ERROR:
            status += payload
        if deadline is not None and last > deadline:
            break
    return bytes(status)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of `data` to a file descriptor."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def exit_code(what: str, raw: bytes) -> int:
    """The exit code in an exec's final Status; no status means the state is unknown."""
    if not raw:
        raise ClusterError(f"{what}: the connection ended before the exit status arrived; "
                           "the command's outcome is unknown", transient=True)
    try:
        status = json.loads(raw)
    except ValueError as error:
        raise ClusterError(f"{what}: unreadable exit status {raw[:200]!r}") from error
    if status.get("status") == "Success":
        return 0
    if status.get("reason") == "NonZeroExitCode":
        for cause in (status.get("details") or {}).get("causes") or ():
            if cause.get("reason") == "ExitCode":
                return int(cause.get("message"))
    raise ClusterError(f"{what}: {status.get('code', '')} {status.get('reason', 'Failure')}: "
                       f"{status.get('message', 'no message')}",
                       status=int(status.get("code") or 0) or None,
                       transient=_transient(int(status.get("code") or 0) or None,
                                            str(status.get("message") or "")))
