"""The only module that talks to Kubernetes: connection, pod calls, watch and exec.

Stages ask for what they need in their own terms (create this pod, wait until it
runs, run this script there) and get plain values or the driver's own errors back.
Every client exception is translated here into `ClusterError` or `ConfigError`,
keeping the API server's message, and stating the action and the object first.
Every wait is bounded. This module must not decide what a job means: it never maps
outcomes to exit codes and never prints to the job log.
"""

from __future__ import annotations

import ast
import functools
import http
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
import websocket
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream, ws_client

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
    return Connection(configuration, namespace or "default", configuration.host)


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
        if status is None:
            status, message = _handshake_failure(str(error.reason or ""))
            if status is not None:  # not the raw text with the response headers
                reason = _status_phrase(status)
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                message = str(parsed.get("message") or "")
                reason = str(parsed.get("reason") or reason)
        text = f"{action}: {status} {reason}" if status else f"{action}: {reason}"
        return ClusterError(f"{text}: {message}" if message else text,
                            status=status, reason=str(reason))
    if isinstance(error, urllib3.exceptions.HTTPError | OSError
                  | websocket.WebSocketException):
        return ClusterError(f"{action}: cannot reach the Kubernetes API: {error}")
    return ClusterError(f"{action}: {error}")


def _handshake_failure(reason: str) -> tuple[int | None, str]:
    """Status and message of a failed exec handshake, from the client's error text.

    The websocket client reports e.g. `Handshake status 404 Not Found -+-+- {headers}
    -+-+- b'{...Status JSON...}'`.
    """
    found = re.search(r"Handshake status (\d+)", reason)
    status = int(found.group(1)) if found else None
    body = reason.rsplit("-+-+-", 1)[-1].strip() if "-+-+-" in reason else ""
    message = ""
    try:
        # Older websocket-client versions show the body as a bytes repr, newer ones as text.
        parsed = json.loads(ast.literal_eval(body) if body.startswith(("b'", 'b"')) else body)
        message = str(parsed.get("message") or "")
    except (ValueError, SyntaxError, AttributeError):
        message = ""
    return status, message or (reason if status is None else "")


def _status_phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "exec handshake refused"


