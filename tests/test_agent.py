"""The runner's agent, end to end: stages handed over, jobs kept apart, and every way it
can be missing.

Jobs go through the runner emulator (the driver as separate processes, as gitlab-runner
starts it; this test process is the runner) against the emulated cluster. Where a test
needs to act in the middle of a stage, it starts `runner-driver run` itself with the
session's environment, exactly as the runner would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from runner_driver import agent, agent_client
from runner_driver.agent_protocol import (
    Reader,
    Refused,
    StageRequest,
    Stats,
    StatsRequest,
    encode,
    send,
)
from runner_driver.emulator import EmulatedCluster
from runner_driver.emulator.demo import driver_command
from runner_driver.emulator.runner import Job, JobSession, RunnerEmulator, bash_script
from runner_driver.podspec import JOB_LABEL
from runner_driver.runner_env import StageIO
from tests.conftest import ROOT_ONLY, make_runner, next_job_id, pods_left, wait_for

NS = "default"
DRIVER = driver_command()
# What a stage the agent takes must never load: the client, its helpers, the driver's
# heavy modules, and the standard library's costly ones.
HEAVY = ("kubernetes", "urllib3", "websocket", "yaml", "structlog", "tenacity", "pydantic",
         "aiohttp", "asyncio", "typing", "dataclasses", "hashlib", "argparse", "json", "re",
         "socket", "signal", "enum", "pathlib", "contextlib", "collections", "functools")
# ... and exactly what it loads (standard library C modules, and four of ours).
LIGHT = {"runner_driver", "runner_driver.cli", "runner_driver.errors",
         "runner_driver.agent_client", "runner_driver.agent_protocol", "__future__",
         "_socket", "errno", "select", "fcntl", "zlib"}
SLOW_LINES = 40  # the resumable script prints one line every 50 ms


@pytest.fixture(scope="module")
def runner(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> RunnerEmulator:
    """A runner with the driver's default settings (the agent on)."""
    return make_runner(kubeconfig, tmp_path_factory.mktemp("agent-runner"))  # type: ignore[no-any-return]


@contextlib.contextmanager
def job_session(runner: RunnerEmulator, **job: Any) -> Iterator[JobSession]:
    """config, prepare and get_sources done; cleanup (by the runner) on exit."""
    with runner.session(Job(job_id=next_job_id(), **job)) as session:
        session.run_stage("get_sources")  # makes the project directory stages cd into
        yield session


def spec(session: JobSession) -> str:
    env = session.environment()
    return agent_client.config_spec(None, env)


def stats(session: JobSession) -> dict[str, Any] | None:
    return agent_client.stats_for(session.environment(), None)


def socket_file(session: JobSession) -> Path:
    """The socket of the agent serving this process's (the runner's) jobs."""
    return Path(agent_client.socket_path(session.environment(), spec(session), os.getpid()))


def ask(path: Path | str, message: Any, pipes: bool = False) -> Any:
    """Send one message to the agent at `path` (with two pipes, as a stage request has);
    its first reply, or None when it hung up without one."""
    conn = agent_client.connect(str(path))
    assert conn is not None
    ends = [end for _ in range(2 if pipes else 0) for end in os.pipe()]
    try:
        send(conn, message, ends[1::2] or None)
        return Reader(conn).next()
    finally:
        conn.close()
        for end in ends:
            os.close(end)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (it is reaped by init, not by us).
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


def script_file(session: JobSession, body: str, name: str = "script") -> Path:
    path = session.tempdir / name
    path.write_text(bash_script(body), encoding="utf-8")
    path.chmod(0o700)
    return path


def start_run(session: JobSession, script: Path, stage: str = "build_script",
              driver: list[str] | None = None) -> subprocess.Popen[bytes]:
    """`runner-driver run` as the runner starts it: own process group, stdin /dev/null."""
    return subprocess.Popen([*(driver or DRIVER), "run", str(script), stage],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=session.tempdir,
                            env=session.environment(), process_group=0)


