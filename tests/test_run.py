"""`run` over the wire: script delivery, the shell it picks, streaming, exit codes, hygiene."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from runner_driver.emulator import EmulatedCluster, NodeSettings
from runner_driver.emulator.runner import Job, StageFailed, bash_script
from tests.conftest import make_runner, next_job_id, wait_for


def test_exit_code_goes_alone_into_build_exit_code_file(runner: Any) -> None:
    """A script exit N writes exactly "N" to BUILD_EXIT_CODE_FILE and exits BUILD_FAILURE."""
    with runner.session(Job(job_id=next_job_id())) as session:
        with pytest.raises(StageFailed) as failed:
            session.run_body("build_script", "exit 42\n")
        assert session.exit_code_file.read_text() == "42"
    assert failed.value.kind == "build" and failed.value.exit_code == 42
    assert session.calls[-2].exit_code == 1  # the run call, before the closing cleanup


def test_killed_script_reports_128_plus_signal(runner: Any) -> None:
    """A script killed by SIGKILL is a script failure with exit code 137."""
    with runner.session(Job(job_id=next_job_id())) as session, \
            pytest.raises(StageFailed) as failed:
        session.run_body("build_script", "kill -KILL $$\n")
    assert failed.value.exit_code == 137


def test_best_shell_is_used_in_each_container(runner: Any) -> None:
    """The helper runs scripts in bash; the kaniko container, which has none, in busybox sh."""
    probe = 'echo "bash=${BASH_VERSION:-none}"\n'
    with runner.session(Job(job_id=next_job_id())) as session:
        helper = session.run_body("get_sources", probe)
        build = session.run_body("build_script", probe)
    assert helper.stdout.startswith(b"bash=") and helper.stdout != b"bash=none\n"
    assert build.stdout == b"bash=none\n"


def test_script_is_not_left_in_the_pod(runner: Any) -> None:
    """The stage script exists in the pod only as an unlinked file, and nothing stays behind."""
    job = Job(job_id=next_job_id())
    with runner.session(job) as session:
        during = session.run_body("build_script", "ls -A /runner-driver/run\n")
        after = session.run_body("get_sources",
                                 f"grep -rl {job.token} /runner-driver /scratch || echo clean\n"
                                 "ls -A /runner-driver/run | grep -v pid$ || true\n")
    assert b".sh" not in during.stdout
    assert after.stdout == b"clean\n"


def test_output_is_streamed_as_it_arrives(runner: Any) -> None:
    """Output reaches the runner while the script is still running, not at its end."""
    with runner.session(Job(job_id=next_job_id())) as session:
        session.run_stage("get_sources")
        script = session.tempdir / "stream-script"
        script.write_text(bash_script("echo first; sleep 2; echo second\n"))
        process = subprocess.Popen([*session.runner.driver, "run", str(script), "build_script"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   env=session.environment(), cwd=session.tempdir)
        assert process.stdout is not None
        first = process.stdout.readline()
        first_at = time.monotonic()
        rest = process.stdout.read()
        done_at = time.monotonic()
        assert process.wait() == 0
    assert (first, rest) == (b"first\n", b"second\n")
    assert done_at - first_at > 1.5


def test_run_without_the_pod_is_a_system_failure(runner: Any, core: client.CoreV1Api) -> None:
    """When the pod is gone, run exits SYSTEM_FAILURE with one line naming the pod."""
    with runner.session(Job(job_id=next_job_id())) as session:
        core.delete_namespaced_pod(session.hostname, "default", grace_period_seconds=0)
        wait_for(lambda: not [p for p in core.list_namespaced_pod("default").items
                              if p.metadata.name == session.hostname], what="pod deleted")
        with pytest.raises(StageFailed) as failed:
            session.run_body("build_script", "echo unreachable\n")
        call = session.calls[-1]
    assert failed.value.kind == "system"
    assert call.exit_code == 2
    lines = call.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and session.hostname in lines[0] and "not found" in lines[0]


@pytest.fixture(scope="module")
def v4_cluster() -> Iterator[EmulatedCluster]:
    """A cluster whose API server speaks only v4.channel.k8s.io (before Kubernetes 1.30)."""
    with EmulatedCluster(node=NodeSettings(pull_seconds=0.01),
                         exec_protocols=("v4.channel.k8s.io",)) as emulated:
        yield emulated


def test_scripts_run_on_a_v4_only_server(v4_cluster: EmulatedCluster, tmp_path: Path) -> None:
    """Scripts arrive without closing stdin, which v4 exec cannot signal."""
    kubeconfig = v4_cluster.write_kubeconfig(tmp_path / "kubeconfig")
    runner = make_runner(kubeconfig, tmp_path / "runner")
    body = "".join(f"echo line {i}\n" for i in range(2000)) + "exit 5\n"
    with runner.session(Job(job_id=next_job_id())) as session:
        with pytest.raises(StageFailed) as failed:
            session.run_body("build_script", body)
        call = session.calls[-1]
    assert failed.value.exit_code == 5
    assert call.stdout == b"".join(f"line {i}\n".encode() for i in range(2000))
