"""Local ephemeral storage limits over the wire: the kubelet's evictions and tmpfs sizes.

Busybox containers really write the bytes (with `dd`) into emptyDirs, their root file
systems and their logs; the emulated kubelet measures them like `du` about once a
second and evicts as the real eviction manager does. Each test reads back what a driver
would: the pod's phase, reason and message, its conditions, its container states and
its events. The messages are the kubelet's (pkg/kubelet/eviction/helpers.go), trailing
space included.
"""

from __future__ import annotations

import re
import time
from typing import Any

from kubernetes import client

from tests.conftest import ROOT_ONLY, wait_for, wait_running

BUSYBOX = "busybox:1.36"
IDLE = "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"


def writer(name: str, script: str, limit: str | None = None) -> dict[str, Any]:
    """A busybox container running `script`, then idling; optionally storage-limited."""
    container: dict[str, Any] = {"name": name, "image": BUSYBOX,
                                 "command": ["sh", "-c", f"{script}; {IDLE}"]}
    if limit is not None:
        container["resources"] = {"limits": {"ephemeral-storage": limit}}
    return container


def pod(name: str, *containers: dict[str, Any], grace: int = 1, **spec: Any) -> dict[str, Any]:
    """A restartPolicy Never pod of the given containers."""
    return {"metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": grace,
                     "automountServiceAccountToken": False, "containers": list(containers),
                     **spec}}


def scratch(size_limit: str, medium: str = "") -> dict[str, Any]:
    """An emptyDir volume `scratch` with a size limit."""
    source: dict[str, Any] = {"sizeLimit": size_limit}
    if medium:
        source["medium"] = medium
    return {"name": "scratch", "emptyDir": source}


MOUNT = {"volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}


def wait_evicted(core: client.CoreV1Api, namespace: str, name: str) -> Any:
    """Wait until the pod is Failed with every container terminated; return it."""
    def evicted() -> Any:
        found = core.read_namespaced_pod(name, namespace)
        statuses = found.status.container_statuses or []
        done = statuses and all(s.state.terminated for s in statuses)
        return found if found.status.phase == "Failed" and done else None

    return wait_for(evicted, 20, what=f"{name} to be evicted")


def events(core: client.CoreV1Api, namespace: str, name: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the pod's events."""
    return [(e.type, e.reason, e.message) for e in core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}").items]


def test_an_empty_dir_over_its_size_limit_evicts_the_pod(core: client.CoreV1Api,
                                                         namespace: str) -> None:
    """2 MB in a 1Mi emptyDir: Failed/Evicted, the kubelet's message and event, no condition."""
    body = pod("hog", {**writer("main", "dd if=/dev/zero of=/scratch/f bs=1k count=2000"),
                       **MOUNT}, volumes=[scratch("1Mi")])
    core.create_namespaced_pod(namespace, body)
    evicted = wait_evicted(core, namespace, "hog")
    message = 'Usage of EmptyDir volume "scratch" exceeds the limit "1Mi". '
    assert (evicted.status.phase, evicted.status.reason, evicted.status.message) == \
        ("Failed", "Evicted", message)
    assert "DisruptionTarget" not in [c.type for c in evicted.status.conditions]
    assert ("Warning", "Evicted", message) in events(core, namespace, "hog")
    assert ("Normal", "Killing", "Stopping container main") in events(core, namespace, "hog")


def test_an_empty_dir_under_its_size_limit_keeps_running(core: client.CoreV1Api,
                                                         namespace: str) -> None:
    """256 KB in a 1Mi emptyDir: still Running after several housekeeping rounds."""
    body = pod("fits", {**writer("main", "dd if=/dev/zero of=/scratch/f bs=1k count=256"),
                        **MOUNT}, volumes=[scratch("1Mi")])
    core.create_namespaced_pod(namespace, body)
    wait_running(core, namespace, "fits")
    time.sleep(3)
    found = core.read_namespaced_pod("fits", namespace)
    assert (found.status.phase, found.status.reason) == ("Running", None)
    assert not [e for e in events(core, namespace, "fits") if e[1] == "Evicted"]


def test_a_container_over_its_own_limit_is_named(core: client.CoreV1Api,
                                                 namespace: str) -> None:
    """1.5 MB written by one of two 1Mi containers: its own message (pod total 2Mi holds)."""
    body = pod("layer", writer("writer", "dd if=/dev/zero of=/tmp/f bs=1k count=1500", "1Mi"),
               writer("idle", "true", "1Mi"))
    core.create_namespaced_pod(namespace, body)
    evicted = wait_evicted(core, namespace, "layer")
    assert (evicted.status.reason, evicted.status.message) == (
        "Evicted", 'Container writer exceeded its local ephemeral storage limit "1Mi". ')


def test_the_pod_total_is_checked_before_each_container(core: client.CoreV1Api,
                                                        namespace: str) -> None:
    """One container writing 2 MB past its 1Mi limit exceeds the pod's total first."""
    body = pod("total", writer("main", "dd if=/dev/zero of=/tmp/f bs=1k count=2000", "1Mi"))
    core.create_namespaced_pod(namespace, body)
    evicted = wait_evicted(core, namespace, "total")
    assert evicted.status.message == \
        "Pod ephemeral local storage usage exceeds the total limit of containers 1Mi. "


def test_container_logs_count_towards_its_limit(core: client.CoreV1Api,
                                                namespace: str) -> None:
    """Output kept in the container's log uses its ephemeral storage too."""
    body = pod("chatty", writer("main", "head -c 2000000 /dev/zero | tr '\\0' x", "1Mi"))
    core.create_namespaced_pod(namespace, body)
    evicted = wait_evicted(core, namespace, "chatty")
    assert evicted.status.reason == "Evicted"


def test_an_evicted_pod_gets_one_second_not_its_grace_period(core: client.CoreV1Api,
                                                             namespace: str) -> None:
    """A PID 1 that ignores SIGTERM is killed a second after the eviction, despite 30s."""
    body = pod("stubborn", {"name": "main", "image": BUSYBOX, **MOUNT, "command": [
        "sh", "-c", "dd if=/dev/zero of=/scratch/f bs=1k count=2000; "
                    "while :; do sleep 1; done"]}, grace=30, volumes=[scratch("1Mi")])
    core.create_namespaced_pod(namespace, body)
    started = time.monotonic()
    evicted = wait_evicted(core, namespace, "stubborn")
    assert time.monotonic() - started < 10
    assert evicted.status.container_statuses[0].state.terminated.exit_code == 137


@ROOT_ONLY
def test_a_memory_empty_dir_is_a_tmpfs_of_its_size_limit(core: client.CoreV1Api,
                                                         namespace: str) -> None:
    """medium Memory: writing past sizeLimit fails with ENOSPC and nothing is evicted."""
    script = "dd if=/dev/zero of=/scratch/f bs=1k count=2000; echo rc=$?; df -k /scratch"
    body = pod("ram", {**writer("main", script), **MOUNT}, volumes=[scratch("1Mi", "Memory")])
    core.create_namespaced_pod(namespace, body)
    wait_running(core, namespace, "ram")
    time.sleep(2.5)
    found = core.read_namespaced_pod("ram", namespace)
    assert (found.status.phase, found.status.reason) == ("Running", None)
    log = core.read_namespaced_pod_log("ram", namespace)
    assert "No space left on device" in log
    assert "rc=1" in log
    assert re.search(r"^tmpfs\s+1024\s+1024\s+0\s+100% /scratch$", log, re.MULTILINE), log
