"""The job pod, built from settings and the job alone: no I/O, no clock, no cluster.

This is the most tested code of the driver. Everything a platform team cares about in
the pod (what runs, as whom, with which privileges, for how long, under which name)
is decided here and only here, so it can be checked as a plain manifest and rendered
offline (`runner-driver render`). It must never put job data that may hold secrets
(script contents, variable values) into the manifest: only ids, names, image
references and the overrides the operator allowed.

The pod is built in layers, each a pure function of the pod so far, always in this
order; a later layer wins over an earlier one:

1. defaults (the driver, from the settings): the whole pod, hardened (`_defaults`).
2. template (the operator's `[pod] template` file): any field but the driver's own;
   merged as Kubernetes' strategic merge does (`podmerge`). Refused: ConfigError.
3. overrides (the job's KUBERNETES_* variables, within `[overrides]` caps): resources,
   nodeSelector, labels, annotations, serviceAccountName (`overrides`). Refused:
   JobFailed, naming the variable.
4. invariants (the driver): its own fields set again.
5. patch (the operator's `[pod] patch` JSON Patch): any field but the driver's own.
   Refused: ConfigError naming the patch file.
6. checks (the driver): its own fields are intact, and nothing goes beyond the Pod
   Security Standards' baseline (`podsecurity`). Refused: ConfigError naming the path.

The driver's own fields (`_owned`), which neither the template nor the patch may
change: the pod's name, namespace and the driver's labels; restartPolicy,
automountServiceAccountToken (false), activeDeadlineSeconds; exactly the containers
`build` and `helper` with their image, command and args; the env variables the
in-pod programs read (RUNNER_DRIVER_NONCE, TMPDIR, the helper's PATH and HOME, the
build's `container`); the mounts of builds_dir, cache_dir, scratch_dir and the
driver's two volumes; the driver's two volumes themselves. The template may give the
builds, cache and scratch volumes another source (a persistentVolumeClaim for the
cache, say). Layers that later issues add (registry credentials, CA bundles,
proxies) go between overrides and invariants.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from . import __version__, credentials, overrides, podmerge, podsecurity
from .errors import ConfigError, JobFailed
from .inpod import (
    BIN_DIR,
    BUILD_ENTRYPOINT,
    CA_BUNDLE,
    CA_DIR,
    DOCKER_SECRET_DIR,
    DRIVER_DIR,
    HELPER_ENTRYPOINT,
    LOG_DIR,
)
from .jobrecord import valid_nonce
from .runner_env import JobContext
from .settings import ContainerResources, Settings, resolve

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
# What kaniko needs of the runtime's default capabilities (kaniko-and-exec.md, part A:
# CHOWN, DAC_OVERRIDE, FOWNER, SETUID, SETGID hard requirements; KILL, SETFCAP, FSETID,
# MKNOD for some builds). Left out: NET_RAW, NET_BIND_SERVICE, AUDIT_WRITE.
BUILD_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                      "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT")
# Volumes the driver defines whole; the template may re-source the other three.
DRIVER_VOLUMES = ("driver", "driver-logs")
STAGE_VOLUMES = ("builds", "cache", "scratch")
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
    for kind in ("request", "limit"):
        values = {name: getattr(container, f"{key}_{kind}")
                  for name, key in (("cpu", "cpu"), ("memory", "memory"),
                                    ("ephemeral-storage", "ephemeral_storage"))}
        values = {k: v for k, v in values.items() if v}
        if values:
            found[f"{kind}s"] = values
    return found


def job_timeout_seconds(settings: Settings, job: JobContext) -> int:
    """The job's timeout, or the configured default when the runner did not say."""
    return job.timeout_seconds or settings.pod.default_job_timeout_seconds


def active_deadline_seconds(settings: Settings, job: JobContext) -> int:
    """How long the pod may live: the job timeout plus room for after_script and uploads.

    `gc` relies on it: a pod past its deadline has no live job.
    """
    return job_timeout_seconds(settings, job) + settings.pod.deadline_margin_seconds


@dataclass(frozen=True)
class PodPlan:
    """The job's pod as the layers built it, the Secret it needs (its registry logins,
    created before the pod), and what the job log should say about them."""

    pod: dict[str, Any]
    notes: tuple[str, ...] = ()
    secret: dict[str, Any] | None = None
    # Which registries have a login, from which source: never a secret.
    registries: str = ""


