"""Per-job changes to the pod, asked for with GitLab's KUBERNETES_* variables, within caps.

Projects ask for more memory, another CPU architecture or a label their policies
need, with the variable names GitLab's Kubernetes executor reads, so pipelines move
over unchanged. Each override is off until the operator sets its cap or allow-list
(`[overrides]`): a value above its cap or outside its list fails the job with one line
naming the variable, the value and the limit (the job's failure: retrying cannot
help); an override whose cap is off is reported in the job log, never silently
dropped. Every value here is written by the job's author and may be hostile, so each
is checked for form before use. Pure: no I/O.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import JobFailed
from .settings import ResourceCaps, Settings

# (variable suffix, resource name, requests or limits, settings key of the cap)
RESOURCES = (
    ("CPU_REQUEST", "cpu", "requests", "cpu_request_max"),
    ("CPU_LIMIT", "cpu", "limits", "cpu_limit_max"),
    ("MEMORY_REQUEST", "memory", "requests", "memory_request_max"),
    ("MEMORY_LIMIT", "memory", "limits", "memory_limit_max"),
    ("EPHEMERAL_STORAGE_REQUEST", "ephemeral-storage", "requests",
     "ephemeral_storage_request_max"),
    ("EPHEMERAL_STORAGE_LIMIT", "ephemeral-storage", "limits", "ephemeral_storage_limit_max"),
)
NODE_SELECTOR = "KUBERNETES_NODE_SELECTOR_"
POD_LABELS = "KUBERNETES_POD_LABELS_"
POD_ANNOTATIONS = "KUBERNETES_POD_ANNOTATIONS_"
SERVICE_ACCOUNT = "KUBERNETES_SERVICE_ACCOUNT_OVERWRITE"
# GitLab variables this driver has no use for: said so, rather than ignored in silence.
UNSUPPORTED = ("KUBERNETES_NAMESPACE_OVERWRITE", "KUBERNETES_BEARER_TOKEN",
               "KUBERNETES_NODE_TOLERATIONS_", "KUBERNETES_SERVICE_CPU_",
               "KUBERNETES_SERVICE_MEMORY_", "KUBERNETES_SERVICE_EPHEMERAL_STORAGE_",
               "KUBERNETES_POD_CPU_", "KUBERNETES_POD_MEMORY_")
# Labels and annotations under these prefixes are the driver's own (see `podspec`).
RESERVED_PREFIXES = ("runner-driver/", "app.kubernetes.io/")

_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1), "m": Decimal("0.001"), "k": Decimal(10**3), "M": Decimal(10**6),
    "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15), "E": Decimal(10**18),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60)}
# ASCII: `\d` alone also matches other scripts' digits, which Decimal reads but the
# API server refuses.
_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?", re.ASCII)
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SHOWN = 80  # characters of a job's value shown in a message


@dataclass(frozen=True)
class Applied:
    """The pod with the job's overrides, and the lines the job log should show."""

    pod: dict[str, Any]
    notes: tuple[str, ...]


def quantity(text: str) -> Decimal | None:
    """A Kubernetes quantity's value (`500m` -> 0.5, `1Gi` -> 1073741824), None if malformed."""
    match = _QUANTITY.fullmatch(text.strip())
    if not match:
        return None
    try:
        return Decimal(match.group(1)) * _SUFFIXES[match.group(2) or ""]
    except InvalidOperation:
        return None


def apply(pod: dict[str, Any], settings: Settings, requests: tuple[tuple[str, str], ...],
          secrets: tuple[str, ...] = ()) -> Applied:
    """`pod` (changed in place and returned) with the job's allowed overrides.

    Raises:
        JobFailed: an override is malformed, above its cap or outside its allow-list, or
            one this module reads holds one of the job's `secrets` (a pod's labels and
            annotations are no place for them: anyone who can list pods reads them).
    """
    caps = settings.overrides
    notes: list[str] = []
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    touched: set[str] = set()
    for name, raw in requests:
        value = raw.strip()
        if not value:
            continue
        if _used(name) and any(secret in value for secret in secrets):
            raise JobFailed(f"refusing {name}: its value holds one of the job's secrets (a "
                            "token or masked variable), which must not go into a pod spec")
        if name.startswith("KUBERNETES_HELPER_"):
            done = _resource(containers["helper"], caps.helper, "overrides.helper", name,
                             name[len("KUBERNETES_HELPER_"):], value, notes)
        else:
            done = _resource(containers["build"], caps.build, "overrides.build", name,
                             name[len("KUBERNETES_"):], value, notes)
        if done:
            touched.add("helper" if name.startswith("KUBERNETES_HELPER_") else "build")
            continue
        if name.startswith(NODE_SELECTOR):
            key, text = _pair(name, value)
            if _allowed(name, value, key, caps.node_selector_keys,
                        "overrides.node_selector_keys", "label keys", notes):
                _set(pod["spec"].setdefault("nodeSelector", {}), name, key, text, notes)
        elif name.startswith(POD_LABELS):
            key, text = _pair(name, value)
            _reserved(name, key)
            if _allowed(name, value, key, caps.pod_label_keys, "overrides.pod_label_keys",
                        "label keys", notes):
                _set(pod["metadata"].setdefault("labels", {}), name, key, text, notes)
        elif name.startswith(POD_ANNOTATIONS):
            key, text = _pair(name, value, annotation=True)
            _reserved(name, key)
            if _allowed(name, value, key, caps.pod_annotation_keys,
                        "overrides.pod_annotation_keys", "annotation keys", notes):
                _set(pod["metadata"].setdefault("annotations", {}), name, key, text, notes)
        elif name == SERVICE_ACCOUNT:
            if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
                raise JobFailed(f"refusing {name}={_shown(value)!r}: not a service account "
                                "name (lower-case letters, digits, '-' and '.')")
            if _allowed(name, value, value, caps.service_accounts, "overrides.service_accounts",
                        "service accounts", notes):
                pod["spec"]["serviceAccountName"] = value
                notes.append(f"{name}={value}: the pod runs as service account {value}")
        elif name.startswith(UNSUPPORTED):
            notes.append(f"WARNING: {name} is ignored: runner-driver does not support it")
    for name in sorted(touched):
        # The API server would refuse the pod; say which values clash before it does.
        clash = request_above_limit(containers[name])
        if clash:
            raise JobFailed(f"refusing the {name} container's {clash} (set by the job's "
                            "KUBERNETES_* variables, on top of the runner's settings)")
    return Applied(pod, tuple(notes))


def _used(name: str) -> bool:
    """Whether `apply` reads the value of `name`; other variables' values go nowhere."""
    suffix = name.removeprefix("KUBERNETES_HELPER_") if name.startswith("KUBERNETES_HELPER_") \
        else name.removeprefix("KUBERNETES_")
    return (any(suffix == resource[0] for resource in RESOURCES) or name == SERVICE_ACCOUNT
            or name.startswith((NODE_SELECTOR, POD_LABELS, POD_ANNOTATIONS)))


def _resource(container: dict[str, Any], caps: ResourceCaps, section: str, name: str,
              suffix: str, value: str, notes: list[str]) -> bool:
    """Apply a resource override; False when `suffix` names no resource."""
    found = next((r for r in RESOURCES if r[0] == suffix), None)
    if found is None:
        return False
    _, resource, kind, cap_key = found
    asked = quantity(value)
    if asked is None or (resource != "cpu" and value.strip().endswith("m")):
        example = "500m or 2" if resource == "cpu" else "512Mi or 4Gi"
        raise JobFailed(f"refusing {name}={_shown(value)!r}: not a Kubernetes quantity "
                        f"such as {example}")
    cap = getattr(caps, cap_key)
    if not cap:
        notes.append(f"WARNING: {name}={value} is ignored: the runner's operator has not "
                     f"allowed it ({section}.{cap_key} is not set)")
        return True
    limit = quantity(cap)
    assert limit is not None  # settings checked its form
    if asked > limit:
        raise JobFailed(f"refusing {name}={value}: above the runner's cap of {cap} "
                        f"({section}.{cap_key})")
    container.setdefault("resources", {}).setdefault(kind, {})[resource] = value
    notes.append(f"{name}={value}: {container['name']} container {kind}.{resource} "
                 f"(cap {cap})")
    return True


def request_above_limit(container: dict[str, Any]) -> str:
    """`<resource>: request X is above its limit Y` for the container's first clash, or ""."""
    resources = container.get("resources") or {}
    for resource in ("cpu", "memory", "ephemeral-storage"):
        request = (resources.get("requests") or {}).get(resource)
        limit = (resources.get("limits") or {}).get(resource)
        if request is None or limit is None:
            continue
        low, high = quantity(str(request)), quantity(str(limit))
        if low is not None and high is not None and low > high:
            return f"{resource}: request {request} is above its limit {limit}"
    return ""


def _pair(name: str, value: str, annotation: bool = False) -> tuple[str, str]:
    """`key=value` as GitLab's variables write it; the key is checked for form."""
    key, equals, text = value.partition("=")
    key = key.strip()
    prefix, slash, last = key.rpartition("/")
    valid = bool(equals) and _LABEL_NAME.fullmatch(last) is not None and (
        not slash or (len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix) is not None))
    if not valid:
        raise JobFailed(f"refusing {name}={_shown(value)!r}: expected key=value with a "
                        "Kubernetes label key (such as kubernetes.io/arch=arm64)")
    text = text.strip()
    if not annotation and not _LABEL_VALUE.fullmatch(text):
        raise JobFailed(f"refusing {name}={_shown(value)!r}: {_shown(text)!r} is not a "
                        "label value (at most 63 letters, digits, '-', '_' or '.')")
    if annotation and len(text) > 4096:
        raise JobFailed(f"refusing {name}: the annotation value is over 4096 characters")
    return key, text


def _reserved(name: str, key: str) -> None:
    if key.startswith(RESERVED_PREFIXES):
        raise JobFailed(f"refusing {name}: the key {key!r} is reserved for the driver's own "
                        f"labels and annotations ({', '.join(RESERVED_PREFIXES)})")


def _allowed(name: str, value: str, key: str, patterns: tuple[str, ...], setting: str,
             what: str, notes: list[str]) -> bool:
    if not patterns:
        notes.append(f"WARNING: {name}={_shown(value)} is ignored: the runner's operator has "
                     f"not allowed it ({setting} is empty)")
        return False
    if not any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns):
        raise JobFailed(f"refusing {name}={_shown(value)}: {key!r} is not among the allowed "
                        f"{what} ({setting} = {', '.join(patterns)})")
    return True


def _set(target: dict[str, str], name: str, key: str, value: str, notes: list[str]) -> None:
    target[key] = value
    notes.append(f"{name}: {key}={_shown(value)}")


def _shown(value: str) -> str:
    cleaned = "".join(c if c.isprintable() else "?" for c in value)
    return cleaned if len(cleaned) <= _SHOWN else cleaned[:_SHOWN] + "..."
