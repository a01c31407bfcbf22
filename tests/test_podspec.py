"""The job pod as a plain manifest: name, labels, identity, image policy, privileges, volumes,
deadline."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from runner_driver import __version__
from runner_driver.errors import ConfigError, JobFailed
from runner_driver.inpod import LOG_DIR
from runner_driver.podspec import (
    JOB_LABEL,
    MANAGED_SELECTOR,
    MANAGER_LABEL,
    NONCE_ENV,
    NONCE_LABEL,
    PROJECT_LABEL,
    active_deadline_seconds,
    build_image,
    build_pod,
    job_timeout_seconds,
    labels,
    leftover_of,
    manager_label,
    manager_selector,
    pod_annotations,
    pod_name,
    resources,
)
from runner_driver.runner_env import DISPLAY_LIMIT, JobContext, new_nonce
from runner_driver.settings import (
    DEFAULT_ALLOWED_IMAGES,
    KANIKO_DEBUG_IMAGE,
    BuildSettings,
    ContainerResources,
    HelperSettings,
    ManagerSettings,
    PodSettings,
    Settings,
)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# What the API server accepts as a label value (empty is allowed, but the driver omits it).
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
HEX32 = re.compile(r"[0-9a-f]{32}")
K8S_VERSION: str = kubernetes_validate.latest_version()
K8S_MINOR = ".".join(K8S_VERSION.split(".")[:2])
# The largest id GitLab can send (int64), which the payload reader accepts.
MAX_ID = str(2**63 - 1)

NONCE = "0123456789abcdef0123456789abcdef"
MANAGER = "ci-manager-1"
# sha256("ci-manager-1")[:8]: the manager part of every pod name under SETTINGS.
MANAGER_HASH = "ac4b8e4e"
BASE_JOB = JobContext(
    job_id="1234",
    project_id="42",
    timeout_seconds=None,
    nonce=NONCE,
    tmpdir="/tmp/runner-job-1234",
    pipeline_id="777",
    runner_id="9",
    runner_short_token="abc123xy",
    project_path="group/app",
    job_image="",
    services=(),
    pod_name_from_config="",
    namespace_from_config="",
    secrets=(),
)

# The settings of a started command: `resolve_manager` has filled in the manager's id.
SETTINGS = Settings(manager=ManagerSettings(id=MANAGER))
CUSTOM = Settings(
    pod=PodSettings(builds_dir="/work/builds", cache_dir="/work/cache",
                    scratch_dir="/var/scratch", termination_grace_period_seconds=30,
                    default_job_timeout_seconds=7200, deadline_margin_seconds=60),
    build=BuildSettings(image="registry.example.com/kaniko:debug",
                        allowed_images=("registry.example.com/kaniko:*",)),
    helper=HelperSettings(image="registry.example.com/gitlab-runner-helper:v17.0.0"),
    manager=ManagerSettings(id="ci-manager-2"),
)


def make_job(**changes: Any) -> JobContext:
    """A job like the runner describes, with `changes` applied."""
    return replace(BASE_JOB, **changes)


def with_manager(manager: str, settings: Settings = SETTINGS) -> Settings:
    """`settings` for the runner manager `manager`."""
    return replace(settings, manager=ManagerSettings(id=manager))


# Settings and jobs whose identity is awkward for Kubernetes names and labels. Host names
# (the default manager id) are not validated like `[manager] id` from the file is.
TRICKY = [
    pytest.param(SETTINGS, make_job(), id="plain"),
    pytest.param(with_manager("CI-Host.Example_1"), make_job(), id="mixed-case-manager"),
    pytest.param(with_manager("-ab_"), make_job(), id="punctuation-edges-manager"),
    pytest.param(with_manager("_.-"), make_job(), id="punctuation-only-manager"),
    pytest.param(with_manager("h" * 64), make_job(), id="64-char-manager"),
    pytest.param(with_manager("build-host.very-long-subdomain.example.com." * 3), make_job(),
                 id="fqdn-over-63-manager"),
    pytest.param(SETTINGS, make_job(job_id=MAX_ID, project_id=MAX_ID), id="max-int64-ids"),
    pytest.param(SETTINGS, make_job(job_id="9" * 40, project_id="8" * 40, pipeline_id="7" * 70,
                                    runner_id="6" * 70), id="very-long-ids"),
    pytest.param(with_manager("Z" * 64), make_job(job_id="1" * 80, project_id="2" * 80),
                 id="long-manager-and-ids"),
]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """A container's env list as a mapping: a literal's value, else its `valueFrom`."""
    return {item["name"]: item["value"] if "value" in item else item["valueFrom"]
            for item in container["env"]}


def containers(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The manifest's containers by name."""
    return {c["name"]: c for c in manifest["spec"]["containers"]}


def selector_pairs(selector: str) -> dict[str, str]:
    """An equality-only label selector (`k=v,k2=v2`) as a mapping."""
    return dict(term.split("=", 1) for term in selector.split(","))


# The whole manifest.


def test_representative_job_manifest_is_exact() -> None:
    """A typical job with a chosen kaniko image yields exactly this pod."""
    job = make_job(job_image="ghcr.io/osscontainertools/kaniko:v1.28.3-debug",
                   timeout_seconds=1800, services=("postgres:16",),
                   secrets=("glcbt-64_abcdefghijklmnop",))
    helper_program = (
        "mkdir -p /runner-driver/bin\n"
        "if [ -f /runner-driver-secrets/ca/ca.crt ]; then\n"
        "  cat /etc/ssl/certs/ca-certificates.crt /runner-driver-secrets/ca/ca.crt > "
        "/runner-driver/ca-bundle.crt 2>/dev/null\nfi\n"
        "helper=$(command -v gitlab-runner-helper || command -v gitlab-runner || true)\n"
        '[ -n "$helper" ] && ln -sf "$helper" /runner-driver/bin/gitlab-runner\n'
        "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done")
    helper_security = {"privileged": False, "allowPrivilegeEscalation": False,
                       "capabilities": {"drop": ["ALL"]}, "runAsUser": 1000,
                       "runAsNonRoot": True}
    build_security = {"privileged": False, "allowPrivilegeEscalation": False,
                      "capabilities": {"drop": ["ALL"],
                                       "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID",
                                               "KILL", "MKNOD", "SETFCAP", "SETGID",
                                               "SETPCAP", "SETUID", "SYS_CHROOT"]}}
    mounts = [{"name": "builds", "mountPath": "/builds"},
              {"name": "cache", "mountPath": "/cache"},
              {"name": "scratch", "mountPath": "/scratch"},
              {"name": "driver", "mountPath": "/runner-driver"},
              {"name": "driver-logs", "mountPath": "/runner-driver-logs"}]
    nonce_env = {"name": "RUNNER_DRIVER_NONCE",
                 "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['runner-driver/nonce']"}}}
    expected = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"runner-{MANAGER_HASH}-project-42-job-1234",
            "labels": {
                "app.kubernetes.io/managed-by": "runner-driver",
                "app.kubernetes.io/component": "ci-job",
                "runner-driver/job-id": "1234",
                "runner-driver/project-id": "42",
                "runner-driver/manager": "ci-manager-1",
                "runner-driver/nonce": NONCE,
            },
            "annotations": {"runner-driver/version": __version__,
                            "runner-driver/claimed-project-path": "group/app",
                            "runner-driver/claimed-pipeline-id": "777",
                            "runner-driver/claimed-runner-id": "9"},
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 10,
            "activeDeadlineSeconds": 2700,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [
                {"name": "builds", "emptyDir": {"sizeLimit": "10Gi"}},
                {"name": "cache", "emptyDir": {"sizeLimit": "10Gi"}},
                {"name": "scratch", "emptyDir": {"sizeLimit": "10Gi"}},
                {"name": "driver", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                {"name": "driver-logs", "emptyDir": {"sizeLimit": "1Gi"}},
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
                            {"name": "TMPDIR", "value": "/scratch"},
                            nonce_env,
                            {"name": "HOME", "value": "/scratch"}],
                    "resources": {"requests": {"ephemeral-storage": "256Mi"},
                                  "limits": {"ephemeral-storage": "4Gi"}},
                    "securityContext": helper_security,
                    "volumeMounts": mounts,
                },
                {
                    "name": "build",
                    "image": "ghcr.io/osscontainertools/kaniko:v1.28.3-debug",
                    "command": ["/busybox/sh", "-c",
                                "mkdir -p /runner-driver/run && chmod 777 /runner-driver/run\n"
                                "if [ -f /runner-driver-secrets/docker/config.json ]; then\n"
                                "  mkdir -p /kaniko/.docker && cp /runner-driver-secrets/docker/"
                                "config.json /kaniko/.docker/config.json\nfi\n"
                                "if [ -f /runner-driver-secrets/ca/ca.crt ]; then\n"
                                "  mkdir -p /kaniko/ssl/certs && cat /runner-driver-secrets/"
                                "ca/ca.crt >> /kaniko/ssl/certs/ca-certificates.crt\nfi\n"
                                "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"],
                    "env": [{"name": "container", "value": "kube"},
                            {"name": "TMPDIR", "value": "/scratch"},
                            nonce_env],
                    "resources": {"requests": {"ephemeral-storage": "1Gi"},
                                  "limits": {"ephemeral-storage": "20Gi"}},
                    "securityContext": build_security,
                    "volumeMounts": mounts,
                },
            ],
        },
    }
    assert build_pod(SETTINGS, job) == expected


