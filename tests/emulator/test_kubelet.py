"""The emulated kubelet over the wire: pulls, configuration, volumes, exits, OOM, eviction.

Each test creates pods with the official client and reads back what a driver would read
on a real cluster: container states and reasons, pod phases and conditions, events and
logs. Busybox containers run for real in sandboxes, so file modes, read-only mounts and
memory limits are the kernel's answers, not the emulator's claims.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from runner_driver.emulator import EmulatedCluster, NodeSettings, sandbox
from tests.conftest import wait_for, wait_running

BUSYBOX = "busybox:1.36"
IDLE = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"]
NODE = "emulated-node"
MEMORY_CGROUPS = Path("/sys/fs/cgroup/memory")


def pod_body(name: str, command: list[str] | None = None, restart: str = "Never",
             **spec: Any) -> dict[str, Any]:
    """A one-container busybox pod (`main`) with a short grace period."""
    body: dict[str, Any] = {
        "metadata": {"name": name},
        "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 1,
                 "automountServiceAccountToken": False,
                 "containers": [{"name": "main", "image": BUSYBOX,
                                 "command": command or IDLE}]},
    }
    body["spec"].update(spec)
    return body


def main_container(body: dict[str, Any]) -> dict[str, Any]:
    """The first container of a pod body, to add fields to."""
    container: dict[str, Any] = body["spec"]["containers"][0]
    return container


def read(core: client.CoreV1Api, namespace: str, name: str) -> Any:
    """The pod as the API returns it now."""
    return core.read_namespaced_pod(name, namespace)


def wait_phase(core: client.CoreV1Api, namespace: str, name: str, phase: str,
               timeout: float = 15) -> Any:
    """Wait for a pod phase; return the pod."""
    def reached() -> Any:
        pod = read(core, namespace, name)
        return pod if pod.status.phase == phase else None

    return wait_for(reached, timeout, what=f"{name} to reach phase {phase}")


def status_of(pod: Any, container: str = "main", init: bool = False) -> Any:
    """One container's status from a pod."""
    statuses = (pod.status.init_container_statuses if init
                else pod.status.container_statuses) or []
    return next(s for s in statuses if s.name == container)


def waiting_reason(core: client.CoreV1Api, namespace: str, name: str,
                   reason: str, timeout: float = 15) -> Any:
    """Wait until the main container waits with `reason`; return its waiting state."""
    def waiting() -> Any:
        statuses = read(core, namespace, name).status.container_statuses or []
        state = statuses[0].state.waiting if statuses else None
        return state if state is not None and state.reason == reason else None

    return wait_for(waiting, timeout, what=f"{name} to wait with {reason}")


def events(core: client.CoreV1Api, namespace: str, name: str) -> list[Any]:
    """Events about one object, oldest first."""
    items = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}").items
    return sorted(items, key=lambda e: int(e.metadata.resource_version))


def logs(core: client.CoreV1Api, namespace: str, name: str, container: str = "main") -> str:
    """A container's log."""
    text: str = core.read_namespaced_pod_log(name, namespace, container=container)
    return text


def output_fields(text: str) -> dict[str, str]:
    """`key=value` lines of a container's output."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def pod_history(core: client.CoreV1Api, namespace: str, name: str, since: str,
                until: Callable[[str, dict[str, Any]], bool],
                timeout: int = 15) -> list[tuple[str, dict[str, Any]]]:
    """Watch one pod from a resource version until `until(type, object)` holds."""
    seen: list[tuple[str, dict[str, Any]]] = []
    stream = watch.Watch()
    for event in stream.stream(core.list_namespaced_pod, namespace,
                               field_selector=f"metadata.name={name}",
                               resource_version=since, timeout_seconds=timeout):
        seen.append((event["type"], event["raw_object"]))
        if until(event["type"], event["raw_object"]):
            stream.stop()
            break
    return seen


def conditions_of(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A raw pod's conditions by type."""
    return {c["type"]: c for c in obj.get("status", {}).get("conditions") or []}


def b64(text: str) -> str:
    """Base64 for secret data."""
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def secret_and_config(core: client.CoreV1Api, namespace: str) -> str:
    """A secret `creds` and a config map `settings` in the test namespace."""
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": "creds"}, "data": {"user": b64("alice"), "token": b64("s3cr3t")}})
    core.create_namespaced_config_map(namespace, {
        "metadata": {"name": "settings"}, "data": {"LEVEL": "debug", "mode": "fast"}})
    return namespace


