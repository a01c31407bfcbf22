"""The last check of every job pod: nothing beyond the Pod Security Standards' baseline.

A job must not be able to harm its node or its neighbours, whatever the operator's
template or patch says by mistake. So the final pod is checked against the
"baseline" level of the Pod Security Standards
(https://kubernetes.io/docs/concepts/security/pod-security-standards/, the controls
of the baseline table) before anything is created, and refused with the path of the
offending field, e.g. `spec.containers[build].securityContext.privileged`. An operator
who needs one control off says so by name in `[security] exceptions`. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Capabilities baseline allows a container to add.
BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"})
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t",
                           "container_engine_t"})
APPARMOR_PREFIX = "container.apparmor.security.beta.kubernetes.io/"


def violations(pod: dict[str, Any], exceptions: tuple[str, ...] = ()
               ) -> list[tuple[str, str, str]]:
    """What in `pod` the baseline level forbids: (control, field path, what is wrong).

    Controls named in `exceptions` are not checked.
    """
    found = [v for v in _all(pod) if v[0] not in exceptions]
    return sorted(set(found), key=found.index)


def _all(pod: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    spec = pod.get("spec") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            yield "host_namespaces", f"spec.{key}", "shares the node's namespaces"
    for index, volume in enumerate(spec.get("volumes") or ()):
        if isinstance(volume, dict) and "hostPath" in volume:
            name = volume.get("name", index)
            yield "host_path", f"spec.volumes[{name}].hostPath", "mounts a path of the node"
    pod_context = spec.get("securityContext") or {}
    yield from _context(pod_context, "spec.securityContext")
    for index, sysctl in enumerate(pod_context.get("sysctls") or ()):
        name = (sysctl or {}).get("name", "")
        if name not in SAFE_SYSCTLS:
            yield ("sysctls", f"spec.securityContext.sysctls[{index}]",
                   f"sets {name!r}, which is not one of the safe sysctls")
    for key, value in ((pod.get("metadata") or {}).get("annotations") or {}).items():
        if key.startswith(APPARMOR_PREFIX) and value not in ("", "runtime/default") \
                and not str(value).startswith("localhost/"):
            yield ("apparmor", f"metadata.annotations[{key}]",
                   f"sets the AppArmor profile {value!r}")
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for index, container in enumerate(spec.get(kind) or ()):
            if not isinstance(container, dict):
                continue
            where = f"spec.{kind}[{container.get('name', index)}]"
            context = container.get("securityContext") or {}
            if context.get("privileged"):
                yield "privileged", f"{where}.securityContext.privileged", "is true"
            added = (context.get("capabilities") or {}).get("add") or ()
            # Exact names, as Pod Security admission compares them: `CAP_CHOWN` or
            # `chown` are not in the baseline set and a baseline namespace refuses them.
            extra = sorted({str(c) for c in added} - BASELINE_CAPABILITIES)
            if extra:
                yield ("capabilities", f"{where}.securityContext.capabilities.add",
                       f"adds {', '.join(extra)} (beyond the baseline set)")
            if context.get("procMount") not in (None, "Default"):
                yield ("proc_mount", f"{where}.securityContext.procMount",
                       f"is {context.get('procMount')!r}, not Default")
            yield from _context(context, f"{where}.securityContext")
            for path, host in _probe_hosts(container):
                yield ("probe_hosts", f"{where}.{path}",
                       f"sends probes or hooks to host {host!r}")
            for port_index, port in enumerate(container.get("ports") or ()):
                if (port or {}).get("hostPort"):
                    yield ("host_ports", f"{where}.ports[{port_index}].hostPort",
                           f"binds port {port['hostPort']} of the node")


def _probe_hosts(container: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Hosts set on probes and lifecycle hooks (baseline since Kubernetes 1.34)."""
    handlers = [(probe, container.get(probe)) for probe in
                ("livenessProbe", "readinessProbe", "startupProbe")]
    lifecycle = container.get("lifecycle") or {}
    handlers += [(f"lifecycle.{hook}", lifecycle.get(hook)) for hook in ("postStart", "preStop")]
    for path, handler in handlers:
        for kind in ("httpGet", "tcpSocket"):
            host = ((handler or {}).get(kind) or {}).get("host")
            if host:
                yield f"{path}.{kind}.host", str(host)


def _context(context: dict[str, Any], where: str) -> Iterator[tuple[str, str, str]]:
    """Controls that pod and container security contexts share."""
    if (context.get("windowsOptions") or {}).get("hostProcess"):
        yield ("host_namespaces", f"{where}.windowsOptions.hostProcess",
               "runs as a Windows host process")
    if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
        yield "seccomp", f"{where}.seccompProfile.type", "is Unconfined"
    if (context.get("appArmorProfile") or {}).get("type") == "Unconfined":
        yield "apparmor", f"{where}.appArmorProfile.type", "is Unconfined"
    selinux = context.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES:
        yield "selinux", f"{where}.seLinuxOptions.type", f"is {selinux.get('type')!r}"
    for key in ("user", "role"):
        if selinux.get(key):
            yield "selinux", f"{where}.seLinuxOptions.{key}", "is set"
