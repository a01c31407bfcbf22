"""Client exceptions translated into the driver's own, and which of them are worth retrying.

The Kubernetes client fails in many shapes (ApiException with a Status body, a failed
exec handshake whose only trace is the websocket client's error text, urllib3 and
socket errors). `api_error` turns each into a `ClusterError` that states the action and
the object first, keeps the API server's own message, and says whether it is
transient and how long the server asked us to wait. This module only classifies: it
never retries, sleeps or logs.
"""

from __future__ import annotations

import ast
import http
import json
import math
import re
import ssl
from typing import Any

import urllib3
import websocket
from kubernetes.client.exceptions import ApiException

from ..errors import ClusterError

# Failures GitLab's Kubernetes executor retries (its built-in `retry_limits` list, see
# kubernetes-executor-lessons.md), as they appear in client and server messages.
TRANSIENT_MESSAGES = (
    "error dialing backend", "tls handshake timeout", "connection timed out",
    "timeout occurred", "etcdserver: request timed out", "http2: client connection lost",
    "connection refused", "tls: internal error", "unexpected eof", "connection reset",
    "broken pipe", "connection aborted", "request did not complete within requested timeout",
    "context deadline exceeded",
)
RETRY_AFTER_MAX = 30.0


def api_error(action: str, error: Exception) -> ClusterError:
    """Translate a client exception into ours: action and object first, then the server's words."""
    if isinstance(error, ApiException):
        status = error.status or None
        body = error.body.decode(errors="replace") if isinstance(error.body, bytes) \
            else error.body
        reason, message = error.reason, ""
        retry_after = _retry_after(error.headers)
        if status is None:
            status, message = _handshake_failure(str(error.reason or ""))
            if status is not None:  # not the raw text with the response headers
                reason = _status_phrase(status)
            if retry_after is None:  # a failed exec handshake has no headers here
                retry_after = _status_retry_after(_handshake_status(str(error.reason or "")))
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                message = str(parsed.get("message") or "")
                reason = str(parsed.get("reason") or reason)
                if retry_after is None:
                    retry_after = _status_retry_after(parsed)
        text = f"{action}: {status} {reason}" if status else f"{action}: {reason}"
        text = f"{text}: {message}" if message else text
        return ClusterError(text, status=status, reason=str(reason),
                            transient=is_transient(status, text), retry_after=retry_after)
    if isinstance(error, urllib3.exceptions.SSLError | ssl.SSLError) \
            or "CERTIFICATE_VERIFY_FAILED" in str(error):
        # A certificate the CA does not vouch for stays wrong however often we ask.
        return ClusterError(f"{action}: TLS with the Kubernetes API failed: {error}; check the "
                            "certificate authority in the kubeconfig")
    if isinstance(error, urllib3.exceptions.HTTPError | OSError
                  | websocket.WebSocketException):
        # ConnectTimeoutError covers refused and timed-out connects and failed name
        # lookups: the request was never written to any socket.
        return ClusterError(f"{action}: cannot reach the Kubernetes API: {error}",
                            transient=True,
                            unsent=isinstance(error, urllib3.exceptions.ConnectTimeoutError))
    return ClusterError(f"{action}: {error}")


def is_transient(status: int | None, text: str) -> bool:
    """Whether a failure with this HTTP status (None: no answer) and text may pass if retried."""
    if status is None or status == 429 or status >= 500:
        return True
    lowered = text.lower()
    return any(phrase in lowered for phrase in TRANSIENT_MESSAGES)


def _retry_after(headers: Any) -> float | None:
    """Seconds from a Retry-After header (the API server sends delta-seconds)."""
    try:
        value = float((headers or {}).get("Retry-After") or "")
    except (TypeError, ValueError):
        return None
    return min(max(value, 0.0), RETRY_AFTER_MAX) if math.isfinite(value) else None


def _handshake_failure(reason: str) -> tuple[int | None, str]:
    """Status and message of a failed exec handshake, from the client's error text.

    The websocket client reports e.g. `Handshake status 404 Not Found -+-+- {headers}
    -+-+- b'{...Status JSON...}'`.
    """
    found = re.search(r"Handshake status (\d+)", reason)
    status = int(found.group(1)) if found else None
    parsed = _handshake_status(reason)
    message = str(parsed.get("message") or "") if isinstance(parsed, dict) else ""
    return status, message or (reason if status is None else "")


def _handshake_status(reason: str) -> Any:
    """The Status JSON in a failed exec handshake's error text, or None."""
    body = reason.rsplit("-+-+-", 1)[-1].strip() if "-+-+-" in reason else ""
    try:
        # Older websocket-client versions show the body as a bytes repr, newer ones as text.
        return json.loads(ast.literal_eval(body) if body.startswith(("b'", 'b"')) else body)
    except (ValueError, SyntaxError):
        return None


def _status_retry_after(status: Any) -> float | None:
    """A Status's `details.retryAfterSeconds` (the API server sets it with 429), capped."""
    details = status.get("details") if isinstance(status, dict) else None
    value = details.get("retryAfterSeconds") if isinstance(details, dict) else None
    return None if value is None else _retry_after({"Retry-After": value})


def _status_phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "exec handshake refused"