# Lifecycle, events and exits

def test_started_pod_records_kubelet_events_in_order(core: client.CoreV1Api,
                                                     namespace: str) -> None:
    """A started pod gets Scheduled, Pulling, Pulled, Created and Started, in that order."""
    core.create_namespaced_pod(namespace, pod_body("ordered"))
    wait_running(core, namespace, "ordered")
    wait_for(lambda: any(e.reason == "Started" for e in events(core, namespace, "ordered")),
             what="the Started event")
    found = events(core, namespace, "ordered")
    assert [e.reason for e in found] == ["Scheduled", "Pulling", "Pulled", "Created", "Started"]
    assert all(e.type == "Normal" for e in found)
    assert found[0].source.component == "default-scheduler"
    assert {e.source.component for e in found[1:]} == {"kubelet"}
    assert {e.involved_object.field_path for e in found[1:]} == {"spec.containers{main}"}
    assert found[1].message == f'Pulling image "{BUSYBOX}"'
    assert found[2].message.startswith(f'Successfully pulled image "{BUSYBOX}" in ')
    assert found[3].message == "Created container: main"
    assert found[4].message == "Started container main"


def test_successful_container_completes_and_pod_succeeds(core: client.CoreV1Api,
                                                         namespace: str) -> None:
    """Exit 0 under restartPolicy Never: Terminated Completed, phase Succeeded, not Ready."""
    core.create_namespaced_pod(namespace, pod_body("ok", ["sh", "-c", "echo done"]))
    pod = wait_phase(core, namespace, "ok", "Succeeded")
    terminated = status_of(pod).state.terminated
    assert terminated.exit_code == 0
    assert terminated.reason == "Completed"
    assert terminated.started_at <= terminated.finished_at
    assert status_of(pod).ready is False
    ready = next(c for c in pod.status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "PodCompleted")
    assert logs(core, namespace, "ok") == "done\n"


def test_failing_container_errors_and_pod_fails(core: client.CoreV1Api,
                                                namespace: str) -> None:
    """A non-zero exit under restartPolicy Never: Terminated Error with the code, phase Failed."""
    core.create_namespaced_pod(namespace, pod_body(
        "bad", ["sh", "-c", "echo 'it broke' > /dev/termination-log; exit 3"]))
    pod = wait_phase(core, namespace, "bad", "Failed")
    terminated = status_of(pod).state.terminated
    assert terminated.exit_code == 3
    assert terminated.reason == "Error"
    assert terminated.message == "it broke\n"
    assert terminated.started_at <= terminated.finished_at
    assert status_of(pod).restart_count == 0


def test_missing_executable_is_a_start_error(core: client.CoreV1Api, namespace: str) -> None:
    """A command that is not in the image ends as StartError (exit 128) with a Failed event."""
    core.create_namespaced_pod(namespace, pod_body("nocmd", ["/no/such/tool"]))
    pod = wait_phase(core, namespace, "nocmd", "Failed")
    terminated = status_of(pod).state.terminated
    assert (terminated.exit_code, terminated.reason) == (128, "StartError")
    assert '"/no/such/tool": executable file not found' in terminated.message
    failed = [e for e in events(core, namespace, "nocmd") if e.reason == "Failed"]
    assert failed[0].type == "Warning"


def test_on_failure_restarts_until_success(core: client.CoreV1Api, namespace: str) -> None:
    """restartPolicy OnFailure restarts a failed container (restartCount 1) until it succeeds."""
    script = ("if [ -f /data/once ]; then echo second; exit 0; fi; "
              "touch /data/once; echo first; exit 1")
    body = pod_body("flaky", ["sh", "-c", script], restart="OnFailure",
                    volumes=[{"name": "data", "emptyDir": {}}])
    main_container(body)["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    core.create_namespaced_pod(namespace, body)
    pod = wait_phase(core, namespace, "flaky", "Succeeded", timeout=10)
    status = status_of(pod)
    assert status.restart_count == 1
    assert (status.last_state.terminated.exit_code,
            status.last_state.terminated.reason) == (1, "Error")
    assert (status.state.terminated.exit_code, status.state.terminated.reason) == (0, "Completed")


def test_on_failure_crash_loop_backs_off_while_running(core: client.CoreV1Api,
                                                       namespace: str) -> None:
    """A container failing again waits in CrashLoopBackOff, the pod staying Running."""
    core.create_namespaced_pod(namespace, pod_body("crashy", ["sh", "-c", "exit 2"],
                                                   restart="OnFailure"))
    waiting = waiting_reason(core, namespace, "crashy", "CrashLoopBackOff", timeout=10)
    pod = read(core, namespace, "crashy")
    assert waiting.message.startswith("back-off 10s restarting failed container=main pod=crashy_")
    status = status_of(pod)
    assert status.restart_count == 2
    assert status.last_state.terminated.exit_code == 2
    assert pod.status.phase == "Running"
    back_off = [e for e in events(core, namespace, "crashy") if e.reason == "BackOff"]
    assert back_off[0].type == "Warning"
    assert back_off[0].message.startswith("Back-off restarting failed container main in pod")


def test_active_deadline_fails_pod(core: client.CoreV1Api, namespace: str) -> None:
    """activeDeadlineSeconds ends a running pod: phase Failed, reason DeadlineExceeded."""
    core.create_namespaced_pod(namespace, pod_body("slow", activeDeadlineSeconds=1))
    pod = wait_phase(core, namespace, "slow", "Failed", timeout=10)
    assert pod.status.reason == "DeadlineExceeded"
    assert pod.status.message == "Pod was active on the node longer than the specified deadline"
    assert status_of(pod).state.terminated is not None
    reasons = [e.reason for e in events(core, namespace, "slow")]
    assert "DeadlineExceeded" in reasons


def test_init_containers_run_in_order_before_main(core: client.CoreV1Api,
                                                  namespace: str) -> None:
    """Init containers run one after another to completion before the main container starts."""
    volume = [{"name": "data", "mountPath": "/data"}]
    body = pod_body("staged", ["sh", "-c", "echo three >> /data/order; cat /data/order"],
                    volumes=[{"name": "data", "emptyDir": {}}])
    main_container(body)["volumeMounts"] = volume
    body["spec"]["initContainers"] = [
        {"name": "first", "image": BUSYBOX, "volumeMounts": volume,
         "command": ["sh", "-c", "sleep 0.5; echo one >> /data/order"]},
        {"name": "second", "image": BUSYBOX, "volumeMounts": volume,
         "command": ["sh", "-c", "echo two >> /data/order"]},
    ]
    core.create_namespaced_pod(namespace, body)

    def initializing() -> Any:
        pod = read(core, namespace, "staged")
        statuses = pod.status.init_container_statuses or []
        return pod if statuses and statuses[0].state.running else None

    during = wait_for(initializing, 10, what="the first init container to run")
    assert during.status.phase == "Pending"
    initialized = next(c for c in during.status.conditions if c.type == "Initialized")
    assert (initialized.status, initialized.reason) == ("False", "ContainersNotInitialized")
    assert status_of(during).state.waiting.reason == "PodInitializing"

    pod = wait_phase(core, namespace, "staged", "Succeeded")
    assert logs(core, namespace, "staged") == "one\ntwo\nthree\n"
    first = status_of(pod, "first", init=True).state.terminated
    second = status_of(pod, "second", init=True).state.terminated
    main = status_of(pod).state.terminated
    assert (first.reason, second.reason) == ("Completed", "Completed")
    assert first.finished_at <= second.started_at
    assert second.finished_at <= main.started_at
    started = [e.involved_object.field_path for e in events(core, namespace, "staged")
               if e.reason == "Started"]
    assert started == ["spec.initContainers{first}", "spec.initContainers{second}",
                       "spec.containers{main}"]


def test_failed_init_container_fails_pod_without_starting_main(
        core: client.CoreV1Api, namespace: str) -> None:
    """Under restartPolicy Never a failing init container fails the pod; main never starts."""
    body = pod_body("blocked", ["sh", "-c", "echo should-not-run"])
    body["spec"]["initContainers"] = [{"name": "setup", "image": BUSYBOX,
                                       "command": ["sh", "-c", "exit 4"]}]
    core.create_namespaced_pod(namespace, body)
    pod = wait_phase(core, namespace, "blocked", "Failed")
    assert status_of(pod, "setup", init=True).state.terminated.exit_code == 4
    assert status_of(pod).state.waiting.reason == "PodInitializing"
    assert not [e for e in events(core, namespace, "blocked")
                if e.involved_object.field_path == "spec.containers{main}"]


# Image pulls

def test_unknown_image_backs_off_with_kubelet_messages(core: client.CoreV1Api,
                                                       namespace: str) -> None:
    """An image that cannot be pulled alternates ErrImagePull and ImagePullBackOff; Pending."""
    image = "registry.invalid/team/nothing-here:1.0"
    body = pod_body("nopull")
    main_container(body)["image"] = image
    core.create_namespaced_pod(namespace, body)
    since = read(core, namespace, "nopull").metadata.resource_version
    reasons: list[str] = []
    messages: dict[str, str] = {}

    def until(_: str, obj: dict[str, Any]) -> bool:
        for status in obj["status"].get("containerStatuses") or []:
            waiting = status["state"].get("waiting") or {}
            if waiting.get("reason") and (not reasons or reasons[-1] != waiting["reason"]):
                reasons.append(waiting["reason"])
                messages[waiting["reason"]] = waiting.get("message", "")
        return "ImagePullBackOff" in reasons

    pod_history(core, namespace, "nopull", since, until)
    assert reasons[reasons.index("ErrImagePull") + 1] == "ImagePullBackOff"
    assert messages["ErrImagePull"].startswith(f'Failed to pull image "{image}": ')
    assert messages["ImagePullBackOff"].startswith(f'Back-off pulling image "{image}"')
    pod = read(core, namespace, "nopull")
    assert pod.status.phase == "Pending"
    assert status_of(pod).ready is False

    def pull_events() -> list[Any] | None:
        found = events(core, namespace, "nopull")
        return found if any(e.reason == "BackOff" for e in found) \
            and any(e.message == "Error: ImagePullBackOff" for e in found) else None

    found = wait_for(pull_events, 10, what="image pull failure events")
    failed = [e for e in found if e.reason == "Failed"]
    assert all(e.type == "Warning" for e in failed)
    assert {"Error: ErrImagePull", "Error: ImagePullBackOff"} <= {e.message for e in failed}
    assert any(e.message.startswith(f'Failed to pull image "{image}"') for e in failed)
    back_off = next(e for e in found if e.reason == "BackOff")
    # The kubelet records the pull back-off as a Normal event (image_manager.go).
    assert back_off.type == "Normal"
    assert back_off.message == f'Back-off pulling image "{image}"'


# Configuration errors

def test_missing_secret_in_env_is_create_container_config_error(
        core: client.CoreV1Api, namespace: str) -> None:
    """A secretKeyRef to a missing secret keeps the container in CreateContainerConfigError."""
    body = pod_body("noconf")
    main_container(body)["env"] = [{"name": "TOKEN", "valueFrom": {
        "secretKeyRef": {"name": "absent", "key": "token"}}}]
    core.create_namespaced_pod(namespace, body)
    waiting = waiting_reason(core, namespace, "noconf", "CreateContainerConfigError")
    assert waiting.message == 'secret "absent" not found'
    assert read(core, namespace, "noconf").status.phase == "Pending"
    failed = wait_for(lambda: [e for e in events(core, namespace, "noconf")
                               if e.reason == "Failed"], what="a Failed event")
    assert failed[0].type == "Warning"
    assert failed[0].message == 'Error: secret "absent" not found'


def test_missing_secret_key_is_create_container_config_error(
        core: client.CoreV1Api, secret_and_config: str) -> None:
    """A secretKeyRef to a missing key names the key and the secret."""
    namespace = secret_and_config
    body = pod_body("nokey")
    main_container(body)["env"] = [{"name": "TOKEN", "valueFrom": {
        "secretKeyRef": {"name": "creds", "key": "password"}}}]
    core.create_namespaced_pod(namespace, body)
    waiting = waiting_reason(core, namespace, "nokey", "CreateContainerConfigError")
    assert waiting.message == f"couldn't find key password in Secret {namespace}/creds"


def test_missing_secret_volume_fails_mount(core: client.CoreV1Api, namespace: str) -> None:
    """A secret volume whose secret is missing: FailedMount event, ContainerCreating, Pending."""
    body = pod_body("nomount", volumes=[{"name": "creds", "secret": {"secretName": "absent"}}])
    main_container(body)["volumeMounts"] = [{"name": "creds", "mountPath": "/creds"}]
    core.create_namespaced_pod(namespace, body)
    mount = wait_for(lambda: [e for e in events(core, namespace, "nomount")
                              if e.reason == "FailedMount"], what="a FailedMount event")
    assert mount[0].type == "Warning"
    assert mount[0].message == 'MountVolume.SetUp failed for volume "creds" : ' \
        'secret "absent" not found'
    pod = read(core, namespace, "nomount")
    assert pod.status.phase == "Pending"
    assert status_of(pod).state.waiting.reason == "ContainerCreating"


# Environment, command and volumes

def test_env_sources_and_expansion(core: client.CoreV1Api, secret_and_config: str) -> None:
    """env and envFrom resolve secrets, config maps and fields; $(VAR) expands in args."""
    namespace = secret_and_config
    script = ("echo pod=$POD; echo ns=$NS; echo user=$USER; echo mode=$MODE; "
              "echo greeting=$GREETING; echo escaped=$ESCAPED; echo missing=$MISSING; "
              "echo cfg=$CFG_LEVEL,$CFG_mode; echo sec=$SEC_user,$SEC_token; "
              "echo override=$CFG_LEVEL_OVERRIDE; echo arg=$1; echo cwd=$(pwd)")
    body = pod_body("envy")
    container = main_container(body)
    container.update({
        "command": ["sh", "-c", script, "sh"],
        "args": ["$(MODE)-$(USER)"],
        "workingDir": "/work/dir",
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
                    {"secretRef": {"name": "creds"}, "prefix": "SEC_"}],
        "env": [
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "USER", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings",
                                                               "key": "mode"}}},
            {"name": "GREETING", "value": "hello $(USER) in $(NS) at $(CFG_LEVEL)"},
            {"name": "ESCAPED", "value": "$$(USER)"},
            {"name": "MISSING", "value": "$(NOT_DEFINED)"},
            {"name": "CFG_LEVEL_OVERRIDE", "value": "$(CFG_LEVEL)!"},
        ]})
    core.create_namespaced_pod(namespace, body)
    wait_phase(core, namespace, "envy", "Succeeded")
    out = output_fields(logs(core, namespace, "envy"))
    assert out == {
        "pod": "envy", "ns": namespace, "user": "alice", "mode": "fast",
        "greeting": f"hello alice in {namespace} at debug", "escaped": "$(USER)",
        "missing": "$(NOT_DEFINED)", "cfg": "debug,fast", "sec": "alice,s3cr3t",
        "override": "debug!", "arg": "fast-alice", "cwd": "/work/dir",
    }


def test_secret_config_projected_volumes_modes_and_read_only(
        core: client.CoreV1Api, secret_and_config: str) -> None:
    """Volume items, subPath, defaultMode and per-item mode land as files; read-only holds."""
    namespace = secret_and_config
    script = "; ".join([
        "echo token=$(cat /etc/creds/auth/token)",
        "echo token_mode=$(stat -L -c %a /etc/creds/auth/token)",
        "echo creds_files=$(ls /etc/creds)",
        "echo mode_txt=$(cat /etc/settings/mode.txt)",
        "echo mode_txt_mode=$(stat -L -c %a /etc/settings/mode.txt)",
        "echo level_txt_mode=$(stat -L -c %a /etc/settings/level.txt)",
        "echo projected=$(cat /etc/all/user)/$(cat /etc/all/LEVEL)/$(cat /etc/all/podname)",
        "echo projected_mode=$(stat -L -c %a /etc/all/user)",
        "echo sub=$(cat /app/level)",
        "echo app_files=$(ls /app)",
        "if touch /ro/x 2>/dev/null; then echo ro=written; else echo ro=denied; fi",
        "if touch /rw/x; then echo rw=written; else echo rw=denied; fi",
        "if echo x > /etc/creds/new 2>/dev/null; then echo secret=written; "
        "else echo secret=denied; fi",
    ])
    body = pod_body("files", ["sh", "-c", script], volumes=[
        {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400,
                                     "items": [{"key": "token", "path": "auth/token"}]}},
        {"name": "settings", "configMap": {"name": "settings", "defaultMode": 0o644, "items": [
            {"key": "mode", "path": "mode.txt", "mode": 0o600},
            {"key": "LEVEL", "path": "level.txt"}]}},
        {"name": "all", "projected": {"defaultMode": 0o440, "sources": [
            {"secret": {"name": "creds", "items": [{"key": "user", "path": "user"}]}},
            {"configMap": {"name": "settings", "items": [{"key": "LEVEL", "path": "LEVEL"}]}},
            {"downwardAPI": {"items": [{"path": "podname",
                                        "fieldRef": {"fieldPath": "metadata.name"}}]}}]}},
        {"name": "whole", "configMap": {"name": "settings"}},
        {"name": "scratch", "emptyDir": {}},
    ])
    main_container(body)["volumeMounts"] = [
        {"name": "creds", "mountPath": "/etc/creds"},
        {"name": "settings", "mountPath": "/etc/settings"},
        {"name": "all", "mountPath": "/etc/all"},
        {"name": "whole", "mountPath": "/app/level", "subPath": "LEVEL"},
        {"name": "scratch", "mountPath": "/ro", "readOnly": True},
        {"name": "scratch", "mountPath": "/rw"},
    ]
    core.create_namespaced_pod(namespace, body)
    wait_phase(core, namespace, "files", "Succeeded")
    out = output_fields(logs(core, namespace, "files"))
    assert out == {
        "token": "s3cr3t", "token_mode": "400", "creds_files": "auth",
        "mode_txt": "fast", "mode_txt_mode": "600", "level_txt_mode": "644",
        "projected": "alice/debug/files", "projected_mode": "440",
        "sub": "debug", "app_files": "level",
        "ro": "denied", "rw": "written", "secret": "denied",
    }


