"""The scheduler's pure filters and its FailedScheduling message."""

from __future__ import annotations

from typing import Any

from runner_driver.emulator.scheduler import (
    failure_message,
    matches_affinity,
    pod_requests,
    tolerates,
    unschedulable_reasons,
)

NODE: dict[str, Any] = {
    "metadata": {"labels": {"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux"}},
    "spec": {"taints": []},
    "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "10Gi",
                               "pods": "3"}},
}


def pod(cpu: str = "100m", memory: str = "64Mi", **spec: Any) -> dict[str, Any]:
    """A one-container pod with requests."""
    return {"metadata": {"name": "p"}, "status": {"phase": "Pending"},
            "spec": {"containers": [{"name": "c", "resources": {
                "requests": {"cpu": cpu, "memory": memory}}}], **spec}}


def test_requests_sum_containers_and_take_largest_init() -> None:
    """Requests add up over containers; an init container counts only if it is larger."""
    body = pod("500m")
    body["spec"]["containers"].append({"name": "d", "resources": {"limits": {"cpu": "1"}}})
    body["spec"]["initContainers"] = [{"name": "i", "resources": {"requests": {"cpu": "3"}}}]
    assert pod_requests(body)["cpu"] == 3
    body["spec"]["initContainers"][0]["resources"]["requests"]["cpu"] = "1"
    assert pod_requests(body)["cpu"] == 1.5


def test_insufficient_cpu_message_has_scheduler_shape() -> None:
    """Too large a request yields the scheduler's `0/1 nodes are available: 1 Insufficient cpu.`."""
    reasons = unschedulable_reasons(pod("3"), NODE, [])
    assert reasons == ["Insufficient cpu"]
    assert failure_message(reasons).startswith("0/1 nodes are available: 1 Insufficient cpu.")


def test_running_pods_use_capacity_but_finished_ones_do_not() -> None:
    """Requests of running pods count against allocatable; finished pods free theirs."""
    running = pod("1500m")
    running["status"]["phase"] = "Running"
    assert unschedulable_reasons(pod("1"), NODE, [running]) == ["Insufficient cpu"]
    running["status"]["phase"] = "Succeeded"
    assert unschedulable_reasons(pod("1"), NODE, [running]) == []


def test_pod_count_limit() -> None:
    """The node's pods capacity is a limit too."""
    others = [pod("1m") for _ in range(3)]
    assert "Too many pods" in unschedulable_reasons(pod("1m"), NODE, others)


def test_node_selector_and_required_affinity() -> None:
    """nodeSelector and required node affinity terms are matched against node labels."""
    labels = NODE["metadata"]["labels"]
    assert matches_affinity(pod(nodeSelector={"kubernetes.io/arch": "amd64"}), labels)
    assert not matches_affinity(pod(nodeSelector={"kubernetes.io/arch": "arm64"}), labels)
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In",
                                   "values": ["arm64"]}]},
            {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "Exists"}]}]}}}
    assert matches_affinity(pod(affinity=affinity), labels)
    affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"].pop()
    assert not matches_affinity(pod(affinity=affinity), labels)
    assert unschedulable_reasons(pod(affinity=affinity), NODE, []) == [
        "node(s) didn't match Pod's node affinity/selector"]


def test_taints_and_tolerations() -> None:
    """A NoSchedule taint blocks pods that do not tolerate it, in the scheduler's words."""
    taint = {"key": "dedicated", "value": "ci", "effect": "NoSchedule"}
    node = {**NODE, "spec": {"taints": [taint]}}
    assert unschedulable_reasons(pod(), node, []) == [
        "node(s) had untolerated taint {dedicated: ci}"]
    assert tolerates([{"key": "dedicated", "operator": "Equal", "value": "ci"}], taint)
    assert tolerates([{"operator": "Exists"}], taint)
    assert not tolerates([{"key": "dedicated", "value": "other"}], taint)
    assert not tolerates([{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}],
                         taint)
    tolerant = pod(tolerations=[{"key": "dedicated", "operator": "Exists"}])
    assert unschedulable_reasons(tolerant, node, []) == []


def test_message_lists_reasons_sorted() -> None:
    """Several reasons are listed alphabetically, each counted for the one node."""
    message = failure_message(["Insufficient memory", "Insufficient cpu"])
    assert message.startswith("0/1 nodes are available: 1 Insufficient cpu, "
                              "1 Insufficient memory. preemption:")