@pytest.mark.parametrize(("settings", "job"), [
    pytest.param(SETTINGS, make_job(), id="defaults"),
    pytest.param(SETTINGS, make_job(job_image="martizih/kaniko:debug", timeout_seconds=60),
                 id="job-image-and-timeout"),
    pytest.param(SETTINGS, make_job(pipeline_id="", runner_id="", runner_short_token="",
                                    project_path=""), id="minimal-job"),
    pytest.param(SETTINGS, make_job(pod_name_from_config="runner-from-config-1"),
                 id="name-from-config"),
    pytest.param(Settings(), make_job(), id="unresolved-manager"),
    pytest.param(CUSTOM, make_job(job_image="registry.example.com/kaniko:1.2"),
                 id="custom-settings"),
])
def test_manifest_validates_against_kubernetes_schema(settings: Settings,
                                                      job: JobContext) -> None:
    """Pods for varied settings and jobs are valid v1 Pods for the newest schema, strictly."""
    manifest = build_pod(settings, job)
    assert kubernetes_validate.validate(manifest, K8S_VERSION, strict=True) == K8S_MINOR


@pytest.mark.parametrize(("settings", "job"), TRICKY)
def test_tricky_job_manifest_validates_against_kubernetes_schema(settings: Settings,
                                                                 job: JobContext) -> None:
    """Awkward manager ids and long ids still give a strictly valid v1 Pod."""
    manifest = build_pod(settings, job)
    assert kubernetes_validate.validate(manifest, K8S_VERSION, strict=True) == K8S_MINOR


def test_schema_validation_catches_a_misspelt_field() -> None:
    """The strict schema check has teeth: an unknown pod field is refused."""
    manifest = build_pod(SETTINGS, make_job())
    manifest["spec"]["restartPolicyy"] = "Never"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


# Pod name.


def test_pod_name_is_manager_hash_project_and_job() -> None:
    """The name is `runner-<sha256(manager id)[:8]>-project-<project id>-job-<job id>`."""
    digest = hashlib.sha256(MANAGER.encode()).hexdigest()[:8]
    assert digest == MANAGER_HASH
    assert pod_name(SETTINGS, make_job(project_id="42", job_id="1234")) == \
        f"runner-{MANAGER_HASH}-project-42-job-1234"
    assert pod_name(CUSTOM, make_job(project_id="7", job_id="8")) == \
        f"runner-{hashlib.sha256(b'ci-manager-2').hexdigest()[:8]}-project-7-job-8"


def test_pod_name_is_deterministic() -> None:
    """Equal settings and jobs get the same name, call after call."""
    job = make_job(job_id="5150", project_id="77")
    names = {pod_name(SETTINGS, job), pod_name(SETTINGS, job),
             pod_name(with_manager(MANAGER), make_job(job_id="5150", project_id="77"))}
    assert len(names) == 1


@pytest.mark.parametrize(("settings", "job"), TRICKY)
def test_pod_name_is_a_dns_label(settings: Settings, job: JobContext) -> None:
    """The name is a DNS-1123 label (it becomes the pod's hostname), whatever the ids."""
    name = pod_name(settings, job)
    assert DNS_LABEL.fullmatch(name), name
    assert len(name) <= 63, name


def test_pod_name_of_exactly_63_characters_stays_readable() -> None:
    """A readable name of exactly 63 characters is used as it is, unshortened."""
    job = make_job(project_id="1" * 17, job_id="2" * 17)
    expected = f"runner-{MANAGER_HASH}-project-{'1' * 17}-job-{'2' * 17}"
    assert len(expected) == 63
    assert pod_name(SETTINGS, job) == expected


def test_pod_name_over_63_characters_is_shortened_with_a_hash() -> None:
    """A longer name keeps its readable start and ends in 10 hex chars of its full form."""
    job = make_job(project_id="1" * 17, job_id="2" * 18)
    readable = f"runner-{MANAGER_HASH}-project-{'1' * 17}-job-{'2' * 18}"
    assert len(readable) == 64
    name = pod_name(SETTINGS, job)
    digest = hashlib.sha256(readable.encode()).hexdigest()[:10]
    assert len(name) <= 63 and DNS_LABEL.fullmatch(name), name
    assert name.endswith(f"-{digest}")
    assert name.startswith(f"runner-{MANAGER_HASH}-project-111")
    assert name == f"{readable[:52].rstrip('-')}-{digest}"


def test_pod_name_of_the_largest_ids_fits() -> None:
    """The largest job and project ids GitLab can send still give a name of at most 63."""
    name = pod_name(SETTINGS, make_job(job_id=MAX_ID, project_id=MAX_ID))
    assert len(name) <= 63 and DNS_LABEL.fullmatch(name), name
    assert name.startswith(f"runner-{MANAGER_HASH}-project-")
    assert name != pod_name(SETTINGS, make_job(job_id=str(2**63 - 2), project_id=MAX_ID))


@pytest.mark.parametrize(("first", "second"), [
    pytest.param(make_job(job_id="1"), make_job(job_id="2"), id="job-id"),
    pytest.param(make_job(project_id="1"), make_job(project_id="2"), id="project-id"),
    pytest.param(make_job(job_id="1" * 80 + "1"), make_job(job_id="1" * 80 + "2"),
                 id="long-job-id-differing-past-truncation"),
    pytest.param(make_job(project_id="1" * 40, job_id="2" * 40 + "3"),
                 make_job(project_id="1" * 40, job_id="2" * 40 + "4"),
                 id="long-ids-differing-at-the-end"),
    pytest.param(make_job(project_id="1", job_id="23"), make_job(project_id="12", job_id="3"),
                 id="shifted-ids"),
])
def test_pod_name_differs_between_jobs(first: JobContext, second: JobContext) -> None:
    """Jobs that differ in job id or project id never share a pod name."""
    assert pod_name(SETTINGS, first) != pod_name(SETTINGS, second)


