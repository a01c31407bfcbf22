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
import ssl
from collections.abc import Iterator, Sequence
from typing import Any

import certifi
import websocket
from kubernetes.client.api_client import ApiClient
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import ws_client

from .. import cancel

Query = Sequence[tuple[str, str | list[str]]]
_JSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}


def pods(namespace: str, name: str = "") -> str:
    """The path of the namespace's pods, or of one pod."""
    return _path(namespace, "pods", name)


def secrets(namespace: str, name: str = "") -> str:
    """The path of the namespace's secrets, or of one secret."""
    return _path(namespace, "secrets", name)


def configmaps(namespace: str, name: str = "") -> str:
    """The path of the namespace's configmaps, or of one."""
    return _path(namespace, "configmaps", name)


def events(namespace: str) -> str:
    """The path of the namespace's core/v1 events."""
    return _path(namespace, "events", "")


def namespace_path() -> str:
    """The path of the driver's namespace object itself."""
    return "/api/v1/namespaces/{namespace}"


# Reviews are created and answered, never stored: nothing is left behind.
SELF_SUBJECT_ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
SELF_SUBJECT_REVIEWS = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


def _path(namespace: str, resource: str, name: str) -> str:
    # Quoted by `ApiClient.param_serialize` as the generated client quotes them.
    return f"/api/v1/namespaces/{{namespace}}/{resource}" + ("/{name}" if name else "")


class Rest:
    """Requests to one API server with one configuration's credentials."""

    def __init__(self, configuration: Any) -> None:
        self.configuration = configuration
        self._client = ApiClient(configuration)

    def call(self, method: str, path: str, params: dict[str, str], timeout: float,
             query: Query = (), body: Any = None, content_type: str = "") -> Any:
        """Send one request; its JSON answer.

        Raises:
            ApiException: the server answered outside 2xx (status, reason, body kept).
            urllib3.exceptions.HTTPError, OSError: no answer.
        """
        response = self._send(method, path, params, timeout, query, body, content_type)
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
        # A cancel breaks the read (which may wait for minutes) by shutting the socket.
        breaker = getattr(response, "shutdown", response.close)
        with cancel.interrupting(breaker):
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

    def exec_socket(self, path: str, params: dict[str, str], query: Query,
                    timeout: float) -> ExecSocket:
        """An exec websocket, its handshake bounded by `timeout` in any thread.

        The client's own `create_websocket` sets no timeout at all: a server that
        accepts and never answers would block the handshake for ever, and only a
        process's main thread could cut it short (with a signal). So the socket is
        opened here with the same headers, subprotocols, TLS options and proxy
        settings the client uses (`ws_client.create_websocket`), plus the timeout.
        """
        _method, url, headers, _body, _post = self._client.param_serialize(
            "GET", path, params, list(query), {"Accept": "*/*"}, auth_settings=["BearerToken"],
            collection_formats={"command": "multi"})
        config = self.configuration
        header = [f"authorization: {headers['authorization']}"] \
            if "authorization" in headers else []
        header.append(f"sec-websocket-protocol: {ws_client.V5_CHANNEL_PROTOCOL},"
                      f"{ws_client.V4_CHANNEL_PROTOCOL}")
        ws_url = ws_client.get_websocket_url(url)
        options: dict[str, Any] = {"cert_reqs": ssl.CERT_NONE}
        if ws_url.startswith("wss://") and config.verify_ssl:
            options = {"cert_reqs": ssl.CERT_REQUIRED,
                       "ca_certs": config.ssl_ca_cert or certifi.where()}
            if config.assert_hostname is not None:
                options["check_hostname"] = config.assert_hostname
        if config.cert_file:
            options["certfile"] = config.cert_file
        if config.key_file:
            options["keyfile"] = config.key_file
        if config.tls_server_name:
            options["server_hostname"] = config.tls_server_name
        connect: dict[str, Any] = {"header": header, "timeout": timeout}
        if config.proxy or config.proxy_headers:
            connect = ws_client.websocket_proxycare(connect, config, ws_url, headers)
        sock = websocket.WebSocket(sslopt=options, skip_utf8_validation=False)
        try:
            sock.connect(ws_url, **connect)  # type: ignore[no-untyped-call]
        except Exception as error:
            # As the client's `websocket_call` reports a failed handshake: status 0 and
            # the websocket library's text, which carries the server's status and body.
            raise ApiException(status=0, reason=str(error)) from error
        return ExecSocket(sock)

    def _send(self, method: str, path: str, params: dict[str, str], timeout: float,
              query: Query, body: Any, content_type: str = "") -> Any:
        headers = dict(_JSON_HEADERS)
        if content_type:  # a PATCH names its kind (merge-patch+json, ...)
            headers["Content-Type"] = content_type
        serialized = self._client.param_serialize(
            method, path, params, list(query), headers, body,
            auth_settings=["BearerToken"])
        response = self._client.call_api(*serialized, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response


class ExecSocket:
    """An open exec websocket: frames are read from `sock`; stdin goes to channel 0."""

    def __init__(self, sock: websocket.WebSocket) -> None:
        self.sock = sock

    def write_stdin(self, data: bytes) -> None:
        self.sock.send(b"\x00" + data, opcode=websocket.ABNF.OPCODE_BINARY)

    def close(self) -> None:
        self.sock.close()


def _lines(response: Any) -> Iterator[bytes]:
    """Newline-ended lines of a streaming response, however its chunks split them."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending
