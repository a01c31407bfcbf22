"""The last check of the job pod: each Pod Security Standards baseline control, and exceptions."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from runner_driver.podsecurity import BASELINE_CAPABILITIES, SAFE_SYSCTLS, violations
from runner_driver.podspec import build_pod
from runner_driver.runner_env import JobContext
from runner_driver.settings import SECURITY_EXCEPTIONS, Settings

JOB = JobContext(job_id="1", project_id="2", timeout_seconds=None, nonce="0" * 32,
                 tmpdir="/tmp/x")
AA = "container.apparmor.security.beta.kubernetes.io/build"

# A pod within baseline that each case below changes in one place.
CLEAN: dict[str, Any] = {
    "metadata": {"annotations": {}},
    "spec": {
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [{"name": "cache", "emptyDir": {}}],
        "containers": [{"name": "build", "image": "b",
                        "securityContext": {"capabilities": {"drop": ["ALL"]}}}],
    },
}


def _pod(metadata: dict[str, Any] | None = None, spec: dict[str, Any] | None = None,
         build: dict[str, Any] | None = None) -> dict[str, Any]:
    """CLEAN with keys set in its metadata, its spec, or its `build` container."""
    pod = copy.deepcopy(CLEAN)
    pod["metadata"].update(metadata or {})
    pod["spec"].update(spec or {})
    pod["spec"]["containers"][0].update(build or {})
    return pod


def _context(**context: Any) -> dict[str, Any]:
    """The build container's securityContext."""
    return {"securityContext": context}