# Memory

def _memory_cgroups_allowed() -> bool:
    """Whether the emulator can create a limited memory cgroup here, as it does per container."""
    probe = sandbox.memory_cgroup(f"probe-{os.getpid()}", 64 * 1024 * 1024)
    sandbox.remove_cgroup(probe)
    return probe is not None


def test_memory_limit_exceeded_is_oom_killed(core: client.CoreV1Api, namespace: str) -> None:
    """A container allocating past limits.memory is Terminated OOMKilled with exit code 137."""
    if not _memory_cgroups_allowed():
        pytest.skip(f"the host forbids creating memory cgroups under {MEMORY_CGROUPS}, so "
                    "no memory limit can be enforced (the oom_kill fault is tested below)")
    # `tail` holds its whole input when it has no newline to split on.
    body = pod_body("greedy", ["sh", "-c", "head -c 100000000 /dev/zero | tail; echo survived"])
    main_container(body)["resources"] = {"limits": {"memory": "32Mi"}}
    core.create_namespaced_pod(namespace, body)
    pod = wait_phase(core, namespace, "greedy", "Failed", timeout=20)
    terminated = status_of(pod).state.terminated
    assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)


def test_oom_kill_fault_kills_container_as_oom(cluster: EmulatedCluster, core: client.CoreV1Api,
                                               namespace: str) -> None:
    """cluster.oom_kill ends a running container as OOMKilled (137) without any limit set."""
    core.create_namespaced_pod(namespace, pod_body("victim"))
    wait_running(core, namespace, "victim")
    cluster.oom_kill(namespace, "victim", "main")
    pod = wait_phase(core, namespace, "victim", "Failed")
    terminated = status_of(pod).state.terminated
    assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)


