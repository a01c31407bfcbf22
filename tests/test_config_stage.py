"""The `config` stage: the JSON gitlab-runner reads from stdout, over the wire and as a function.

Over-the-wire tests call the installed `runner-driver` through the runner emulator,
exactly as gitlab-runner does, against the module's emulated cluster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubernetes import client

import runner_driver
from runner_driver.config_stage import DRIVER_NAME, config
from runner_driver.emulator.runner import Job, JobSession
from runner_driver.podspec import pod_name
from runner_driver.runner_env import NAMESPACE_KEY, POD_KEY, JobContext
from runner_driver.settings import PodSettings, Settings
from tests.conftest import make_runner, next_job_id, pods_left

KEYS = {"builds_dir", "cache_dir", "builds_dir_is_shared", "hostname", "driver", "job_env"}


def config_only(runner: Any, directory: Path, job_id: int) -> Any:
    """Call just `config` for a job, as the runner does first (nothing else runs)."""
    directory.mkdir(parents=True, exist_ok=True)
    session = JobSession(runner, Job(job_id=job_id), directory, None)
    return session.call("config", ["config"], to_log=False)


def test_config_stdout_is_one_json_object_on_one_line_even_with_debug_logs(
        kubeconfig: Path, tmp_path: Path) -> None:
    """With debug logging on, stdout still holds exactly one JSON object and one newline."""
    runner = make_runner(kubeconfig, tmp_path / "runner", '[logging]\nlevel = "debug"\n')
    with runner.session(Job(job_id=next_job_id())) as session:
        call = next(c for c in session.calls if c.stage == "config")
        prepare = [c for c in session.calls if c.stage == "prepare"][-1]
    assert call.exit_code == 0, call.stderr.decode()
    assert call.stdout.endswith(b"\n") and call.stdout.count(b"\n") == 1
    parsed = json.loads(call.stdout)
    assert isinstance(parsed, dict) and set(parsed) == KEYS
    # The setting took effect (info lines, hidden by default, are shown) on stderr only.
    assert b"[info" in prepare.stderr and b"stage=prepare" in prepare.stderr
    assert b"[info" not in call.stdout and b"[debug" not in call.stdout


def test_config_names_directories_driver_and_the_pod_prepare_creates(
        runner: Any, core: client.CoreV1Api) -> None:
    """hostname and job_env name the pod that prepare then creates; directories are absolute."""
    with runner.session(Job(job_id=next_job_id())) as session:
        call = next(c for c in session.calls if c.stage == "config")
        parsed = json.loads(call.stdout)
        pod = core.read_namespaced_pod(parsed["hostname"], "default")
        assert pod.metadata.labels["app.kubernetes.io/managed-by"] == "runner-driver"
        assert session.hostname == parsed["hostname"]
    assert set(parsed) == KEYS
    assert parsed["builds_dir"] == "/builds" and parsed["cache_dir"] == "/cache"
    assert parsed["builds_dir"].startswith("/") and parsed["cache_dir"].startswith("/")
    assert parsed["builds_dir_is_shared"] is False
    assert parsed["driver"] == {"name": "runner-driver", "version": runner_driver.__version__}
    assert parsed["job_env"] == {POD_KEY: parsed["hostname"], NAMESPACE_KEY: "default"}


def test_config_follows_settings_and_creates_nothing(kubeconfig: Path, tmp_path: Path,
                                                    namespace: str,
                                                    core: client.CoreV1Api) -> None:
    """Configured directories and namespace are reported, and config alone makes no pod."""
    settings = (f'[kubernetes]\nnamespace = "{namespace}"\n'
                '[pod]\nbuilds_dir = "/ci/builds"\ncache_dir = "/ci/cache"\n')
    runner = make_runner(kubeconfig, tmp_path / "runner", settings)
    call = config_only(runner, tmp_path / "job", next_job_id())
    assert call.exit_code == 0, call.stderr.decode()
    parsed = json.loads(call.stdout)
    assert (parsed["builds_dir"], parsed["cache_dir"]) == ("/ci/builds", "/ci/cache")
    assert parsed["job_env"][NAMESPACE_KEY] == namespace
    assert core.list_namespaced_pod(namespace).items == []
    assert parsed["hostname"] not in pods_left(core)


def test_config_function_returns_the_same_document_for_a_job_context() -> None:
    """The pure function gives the stage's keys for a JobContext built directly."""
    job = JobContext(job_id="77", project_id="9", pipeline_id="", runner_id="",
                     runner_short_token="abcd1234", project_path="g/p", job_image="",
                     services=(), timeout_seconds=None, pod_name_from_config="",
                     namespace_from_config="")
    settings = Settings(pod=PodSettings(builds_dir="/b", cache_dir="/c"))
    document = config(settings, job, "ci")
    name = pod_name(job)
    assert name == "runner-abcd1234-project-9-job-77"
    assert document == {
        "builds_dir": "/b", "cache_dir": "/c", "builds_dir_is_shared": False,
        "hostname": name,
        "driver": {"name": DRIVER_NAME, "version": runner_driver.__version__},
        "job_env": {POD_KEY: name, NAMESPACE_KEY: "ci"},
    }
    json.dumps(document)  # serialisable as it is printed


def test_config_function_keeps_the_pod_name_from_an_earlier_config() -> None:
    """A job whose environment already names the pod reports that same name."""
    job = JobContext(job_id="77", project_id="9", pipeline_id="", runner_id="",
                     runner_short_token="", project_path="", job_image="", services=(),
                     timeout_seconds=None, pod_name_from_config="given-pod",
                     namespace_from_config="other")
    document = config(Settings(), job, "ci")
    assert document["hostname"] == "given-pod"
    assert document["job_env"] == {POD_KEY: "given-pod", NAMESPACE_KEY: "ci"}
