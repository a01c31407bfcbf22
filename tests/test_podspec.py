"""The job pod as a plain manifest: name, labels, image policy, privileges, volumes, deadline."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from typing import Any

import kubernetes_validate
import pytest

from runner_driver import __version__
from runner_driver.errors import JobFailed
from runner_driver.inpod import LOG_DIR
from runner_driver.podspec import (
    MANAGED_SELECTOR,
    active_deadline_seconds,
    build_image,
    build_pod,
    job_timeout_seconds,
    labels,
    pod_name,
    resources,
)
from runner_driver.runner_env import JobContext
from runner_driver.settings import (
    DEFAULT_ALLOWED_IMAGES,
    KANIKO_DEBUG_IMAGE,
    BuildSettings,
    HelperSettings,
    PodSettings,
    Settings,
)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# What the API server accepts as a label value (empty is allowed, but the driver omits it).
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
K8S_VERSION: str = kubernetes_validate.latest_version()
K8S_MINOR = ".".join(K8S_VERSION.split(".")[:2])

BASE_JOB = JobContext(
    job_id="1234",
    project_id="42",
    pipeline_id="777",
    runner_id="9",
    runner_short_token="abc123xy",
    project_path="group/app",
    job_image="",
    services=(),
    timeout_seconds=None,
    pod_name_from_config="",
    namespace_from_config="",
    secrets=(),
)

CUSTOM = Settings(
    pod=PodSettings(builds_dir="/work/builds", cache_dir="/work/cache",
                    scratch_dir="/var/scratch", termination_grace_period_seconds=30,
                    default_job_timeout_seconds=7200, deadline_margin_seconds=60),
    build=BuildSettings(image="registry.example.com/kaniko:debug",
                        allowed_images=("registry.example.com/kaniko:*",)),
    helper=HelperSettings(image="registry.example.com/gitlab-runner-helper:v17.0.0"),
)


def make_job(**changes: Any) -> JobContext:
    """A job like the runner describes, with `changes` applied."""
    return replace(BASE_JOB, **changes)


# Jobs whose identity is awkward for Kubernetes names and labels.
TRICKY_JOBS = [
    pytest.param(make_job(), id="plain"),
    pytest.param(make_job(runner_short_token="AbCdEf12"), id="uppercase-token"),
    pytest.param(make_job(runner_short_token="t1_abc.de"), id="underscore-dot-token"),
    pytest.param(make_job(runner_short_token="-ab_"), id="punctuation-edges-token"),
    pytest.param(make_job(runner_short_token="_.-"), id="punctuation-only-token"),
    pytest.param(make_job(runner_short_token="X" * 64), id="64-char-token"),
    pytest.param(make_job(runner_short_token=""), id="empty-token"),
    pytest.param(make_job(job_id="9" * 40, project_id="8" * 40, pipeline_id="7" * 70,
                          runner_id="6" * 70), id="very-long-ids"),
    pytest.param(make_job(runner_short_token="Z" * 64, job_id="1" * 80, project_id="2" * 80),
                 id="long-token-and-ids"),
]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """A container's env list as a mapping."""
    return {item["name"]: item["value"] for item in container["env"]}


