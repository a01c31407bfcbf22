"""`prepare` over the wire: the pod it creates, how it waits, and how it fails.

Most tests run `runner-driver` processes through the runner emulator against the
module's emulated cluster; `wait_running` and `_create` are also called directly, on a
fresh namespace of it.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from runner_driver.emulator import EmulatedCluster
from runner_driver.emulator.runner import SYSTEM_FAILURE_EXIT_CODE, Cancel, Job, JobSession
from runner_driver.errors import ClusterError, PodStartError
from runner_driver.kube import Cluster, connect
from runner_driver.podspec import labels
from runner_driver.podstatus import PodState
from runner_driver.prepare import _create, wait_running
from runner_driver.runner_env import JobContext, new_nonce
from runner_driver.settings import KubernetesSettings, ManagerSettings, Settings
from tests.conftest import (
    HELPER,
    HELPER_IDLE,
    job_pod,
    make_runner,
    next_job_id,
    pods_left,
    wait_for,
)


def test_the_live_pod_is_unprivileged_labelled_bounded_and_sized(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """The pod has the job's labels, deadline and timeout, no token, log volume and resources."""
    runner = make_runner(kubeconfig, tmp_path,
                         '[build]\ncpu_request = "100m"\nmemory_limit = "512Mi"\n'
                         '[helper]\nmemory_request = "64Mi"\ncpu_limit = "1"\n')
    job = Job(job_id=next_job_id(), timeout_seconds=1800)
    with runner.session(job) as session:
        pod = core.read_namespaced_pod(session.hostname, "default")
        nonce = session.job_env["RUNNER_DRIVER_NONCE"]
    found = pod.metadata.labels
    assert found == {"app.kubernetes.io/managed-by": "runner-driver",
                     "app.kubernetes.io/component": "ci-job",
                     "runner-driver/job-id": str(job.job_id),
                     "runner-driver/project-id": str(job.project_id),
                     "runner-driver/manager": os.uname().nodename,
                     "runner-driver/nonce": nonce}
    # What the job's variables claim is only shown, in annotations.
    assert pod.metadata.annotations["runner-driver/claimed-pipeline-id"] == str(job.pipeline_id)
    spec = pod.spec
    assert spec.automount_service_account_token is False
    assert spec.restart_policy == "Never"
    assert spec.active_deadline_seconds == 1800 + 900
    assert [c.name for c in spec.containers] == ["helper", "build"]
    for container in spec.containers:
        assert container.security_context.privileged is False
        assert container.security_context.allow_privilege_escalation is False
        assert container.security_context.capabilities.drop == ["ALL"]
        mounts = {m.name: m.mount_path for m in container.volume_mounts}
        assert mounts["driver-logs"] == "/runner-driver-logs"
    found = {c.name: c.resources for c in spec.containers}
    assert (found["build"].requests, found["build"].limits) == (
        {"cpu": "100m", "ephemeral-storage": "1Gi"},
        {"memory": "512Mi", "ephemeral-storage": "20Gi"})
    assert (found["helper"].requests, found["helper"].limits) == (
        {"memory": "64Mi", "ephemeral-storage": "256Mi"},
        {"cpu": "1", "ephemeral-storage": "4Gi"})


def test_helper_has_gitlab_runner_on_path(runner: Any) -> None:
    """Cache and artifact stages find a binary named exactly `gitlab-runner` in the helper."""
    with runner.session(Job(job_id=next_job_id())) as session:
        call = session.run_body("archive_cache",
                                "command -v gitlab-runner\ngitlab-runner --version\n")
    assert call.stdout.startswith(b"/runner-driver/bin/gitlab-runner\n")
    assert b"Version:" in call.stdout


