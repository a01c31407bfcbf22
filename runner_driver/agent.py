"""The job's agent: one process that keeps the Kubernetes client loaded for the whole job.

Each stage gitlab-runner starts is a new process, and loading the `kubernetes` client
is most of what a stage costs. `config` (or an in-process `prepare`) already has it
loaded, so it forks this agent, which serves the job's later `prepare`, `run` and
`cleanup` calls over a Unix socket (`agent_client` is the other end). Each stage runs
in a child forked from the agent, so it starts warm and runs exactly the code it would
run in-process (`cli` passes that in as `execute`), with the stage process's exit codes.

It must not hold the runner's stdout or stderr: gitlab-runner waits for EOF on both,
so a daemon holding them would hang the stage that started it. It detaches into its
own session with /dev/null as stdio before `start` returns, and a stage writes only to
pipes its client passed. It serves processes of its own user only, through a socket
in the job's private temporary directory, and only requests that carry its job's
nonce (the one `config` minted), so no other job's stage is ever served here, even
by mistake. It ends after `cleanup`, when its socket
disappears, or after `idle_timeout` with no stage; every stage works without it.
"""

from __future__ import annotations

import contextlib
import gc
import hmac
import os
import resource
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .agent_client import (
    GREETING_TIMEOUT_SECONDS,
    MESSAGE_LIMIT,
    Messages,
    connect,
    private_directory,
    reach,
    send,
)
from .run import new_stage_id
from .runner_env import ExitCodes, exit_codes

# Runs one stage as the stage process would, returning its exit code.
Execute = Callable[[str, dict[str, Any], ExitCodes], int]
STAGES = ("prepare", "run", "cleanup")
TICK_SECONDS = 0.5


def start(path: str, execute: Execute, idle_timeout: float, nonce: str) -> bool:
    """Leave an agent serving the job at `path`; False when one already answers there.

    Raises:
        OSError: the socket could not be created (the stages then run in-process).
    """
    if not nonce:
        raise OSError("an agent needs its job's nonce")
    listener = _listen(path)
    if listener is None:
        return False
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child:
        listener.close()
        os.waitpid(child, 0)  # it forks the agent and exits at once
        return True
    try:
        os.setsid()  # out of the runner's process group: its kill is for the stage
        if os.fork() == 0:
            _detach(listener.fileno())
            _Agent(listener, path, execute, idle_timeout, nonce).serve()
    finally:
        os._exit(0)


def _listen(path: str) -> socket.socket | None:
    if not private_directory(path):
        raise OSError(f"the job's temporary directory {os.path.dirname(path)} is not "
                      "private to this user")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            reach(path, listener.bind)
        except OSError:
            alive = connect(path)
            if alive is not None:
                alive.close()
                listener.close()
                return None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # left by an agent that died
            reach(path, listener.bind)
        listener.listen(16)
    except OSError:
        listener.close()
        raise
    return listener


