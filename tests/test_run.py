"""`run` over the wire: script delivery, the shell it picks, streaming, exit codes, hygiene."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from runner_driver import kube, logs, run
from runner_driver.emulator import EmulatedCluster, NodeSettings
from runner_driver.emulator.runner import Job, StageFailed, bash_script
from runner_driver.settings import KubernetesSettings
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
        after = session.run_body(
            "get_sources", f"grep -rl {job.token} /runner-driver /runner-driver-logs /scratch "
                           "|| echo clean\nls -A /runner-driver/run\n")
    assert b".sh" not in during.stdout and b".claim" in during.stdout
    lines = after.stdout.decode().splitlines()
    assert lines[0] == "clean"
    # Only this stage's own bookkeeping is left (and the shell each container runs
    # scripts with): the earlier stage's files were removed.
    left = [line for line in lines[1:] if line not in ("shell-build", "shell-helper")]
    assert left and all(line.startswith("get_sources-") for line in left)


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
    assert len(lines) == 1 and session.hostname in lines[0] and "no longer exists" in lines[0]


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


def test_stage_runs_once_however_often_the_connection_drops(
        runner: Any, cluster: EmulatedCluster) -> None:
    """Reconnecting resumes the same stage: its side effects happen exactly once."""
    body = ("echo run >> /scratch/runs\n"
            "i=0; while [ $i -lt 3000 ]; do echo \"line $i\"; i=$((i + 1)); done\n"
            "cat /scratch/runs\n")
    with runner.session(Job(job_id=next_job_id())) as session:
        cluster.cut_exec(after_bytes=1500, count=4)
        try:
            call = session.run_body("build_script", body)
        finally:
            cluster.clear_faults()
    # 28 KB of output: every one of the four cuts (after 1500 bytes each) happens.
    expected = b"".join(f"line {i}\n".encode() for i in range(3000)) + b"run\n"
    assert call.stdout == expected
    assert call.stderr.count(b"reconnecting to the stage") == 4


def test_stderr_joins_stdout_in_the_order_written(runner: Any) -> None:
    """The script's stderr reaches the job log merged with stdout, in write order."""
    body = "".join(f"echo out{i}\necho err{i} >&2\n" for i in range(50))
    with runner.session(Job(job_id=next_job_id())) as session:
        call = session.run_body("build_script", body)
    assert call.stdout == b"".join(f"out{i}\nerr{i}\n".encode() for i in range(50))
    assert call.stderr == b""


def test_background_process_does_not_hold_the_stage_open(runner: Any) -> None:
    """A stage ends when its script exits, even if a process it started keeps running."""
    with runner.session(Job(job_id=next_job_id())) as session:
        call = session.run_body("build_script", "sleep 60 &\necho started\n")
    assert call.stdout == b"started\n"
    assert call.seconds < 10


def direct(kubeconfig: Path, script: Path, body: str) -> tuple[kube.Cluster, io.StringIO]:
    """For calling `run.run` in this process: a Cluster, the script file, captured warnings."""
    log = io.StringIO()
    logs.configure("warning", stream=log)
    script.write_text(bash_script(body))
    settings = KubernetesSettings(kubeconfig=str(kubeconfig))
    return kube.Cluster(kube.connect(settings, "test"), 10.0), log


def test_heartbeats_keep_a_quiet_stage_from_looking_stalled(
        runner: Any, kubeconfig: Path, tmp_path: Path) -> None:
    """A script silent for longer than the stall limit is not mistaken for a dead link."""
    script, out = tmp_path / "quiet", tmp_path / "out"
    cluster, log = direct(kubeconfig, script, "sleep 5\necho done\n")
    with runner.session(Job(job_id=next_job_id())) as session, out.open("wb") as sink:
        started = time.monotonic()
        # Silent for 5 s, stall limit 4 s: only the heartbeats (the first ~3 s after the
        # start, then every ~5 s) keep the connection from being declared dead.
        run.run(cluster, session.hostname, script, "build_script",
                session.job_env["RUNNER_DRIVER_NONCE"], out_fd=sink.fileno(),
                stall_seconds=4.0)
        spent = time.monotonic() - started
    assert out.read_bytes() == b"done\n"
    assert "reconnecting" not in log.getvalue()
    assert spent < 8


def test_a_long_quiet_stage_still_reconnects_after_a_late_drop(
        kubeconfig: Path, tmp_path: Path, cluster: EmulatedCluster) -> None:
    """Heartbeats count as progress: a drop after a silence longer than the budget resumes."""
    runner = make_runner(kubeconfig, tmp_path / "runner",
                         "[kubernetes]\nretry_timeout_seconds = 3\n")
    with runner.session(Job(job_id=next_job_id())) as session:
        # The first connection delivers "begin" and drops at its first heartbeat (~3 s);
        # the second carries only a heartbeat, then drops on "done" (~7 s into it, 4 s
        # past the budget counted from the last output).
        cluster.cut_exec(after_seconds=1.0, count=1)
        cluster.cut_exec(after_seconds=4.0, count=1)
        try:
            call = session.run_body("build_script", "echo begin\nsleep 10\necho done\n")
        finally:
            cluster.clear_faults()
    assert call.stdout == b"begin\ndone\n"
    assert call.stderr.count(b"reconnecting to the stage") == 2, call.stderr.decode()


