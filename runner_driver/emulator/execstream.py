"""The `pods/exec` websocket endpoint: the remote-command protocol a real API server speaks.

It negotiates `v5.channel.k8s.io` (or `v4.channel.k8s.io`), runs the command inside the
container's sandbox, streams stdout and stderr as binary frames of one channel byte
plus payload, feeds stdin from channel 0 (ended by the v5 CLOSE frame `[255, 0]`), and
reports the exit status as a `metav1.Status` on channel 3. Armed exec cuts drop the
connection mid-stream. Output is read in bounded chunks and sent with backpressure, so
any amount of output passes in constant memory. It holds no cluster state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from typing import Any

from aiohttp import WSMsgType, web

from .faults import Faults
from .kubelet import Kubelet
from .sandbox import host_path, resolve_command, start_exec
from .store import ApiError, Obj

CHANNEL_STDIN, CHANNEL_STDOUT, CHANNEL_STDERR, CHANNEL_ERROR, CHANNEL_RESIZE = 0, 1, 2, 3, 4
CHANNEL_CLOSE = 255
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
CHUNK = 32768


class ExecEndpoint:
    """Serves exec sessions; `streams` is the server's set of open long-lived responses."""

    def __init__(self, kubelet: Kubelet, faults: Faults, streams: set[web.StreamResponse],
                 protocols: tuple[str, ...] = EXEC_PROTOCOLS) -> None:
        self.kubelet = kubelet
        self.faults = faults
        self._streams = streams
        # Newest first; ("v4.channel.k8s.io",) is an API server before Kubernetes 1.30,
        # where stdin can only end by closing the whole connection.
        self.protocols = protocols

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one `pods/exec` request: validate, upgrade, run, stream, report."""
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        upgrade = request.headers.get("Upgrade", "").lower()
        if upgrade.startswith("spdy"):
            raise ApiError(400, "BadRequest", "SPDY streams are not supported by the emulated "
                           "cluster; use the websocket protocols v5.channel.k8s.io or "
                           "v4.channel.k8s.io")
        if upgrade != "websocket":
            raise ApiError(400, "BadRequest", "Upgrade request required")
        query = request.query
        command = query.getall("command", [])
        if not command:
            raise ApiError(400, "BadRequest", "you must specify at least 1 command")
        flag = {k: query.get(k) in ("true", "1") for k in ("stdin", "stdout", "stderr", "tty")}
        if not (flag["stdin"] or flag["stdout"] or flag["stderr"]):
            raise ApiError(400, "BadRequest",
                           "you must specify at least 1 of stdin, stdout, stderr")
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if not any(p in self.protocols for p in offered):
            raise ApiError(400, "BadRequest", "the emulated cluster speaks only the "
                           "v5.channel.k8s.io and v4.channel.k8s.io exec subprotocols; "
                           f"the client offered {offered}")
        _, container = self.kubelet.container_for(namespace, name, query.get("container"),
                                                  "exec")
        if request.method != "GET":
            # golang.org/x/net/websocket (under wsstream) refuses any other method this
            # way, after the pod lookup; only SPDY upgrades may be POSTs.
            return web.Response(status=405, text="bad method")
        # A v5 offer is terminated by the API server itself, which speaks only v5 there,
        # whatever the client's order; otherwise the kubelet's v4 answers.
        chosen = next(p for p in self.protocols if p in offered)
        ws = web.WebSocketResponse(protocols=(chosen,), autoping=True, max_msg_size=0,
                                   compress=False)
        await ws.prepare(request)
        self._streams.add(ws)
        v5 = ws.ws_protocol == "v5.channel.k8s.io"
        assert container.sandbox is not None
        try:
            await self._run(ws, v5, container, command, flag)
        finally:
            self._streams.discard(ws)
        return ws

    async def _run(self, ws: web.WebSocketResponse, v5: bool, container: Any,
                        command: list[str], flag: dict[str, bool]) -> None:
        cut = self.faults.take_exec_cut()
        started = time.monotonic()
        sent_bytes = 0
        closed_by_fault = False

        async def send(channel: int, data: bytes) -> None:
            nonlocal sent_bytes, closed_by_fault
            if closed_by_fault:
                return
            if cut is not None and channel in (CHANNEL_STDOUT, CHANNEL_STDERR):
                if cut.after_bytes is not None and sent_bytes + len(data) > cut.after_bytes:
                    keep = max(0, cut.after_bytes - sent_bytes)
                    if keep:
                        await ws.send_bytes(bytes([channel]) + data[:keep])
                    sent_bytes += keep
                    await drop(ws)
                    closed_by_fault = True
                    return
                if cut.after_seconds is not None \
                        and time.monotonic() - started > cut.after_seconds:
                    await drop(ws)
                    closed_by_fault = True
                    return
            await ws.send_bytes(bytes([channel]) + data)
            if channel in (CHANNEL_STDOUT, CHANNEL_STDERR):
                sent_bytes += len(data)

        # The API server first sends an empty frame on the lowest writable channel
        # (the error channel when neither stdout nor stderr was asked for).
        await send(CHANNEL_STDOUT if flag["stdout"] else
                   CHANNEL_STDERR if flag["stderr"] else CHANNEL_ERROR, b"")
        if resolve_command(container.sandbox, command[0], container.env.get("PATH", "")) is None:
            # What containerd's CRI exec returns, wrapped by the kubelet's streaming
            # server ("error executing command in container") in apierrors.NewInternalError.
            if "/" not in command[0]:
                lookup = "executable file not found in $PATH"
            elif (host := host_path(container.sandbox, command[0])) and host.exists():
                lookup = "permission denied"
            else:
                lookup = f"stat {command[0]}: no such file or directory"
            cause = (f"error executing command in container: failed to exec in container: "
                     f'failed to start exec "{secrets.token_hex(32)}": OCI runtime exec '
                     f"failed: exec failed: unable to start container process: exec: "
                     f'"{command[0]}": {lookup}: unknown')
            await send(CHANNEL_ERROR, json.dumps({
                "metadata": {}, "status": "Failure",
                "message": f"Internal error occurred: {cause}",
                "reason": "InternalError", "code": 500,
                "details": {"causes": [{"message": cause}]}}).encode())
            await ws.close()
            return
        try:
            process = await start_exec(container.sandbox, container.pid, command, container.env,
                                       container.cwd, with_stdin=flag["stdin"],
                                       pidfd=container.pidfd)
        except (ProcessLookupError, FileNotFoundError, PermissionError) as error:
            message = f"error executing command in container: container is not running: {error}"
            await send(CHANNEL_ERROR, json.dumps({
                "metadata": {}, "status": "Failure", "message": message,
                "reason": "InternalError", "code": 500}).encode())
            await ws.close()
            return

        async def pump(stream: asyncio.StreamReader | None, channel: int, wanted: bool) -> None:
            if stream is None:
                return
            while True:
                chunk = await stream.read(CHUNK)
                if not chunk:
                    return
                if wanted and not ws.closed:
                    try:
                        await send(channel, chunk)
                    except (ConnectionResetError, RuntimeError):
                        # The client went away: keep draining so the process is not
                        # blocked on a full pipe, as a runtime would.
                        wanted = False

        async def feed() -> None:
            assert process.stdin is not None
            async for message in ws:
                if message.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    continue
                data = message.data if isinstance(message.data, bytes) else message.data.encode()
                if not data:
                    continue
                channel, payload = data[0], data[1:]
                if channel == CHANNEL_STDIN and payload and not process.stdin.is_closing():
                    process.stdin.write(payload)
                    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                        await process.stdin.drain()
                elif channel == CHANNEL_CLOSE and v5 and payload[:1] == bytes([CHANNEL_STDIN]):
                    process.stdin.close()
            # The connection ended: stdin ends with it.
            if not process.stdin.is_closing():
                process.stdin.close()

        feeder = asyncio.ensure_future(feed()) if flag["stdin"] else None
        reader = None if feeder else asyncio.ensure_future(self._drain_client(ws))
        await asyncio.gather(pump(process.stdout, CHANNEL_STDOUT, flag["stdout"] or flag["tty"]),
                             pump(process.stderr, CHANNEL_STDERR, flag["stderr"]))
        code = await process.wait()
        if code < 0:
            code = 128 - code
        if not ws.closed and not closed_by_fault:
            if code == 0:
                status: Obj = {"metadata": {}, "status": "Success"}
            else:
                status = {"metadata": {}, "status": "Failure",
                          "message": f"command terminated with non-zero exit code: error "
                                     f"executing command [{' '.join(command)}], exit code {code}",
                          "reason": "NonZeroExitCode",
                          "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await ws.send_bytes(bytes([CHANNEL_ERROR]) + json.dumps(status).encode())
                await ws.close()
        for task in (feeder, reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    @staticmethod
    async def _drain_client(ws: web.WebSocketResponse) -> None:
        async for _ in ws:
            pass


async def drop(ws: web.WebSocketResponse) -> None:
    """Drop a websocket abruptly, as a load balancer or a restarting API server does.

    No close frame and no status are sent: the client sees a dead connection.
    """
    transport = ws._req.transport if ws._req is not None else None
    if transport is not None:
        transport.abort()
