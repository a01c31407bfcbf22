"""The `config` stage: the JSON gitlab-runner reads from stdout, over the wire and as a function.

Over-the-wire tests call the installed `runner-driver` through the runner emulator,
exactly as gitlab-runner does, against the module's emulated cluster.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from kubernetes import client

import runner_driver
from runner_driver.config_stage import DRIVER_NAME, config
from runner_driver.emulator.runner import Job, JobSession
from runner_driver.podspec import NONCE_LABEL, pod_name
from runner_driver.runner_env import NAMESPACE_KEY, NONCE_KEY, POD_KEY, JobContext
from runner_driver.settings import ManagerSettings, PodSettings, Settings, resolve_manager
from tests.conftest import make_runner, next_job_id, pods_left

KEYS = {"builds_dir", "cache_dir", "builds_dir_is_shared", "hostname", "driver", "job_env"}
NONCE = re.compile(r"[0-9a-f]{32}")
# The settings of a started command: `resolve_manager` has filled in the manager's id.
SETTINGS = Settings(manager=ManagerSettings(id="ci-manager-1"))
# sha256("ci-manager-1")[:8]
MANAGER_HASH = "ac4b8e4e"
JOB = JobContext(job_id="77", project_id="9", timeout_seconds=None, nonce="", tmpdir="/tmp/j77",
                 runner_short_token="abcd1234", project_path="g/p")


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
        last = [c for c in session.calls if c.stage == "config"][-1]
        parsed = json.loads(call.stdout)
        pod = core.read_namespaced_pod(parsed["hostname"], "default")
        assert pod.metadata.labels["app.kubernetes.io/managed-by"] == "runner-driver"
        assert session.hostname == parsed["hostname"]
        # prepare labelled the pod with the nonce config handed over in job_env.
        assert pod.metadata.labels[NONCE_LABEL] == json.loads(last.stdout)["job_env"][NONCE_KEY]
    assert set(parsed) == KEYS
    assert parsed["builds_dir"] == "/builds" and parsed["cache_dir"] == "/cache"
    assert parsed["builds_dir"].startswith("/") and parsed["cache_dir"].startswith("/")
    assert parsed["builds_dir_is_shared"] is False
    assert parsed["driver"] == {"name": "runner-driver", "version": runner_driver.__version__}
    nonce = parsed["job_env"][NONCE_KEY]
    assert NONCE.fullmatch(nonce), nonce
    assert parsed["job_env"] == {POD_KEY: parsed["hostname"], NAMESPACE_KEY: "default",
                                 NONCE_KEY: nonce}


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


def test_config_mints_a_fresh_nonce_per_call_over_the_wire(kubeconfig: Path,
                                                          tmp_path: Path) -> None:
    """Two `config` calls for one job name the same pod but hand over different nonces."""
    runner = make_runner(kubeconfig, tmp_path / "runner")
    job_id = next_job_id()
    first = config_only(runner, tmp_path / "first", job_id)
    second = config_only(runner, tmp_path / "second", job_id)
    assert first.exit_code == 0 and second.exit_code == 0, (first.stderr, second.stderr)
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert one["hostname"] == two["hostname"]
    assert NONCE.fullmatch(one["job_env"][NONCE_KEY])
    assert NONCE.fullmatch(two["job_env"][NONCE_KEY])
    assert one["job_env"][NONCE_KEY] != two["job_env"][NONCE_KEY]


def test_config_function_returns_the_same_document_for_a_job_context() -> None:
    """The pure function gives the stage's keys for a JobContext built directly."""
    settings = replace(SETTINGS, pod=PodSettings(builds_dir="/b", cache_dir="/c"))
    document = config(settings, JOB, "ci")
    name = pod_name(settings, JOB)
    assert name == f"runner-{MANAGER_HASH}-project-9-job-77"
    nonce = document["job_env"][NONCE_KEY]
    assert NONCE.fullmatch(nonce), nonce
    assert document == {
        "builds_dir": "/b", "cache_dir": "/c", "builds_dir_is_shared": False,
        "hostname": name,
        "driver": {"name": DRIVER_NAME, "version": runner_driver.__version__},
        "job_env": {POD_KEY: name, NAMESPACE_KEY: "ci", NONCE_KEY: nonce},
    }
    json.dumps(document)  # serialisable as it is printed


def test_config_function_keeps_the_pod_name_from_an_earlier_config() -> None:
    """A job whose environment already names the pod reports that same name."""
    job = replace(JOB, runner_short_token="", project_path="",
                  pod_name_from_config="given-pod", namespace_from_config="other")
    document = config(SETTINGS, job, "ci")
    assert document["hostname"] == "given-pod"
    assert document["job_env"] == {POD_KEY: "given-pod", NAMESPACE_KEY: "ci",
                                   NONCE_KEY: document["job_env"][NONCE_KEY]}


def test_config_emits_a_32_hex_nonce_that_differs_between_calls() -> None:
    """Each call mints its own RUNNER_DRIVER_NONCE of 32 lowercase hex characters."""
    nonces = [config(SETTINGS, JOB, "ci")["job_env"][NONCE_KEY] for _ in range(2)]
    assert all(NONCE.fullmatch(nonce) for nonce in nonces), nonces
    assert nonces[0] != nonces[1]
    assert NONCE_KEY == "RUNNER_DRIVER_NONCE"


def test_config_mints_a_new_nonce_even_when_the_job_has_one() -> None:
    """A nonce already in the job's environment is not reused: config always mints afresh."""
    earlier = "0123456789abcdef0123456789abcdef"
    document = config(SETTINGS, replace(JOB, nonce=earlier), "ci")
    assert document["job_env"][NONCE_KEY] != earlier


def test_config_nonce_is_what_later_stages_read_back(tmp_path: Path) -> None:
    """The nonce config emits, handed back unprefixed in job_env, becomes the job's nonce."""
    response = tmp_path / "response.json"
    response.write_text(json.dumps({"id": 77, "job_info": {"project_id": 9}}), encoding="utf-8")
    document = config(SETTINGS, JOB, "ci")
    later = JobContext.from_env({"JOB_RESPONSE_FILE": str(response), "TMPDIR": str(tmp_path),
                                 **document["job_env"]})
    assert later.nonce == document["job_env"][NONCE_KEY]
    assert pod_name(SETTINGS, later) == document["hostname"]


def test_config_names_the_pod_after_the_resolved_manager() -> None:
    """With the manager id resolved from the host, config names the pod as prepare will."""
    settings = resolve_manager(Settings())
    assert settings.manager.id
    document = config(settings, JOB, "ci")
    assert document["hostname"] == pod_name(settings, JOB)