def start_sleeping_run(session: JobSession) -> subprocess.Popen[bytes]:
    """A `run` whose script has started and sleeps for five minutes."""
    process = start_run(session, script_file(session, "echo started; sleep 300"))
    assert process.stdout is not None
    assert process.stdout.readline() == b"started\n"
    return process


def in_pod(cluster: EmulatedCluster, session: JobSession, command: str) -> bytes:
    pod = session.job_env["RUNNER_DRIVER_POD"]
    code, output, _ = cluster.run_in_sandbox(NS, pod, "build", ["sh", "-c", command])
    assert code == 0, output
    return output


# --- the agent's life ------------------------------------------------------------


def test_config_leaves_an_agent_that_serves_the_job_and_ends_with_cleanup(
        runner: RunnerEmulator) -> None:
    """After config, prepare/run/cleanup are served by one agent, which cleanup ends."""
    with job_session(runner) as session:
        config, prepare = session.calls[0], session.calls[1]
        assert not config.pipes_held and not prepare.pipes_held
        first = stats(session)
        assert first is not None and alive(first["pid"])
        for stage in ("build_script", "after_script"):
            session.run_stage(stage, ["echo served"])
        served = stats(session)
        assert served is not None and served["pid"] == first["pid"]
        # prepare, get_sources and the two stages above: config itself forked the agent.
        assert served["stages_served"] == 4
        path = socket_file(session)
        session.cleanup()  # while the job directory (and so the socket) still exists
        assert session.calls[-1].exit_code == 0
        wait_for(lambda: not alive(first["pid"]), timeout=5,
                 what="the agent to exit after cleanup")
        assert not path.exists()


@pytest.mark.parametrize("argv", [["run", "{script}", "build_script"], ["cleanup"]])
def test_a_stage_the_agent_takes_loads_only_a_few_small_modules(
        runner: RunnerEmulator, argv: list[str]) -> None:
    """A stage handed to the agent imports exactly the light set: no client, no argparse."""
    with job_session(runner) as session:
        script = script_file(session, "echo light")
        report = session.tempdir / "modules.txt"
        probe = ("import sys\nbefore = set(sys.modules)\nfrom runner_driver.cli import main\n"
                 "rc = main()\nloaded = sorted(set(sys.modules) - before)\n"
                 f"open({str(report)!r}, 'w').write(' '.join(loaded))\nsys.exit(rc)\n")
        before = stats(session)
        args = [a.format(script=script) for a in argv]
        process = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                                 cwd=session.tempdir, env=session.environment(), timeout=60,
                                 check=False)
        assert process.returncode == 0, process.stderr
        after = before if argv == ["cleanup"] else stats(session)
        loaded = set(report.read_text().split())
    assert before and after
    if argv != ["cleanup"]:
        assert process.stdout == b"light\n"
        assert after["stages_served"] == before["stages_served"] + 1
    assert loaded == LIGHT
    assert not any(m.split(".")[0] in HEAVY for m in loaded)


def test_output_and_exit_code_pass_through_byte_for_byte(runner: RunnerEmulator) -> None:
    """Binary output, the script's own exit code and BUILD_EXIT_CODE_FILE, via the agent."""
    body = "printf 'a\\000b\\377\\376 z\\303\\263\\305\\202w\\n'; printf 'no newline'; exit 3"
    with job_session(runner) as session:
        before = stats(session)
        process = start_run(session, script_file(session, body))
        out, err = process.communicate(timeout=30)
        after = stats(session)
        written = session.exit_code_file.read_text()
    assert process.returncode == 1, err  # BUILD_FAILURE_EXIT_CODE
    assert out == b"a\x00b\xff\xfe z\xc3\xb3\xc5\x82w\nno newline"
    assert written == "3"
    assert before and after and after["stages_served"] == before["stages_served"] + 1