def build_pod(settings: Settings, job: JobContext) -> dict[str, Any]:
    """The manifest of the job's pod (see `plan`)."""
    return plan(settings, job).pod


def plan(settings: Settings, job: JobContext,
         operator_registries: tuple[tuple[str, dict[str, Any]], ...] = (),
         operator_ca: str = "") -> PodPlan:
    """The job's pod, built layer by layer (see the table above), with its notes and
    its Secret (registry logins, CA bundle). `operator_registries` are the operator's
    registry Secrets as (name, parsed .dockerconfigjson) and `operator_ca` the PEM of
    `[tls] ca_secret`/`ca_configmap`, both read by `prepare`.

    Raises:
        ConfigError: the job has no well-formed nonce; the template or patch changes a
            field the driver owns or breaks the baseline (naming the file and path).
        JobFailed: see `build_image` and `overrides.apply`.
    """
    if not valid_nonce(job.nonce):
        # Without it the pod could not tell its own stages from another job's; a
        # malformed one would be rewritten as a label value and match no stage.
        raise ConfigError("building the job's pod: the job has no well-formed nonce "
                          "(prepare mints one when config did not)")
    reference = _defaults(settings, job)
    docker = credentials.docker_config(job, operator_registries)
    ca = ca_bundle(settings, operator_ca, job)
    secret = job_secret(settings, job, docker, ca)
    # The credential, CA and proxy layers' fields are the driver's own, like the
    # defaults'.
    if secret is not None and not docker.empty:
        _with_registry_logins(reference, secret["metadata"]["name"])
    if secret is not None and ca:
        _with_ca(reference, secret["metadata"]["name"])
    _with_proxy(reference, settings)
    pod = copy.deepcopy(reference)
    if settings.pod_template is not None:
        pod = template_layer(pod, settings, reference)
    applied = overrides.apply(pod, settings, job.pod_requests, job.secrets)
    pod = applied.pod
    _owned(pod, reference, fix=True)
    if settings.pod_patch is not None:
        pod = patch_layer(pod, settings, reference)
    check(pod, settings, reference)
    summary = "; ".join((docker.summary(), ca_summary(settings, operator_ca, job),
                         proxy_summary(settings)))
    notes = applied.notes + _old_kaniko(build_image(settings, job))
    return PodPlan(pod, notes, secret, summary)


_UPSTREAM_KANIKO = re.compile(r"(?:gcr\.io/kaniko-project/executor):v(\d+)\.(\d+)\.(\d+)")


def _old_kaniko(image: str) -> tuple[str, ...]:
    """A warning for upstream kaniko before v1.9.0, which fails on current hosts."""
    match = _UPSTREAM_KANIKO.match(image)
    if match and tuple(int(p) for p in match.groups()) < (1, 9, 0):
        return (f"WARNING: the build image {image} is kaniko older than v1.9.0; on current "
                "hosts it fails with \"kaniko should only be run inside of a container\"; "
                "use v1.9.0 or later (the default is v1.23.2-debug)",)
    return ()


PROXY_BUILD_ARGS = "RUNNER_DRIVER_PROXY_BUILD_ARGS"


def proxy_env(settings: Settings) -> list[tuple[str, str]]:
    """The proxy variables both containers get, in both spellings tools read."""
    found = []
    for key in ("http_proxy", "https_proxy", "no_proxy"):
        value = getattr(settings.proxy, key)
        if value:
            found += [(key.upper(), value), (key, value)]
    return found


def proxy_summary(settings: Settings) -> str:
    """The proxy part of the job log's summary line."""
    proxy = settings.proxy
    if not (proxy.http_proxy or proxy.https_proxy):
        return "no proxy"
    used = ", ".join(f"{k} {getattr(proxy, k)}" for k in ("http_proxy", "https_proxy")
                     if getattr(proxy, k))
    return f"proxy: {used}" + (f" (not for {proxy.no_proxy})" if proxy.no_proxy else "")


def _with_proxy(pod: dict[str, Any], settings: Settings) -> None:
    """The proxy layer: the variables in both containers, and in the build container the
    matching --build-arg flags for kaniko (RUN steps do not see the container's env)."""
    env = proxy_env(settings)
    if not env:
        return
    for container in pod["spec"]["containers"]:
        container["env"] += [{"name": k, "value": v} for k, v in env]
        if container["name"] == BUILD:
            flags = " ".join(f"--build-arg={k}={v}" for k, v in env)
            container["env"].append({"name": PROXY_BUILD_ARGS, "value": flags})


DOCKER_VOLUME = "docker-config"


def docker_secret_name(settings: Settings, job: JobContext) -> str:
    """The job's registry Secret: named after its pod."""
    return f"{pod_name(settings, job)}-docker"


def job_secret(settings: Settings, job: JobContext, docker: credentials.DockerConfig,
               ca: str) -> dict[str, Any] | None:
    """The job's Secret: its registry logins (a kubernetes.io/dockerconfigjson Secret, so
    it also pulls the images) and the CA bundle it trusts; labelled like its pod (so `gc`
    finds it when a fault leaves it behind). None when there is neither."""
    data: dict[str, str] = {}
    if not docker.empty:
        data[credentials.SECRET_KEY] = base64.b64encode(docker.json_bytes()).decode()
    if ca:
        data[CA_KEY] = base64.b64encode(ca.encode()).decode()
    if not data:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson" if not docker.empty else "Opaque",
        "metadata": {"name": docker_secret_name(settings, job),
                     "labels": labels(settings, job)},
        "data": data,
    }


CA_KEY = "ca.crt"
CA_VOLUME = "ca-bundle"


def ca_bundle(settings: Settings, operator_ca: str, job: JobContext) -> str:
    """The PEM the job must trust: the operator's (file, Secret or ConfigMap), then the
    runner's (CI_SERVER_TLS_CA_FILE); "" when none."""
    parts = [p.strip() + "\n" for p in (settings.ca_pem, operator_ca, job.server_ca)
             if p.strip()]
    return "".join(parts)


def ca_summary(settings: Settings, operator_ca: str, job: JobContext) -> str:
    """The CA part of the job log's summary line."""
    sources = [name for name, value in (
        (f"tls.ca_file {settings.tls.ca_file}", settings.ca_pem),
        ("the operator's CA " + (settings.tls.ca_secret or settings.tls.ca_configmap),
         operator_ca),
        ("CI_SERVER_TLS_CA_FILE", job.server_ca)) if value.strip()]
    return f"custom CA: {', '.join(sources)}" if sources else "no custom CA"


def _with_ca(pod: dict[str, Any], secret: str) -> None:
    """The CA layer: the bundle mounted read-only in both containers; the build
    entrypoint appends it to kaniko's trust store, the helper's joins it to the system
    bundle that git and the runner helper are pointed at."""
    spec = pod["spec"]
    spec["volumes"].append({"name": CA_VOLUME, "secret": {
        "secretName": secret, "defaultMode": 0o444,
        "items": [{"key": CA_KEY, "path": "ca.crt"}]}})
    for container in spec["containers"]:
        container["volumeMounts"].append({"name": CA_VOLUME, "mountPath": CA_DIR,
                                          "readOnly": True})
        if container["name"] == HELPER:
            container["env"] += [{"name": "SSL_CERT_FILE", "value": CA_BUNDLE},
                                 {"name": "GIT_SSL_CAINFO", "value": CA_BUNDLE}]


def _with_registry_logins(pod: dict[str, Any], secret: str) -> None:
    """The credential layer: the Secret mounted read-only in the build container (its
    entrypoint copies it to /kaniko/.docker/config.json) and used to pull the images."""
    spec = pod["spec"]
    spec["volumes"].append({"name": DOCKER_VOLUME, "secret": {
        "secretName": secret, "defaultMode": 0o400,
        "items": [{"key": credentials.SECRET_KEY, "path": "config.json"}]}})
    for container in spec["containers"]:
        if container["name"] == BUILD:
            container["volumeMounts"].append({"name": DOCKER_VOLUME,
                                              "mountPath": DOCKER_SECRET_DIR,
                                              "readOnly": True})
    spec.setdefault("imagePullSecrets", []).append({"name": secret})