def test_prepare_waits_on_a_watch_not_a_poll(runner: Any, cluster: EmulatedCluster) -> None:
    """prepare creates the pod and follows it with one watch instead of repeated reads."""
    before = cluster.request_counts()
    with runner.session(Job(job_id=next_job_id())):
        during = cluster.request_counts()
    spent = {k: during.get(k, 0) - before.get(k, 0) for k in during}
    assert spent.get("create pods") == 1
    assert spent.get("watch pods", 0) == 1
    assert spent.get("get pods", 0) + spent.get("list pods", 0) == 0


def test_a_leftover_pod_from_an_earlier_attempt_is_replaced(
        runner: Any, core: client.CoreV1Api) -> None:
    """A pod already holding the job's name (an earlier attempt) is replaced, not an error."""
    job = Job(job_id=next_job_id())
    with runner.session(job) as first:
        name = first.hostname
        old_uid = core.read_namespaced_pod(name, "default").metadata.uid
        again = first.call("prepare", ["prepare"])
        assert again.exit_code == 0, again.stderr
        new_uid = core.read_namespaced_pod(name, "default").metadata.uid
    assert new_uid != old_uid


def test_unschedulable_pod_fails_after_the_start_timeout(
        kubeconfig: Path, tmp_path: Path, cluster: EmulatedCluster,
        core: client.CoreV1Api) -> None:
    """A pod that cannot be scheduled fails prepare after the timeout, naming the reason."""
    runner = make_runner(kubeconfig, tmp_path, "[pod]\nstart_timeout_seconds = 1.5\n")
    cluster.set_node_ready(False)
    try:
        result = runner.run_job(Job(job_id=next_job_id()))
    finally:
        cluster.set_node_ready(True)
    prepare = result.call("prepare")
    assert result.failure_reason == "runner_system_failure"
    assert result.stages == ["config", "prepare", "cleanup"] * 3
    assert b"did not start within 1.5s" in prepare.stderr
    assert b"not scheduled" in prepare.stderr and b"node" in prepare.stderr
    # Each attempt gives up soon after the timeout (deleting the pod included).
    attempts = [call.seconds for call in result.calls if call.stage == "prepare"]
    assert all(1.5 <= seconds < 1.5 + 3.0 for seconds in attempts), attempts
    wait_for(lambda: not pods_left(core), timeout=20, what="no pods left")


def test_unschedulable_pod_fails_after_the_unschedulable_timeout(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """An unschedulable pod fails prepare after unschedulable_timeout, in the scheduler's words."""
    runner = make_runner(kubeconfig, tmp_path,
                         "[pod]\nstart_timeout_seconds = 120\n"
                         "unschedulable_timeout_seconds = 1.5\n"
                         '[build]\ncpu_request = "1000"\n')
    job = tmp_path / "job"
    job.mkdir(mode=0o700)  # as gitlab-runner makes it (os.MkdirTemp)
    session = JobSession(runner, Job(job_id=next_job_id()), job, None)
    prepare = session.call("prepare", ["prepare"])
    assert prepare.exit_code == SYSTEM_FAILURE_EXIT_CODE
    assert b"did not start within 1.5s" in prepare.stderr
    assert b"0/1 nodes are available: 1 Insufficient cpu" in prepare.stderr
    assert b"Insufficient cpu" in prepare.stdout  # the job log says why, too
    assert prepare.seconds < 15
    wait_for(lambda: not pods_left(core), timeout=20, what="no pods left")


def test_sigterm_during_prepare_stops_waiting_at_once(
        runner: Any, cluster: EmulatedCluster, core: client.CoreV1Api) -> None:
    """A cancel while the pod is pending ends prepare within a second and removes the pod."""
    cluster.set_node_ready(False)
    try:
        result = runner.run_job(Job(job_id=next_job_id()), cancel=Cancel("prepare", 1.5))
    finally:
        cluster.set_node_ready(True)
    prepare = result.call("prepare")
    assert result.status == "canceled"
    assert prepare.exited_after_signal is not None and prepare.exited_after_signal < 1.0
    assert b"canceled" in prepare.stderr
    wait_for(lambda: not pods_left(core), timeout=20, what="no pods left")


# --- wait_running and _create, called directly -----------------------------------------


@pytest.fixture
def kcluster(kubeconfig: Path, namespace: str) -> Cluster:
    """The driver's Cluster for a fresh namespace of the module's emulated cluster."""
    settings = KubernetesSettings(kubeconfig=str(kubeconfig), namespace=namespace)
    return Cluster(connect(settings, "test"), 10.0)


def small_pod(name: str, image: str = HELPER, **spec: Any) -> dict[str, Any]:
    """A one-container pod that idles until SIGTERM."""
    return {"metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": image, "command": HELPER_IDLE}],
                     **spec}}


