"""Scheduling decisions for the emulated cluster's single node, as pure functions.

The real scheduler's filters that matter for CI pods are reproduced: node selector,
required node affinity, taints and tolerations, and resource requests against
allocatable capacity. A pod that does not fit gets the scheduler's own message shape
(`0/1 nodes are available: 1 Insufficient cpu. preemption: ...`) so drivers can show
users the text they would see on a real cluster. No I/O and no state here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from .selectors import SelectorError, parse_quantity

Obj = dict[str, Any]
RESOURCE_NAMES = ("cpu", "memory", "ephemeral-storage")


def pod_requests(pod: Obj) -> dict[str, Decimal]:
    """Effective requests: the sum over containers, or the largest init container if bigger.

    A limit without a request counts as the request, as the API server defaults it.
    """
    spec = pod.get("spec", {})

    def of(container: Mapping[str, Any]) -> dict[str, Decimal]:
        resources = container.get("resources") or {}
        requests = dict(resources.get("limits") or {})
        requests.update(resources.get("requests") or {})
        result: dict[str, Decimal] = {}
        for name in RESOURCE_NAMES:
            if name in requests:
                try:
                    result[name] = parse_quantity(requests[name])
                except SelectorError:
                    result[name] = Decimal(0)
        return result

    total: dict[str, Decimal] = dict.fromkeys(RESOURCE_NAMES, Decimal(0))
    for container in spec.get("containers") or []:
        for name, value in of(container).items():
            total[name] += value
    for container in spec.get("initContainers") or []:
        for name, value in of(container).items():
            total[name] = max(total[name], value)
    return total


def _match_expression(labels: Mapping[str, str], expression: Mapping[str, Any]) -> bool:
    key = expression.get("key", "")
    operator = expression.get("operator", "")
    values = [str(v) for v in expression.get("values") or []]
    present = key in labels
    value = labels.get(key, "")
    if operator == "In":
        return present and value in values
    if operator == "NotIn":
        return not present or value not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt") and present and values:
        try:
            left, right = int(value), int(values[0])
        except ValueError:
            return False
        return left > right if operator == "Gt" else left < right
    return False


def matches_affinity(pod: Obj, labels: Mapping[str, str]) -> bool:
    """Whether node labels satisfy the pod's nodeSelector and required node affinity."""
    spec = pod.get("spec", {})
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    # Terms are ORed; expressions within a term are ANDed.
    return any(all(_match_expression(labels, e) for e in term.get("matchExpressions") or [])
               for term in terms)


def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    """Whether any toleration matches a taint (key, value and effect rules as in the API)."""
    for toleration in tolerations:
        effect = toleration.get("effect") or ""
        if effect and effect != taint.get("effect"):
            continue
        key = toleration.get("key") or ""
        operator = toleration.get("operator") or "Equal"
        if not key and operator == "Exists":
            return True
        if key != taint.get("key"):
            continue
        if operator == "Exists" or (toleration.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def unschedulable_reasons(pod: Obj, node: Obj, pods_on_node: Iterable[Obj]) -> list[str]:
    """Why the pod cannot go on this node, as the scheduler's per-node reason strings."""
    reasons: list[str] = []
    labels = node.get("metadata", {}).get("labels") or {}
    if not matches_affinity(pod, labels):
        reasons.append("node(s) didn't match Pod's node affinity/selector")
    tolerations = pod.get("spec", {}).get("tolerations") or []
    for taint in node.get("spec", {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            value = taint.get("value") or ""
            reasons.append(f"node(s) had untolerated taint {{{taint.get('key')}: {value}}}")
            break
    allocatable = node.get("status", {}).get("allocatable") or {}
    used = dict.fromkeys(RESOURCE_NAMES, Decimal(0))
    others = [p for p in pods_on_node
              if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]
    for other in others:
        for name, value in pod_requests(other).items():
            used[name] += value
    wanted = pod_requests(pod)
    if "pods" in allocatable and len(others) + 1 > int(parse_quantity(allocatable["pods"])):
        reasons.append("Too many pods")
    for name in RESOURCE_NAMES:
        if name in allocatable and wanted[name] > 0 \
                and used[name] + wanted[name] > parse_quantity(allocatable[name]):
            reasons.append(f"Insufficient {name}")
    return reasons


def failure_message(reasons: list[str], nodes: int = 1) -> str:
    """The scheduler's FailedScheduling message for one node's reasons."""
    counted = ", ".join(f"1 {r}" for r in sorted(reasons))
    preemption = ("0/{n} nodes are available: {n} No preemption victims found for incoming pod."
                  if any(r.startswith("Insufficient") or r == "Too many pods" for r in reasons)
                  else "0/{n} nodes are available: {n} Preemption is not helpful for "
                       "scheduling.").format(n=nodes)
    return f"0/{nodes} nodes are available: {counted}. preemption: {preemption}"
