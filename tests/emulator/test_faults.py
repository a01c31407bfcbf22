"""Fault injection over the wire: failed and delayed requests, reset connections, cut execs.

Faults are armed through `EmulatedCluster` and through the admin HTTP endpoint, and are
observed both as raw HTTP and through the official client, including what the client's
urllib3 layer does on its own (it retries idempotent requests on a dropped connection
and on 429/503 answers carrying Retry-After), since a driver inherits that behaviour.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream
from websocket import WebSocketConnectionClosedException

from runner_driver.emulator import EmulatedCluster
from tests.conftest import wait_for, wait_running

IDLE = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"]
STDOUT, ERROR = 1, 3


@pytest.fixture(autouse=True)
def _disarm(cluster: EmulatedCluster) -> Iterator[None]:
    """No fault outlives the test that armed it."""
    yield
    cluster.clear_faults()


def raw(cluster: EmulatedCluster, method: str, path: str,
        body: Any = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One plain HTTP request to the emulator: status, headers and body."""
    connection = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=10)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def configmaps(namespace: str) -> str:
    """The exact collection path of config maps in a namespace, as a regex."""
    return f"^/api/v1/namespaces/{re.escape(namespace)}/configmaps$"


def count(cluster: EmulatedCluster, key: str) -> int:
    """Requests logged so far for one `verb resource`."""
    return cluster.request_counts().get(key, 0)


def idle_pod(core: client.CoreV1Api, namespace: str, name: str = "shell") -> None:
    """Start a busybox pod that idles, and wait for it to run."""
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "automountServiceAccountToken": False,
                 "containers": [{"name": "main", "image": "busybox:1.36", "command": IDLE}]}})
    wait_running(core, namespace, name)


def run_exec(exec_core: client.CoreV1Api, namespace: str,
             command: list[str]) -> tuple[str, str, BaseException | None]:
    """Exec over the websocket; return stdout, the status channel and how the stream ended."""
    socket = stream(exec_core.connect_get_namespaced_pod_exec, "shell", namespace,
                    command=command, stdin=False, stdout=True, stderr=True, tty=False,
                    _preload_content=False)
    out = ""
    ended: BaseException | None = None
    try:
        while socket.is_open():
            socket.update(timeout=1)
            if socket.peek_stdout():
                out += socket.read_stdout()
    except WebSocketConnectionClosedException as error:
        ended = error
    if socket.peek_stdout():
        out += socket.read_stdout()
    status: str = socket.read_channel(ERROR)
    socket.close()
    return out, status, ended


# Failed requests

@pytest.mark.parametrize(("status", "reason", "retry_after"), [
    (500, "InternalError", None),
    (503, "ServiceUnavailable", None),
    (503, "ServiceUnavailable", 4),
    (429, "TooManyRequests", 2),
])
def test_status_fault_answers_with_status_body(cluster: EmulatedCluster, namespace: str,
                                               status: int, reason: str,
                                               retry_after: int | None) -> None:
    """An armed status fault answers with that code, a Status body and any Retry-After."""
    cluster.fail_requests("GET", configmaps(namespace), status=status, retry_after=retry_after)
    code, headers, body = raw(cluster, "GET", f"/api/v1/namespaces/{namespace}/configmaps")
    assert code == status
    assert headers.get("Content-Type", "").startswith("application/json")
    document = json.loads(body)
    assert {k: document[k] for k in ("kind", "apiVersion", "status", "reason", "code")} == {
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
        "code": status}
    if retry_after is None:
        assert headers.get("Retry-After") is None
        assert "retryAfterSeconds" not in (document.get("details") or {})
    else:
        assert headers.get("Retry-After") == str(retry_after)
        assert document["details"]["retryAfterSeconds"] == retry_after


@pytest.mark.parametrize("status", [500, 503, 429])
def test_client_raises_api_exception_for_status_fault(
        cluster: EmulatedCluster, core: client.CoreV1Api, namespace: str, status: int) -> None:
    """Without Retry-After the client raises ApiException with the fault's status, once."""
    cluster.fail_requests("GET", configmaps(namespace), status=status)
    before = count(cluster, "list configmaps")
    with pytest.raises(ApiException) as error:
        core.list_namespaced_config_map(namespace)
    assert error.value.status == status
    assert json.loads(error.value.body)["code"] == status
    assert count(cluster, "list configmaps") == before + 1


def test_failed_create_raises_with_retry_after_and_creates_nothing(
        cluster: EmulatedCluster, core: client.CoreV1Api, namespace: str) -> None:
    """A 429 on POST is not retried: ApiException 429 with Retry-After, and no object made."""
    cluster.fail_requests("POST", configmaps(namespace), status=429, retry_after=3)
    with pytest.raises(ApiException) as error:
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "refused"}})
    assert error.value.status == 429
    assert error.value.headers["Retry-After"] == "3"
    assert json.loads(error.value.body)["details"]["retryAfterSeconds"] == 3
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("refused", namespace)
    assert missing.value.status == 404


def test_client_retries_get_after_retry_after(cluster: EmulatedCluster,
                                              core: client.CoreV1Api, namespace: str) -> None:
    """urllib3 sleeps Retry-After and repeats a GET answered 429, so one fault goes unseen."""
    cluster.fail_requests("GET", configmaps(namespace), status=429, retry_after=1)
    before = count(cluster, "list configmaps")
    started = time.monotonic()
    listed = core.list_namespaced_config_map(namespace)
    assert time.monotonic() - started >= 0.9
    assert [c.metadata.name for c in listed.items] == ["kube-root-ca.crt"]
    assert count(cluster, "list configmaps") == before + 2


def test_client_gives_up_after_three_retry_after_retries(
        cluster: EmulatedCluster, core: client.CoreV1Api, namespace: str) -> None:
    """A GET kept at 429 with Retry-After is tried four times, then raises ApiException 429."""
    cluster.fail_requests("GET", configmaps(namespace), count=10, status=429, retry_after=1)
    before = count(cluster, "list configmaps")
    with pytest.raises(ApiException) as error:
        core.list_namespaced_config_map(namespace)
    assert error.value.status == 429
    assert count(cluster, "list configmaps") == before + 4


def test_fault_count_is_consumed(cluster: EmulatedCluster, core: client.CoreV1Api,
                                 namespace: str) -> None:
    """A fault armed for N requests fails exactly N, and request N+1 succeeds."""
    cluster.fail_requests("GET", configmaps(namespace), count=2, status=500)
    for _ in range(2):
        with pytest.raises(ApiException) as error:
            core.list_namespaced_config_map(namespace)
        assert error.value.status == 500
    assert core.list_namespaced_config_map(namespace).items


def test_fault_matches_method_and_path(cluster: EmulatedCluster, core: client.CoreV1Api,
                                       namespace: str) -> None:
    """Only requests whose method and path match a fault fail; `*` matches any method."""
    cluster.fail_requests("POST", configmaps(namespace), status=503)
    core.list_namespaced_config_map(namespace)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "s"}})
    with pytest.raises(ApiException) as error:
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "c"}})
    assert error.value.status == 503

    cluster.fail_requests("*", f"/namespaces/{re.escape(namespace)}/secrets", count=2,
                          status=500)
    core.list_namespaced_config_map(namespace)
    calls: list[Callable[[], Any]] = [lambda: core.read_namespaced_secret("s", namespace),
                                      lambda: core.delete_namespaced_secret("s", namespace)]
    for call in calls:
        with pytest.raises(ApiException) as error:
            call()
        assert error.value.status == 500
    assert core.read_namespaced_secret("s", namespace).metadata.name == "s"


def test_faults_apply_in_the_order_armed(cluster: EmulatedCluster, namespace: str) -> None:
    """Two faults matching the same request are used up one after the other."""
    cluster.fail_requests("GET", configmaps(namespace), status=503)
    cluster.fail_requests("GET", configmaps(namespace), status=500)
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    assert [raw(cluster, "GET", path)[0] for _ in range(3)] == [503, 500, 200]


def test_clear_faults_disarms(cluster: EmulatedCluster, namespace: str) -> None:
    """clear_faults disarms every pending fault."""
    cluster.fail_requests("GET", configmaps(namespace), count=5, status=500)
    cluster.clear_faults()
    assert raw(cluster, "GET", f"/api/v1/namespaces/{namespace}/configmaps")[0] == 200


# Reset connections

def test_reset_closes_connection_without_response(cluster: EmulatedCluster,
                                                  namespace: str) -> None:
    """A reset fault drops the connection before any response line."""
    cluster.fail_requests("GET", configmaps(namespace), reset=True)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        raw(cluster, "GET", f"/api/v1/namespaces/{namespace}/configmaps")
    assert raw(cluster, "GET", f"/api/v1/namespaces/{namespace}/configmaps")[0] == 200


def test_client_sees_reset_on_create(cluster: EmulatedCluster, core: client.CoreV1Api,
                                     namespace: str) -> None:
    """A reset POST is not retried: the client raises urllib3's ProtocolError, not ApiException."""
    cluster.fail_requests("POST", configmaps(namespace), reset=True)
    before = count(cluster, "create configmaps")
    with pytest.raises(urllib3.exceptions.ProtocolError):
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "lost"}})
    assert count(cluster, "create configmaps") == before + 1


def test_client_retries_reset_get(cluster: EmulatedCluster, core: client.CoreV1Api,
                                  namespace: str) -> None:
    """urllib3 repeats a GET whose connection was reset, so one reset goes unseen."""
    cluster.fail_requests("GET", configmaps(namespace), reset=True)
    before = count(cluster, "list configmaps")
    assert core.list_namespaced_config_map(namespace).items
    assert count(cluster, "list configmaps") == before + 2


def test_client_gives_up_after_four_reset_gets(cluster: EmulatedCluster,
                                               core: client.CoreV1Api, namespace: str) -> None:
    """A GET reset on every try is tried four times, then raises urllib3's MaxRetryError."""
    cluster.fail_requests("GET", configmaps(namespace), count=10, reset=True)
    before = count(cluster, "list configmaps")
    with pytest.raises(urllib3.exceptions.MaxRetryError) as error:
        core.list_namespaced_config_map(namespace)
    assert isinstance(error.value.reason, urllib3.exceptions.ProtocolError)
    assert count(cluster, "list configmaps") == before + 4


# Latency

def test_latency_delays_matching_requests_only(cluster: EmulatedCluster,
                                               core: client.CoreV1Api, namespace: str) -> None:
    """add_latency delays the matching requests it was armed for, then no more."""
    cluster.add_latency(0.5, "GET", configmaps(namespace), count=1)
    started = time.monotonic()
    core.read_namespace(namespace)
    assert time.monotonic() - started < 0.5
    started = time.monotonic()
    core.list_namespaced_config_map(namespace)
    assert time.monotonic() - started >= 0.5
    started = time.monotonic()
    core.list_namespaced_config_map(namespace)
    assert time.monotonic() - started < 0.5


def test_latency_then_failure(cluster: EmulatedCluster, core: client.CoreV1Api,
                              namespace: str) -> None:
    """A status fault with latency answers late and fails."""
    cluster.fail_requests("GET", configmaps(namespace), status=500, latency=0.4)
    started = time.monotonic()
    with pytest.raises(ApiException) as error:
        core.list_namespaced_config_map(namespace)
    assert time.monotonic() - started >= 0.4
    assert error.value.status == 500


# The admin endpoint

def test_admin_endpoint_arms_status_fault(cluster: EmulatedCluster, namespace: str) -> None:
    """POST /emulator/faults arms a status fault with Retry-After, consumed after count."""
    code, _, body = raw(cluster, "POST", "/emulator/faults", {
        "method": "GET", "path": configmaps(namespace), "status": 503, "count": 2,
        "retryAfter": 5, "message": "maintenance"})
    assert (code, json.loads(body)) == (200, {"armed": True})
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    for _ in range(2):
        code, headers, body = raw(cluster, "GET", path)
        assert (code, headers.get("Retry-After")) == (503, "5")
        assert json.loads(body)["message"] == "maintenance"
    assert raw(cluster, "GET", path)[0] == 200


def test_admin_endpoint_arms_latency_and_reset(cluster: EmulatedCluster,
                                               namespace: str) -> None:
    """POST /emulator/faults arms latency and resets; DELETE /emulator/faults disarms."""
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    raw(cluster, "POST", "/emulator/faults", {"method": "GET", "path": configmaps(namespace),
                                              "latency": 0.4})
    started = time.monotonic()
    assert raw(cluster, "GET", path)[0] == 200
    assert time.monotonic() - started >= 0.4

    raw(cluster, "POST", "/emulator/faults", {"path": configmaps(namespace), "reset": True})
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        raw(cluster, "POST", path, {"metadata": {"name": "x"}})

    raw(cluster, "POST", "/emulator/faults", {"path": configmaps(namespace), "status": 500,
                                              "count": 5})
    code, _, body = raw(cluster, "DELETE", "/emulator/faults")
    assert (code, json.loads(body)) == (200, {"cleared": True})
    assert raw(cluster, "GET", path)[0] == 200


def test_admin_oom_endpoint(cluster: EmulatedCluster, core: client.CoreV1Api,
                            namespace: str) -> None:
    """POST .../containers/{c}/oom kills a running container as OOMKilled; 404 otherwise."""
    idle_pod(core, namespace)
    base = f"/emulator/namespaces/{namespace}/pods/shell/containers"
    assert raw(cluster, "POST", f"{base}/nope/oom")[0] == 404
    code, _, body = raw(cluster, "POST", f"{base}/main/oom")
    assert (code, json.loads(body)) == (200, {"killed": True})

    def terminated() -> Any:
        statuses = core.read_namespaced_pod("shell", namespace).status.container_statuses
        return statuses[0].state.terminated

    state = wait_for(terminated, 10, what="the container to end")
    assert (state.reason, state.exit_code) == ("OOMKilled", 137)


# Exec cuts

def test_cut_exec_after_bytes_drops_stream_without_status(
        cluster: EmulatedCluster, core: client.CoreV1Api, exec_core: client.CoreV1Api,
        namespace: str) -> None:
    """cut_exec(after_bytes=N) drops the websocket after N output bytes, with no status."""
    idle_pod(core, namespace)
    command = ["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x"]
    cluster.cut_exec(after_bytes=1000)
    out, status, ended = run_exec(exec_core, namespace, command)
    assert isinstance(ended, WebSocketConnectionClosedException)
    assert out == "x" * 1000
    assert status == ""

    out, status, ended = run_exec(exec_core, namespace, command)
    assert ended is None
    assert len(out) == 100000
    assert json.loads(status)["status"] == "Success"


def test_cut_exec_after_seconds_drops_stream_without_status(
        cluster: EmulatedCluster, core: client.CoreV1Api, exec_core: client.CoreV1Api,
        namespace: str) -> None:
    """cut_exec(after_seconds=T) drops a still-talking exec once T has passed, with no status."""
    idle_pod(core, namespace)
    cluster.cut_exec(after_seconds=0.5)
    started = time.monotonic()
    out, status, ended = run_exec(exec_core, namespace, [
        "sh", "-c", "i=0; while [ $i -lt 20 ]; do echo tick $i; i=$((i+1)); sleep 0.1; done"])
    elapsed = time.monotonic() - started
    assert isinstance(ended, WebSocketConnectionClosedException)
    assert 0.5 <= elapsed < 2.5
    assert out.startswith("tick 0\n")
    assert "tick 19" not in out
    assert status == ""


def test_admin_endpoint_arms_exec_cut(cluster: EmulatedCluster, core: client.CoreV1Api,
                                      exec_core: client.CoreV1Api, namespace: str) -> None:
    """POST /emulator/exec-cuts arms a cut just like cut_exec."""
    idle_pod(core, namespace)
    code, _, _ = raw(cluster, "POST", "/emulator/exec-cuts", {"afterBytes": 5})
    assert code == 200
    out, status, ended = run_exec(exec_core, namespace, ["echo", "hello world"])
    assert isinstance(ended, WebSocketConnectionClosedException)
    assert (out, status) == ("hello", "")


# The request log

def test_request_counts_per_verb_and_resource(cluster: EmulatedCluster,
                                              core: client.CoreV1Api, namespace: str) -> None:
    """Each API request is counted under `verb resource`, also on GET /emulator/requests."""
    before = cluster.request_counts()
    for _ in range(3):
        core.list_namespaced_pod(namespace)
    for name in ("a", "b"):
        core.create_namespaced_config_map(namespace, {"metadata": {"name": name}})
    core.read_namespaced_config_map("a", namespace)
    core.patch_namespaced_config_map("a", namespace, {"data": {"k": "v"}})
    core.replace_namespaced_config_map("b", namespace, {"metadata": {"name": "b"}})
    core.delete_namespaced_config_map("a", namespace)
    # A watch is logged when it ends: read it to its server-side timeout.
    core.list_namespaced_config_map(namespace, watch=True, timeout_seconds=1,
                                    _preload_content=False).read()
    cluster.fail_requests("GET", f"/namespaces/{re.escape(namespace)}/secrets/", status=503)
    with pytest.raises(ApiException):
        core.read_namespaced_secret("x", namespace)
    after = cluster.request_counts()
    # An exec cut by an earlier test is logged when its process ends, possibly now.
    changed = {k: after[k] - before.get(k, 0) for k in after
               if after[k] != before.get(k, 0) and k != "get pods/exec"}
    assert changed == {"list pods": 3, "create configmaps": 2, "get configmaps": 1,
                       "patch configmaps": 1, "update configmaps": 1,
                       "delete configmaps": 1, "watch configmaps": 1, "get secrets": 1}

    code, _, body = raw(cluster, "GET", "/emulator/requests")
    assert code == 200
    document = json.loads(body)
    assert document["counts"] == cluster.request_counts()
    last = document["requests"][-1]
    assert {k: last[k] for k in ("method", "path", "verb", "resource", "status")} == {
        "method": "GET", "path": f"/api/v1/namespaces/{namespace}/secrets/x",
        "verb": "get", "resource": "secrets", "status": 503}
    created = [r for r in document["requests"] if r["verb"] == "create"
               and r["path"] == f"/api/v1/namespaces/{namespace}/configmaps"]
    assert [r["status"] for r in created] == [201, 201]
