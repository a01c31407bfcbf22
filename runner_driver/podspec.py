"""The job pod, built from settings and the job alone: no I/O, no clock, no cluster.

This is the most tested code of the driver. Everything a platform team cares about in
the pod (what runs, as whom, with which privileges, for how long, under which name)
is decided here and only here, so it can be checked as a plain manifest and, later,
rendered offline. It must never put job data that may hold secrets (script contents,
variable values) into the manifest: only ids, names and image references.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import re
from typing import Any

from . import __version__
from .errors import ConfigError, JobFailed
from .inpod import BIN_DIR, BUILD_ENTRYPOINT, DRIVER_DIR, HELPER_ENTRYPOINT, LOG_DIR
from .jobrecord import valid_nonce
from .runner_env import JobContext
from .settings import ContainerResources, Settings

MANAGED_BY = "runner-driver"
LABEL_PREFIX = "runner-driver"
MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
JOB_LABEL = f"{LABEL_PREFIX}/job-id"
PROJECT_LABEL = f"{LABEL_PREFIX}/project-id"
MANAGER_LABEL = f"{LABEL_PREFIX}/manager"
# The job's nonce, minted by `config`: the stages act on a pod only when it matches.
NONCE_LABEL = f"{LABEL_PREFIX}/nonce"
# Both containers see the nonce (from the label, by the downward API): the in-pod
# launcher refuses to run a stage whose driver expects another one.
NONCE_ENV = {"name": "RUNNER_DRIVER_NONCE",
             "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{NONCE_LABEL}']"}}}
HELPER = "helper"
BUILD = "build"
# The PATH of the official helper image, with the directory holding `gitlab-runner`
# in front (an env PATH replaces the image's own).
HELPER_PATH = f"{BIN_DIR}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NAME_MAX = 63  # a pod's hostname is its name, and hostnames are DNS labels
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


def manager_label(settings: Settings) -> str:
    """This runner manager's id as a label value (see `[manager] id`)."""
    return _label_value(settings.manager.id) if settings.manager.id else ""


def manager_selector(settings: Settings) -> str:
    """The label selector for every object this runner manager's driver created."""
    return f"{MANAGED_SELECTOR},{MANAGER_LABEL}={manager_label(settings)}"


def pod_name(settings: Settings, job: JobContext) -> str:
    """The job's pod name: the same in every stage, unique per manager, project and job.

    Made only of what no job can forge: the payload's project and job ids and a short
    hash of the manager's id (`runner-<hash>-project-<id>-job-<id>`); a name over 63
    characters is shortened with a hash of the whole identity.
    """
    if job.pod_name_from_config:
        return job.pod_name_from_config
    manager = hashlib.sha256(settings.manager.id.encode()).hexdigest()[:8]
    readable = f"runner-{manager}-project-{job.project_id}-job-{job.job_id}"
    if len(readable) <= _NAME_MAX:
        return readable
    digest = hashlib.sha256(readable.encode()).hexdigest()[:10]
    return f"{readable[:_NAME_MAX - len(digest) - 1].rstrip('-')}-{digest}"


def labels(settings: Settings, job: JobContext) -> dict[str, str]:
    """Labels that let `cleanup`, `gc` and operators find the job's objects.

    Only values no job can forge: the payload's ids, the manager's id and the job's
    nonce. What the job's variables claim goes into `annotations`.
    """
    found = {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/component": "ci-job",
        JOB_LABEL: job.job_id,
        PROJECT_LABEL: job.project_id,
        MANAGER_LABEL: manager_label(settings),
        NONCE_LABEL: job.nonce,
    }
    return {key: _label_value(value) for key, value in found.items() if value}


def pod_annotations(job: JobContext) -> dict[str, str]:
    """What the job's variables claim (pipeline, runner, project path): for people only."""
    found = {
        f"{LABEL_PREFIX}/version": __version__,
        f"{LABEL_PREFIX}/claimed-project-path": job.project_path,
        f"{LABEL_PREFIX}/claimed-pipeline-id": job.pipeline_id,
        f"{LABEL_PREFIX}/claimed-runner-id": job.runner_id,
    }
    return {key: value for key, value in found.items() if value}


def leftover_of(pod: dict[str, Any], settings: Settings, job: JobContext) -> bool:
    """Whether `pod` is this job's own, left by an earlier prepare attempt.

    Its labels must name this job and project (from the payload) and this manager; a
    pod of any other job, or of another manager, is never taken for a leftover.
    """
    found = (pod.get("metadata") or {}).get("labels") or {}
    expected = labels(settings, job)
    return (found.get("app.kubernetes.io/managed-by") == MANAGED_BY
            and all(found.get(key) == expected.get(key)
                    for key in (JOB_LABEL, PROJECT_LABEL, MANAGER_LABEL))
            and bool(expected.get(MANAGER_LABEL)))


