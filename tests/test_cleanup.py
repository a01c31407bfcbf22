"""`cleanup` over the wire: idempotent, independent of earlier stages, quick."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from runner_driver.emulator.runner import Job
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


def test_cleanup_without_prepare_finds_the_pod_by_job_identity(
        runner: Any, core: client.CoreV1Api) -> None:
    """Without job_env, cleanup derives the same pod name from the job and deletes it."""
    with runner.session(Job(job_id=next_job_id())) as session:
        name = session.hostname
        session.job_env = {}
        assert session.call("cleanup", ["cleanup"]).exit_code == 0
        wait_for(lambda: name not in pods_left(core), timeout=10, what=f"{name} deleted")
