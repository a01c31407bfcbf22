"""The command line: `local-cluster` serving and cleaning up, `demo`, and missing host tools."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.stream import stream

from tests.conftest import KANIKO, KANIKO_IDLE, wait_for


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "runner_driver.cli", *args]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and \
        Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_local_cluster_serves_and_cleans_up_on_sigterm(tmp_path: Path) -> None:
    """`local-cluster` writes a kubeconfig when ready; SIGTERM kills sandboxes and removes files."""
    kubeconfig = tmp_path / "kubeconfig"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    process = subprocess.Popen(_cli("local-cluster", "--kubeconfig", str(kubeconfig)),
                               env={**os.environ, "TMPDIR": str(scratch)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(kubeconfig.exists, 20, what="the kubeconfig")
        api = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
        assert api.read_namespace("default").status.phase == "Active"
        api.create_namespaced_pod("default", {
            "metadata": {"name": "p"},
            "spec": {"restartPolicy": "Never", "containers": [
                {"name": "build", "image": KANIKO, "command": KANIKO_IDLE}]}})

        def pid_one() -> int | None:
            pod = api.read_namespaced_pod("p", "default")
            if pod.status.phase != "Running":
                return None
            # The container's PID 1 is a child of bwrap, a child of the cluster process.
            out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True,
                                 check=True).stdout
            pids = [int(line.split()[0]) for line in out.splitlines()
                    if "while :; do sleep 1" in line and "bwrap" not in line]
            return pids[0] if pids else None

        sandbox_pid = wait_for(pid_one, 20, what="the sandbox process")
        assert any(scratch.iterdir())
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()
    assert b"serving on http://127.0.0.1:" in err
    assert b"stopped" in err
    wait_for(lambda: not _alive(sandbox_pid), 10, what="the sandbox to die")
    assert list(scratch.iterdir()) == []


def test_local_cluster_honours_port(tmp_path: Path) -> None:
    """`--port` chooses the port the kubeconfig points at."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kubeconfig = tmp_path / "kc"
    process = subprocess.Popen(_cli("local-cluster", "--kubeconfig", str(kubeconfig),
                                    "--port", str(port)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(kubeconfig.exists, 20, what="the kubeconfig")
        assert f"http://127.0.0.1:{port}" in kubeconfig.read_text()
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    assert process.returncode == 0


def _path_with(tmp_path: Path, tools: dict[str, str]) -> str:
    """A PATH holding only the named tools (name -> real binary)."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for name, target in tools.items():
        (directory / name).symlink_to(target)
    return str(directory)


@pytest.mark.parametrize(("tools", "expected"), [
    pytest.param({"busybox": "busybox"}, "apt-get install bubblewrap", id="no-bwrap"),
    pytest.param({"bwrap": "bwrap"}, "apt-get install busybox-static", id="no-busybox"),
    pytest.param({"bwrap": "bwrap", "busybox": "ls"}, "dynamically linked", id="dynamic-busybox"),
])
def test_missing_host_tool_gives_one_clear_error(tmp_path: Path, tools: dict[str, str],
                                                 expected: str) -> None:
    """A missing or unsuitable bwrap or busybox stops the cluster with one line naming the fix."""
    resolved = {name: shutil.which(target) or target for name, target in tools.items()}
    result = subprocess.run(_cli("local-cluster", "--kubeconfig", str(tmp_path / "kc")),
                            env={**os.environ, "PATH": _path_with(tmp_path, resolved)},
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert not (tmp_path / "kc").exists()


def test_demo_runs_a_job_and_says_what_is_emulated() -> None:
    """`demo` runs every stage successfully and says the cluster and kaniko are stand-ins."""
    started = time.monotonic()
    result = subprocess.run(_cli("demo"), capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "EMULATED" in out and "STAND-IN" in out
    assert "Checked out" in out
    assert "no git, no bash" in out
    assert "get_sources" in out and "build_script" in out
    assert "job succeeded" in out
    assert time.monotonic() - started < 60


def test_local_cluster_runs_without_root(tmp_path: Path) -> None:
    """As an ordinary user (uid 1000 in a user namespace) pods start and exec works."""
    kubeconfig = tmp_path / "kubeconfig"
    process = subprocess.Popen(
        ["unshare", "--user", "--map-user=1000", "--map-group=1000",
         *_cli("local-cluster", "--kubeconfig", str(kubeconfig))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(kubeconfig.exists, 20, what="the kubeconfig")
        api = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
        api.create_namespaced_pod("default", {
            "metadata": {"name": "p"},
            "spec": {"restartPolicy": "Never", "containers": [
                {"name": "build", "image": KANIKO, "command": KANIKO_IDLE,
                 "workingDir": "/workspace/src"}]}})
        wait_for(lambda: api.read_namespaced_pod("p", "default").status.phase == "Running",
                 20, what="the pod to run")
        exec_api = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
        session = stream(exec_api.connect_get_namespaced_pod_exec, "p", "default",
                         command=["/busybox/sh", "-c", "pwd; cat /proc/1/cmdline; exit 4"],
                         stdout=True, stderr=True, stdin=False, tty=False,
                         _preload_content=False)
        session.run_forever(timeout=20)
        out = session.read_stdout()
        assert out.startswith("/workspace/src\n")
        assert "while :; do sleep 1" in out
        assert session.returncode == 4
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()
    assert b"stopped" in err