def _defaults(settings: Settings, job: JobContext) -> dict[str, Any]:
    """Layer 1: the whole pod as the settings alone describe it, hardened."""
    pod = settings.pod
    image = build_image(settings, job)
    mounts = [
        {"name": "builds", "mountPath": pod.builds_dir},
        {"name": "cache", "mountPath": pod.cache_dir},
        {"name": "scratch", "mountPath": pod.scratch_dir},
        {"name": "driver", "mountPath": DRIVER_DIR},
        {"name": "driver-logs", "mountPath": LOG_DIR},
    ]
    helper_security: dict[str, Any] = {
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    helper_env = [{"name": "PATH", "value": HELPER_PATH},
                  {"name": "TMPDIR", "value": pod.scratch_dir},
                  copy.deepcopy(NONCE_ENV)]
    if settings.helper.run_as_user:
        helper_security |= {"runAsUser": settings.helper.run_as_user, "runAsNonRoot": True}
        # A user the image does not know gets HOME=/, which it cannot write (git config).
        helper_env.append({"name": "HOME", "value": pod.scratch_dir})
    helper = {
        "name": HELPER,
        "image": settings.helper.image,
        "command": list(HELPER_ENTRYPOINT),
        "env": helper_env,
        "resources": resources(settings.helper),
        "securityContext": helper_security,
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
        # kaniko runs as root and unpacks images (kaniko-and-exec.md, part A).
        "securityContext": {"privileged": False, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"],
                                             "add": list(BUILD_CAPABILITIES)}},
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
                {"name": "builds", "emptyDir": {"sizeLimit": pod.builds_size_limit}},
                {"name": "cache", "emptyDir": {"sizeLimit": pod.cache_size_limit}},
                {"name": "scratch", "emptyDir": {"sizeLimit": pod.scratch_size_limit}},
                {"name": "driver", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                {"name": "driver-logs", "emptyDir": {"sizeLimit": pod.logs_size_limit}},
            ],
            "containers": [helper, build],
        },
    }


_TEMPLATE_TOP = ("apiVersion", "kind", "metadata", "spec")
_TEMPLATE_METADATA = ("labels", "annotations")


def template_layer(pod: dict[str, Any], settings: Settings,
                   reference: dict[str, Any]) -> dict[str, Any]:
    """Layer 2: the operator's partial Pod merged in (see `podmerge.strategic_merge`)."""
    template = settings.pod_template or {}
    where = f"pod.template {resolve(settings, settings.pod.template)}"
    for key in template:
        if key not in _TEMPLATE_TOP:
            raise ConfigError(f"{where}: {key}: not part of a pod template (only "
                              f"{', '.join(_TEMPLATE_TOP)})")
    if template.get("apiVersion", "v1") != "v1" or template.get("kind", "Pod") != "Pod":
        raise ConfigError(f"{where}: apiVersion/kind: a pod template is apiVersion v1, "
                          f"kind Pod; got {template.get('apiVersion')}/{template.get('kind')}")
    for section in ("metadata", "spec"):
        if not isinstance(template.get(section, {}), dict):
            raise ConfigError(f"{where}: {section}: expected a mapping")
    for key in template.get("metadata", {}):
        if key not in _TEMPLATE_METADATA:
            raise ConfigError(f"{where}: metadata.{key}: set by the driver or Kubernetes; a "
                              f"template may set only {', '.join(_TEMPLATE_METADATA)}")
    partial = {k: v for k, v in template.items() if k in ("metadata", "spec")}
    merged = podmerge.strategic_merge(pod, partial, where)
    _refuse_owned(merged, reference, where, "sets")
    return merged


def patch_layer(pod: dict[str, Any], settings: Settings,
                reference: dict[str, Any]) -> dict[str, Any]:
    """Layer 5: the operator's JSON Patch, which may not touch the driver's own fields."""
    where = f"pod.patch {resolve(settings, settings.pod.patch)}"
    patched = podmerge.json_patch(pod, list(settings.pod_patch or ()), where)
    _refuse_owned(patched, reference, where, "changes")
    return patched


