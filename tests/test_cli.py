"""The command line: `local-cluster` serving and cleaning up, `demo`, missing host tools,
and how every stage's outcome maps to the exit codes gitlab-runner expects."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from kubernetes import client, config
from kubernetes.stream import stream

from runner_driver import cli, jobrecord
from runner_driver.emulator import EmulatedCluster
from runner_driver.emulator.runner import Job, bash_script
from runner_driver.runner_env import new_nonce
from tests.conftest import KANIKO, KANIKO_IDLE, job_pod, next_job_id, wait_for


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
    """`demo` runs a kaniko-style job through every real stage and says what is emulated."""
    started = time.monotonic()
    result = subprocess.run(_cli("demo"), capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "EMULATED" in out and "STAND-IN" in out
    assert "Checking out" in out and "stand-in: checks passed" in out
    for stage in ("config", "prepare", "prepare_script", "get_sources", "build_script",
                  "after_script", "cleanup_file_variables", "cleanup"):
        assert re.search(rf"^  {stage} +exit 0 ", out, re.MULTILINE), stage
    assert "job success" in out
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
        # Seen empty once under a parallel full run: say what the exec did if it recurs.
        assert out.startswith("/workspace/src\n"), \
            (out, session.read_stderr(), session.returncode)
        assert "while :; do sleep 1" in out
        assert session.returncode == 4
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()
    assert b"stopped" in err


# --- stage exit codes ---------------------------------------------------------------
# gitlab-runner reads only the exit code: SYSTEM_FAILURE_EXIT_CODE for anything but a
# failed script. These run the installed `runner-driver` with a controlled environment.

DRIVER = Path(sys.executable).parent / "runner-driver"
CODES = {"SYSTEM_FAILURE_EXIT_CODE": "5", "BUILD_FAILURE_EXIT_CODE": "4"}
CLEANUP_POD = "runner-0a1b2c3d-project-9-job-101"


def _job(tmp_path: Path, record: jobrecord.PodRecord | None = None) -> dict[str, str]:
    """The job's environment as gitlab-runner sets it: a payload for job 101 of project 9
    in a private TMPDIR, holding `record` as prepare would have left it."""
    tmpdir = tmp_path / "job"
    tmpdir.mkdir(mode=0o700, exist_ok=True)
    payload = tmpdir / "response.json"
    payload.write_text(json.dumps({"id": 101, "job_info": {"project_id": 9}}),
                       encoding="utf-8")
    if record is not None:
        jobrecord.write(str(tmpdir), record)
    return {"JOB_RESPONSE_FILE": str(payload), "TMPDIR": str(tmpdir)}
TOKEN = "glcbt-64_clitestsecrettoken42"


def _driver(tmp_path: Path, *args: str, env: dict[str, str],
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the installed CLI with only PATH, HOME and `env` in its environment."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    return subprocess.run([str(DRIVER), *args], env={**base, **env}, cwd=tmp_path,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig with one context pointing at `server`."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t0ken-for-tests"}}],
        "contexts": [{"name": "a", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "a"}), encoding="utf-8")
    return path


def _settings(path: Path, text: str) -> dict[str, str]:
    """Write driver settings and return the environment that selects them."""
    path.write_text(text, encoding="utf-8")
    return {"RUNNER_DRIVER_CONFIG": str(path)}


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(("codes", "expected"), [
    pytest.param({}, 2, id="runner-default"),
    pytest.param(CODES, 5, id="from-environment"),
])
def test_usage_error_is_a_system_failure(tmp_path: Path, codes: dict[str, str],
                                         expected: int) -> None:
    """`run` without its arguments exits with the system failure code, not argparse's 2."""
    result = _driver(tmp_path, "run", env=codes)
    assert result.returncode == expected
    assert "usage: runner-driver run" in result.stderr
    assert "the following arguments are required: script, stage" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("argv", [
    ["prepare"], ["cleanup"], ["run", "/tmp/custom-executor1/script1/script", "build_script"],
    ["--config", "/etc/rd.toml", "prepare"], ["--config=/etc/rd.toml", "cleanup"],
    ["--config", "", "run", "/s", "step_lint"], ["run", "relative/script", "get_sources"],
])
def test_stage_calls_read_without_argparse_as_argparse_reads_them(argv: list[str]) -> None:
    """The runner's exact stage calls take the fast reading, with argparse's result."""
    fast = cli.stage_call(argv)
    args = cli._parser().parse_args(argv)
    arguments = {"script": args.script, "stage": args.stage} if args.command == "run" else {}
    assert fast == (args.command, args.config, arguments)