def test_an_idle_agent_exits_and_an_in_process_prepare_leaves_a_new_one(
        kubeconfig: Path, tmp_path: Path) -> None:
    """idle_timeout_seconds ends the agent; prepare then runs itself and leaves another."""
    runner = make_runner(kubeconfig, tmp_path, "[agent]\nidle_timeout_seconds = 2\n")
    tempdir = tmp_path / "job"
    tempdir.mkdir(mode=0o700)
    session = JobSession(runner, Job(job_id=next_job_id()), tempdir, None)
    session.apply_config(session.call("config", ["config"]))
    first = stats(session)
    assert first is not None
    wait_for(lambda: not alive(first["pid"]), timeout=10, what="the idle agent to exit")
    assert stats(session) is None
    prepare = session.call("prepare", ["prepare"])
    assert prepare.exit_code == 0, prepare.stderr
    second = stats(session)
    assert second is not None and second["pid"] != first["pid"]
    session.run_stage("get_sources")
    session.run_stage("build_script", ["echo after the idle agent"])
    assert b"after the idle agent" in session.log
    session.cleanup()


def test_disabled_agent_leaves_no_socket_and_the_job_still_succeeds(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """[agent] enabled = false: every stage runs in its own process."""
    runner = make_runner(kubeconfig, tmp_path, "[agent]\nenabled = false\n")
    with job_session(runner) as session:
        session.run_stage("build_script", ["echo no agent"])
        assert stats(session) is None
        assert not socket_file(session).exists()
    assert b"no agent" in session.log
    # Deletion is graceful, as on a real cluster: cleanup asks, the pod goes a moment later.
    wait_for(lambda: pods_left(core) == [], timeout=10, what="the pod to be deleted")


def test_a_job_directory_others_can_enter_fails_prepare_before_any_pod(
        runner: RunnerEmulator, tmp_path: Path, core: client.CoreV1Api) -> None:
    """A TMPDIR that is not private: prepare (served by the agent or not) fails before it
    creates a pod, since it has nowhere private to record one."""
    tempdir = tmp_path / "shared"
    tempdir.mkdir()
    tempdir.chmod(0o755)
    session = JobSession(runner, Job(job_id=next_job_id()), tempdir, None)
    session.apply_config(session.call("config", ["config"]))
    prepare = session.call("prepare", ["prepare"])
    assert prepare.exit_code == 2, prepare.stderr  # SYSTEM_FAILURE_EXIT_CODE
    assert b"is not private to this user" in prepare.stderr
    assert session.job_env["RUNNER_DRIVER_POD"] not in pods_left(core)
    session.cleanup()


def test_no_agent_in_an_agent_directory_others_can_enter(
        kubeconfig: Path, tmp_path: Path) -> None:
    """An agent directory open to others is not used: the job runs with every stage in
    its own process, and nothing listens there."""
    runner = make_runner(kubeconfig, tmp_path)
    shared = Path(runner.environ["XDG_RUNTIME_DIR"]) / "runner-driver"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with job_session(runner) as session:
        session.run_stage("build_script", ["echo in process"])
        assert stats(session) is None
        assert not socket_file(session).exists()
    assert b"in process" in session.log


@ROOT_ONLY
def test_the_agent_serves_no_other_user(kubeconfig: Path, tmp_path: Path) -> None:
    """Even with the socket reachable, another uid gets no answer, and the agent serves on."""
    runner = make_runner(kubeconfig, tmp_path)
    # Under /tmp itself, so that another user can reach it once we open it up.
    runtime = Path(tempfile.mkdtemp(prefix="runner-driver-test-"))
    runner.environ["XDG_RUNTIME_DIR"] = str(runtime)
    with job_session(runner) as session:
        path = socket_file(session)
        request = encode(StatsRequest())
        runtime.chmod(0o711)
        path.parent.chmod(0o711)
        path.chmod(0o777)
        try:
            probe = ("import socket, os\nos.setgid(65534); os.setuid(65534)\n"
                     "s = socket.socket(socket.AF_UNIX); s.settimeout(5)\n"
                     f"s.connect({str(path)!r})\n"
                     f"try:\n    s.sendall({request!r})\n    print(repr(s.recv(100)))\n"
                     "except (BrokenPipeError, ConnectionResetError):\n    print('closed')\n")
            result = subprocess.run([sys.executable, "-c", probe], capture_output=True,
                                    timeout=30, check=False)
        finally:
            path.parent.chmod(0o700)
            runtime.chmod(0o700)
        # Closed without a word (a reset or broken pipe, when our request was unread).
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() in (b"b''", b"closed")
        assert stats(session) is not None  # and it still serves its own user
    shutil.rmtree(runtime, ignore_errors=True)


# --- the agent missing, wedged or lost ---------------------------------------------


def test_stages_run_in_process_when_the_agent_is_killed(
        runner: RunnerEmulator, core: client.CoreV1Api) -> None:
    """SIGKILL to the agent between stages: the next run and cleanup work without it."""
    with job_session(runner) as session:
        found = stats(session)
        assert found is not None
        os.kill(found["pid"], signal.SIGKILL)
        wait_for(lambda: not alive(found["pid"]), timeout=5, what="the agent to die")
        session.run_stage("build_script", ["echo without the agent"])
        assert stats(session) is None
    assert b"without the agent" in session.log
    assert session.calls[-1].stage == "cleanup" and session.calls[-1].exit_code == 0
    wait_for(lambda: pods_left(core) == [], what="the pod to be deleted")


def test_an_agent_killed_mid_run_is_resumed_in_process_once(
        runner: RunnerEmulator, cluster: EmulatedCluster) -> None:
    """Output stays byte-identical and the script is not started a second time."""
    body = (f"echo once >> /scratch/starts; i=0; while [ $i -lt {SLOW_LINES} ]; do "
            "printf 'line %s żółć\\n' $i; i=$((i + 1)); sleep 0.05; done")
    expected = "".join(f"line {i} żółć\n" for i in range(SLOW_LINES)).encode()
    with job_session(runner) as session:
        agent = stats(session)
        assert agent is not None
        process = start_run(session, script_file(session, body))
        assert process.stdout is not None
        first = b""
        while b"line 1" not in first:  # raw reads: communicate() bypasses buffers
            chunk = os.read(process.stdout.fileno(), 65536)
            assert chunk, f"output ended early: {first!r}"
            first += chunk
        os.kill(agent["pid"], signal.SIGKILL)
        rest, err = process.communicate(timeout=60)
        starts = in_pod(cluster, session, "cat /scratch/starts")
    assert process.returncode == 0, err
    assert first + rest == expected
    assert b"ended without finishing the build_script stage" in err
    assert starts == b"once\n"


def test_sigterm_reaches_the_stage_and_stops_the_script_in_the_pod(
        runner: RunnerEmulator, cluster: EmulatedCluster) -> None:
    """The runner's SIGTERM to `run` is forwarded: canceled, script stopped, exit 2."""
    with job_session(runner) as session:
        before = stats(session)
        process = start_sleeping_run(session)
        sent = time.monotonic()
        os.killpg(process.pid, signal.SIGTERM)
        _, err = process.communicate(timeout=30)
        took = time.monotonic() - sent
        sleeping = in_pod(cluster, session, "ps -o args | grep -c '[s]leep 300' || true")
        after = stats(session)
    assert before and after and after["stages_served"] == before["stages_served"] + 1
    assert process.returncode == 2, err  # SYSTEM_FAILURE_EXIT_CODE
    assert b"canceled: gitlab-runner sent SIGTERM" in err
    assert took < 10
    assert sleeping.strip() == b"0"


@pytest.mark.parametrize("chatty", [False, True], ids=["quiet", "chatty"])
def test_a_killed_client_makes_the_agent_stop_the_stage(
        runner: RunnerEmulator, cluster: EmulatedCluster, chatty: bool) -> None:
    """SIGKILL to `run` (the runner gave up on it): the agent stops the script in the pod,
    whether it was silent (noticed on the socket) or printing (noticed on the pipe)."""
    body = ("echo started; while :; do echo chatter; echo x >> /scratch/alive; sleep 0.01; "
            "done" if chatty else "echo started; sleep 300")
    with job_session(runner) as session:
        agent = stats(session)
        assert agent is not None
        process = start_run(session, script_file(session, body))
        assert process.stdout is not None
        assert process.stdout.readline() == b"started\n"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        wait_for(lambda: not (stats(session) or {}).get("stages_running"), timeout=15,
                 what="the agent's stage to end")
        if chatty:  # stopped means: its file stops growing
            probe = "wc -c < /scratch/alive; sleep 0.5; wc -c < /scratch/alive"
            wait_for(lambda: len(set(in_pod(cluster, session, probe).split())) == 1,
                     timeout=10, what="the script to be stopped in the pod")
        else:
            wait_for(lambda: in_pod(cluster, session, "ps -o args | grep -c '[s]leep 300' "
                                                      "|| true").strip() == b"0",
                     timeout=10, what="the script to be stopped in the pod")


@contextlib.contextmanager
def wedged_agent(session: JobSession) -> Iterator[socket.socket]:
    """The job's real agent killed, and a listener in its place that never answers."""
    real = stats(session)
    assert real is not None
    os.kill(real["pid"], signal.SIGKILL)
    wait_for(lambda: not alive(real["pid"]), timeout=5, what="the agent to die")
    path = socket_file(session)
    path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX) as wedged:
        wedged.bind(str(path))
        wedged.listen(4)
        wedged.settimeout(30)
        yield wedged


