"""Registry logins reach kaniko's config.json end to end, through a Secret owned by the pod,
and leak nowhere."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from runner_driver.emulator import EmulatedCluster
from runner_driver.emulator.registry import TestRegistry
from runner_driver.emulator.runner import Cancel, Job
from runner_driver.logs import forms

from .conftest import make_runner, next_job_id, pods_left, wait_for

TOKEN = "glcbt-64_secretjobtoken0123456789"  # the runner emulator's job token
PROXY_PASSWORD = "proxy-s3cret-pass"
OVERRIDE_PASSWORD = "override-s3cret-pass"
OPERATOR_PASSWORD = "operator-s3cret-pass"


def auth(user: str, password: str) -> dict[str, str]:
    """A config.json `auths` entry as Docker writes it."""
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def driver_secrets(core: client.CoreV1Api) -> list[str]:
    """Names of the secrets the driver labelled in `default`."""
    return [s.metadata.name for s in core.list_namespaced_secret(
        "default", label_selector="app.kubernetes.io/managed-by=runner-driver").items]


def seen_config(session: Any) -> dict[str, Any]:
    """The config.json the build container sees."""
    call = session.run_body("build_script", "cat /kaniko/.docker/config.json\n")
    assert call.exit_code == 0, call.stderr
    parsed: dict[str, Any] = json.loads(call.stdout)
    return parsed


def assert_nowhere(text: bytes, *secrets: str) -> None:
    """None of `secrets` shows in `text` in any of the forms the redactor knows."""
    for secret in secrets:
        for form in forms(secret):
            assert form.encode() not in text, form


def test_the_jobs_registry_login_is_in_kanikos_config_json(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """With only GitLab's predefined CI_REGISTRY variables, config.json holds exactly that
    login; the Secret is owned by the pod while the job runs and gone after it; the job
    log names the registry and the source, and no form of the token."""
    runner = make_runner(kubeconfig, tmp_path)
    with runner.session(Job(job_id=next_job_id())) as session:
        log = bytes(session.log)  # what the driver wrote, before the job prints config.json
        config = seen_config(session)
        secret = core.read_namespaced_secret(f"{session.hostname}-docker", "default")
        pod = core.read_namespaced_pod(session.hostname, "default")
    assert config == {"auths": {"registry.example.com": auth("gitlab-ci-token", TOKEN)}}
    assert secret.type == "kubernetes.io/dockerconfigjson"
    assert [o.uid for o in secret.metadata.owner_references] == [pod.metadata.uid]
    assert b"Registry credentials for kaniko: registry.example.com (CI_REGISTRY_USER); " \
           b"no custom CA; no proxy\n" in log
    assert_nowhere(log, TOKEN, f"gitlab-ci-token:{TOKEN}")
    wait_for(lambda: not driver_secrets(core), timeout=20, what="the job's secret gone")


def test_every_source_merges_per_registry_with_the_jobs_choice_last(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """Operator secret, job login, dependency proxy (port stripped) and DOCKER_AUTH_CONFIG
    merge per registry, DOCKER_AUTH_CONFIG winning; helpers pass through; the pod spec and
    the job log hold no secret."""
    operator = {"auths": {"registry.example.com": auth("operator", OPERATOR_PASSWORD),
                          "quay.example.com": auth("operator", OPERATOR_PASSWORD)},
                "credHelpers": {"123.dkr.ecr.eu-west-1.amazonaws.com": "ecr-login"}}
    core.create_namespaced_secret("default", {
        "metadata": {"name": "corp-registry"}, "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(operator).encode()).decode()}})
    try:
        runner = make_runner(kubeconfig, tmp_path, '[registry]\nsecrets = ["corp-registry"]\n')
        override = {"auths": {"quay.example.com": auth("robot", OVERRIDE_PASSWORD)}}
        job = Job(job_id=next_job_id(), variables=(
            ("CI_DEPENDENCY_PROXY_SERVER", "gitlab.example.com:443"),
            ("CI_DEPENDENCY_PROXY_USER", "proxy-user"),
            ("CI_DEPENDENCY_PROXY_PASSWORD", PROXY_PASSWORD),
            ("DOCKER_AUTH_CONFIG", json.dumps(override))), masked=frozenset())
        with runner.session(job) as session:
            log = bytes(session.log)  # before the job prints config.json itself
            config = seen_config(session)
            pod = core.read_namespaced_pod(session.hostname, "default")
    finally:
        core.delete_namespaced_secret("corp-registry", "default")
    assert config == {
        "auths": {"registry.example.com": auth("gitlab-ci-token", TOKEN),
                  "quay.example.com": auth("robot", OVERRIDE_PASSWORD),
                  "gitlab.example.com": auth("proxy-user", PROXY_PASSWORD)},
        "credHelpers": {"123.dkr.ecr.eu-west-1.amazonaws.com": "ecr-login"}}
    assert (b"Registry credentials for kaniko: gitlab.example.com (dependency proxy), "
            b"quay.example.com (DOCKER_AUTH_CONFIG), registry.example.com (CI_REGISTRY_USER), "
            b"123.dkr.ecr.eu-west-1.amazonaws.com (credential helper ecr-login); no custom CA; "
            b"no proxy\n") \
        in log
    spec = json.dumps(client.ApiClient().sanitize_for_serialization(pod)).encode()
    for text in (spec, log):
        assert_nowhere(text, TOKEN, PROXY_PASSWORD, OVERRIDE_PASSWORD, OPERATOR_PASSWORD,
                       f"proxy-user:{PROXY_PASSWORD}", f"robot:{OVERRIDE_PASSWORD}")


RUNNER_PASSWORD = "runner-vouched-s3cret"
FORGED_PASSWORD = "forged-by-the-job-s3cret"


COMBINATIONS: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    # (id, operator secret or {}, Job keyword arguments, expected config.json as JSON)
    ("payload-login-beats-variables-the-job-set", {}, {
        "payload_fields": (("credentials", [{"type": "registry", "url": "registry.example.com",
                                             "username": "gitlab-ci-token",
                                             "password": RUNNER_PASSWORD}]),),
        "variables": (("CI_REGISTRY_PASSWORD", FORGED_PASSWORD),)},
     json.dumps({"auths": {"registry.example.com": auth("gitlab-ci-token", RUNNER_PASSWORD)}})),
    ("operator-login-for-another-registry-stays", {
        "auths": {"mirror.example.com": auth("operator", OPERATOR_PASSWORD)}}, {},
     json.dumps({"auths": {"mirror.example.com": auth("operator", OPERATOR_PASSWORD),
                           "registry.example.com": auth("gitlab-ci-token", TOKEN)}})),
    ("job-login-replaces-the-operators-helper", {
        "credHelpers": {"registry.example.com": "ecr-login"}, "credsStore": "desktop"}, {},
     json.dumps({"auths": {"registry.example.com": auth("gitlab-ci-token", TOKEN)}})),
    ("docker-auth-config-helper-replaces-the-job-login", {}, {
        "variables": (("DOCKER_AUTH_CONFIG",
                       json.dumps({"credHelpers": {"registry.example.com": "gcr"}})),)},
     json.dumps({"auths": {}, "credHelpers": {"registry.example.com": "gcr"}})),
]


@pytest.mark.parametrize(("operator", "job", "expected"), [c[1:] for c in COMBINATIONS],
                         ids=[c[0] for c in COMBINATIONS])
def test_each_combination_of_sources_gives_the_exact_config_json(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api, operator: dict[str, Any],
        job: dict[str, Any], expected: str) -> None:
    """The build container's config.json for one combination of sources, exactly:
    decoded logins, which source wins per registry, helpers and stores kept or dropped."""
    settings = ""
    if operator:
        core.create_namespaced_secret("default", {
            "metadata": {"name": "combo-registry"}, "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(json.dumps(operator).encode())
                     .decode()}})
        settings = '[registry]\nsecrets = ["combo-registry"]\n'
    try:
        runner = make_runner(kubeconfig, tmp_path, settings)
        with runner.session(Job(job_id=next_job_id(), masked=frozenset(), **job)) as session:
            config = seen_config(session)
    finally:
        if operator:
            core.delete_namespaced_secret("combo-registry", "default")
    assert config == json.loads(expected)


def test_a_malformed_docker_auth_config_fails_the_job_before_anything_exists(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """A DOCKER_AUTH_CONFIG that is not JSON is the job's failure, naming the variable and
    the error's position, never the value; no pod or secret is created."""
    runner = make_runner(kubeconfig, tmp_path)
    value = '{"auths": {"r.example.com": {"auth": "c2VjcmV0LXZhbHVl"}'
    result = runner.run_job(Job(job_id=next_job_id(),
                                variables=(("DOCKER_AUTH_CONFIG", value),)))
    prepare = result.call("prepare")
    assert result.failure_reason == "script_failure"
    assert b"reading DOCKER_AUTH_CONFIG: not JSON: Expecting ',' delimiter at line 1 " \
           b"column 57 (char 56)" in prepare.stderr
    assert b"c2VjcmV0LXZhbHVl" not in prepare.stderr + prepare.stdout
    assert not driver_secrets(core)


