"""`prepare` over the wire: the pod it creates, how it waits, and how it fails.

Each test runs `runner-driver` processes through the runner emulator against the
module's emulated cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client

from runner_driver.emulator import EmulatedCluster
from runner_driver.emulator.runner import SYSTEM_FAILURE_EXIT_CODE, Cancel, Job, JobSession
from tests.conftest import make_runner, next_job_id, pods_left, wait_for


def test_the_live_pod_is_unprivileged_labelled_bounded_and_sized(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """The pod has the job's labels, deadline and timeout, no token, log volume and resources."""
    runner = make_runner(kubeconfig, tmp_path,
                         '[build]\ncpu_request = "100m"\nmemory_limit = "512Mi"\n'
                         '[helper]\nmemory_request = "64Mi"\ncpu_limit = "1"\n')
    job = Job(job_id=next_job_id(), timeout_seconds=1800)
    with runner.session(job) as session:
        pod = core.read_namespaced_pod(session.hostname, "default")
    labels = pod.metadata.labels
    assert labels["app.kubernetes.io/managed-by"] == "runner-driver"
    assert labels["runner-driver/job-id"] == str(job.job_id)
    assert labels["runner-driver/project-id"] == str(job.project_id)
    assert labels["runner-driver/pipeline-id"] == str(job.pipeline_id)
    spec = pod.spec
    assert spec.automount_service_account_token is False
    assert spec.restart_policy == "Never"
    assert spec.active_deadline_seconds == 1800 + 900
    assert [c.name for c in spec.containers] == ["helper", "build"]
    for container in spec.containers:
        assert container.security_context.privileged is False
        assert container.security_context.allow_privilege_escalation is False
        assert "NET_RAW" in container.security_context.capabilities.drop
        mounts = {m.name: m.mount_path for m in container.volume_mounts}
        assert mounts["driver-logs"] == "/runner-driver-logs"
    found = {c.name: c.resources for c in spec.containers}
    assert (found["build"].requests, found["build"].limits) == ({"cpu": "100m"},
                                                                {"memory": "512Mi"})
    assert (found["helper"].requests, found["helper"].limits) == ({"memory": "64Mi"},
                                                                  {"cpu": "1"})


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
    job.mkdir()
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
