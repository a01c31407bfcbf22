"""Reading a pod's status: is it running, still starting, or never going to start?

`prepare` waits on a watch and must tell a slow start (image pulling, scheduling)
from one that cannot succeed (a missing image, a missing secret, a container that
died) so a broken job fails in seconds with the kubelet's or scheduler's own words.
Pure functions over the pod as the API returns it (a JSON dict); no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# Waiting reasons after which the kubelet will not start the container without a
# change to the pod or the registry (kaniko-and-exec.md, "fast-failure signals").
FATAL_WAITING = frozenset({
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
    "CrashLoopBackOff", "PreStartHookError", "PostStartHookError",
})


@dataclass(frozen=True)
class PodState:
    """Where a pod stands on its way to running, in words fit for a job log."""

    phase: Literal["running", "starting", "failed"]
    message: str
    unschedulable: bool = False


def assess(pod: dict[str, Any]) -> PodState:
    """Classify a pod as running (every container), still starting, or failed to start."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    name = metadata.get("name", "?")
    if metadata.get("deletionTimestamp"):
        return PodState("failed", f"pod {name} is being deleted")
    phase = status.get("phase", "Pending")
    if phase in ("Failed", "Succeeded"):
        why = ": ".join(p for p in (status.get("reason"), status.get("message")) if p)
        return PodState("failed", f"pod {name} ended ({phase}{': ' + why if why else ''})")
    images = {c.get("name"): c.get("image") for c in spec.get("containers") or ()}
    statuses = status.get("containerStatuses") or []
    starting: list[str] = []
    for container in statuses:
        cname = container.get("name", "?")
        state = container.get("state") or {}
        if "waiting" in state:
            waiting = state["waiting"] or {}
            reason = waiting.get("reason", "Waiting")
            detail = f"{reason}: {waiting['message']}" if waiting.get("message") else reason
            if reason in FATAL_WAITING:
                return PodState("failed", f"container {cname} (image "
                                          f"{images.get(cname, container.get('image'))}) "
                                          f"cannot start: {detail}")
            starting.append(f"container {cname}: {detail}")
        elif "terminated" in state:
            ended = state["terminated"] or {}
            why = ended.get("message") or ended.get("reason") or "no reason given"
            return PodState("failed", f"container {cname} exited with code "
                                      f"{ended.get('exitCode', '?')} before the job could "
                                      f"use it ({why})")
    running = {c.get("name") for c in statuses if "running" in (c.get("state") or {})}
    if images and running >= set(images):
        return PodState("running", f"pod {name} is running")
    for condition in status.get("conditions") or ():
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            reason = condition.get("reason", "")
            message = condition.get("message", "")
            return PodState("starting", f"pod {name} is not scheduled: "
                                        f"{reason}{': ' if reason and message else ''}{message}",
                            unschedulable=reason == "Unschedulable")
    if starting:
        return PodState("starting", "; ".join(starting))
    return PodState("starting", f"pod {name} is {phase}")