@pytest.mark.parametrize("argv", [
    [], ["config"], ["gc"], ["demo"], ["--help"], ["run", "/s"], ["run", "/s", "a", "b"],
    ["run", "-h", "x"], ["run", "/s", "--stage"], ["--config", "-x", "prepare"],
    ["--conf", "/a.toml", "prepare"], ["prepare", "--config", "/a.toml"], ["--version"],
])
def test_everything_else_is_left_to_argparse(argv: list[str]) -> None:
    """Help, mistakes, abbreviations and other commands never take the fast reading."""
    assert cli.stage_call(argv) is None


def test_help_exits_zero(tmp_path: Path) -> None:
    """`--help` is a success and lists the four stages."""
    result = _driver(tmp_path, "--help", env=CODES)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: runner-driver")
    assert all(stage in result.stdout for stage in ("config", "prepare", "run", "cleanup"))


def test_missing_job_payload_is_one_line_naming_it(tmp_path: Path) -> None:
    """Without JOB_RESPONSE_FILE, config fails as a system failure naming it, stdout empty;
    job variables claiming the ids do not stand in for it."""
    result = _driver(tmp_path, "config", env={**CODES, "CUSTOM_ENV_CI_JOB_ID": "101",
                                              "CUSTOM_ENV_CI_PROJECT_ID": "9"})
    assert result.returncode == 5
    line = _one_line(result.stderr)
    assert line == ("runner-driver config: reading the job: JOB_RESPONSE_FILE is not set; "
                    "runner-driver stages must be started by gitlab-runner 14.1 or later "
                    "(custom executor)")
    assert result.stdout == ""  # the runner would try to parse anything here


def test_unknown_settings_key_is_one_line_naming_file_and_key(tmp_path: Path) -> None:
    """A typo in the driver's settings fails the stage with the file and the dotted key."""
    env = _settings(tmp_path / "driver.toml", '[pod]\nbuild_dir = "/b"\n')
    result = _driver(tmp_path, "prepare", env={**CODES, **_job(tmp_path), **env})
    assert result.returncode == 5
    line = _one_line(result.stderr)
    assert line.startswith("runner-driver prepare: ")
    assert str(tmp_path / "driver.toml") in line
    assert "pod.build_dir: unknown key" in line


@pytest.mark.parametrize("content", [
    pytest.param(None, id="missing"),
    pytest.param("directory", id="a-directory"),
    pytest.param("clusters: [unclosed\n", id="invalid-yaml"),
    pytest.param("just a string\n", id="not-a-mapping"),
])
def test_unusable_kubeconfig_is_one_line_naming_it(tmp_path: Path, content: str | None) -> None:
    """A kubeconfig that is missing or unreadable is a system failure naming the file."""
    kubeconfig = tmp_path / "kubeconfig"
    if content == "directory":
        kubeconfig.mkdir()
    elif content is not None:
        kubeconfig.write_text(content, encoding="utf-8")
    env = _settings(tmp_path / "driver.toml", f'[kubernetes]\nkubeconfig = "{kubeconfig}"\n')
    result = _driver(tmp_path, "config", env={**CODES, **_job(tmp_path), **env})
    assert result.returncode == 5
    line = _one_line(result.stderr)
    assert line.startswith(f"runner-driver config: loading cluster credentials from {kubeconfig}")
    assert "[kubernetes] kubeconfig" in line
    assert "unexpected error" not in line
    assert result.stdout == ""


