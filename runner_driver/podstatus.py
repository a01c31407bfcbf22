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


@dataclass(frozen=True)
class Death:
    """Why a running job pod (or one of its containers) can no longer run a stage.

    `oom_exit_code` is set when the container the stage ran in was OOM-killed: the
    job's own workload used too much memory, which is the script's failure.
    """

    message: str
    oom_exit_code: int | None = None
    # The kubelet evicted the pod for the storage the job itself wrote (a volume over
    # its sizeLimit, a container over its ephemeral-storage limit): the job's failure.
    storage_exit_code: int | None = None


# The kubelet's eviction messages for a pod over its own storage limits
# (pkg/kubelet/eviction/helpers.go), as opposed to a node under pressure.
STORAGE_EVICTIONS = ("Usage of EmptyDir volume", "Container ",
                     "Pod ephemeral local storage usage exceeds")


def diagnose(pod: dict[str, Any] | None, name: str, container: str) -> Death | None:
    """Why the job's pod cannot run a stage in `container` any more; None if it still can.

    `pod` is None when it no longer exists. Evictions, preemption, node loss and
    deletion are the system's failures; an OOM-killed `container` is the script's.
    """
    if pod is None:
        return Death(f"pod {name} no longer exists (deleted, or its node was removed)")
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    evicted = str(status.get("message") or "")
    if status.get("reason") == "Evicted" and evicted.startswith(STORAGE_EVICTIONS) \
            and ("limit" in evicted):
        return Death(f"pod {name} was evicted by its node: {evicted.strip()} The job wrote "
                     "more than its pod may keep; write less, or ask the runner's operator "
                     "for larger limits (the pod's size and ephemeral-storage settings)",
                     storage_exit_code=137)
    for condition in status.get("conditions") or ():
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            why = ": ".join(p for p in (condition.get("reason"), condition.get("message")) if p)
            return Death(f"pod {name} was disrupted by Kubernetes ({why or 'no reason given'}); "
                         "retry the job (retry: when: runner_system_failure)")
    ended: dict[str, Any] | None = None
    for state in status.get("containerStatuses") or ():
        if state.get("name") == container:
            ended = (state.get("state") or {}).get("terminated")
    # The container's own OOM kill first: the pod may have ended because of it.
    if ended is not None and ended.get("reason") == "OOMKilled":
        code = int(ended.get("exitCode") or 0) or 137
        limits = {c.get("name"): ((c.get("resources") or {}).get("limits") or {}).get("memory")
                  for c in spec.get("containers") or ()}
        limit = limits.get(container)
        limit_text = f"its memory limit of {limit}" if limit else \
            "the node's memory (no memory limit is set)"
        return Death(f"container {container} of pod {name} was OOMKilled: it used all of "
                     f"{limit_text}; exit code {code}", oom_exit_code=code)
    if metadata.get("deletionTimestamp"):
        return Death(f"pod {name} is being deleted")
    if status.get("phase") in ("Failed", "Succeeded"):
        why = ": ".join(p for p in (status.get("reason"), status.get("message")) if p)
        return Death(f"pod {name} ended ({status.get('phase')}"
                     f"{': ' + why if why else ''})")
    if ended is not None:
        why = ended.get("message") or ended.get("reason") or "no reason given"
        return Death(f"container {container} of pod {name} stopped with exit code "
                     f"{int(ended.get('exitCode') or 0)} ({why})")
    return None
