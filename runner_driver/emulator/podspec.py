"""What the API server does to a pod before storing it: validation, admission and defaults.

A driver's pod manifest meets these rules on every real cluster: required fields,
DNS names, unique container and volume names, mounts that name a declared volume,
the service account admission plugin (which also mounts the API token unless the pod
opts out) and the defaults every stored pod carries. Rejections come back as 422
`Invalid` (or 403 for a missing service account) with causes naming the field.
Pure functions over dicts; no I/O.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from .selectors import SelectorError, parse_quantity
from .store import ApiError

Obj = dict[str, Any]
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
TOKEN_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"  # noqa: S105 - a path


def _invalid(name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    text = "; ".join(f"{f}: {m}" for f, _, m in causes)
    return ApiError(422, "Invalid", f'Pod "{name}" is invalid: [{text}]' if len(causes) > 1
                    else f'Pod "{name}" is invalid: {text}',
                    {"name": name, "kind": "Pod",
                     "causes": [{"reason": r, "message": m, "field": f} for f, r, m in causes]})


def validate(pod: Obj) -> None:
    """Reject a pod the API server would reject.

    Raises:
        ApiError: 422 with one cause per problem.
    """
    name = pod.get("metadata", {}).get("name") or pod.get("metadata", {}).get("generateName", "")
    spec = pod.get("spec")
    causes: list[tuple[str, str, str]] = []
    if not isinstance(spec, dict):
        raise _invalid(name, [("spec.containers", "FieldValueRequired", "Required value")])
    containers = spec.get("containers") or []
    if not containers:
        causes.append(("spec.containers", "FieldValueRequired", "Required value"))
    volumes = spec.get("volumes") or []
    volume_names: set[str] = set()
    for i, volume in enumerate(volumes):
        vname = volume.get("name", "")
        if not _DNS_LABEL.match(vname or ""):
            causes.append((f"spec.volumes[{i}].name", "FieldValueInvalid",
                           f'Invalid value: "{vname}": a lowercase RFC 1123 label is required'))
        elif vname in volume_names:
            causes.append((f"spec.volumes[{i}].name", "FieldValueDuplicate",
                           f'Duplicate value: "{vname}"'))
        volume_names.add(vname)
    seen: set[str] = set()
    groups = [("initContainers", c) for c in spec.get("initContainers") or []] + \
             [("containers", c) for c in containers]
    counters = {"initContainers": 0, "containers": 0}
    for group, container in groups:
        index = counters[group]
        counters[group] += 1
        path = f"spec.{group}[{index}]"
        cname = container.get("name", "")
        if not cname:
            causes.append((f"{path}.name", "FieldValueRequired", "Required value"))
        elif not _DNS_LABEL.match(cname):
            causes.append((f"{path}.name", "FieldValueInvalid",
                           f'Invalid value: "{cname}": a lowercase RFC 1123 label must consist '
                           "of lower case alphanumeric characters or '-'"))
        elif cname in seen:
            causes.append((f"{path}.name", "FieldValueDuplicate", f'Duplicate value: "{cname}"'))
        seen.add(cname)
        if not str(container.get("image") or "").strip():
            causes.append((f"{path}.image", "FieldValueRequired", "Required value"))
        mount_paths: set[str] = set()
        for j, mount in enumerate(container.get("volumeMounts") or []):
            if mount.get("name") not in volume_names:
                causes.append((f"{path}.volumeMounts[{j}].name", "FieldValueNotFound",
                               f'Not found: "{mount.get("name")}"'))
            mpath = mount.get("mountPath", "")
            if not mpath:
                causes.append((f"{path}.volumeMounts[{j}].mountPath", "FieldValueRequired",
                               "Required value"))
            elif mpath in mount_paths:
                causes.append((f"{path}.volumeMounts[{j}].mountPath", "FieldValueInvalid",
                               f'Invalid value: "{mpath}": must be unique'))
            mount_paths.add(mpath)
        for j, env in enumerate(container.get("env") or []):
            if not _ENV_NAME.match(env.get("name") or ""):
                causes.append((f"{path}.env[{j}].name", "FieldValueInvalid",
                               f'Invalid value: "{env.get("name")}": a valid environment '
                               "variable name must consist of alphabetic characters, digits, "
                               "'_', '-', or '.', and must not start with a digit"))
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            for rname, value in (resources.get(kind) or {}).items():
                try:
                    parse_quantity(value)
                except SelectorError as error:
                    causes.append((f"{path}.resources.{kind}[{rname}]", "FieldValueInvalid",
                                   f'Invalid value: "{value}": {error}'))
        limits = resources.get("limits") or {}
        for rname, value in (resources.get("requests") or {}).items():
            try:
                if rname in limits and parse_quantity(value) > parse_quantity(limits[rname]):
                    causes.append((f"{path}.resources.requests", "FieldValueInvalid",
                                   f'Invalid value: "{value}": must be less than or equal to '
                                   f"{rname} limit of {limits[rname]}"))
            except SelectorError:
                pass
    policy = spec.get("restartPolicy")
    if policy is not None and policy not in ("Always", "OnFailure", "Never"):
        causes.append(("spec.restartPolicy", "FieldValueNotSupported",
                       f'Unsupported value: "{policy}": supported values: "Always", '
                       '"OnFailure", "Never"'))
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and (not isinstance(deadline, int) or deadline <= 0):
        causes.append(("spec.activeDeadlineSeconds", "FieldValueInvalid",
                       f"Invalid value: {deadline}: must be greater than 0"))
    if causes:
        raise _invalid(name, causes)


def _pull_policy(image: str) -> str:
    reference = image.split("@", maxsplit=1)[0]
    tag = reference.rsplit(":", 1)[1] if ":" in reference.rsplit("/", 1)[-1] else ""
    return "Always" if tag in ("", "latest") and "@" not in image else "IfNotPresent"


def apply_defaults(pod: Obj, service_account: Obj | None) -> None:
    """Fill in what the API server's defaulting and admission plugins add to a pod.

    Raises:
        ApiError: 403 when the pod's service account does not exist.
    """
    spec = pod["spec"]
    name = pod["metadata"].get("name", "")
    namespace = pod["metadata"].get("namespace", "")
    sa_name = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    if service_account is None:
        raise ApiError(403, "Forbidden",
                       f'pods "{name}" is forbidden: error looking up service account '
                       f'{namespace}/{sa_name}: serviceaccount "{sa_name}" not found',
                       {"name": name, "kind": "pods"})
    spec["serviceAccountName"] = sa_name
    spec["serviceAccount"] = sa_name
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    tolerations = spec.setdefault("tolerations", [])
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if not any(t.get("key") == key for t in tolerations):
            tolerations.append({"key": key, "operator": "Exists", "effect": "NoExecute",
                                "tolerationSeconds": 300})
    automount = spec.get("automountServiceAccountToken")
    if automount is None:
        automount = service_account.get("automountServiceAccountToken", True)
    volumes = spec.setdefault("volumes", [])
    token_volume = None
    mounts = [m for c in spec.get("containers", []) for m in c.get("volumeMounts") or []]
    if automount and not any(m.get("mountPath") == TOKEN_MOUNT_PATH for m in mounts):
        token_volume = "kube-api-access-" + secrets.token_hex(3)[:5]
        volumes.append({"name": token_volume, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt",
                           "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}})
    for container in spec.get("initContainers", []) + spec.get("containers", []):
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("imagePullPolicy", _pull_policy(str(container.get("image", ""))))
        container.setdefault("resources", {})
        if token_volume:
            container.setdefault("volumeMounts", []).append(
                {"name": token_volume, "readOnly": True, "mountPath": TOKEN_MOUNT_PATH})
    pod.setdefault("status", {})
    pod["status"] = {"phase": "Pending", "qosClass": qos_class(spec)}


def qos_class(spec: Obj) -> str:
    """The pod's QoS class, as the API server computes it."""
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    any_set = False
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        if requests or limits:
            any_set = True
        for rname in ("cpu", "memory"):
            if rname not in limits or str(requests.get(rname, limits[rname])) != str(limits[rname]):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"
