"""The light side of the agent: which socket a stage looks for, whom it talks to, what it
sends, and what it makes of the answer. The agents here are real listeners playing one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runner_driver import agent_client, jobrecord
from runner_driver.agent_client import config_spec, hand_over, socket_path, stats_for
from runner_driver.agent_protocol import (
    Accepted,
    Exited,
    Go,
    Message,
    Reader,
    Refused,
    StageRequest,
    Stats,
    StatsRequest,
    send,
)
from runner_driver.runner_env import JobContext
from tests.conftest import ROOT_ONLY

# The job's nonce as `config` mints it, and another job's.
NONCE = "0123456789abcdef0123456789abcdef"
OTHER_NONCE = "fedcba9876543210fedcba9876543210"
NOBODY = 65534
SPEC = "/etc/runner-driver/config.toml"
RUNNER_PID = 4242


def private_dir(path: Path) -> Path:
    """`path`, made ours with mode 0700 (as gitlab-runner and the agent make theirs)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def job_env(runtime: Path, **extra: str) -> dict[str, str]:
    """A stage's environment, with `runtime` (made private) as its XDG_RUNTIME_DIR."""
    return {"XDG_RUNTIME_DIR": str(private_dir(runtime)), "TMPDIR": str(runtime / "job"),
            "RUNNER_DRIVER_NONCE": NONCE, "CUSTOM_ENV_CI_JOB_ID": "42",
            "CUSTOM_ENV_CI_PROJECT_ID": "7", "CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN": "t0k3n",
            "KUBECONFIG": "/home/runner/.kube/config", **extra}


def agent_socket(env: dict[str, str], spec: str = "", runner_pid: int | None = None) -> str:
    """The agent's socket path for `env` (runner: our parent), its directory made private."""
    path = socket_path(env, spec, os.getppid() if runner_pid is None else runner_pid)
    private_dir(Path(path).parent)
    return path


# --- the socket's name -----------------------------------------------------------------


def test_every_stage_of_every_job_of_a_runner_shares_one_socket(tmp_path: Path) -> None:
    """One runner, settings file and kubeconfig: one path, in $XDG_RUNTIME_DIR/runner-driver."""
    env = job_env(tmp_path)
    other_job = job_env(tmp_path, TMPDIR="/builds/tmp/43", RUNNER_DRIVER_NONCE=OTHER_NONCE,
                        CUSTOM_ENV_CI_JOB_ID="43")
    path = socket_path(env, SPEC, RUNNER_PID)
    assert os.path.dirname(path) == str(tmp_path / "runner-driver")
    name = os.path.basename(path)
    assert name.startswith(agent_client.SOCKET_PREFIX) and name.endswith(".sock")
    assert path == socket_path(dict(env), SPEC, RUNNER_PID) == \
        socket_path(other_job, SPEC, RUNNER_PID)


@pytest.mark.parametrize("changed", [
    {"CUSTOM_ENV_CI_JOB_ID": "43"}, {"CUSTOM_ENV_CI_PROJECT_ID": "8"},
    {"CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN": "other"}, {"CUSTOM_ENV_CI_PIPELINE_ID": "9"},
    {"TMPDIR": "/elsewhere/tmp"}, {"TMPDIR": ""},
    {"RUNNER_DRIVER_NONCE": OTHER_NONCE}, {"RUNNER_DRIVER_NONCE": ""},
], ids=lambda changed: "-".join(f"{k}={v}" for k, v in changed.items()))
def test_job_variables_tmpdir_and_nonce_do_not_name_the_socket(
        tmp_path: Path, changed: dict[str, str]) -> None:
    """What a job's variables claim, its TMPDIR and its nonce play no part in the name."""
    assert socket_path(job_env(tmp_path), SPEC, RUNNER_PID) == \
        socket_path(job_env(tmp_path, **changed), SPEC, RUNNER_PID)


