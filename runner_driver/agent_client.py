"""Hand a stage to the job's agent, without loading the Kubernetes client.

gitlab-runner starts `prepare`, `run` and `cleanup` as new processes, about a dozen
per job, and loading the `kubernetes` client costs each of them about half a second
of CPU. The job's agent (`agent.py`) has the client loaded already, so these stages
first try to hand their work to it: this module connects to the agent's socket in the
job's private temporary directory, passes two fresh pipes for the stage's stdout and
stderr (never the runner's own descriptors, so nothing but this process holds those),
copies them through, forwards SIGTERM, and returns the exit code the agent's stage
computed.

This is the light path: it must import only the standard library, and only its cheap
C parts. `json`, `socket`, `signal`, `argparse`, `typing`, `contextlib` and the like
each pull in `re` or `enum` and cost a stage milliseconds of CPU, a dozen times per job;
a test pins that. Hence the raw `_socket` and `_signal`, and a plain message format
(`encode`).
The two ends check each other: this client talks only to an agent running as our own
user (its SO_PEERCRED, checked before anything is sent), and sends the job's nonce,
which the agent compares with the one its job's `config` minted.
It must never make a stage fail that would succeed in-process: with no agent, or one
that refuses, the caller runs the stage itself; when the agent is lost mid-stage,
`run` resumes in-process from the last byte copied, and the stage is not started twice.
"""

from __future__ import annotations

import _socket
import errno
import fcntl
import os
import select
import stat
import sys
import zlib

from . import jobrecord

# Typing names only: importing `typing` costs this path more than the rest together.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Callable, Mapping
    from types import FrameType

    Message = dict[str, str]
else:
    import _signal  # `signal` without its enums; typeshed knows it as `signal`

SOCKET_PREFIX = "rd-agent-"
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
MESSAGE_LIMIT = 65536
# From the request to the agent's greeting; the agent forks at once, so this is only
# reached by an agent that is stopped or wedged.
GREETING_TIMEOUT_SECONDS = 5.0
PIPE_SIZE = 1 << 20
CHUNK = 1 << 20
# The runner's variables that may differ between the stages of one job; the agent's
# stage process reads its exit codes from these, not from the agent's environment.
STAGE_VARIABLES = ("BUILD_FAILURE_EXIT_CODE", "SYSTEM_FAILURE_EXIT_CODE",
                   "BUILD_EXIT_CODE_FILE")
_UCRED_SIZE = 12  # struct ucred: pid, uid, gid (C ints)


class Handoff:
    """What became of a stage handed to the agent."""

    __slots__ = ("canceled", "exit_code", "offset", "stage_id")

    def __init__(self, exit_code: int | None = None, stage_id: str = "",
                 offset: int = 0, canceled: bool = False) -> None:
        self.exit_code = exit_code  # the agent ran the stage: exit with this code
        # Otherwise the agent was lost after it took the stage: where `run` resumes.
        self.stage_id = stage_id
        self.offset = offset
        self.canceled = canceled  # SIGTERM came before the agent took the stage


def config_spec(cli_path: os.PathLike[str] | str | None, environ: Mapping[str, str]) -> str:
    """The settings file as the stage was told it, before any resolution."""
    return str(cli_path) if cli_path else environ.get("RUNNER_DRIVER_CONFIG", "")


def job_nonce(environ: Mapping[str, str]) -> str:
    """The job's nonce, exactly as `JobContext` finds it (`jobrecord.job_nonce`)."""
    return jobrecord.job_nonce(environ.get(jobrecord.NONCE_KEY, ""), environ.get("TMPDIR", ""))


def socket_path(environ: Mapping[str, str], spec: str, nonce: str) -> str | None:
    """The job's agent socket; None when the job has no temporary directory or nonce.

    It lives in the job's temporary directory ($TMPDIR), which gitlab-runner creates
    per job with mode 0700 and removes after cleanup. Nothing in the name comes from a
    job variable: the checksum covers the job's nonce, the settings file and the
    kubeconfig, so stages of another prepare attempt, or told a different cluster,
    never share an agent.
    """
    tmp = environ.get("TMPDIR", "")
    if not tmp or not nonce or not os.path.isabs(tmp):
        return None
    identity = "\0".join([nonce, spec, environ.get("KUBECONFIG", "")])
    checksum = zlib.crc32(identity.encode(errors="surrogateescape"))
    return os.path.join(tmp, f"{SOCKET_PREFIX}{checksum:08x}.sock")


def address(path: str) -> tuple[str, int | None]:
    """A name for the socket at `path` that fits sun_path, and the descriptor it needs.

    A long $TMPDIR would not fit in the 108 bytes: then the name goes through the
    directory's descriptor (/proc/self/fd/N/NAME), which the caller closes after
    bind or connect.
    """
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path, None
    directory = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{directory}/{os.path.basename(path)}", directory


def private_directory(path: str) -> bool:
    """Whether only our own user can reach `path`'s directory."""
    try:
        info = os.stat(os.path.dirname(path))
    except OSError:
        return False
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
            and not info.st_mode & 0o077)


