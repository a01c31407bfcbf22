"""Whole CI jobs through the driver's four stages, called exactly as gitlab-runner calls them.

These go over the wire: the runner emulator starts `runner-driver` processes, which talk
to the emulated cluster over HTTP and websocket exec; nothing is patched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from runner_driver.emulator import EmulatedCluster
from runner_driver.emulator.runner import Cancel, Job, JobResult
from tests.conftest import KANIKO, make_runner, next_job_id, pods_left, wait_for

DOCKERFILE = b"FROM alpine:3.20\nRUN echo built\n"


def no_pods_left(core: client.CoreV1Api) -> None:
    """Wait until the driver's pods are all gone (cleanup does not wait for termination)."""
    wait_for(lambda: not pods_left(core), timeout=20, what="the job's pod to be deleted")


def test_kaniko_style_job_succeeds_with_sources_fetched_in_helper(
        runner: Any, git_server: Any, core: client.CoreV1Api) -> None:
    """git runs in the helper, and the busybox-only kaniko container sees the sources."""
    url = git_server.add_repository(f"kaniko/app{next_job_id()}", {"Dockerfile": DOCKERFILE})
    job = Job(job_id=next_job_id(), image=KANIKO, repository_url=url, script=(
        "cat Dockerfile",
        "command -v git || echo \"no git $((6 * 7))\"",
        "echo \"TMPDIR=$TMPDIR\"; mktemp >/dev/null && echo mktemp-works",
        '/kaniko/executor --context "$CI_PROJECT_DIR" --dockerfile Dockerfile '
        '--destination "$CI_REGISTRY/$CI_PROJECT_PATH:1" --no-push',
    ), cache=True)
    result = runner.run_job(job)
    log = result.log.decode()
    assert result.status == "success", log
    assert result.stages == ["config", "prepare", "prepare_script", "get_sources",
                             "restore_cache", "build_script", "archive_cache",
                             "cleanup_file_variables", "cleanup"]
    assert all(call.exit_code == 0 for call in result.calls)
    assert "Checking out" in log and DOCKERFILE.decode() in log
    assert "no git 42" in log
    assert "TMPDIR=/scratch" in log and "mktemp-works" in log
    assert "stand-in: checks passed" in log
    # The cache stages found `gitlab-runner` on the helper's PATH.
    assert "Missing gitlab-runner" not in log and "Created cache" in log
    no_pods_left(core)


def test_failing_script_reports_its_exit_code_and_runs_the_failure_stages(
        runner: Any, core: client.CoreV1Api) -> None:
    """exit 3 becomes a script failure with code 3; after_script and *_on_failure still run."""
    job = Job(job_id=next_job_id(), script=("echo before", "exit 3", "echo never"),
              after_script=('echo "status=$CI_JOB_STATUS"',), cache=True, artifacts=True)
    result = runner.run_job(job)
    log = result.log.decode()
    assert (result.status, result.failure_reason, result.exit_code) == \
        ("failed", "script_failure", 3), log
    build = result.call("build_script")
    assert build.exit_code == 1  # BUILD_FAILURE_EXIT_CODE; the 3 went through the file
    assert "before" in log and "never" not in log and "status=failed" in log
    assert result.stages[-4:] == ["archive_cache_on_failure", "upload_artifacts_on_failure",
                                  "cleanup_file_variables", "cleanup"]
    assert b"runner-driver" not in build.stderr  # a script failure needs no driver message
    no_pods_left(core)


def test_twenty_megabytes_of_binary_and_utf8_output_arrive_byte_exact(
        runner: Any, git_server: Any) -> None:
    """Output with every byte value, split UTF-8 characters and no final newline is exact."""
    pattern = bytes(range(256)) * 64 + "zażółć gęślą jaźń 🚀 ".encode() * 700 + b"\r\n\x00no-eol"
    url = git_server.add_repository(f"blob/app{next_job_id()}", {"blob.bin": pattern})
    job = Job(job_id=next_job_id(), repository_url=url)
    repeats = 20 * 1024 * 1024 // len(pattern) + 1
    with runner.session(job) as session:
        session.run_stage("get_sources")
        body = (session.exports() + f"cd {session.project_dir()}\n"
                f"i=0; while [ $i -lt {repeats} ]; do cat blob.bin; i=$((i + 1)); done\n"
                "cat blob.bin >&2\n")
        call = session.run_body("build_script", body)
    # The script's stderr joins its stdout in order, as in the runner's own job log.
    assert len(call.stdout) == len(pattern) * (repeats + 1) >= 20 * 1024 * 1024
    assert call.stdout == pattern * (repeats + 1)
    assert call.stderr == b""