@pytest.mark.parametrize(("first", "second"), [
    pytest.param("ci-manager-1", "ci-manager-2", id="different"),
    pytest.param("Host", "host", id="case"),
    pytest.param("h" * 70 + "1", "h" * 70 + "2", id="long-differing-at-the-end"),
])
def test_pod_name_differs_per_manager(first: str, second: str) -> None:
    """The same job run by two runner managers gets two pod names."""
    job = make_job()
    assert pod_name(with_manager(first), job) != pod_name(with_manager(second), job)


@pytest.mark.parametrize("changes", [
    pytest.param({"runner_short_token": "OtherTok"}, id="short-token"),
    pytest.param({"pipeline_id": "31337"}, id="pipeline-id"),
    pytest.param({"runner_id": "4444"}, id="runner-id"),
    pytest.param({"project_path": "other/project"}, id="project-path"),
    pytest.param({"nonce": new_nonce()}, id="nonce"),
    pytest.param({"tmpdir": "/tmp/elsewhere"}, id="tmpdir"),
])
def test_pod_name_ignores_what_the_job_claims(changes: dict[str, Any]) -> None:
    """Only the payload's ids and the manager name the pod: claims and the nonce do not."""
    assert pod_name(SETTINGS, make_job(**changes)) == pod_name(SETTINGS, make_job())


def test_pod_name_from_config_wins() -> None:
    """The name `config` put into job_env is used as is in the later stages."""
    job = make_job(pod_name_from_config="runner-chosen-earlier")
    assert pod_name(SETTINGS, job) == "runner-chosen-earlier"
    assert build_pod(SETTINGS, job)["metadata"]["name"] == "runner-chosen-earlier"


# Labels and annotations.


def test_labels_carry_managed_by_ids_manager_and_nonce() -> None:
    """Labels name the driver and carry the job's, project's, manager's and nonce's values."""
    assert labels(SETTINGS, make_job()) == {
        "app.kubernetes.io/managed-by": "runner-driver",
        "app.kubernetes.io/component": "ci-job",
        JOB_LABEL: "1234",
        PROJECT_LABEL: "42",
        MANAGER_LABEL: MANAGER,
        NONCE_LABEL: NONCE,
    }
    assert (JOB_LABEL, PROJECT_LABEL, MANAGER_LABEL, NONCE_LABEL) == (
        "runner-driver/job-id", "runner-driver/project-id", "runner-driver/manager",
        "runner-driver/nonce")


def test_labels_follow_the_job_and_manager() -> None:
    """Each identity label holds this job's own value, not a constant."""
    job = make_job(job_id="99", project_id="100", nonce=new_nonce())
    found = labels(CUSTOM, job)
    assert (found[JOB_LABEL], found[PROJECT_LABEL], found[MANAGER_LABEL], found[NONCE_LABEL]) \
        == ("99", "100", "ci-manager-2", job.nonce)


def test_labels_omit_empty_values() -> None:
    """Values that are empty (unresolved manager, no nonce) get no label, not an empty one."""
    found = labels(Settings(), make_job(nonce="", pipeline_id="", runner_id="",
                                        runner_short_token=""))
    assert set(found) == {"app.kubernetes.io/managed-by", "app.kubernetes.io/component",
                          JOB_LABEL, PROJECT_LABEL}
    assert all(found.values())


@pytest.mark.parametrize(("settings", "job"), TRICKY)
def test_labels_are_valid_kubernetes_labels(settings: Settings, job: JobContext) -> None:
    """Every label key and value has the syntax and length the API server accepts."""
    for key, value in labels(settings, job).items():
        prefix, _, name = key.rpartition("/")
        assert DNS_SUBDOMAIN.fullmatch(prefix) and len(prefix) <= 253, key
        assert LABEL_NAME.fullmatch(name) and len(name) <= 63, key
        assert value and LABEL_VALUE.fullmatch(value) and len(value) <= 63, (key, value)


@pytest.mark.parametrize(("first", "second"), [
    pytest.param("-ab_", "_ab-", id="punctuation-edges"),
    pytest.param("X" * 64, "X" * 63 + "Y", id="over-long"),
])
def test_manager_labels_stay_distinct_when_rewritten(first: str, second: str) -> None:
    """Manager ids that must be rewritten into a valid label value still get distinct labels."""
    first_label = labels(with_manager(first), make_job())[MANAGER_LABEL]
    second_label = labels(with_manager(second), make_job())[MANAGER_LABEL]
    assert first_label != second_label
    assert manager_label(with_manager(first)) == first_label


def test_manager_label_is_the_id_when_valid_and_empty_when_unset() -> None:
    """A valid manager id is its own label value; an unresolved (empty) one gives ''."""
    assert manager_label(SETTINGS) == MANAGER
    assert manager_label(Settings()) == ""


CLAIMS = {"pipeline_id": "claimed-pipeline-555", "runner_id": "claimed-runner-666",
          "runner_short_token": "ClaimedTok", "project_path": "claimed/victim-project"}


def test_claimed_values_go_to_annotations_only() -> None:
    """Pipeline, runner and project path the job claims are annotated, never labels or name."""
    job = make_job(**CLAIMS)
    manifest = build_pod(SETTINGS, job)
    assert pod_annotations(job) == manifest["metadata"]["annotations"] == {
        "runner-driver/version": __version__,
        "runner-driver/claimed-project-path": "claimed/victim-project",
        "runner-driver/claimed-pipeline-id": "claimed-pipeline-555",
        "runner-driver/claimed-runner-id": "claimed-runner-666",
    }
    found = manifest["metadata"]["labels"]
    assert found == labels(SETTINGS, make_job())
    name = manifest["metadata"]["name"]
    assert name == pod_name(SETTINGS, make_job())
    for claim in CLAIMS.values():
        lowered = claim.lower()
        assert all(claim not in text and lowered not in text
                   for text in (*found, *found.values(), name)), claim


def test_annotations_omit_claims_the_job_did_not_make() -> None:
    """Without claimed values only the driver version is annotated."""
    job = make_job(pipeline_id="", runner_id="", runner_short_token="", project_path="")
    assert pod_annotations(job) == {"runner-driver/version": __version__}


def test_claimed_values_are_sanitised_on_their_way_to_annotations(tmp_path: Path) -> None:
    """Hostile claimed values read from the environment reach annotations printable and short."""
    response = tmp_path / "response.json"
    response.write_text(json.dumps({"id": 1234, "job_info": {"project_id": 42}}),
                        encoding="utf-8")
    hostile = "evil\nrunner-driver/job-id: 1\x1b[31m\x00" + "x" * 500
    job = JobContext.from_env({
        "JOB_RESPONSE_FILE": str(response), "TMPDIR": str(tmp_path),
        "RUNNER_DRIVER_NONCE": NONCE,
        "CUSTOM_ENV_CI_PROJECT_PATH": hostile, "CUSTOM_ENV_CI_PIPELINE_ID": hostile,
        "CUSTOM_ENV_CI_RUNNER_ID": hostile, "CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN": hostile,
        "CUSTOM_ENV_CI_JOB_ID": "1", "CUSTOM_ENV_CI_PROJECT_ID": "2",
    })
    annotations = pod_annotations(job)
    claimed = {k: v for k, v in annotations.items() if k != "runner-driver/version"}
    assert set(claimed) == {"runner-driver/claimed-project-path",
                            "runner-driver/claimed-pipeline-id",
                            "runner-driver/claimed-runner-id"}
    for value in claimed.values():
        assert value.isprintable() and len(value) <= DISPLAY_LIMIT, value
        assert value.startswith("evil?runner-driver/job-id: 1?[31m?")
    # The forged ids reached neither the labels nor the name: the payload's ids did.
    assert labels(SETTINGS, job) == labels(SETTINGS, make_job())
    assert pod_name(SETTINGS, job) == f"runner-{MANAGER_HASH}-project-42-job-1234"
    assert build_pod(SETTINGS, job)["metadata"]["annotations"] == annotations