def test_signals_reach_the_container_even_after_its_pid_is_reused(
        cluster: EmulatedCluster, core: client.CoreV1Api, namespace: str) -> None:
    """Kills go to the process the kubelet started, never to whoever holds its pid number."""
    core.create_namespaced_pod(namespace, pod_body("reused"))
    wait_running(core, namespace, "reused")
    # The host hands an exited PID 1's number to the next process once pids wrap. Stand
    # in for that process, and record its number as the container's.
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        kubelet = cluster._kubelet
        assert kubelet is not None
        container = kubelet.runs[(namespace, "reused")].containers["main"]
        cluster.call(lambda: setattr(container, "pid", bystander.pid))
        cluster.oom_kill(namespace, "reused", "main")
        terminated = status_of(wait_phase(core, namespace, "reused", "Failed")).state.terminated
        assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)
        assert bystander.poll() is None, "the process holding the old pid was signalled"
    finally:
        bystander.kill()
        bystander.wait()


# Eviction

def _assert_evicted(core: client.CoreV1Api, namespace: str, name: str, since: str,
                    reason: str) -> None:
    history = pod_history(core, namespace, name, since, lambda kind, _: kind == "DELETED")
    assert history[-1][0] == "DELETED"
    marked = [obj for kind, obj in history if kind == "MODIFIED"
              and conditions_of(obj).get("DisruptionTarget")]
    assert marked, "the pod was never marked as a disruption target"
    target = conditions_of(marked[0])["DisruptionTarget"]
    assert (target["status"], target["reason"]) == ("True", reason)
    assert any(obj["metadata"].get("deletionTimestamp") for _, obj in history)
    with pytest.raises(ApiException) as missing:
        read(core, namespace, name)
    assert missing.value.status == 404


