"""`runner-driver gc`: remove job pods and secrets that no runner will clean up.

A runner manager that is killed (SIGKILL, node loss, OOM) never calls `cleanup`, so
its job pods idle on until their active deadline (the job timeout plus room for
after_script and uploads), and their secrets with them; a pod whose node vanished
may never even be marked failed. `gc` finds what the driver labelled and removes it
once the job is certainly over: the pod finished (Succeeded or Failed, which includes
passing its deadline), or it has been running for longer than its deadline (so no
kubelet is enforcing it). It is meant to run from a CronJob while jobs are running,
so it must never touch a live job's pod, nor another runner manager's: by default it
lists only objects labelled with this manager's id (`[manager] id`, never a job
variable), and `--all-managers` is for an operator who means it. A pod inside its
deadline is always kept, whatever `--older-than` says, which only keeps objects
longer. Deciding is pure (`verdicts`); only `collect` talks to the API.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import ClusterError, ConfigError
from .kube import Cluster

# Clocks of the runner host and the API server may differ a little.
CLOCK_SLACK_SECONDS = 60
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in `90`, `90s`, `10m`, `2h`, `1d` or a sum like `1h30m`.

    Raises:
        ConfigError: naming the option and the text.
    """
    cleaned = text.strip().lower()
    parts = _DURATION.findall(cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned:
        raise ConfigError(f"reading --older-than: expected a duration such as 90s, 10m, 2h "
                          f"or 1h30m, got {text!r}")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


@dataclass(frozen=True)
class Verdict:
    """One object gc removes, and why."""

    kind: str
    name: str
    reason: str
    uid: str = field(default="", compare=False)


def _seconds_since(timestamp: Any, now: datetime) -> float | None:
    if not timestamp:
        return None
    try:
        return (now - datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
                ).total_seconds()
    except ValueError:
        return None


def _age(obj: dict[str, Any], now: datetime) -> float | None:
    return _seconds_since((obj.get("metadata") or {}).get("creationTimestamp"), now)


def pod_verdict(pod: dict[str, Any], now: datetime, older_than: float) -> Verdict | None:
    """Why the pod's job is certainly over, or None to keep the pod."""
    metadata = pod.get("metadata") or {}
    name = str(metadata.get("name", "?"))
    age = _age(pod, now)
    if age is None or age < older_than or metadata.get("deletionTimestamp"):
        return None
    status = pod.get("status") or {}
    phase = status.get("phase")
    if phase in ("Succeeded", "Failed"):
        why = ": ".join(p for p in (status.get("reason"), status.get("message")) if p)
        return Verdict("pod", name, f"finished ({phase}{': ' + why if why else ''})",
                       str(metadata.get("uid") or ""))
    deadline = (pod.get("spec") or {}).get("activeDeadlineSeconds")
    if not isinstance(deadline, int):
        return None  # no deadline: only a finished pod is certainly over
    # The deadline counts from the pod's start; a pod that never started counts from
    # its creation (prepare gives up on it long before).
    running = _seconds_since(status.get("startTime"), now)
    running = age if running is None else running
    if running > deadline + CLOCK_SLACK_SECONDS:
        return Verdict("pod", name, f"running for {running:.0f}s, past its active deadline "
                                    f"of {deadline}s (its node no longer enforces it)",
                       str(metadata.get("uid") or ""))
    return None


def secret_verdict(secret: dict[str, Any], kept_pods: Iterable[dict[str, Any]],
                   now: datetime, older_than: float) -> Verdict | None:
    """Why a labelled secret belongs to no live job (its pod is gone or going), or None."""
    metadata = secret.get("metadata") or {}
    name = str(metadata.get("name", "?"))
    age = _age(secret, now)
    if age is None or age < older_than or metadata.get("deletionTimestamp"):
        return None
    alive = {str((p.get("metadata") or {}).get("uid")) for p in kept_pods}
    owners = [o for o in metadata.get("ownerReferences") or () if o.get("kind") == "Pod"]
    if owners:
        if not any(str(o.get("uid")) in alive for o in owners):
            return Verdict("secret", name, "its pod is gone", str(metadata.get("uid") or ""))
        return None
    job = (metadata.get("labels") or {}).get("runner-driver/job-id")
    jobs = {(p.get("metadata") or {}).get("labels", {}).get("runner-driver/job-id")
            for p in kept_pods}
    if job not in jobs and age > CLOCK_SLACK_SECONDS:
        return Verdict("secret", name, "no pod of its job exists",
                       str(metadata.get("uid") or ""))
    return None


def verdicts(pods: list[dict[str, Any]], secrets: list[dict[str, Any]], now: datetime,
             older_than: float) -> list[Verdict]:
    """Everything to remove: pods whose job is over, then secrets of no live job."""
    found: list[Verdict] = []
    kept: list[dict[str, Any]] = []
    for pod in pods:
        verdict = pod_verdict(pod, now, older_than)
        if verdict is None:
            kept.append(pod)
        else:
            found.append(verdict)
    for secret in secrets:
        verdict = secret_verdict(secret, kept, now, older_than)
        if verdict is not None:
            found.append(verdict)
    return found


def collect(cluster: Cluster, selector: str, now: datetime, older_than: float,
            dry_run: bool, say: Callable[[str], None]) -> int:
    """Remove (or with `dry_run` only list) what `verdicts` finds among the objects
    `selector` matches (see `podspec.manager_selector`); the number of failures."""
    # Secrets first: a job's secret is created after its pod, so every secret listed
    # here has its pod in the pod list unless that pod is really gone.
    secrets = cluster.list_secrets(selector)
    pods = cluster.list_pods(selector)
    found = verdicts(pods, secrets, now, older_than)
    failures = 0
    for verdict in found:
        where = f"{verdict.kind} {cluster.namespace}/{verdict.name}"
        if dry_run:
            say(f"would delete {where}: {verdict.reason}")
            continue
        try:
            # Only the incarnation judged: a prepare retry may have made a new pod (and
            # secret) of the same name since the list.
            if verdict.kind == "pod":
                cluster.delete_pod(verdict.name, uid=verdict.uid)
            else:
                cluster.delete_secret(verdict.name, uid=verdict.uid)
        except ClusterError as error:
            if error.status == 409:
                say(f"kept {where}: it was replaced by a newer one since it was listed")
                continue
            failures += 1
            say(f"could not delete {where}: {error}")
        else:
            say(f"deleted {where}: {verdict.reason}")
    kept = len(pods) + len(secrets) - len(found)
    say(f"gc: {len(found)} to delete{' (dry run)' if dry_run else ''}, {kept} kept "
        f"(namespace {cluster.namespace}, {selector})")
    return failures
