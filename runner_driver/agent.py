"""The runner's agent: one process that keeps the Kubernetes client loaded for all its jobs.

Each stage gitlab-runner starts is a new process, and loading the `kubernetes` client
is most of what a stage costs. A stage that loaded it (`config` with no agent to hand
to, or an in-process `prepare`) forks this agent before it exits. The agent serves
every later stage of every job of the same gitlab-runner process, settings file and
kubeconfig, over a Unix socket in a directory private to the user (`agent_client` is
the other end). Each stage runs in a thread of its own, with the environment and
the two pipes its stage process sent, through exactly the code it would run
in-process (`cli` passes that in as `execute`), so 50 concurrent jobs cost one loaded
client, not 50 (issue 13: the manager's memory).

One job's trouble stays its own: a request is read and checked in its own thread, a
stage's exception is its exit code, a hung stream holds only its thread, and a stage
whose client dies is canceled (`cancel.Scope`), as SIGTERM would cancel it in-process.
If the agent itself dies, every client resumes or reruns its stage in-process.

It must not hold the runner's stdout or stderr: gitlab-runner waits for EOF on both,
so a daemon holding them would hang the stage that started it. It detaches into its
own session with /dev/null as stdio before `start` returns. Nothing of it outlives its
runner: it watches the gitlab-runner process (a pidfd on the parent of the stage that
started it) and, when that exits, cancels its stages and goes within
RUNNER_GONE_SECONDS. It also ends when the last job it knows has finished `cleanup`,
when its settings file or kubeconfig changed (the next stage starts a fresh agent),
when its socket is removed, or after `idle_timeout` with no stage. It is the child
subreaper of everything below it, so nothing it starts is left a zombie for an init
the manager's container may not have.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import resource
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import cancel
from .agent_client import GREETING_TIMEOUT_SECONDS, Claim, remove_socket
from .agent_protocol import (
    Accepted,
    Cancel,
    Exited,
    Go,
    Reader,
    Refused,
    StageRequest,
    Stats,
    StatsRequest,
    send,
)
from .run import new_stage_id
from .runner_env import StageIO

# Runs one stage as the stage process would, returning its exit code.
Execute = Callable[[str, dict[str, Any], StageIO], int]
TICK_SECONDS = 0.5
# After the runner exits: how long stages get to stop their scripts before the agent goes.
RUNNER_GONE_SECONDS = 3.0
_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
_RECEIVE = 65536


def start(claimed: Claim, execute: Execute, idle_timeout: float, job: str,
          stamp: Callable[[], object], runner_pid: int) -> None:
    """Leave an agent serving this runner on the socket `claimed` (it is the agent's now).

    `job` (the starting stage's TMPDIR) is the first job it serves; `stamp` tells
    whether the settings it loaded are still current (its value must not change).
    """
    runner = _watch(runner_pid)
    first = stamp()
    sys.stdout.flush()
    sys.stderr.flush()
    claimed.taken = True
    child = os.fork()
    if child:
        claimed.listener.close()
        if runner >= 0:
            os.close(runner)
        os.waitpid(child, 0)  # it forks the agent and exits at once
        return
    try:
        os.setsid()  # out of the runner's process group: its kill is for the stage
        if os.fork() == 0:
            listener = socket.socket(fileno=claimed.listener.detach())
            _detach(listener.fileno(), runner)
            _Agent(listener, claimed.path, execute, idle_timeout, runner, job,
                   lambda: stamp() == first).serve()
    finally:
        os._exit(0)


def _watch(pid: int) -> int:
    """A pidfd of the runner process, or -1 (a kernel before 5.3, or it is gone already)."""
    try:
        return os.pidfd_open(pid)
    except OSError:
        return -1


def _detach(*keep: int) -> None:
    """/dev/null as stdio and no other inherited descriptor: nothing of the runner's."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    low = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
    os.chdir("/")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


class _Agent:
    def __init__(self, listener: socket.socket, path: str, execute: Execute,
                 idle_timeout: float, runner: int, job: str,
                 current: Callable[[], bool]) -> None:
        self.listener = listener
        self.path = path
        self.inode = os.stat(path).st_ino
        self.execute = execute
        self.idle_timeout = idle_timeout
        self.runner = runner  # pidfd of the gitlab-runner process, or -1
        self.current = current
        self.lock = threading.Lock()
        # The jobs it serves, by TMPDIR (one per job), and when each was last heard of.
        self.jobs: dict[str, float] = {job: time.monotonic()} if job else {}
        self.scopes: dict[int, cancel.Scope] = {}
        self.connections = 0  # accepted and not yet finished: the agent must not go
        self.running = 0
        self.served = 0
        self.active = time.monotonic()
        self.stopping = False

    def serve(self) -> None:
        # The loaded client is never garbage: keep the collector from scanning it again
        # at every collection the stages' threads cause.
        gc.collect()
        gc.freeze()
        listening = self.listener.fileno()
        watched = [listening] if self.runner < 0 else [listening, self.runner]
        while not self._done():
            if self.stopping and listening in watched:
                # Only this thread closes the listener: it is the one selecting on it.
                self.listener.close()
                watched.remove(listening)
            if watched:
                ready, _, _ = select.select(watched, [], [], TICK_SECONDS)
            else:
                time.sleep(TICK_SECONDS)
                ready = []
            if self.runner in ready:
                self._runner_gone()
                return
            if listening in ready:
                self._accept()
            self._reap()
        self._close()

    def _done(self) -> bool:
        now = time.monotonic()
        with self.lock:
            for job, seen in list(self.jobs.items()):  # a job whose cleanup never came
                if now - seen > self.idle_timeout:
                    del self.jobs[job]
            if self.connections:  # (every running stage holds its connection)
                return False
            return (self.stopping or not self.jobs or not self._socket_is_ours()
                    or now - self.active > self.idle_timeout)

    def _socket_is_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def _close(self) -> None:
        # Closed first: a stage that finds the socket now is refused and claims anew.
        self.listener.close()
        remove_socket(self.path, self.inode)

    def _reap(self) -> None:
        """Collect any process that came to us as the subreaper."""
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass

    def _runner_gone(self) -> None:
        """The runner exited: cancel the stages as its kill would, then go."""
        self.stopping = True
        self._close()
        with self.lock:
            scopes = list(self.scopes.values())
        for scope in scopes:
            scope.cancel()
        deadline = time.monotonic() + RUNNER_GONE_SECONDS
        while self.running and time.monotonic() < deadline:
            time.sleep(TICK_SECONDS / 5)

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:  # the client gave up already, or we are out of descriptors
            return
        with self.lock:
            self.connections += 1
        # A slow or malformed request holds only its own thread.
        threading.Thread(target=self._serve_one, args=(conn,), daemon=True).start()

    def _serve_one(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            conn.settimeout(GREETING_TIMEOUT_SECONDS)
            if not _same_user(conn):
                return
            data, received, _flags, _addr = socket.recv_fds(conn, _RECEIVE, 2)
            fds = list(received)
            reader = Reader(conn)
            reader.feed(data)
            request = reader.next()
            if isinstance(request, StatsRequest):
                send(conn, self._stats())
                return
            if not isinstance(request, StageRequest):
                send(conn, Refused("unknown request"))
                return
            refusal = self._refusal(fds)
            if refusal:
                send(conn, Refused(refusal))
                return
            self._run(conn, reader, request, fds)
        except (OSError, ValueError):
            pass
        finally:
            for fd in fds:
                os.close(fd)
            # A shutdown, not just close: the watcher thread blocked in recv on this
            # socket would keep it open, and the client would wait for EOF for ever.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
            with self.lock:
                self.connections -= 1
                self.active = time.monotonic()

    def _refusal(self, fds: list[int]) -> str:
        if len(fds) != 2:
            return "malformed request"
        if self.stopping:
            return "the agent is stopping"
        if not self.current():
            # The operator changed the settings or credentials: finish what runs, and
            # let the next stage start an agent that reads the new ones (the socket's
            # name is free for it at once; the listener closes at the next tick).
            self.stopping = True
            remove_socket(self.path, self.inode)
            return "the driver's settings changed"
        return ""

    def _run(self, conn: socket.socket, reader: Reader, request: StageRequest,
             fds: list[int]) -> None:
        """Greet, wait for the go, run the stage in this thread, report its exit code."""
        arguments: dict[str, Any] = dict(request.arguments)
        if request.stage == "run" and not arguments.get("stage_id"):
            arguments["stage_id"] = new_stage_id(str(arguments.get("stage", "")))
        job = request.environ.get("TMPDIR", "")
        scope = cancel.Scope()
        key = threading.get_ident()
        with self.lock:
            self.running += 1
            self.served += 1
            self.scopes[key] = scope
            if job:
                self.jobs[job] = time.monotonic()
        try:
            send(conn, Accepted(str(arguments.get("stage_id", ""))))
            if not isinstance(reader.next(), Go):
                return  # the client gave up waiting and runs the stage itself
            conn.settimeout(None)
            watcher = threading.Thread(target=_cancel_on_word, args=(reader, scope),
                                       daemon=True)
            watcher.start()
            io = StageIO.on_fds(request.environ, fds[0], fds[1])
            try:
                with cancel.entered(scope):
                    code = self.execute(request.stage, arguments, io)
            finally:
                # Closed, not only flushed: output a failed flush kept must never reach
                # the descriptor's next owner when the stream is collected later.
                for stream in (io.out, io.err):
                    with contextlib.suppress(OSError, ValueError):
                        stream.close()
            with contextlib.suppress(OSError):
                send(conn, Exited(code))
        finally:
            with self.lock:
                self.running -= 1
                self.scopes.pop(key, None)
                self.active = time.monotonic()
                if request.stage == "cleanup":
                    self.jobs.pop(job, None)  # the job is over for the runner
                elif job in self.jobs:  # (a run that outlived cleanup does not revive it)
                    self.jobs[job] = time.monotonic()

    def _stats(self) -> Stats:
        """CPU and memory of the agent, with every stage it ran."""
        own = resource.getrusage(resource.RUSAGE_SELF)
        with self.lock:
            return Stats(os.getpid(), own.ru_utime + own.ru_stime, own.ru_maxrss, self.served,
                         self.running, len(self.jobs))


def _cancel_on_word(reader: Reader, scope: cancel.Scope) -> None:
    """Cancel the stage when its client says so, or dies (the runner killed it)."""
    try:
        while (message := reader.next()) is not None:
            if isinstance(message, Cancel):
                break
    except (OSError, ValueError):
        pass
    scope.cancel()


def _same_user(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())

