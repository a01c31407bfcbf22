"""`kube`: finding credentials, pod calls, watches and exec against the emulated cluster.

Cluster behaviour goes over the wire (HTTP and websocket exec on 127.0.0.1); the
`kubernetes` client is never patched. Pure helpers (`_exit_code`, `_handshake_failure`)
are checked directly.
"""

from __future__ import annotations

import json
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from runner_driver import kube
from runner_driver.emulator import EmulatedCluster
from runner_driver.errors import ClusterError, ConfigError, PodStartError
from runner_driver.podstatus import PodState
from runner_driver.settings import KubernetesSettings
from tests.conftest import HELPER, HELPER_IDLE, job_pod

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


def running(kcluster: kube.Cluster, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create a pod and wait until every container runs."""
    return kcluster.wait_running(kcluster.create_pod(manifest), 30, lambda _state: None)


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


def test_create_pod_replaces_a_leftover_of_the_same_name(kcluster: kube.Cluster,
                                                         core: client.CoreV1Api,
                                                         namespace: str) -> None:
    """A 409 on create deletes the leftover, waits for it to go and creates the pod anew."""
    first = kcluster.create_pod(small_pod("p1"))
    manifest = small_pod("p1")
    manifest["metadata"]["labels"] = {"attempt": "second"}
    second = kcluster.create_pod(manifest)
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    stored = core.read_namespaced_pod("p1", namespace)
    assert stored.metadata.uid == second["metadata"]["uid"]
    assert stored.metadata.labels == {"attempt": "second"}


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


def test_unreachable_api_is_a_cluster_error() -> None:
    """A closed port is reported as a ClusterError saying the API cannot be reached."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    configuration.retries = 0
    closed = kube.Cluster(kube.Connection(configuration, "ns", configuration.host), 2.0)
    with pytest.raises(ClusterError) as raised:
        closed.read_pod("p1")
    assert str(raised.value).startswith("reading pod ns/p1: cannot reach the Kubernetes API")
    assert raised.value.status is None


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


def test_run_script_streams_output_to_descriptors_and_returns_exit_code(
        kcluster: kube.Cluster, job: str) -> None:
    """The script is fed on stdin; stdout and stderr land in their own fds; its code comes back."""
    script = b"echo out-1\necho err-1 >&2\nprintf 'no-eol'\nexit 3\n"
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        code = kcluster.run_script(job, "build", ["/busybox/sh", "-s"], script,
                                   out.fileno(), err.fileno())
        out.seek(0)
        err.seek(0)
        assert (code, out.read(), err.read()) == (3, b"out-1\nno-eol", b"err-1\n")


def test_run_script_sends_a_script_larger_than_one_stdin_chunk_whole(
        kcluster: kube.Cluster, job: str) -> None:
    """A script of several stdin chunks arrives whole and in order; success is exit code 0."""
    lines = b"".join(b"echo line-%d\n" % i for i in range(8000))
    assert len(lines) > 2 * kube.STDIN_CHUNK
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        # Stdin is never closed (as in the driver): the reader takes exactly n bytes.
        code = kcluster.run_script(job, "helper",
                                   ["sh", "-c", 'head -c "$1" | sh', "sh", str(len(lines))],
                                   lines, out.fileno(), err.fileno())
        out.seek(0)
        err.seek(0)
        assert (code, err.read()) == (0, b"")
        assert out.read() == b"".join(b"line-%d\n" % i for i in range(8000))


def test_run_quiet_returns_code_and_combined_output(kcluster: kube.Cluster, job: str) -> None:
    """run_quiet gives the exit code and stdout plus stderr."""
    assert kcluster.run_quiet(job, "helper", ["sh", "-c", "echo hi; echo oops >&2; exit 2"],
                              timeout=10) == (2, b"hi\noops\n")
    assert kcluster.run_quiet(job, "build", ["/busybox/true"], timeout=10) == (0, b"")


# --- waiting for pods -----------------------------------------------------------------


def test_wait_running_returns_the_running_pod_and_reports_progress(
        kcluster: kube.Cluster) -> None:
    """wait_running returns once every container runs, having reported the states it saw."""
    states: list[PodState] = []
    created = kcluster.create_pod(job_pod("job", terminationGracePeriodSeconds=1))
    pod = kcluster.wait_running(created, 30, states.append)
    assert pod["status"]["phase"] == "Running"
    assert {s["name"] for s in pod["status"]["containerStatuses"]
            if "running" in s["state"]} == {"helper", "build"}
    assert states and states[0].phase == "starting"


def test_wait_running_fails_fast_naming_an_unpullable_image(kcluster: kube.Cluster) -> None:
    """A pod whose image cannot be pulled fails at once, naming the image and the reason."""
    image = "registry.invalid/nope/kaniko:v1-debug"
    created = kcluster.create_pod(small_pod("p1", image=image))
    started = time.monotonic()
    with pytest.raises(PodStartError) as raised:
        kcluster.wait_running(created, 60, lambda _state: None)
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert image in message and "ErrImagePull" in message


def test_wait_running_times_out_on_an_unschedulable_pod_saying_why(
        kcluster: kube.Cluster, namespace: str) -> None:
    """A pod nothing can schedule fails after the timeout with the scheduler's reason."""
    created = kcluster.create_pod(small_pod("p1", nodeSelector={"no-such-label": "x"}))
    started = time.monotonic()
    with pytest.raises(PodStartError) as raised:
        kcluster.wait_running(created, 1.0, lambda _state: None)
    elapsed = time.monotonic() - started
    message = str(raised.value)
    assert message.startswith(f"pod {namespace}/p1 did not start within 1s: ")
    assert "not scheduled" in message
    assert "didn't match Pod's node affinity/selector" in message
    assert 0.9 <= elapsed < 8


def test_wait_running_reports_a_pod_deleted_while_starting(kcluster: kube.Cluster) -> None:
    """A pod deleted during the wait stops the wait with a PodStartError saying so."""
    created = kcluster.create_pod(small_pod("p1", nodeSelector={"no-such-label": "x"}))
    states: list[PodState] = []

    def delete_on_first(state: PodState) -> None:
        states.append(state)
        if len(states) == 1:
            kcluster.delete_pod("p1", grace_seconds=0)

    started = time.monotonic()
    with pytest.raises(PodStartError) as raised:
        kcluster.wait_running(created, 20, delete_on_first)
    assert time.monotonic() - started < 10
    assert re.search(r"pod (\S+/)?p1 (is being deleted|was deleted while it was starting)",
                     str(raised.value)), str(raised.value)


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
    assert kube._exit_code("running", json.dumps(status).encode()) == code


def test_exit_code_without_status_means_outcome_unknown() -> None:
    """No status at all is a ClusterError saying the outcome is unknown."""
    with pytest.raises(ClusterError, match=r"^running x: .*outcome is unknown"):
        kube._exit_code("running x", b"")


def test_exit_code_of_another_failure_keeps_its_message() -> None:
    """A Failure without an exit code is a ClusterError with the code, reason and message."""
    raw = json.dumps({"status": "Failure", "code": 500, "reason": "InternalError",
                      "message": "container runtime gone"}).encode()
    with pytest.raises(ClusterError) as raised:
        kube._exit_code("running x", raw)
    assert str(raised.value) == "running x: 500 InternalError: container runtime gone"


def test_exit_code_of_unreadable_status_is_a_cluster_error() -> None:
    """A status that is not JSON is a ClusterError quoting it."""
    with pytest.raises(ClusterError, match="unreadable exit status b'not json'"):
        kube._exit_code("running x", b"not json")


def test_handshake_failure_reads_status_and_server_message() -> None:
    """The websocket client's handshake text yields the HTTP status and the Status message."""
    reason = ("Handshake status 404 Not Found -+-+- {'content-type': 'application/json'} "
              "-+-+- b'{\"kind\":\"Status\",\"message\":\"pods \\\\\"x\\\\\" not found\"}'")
    assert kube._handshake_failure(reason) == (404, 'pods "x" not found')


def test_handshake_failure_reads_a_body_shown_as_text() -> None:
    """websocket-client 1.9+ shows the body decoded, not as a bytes repr; both are read."""
    body = json.dumps({"kind": "Status", "message": "container nope is not valid for pod job"})
    reason = ("Handshake status 400 Bad Request -+-+- {'content-type': 'application/json'} "
              f"-+-+- {body}")
    assert kube._handshake_failure(reason) == (400, "container nope is not valid for pod job")


def test_handshake_failure_without_a_body_or_status() -> None:
    """Without a Status body the message is empty; without a status the raw text is kept."""
    assert kube._handshake_failure("Handshake status 502 Bad Gateway") == (502, "")
    assert kube._handshake_failure(
        "Handshake status 500 -+-+- {} -+-+- b'not json'") == (500, "")
    assert kube._handshake_failure("connection reset") == (None, "connection reset")


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