def test_evict_fault_marks_disruption_target_then_deletes(
        cluster: EmulatedCluster, core: client.CoreV1Api, namespace: str) -> None:
    """cluster.evict adds DisruptionTarget (EvictionByEvictionAPI), then the pod is deleted."""
    core.create_namespaced_pod(namespace, pod_body("evictee"))
    since = wait_running(core, namespace, "evictee").metadata.resource_version
    cluster.evict(namespace, "evictee")
    _assert_evicted(core, namespace, "evictee", since, "EvictionByEvictionAPI")


def test_eviction_subresource_marks_disruption_target_then_deletes(
        core: client.CoreV1Api, namespace: str) -> None:
    """POST pods/{name}/eviction adds DisruptionTarget (EvictionByEvictionAPI), then deletes."""
    core.create_namespaced_pod(namespace, pod_body("evictee"))
    since = wait_running(core, namespace, "evictee").metadata.resource_version
    core.create_namespaced_pod_eviction("evictee", namespace, client.V1Eviction(
        metadata=client.V1ObjectMeta(name="evictee", namespace=namespace)))
    _assert_evicted(core, namespace, "evictee", since, "EvictionByEvictionAPI")


def test_eviction_of_missing_pod_is_not_found(core: client.CoreV1Api, namespace: str) -> None:
    """Evicting a pod that does not exist answers 404."""
    with pytest.raises(ApiException) as error:
        core.create_namespaced_pod_eviction("ghost", namespace, client.V1Eviction(
            metadata=client.V1ObjectMeta(name="ghost", namespace=namespace)))
    assert error.value.status == 404


# Node readiness (its own cluster: it taints the node)

@pytest.fixture(scope="module")
def unready(tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[EmulatedCluster, client.CoreV1Api]]:
    """A cluster of its own whose node the test takes NotReady, and a client for it."""
    settings = NodeSettings(pull_seconds=0.01, pull_backoff_seconds=0.5,
                            not_ready_eviction_seconds=2.0)
    with EmulatedCluster(node=settings, bookmark_seconds=1.0) as emulated:
        path = emulated.write_kubeconfig(tmp_path_factory.mktemp("unready") / "config")
        yield emulated, client.CoreV1Api(config.new_client_from_config(str(path)))


def _pod_ready(core: client.CoreV1Api, name: str) -> str:
    pod = read(core, "default", name)
    return str(next(c.status for c in pod.status.conditions if c.type == "Ready"))


