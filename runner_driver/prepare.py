"""`prepare` stage: create the job's pod and return once both containers run.

Whatever prepare prints lands in the job log, so it says in plain words what it is
doing and, when the pod cannot start, why (the kubelet's or scheduler's message and
the pod's events). It leaves nothing behind on failure: a pod that was created is
deleted again before the error goes up. It must not run job scripts.
"""

from __future__ import annotations

import time
from typing import TextIO

from . import logs
from .errors import Canceled, ClusterError, PodStartError
from .kube import Cluster
from .podspec import BUILD, HELPER, build_pod
from .podstatus import PodState
from .runner_env import JobContext
from .settings import Settings

PROGRESS_SECONDS = 1.0


def prepare(settings: Settings, job: JobContext, cluster: Cluster, out: TextIO) -> None:
    """Create the pod for `job` and wait until it runs.

    Raises:
        JobFailed: the job's image is not allowed (before anything is created).
        PodStartError, ClusterError: the pod could not be started; it was deleted.
        Canceled: SIGTERM arrived; the pod was deleted.
    """
    log = logs.get()
    manifest = build_pod(settings, job)
    name = manifest["metadata"]["name"]
    images = {c["name"]: c["image"] for c in manifest["spec"]["containers"]}
    if job.services:
        _say(out, f"WARNING: this job declares services ({', '.join(job.services)}); "
                  "runner-driver starts no service containers, so they are not available.")
    _say(out, f"Creating pod {cluster.namespace}/{name} (build image {images[BUILD]}, "
              f"helper image {images[HELPER]})")
    started = time.monotonic()
    created = cluster.create_pod(manifest)
    log.info("pod created", namespace=cluster.namespace)

    shown = started - PROGRESS_SECONDS

    def progress(state: PodState) -> None:
        # Every change would be a line per container per step: one line a second at most.
        nonlocal shown
        now = time.monotonic()
        if state.phase == "starting" and now - shown >= PROGRESS_SECONDS:
            shown = now
            _say(out, f"Waiting for pod {cluster.namespace}/{name}: {state.message}")

    try:
        pod = cluster.wait_running(created, settings.pod.start_timeout_seconds, progress,
                                   settings.pod.unschedulable_timeout_seconds)
    except (PodStartError, ClusterError, Canceled) as error:
        if isinstance(error, PodStartError):
            _say(out, f"ERROR: pod {cluster.namespace}/{name} cannot start: {error}")
            _show_events(cluster, name, str(created["metadata"].get("uid") or ""), out)
        _remove(cluster, name, out)
        raise
    node = (pod.get("spec") or {}).get("nodeName", "?")
    _say(out, f"Pod {cluster.namespace}/{name} is running on node {node} "
              f"({time.monotonic() - started:.1f}s)")


def _say(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()


def _show_events(cluster: Cluster, name: str, uid: str, out: TextIO) -> None:
    try:
        events = cluster.pod_events(name, uid)
    except ClusterError as error:
        _say(out, f"(could not list the pod's events: {error})")
        return
    # Normal events (Scheduled, Pulling, Created) say nothing about why it failed.
    events = [e for e in events if e.get("type") == "Warning"]
    if not events:
        return
    _say(out, f"Warning events of pod {cluster.namespace}/{name}:")
    for event in events:
        count = event.get("count") or 1
        repeat = f" (x{count})" if count > 1 else ""
        _say(out, f"  {event.get('type', '')} {event.get('reason', '')}: "
                  f"{event.get('message', '')}{repeat}")


def _remove(cluster: Cluster, name: str, out: TextIO) -> None:
    try:
        cluster.delete_pod(name, grace_seconds=0)
    except ClusterError as error:
        _say(out, f"ERROR: could not delete pod {cluster.namespace}/{name} after the failed "
                  f"start ({error}); cleanup will try again")
    else:
        _say(out, f"Deleted pod {cluster.namespace}/{name}")
