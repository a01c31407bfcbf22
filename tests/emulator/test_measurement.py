"""The cluster's measurement hooks for benchmarks: Running times and in-sandbox runs.

`EmulatedCluster.running_at` says when a pod's phase became Running, and
`EmulatedCluster.run_in_sandbox` runs a command in a container exactly as an exec would,
but without HTTP or websocket: the floor a benchmark subtracts from a driver stage.
Both are checked against what the official client sees over the wire.
"""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from runner_driver.emulator import EmulatedCluster
from runner_driver.emulator.store import ApiError
from tests.conftest import KANIKO_IDLE, finish, job_pod, open_session, wait_for, wait_running


def test_running_at_is_when_the_phase_became_running(cluster: EmulatedCluster,
                                                     core: client.CoreV1Api,
                                                     namespace: str) -> None:
    """Between creation and the first read that shows Running; kept after deletion."""
    assert cluster.running_at(namespace, "timed") is None
    created = time.time()
    core.create_namespaced_pod(namespace, job_pod("timed"))
    wait_running(core, namespace, "timed", timeout=20)
    seen = time.time()
    running_at = cluster.running_at(namespace, "timed")
    assert running_at is not None and created <= running_at <= seen
    core.delete_namespaced_pod("timed", namespace, grace_period_seconds=0)
    wait_for(lambda: not core.list_namespaced_pod(
        namespace, field_selector="metadata.name=timed").items, what="pod timed gone")
    assert cluster.running_at(namespace, "timed") == running_at


def test_running_at_stays_none_for_a_pod_that_never_runs(cluster: EmulatedCluster,
                                                         core: client.CoreV1Api,
                                                         namespace: str) -> None:
    """A pod stuck pulling an image never became Running."""
    body = job_pod("stuck")
    body["spec"]["containers"][1]["image"] = "registry.example.com/no/such:image"
    core.create_namespaced_pod(namespace, body)
    wait_for(lambda: any(s.state.waiting and s.state.waiting.reason == "ErrImagePull"
                         for s in core.read_namespaced_pod("stuck", namespace)
                         .status.container_statuses or []), what="ErrImagePull")
    assert cluster.running_at(namespace, "stuck") is None


@pytest.fixture
def sandboxed(cluster: EmulatedCluster, core: client.CoreV1Api, namespace: str) -> str:
    """A running job-shaped pod (helper and kaniko build containers) past its PID 1's exec."""
    core.create_namespaced_pod(namespace, job_pod("sandboxed"))
    wait_running(core, namespace, "sandboxed", timeout=20)
    # Running comes as the sandbox starts; its command may not have replaced bwrap yet.
    wait_for(lambda: b"trap" in cluster.run_in_sandbox(namespace, "sandboxed", "build", [
        "cat", "/proc/1/cmdline"])[1], what="the build container's command as PID 1")
    return "sandboxed"


# Environment, working directory, PID 1 of the container's pid namespace, stdin, stderr.
PROBE = ("echo env=$TMPDIR; pwd; tr '\\0' ' ' < /proc/1/cmdline; echo; cat; "
         "echo to-stderr >&2; exit 3")


def test_run_in_sandbox_sees_what_an_exec_sees(cluster: EmulatedCluster,
                                              exec_core: client.CoreV1Api, namespace: str,
                                              sandboxed: str) -> None:
    """Same environment, working directory and processes as an exec; stdin fed; code kept."""
    code, output, seconds = cluster.run_in_sandbox(namespace, sandboxed, "build",
                                                   ["/busybox/sh", "-c", PROBE],
                                                   stdin=b"from-stdin\n")
    session = open_session(exec_core, namespace, sandboxed,
                           ["/busybox/sh", "-c", PROBE.replace("cat;", "echo from-stdin;")],
                           container="build")
    out, err, status = finish(session)
    assert code == 3 and status["details"]["causes"][0]["message"] == "3"
    assert output == out + err
    assert output == (b"env=/scratch\n/workspace\n" + " ".join(KANIKO_IDLE).encode()
                      + b" \nfrom-stdin\nto-stderr\n")
    assert 0 < seconds < 10


def test_run_in_sandbox_writes_where_the_containers_read(cluster: EmulatedCluster,
                                                        exec_core: client.CoreV1Api,
                                                        namespace: str, sandboxed: str) -> None:
    """A file written on the shared volume in one container is there for the other."""
    code, _, _ = cluster.run_in_sandbox(namespace, sandboxed, "helper",
                                        ["sh", "-c", "echo shared > /builds/marker"])
    assert code == 0
    session = open_session(exec_core, namespace, sandboxed, ["cat", "/builds/marker"],
                           container="build")
    assert finish(session)[0] == b"shared\n"


def test_run_in_sandbox_refuses_a_missing_pod_as_an_exec_does(cluster: EmulatedCluster,
                                                             namespace: str) -> None:
    """404 for a pod that does not exist."""
    with pytest.raises(ApiError) as refused:
        cluster.run_in_sandbox(namespace, "absent", "build", ["true"])
    assert refused.value.code == 404