@pytest.mark.parametrize(("spec", "runner_pid", "changed"), [
    pytest.param("/etc/runner-driver/other.toml", RUNNER_PID, {}, id="settings-file"),
    pytest.param("", RUNNER_PID, {}, id="no-settings-file"),
    pytest.param(SPEC, RUNNER_PID + 1, {}, id="runner-process"),
    pytest.param(SPEC, RUNNER_PID, {"KUBECONFIG": "/elsewhere/config"}, id="kubeconfig"),
    pytest.param(SPEC, RUNNER_PID, {"KUBECONFIG": ""}, id="no-kubeconfig"),
])
def test_another_runner_settings_or_cluster_gets_another_socket(
        tmp_path: Path, spec: str, runner_pid: int, changed: dict[str, str]) -> None:
    """Another gitlab-runner process, --config or KUBECONFIG never shares an agent."""
    assert socket_path(job_env(tmp_path), SPEC, RUNNER_PID) != \
        socket_path(job_env(tmp_path, **changed), spec, runner_pid)
    # Neighbouring runner pids never collide either.
    env = job_env(tmp_path)
    assert len({socket_path(env, SPEC, pid) for pid in range(1000, 1300)}) == 300


@pytest.mark.parametrize("runtime", [None, "", "run/user/0", "./runtime"],
                         ids=["unset", "empty", "relative", "dot-relative"])
def test_without_an_absolute_runtime_directory_agents_live_in_tmp(
        tmp_path: Path, runtime: str | None) -> None:
    """An unset, empty or relative XDG_RUNTIME_DIR gives /tmp/runner-driver-UID, never TMPDIR."""
    env = job_env(tmp_path)
    if runtime is None:
        del env["XDG_RUNTIME_DIR"]
    else:
        env["XDG_RUNTIME_DIR"] = runtime
    fallback = f"/tmp/runner-driver-{os.getuid()}"
    assert agent_client.agent_directory(env) == fallback
    path = socket_path(env, SPEC, RUNNER_PID)
    assert os.path.dirname(path) == fallback
    # Only the directory changes with it, never the name.
    assert os.path.basename(path) == os.path.basename(socket_path(job_env(tmp_path), SPEC,
                                                                  RUNNER_PID))


def test_config_spec_prefers_the_command_line() -> None:
    """--config wins over RUNNER_DRIVER_CONFIG; neither is resolved or read."""
    env = {"RUNNER_DRIVER_CONFIG": "/from/env.toml"}
    assert config_spec("/from/cli.toml", env) == "/from/cli.toml"
    assert config_spec(None, env) == "/from/env.toml"
    assert config_spec(None, {}) == ""


def test_private_directory_means_ours_and_closed_to_others(tmp_path: Path) -> None:
    """0700 and owned by us is private; group or world access, or no directory, is not."""
    probe = str(tmp_path / "x.sock")
    tmp_path.chmod(0o700)
    assert agent_client.private_directory(probe)
    for mode in (0o750, 0o701, 0o707):
        tmp_path.chmod(mode)
        assert not agent_client.private_directory(probe), oct(mode)
    assert not agent_client.private_directory(str(tmp_path / "missing" / "x.sock"))


# --- job_nonce: what `config` minted, or what `prepare` recorded ---------------------------


def recorded_job(tmp_path: Path) -> Path:
    """A private job directory holding the record `prepare` left, with OTHER_NONCE."""
    tmpdir = private_dir(tmp_path / "job")
    jobrecord.write(str(tmpdir), jobrecord.PodRecord("ns", "runner-42", OTHER_NONCE))
    return tmpdir


def test_job_nonce_comes_from_the_job_env(tmp_path: Path) -> None:
    """RUNNER_DRIVER_NONCE, as `config` handed it over in job_env, is the job's nonce."""
    assert jobrecord.NONCE_KEY == "RUNNER_DRIVER_NONCE"
    assert jobrecord.job_nonce(NONCE, "") == NONCE
    assert jobrecord.job_nonce(NONCE, str(private_dir(tmp_path / "job"))) == NONCE


def test_job_nonce_falls_back_to_the_record_prepare_left(tmp_path: Path) -> None:
    """Without a `config` stage (no nonce in job_env) the nonce is the one `prepare` recorded."""
    assert jobrecord.job_nonce("", str(recorded_job(tmp_path))) == OTHER_NONCE


def test_the_job_env_nonce_wins_over_the_record(tmp_path: Path) -> None:
    """When job_env has a nonce, a record (of an earlier attempt, say) does not replace it."""
    assert jobrecord.job_nonce(NONCE, str(recorded_job(tmp_path))) == NONCE