def _detach(keep: int) -> None:
    """/dev/null as stdio and no other inherited descriptor: nothing of the runner's."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    os.chdir("/")
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Agent:
    def __init__(self, listener: socket.socket, path: str, execute: Execute,
                 idle_timeout: float, nonce: str) -> None:
        self.nonce = nonce.encode()
        self.listener = listener
        self.path = path
        self.inode = os.stat(path).st_ino
        self.execute = execute
        self.idle_timeout = idle_timeout
        self.stages: set[int] = set()
        self.served = 0
        self.stopping = False

    def serve(self) -> None:
        # Stage processes fork from here: keep the collector off the shared pages.
        gc.collect()
        gc.freeze()
        idle_since = time.monotonic()
        while True:
            self._reap()
            if self.stages:
                idle_since = time.monotonic()
            elif (self.stopping or not self._socket_is_ours()
                  or time.monotonic() - idle_since > self.idle_timeout):
                break
            if self.stopping:
                time.sleep(TICK_SECONDS / 5)
                continue
            ready, _, _ = select.select([self.listener], [], [], TICK_SECONDS)
            if ready:
                self._accept()
                idle_since = time.monotonic()
        self._close()

    def _socket_is_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def _close(self) -> None:
        if self._socket_is_ours():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.listener.close()

    def _reap(self) -> None:
        for pid in list(self.stages):
            with contextlib.suppress(ChildProcessError):
                done, _status = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
            self.stages.discard(pid)

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:  # the client gave up already, or we are out of descriptors
            return
        fds: list[int] = []
        try:
            conn.settimeout(GREETING_TIMEOUT_SECONDS)
            if not _same_user(conn):
                return
            data, fds = _receive(conn)
            request = _request(conn, data)
            if not hmac.compare_digest(request.get("nonce", "").encode(), self.nonce):
                send(conn, {"refused": "this agent serves another job"})
                return
            if request.get("op") == "stats":
                send(conn, self._stats())
                return
            refusal = self._refusal(request, fds)
            if refusal:
                send(conn, {"refused": refusal})
                return
            if request["stage"] == "cleanup":
                # The job is over: later callers run in-process, this agent winds down.
                self.stopping = True
                self._close()
            pid = os.fork()
            if pid == 0:
                try:
                    self._run_stage(conn, request, fds)
                finally:
                    os._exit(0)
            self.stages.add(pid)
            self.served += 1
        except (OSError, ValueError):
            pass
        finally:
            for fd in fds:
                os.close(fd)
            conn.close()

    def _refusal(self, request: Mapping[str, str], fds: list[int]) -> str:
        if self.stopping:
            return "the agent is stopping"
        if request.get("op") != "stage" or request.get("stage") not in STAGES:
            return "unknown request"
        if len(fds) != 2:
            return "malformed request"
        return ""

    def _stats(self) -> dict[str, int | float]:
        """CPU and peak memory of the agent and of the stages it served and reaped."""
        self._reap()
        own = resource.getrusage(resource.RUSAGE_SELF)
        stages = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {"pid": os.getpid(),
                "cpu_seconds": own.ru_utime + own.ru_stime + stages.ru_utime + stages.ru_stime,
                "max_handler_rss_kb": stages.ru_maxrss, "rss_kb": own.ru_maxrss,
                "stages_served": self.served, "stages_running": len(self.stages)}

    def _run_stage(self, conn: socket.socket, request: Mapping[str, str],
                   fds: list[int]) -> None:
        """In the stage's own process: greet, wait for the go, run, report the exit code."""
        # A SIGTERM the client forwards waits until `execute` has its handler in place.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        self.listener.close()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in fds:
            os.close(fd)
        stage = request["stage"]
        arguments: dict[str, Any] = _section(request, "arg.")
        if stage == "run" and not arguments.get("stage_id"):
            arguments["stage_id"] = new_stage_id(str(arguments.get("stage", "")))
        send(conn, {"pid": os.getpid(), "stage_id": arguments.get("stage_id", "")})
        if conn.recv(3, socket.MSG_WAITALL) != b"go\n":
            return  # the client gave up waiting and runs the stage itself
        conn.settimeout(None)
        finished = threading.Event()
        threading.Thread(target=_cancel_when_gone, args=(conn, finished), daemon=True).start()
        exit_code = self.execute(stage, arguments, exit_codes(_section(request, "env.")))
        finished.set()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        with contextlib.suppress(OSError):
            send(conn, {"exit": exit_code})


def _cancel_when_gone(conn: socket.socket, finished: threading.Event) -> None:
    """The client died (the runner killed it): stop the stage as SIGTERM would."""
    with contextlib.suppress(OSError):
        while conn.recv(MESSAGE_LIMIT):
            pass
    if not finished.is_set():
        os.kill(os.getpid(), signal.SIGTERM)


def _same_user(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


def _receive(conn: socket.socket) -> tuple[bytes, list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, MESSAGE_LIMIT, 2)
    return data, list(fds)


def _request(conn: socket.socket, data: bytes) -> dict[str, str]:
    messages = Messages(conn)
    messages.feed(data)
    request = messages.next()
    if request is None:
        raise ValueError("connection closed before the request")
    return request


def _section(message: Mapping[str, str], prefix: str) -> dict[str, str]:
    return {k[len(prefix):]: v for k, v in message.items() if k.startswith(prefix)}
