"""The light side of the agent: where its socket is, and when a stage does not use one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from runner_driver import agent_client
from runner_driver.agent_client import (
    Messages,
    config_spec,
    encode,
    hand_over,
    number,
    socket_path,
    stats_for,
)


def job_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"TMPDIR": str(tmp_path), "CUSTOM_ENV_CI_JOB_ID": "42",
            "CUSTOM_ENV_CI_PROJECT_ID": "7", "CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN": "t0k3n",
            "KUBECONFIG": "/home/runner/.kube/config", **extra}


def test_socket_lives_in_the_jobs_temporary_directory(tmp_path: Path) -> None:
    """The path is in $TMPDIR and the same for every stage of the job."""
    env = job_env(tmp_path)
    path = socket_path(env, "/etc/runner-driver/config.toml")
    assert path is not None
    assert os.path.dirname(path) == str(tmp_path)
    assert os.path.basename(path).startswith(agent_client.SOCKET_PREFIX)
    assert path == socket_path(dict(env), "/etc/runner-driver/config.toml")


@pytest.mark.parametrize("changed", [
    {"CUSTOM_ENV_CI_JOB_ID": "43"}, {"CUSTOM_ENV_CI_PROJECT_ID": "8"},
    {"CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN": "other"}, {"KUBECONFIG": "/elsewhere"},
])
def test_another_job_or_cluster_gets_another_socket(tmp_path: Path,
                                                    changed: dict[str, str]) -> None:
    """Job identity and kubeconfig are part of the name."""
    assert socket_path(job_env(tmp_path), "") != socket_path(job_env(tmp_path, **changed), "")


def test_another_settings_file_gets_another_socket(tmp_path: Path) -> None:
    """Stages told a different --config never share an agent."""
    env = job_env(tmp_path)
    assert socket_path(env, "/a.toml") != socket_path(env, "/b.toml")


@pytest.mark.parametrize(("drop", "tmpdir"), [
    ("TMPDIR", None), ("CUSTOM_ENV_CI_JOB_ID", None), (None, "relative/dir"),
])
def test_no_socket_without_a_usable_job_directory(tmp_path: Path, drop: str | None,
                                                  tmpdir: str | None) -> None:
    """No TMPDIR, no job id, or a relative TMPDIR: no agent."""
    env = job_env(tmp_path)
    if drop:
        del env[drop]
    if tmpdir:
        env["TMPDIR"] = tmpdir
    assert socket_path(env, "") is None


def test_a_long_job_directory_still_gets_a_reachable_socket(tmp_path: Path) -> None:
    """A path past sun_path's 108 bytes is bound and reached through /proc/self/fd."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True, mode=0o700)
    path = socket_path(job_env(deep), "")
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
    path = socket_path(env, "")
    assert path is not None
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(path)  # bound, never listening: connect is refused
    assert hand_over("cleanup", {}, env, "") is None
    assert stats_for(env, None) is None


def test_hand_over_declines_in_a_directory_others_can_enter(tmp_path: Path) -> None:
    """A listener in a non-private directory is not trusted with the job."""
    env = job_env(tmp_path)
    path = socket_path(env, "")
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
