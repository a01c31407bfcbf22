"""Job identity over the wire: no job can reach, replace or outlive another job's pod.

A job's own `variables:` come after the predefined ones, so it can claim any CI_JOB_ID,
CI_PROJECT_ID or CI_RUNNER_SHORT_TOKEN. These tests run whole jobs through the runner
emulator (driver processes, emulated cluster, nothing patched) with such claims, and
with pods that are not the job's own sitting where the job's pod would be.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from runner_driver.emulator import EmulatedCluster
from runner_driver.emulator.runner import Job, JobResult, StageFailed
from runner_driver.podspec import pod_name
from runner_driver.runner_env import JobContext, new_nonce
from runner_driver.settings import Settings, resolve_manager
from tests.conftest import make_runner, next_job_id, pods_left, wait_for

IDENTITY = "app.kubernetes.io/managed-by=runner-driver,runner-driver/job-id={}"


def expected_name(job: Job) -> str:
    """The pod name the driver gives `job` with default settings on this host."""
    context = JobContext(job_id=str(job.job_id), project_id=str(job.project_id),
                         timeout_seconds=None, nonce="", tmpdir="")
    return pod_name(resolve_manager(Settings()), context)


def pods_of(core: client.CoreV1Api, job_id: int) -> list[Any]:
    """The driver's pods labelled with `job_id`."""
    return list(core.list_namespaced_pod("default",
                                         label_selector=IDENTITY.format(job_id)).items)


def foreign_pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A running pod that is not the job's own, under the name the job would use."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
                 "containers": [
                     {"name": name_, "image": "busybox:1.36",
                      "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
                      "env": [{"name": "RUNNER_DRIVER_NONCE", "value": new_nonce()}]}
                     for name_ in ("helper", "build")]},
    }


def wait_pod_running(core: client.CoreV1Api, name: str) -> Any:
    """Wait until the pod runs; its object."""
    def running() -> Any:
        pod = core.read_namespaced_pod(name, "default")
        return pod if pod.status.phase == "Running" else None
    return wait_for(running, timeout=30, what=f"pod {name} to run")


def uid_of(core: client.CoreV1Api, name: str) -> str | None:
    """The uid of the pod called `name`, or None when there is none."""
    try:
        return str(core.read_namespaced_pod(name, "default").metadata.uid)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise


def deletes_of(cluster: EmulatedCluster, name: str) -> int:
    """How many DELETE requests for pod `name` the API server received."""
    log = cluster.call(lambda: list(cluster.faults.log))
    return sum(1 for r in log if r.method == "DELETE" and r.path.endswith(f"/pods/{name}"))


def test_a_job_claiming_another_jobs_identity_cannot_touch_its_pod(
        runner: Any, core: client.CoreV1Api, cluster: EmulatedCluster) -> None:
    """A second job overriding CI_JOB_ID, CI_PROJECT_ID and the short token gets its own pod.

    The first job runs untouched to the end (same pod uid, its file still there), the
    second cannot read the first job's files, and the first pod is deleted exactly once:
    by its own cleanup.
    """
    victim = Job(job_id=next_job_id(), project_id=301, runner_short_token="vict1mTk",
                 script=('echo "victim-secret-$((6 * 7))" > "$TMPDIR/victim.txt"',
                         'echo "victim-secret" > "$CI_BUILDS_DIR/victim.txt"',
                         "i=0; while [ ! -e /scratch/go ] && [ $i -lt 300 ]; do "
                         "sleep 0.05; i=$((i + 1)); done",
                         "sleep 1",
                         'cat "$TMPDIR/victim.txt" && echo "victim-pod-intact"'))
    attacker = Job(job_id=next_job_id(), project_id=302, runner_short_token="attack3r",
                   variables=(("CI_JOB_ID", str(victim.job_id)),
                              ("CI_PROJECT_ID", str(victim.project_id)),
                              ("CI_RUNNER_SHORT_TOKEN", victim.runner_short_token)),
                   script=('echo "claimed job $CI_JOB_ID of project $CI_PROJECT_ID"',
                           'cat /scratch/victim.txt "$CI_BUILDS_DIR/victim.txt" '
                           '2>/dev/null || echo "victim-files-unreadable"',
                           "hostname"))
    victim_name = expected_name(victim)
    results: dict[str, JobResult] = {}
    thread = threading.Thread(target=lambda: results.update(victim=runner.run_job(victim)))
    thread.start()
    try:
        uid = wait_for(lambda: uid_of(core, victim_name), timeout=30,
                       what="the victim's pod")
        wait_pod_running(core, victim_name)
        results["attacker"] = runner.run_job(attacker)
        # The victim's pod is still the one it created, and the victim goes on in it.
        assert uid_of(core, victim_name) == uid
        cluster.run_in_sandbox("default", victim_name, "build", ["/busybox/touch",
                                                                  "/scratch/go"])
    finally:
        thread.join(timeout=60)
    victim_log = results["victim"].log.decode()
    attacker_log = results["attacker"].log.decode()
    assert results["victim"].status == "success", victim_log
    assert "victim-secret-42" in victim_log and "victim-pod-intact" in victim_log
    assert results["attacker"].status == "success", attacker_log
    assert f"claimed job {victim.job_id} of project 301" in attacker_log
    assert "victim-files-unreadable" in attacker_log
    assert "victim-secret" not in attacker_log
    assert f"-job-{attacker.job_id}" in attacker_log  # its own pod, by the payload's id
    assert deletes_of(cluster, victim_name) == 1
    wait_for(lambda: not pods_left(core), timeout=20, what="both pods to go")