def test_node_not_ready_blocks_scheduling_and_evicts_after_toleration(
        unready: tuple[EmulatedCluster, client.CoreV1Api]) -> None:
    """NotReady: node Ready not True, pods unready, new pods refused, running pods evicted."""
    emulated, core = unready
    core.create_namespaced_pod("default", pod_body("resident"))
    core.create_namespaced_pod("default", pod_body("stayer", tolerations=[
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}]))
    wait_running(core, "default", "stayer")
    since = wait_running(core, "default", "resident").metadata.resource_version
    wait_for(lambda: _pod_ready(core, "resident") == "True", what="resident to be Ready")

    went_down = time.monotonic()
    emulated.set_node_ready(False)
    node = core.read_node(NODE)
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status != "True"
    assert {(t.key, t.effect) for t in node.spec.taints} == {
        ("node.kubernetes.io/not-ready", "NoSchedule"),
        ("node.kubernetes.io/not-ready", "NoExecute")}
    wait_for(lambda: _pod_ready(core, "resident") == "False", what="resident to turn unready")

    core.create_namespaced_pod("default", pod_body("newcomer"))

    def refused() -> Any:
        pod = read(core, "default", "newcomer")
        return next((c for c in pod.status.conditions or []
                     if c.type == "PodScheduled" and c.status == "False"), None)

    condition = wait_for(refused, 5, what="newcomer to be refused")
    assert condition.reason == "Unschedulable"
    assert condition.message.startswith("0/1 nodes are available: 1 node(s) had untolerated "
                                        "taint {node.kubernetes.io/not-ready: }.")
    assert read(core, "default", "newcomer").status.phase == "Pending"

    _assert_evicted(core, "default", "resident", since, "DeletionByTaintManager")
    # Kept for not_ready_eviction_seconds (the tolerationSeconds stand-in) first.
    assert time.monotonic() - went_down >= emulated.node_settings.not_ready_eviction_seconds
    # A toleration without tolerationSeconds tolerates the NoExecute taint for ever.
    assert read(core, "default", "stayer").metadata.deletion_timestamp is None

    emulated.set_node_ready(True)
    node = core.read_node(NODE)
    assert next(c for c in node.status.conditions if c.type == "Ready").status == "True"
    assert not node.spec.taints
    pod = wait_running(core, "default", "newcomer")
    assert pod.spec.node_name == NODE


def test_short_node_outage_keeps_pods(unready: tuple[EmulatedCluster, client.CoreV1Api]) -> None:
    """A node back to Ready within the toleration keeps its pods, and they are Ready again."""
    emulated, core = unready
    core.create_namespaced_pod("default", pod_body("survivor"))
    wait_running(core, "default", "survivor")
    emulated.set_node_ready(False)
    wait_for(lambda: _pod_ready(core, "survivor") == "False", what="survivor to turn unready")
    time.sleep(0.5)
    emulated.set_node_ready(True)
    time.sleep(emulated.node_settings.not_ready_eviction_seconds + 0.5)
    pod = read(core, "default", "survivor")
    assert pod.metadata.deletion_timestamp is None
    assert "DisruptionTarget" not in {c.type for c in pod.status.conditions}
    wait_for(lambda: _pod_ready(core, "survivor") == "True", 5,
             what="survivor to be Ready again")


# Cleanup

def _bwrap_children() -> set[int]:
    """Pids of `bwrap` processes whose parent is this test process."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == os.getpid() and name == "bwrap":
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def test_stopped_cluster_leaves_no_process_cgroup_or_directory(
        tmp_path: Path) -> None:
    """Stopping a cluster kills every sandbox and removes its workdir and memory cgroups."""
    before = _bwrap_children()
    emulated = EmulatedCluster(node=NodeSettings(pull_seconds=0.01)).start()
    try:
        path = emulated.write_kubeconfig(tmp_path / "config")
        core = client.CoreV1Api(config.new_client_from_config(str(path)))
        limited = pod_body("limited")
        main_container(limited)["resources"] = {"limits": {"memory": "64Mi"}}
        for body in (pod_body("deleted"), pod_body("left-running"), limited):
            core.create_namespaced_pod("default", body)
        uids = {name: wait_running(core, "default", name).metadata.uid
                for name in ("deleted", "left-running", "limited")}
        pids = emulated.sandbox_pids()
        assert len(pids) == 3
        assert all(_alive(pid) for pid in pids)
        assert _bwrap_children() - before
        core.delete_namespaced_pod("deleted", "default")
        wait_for(lambda: not core.list_namespaced_pod(
            "default", field_selector="metadata.name=deleted").items, what="deletion")
        workdir = emulated.workdir
        assert workdir is not None
        assert workdir.is_dir()
        cgroup = MEMORY_CGROUPS / "runner-driver-emulator" / f"{uids['limited']}-main"
        if _memory_cgroups_allowed():
            assert cgroup.is_dir()
    finally:
        emulated.stop()
    assert not [pid for pid in pids if _alive(pid)]
    assert _bwrap_children() <= before
    assert not workdir.exists()
    assert not cgroup.exists()
    cgroups = MEMORY_CGROUPS / "runner-driver-emulator"
    if cgroups.is_dir():
        left = {p.name for p in cgroups.iterdir() if p.is_dir()}
        assert not {name for name in left if any(name.startswith(u) for u in uids.values())}

