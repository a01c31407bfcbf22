"""Commands run in a container over the exec websocket, their output passed on as it comes.

The exec handshake is bounded (the client would wait for ever on a server that never
answers), frames are read here rather than by the client (which copies and keeps all
output), and a connection that carries nothing for too long is given up as transient.
What the command's exit code means is the caller's business: this module only reads
it from the final Status.
"""

from __future__ import annotations

import json
import os
import select
import ssl
import time
from collections.abc import Callable
from contextlib import closing
from typing import Any

import websocket

from .. import cancel
from ..errors import ClusterError
from . import rest
from .errors import api_error, is_transient

STDIN_CHUNK = 32 * 1024
CHANNEL_STDOUT, CHANNEL_STDERR, CHANNEL_ERROR = 1, 2, 3
PUMP_TICK_SECONDS = 1.0

Sink = Callable[[memoryview], object]  # a view into the frame: copy it to keep it


def exec_stream(api: rest.Rest, namespace: str, request_timeout: float, pod: str, container: str,
                argv: list[str], stdin: bytes | None, out: Sink, err: Sink,
                stall_seconds: float, opened: rest.ExecSocket | None = None) -> bytes:
    """Run `argv` in the container, `stdin` sent first, output passed to the sinks.

    With `opened` (an exec of this container opened earlier with stdin, see `open_exec`),
    `argv` is not sent: `stdin` goes to the command already running there. The session
    is closed either way.

    Returns the exec's final status (JSON bytes; empty when the connection ended
    without one).

    Raises:
        ClusterError: the exec could not start, or the connection failed or carried
            nothing for `stall_seconds` (then `transient`).
    """
    what = f"running a command in container {container} of pod {namespace}/{pod}"
    if opened is None:
        opened = open_exec(api, namespace, request_timeout, pod, container, argv,
                           stdin=stdin is not None)
    with closing(opened) as session:
        try:
            for offset in range(0, len(stdin or b""), STDIN_CHUNK):
                session.write_stdin((stdin or b"")[offset:offset + STDIN_CHUNK])
            return _pump(session, out, err, deadline=None, stall=stall_seconds)
        except _Stalled as error:
            raise ClusterError(f"{what}: the exec connection carried nothing for "
                               f"{error.seconds:g}s", transient=True) from error
        except (OSError, websocket.WebSocketException) as error:
            raise ClusterError(f"{what}: the exec connection failed: {error}",
                               transient=True) from error


def run_quiet(api: rest.Rest, namespace: str, request_timeout: float, pod: str, container: str,
              argv: list[str], timeout: float) -> tuple[int, bytes]:
    """Run a short command without stdin; its exit code and combined output."""
    what = f"running a command in container {container} of pod {namespace}/{pod}"
    output = bytearray()
    with closing(open_exec(api, namespace, request_timeout, pod, container, argv,
                           stdin=False)) as session:
        try:
            status = _pump(session, output.extend, output.extend,
                           deadline=time.monotonic() + timeout, stall=None)
        except (OSError, websocket.WebSocketException) as error:
            raise ClusterError(f"{what}: the exec connection failed: {error}",
                               transient=True) from error
    return exit_code(what, status), bytes(output)


def open_exec(api: rest.Rest, namespace: str, request_timeout: float, pod: str,
              container: str, argv: list[str], stdin: bool) -> rest.ExecSocket:
    """Start `argv` in the container and return its open exec session (the caller's to
    close), the handshake bounded by `request_timeout`.

    Raises:
        ClusterError: the exec could not start (the API server's message kept).
    """
    what = f"starting a command in container {container} of pod {namespace}/{pod}"
    try:
        session = api.exec_socket(
            rest.pods(namespace, pod) + "/exec", {"namespace": namespace, "name": pod},
            [("command", argv), ("container", container), ("stdin", _flag(stdin)),
             ("stdout", "true"), ("stderr", "true"), ("tty", "false")], request_timeout)
        session.sock.settimeout(request_timeout)
    except Exception as error:
        raise api_error(what, error) from error
    return session