@pytest.mark.parametrize("tmpdir", ["", "job"], ids=["empty", "relative"])
def test_job_nonce_is_empty_without_env_or_usable_record(tmp_path: Path, tmpdir: str) -> None:
    """No nonce in the env and no record to read (no TMPDIR, a relative or missing one): none."""
    recorded_job(tmp_path)
    with contextlib.chdir(tmp_path):  # "job" names the record's directory, and is refused
        assert jobrecord.job_nonce("", tmpdir) == ""
    assert jobrecord.job_nonce("", str(tmp_path / "job" / "missing")) == ""


def test_job_nonce_trusts_no_record_in_a_directory_others_can_enter(tmp_path: Path) -> None:
    """A record that is not in a private directory could be anyone's: no nonce from it."""
    tmpdir = recorded_job(tmp_path)
    tmpdir.chmod(0o755)
    assert jobrecord.job_nonce("", str(tmpdir)) == ""


@pytest.mark.parametrize("malformed", ["not-a-nonce", NONCE.upper(), NONCE + "0", " " + NONCE])
def test_job_nonce_refuses_a_malformed_nonce_as_the_job_context_does(
        tmp_path: Path, malformed: str) -> None:
    """A nonce that is not 32 lowercase hex digits is none; like JobContext, use the record."""
    tmpdir = private_dir(tmp_path / "job")
    assert jobrecord.job_nonce(malformed, str(tmpdir)) == ""
    recorded_job(tmp_path)
    assert jobrecord.job_nonce(malformed, str(tmpdir)) == OTHER_NONCE
    payload = tmp_path / "response.json"  # as gitlab-runner writes JOB_RESPONSE_FILE
    payload.write_text('{"id": 42, "job_info": {"project_id": 7}}', encoding="utf-8")
    context = JobContext.from_env({"TMPDIR": str(tmpdir), "RUNNER_DRIVER_NONCE": malformed,
                                   "JOB_RESPONSE_FILE": str(payload)})
    assert context.nonce == OTHER_NONCE


# --- fake agents: listeners of our own uid that answer as told -----------------------------

Answer = Callable[[socket.socket, Reader, list[int]], None]
Received = list[tuple[Message | None, int]]


def hang_up(_conn: socket.socket, _reader: Reader, _fds: list[int]) -> None:
    """Say nothing and hang up."""


def reply(message: Message) -> Answer:
    """Answer with `message`, then hang up."""
    return lambda conn, _reader, _fds: send(conn, message)


def run_stage(code: int | None, out: bytes = b"", err: bytes = b"",
              stage_id: str = "") -> Answer:
    """Take the stage, wait for Go, write to its pipes, report `code` (None: vanish)."""
    def answer(conn: socket.socket, reader: Reader, fds: list[int]) -> None:
        send(conn, Accepted(stage_id))
        assert isinstance(reader.next(), Go)
        for fd, data in zip(fds, (out, err), strict=True):
            with open(fd, "wb", closefd=False) as pipe:
                pipe.write(data)
        if code is not None:
            send(conn, Exited(code))
    return answer


@contextlib.contextmanager
def fake_agent(path: str, answer: Answer = hang_up, count: int = 1) -> Iterator[Received]:
    """A listener at `path` for `count` connections: records each request with its number
    of descriptors, lets `answer` reply, then closes the descriptors and the connection."""
    received: Received = []
    errors: list[BaseException] = []
    with socket.socket(socket.AF_UNIX) as listener:
        agent_client.reach(path, listener.bind)
        listener.listen(4)
        listener.settimeout(20)

        def serve() -> None:
            try:
                for _ in range(count):
                    conn, _addr = listener.accept()
                    with conn:
                        conn.settimeout(20)
                        data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 4)
                        try:
                            reader = Reader(conn)
                            reader.feed(data)
                            received.append((reader.next(), len(fds)))
                            answer(conn, reader, list(fds))
                        finally:
                            for fd in fds:
                                os.close(fd)
            except BaseException as error:  # reported in the test's own thread
                errors.append(error)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield received
        finally:
            thread.join(timeout=30)
    assert not thread.is_alive(), "the fake agent did not finish"
    assert not errors, errors


# A stage process: our child, so we are its runner. It hands its stage over with its own
# environment and writes what became of it to argv[4]; its stdout and stderr are the stage's.
STAGE = """import json, os, sys
from runner_driver.agent_client import hand_over
handoff = hand_over(sys.argv[1], json.loads(sys.argv[2]), os.environ, sys.argv[3])
with open(sys.argv[4], "w") as report:
    json.dump(handoff and {"exit_code": handoff.exit_code, "canceled": handoff.canceled,
                           "stage_id": handoff.stage_id, "offset": handoff.offset}, report)
"""


