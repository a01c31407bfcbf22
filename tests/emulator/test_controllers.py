"""The emulated scheduler over the wire: node shape, resource fit, selectors, affinity, taints.

A module-scoped cluster with a deliberately small node (2 cpu, 1Gi) makes requests that
do not fit cheap to express. Everything is observed through the official client, the
way a driver would see it on a real cluster.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config

from runner_driver.emulator import EmulatedCluster, NodeSettings
from tests.conftest import wait_for, wait_running

NODE = "emulated-node"
IDLE = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"]
INSUFFICIENT_CPU = "0/1 nodes are available: 1 Insufficient cpu."
INSUFFICIENT_MEMORY = "0/1 nodes are available: 1 Insufficient memory."
NO_AFFINITY = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
NOT_HELPFUL = ("preemption: 0/1 nodes are available: 1 Preemption is not helpful for "
               "scheduling.")
NO_VICTIMS = ("preemption: 0/1 nodes are available: 1 No preemption victims found for "
              "incoming pod.")


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatedCluster]:
    """A cluster whose single node is small enough to run out of cpu and memory."""
    settings = NodeSettings(cpu="2", memory="1Gi", ephemeral_storage="10Gi", pods="20",
                            pull_seconds=0.01, pull_backoff_seconds=0.5)
    with EmulatedCluster(node=settings, bookmark_seconds=1.0) as emulated:
        yield emulated


@pytest.fixture(scope="module")
def tainted_core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[client.CoreV1Api]:
    """A client for a second cluster whose node carries `dedicated=ci:NoSchedule`."""
    settings = NodeSettings(pull_seconds=0.01, pull_backoff_seconds=0.5,
                            taints=[{"key": "dedicated", "value": "ci", "effect": "NoSchedule"}])
    with EmulatedCluster(node=settings, bookmark_seconds=1.0) as emulated:
        path = emulated.write_kubeconfig(tmp_path_factory.mktemp("tainted") / "config")
        yield client.CoreV1Api(config.new_client_from_config(str(path)))


def busybox(name: str, requests: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A one-container busybox pod that idles until SIGTERM."""
    container: dict[str, Any] = {"name": "main", "image": "busybox:1.36", "command": IDLE}
    if requests:
        container["resources"] = {"requests": requests}
    body: dict[str, Any] = {
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "automountServiceAccountToken": False, "containers": [container]},
    }
    body["spec"].update(spec)
    return body


def unschedulable(core: client.CoreV1Api, namespace: str, name: str) -> Any:
    """Wait for the scheduler to give up on a pod; return its PodScheduled condition."""
    def condition() -> Any:
        pod = core.read_namespaced_pod(name, namespace)
        for entry in pod.status.conditions or []:
            if entry.type == "PodScheduled" and entry.status == "False":
                return entry
        return None

    return wait_for(condition, 10, what=f"{name} to be marked unschedulable")


def scheduling_events(core: client.CoreV1Api, namespace: str, name: str,
                      reason: str) -> list[Any]:
    """The events of one reason about one pod."""
    return [e for e in core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}").items if e.reason == reason]


def assert_pending_with(core: client.CoreV1Api, namespace: str, name: str,
                        prefix: str, preemption: str) -> None:
    """The pod stays unscheduled, with the scheduler's condition and Warning event."""
    condition = unschedulable(core, namespace, name)
    assert condition.reason == "Unschedulable"
    assert condition.message == f"{prefix} {preemption}"
    pod = core.read_namespaced_pod(name, namespace)
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None
    failed = wait_for(lambda: scheduling_events(core, namespace, name, "FailedScheduling"),
                      5, what="a FailedScheduling event")
    assert failed[0].type == "Warning"
    assert failed[0].source.component == "default-scheduler"
    assert failed[0].message == condition.message
    assert not scheduling_events(core, namespace, name, "Scheduled")


def assert_scheduled(core: client.CoreV1Api, namespace: str, name: str) -> None:
    """The pod is bound to the node with PodScheduled=True and a Scheduled event."""
    pod = wait_running(core, namespace, name)
    assert pod.spec.node_name == NODE
    scheduled = [c for c in pod.status.conditions if c.type == "PodScheduled"]
    assert scheduled[0].status == "True"
    events = scheduling_events(core, namespace, name, "Scheduled")
    assert events[0].type == "Normal"
    assert events[0].source.component == "default-scheduler"
    assert events[0].message == f"Successfully assigned {namespace}/{name} to {NODE}"


