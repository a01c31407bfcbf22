"""Local ephemeral storage: a pod's disk use, and when the kubelet evicts the pod for it.

The kubelet's eviction manager measures each running pod's local ephemeral volumes
(disk-backed emptyDirs and configMaps) and each container's writable layer and logs,
the way `du` does, and evicts a pod whose emptyDir outgrows its `sizeLimit`, whose
total outgrows the sum of its containers' `ephemeral-storage` limits, or one of whose
containers outgrows its own limit: checked in that order, first match wins. A
memory-backed emptyDir is a tmpfs sized like the kubelet sizes it, so a write past its
size fails with ENOSPC and it never needs evicting. Drivers see these evictions as a
Failed pod with reason `Evicted` and the kubelet's message, so both are reproduced.

Measuring walks directories, so it runs off the event loop; this module decides and
mounts, the kubelet records and kills.

Taken from kubernetes/kubernetes (v1.34):
- pkg/kubelet/eviction/eviction_manager.go: `localStorageEviction` and the
  `emptyDirLimitEviction`, `podEphemeralStorageLimitEviction` and
  `containerEphemeralStorageLimitEviction` checks (`used > limit`, limits of 0 ignored,
  a container's use is its logs plus its writable layer); `evictPod` with
  `immediateEvictionGracePeriodSeconds` (1) and no pod condition for these evictions.
- pkg/kubelet/eviction/helpers.go: the messages, each ending in ". ".
- staging/src/k8s.io/component-helpers/resource/helpers.go: `PodLimits`.
- pkg/volume/util/util.go: `IsLocalEphemeralVolume` (emptyDir of the default medium,
  configMap); pkg/volume/util/fs/fs.go: `DiskUsage` (st_blocks * 512, one filesystem,
  hard links once).
- pkg/volume/emptydir/empty_dir.go: `calculateEmptyDirMemorySize` and the tmpfs
  `size=<bytes>` mount option.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from . import quota
from .selectors import SelectorError

log = logging.getLogger("runner_driver.emulator")

Obj = dict[str, Any]
# The grace period of an eviction for a local storage limit (eviction_manager.go).
EVICTION_GRACE_SECONDS = 1.0
EMPTY_DIR_MESSAGE = 'Usage of EmptyDir volume "{volume}" exceeds the limit "{limit}". '
POD_MESSAGE = "Pod ephemeral local storage usage exceeds the total limit of containers {limit}. "
CONTAINER_MESSAGE = 'Container {container} exceeded its local ephemeral storage limit "{limit}". '
_MNT_DETACH = 2


@dataclass(frozen=True)
class ContainerDisk:
    """Where a container's writable layer and log are, and what its image put there."""

    rootfs: Path
    image_bytes: int
    log: Path


@dataclass(frozen=True)
class Plan:
    """The host paths to measure for one pod."""

    volumes: Mapping[str, Path]
    containers: Mapping[str, ContainerDisk]


@dataclass
class Usage:
    """Bytes used by each local ephemeral volume and each container."""

    volumes: dict[str, int] = field(default_factory=dict)
    containers: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """The pod's ephemeral storage use: its volumes and containers together."""
        return sum(self.volumes.values()) + sum(self.containers.values())


def _quantity(raw: object) -> quota.Quantity | None:
    try:
        return quota.Quantity.parse(raw)
    except SelectorError:
        return None


def _size_limit(volume: Obj) -> quota.Quantity | None:
    limit = _quantity((volume.get("emptyDir") or {}).get("sizeLimit"))
    return limit if limit is not None and limit.value > 0 else None


def _container_limit(container: Obj) -> quota.Quantity | None:
    raw = ((container.get("resources") or {}).get("limits") or {}).get("ephemeral-storage")
    limit = _quantity(raw) if raw is not None else None
    return limit if limit is not None and int(limit.value) != 0 else None


def plan(pod: Obj, directory: Path, containers: Mapping[str, ContainerDisk]) -> Plan | None:
    """What to measure for a pod, or None when no limit applies to it (nothing to do)."""
    spec = pod["spec"]
    volumes = spec.get("volumes") or []
    limited = any("emptyDir" in v and _medium(v) == "" and _size_limit(v) for v in volumes) \
        or "ephemeral-storage" in quota.pod_limits(spec)
    if not limited:
        return None
    local = {v["name"]: directory / "volumes" / v["name"] for v in volumes
             if ("emptyDir" in v and _medium(v) == "") or "configMap" in v}
    return Plan(local, dict(containers))