def test_cleanup_against_an_unreachable_cluster_fails_after_the_retry_budget(
        tmp_path: Path) -> None:
    """With a pod recorded and the API down, cleanup retries (logged) within
    retry_timeout_seconds, then fails naming the recorded pod."""
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{_closed_port()}")
    env = _settings(tmp_path / "driver.toml", "[kubernetes]\nretry_timeout_seconds = 1.0\n")
    record = jobrecord.PodRecord("default", CLEANUP_POD, new_nonce(), uid="uid-of-the-pod")
    started = time.monotonic()
    result = _driver(tmp_path, "cleanup", timeout=30,
                     env={**CODES, **_job(tmp_path, record), **env,
                          "KUBECONFIG": str(kubeconfig)})
    assert time.monotonic() - started < 10
    assert result.returncode == 5
    *retries, last = result.stderr.strip().splitlines()
    assert last.startswith(f"runner-driver cleanup: deleting pod default/{CLEANUP_POD}: "
                           "cannot reach the Kubernetes API")
    assert retries, result.stderr
    for line in retries:
        assert "retrying a Kubernetes API call after a transient error" in line
        assert f"action='deleting pod default/{CLEANUP_POD}'" in line
        assert "stage=cleanup" in line and "job_id=101" in line


def test_cleanup_with_nothing_recorded_returns_at_once(tmp_path: Path) -> None:
    """No record (prepare created nothing): cleanup succeeds without calling the dead API."""
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{_closed_port()}")
    env = _settings(tmp_path / "driver.toml", "[kubernetes]\nretry_timeout_seconds = 30\n")
    started = time.monotonic()
    result = _driver(tmp_path, "cleanup", timeout=30,
                     env={**CODES, **_job(tmp_path), **env, "KUBECONFIG": str(kubeconfig)})
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 5  # far below the 30 s retry budget
    assert result.stderr == ""


# --- cleanup and SIGTERM -------------------------------------------------------------------
# gitlab-runner may SIGTERM cleanup (a cancel, a shutdown). Its delete is the whole point, so
# a request in flight may land, for at most cli.CLEANUP_SIGTERM_GRACE_SECONDS.

def _cleanup_against_slow_delete(tmp_path: Path, kubeconfig: Path, cluster: EmulatedCluster,
                                 core: client.CoreV1Api, namespace: str,
                                 latency: float) -> tuple[subprocess.Popen[str], float]:
    """Start `runner-driver cleanup` on a pod whose delete takes `latency` s; SIGTERM it while
    the delete is in flight. Returns the process and when SIGTERM was sent."""
    created = core.create_namespaced_pod(namespace, job_pod(CLEANUP_POD))
    record = jobrecord.PodRecord(namespace, CLEANUP_POD, new_nonce(), uid=created.metadata.uid)
    cluster.add_latency(latency, "DELETE", f"^/api/v1/namespaces/{namespace}/pods/{CLEANUP_POD}$",
                        count=1)
    env = _settings(tmp_path / "driver.toml", f'[kubernetes]\nnamespace = "{namespace}"\n')
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    before = cluster.request_counts().get("delete pods", 0)
    process = subprocess.Popen([str(DRIVER), "cleanup"],
                               env={**base, **CODES, **_job(tmp_path, record), **env,
                                    "KUBECONFIG": str(kubeconfig)},
                               cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        # The emulator logs a request when it arrives, before the injected latency: from
        # then on the delete is in flight and the driver's SIGTERM handler is installed.
        wait_for(lambda: cluster.request_counts().get("delete pods", 0) > before, 20,
                 what="cleanup's delete request")
    except BaseException:
        process.kill()
        process.communicate()
        raise
    process.send_signal(signal.SIGTERM)
    return process, time.monotonic()


@pytest.fixture
def unfaulted(cluster: EmulatedCluster) -> Iterator[EmulatedCluster]:
    """The module's emulated cluster, with every armed fault disarmed after the test."""
    yield cluster
    cluster.clear_faults()


def test_sigterm_lets_cleanups_delete_land(tmp_path: Path, kubeconfig: Path,
                                           unfaulted: EmulatedCluster, core: client.CoreV1Api,
                                           namespace: str) -> None:
    """SIGTERM during cleanup's delete lets it land: the pod is deleted and cleanup exits 0."""
    process, signaled = _cleanup_against_slow_delete(tmp_path, kubeconfig, unfaulted, core,
                                                     namespace, latency=1.5)
    _, err = process.communicate(timeout=30)
    assert time.monotonic() - signaled < cli.CLEANUP_SIGTERM_GRACE_SECONDS + 1.0
    assert process.returncode == 0, err

    def deleted() -> bool:
        pods = core.list_namespaced_pod(namespace).items
        return all(p.metadata.deletion_timestamp is not None for p in pods)

    wait_for(deleted, 10, what=f"{CLEANUP_POD} to be deleted")


def test_sigterm_stops_a_hanging_cleanup_after_the_grace(
        tmp_path: Path, kubeconfig: Path, unfaulted: EmulatedCluster,
        core: client.CoreV1Api, namespace: str) -> None:
    """A delete still hanging 3 s after SIGTERM is abandoned: system failure, "canceled"."""
    process, signaled = _cleanup_against_slow_delete(tmp_path, kubeconfig, unfaulted, core,
                                                     namespace, latency=5.0)
    _, err = process.communicate(timeout=30)
    waited = time.monotonic() - signaled
    assert cli.CLEANUP_SIGTERM_GRACE_SECONDS - 0.2 <= waited < \
        cli.CLEANUP_SIGTERM_GRACE_SECONDS + 1.5
    assert process.returncode == 5
    assert err.strip().splitlines()[-1] == \
        "runner-driver cleanup: canceled: gitlab-runner sent SIGTERM; stopped"


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """`cli.main` in this process: runner variables cleared; SIGTERM (its handler and mask)
    and structlog restored."""
    for name in [*os.environ]:
        if name.startswith("CUSTOM_ENV_") or name in (
                "KUBECONFIG", "RUNNER_DRIVER_CONFIG", "BUILD_EXIT_CODE_FILE", "JOB_RESPONSE_FILE",
                "RUNNER_DRIVER_POD", "RUNNER_DRIVER_NAMESPACE", "KUBERNETES_SERVICE_HOST"):
            monkeypatch.delenv(name)
    for name, value in CODES.items():
        monkeypatch.setenv(name, value)
    handler = signal.getsignal(signal.SIGTERM)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    try:
        yield monkeypatch
    finally:
        signal.signal(signal.SIGTERM, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()


def test_help_in_process_returns_zero(in_process: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`main(["--help"])` returns 0 instead of raising SystemExit."""
    assert cli.main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: runner-driver")


def test_unexpected_exception_is_a_system_failure_with_a_masked_line(
        in_process: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A bug in a stage returns the system code with one summary line; secrets stay masked."""
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{_closed_port()}")
    for name, value in {**_job(tmp_path), "KUBECONFIG": str(kubeconfig),
                        "CUSTOM_ENV_CI_JOB_TOKEN": TOKEN}.items():
        in_process.setenv(name, value)

    def broken(*_args: Any, **_kwargs: Any) -> bool:
        raise RuntimeError(f"boom while using {TOKEN}")

    in_process.setattr("runner_driver.cleanup.cleanup", broken)
    assert cli.main(["cleanup"]) == 5
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "runner-driver cleanup: unexpected error: RuntimeError: boom while using [MASKED]" \
        in captured.err.splitlines()
    assert TOKEN not in captured.err  # neither in the summary nor in the logged traceback


def test_job_failed_returns_the_build_code_and_writes_the_scripts_code(
        in_process: pytest.MonkeyPatch, runner: Any, tmp_path: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    """A script exiting 7 in `run` returns BUILD_FAILURE_EXIT_CODE and writes 7 to the file."""
    with runner.session(Job(job_id=next_job_id())) as session:
        for name, value in session.environment().items():
            in_process.setenv(name, value)
        for name, value in CODES.items():
            in_process.setenv(name, value)
        script = tmp_path / "script"
        script.write_text(bash_script("echo before-exit\nexit 7\n"), encoding="utf-8")
        code = cli.main(["run", str(script), "build_script"])
        written = session.exit_code_file.read_text(encoding="ascii")
    # A blocked SIGTERM would be inherited by every process started afterwards.
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    captured = capfd.readouterr()
    assert code == 4
    assert written == "7"
    assert "before-exit" in captured.out
    assert "runner-driver run:" not in captured.err  # the script's failure speaks for itself