# The nonce in the pod.


@pytest.mark.parametrize("settings", [pytest.param(SETTINGS, id="defaults"),
                                      pytest.param(CUSTOM, id="custom")])
def test_nonce_env_is_in_every_container(settings: Settings) -> None:
    """Every container gets RUNNER_DRIVER_NONCE by fieldRef to the pod's nonce label."""
    job = make_job(nonce=new_nonce(), job_image=settings.build.image)
    manifest = build_pod(settings, job)
    expected = {"name": "RUNNER_DRIVER_NONCE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['runner-driver/nonce']"}}}
    assert len(manifest["spec"]["containers"]) == 2
    for container in manifest["spec"]["containers"]:
        entries = [e for e in container["env"] if e["name"] == "RUNNER_DRIVER_NONCE"]
        assert entries == [expected], container["name"]
    assert expected == NONCE_ENV
    # The label the fieldRef points at holds this job's nonce.
    assert manifest["metadata"]["labels"][NONCE_LABEL] == job.nonce
    assert HEX32.fullmatch(job.nonce)


def test_nonce_value_itself_is_not_in_any_container_env() -> None:
    """Containers read the nonce from the label only: no literal env value carries it."""
    manifest = build_pod(SETTINGS, make_job())
    for container in manifest["spec"]["containers"]:
        assert all(e.get("value") != NONCE for e in container["env"]), container["name"]


@pytest.mark.parametrize("settings", [pytest.param(SETTINGS, id="defaults"),
                                      pytest.param(CUSTOM, id="custom")])
@pytest.mark.parametrize("nonce", ["", "Not a nonce!", "0123456789ABCDEF0123456789ABCDEF",
                                   "0123456789abcdef0123456789abcde"])
def test_build_pod_refuses_a_job_without_a_well_formed_nonce(settings: Settings,
                                                             nonce: str) -> None:
    """A job with no nonce, or one `config` could not have minted, gets no pod."""
    with pytest.raises(ConfigError, match="well-formed nonce"):
        build_pod(settings, make_job(nonce=nonce, job_image=settings.build.image))


# Finding the job's own pods: leftovers and the manager's selector.


def test_leftover_of_takes_the_jobs_own_pod() -> None:
    """The pod this job built (same manager, job and project) is its leftover."""
    job = make_job()
    assert leftover_of(build_pod(SETTINGS, job), SETTINGS, job) is True


def test_leftover_of_takes_an_earlier_attempts_pod_with_another_nonce() -> None:
    """A pod from an earlier prepare attempt (its own nonce) is still this job's leftover."""
    earlier = build_pod(SETTINGS, make_job(nonce=new_nonce()))
    assert leftover_of(earlier, SETTINGS, make_job(nonce=new_nonce())) is True


@pytest.mark.parametrize(("settings", "job"), [
    pytest.param(CUSTOM, make_job(), id="other-manager"),
    pytest.param(with_manager("CI-MANAGER-1"), make_job(), id="manager-case"),
    pytest.param(SETTINGS, make_job(job_id="1235"), id="other-job"),
    pytest.param(SETTINGS, make_job(project_id="43"), id="other-project"),
])
def test_leftover_of_refuses_another_managers_or_jobs_pod(settings: Settings,
                                                          job: JobContext) -> None:
    """A pod built for another manager, job or project is never taken for a leftover."""
    assert leftover_of(build_pod(settings, job), SETTINGS, make_job()) is False


def own_labels() -> dict[str, str]:
    """The identity labels of BASE_JOB's pod under SETTINGS."""
    return labels(SETTINGS, make_job())


@pytest.mark.parametrize("pod", [
    pytest.param({}, id="no-metadata"),
    pytest.param({"metadata": None}, id="null-metadata"),
    pytest.param({"metadata": {"name": "x"}}, id="no-labels"),
    pytest.param({"metadata": {"labels": None}}, id="null-labels"),
    pytest.param({"metadata": {"labels": {"app.kubernetes.io/managed-by": "tests"}}},
                 id="someone-elses-pod"),
    pytest.param({"metadata": {"labels": {**own_labels(),
                                          "app.kubernetes.io/managed-by": "someone-else"}}},
                 id="same-ids-other-manager-tool"),
    pytest.param({"metadata": {"labels": {k: v for k, v in own_labels().items()
                                          if k != MANAGER_LABEL}}},
                 id="no-manager-label"),
    pytest.param({"metadata": {"labels": {k: v for k, v in own_labels().items()
                                          if k != JOB_LABEL}}},
                 id="no-job-label"),
    pytest.param({"metadata": {"labels": {**own_labels(), PROJECT_LABEL: "4"}}},
                 id="other-project-label"),
])
def test_leftover_of_refuses_pods_with_foreign_labels(pod: dict[str, Any]) -> None:
    """A pod whose labels do not all name this manager, job and project is not a leftover."""
    assert leftover_of(pod, SETTINGS, make_job()) is False


def test_leftover_of_refuses_everything_for_an_unresolved_manager() -> None:
    """With no manager id, not even a pod labelled exactly like the job's is a leftover."""
    job = make_job()
    assert leftover_of(build_pod(Settings(), job), Settings(), job) is False


def test_manager_selector_names_the_driver_and_this_manager() -> None:
    """manager_selector is MANAGED_SELECTOR narrowed to this manager's label."""
    assert manager_selector(SETTINGS) == \
        "app.kubernetes.io/managed-by=runner-driver,runner-driver/manager=ci-manager-1"
    assert manager_selector(SETTINGS).startswith(MANAGED_SELECTOR + ",")


@pytest.mark.parametrize(("settings", "job"), TRICKY)
def test_manager_selector_matches_this_managers_pods_only(settings: Settings,
                                                          job: JobContext) -> None:
    """The selector matches every pod this manager builds and none of another manager's."""
    wanted = selector_pairs(manager_selector(settings))
    own = build_pod(settings, job)["metadata"]["labels"]
    assert all(own.get(key) == value for key, value in wanted.items()), (wanted, own)
    other = build_pod(with_manager("another-manager", settings), job)["metadata"]["labels"]
    assert not all(other.get(key) == value for key, value in wanted.items())


# The build image and its allow-list.


def test_empty_job_image_gets_the_default() -> None:
    """A job without `image:` runs the build container on the settings' default image."""
    assert build_image(SETTINGS, make_job(job_image="")) == KANIKO_DEBUG_IMAGE
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
    assert build_image(SETTINGS, make_job(job_image=image)) == image
    assert containers(build_pod(SETTINGS, make_job(job_image=image)))["build"]["image"] == image