def test_a_pod_of_another_job_under_the_jobs_name_is_not_replaced(
        runner: Any, core: client.CoreV1Api) -> None:
    """A name conflict with a pod that is not this job's fails the job, naming the conflict."""
    job = Job(job_id=next_job_id())
    name = expected_name(job)
    core.create_namespaced_pod("default", foreign_pod(name, {"app": "someone-else"}))
    uid = uid_of(core, name)
    try:
        started = time.monotonic()
        result = runner.run_job(job)
        assert (result.status, result.failure_reason) == ("failed", "runner_system_failure")
        stderr = result.call("prepare").stderr.decode()
        assert (f"creating pod default/{name}: a pod of that name already exists and is not "
                "this job's") in stderr, stderr
        assert "Traceback" not in stderr
        assert result.stages.count("prepare") == 3  # a system failure: the runner retries
        assert time.monotonic() - started < 30
        assert uid_of(core, name) == uid  # never deleted, never replaced
    finally:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_a_leftover_of_the_same_job_is_replaced(runner: Any, core: client.CoreV1Api) -> None:
    """A pod labelled as this job's own (an earlier prepare attempt) is replaced, not fatal."""
    job = Job(job_id=next_job_id(), project_id=303)
    name = expected_name(job)
    manager = resolve_manager(Settings()).manager.id
    core.create_namespaced_pod("default", foreign_pod(name, {
        "app.kubernetes.io/managed-by": "runner-driver", "runner-driver/job-id": str(job.job_id),
        "runner-driver/project-id": "303", "runner-driver/manager": manager,
        "runner-driver/nonce": new_nonce()}))
    old = uid_of(core, name)
    result = runner.run_job(job)
    assert result.status == "success", result.log.decode()
    assert result.stages.count("prepare") == 1
    assert uid_of(core, name) != old


