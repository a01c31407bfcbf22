"""The light side of the agent: where its socket is, which job's nonce it names, whom a
stage will talk to, and when a stage does not use one."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner_driver import agent_client, jobrecord
from runner_driver.agent_client import (
    Messages,
    config_spec,
    encode,
    hand_over,
    job_nonce,
    number,
    socket_path,
    stats_for,
)
from runner_driver.runner_env import JobContext, new_nonce
from tests.conftest import ROOT_ONLY

# The job's nonce as `config` mints it, and another job's.
NONCE = "0123456789abcdef0123456789abcdef"
OTHER_NONCE = "fedcba9876543210fedcba9876543210"
NOBODY = 65534


def job_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"TMPDIR": str(tmp_path), "RUNNER_DRIVER_NONCE": NONCE,
            "CUSTOM_ENV_CI_JOB_ID": "42", "CUSTOM_ENV_CI_PROJECT_ID": "7",
            "CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN": "t0k3n",
            "KUBECONFIG": "/home/runner/.kube/config", **extra}


def test_socket_lives_in_the_jobs_temporary_directory(tmp_path: Path) -> None:
    """The path is in $TMPDIR and the same for every stage of the job."""
    env = job_env(tmp_path)
    path = socket_path(env, "/etc/runner-driver/config.toml", NONCE)
    assert path is not None
    assert os.path.dirname(path) == str(tmp_path)
    assert os.path.basename(path).startswith(agent_client.SOCKET_PREFIX)
    assert path == socket_path(dict(env), "/etc/runner-driver/config.toml", NONCE)


def test_each_nonce_gets_its_own_socket(tmp_path: Path) -> None:
    """Another nonce (another job, or another prepare attempt) names another socket."""
    env = job_env(tmp_path)
    nonces = [NONCE, OTHER_NONCE, *(new_nonce() for _ in range(50))]
    paths = {socket_path(env, "/a.toml", nonce) for nonce in nonces}
    assert None not in paths
    assert len(paths) == len(set(nonces))


def test_another_cluster_gets_another_socket(tmp_path: Path) -> None:
    """The kubeconfig is part of the name."""
    assert socket_path(job_env(tmp_path), "", NONCE) != \
        socket_path(job_env(tmp_path, KUBECONFIG="/elsewhere"), "", NONCE)


@pytest.mark.parametrize("changed", [
    {"CUSTOM_ENV_CI_JOB_ID": "43"}, {"CUSTOM_ENV_CI_PROJECT_ID": "8"},
    {"CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN": "other"}, {"CUSTOM_ENV_CI_PIPELINE_ID": "9"},
])
def test_job_variables_do_not_name_the_socket(tmp_path: Path, changed: dict[str, str]) -> None:
    """What a job's variables claim (its id, project, token) plays no part in the name."""
    assert socket_path(job_env(tmp_path), "", NONCE) == \
        socket_path(job_env(tmp_path, **changed), "", NONCE)


def test_another_settings_file_gets_another_socket(tmp_path: Path) -> None:
    """Stages told a different --config never share an agent."""
    env = job_env(tmp_path)
    assert socket_path(env, "/a.toml", NONCE) != socket_path(env, "/b.toml", NONCE)


@pytest.mark.parametrize(("drop", "tmpdir", "nonce"), [
    pytest.param("TMPDIR", None, NONCE, id="no-tmpdir"),
    pytest.param(None, "", NONCE, id="empty-tmpdir"),
    pytest.param(None, "relative/dir", NONCE, id="relative-tmpdir"),
    pytest.param(None, None, "", id="no-nonce"),
    pytest.param("TMPDIR", None, "", id="neither"),
])
def test_no_socket_without_a_usable_job_directory_or_nonce(
        tmp_path: Path, drop: str | None, tmpdir: str | None, nonce: str) -> None:
    """No TMPDIR, a relative one, or no nonce: no agent."""
    env = job_env(tmp_path)
    if drop:
        del env[drop]
    if tmpdir is not None:
        env["TMPDIR"] = tmpdir
    assert socket_path(env, "", nonce) is None


# --- job_nonce: what `config` minted, or what `prepare` recorded --------------------------


