"""`cleanup` over the wire: idempotent, independent of earlier stages, quick, and riding
out a flaky API without leaking the pod."""

from __future__ import annotations

import os
from typing import Any

from kubernetes import client

from runner_driver import jobrecord
from runner_driver.emulator import EmulatedCluster
from runner_driver.emulator.runner import SYSTEM_FAILURE_EXIT_CODE, Job
from tests.conftest import next_job_id, pods_left, wait_for


def test_cleanup_deletes_the_pod_quickly(runner: Any, core: client.CoreV1Api) -> None:
    """cleanup returns at once and the pod is gone within seconds (PID 1 traps TERM)."""
    with runner.session(Job(job_id=next_job_id())) as session:
        call = session.call("cleanup", ["cleanup"])
        assert call.exit_code == 0, call.stderr
        assert call.seconds < 5
        wait_for(lambda: not pods_left(core), timeout=5, what="the pod to be gone")


def test_cleanup_twice_and_without_job_env_succeeds(runner: Any,
                                                    core: client.CoreV1Api) -> None:
    """A second cleanup, and one without config's job_env, both succeed."""
    with runner.session(Job(job_id=next_job_id())) as session:
        first = session.call("cleanup", ["cleanup"])
        second = session.call("cleanup", ["cleanup"])
        session.job_env = {}
        third = session.call("cleanup", ["cleanup"])
    assert [first.exit_code, second.exit_code, third.exit_code] == [0, 0, 0]
    wait_for(lambda: not pods_left(core), timeout=10, what="no pods left")


def test_cleanup_without_job_env_finds_the_pod_through_prepares_record(
        runner: Any, core: client.CoreV1Api) -> None:
    """Without job_env, cleanup deletes the pod prepare recorded in the job's TMPDIR."""
    with runner.session(Job(job_id=next_job_id())) as session:
        name = session.hostname
        session.job_env = {}
        assert session.call("cleanup", ["cleanup"]).exit_code == 0
        wait_for(lambda: name not in pods_left(core), timeout=10, what=f"{name} deleted")


def test_cleanup_without_a_record_deletes_nothing(runner: Any, core: client.CoreV1Api) -> None:
    """No record of a created pod: cleanup succeeds and never deletes a pod by its name."""
    with runner.session(Job(job_id=next_job_id())) as session:
        name = session.hostname
        os.unlink(jobrecord.path_in(str(session.tempdir)))
        try:
            call = session.call("cleanup", ["cleanup"])
            assert call.exit_code == 0, call.stderr
            assert name in pods_left(core)
        finally:
            core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_cleanup_retries_transient_api_errors_but_not_refusals(
        runner: Any, cluster: EmulatedCluster, core: client.CoreV1Api) -> None:
    """A 403 on the delete fails at once, naming it; 503s are retried and logged, not leaked."""
    with runner.session(Job(job_id=next_job_id())) as session:
        name = session.hostname
        path = f"^/api/v1/namespaces/default/pods/{name}$"
        before = cluster.request_counts().get("delete pods", 0)
        cluster.fail_requests("DELETE", path, 1, 403)
        try:
            refused = session.call("cleanup", ["cleanup"])
            assert cluster.request_counts()["delete pods"] - before == 1
            cluster.fail_requests("DELETE", path, 2, 503)
            retried = session.call("cleanup", ["cleanup"])
        finally:
            cluster.clear_faults()
        assert refused.exit_code == SYSTEM_FAILURE_EXIT_CODE
        assert refused.stderr.decode().strip().splitlines()[-1].startswith(
            f"runner-driver cleanup: deleting pod default/{name}: 403")
        assert "retrying" not in refused.stderr.decode()
        assert retried.exit_code == 0, retried.stderr
        wait_for(lambda: name not in pods_left(core), timeout=10, what=f"{name} deleted")
    warnings = [line for line in retried.stderr.decode().splitlines() if "retrying" in line]
    assert len(warnings) == 2, retried.stderr
    assert all(f"deleting pod default/{name}" in line and "503" in line for line in warnings)
