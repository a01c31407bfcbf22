"""The emulated node's kubelet: pods bound to the node become running sandboxes.

It writes back what a real kubelet would: image pulls (and `ErrImagePull` /
`ImagePullBackOff` for images it cannot pull), `CreateContainerConfigError`, container
states with exit codes and reasons (`Completed`, `Error`, `OOMKilled`, `StartError`),
restarts, pod phases and conditions, events, the `activeDeadlineSeconds` deadline,
evictions for local ephemeral storage limits (`storage`), memory-backed emptyDirs as
sized tmpfs mounts, and graceful deletion (SIGTERM, then SIGKILL after the grace
period). Scheduling, garbage collection and namespace and node lifecycles are the
control plane's (`controllers`). It runs on the emulator's event loop and must never
block it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import secrets as pysecrets
import shutil
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import images, sandbox, storage, volumes
from .events import EventRecorder
from .selectors import SelectorError, parse_quantity
from .store import ApiError, Obj, Store, WatchEvent, now_rfc3339

log = logging.getLogger("runner_driver.emulator")

WAITING_CREATING = {"reason": "ContainerCreating"}
# How many pods' Running times the node remembers (for benchmarks; oldest dropped first).
RUNNING_TIMES_KEPT = 10_000


@dataclass
class NodeSettings:
    """The single node's capacity, labels and timings."""

    name: str = "emulated-node"
    cpu: str = field(default_factory=lambda: str(os.cpu_count() or 2))
    memory: str = "8Gi"
    # Room for 100+ job pods with their ephemeral-storage requests, as a real node disk.
    ephemeral_storage: str = "200Gi"
    pods: str = "110"
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[Obj] = field(default_factory=list)
    kubernetes_version: str = "v1.34.1"
    # Seconds an image pull takes (a real pull takes far longer; tests want speed).
    pull_seconds: float = 0.02
    # First image-pull back-off; it doubles up to ten times this.
    pull_backoff_seconds: float = 1.0
    # How long a NotReady node keeps pods before evicting them (the default toleration).
    not_ready_eviction_seconds: float = 300.0
    # How often the eviction manager measures pods' local storage (a real kubelet: 10s).
    housekeeping_seconds: float = 1.0


def _uuid() -> str:
    raw = pysecrets.token_hex(16)
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


def _capability(name: str) -> str:
    """`NET_RAW` or `CAP_NET_RAW` as bubblewrap names it."""
    upper = name.upper()
    return upper if upper.startswith("CAP_") else "CAP_" + upper


def _arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


@dataclass
class ContainerRun:
    """One container of a pod on this node, and its live process."""

    name: str
    spec: Obj
    init: bool
    profile: images.ImageProfile | None = None
    rootfs: Path | None = None
    sandbox: sandbox.SandboxSpec | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    process: asyncio.subprocess.Process | None = None
    pid: int = 0
    pidfd: int = -1  # names `pid` for signals: see sandbox.open_pidfd
    log_path: Path | None = None
    termination_log: Path | None = None
    state: Obj = field(default_factory=lambda: {"waiting": dict(WAITING_CREATING)})
    last_state: Obj = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    image_id: str = ""
    container_id: str = ""
    forced_reason: str | None = None
    oom_baseline: int = 0
    disk: storage.ContainerDisk | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    log_writers: list[asyncio.Task[None]] = field(default_factory=list)


def _close_pidfd(c: ContainerRun) -> None:
    if c.pidfd >= 0:
        os.close(c.pidfd)
        c.pidfd = -1


