"""The per-job agent, end to end: stages handed over, and every way it can be missing.

Jobs go through the runner emulator (the driver as separate processes, as gitlab-runner
starts it) against the emulated cluster. Where a test needs to act in the middle of a
stage, it starts `runner-driver run` itself with the session's environment, exactly as
the runner would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from runner_driver import agent, agent_client
from runner_driver.emulator import EmulatedCluster
from runner_driver.emulator.demo import driver_command
from runner_driver.emulator.runner import Job, JobSession, RunnerEmulator, bash_script
from runner_driver.runner_env import ExitCodes
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
         "runner_driver.agent_client", "runner_driver.jobrecord", "__future__", "_socket",
         "errno", "select", "fcntl", "zlib"}
SLOW_LINES = 40  # the resumable script prints one line every 50 ms
# A job's nonce as `config` mints it, and another job's.
NONCE = "0123456789abcdef0123456789abcdef"
OTHER_NONCE = "fedcba9876543210fedcba9876543210"
REFUSED = {"refused": "this agent serves another job"}
# Nonce fields of requests that are not the job's: another job's, none, near misses.
FOREIGN = [
    pytest.param({"nonce": OTHER_NONCE}, id="another-jobs"),
    pytest.param({"nonce": ""}, id="empty"),
    pytest.param({}, id="missing"),
    pytest.param({"nonce": NONCE.upper()}, id="upper-case"),
    pytest.param({"nonce": NONCE[:-1]}, id="a-prefix"),
    pytest.param({"nonce": NONCE + "0"}, id="longer"),
]


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
    env = session.environment()
    path = agent_client.socket_path(env, spec(session), agent_client.job_nonce(env))
    assert path is not None
    return Path(path)


def ask(path: Path | str, request: dict[str, str], pipes: bool = False) -> dict[str, str] | None:
    """Send one request to the agent at `path` (with two pipes, as a stage request has);
    its first reply, or None when it hung up without one."""
    conn = agent_client.connect(str(path))
    assert conn is not None
    ends = [end for _ in range(2 if pipes else 0) for end in os.pipe()]
    try:
        agent_client.send(conn, request, ends[1::2] or None)
        return agent_client.Messages(conn).next()
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


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


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
        assert not list(session.tempdir.glob(f"{agent_client.SOCKET_PREFIX}*"))
    assert b"no agent" in session.log
    # Deletion is graceful, as on a real cluster: cleanup asks, the pod goes a moment later.
    wait_for(lambda: pods_left(core) == [], timeout=10, what="the pod to be deleted")


def test_no_agent_in_a_directory_other_users_can_enter(runner: RunnerEmulator,
                                                        tmp_path: Path,
                                                        core: client.CoreV1Api) -> None:
    """A job directory that is not private gets no agent from config nor from prepare
    (which, with nowhere private to record its pod, fails before creating one)."""
    tempdir = tmp_path / "shared"
    tempdir.mkdir()
    tempdir.chmod(0o755)
    session = JobSession(runner, Job(job_id=next_job_id()), tempdir, None)
    session.apply_config(session.call("config", ["config"]))
    assert not list(tempdir.glob(f"{agent_client.SOCKET_PREFIX}*"))
    prepare = session.call("prepare", ["prepare"])
    assert prepare.exit_code == 2, prepare.stderr  # SYSTEM_FAILURE_EXIT_CODE
    assert b"is not private to this user" in prepare.stderr
    assert not list(tempdir.glob(f"{agent_client.SOCKET_PREFIX}*"))
    assert session.job_env["RUNNER_DRIVER_POD"] not in pods_left(core)


@ROOT_ONLY
def test_the_agent_serves_no_other_user(runner: RunnerEmulator) -> None:
    """Even with the socket reachable and the job's nonce, another uid gets no answer."""
    # Under /tmp itself, so that another user can reach it once we open it up.
    tempdir = Path(tempfile.mkdtemp(prefix="custom-executor"))
    session = JobSession(runner, Job(job_id=next_job_id()), tempdir, None)
    try:
        session.apply_config(session.call("config", ["config"]))
        path = socket_file(session)
        # The nonce is no secret (it is on the pod's label): the uid alone must keep it out.
        nonce = session.environment()["RUNNER_DRIVER_NONCE"]
        request = agent_client.encode({"op": "stats", "nonce": nonce})
        tempdir.chmod(0o711)
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
            tempdir.chmod(0o700)
        # Closed without a word (a reset or broken pipe, when our request was unread).
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() in (b"b''", b"closed")
        assert stats(session) is not None  # and it still serves its own user
    finally:
        session.cleanup()
        shutil.rmtree(tempdir, ignore_errors=True)


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