def connect(path: str) -> _socket.socket | None:
    """A connection to the agent at `path`, or None when none answers there."""
    if not private_directory(path):
        return None
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    # A full backlog (an agent stopped, or wedged) would block connect() for ever.
    conn.settimeout(GREETING_TIMEOUT_SECONDS)
    try:
        reach(path, conn.connect)
        # Nothing goes to a listener of another user, whatever sits at that path.
        if peer_uid(conn) != os.getuid():
            conn.close()
            return None
    except OSError:
        conn.close()
        return None
    return conn


def peer_uid(conn: _socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    creds = conn.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _UCRED_SIZE)
    return int.from_bytes(creds[4:8], sys.byteorder)


def reach(path: str, use: Callable[[str], object]) -> None:
    """`use` (a socket's bind or connect) on the socket at `path`, however long it is."""
    name, directory = address(path)
    try:
        use(name)
    finally:
        if directory is not None:
            os.close(directory)


def encode(message: Mapping[str, str | int | float]) -> bytes:
    """One message: `key=value` fields, each ended by NUL, and one more NUL at the end.

    Paths, stage names and environment values cannot hold NUL, so nothing needs quoting.
    """
    fields = [f"{key}={value}".encode(errors="surrogateescape") + b"\0"
              for key, value in message.items()]
    return b"".join(fields) + b"\0"


class Messages:
    """Messages (see `encode`) from a stream socket, in order."""

    def __init__(self, conn: _socket.socket) -> None:
        self.conn = conn
        self.ready: list[Message] = []
        self.fields: list[bytes] = []
        self.partial = b""

    def feed(self, data: bytes) -> None:
        """Take received bytes."""
        *tokens, self.partial = (self.partial + data).split(b"\0")
        for token in tokens:
            if token:
                self.fields.append(token)
            else:  # the empty field that ends a message
                self.ready.append(_decode(self.fields))
                self.fields = []
        if len(self.partial) + sum(map(len, self.fields)) > MESSAGE_LIMIT:
            raise ValueError("message too long")

    def take(self) -> list[Message]:
        """The complete messages received so far."""
        ready, self.ready = self.ready, []
        return ready

    def next(self) -> Message | None:
        """Block for the next message; None at end of stream."""
        while not self.ready:
            data = self.conn.recv(MESSAGE_LIMIT)
            if not data:
                return None
            self.feed(data)
        return self.ready.pop(0)


def _decode(fields: list[bytes]) -> Message:
    message = {}
    for field in fields:
        key, equals, value = field.decode(errors="surrogateescape").partition("=")
        if not key or not equals:
            raise ValueError("malformed message field")
        message[key] = value
    return message


def send(conn: _socket.socket, message: Mapping[str, str | int | float],
         fds: list[int] | None = None) -> None:
    """Send one message, with `fds` attached."""
    data = encode(message)
    if fds:
        rights = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)  # a C int each
        sent = conn.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
        data = data[sent:]
    if data:
        conn.sendall(data)


def number(message: Mapping[str, str], key: str) -> int | None:
    """An integer field, or None when it is missing or not one."""
    value = message.get(key, "")
    return int(value) if value.isascii() and value.isdigit() else None


def stats_for(environ: Mapping[str, str],
              config: os.PathLike[str] | str | None) -> dict[str, float] | None:
    """The job's agent's resource use (pid, cpu_seconds, ...), or None without an agent."""
    nonce = job_nonce(environ)
    path = socket_path(environ, config_spec(config, environ), nonce)
    conn = connect(path) if path else None
    if conn is None:
        return None
    try:
        send(conn, {"op": "stats", "nonce": nonce})
        reply = Messages(conn).next()
        return {k: int(v) if v.isdigit() else float(v) for k, v in reply.items()} \
            if reply else None
    except (OSError, ValueError):
        return None
    finally:
        conn.close()


def hand_over(stage: str, arguments: Mapping[str, str], environ: Mapping[str, str],
              spec: str) -> Handoff | None:
    """Run `stage` in the job's agent; None when there is no agent to take it.

    Our stdout and stderr receive the stage's, byte for byte.
    """
    nonce = job_nonce(environ)
    path = socket_path(environ, spec, nonce)
    conn = connect(path) if path else None
    if conn is None:
        return None
    request = {"op": "stage", "stage": stage, "nonce": nonce}
    request |= {f"arg.{k}": v for k, v in arguments.items()}
    request |= {f"env.{k}": environ[k] for k in STAGE_VARIABLES if k in environ}
    name = arguments.get("stage") or stage
    terminated = _TermForwarder()
    try:
        terminated.install()
        handoff = _hand_over(conn, request, name, terminated)
    except _Interrupted:
        return Handoff(canceled=True)
    finally:
        terminated.uninstall()
        conn.close()
    if handoff is not None and handoff.exit_code is None and terminated.pending:
        # Canceled, and the stage process ended without a word: do not run it again.
        return Handoff(canceled=True)
    return handoff


class _Interrupted(BaseException):
    """SIGTERM before the agent took the stage: stop waiting for it."""


