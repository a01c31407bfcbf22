"""Hand a stage to the runner's agent, without loading the Kubernetes client.

gitlab-runner starts `config`, `prepare`, `run` and `cleanup` as new processes, about a
dozen per job, and loading the `kubernetes` client costs each of them most of a
second of CPU. The runner's agent (`agent.py`) has it loaded already and serves every
job of this runner, so these stages first try to hand their work to it: this module
connects to the agent's socket, sends the stage with this process's environment and
two fresh pipes for its stdout and stderr (never the runner's own descriptors, so
nothing but this process holds those), copies them through, passes SIGTERM on as a
`Cancel`, and returns the exit code the agent's stage computed.

This is the light path: it must import only the standard library, and only its cheap
C parts. `json`, `socket`, `signal`, `argparse`, `typing`, `contextlib` and the like
each pull in `re` or `enum` and cost a stage milliseconds of CPU, a dozen times per job;
a test pins that. Hence the raw `_socket` and `_signal`, and `agent_protocol`'s plain
messages.
The two ends check each other: this client talks only to an agent running as our own
user (its SO_PEERCRED, checked before anything is sent), and the agent serves only
processes of its own user; the socket lives in a directory private to that user. The
user is the trust boundary: it holds the cluster credentials anyway. Jobs stay apart
inside the agent because each stage runs with its own environment (its job's payload,
nonce and private TMPDIR), exactly as it would in-process.
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

from .agent_protocol import (
    Accepted,
    Cancel,
    Exited,
    Go,
    Reader,
    StageRequest,
    Stats,
    StatsRequest,
    send,
)

# Typing names only: importing `typing` costs this path more than the rest together.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Callable, Mapping
    from types import FrameType
else:
    import _signal  # `signal` without its enums; typeshed knows it as `signal`

SOCKET_PREFIX = "agent-"
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
# From the request to the agent's greeting; the agent answers at once, so this is only
# reached by an agent that is stopped or wedged.
GREETING_TIMEOUT_SECONDS = 5.0
BACKLOG = 256  # stages that queue while the agent is being started
PIPE_SIZE = 1 << 20
CHUNK = 1 << 20
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


def agent_directory(environ: Mapping[str, str]) -> str:
    """Where this user's agents listen: $XDG_RUNTIME_DIR/runner-driver, else
    /tmp/runner-driver-UID (not $TMPDIR: gitlab-runner sets that per job)."""
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "runner-driver")
    return f"/tmp/runner-driver-{os.getuid()}"  # private: its mode and owner are checked


def socket_path(environ: Mapping[str, str], spec: str, runner_pid: int) -> str:
    """The socket of the agent serving this runner with these settings and credentials.

    Nothing in the name comes from a job variable: the checksum covers the settings
    file as the stage was told it, the kubeconfig, and the gitlab-runner process whose
    stages it serves (the agent ends when that process does).
    """
    identity = "\0".join([spec, environ.get("KUBECONFIG", ""), str(runner_pid)])
    checksum = zlib.crc32(identity.encode(errors="surrogateescape"))
    return os.path.join(agent_directory(environ), f"{SOCKET_PREFIX}{checksum:08x}.sock")


def runner_pid(environ: Mapping[str, str]) -> int:
    """The gitlab-runner process this stage belongs to: our parent, unless a wrapper that
    cannot exec put itself in between and named the runner in RUNNER_DRIVER_RUNNER_PID."""
    given = environ.get("RUNNER_DRIVER_RUNNER_PID", "")
    return int(given) if given.isascii() and given.isdigit() and int(given) > 1 \
        else os.getppid()


class Claim:
    """A bound agent socket, taken before this stage loads the client.

    Stages that start meanwhile (50 jobs at once) connect and wait in its backlog for the
    agent this stage is about to leave, instead of each loading the client themselves.
    """

    def __init__(self, path: str, listener: _socket.socket) -> None:
        self.path = path
        self.listener = listener
        self.inode = os.stat(path).st_ino
        self.taken = False  # the agent has it now

    def release(self) -> None:
        """No agent was left: close it, and remove its socket if that is still ours."""
        if self.taken:
            return
        self.listener.close()
        remove_socket(self.path, self.inode)


def remove_socket(path: str, inode: int) -> None:
    """Remove the socket at `path` if it is still the one with `inode`.

    Under the directory's flock, as claims are: a check and an unlink outside it could
    remove the socket a new claim bound in between.
    """
    try:
        lock = _lock(os.path.dirname(path))
    except OSError:
        return
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(lock)  # and with it the flock


def _lock(directory: str) -> int:
    """The directory, opened and flocked: claims and removals of its sockets take turns."""
    lock = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
    except OSError:
        os.close(lock)
        raise
    return lock


def claim(path: str) -> Claim | None:
    """Bind and listen at `path` for the agent this stage will leave; None when another
    agent (or claim) answers there, or the directory is not private to us.

    Claims are made under an flock of the directory, so that of two stages finding no
    agent at once, the second sees the first's socket instead of taking it for a dead
    agent's and replacing it.
    """
    directory = os.path.dirname(path)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    if not private_directory(path):
        return None
    listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    lock = -1
    try:
        lock = _lock(directory)
        alive = connect(path)
        if alive is not None:
            alive.close()
            listener.close()
            return None
        try:  # noqa: SIM105 - contextlib would cost the light path an import
            os.unlink(path)  # left by an agent that died
        except FileNotFoundError:
            pass
        reach(path, listener.bind)
        listener.listen(BACKLOG)
        return Claim(path, listener)
    except OSError:
        listener.close()
        return None
    finally:
        if lock >= 0:
            os.close(lock)  # and with it the flock


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


def stats_for(environ: Mapping[str, str], config: os.PathLike[str] | str | None,
              runner_pid: int | None = None) -> dict[str, float] | None:
    """The figures of the agent serving this runner (this process, by default), or None."""
    path = socket_path(environ, config_spec(config, environ),
                       os.getpid() if runner_pid is None else runner_pid)
    conn = connect(path)
    if conn is None:
        return None
    try:
        send(conn, StatsRequest())
        reply = Reader(conn).next()
        return reply.as_dict() if isinstance(reply, Stats) else None
    except (OSError, ValueError):
        return None
    finally:
        conn.close()


def hand_over(stage: str, arguments: Mapping[str, str], environ: Mapping[str, str],
              spec: str) -> Handoff | None:
    """Run `stage` in the runner's agent; None when there is no agent to take it.

    Our stdout and stderr receive the stage's, byte for byte.
    """
    conn = connect(socket_path(environ, spec, runner_pid(environ)))
    if conn is None:
        return None
    given = dict(arguments)
    if "script" in given:  # the agent's working directory is not ours
        given["script"] = os.path.abspath(given["script"])
    request = StageRequest(stage, given, dict(environ))
    name = arguments.get("stage") or stage
    canceler = _Canceler()
    try:
        canceler.install()
        handoff = _hand_over(conn, request, name, canceler)
    except _Interrupted:
        return Handoff(canceled=True)
    finally:
        canceler.uninstall()
        conn.close()
    if handoff is not None and handoff.exit_code is None and canceler.pending:
        # Canceled, and the agent ended without a word: do not run the stage again.
        return Handoff(canceled=True)
    return handoff


class _Interrupted(BaseException):
    """SIGTERM before the agent took the stage: stop waiting for it."""


class _Canceler:
    """Turns the runner's SIGTERM into a `Cancel` for the agent's stage.

    The handler only notes it and wakes the copy loop through a pipe, which sends the
    message: a send from inside the handler could split another send in progress.
    """

    def __init__(self) -> None:
        self.accepted = False
        self.pending = False
        self.sent = False
        self.previous: object = None
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)

    def install(self) -> None:
        self.previous = _signal.signal(_signal.SIGTERM, self._on_term)

    def uninstall(self) -> None:
        if self.previous is not None:
            _signal.signal(_signal.SIGTERM, self.previous)  # type: ignore[arg-type]
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _on_term(self, _signum: int, _frame: FrameType | None) -> None:
        self.pending = True
        if not self.accepted:
            raise _Interrupted
        try:  # noqa: SIM105 - contextlib would cost the light path an import
            os.write(self.wake_w, b"x")
        except OSError:
            pass

    def forward(self, conn: _socket.socket) -> None:
        """Send the cancel once, if SIGTERM came."""
        if self.pending and not self.sent:
            self.sent = True
            try:  # noqa: SIM105
                send(conn, Cancel())
            except OSError:
                pass


def _hand_over(conn: _socket.socket, request: StageRequest, name: str,
               canceler: _Canceler) -> Handoff | None:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        _enlarge(out_w)
        try:
            send(conn, request, [out_w, err_w])
        finally:
            os.close(out_w)
            os.close(err_w)
        reader = Reader(conn)
        conn.settimeout(GREETING_TIMEOUT_SECONDS)
        greeting = reader.next()
        if not isinstance(greeting, Accepted):
            os.close(out_r)
            os.close(err_r)
            return None  # refused, or gone: the caller runs the stage itself
        # The stage is the agent's from this word on; it waits for it before it starts.
        canceler.accepted = True
        send(conn, Go())
    except (OSError, ValueError):
        os.close(out_r)
        os.close(err_r)
        return None
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    conn.settimeout(None)
    canceler.forward(conn)
    exit_code, copied = _copy_until_done(conn, reader, out_r, err_r, canceler)
    if exit_code is not None:
        return Handoff(exit_code=exit_code)
    sys.stderr.write(f"runner-driver: the runner's agent ended without finishing the "
                     f"{name} stage; continuing in this process\n")
    sys.stderr.flush()
    return Handoff(stage_id=greeting.stage_id, offset=copied)


def _enlarge(fd: int) -> None:
    # Fewer, larger writes for log-heavy stages; the default pipe holds 64 KiB.
    try:  # noqa: SIM105 - contextlib would cost the light path an import
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass


def _copy_until_done(conn: _socket.socket, reader: Reader, out_r: int, err_r: int,
                     canceler: _Canceler) -> tuple[int | None, int]:
    """Copy both pipes to our stdout and stderr until the stage ends; (exit code, stdout bytes)."""
    targets = {out_r: 1, err_r: 2}
    poller = select.poll()
    for fd in (out_r, err_r, conn.fileno(), canceler.wake_r):
        poller.register(fd, select.POLLIN)
    copier = _Copier()
    exit_code: int | None = None
    connected = True
    while targets or connected:
        for fd, _events in poller.poll():
            if fd == canceler.wake_r:
                os.read(fd, 64)
                canceler.forward(conn)
            elif fd == conn.fileno():
                try:
                    data = conn.recv(CHUNK)
                    reader.feed(data)
                except (OSError, ValueError):
                    data = b""
                for message in reader.take():
                    if isinstance(message, Exited):
                        exit_code = message.code
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