def test_a_stage_process_killed_mid_run_is_resumed_in_process_once(
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
        stage = wait_for(lambda: children(agent["pid"]), timeout=5,
                         what="the agent's stage process")
        os.kill(stage[0], signal.SIGKILL)
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
        wait_for(lambda: not children(agent["pid"]), timeout=15,
                 what="the agent's stage process to end")
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
            request = agent_client.Messages(connection)
            assert (request.next() or {}).get("stage") == "run"
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


# --- whose stages it serves: its own job's nonce only -------------------------------


class LoneAgent:
    """An agent started (by `agent.start`, as `config` does) for NONCE in a private job
    directory, with no cluster: its stages append their name to `ran`, print, exit 5."""

    def __init__(self, tmp_path: Path) -> None:
        tmpdir = tmp_path / "job"
        tmpdir.mkdir(mode=0o700)
        tmpdir.chmod(0o700)
        self.env = {"TMPDIR": str(tmpdir), "RUNNER_DRIVER_NONCE": NONCE}
        path = agent_client.socket_path(self.env, "", NONCE)
        assert path is not None
        self.path = path
        self.ran = tmp_path / "ran"

    def execute(self, stage: str, _arguments: dict[str, Any], _codes: ExitCodes) -> int:
        with self.ran.open("a") as ran:
            ran.write(stage + "\n")
        os.write(1, f"{stage} served\n".encode())  # fd 1 is the client's pipe
        return 5

    def stages_run(self) -> str:
        return self.ran.read_text() if self.ran.exists() else ""


@pytest.fixture
def lone_agent(tmp_path: Path) -> Iterator[LoneAgent]:
    """A LoneAgent, serving; on exit its socket is removed and it is gone."""
    lone = LoneAgent(tmp_path)
    assert agent.start(lone.path, lone.execute, 60, NONCE)
    first = agent_client.stats_for(lone.env, None)
    assert first is not None
    try:
        yield lone
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lone.path)
        wait_for(lambda: not alive(int(first["pid"])), timeout=10,
                 what="the agent to exit once its socket is gone")


def test_start_refuses_an_empty_nonce(tmp_path: Path) -> None:
    """An agent without its job's nonce is never started: an error, and no socket."""
    lone = LoneAgent(tmp_path)
    with pytest.raises(OSError, match="nonce"):
        agent.start(lone.path, lone.execute, 60, "")
    assert not Path(lone.path).exists()
    assert agent_client.stats_for(lone.env, None) is None


@pytest.mark.parametrize("foreign", FOREIGN)
def test_the_agent_refuses_requests_without_its_jobs_nonce(
        lone_agent: LoneAgent, foreign: dict[str, str]) -> None:
    """Stats, run and cleanup requests without the agent's own nonce are refused unrun,
    and a refused cleanup does not stop the agent."""
    assert ask(lone_agent.path, {"op": "stats", **foreign}) == REFUSED
    for stage in ("run", "prepare", "cleanup"):
        request = {"op": "stage", "stage": stage, "arg.script": "/s", "arg.stage": "x"}
        assert ask(lone_agent.path, request | foreign, pipes=True) == REFUSED
    assert lone_agent.stages_run() == ""
    served = agent_client.stats_for(lone_agent.env, None)
    assert served is not None and served["stages_served"] == 0


def test_a_nonce_that_is_not_text_is_not_served_and_the_agent_serves_on(
        lone_agent: LoneAgent) -> None:
    """A nonce field of undecodable bytes is no match: no service, nothing run, still serving."""
    garbage = os.fsdecode(b"\xff" * 32)  # as the agent decodes it: lone surrogates
    assert ask(lone_agent.path, {"op": "stats", "nonce": garbage}) in (None, REFUSED)
    request = {"op": "stage", "stage": "cleanup", "nonce": garbage}
    assert ask(lone_agent.path, request, pipes=True) in (None, REFUSED)
    assert lone_agent.stages_run() == ""
    assert ask(lone_agent.path, {"op": "stats", "nonce": NONCE}) is not None


def test_the_agent_serves_requests_with_its_jobs_nonce(
        lone_agent: LoneAgent, capfd: pytest.CaptureFixture[str]) -> None:
    """With the agent's own nonce, stats are answered and a stage runs there, once."""
    stats_reply = ask(lone_agent.path, {"op": "stats", "nonce": NONCE})
    assert stats_reply is not None and "refused" not in stats_reply
    handoff = agent_client.hand_over("run", {"script": "/s", "stage": "build_script"},
                                     lone_agent.env, "")
    assert handoff is not None and handoff.exit_code == 5
    assert capfd.readouterr().out == "run served\n"
    assert lone_agent.stages_run() == "run\n"
    served = agent_client.stats_for(lone_agent.env, None)
    assert served is not None and served["stages_served"] == 1


def test_the_jobs_agent_refuses_another_jobs_stage(runner: RunnerEmulator,
                                                   cluster: EmulatedCluster) -> None:
    """The job's real agent refuses a run request carrying another job's nonce: the script
    never runs, and the job's own stages are still served."""
    with job_session(runner) as session:
        before = stats(session)
        assert before is not None
        script = script_file(session, "touch /scratch/foreign")
        request = {"op": "stage", "stage": "run", "nonce": OTHER_NONCE,
                   "arg.script": str(script), "arg.stage": "build_script"}
        assert ask(socket_file(session), request, pipes=True) == REFUSED
        assert ask(socket_file(session), {"op": "stats", "nonce": OTHER_NONCE}) == REFUSED
        session.run_stage("build_script", ["echo still ours"])
        after = stats(session)
        ran = in_pod(cluster, session, "[ -e /scratch/foreign ] && echo yes || echo no")
    assert b"still ours" in session.log
    assert ran == b"no\n"
    assert after is not None and after["pid"] == before["pid"]
    assert after["stages_served"] == before["stages_served"] + 1
