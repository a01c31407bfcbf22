"""Start and stop an emulated cluster, in the foreground or on a background thread.

`EmulatedCluster` is what tests, the demo and `runner-driver local-cluster` use: it
owns the event loop, the HTTP server, the node, the working directory and the
kubeconfig, and offers the fault-injection API and the benchmarks' measurement hooks
(when a pod became Running, a command run straight in a container's sandbox) as plain
thread-safe methods. Stopping it kills every sandbox and removes every temporary
directory it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web

from . import rbac
from .controllers import ControlPlane
from .execstream import EXEC_PROTOCOLS
from .faults import ExecCut, Faults, RequestFault
from .kubelet import Kubelet, NodeSettings
from .sandbox import bwrap_path, remove_cgroup_parent
from .server import ApiServer
from .store import Store

T = TypeVar("T")


class EmulatedCluster:
    """One emulated single-node cluster serving on 127.0.0.1.

    Use it as a context manager, or call `start()` and `stop()`.
    """

    def __init__(self, port: int = 0, node: NodeSettings | None = None,
                 bookmark_seconds: float = 60.0, history_limit: int = 2000,
                 exec_protocols: tuple[str, ...] = EXEC_PROTOCOLS) -> None:
        self._requested_port = port
        self.exec_protocols = exec_protocols
        self.node_settings = node or NodeSettings()
        self.bookmark_seconds = bookmark_seconds
        self.history_limit = history_limit
        self.port = 0
        self.workdir: Path | None = None
        self.faults = Faults()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._kubelet: Kubelet | None = None
        self._control: ControlPlane | None = None
        self._server: ApiServer | None = None
        self._store: Store | None = None

    @property
    def url(self) -> str:
        """The API server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    # Lifecycle

    async def start_async(self) -> None:
        """Start serving on the running event loop (the foreground `local-cluster` path)."""
        bwrap_path()
        self.workdir = Path(tempfile.mkdtemp(prefix="runner-driver-cluster-"))
        self._store = Store(self.history_limit)
        # Bind first so the kubelet knows the port it advertises to pods.
        site_socket = _bind(self._requested_port)
        self.port = site_socket.getsockname()[1]
        self._kubelet = Kubelet(self._store, self.node_settings, self.workdir, self.port)
        self._control = ControlPlane(self._store, self._kubelet)
        self._server = ApiServer(self._store, self._kubelet, self._control, self.faults,
                                 self.bookmark_seconds, self.exec_protocols)
        self._runner = web.AppRunner(self._server.app(), handle_signals=False,
                                     shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.SockSite(self._runner, site_socket)
        await site.start()
        self._kubelet.start()
        self._control.start()

    async def stop_async(self) -> None:
        """Stop serving, kill every sandbox and remove the working directory."""
        if self._server is not None:
            await self._server.close_streams()
        if self._kubelet is not None:
            await self._kubelet.shutdown()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        remove_cgroup_parent()

    def start(self) -> EmulatedCluster:
        """Start on a background thread and return once the API answers."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as error:  # handed to the starting thread
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=main, name="emulated-cluster", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop the background cluster and wait for it to be gone."""
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(self.stop_async(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop = None
        self._thread = None

    def __enter__(self) -> EmulatedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, function: Callable[[], T]) -> T:
        """Run a function on the cluster's loop and return its result (thread-safe)."""
        if self._loop is None:
            return function()

        async def run() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    # Access

    def kubeconfig(self, namespace: str = "default",
                   service_account: str = "") -> dict[str, Any]:
        """A kubeconfig document pointing at this cluster.

        By default its user is the unrestricted admin (like a member of
        system:masters); with `service_account`, it is that service account of
        `namespace` (`system:serviceaccount:NAMESPACE:NAME`), allowed only what its
        RoleBindings grant. The token is valid while the service account exists.
        """
        user, token = "emulated-admin", rbac.ADMIN_TOKEN
        if service_account:
            user = f"{namespace}-{service_account}"
            token = rbac.service_account_token(namespace, service_account)
        return {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "emulated", "cluster": {"server": self.url}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "emulated", "context": {"cluster": "emulated",
                                                          "user": user,
                                                          "namespace": namespace}}],
            "current-context": "emulated",
        }

    def write_kubeconfig(self, path: Path, namespace: str = "default",
                         service_account: str = "") -> Path:
        """Write the kubeconfig (see `kubeconfig`) atomically (a reader never sees half a file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(yaml.safe_dump(self.kubeconfig(namespace, service_account),
                                          sort_keys=False))
        partial.chmod(0o600)
        partial.replace(path)
        return path

    # Faults

    def fail_requests(self, method: str, path: str, count: int = 1, status: int = 503,
                      retry_after: int | None = None, reset: bool = False,
                      latency: float = 0.0) -> None:
        """Fail the next `count` requests matching method (or `*`) and a path regex."""
        fault = RequestFault(method, path, count, None if reset else status, retry_after,
                             reset, latency)
        self.call(lambda: self.faults.add_request_fault(fault))

    def add_latency(self, seconds: float, method: str = "*", path: str = ".*",
                    count: int = 1_000_000) -> None:
        """Delay matching requests without failing them."""
        fault = RequestFault(method, path, count, None, None, False, seconds)
        self.call(lambda: self.faults.add_request_fault(fault))

    def cut_exec(self, after_bytes: int | None = None, after_seconds: float | None = None,
                 count: int = 1) -> None:
        """Drop the next `count` exec websockets abruptly after some output or time."""
        cut = ExecCut(count, after_bytes, after_seconds)
        self.call(lambda: self.faults.add_exec_cut(cut))

    def clear_faults(self) -> None:
        """Disarm all faults."""
        self.call(self.faults.clear)

    def evict(self, namespace: str, name: str) -> None:
        """Evict a pod (DisruptionTarget condition, then graceful deletion)."""
        assert self._control is not None
        control = self._control
        self.call(lambda: control.evict(namespace, name))

    def oom_kill(self, namespace: str, name: str, container: str) -> None:
        """Kill a container as the OOM killer would (reason OOMKilled, exit code 137)."""
        assert self._kubelet is not None
        kubelet = self._kubelet
        self.call(lambda: kubelet.oom_kill(namespace, name, container))

    def set_node_ready(self, ready: bool) -> None:
        """Take the node NotReady, or make it Ready again."""
        assert self._control is not None
        control = self._control
        self.call(lambda: control.set_node_ready(ready))

    def compact(self) -> int:
        """Drop watch history so older resource versions get 410 Gone."""
        assert self._store is not None
        store = self._store
        return self.call(store.compact)

    def authorization_counts(self, user: str) -> dict[str, int]:
        """Authorization checks so far for `user` (e.g. system:serviceaccount:NS:NAME), per
        `verb resource`: what that identity needed, websocket exec's `create` included."""
        return self.call(lambda: self.faults.authorization_counts(user))

    def request_counts(self) -> dict[str, int]:
        """Requests so far per `verb resource`."""
        return self.call(self.faults.counts)

    def running_at(self, namespace: str, name: str) -> float | None:
        """When the pod's phase first became Running (time.time()), or None if it never did.

        Remembered after the pod is deleted (for the most recent pods), so it can be read
        once a job is over.
        """
        assert self._kubelet is not None
        kubelet = self._kubelet
        return self.call(lambda: kubelet.running_times.get((namespace, name)))

    def run_in_sandbox(self, namespace: str, pod: str, container: str, argv: list[str],
                       stdin: bytes = b"", timeout: float = 600.0) -> tuple[int, bytes, float]:
        """Run a command in a running container as an exec would, without HTTP or websocket.

        Returns the exit code, stdout followed by stderr, and the seconds the process
        took from spawn to exit (measured on the cluster's loop). A benchmark's floor:
        what the same command costs in the same sandbox with no API in between.

        Raises:
            ApiError: the pod or a running container of that name is missing.
        """
        assert self._kubelet is not None
        if self._loop is None:
            raise RuntimeError("run_in_sandbox needs a cluster started with start()")
        future = asyncio.run_coroutine_threadsafe(
            self._kubelet.run_in_sandbox(namespace, pod, container, argv, stdin), self._loop)
        return future.result(timeout)

    def sandbox_pids(self) -> list[int]:
        """Host pids of every container's PID 1 still known to the node."""
        assert self._kubelet is not None
        kubelet = self._kubelet
        return self.call(lambda: [c.pid for run in kubelet.runs.values()
                                  for c in run.containers.values() if c.pid > 0])


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve_forever(kubeconfig: Path, port: int, node: NodeSettings | None = None,
                        announce: Callable[[str], None] = print) -> None:
    """Run a cluster in the foreground until SIGINT or SIGTERM, then clean up."""
    cluster = EmulatedCluster(port=port, node=node)
    await cluster.start_async()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        cluster.write_kubeconfig(kubeconfig)
        announce(f"emulated cluster serving on {cluster.url}; kubeconfig written to "
                 f"{kubeconfig}; stop with Ctrl-C")
        await stop.wait()
    finally:
        await cluster.stop_async()
        announce("emulated cluster stopped; sandboxes killed and temporary files removed")
