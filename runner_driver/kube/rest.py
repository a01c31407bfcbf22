"""The dozen REST requests the driver makes, sent through the client's own `ApiClient`.

The generated `CoreV1Api` costs over a second of CPU just to import: it builds a
pydantic validator for each of its ~400 methods. Every driver process that talked to
the cluster paid that, for ten endpoints whose answers we read as plain JSON anyway.
This module sends the same requests through the same `ApiClient`, so credentials,
token refresh (exec plugins), TLS and proxies are exactly the client's; it only names
the paths itself. It must not interpret an answer beyond its HTTP status: callers get
JSON, a streaming response or an exec websocket, and the client's `ApiException` for
any answer outside 2xx, which `errors.api_error` translates.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from kubernetes.client.api_client import ApiClient
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import ws_client

Query = Sequence[tuple[str, str | list[str]]]
_JSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}


def pods(namespace: str, name: str = "") -> str:
    """The path of the namespace's pods, or of one pod."""
    return _path(namespace, "pods", name)


def secrets(namespace: str, name: str = "") -> str:
    """The path of the namespace's secrets, or of one secret."""
    return _path(namespace, "secrets", name)


def events(namespace: str) -> str:
    """The path of the namespace's core/v1 events."""
    return _path(namespace, "events", "")


def _path(namespace: str, resource: str, name: str) -> str:
    # Quoted by `ApiClient.param_serialize` as the generated client quotes them.
    return f"/api/v1/namespaces/{{namespace}}/{resource}" + ("/{name}" if name else "")


class Rest:
    """Requests to one API server with one configuration's credentials."""

    def __init__(self, configuration: Any) -> None:
        self.configuration = configuration
        self._client = ApiClient(configuration)

    def call(self, method: str, path: str, params: dict[str, str], timeout: float,
             query: Query = (), body: Any = None) -> Any:
        """Send one request; its JSON answer.

        Raises:
            ApiException: the server answered outside 2xx (status, reason, body kept).
            urllib3.exceptions.HTTPError, OSError: no answer.
        """
        response = self._send(method, path, params, timeout, query, body)
        return json.loads(response.read())

    def watch(self, path: str, params: dict[str, str], timeout: float,
              query: Query) -> Iterator[dict[str, Any]]:
        """The events of a watch (`watch=true` is added), as they arrive, until it ends.

        Raises:
            ApiException: the server refused the watch, or sent an ERROR event (its
                Status's code, reason and message kept, e.g. 410 Gone).
        """
        response = self._send("GET", path, params, timeout, [*query, ("watch", "true")],
                              None).response
        try:
            for line in _lines(response):
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise ApiException(status=int(status.get("code") or 0) or None,
                                       reason=str(status.get("reason") or "Error"),
                                       body=json.dumps(status))
                yield event
        finally:
            response.release_conn()

    def exec_socket(self, path: str, params: dict[str, str], query: Query) -> Any:
        """An exec websocket (the client's `WSClient`) that keeps no copy of the output."""
        method, url, headers, _body, _post = self._client.param_serialize(
            "GET", path, params, list(query), {"Accept": "*/*"}, auth_settings=["BearerToken"],
            collection_formats={"command": "multi"})
        return ws_client.websocket_call(self.configuration, method, url, headers=headers,
                                        _preload_content=False, capture_all=False,
                                        binary=True)

    def _send(self, method: str, path: str, params: dict[str, str], timeout: float,
              query: Query, body: Any) -> Any:
        serialized = self._client.param_serialize(
            method, path, params, list(query), dict(_JSON_HEADERS), body,
            auth_settings=["BearerToken"])
        response = self._client.call_api(*serialized, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response


def _lines(response: Any) -> Iterator[bytes]:
    """Newline-ended lines of a streaming response, however its chunks split them."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending
