"""`kube`: finding credentials, pod and secret calls, retries, watches and exec against
the emulated cluster.

Cluster behaviour goes over the wire (HTTP and websocket exec on 127.0.0.1), failures
are injected with the emulator's fault API; the `kubernetes` client is never patched.
Pure helpers (`exit_code`, `is_transient`, `_retry_after`, `_handshake_failure`) are
checked directly; the backoff policy itself is in test_kube_retry.py.
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes import client

from runner_driver import kube
from runner_driver.emulator import EmulatedCluster
from runner_driver.errors import ClusterError, ConfigError
from runner_driver.kube import errors as kube_errors
from runner_driver.kube import streams
from runner_driver.podstatus import assess
from runner_driver.settings import KubernetesSettings
from tests.conftest import HELPER, HELPER_IDLE, job_pod, logged, wait_for

# --- connect ------------------------------------------------------------------------


def write_kubeconfig(path: Path, contexts: dict[str, tuple[str, str]],
                     current: str) -> Path:
    """A kubeconfig with one cluster per context: name -> (server, namespace or "")."""
    document: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": f"c-{name}", "cluster": {"server": server}}
                     for name, (server, _) in contexts.items()],
        "users": [{"name": "u", "user": {"token": "t0ken-for-tests"}}],
        "contexts": [{"name": name, "context": {
            "cluster": f"c-{name}", "user": "u", **({"namespace": ns} if ns else {})}}
            for name, (_, ns) in contexts.items()],
        "current-context": current,
    }
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def test_explicit_kubeconfig_setting_wins_over_kubeconfig_variable(tmp_path: Path) -> None:
    """`[kubernetes] kubeconfig` is used even when $KUBECONFIG names another file."""
    chosen = write_kubeconfig(tmp_path / "chosen", {"a": ("http://127.0.0.1:1111", "")}, "a")
    other = write_kubeconfig(tmp_path / "other", {"b": ("http://127.0.0.1:2222", "")}, "b")
    connection = kube.connect(KubernetesSettings(kubeconfig=str(chosen)), "test",
                              environ={"KUBECONFIG": str(other)})
    assert connection.server == "http://127.0.0.1:1111"


def test_kubeconfig_variable_of_the_given_environment_is_used(tmp_path: Path) -> None:
    """Without a setting, $KUBECONFIG of the environment passed in picks the file."""
    named = write_kubeconfig(tmp_path / "named", {"b": ("http://127.0.0.1:2222", "ci")}, "b")
    connection = kube.connect(KubernetesSettings(), "test", environ={"KUBECONFIG": str(named)})
    assert (connection.server, connection.namespace) == ("http://127.0.0.1:2222", "ci")


def test_missing_kubeconfig_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    """A kubeconfig that does not exist is a ConfigError naming it and the setting to fix."""
    missing = tmp_path / "nowhere" / "kubeconfig"
    with pytest.raises(ConfigError) as raised:
        kube.connect(KubernetesSettings(kubeconfig=str(missing)), "/etc/driver.toml",
                     environ={})
    message = str(raised.value)
    assert str(missing) in message
    assert "[kubernetes] kubeconfig" in message and "/etc/driver.toml" in message


@pytest.mark.parametrize("content", [
    pytest.param("clusters: [unclosed\n", id="invalid-yaml"),
    pytest.param("- a list\n", id="not-a-mapping"),
])
def test_malformed_kubeconfig_is_a_one_line_config_error(tmp_path: Path, content: str) -> None:
    """A kubeconfig that is not a YAML mapping is a ConfigError on one line naming the file."""
    path = tmp_path / "kc"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        kube.connect(KubernetesSettings(kubeconfig=str(path)), "test", environ={})
    message = str(raised.value)
    assert message.startswith(f"loading cluster credentials from {path}: ")
    assert "\n" not in message


def test_namespace_setting_wins_over_context_namespace(tmp_path: Path) -> None:
    """`[kubernetes] namespace` overrides the namespace of the kubeconfig context."""
    path = write_kubeconfig(tmp_path / "kc", {"a": ("http://127.0.0.1:1111", "ci")}, "a")
    connection = kube.connect(KubernetesSettings(kubeconfig=str(path), namespace="jobs"),
                              "test", environ={})
    assert connection.namespace == "jobs"


def test_namespace_comes_from_the_context_without_a_setting(tmp_path: Path) -> None:
    """Without a namespace setting, the kubeconfig context's namespace is used."""
    path = write_kubeconfig(tmp_path / "kc", {"a": ("http://127.0.0.1:1111", "ci")}, "a")
    connection = kube.connect(KubernetesSettings(kubeconfig=str(path)), "test", environ={})
    assert connection.namespace == "ci"


def test_namespace_defaults_to_default(tmp_path: Path) -> None:
    """With no setting and no namespace in the context, the namespace is "default"."""
    path = write_kubeconfig(tmp_path / "kc", {"a": ("http://127.0.0.1:1111", "")}, "a")
    connection = kube.connect(KubernetesSettings(kubeconfig=str(path)), "test", environ={})
    assert connection.namespace == "default"


def test_context_setting_selects_server_and_namespace(tmp_path: Path) -> None:
    """A named `context` picks that context's cluster and namespace, not the current one."""
    path = write_kubeconfig(tmp_path / "kc", {"a": ("http://127.0.0.1:1111", "alpha"),
                                              "b": ("http://127.0.0.1:2222", "beta")}, "a")
    current = kube.connect(KubernetesSettings(kubeconfig=str(path)), "test", environ={})
    named = kube.connect(KubernetesSettings(kubeconfig=str(path), context="b"), "test",
                         environ={})
    assert (current.server, current.namespace) == ("http://127.0.0.1:1111", "alpha")
    assert (named.server, named.namespace) == ("http://127.0.0.1:2222", "beta")


def test_unknown_context_is_a_config_error(tmp_path: Path) -> None:
    """A `context` the kubeconfig does not define is a ConfigError naming the file."""
    path = write_kubeconfig(tmp_path / "kc", {"a": ("http://127.0.0.1:1111", "")}, "a")
    with pytest.raises(ConfigError) as raised:
        kube.connect(KubernetesSettings(kubeconfig=str(path), context="nope"), "test",
                     environ={})
    assert str(path) in str(raised.value) and "nope" in str(raised.value)


# --- pods on the emulated cluster -------------------------------------------------


@pytest.fixture
def kcluster(kubeconfig: Path, namespace: str) -> kube.Cluster:
    """The driver's Cluster for a fresh namespace of the module's emulated cluster."""
    settings = KubernetesSettings(kubeconfig=str(kubeconfig), namespace=namespace)
    return kube.Cluster(kube.connect(settings, "test"), 10.0)


@pytest.fixture
def faults(cluster: EmulatedCluster) -> Iterator[EmulatedCluster]:
    """The emulated cluster, with every armed fault disarmed after the test."""
    yield cluster
    cluster.clear_faults()


def small_pod(name: str, image: str = HELPER, **spec: Any) -> dict[str, Any]:
    """A one-container pod that idles until SIGTERM."""
    return {"metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": image, "command": HELPER_IDLE}],
                     **spec}}


def until_running(kcluster: kube.Cluster, pod: dict[str, Any],
                  seconds: float = 30.0) -> dict[str, Any]:
    """Follow the pod with pod_updates until every container runs; the running pod."""
    for _kind, obj in kcluster.pod_updates(pod, time.monotonic() + seconds):
        if obj is not None and assess(obj).phase == "running":
            return obj
    raise AssertionError(f"pod {pod['metadata']['name']} did not run within {seconds:g}s")


def running(kcluster: kube.Cluster, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create a pod and wait until every container runs."""
    return until_running(kcluster, kcluster.create_pod(manifest))


def test_create_pod_then_read_it(kcluster: kube.Cluster, namespace: str) -> None:
    """create_pod returns the stored pod and read_pod returns the same object."""
    created = kcluster.create_pod(small_pod("p1"))
    assert created["metadata"]["namespace"] == namespace
    assert created["metadata"]["uid"]
    read = kcluster.read_pod("p1")
    assert read is not None
    assert read["metadata"]["uid"] == created["metadata"]["uid"]
    assert read["spec"]["containers"][0]["image"] == HELPER


def test_read_missing_pod_is_none(kcluster: kube.Cluster) -> None:
    """Reading a pod that does not exist gives None, not an error."""
    assert kcluster.read_pod("ghost") is None


def test_delete_pod_twice_is_true_then_false(kcluster: kube.Cluster) -> None:
    """The first delete reports a deletion; deleting an absent pod reports False."""
    kcluster.create_pod(small_pod("p1"))
    assert kcluster.delete_pod("p1", grace_seconds=0) is True
    assert kcluster.wait_gone("p1", timeout=20)
    assert kcluster.delete_pod("p1") is False


def test_create_pod_of_a_taken_name_is_a_conflict(kcluster: kube.Cluster,
                                                   namespace: str) -> None:
    """create_pod on a name in use fails with 409, leaving the pod there alone."""
    first = kcluster.create_pod(small_pod("p1"))
    with pytest.raises(ClusterError) as raised:
        kcluster.create_pod(small_pod("p1"))
    assert raised.value.status == 409 and not raised.value.transient
    assert str(raised.value).startswith(f"creating pod {namespace}/p1: 409")
    stored = kcluster.read_pod("p1")
    assert stored is not None and stored["metadata"]["uid"] == first["metadata"]["uid"]


def test_api_error_names_action_object_status_and_server_message(
        kcluster: kube.Cluster, faults: EmulatedCluster, namespace: str) -> None:
    """A refused request becomes a ClusterError: action and object first, then status and words."""
    faults.fail_requests("POST", f"^/api/v1/namespaces/{namespace}/pods$", status=403)
    with pytest.raises(ClusterError) as raised:
        kcluster.create_pod(small_pod("p1"))
    message = str(raised.value)
    assert message.startswith(f"creating pod {namespace}/p1: 403")
    assert "injected fault" in message
    assert raised.value.status == 403
    assert kcluster.read_pod("p1") is None


def test_invalid_manifest_is_a_422_with_the_servers_message(kcluster: kube.Cluster,
                                                            namespace: str) -> None:
    """A container without an image is refused with 422 Invalid and the field at fault."""
    manifest = small_pod("p1")
    del manifest["spec"]["containers"][0]["image"]
    with pytest.raises(ClusterError) as raised:
        kcluster.create_pod(manifest)
    message = str(raised.value)
    assert raised.value.status == 422 and raised.value.reason == "Invalid"
    assert message.startswith(f"creating pod {namespace}/p1: 422 Invalid: ")
    assert 'Pod "p1" is invalid: spec.containers[0].image: Required value' in message


# --- retries over the wire ------------------------------------------------------------


def spent(emulated: EmulatedCluster, before: dict[str, int]) -> dict[str, int]:
    """Requests per `verb resource` since `before` (a `request_counts()` snapshot)."""
    after = emulated.request_counts()
    return {key: after[key] - before.get(key, 0) for key in after
            if after[key] != before.get(key, 0)}


def patient(kubeconfig: Path, namespace: str, retry_timeout: float) -> kube.Cluster:
    """The driver's Cluster for `namespace` with the given retry budget."""
    settings = KubernetesSettings(kubeconfig=str(kubeconfig), namespace=namespace)
    return kube.Cluster(kube.connect(settings, "test"), 10.0, retry_timeout)


def arm_fault(emulated: EmulatedCluster, **fault: Any) -> None:
    """Arm a request fault through the emulator's admin API (which also takes a message)."""
    response = urllib3.request("POST", f"{emulated.url}/emulator/faults", json=fault,
                               timeout=10)
    assert response.json() == {"armed": True}


def test_connect_switches_off_urllib3s_own_retries(kubeconfig: Path) -> None:
    """Every retry goes through the driver's policy, none silently through urllib3."""
    connection = kube.connect(KubernetesSettings(kubeconfig=str(kubeconfig)), "test")
    assert connection.configuration.retries is False


def test_cluster_retry_budget_defaults_to_sixty_seconds(kubeconfig: Path) -> None:
    """Without a retry_timeout, a Cluster retries transient failures for 60 s."""
    connection = kube.connect(KubernetesSettings(kubeconfig=str(kubeconfig)), "test")
    assert kube.Cluster(connection, 10.0).retry_timeout == 60.0


@pytest.mark.parametrize(("status", "burst"), [(503, 2), (500, 1)])
def test_server_errors_on_create_read_and_delete_are_retried(
        kubeconfig: Path, namespace: str, faults: EmulatedCluster, status: int,
        burst: int) -> None:
    """A burst of 5xx answers on create, read and delete is retried until the call succeeds."""
    patient_cluster = patient(kubeconfig, namespace, 10.0)
    pods = f"^/api/v1/namespaces/{namespace}/pods"
    before = faults.request_counts()
    faults.fail_requests("POST", pods + "$", burst, status)
    created = patient_cluster.create_pod(small_pod("p1"))
    faults.fail_requests("GET", pods + "/p1$", burst, status)
    read = patient_cluster.read_pod("p1")
    faults.fail_requests("DELETE", pods + "/p1$", burst, status)
    assert patient_cluster.delete_pod("p1", grace_seconds=0) is True
    assert read is not None and read["metadata"]["uid"] == created["metadata"]["uid"]
    assert spent(faults, before) == {"create pods": burst + 1, "get pods": burst + 1,
                                     "delete pods": burst + 1}


def test_list_calls_are_retried(kubeconfig: Path, namespace: str,
                                faults: EmulatedCluster) -> None:
    """Listing pods, secrets and events rides out a 503 like every other call."""
    patient_cluster = patient(kubeconfig, namespace, 10.0)
    for resource in ("pods", "secrets", "events"):
        faults.fail_requests("GET", f"^/api/v1/namespaces/{namespace}/{resource}$", 1, 503)
    before = faults.request_counts()
    assert patient_cluster.list_pods("a=b") == []
    assert patient_cluster.list_secrets("a=b") == []
    assert patient_cluster.pod_events("p1") == []
    assert spent(faults, before) == {"list pods": 2, "list secrets": 2, "list events": 2}


def test_a_reset_connection_is_retried_and_logged(
        kubeconfig: Path, namespace: str, faults: EmulatedCluster,
        retry_log: io.StringIO) -> None:
    """A connection the server drops is retried by the driver's policy, visibly, exactly once."""
    patient_cluster = patient(kubeconfig, namespace, 10.0)
    patient_cluster.create_pod(small_pod("p1"))
    faults.fail_requests("GET", f"^/api/v1/namespaces/{namespace}/pods/p1$", 1, reset=True)
    before = faults.request_counts()
    assert patient_cluster.read_pod("p1") is not None
    assert spent(faults, before) == {"get pods": 2}
    [event] = logged(retry_log)
    assert event["attempt"] == 1
    assert "cannot reach the Kubernetes API" in event["error"]


def test_each_retry_is_logged_with_attempt_action_error_and_wait(
        kubeconfig: Path, namespace: str, faults: EmulatedCluster,
        retry_log: io.StringIO) -> None:
    """Every retry is one warning naming the attempt, the action, the error and the wait."""
    patient_cluster = patient(kubeconfig, namespace, 10.0)
    faults.fail_requests("POST", f"^/api/v1/namespaces/{namespace}/pods$", 2, 503)
    patient_cluster.create_pod(small_pod("p1"))
    events = logged(retry_log)
    action = f"creating pod {namespace}/p1"
    assert [e["attempt"] for e in events] == [1, 2]
    for event in events:
        assert event["level"] == "warning"
        assert event["event"] == "retrying a Kubernetes API call after a transient error"
        assert event["action"] == action
        assert event["error"] == f"{action}: 503 ServiceUnavailable: injected fault"
        assert re.fullmatch(r"\d+\.\ds", event["retry_in"]), event["retry_in"]


def test_too_many_requests_waits_at_least_retry_after(
        kubeconfig: Path, namespace: str, faults: EmulatedCluster,
        retry_log: io.StringIO) -> None:
    """A 429 with Retry-After: 1 is retried no sooner than a second later."""
    patient_cluster = patient(kubeconfig, namespace, 10.0)
    patient_cluster.create_pod(small_pod("p1"))
    faults.fail_requests("GET", f"^/api/v1/namespaces/{namespace}/pods/p1$", 1, 429,
                         retry_after=1)
    started = time.monotonic()
    assert patient_cluster.read_pod("p1") is not None
    assert time.monotonic() - started >= 1.0
    [event] = logged(retry_log)
    assert event["retry_in"] == "1.0s"
    assert "429 TooManyRequests" in event["error"]


def test_a_retry_after_beyond_the_budget_gives_up_at_once(
        kubeconfig: Path, namespace: str, faults: EmulatedCluster) -> None:
    """When the server asks for a wait longer than the retry budget, the call fails now."""
    patient_cluster = patient(kubeconfig, namespace, 1.0)
    faults.fail_requests("GET", f"^/api/v1/namespaces/{namespace}/pods/p1$", 1, 429,
                         retry_after=5)
    started = time.monotonic()
    with pytest.raises(ClusterError) as raised:
        patient_cluster.read_pod("p1")
    assert time.monotonic() - started < 1.0
    assert (raised.value.status, raised.value.retry_after) == (429, 5.0)
    assert raised.value.transient


@pytest.mark.parametrize(("method", "suffix", "status", "call"), [
    pytest.param("POST", "$", 403, "create", id="403-create"),
    pytest.param("GET", "/p1$", 403, "read", id="403-read"),
    pytest.param("DELETE", "/p1$", 403, "delete", id="403-delete"),
    pytest.param("POST", "$", 422, "create", id="422-create"),
    pytest.param("DELETE", "/p1$", 400, "delete", id="400-delete"),
    pytest.param("GET", "/p1$", 401, "read", id="401-read"),
])
def test_refused_requests_are_not_retried(kubeconfig: Path, namespace: str,
                                          faults: EmulatedCluster, method: str, suffix: str,
                                          status: int, call: str) -> None:
    """A 4xx other than 429 fails the call after exactly one request."""
    patient_cluster = patient(kubeconfig, namespace, 10.0)
    faults.fail_requests(method, f"^/api/v1/namespaces/{namespace}/pods{suffix}", 1, status)
    calls: dict[str, Callable[[], object]] = {
        "create": lambda: patient_cluster.create_pod(small_pod("p1")),
        "read": lambda: patient_cluster.read_pod("p1"),
        "delete": lambda: patient_cluster.delete_pod("p1")}
    before = faults.request_counts()
    with pytest.raises(ClusterError) as raised:
        calls[call]()
    assert raised.value.status == status and not raised.value.transient
    verb = {"create": "create pods", "read": "get pods", "delete": "delete pods"}[call]
    assert spent(faults, before) == {verb: 1}


def test_not_found_is_an_answer_not_a_failure(kubeconfig: Path, namespace: str,
                                              faults: EmulatedCluster) -> None:
    """A 404 on read or delete is answered in one request each (None, False), never retried."""
    patient_cluster = patient(kubeconfig, namespace, 10.0)
    before = faults.request_counts()
    assert patient_cluster.read_pod("ghost") is None
    assert patient_cluster.delete_pod("ghost") is False
    assert patient_cluster.delete_secret("ghost") is False
    assert spent(faults, before) == {"get pods": 1, "delete pods": 1, "delete secrets": 1}


def test_an_invalid_manifest_is_refused_once(kubeconfig: Path, namespace: str,
                                             faults: EmulatedCluster) -> None:
    """The API server's own 422 is not retried: one create request."""
    patient_cluster = patient(kubeconfig, namespace, 10.0)
    manifest = small_pod("p1")
    del manifest["spec"]["containers"][0]["image"]
    before = faults.request_counts()
    with pytest.raises(ClusterError) as raised:
        patient_cluster.create_pod(manifest)
    assert raised.value.status == 422 and not raised.value.transient
    assert spent(faults, before) == {"create pods": 1}


def test_a_known_transient_message_is_retried_whatever_its_status(
        kubeconfig: Path, namespace: str, faults: EmulatedCluster,
        retry_log: io.StringIO) -> None:
    """A 400 saying "error dialing backend" (as GitLab's executor learned) is retried."""
    patient_cluster = patient(kubeconfig, namespace, 10.0)
    patient_cluster.create_pod(small_pod("p1"))
    arm_fault(faults, method="GET", path=f"^/api/v1/namespaces/{namespace}/pods/p1$",
              count=1, status=400,
              message="error dialing backend: dial tcp 10.0.0.7:10250: i/o timeout")
    before = faults.request_counts()
    assert patient_cluster.read_pod("p1") is not None
    assert spent(faults, before) == {"get pods": 2}
    [event] = logged(retry_log)
    assert "error dialing backend" in event["error"]


def test_retries_give_up_after_the_budget_with_the_last_error(
        kubeconfig: Path, namespace: str, faults: EmulatedCluster,
        retry_log: io.StringIO) -> None:
    """After retry_timeout of transient failures the call fails with the server's last words."""
    patient_cluster = patient(kubeconfig, namespace, 1.0)
    path = f"^/api/v1/namespaces/{namespace}/pods/p1$"
    faults.fail_requests("GET", path, 1, 503)
    faults.fail_requests("GET", path, 1000, 500)
    before = faults.request_counts()
    started = time.monotonic()
    with pytest.raises(ClusterError) as raised:
        patient_cluster.read_pod("p1")
    elapsed = time.monotonic() - started
    assert str(raised.value) == f"reading pod {namespace}/p1: 500 InternalError: injected fault"
    assert raised.value.status == 500 and raised.value.transient
    assert elapsed < 1.0 + 1.0
    attempts = spent(faults, before)["get pods"]
    assert attempts >= 3
    assert len(logged(retry_log)) == attempts - 1


def test_unreachable_api_is_a_cluster_error() -> None:
    """A closed port is retried until the budget is spent, then reported as unreachable."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    configuration.retries = False
    closed = kube.Cluster(kube.Connection(configuration, "ns", configuration.host), 2.0, 0.5)
    started = time.monotonic()
    with pytest.raises(ClusterError) as raised:
        closed.read_pod("p1")
    assert time.monotonic() - started < 2.0
    assert str(raised.value).startswith("reading pod ns/p1: cannot reach the Kubernetes API")
    assert raised.value.status is None and raised.value.transient


# --- secrets the pod owns, and listing by label ----------------------------------------


def secret(name: str, **labels: str) -> dict[str, Any]:
    """A small opaque secret manifest with labels."""
    return {"metadata": {"name": name, "labels": dict(labels)}, "type": "Opaque",
            "stringData": {"token": "not-a-real-token"}}


def test_create_secret_is_owned_by_the_pod(kcluster: kube.Cluster,
                                           core: client.CoreV1Api, namespace: str) -> None:
    """create_secret adds an ownerReference to the pod (kind, name, uid) and keeps the labels."""
    pod = kcluster.create_pod(small_pod("p1"))
    created = kcluster.create_secret(secret("s1", app="x"), pod)
    expected = {"apiVersion": "v1", "kind": "Pod", "name": "p1",
                "uid": pod["metadata"]["uid"], "blockOwnerDeletion": False}
    assert created["metadata"]["ownerReferences"] == [expected]
    assert kube.owner_reference(pod) == expected
    stored = core.read_namespaced_secret("s1", namespace)
    assert stored.metadata.labels == {"app": "x"}
    assert [ref.uid for ref in stored.metadata.owner_references] == [pod["metadata"]["uid"]]


def test_create_secret_does_not_change_the_manifest(kcluster: kube.Cluster) -> None:
    """The caller's manifest is left as it was (no ownerReferences added to it)."""
    pod = kcluster.create_pod(small_pod("p1"))
    manifest = secret("s1")
    before = json.dumps(manifest, sort_keys=True)
    kcluster.create_secret(manifest, pod)
    assert json.dumps(manifest, sort_keys=True) == before


def test_an_owned_secret_goes_when_its_pod_is_deleted(kcluster: kube.Cluster,
                                                      core: client.CoreV1Api,
                                                      namespace: str) -> None:
    """Kubernetes' garbage collector removes the secret once its owner pod is gone."""
    pod = kcluster.create_pod(small_pod("p1"))
    kcluster.create_secret(secret("s1", owned="yes"), pod)
    kcluster.create_secret(secret("s2", owned="no"),
                           kcluster.create_pod(small_pod("p2")))
    assert kcluster.delete_pod("p1", grace_seconds=0)
    wait_for(lambda: kcluster.list_secrets("owned=yes") == [], timeout=10,
             what="the owned secret to be collected")
    assert [s["metadata"]["name"] for s in kcluster.list_secrets("owned")] == ["s2"]
    assert core.read_namespaced_secret("s2", namespace).metadata.name == "s2"


def test_delete_secret_twice_is_true_then_false(kcluster: kube.Cluster) -> None:
    """The first delete reports a deletion; deleting an absent secret reports False."""
    kcluster.create_secret(secret("s1"), kcluster.create_pod(small_pod("p1")))
    assert kcluster.delete_secret("s1") is True
    assert kcluster.delete_secret("s1") is False
    assert kcluster.list_secrets("app") == []


def test_list_pods_and_secrets_by_label_selector(kcluster: kube.Cluster,
                                                 core: client.CoreV1Api,
                                                 namespace: str) -> None:
    """list_pods and list_secrets return exactly the objects whose labels match, as dicts."""
    for name, team in (("a1", "a"), ("a2", "a"), ("b1", "b")):
        manifest = small_pod(name)
        manifest["metadata"]["labels"] = {"team": team, "managed": "yes"}
        kcluster.create_pod(manifest)
        core.create_namespaced_secret(namespace, secret(f"s-{name}", team=team))
    kcluster.create_pod(small_pod("unlabelled"))

    def names(items: list[dict[str, Any]]) -> list[str]:
        return sorted(item["metadata"]["name"] for item in items)

    assert names(kcluster.list_pods("team=a")) == ["a1", "a2"]
    assert names(kcluster.list_pods("team!=a,managed=yes")) == ["b1"]
    assert names(kcluster.list_pods("managed")) == ["a1", "a2", "b1"]
    assert kcluster.list_pods("team=c") == []
    assert names(kcluster.list_secrets("team=b")) == ["s-b1"]
    assert names(kcluster.list_secrets("team in (a,b)")) == ["s-a1", "s-a2", "s-b1"]
    pod = kcluster.list_pods("team=b")[0]
    assert pod["metadata"]["namespace"] == namespace


# --- exec -----------------------------------------------------------------------------


@pytest.fixture
def job(kcluster: kube.Cluster) -> str:
    """A running two-container pod shaped like the driver's (helper and kaniko build)."""
    running(kcluster, job_pod("job", terminationGracePeriodSeconds=1))
    return "job"


def test_exec_into_unknown_container_keeps_the_servers_words(kcluster: kube.Cluster,
                                                             job: str, namespace: str) -> None:
    """A refused exec handshake gives the status and the server's message, not the raw dump."""
    with pytest.raises(ClusterError) as raised:
        kcluster.run_quiet(job, "nope", ["true"], timeout=10)
    assert str(raised.value) == (f"starting a command in container nope of pod {namespace}/job:"
                                 f" 400 Bad Request: container nope is not valid for pod {job}")
    assert (raised.value.status, raised.value.reason) == (400, "Bad Request")
    assert not raised.value.transient


def test_exec_stream_passes_output_to_the_sinks_and_returns_the_status(
        kcluster: kube.Cluster, job: str) -> None:
    """stdin is fed first; stdout and stderr reach their own sinks; the final Status comes back."""
    out, err = bytearray(), bytearray()
    status = kcluster.exec_stream(job, "build", ["/busybox/sh", "-s"],
                                  b"echo out-1\necho err-1 >&2\nprintf 'no-eol'\nexit 3\n",
                                  out.extend, err.extend, stall_seconds=10)
    assert (bytes(out), bytes(err)) == (b"out-1\nno-eol", b"err-1\n")
    assert kube.exit_code("running", status) == 3


def test_exec_stream_sends_stdin_larger_than_one_chunk_whole(kcluster: kube.Cluster,
                                                             job: str) -> None:
    """stdin of several chunks arrives whole and in order; success is exit code 0."""
    lines = b"".join(b"echo line-%d\n" % i for i in range(8000))
    assert len(lines) > 2 * streams.STDIN_CHUNK
    out, err = bytearray(), bytearray()
    # Stdin is never closed (as in the driver): the reader takes exactly n bytes.
    status = kcluster.exec_stream(job, "helper",
                                  ["sh", "-c", 'head -c "$1" | sh', "sh", str(len(lines))],
                                  lines, out.extend, err.extend, stall_seconds=10)
    assert (kube.exit_code("running", status), bytes(err)) == (0, b"")
    assert bytes(out) == b"".join(b"line-%d\n" % i for i in range(8000))


def test_exec_stream_without_stdin(kcluster: kube.Cluster, job: str) -> None:
    """`stdin=None` runs the command with no stdin at all."""
    out = bytearray()
    status = kcluster.exec_stream(job, "helper", ["sh", "-c", "cat; echo done"], None,
                                  out.extend, out.extend, stall_seconds=10)
    assert (kube.exit_code("running", status), bytes(out)) == (0, b"done\n")


def test_exec_stream_that_carries_nothing_is_a_transient_stall(kcluster: kube.Cluster,
                                                               job: str, namespace: str) -> None:
    """A connection silent for `stall_seconds` is given up as a transient ClusterError."""
    started = time.monotonic()
    with pytest.raises(ClusterError) as raised:
        kcluster.exec_stream(job, "helper", ["sleep", "30"], None, bytearray().extend,
                             bytearray().extend, stall_seconds=1.0)
    elapsed = time.monotonic() - started
    assert str(raised.value) == (f"running a command in container helper of pod {namespace}/"
                                 "job: the exec connection carried nothing for 1s")
    assert raised.value.transient
    assert 1.0 <= elapsed < 5


def test_exec_stream_output_resets_the_stall_clock(kcluster: kube.Cluster, job: str) -> None:
    """A command that prints at least once per stall period is not a stall, however long."""
    out = bytearray()
    status = kcluster.exec_stream(
        job, "helper", ["sh", "-c", "for i in 1 2 3 4; do echo $i; sleep 0.4; done"], None,
        out.extend, out.extend, stall_seconds=1.0)
    assert (kube.exit_code("running", status), bytes(out)) == (0, b"1\n2\n3\n4\n")


def test_exec_cut_mid_stream_is_a_transient_failure(
        kcluster: kube.Cluster, job: str, faults: EmulatedCluster, namespace: str) -> None:
    """A dropped exec is a transient ClusterError; the sink got at most what came before."""
    faults.cut_exec(after_bytes=4)
    out = bytearray()
    with pytest.raises(ClusterError) as raised:
        kcluster.exec_stream(job, "helper", ["sh", "-c", "echo 12345678; sleep 1"], None,
                             out.extend, out.extend, stall_seconds=10)
    assert str(raised.value).startswith(f"running a command in container helper of pod "
                                        f"{namespace}/job: the exec connection failed: ")
    assert raised.value.transient
    assert b"1234".startswith(bytes(out))  # bytes may still sit in the client's buffer


def test_run_quiet_returns_code_and_combined_output(kcluster: kube.Cluster, job: str) -> None:
    """run_quiet gives the exit code and stdout plus stderr."""
    assert kcluster.run_quiet(job, "helper", ["sh", "-c", "echo hi; echo oops >&2; exit 2"],
                              timeout=10) == (2, b"hi\noops\n")
    assert kcluster.run_quiet(job, "build", ["/busybox/true"], timeout=10) == (0, b"")


# --- following a pod ------------------------------------------------------------------


def test_pod_updates_survive_a_compacted_history(
        kcluster: kube.Cluster, cluster: EmulatedCluster, core: client.CoreV1Api,
        namespace: str) -> None:
    """A watch from a compacted resource version (410 Gone) re-lists the pod and goes on."""
    created = kcluster.create_pod(job_pod("job", terminationGracePeriodSeconds=1))
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "newer"}})
    cluster.compact()  # the pod's resource version is now older than the history kept
    before = cluster.request_counts()
    pod = until_running(kcluster, created)
    assert pod["status"]["phase"] == "Running"
    assert spent(cluster, before).get("list pods", 0) >= 1


def test_a_compacted_history_does_not_make_the_updates_spin(
        kcluster: kube.Cluster, cluster: EmulatedCluster, core: client.CoreV1Api,
        namespace: str) -> None:
    """After a 410 on a pod that does not change, following it takes a few requests."""
    created = kcluster.create_pod(hungry_pod("p1"))
    wait_for(lambda: assess(kcluster.read_pod("p1") or {}).unschedulable, timeout=10,
             what="the pod to be unschedulable")
    pod = kcluster.read_pod("p1")
    assert pod is not None and created
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "newer"}})
    cluster.compact()
    before = cluster.request_counts()
    for _kind, obj in kcluster.pod_updates(pod, time.monotonic() + 1.0):
        assert obj is not None
    assert spent(cluster, before).get("watch pods", 0) <= 5


def test_pod_updates_survive_failed_watch_requests(
        kcluster: kube.Cluster, faults: EmulatedCluster, namespace: str,
        retry_log: io.StringIO) -> None:
    """A watch request that fails with 503 is reopened with backoff, each retry logged."""
    created = kcluster.create_pod(job_pod("job", terminationGracePeriodSeconds=1))
    faults.fail_requests("GET", f"^/api/v1/namespaces/{namespace}/pods$", 2, 503)
    before = faults.request_counts()
    pod = until_running(kcluster, created)
    assert pod["status"]["phase"] == "Running"
    assert spent(faults, before)["watch pods"] >= 3
    events = logged(retry_log)
    assert [e["attempt"] for e in events] == [1, 2]
    for event in events:
        assert event["event"] == "watching the pod again after a transient error"
        assert event["action"] == f"watching pod {namespace}/job"
        assert "503" in event["error"]


def test_pod_updates_survive_a_reset_watch(kcluster: kube.Cluster,
                                           faults: EmulatedCluster, namespace: str) -> None:
    """A watch connection the server drops is reopened."""
    created = kcluster.create_pod(job_pod("job", terminationGracePeriodSeconds=1))
    faults.fail_requests("GET", f"^/api/v1/namespaces/{namespace}/pods$", 1, reset=True)
    pod = until_running(kcluster, created)
    assert pod["status"]["phase"] == "Running"


def test_a_refused_watch_is_not_retried(kcluster: kube.Cluster, faults: EmulatedCluster,
                                        namespace: str) -> None:
    """A watch answered 403 ends the updates at once, after one request."""
    created = kcluster.create_pod(small_pod("p1"))
    faults.fail_requests("GET", f"^/api/v1/namespaces/{namespace}/pods$", 1, 403)
    before = faults.request_counts()
    with pytest.raises(ClusterError) as raised:
        list(kcluster.pod_updates(created, time.monotonic() + 30))
    assert raised.value.status == 403
    assert str(raised.value).startswith(f"watching pod {namespace}/p1: 403")
    assert spent(faults, before) == {"watch pods": 1}


def hungry_pod(name: str) -> dict[str, Any]:
    """A pod asking for more CPU than any node has: the scheduler says Insufficient cpu."""
    manifest = small_pod(name)
    manifest["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1000"}}
    return manifest


def test_wait_gone_follows_a_deletion(kcluster: kube.Cluster) -> None:
    """wait_gone returns True once a deleted pod is gone, False while it is still there."""
    running(kcluster, small_pod("p1"))
    assert kcluster.wait_gone("p1", timeout=0.5) is False
    kcluster.delete_pod("p1")
    assert kcluster.wait_gone("p1", timeout=20) is True
    assert kcluster.wait_gone("p1", timeout=1) is True


# --- pure helpers -----------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code"), [
    pytest.param({"metadata": {}, "status": "Success"}, 0, id="success"),
    pytest.param({"status": "Failure", "reason": "NonZeroExitCode", "message": "exit 7",
                  "details": {"causes": [{"reason": "ExitCode", "message": "7"}]}}, 7,
                 id="non-zero"),
    pytest.param({"status": "Failure", "reason": "NonZeroExitCode",
                  "details": {"causes": [{"reason": "Other", "message": "x"},
                                         {"reason": "ExitCode", "message": "130"}]}}, 130,
                 id="non-zero-second-cause"),
])
def test_exit_code_reads_the_final_status(status: dict[str, Any], code: int) -> None:
    """Success is 0 and NonZeroExitCode gives the code in its ExitCode cause."""
    assert kube.exit_code("running", json.dumps(status).encode()) == code


def test_exit_code_without_status_means_outcome_unknown() -> None:
    """No status at all is a transient ClusterError saying the outcome is unknown."""
    with pytest.raises(ClusterError, match=r"^running x: .*outcome is unknown") as raised:
        kube.exit_code("running x", b"")
    assert raised.value.transient


@pytest.mark.parametrize(("code", "message", "transient"), [
    pytest.param(500, "container runtime gone", True, id="500"),
    pytest.param(503, "kubelet busy", True, id="503"),
    pytest.param(403, "forbidden", False, id="403"),
    pytest.param(400, "error dialing backend: dial tcp: i/o timeout", True,
                 id="400-known-transient-message"),
])
def test_exit_code_of_another_failure_keeps_its_message(code: int, message: str,
                                                        transient: bool) -> None:
    """A Failure without an exit code is a ClusterError with the code, reason and message."""
    raw = json.dumps({"status": "Failure", "code": code, "reason": "InternalError",
                      "message": message}).encode()
    with pytest.raises(ClusterError) as raised:
        kube.exit_code("running x", raw)
    assert str(raised.value) == f"running x: {code} InternalError: {message}"
    assert (raised.value.status, raised.value.transient) == (code, transient)


def test_exit_code_of_unreadable_status_is_a_cluster_error() -> None:
    """A status that is not JSON is a ClusterError quoting it."""
    with pytest.raises(ClusterError, match="unreadable exit status b'not json'"):
        kube.exit_code("running x", b"not json")


@pytest.mark.parametrize(("status", "text", "transient"), [
    pytest.param(None, "reading pod: cannot reach the Kubernetes API", True, id="no-status"),
    pytest.param(429, "429 TooManyRequests", True, id="429"),
    pytest.param(500, "500 InternalError", True, id="500"),
    pytest.param(502, "502 Bad Gateway", True, id="502"),
    pytest.param(503, "503 ServiceUnavailable", True, id="503"),
    pytest.param(504, "504 Timeout", True, id="504"),
    pytest.param(400, "400 BadRequest: invalid", False, id="400"),
    pytest.param(401, "401 Unauthorized", False, id="401"),
    pytest.param(403, "403 Forbidden: pods is forbidden", False, id="403"),
    pytest.param(404, "404 NotFound", False, id="404"),
    pytest.param(409, "409 AlreadyExists", False, id="409"),
    pytest.param(410, "410 Expired: too old resource version", False, id="410"),
    pytest.param(422, "422 Invalid: spec.containers[0].image: Required value", False,
                 id="422"),
    pytest.param(400, "400 BadRequest: error dialing backend: EOF", True,
                 id="error-dialing-backend"),
    pytest.param(500, "500: etcdserver: request timed out", True, id="etcd-timeout"),
    pytest.param(400, "400: http2: client connection lost", True, id="http2-lost"),
    pytest.param(403, "403: TLS handshake timeout", True, id="message-case-ignored"),
    pytest.param(400, "400: unexpected EOF", True, id="unexpected-eof"),
    pytest.param(400, "400: read: connection reset by peer", True, id="connection-reset"),
    pytest.param(504, "504: the request did not complete within requested timeout", True,
                 id="request-timeout"),
    pytest.param(400, "400: context deadline exceeded", True, id="context-deadline"),
])
def test_transient_classification(status: int | None, text: str, transient: bool) -> None:
    """Connection errors, 429, 5xx and GitLab's retried messages are transient; other 4xx not."""
    assert kube_errors.is_transient(status, text) is transient


def test_every_transient_message_is_lowercase() -> None:
    """The message list is matched against lowercased text, so its entries are lowercase."""
    assert all(phrase == phrase.lower() for phrase in kube_errors.TRANSIENT_MESSAGES)


@pytest.mark.parametrize(("headers", "seconds"), [
    pytest.param({"Retry-After": "3"}, 3.0, id="seconds"),
    pytest.param({"Retry-After": "0.5"}, 0.5, id="fraction"),
    pytest.param({"Retry-After": "0"}, 0.0, id="zero"),
    pytest.param({"Retry-After": "-4"}, 0.0, id="negative-is-zero"),
    pytest.param({"Retry-After": "3600"}, kube_errors.RETRY_AFTER_MAX, id="capped"),
    pytest.param(urllib3.HTTPHeaderDict({"retry-after": "2"}), 2.0, id="any-case"),
    pytest.param({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None, id="http-date"),
    pytest.param({"Retry-After": "soon"}, None, id="garbage"),
    pytest.param({"Retry-After": "inf"}, None, id="infinite"),
    pytest.param({"Retry-After": "nan"}, None, id="nan"),
    pytest.param({"Retry-After": ""}, None, id="empty"),
    pytest.param({}, None, id="absent"),
    pytest.param(None, None, id="no-headers"),
])
def test_retry_after_header_parsing(headers: Any, seconds: float | None) -> None:
    """Retry-After delta-seconds are read and clamped to [0, RETRY_AFTER_MAX]; else None."""
    assert kube_errors._retry_after(headers) == seconds


def test_api_error_marks_transport_failures_transient() -> None:
    """A connection failure is transient; an exception the client did not classify is not."""
    assert kube.api_error("reading pod ns/p", ConnectionResetError("reset")).transient
    assert kube.api_error("reading pod ns/p",
                          urllib3.exceptions.ProtocolError("aborted")).transient
    assert not kube.api_error("reading pod ns/p", ValueError("bad data")).transient


def test_handshake_failure_reads_status_and_server_message() -> None:
    """The websocket client's handshake text yields the HTTP status and the Status message."""
    reason = ("Handshake status 404 Not Found -+-+- {'content-type': 'application/json'} "
              "-+-+- b'{\"kind\":\"Status\",\"message\":\"pods \\\\\"x\\\\\" not found\"}'")
    assert kube_errors._handshake_failure(reason) == (404, 'pods "x" not found')


def test_handshake_failure_reads_a_body_shown_as_text() -> None:
    """websocket-client 1.9+ shows the body decoded, not as a bytes repr; both are read."""
    body = json.dumps({"kind": "Status", "message": "container nope is not valid for pod job"})
    reason = ("Handshake status 400 Bad Request -+-+- {'content-type': 'application/json'} "
              f"-+-+- {body}")
    assert kube_errors._handshake_failure(reason) == (
        400, "container nope is not valid for pod job")


def test_handshake_failure_without_a_body_or_status() -> None:
    """Without a Status body the message is empty; without a status the raw text is kept."""
    assert kube_errors._handshake_failure("Handshake status 502 Bad Gateway") == (502, "")
    assert kube_errors._handshake_failure(
        "Handshake status 500 -+-+- {} -+-+- b'not json'") == (500, "")
    assert kube_errors._handshake_failure("connection reset") == (None, "connection reset")


def test_api_error_keeps_plain_exceptions_after_the_action() -> None:
    """An exception the client did not classify still starts with the action."""
    error = kube.api_error("reading pod ns/p", ValueError("bad data"))
    assert str(error) == "reading pod ns/p: bad data"
    assert error.status is None



def test_in_cluster_service_account_is_used_inside_a_pod(tmp_path: Path) -> None:
    """Inside a pod (service host set, token mounted) the service account and its namespace win."""
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("in-cluster-token")
    (account / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (account / "namespace").write_text("ci-jobs\n")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
           "KUBECONFIG": str(tmp_path / "ignored")}
    connection = kube.connect(KubernetesSettings(), "test", environ=env,
                              service_account_dir=account)
    assert connection.server == "https://10.96.0.1:443"
    assert connection.namespace == "ci-jobs"
    assert connection.configuration.api_key["BearerToken"] == "bearer in-cluster-token"


def test_explicit_kubeconfig_wins_over_the_service_account(tmp_path: Path,
                                                           kubeconfig: Path) -> None:
    """An explicit [kubernetes] kubeconfig is used even inside a pod."""
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("in-cluster-token")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    connection = kube.connect(KubernetesSettings(kubeconfig=str(kubeconfig)), "test",
                              environ=env, service_account_dir=account)
    assert connection.server.startswith("http://127.0.0.1:")


def test_pod_events_of_one_incarnation_leave_out_an_earlier_same_named_pod(
        kcluster: kube.Cluster) -> None:
    """With the pod's uid, events of an earlier pod of the same name are not listed."""
    first = kcluster.create_pod(hungry_pod("again"))
    wait_for(lambda: kcluster.pod_events("again"), timeout=10, what="the first pod's events")
    kcluster.delete_pod("again", grace_seconds=0)
    assert kcluster.wait_gone("again", timeout=10)
    second = kcluster.create_pod(hungry_pod("again"))
    wait_for(lambda: kcluster.pod_events("again", second["metadata"]["uid"]), timeout=10,
             what="the second pod's events")
    uids = {e["involvedObject"]["uid"] for e in kcluster.pod_events("again")}
    assert uids == {first["metadata"]["uid"], second["metadata"]["uid"]}
    mine = kcluster.pod_events("again", second["metadata"]["uid"])
    assert {e["involvedObject"]["uid"] for e in mine} == {second["metadata"]["uid"]}


def test_a_server_that_accepts_and_never_answers_cannot_block_an_exec(tmp_path: Path) -> None:
    """An exec handshake to a silent server fails within the request timeout, as transient."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        path = write_kubeconfig(tmp_path / "config",
                                {"silent": (f"http://127.0.0.1:{listener.getsockname()[1]}",
                                            "default")}, "silent")
        silent = kube.Cluster(kube.connect(KubernetesSettings(kubeconfig=str(path)), "test"),
                              request_timeout=1.0, retry_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(ClusterError) as failed:
            silent.exec_stream("p", "build", ["true"], None, bytearray().extend,
                               bytearray().extend, stall_seconds=30)
        spent_seconds = time.monotonic() - started
    finally:
        listener.close()
    assert failed.value.transient
    assert spent_seconds < 5


def test_tls_verification_failures_are_not_retried() -> None:
    """A certificate the CA does not vouch for is a permanent error naming the kubeconfig's CA."""
    error = kube.api_error("reading pod ns/p", urllib3.exceptions.SSLError(
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"))
    assert not error.transient
    assert "certificate authority in the kubeconfig" in str(error)


def test_delete_with_a_uid_spares_a_newer_pod_of_the_same_name(kcluster: kube.Cluster) -> None:
    """Deleting incarnation X of a name refuses (409) when the pod is now a newer one."""
    old = kcluster.create_pod(small_pod("reused"))
    kcluster.delete_pod("reused", grace_seconds=0)
    assert kcluster.wait_gone("reused", timeout=10)
    new = kcluster.create_pod(small_pod("reused"))
    with pytest.raises(ClusterError) as refused:
        kcluster.delete_pod("reused", uid=old["metadata"]["uid"])
    assert refused.value.status == 409 and "Precondition failed: UID in precondition" \
        in str(refused.value)
    current = kcluster.read_pod("reused")
    assert current is not None and current["metadata"]["uid"] == new["metadata"]["uid"]
    assert kcluster.delete_pod("reused", uid=new["metadata"]["uid"]) is True


def test_calls_never_load_the_generated_core_api(kubeconfig: Path,
                                                 cluster: EmulatedCluster) -> None:
    """Listing, reading and a missing pod's exec go out without importing `CoreV1Api`."""
    probe = (
        "import sys\nfrom runner_driver import kube\n"
        "from runner_driver.errors import ClusterError\n"
        "from runner_driver.settings import KubernetesSettings\n"
        "connection = kube.connect(KubernetesSettings(kubeconfig=sys.argv[1]), 'test')\n"
        "pods = kube.Cluster(connection, 10.0, 1.0)\n"
        "print(pods.list_pods('a=b'), pods.read_pod('nope'))\n"
        "try:\n    pods.run_quiet('nope', 'build', ['true'], 5.0)\n"
        "except ClusterError as error:\n    print(error.status)\n"
        "print('kubernetes.client.api.core_v1_api' in sys.modules)\n")
    before = cluster.request_counts()
    result = subprocess.run([sys.executable, "-c", probe, str(kubeconfig)], capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout.splitlines() == ["[] None", "404", "False"], result.stderr
    assert sum(cluster.request_counts().values()) > sum(before.values())