STAGE_CONTAINERS = {
    "some_future_stage": "build", "step_release": "build", "after_script": "build",
    "build_script": "build", "prepare_script": "helper", "get_sources": "helper",
    "clear_worktree": "helper", "restore_cache": "helper", "download_artifacts": "helper",
    "archive_cache": "helper", "archive_cache_on_failure": "helper",
    "upload_artifacts_on_success": "helper", "upload_artifacts_on_failure": "helper",
    "cleanup_file_variables": "helper",
}


def test_stages_run_in_the_right_container(runner: Any) -> None:
    """Predefined stages run in the helper, user steps and unknown names in the build container."""
    probe = ("if [ -x /busybox/sh ] && ! command -v git >/dev/null; "
             "then echo build; else echo helper; fi\n")
    with runner.session(Job(job_id=next_job_id())) as session:
        seen = {stage: session.run_body(stage, probe).stdout.decode().strip()
                for stage in STAGE_CONTAINERS}
    assert seen == STAGE_CONTAINERS


def test_cancel_mid_stage_stops_the_script_and_leaves_no_pod(
        runner: Any, core: client.CoreV1Api) -> None:
    """SIGTERM during build_script stops the script in the pod within seconds; no pod is left."""
    job = Job(job_id=next_job_id(), script=("echo started", "sleep 60", "echo not-reached"),
              after_script=('echo "status=$CI_JOB_STATUS"',
                            "if ps | grep -v grep | grep -q 'sleep 60'; then echo STILL-RUNNING;"
                            " else echo SCRIPT-STOPPED; fi"))
    result = runner.run_job(job, cancel=Cancel("build_script", 2.0))
    log = result.log.decode()
    build = result.call("build_script")
    assert result.status == "canceled", log
    assert build.exited_after_signal is not None and build.exited_after_signal < 5.0, \
        build.stderr.decode(errors="replace")
    assert "started" in log and "not-reached" not in log
    assert "status=canceled" in log and "SCRIPT-STOPPED" in log
    assert not build.pipes_held
    no_pods_left(core)


def test_cancel_before_user_steps_stops_the_job(runner: Any, core: client.CoreV1Api) -> None:
    """A cancel during prepare_script ends the job: no more stages, only cleanup."""
    job = Job(job_id=next_job_id())
    # At once: with the runner's agent, prepare_script is over in tens of milliseconds.
    result = runner.run_job(job, cancel=Cancel("prepare_script", 0.0))
    assert result.status == "canceled"
    assert result.stages[-2:] == ["prepare_script", "cleanup"]
    no_pods_left(core)


