"""The messages between a stage process and the agent: one class each, checked on receipt.

A stage process asks the agent to run its stage (`StageRequest`, with two pipes for
its stdout and stderr) or for its figures (`StatsRequest`). The agent takes the stage
(`Accepted`) or says why not (`Refused`); the stage process gives the go (`Go`), may
pass on the runner's SIGTERM (`Cancel`), and gets the exit code (`Exited`).

This is on the light path (see `agent_client`): `dataclasses`, `typing`, `json` and
`enum` would each cost a stage milliseconds of CPU, so these are plain classes with
slots, each listing its fields once, and a message on the wire is `key=value` fields
ended by NUL, with one more NUL at the end (paths, stage names and environment values
cannot hold NUL, so nothing needs quoting). `decode` turns received fields into the
one class their `op` names, and refuses unknown operations, missing or malformed
fields, and anything too long, with `ValueError`.
"""

from __future__ import annotations

import _socket
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

# A request carries the stage's whole environment: ARG_MAX (2 MiB on Linux) bounds it.
MESSAGE_LIMIT = 4 << 20
RECEIVE_CHUNK = 65536
STAGES = ("config", "prepare", "run", "cleanup")


class StageRequest:
    """Run `stage` with these arguments and this environment (the stage process's own)."""

    op = "stage"
    __slots__ = ("arguments", "environ", "stage")

    def __init__(self, stage: str, arguments: dict[str, str],
                 environ: dict[str, str]) -> None:
        self.stage = stage
        self.arguments = arguments
        self.environ = environ

    def fields(self) -> dict[str, str]:
        found = {"stage": self.stage}
        found.update({f"arg.{k}": v for k, v in self.arguments.items()})
        found.update({f"env.{k}": v for k, v in self.environ.items()})
        return found

    @classmethod
    def parse(cls, fields: Mapping[str, str]) -> StageRequest:
        stage = fields.get("stage", "")
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage[:40]!r}")
        return cls(stage, _section(fields, "arg."), _section(fields, "env."))


class StatsRequest:
    """The agent's figures, please."""

    op = "stats"
    __slots__ = ()

    def fields(self) -> dict[str, str]:
        return {}

    @classmethod
    def parse(cls, _fields: Mapping[str, str]) -> StatsRequest:
        return cls()


class Accepted:
    """The agent took the stage; `stage_id` names a `run` stage's files in the pod."""

    op = "accepted"
    __slots__ = ("stage_id",)

    def __init__(self, stage_id: str = "") -> None:
        self.stage_id = stage_id

    def fields(self) -> dict[str, str]:
        return {"stage_id": self.stage_id}

    @classmethod
    def parse(cls, fields: Mapping[str, str]) -> Accepted:
        return cls(fields.get("stage_id", ""))


class Refused:
    """The agent will not run this: the stage process runs it itself."""

    op = "refused"
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def fields(self) -> dict[str, str]:
        return {"reason": self.reason}

    @classmethod
    def parse(cls, fields: Mapping[str, str]) -> Refused:
        return cls(fields.get("reason", ""))


class Go:
    """Start the accepted stage: from now on it is the agent's."""

    op = "go"
    __slots__ = ()

    def fields(self) -> dict[str, str]:
        return {}

    @classmethod
    def parse(cls, _fields: Mapping[str, str]) -> Go:
        return cls()


class Cancel:
    """gitlab-runner sent SIGTERM to the stage process: stop the stage as it would."""

    op = "cancel"
    __slots__ = ()

    def fields(self) -> dict[str, str]:
        return {}

    @classmethod
    def parse(cls, _fields: Mapping[str, str]) -> Cancel:
        return cls()


class Exited:
    """The stage ended: the stage process exits with `code`."""

    op = "exited"
    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        self.code = code

    def fields(self) -> dict[str, str]:
        return {"code": str(self.code)}

    @classmethod
    def parse(cls, fields: Mapping[str, str]) -> Exited:
        return cls(_integer(fields, "code"))


