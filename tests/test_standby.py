"""Standby execs: a job's next stage starts on an exec opened when its last stage ended."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner_driver.emulator import EmulatedCluster
from runner_driver.emulator.runner import Job, JobSession, RunnerEmulator
from runner_driver.kube import Cluster, connect
from runner_driver.podspec import BUILD, HELPER
from runner_driver.settings import KubernetesSettings
from runner_driver.standby import Standbys, next_container
from tests.conftest import make_runner, next_job_id, wait_for

NAMESPACE = "default"
# Counts the launchers in the container that wait for a stage (`standby_argv`'s "@").
COUNT_WAITING = ("n=0; for f in /proc/[0-9]*/cmdline; do "
                 "case \"$(tr '\\0' ' ' < $f 2>/dev/null)\" in "
                 "*' runner-driver-stag'[e]' @ '*) n=$((n + 1));; esac; done; echo $n")
KILL_WAITING = ("for f in /proc/[0-9]*/cmdline; do "
                "case \"$(tr '\\0' ' ' < $f 2>/dev/null)\" in "
                "*' runner-driver-stag'[e]' @ '*) p=${f#/proc/}; kill -KILL ${p%/cmdline};; "
                "esac; done")


@pytest.fixture(scope="module")
def runner(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> RunnerEmulator:
    """A runner with the driver's default settings (the agent and its standbys on)."""
    return make_runner(kubeconfig, tmp_path_factory.mktemp("standby-runner"))  # type: ignore[no-any-return]


@pytest.fixture
def session(runner: RunnerEmulator) -> Iterator[JobSession]:
    """config, prepare and get_sources done through the agent; cleanup on exit."""
    with runner.session(Job(job_id=next_job_id())) as started:
        started.run_stage("get_sources")
        yield started


def waiting(cluster: EmulatedCluster, pod: str, container: str) -> int:
    """How many launchers wait for a stage in the container."""
    code, output, _ = cluster.run_in_sandbox(NAMESPACE, pod, container,
                                             ["sh", "-c", COUNT_WAITING])
    assert code == 0, output
    return int(output.decode().split()[-1])


def execs(cluster: EmulatedCluster) -> int:
    """Exec requests the API server has answered so far."""
    return cluster.request_counts().get("get pods/exec", 0)


def nonce_of(cluster: EmulatedCluster, pod: str) -> str:
    """The job's nonce, as the pod's environment carries it."""
    code, output, _ = cluster.run_in_sandbox(NAMESPACE, pod, HELPER,
                                             ["sh", "-c", "echo $RUNNER_DRIVER_NONCE"])
    assert code == 0, output
    return output.decode().strip()


def driver_cluster(kubeconfig: Path) -> Cluster:
    """The driver's own client for the emulated cluster."""
    return Cluster(connect(KubernetesSettings(kubeconfig=str(kubeconfig)), "test"), 30.0)


@pytest.mark.parametrize(("stage", "container", "expected"), [
    ("prepare_script", HELPER, HELPER),
    ("get_sources", HELPER, HELPER),
    ("restore_cache", HELPER, HELPER),
    ("download_artifacts", HELPER, BUILD),
    ("build_script", BUILD, BUILD),
    ("step_release", BUILD, BUILD),
    ("after_script", BUILD, HELPER),
    ("archive_cache", HELPER, HELPER),
    ("archive_cache_on_failure", HELPER, HELPER),
    ("upload_artifacts_on_success", HELPER, HELPER),
    ("cleanup_file_variables", HELPER, None),
])
def test_the_next_container_follows_gitlabs_stage_order(stage: str, container: str,
                                                        expected: str | None) -> None:
    """The next stage is expected where this one ran, except where GitLab's fixed order
    says otherwise; after cleanup_file_variables, the last stage, none is."""
    assert next_container(stage, container) == expected


def test_the_next_stage_starts_on_the_standby_the_last_one_left(
        cluster: EmulatedCluster, session: JobSession) -> None:
    """After a stage, one launcher waits in its container; the next stage there runs on it
    (one exec request, for the standby after it, not two), with its output and code."""
    pod = session.hostname
    wait_for(lambda: waiting(cluster, pod, HELPER) == 1, timeout=10,
             what="a standby launcher in the helper container")
    before = execs(cluster)
    call = session.run_body("restore_cache", "echo from the standby\n")
    assert call.exit_code == 0
    assert b"from the standby" in session.log
    wait_for(lambda: waiting(cluster, pod, HELPER) == 1 and execs(cluster) > before,
             timeout=10, what="the next standby")
    time.sleep(0.3)  # nothing more is on its way
    assert execs(cluster) - before == 1
    assert waiting(cluster, pod, BUILD) == 0