def test_unpullable_default_image_is_a_system_failure_naming_it(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """An image the cluster cannot pull fails prepare as a system failure, retried with cleanup."""
    image = "registry.invalid/kaniko/executor:v1-debug"
    runner = make_runner(kubeconfig, tmp_path, f'[build]\nimage = "{image}"\n')
    result = runner.run_job(Job(job_id=next_job_id()))
    log = result.log.decode()
    assert (result.status, result.failure_reason) == ("failed", "runner_system_failure"), log
    assert result.stages == ["config", "prepare", "cleanup"] * 3
    prepare = result.call("prepare")
    assert prepare.exit_code == 2
    assert image.encode() in prepare.stdout and b"ErrImagePull" in prepare.stdout
    assert b"Warning events of pod" in prepare.stdout and b"Failed" in prepare.stdout
    assert b"cannot start" in prepare.stderr and image.encode() in prepare.stderr
    no_pods_left(core)


def test_unpullable_allowed_job_image_is_a_system_failure(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """A job image on the allow-list that cannot be pulled is the system's failure."""
    image = "registry.invalid/tools/kaniko:debug"
    runner = make_runner(kubeconfig, tmp_path,
                         '[build]\nallowed_images = ["registry.invalid/tools/*"]\n')
    result = runner.run_job(Job(job_id=next_job_id(), image=image))
    assert result.failure_reason == "runner_system_failure"
    assert image.encode() in result.call("prepare").stderr
    no_pods_left(core)


def test_job_image_outside_the_allow_list_is_a_build_failure(
        runner: Any, core: client.CoreV1Api) -> None:
    """A disallowed job image fails at once as the job's failure, naming image and allow-list."""
    result = runner.run_job(Job(job_id=next_job_id(), image="docker:27"))
    prepare = result.call("prepare")
    assert (result.status, result.failure_reason) == ("failed", "script_failure")
    assert result.stages == ["config", "prepare", "cleanup"]  # not retried
    assert prepare.exit_code == 1
    assert b"docker:27" in prepare.stderr
    assert b"gcr.io/kaniko-project/executor:*debug*" in prepare.stderr
    assert not pods_left(core)


def test_services_get_a_clear_warning(runner: Any) -> None:
    """A job with services is told that no service containers are started."""
    job = Job(job_id=next_job_id(), services=({"name": "postgres:16", "alias": "db"},))
    with runner.session(job) as session:
        prepare = session.calls[-1]
    assert b"WARNING" in prepare.stdout and b"postgres:16" in prepare.stdout


def test_no_secret_reaches_driver_logs_or_the_pod(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """With debug logging, no job token or masked value is in stderr or in the pod object."""
    runner = make_runner(kubeconfig, tmp_path, '[logging]\nlevel = "debug"\n')
    secret = "s3cr3t-masked-value-42"
    job = Job(job_id=next_job_id(), variables=(("MY_SECRET", secret),),
              masked=frozenset({"MY_SECRET"}), script=("exit 4",))
    with runner.session(job) as session:
        pod = core.read_namespaced_pod(session.hostname, "default")
        manifest = str(client.ApiClient().sanitize_for_serialization(pod))
        session.run_stage("get_sources")
        with pytest.raises(Exception, match="exit code 4"):
            session.run_stage("build_script", job.script)
    assert job.token not in manifest and secret not in manifest
    for call in session.calls:
        assert job.token.encode() not in call.stderr, call.stage
        assert secret.encode() not in call.stderr, call.stage


def ten_stage_job(build: str) -> Job:
    """prepare_script, get_sources, restore_cache, build_script, two steps, after_script,
    archive_cache, upload_artifacts_on_success and cleanup_file_variables."""
    return Job(job_id=next_job_id(), script=(build,), cache=True, artifacts=True,
               after_script=("echo after",),
               steps=(("lint", ("echo lint",)), ("test", ("echo test",))))


def _requests_for(cluster: EmulatedCluster, runner: Any,
                  build: str) -> tuple[dict[str, int], JobResult]:
    before = cluster.request_counts()
    result = runner.run_job(ten_stage_job(build))
    after = cluster.request_counts()
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}, result


def test_api_requests_per_job_are_few_and_do_not_grow_with_its_duration(
        cluster: EmulatedCluster, runner: Any) -> None:
    """A ten-stage job makes 15 API requests (one exec per stage; its registry Secret is
    created before the pod and given the pod as owner), however long it runs."""
    short, quick = _requests_for(cluster, runner, "true")
    long, slow = _requests_for(cluster, runner, "sleep 7")  # past a heartbeat and bookmark
    for result in (quick, slow):
        assert result.status == "success", result.log[-2000:]
        assert len([s for s in result.stages
                    if s not in ("config", "prepare", "cleanup")]) == 10, result.stages
    expected = {"create secrets": 1, "create pods": 1, "patch secrets": 1, "watch pods": 1,
                "get pods/exec": 10, "delete pods": 1}
    assert short == expected
    assert long == expected