def test_a_wedged_agent_is_given_up_and_the_stage_runs_in_process(
        runner: RunnerEmulator) -> None:
    """An agent that accepts and never answers costs a few seconds, not the stage."""
    with job_session(runner) as session, wedged_agent(session) as wedged:
        started = time.monotonic()
        process = start_run(session, script_file(session, "echo still ran"))
        connection, _ = wedged.accept()  # and never a word back
        out, err = process.communicate(timeout=60)
        took = time.monotonic() - started
        connection.close()
    assert (process.returncode, out) == (0, b"still ran\n"), err
    patience = agent_client.GREETING_TIMEOUT_SECONDS
    assert patience <= took < patience + 10


def test_sigterm_while_waiting_for_a_wedged_agent_cancels_without_running(
        runner: RunnerEmulator, cluster: EmulatedCluster) -> None:
    """A cancel before any agent took the stage: canceled at once, the script never ran."""
    with job_session(runner) as session:
        with wedged_agent(session) as wedged:
            process = start_run(session, script_file(session, "touch /scratch/ran"))
            connection, _ = wedged.accept()
            # The client has sent its request and waits for a greeting that never comes.
            request = Reader(connection).next()
            assert isinstance(request, StageRequest) and request.stage == "run"
            sent = time.monotonic()
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=30)
            took = time.monotonic() - sent
            connection.close()
        ran = in_pod(cluster, session, "[ -e /scratch/ran ] && echo yes || echo no")
    assert process.returncode == 2, err
    assert b"canceled: gitlab-runner sent SIGTERM" in err
    assert took < agent_client.GREETING_TIMEOUT_SECONDS  # it did not wait for a greeting
    assert ran == b"no\n"