def check(pod: dict[str, Any], settings: Settings, reference: dict[str, Any]) -> None:
    """Layer 6: the driver's own fields are intact and the pod stays within baseline.

    Raises:
        ConfigError: naming the offending field's path and what to do.
    """
    changed = _owned(pod, reference, fix=False)
    if changed:
        raise ConfigError(f"building the job's pod: {changed[0]}: changed by a layer; it "
                          "belongs to the driver")
    for container in pod["spec"]["containers"]:
        clash = overrides.request_above_limit(container)
        if clash:
            raise ConfigError(f"building the job's pod: spec.containers[{container['name']}]"
                              f".resources: {clash} (from the [{container['name']}] settings, "
                              "the pod template or the patch)")
    found = podsecurity.violations(pod, settings.security.exceptions)
    if found:
        control, path, what = found[0]
        source = " and ".join(f"pod.{k} {resolve(settings, getattr(settings.pod, k))}"
                              for k in ("template", "patch") if getattr(settings.pod, k))
        raise ConfigError(
            f"refusing the job pod: {path} {what}, beyond the Pod Security Standards' "
            f"baseline level{f' (from {source})' if source else ''}; remove it, or allow "
            f"it knowingly with security.exceptions = [\"{control}\"]"
            + (f" ({len(found) - 1} more)" if len(found) > 1 else ""))


def _refuse_owned(pod: dict[str, Any], reference: dict[str, Any], where: str,
                  verb: str) -> None:
    changed = _owned(pod, reference, fix=False)
    if changed:
        raise ConfigError(f"{where}: {verb} {changed[0]}, which the driver sets itself "
                          "(see the pod layers in the README); remove it"
                          + (f" ({len(changed) - 1} more)" if len(changed) > 1 else ""))


_OWNED_SPEC = ("restartPolicy", "automountServiceAccountToken", "activeDeadlineSeconds")
_OWNED_CONTAINER = ("image", "command", "args")


def _owned(pod: dict[str, Any], reference: dict[str, Any], fix: bool) -> list[str]:
    """Paths of the driver's own fields that differ from `reference` (set back if `fix`)."""
    changed: list[str] = []

    def same(path: str, target: dict[str, Any], key: str, source: dict[str, Any]) -> None:
        if target.get(key) == source.get(key):
            return
        changed.append(path)
        if fix:
            if key in source:
                target[key] = copy.deepcopy(source[key])
            else:
                target.pop(key, None)

    meta, wanted_meta = pod.setdefault("metadata", {}), reference["metadata"]
    for key in ("name", "namespace", "generateName"):
        same(f"metadata.{key}", meta, key, wanted_meta)
    pod_labels = meta.setdefault("labels", {})
    for key in wanted_meta["labels"]:
        same(f"metadata.labels[{key}]", pod_labels, key, wanted_meta["labels"])
    for key in list(pod_labels):
        if key.startswith(f"{LABEL_PREFIX}/") and key not in wanted_meta["labels"]:
            same(f"metadata.labels[{key}]", pod_labels, key, wanted_meta["labels"])
    spec, wanted = pod.setdefault("spec", {}), reference["spec"]
    for key in _OWNED_SPEC:
        same(f"spec.{key}", spec, key, wanted)
    containers = spec.setdefault("containers", [])
    names = [c.get("name") for c in containers if isinstance(c, dict)]
    if sorted(map(str, names)) != sorted(c["name"] for c in wanted["containers"]):
        changed.append(f"spec.containers (names {', '.join(map(str, names))}; the pod has "
                       f"exactly {BUILD} and {HELPER})")
        if fix:
            spec["containers"] = [c for c in containers if c.get("name") in (BUILD, HELPER)]
            for missing in wanted["containers"]:
                if missing["name"] not in names:
                    spec["containers"].append(copy.deepcopy(missing))
    for want in wanted["containers"]:
        have = next((c for c in spec["containers"] if c.get("name") == want["name"]), None)
        if have is None:
            continue
        where = f"spec.containers[{want['name']}]"
        for key in _OWNED_CONTAINER:
            same(f"{where}.{key}", have, key, want)
        for kind, key in (("env", "name"), ("volumeMounts", "mountPath")):
            items = have.setdefault(kind, [])
            for item in want[kind]:
                found = next((i for i in items if i.get(key) == item[key]), None)
                if found != item:
                    changed.append(f"{where}.{kind}[{item[key]}]")
                    if fix:
                        items[:] = [i for i in items if i.get(key) != item[key]]
                        items.append(copy.deepcopy(item))
    volumes = spec.setdefault("volumes", [])
    for want in wanted["volumes"]:
        found = next((v for v in volumes if v.get("name") == want["name"]), None)
        if found is None or (want["name"] in DRIVER_VOLUMES and found != want):
            changed.append(f"spec.volumes[{want['name']}]")
            if fix:
                volumes[:] = [v for v in volumes if v.get("name") != want["name"]]
                volumes.append(copy.deepcopy(want))
    return changed
