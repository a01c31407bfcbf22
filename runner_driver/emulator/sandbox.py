"""Real container processes: bubblewrap sandboxes with their own root, pid and uts namespaces.

A container is a host directory (its writable root filesystem) plus bind mounts for
its volumes, run by `bwrap` with the command as PID 1 of a new pid namespace, so a
shell that does not trap SIGTERM ignores it exactly as in a real container. An exec
is a second `bwrap` over the same directories that joins the container's pid
namespace, so `ps` and `kill` inside see the container's processes. Memory limits
are enforced with a cgroup (v1 memory controller) when the host lets us create one.

This module must not know about pods or the API; the kubelet decides what to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .images import MissingToolError, busybox_path

# The capabilities container runtimes (containerd, CRI-O) grant by default.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)
MEMORY_CGROUP_ROOT = Path("/sys/fs/cgroup/memory")


@dataclass(frozen=True)
class Mount:
    """One bind mount from a host path into the sandbox."""

    source: str
    destination: str
    read_only: bool


@dataclass(frozen=True)
class SandboxSpec:
    """Everything that makes up one container's view of the world."""

    rootfs: Path
    mounts: tuple[Mount, ...]
    hostname: str
    capabilities: tuple[str, ...]
    cgroup: Path | None


@cache
def bwrap_path() -> str:
    """Find bubblewrap and prove it can create a sandbox here.

    Raises:
        MissingToolError: bwrap is missing or cannot create namespaces.
    """
    path = shutil.which("bwrap")
    if path is None:
        raise MissingToolError("starting the emulated cluster: bubblewrap (bwrap) not found; "
                               "install it with: apt-get install bubblewrap")
    busybox_path()
    probe = subprocess.run([path, "--unshare-pid", "--unshare-uts", "--ro-bind", "/", "/",
                            "--proc", "/proc", "--dev", "/dev", "true"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise MissingToolError("starting the emulated cluster: bubblewrap cannot create a "
                               f"sandbox here: {probe.stderr.strip()}")
    return path


def memory_cgroup(name: str, limit_bytes: int) -> Path | None:
    """Create a memory cgroup with a hard limit, or return None where the host forbids it."""
    root = MEMORY_CGROUP_ROOT / "runner-driver-emulator"  # removed by remove_cgroup_parent
    try:
        root.mkdir(exist_ok=True)
        group = root / name
        group.mkdir(exist_ok=True)
        (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
        with contextlib.suppress(OSError):
            (group / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
    except OSError:
        return None
    return group


def oom_kills(group: Path | None) -> int:
    """How many processes the kernel OOM-killed in a cgroup so far."""
    if group is None:
        return 0
    try:
        for line in (group / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def remove_cgroup_parent() -> None:
    """Remove the emulator's parent cgroup once no emulator on this host uses it."""
    with contextlib.suppress(OSError):
        (MEMORY_CGROUP_ROOT / "runner-driver-emulator").rmdir()


def remove_cgroup(group: Path | None) -> None:
    """Remove a cgroup once its processes are gone (best effort, bounded)."""
    if group is None:
        return
    for _ in range(50):
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            with contextlib.suppress(OSError):
                for pid in (group / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.02)


def _common_args(spec: SandboxSpec, env: dict[str, str], cwd: str) -> list[str]:
    args = ["--unshare-uts", "--hostname", spec.hostname, "--bind", str(spec.rootfs), "/"]
    for mount in spec.mounts:
        args += ["--ro-bind" if mount.read_only else "--bind", mount.source, mount.destination]
    args += ["--proc", "/proc", "--dev", "/dev", "--clearenv"]
    for key, value in env.items():
        args += ["--setenv", key, value]
    args += ["--chdir", cwd or "/", "--cap-drop", "ALL"]
    for cap in spec.capabilities:
        args += ["--cap-add", cap]
    return args


def _in_cgroup(spec: SandboxSpec, argv: list[str]) -> list[str]:
    if spec.cgroup is None:
        return argv
    # The process joins the cgroup before it execs bwrap, so nothing escapes the limit.
    return [str(busybox_path()), "sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"',
            str(spec.cgroup), *argv]


async def start_container(spec: SandboxSpec, argv: list[str], env: dict[str, str], cwd: str,
                          termination_log: Path) -> tuple[asyncio.subprocess.Process, int, int]:
    """Start a container's main process as PID 1 of a new pid namespace.

    Returns the bwrap process (its exit status is the container's), the host pid of
    the container's PID 1, through which execs join the namespace, and a pidfd for it
    (-1 when there is none), which the caller closes.
    """
    info_read, info_write = os.pipe()
    cmd = _in_cgroup(spec, [
        bwrap_path(), "--unshare-pid", "--as-pid-1", "--unshare-ipc", "--die-with-parent",
        *_common_args(spec, env, cwd),
        "--bind", str(termination_log), "/dev/termination-log",
        "--info-fd", str(info_write), "--", *argv])
    try:
        process = await asyncio.create_subprocess_exec(
            *cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(info_write,), start_new_session=True)
    finally:
        os.close(info_write)
    loop = asyncio.get_running_loop()
    try:
        raw = await loop.run_in_executor(None, _read_all, info_read)
    finally:
        os.close(info_read)
    try:
        child_pid = int(json.loads(raw)["child-pid"]) if raw.strip() else 0
    except (ValueError, KeyError):
        child_pid = 0
    return process, child_pid, open_pidfd(child_pid)


# Container PID 1s are bwrap's children, not ours: we never reap them, and the host
# reuses their pids once they exit (pid_max is often 32768, and a busy node cycles
# through that in minutes). A pid signalled after its exit can reach an unrelated
# process, such as another cluster's exec, so signals go through a pidfd, which
# always names the process it was opened for.


def open_pidfd(pid: int) -> int:
    """A pidfd for a live host pid, or -1 when there is none (gone, or an old kernel)."""
    if pid <= 0:
        return -1
    try:
        return os.pidfd_open(pid)
    except OSError:
        return -1


def signal_process(pidfd: int, signum: int) -> None:
    """Send a signal through a pidfd, ignoring processes that are already gone."""
    if pidfd >= 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            signal.pidfd_send_signal(pidfd, signum)


def _check_alive(pidfd: int) -> None:
    """Raise ProcessLookupError if the process a pidfd names has exited."""
    if pidfd >= 0:
        signal.pidfd_send_signal(pidfd, 0)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def start_exec(spec: SandboxSpec, container_pid: int, argv: list[str],
                     env: dict[str, str], cwd: str, with_stdin: bool,
                     pidfd: int = -1) -> asyncio.subprocess.Process:
    """Run a command inside a running container (its files and its pid namespace).

    `pidfd` names the container's PID 1; with it, a pid the host has since given to
    another process is never joined.

    Raises:
        ProcessLookupError: the container's PID 1 is gone.
    """
    stdin = subprocess.PIPE if with_stdin else subprocess.DEVNULL
    if os.geteuid() != 0:
        # Unprivileged, bwrap's namespaces belong to a user namespace it created, and
        # bwrap joins a pid namespace before a user namespace, which the kernel then
        # refuses. nsenter enters the user namespace first. The container's uts and ipc
        # namespaces stay out of reach, so such an exec sees the host's hostname.
        workdir = host_path(spec, cwd or "/") or spec.rootfs
        nsenter = shutil.which("nsenter")
        if nsenter is None:
            raise FileNotFoundError("nsenter (util-linux) is needed to exec without root")
        pid_ns = os.open(f"/proc/{container_pid}/ns/pid", os.O_RDONLY)
        try:
            _check_alive(pidfd)  # after the open: the namespace is the container's
            # The user namespace that owns the pid namespace, which bwrap may have
            # nested below the one its PID 1 runs in (NS_GET_USERNS).
            owner = fcntl.ioctl(pid_ns, 0xB701)
        finally:
            os.close(pid_ns)
        proc = f"/proc/{container_pid}"
        try:
            return await asyncio.create_subprocess_exec(
                nsenter, f"--user=/proc/self/fd/{owner}", f"--pid={proc}/ns/pid",
                f"--mount={proc}/ns/mnt", "--preserve-credentials", f"--root={proc}/root",
                f"--wd={workdir}", "--", *argv, env=env, stdin=stdin, pass_fds=(owner,),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        finally:
            os.close(owner)
    ns_fd = os.open(f"/proc/{container_pid}/ns/pid", os.O_RDONLY)
    try:
        _check_alive(pidfd)  # after the open: the namespace is the container's
        cmd = _in_cgroup(spec, [
            bwrap_path(), "--pidns", str(ns_fd), "--die-with-parent",
            *_common_args(spec, env, cwd), "--", *argv])
        return await asyncio.create_subprocess_exec(
            *cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(ns_fd,), start_new_session=True)
    finally:
        os.close(ns_fd)


def resolve_command(spec: SandboxSpec, command: str, path_env: str) -> Path | None:
    """Find the host file a command names inside a sandbox (PATH lookup, symlinks, mounts).

    This lets the emulator refuse a missing executable the way a container runtime
    does, before starting anything.
    """
    candidates = [command] if "/" in command else \
        [f"{d.rstrip('/')}/{command}" for d in path_env.split(":") if d]
    for candidate in candidates:
        host = host_path(spec, candidate)
        if host is not None and host.is_file() and os.access(host, os.X_OK):
            return host
    return None


def host_path(spec: SandboxSpec, path: str, depth: int = 0) -> Path | None:
    """The host path behind a path inside the sandbox, following symlinks as the kernel would."""
    if depth > 40:
        return None
    parts = [p for p in path.split("/") if p and p != "."]
    current = "/"
    for index, part in enumerate(parts):
        current = "/" + "/".join(filter(None, [*current.strip("/").split("/"), part]))
        host = _map(spec, current)
        if host.is_symlink():
            target = os.readlink(host)
            parent = current.rsplit("/", 1)[0] or "/"
            joined = target if target.startswith("/") else f"{parent}/{target}"
            rest = "/".join(parts[index + 1:])
            return host_path(spec, os.path.normpath(f"{joined}/{rest}" if rest else joined),
                              depth + 1)
    return _map(spec, current)


def _map(spec: SandboxSpec, path: str) -> Path:
    best: Mount | None = None
    for mount in spec.mounts:
        dest = mount.destination.rstrip("/") or "/"
        if (path == dest or path.startswith(dest + "/")) and (
                best is None or len(dest) > len(best.destination.rstrip("/"))):
            best = mount
    if best is None:
        return spec.rootfs / path.lstrip("/")
    rest = path[len(best.destination.rstrip("/")):].lstrip("/")
    return Path(best.source) / rest if rest else Path(best.source)