@pytest.mark.parametrize("image", [
    "docker:27",
    "alpine",
    "gcr.io/kaniko-project/executor:v1.23.2",
    "evil.example.com/gcr.io/kaniko-project/executor:debug",
])
def test_disallowed_images_fail_the_job(image: str) -> None:
    """Any other image is the job's failure, with a message naming it and the allow-list."""
    with pytest.raises(JobFailed) as caught:
        build_image(SETTINGS, make_job(job_image=image))
    message = str(caught.value)
    assert repr(image) in message
    assert all(pattern in message for pattern in DEFAULT_ALLOWED_IMAGES)
    with pytest.raises(JobFailed):
        build_pod(SETTINGS, make_job(job_image=image))


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
    """No container is privileged, may escalate, or keeps NET_RAW, NET_BIND_SERVICE or
    AUDIT_WRITE; only build adds back what kaniko needs."""
    context = containers(build_pod(SETTINGS, make_job()))[name]["securityContext"]
    assert context["privileged"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    added = set(context["capabilities"].get("add", []))
    assert added == (set() if name == "helper" else
                     {"CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "SETFCAP",
                      "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})
    assert not added & {"NET_RAW", "NET_BIND_SERVICE", "AUDIT_WRITE", "SYS_ADMIN"}


def test_helper_runs_as_the_configured_non_root_user() -> None:
    """The helper runs as helper.run_as_user with runAsNonRoot and a writable HOME; 0 keeps
    the image's user."""
    helper = containers(build_pod(SETTINGS, make_job()))["helper"]
    assert helper["securityContext"]["runAsUser"] == 1000
    assert helper["securityContext"]["runAsNonRoot"] is True
    assert env_of(helper)["HOME"] == "/scratch"
    root = replace(SETTINGS, helper=replace(SETTINGS.helper, run_as_user=0))
    helper = containers(build_pod(root, make_job()))["helper"]
    assert "runAsUser" not in helper["securityContext"]
    assert "HOME" not in env_of(helper)


def test_pod_level_hardening() -> None:
    """RuntimeDefault seccomp, no service-account token, no restarts, no service links."""
    spec = build_pod(SETTINGS, make_job())["spec"]
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"
    assert spec["enableServiceLinks"] is False
    assert "serviceAccountName" not in spec and "hostNetwork" not in spec


def test_build_env_lets_kaniko_run() -> None:
    """The build container has `container=kube` and TMPDIR on the settings' scratch dir."""
    env = env_of(containers(build_pod(CUSTOM, make_job()))["build"])
    assert env == {"container": "kube", "TMPDIR": "/var/scratch",
                   "RUNNER_DRIVER_NONCE": NONCE_ENV["valueFrom"]}


def test_helper_path_starts_with_driver_bin() -> None:
    """The helper finds the driver's `gitlab-runner` name before anything else on PATH."""
    env = env_of(containers(build_pod(CUSTOM, make_job()))["helper"])
    assert env["PATH"].split(":")[0] == "/runner-driver/bin"
    assert env["TMPDIR"] == "/var/scratch"


def test_build_command_overrides_entrypoint_and_traps_term() -> None:
    """The build container runs busybox sh (not /kaniko/executor) and exits on SIGTERM."""
    build = containers(build_pod(SETTINGS, make_job()))["build"]
    assert build["command"][:2] == ["/busybox/sh", "-c"]
    assert len(build["command"]) == 3 and "args" not in build
    assert re.search(r"trap '[^']*' TERM", build["command"][2])


def test_helper_command_traps_term() -> None:
    """The helper's PID 1 shell also exits on SIGTERM instead of waiting out the grace."""
    helper = containers(build_pod(SETTINGS, make_job()))["helper"]
    assert helper["command"][:2] == ["/bin/sh", "-c"]
    assert re.search(r"trap '[^']*' TERM", helper["command"][2])


# Volumes.


@pytest.mark.parametrize("settings", [pytest.param(SETTINGS, id="defaults"),
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
    volumes = {v["name"]: v for v in build_pod(SETTINGS, make_job())["spec"]["volumes"]}
    assert volumes["driver"]["emptyDir"]["medium"] == "Memory"
    assert all("medium" not in volumes[n]["emptyDir"] for n in ("builds", "cache", "scratch"))


def test_stage_logs_volume_is_disk_backed_and_bounded() -> None:
    """Stage output goes to its own disk-backed emptyDir at inpod.LOG_DIR, bounded by
    pod.logs_size_limit."""
    volumes = {v["name"]: v for v in build_pod(SETTINGS, make_job())["spec"]["volumes"]}
    assert volumes["driver-logs"] == {"name": "driver-logs", "emptyDir": {"sizeLimit": "1Gi"}}
    assert LOG_DIR == "/runner-driver-logs"


def test_every_volume_has_a_size_limit() -> None:
    """Every emptyDir carries the sizeLimit its setting names, so no job fills the node."""
    sized = replace(SETTINGS, pod=replace(SETTINGS.pod, builds_size_limit="3Gi",
                                          cache_size_limit="4Gi", scratch_size_limit="5Gi",
                                          logs_size_limit="6Gi"))
    volumes = {v["name"]: v["emptyDir"] for v in build_pod(sized, make_job())["spec"]["volumes"]}
    assert {name: v.get("sizeLimit") for name, v in volumes.items()} == {
        "builds": "3Gi", "cache": "4Gi", "scratch": "5Gi", "driver": "16Mi",
        "driver-logs": "6Gi"}


# Deadline.


@pytest.mark.parametrize(("settings", "timeout", "expected"), [
    pytest.param(SETTINGS, 600, 600 + 900, id="job-timeout"),
    pytest.param(SETTINGS, None, 3600 + 900, id="default-timeout"),
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
    manager=ManagerSettings(id=MANAGER),
)


@pytest.mark.parametrize(("container", "expected"), [
    pytest.param(ContainerResources(), {}, id="none"),
    pytest.param(ContainerResources(cpu_request="500m"), {"requests": {"cpu": "500m"}},
                 id="cpu-request-only"),
    pytest.param(ContainerResources(memory_limit="256Mi"), {"limits": {"memory": "256Mi"}},
                 id="memory-limit-only"),
    pytest.param(ContainerResources(memory_request="1Gi", cpu_limit="2"),
                 {"requests": {"memory": "1Gi"}, "limits": {"cpu": "2"}}, id="crossed"),
    pytest.param(ContainerResources(cpu_request="1", memory_request="2Gi", cpu_limit="1.5",
                                    memory_limit="3Gi", ephemeral_storage_request="1Gi",
                                    ephemeral_storage_limit="5Gi"),
                 {"requests": {"cpu": "1", "memory": "2Gi", "ephemeral-storage": "1Gi"},
                  "limits": {"cpu": "1.5", "memory": "3Gi", "ephemeral-storage": "5Gi"}},
                 id="all-six"),
])
def test_resources_leave_out_what_is_unset(container: ContainerResources,
                                           expected: dict[str, dict[str, str]]) -> None:
    """Only the quantities set appear; a kind (requests, limits) with none is left out."""
    assert resources(container) == expected


def test_each_container_gets_its_own_resources() -> None:
    """The build container gets [build]'s quantities and the helper [helper]'s, unmixed."""
    found = containers(build_pod(SIZED, make_job()))
    assert found["build"]["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "1Gi"},
        "limits": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "20Gi"}}
    assert found["helper"]["resources"] == {
        "requests": {"cpu": "100m", "ephemeral-storage": "256Mi"},
        "limits": {"memory": "256Mi", "ephemeral-storage": "4Gi"}}


def test_defaults_bound_only_ephemeral_storage() -> None:
    """With the defaults only ephemeral storage is bounded (CPU and memory: LimitRange)."""
    found = containers(build_pod(SETTINGS, make_job()))
    assert found["build"]["resources"] == {"requests": {"ephemeral-storage": "1Gi"},
                                           "limits": {"ephemeral-storage": "20Gi"}}
    assert found["helper"]["resources"] == {"requests": {"ephemeral-storage": "256Mi"},
                                            "limits": {"ephemeral-storage": "4Gi"}}


def test_manifest_with_resources_validates_against_kubernetes_schema() -> None:
    """A pod with requests and limits on both containers is a strictly valid v1 Pod."""
    manifest = build_pod(SIZED, make_job())
    assert kubernetes_validate.validate(manifest, K8S_VERSION, strict=True) == K8S_MINOR


# The job timeout behind the deadline, and the selector gc uses.


@pytest.mark.parametrize(("settings", "timeout", "expected"), [
    pytest.param(SETTINGS, 600, 600, id="job-timeout"),
    pytest.param(SETTINGS, None, 3600, id="default-timeout"),
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


@pytest.mark.parametrize(("settings", "job"), TRICKY)
def test_managed_selector_matches_every_job_pod(settings: Settings, job: JobContext) -> None:
    """MANAGED_SELECTOR (what gc lists by) matches the labels of every pod the driver builds."""
    key, _, value = MANAGED_SELECTOR.partition("=")
    assert build_pod(settings, job)["metadata"]["labels"][key] == value


# What must never be in the manifest, and purity.


def test_manifest_holds_no_secret() -> None:
    """No secret value of the job appears anywhere in the manifest."""
    secrets = ("glcbt-64_s3cr3tJobTokenValue", "registry-password-hunter2",
               '{"auths":{"r.example.com":{"auth":"dXNlcjpwYXNz"}}}')
    job = make_job(project_path="group/sub/app", job_image="martizih/kaniko:debug",
                   services=("postgres:16",), timeout_seconds=900, secrets=secrets,
                   runner_short_token="Tok_en.1")
    text = json.dumps(build_pod(SETTINGS, job))
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
        for item in container["env"]:
            if "valueFrom" in item:
                item["valueFrom"]["fieldRef"]["fieldPath"] = "metadata.name"
        container["env"].clear()
        container["securityContext"]["capabilities"]["drop"].append("ALL")
        container["volumeMounts"].clear()
        for kind in container["resources"].values():
            kind["cpu"] = "99"
    first["spec"]["volumes"][3]["emptyDir"]["medium"] = ""
    assert build_pod(settings, job) == pristine
    assert NONCE_ENV["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.labels['runner-driver/nonce']"}}


# Layers: template, overrides, invariants, patch, checks (see the podspec docstring).


def layered(template: dict[str, Any] | None = None, patch: list[Any] | None = None,
            **sections: Any) -> Settings:
    """SETTINGS with a pod template and patch as if read from files, and `sections` set."""
    pod = replace(SETTINGS.pod, template="pod.yaml" if template is not None else "",
                  patch="patch.yaml" if patch is not None else "")
    return replace(SETTINGS, pod=pod, source="/etc/runner-driver/config.toml",
                   pod_template=template, pod_patch=tuple(patch) if patch is not None else None,
                   **sections)


TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "platform"}, "annotations": {"cost-center": "42"}},
    "spec": {
        "nodeSelector": {"pool": "builds"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ci",
                         "effect": "NoSchedule"}],
        "priorityClassName": "ci-low",
        "runtimeClassName": "gvisor",
        "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": "ci-cache"}},
                    {"name": "extra-ca", "configMap": {"name": "corp-ca"}}],
        "containers": [
            {"name": "build",
             "env": [{"name": "GOPROXY", "value": "https://proxy.example.com"}],
             "resources": {"limits": {"memory": "6Gi"}},
             "volumeMounts": [{"name": "extra-ca", "mountPath": "/etc/corp-ca"}]},
            {"name": "helper", "resources": {"requests": {"cpu": "200m"}}},
        ],
    },
}