def test_cleanup_never_deletes_a_pod_that_replaced_the_jobs_own(
        runner: Any, core: client.CoreV1Api) -> None:
    """cleanup deletes with the uid prepare recorded: a newer pod of the same name stays."""
    job = Job(job_id=next_job_id())
    name = expected_name(job)
    with runner.session(job) as session:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
        wait_for(lambda: uid_of(core, name) is None, timeout=20, what="the job's pod to go")
        core.create_namespaced_pod("default", foreign_pod(name, {"app": "newcomer"}))
        newcomer = uid_of(core, name)
    assert session.calls[-1].stage == "cleanup" and session.calls[-1].exit_code == 0
    try:
        time.sleep(1.0)
        assert uid_of(core, name) == newcomer
    finally:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_run_refuses_a_pod_whose_nonce_is_another_jobs(
        runner: Any, core: client.CoreV1Api) -> None:
    """A pod of the job's name but another nonce runs no stage: a system failure, named."""
    job = Job(job_id=next_job_id())
    name = expected_name(job)
    try:
        with runner.session(job) as session:
            labels = dict(core.read_namespaced_pod(name, "default").metadata.labels)
            core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
            wait_for(lambda: uid_of(core, name) is None, timeout=20,
                     what="the job's pod to go")
            labels["runner-driver/nonce"] = new_nonce()
            core.create_namespaced_pod("default", foreign_pod(name, labels))
            impostor = wait_pod_running(core, name).metadata.uid
            with pytest.raises(StageFailed) as caught:
                session.run_body("build_script", "echo ran-in-the-impostor")
        assert caught.value.kind == "system"
        run = [c for c in session.calls if c.stage == "build_script"][-1]
        stderr = run.stderr.decode()
        assert "this pod belongs to another job" in stderr, stderr
        assert b"ran-in-the-impostor" not in run.stdout
        assert uid_of(core, name) == impostor  # cleanup left it: not the job's uid
    finally:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_unreachable_cluster_fails_within_the_prepare_budget(tmp_path: Path) -> None:
    """With no API server, prepare retries within its budget and each cleanup returns at once."""
    budget = 1.5
    dead = tmp_path / "dead.kubeconfig"
    dead.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: dead\n"
        "clusters: [{name: dead, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "contexts: [{name: dead, context: {cluster: dead, user: dead, namespace: default}}]\n"
        "users: [{name: dead, user: {token: x}}]\n", encoding="utf-8")
    runner = make_runner(dead, tmp_path / "runner",
                         f"[kubernetes]\nretry_timeout_seconds = {budget}\n")
    started = time.monotonic()
    result = runner.run_job(Job(job_id=next_job_id()))
    took = time.monotonic() - started
    assert (result.status, result.failure_reason) == ("failed", "runner_system_failure")
    prepares = [c for c in result.calls if c.stage == "prepare"]
    cleanups = [c for c in result.calls if c.stage == "cleanup"]
    assert len(prepares) == 3 and len(cleanups) == 3
    assert all(c.seconds < 1.0 for c in cleanups), [c.seconds for c in cleanups]
    # prepare recorded no pod (its Secret, made first, never reached the server either),
    # so cleanup calls no API at all.
    assert not any(b"retrying" in c.stderr for c in cleanups), [c.stderr for c in cleanups]
    # Retries stop when the next wait would end past the budget.
    assert all(c.seconds < budget + 3 for c in prepares), [c.seconds for c in prepares]
    assert all(b"retrying a Kubernetes API call" in c.stderr for c in prepares)
    assert "cannot reach the Kubernetes API" in prepares[-1].stderr.decode()
    assert took < 3 * (budget + 3) + 2 * runner.prepare_retry_seconds + 10


def test_an_absurd_timeout_variable_fails_the_job_in_one_line(
        runner: Any, core: client.CoreV1Api) -> None:
    """Without a payload timeout, CI_JOB_TIMEOUT=99999999999999999999 is a script failure."""
    job = Job(job_id=next_job_id(), payload_fields=(("runner_info", None),),
              variables=(("CI_JOB_TIMEOUT", "99999999999999999999"),))
    result = runner.run_job(job)
    assert (result.status, result.failure_reason) == ("failed", "script_failure")
    assert result.stages == ["config", "cleanup"]  # a build failure is not retried
    lines = result.call("config").stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "CUSTOM_ENV_CI_JOB_TIMEOUT" in lines[0], lines
    assert not pods_of(core, job.job_id)


@pytest.mark.parametrize(("fields", "message"), [
    pytest.param((("id", "12"),), "id: expected an integer, got a string", id="id-string"),
    pytest.param((("job_info", {"project_id": [1]}),),
                 "job_info.project_id: expected an integer, got a list", id="project-list"),
    pytest.param((("runner_info", {"timeout": 10**30}),), "runner_info.timeout: expected 1 to",
                 id="timeout-overflow"),
])
def test_a_malformed_payload_is_a_system_failure_naming_the_field(
        runner: Any, fields: tuple[tuple[str, object], ...], message: str) -> None:
    """A payload with a wrong type fails config with one line naming the file and field."""
    result = runner.run_job(Job(job_id=next_job_id(), payload_fields=fields))
    assert (result.status, result.failure_reason) == ("failed", "runner_system_failure")
    lines = result.call("config").stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "response.json (JOB_RESPONSE_FILE)" in lines[0] and message in lines[0], lines


def test_non_ascii_digits_in_claimed_ids_do_not_matter(
        runner: Any, core: client.CoreV1Api) -> None:
    """CI_JOB_ID and CI_PROJECT_ID of Arabic-Indic digits are display only: the job runs."""
    job = Job(job_id=next_job_id(), variables=(("CI_JOB_ID", "\u0661\u0662"),
                                               ("CI_PROJECT_ID", "\u00b2")))
    result = runner.run_job(job)
    assert result.status == "success", result.log.decode()