def test_single_node_has_standard_labels_and_configured_allocatable(
        core: client.CoreV1Api) -> None:
    """There is exactly one node, labelled like a kubelet labels it, with the configured size."""
    nodes = core.list_node().items
    assert [n.metadata.name for n in nodes] == [NODE]
    node = nodes[0]
    machine = os.uname().machine
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    labels = node.metadata.labels
    assert labels["kubernetes.io/arch"] == arch
    assert labels["kubernetes.io/os"] == "linux"
    assert labels["kubernetes.io/hostname"] == NODE
    expected = {"cpu": "2", "memory": "1Gi", "ephemeral-storage": "10Gi", "pods": "20"}
    assert node.status.allocatable == expected
    assert node.status.capacity == expected
    ready = [c for c in node.status.conditions if c.type == "Ready"]
    assert ready[0].status == "True"
    assert not node.spec.taints


def test_cpu_request_above_allocatable_stays_pending(core: client.CoreV1Api,
                                                     namespace: str) -> None:
    """A pod requesting more cpu than the node has is Unschedulable with Insufficient cpu."""
    core.create_namespaced_pod(namespace, busybox("hungry", {"cpu": "3"}))
    assert_pending_with(core, namespace, "hungry", INSUFFICIENT_CPU, NO_VICTIMS)


def test_memory_request_above_allocatable_stays_pending(core: client.CoreV1Api,
                                                        namespace: str) -> None:
    """A pod requesting more memory than the node has is Unschedulable with Insufficient memory."""
    core.create_namespaced_pod(namespace, busybox("hungry", {"memory": "2Gi"}))
    assert_pending_with(core, namespace, "hungry", INSUFFICIENT_MEMORY, NO_VICTIMS)


def test_limit_without_request_counts_as_request(core: client.CoreV1Api,
                                                 namespace: str) -> None:
    """A cpu limit with no request is defaulted into the request, so it is checked too."""
    body = busybox("limited")
    body["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "4"}}
    core.create_namespaced_pod(namespace, body)
    assert_pending_with(core, namespace, "limited", INSUFFICIENT_CPU, NO_VICTIMS)


def test_init_container_request_counts_when_largest(core: client.CoreV1Api,
                                                    namespace: str) -> None:
    """An init container's request above allocatable blocks scheduling like a main one."""
    body = busybox("init-hungry")
    body["spec"]["initContainers"] = [{"name": "setup", "image": "busybox:1.36",
                                       "command": ["true"],
                                       "resources": {"requests": {"cpu": "3"}}}]
    core.create_namespaced_pod(namespace, body)
    assert_pending_with(core, namespace, "init-hungry", INSUFFICIENT_CPU, NO_VICTIMS)


def test_node_selector_mismatch_stays_pending(core: client.CoreV1Api, namespace: str) -> None:
    """A nodeSelector no node label satisfies leaves the pod unschedulable."""
    core.create_namespaced_pod(namespace, busybox(
        "picky", nodeSelector={"kubernetes.io/arch": "s390x"}))
    assert_pending_with(core, namespace, "picky", NO_AFFINITY, NOT_HELPFUL)


def test_matching_node_selector_schedules(core: client.CoreV1Api, namespace: str) -> None:
    """A nodeSelector on the node's own labels is satisfied."""
    core.create_namespaced_pod(namespace, busybox(
        "linux", nodeSelector={"kubernetes.io/os": "linux", "kubernetes.io/hostname": NODE}))
    assert_scheduled(core, namespace, "linux")


def _required_affinity(*expressions: dict[str, Any]) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": list(expressions)}]}}}


@pytest.mark.parametrize("expression", [
    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["elsewhere"]},
    {"key": "kubernetes.io/os", "operator": "NotIn", "values": ["linux"]},
    {"key": "gpu", "operator": "Exists"},
    {"key": "kubernetes.io/os", "operator": "DoesNotExist"},
])
def test_required_node_affinity_mismatch_stays_pending(
        core: client.CoreV1Api, namespace: str, expression: dict[str, Any]) -> None:
    """A required node affinity term the node does not satisfy leaves the pod unschedulable."""
    core.create_namespaced_pod(namespace, busybox("affine",
                                                  affinity=_required_affinity(expression)))
    assert_pending_with(core, namespace, "affine", NO_AFFINITY, NOT_HELPFUL)