B = "spec.containers[build]"
# One case per restricted field of the baseline table at
# https://kubernetes.io/docs/concepts/security/pod-security-standards/#baseline
# (and k8s.io/pod-security-admission/policy/check_*.go).
VIOLATIONS = [
    # HostProcess
    pytest.param(_pod(spec={"securityContext": {"windowsOptions": {"hostProcess": True}}}),
                 ("host_namespaces", "spec.securityContext.windowsOptions.hostProcess",
                  "runs as a Windows host process"), id="pod-host-process"),
    pytest.param(_pod(build=_context(windowsOptions={"hostProcess": True})),
                 ("host_namespaces", f"{B}.securityContext.windowsOptions.hostProcess",
                  "runs as a Windows host process"), id="container-host-process"),
    # Host Namespaces
    pytest.param(_pod(spec={"hostNetwork": True}),
                 ("host_namespaces", "spec.hostNetwork", "shares the node's namespaces"),
                 id="host-network"),
    pytest.param(_pod(spec={"hostPID": True}),
                 ("host_namespaces", "spec.hostPID", "shares the node's namespaces"),
                 id="host-pid"),
    pytest.param(_pod(spec={"hostIPC": True}),
                 ("host_namespaces", "spec.hostIPC", "shares the node's namespaces"),
                 id="host-ipc"),
    # Privileged Containers
    pytest.param(_pod(build=_context(privileged=True)),
                 ("privileged", f"{B}.securityContext.privileged", "is true"),
                 id="privileged"),
    # Capabilities
    pytest.param(_pod(build=_context(capabilities={"add": ["SYS_ADMIN"]})),
                 ("capabilities", f"{B}.securityContext.capabilities.add",
                  "adds SYS_ADMIN (beyond the baseline set)"), id="capability-sys-admin"),
    pytest.param(_pod(build=_context(capabilities={"add": ["NET_RAW", "CHOWN"]})),
                 ("capabilities", f"{B}.securityContext.capabilities.add",
                  "adds NET_RAW (beyond the baseline set)"), id="capability-net-raw"),
    pytest.param(_pod(build=_context(capabilities={"add": ["ALL"]})),
                 ("capabilities", f"{B}.securityContext.capabilities.add",
                  "adds ALL (beyond the baseline set)"), id="capability-all"),
    # Pod Security admission compares exact names: other spellings of allowed ones
    # (CAP_CHOWN, chown) are beyond baseline too.
    pytest.param(_pod(build=_context(capabilities={"add": ["cap_sys_admin", "BPF", "CHOWN",
                                                           "CAP_CHOWN", "chown", "BPF"]})),
                 ("capabilities", f"{B}.securityContext.capabilities.add",
                  "adds BPF, CAP_CHOWN, cap_sys_admin, chown (beyond the baseline set)"),
                 id="capability-names-exact-sorted-once"),
    # HostPath Volumes
    pytest.param(_pod(spec={"volumes": [{"name": "node", "hostPath": {"path": "/"}}]}),
                 ("host_path", "spec.volumes[node].hostPath", "mounts a path of the node"),
                 id="host-path"),
    pytest.param(_pod(spec={"volumes": [{"name": "a", "emptyDir": {}},
                                        {"hostPath": {"path": "/var/run"}}]}),
                 ("host_path", "spec.volumes[1].hostPath", "mounts a path of the node"),
                 id="host-path-unnamed-by-index"),
    # Host Ports
    pytest.param(_pod(build={"ports": [{"containerPort": 22},
                                       {"containerPort": 80, "hostPort": 2222}]}),
                 ("host_ports", f"{B}.ports[1].hostPort", "binds port 2222 of the node"),
                 id="host-port"),
    # AppArmor
    pytest.param(_pod(metadata={"annotations": {AA: "unconfined"}}),
                 ("apparmor", f"metadata.annotations[{AA}]",
                  "sets the AppArmor profile 'unconfined'"), id="apparmor-annotation"),
    pytest.param(_pod(spec={"securityContext": {"appArmorProfile": {"type": "Unconfined"}}}),
                 ("apparmor", "spec.securityContext.appArmorProfile.type", "is Unconfined"),
                 id="pod-apparmor-unconfined"),
    pytest.param(_pod(build=_context(appArmorProfile={"type": "Unconfined"})),
                 ("apparmor", f"{B}.securityContext.appArmorProfile.type", "is Unconfined"),
                 id="container-apparmor-unconfined"),
    # SELinux
    pytest.param(_pod(spec={"securityContext": {"seLinuxOptions": {"type": "spc_t"}}}),
                 ("selinux", "spec.securityContext.seLinuxOptions.type", "is 'spc_t'"),
                 id="pod-selinux-type"),
    pytest.param(_pod(build=_context(seLinuxOptions={"type": "unconfined_t"})),
                 ("selinux", f"{B}.securityContext.seLinuxOptions.type", "is 'unconfined_t'"),
                 id="container-selinux-type"),
    pytest.param(_pod(build=_context(seLinuxOptions={"user": "system_u"})),
                 ("selinux", f"{B}.securityContext.seLinuxOptions.user", "is set"),
                 id="selinux-user"),
    pytest.param(_pod(spec={"securityContext": {"seLinuxOptions": {"role": "system_r"}}}),
                 ("selinux", "spec.securityContext.seLinuxOptions.role", "is set"),
                 id="selinux-role"),
    # /proc Mount Type
    pytest.param(_pod(build=_context(procMount="Unmasked")),
                 ("proc_mount", f"{B}.securityContext.procMount", "is 'Unmasked', not Default"),
                 id="proc-mount-unmasked"),
    # Seccomp
    pytest.param(_pod(spec={"securityContext": {"seccompProfile": {"type": "Unconfined"}}}),
                 ("seccomp", "spec.securityContext.seccompProfile.type", "is Unconfined"),
                 id="pod-seccomp-unconfined"),
    pytest.param(_pod(build=_context(seccompProfile={"type": "Unconfined"})),
                 ("seccomp", f"{B}.securityContext.seccompProfile.type", "is Unconfined"),
                 id="container-seccomp-unconfined"),
    # Sysctls
    pytest.param(_pod(spec={"securityContext": {"sysctls": [
        {"name": "net.ipv4.tcp_syncookies", "value": "1"},
        {"name": "kernel.msgmax", "value": "65536"}]}}),
                 ("sysctls", "spec.securityContext.sysctls[1]",
                  "sets 'kernel.msgmax', which is not one of the safe sysctls"),
                 id="unsafe-sysctl"),
]


@pytest.mark.parametrize(("pod", "expected"), VIOLATIONS)
def test_baseline_control_is_found(pod: dict[str, Any], expected: tuple[str, str, str]) -> None:
    """Each field the baseline level restricts is reported, alone, with its control and path."""
    assert violations(pod) == [expected]


@pytest.mark.parametrize("kind", ["initContainers", "containers", "ephemeralContainers"])
def test_every_kind_of_container_is_checked(kind: str) -> None:
    """Init and ephemeral containers are held to the same controls as containers."""
    pod = copy.deepcopy(CLEAN)
    pod["spec"][kind] = [*pod["spec"].get(kind, []),
                         {"name": "x", "securityContext": {"privileged": True}}]
    assert violations(pod) == [("privileged", f"spec.{kind}[x].securityContext.privileged",
                                "is true")]


ALLOWED = [
    pytest.param(CLEAN, id="clean"),
    pytest.param(_pod(spec={"hostNetwork": False, "hostPID": False, "hostIPC": False}),
                 id="host-namespaces-false"),
    pytest.param(_pod(spec={"securityContext": {"windowsOptions": {"hostProcess": False}}}),
                 id="host-process-false"),
    pytest.param(_pod(build=_context(privileged=False)), id="privileged-false"),
    pytest.param(_pod(build=_context(capabilities={"drop": ["ALL"],
                                                   "add": sorted(BASELINE_CAPABILITIES)})),
                 id="all-baseline-capabilities"),
    pytest.param(_pod(build=_context(capabilities={"add": []})), id="no-capability-added"),
    pytest.param(_pod(build={"ports": [{"containerPort": 80, "hostPort": 0}]}),
                 id="host-port-zero"),
    pytest.param(_pod(metadata={"annotations": {AA: "runtime/default"}}),
                 id="apparmor-runtime-default"),
    pytest.param(_pod(metadata={"annotations": {AA: "localhost/ci-profile"}}),
                 id="apparmor-localhost"),
    pytest.param(_pod(metadata={"annotations": {AA: ""}}), id="apparmor-empty"),
    pytest.param(_pod(metadata={"annotations": {"example.com/profile": "unconfined"}}),
                 id="other-annotation"),
    pytest.param(_pod(build=_context(appArmorProfile={"type": "RuntimeDefault"})),
                 id="apparmor-profile-runtime-default"),
    pytest.param(_pod(spec={"securityContext": {"appArmorProfile": {
        "type": "Localhost", "localhostProfile": "ci"}}}), id="apparmor-profile-localhost"),
    *(pytest.param(_pod(build=_context(seLinuxOptions={"type": t, "level": "s0:c1,c2"})),
                   id=f"selinux-type-{t or 'empty'}")
      for t in ("", "container_t", "container_init_t", "container_kvm_t",
                "container_engine_t")),
    pytest.param(_pod(build=_context(procMount="Default")), id="proc-mount-default"),
    pytest.param(_pod(build=_context(seccompProfile={"type": "Localhost",
                                                     "localhostProfile": "p.json"})),
                 id="seccomp-localhost"),
    pytest.param(_pod(spec={"securityContext": {}}), id="no-seccomp-profile"),
    pytest.param(_pod(spec={"securityContext": {"sysctls": [
        {"name": name, "value": "1"} for name in sorted(SAFE_SYSCTLS)]}}),
                 id="all-safe-sysctls"),
    pytest.param(_pod(spec={"volumes": [{"name": "c", "persistentVolumeClaim": {
        "claimName": "c"}}]}), id="pvc-volume"),
]


@pytest.mark.parametrize("pod", ALLOWED)
def test_baseline_allows(pod: dict[str, Any]) -> None:
    """Values the baseline level allows for a restricted field are not reported."""
    assert violations(pod) == []


def test_baseline_lists_match_the_standard() -> None:
    """The allowed capabilities and safe sysctls are the baseline table's, no more."""
    assert sorted(BASELINE_CAPABILITIES) == [
        "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
        "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"]
    assert "NET_RAW" not in BASELINE_CAPABILITIES
    assert sorted(SAFE_SYSCTLS) == [
        "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_local_reserved_ports", "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.ping_group_range", "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
        "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_syncookies"]


def test_driver_default_pod_is_within_baseline() -> None:
    """The pod the driver builds from default settings breaks no baseline control."""
    assert violations(build_pod(Settings(), JOB)) == []


# One pod per control an operator may name in `security.exceptions`.
ONE_PER_CONTROL = {
    "privileged": _pod(build=_context(privileged=True)),
    "host_namespaces": _pod(spec={"hostPID": True}),
    "host_path": _pod(spec={"volumes": [{"name": "n", "hostPath": {"path": "/"}}]}),
    "host_ports": _pod(build={"ports": [{"containerPort": 1, "hostPort": 1}]}),
    "capabilities": _pod(build=_context(capabilities={"add": ["SYS_ADMIN"]})),
    "seccomp": _pod(build=_context(seccompProfile={"type": "Unconfined"})),
    "proc_mount": _pod(build=_context(procMount="Unmasked")),
    "sysctls": _pod(spec={"securityContext": {"sysctls": [{"name": "kernel.sem"}]}}),
    "selinux": _pod(build=_context(seLinuxOptions={"type": "spc_t"})),
    "apparmor": _pod(metadata={"annotations": {AA: "unconfined"}}),
    "probe_hosts": _pod(build={"livenessProbe": {"tcpSocket": {"port": 1, "host": "10.0.0.1"}}}),
}