def test_a_standby_whose_launcher_ended_is_passed_over_without_a_word(
        cluster: EmulatedCluster, session: JobSession) -> None:
    """A standby whose launcher is gone (here killed in the pod) is not used: the stage
    opens its own exec and succeeds, with no reconnect and no warning in its log."""
    pod = session.hostname
    wait_for(lambda: waiting(cluster, pod, HELPER) == 1, timeout=10,
             what="a standby launcher in the helper container")
    code, output, _ = cluster.run_in_sandbox(NAMESPACE, pod, HELPER, ["sh", "-c", KILL_WAITING])
    assert code == 0, output
    wait_for(lambda: waiting(cluster, pod, HELPER) == 0, timeout=10, what="the kill")
    before = len(session.log)
    call = session.run_body("restore_cache", "echo fine\n")
    assert call.exit_code == 0
    log = session.log[before:].decode(errors="replace")
    assert "fine" in log
    assert "reconnect" not in log and "warning" not in log.lower(), log


def test_a_standby_serves_only_its_own_job_container_and_time(
        cluster: EmulatedCluster, kubeconfig: Path, session: JobSession) -> None:
    """take() hands a standby only to the job (pod and nonce) and container it was opened
    for, and only while it is fresh; one it passes over is closed (its launcher ends)."""
    pod = session.hostname
    nonce = nonce_of(cluster, pod)
    kube = driver_cluster(kubeconfig)
    standbys = Standbys()
    wait_for(lambda: waiting(cluster, pod, HELPER) == 1, timeout=10,
             what="the agent's own standby")
    standbys.prepare(kube, pod, nonce, BUILD)
    wait_for(lambda: waiting(cluster, pod, BUILD) == 1, timeout=10, what="our standby")
    assert standbys.take(kube, pod, "f" * 32, BUILD) is None  # another job's nonce
    assert standbys.take(kube, "another-pod", nonce, BUILD) is None
    assert standbys.take(kube, pod, nonce, HELPER) is None  # none opened there by us
    taken = standbys.take(kube, pod, nonce, BUILD)
    assert taken is not None
    taken.close()
    wait_for(lambda: waiting(cluster, pod, BUILD) == 0, timeout=10,
             what="the closed standby's launcher to end")
    stale = Standbys(max_idle=0.0)
    stale.prepare(kube, pod, nonce, BUILD)
    wait_for(lambda: waiting(cluster, pod, BUILD) == 1, timeout=10, what="a standby")
    assert stale.take(kube, pod, nonce, BUILD) is None
    wait_for(lambda: waiting(cluster, pod, BUILD) == 0, timeout=10,
             what="the stale standby's launcher to end")


def test_a_jobs_end_closes_its_standbys_and_opens_no_more(
        cluster: EmulatedCluster, kubeconfig: Path, session: JobSession) -> None:
    """end() (cleanup) closes the job's standbys, and one asked for later is not opened."""
    pod = session.hostname
    nonce = nonce_of(cluster, pod)
    kube = driver_cluster(kubeconfig)
    standbys = Standbys()
    standbys.prepare(kube, pod, nonce, BUILD)
    wait_for(lambda: waiting(cluster, pod, BUILD) == 1, timeout=10, what="a standby")
    standbys.end(kube, pod, nonce)
    wait_for(lambda: waiting(cluster, pod, BUILD) == 0, timeout=10,
             what="the standby's launcher to end")
    before = execs(cluster)
    standbys.prepare(kube, pod, nonce, BUILD)
    time.sleep(0.5)
    assert execs(cluster) == before
    assert standbys.take(kube, pod, nonce, BUILD) is None


def test_standby_exec_off_opens_each_exec_when_its_stage_starts(
        cluster: EmulatedCluster, kubeconfig: Path, tmp_path: Path) -> None:
    """With `[agent] standby_exec = false` no launcher waits between stages: each stage
    makes its own exec request."""
    runner = make_runner(kubeconfig, tmp_path / "runner", "[agent]\nstandby_exec = false\n")
    with runner.session(Job(job_id=next_job_id())) as session:
        before = execs(cluster)
        session.run_stage("get_sources")
        session.run_stage("restore_cache", ["echo on its own exec"])
        time.sleep(0.5)
        assert execs(cluster) - before == 2
        assert waiting(cluster, session.hostname, HELPER) == 0