class _TermForwarder:
    """Passes SIGTERM on to the agent's stage process, as if the runner had sent it there.

    The process is named by a pidfd, not its number: the agent reaps it, and the host
    may give its pid to another process before a late SIGTERM is forwarded.
    """

    def __init__(self) -> None:
        self.target = 0
        self.pidfd = -1
        self.pending = False
        self.previous: object = None

    def install(self) -> None:
        self.previous = _signal.signal(_signal.SIGTERM, self._on_term)

    def uninstall(self) -> None:
        if self.previous is not None:
            _signal.signal(_signal.SIGTERM, self.previous)  # type: ignore[arg-type]
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def aim(self, pid: int) -> None:
        """Forward to `pid`, a stage process still waiting for its go (so still `pid`)."""
        try:
            self.pidfd = os.pidfd_open(pid)
        except OSError:
            self.pidfd = -1  # a kernel before 5.3: the number is all there is
        self.target = pid

    def _on_term(self, _signum: int, _frame: FrameType | None) -> None:
        self.pending = True
        if not self.target:
            raise _Interrupted
        self.forward()

    def forward(self) -> None:
        if self.target and self.pending:
            try:
                if self.pidfd >= 0:
                    _signal.pidfd_send_signal(self.pidfd, _signal.SIGTERM)
                else:
                    os.kill(self.target, _signal.SIGTERM)
            except ProcessLookupError:
                pass


def _hand_over(conn: _socket.socket, request: Message, name: str,
               terminated: _TermForwarder) -> Handoff | None:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        _enlarge(out_w)
        try:
            send(conn, request, [out_w, err_w])
        finally:
            os.close(out_w)
            os.close(err_w)
        messages = Messages(conn)
        conn.settimeout(GREETING_TIMEOUT_SECONDS)
        greeting = messages.next()
        pid = number(greeting, "pid") if greeting else None
        if not greeting or not pid:
            return None  # refused, or gone: the caller runs the stage itself
        # Forwarding from here on: the stage process holds SIGTERM until it can stop.
        terminated.aim(pid)
        # The stage is the agent's from this word on; it waits for it before it starts.
        conn.sendall(b"go\n")
    except (OSError, ValueError):
        os.close(out_r)
        os.close(err_r)
        return None
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    conn.settimeout(None)
    terminated.forward()
    exit_code, copied = _copy_until_done(conn, messages, out_r, err_r)
    if exit_code is not None:
        return Handoff(exit_code=exit_code)
    sys.stderr.write(f"runner-driver: the job's agent (pid {pid}) ended without "
                     f"finishing the {name} stage; continuing in this process\n")
    sys.stderr.flush()
    return Handoff(stage_id=greeting.get("stage_id", ""), offset=copied)


def _enlarge(fd: int) -> None:
    # Fewer, larger writes for log-heavy stages; the default pipe holds 64 KiB.
    try:  # noqa: SIM105 - contextlib would cost the light path an import
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass


def _copy_until_done(conn: _socket.socket, messages: Messages, out_r: int,
                     err_r: int) -> tuple[int | None, int]:
    """Copy both pipes to our stdout and stderr until the stage ends; (exit code, stdout bytes)."""
    targets = {out_r: 1, err_r: 2}
    poller = select.poll()
    for fd in (out_r, err_r, conn.fileno()):
        poller.register(fd, select.POLLIN)
    copier = _Copier()
    exit_code: int | None = None
    connected = True
    while targets or connected:
        for fd, _events in poller.poll():
            if fd == conn.fileno():
                try:
                    data = conn.recv(MESSAGE_LIMIT)
                    messages.feed(data)
                except (OSError, ValueError):
                    data = b""
                for message in messages.take():
                    code = number(message, "exit")
                    exit_code = exit_code if code is None else code
                if not data:
                    connected = False
                    poller.unregister(fd)
            elif fd in targets and not copier.copy(fd, targets[fd]):
                poller.unregister(fd)
                os.close(fd)
                del targets[fd]
    return exit_code, copier.copied


class _Copier:
    """Moves bytes from a pipe to our stdout or stderr, with splice(2) where it can."""

    def __init__(self) -> None:
        self.copied = 0  # bytes delivered to stdout: where a resumed `run` goes on
        self.plain: set[int] = set()
        self.broken: set[int] = set()

    def copy(self, source: int, target: int) -> bool:
        """Move what is there; False at end of input, or when the target is gone."""
        if target in self.broken:
            return False
        try:
            if target not in self.plain:
                try:
                    moved = os.splice(source, target, CHUNK)
                except OSError as error:
                    if error.errno != errno.EINVAL:
                        raise
                    self.plain.add(target)  # a terminal, or a socket on old kernels
                    return True
            else:
                data = os.read(source, CHUNK)
                moved = len(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(target, view):]
        except OSError:
            # The runner stopped reading: closing our end makes the stage's writes
            # fail, and the agent ends the stage as it would in-process.
            self.broken.add(target)
            return False
        if target == 1:
            self.copied += moved
        return moved > 0
