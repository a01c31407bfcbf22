"""Exec connections opened ahead of a job's next stage, so it starts without a handshake.

gitlab-runner runs a job's stages one after the other, and every `run` needs an exec
into the job's pod: a round trip through the API server to the kubelet and the
container runtime, tens of milliseconds on a real cluster and about a third of a
trivial stage's cost on the emulated one. The runner's agent serves every stage of a
job, so when a stage ends it opens the exec the next one will most likely need and
leaves it waiting in the pod for that stage's header and script (the launcher's
standby form, `inpod.standby_argv`). The next `run` then only sends.

It must never change what a stage does. A standby is used only by the job it was
opened for (the same pod and nonce; the launcher checked the nonce in the pod before
it waited), only while fresh (`MAX_IDLE_SECONDS`: proxies and load balancers cut idle
connections, some without a word) and only if nothing arrived on it (anything but the
API server's opening frame means its command ended); otherwise it is closed and the
stage opens its own exec, exactly as without this module. A job has at most one
standby per container, so it costs at most two execs that are never used; closing one
ends its waiting launcher (its stdin ends). Only the agent keeps standbys: a stage
process ends before the next stage starts. Opening one is best effort and runs in a
thread of its own; after a failure the next stage opens its exec as it always did.
"""

from __future__ import annotations

import contextlib
import threading
import time

from .errors import DriverError
from .inpod import standby_argv
from .kube import Cluster, ExecSocket, usable
from .podspec import BUILD, HELPER

# A standby older than this is closed rather than used: well below the idle timeouts
# of common load balancers (60 s) and of the kubelet's streaming connections.
MAX_IDLE_SECONDS = 10.0
# Jobs whose cleanup ran are remembered this long, so that a standby still being opened
# for one is closed when it arrives rather than kept.
FORGET_SECONDS = 600.0

Key = tuple[str, str, str, str]  # API server, namespace, pod, nonce


def next_container(stage: str, container: str) -> str | None:
    """The container the stage after `stage` (which ran in `container`) most likely uses.

    gitlab-runner's order is fixed (common/build.go, `executeBuildSection`):
    prepare_script, get_sources, restore_cache, download_artifacts (helper), the build
    steps and after_script (build), then archive_cache, upload_artifacts and
    cleanup_file_variables (helper); a stage with nothing to do is left out. So the next
    stage mostly runs where this one ran, and some changes are certain.
    """
    if stage == "cleanup_file_variables":
        return None  # the last stage of every job
    if stage == "download_artifacts":
        return BUILD
    if stage == "after_script" or stage.startswith(("archive_cache", "upload_artifacts_")):
        return HELPER
    return container


class Standbys:
    """The agent's standby execs, at most one per job and container."""

    def __init__(self, max_idle: float = MAX_IDLE_SECONDS) -> None:
        self.max_idle = max_idle
        self._lock = threading.Lock()
        self._ready: dict[tuple[Key, str], tuple[ExecSocket, float]] = {}
        self._opening: set[tuple[Key, str]] = set()
        self._ended: dict[Key, float] = {}

    def take(self, cluster: Cluster, pod: str, nonce: str, container: str) -> ExecSocket | None:
        """The job's standby exec into `container`, if it has a usable one (it is the
        caller's now: close it when done)."""
        slot = (_key(cluster, pod, nonce), container)
        with self._lock:
            found = self._ready.pop(slot, None)
        if found is None:
            return None
        session, opened = found
        if time.monotonic() - opened > self.max_idle or not usable(session):
            session.close()
            return None
        return session

    def prepare(self, cluster: Cluster, pod: str, nonce: str, container: str) -> None:
        """Open a standby exec into `container` for the job's next stage, in the
        background, unless the job has one there (or one on its way)."""
        key = _key(cluster, pod, nonce)
        slot = (key, container)
        with self._lock:
            if key in self._ended or slot in self._opening:
                return
            found = self._ready.get(slot)
            if found is not None and time.monotonic() - found[1] <= self.max_idle:
                return
            self._opening.add(slot)
        threading.Thread(target=self._open, args=(cluster, pod, nonce, slot),
                         daemon=True).start()

    def end(self, cluster: Cluster, pod: str, nonce: str) -> None:
        """The job is over (its cleanup runs): close its standbys, now and on arrival."""
        key = _key(cluster, pod, nonce)
        now = time.monotonic()
        with self._lock:
            self._ended = {k: t for k, t in self._ended.items() if now - t < FORGET_SECONDS}
            self._ended[key] = now
            stale = [self._ready.pop(s)[0] for s in list(self._ready) if s[0] == key]
        for session in stale:
            session.close()

    def _open(self, cluster: Cluster, pod: str, nonce: str, slot: tuple[Key, str]) -> None:
        container = slot[1]
        session: ExecSocket | None = None
        # A failure is not reported: the next stage opens its own exec and reports
        # whatever stops it (this thread has no stage's stderr to log to).
        with contextlib.suppress(DriverError):
            session = cluster.open_exec(pod, container, standby_argv(nonce, container))
        replaced: ExecSocket | None = None
        with self._lock:
            self._opening.discard(slot)
            if session is not None and slot[0] not in self._ended:
                old = self._ready.get(slot)
                replaced = old[0] if old else None
                self._ready[slot] = (session, time.monotonic())
                session = None
        for leftover in (session, replaced):
            if leftover is not None:
                leftover.close()


def _key(cluster: Cluster, pod: str, nonce: str) -> Key:
    return cluster.server, cluster.namespace, pod, nonce