def payload_file(directory: Path) -> Path:
    """A minimal job payload, as gitlab-runner writes JOB_RESPONSE_FILE."""
    path = directory / "response.json"
    path.write_text('{"id": 42, "job_info": {"project_id": 7}}', encoding="utf-8")
    return path


def private_tmpdir(tmp_path: Path) -> Path:
    """A job temporary directory as gitlab-runner makes it: ours, mode 0700."""
    tmpdir = tmp_path / "job"
    tmpdir.mkdir(mode=0o700)
    tmpdir.chmod(0o700)
    return tmpdir


def test_job_nonce_comes_from_the_job_env(tmp_path: Path) -> None:
    """RUNNER_DRIVER_NONCE, as `config` handed it over in job_env, is the job's nonce."""
    assert jobrecord.NONCE_KEY == "RUNNER_DRIVER_NONCE"
    assert job_nonce({"RUNNER_DRIVER_NONCE": NONCE}) == NONCE
    assert job_nonce(job_env(private_tmpdir(tmp_path))) == NONCE


def test_job_nonce_falls_back_to_the_record_prepare_left(tmp_path: Path) -> None:
    """Without a `config` stage (no job_env) the nonce is the one `prepare` recorded."""
    tmpdir = private_tmpdir(tmp_path)
    jobrecord.write(str(tmpdir), jobrecord.PodRecord("ns", "runner-42", OTHER_NONCE))
    env = job_env(tmpdir)
    del env["RUNNER_DRIVER_NONCE"]
    assert job_nonce(env) == OTHER_NONCE
    assert job_nonce(env | {"RUNNER_DRIVER_NONCE": ""}) == OTHER_NONCE


def test_the_job_env_nonce_wins_over_the_record(tmp_path: Path) -> None:
    """When job_env has a nonce, a record (of an earlier attempt, say) does not replace it."""
    tmpdir = private_tmpdir(tmp_path)
    jobrecord.write(str(tmpdir), jobrecord.PodRecord("ns", "runner-42", OTHER_NONCE))
    assert job_nonce(job_env(tmpdir)) == NONCE


@pytest.mark.parametrize("tmpdir", ["", "job", None], ids=["empty", "relative", "unset"])
def test_job_nonce_is_empty_without_env_or_usable_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmpdir: str | None) -> None:
    """No nonce in the env and no record to read (no TMPDIR, or a relative one): none."""
    jobrecord.write(str(private_tmpdir(tmp_path)),
                    jobrecord.PodRecord("ns", "runner-42", OTHER_NONCE))
    monkeypatch.chdir(tmp_path)  # "job" names the record's directory, and is still refused
    assert job_nonce({} if tmpdir is None else {"TMPDIR": tmpdir}) == ""
    assert job_nonce({"TMPDIR": str(tmp_path / "job" / "missing")}) == ""


def test_job_nonce_trusts_no_record_in_a_directory_others_can_enter(tmp_path: Path) -> None:
    """A record that is not in a private directory could be anyone's: no nonce from it."""
    tmpdir = private_tmpdir(tmp_path)
    jobrecord.write(str(tmpdir), jobrecord.PodRecord("ns", "runner-42", OTHER_NONCE))
    tmpdir.chmod(0o755)
    assert job_nonce({"TMPDIR": str(tmpdir)}) == ""


@pytest.mark.parametrize("malformed", ["not-a-nonce", NONCE.upper(), NONCE + "0", " " + NONCE])
def test_job_nonce_refuses_a_malformed_nonce_as_the_job_context_does(
        tmp_path: Path, malformed: str) -> None:
    """A RUNNER_DRIVER_NONCE that is not 32 lowercase hex digits is no nonce, as for JobContext."""
    tmpdir = private_tmpdir(tmp_path)
    env = job_env(tmpdir, RUNNER_DRIVER_NONCE=malformed)
    assert job_nonce(env) == ""
    jobrecord.write(str(tmpdir), jobrecord.PodRecord("ns", "runner-42", OTHER_NONCE))
    # Both fall back to the record `prepare` left, and agree.
    assert job_nonce(env) == OTHER_NONCE
    context = JobContext.from_env({**env, "JOB_RESPONSE_FILE": str(payload_file(tmp_path))})
    assert context.nonce == OTHER_NONCE