def test_cleanup_while_a_run_is_still_going(runner: RunnerEmulator,
                                            core: client.CoreV1Api) -> None:
    """cleanup is served while an earlier run still streams; both end, the pod goes."""
    with job_session(runner) as session:
        agent = stats(session)
        assert agent is not None
        process = start_sleeping_run(session)
        cleanup = session.call("cleanup", ["cleanup"], to_log=False)
        assert cleanup.exit_code == 0 and cleanup.seconds < 10, cleanup.stderr
        _, err = process.communicate(timeout=60)
        assert process.returncode == 2, err  # the pod went away under the script
        assert b"continuing in this process" not in err  # the run stayed the agent's
        # Only a cleanup the agent served ends it (its socket is still there).
        wait_for(lambda: not alive(agent["pid"]), timeout=10, what="the agent to exit")
    wait_for(lambda: pods_left(core) == [], timeout=10, what="the pod to be deleted")


# --- one agent, many jobs ------------------------------------------------------------


def test_concurrent_jobs_share_one_agent_which_ends_with_the_last_cleanup(
        runner: RunnerEmulator) -> None:
    """Two jobs at once: one agent serves both, each sees only its own job, and the agent
    outlives the first cleanup but not the second."""
    with job_session(runner) as first, job_session(runner) as second:
        shared = stats(first)
        assert shared is not None and shared["jobs"] == 2
        for session in (first, second):
            session.run_stage("build_script", ['echo "job $CI_JOB_ID"'])
        assert (stats(second) or {}).get("pid") == shared["pid"]
        first.cleanup()
        after_first = stats(second)
        assert after_first is not None and after_first["pid"] == shared["pid"]
        assert after_first["jobs"] == 1
    wait_for(lambda: not alive(int(shared["pid"])), timeout=10,
             what="the agent to exit after the last job's cleanup")
    for session in (first, second):
        assert f"job {session.job.job_id}".encode() in session.log
        other = second if session is first else first
        assert f"job {other.job.job_id}".encode() not in session.log