@pytest.mark.parametrize("body", [
    pytest.param("kill -KILL $PPID\necho orphaned\n", id="script-kills-its-supervisor"),
    # The state a script leaves when it kills its supervisor before the supervisor has
    # recorded the script's pid (a race the faster stages made likely under load).
    pytest.param("kill -KILL $PPID\nsleep 0.5\nrm -f /runner-driver/run/*.pid\n"
                 "echo orphaned\n", id="killed-before-the-pid-file"),
])
def test_a_stage_nobody_records_is_reported_not_awaited(kubeconfig: Path, tmp_path: Path,
                                                        body: str) -> None:
    """No supervisor left to record an exit status: a system failure in seconds."""
    # A runner that gives up on the stage long before pytest would, and debug logs: if
    # this ever hangs again, the failure shows what the driver was doing.
    runner = make_runner(kubeconfig, tmp_path, '[logging]\nlevel = "debug"\n',
                         stage_timeout_seconds=30)
    with runner.session(Job(job_id=next_job_id())) as session:
        with pytest.raises(StageFailed) as failed:
            session.run_body("build_script", body)
        call = session.calls[-1]
    diagnostics = call.stderr.decode(errors="replace")
    assert failed.value.kind == "system", diagnostics
    assert "is not running and left no exit status" in diagnostics
    assert call.seconds < 20, diagnostics


def test_a_closed_job_log_pipe_is_a_system_failure_without_reconnects(
        runner: Any, kubeconfig: Path, tmp_path: Path) -> None:
    """When our own stdout breaks, run stops with OutputError instead of resuming the exec."""
    script = tmp_path / "loud"
    cluster, log = direct(kubeconfig, script,
                          "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i + 1)); done\n")
    read_end, write_end = os.pipe()
    os.close(read_end)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with runner.session(Job(job_id=next_job_id())) as session, \
                pytest.raises(run.OutputError):
            run.run(cluster, session.hostname, script, "build_script",
                    session.job_env["RUNNER_DRIVER_NONCE"], out_fd=write_end)
    finally:
        os.close(write_end)
    assert "reconnecting" not in log.getvalue()
    # Stopping the stage held SIGTERM off only meanwhile: nothing leaks to later children.
    assert signal.getsignal(signal.SIGTERM) == handler
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())


def test_script_copies_of_dead_launchers_are_swept(runner: Any) -> None:
    """A script copy whose launcher died before unlinking it is removed by the next stage."""
    with runner.session(Job(job_id=next_job_id())) as session:
        session.run_body("build_script", "echo secret > /runner-driver/run/old.sh.999999\n"
                                         "sleep 1000 & echo $! > /scratch/live\n")
        after = session.run_body(
            "build_script", "live=$(cat /scratch/live)\n"
                            "echo kept > /runner-driver/run/other.sh.$live\n"
                            "ls /runner-driver/run | grep '\\.sh\\.' || echo none\n")
        swept = session.run_body("build_script", "ls /runner-driver/run | grep '\\.sh\\.' "
                                                 "| sed 's/[0-9]*$//' || echo none\n")
    assert b"old.sh.999999" not in after.stdout
    assert swept.stdout == b"other.sh.\n"  # its process is alive: not a dead launcher's copy


def test_resuming_inside_trimmed_output_says_so_and_goes_on(
        runner: Any, kubeconfig: Path, tmp_path: Path) -> None:
    """Resuming at an offset the pod has trimmed (delivered output is removed chunk by
    chunk) puts one line saying how many bytes were lost in the job log, then the rest."""
    size = 20 * 1024 * 1024
    script, first, again = tmp_path / "big", tmp_path / "first", tmp_path / "again"
    cluster, log = direct(kubeconfig, script, f"head -c {size} /dev/zero | tr '\\0' x\n")
    with runner.session(Job(job_id=next_job_id())) as session:
        nonce = session.job_env["RUNNER_DRIVER_NONCE"]
        with first.open("wb") as sink:
            run.run(cluster, session.hostname, script, "build_script", nonce,
                    out_fd=sink.fileno(), stage_id="build_script-1-0123abcd")
        with again.open("wb") as sink:
            run.run(cluster, session.hostname, script, "build_script", nonce,
                    out_fd=sink.fileno(), stage_id="build_script-1-0123abcd", offset=100)
    assert first.read_bytes() == b"x" * size
    resumed = again.read_bytes()
    notice, _, rest = resumed[1:].partition(b"\n")
    lost = int(notice.split()[1])
    assert notice == (b"[runner-driver: %d bytes of this stage's output were lost while the "
                      b"connection to the pod was down]" % lost)
    # Trimmed: everything before the last chunk or two; what follows is the exact rest.
    assert 8 * 1024 * 1024 - 100 <= lost < size - 100
    assert rest == b"x" * (size - 100 - lost)
    assert "reconnecting" not in log.getvalue()  # a gap is no failed connection


@pytest.mark.parametrize(("status", "said"), [
    (b'{"status": "Failure", "reason": "NonZeroExitCode", "message": "command terminated with '
     b'non-zero exit code: error executing command [sh -c ' + b"x" * 4000 + b'], exit code 137",'
     b' "details": {"causes": [{"reason": "ExitCode", "message": "137"}]}}',
     "the in-pod program exited with code 137"),
    (b'{"status": "Failure", "reason": "InternalError", "message": "boom"}',
     "InternalError: boom"),
    (b"", "no status"),
    (b"not json", "not json"),
])
def test_an_exec_without_exit_status_is_described_by_its_code(status: bytes, said: str) -> None:
    """A lost stage names the in-pod program's exit code, not the API's echo of the script."""
    assert run._exec_end(status) == said