def containers(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The manifest's containers by name."""
    return {c["name"]: c for c in manifest["spec"]["containers"]}


# The whole manifest.


def test_representative_job_manifest_is_exact() -> None:
    """A typical job with a chosen kaniko image yields exactly this pod."""
    job = make_job(job_image="ghcr.io/osscontainertools/kaniko:v1.28.3-debug",
                   timeout_seconds=1800, services=("postgres:16",),
                   secrets=("glcbt-64_abcdefghijklmnop",))
    helper_program = (
        "mkdir -p /runner-driver/bin\n"
        "helper=$(command -v gitlab-runner-helper || command -v gitlab-runner || true)\n"
        '[ -n "$helper" ] && ln -sf "$helper" /runner-driver/bin/gitlab-runner\n'
        "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done")
    security = {"privileged": False, "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["NET_RAW"]}}
    mounts = [{"name": "builds", "mountPath": "/builds"},
              {"name": "cache", "mountPath": "/cache"},
              {"name": "scratch", "mountPath": "/scratch"},
              {"name": "driver", "mountPath": "/runner-driver"},
              {"name": "driver-logs", "mountPath": "/runner-driver-logs"}]
    expected = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "runner-abc123xy-project-42-job-1234",
            "labels": {
                "app.kubernetes.io/managed-by": "runner-driver",
                "app.kubernetes.io/component": "ci-job",
                "runner-driver/job-id": "1234",
                "runner-driver/project-id": "42",
                "runner-driver/pipeline-id": "777",
                "runner-driver/runner-id": "9",
                "runner-driver/runner-token": "abc123xy",
            },
            "annotations": {"runner-driver/version": __version__,
                            "runner-driver/project-path": "group/app"},
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 10,
            "activeDeadlineSeconds": 2700,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [
                {"name": "builds", "emptyDir": {}},
                {"name": "cache", "emptyDir": {}},
                {"name": "scratch", "emptyDir": {}},
                {"name": "driver", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                {"name": "driver-logs", "emptyDir": {}},
            ],
            "containers": [
                {
                    "name": "helper",
                    "image": "registry.gitlab.com/gitlab-org/gitlab-runner/"
                             "gitlab-runner-helper:x86_64-v17.0.0",
                    "command": ["/bin/sh", "-c", helper_program],
                    "env": [{"name": "PATH",
                             "value": "/runner-driver/bin:/usr/local/sbin:/usr/local/bin:"
                                      "/usr/sbin:/usr/bin:/sbin:/bin"},
                            {"name": "TMPDIR", "value": "/scratch"}],
                    "resources": {},
                    "securityContext": security,
                    "volumeMounts": mounts,
                },
                {
                    "name": "build",
                    "image": "ghcr.io/osscontainertools/kaniko:v1.28.3-debug",
                    "command": ["/busybox/sh", "-c",
                                "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"],
                    "env": [{"name": "container", "value": "kube"},
                            {"name": "TMPDIR", "value": "/scratch"}],
                    "resources": {},
                    "securityContext": security,
                    "volumeMounts": mounts,
                },
            ],
        },
    }
    assert build_pod(Settings(), job) == expected


@pytest.mark.parametrize(("settings", "job"), [
    pytest.param(Settings(), make_job(), id="defaults"),
    pytest.param(Settings(), make_job(job_image="martizih/kaniko:debug", timeout_seconds=60),
                 id="job-image-and-timeout"),
    pytest.param(Settings(), make_job(pipeline_id="", runner_id="", runner_short_token="",
                                      project_path=""), id="minimal-job"),
    pytest.param(Settings(), make_job(pod_name_from_config="runner-from-config-1"),
                 id="name-from-config"),
    pytest.param(CUSTOM, make_job(job_image="registry.example.com/kaniko:1.2"),
                 id="custom-settings"),
])
def test_manifest_validates_against_kubernetes_schema(settings: Settings,
                                                      job: JobContext) -> None:
    """Pods for varied settings and jobs are valid v1 Pods for the newest schema, strictly."""
    manifest = build_pod(settings, job)
    assert kubernetes_validate.validate(manifest, K8S_VERSION, strict=True) == K8S_MINOR


@pytest.mark.parametrize("job", TRICKY_JOBS)
def test_tricky_job_manifest_validates_against_kubernetes_schema(job: JobContext) -> None:
    """Awkward tokens and ids still give a strictly valid v1 Pod."""
    manifest = build_pod(Settings(), job)
    assert kubernetes_validate.validate(manifest, K8S_VERSION, strict=True) == K8S_MINOR


def test_schema_validation_catches_a_misspelt_field() -> None:
    """The strict schema check has teeth: an unknown pod field is refused."""
    manifest = build_pod(Settings(), make_job())
    manifest["spec"]["restartPolicyy"] = "Never"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


# Pod name.


def test_pod_name_is_deterministic() -> None:
    """Equal jobs get the same name, call after call."""
    job = make_job(runner_short_token="T1_Mixed.Case")
    names = {pod_name(job), pod_name(job), pod_name(make_job(runner_short_token="T1_Mixed.Case"))}
    assert len(names) == 1


@pytest.mark.parametrize("job", TRICKY_JOBS)
def test_pod_name_is_a_dns_label(job: JobContext) -> None:
    """The name is a DNS-1123 label (it becomes the pod's hostname), whatever the ids."""
    name = pod_name(job)
    assert DNS_LABEL.fullmatch(name), name
    assert len(name) <= 63, name


@pytest.mark.parametrize(("first", "second"), [
    pytest.param(make_job(job_id="1"), make_job(job_id="2"), id="job-id"),
    pytest.param(make_job(project_id="1"), make_job(project_id="2"), id="project-id"),
    pytest.param(make_job(runner_short_token="AbC"), make_job(runner_short_token="abc"),
                 id="token-case"),
    pytest.param(make_job(runner_short_token="a_b"), make_job(runner_short_token="a.b"),
                 id="token-punctuation"),
    pytest.param(make_job(runner_short_token="a_b"), make_job(runner_short_token="a-b"),
                 id="token-sanitised-vs-readable"),
    pytest.param(make_job(job_id="1" * 80 + "1"), make_job(job_id="1" * 80 + "2"),
                 id="long-job-id-differing-past-truncation"),
    pytest.param(make_job(runner_short_token="", project_id="1", job_id="23"),
                 make_job(runner_short_token="", project_id="12", job_id="3"),
                 id="empty-token-shifted-ids"),
])
def test_pod_name_differs_between_jobs(first: JobContext, second: JobContext) -> None:
    """Jobs that differ in job id, project id or exact token never share a pod name."""
    assert pod_name(first) != pod_name(second)


def test_pod_name_is_readable_for_a_lowercase_token() -> None:
    """A lowercase alphanumeric token gives `runner-<token>-project-<p>-job-<j>`."""
    assert pod_name(make_job(runner_short_token="ab12cd34", project_id="42",
                             job_id="1234")) == "runner-ab12cd34-project-42-job-1234"


def test_pod_name_from_config_wins() -> None:
    """The name `config` put into job_env is used as is in the later stages."""
    job = make_job(runner_short_token="ABC", pod_name_from_config="runner-chosen-earlier")
    assert pod_name(job) == "runner-chosen-earlier"
    assert build_pod(Settings(), job)["metadata"]["name"] == "runner-chosen-earlier"


# Labels.


def test_labels_carry_managed_by_and_ids() -> None:
    """Labels name the driver as manager and carry the job's, project's and runner's ids."""
    assert labels(make_job()) == {
        "app.kubernetes.io/managed-by": "runner-driver",
        "app.kubernetes.io/component": "ci-job",
        "runner-driver/job-id": "1234",
        "runner-driver/project-id": "42",
        "runner-driver/pipeline-id": "777",
        "runner-driver/runner-id": "9",
        "runner-driver/runner-token": "abc123xy",
    }


def test_labels_omit_empty_values() -> None:
    """Ids the runner did not provide get no label at all, not an empty one."""
    found = labels(make_job(pipeline_id="", runner_id="", runner_short_token=""))
    assert set(found) == {"app.kubernetes.io/managed-by", "app.kubernetes.io/component",
                          "runner-driver/job-id", "runner-driver/project-id"}
    assert all(found.values())


@pytest.mark.parametrize("job", TRICKY_JOBS)
def test_labels_are_valid_kubernetes_labels(job: JobContext) -> None:
    """Every label key and value has the syntax and length the API server accepts."""
    for key, value in labels(job).items():
        prefix, _, name = key.rpartition("/")
        assert DNS_SUBDOMAIN.fullmatch(prefix) and len(prefix) <= 253, key
        assert LABEL_NAME.fullmatch(name) and len(name) <= 63, key
        assert value and LABEL_VALUE.fullmatch(value) and len(value) <= 63, (key, value)


@pytest.mark.parametrize(("first", "second"), [
    pytest.param("-ab_", "_ab-", id="punctuation-edges"),
    pytest.param("X" * 64, "X" * 63 + "Y", id="over-long"),
])
def test_token_labels_stay_distinct_when_rewritten(first: str, second: str) -> None:
    """Tokens that must be rewritten into a valid label value still get distinct labels."""
    key = "runner-driver/runner-token"
    assert labels(make_job(runner_short_token=first))[key] != \
        labels(make_job(runner_short_token=second))[key]


# The build image and its allow-list.


def test_empty_job_image_gets_the_default() -> None:
    """A job without `image:` runs the build container on the settings' default image."""
    assert build_image(Settings(), make_job(job_image="")) == KANIKO_DEBUG_IMAGE
    assert build_image(CUSTOM, make_job(job_image="")) == "registry.example.com/kaniko:debug"


@pytest.mark.parametrize("image", [
    "gcr.io/kaniko-project/executor:debug",
    "gcr.io/kaniko-project/executor:v1.23.2-debug",
    "gcr.io/kaniko-project/executor:v1.23.2-debug@sha256:"
    "b44b6ec3d81ecd7e5bc2dd2e6b2c8ff5fd0a58e2a2f7c0a8e6c6ed36d0c1b2a3",
    "ghcr.io/osscontainertools/kaniko:v1.28.3-debug",
    "martizih/kaniko:debug",
])
def test_allowed_images_are_accepted(image: str) -> None:
    """Kaniko debug images of upstream and the maintained forks pass the default allow-list."""
    assert build_image(Settings(), make_job(job_image=image)) == image
    assert containers(build_pod(Settings(), make_job(job_image=image)))["build"]["image"] == image


@pytest.mark.parametrize("image", [
    "docker:27",
    "alpine",
    "gcr.io/kaniko-project/executor:v1.23.2",
    "evil.example.com/gcr.io/kaniko-project/executor:debug",
])
def test_disallowed_images_fail_the_job(image: str) -> None:
    """Any other image is the job's failure, with a message naming it and the allow-list."""
    with pytest.raises(JobFailed) as caught:
        build_image(Settings(), make_job(job_image=image))
    message = str(caught.value)
    assert repr(image) in message
    assert all(pattern in message for pattern in DEFAULT_ALLOWED_IMAGES)
    with pytest.raises(JobFailed):
        build_pod(Settings(), make_job(job_image=image))


def test_custom_allow_list_is_honoured() -> None:
    """The operator's own patterns replace the defaults entirely."""
    assert build_image(CUSTOM, make_job(job_image="registry.example.com/kaniko:v2-debug")) == \
        "registry.example.com/kaniko:v2-debug"
    with pytest.raises(JobFailed, match=r"registry\.example\.com/kaniko:\*"):
        build_image(CUSTOM, make_job(job_image="gcr.io/kaniko-project/executor:debug"))


def test_empty_allow_list_allows_only_the_default() -> None:
    """With no patterns, only the default image runs, whether implicit or named."""
    settings = Settings(build=BuildSettings(allowed_images=()))
    assert build_image(settings, make_job(job_image="")) == KANIKO_DEBUG_IMAGE
    assert build_image(settings, make_job(job_image=KANIKO_DEBUG_IMAGE)) == KANIKO_DEBUG_IMAGE
    with pytest.raises(JobFailed, match="only the default image") as caught:
        build_image(settings, make_job(job_image="gcr.io/kaniko-project/executor:debug"))
    assert KANIKO_DEBUG_IMAGE in str(caught.value)


# Privileges and the containers' programs.


@pytest.mark.parametrize("name", ["helper", "build"])
def test_containers_run_unprivileged(name: str) -> None:
    """No container is privileged, may escalate, or keeps NET_RAW."""
    context = containers(build_pod(Settings(), make_job()))[name]["securityContext"]
    assert context["privileged"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert "NET_RAW" in context["capabilities"]["drop"]
    assert "add" not in context["capabilities"]


def test_pod_level_hardening() -> None:
    """RuntimeDefault seccomp, no service-account token, no restarts, no service links."""
    spec = build_pod(Settings(), make_job())["spec"]
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"
    assert spec["enableServiceLinks"] is False
    assert "serviceAccountName" not in spec and "hostNetwork" not in spec


def test_build_env_lets_kaniko_run() -> None:
    """The build container has `container=kube` and TMPDIR on the settings' scratch dir."""
    env = env_of(containers(build_pod(CUSTOM, make_job()))["build"])
    assert env == {"container": "kube", "TMPDIR": "/var/scratch"}


def test_helper_path_starts_with_driver_bin() -> None:
    """The helper finds the driver's `gitlab-runner` name before anything else on PATH."""
    env = env_of(containers(build_pod(CUSTOM, make_job()))["helper"])
    assert env["PATH"].split(":")[0] == "/runner-driver/bin"
    assert env["TMPDIR"] == "/var/scratch"


def test_build_command_overrides_entrypoint_and_traps_term() -> None:
    """The build container runs busybox sh (not /kaniko/executor) and exits on SIGTERM."""
    build = containers(build_pod(Settings(), make_job()))["build"]
    assert build["command"][:2] == ["/busybox/sh", "-c"]
    assert len(build["command"]) == 3 and "args" not in build
    assert re.search(r"trap '[^']*' TERM", build["command"][2])


def test_helper_command_traps_term() -> None:
    """The helper's PID 1 shell also exits on SIGTERM instead of waiting out the grace."""
    helper = containers(build_pod(Settings(), make_job()))["helper"]
    assert helper["command"][:2] == ["/bin/sh", "-c"]
    assert re.search(r"trap '[^']*' TERM", helper["command"][2])


# Volumes.


@pytest.mark.parametrize("settings", [pytest.param(Settings(), id="defaults"),
                                      pytest.param(CUSTOM, id="custom")])
def test_volumes_are_mounted_in_both_containers(settings: Settings) -> None:
    """builds, cache, scratch, driver and driver-logs emptyDirs are mounted in both containers."""
    manifest = build_pod(settings, make_job(job_image=settings.build.image))
    volumes = {v["name"]: v for v in manifest["spec"]["volumes"]}
    assert set(volumes) == {"builds", "cache", "scratch", "driver", "driver-logs"}
    assert all("emptyDir" in v and len(v) == 2 for v in volumes.values())
    expected = {"builds": settings.pod.builds_dir, "cache": settings.pod.cache_dir,
                "scratch": settings.pod.scratch_dir, "driver": "/runner-driver",
                "driver-logs": LOG_DIR}
    for container in manifest["spec"]["containers"]:
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts == expected, container["name"]


def test_driver_volume_is_memory_backed() -> None:
    """The driver's volume (pid files, the gitlab-runner link) lives in memory."""
    volumes = {v["name"]: v for v in build_pod(Settings(), make_job())["spec"]["volumes"]}
    assert volumes["driver"]["emptyDir"]["medium"] == "Memory"
    assert all("medium" not in volumes[n]["emptyDir"] for n in ("builds", "cache", "scratch"))


def test_stage_logs_volume_is_disk_backed_and_unbounded() -> None:
    """Stage output goes to its own disk-backed emptyDir at inpod.LOG_DIR, with no size limit."""
    volumes = {v["name"]: v for v in build_pod(Settings(), make_job())["spec"]["volumes"]}
    assert volumes["driver-logs"] == {"name": "driver-logs", "emptyDir": {}}
    assert LOG_DIR == "/runner-driver-logs"


# Deadline.


@pytest.mark.parametrize(("settings", "timeout", "expected"), [
    pytest.param(Settings(), 600, 600 + 900, id="job-timeout"),
    pytest.param(Settings(), None, 3600 + 900, id="default-timeout"),
    pytest.param(CUSTOM, 600, 600 + 60, id="custom-margin"),
    pytest.param(CUSTOM, None, 7200 + 60, id="custom-default"),
])
def test_active_deadline_is_timeout_plus_margin(settings: Settings, timeout: int | None,
                                                expected: int) -> None:
    """activeDeadlineSeconds is the job timeout (or the default) plus the margin."""
    job = make_job(timeout_seconds=timeout, job_image=settings.build.image)
    assert active_deadline_seconds(settings, job) == expected
    assert build_pod(settings, job)["spec"]["activeDeadlineSeconds"] == expected


# Resources.

SIZED = Settings(
    build=BuildSettings(cpu_request="500m", memory_request="1Gi", cpu_limit="2",
                        memory_limit="4Gi"),
    helper=HelperSettings(cpu_request="100m", memory_limit="256Mi"),
)


@pytest.mark.parametrize(("container", "expected"), [
    pytest.param(BuildSettings(), {}, id="none"),
    pytest.param(BuildSettings(cpu_request="500m"), {"requests": {"cpu": "500m"}},
                 id="cpu-request-only"),
    pytest.param(HelperSettings(memory_limit="256Mi"), {"limits": {"memory": "256Mi"}},
                 id="memory-limit-only"),
    pytest.param(BuildSettings(memory_request="1Gi", cpu_limit="2"),
                 {"requests": {"memory": "1Gi"}, "limits": {"cpu": "2"}}, id="crossed"),
    pytest.param(HelperSettings(cpu_request="1", memory_request="2Gi", cpu_limit="1.5",
                                memory_limit="3Gi"),
                 {"requests": {"cpu": "1", "memory": "2Gi"},
                  "limits": {"cpu": "1.5", "memory": "3Gi"}}, id="all-four"),
])
def test_resources_leave_out_what_is_unset(container: BuildSettings | HelperSettings,
                                           expected: dict[str, dict[str, str]]) -> None:
    """Only the quantities set appear; a kind (requests, limits) with none is left out."""
    assert resources(container) == expected


def test_each_container_gets_its_own_resources() -> None:
    """The build container gets [build]'s quantities and the helper [helper]'s, unmixed."""
    found = containers(build_pod(SIZED, make_job()))
    assert found["build"]["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                           "limits": {"cpu": "2", "memory": "4Gi"}}
    assert found["helper"]["resources"] == {"requests": {"cpu": "100m"},
                                            "limits": {"memory": "256Mi"}}


def test_no_resources_set_gives_empty_blocks() -> None:
    """With the defaults both containers have an empty resources block (LimitRange applies)."""
    found = containers(build_pod(Settings(), make_job()))
    assert found["build"]["resources"] == {} and found["helper"]["resources"] == {}


def test_manifest_with_resources_validates_against_kubernetes_schema() -> None:
    """A pod with requests and limits on both containers is a strictly valid v1 Pod."""
    manifest = build_pod(SIZED, make_job())
    assert kubernetes_validate.validate(manifest, K8S_VERSION, strict=True) == K8S_MINOR


# The job timeout behind the deadline, and the selector gc uses.


@pytest.mark.parametrize(("settings", "timeout", "expected"), [
    pytest.param(Settings(), 600, 600, id="job-timeout"),
    pytest.param(Settings(), None, 3600, id="default-timeout"),
    pytest.param(CUSTOM, None, 7200, id="custom-default"),
    pytest.param(CUSTOM, 60, 60, id="job-timeout-wins-over-custom-default"),
])
def test_deadline_is_the_jobs_timeout_plus_the_margin(settings: Settings, timeout: int | None,
                                                      expected: int) -> None:
    """The job timeout (or the default) plus the margin is the pod's activeDeadlineSeconds."""
    job = make_job(timeout_seconds=timeout, job_image=settings.build.image)
    assert job_timeout_seconds(settings, job) == expected
    assert build_pod(settings, job)["spec"]["activeDeadlineSeconds"] == expected + \
        settings.pod.deadline_margin_seconds
    assert active_deadline_seconds(settings, job) == expected + \
        settings.pod.deadline_margin_seconds


@pytest.mark.parametrize("job", TRICKY_JOBS)
def test_managed_selector_matches_every_job_pod(job: JobContext) -> None:
    """MANAGED_SELECTOR (what gc lists by) matches the labels of every pod the driver builds."""
    key, _, value = MANAGED_SELECTOR.partition("=")
    assert build_pod(Settings(), job)["metadata"]["labels"][key] == value


# What must never be in the manifest, and purity.


def test_manifest_holds_no_secret() -> None:
    """No secret value of the job appears anywhere in the manifest."""
    secrets = ("glcbt-64_s3cr3tJobTokenValue", "registry-password-hunter2",
               '{"auths":{"r.example.com":{"auth":"dXNlcjpwYXNz"}}}')
    job = make_job(project_path="group/sub/app", job_image="martizih/kaniko:debug",
                   services=("postgres:16",), timeout_seconds=900, secrets=secrets,
                   runner_short_token="Tok_en.1")
    text = json.dumps(build_pod(Settings(), job))
    assert "group/sub/app" in text  # the job's identity is there ...
    for secret in secrets:  # ... but none of its secrets
        assert secret not in text
        assert json.dumps(secret)[1:-1] not in text


def test_builder_is_pure() -> None:
    """Same input gives equal output, inputs stay unchanged, outputs share no state."""
    settings = replace(CUSTOM, build=replace(CUSTOM.build, cpu_request="1", memory_limit="1Gi"),
                       helper=replace(CUSTOM.helper, memory_request="128Mi"))
    job = make_job(job_image="registry.example.com/kaniko:debug", secrets=("a-secret-value",))
    settings_before, job_before = copy.deepcopy(settings), copy.deepcopy(job)
    first = build_pod(settings, job)
    pristine = copy.deepcopy(first)
    assert build_pod(settings, job) == first
    assert settings == settings_before and job == job_before
    # Mutating one result must not leak into the next (no module-level objects returned).
    first["metadata"]["labels"]["x"] = "y"
    first["metadata"]["annotations"].clear()
    for container in first["spec"]["containers"]:
        container["command"].append("x")
        container["env"].clear()
        container["securityContext"]["capabilities"]["drop"].append("ALL")
        container["volumeMounts"].clear()
        for kind in container["resources"].values():
            kind["cpu"] = "99"
    first["spec"]["volumes"][3]["emptyDir"]["medium"] = ""
    assert build_pod(settings, job) == pristine