def test_a_failed_start_leaves_no_secret(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """A pod that cannot start is deleted, and its Secret with it (it is the pod's)."""
    runner = make_runner(kubeconfig, tmp_path, "[pod]\nunschedulable_timeout_seconds = 1\n"
                                               '[build]\ncpu_request = "1000"\n')
    result = runner.run_job(Job(job_id=next_job_id()))
    assert result.failure_reason == "runner_system_failure"
    assert result.stages.count("prepare") == 3
    wait_for(lambda: not driver_secrets(core), timeout=20, what="no secret left")


def test_a_missing_operator_secret_fails_prepare_naming_it(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """A registry secret named in the settings that does not exist fails prepare with its
    name and the settings key, before anything is created."""
    runner = make_runner(kubeconfig, tmp_path, '[registry]\nsecrets = ["nope"]\n')
    result = runner.run_job(Job(job_id=next_job_id()))
    prepare = result.call("prepare")
    assert result.failure_reason == "runner_system_failure"
    assert b"reading registry secret default/nope (registry.secrets in " in prepare.stderr
    assert b"it does not exist" in prepare.stderr
    assert not driver_secrets(core)


def test_proxy_settings_reach_both_containers_and_kanikos_build_args(
        kubeconfig: Path, tmp_path: Path) -> None:
    """[proxy] sets both spellings of the proxy variables in the helper and the build
    container, the build-arg flags for kaniko, and the summary line says so."""
    runner = make_runner(kubeconfig, tmp_path,
                         '[proxy]\nhttp_proxy = "http://proxy.example.com:3128"\n'
                         'https_proxy = "http://proxy.example.com:3128"\n'
                         'no_proxy = "localhost,.svc"\n')
    probe = 'echo "$HTTP_PROXY|$https_proxy|$NO_PROXY|$no_proxy"\n'
    with runner.session(Job(job_id=next_job_id())) as session:
        log = bytes(session.log)
        helper = session.run_body("get_sources", probe)
        build = session.run_body("build_script", probe + 'echo "$RUNNER_DRIVER_PROXY_BUILD_ARGS"\n')
    expected = b"http://proxy.example.com:3128|http://proxy.example.com:3128|localhost,.svc|" \
               b"localhost,.svc\n"
    assert helper.stdout == expected
    assert build.stdout == expected + (
        b"--build-arg=HTTP_PROXY=http://proxy.example.com:3128 "
        b"--build-arg=http_proxy=http://proxy.example.com:3128 "
        b"--build-arg=HTTPS_PROXY=http://proxy.example.com:3128 "
        b"--build-arg=https_proxy=http://proxy.example.com:3128 "
        b"--build-arg=NO_PROXY=localhost,.svc --build-arg=no_proxy=localhost,.svc\n")
    assert b"; proxy: http_proxy http://proxy.example.com:3128, https_proxy " \
           b"http://proxy.example.com:3128 (not for localhost,.svc)\n" in log


# Pushing through the driver to a registry behind a private CA (the emulator's TestRegistry:
# TLS with a test CA, Basic auth), with no job changes beyond its usual kaniko line.

REGISTRY_USER, REGISTRY_PASSWORD = "ci-pusher", "pusher-s3cret-pw"
PUSH = ('mkdir -p /scratch/ctx && echo "FROM scratch" > /scratch/ctx/Dockerfile\n'
        "/kaniko/executor --context /scratch/ctx --destination {address}/team/app:v1\n")


@pytest.fixture(scope="module")
def registry() -> Iterator[TestRegistry]:
    """A TLS registry on 127.0.0.1 with a test CA and Basic auth."""
    with TestRegistry(REGISTRY_USER, REGISTRY_PASSWORD) as started:
        yield started


def push(kubeconfig: Path, directory: Path, registry: TestRegistry, ca: bool,
         login: bool) -> Any:
    """Run a job whose script pushes with kaniko; the CA and login given by the runner's
    settings and GitLab's CI_REGISTRY variables, or not."""
    settings = f'[tls]\nca_file = "{registry.ca_file}"\n' if ca else ""
    variables = (("CI_REGISTRY", registry.address), ("CI_REGISTRY_USER", REGISTRY_USER),
                 ("CI_REGISTRY_PASSWORD", REGISTRY_PASSWORD)) if login else ()
    runner = make_runner(kubeconfig, directory, settings)
    job = Job(job_id=next_job_id(), variables=variables,
              script=(PUSH.format(address=registry.address),))
    return runner.run_job(job)


def test_a_push_succeeds_with_the_ca_and_the_login_and_nothing_in_the_job(
        kubeconfig: Path, tmp_path: Path, registry: TestRegistry) -> None:
    """With the operator's CA file and the job's registry variables, the kaniko line alone
    pushes; the summary names both; no form of the password is in the job log."""
    before = len(registry.pushed)
    result = push(kubeconfig, tmp_path, registry, ca=True, login=True)
    assert result.status == "success", result.log.decode(errors="replace")
    assert [(p.name, p.tag) for p in registry.pushed[before:]] == [("team/app", "v1")]
    assert (f"Registry credentials for kaniko: {registry.address} (CI_REGISTRY_USER); "
            f"custom CA: tls.ca_file {registry.ca_file}; no proxy\n").encode() in result.log
    assert_nowhere(result.log, REGISTRY_PASSWORD, f"{REGISTRY_USER}:{REGISTRY_PASSWORD}")


def test_without_the_login_the_push_fails_with_the_registrys_401(
        kubeconfig: Path, tmp_path: Path, registry: TestRegistry) -> None:
    """The CA alone is not enough: the registry answers 401, as kaniko reports it."""
    result = push(kubeconfig, tmp_path, registry, ca=True, login=False)
    assert result.failure_reason == "script_failure"
    assert b"UNAUTHORIZED: authentication required" in result.log


def test_without_the_ca_the_push_fails_on_the_certificate(
        kubeconfig: Path, tmp_path: Path, registry: TestRegistry) -> None:
    """The login alone is not enough: TLS to the registry does not verify."""
    result = push(kubeconfig, tmp_path, registry, ca=False, login=True)
    assert result.failure_reason == "script_failure"
    assert b"x509:" in result.log


# Faults: no Secret is left behind, whatever fails.


def test_a_refused_pod_create_deletes_the_secret_made_for_it(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api,
        cluster: EmulatedCluster) -> None:
    """The Secret is created before the pod; when the API server refuses the pod (422), the
    Secret is deleted again in the same attempt."""
    runner = make_runner(kubeconfig, tmp_path)
    cluster.fail_requests("POST", r"/api/v1/namespaces/default/pods$", count=3, status=422)
    try:
        result = runner.run_job(Job(job_id=next_job_id()))
    finally:
        cluster.clear_faults()
    assert result.failure_reason == "runner_system_failure"
    assert result.stages.count("prepare") == 3
    assert not driver_secrets(core)


def test_a_failed_owner_patch_removes_pod_and_secret(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api,
        cluster: EmulatedCluster) -> None:
    """If the Secret cannot be given its pod as owner, the attempt removes both (an unowned
    Secret would outlive the pod)."""
    runner = make_runner(kubeconfig, tmp_path)
    cluster.fail_requests("PATCH", r"/api/v1/namespaces/default/secrets/", count=3, status=403)
    try:
        result = runner.run_job(Job(job_id=next_job_id()))
    finally:
        cluster.clear_faults()
    assert result.failure_reason == "runner_system_failure"
    assert b"setting the owner of secret default/" in result.call("prepare").stderr
    wait_for(lambda: not driver_secrets(core) and not pods_left(core), timeout=20,
             what="no pod and no secret left")


def test_a_cancel_while_the_pod_starts_leaves_no_secret(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """SIGTERM while prepare waits for an unschedulable pod: the pod is deleted, and the
    Secret it owns goes with it."""
    runner = make_runner(kubeconfig, tmp_path, '[build]\ncpu_request = "1000"\n')
    result = runner.run_job(Job(job_id=next_job_id()), cancel=Cancel("prepare", 1.5))
    assert result.status == "canceled", result.log.decode(errors="replace")
    wait_for(lambda: not driver_secrets(core) and not pods_left(core), timeout=20,
             what="no pod and no secret left")


LEAK_SECRETS = (TOKEN, PROXY_PASSWORD, OVERRIDE_PASSWORD, f"gitlab-ci-token:{TOKEN}",
                f"proxy-user:{PROXY_PASSWORD}", f"robot:{OVERRIDE_PASSWORD}")
# Every place a job or the driver writes in a container (not the image's own files),
# searched for the secrets' forms; the mounted Secret is left out (it is where they
# belong). The pattern file lives in memory (/runner-driver), removed after the scan.
IN_POD_SCAN = """p=/runner-driver/.leak-patterns
cat > $p <<'PATTERNS'
{patterns}
PATTERNS
echo scanned
for d in /builds /scratch /cache /runner-driver /runner-driver-logs /kaniko/.docker /kaniko/ssl \
    /root /home /etc /tmp; do
  if [ -d $d ]; then grep -rlF -f $p $d 2>/dev/null || true; fi
done | {{ grep -v -e '^/runner-driver/.leak-patterns$' || true; }} | sort
rm -f $p
"""


def test_no_secret_is_anywhere_a_user_or_operator_can_read(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """With logins from every job source and debug logging, none of the secrets shows, in
    any form the redactor knows, in the pod manifest, the namespace's events, any stage's
    output or log, `render` for the same job, or any file in either container outside the
    mounted Secret and kaniko's config.json."""
    override = {"auths": {"quay.example.com": auth("robot", OVERRIDE_PASSWORD)}}
    variables = (("CI_DEPENDENCY_PROXY_SERVER", "gitlab.example.com:443"),
                 ("CI_DEPENDENCY_PROXY_USER", "proxy-user"),
                 ("CI_DEPENDENCY_PROXY_PASSWORD", PROXY_PASSWORD),
                 ("DOCKER_AUTH_CONFIG", json.dumps(override)))
    runner = make_runner(kubeconfig, tmp_path, '[logging]\nlevel = "debug"\n')
    with runner.session(Job(job_id=next_job_id(), variables=variables)) as session:
        pod = core.read_namespaced_pod(session.hostname, "default")
        session.run_body("build_script", "echo built\n")
        patterns = "\n".join(sorted({form for secret in LEAK_SECRETS for form in forms(secret)}))
        found = {stage: session.run_body(stage, IN_POD_SCAN.format(patterns=patterns))
                 for stage in ("get_sources", "build_script")}  # helper, then build
        calls = list(session.calls)
        log = bytes(session.log)
        env = {"JOB_RESPONSE_FILE": str(session.response_file), "PATH": os.environ["PATH"],
               "KUBECONFIG": "/nonexistent"}
        env |= {f"CUSTOM_ENV_{k}": v for k, v in variables}
        env |= {"CUSTOM_ENV_CI_REGISTRY": "registry.example.com",
                "CUSTOM_ENV_CI_REGISTRY_USER": "gitlab-ci-token",
                "CUSTOM_ENV_CI_REGISTRY_PASSWORD": TOKEN}
        rendered = subprocess.run([sys.executable, "-m", "runner_driver.cli", "render"],
                                  capture_output=True, env=env, timeout=60, check=True)
    events = core.list_namespaced_event("default")
    texts = {
        "pod": json.dumps(client.ApiClient().sanitize_for_serialization(pod)).encode(),
        "events": json.dumps(client.ApiClient().sanitize_for_serialization(events)).encode(),
        "job log": log,
        "stage stderr": b"".join(c.stderr for c in calls),
        "render": rendered.stdout + rendered.stderr,
    }
    assert calls and b"Secret" in rendered.stdout and b"<redacted:" in rendered.stdout
    for stage, call in found.items():
        # Only the build container's config.json holds logins (the job asked for them).
        expected = b"/kaniko/.docker/config.json\n" if stage == "build_script" else b""
        assert (call.exit_code, call.stdout) == (0, b"scanned\n" + expected), (stage, call)
    for where, text in texts.items():
        for secret in LEAK_SECRETS:
            for form in forms(secret):
                assert form.encode() not in text, (where, form)
