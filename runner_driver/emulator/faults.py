"""Fault injection and the request log: how tests make the emulated cluster misbehave.

Tests arm faults (fail the next N matching requests with 500/503/429 or a reset
connection, add latency, cut exec websockets after N bytes or T seconds) and read how
many requests of each verb and resource a client made. The rules are plain data so
the admin HTTP endpoint and the Python API share them. Nothing here performs I/O.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestFault:
    """Fail (or delay) the next `count` requests whose method and path match."""

    method: str
    path: str
    count: int
    status: int | None = None
    retry_after: int | None = None
    reset: bool = False
    latency: float = 0.0
    message: str = "injected fault"
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._pattern = re.compile(self.path)

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to a request (method `*` matches any)."""
        return self.count > 0 and self.method in ("*", method) \
            and self._pattern.search(path) is not None


@dataclass
class ExecCut:
    """Drop the next `count` exec websockets after some bytes or seconds of output."""

    count: int
    after_bytes: int | None = None
    after_seconds: float | None = None


@dataclass
class LoggedRequest:
    """One API request as the emulator saw it; `status` is 0 while it is still open."""

    at: float
    method: str
    path: str
    verb: str
    resource: str
    status: int


class Faults:
    """The armed faults and the request log of one emulated cluster."""

    def __init__(self) -> None:
        self.request_faults: list[RequestFault] = []
        self.exec_cuts: list[ExecCut] = []
        self.log: list[LoggedRequest] = []
        # (user, verb, resource) of every authorization check, as an audit log has them.
        self.authorizations: list[tuple[str, str, str]] = []

    def add_request_fault(self, fault: RequestFault) -> None:
        """Arm a request fault; faults are consumed in the order they were added."""
        self.request_faults.append(fault)

    def add_exec_cut(self, cut: ExecCut) -> None:
        """Arm an exec cut."""
        self.exec_cuts.append(cut)

    def clear(self) -> None:
        """Disarm everything (the log is kept)."""
        self.request_faults.clear()
        self.exec_cuts.clear()

    def take_request_fault(self, method: str, path: str) -> RequestFault | None:
        """Consume one use of the first fault matching this request, if any."""
        for fault in self.request_faults:
            if fault.matches(method, path):
                fault.count -= 1
                if fault.count <= 0:
                    self.request_faults.remove(fault)
                return fault
        return None

    def take_exec_cut(self) -> ExecCut | None:
        """Consume one use of the first armed exec cut, if any."""
        for cut in self.exec_cuts:
            if cut.count > 0:
                cut.count -= 1
                if cut.count <= 0:
                    self.exec_cuts.remove(cut)
                return cut
        return None

    def record(self, method: str, path: str, verb: str, resource: str,
               status: int = 0) -> LoggedRequest:
        """Append one request to the log when it arrives (watches and execs stay open)."""
        entry = LoggedRequest(time.time(), method, path, verb, resource, status)
        self.log.append(entry)
        return entry

    def authorized(self, user: str, verb: str, resource: str) -> None:
        """Record one authorization check (a request may need more than one)."""
        self.authorizations.append((user, verb, resource))

    def authorization_counts(self, user: str) -> dict[str, int]:
        """Authorization checks so far for `user`, per `verb resource`."""
        return dict(Counter(f"{verb} {resource}" for who, verb, resource in self.authorizations
                            if who == user))

    def counts(self) -> dict[str, int]:
        """Requests per `verb resource` (e.g. `create pods`, `get pods/exec`)."""
        return dict(Counter(f"{r.verb} {r.resource}" for r in self.log))

    def as_json(self) -> list[dict[str, Any]]:
        """The request log as plain data, for the admin endpoint."""
        return [r.__dict__ for r in self.log]