@contextlib.contextmanager
def stage_process(tmp_path: Path, env: dict[str, str], stage: str,
                  arguments: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """STAGE running `stage` in `env`; killed if still running at the end."""
    with subprocess.Popen([sys.executable, "-c", STAGE, stage, json.dumps(arguments), SPEC,
                           str(tmp_path / "handoff.json")], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()


def handoff_of(tmp_path: Path) -> dict[str, Any] | None:
    """What the stage process reported of its hand-over."""
    result: dict[str, Any] | None = json.loads((tmp_path / "handoff.json").read_text())
    return result


BUILD = {"script": "/builds/step_script", "stage": "build_script"}


# --- what a stage sends, and what it makes of the answer ----------------------------------


def test_a_long_runtime_directory_still_gets_a_reachable_socket(tmp_path: Path) -> None:
    """A path past sun_path's 108 bytes is bound and reached through /proc/self/fd."""
    env = job_env(tmp_path / ("d" * 60) / ("e" * 60))
    path = agent_socket(env, SPEC, os.getpid())
    assert len(path) > agent_client.MAX_SOCKET_PATH
    name, directory = agent_client.address(path)
    assert directory is not None
    os.close(directory)
    assert name.startswith("/proc/self/fd/") and len(name) <= agent_client.MAX_SOCKET_PATH
    figures = Stats(pid=1, cpu_seconds=0.5, rss_kb=2, stages_served=3, stages_running=0, jobs=1)
    with fake_agent(path, reply(figures)) as received:
        assert stats_for(env, SPEC) == figures.as_dict()
    assert Path(path).is_socket()
    assert [type(request) for request, _fds in received] == [StatsRequest]


def test_hand_over_declines_when_no_agent_listens(tmp_path: Path) -> None:
    """No directory, no socket, or a stale one nobody listens on: None, the stage runs itself."""
    env = job_env(tmp_path)
    assert hand_over("run", BUILD, env, SPEC) is None
    path = agent_socket(env, SPEC)
    assert hand_over("run", BUILD, env, SPEC) is None
    with socket.socket(socket.AF_UNIX) as stale:
        agent_client.reach(path, stale.bind)  # bound, never listening: connect is refused
    assert Path(path).is_socket()
    assert hand_over("cleanup", {}, env, SPEC) is None
    assert stats_for(env, SPEC, runner_pid=os.getppid()) is None


@pytest.mark.parametrize("owner_mode", [
    pytest.param((None, 0o750), id="group"),
    pytest.param((None, 0o705), id="world"),
    pytest.param((NOBODY, 0o700), id="another-owner", marks=ROOT_ONLY),
])
def test_hand_over_declines_in_a_directory_that_is_not_ours_alone(
        tmp_path: Path, owner_mode: tuple[int | None, int]) -> None:
    """A listener in a directory others can enter, or another's, is not even connected to."""
    owner, mode = owner_mode
    env = job_env(tmp_path)
    path = agent_socket(env, SPEC)
    with socket.socket(socket.AF_UNIX) as listener:
        agent_client.reach(path, listener.bind)
        listener.listen(1)
        os.chmod(os.path.dirname(path), mode)
        if owner is not None:
            os.chown(os.path.dirname(path), owner, owner)
        assert hand_over("cleanup", {}, env, SPEC) is None
        assert stats_for(env, SPEC, runner_pid=os.getppid()) is None
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()  # we never even connected


def test_a_stage_request_carries_the_stage_its_arguments_and_whole_environment(
        tmp_path: Path) -> None:
    """The agent gets the stage, its arguments (script made absolute), all our env, two pipes."""
    raw = b"caf\xe9".decode(errors="surrogateescape")  # not UTF-8, as an environment may be
    env = job_env(tmp_path, RAW=raw, MULTILINE="a\nb=c")
    with fake_agent(agent_socket(env, SPEC), count=3) as received:
        # The fake hangs up without a greeting: each stage runs in-process.
        assert hand_over("run", {"script": "scripts/step.sh", "stage": "build_script"},
                         env, SPEC) is None
        assert hand_over("run", BUILD, env, SPEC) is None
        assert hand_over("cleanup", {}, env, SPEC) is None
    assert [(r.stage, r.arguments, r.environ, fds) for r, fds in received
            if isinstance(r, StageRequest)] == [
        ("run", {"script": str(Path.cwd() / "scripts/step.sh"), "stage": "build_script"},
         env, 2),
        ("run", BUILD, env, 2),
        ("cleanup", {}, env, 2),
    ]


@pytest.mark.parametrize("answer", [
    reply(Refused("the driver's settings changed")), reply(Exited(0)), reply(Go()),
    lambda conn, _reader, _fds: conn.sendall(b"op=launch\0\0"), hang_up,
], ids=["refused", "exited-unasked", "go", "garbage", "silence"])
def test_a_stage_the_agent_does_not_take_runs_here(tmp_path: Path, answer: Answer) -> None:
    """Refused, garbage, silence or any word but Accepted: None, so the stage runs in-process."""
    env = job_env(tmp_path)
    with fake_agent(agent_socket(env, SPEC), answer) as received:
        assert hand_over("prepare", {}, env, SPEC) is None
    assert [(type(request), fds) for request, fds in received] == [(StageRequest, 2)]


def test_stats_come_from_the_agent_of_the_calling_runner(tmp_path: Path) -> None:
    """stats_for asks the agent of this process's runner (itself, by default) for its figures."""
    env = job_env(tmp_path, RUNNER_DRIVER_CONFIG=SPEC)
    figures = Stats(pid=99, cpu_seconds=2.5, rss_kb=1024, stages_served=12, stages_running=1,
                    jobs=4)
    with fake_agent(agent_socket(env, SPEC, os.getpid()), reply(figures), count=2) as received:
        assert stats_for(env, None) == figures.as_dict()
        assert stats_for(env, SPEC, runner_pid=os.getpid()) == {
            "pid": 99, "cpu_seconds": 2.5, "rss_kb": 1024, "stages_served": 12,
            "stages_running": 1, "jobs": 4}
        assert stats_for(env, SPEC, runner_pid=os.getpid() + 1) is None  # nobody there
    assert [(type(request), fds) for request, fds in received] == [(StatsRequest, 0)] * 2


def test_a_finished_stage_returns_its_exit_code_and_output(tmp_path: Path) -> None:
    """Accepted, Go, Exited(7): the stage exits 7, its stdout and stderr copied byte for byte."""
    env = job_env(tmp_path)
    out = bytes(range(256)) * 1024  # not UTF-8, and more than a default pipe holds
    with fake_agent(agent_socket(env, SPEC, os.getpid()),
                    run_stage(7, out, b"a warning\n")) as received, \
            stage_process(tmp_path, env, "run", BUILD) as process:
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert handoff_of(tmp_path) == {"exit_code": 7, "canceled": False, "stage_id": "",
                                    "offset": 0}
    assert stdout == out
    assert stderr == b"a warning\n"
    assert [(type(request), fds) for request, fds in received] == [(StageRequest, 2)]


def test_an_agent_lost_mid_stage_leaves_where_run_resumes(tmp_path: Path) -> None:
    """Accepted, then gone without Exited: no exit code, but the stage id and bytes copied."""
    env = job_env(tmp_path)
    with fake_agent(agent_socket(env, SPEC, os.getpid()),
                    run_stage(None, b"12345", stage_id="run-build_script-1")), \
            stage_process(tmp_path, env, "run", BUILD) as process:
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert handoff_of(tmp_path) == {"exit_code": None, "canceled": False,
                                    "stage_id": "run-build_script-1", "offset": 5}
    assert stdout == b"12345"
    assert b"ended without finishing the build_script stage" in stderr


def test_sigterm_after_acceptance_is_sent_on_as_a_cancel(tmp_path: Path) -> None:
    """SIGTERM once the agent took the stage becomes a Cancel; the stage's exit code comes back."""
    env = job_env(tmp_path)
    started = threading.Event()
    after_go: list[Message | None] = []

    def answer(conn: socket.socket, reader: Reader, _fds: list[int]) -> None:
        send(conn, Accepted("run-build_script-2"))
        assert isinstance(reader.next(), Go)
        started.set()
        after_go.append(reader.next())
        send(conn, Exited(3))

    with fake_agent(agent_socket(env, SPEC, os.getpid()), answer), \
            stage_process(tmp_path, env, "run", BUILD) as process:
        assert started.wait(timeout=30)
        process.send_signal(signal.SIGTERM)
        _stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert [type(message).__name__ for message in after_go] == ["Cancel"]
    assert handoff_of(tmp_path) == {"exit_code": 3, "canceled": False,
                                    "stage_id": "", "offset": 0}


def test_sigterm_before_acceptance_cancels_without_a_go(tmp_path: Path) -> None:
    """SIGTERM while the agent has not answered yet: canceled, and the agent never hears Go."""
    env = job_env(tmp_path)
    asked = threading.Event()
    after_request: list[Message | None] = []

    def answer(_conn: socket.socket, reader: Reader, _fds: list[int]) -> None:
        asked.set()
        after_request.append(reader.next())

    with fake_agent(agent_socket(env, SPEC, os.getpid()), answer), \
            stage_process(tmp_path, env, "run", BUILD) as process:
        assert asked.wait(timeout=30)
        process.send_signal(signal.SIGTERM)
        _stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert after_request == [None]  # it hung up, having said nothing more
    assert handoff_of(tmp_path) == {"exit_code": None, "canceled": True,
                                    "stage_id": "", "offset": 0}


# --- whom a stage talks to -----------------------------------------------------------------

# A listener in a child process: binds at argv[1] while still root, becomes argv[2] (a uid,
# or "same"), only then listens (SO_PEERCRED reports who called listen), says "ready", and
# reports what the first connection sent before it hung up.
LISTENER = """import os, socket, sys
from runner_driver.agent_client import reach
s = socket.socket(socket.AF_UNIX)
reach(sys.argv[1], s.bind)
if sys.argv[2] != "same":
    os.setgroups([]); os.setgid(int(sys.argv[2])); os.setuid(int(sys.argv[2]))
s.listen(1)
print("ready", os.getuid(), flush=True)
s.settimeout(20)
conn, _ = s.accept()
conn.settimeout(20)
data = b""
while chunk := conn.recv(65536):
    data += chunk
print(repr(data), flush=True)
"""


@contextlib.contextmanager
def listener_as(path: str, uid: int | None) -> Iterator[subprocess.Popen[str]]:
    """LISTENER at `path`, running as `uid` (None: as we are), once it listens."""
    process = subprocess.Popen([sys.executable, "-c", LISTENER, path,
                                "same" if uid is None else str(uid)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()
        assert ready == f"ready {os.getuid() if uid is None else uid}\n", process.stderr
        yield process
    finally:
        process.kill()
        process.communicate(timeout=10)


def test_a_listener_of_our_own_uid_is_connected_to(tmp_path: Path) -> None:
    """connect() reaches a listener of our uid, and peer_uid reports that uid."""
    path = agent_socket(job_env(tmp_path), SPEC)
    with listener_as(path, None) as process:
        conn = agent_client.connect(path)
        assert conn is not None
        try:
            assert agent_client.peer_uid(conn) == os.getuid()
            conn.sendall(b"hello")
        finally:
            conn.close()
        assert process.stdout is not None
        assert process.stdout.readline() == "b'hello'\n"


@ROOT_ONLY
def test_peer_uid_is_the_uid_that_listens(tmp_path: Path) -> None:
    """peer_uid reports the listener's uid (SO_PEERCRED), not ours nor the socket file's."""
    path = agent_socket(job_env(tmp_path), SPEC)
    with listener_as(path, NOBODY), socket.socket(socket.AF_UNIX) as probe:
        agent_client.reach(path, probe.connect)
        assert agent_client.peer_uid(probe) == NOBODY
    assert Path(path).stat().st_uid == 0  # bound while it was still root


@ROOT_ONLY
@pytest.mark.parametrize("call", ["connect", "hand_over", "stats_for"])
def test_a_listener_of_another_uid_is_told_nothing(tmp_path: Path, call: str) -> None:
    """At the runner's own socket path, a listener of another uid gets no byte at all."""
    env = job_env(tmp_path)
    # hand_over's runner is its parent; stats_for's, by default, itself.
    path = agent_socket(env, SPEC, os.getpid() if call == "stats_for" else os.getppid())
    with listener_as(path, NOBODY) as process:
        if call == "connect":
            assert agent_client.connect(path) is None
        elif call == "hand_over":
            assert hand_over("run", BUILD, env, SPEC) is None
        else:
            assert stats_for(env, SPEC) is None
        assert process.stdout is not None
        assert process.stdout.readline() == "b''\n"  # it was hung up on without a byte