def hungry_pod(name: str) -> dict[str, Any]:
    """A pod asking for more CPU than any node has: the scheduler says Insufficient cpu."""
    manifest = small_pod(name)
    manifest["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1000"}}
    return manifest


def test_wait_running_returns_the_running_pod_and_reports_progress(
        kcluster: Cluster) -> None:
    """wait_running returns once every container runs, having reported the states it saw."""
    states: list[PodState] = []
    created = kcluster.create_pod(job_pod("job", terminationGracePeriodSeconds=1))
    pod = wait_running(kcluster, created, 30, states.append)
    assert pod["status"]["phase"] == "Running"
    assert {s["name"] for s in pod["status"]["containerStatuses"]
            if "running" in s["state"]} == {"helper", "build"}
    assert states and states[0].phase == "starting"


def test_wait_running_fails_fast_naming_an_unpullable_image(kcluster: Cluster) -> None:
    """A pod whose image cannot be pulled fails at once, naming the image and the reason."""
    image = "registry.invalid/nope/kaniko:v1-debug"
    created = kcluster.create_pod(small_pod("p1", image=image))
    started = time.monotonic()
    with pytest.raises(PodStartError) as raised:
        wait_running(kcluster, created, 60, lambda _state: None)
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert image in message and "ErrImagePull" in message


def test_wait_running_times_out_on_an_unschedulable_pod_saying_why(
        kcluster: Cluster, namespace: str) -> None:
    """A pod nothing can schedule fails after the timeout with the scheduler's reason."""
    created = kcluster.create_pod(small_pod("p1", nodeSelector={"no-such-label": "x"}))
    started = time.monotonic()
    with pytest.raises(PodStartError) as raised:
        wait_running(kcluster, created, 1.0, lambda _state: None)
    elapsed = time.monotonic() - started
    message = str(raised.value)
    assert message.startswith(f"pod {namespace}/p1 did not start within 1s: ")
    assert "not scheduled" in message
    assert "didn't match Pod's node affinity/selector" in message
    assert 0.9 <= elapsed < 8


def test_wait_running_reports_a_pod_deleted_while_starting(kcluster: Cluster) -> None:
    """A pod deleted during the wait stops the wait with a PodStartError saying so."""
    created = kcluster.create_pod(small_pod("p1", nodeSelector={"no-such-label": "x"}))
    states: list[PodState] = []

    def delete_on_first(state: PodState) -> None:
        states.append(state)
        if len(states) == 1:
            kcluster.delete_pod("p1", grace_seconds=0)

    started = time.monotonic()
    with pytest.raises(PodStartError) as raised:
        wait_running(kcluster, created, 20, delete_on_first)
    assert time.monotonic() - started < 10
    assert re.search(r"pod (\S+/)?p1 (is being deleted|was deleted while it was starting)",
                     str(raised.value)), str(raised.value)


def test_wait_running_gives_up_on_an_unschedulable_pod_after_its_own_timeout(
        kcluster: Cluster, namespace: str) -> None:
    """A pod no node fits fails after unschedulable_timeout, not the longer start timeout."""
    created = kcluster.create_pod(hungry_pod("p1"))
    states: list[PodState] = []
    started = time.monotonic()
    with pytest.raises(PodStartError) as raised:
        wait_running(kcluster, created, 60, states.append, unschedulable_timeout=1.0)
    elapsed = time.monotonic() - started
    message = str(raised.value)
    assert message.startswith(f"pod {namespace}/p1 did not start within 1s: "
                              "pod p1 is not scheduled: Unschedulable: ")
    assert "0/1 nodes are available: 1 Insufficient cpu" in message
    assert 0.9 <= elapsed < 5
    assert any(state.unschedulable for state in states)