def test_jobs_starting_together_wait_for_one_agent_instead_of_loading_the_client(
        kubeconfig: Path, tmp_path: Path) -> None:
    """Six configs at once with no agent yet: one loads the client and leaves the agent
    (its socket taken first), the other five wait for it and are served there."""
    runner = make_runner(kubeconfig, tmp_path)
    sessions = []
    for index in range(6):
        tempdir = tmp_path / f"job{index}"
        tempdir.mkdir(mode=0o700)
        sessions.append(JobSession(runner, Job(job_id=next_job_id()), tempdir, None))
    calls: dict[int, Any] = {}
    threads = [threading.Thread(target=lambda i=i, s=s: calls.update(
        {i: s.call("config", ["config"])})) for i, s in enumerate(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(call.exit_code == 0 for call in calls.values())
    loaded = [call.cpu_seconds for call in calls.values() if call.cpu_seconds > 0.25]
    assert len(loaded) == 1, sorted(call.cpu_seconds for call in calls.values())
    for session, call in zip(sessions, (calls[i] for i in range(6)), strict=True):
        session.apply_config(call)
    served = stats(sessions[0])
    assert served is not None and served["jobs"] == 6 and served["stages_served"] == 5
    for session in sessions:
        session.cleanup()
    wait_for(lambda: not alive(int(served["pid"])), timeout=10,
             what="the agent to exit after the six cleanups")


class LoneAgent:
    """An agent started by `agent.start` as `config` does, with no cluster behind it: a
    stage writes its job's TMPDIR and nonce to its stdout and exits 5; a stage named
    `hang` waits until it is canceled; a stage named `crash` raises."""

    def __init__(self, tmp_path: Path) -> None:
        self.runtime = tmp_path / "run"
        self.runtime.mkdir(mode=0o700)
        self.environ = {"XDG_RUNTIME_DIR": str(self.runtime)}
        self.path = agent_client.socket_path(self.environ, "", os.getpid())
        self.stamp = tmp_path / "settings.toml"
        self.stamp.write_text("", encoding="utf-8")

    def execute(self, stage: str, arguments: dict[str, Any], io: StageIO) -> int:
        from runner_driver import cancel

        name = arguments.get("stage", "")
        if name == "hang":
            while True:
                cancel.sleep(0.05)
        if name == "crash":
            raise RuntimeError("a bug in one stage")
        io.out.write(f"{stage} {io.environ.get('TMPDIR')} "
                     f"{io.environ.get('RUNNER_DRIVER_NONCE')}\n")
        return 5

    def job(self, tmp_path: Path, name: str) -> dict[str, str]:
        """A job's environment for this agent, its TMPDIR a private directory."""
        tmpdir = tmp_path / name
        tmpdir.mkdir(mode=0o700)
        return {**self.environ, "TMPDIR": str(tmpdir), "RUNNER_DRIVER_NONCE": name * 8}


@pytest.fixture
def lone_agent(tmp_path: Path) -> Iterator[LoneAgent]:
    """A LoneAgent, serving one job (`first`); on exit it is gone."""
    lone = LoneAgent(tmp_path)
    first = lone.job(tmp_path, "a000")
    stamp = str(lone.stamp)
    from runner_driver import settings

    claim = agent_client.claim(lone.path)
    assert claim is not None
    agent.start(claim, lone.execute, 60, first["TMPDIR"], lambda: settings.stamp([stamp]),
                os.getpid())
    found = agent_client.stats_for(lone.environ, None)
    assert found is not None
    try:
        yield lone
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lone.path)
        wait_for(lambda: not alive(int(found["pid"])), timeout=10,
                 what="the agent to exit once its socket is gone")


def hand(lone: LoneAgent, environ: dict[str, str], stage: str = "run",
         name: str = "build_script") -> tuple[int | None, bytes]:
    """`hand_over` in a child process, as a stage process would; (exit code, stdout)."""
    probe = ("import json, os, sys\nfrom runner_driver import agent_client\n"
             "env = json.loads(sys.argv[1])\n"
             "h = agent_client.hand_over(sys.argv[2], {'script': '/s', 'stage': sys.argv[3]}, "
             "env, '')\nsys.stdout.flush()\n"
             "os._exit(200 if h is None else h.exit_code if h.exit_code is not None else 201)\n")
    result = subprocess.run([sys.executable, "-c", probe, json.dumps(environ), stage, name],
                            capture_output=True, timeout=30, check=False)
    code = None if result.returncode in (200, 201) else result.returncode
    return code, result.stdout


def test_each_stage_runs_with_its_own_jobs_environment_and_pipes(
        lone_agent: LoneAgent, tmp_path: Path) -> None:
    """Stages of two jobs through one agent: each writes to its own client, and sees its
    own TMPDIR and nonce, never the other job's."""
    jobs = [lone_agent.job(tmp_path, name) for name in ("b111", "c222")]
    results: dict[str, tuple[int | None, bytes]] = {}
    threads = [threading.Thread(target=lambda e=e: results.update({e["TMPDIR"]: hand(
        lone_agent, e)})) for e in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for environ in jobs:
        assert results[environ["TMPDIR"]] == \
            (5, f"run {environ['TMPDIR']} {environ['RUNNER_DRIVER_NONCE']}\n".encode())
    served = agent_client.stats_for(lone_agent.environ, None)
    assert served is not None and served["stages_served"] == 2 and served["jobs"] == 3


def test_a_hung_stage_or_a_crashing_one_does_not_hold_up_another_job(
        lone_agent: LoneAgent, tmp_path: Path) -> None:
    """One job's stage that hangs, and another's that raises, leave a third job's stage
    served at once; the crash costs its client the agent's answer, nothing more."""
    hung = subprocess.Popen(
        [sys.executable, "-c", "import json, sys\nfrom runner_driver import agent_client\n"
         "agent_client.hand_over('run', {'script': '/s', 'stage': 'hang'}, "
         "json.loads(sys.argv[1]), '')\n", json.dumps(lone_agent.job(tmp_path, "d333"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (agent_client.stats_for(lone_agent.environ, None) or {}).get(
            "stages_running") == 1, timeout=10, what="the hung stage to be running")
        crash = hand(lone_agent, lone_agent.job(tmp_path, "e444"), name="crash")
        assert crash[0] is None  # no answer: its stage process would continue in-process
        other = lone_agent.job(tmp_path, "f555")
        started = time.monotonic()
        assert hand(lone_agent, other)[0] == 5
        assert time.monotonic() - started < 5
    finally:
        hung.send_signal(signal.SIGTERM)  # its client forwards the cancel: the stage ends
        hung.wait(10)
    wait_for(lambda: (agent_client.stats_for(lone_agent.environ, None) or {}).get(
        "stages_running") == 0, timeout=10, what="the canceled stage to end")


def test_malformed_requests_are_refused_and_the_agent_serves_on(
        lone_agent: LoneAgent, tmp_path: Path) -> None:
    """A stage request without its two pipes, an unknown stage, and garbage are refused
    or dropped, unrun; a good request right after is served."""
    environ = lone_agent.job(tmp_path, "a777")
    assert isinstance(ask(lone_agent.path, StageRequest("run", {}, environ)), Refused)
    with socket.socket(socket.AF_UNIX) as raw:
        agent_client.reach(lone_agent.path, raw.connect)
        raw.sendall(b"op=stage\0stage=rm -rf\0\0")
        assert raw.recv(100) == b""
    with socket.socket(socket.AF_UNIX) as raw:
        agent_client.reach(lone_agent.path, raw.connect)
        raw.sendall(b"no equals sign\0\0")
        assert raw.recv(100) == b""
    served = agent_client.stats_for(lone_agent.environ, None)
    assert served is not None and served["stages_served"] == 0
    assert hand(lone_agent, environ)[0] == 5


def test_changed_settings_retire_the_agent_after_its_running_stages(
        lone_agent: LoneAgent, tmp_path: Path) -> None:
    """The settings file changed: the next request is refused (its stage runs itself and
    starts a fresh agent), and this agent exits."""
    before = agent_client.stats_for(lone_agent.environ, None)
    assert before is not None
    lone_agent.stamp.write_text("[logging]\nlevel = 'info'\n", encoding="utf-8")
    assert hand(lone_agent, lone_agent.job(tmp_path, "a888")) == (None, b"")
    wait_for(lambda: not alive(int(before["pid"])), timeout=10,
             what="the agent with old settings to exit")


def test_stats_are_typed_and_count_the_jobs_it_serves(lone_agent: LoneAgent) -> None:
    """A stats request gets a Stats message: this process's agent, one job, nothing run."""
    reply = ask(lone_agent.path, StatsRequest())
    assert isinstance(reply, Stats)
    assert (reply.jobs, reply.stages_served, reply.stages_running) == (1, 0, 0)
    assert reply.pid != os.getpid() and alive(reply.pid)


# --- nothing outlives its runner ---------------------------------------------------------

# A runner emulator in a process of its own, so a test can SIGKILL it mid-job: it runs
# config and prepare, prints the job's environment, then a build_script that sleeps.
KILLED_RUNNER = """
import json, sys
from pathlib import Path
from runner_driver.emulator.runner import Job, JobSession
from tests.conftest import make_runner
kubeconfig, workdir, job_id = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
runner = make_runner(kubeconfig, workdir, "")
tempdir = workdir / "job"
tempdir.mkdir(mode=0o700)
session = JobSession(runner, Job(job_id=job_id), tempdir, None)
session.apply_config(session.call("config", ["config"]))
assert session.call("prepare", ["prepare"]).exit_code == 0
print(json.dumps(session.environment()), flush=True)
session.run_body("build_script", "echo started; sleep 120")
"""


def test_a_runner_killed_mid_job_takes_its_agent_with_it(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """SIGKILL to gitlab-runner mid-stage: its agent exits within 5 s, the agent's socket
    is gone, and the script in the pod is stopped."""
    job_id = next_job_id()
    runner = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUNNER, str(kubeconfig), str(tmp_path), str(job_id)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=Path(__file__).parent.parent)
    try:
        assert runner.stdout is not None
        environ = json.loads(runner.stdout.readline())
        found: dict[str, Any] = {}

        def stage_running() -> bool:
            found.update(agent_client.stats_for(environ, None, runner.pid) or {})
            return bool(found.get("stages_running"))

        wait_for(stage_running, timeout=30, what="the build_script stage in the agent")
        path = Path(agent_client.socket_path(environ, agent_client.config_spec(None, environ),
                                             runner.pid))
        assert path.exists()
        runner.kill()
        runner.wait(10)
        killed = time.monotonic()
        wait_for(lambda: not alive(int(found["pid"])), timeout=5,
                 what="the agent to exit after its runner")
        assert time.monotonic() - killed < 5.0
        assert not path.exists()
    finally:
        runner.kill()
        runner.wait(10)
        for pod in core.list_namespaced_pod(NS, label_selector=f"{JOB_LABEL}={job_id}").items:
            core.delete_namespaced_pod(pod.metadata.name, NS, grace_period_seconds=0)
