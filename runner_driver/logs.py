"""Driver logs: structlog to stderr, one context per stage, secrets never shown.

gitlab-runner shows a stage's stderr in the job log (and cleanup's in its own log),
while stdout is protocol (`config`) or the job's own output (`run`). So every driver
log line goes to stderr, is short, carries the stage, job and pod once bound, and has
every known secret value replaced before it is rendered. This module must not print
to stdout.

The agent runs many jobs' stages at once, each in a thread of its own: the stage's
stderr and its job's secrets are context variables, so each stage logs to its own
client's pipe and masks its own job's secrets; only the level and format are global.
"""

from __future__ import annotations

import base64
import contextvars
import json
import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO
from urllib.parse import quote

import structlog

REDACTED = "[MASKED]"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
_stream: contextvars.ContextVar[TextIO | None] = contextvars.ContextVar("log_stream",
                                                                        default=None)
_redactor: contextvars.ContextVar[Redactor | None] = contextvars.ContextVar("log_redactor",
                                                                            default=None)
_applied: dict[str, tuple[str, str]] = {}  # the global structlog setup: level and format


def forms(secret: str) -> set[str]:
    """The ways a secret shows up in text: as is, base64 (as in a Secret's data or a
    config.json `auth`), URL-encoded and JSON-escaped."""
    raw = secret.encode()
    found = {secret, base64.b64encode(raw).decode(), base64.b64encode(raw).decode().rstrip("="),
             base64.urlsafe_b64encode(raw).decode().rstrip("="), quote(secret, safe=""),
             json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    # A fragment shorter than the secret's own length could match ordinary text.
    return {f for f in found if len(f) >= min(8, len(secret))}


class Redactor:
    """A structlog processor that masks known secret values wherever they appear, in
    each of their `forms`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    @property
    def secrets(self) -> tuple[str, ...]:
        """The secret values masked, longest first (each also in its other `forms`)."""
        return self._secrets

    @secrets.setter
    def secrets(self, values: tuple[str, ...]) -> None:
        self._secrets = values
        expanded = {form for value in values for form in forms(value)}
        self._forms = tuple(sorted(expanded, key=len, reverse=True))

    def mask(self, text: str) -> str:
        """`text` with every secret value replaced."""
        for secret in self._forms:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def __call__(self, _logger: Any, _method: str,
                 event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in list(event.items()):
            if isinstance(value, str):
                event[key] = self.mask(value)
            elif not isinstance(value, int | float | bool | type(None)):
                event[key] = self.mask(str(value))
        return event


def configure(level: str = "warning", fmt: str = "console", secrets: Iterable[str] = (),
              stream: TextIO | None = None, redactor: Redactor | None = None) -> Redactor:
    """Send this stage's structlog events at `level` or above to `stream` (None: the
    process's stderr), masking `secrets`.

    Passing the `redactor` of an earlier call keeps it, now masking `secrets` too.
    """
    if redactor is None:
        redactor = Redactor(secrets)
    else:
        redactor.secrets = Redactor([*redactor.secrets, *secrets]).secrets
    _redactor.set(redactor)
    _stream.set(stream)
    if _applied.get("setup") != (level, fmt) \
            or structlog.get_config()["logger_factory"] is not _print_logger:
        _applied["setup"] = (level, fmt)
        renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json"
                         else structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0))
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                # Render tracebacks to text before masking: an exception's message may
                # carry a secret, and the renderers would format exc_info after the
                # redactor.
                structlog.processors.format_exc_info,
                _redact,
                renderer,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(
                _LEVELS.get(level, logging.WARNING)),
            logger_factory=_print_logger,
            cache_logger_on_first_use=False,
        )
    return redactor


def stderr() -> TextIO:
    """This stage's stderr: its client's pipe in the agent, else the process's."""
    return _stream.get() or sys.stderr


def _print_logger(*_args: Any) -> structlog.PrintLogger:
    return structlog.PrintLogger(stderr())


def _redact(logger: Any, method: str,
            event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    redactor = _redactor.get()
    return event if redactor is None else redactor(logger, method, event)


def bind(**context: str) -> None:
    """Attach context (stage, job_id, pod) to every later event of this process."""
    structlog.contextvars.bind_contextvars(**context)


def get() -> Any:
    """The driver's logger."""
    return structlog.get_logger("runner-driver")