def test_required_node_affinity_match_schedules(core: client.CoreV1Api, namespace: str) -> None:
    """Terms are ORed: one satisfied term is enough to schedule."""
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]},
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In",
                                   "values": [NODE]},
                                  {"key": "kubernetes.io/os", "operator": "Exists"}]},
        ]}}}
    core.create_namespaced_pod(namespace, busybox("affine", affinity=affinity))
    assert_scheduled(core, namespace, "affine")


def test_pending_pod_schedules_once_deletion_frees_cpu(core: client.CoreV1Api,
                                                       namespace: str) -> None:
    """A pod that did not fit is scheduled once another pod's deletion frees its cpu."""
    core.create_namespaced_pod(namespace, busybox("first", {"cpu": "1500m"}))
    wait_running(core, namespace, "first")
    core.create_namespaced_pod(namespace, busybox("second", {"cpu": "1"}))
    assert_pending_with(core, namespace, "second", INSUFFICIENT_CPU, NO_VICTIMS)
    core.delete_namespaced_pod("first", namespace)
    assert_scheduled(core, namespace, "second")


def test_finished_pods_do_not_hold_resources(core: client.CoreV1Api, namespace: str) -> None:
    """A Succeeded pod's requests no longer count against allocatable."""
    body = busybox("done", {"memory": "800Mi"})
    body["spec"]["containers"][0]["command"] = ["true"]
    core.create_namespaced_pod(namespace, body)
    wait_for(lambda: core.read_namespaced_pod("done", namespace).status.phase == "Succeeded",
             10, what="the first pod to succeed")
    core.create_namespaced_pod(namespace, busybox("next", {"memory": "800Mi"}))
    assert_scheduled(core, namespace, "next")


def _fresh_namespace(core: client.CoreV1Api) -> str:
    name = "t-" + uuid.uuid4().hex[:8]
    core.create_namespace({"metadata": {"name": name}})
    wait_for(lambda: any(sa.metadata.name == "default" for sa in
                         core.list_namespaced_service_account(name).items),
             what="default service account")
    return name


def test_untolerated_taint_stays_pending(tainted_core: client.CoreV1Api) -> None:
    """A pod without a matching toleration is refused by a NoSchedule taint, naming it."""
    namespace = _fresh_namespace(tainted_core)
    node = tainted_core.read_node(NODE)
    assert [(t.key, t.value, t.effect) for t in node.spec.taints] == \
        [("dedicated", "ci", "NoSchedule")]
    tainted_core.create_namespaced_pod(namespace, busybox("plain"))
    tainted_core.create_namespaced_pod(namespace, busybox(
        "wrong-value", tolerations=[{"key": "dedicated", "operator": "Equal", "value": "gpu",
                                     "effect": "NoSchedule"}]))
    for name in ("plain", "wrong-value"):
        assert_pending_with(tainted_core, namespace, name,
                            "0/1 nodes are available: 1 node(s) had untolerated taint "
                            "{dedicated: ci}.", NOT_HELPFUL)
    tainted_core.delete_namespace(namespace)


@pytest.mark.parametrize("toleration", [
    {"key": "dedicated", "operator": "Equal", "value": "ci", "effect": "NoSchedule"},
    {"key": "dedicated", "operator": "Exists"},
    {"operator": "Exists"},
])
def test_tolerating_pod_schedules_on_tainted_node(tainted_core: client.CoreV1Api,
                                                  toleration: dict[str, str]) -> None:
    """A toleration matching the taint (by value, by key, or everything) lets the pod in."""
    namespace = _fresh_namespace(tainted_core)
    tainted_core.create_namespaced_pod(namespace, busybox("tolerant", tolerations=[toleration]))
    assert_scheduled(tainted_core, namespace, "tolerant")
    tainted_core.delete_namespace(namespace)