def test_template_fields_land_in_the_pod() -> None:
    """Labels, annotations, scheduling fields and container additions of the template are
    all in the built pod, next to the driver's own."""
    pod = build_pod(layered(TEMPLATE), make_job())
    assert pod["metadata"]["labels"]["team"] == "platform"
    assert pod["metadata"]["labels"][JOB_LABEL] == "1234"
    assert pod["metadata"]["annotations"]["cost-center"] == "42"
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"pool": "builds"}
    assert spec["tolerations"] == TEMPLATE["spec"]["tolerations"]
    assert (spec["priorityClassName"], spec["runtimeClassName"]) == ("ci-low", "gvisor")
    build = containers(pod)["build"]
    assert env_of(build)["GOPROXY"] == "https://proxy.example.com"
    assert env_of(build)["container"] == "kube"
    assert build["resources"] == {"requests": {"ephemeral-storage": "1Gi"},
                                  "limits": {"ephemeral-storage": "20Gi", "memory": "6Gi"}}
    assert {"name": "extra-ca", "mountPath": "/etc/corp-ca"} in build["volumeMounts"]
    assert containers(pod)["helper"]["resources"]["requests"] == {
        "ephemeral-storage": "256Mi", "cpu": "200m"}


def test_template_can_resource_a_stage_volume() -> None:
    """A template's volume of a stage volume's name replaces its source whole (retainKeys):
    the cache becomes a PVC with no emptyDir left beside it."""
    volumes = {v["name"]: v for v in build_pod(layered(TEMPLATE), make_job())["spec"]["volumes"]}
    assert volumes["cache"] == {"name": "cache",
                                "persistentVolumeClaim": {"claimName": "ci-cache"}}
    assert volumes["builds"] == {"name": "builds", "emptyDir": {"sizeLimit": "10Gi"}}


def test_built_pod_with_template_is_schema_valid() -> None:
    """The layered pod is a strictly valid v1 Pod for the newest schema."""
    manifest = build_pod(layered(TEMPLATE), make_job())
    assert kubernetes_validate.validate(manifest, K8S_VERSION, strict=True) == K8S_MINOR


@pytest.mark.parametrize(("template", "path"), [
    pytest.param({"metadata": {"labels": {JOB_LABEL: "1"}}},
                 f"metadata.labels[{JOB_LABEL}]", id="driver-label"),
    pytest.param({"spec": {"restartPolicy": "Always"}}, "spec.restartPolicy", id="restart"),
    pytest.param({"spec": {"automountServiceAccountToken": True}},
                 "spec.automountServiceAccountToken", id="token"),
    pytest.param({"spec": {"activeDeadlineSeconds": 10}}, "spec.activeDeadlineSeconds",
                 id="deadline"),
    pytest.param({"spec": {"containers": [{"name": "build", "command": ["/bin/sh"]}]}},
                 "spec.containers[build].command", id="command"),
    pytest.param({"spec": {"containers": [{"name": "build", "args": ["x"]}]}},
                 "spec.containers[build].args", id="args"),
    pytest.param({"spec": {"containers": [{"name": "helper", "image": "alpine"}]}},
                 "spec.containers[helper].image", id="image"),
    pytest.param({"spec": {"containers": [{"name": "sidecar", "image": "envoy"}]}},
                 "spec.containers (names helper, build, sidecar", id="third-container"),
    pytest.param({"spec": {"containers": [{"name": "build", "env": [
        {"name": "TMPDIR", "value": "/tmp"}]}]}},
                 "spec.containers[build].env[TMPDIR]", id="owned-env"),
    pytest.param({"spec": {"containers": [{"name": "helper", "volumeMounts": [
        {"name": "cache", "mountPath": "/builds"}]}]}},
                 "spec.containers[helper].volumeMounts[/builds]", id="owned-mount"),
    pytest.param({"spec": {"volumes": [{"name": "driver", "emptyDir": {"medium": None}}]}},
                 "spec.volumes[driver]", id="driver-volume"),
    pytest.param({"spec": {"volumes": [{"name": "driver-logs", "persistentVolumeClaim": {
        "claimName": "x"}}]}}, "spec.volumes[driver-logs]", id="logs-volume"),
])
def test_template_may_not_set_the_drivers_fields(template: dict[str, Any], path: str) -> None:
    """A template touching a field the driver owns is refused naming the file and path."""
    with pytest.raises(ConfigError) as caught:
        build_pod(layered(template), make_job())
    message = str(caught.value)
    assert message.startswith("pod.template /etc/runner-driver/pod.yaml: ")
    assert path in message and "which the driver sets itself" in message