class Stats:
    """What the agent has spent and served (CPU of all its stages included)."""

    op = "stats-reply"
    __slots__ = ("cpu_seconds", "jobs", "pid", "rss_kb", "stages_running", "stages_served")

    def __init__(self, pid: int, cpu_seconds: float, rss_kb: int, stages_served: int,
                 stages_running: int, jobs: int) -> None:
        self.pid = pid
        self.cpu_seconds = cpu_seconds
        self.rss_kb = rss_kb
        self.stages_served = stages_served
        self.stages_running = stages_running
        self.jobs = jobs

    def fields(self) -> dict[str, str]:
        return {name: str(getattr(self, name)) for name in self.__slots__}

    @classmethod
    def parse(cls, fields: Mapping[str, str]) -> Stats:
        try:
            cpu = float(fields.get("cpu_seconds", ""))
        except ValueError:
            raise ValueError("malformed field 'cpu_seconds'") from None
        return cls(_integer(fields, "pid"), cpu, _integer(fields, "rss_kb"),
                   _integer(fields, "stages_served"), _integer(fields, "stages_running"),
                   _integer(fields, "jobs"))

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.__slots__}


Message = StageRequest | StatsRequest | Accepted | Refused | Go | Cancel | Exited | Stats
_KINDS = {kind.op: kind for kind in (StageRequest, StatsRequest, Accepted, Refused, Go,
                                      Cancel, Exited, Stats)}


def encode(message: Message) -> bytes:
    """The message on the wire."""
    fields = {"op": message.op, **message.fields()}
    return b"".join(f"{key}={value}".encode(errors="surrogateescape") + b"\0"
                    for key, value in fields.items()) + b"\0"


def decode(fields: Mapping[str, str]) -> Message:
    """The message these fields make.

    Raises:
        ValueError: an unknown operation, or a field it needs missing or malformed.
    """
    kind = _KINDS.get(fields.get("op", ""))
    if kind is None:
        raise ValueError(f"unknown message {fields.get('op', '')[:40]!r}")
    return kind.parse(fields)


def send(conn: _socket.socket, message: Message, fds: list[int] | None = None) -> None:
    """Send one message, with `fds` attached (SCM_RIGHTS)."""
    data = encode(message)
    if fds:
        rights = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)  # a C int each
        sent = conn.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
        data = data[sent:]
    if data:
        conn.sendall(data)


class Reader:
    """Messages from a stream socket, in order."""

    def __init__(self, conn: _socket.socket) -> None:
        self.conn = conn
        self.ready: list[Message] = []
        self.fields: dict[str, str] = {}
        self.size = 0
        self.partial = b""

    def feed(self, data: bytes) -> None:
        """Take received bytes.

        Raises:
            ValueError: a malformed or too long message.
        """
        *tokens, self.partial = (self.partial + data).split(b"\0")
        for token in tokens:
            if token:
                key, equals, value = token.decode(errors="surrogateescape").partition("=")
                if not key or not equals:
                    raise ValueError("malformed message field")
                self.fields[key] = value
                self.size += len(token)
                if self.size > MESSAGE_LIMIT:
                    raise ValueError("message too long")
            else:  # the empty field that ends a message
                self.ready.append(decode(self.fields))
                self.fields, self.size = {}, 0
        if len(self.partial) + self.size > MESSAGE_LIMIT:
            raise ValueError("message too long")

    def take(self) -> list[Message]:
        """The complete messages received so far."""
        ready, self.ready = self.ready, []
        return ready

    def next(self) -> Message | None:
        """Block for the next message; None at end of stream.

        Raises:
            ValueError: a malformed or too long message.
            OSError: the connection failed (or timed out).
        """
        while not self.ready:
            data = self.conn.recv(RECEIVE_CHUNK)
            if not data:
                return None
            self.feed(data)
        return self.ready.pop(0)


def _section(fields: Mapping[str, str], prefix: str) -> dict[str, str]:
    return {k[len(prefix):]: v for k, v in fields.items() if k.startswith(prefix)}


def _integer(fields: Mapping[str, str], key: str) -> int:
    value = fields.get(key, "")
    digits = value[1:] if value.startswith("-") else value
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"malformed field {key!r}")
    return int(value)