@dataclass
class PodRun:
    """The node-side state of one pod."""

    namespace: str
    name: str
    uid: str
    directory: Path
    containers: dict[str, ContainerRun] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    terminating: bool = False
    grace_seconds: float = 30.0
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: str = ""
    status_reason: str | None = None
    status_message: str | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tmpfs: list[Path] = field(default_factory=list)  # memory-backed emptyDirs mounted


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for an event at most `timeout` seconds; return whether it is set.

    `asyncio.wait_for` on Python 3.11 can swallow a cancellation that races with the
    event, leaving the caller running after shutdown; `asyncio.wait` cannot.
    """
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=max(timeout, 0.0))
    finally:
        waiter.cancel()
    return event.is_set()


class Kubelet:
    """The node and its control loops, driven by store changes."""

    def __init__(self, store: Store, settings: NodeSettings, workdir: Path, api_port: int) -> None:
        self.store = store
        self.settings = settings
        self.workdir = workdir
        self.api_port = api_port
        self.events = EventRecorder(store, settings.name)
        self.runs: dict[tuple[str, str], PodRun] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closing = False
        self.node_ready = True
        # Wall-clock time (time.time()) each pod's phase first became Running, kept after
        # the pod is gone so a benchmark can read it once the job has been cleaned up.
        self.running_times: dict[tuple[str, str], float] = {}
        store.add_listener(self._on_change)

    # Setup

    def start(self) -> None:
        """Register the node, then start the deadline loop."""
        labels = {"kubernetes.io/arch": _arch(), "kubernetes.io/os": "linux",
                  "kubernetes.io/hostname": self.settings.name,
                  "node-role.kubernetes.io/control-plane": "",
                  "beta.kubernetes.io/arch": _arch(), "beta.kubernetes.io/os": "linux"}
        labels.update(self.settings.labels)
        capacity = {"cpu": self.settings.cpu, "memory": self.settings.memory,
                    "ephemeral-storage": self.settings.ephemeral_storage,
                    "pods": self.settings.pods}
        self.store.create("nodes", "", {
            "metadata": {"name": self.settings.name, "labels": labels,
                         "annotations": {"runner-driver.dev/emulated": "true"}},
            "spec": {"taints": copy.deepcopy(self.settings.taints)},
            "status": {
                "capacity": dict(capacity), "allocatable": dict(capacity),
                "conditions": self.node_conditions(True),
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                              {"type": "Hostname", "address": self.settings.name}],
                "nodeInfo": {"architecture": _arch(), "operatingSystem": "linux",
                             "kubeletVersion": self.settings.kubernetes_version,
                             "containerRuntimeVersion": "bubblewrap://emulated",
                             "kernelVersion": os.uname().release,
                             "osImage": "runner-driver emulated node",
                             # Required (non-omitempty) fields; typed clients reject a node
                             # without them. kube-proxy's version is "" since v1.31.
                             "machineID": pysecrets.token_hex(16),
                             "systemUUID": _uuid(), "bootID": _uuid(),
                             "kubeProxyVersion": ""},
            }})
        self.spawn(self._periodic())
        self.spawn(self._housekeeping())

    def node_conditions(self, ready: bool) -> list[Obj]:
        stamp = now_rfc3339()
        conditions = [{"type": t, "status": "False", "reason": f"KubeletHas{r}",
                       "message": m, "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
                      for t, r, m in (("MemoryPressure", "SufficientMemory",
                                       "kubelet has sufficient memory available"),
                                      ("DiskPressure", "NoDiskPressure",
                                       "kubelet has no disk pressure"),
                                      ("PIDPressure", "SufficientPID",
                                       "kubelet has sufficient PID available"))]
        # Ready=False is what the node lifecycle controller maps to the not-ready taint
        # (Unknown would mean the unreachable taint).
        conditions.append({"type": "Ready", "status": "True" if ready else "False",
                           "reason": "KubeletReady" if ready else "KubeletNotReady",
                           "message": "kubelet is posting ready status" if ready
                           else "container runtime is down",
                           "lastHeartbeatTime": stamp, "lastTransitionTime": stamp})
        return conditions

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run a coroutine as a task the kubelet tracks and cancels at shutdown."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self.closing:
            log.error("emulator task failed", exc_info=task.exception())

    # Reacting to changes

    def _on_change(self, event: WatchEvent) -> None:
        if self.closing or event.resource != "pods" or event.type == "DELETED":
            return
        if event.obj["spec"].get("nodeName"):
            key = (event.namespace, event.obj["metadata"]["name"])
            if key not in self.runs and not event.obj["metadata"].get("deletionTimestamp") \
                    and event.obj["status"].get("phase") in ("Pending", None):
                self._start_pod(event.obj)

    async def _periodic(self) -> None:
        """Enforce activeDeadlineSeconds about twice a second."""
        while not self.closing:
            await asyncio.sleep(0.5)
            self._enforce_deadlines()

    def _enforce_deadlines(self) -> None:
        now = time.time()
        for run in list(self.runs.values()):
            pod = self.store.find("pods", run.namespace, run.name)
            if pod is None or run.terminating or not run.started_at:
                continue
            deadline = pod["spec"].get("activeDeadlineSeconds")
            started = datetime.strptime(run.started_at, "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=UTC).timestamp()
            if deadline and now - started > deadline \
                    and pod["status"].get("phase") not in ("Succeeded", "Failed"):
                run.status_reason = "DeadlineExceeded"
                run.status_message = "Pod was active on the node longer than the specified deadline"
                self.events.record(pod, "Normal", "DeadlineExceeded", run.status_message)
                self.spawn(self._terminate(run, float(pod["spec"].get(
                    "terminationGracePeriodSeconds", 30)), remove=False))

    async def _housekeeping(self) -> None:
        """Enforce local ephemeral storage limits, as the eviction manager's loop does.

        Measuring walks every limited pod's directories (about 2 ms for a job pod), so
        rounds are spaced to keep it under a tenth of the time however many pods run.
        """
        delay = self.settings.housekeeping_seconds
        while not self.closing:
            await asyncio.sleep(delay)
            started = time.monotonic()
            await self._enforce_storage_limits()
            delay = max(self.settings.housekeeping_seconds, 9 * (time.monotonic() - started))

    async def _enforce_storage_limits(self) -> None:
        plans: list[tuple[PodRun, storage.Plan]] = []
        for run in list(self.runs.values()):
            pod = self._pod(run)
            if pod is None or run.terminating or run.status_reason or not run.started_at \
                    or pod["status"].get("phase") in ("Succeeded", "Failed"):
                continue
            disks = {c.name: c.disk for c in run.containers.values() if c.disk is not None}
            what = storage.plan(pod, run.directory, disks)
            if what is not None:
                plans.append((run, what))
        if not plans:
            return  # no pod has a limit: nothing is measured
        usages = await asyncio.get_running_loop().run_in_executor(
            None, lambda: [storage.measure(what) for _, what in plans])
        for (run, _), usage in zip(plans, usages, strict=True):
            pod = self._pod(run)
            message = storage.violation(pod, usage) if pod is not None else None
            if pod is not None and message and not run.terminating and not run.status_reason:
                self._evict(run, pod, message)

    def _evict(self, run: PodRun, pod: Obj, message: str) -> None:
        """Evict a pod for a local storage limit, as the eviction manager does.

        A Warning `Evicted` event, then phase Failed with reason Evicted (and no
        DisruptionTarget condition, which it sets only for node pressure), then the
        containers killed with a one-second grace period.
        """
        run.status_reason = "Evicted"
        run.status_message = message
        self.events.record(pod, "Warning", "Evicted", message)
        self.publish(run)
        self.spawn(self._terminate(run, storage.EVICTION_GRACE_SECONDS, remove=False))

    # API-facing operations

    def delete_pod(self, namespace: str, name: str, grace: int | None) -> Obj:
        """Start graceful deletion; return the pod as the API returns it.

        Raises:
            ApiError: 404 when the pod does not exist.
        """
        pod = self.store.find("pods", namespace, name)
        if pod is None:
            return self.store.get("pods", namespace, name)
        if grace is None:
            grace = int(pod["spec"].get("terminationGracePeriodSeconds", 30))
        run = self.runs.get((namespace, name))
        if run is None or (run.finished.is_set() and not run.terminating):
            if run is not None:
                self.spawn(self._finish_removal(run))
                pod["metadata"]["deletionTimestamp"] = now_rfc3339()
                pod["metadata"]["deletionGracePeriodSeconds"] = 0
                self.store.touch("pods", pod)
                return copy.deepcopy(pod)
            return self.store.remove("pods", namespace, name)
        if pod["metadata"].get("deletionTimestamp"):
            if grace < run.grace_seconds:
                run.grace_seconds = grace
                run.stop.set()
            return copy.deepcopy(pod)
        # The API server stamps the time the grace period runs out, not the request time.
        pod["metadata"]["deletionTimestamp"] = datetime.fromtimestamp(
            time.time() + grace, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        pod["metadata"]["deletionGracePeriodSeconds"] = grace
        self.store.touch("pods", pod)
        self.spawn(self._terminate(run, float(grace), remove=True))
        return copy.deepcopy(pod)

    def oom_kill(self, namespace: str, name: str, container: str) -> None:
        """Kill a container as the kernel does when it exceeds its memory limit.

        Raises:
            ApiError: 404 when the pod or a running container of that name is missing.
        """
        run = self.runs.get((namespace, name))
        target = run.containers.get(container) if run else None
        if target is None or target.pid <= 0 or target.exited.is_set():
            raise ApiError(404, "NotFound",
                           f'container "{container}" in pod "{name}" is not running')
        target.forced_reason = "OOMKilled"
        sandbox.signal_process(target.pidfd, signal.SIGKILL)

    def container_for(self, namespace: str, name: str, container: str | None,
                      action: str) -> tuple[PodRun, ContainerRun]:
        """Find a container to exec into or read logs from, with the API's errors.

        Raises:
            ApiError: 404 for a missing pod, 400 for a missing or ambiguous container,
                400 for a pod that is not scheduled or a container that has not started.
        """
        pod = self.store.find("pods", namespace, name)
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found',
                           {"name": name, "kind": "pods"})
        names = [c["name"] for c in pod["spec"]["containers"]]
        init_names = [c["name"] for c in pod["spec"].get("initContainers") or []]
        if not container:
            if len(names) != 1:
                choices = " ".join(names)
                extra = f" or one of the init containers: [{' '.join(init_names)}]" \
                    if init_names else ""
                raise ApiError(400, "BadRequest",
                               f"a container name must be specified for pod {name}, "
                               f"choose one of: [{choices}]{extra}")
            container = names[0]
        if container not in names + init_names:
            raise ApiError(400, "BadRequest",
                           f"container {container} is not valid for pod {name}")
        run = self.runs.get((namespace, name))
        if not pod["spec"].get("nodeName") or run is None:
            raise ApiError(400, "BadRequest", f"pod {name} does not have a host assigned")
        target = run.containers.get(container)
        if target is None or "waiting" in target.state:
            reason = (target.state["waiting"].get("reason", "ContainerCreating")
                      if target else "PodInitializing")
            waiting = ("trying and failing to pull image"
                       if reason in ("ErrImagePull", "ImagePullBackOff") else reason)
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{name}" is '
                           f"waiting to start: {waiting}")
        if action == "exec" and ("terminated" in target.state or target.pid <= 0):
            raise ApiError(500, "InternalError",
                           f"error executing command in container: container {container} "
                           "is not running")
        return run, target

    # Pod lifecycle

    def _start_pod(self, pod: Obj) -> None:
        meta = pod["metadata"]
        directory = self.workdir / "pods" / meta["uid"]
        run = PodRun(meta["namespace"], meta["name"], meta["uid"], directory)
        for c in pod["spec"].get("initContainers") or []:
            run.containers[c["name"]] = ContainerRun(c["name"], c, init=True)
        for c in pod["spec"]["containers"]:
            run.containers[c["name"]] = ContainerRun(c["name"], c, init=False)
        if pod["spec"].get("initContainers"):
            # The kubelet's default waiting reason for every container of such a pod.
            for container in run.containers.values():
                container.state = {"waiting": {"reason": "PodInitializing"}}
        self.runs[(run.namespace, run.name)] = run
        run.task = self.spawn(self._run_pod(run))

    def _pod(self, run: PodRun) -> Obj | None:
        pod = self.store.find("pods", run.namespace, run.name)
        if pod is None or pod["metadata"]["uid"] != run.uid:
            return None
        return pod

    def publish(self, run: PodRun) -> None:
        """Write the pod's status from the node's view of its containers."""
        pod = self._pod(run)
        if pod is None:
            return
        status = pod["status"]
        stamp = now_rfc3339()

        def status_of(c: ContainerRun) -> Obj:
            entry: Obj = {"name": c.name, "state": copy.deepcopy(c.state),
                          "lastState": copy.deepcopy(c.last_state), "ready": c.ready,
                          "restartCount": c.restart_count, "image": c.spec.get("image", ""),
                          "imageID": c.image_id, "started": "running" in c.state}
            if c.container_id:
                entry["containerID"] = c.container_id
            return entry

        inits = [c for c in run.containers.values() if c.init]
        mains = [c for c in run.containers.values() if not c.init]
        status["containerStatuses"] = [status_of(c) for c in mains]
        if inits:
            status["initContainerStatuses"] = [status_of(c) for c in inits]
        status["hostIP"] = "127.0.0.1"
        status["hostIPs"] = [{"ip": "127.0.0.1"}]
        if run.started_at:
            status["startTime"] = run.started_at
            if not status.get("podIP"):
                octet = int(run.uid.replace("-", "")[:4], 16) % 250 + 2
                status["podIP"] = f"10.244.0.{octet}"
                status["podIPs"] = [{"ip": status["podIP"]}]
        policy = pod["spec"].get("restartPolicy", "Always")
        # As the kubelet's getPhase: a container waiting to restart counts as stopped, so
        # a crash-looping pod is Running, not Pending.
        running = stopped = succeeded = waiting = 0
        for c in mains:
            if "running" in c.state:
                running += 1
            elif "terminated" in c.state:
                stopped += 1
                succeeded += c.state["terminated"]["exitCode"] == 0
            elif "terminated" in c.last_state:
                stopped += 1
            else:
                waiting += 1
        init_failed = any("terminated" in c.state and c.state["terminated"]["exitCode"] != 0
                          for c in inits) and policy == "Never"
        if run.status_reason in ("DeadlineExceeded", "Evicted") or init_failed:
            phase = "Failed"
        elif waiting or not mains:
            phase = "Pending"
        elif running or policy == "Always" or (policy == "OnFailure" and stopped != succeeded):
            phase = "Running"
        else:
            phase = "Succeeded" if stopped == succeeded else "Failed"
        if phase == "Running" and status.get("phase") != "Running":
            self._record_running(run)
        status["phase"] = phase
        if run.status_reason:
            status["reason"] = run.status_reason
            status["message"] = run.status_message
        initialized = all("terminated" in c.state and c.state["terminated"]["exitCode"] == 0
                          for c in inits)
        ready = bool(mains) and all(c.ready for c in mains) and self.node_ready \
            and phase == "Running"
        previous = {c["type"]: c for c in status.get("conditions", [])}

        def condition(kind: str, value: bool, reason: str | None = None) -> Obj:
            text = "True" if value else "False"
            old = previous.get(kind)
            entry: Obj = {"type": kind, "status": text, "lastProbeTime": None,
                          "lastTransitionTime": old["lastTransitionTime"]
                          if old and old["status"] == text else stamp}
            if not value and reason:
                entry["reason"] = reason
            return entry

        not_ready = [c.name for c in mains if not c.ready]
        conditions = [
            condition("PodReadyToStartContainers", bool(run.started_at)),
            condition("Initialized", initialized, "ContainersNotInitialized"),
            condition("Ready", ready, "PodCompleted" if phase in ("Succeeded", "Failed")
                      else "ContainersNotReady"),
            condition("ContainersReady", ready, "PodCompleted" if phase in ("Succeeded", "Failed")
                      else "ContainersNotReady"),
            condition("PodScheduled", True),
        ]
        for entry in conditions:
            if entry["type"] in ("Ready", "ContainersReady") and entry.get(
                    "reason") == "ContainersNotReady":
                entry["message"] = f"containers with unready status: [{' '.join(not_ready)}]"
        if "DisruptionTarget" in previous:
            conditions.append(previous["DisruptionTarget"])
        status["conditions"] = conditions
        self.store.touch("pods", pod)

    def _record_running(self, run: PodRun) -> None:
        key = (run.namespace, run.name)
        self.running_times.pop(key, None)  # re-insert: the dict stays oldest first
        self.running_times[key] = time.time()
        while len(self.running_times) > RUNNING_TIMES_KEPT:
            del self.running_times[next(iter(self.running_times))]

    async def run_in_sandbox(self, namespace: str, name: str, container: str,
                             argv: list[str], stdin: bytes = b"") -> tuple[int, bytes, float]:
        """Run a command in a running container as `pods/exec` does, without the API.

        The process is started by the same `sandbox.start_exec` an exec uses, with the
        container's environment and working directory, fed `stdin`, and waited for.
        Returns its exit code (128 + N for signal N), its stdout followed by its stderr,
        and the seconds from spawning it to its exit and end of output.

        Raises:
            ApiError: as an exec would, for a missing pod or a container not running.
        """
        _, target = self.container_for(namespace, name, container, "exec")
        assert target.sandbox is not None
        started = time.monotonic()
        process = await sandbox.start_exec(target.sandbox, target.pid, argv, target.env,
                                           target.cwd, with_stdin=True, pidfd=target.pidfd)
        out, err = await process.communicate(stdin)
        code = await process.wait()  # already reaped by communicate: returns at once
        seconds = time.monotonic() - started
        return (128 - code if code < 0 else code), out + err, seconds

    async def _run_pod(self, run: PodRun) -> None:
        try:
            pod = self._pod(run)
            if pod is None:
                return
            run.directory.mkdir(parents=True, exist_ok=True)
            # Container statuses (ContainerCreating) appear before volumes are mounted.
            self.publish(run)
            if not await self._prepare_volumes(run):
                return
            run.started_at = now_rfc3339()
            self.publish(run)
            inits = [c for c in run.containers.values() if c.init]
            for container in inits:
                if run.terminating:
                    return
                container.state = {"waiting": {"reason": "PodInitializing"}}
                code = await self._run_container_to_end(run, container)
                if code != 0 and (self._pod(run) or {}).get("spec", {}).get(
                        "restartPolicy") == "Never":
                    for main in run.containers.values():
                        if not main.init:
                            main.state = {"waiting": {"reason": "PodInitializing"}}
                    self.publish(run)
                    return
            mains = [c for c in run.containers.values() if not c.init]
            await asyncio.gather(*(self._run_container_to_end(run, c) for c in mains))
        finally:
            run.finished.set()

    async def _prepare_volumes(self, run: PodRun) -> bool:
        """Materialise every volume; wait (like the kubelet) while a source is missing."""
        delay = 0.5
        while not run.terminating:
            pod = self._pod(run)
            if pod is None:
                return False
            problem = None
            for volume in pod["spec"].get("volumes") or []:
                problem = volumes.materialise(self.store, pod, run.directory / "volumes", volume)
                if problem:
                    break
            if problem is None:
                self._mount_memory_volumes(run, pod)
                return True
            self.events.record(pod, "Warning", "FailedMount", problem)
            await wait_event(run.stop, delay)
            delay = min(delay * 2, 10)
        return False

    def _mount_memory_volumes(self, run: PodRun, pod: Obj) -> None:
        """Back each `medium: Memory` emptyDir with a tmpfs of the kubelet's size."""
        for volume in pod["spec"].get("volumes") or []:
            if (volume.get("emptyDir") or {}).get("medium") == "Memory":
                target = run.directory / "volumes" / volume["name"]
                size = storage.memory_volume_size(pod, volume, self.settings.memory)
                if target not in run.tmpfs and storage.mount_tmpfs(target, size):
                    run.tmpfs.append(target)

    def _base_env(self, pod: Obj, profile: images.ImageProfile) -> dict[str, str]:
        env = dict(profile.env)
        env["HOSTNAME"] = pod["metadata"]["name"]
        env["KUBERNETES_SERVICE_HOST"] = "127.0.0.1"
        env["KUBERNETES_SERVICE_PORT"] = str(self.api_port)
        env["KUBERNETES_PORT"] = f"tcp://127.0.0.1:{self.api_port}"
        return env

    def _allocatable(self) -> dict[str, str]:
        return {"cpu": self.settings.cpu, "memory": self.settings.memory,
                "ephemeral-storage": self.settings.ephemeral_storage}

    def _container_spec(self, pod: Obj, run: PodRun, c: ContainerRun) -> None:
        assert c.profile is not None
        base = run.directory / "containers" / c.name
        if base.exists():
            shutil.rmtree(base)
        c.rootfs = base / "rootfs"
        images.build_rootfs(c.profile, c.rootfs)
        (c.rootfs / "etc" / "hostname").write_text(pod["metadata"]["name"] + "\n")
        (c.rootfs / "etc" / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"{pod['status'].get('podIP', '127.0.0.1')}\t{pod['metadata']['name']}\n")
        resolv = Path("/etc/resolv.conf")
        (c.rootfs / "etc" / "resolv.conf").write_text(
            resolv.read_text() if resolv.is_file() else "")
        mounts: list[sandbox.Mount] = [sandbox.Mount(s, d, ro)
                                       for s, d, ro in images.userland_binds(c.profile, c.rootfs)]
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        for mount in c.spec.get("volumeMounts") or []:
            source = run.directory / "volumes" / mount["name"]
            volume = volumes.get(mount["name"], {})
            read_only = bool(mount.get("readOnly")) or any(
                k in volume for k in ("secret", "configMap", "projected", "downwardAPI"))
            if mount.get("subPath"):
                source = source / mount["subPath"]
                if not source.exists() and "emptyDir" in volume:
                    source.mkdir(parents=True)
                    source.chmod(0o777)
            mounts.append(sandbox.Mount(str(source), mount["mountPath"], read_only))
        c.termination_log = base / "termination-log"
        c.termination_log.write_bytes(b"")
        c.log_path = base / "container.log"
        c.log_path.touch()
        # What the image put in the root is not the container's writable layer.
        c.disk = storage.ContainerDisk(c.rootfs, storage.disk_usage(c.rootfs), c.log_path)
        security = c.spec.get("securityContext") or {}
        caps = set(sandbox.DEFAULT_CAPABILITIES)
        if security.get("privileged"):
            log.warning("privileged container %s runs with the default capabilities only", c.name)
        declared = security.get("capabilities") or {}
        drops = {_capability(d) for d in declared.get("drop") or []}
        if "CAP_ALL" in drops:
            caps = set()
        caps -= drops
        # Only runtime-default capabilities can be added: the sandbox shares the host's
        # network and kernel, so NET_ADMIN or SYS_ADMIN would reach the host.
        caps |= {_capability(a) for a in declared.get("add") or []} \
            & set(sandbox.DEFAULT_CAPABILITIES)
        limits = (c.spec.get("resources") or {}).get("limits") or {}
        cgroup = None
        if "memory" in limits:
            with contextlib.suppress(SelectorError):
                cgroup = sandbox.memory_cgroup(f"{run.uid}-{c.name}",
                                               int(parse_quantity(limits["memory"])))
        c.sandbox = sandbox.SandboxSpec(c.rootfs, tuple(mounts), pod["metadata"]["name"][:63],
                                        tuple(sorted(caps)), cgroup)
        c.oom_baseline = sandbox.oom_kills(cgroup)
        c.cwd = c.spec.get("workingDir") or c.profile.working_dir
        if not any(c.cwd == m.destination or c.cwd.startswith(m.destination.rstrip("/") + "/")
                   for m in mounts):
            (c.rootfs / c.cwd.lstrip("/")).mkdir(parents=True, exist_ok=True)

    async def _pull(self, run: PodRun, c: ContainerRun) -> bool:
        """Pull the image, or loop through ErrImagePull and ImagePullBackOff like a kubelet."""
        image = str(c.spec.get("image", ""))
        field_path = f"spec.{'initContainers' if c.init else 'containers'}{{{c.name}}}"
        backoff = self.settings.pull_backoff_seconds
        while not run.terminating:
            pod = self._pod(run)
            if pod is None:
                return False
            self.events.record(pod, "Normal", "Pulling", f'Pulling image "{image}"',
                               field_path=field_path)
            started = time.monotonic()
            await asyncio.sleep(self.settings.pull_seconds)
            profile = images.resolve(image)
            if profile is not None:
                c.profile = profile
                c.image_id = f"{image.split('@', maxsplit=1)[0]}@sha256:" + \
                    pysecrets.token_hex(32) if "@" not in image else image
                self.events.record(pod, "Normal", "Pulled",
                                   f'Successfully pulled image "{image}" in '
                                   f"{int((time.monotonic() - started) * 1000)}ms",
                                   field_path=field_path)
                return True
            reference = image if ":" in image.rsplit("/", 1)[-1] or "@" in image \
                else f"{image}:latest"
            message = (f'failed to pull and unpack image "{reference}": failed to resolve '
                       f'reference "{reference}": {reference}: not found')
            full = f'Failed to pull image "{image}": rpc error: code = NotFound desc = {message}'
            c.state = {"waiting": {"reason": "ErrImagePull", "message": full}}
            self.publish(run)
            self.events.record(pod, "Warning", "Failed", full, field_path=field_path)
            self.events.record(pod, "Warning", "Failed", "Error: ErrImagePull",
                               field_path=field_path)
            await asyncio.sleep(min(0.2, backoff / 4))
            if run.terminating:
                return False
            c.state = {"waiting": {"reason": "ImagePullBackOff",
                                   "message": f'Back-off pulling image "{image}": ErrImagePull: '
                                              f"{message}"}}
            self.publish(run)
            self.events.record(pod, "Normal", "BackOff", f'Back-off pulling image "{image}"',
                               field_path=field_path)
            self.events.record(pod, "Warning", "Failed", "Error: ImagePullBackOff",
                               field_path=field_path)
            await wait_event(run.stop, backoff)
            backoff = min(backoff * 2, self.settings.pull_backoff_seconds * 10)
        return False

    async def _run_container_to_end(self, run: PodRun, c: ContainerRun) -> int:
        """Pull, configure, start and supervise one container until it ends for good."""
        field_path = f"spec.{'initContainers' if c.init else 'containers'}{{{c.name}}}"
        if not await self._pull(run, c):
            return -1
        # The kubelet restarts a container at once after its first exit, and only backs
        # off (10s, doubling up to 5 minutes) when it exits again.
        restart_delay = 0.0
        while not run.terminating:
            pod = self._pod(run)
            if pod is None:
                return -1
            assert c.profile is not None
            try:
                c.env = volumes.resolve_env(self.store, pod, c.spec, self._base_env(pod, c.profile),
                                           self._allocatable())
                security = {**(pod["spec"].get("securityContext") or {}),
                            **(c.spec.get("securityContext") or {})}
                if security.get("runAsNonRoot") and c.profile.runs_as_root \
                        and not security.get("runAsUser"):
                    raise LookupError("container has runAsNonRoot and image will run as root "
                                      f"(pod: \"{run.name}_{run.namespace}({run.uid})\", "
                                      f"container: {c.name})")
            except LookupError as error:
                c.state = {"waiting": {"reason": "CreateContainerConfigError",
                                       "message": str(error)}}
                self.publish(run)
                self.events.record(pod, "Warning", "Failed", f"Error: {error}",
                                   field_path=field_path)
                await wait_event(run.stop, 1.0)
                continue
            self._container_spec(pod, run, c)
            command = [volumes.expand(a, c.env)
                       for a in c.spec.get("command") or c.profile.entrypoint]
            args = [volumes.expand(a, c.env) for a in (c.spec.get("args") if c.spec.get("command")
                                               or c.spec.get("args") else c.profile.cmd) or []]
            if not c.spec.get("command") and c.spec.get("args"):
                command = list(c.profile.entrypoint)
            argv = command + args
            assert c.sandbox is not None and c.log_path is not None
            assert c.termination_log is not None
            path = c.env.get("PATH", "")
            if not argv or sandbox.resolve_command(c.sandbox, argv[0], path) is None:
                what = argv[0] if argv else "no command specified"
                message = (f"failed to create containerd task: failed to create shim task: OCI "
                           f"runtime create failed: runc create failed: unable to start "
                           f"container process: error during container init: exec: "
                           f'"{what}": executable file not found in $PATH: unknown')
                self.events.record(pod, "Warning", "Failed", f"Error: {message}",
                                   field_path=field_path)
                c.state = {"terminated": {"exitCode": 128, "reason": "StartError",
                                          "message": message, "startedAt": "1970-01-01T00:00:00Z",
                                          "finishedAt": now_rfc3339()}}
                c.exited.set()
                self.publish(run)
                return 128
            self.events.record(pod, "Normal", "Created", f"Created container: {c.name}",
                               field_path=field_path)
            c.exited.clear()
            process, pid, pidfd = await sandbox.start_container(c.sandbox, argv, c.env, c.cwd,
                                                                c.termination_log)
            c.process, c.pid, c.pidfd = process, pid, pidfd
            c.container_id = "bwrap://" + pysecrets.token_hex(32)
            started = now_rfc3339()
            c.state = {"running": {"startedAt": started}}
            c.ready = not c.init
            c.log_writers = [self.spawn(self._copy_log(process.stdout, c.log_path, "stdout")),
                             self.spawn(self._copy_log(process.stderr, c.log_path, "stderr"))]
            self.publish(run)
            self.events.record(pod, "Normal", "Started", f"Started container {c.name}",
                               field_path=field_path)
            monitor = self.spawn(self._watch_oom(c)) if c.sandbox.cgroup else None
            code = await process.wait()
            await asyncio.gather(*c.log_writers, return_exceptions=True)
            if monitor:
                monitor.cancel()
            if code < 0:
                code = 128 - code
            oom = c.forced_reason == "OOMKilled" or \
                sandbox.oom_kills(c.sandbox.cgroup) > c.oom_baseline
            reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
            if oom:
                code = 137
            c.forced_reason = None
            terminated: Obj = {"exitCode": code, "reason": reason, "startedAt": started,
                               "finishedAt": now_rfc3339(), "containerID": c.container_id}
            message = c.termination_log.read_text(errors="replace")[:4096] \
                if c.termination_log.exists() else ""
            if message:
                terminated["message"] = message
            c.pid = 0
            _close_pidfd(c)
            c.ready = False
            c.state = {"terminated": terminated}
            sandbox.remove_cgroup(c.sandbox.cgroup)
            c.exited.set()
            policy = pod["spec"].get("restartPolicy", "Always")
            if c.init and code == 0:
                self.publish(run)
                return 0
            restart = not run.terminating and not run.status_reason and (
                policy == "Always" or (policy == "OnFailure" and code != 0))
            if not restart:
                self.publish(run)
                return code
            c.last_state = {"terminated": terminated}
            c.restart_count += 1
            if restart_delay <= 0:
                restart_delay = 10.0
                continue
            c.state = {"waiting": {"reason": "CrashLoopBackOff",
                                   "message": f"back-off {int(restart_delay)}s restarting failed "
                                              f"container={c.name} pod={run.name}_{run.namespace}"
                                              f"({run.uid})"}}
            self.publish(run)
            self.events.record(pod, "Warning", "BackOff", "Back-off restarting failed container "
                               f"{c.name} in pod {run.name}_{run.namespace}({run.uid})",
                               field_path=field_path)
            await wait_event(run.stop, restart_delay)
            restart_delay = min(restart_delay * 2, 300)
        return -1

    async def _watch_oom(self, c: ContainerRun) -> None:
        # cgroup v1 kills one process; a cgroup v2 node (Kubernetes >= 1.28) kills the
        # whole container, which is what drivers must expect, so do the same.
        assert c.sandbox is not None
        while True:
            await asyncio.sleep(0.1)
            if sandbox.oom_kills(c.sandbox.cgroup) > c.oom_baseline:
                c.forced_reason = "OOMKilled"
                sandbox.signal_process(c.pidfd, signal.SIGKILL)
                return

    async def _copy_log(self, stream: asyncio.StreamReader | None, path: Path,
                        name: str) -> None:
        """Write a container's output in the CRI log format the kubelet reads back."""
        if stream is None:
            return
        with path.open("ab") as handle:
            pending = b""
            while True:
                chunk = await stream.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
                for line in lines:
                    handle.write(stamp + b" " + name.encode() + b" F " + line + b"\n")
                if len(pending) > 16384:
                    handle.write(stamp + b" " + name.encode() + b" P " + pending + b"\n")
                    pending = b""
                handle.flush()
            if pending:
                stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
                handle.write(stamp + b" " + name.encode() + b" P " + pending + b"\n")

    async def _terminate(self, run: PodRun, grace: float, remove: bool) -> None:
        """Stop every container: SIGTERM, then SIGKILL once the grace period is over."""
        run.terminating = True
        run.grace_seconds = grace
        run.stop.set()
        pod = self._pod(run)
        running = [c for c in run.containers.values() if c.pid > 0 and not c.exited.is_set()]
        for c in running:
            if pod is not None:
                self.events.record(pod, "Normal", "Killing", f"Stopping container {c.name}",
                                   field_path=f"spec.containers{{{c.name}}}")
            sandbox.signal_process(c.pidfd, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for c in running:
            remaining = max(0.0, deadline - time.monotonic())
            if not await wait_event(c.exited, remaining):
                sandbox.signal_process(c.pidfd, signal.SIGKILL)
        if run.task is not None:
            await wait_event(run.finished, 5)
        if remove:
            await self._finish_removal(run)

    async def _finish_removal(self, run: PodRun) -> None:
        if run.task is not None and not run.task.done():
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run.task
        for c in run.containers.values():
            if c.pid > 0:
                sandbox.signal_process(c.pidfd, signal.SIGKILL)
            _close_pidfd(c)
            if c.sandbox is not None:
                sandbox.remove_cgroup(c.sandbox.cgroup)
        self.runs.pop((run.namespace, run.name), None)
        for target in run.tmpfs:
            storage.unmount(target)
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: shutil.rmtree(run.directory, ignore_errors=True))
        if self._pod(run) is not None:
            with contextlib.suppress(ApiError):
                self.store.remove("pods", run.namespace, run.name)

    async def shutdown(self) -> None:
        """Kill every sandbox and wait for the processes to go (server stop)."""
        self.closing = True
        for run in list(self.runs.values()):
            run.terminating = True
            run.stop.set()
            for c in run.containers.values():
                sandbox.signal_process(c.pidfd, signal.SIGKILL)
        for run in list(self.runs.values()):
            for c in run.containers.values():
                if c.process is not None and c.process.returncode is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(c.process.wait(), 5)
                _close_pidfd(c)
                if c.sandbox is not None:
                    sandbox.remove_cgroup(c.sandbox.cgroup)
            for target in run.tmpfs:
                storage.unmount(target)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        # Bounded: stopping must never hang on a task that ignores its cancellation.
        if tasks:
            await asyncio.wait(tasks, timeout=5)