class Cluster:
    """Pod operations in the driver's namespace."""

    def __init__(self, connection: Connection, request_timeout: float) -> None:
        self.namespace = connection.namespace
        self.server = connection.server
        self._timeout = request_timeout
        self._configuration = connection.configuration
        self._core = client.CoreV1Api(client.ApiClient(connection.configuration))

    @functools.cached_property
    def _exec_core(self) -> Any:
        # `stream()` swaps the request method of the ApiClient it uses: exec gets its own,
        # made only by the stages that exec.
        return client.CoreV1Api(client.ApiClient(self._configuration))

    def _object(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            response = call(*args, _preload_content=False, _request_timeout=self._timeout,
                            **kwargs)
            return json.loads(response.data)
        except Exception as error:
            raise api_error(what, error) from error

    # --- pods -------------------------------------------------------------------

    def create_pod(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create the pod; a leftover with the same name (an earlier attempt) is replaced."""
        name = manifest["metadata"]["name"]
        what = f"creating pod {self.namespace}/{name}"
        try:
            return dict(self._object(what, self._core.create_namespaced_pod,
                                     self.namespace, manifest))
        except ClusterError as error:
            if error.status != 409:
                raise
        self.delete_pod(name, grace_seconds=0)
        self.wait_gone(name, timeout=60)
        return dict(self._object(what, self._core.create_namespaced_pod,
                                 self.namespace, manifest))

    def read_pod(self, name: str) -> dict[str, Any] | None:
        """The pod, or None when it does not exist."""
        try:
            return dict(self._object(f"reading pod {self.namespace}/{name}",
                                     self._core.read_namespaced_pod, name, self.namespace))
        except ClusterError as error:
            if error.status == 404:
                return None
            raise

    def delete_pod(self, name: str, grace_seconds: int | None = None) -> bool:
        """Ask for the pod's deletion; False when it was already gone."""
        options: dict[str, Any] = {"propagation_policy": "Background"}
        if grace_seconds is not None:
            options["grace_period_seconds"] = grace_seconds
        try:
            self._object(f"deleting pod {self.namespace}/{name}",
                         self._core.delete_namespaced_pod, name, self.namespace, **options)
        except ClusterError as error:
            if error.status == 404:
                return False
            raise
        return True

    def pod_events(self, name: str) -> list[dict[str, Any]]:
        """The events about the pod, oldest first."""
        listed = self._object(f"listing events of pod {self.namespace}/{name}",
                              self._core.list_namespaced_event, self.namespace,
                              field_selector=f"involvedObject.name={name}")
        items = list(listed.get("items") or [])
        items.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        return items

    def _watch_pod(self, name: str, resource_version: str,
                   timeout: float) -> Iterator[tuple[str, dict[str, Any]]]:
        """Events (type, pod) for one pod from `resource_version`, for at most `timeout` s."""
        watcher = watch.Watch()
        try:
            for event in watcher.stream(
                    self._core.list_namespaced_pod, self.namespace,
                    field_selector=f"metadata.name={name}", resource_version=resource_version,
                    allow_watch_bookmarks=True, timeout_seconds=max(1, int(timeout)),
                    _request_timeout=timeout + self._timeout, deserialize=False):
                yield str(event.get("type")), dict(event.get("object") or {})
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
            raise api_error(f"watching pod {self.namespace}/{name}", error) from error
        finally:
            watcher.stop()

    def wait_running(self, created: dict[str, Any], timeout: float,
                     progress: Callable[[PodState], None]) -> dict[str, Any]:
        """Wait on a watch until every container of the pod runs.

        Fails at once when the pod cannot start (see `podstatus.assess`), and after
        `timeout` seconds when it still has not started (unschedulable, slow pulls).

        Raises:
            PodStartError: naming the reason; ClusterError when the API fails.
        """
        name = created["metadata"]["name"]
        deadline = time.monotonic() + timeout
        pod = created
        version = str(created["metadata"].get("resourceVersion") or "")
        last = assess(pod)
        progress(last)
        while last.phase == "starting":
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PodStartError(f"pod {self.namespace}/{name} did not start within "
                                    f"{timeout:g}s: {last.message}")
            try:
                for kind, obj in self._watch_pod(name, version, remaining):
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if kind == "BOOKMARK":
                        continue
                    if kind == "DELETED":
                        raise PodStartError(f"pod {self.namespace}/{name} was deleted while "
                                            "it was starting")
                    pod = obj
                    state = assess(pod)
                    if state.message != last.message:
                        progress(state)
                    last = state
                    if last.phase != "starting":
                        break
            except ClusterError as error:
                if error.status != 410:
                    raise
                # Our resource version is too old: take the pod as it is now.
                fresh = self.read_pod(name)
                if fresh is None:
                    raise PodStartError(f"pod {self.namespace}/{name} disappeared while it "
                                        "was starting") from error
                pod, version = fresh, str(fresh["metadata"].get("resourceVersion") or "")
                last = assess(pod)
        if last.phase == "failed":
            raise PodStartError(last.message)
        return pod

    def wait_gone(self, name: str, timeout: float) -> bool:
        """Wait until the pod no longer exists; False if it is still there after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pod = self.read_pod(name)
            if pod is None:
                return True
            version = str(pod["metadata"].get("resourceVersion") or "")
            for kind, _ in self._watch_pod(name, version, deadline - time.monotonic()):
                if kind == "DELETED":
                    return True
        return self.read_pod(name) is None

    # --- exec -------------------------------------------------------------------

    @contextmanager
    def _exec_session(self, pod: str, container: str, argv: list[str],
                      stdin: bool) -> Iterator[Any]:
        what = f"starting a command in container {container} of pod {self.namespace}/{pod}"
        try:
            session = _stream_uncaptured(self._exec_core.connect_get_namespaced_pod_exec, pod,
                             self.namespace, container=container, command=argv, stdin=stdin,
                             stdout=True, stderr=True, tty=False, binary=True,
                             _preload_content=False)
        except Exception as error:
            raise api_error(what, error) from error
        try:
            yield session
        finally:
            session.close()

    def run_script(self, pod: str, container: str, argv: list[str], script: bytes,
                   stdout_fd: int, stderr_fd: int) -> int:
        """Send `script` on stdin to `argv` in the container; stream its output; its exit code.

        Output is written to the file descriptors as it arrives, byte for byte.

        Raises:
            ClusterError: the exec could not start, or the connection was lost before
                the exit status arrived (the script's state is then unknown).
        """
        what = f"running a script in container {container} of pod {self.namespace}/{pod}"
        with self._exec_session(pod, container, argv, stdin=True) as session:
            try:
                for offset in range(0, len(script), STDIN_CHUNK):
                    session.write_stdin(script[offset:offset + STDIN_CHUNK])
                status = _pump(session, functools.partial(_write_all, stdout_fd),
                               functools.partial(_write_all, stderr_fd), deadline=None)
            except (OSError, websocket.WebSocketException) as error:
                raise ClusterError(f"{what}: the exec connection failed: {error}") from error
        return _exit_code(what, status)

    def run_quiet(self, pod: str, container: str, argv: list[str],
                  timeout: float) -> tuple[int, bytes]:
        """Run a short command without stdin; its exit code and combined output."""
        what = f"running a command in container {container} of pod {self.namespace}/{pod}"
        output = bytearray()
        with self._exec_session(pod, container, argv, stdin=False) as session:
            try:
                status = _pump(session, output.extend, output.extend,
                               deadline=time.monotonic() + timeout)
            except (OSError, websocket.WebSocketException) as error:
                raise ClusterError(f"{what}: the exec connection failed: {error}") from error
        return _exit_code(what, status), bytes(output)


Sink = Callable[[bytes], object]


def _pump(session: Any, out: Sink, err: Sink, deadline: float | None) -> bytes:
    """Pass an exec's stdout and stderr to the sinks as they arrive; its status bytes."""
    status = bytearray()
    while session.is_open():
        if deadline is not None and time.monotonic() > deadline:
            break
        session.update(timeout=1.0)
        status += _drain(session, out, err)
    status += _drain(session, out, err)
    return bytes(status)


def _drain(session: Any, out: Sink, err: Sink) -> bytes:
    out(session.read_channel(CHANNEL_STDOUT) or b"")
    err(session.read_channel(CHANNEL_STDERR) or b"")
    return bytes(session.read_channel(CHANNEL_ERROR) or b"")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _exit_code(what: str, raw: bytes) -> int:
    """The exit code in an exec's final Status; no status means the state is unknown."""
    if not raw:
        raise ClusterError(f"{what}: the connection ended before the exit status arrived; "
                           "the script's outcome is unknown")
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
                       f"{status.get('message', 'no message')}")