@pytest.mark.parametrize(("template", "expected"), [
    pytest.param({"status": {}}, "status: not part of a pod template", id="status"),
    pytest.param({"kind": "Deployment"}, "apiVersion/kind: a pod template is apiVersion v1",
                 id="kind"),
    pytest.param({"metadata": {"namespace": "x"}}, "metadata.namespace: set by the driver",
                 id="namespace"),
    pytest.param({"metadata": {"name": "mine"}}, "metadata.name: set by the driver",
                 id="name"),
    pytest.param({"spec": []}, "spec: expected a mapping", id="spec-list"),
    pytest.param({"spec": {"containers": [{"image": "x"}]}},
                 "spec.containers[0]: each item needs its merge key 'name'", id="no-name"),
])
def test_malformed_templates_are_refused_with_their_path(template: dict[str, Any],
                                                         expected: str) -> None:
    """A template that is not a partial Pod is refused, naming what is wrong where."""
    with pytest.raises(ConfigError) as caught:
        build_pod(layered(template), make_job())
    assert str(caught.value).startswith("pod.template /etc/runner-driver/pod.yaml: ")
    assert expected in str(caught.value)


def test_template_can_remove_a_default_with_null() -> None:
    """`null` in the template removes a default (here the build's ephemeral-storage limit)."""
    template = {"spec": {"containers": [{"name": "build", "resources": {
        "limits": {"ephemeral-storage": None}}}]}}
    build = containers(build_pod(layered(template), make_job()))["build"]
    assert build["resources"]["limits"] == {}


def test_overrides_apply_after_the_template_and_notes_are_returned() -> None:
    """A job's allowed override beats the template's value, and `plan` says so in a note."""
    from runner_driver.podspec import plan
    from runner_driver.settings import OverrideSettings, ResourceCaps

    settings = layered(TEMPLATE, overrides=OverrideSettings(
        build=ResourceCaps(memory_limit_max="8Gi")))
    job = make_job(pod_requests=(("KUBERNETES_MEMORY_LIMIT", "7Gi"),))
    built = plan(settings, job)
    assert containers(built.pod)["build"]["resources"]["limits"]["memory"] == "7Gi"
    assert built.notes == ("KUBERNETES_MEMORY_LIMIT=7Gi: build container limits.memory "
                           "(cap 8Gi)",)


def test_override_above_its_cap_fails_the_job() -> None:
    """Above its cap an override is the job's failure, naming variable, value and cap."""
    from runner_driver.settings import OverrideSettings, ResourceCaps

    settings = layered(overrides=OverrideSettings(build=ResourceCaps(memory_limit_max="8Gi")))
    with pytest.raises(JobFailed) as caught:
        build_pod(settings, make_job(pod_requests=(("KUBERNETES_MEMORY_LIMIT", "9Gi"),)))
    assert str(caught.value) == ("refusing KUBERNETES_MEMORY_LIMIT=9Gi: above the runner's cap "
                                 "of 8Gi (overrides.build.memory_limit_max)")


def test_patch_applies_last_and_can_remove_what_a_merge_cannot() -> None:
    """The JSON Patch runs after template and overrides: it removes a field and adds one."""
    patch = [{"op": "remove", "path": "/spec/enableServiceLinks"},
             {"op": "add", "path": "/spec/containers/1/resources/limits/cpu", "value": "3"},
             {"op": "replace", "path": "/spec/nodeSelector/pool", "value": "big"}]
    pod = build_pod(layered(TEMPLATE, patch), make_job())
    assert "enableServiceLinks" not in pod["spec"]
    assert pod["spec"]["nodeSelector"] == {"pool": "big"}
    assert containers(pod)["build"]["resources"]["limits"]["cpu"] == "3"


@pytest.mark.parametrize(("operation", "path"), [
    pytest.param({"op": "replace", "path": "/metadata/name", "value": "x"}, "metadata.name",
                 id="name"),
    pytest.param({"op": "remove", "path": "/spec/automountServiceAccountToken"},
                 "spec.automountServiceAccountToken", id="token"),
    pytest.param({"op": "remove", "path": "/spec/containers/0/env/2"},
                 "spec.containers[helper].env[RUNNER_DRIVER_NONCE]", id="nonce-env"),
    pytest.param({"op": "remove", "path": "/spec/volumes/3"}, "spec.volumes[driver]",
                 id="driver-volume"),
    pytest.param({"op": "remove", "path": "/spec/containers/1"}, "spec.containers (names",
                 id="container"),
])
def test_patch_may_not_change_the_drivers_fields(operation: dict[str, Any], path: str) -> None:
    """A patch changing a field the driver owns is refused naming the patch file and path."""
    with pytest.raises(ConfigError) as caught:
        build_pod(layered(patch=[operation]), make_job())
    message = str(caught.value)
    assert message.startswith("pod.patch /etc/runner-driver/patch.yaml: changes ")
    assert path in message


def test_patch_that_does_not_apply_names_the_file() -> None:
    """A patch op on a missing path is refused naming the patch file and jsonpatch's reason."""
    with pytest.raises(ConfigError) as caught:
        build_pod(layered(patch=[{"op": "remove", "path": "/spec/hostAliases"}]), make_job())
    assert str(caught.value).startswith(
        "pod.patch /etc/runner-driver/patch.yaml: cannot apply the JSON Patch: ")


@pytest.mark.parametrize(("template", "patch", "path", "control"), [
    pytest.param({"spec": {"containers": [{"name": "build", "securityContext": {
        "privileged": True}}]}}, None, "spec.containers[build].securityContext.privileged",
                 "privileged", id="privileged"),
    pytest.param({"spec": {"hostNetwork": True}}, None, "spec.hostNetwork", "host_namespaces",
                 id="host-network"),
    pytest.param({"spec": {"hostPID": True}}, None, "spec.hostPID", "host_namespaces",
                 id="host-pid"),
    pytest.param({"spec": {"volumes": [{"name": "docker", "hostPath": {
        "path": "/var/run/docker.sock"}}]}}, None, "spec.volumes[docker].hostPath",
                 "host_path", id="host-path"),
    pytest.param({"spec": {"containers": [{"name": "helper", "securityContext": {
        "capabilities": {"add": ["SYS_ADMIN"]}}}]}}, None,
                 "spec.containers[helper].securityContext.capabilities.add", "capabilities",
                 id="sys-admin"),
    pytest.param(None, [{"op": "replace", "path": "/spec/securityContext/seccompProfile/type",
                         "value": "Unconfined"}],
                 "spec.securityContext.seccompProfile.type", "seccomp", id="patch-seccomp"),
    pytest.param(None, [{"op": "add", "path": "/spec/containers/1/securityContext/privileged",
                         "value": True}],
                 "spec.containers[build].securityContext.privileged", "privileged",
                 id="patch-privileged"),
])
def test_beyond_baseline_is_refused_with_the_path(template: dict[str, Any] | None,
                                                  patch: list[Any] | None, path: str,
                                                  control: str) -> None:
    """A template or patch that breaks the PSS baseline is refused, naming the field's path
    and the opt-out; with the opt-out set, the same pod is built."""
    with pytest.raises(ConfigError) as caught:
        build_pod(layered(template, patch), make_job())
    message = str(caught.value)
    assert message.startswith(f"refusing the job pod: {path} ")
    assert f'security.exceptions = ["{control}"]' in message
    source = "pod.template /etc/runner-driver/pod.yaml" if template is not None \
        else "pod.patch /etc/runner-driver/patch.yaml"
    assert source in message
    from runner_driver.settings import SecuritySettings

    allowed = layered(template, patch, security=SecuritySettings(exceptions=(control,)))
    assert build_pod(allowed, make_job())["metadata"]["name"]