def test_the_start_timeout_still_bounds_an_unschedulable_pod(kcluster: Cluster) -> None:
    """With a longer unschedulable_timeout, the smaller start timeout applies."""
    created = kcluster.create_pod(hungry_pod("p1"))
    started = time.monotonic()
    with pytest.raises(PodStartError, match=r"did not start within 1s: .*Insufficient cpu"):
        wait_running(kcluster, created, 1.0, lambda _state: None, unschedulable_timeout=30)
    assert time.monotonic() - started < 5


def test_unschedulable_timeout_does_not_bound_a_pod_that_gets_scheduled(
        kcluster: Cluster) -> None:
    """A schedulable pod is not cut short by a tiny unschedulable_timeout."""
    created = kcluster.create_pod(job_pod("job", terminationGracePeriodSeconds=1))
    pod = wait_running(kcluster, created, 30, lambda _state: None, unschedulable_timeout=0.001)
    assert pod["status"]["phase"] == "Running"


MANAGER = Settings(manager=ManagerSettings(id="prepare-test"))


def job_of(job_id: str, tmp_path: Path) -> JobContext:
    """A job with the given payload id, its own nonce and a private TMPDIR."""
    return JobContext(job_id=job_id, project_id="7", timeout_seconds=3600,
                      nonce=new_nonce(), tmpdir=str(tmp_path))


def test_create_replaces_a_leftover_of_the_same_job(kcluster: Cluster, core: client.CoreV1Api,
                                                    namespace: str, tmp_path: Path) -> None:
    """A 409 from this job's own leftover: it is deleted, waited for and the pod made anew."""
    job = job_of("41", tmp_path)
    first = small_pod("p1")
    first["metadata"]["labels"] = labels(MANAGER, job)
    created = kcluster.create_pod(first)
    retry = replace(job, nonce=new_nonce())  # a new attempt of the same job
    manifest = small_pod("p1")
    manifest["metadata"]["labels"] = {**labels(MANAGER, retry), "attempt": "second"}
    second = _create(kcluster, manifest, MANAGER, retry)
    assert second["metadata"]["uid"] != created["metadata"]["uid"]
    stored = core.read_namespaced_pod("p1", namespace)
    assert stored.metadata.uid == second["metadata"]["uid"]
    assert stored.metadata.labels["attempt"] == "second"


@pytest.mark.parametrize("owner", ["another job", "another manager", "not ours"])
def test_create_refuses_to_replace_a_pod_that_is_not_the_jobs(
        kcluster: Cluster, core: client.CoreV1Api, namespace: str, tmp_path: Path,
        owner: str) -> None:
    """A pod of the same name labelled for another job or manager, or unlabelled, stays."""
    job = job_of("42", tmp_path)
    found = {"another job": labels(MANAGER, replace(job, job_id="43")),
             "another manager": labels(Settings(manager=ManagerSettings(id="elsewhere")), job),
             "not ours": {"app": "web"}}[owner]
    theirs = small_pod("p2")
    theirs["metadata"]["labels"] = found
    existing = kcluster.create_pod(theirs)
    mine = small_pod("p2")
    mine["metadata"]["labels"] = labels(MANAGER, job)
    with pytest.raises(ClusterError) as refused:
        _create(kcluster, mine, MANAGER, job)
    assert refused.value.status == 409
    assert f"creating pod {namespace}/p2: a pod of that name already exists and is not " \
           "this job's" in str(refused.value)
    assert "refusing to replace it" in str(refused.value)
    assert core.read_namespaced_pod("p2", namespace).metadata.uid == existing["metadata"]["uid"]