def usable(session: rest.ExecSocket) -> bool:
    """Whether an exec opened earlier still waits for its stdin: connected, and nothing
    but the API server's opening frame (a channel byte and no data) arrived on it.
    Output, a status or a close means its command has ended; it never blocks."""
    ws = session.sock
    sock = ws.sock
    if sock is None:
        return False
    try:
        while True:
            buffered = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
            if not buffered and not select.select([sock], [], [], 0)[0]:
                return True
            # A frame has begun to arrive: the rest of it follows at once.
            ws.settimeout(PUMP_TICK_SECONDS)
            opcode, frame = ws.recv_data_frame(True)
            if opcode in (websocket.ABNF.OPCODE_PING, websocket.ABNF.OPCODE_PONG):
                continue  # (websocket-client answers a ping itself)
            if opcode not in (websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_TEXT) \
                    or len(frame.data) > 1:
                return False
    except (OSError, ValueError, websocket.WebSocketException):
        return False


def _flag(value: bool) -> str:
    return "true" if value else "false"


class _Stalled(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"no data for {seconds:g}s")
        self.seconds = seconds


def _pump(session: Any, out: Sink, err: Sink, deadline: float | None,
          stall: float | None) -> bytes:
    """Pass an exec's stdout and stderr to the sinks frame by frame; its status bytes.

    It reads the websocket itself: the client's `WSClient.update` takes every frame
    already available before it returns, appending each to a bytes buffer, so a fast
    producer makes it copy quadratically and hold all output in memory. Reads wait at
    most a second, so the stall and the deadline are checked without a poll per frame
    (websocket-client resumes a frame that a timeout interrupted).
    """
    ws = session.sock
    ws.settimeout(PUMP_TICK_SECONDS)
    status = bytearray()
    last = time.monotonic()
    scope = cancel.current()  # a stage thread of the agent meets its cancel here
    while True:
        if scope.canceled_at is not None:
            scope.check()
        try:
            opcode, frame = ws.recv_data_frame(True)
        except websocket.WebSocketTimeoutException:
            now = time.monotonic()
            if deadline is not None and now > deadline:
                break
            if stall is not None and now - last > stall:
                raise _Stalled(stall) from None
            continue
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        data = frame.data if opcode in (websocket.ABNF.OPCODE_BINARY,
                                        websocket.ABNF.OPCODE_TEXT) else b""
        if len(data) < 2:
            continue
        last = time.monotonic()
        channel, payload = data[0], memoryview(data)[1:]  # no copy of the payload
        if channel == CHANNEL_STDOUT:
            out(payload)
        elif channel == CHANNEL_STDERR:
            err(payload)
        elif channel == CHANNEL_ERROR:
            status += payload
        if deadline is not None and last > deadline:
            break
    return bytes(status)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of `data` to a file descriptor."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def exit_code(what: str, raw: bytes) -> int:
    """The exit code in an exec's final Status; no status means the state is unknown."""
    if not raw:
        raise ClusterError(f"{what}: the connection ended before the exit status arrived; "
                           "the command's outcome is unknown", transient=True)
    try:
        status = json.loads(raw)
    except ValueError as error:
        raise ClusterError(f"{what}: unreadable exit status {raw[:200]!r}") from error
    if status.get("status") == "Success":
        return 0
    if status.get("reason") == "NonZeroExitCode":
        for cause in (status.get("details") or {}).get("causes") or ():
            if cause.get("reason") == "ExitCode":
                return int(cause.get("message"))
    raise ClusterError(f"{what}: {status.get('code', '')} {status.get('reason', 'Failure')}: "
                       f"{status.get('message', 'no message')}",
                       status=int(status.get("code") or 0) or None,
                       transient=is_transient(int(status.get("code") or 0) or None,
                                              str(status.get("message") or "")))