def _medium(volume: Obj) -> str:
    return str((volume.get("emptyDir") or {}).get("medium") or "")


def measure(what: Plan) -> Usage:
    """Measure a pod's disk use now (blocking: run it off the event loop)."""
    usage = Usage()
    for name, path in what.volumes.items():
        usage.volumes[name] = disk_usage(path)
    for name, disk in what.containers.items():
        layer = max(0, disk_usage(disk.rootfs) - disk.image_bytes)
        usage.containers[name] = layer + disk_usage(disk.log)
    return usage


def disk_usage(path: Path) -> int:
    """Bytes allocated under `path` as the kubelet's `DiskUsage` counts them (like `du -x`)."""
    try:
        top = path.stat(follow_symlinks=False)
    except OSError:
        return 0
    total = top.st_blocks * 512
    seen = {top.st_ino}  # inodes with more than one link, counted once
    pending = [str(path)] if stat.S_ISDIR(top.st_mode) else []
    while pending:
        with contextlib.suppress(OSError), os.scandir(pending.pop()) as entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # removed since the directory was read
                if info.st_dev != top.st_dev:
                    continue  # another filesystem (a mount)
                if info.st_nlink <= 1 or info.st_ino not in seen:
                    seen.add(info.st_ino)
                    total += info.st_blocks * 512
                if stat.S_ISDIR(info.st_mode):
                    pending.append(entry.path)
    return total


def violation(pod: Obj, usage: Usage) -> str | None:
    """The eviction message for the first local storage limit a pod exceeds, if any."""
    spec = pod["spec"]
    for volume in spec.get("volumes") or []:
        limit = _size_limit(volume) if "emptyDir" in volume else None
        used = usage.volumes.get(volume["name"])
        if limit is not None and used is not None and used > limit.value:
            return EMPTY_DIR_MESSAGE.format(volume=volume["name"], limit=limit)
    pod_limit = quota.pod_limits(spec).get("ephemeral-storage")
    if pod_limit is not None and usage.total > pod_limit.value:
        return POD_MESSAGE.format(limit=pod_limit)
    for container in spec.get("containers") or []:
        limit = _container_limit(container)
        used = usage.containers.get(container["name"])
        if limit is not None and used is not None and used > limit.value:
            return CONTAINER_MESSAGE.format(container=container["name"], limit=limit)
    return None


def memory_volume_size(pod: Obj, volume: Obj, node_memory: str) -> int:
    """The tmpfs size of a memory-backed emptyDir: the node's allocatable memory, or
    the pod's memory limit (when every container has one), or the volume's sizeLimit,
    whichever is smallest."""
    size = _quantity(node_memory)
    result = int(size.value) if size is not None else 0
    spec = pod["spec"]
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    if all("memory" in ((c.get("resources") or {}).get("limits") or {}) for c in containers):
        pod_memory = quota.pod_limits(spec).get("memory")
        if pod_memory is not None and 0 < pod_memory.value <= result:
            result = int(pod_memory.value)
    limit = _size_limit(volume)
    if limit is not None and limit.value <= result:
        result = int(limit.value)
    return result


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


def mount_tmpfs(target: Path, size_bytes: int) -> bool:
    """Mount a tmpfs of `size_bytes` on `target`, as the kubelet does for medium Memory.

    Returns False (and leaves a plain directory) where the host forbids mounts, as it
    does for an emulator not running as root.
    """
    libc = _libc()
    if libc is None or os.geteuid() != 0:
        return False
    if os.path.ismount(target):
        return True  # set up already (volume setup is retried while a source is missing)
    options = f"size={size_bytes}".encode()
    if libc.mount(b"tmpfs", str(target).encode(), b"tmpfs", 0, options) != 0:
        log.warning("cannot mount a tmpfs on %s: %s", target, os.strerror(ctypes.get_errno()))
        return False
    return True


def unmount(target: Path) -> None:
    """Detach a tmpfs mounted by `mount_tmpfs` (lazily: a process may still hold it)."""
    libc = _libc()
    if libc is not None and os.path.ismount(target):
        libc.umount2(str(target).encode(), _MNT_DETACH)