def test_a_long_job_directory_still_gets_a_reachable_socket(tmp_path: Path) -> None:
    """A path past sun_path's 108 bytes is bound and reached through /proc/self/fd."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True, mode=0o700)
    path = socket_path(job_env(deep), "", NONCE)
    assert path is not None and len(path) > agent_client.MAX_SOCKET_PATH
    name, directory = agent_client.address(path)
    assert directory is not None and len(name) < 40
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(name)
        os.close(directory)
        listener.listen(1)
        conn = agent_client.connect(path)
        assert conn is not None
        conn.close()
    assert Path(path).exists()


def test_config_spec_prefers_the_command_line(tmp_path: Path) -> None:
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
    tmp_path.chmod(0o750)
    assert not agent_client.private_directory(probe)
    assert not agent_client.private_directory(str(tmp_path / "missing" / "x.sock"))


def test_hand_over_declines_when_no_agent_listens(tmp_path: Path) -> None:
    """No socket, or a stale one nobody listens on: None, so the stage runs itself."""
    tmp_path.chmod(0o700)
    env = job_env(tmp_path)
    assert hand_over("run", {"script": "/s", "stage": "build_script"}, env, "") is None
    path = socket_path(env, "", NONCE)
    assert path is not None
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(path)  # bound, never listening: connect is refused
    assert hand_over("cleanup", {}, env, "") is None
    assert stats_for(env, None) is None


def test_hand_over_declines_in_a_directory_others_can_enter(tmp_path: Path) -> None:
    """A listener in a non-private directory is not trusted with the job."""
    env = job_env(tmp_path)
    path = socket_path(env, "", NONCE)
    assert path is not None
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(1)
        tmp_path.chmod(0o755)
        assert hand_over("cleanup", {}, env, "") is None
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()  # we never even connected


def test_messages_round_trip_any_path_and_split_anywhere() -> None:
    """Fields survive newlines, `=`, non-UTF-8 bytes; a message may arrive in pieces."""
    sent = {"op": "stage", "arg.script": "/tmp/a b\nc=d/\udcff.sh", "pid": "12"}
    data = encode(sent) + encode({}) + encode({"exit": 3})
    left, right = socket.socketpair()
    with left, right:
        messages = Messages(left)
        for i in range(len(data)):  # one byte at a time
            messages.feed(data[i:i + 1])
        assert messages.take() == [sent, {}, {"exit": "3"}]
        assert number({"exit": "3"}, "exit") == 3
        assert number({"exit": "-1"}, "exit") is None


def test_messages_refuse_garbage_and_floods() -> None:
    """A field without `=`, or a message over the limit, is an error, not a guess."""
    left, right = socket.socketpair()
    with left, right:
        with pytest.raises(ValueError, match="malformed"):
            Messages(left).feed(b"novalue\0\0")
        with pytest.raises(ValueError, match="too long"):
            Messages(left).feed(b"k=" + b"x" * agent_client.MESSAGE_LIMIT)
        right.sendall(encode({"exit": 0}))
        right.close()
        reader = Messages(left)
        assert reader.next() == {"exit": "0"}
        assert reader.next() is None


def test_sigterm_is_forwarded_to_the_stage_process_not_to_its_old_number() -> None:
    """A forwarded SIGTERM reaches the process aimed at, never a later holder of its pid."""
    stage = subprocess.Popen(["sleep", "30"])
    bystander = subprocess.Popen(["sleep", "30"])
    forwarder = agent_client._TermForwarder()
    try:
        forwarder.aim(stage.pid)
        # As if the agent had reaped the stage process and the host reused its number.
        forwarder.target = bystander.pid
        forwarder.pending = True
        forwarder.forward()
        assert stage.wait(timeout=10) == -signal.SIGTERM
        assert bystander.poll() is None
    finally:
        forwarder.uninstall()
        for process in (stage, bystander):
            process.kill()
            process.wait()
    assert forwarder.pidfd == -1


# --- whom a stage talks to, and what it tells them -----------------------------------------


@contextlib.contextmanager
def recording_listener(path: str, count: int) -> Iterator[list[dict[str, str]]]:
    """A listener of our own uid at `path` that records `count` requests, hanging up on each."""
    received: list[dict[str, str]] = []
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(4)
        listener.settimeout(10)

        def serve() -> None:
            with contextlib.suppress(OSError, ValueError):
                for _ in range(count):
                    conn, _ = listener.accept()
                    with conn:
                        data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 2)
                        for fd in fds:
                            os.close(fd)
                        messages = Messages(conn)
                        messages.feed(data)
                        request = messages.next()
                        if request is not None:
                            received.append(request)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        yield received
        thread.join(timeout=10)


def test_requests_carry_the_jobs_nonce_from_the_job_env(tmp_path: Path) -> None:
    """Stage and stats requests carry RUNNER_DRIVER_NONCE, to the socket that nonce names."""
    tmpdir = private_tmpdir(tmp_path)
    env = job_env(tmpdir)
    path = socket_path(env, "/c.toml", NONCE)
    assert path is not None
    with recording_listener(path, 2) as received:
        assert hand_over("run", {"script": "/s", "stage": "build_script"}, env, "/c.toml") \
            is None  # hung up without a greeting: the stage runs in-process
        assert stats_for(env, "/c.toml") is None
    assert [(r["op"], r.get("stage"), r["nonce"]) for r in received] == \
        [("stage", "run", NONCE), ("stats", None, NONCE)]


def test_requests_carry_the_recorded_nonce_without_a_config_stage(tmp_path: Path) -> None:
    """With no nonce in job_env, stages use the one `prepare` recorded, socket and request."""
    tmpdir = private_tmpdir(tmp_path)
    jobrecord.write(str(tmpdir), jobrecord.PodRecord("ns", "runner-42", OTHER_NONCE))
    env = job_env(tmpdir)
    del env["RUNNER_DRIVER_NONCE"]
    path = socket_path(env, "", OTHER_NONCE)
    assert path is not None
    with recording_listener(path, 1) as received:
        assert hand_over("cleanup", {}, env, "") is None
    assert [(r["op"], r["stage"], r["nonce"]) for r in received] == \
        [("stage", "cleanup", OTHER_NONCE)]


def test_no_request_without_a_nonce(tmp_path: Path) -> None:
    """A job with no nonce at all hands nothing over and asks for no stats."""
    tmpdir = private_tmpdir(tmp_path)
    env = job_env(tmpdir)
    del env["RUNNER_DRIVER_NONCE"]
    assert hand_over("cleanup", {}, env, "") is None
    assert stats_for(env, None) is None
    assert list(tmpdir.iterdir()) == []


# A listener in a child process: binds at argv[1] while still root, becomes argv[2] (a uid,
# or "same"), only then listens (SO_PEERCRED reports who called listen), says "ready", and
# reports what the first connection sent before it hung up.
LISTENER = """import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
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
    path = str(private_tmpdir(tmp_path) / "own.sock")
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
    path = str(private_tmpdir(tmp_path) / "nobody.sock")
    with listener_as(path, NOBODY), socket.socket(socket.AF_UNIX) as probe:
        probe.connect(path)
        assert agent_client.peer_uid(probe) == NOBODY
    assert Path(path).stat().st_uid == 0  # bound while it was still root


@ROOT_ONLY
@pytest.mark.parametrize("call", ["connect", "hand_over", "stats_for"])
def test_a_listener_of_another_uid_is_told_nothing(tmp_path: Path, call: str) -> None:
    """At the job's own socket path, a listener of another uid gets no request, no nonce."""
    env = job_env(private_tmpdir(tmp_path))
    path = socket_path(env, "", NONCE)
    assert path is not None
    with listener_as(path, NOBODY) as process:
        if call == "connect":
            assert agent_client.connect(path) is None
        elif call == "hand_over":
            assert hand_over("run", {"script": "/s", "stage": "build_script"}, env, "") is None
        else:
            assert stats_for(env, None) is None
        assert process.stdout is not None
        assert process.stdout.readline() == "b''\n"  # it was hung up on without a byte