def test_defaults_pass_the_baseline_check() -> None:
    """The driver's own pod has no baseline violation (the check cannot pass vacuously: see
    the refusals above)."""
    from runner_driver.podsecurity import violations

    assert violations(build_pod(SETTINGS, make_job())) == []


def test_a_request_above_its_limit_from_the_template_is_the_operators_error() -> None:
    """A template leaving a request above its limit is a ConfigError naming the container
    (the operator's mistake), not a failure of the job."""
    template = {"spec": {"containers": [{"name": "build", "resources": {
        "requests": {"memory": "8Gi"}, "limits": {"memory": "4Gi"}}}]}}
    with pytest.raises(ConfigError) as caught:
        build_pod(layered(template), make_job())
    assert str(caught.value) == (
        "building the job's pod: spec.containers[build].resources: memory: request 8Gi is "
        "above its limit 4Gi (from the [build] settings, the pod template or the patch)")


# Registry logins and proxies: layers whose fields are the driver's own.


def with_login(**changes: Any) -> JobContext:
    """A job whose CI_REGISTRY variables give a registry login."""
    return make_job(registry_variables=(("CI_REGISTRY", "registry.example.com"),
                                        ("CI_REGISTRY_USER", "gitlab-ci-token"),
                                        ("CI_REGISTRY_PASSWORD", "t0ken-t0ken")), **changes)


def test_a_registry_login_brings_its_secret_volume_mount_and_pull_secret() -> None:
    """With a login the plan has a dockerconfigjson Secret labelled like the pod, mounted
    read-only in the build container only, and used as the pod's pull secret."""
    from runner_driver.podspec import plan

    built = plan(SETTINGS, with_login())
    secret = built.secret
    assert secret is not None
    name = f"{built.pod['metadata']['name']}-docker"
    assert (secret["metadata"]["name"], secret["type"]) == (name,
                                                            "kubernetes.io/dockerconfigjson")
    assert secret["metadata"]["labels"] == built.pod["metadata"]["labels"]
    config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    assert config == {"auths": {"registry.example.com": {
        "auth": base64.b64encode(b"gitlab-ci-token:t0ken-t0ken").decode()}}}
    volumes = {v["name"]: v for v in built.pod["spec"]["volumes"]}
    assert volumes["docker-config"]["secret"]["secretName"] == name
    mounts = {c["name"]: [m for m in c["volumeMounts"] if m["name"] == "docker-config"]
              for c in built.pod["spec"]["containers"]}
    assert mounts == {"helper": [], "build": [{"name": "docker-config", "readOnly": True,
                                               "mountPath": "/runner-driver-secrets/docker"}]}
    assert built.pod["spec"]["imagePullSecrets"] == [{"name": name}]
    assert "t0ken-t0ken" not in json.dumps(built.pod)
    assert plan(SETTINGS, make_job()).secret is None


def test_templates_and_patches_may_not_touch_the_login_or_proxy_fields() -> None:
    """The Secret volume and the proxy variables are the driver's: a patch removing them is
    refused naming the path."""
    from runner_driver.settings import ProxySettings

    proxied = replace(layered(patch=[{"op": "remove", "path": "/spec/volumes/5"}]),
                      proxy=ProxySettings(http_proxy="http://proxy:3128"))
    with pytest.raises(ConfigError, match=r"changes spec\.volumes\[docker-config\]"):
        build_pod(proxied, with_login())
    unproxy = replace(layered(patch=[{"op": "remove", "path": "/spec/containers/0/env/4"}]),
                      proxy=ProxySettings(http_proxy="http://proxy:3128"))
    with pytest.raises(ConfigError, match=r"changes spec\.containers\[helper\]\.env\[HTTP_PROXY\]"):
        build_pod(unproxy, make_job())


def test_proxy_variables_go_to_both_containers_with_build_args_for_kaniko() -> None:
    """Each proxy setting is set upper- and lower-case in both containers; the build
    container also gets the --build-arg flags."""
    from runner_driver.settings import ProxySettings

    settings = replace(SETTINGS, proxy=ProxySettings(https_proxy="http://p:3128",
                                                     no_proxy=".svc"))
    found = containers(build_pod(settings, make_job()))
    for name in ("helper", "build"):
        env = env_of(found[name])
        assert (env["HTTPS_PROXY"], env["https_proxy"], env["NO_PROXY"], env["no_proxy"]) == \
            ("http://p:3128", "http://p:3128", ".svc", ".svc")
        assert "HTTP_PROXY" not in env
    assert env_of(found["build"])["RUNNER_DRIVER_PROXY_BUILD_ARGS"] == (
        "--build-arg=HTTPS_PROXY=http://p:3128 --build-arg=https_proxy=http://p:3128 "
        "--build-arg=NO_PROXY=.svc --build-arg=no_proxy=.svc")
    assert "RUNNER_DRIVER_PROXY_BUILD_ARGS" not in env_of(found["helper"])


@pytest.mark.parametrize(("image", "warned"), [
    ("gcr.io/kaniko-project/executor:v1.8.1-debug", True),
    ("gcr.io/kaniko-project/executor:v1.9.0-debug", False),
    ("gcr.io/kaniko-project/executor:v1.23.2-debug", False),
    ("gcr.io/kaniko-project/executor:debug", False),
    ("ghcr.io/osscontainertools/kaniko:v1.2.0-debug", False),
])
def test_upstream_kaniko_before_1_9_is_warned_about(image: str, warned: bool) -> None:
    """An upstream kaniko image older than v1.9.0 gets a WARNING note naming the symptom."""
    from runner_driver.podspec import plan

    notes = plan(SETTINGS, make_job(job_image=image)).notes
    assert any("kaniko should only be run inside of a container" in n for n in notes) == warned


PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_a_ca_goes_to_both_containers_in_the_jobs_secret_not_the_spec() -> None:
    """The operator's and the runner's CA are joined into the job's Secret (ca.crt),
    mounted read-only in both containers; the helper's git and TLS clients are pointed
    at the joined bundle; the summary names the sources; the PEM is not in the spec."""
    from runner_driver.podspec import plan

    settings = replace(SETTINGS, ca_pem=PEM,
                       tls=replace(SETTINGS.tls, ca_file="/etc/runner-driver/ca.pem"))
    runner_ca = PEM.replace("MIIB", "MIIC")
    built = plan(settings, make_job(server_ca=runner_ca), operator_ca="")
    assert built.secret is not None and built.secret["type"] == "Opaque"
    assert base64.b64decode(built.secret["data"]["ca.crt"]).decode() == PEM + runner_ca
    found = containers(built.pod)
    for name in ("helper", "build"):
        assert {"name": "ca-bundle", "mountPath": "/runner-driver-secrets/ca",
                "readOnly": True} in found[name]["volumeMounts"]
    assert env_of(found["helper"])["GIT_SSL_CAINFO"] == "/runner-driver/ca-bundle.crt"
    assert env_of(found["helper"])["SSL_CERT_FILE"] == "/runner-driver/ca-bundle.crt"
    assert "GIT_SSL_CAINFO" not in env_of(found["build"])
    assert "imagePullSecrets" not in built.pod["spec"]
    assert "MIIB" not in json.dumps(built.pod)
    assert "custom CA: tls.ca_file /etc/runner-driver/ca.pem, CI_SERVER_TLS_CA_FILE" \
        in built.registries