@pytest.mark.parametrize("control", SECURITY_EXCEPTIONS)
def test_exception_turns_off_exactly_its_control(control: str) -> None:
    """Each name settings accept in `security.exceptions` silences that control and only it."""
    pod = ONE_PER_CONTROL[control]
    assert [found[0] for found in violations(pod)] == [control]
    assert violations(pod, (control,)) == []
    others = tuple(name for name in SECURITY_EXCEPTIONS if name != control)
    assert [found[0] for found in violations(pod, others)] == [control]


def test_exception_names_cover_every_control() -> None:
    """Every control the check reports can be excepted by a name the settings accept."""
    assert sorted(ONE_PER_CONTROL) == sorted(SECURITY_EXCEPTIONS)


def test_all_violations_in_a_fixed_order_once_each() -> None:
    """Several faults come pod-level first, then containers in order; duplicates once."""
    pod = _pod(metadata={"annotations": {AA: "unconfined"}},
               spec={"hostNetwork": True,
                     "volumes": [{"name": "n", "hostPath": {"path": "/"}}],
                     "securityContext": {"seccompProfile": {"type": "Unconfined"},
                                         "sysctls": [{"name": "kernel.sem"}]},
                     "initContainers": [{"name": "i", "securityContext": {
                         "procMount": "Unmasked"}}]},
               build={"ports": [{"containerPort": 1, "hostPort": 1}],
                      "securityContext": {"privileged": True,
                                          "capabilities": {"add": ["NET_ADMIN"]},
                                          "seLinuxOptions": {"type": "spc_t"}}})
    pod["spec"]["containers"].append(copy.deepcopy(pod["spec"]["containers"][0]))
    assert violations(pod) == [
        ("host_namespaces", "spec.hostNetwork", "shares the node's namespaces"),
        ("host_path", "spec.volumes[n].hostPath", "mounts a path of the node"),
        ("seccomp", "spec.securityContext.seccompProfile.type", "is Unconfined"),
        ("sysctls", "spec.securityContext.sysctls[0]",
         "sets 'kernel.sem', which is not one of the safe sysctls"),
        ("apparmor", f"metadata.annotations[{AA}]", "sets the AppArmor profile 'unconfined'"),
        ("proc_mount", "spec.initContainers[i].securityContext.procMount",
         "is 'Unmasked', not Default"),
        ("privileged", f"{B}.securityContext.privileged", "is true"),
        ("capabilities", f"{B}.securityContext.capabilities.add",
         "adds NET_ADMIN (beyond the baseline set)"),
        ("selinux", f"{B}.securityContext.seLinuxOptions.type", "is 'spc_t'"),
        ("host_ports", f"{B}.ports[0].hostPort", "binds port 1 of the node"),
    ]


def test_empty_pod_has_no_violations() -> None:
    """A pod without spec or metadata (as a patch may leave it) is checked without error."""
    assert violations({}) == []
    assert violations({"metadata": None, "spec": {"securityContext": None,
                                                  "containers": [None, {"name": "c"}]}}) == []


@pytest.mark.parametrize("path", [
    "livenessProbe.httpGet.host", "readinessProbe.tcpSocket.host", "startupProbe.httpGet.host",
    "lifecycle.postStart.httpGet.host", "lifecycle.preStop.tcpSocket.host"])
def test_probe_and_hook_hosts_are_beyond_baseline(path: str) -> None:
    """A host on a probe or lifecycle hook is refused (baseline since Kubernetes 1.34);
    the probe_hosts exception turns exactly that off."""
    container: dict[str, Any] = {"name": "build"}
    target = container
    *parents, last = path.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = "169.254.169.254"
    pod = {"spec": {"containers": [container]}}
    assert violations(pod) == [("probe_hosts", f"spec.containers[build].{path}",
                                "sends probes or hooks to host '169.254.169.254'")]
    assert violations(pod, ("probe_hosts",)) == []