def _label_value(value: str) -> str:
    """`value` if it is a valid label value, else a valid one unique to it.

    A host name used as the manager's id may be longer than a label value can be.
    """
    if len(value) <= _NAME_MAX and _LABEL_VALUE.fullmatch(value):
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    kept = re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-_.")
    kept = kept[:_NAME_MAX - len(digest) - 1].rstrip("-_.")
    return f"{kept}-{digest}" if kept else digest


def build_image(settings: Settings, job: JobContext) -> str:
    """The build container's image: the job's `image:` if the operator allows it.

    Raises:
        JobFailed: the job asked for an image outside the allow-list; retrying cannot
            help, so this is the job's failure, not the system's.
    """
    requested = job.job_image.strip()
    if not requested or requested == settings.build.image:
        return settings.build.image
    if any(fnmatch.fnmatchcase(requested, pattern) for pattern in settings.build.allowed_images):
        return requested
    allowed = ", ".join(settings.build.allowed_images) or "(empty: only the default image)"
    raise JobFailed(
        f"refusing job image {requested!r}: it is not in the driver's allow-list of builder "
        f"images ({allowed}); use one of those, or remove `image:` to get the default "
        f"{settings.build.image}")


def resources(container: ContainerResources) -> dict[str, dict[str, str]]:
    """A container's resources block from its settings; empty values are left out."""
    found: dict[str, dict[str, str]] = {}
    for kind, cpu, memory in (("requests", container.cpu_request, container.memory_request),
                              ("limits", container.cpu_limit, container.memory_limit)):
        values = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
        if values:
            found[kind] = values
    return found


def job_timeout_seconds(settings: Settings, job: JobContext) -> int:
    """The job's timeout, or the configured default when the runner did not say."""
    return job.timeout_seconds or settings.pod.default_job_timeout_seconds


def active_deadline_seconds(settings: Settings, job: JobContext) -> int:
    """How long the pod may live: the job timeout plus room for after_script and uploads.

    `gc` relies on it: a pod past its deadline has no live job.
    """
    return job_timeout_seconds(settings, job) + settings.pod.deadline_margin_seconds


def build_pod(settings: Settings, job: JobContext) -> dict[str, Any]:
    """The manifest of the job's pod.

    Raises:
        ConfigError: the job has no well-formed nonce.
        JobFailed: see `build_image`.
    """
    if not valid_nonce(job.nonce):
        # Without it the pod could not tell its own stages from another job's; a
        # malformed one would be rewritten as a label value and match no stage.
        raise ConfigError("building the job's pod: the job has no well-formed nonce "
                          "(prepare mints one when config did not)")
    pod = settings.pod
    image = build_image(settings, job)
    security = {
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["NET_RAW"]},
    }
    mounts = [
        {"name": "builds", "mountPath": pod.builds_dir},
        {"name": "cache", "mountPath": pod.cache_dir},
        {"name": "scratch", "mountPath": pod.scratch_dir},
        {"name": "driver", "mountPath": DRIVER_DIR},
        {"name": "driver-logs", "mountPath": LOG_DIR},
    ]
    helper = {
        "name": HELPER,
        "image": settings.helper.image,
        "command": list(HELPER_ENTRYPOINT),
        "env": [{"name": "PATH", "value": HELPER_PATH},
                {"name": "TMPDIR", "value": pod.scratch_dir},
                copy.deepcopy(NONCE_ENV)],
        "resources": resources(settings.helper),
        "securityContext": copy.deepcopy(security),
        "volumeMounts": copy.deepcopy(mounts),
    }
    build = {
        "name": BUILD,
        "image": image,
        "command": list(BUILD_ENTRYPOINT),
        # kaniko refuses to run unless it detects a container; without a service
        # account token mounted, this variable is what it finds.
        "env": [{"name": "container", "value": "kube"},
                {"name": "TMPDIR", "value": pod.scratch_dir},
                copy.deepcopy(NONCE_ENV)],
        "resources": resources(settings.build),
        "securityContext": copy.deepcopy(security),
        "volumeMounts": copy.deepcopy(mounts),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(settings, job),
            "labels": labels(settings, job),
            "annotations": pod_annotations(job),
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": pod.termination_grace_period_seconds,
            "activeDeadlineSeconds": active_deadline_seconds(settings, job),
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [
                {"name": "builds", "emptyDir": {}},
                {"name": "cache", "emptyDir": {}},
                {"name": "scratch", "emptyDir": {}},
                {"name": "driver", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                {"name": "driver-logs", "emptyDir": {}},
            ],
            "containers": [helper, build],
        },
    }
