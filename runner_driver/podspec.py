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
from .errors import JobFailed
from .inpod import BIN_DIR, BUILD_ENTRYPOINT, DRIVER_DIR, HELPER_ENTRYPOINT, LOG_DIR
from .runner_env import JobContext
from .settings import ContainerResources, Settings

MANAGED_BY = "runner-driver"
LABEL_PREFIX = "runner-driver"
MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
HELPER = "helper"
BUILD = "build"
# The PATH of the official helper image, with the directory holding `gitlab-runner`
# in front (an env PATH replaces the image's own).
HELPER_PATH = f"{BIN_DIR}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NAME_MAX = 63  # a pod's hostname is its name, and hostnames are DNS labels
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


def pod_name(job: JobContext) -> str:
    """The job's pod name: the same in every stage, unique per runner, project and job.

    Readable when possible (`runner-<token>-project-<id>-job-<id>`); when the token has
    characters a DNS label cannot hold, or the name is too long, a short hash of the
    exact identity keeps it unique.
    """
    if job.pod_name_from_config:
        return job.pod_name_from_config
    token = job.runner_short_token
    readable = (f"runner-{token}-project-{job.project_id}-job-{job.job_id}" if token
                else f"runner-project-{job.project_id}-job-{job.job_id}")
    clean = re.sub(r"[^a-z0-9-]+", "-", readable.lower()).strip("-")
    if clean == readable and len(clean) <= _NAME_MAX:
        return clean
    digest = hashlib.sha256(f"{token}/{job.project_id}/{job.job_id}".encode()).hexdigest()[:10]
    return f"{clean[:_NAME_MAX - len(digest) - 1].rstrip('-')}-{digest}"


def labels(job: JobContext) -> dict[str, str]:
    """Labels that let `cleanup`, `gc` and operators find the job's objects."""
    found = {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/component": "ci-job",
        f"{LABEL_PREFIX}/job-id": job.job_id,
        f"{LABEL_PREFIX}/project-id": job.project_id,
        f"{LABEL_PREFIX}/pipeline-id": job.pipeline_id,
        f"{LABEL_PREFIX}/runner-id": job.runner_id,
        f"{LABEL_PREFIX}/runner-token": job.runner_short_token,
    }
    return {key: _label_value(value) for key, value in found.items() if value}


def _label_value(value: str) -> str:
    """`value` if it is a valid label value, else a valid one unique to it.

    Runner short tokens may start or end with `-`, `_` or `.` (and the driver accepts
    up to 64 characters), which the API server refuses in a label value.
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
        JobFailed: see `build_image`.
    """
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
                {"name": "TMPDIR", "value": pod.scratch_dir}],
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
                {"name": "TMPDIR", "value": pod.scratch_dir}],
        "resources": resources(settings.build),
        "securityContext": copy.deepcopy(security),
        "volumeMounts": copy.deepcopy(mounts),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(job),
            "labels": labels(job),
            "annotations": {f"{LABEL_PREFIX}/version": __version__,
                            **({f"{LABEL_PREFIX}/project-path": job.project_path}
                               if job.project_path else {})},
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
