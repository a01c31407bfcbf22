"""Pod Security admission: the namespace's `pod-security.kubernetes.io/enforce` level.

A pod created (or dry-run created) in a namespace labelled `baseline` or `restricted`
is refused with the 403 a real API server sends, e.g. `pods "x" is forbidden:
violates PodSecurity "restricted:latest": runAsNonRoot != true (pod or container
"build" must set securityContext.runAsNonRoot=true)`: the failed checks in the order
of their ids, each as its reason and detail. `privileged` (or no label) admits
everything; the `audit` and `warn` modes are not emulated.

Checks and texts from kubernetes/kubernetes staging/src/k8s.io/pod-security-admission
(policy/check_*.go, admission.go). Only the controls a job pod's template can
plausibly trip are emulated: baseline's privileged, host namespaces, hostPath
volumes, host ports, capabilities and seccomp; restricted's allowPrivilegeEscalation,
capabilities, volume types, runAsNonRoot, runAsUser and seccomp. Not emulated:
AppArmor, SELinux, procMount, sysctls, Windows host process, and version pinning
(`enforce-version` only names the version in the message). Pure; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .store import ApiError, Obj

ENFORCE = "pod-security.kubernetes.io/enforce"
ENFORCE_VERSION = "pod-security.kubernetes.io/enforce-version"
LEVELS = ("privileged", "baseline", "restricted")
BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})
RESTRICTED_VOLUMES = frozenset({"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                                "persistentVolumeClaim", "projected", "secret"})

Check = Callable[[Obj], tuple[str, str] | None]  # (reason, detail) when it fails


def admit(namespace: Obj | None, pod: Obj) -> None:
    """Refuse `pod` if it breaks the level its namespace enforces.

    Raises:
        ApiError: 403 Forbidden, naming the level and every failed check.
    """
    labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
    level = str(labels.get(ENFORCE, "privileged"))
    if level not in LEVELS or level == "privileged":
        return
    version = str(labels.get(ENFORCE_VERSION) or "latest")
    checks = dict(BASELINE)
    if level == "restricted":
        checks |= RESTRICTED
        # Restricted replaces the baseline checks it tightens.
        checks.pop("capabilities_baseline")
        checks.pop("seccompProfile_baseline")
    failed = [found for _, check in sorted(checks.items()) if (found := check(pod))]
    if not failed:
        return
    name = (pod.get("metadata") or {}).get("name", "")
    text = ", ".join(f"{reason} ({detail})" for reason, detail in failed)
    raise ApiError(403, "Forbidden",
                   f'pods "{name}" is forbidden: violates PodSecurity "{level}:{version}": '
                   f"{text}", {"name": name, "kind": "pods"})


def _containers(pod: Obj) -> Iterator[Obj]:
    spec = pod.get("spec") or {}
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        yield from (c for c in spec.get(kind) or () if isinstance(c, dict))


def _context(obj: Obj) -> dict[str, Any]:
    return dict(obj.get("securityContext") or {})


def _pod_context(pod: Obj) -> dict[str, Any]:
    return dict((pod.get("spec") or {}).get("securityContext") or {})


def _quoted(names: list[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _who(noun: str, names: list[str]) -> str:
    return f"{noun if len(names) == 1 else noun + 's'} {_quoted(names)}"


def _privileged(pod: Obj) -> tuple[str, str] | None:
    bad = [c["name"] for c in _containers(pod) if _context(c).get("privileged")]
    return ("privileged", f"{_who('container', bad)} must not set "
                          "securityContext.privileged=true") if bad else None


def _host_namespaces(pod: Obj) -> tuple[str, str] | None:
    spec = pod.get("spec") or {}
    bad = [f"{key}=true" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    return ("host namespaces", ", ".join(bad)) if bad else None


def _host_path(pod: Obj) -> tuple[str, str] | None:
    bad = [v.get("name", "") for v in (pod.get("spec") or {}).get("volumes") or ()
           if "hostPath" in v]
    return ("hostPath volumes", _who("volume", bad)) if bad else None


def _host_ports(pod: Obj) -> tuple[str, str] | None:
    bad, ports = [], []
    for container in _containers(pod):
        used = [str(p["hostPort"]) for p in container.get("ports") or () if p.get("hostPort")]
        if used:
            bad.append(container["name"])
            ports += used
    if not bad:
        return None
    return ("hostPort", f"{_who('container', bad)} {'uses' if len(bad) == 1 else 'use'} "
                        f"{'hostPort' if len(ports) == 1 else 'hostPorts'} {', '.join(ports)}")


def _added(container: Obj) -> list[str]:
    return [str(c) for c in (_context(container).get("capabilities") or {}).get("add") or ()]


def _capabilities_baseline(pod: Obj) -> tuple[str, str] | None:
    bad, caps = [], []
    for container in _containers(pod):
        extra = [c for c in _added(container) if c not in BASELINE_CAPABILITIES]
        if extra:
            bad.append(container["name"])
            caps += [c for c in extra if c not in caps]
    return ("non-default capabilities", f"{_who('container', bad)} must not include "
            f"{_quoted(caps)} in securityContext.capabilities.add") if bad else None


def _seccomp_baseline(pod: Obj) -> tuple[str, str] | None:
    setters = ["pod"] if (_pod_context(pod).get("seccompProfile") or {}).get("type") \
        == "Unconfined" else []
    bad = [c["name"] for c in _containers(pod)
           if (_context(c).get("seccompProfile") or {}).get("type") == "Unconfined"]
    if bad:
        setters.append(_who("container", bad))
    return ("seccompProfile", f"{' and '.join(setters)} must not set "
            'securityContext.seccompProfile.type to "Unconfined"') if setters else None


def _privilege_escalation(pod: Obj) -> tuple[str, str] | None:
    bad = [c["name"] for c in _containers(pod)
           if _context(c).get("allowPrivilegeEscalation") is not False]
    return ("allowPrivilegeEscalation != false", f"{_who('container', bad)} must set "
            "securityContext.allowPrivilegeEscalation=false") if bad else None


def _capabilities_restricted(pod: Obj) -> tuple[str, str] | None:
    no_drop, adding, caps = [], [], []
    for container in _containers(pod):
        dropped = (_context(container).get("capabilities") or {}).get("drop") or ()
        if "ALL" not in dropped:
            no_drop.append(container["name"])
        extra = [c for c in _added(container) if c != "NET_BIND_SERVICE"]
        if extra:
            adding.append(container["name"])
            caps += [c for c in extra if c not in caps]
    details = []
    if no_drop:
        details.append(f'{_who("container", no_drop)} must set '
                       'securityContext.capabilities.drop=["ALL"]')
    if adding:
        details.append(f"{_who('container', adding)} must not include {_quoted(caps)} in "
                       "securityContext.capabilities.add")
    return ("unrestricted capabilities", "; ".join(details)) if details else None


def _restricted_volumes(pod: Obj) -> tuple[str, str] | None:
    bad, kinds = [], []
    for volume in (pod.get("spec") or {}).get("volumes") or ():
        kind = next((k for k in volume if k != "name"), "")
        if kind and kind not in RESTRICTED_VOLUMES:
            bad.append(volume.get("name", ""))
            kinds += [kind] if kind not in kinds else []
    if not bad:
        return None
    return ("restricted volume types", f"{_who('volume', bad)} "
            f"{'uses' if len(bad) == 1 else 'use'} restricted volume "
            f"{'type' if len(kinds) == 1 else 'types'} {_quoted(kinds)}")


def _run_as_non_root(pod: Obj) -> tuple[str, str] | None:
    pod_value = _pod_context(pod).get("runAsNonRoot")
    setters = ["pod"] if pod_value is False else []
    explicit = [c["name"] for c in _containers(pod) if _context(c).get("runAsNonRoot") is False]
    if explicit:
        setters.append(_who("container", explicit))
    if setters:
        return ("runAsNonRoot != true", f"{' and '.join(setters)} must not set "
                "securityContext.runAsNonRoot=false")
    implicit = [c["name"] for c in _containers(pod)
                if _context(c).get("runAsNonRoot") is None and pod_value is not True]
    return ("runAsNonRoot != true", f"pod or {_who('container', implicit)} must set "
            "securityContext.runAsNonRoot=true") if implicit else None


def _run_as_user(pod: Obj) -> tuple[str, str] | None:
    setters = ["pod"] if _pod_context(pod).get("runAsUser") == 0 else []
    bad = [c["name"] for c in _containers(pod) if _context(c).get("runAsUser") == 0]
    if bad:
        setters.append(_who("container", bad))
    return ("runAsUser=0", f"{' and '.join(setters)} must not set runAsUser=0") \
        if setters else None


def _seccomp_restricted(pod: Obj) -> tuple[str, str] | None:
    allowed = ("RuntimeDefault", "Localhost")
    pod_type = (_pod_context(pod).get("seccompProfile") or {}).get("type")
    setters = ["pod"] if pod_type is not None and pod_type not in allowed else []
    explicit = [c["name"] for c in _containers(pod)
                if (_context(c).get("seccompProfile") or {}).get("type") not in (None, *allowed)]
    if explicit:
        setters.append(_who("container", explicit))
    if setters:
        return ("seccompProfile", f"{' and '.join(setters)} must not set "
                'securityContext.seccompProfile.type to "Unconfined"')
    if pod_type in allowed:
        return None
    implicit = [c["name"] for c in _containers(pod)
                if (_context(c).get("seccompProfile") or {}).get("type") is None]
    return ("seccompProfile", f"pod or {_who('container', implicit)} must set "
            'securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost"') \
        if implicit else None


# By check id, as pod-security-admission names and orders them.
BASELINE: dict[str, Check] = {
    "capabilities_baseline": _capabilities_baseline,
    "hostNamespaces": _host_namespaces,
    "hostPathVolumes": _host_path,
    "hostPorts": _host_ports,
    "privileged": _privileged,
    "seccompProfile_baseline": _seccomp_baseline,
}
RESTRICTED: dict[str, Check] = {
    "allowPrivilegeEscalation": _privilege_escalation,
    "capabilities_restricted": _capabilities_restricted,
    "restrictedVolumes": _restricted_volumes,
    "runAsNonRoot": _run_as_non_root,
    "runAsUser": _run_as_user,
    "seccompProfile_restricted": _seccomp_restricted,
}
