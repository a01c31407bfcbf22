"""A minimal OCI distribution registry for tests: HTTPS on 127.0.0.1, a test CA, Basic auth.

`TestRegistry` serves just what a push needs (`GET /v2/`, blob `HEAD`, a monolithic
blob upload with `POST .../blobs/uploads/` then `PUT ...?digest=`, and
`PUT .../manifests/<tag>`) from memory, with a server certificate signed by a CA it
makes with the `openssl` CLI. Every `/v2/` request needs HTTP Basic credentials; a
request without them, or with wrong ones, gets the 401 the reference registry
(distribution/distribution with `auth: htpasswd`) sends: a `WWW-Authenticate: Basic
realm="..."` challenge and an `UNAUTHORIZED` error whose detail lists the access the
request asked for. Emulated pods share the host's loopback, so they reach it as
`127.0.0.1:PORT`. It stores pushed manifests for tests to assert on; it does not
serve pulls beyond blob `HEAD`, token auth, chunked uploads, or deletes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import shutil
import ssl
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .testca import make_certificates, serve_in_background, stop_serving

_BLOB = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
_UPLOADS = re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<upload>[0-9a-f]*)$")
_MANIFEST = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)$")
_NAME = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)"
                   r"[a-z0-9]+)*)*$")


@dataclass(frozen=True)
class PushedManifest:
    """One manifest a client put: repository name, tag (or digest) and content digest."""

    name: str
    tag: str
    digest: str
    media_type: str


class TestRegistry:
    """An in-memory registry on https://127.0.0.1:PORT; use it as a context manager."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, user: str, password: str, realm: str = "Registry Realm") -> None:
        self.user = user
        self.password = password
        self.realm = realm
        self.port = 0
        self._directory: Path | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._blobs: dict[tuple[str, str], bytes] = {}
        self._uploads: dict[str, tuple[str, bytes]] = {}
        self._manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self._pushed: list[PushedManifest] = []

    @property
    def address(self) -> str:
        """`127.0.0.1:PORT`, the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The PEM file of the test CA that signed the server certificate."""
        if self._directory is None:
            raise RuntimeError("the test registry is not started")
        return self._directory / "ca.pem"

    @property
    def pushed(self) -> list[PushedManifest]:
        """The manifests put so far, oldest first."""
        with self._lock:
            return list(self._pushed)

    def manifest(self, name: str, reference: str) -> bytes | None:
        """The stored manifest for a tag or digest, or None."""
        with self._lock:
            found = self._manifests.get((name, reference))
        return found[0] if found else None

    def blob(self, name: str, digest: str) -> bytes | None:
        """The stored blob, or None."""
        with self._lock:
            return self._blobs.get((name, digest))

    # Lifecycle

    def start(self) -> TestRegistry:
        """Make the CA and certificate, then serve on a free port on a background thread."""
        self._directory = Path(tempfile.mkdtemp(prefix="runner-driver-registry-"))
        certificates = make_certificates(self._directory, "runner-driver test registry CA",
                                         "the test registry")
        self._server = _Server(("127.0.0.1", 0), self, certificates.server_context())
        self.port = self._server.server_address[1]
        self._thread = serve_in_background(self._server, "test-registry")
        return self

    def stop(self) -> None:
        """Stop serving and remove the certificates."""
        stop_serving(self._server, self._thread)
        self._server, self._thread = None, None
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def __enter__(self) -> TestRegistry:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    # Request handling (called on the server's worker threads)

    def authorized(self, header: str | None) -> bool:
        """Whether an Authorization header carries this registry's Basic credentials."""
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[len("Basic "):], validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        return bool(sep) and secrets.compare_digest(user, self.user) \
            and secrets.compare_digest(password, self.password)

    def handle(self, method: str, target: str, body: bytes) -> _Response:
        """Serve one authorized request."""
        path = urlsplit(target).path
        query = parse_qs(urlsplit(target).query)
        if path == "/v2/" and method in ("GET", "HEAD"):
            return _json(200, {})
        if (match := _UPLOADS.match(path)) and _NAME.match(match["name"]):
            return self._upload(method, match["name"], match["upload"], query, body)
        if (match := _BLOB.match(path)) and _NAME.match(match["name"]) \
                and method in ("GET", "HEAD"):
            with self._lock:
                blob = self._blobs.get((match["name"], match["digest"]))
            if blob is None:
                return _error(404, "BLOB_UNKNOWN", "blob unknown to registry", match["digest"])
            return _Response(200, blob, {"Docker-Content-Digest": match["digest"],
                                         "Content-Type": "application/octet-stream"})
        if (match := _MANIFEST.match(path)) and _NAME.match(match["name"]) and method == "PUT":
            return self._put_manifest(match["name"], match["reference"], body)
        return _Response(404, b"404 page not found\n", {"Content-Type": "text/plain"})

    def _upload(self, method: str, name: str, upload: str, query: dict[str, list[str]],
                body: bytes) -> _Response:
        if method == "POST" and not upload:
            upload = secrets.token_hex(16)
            with self._lock:
                self._uploads[upload] = (name, b"")
            return _Response(202, b"", {"Location": f"/v2/{name}/blobs/uploads/{upload}",
                                        "Docker-Upload-UUID": upload, "Range": "0-0"})
        if method == "PUT" and upload:
            with self._lock:
                started = self._uploads.pop(upload, None)
            if started is None or started[0] != name:
                return _error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry",
                              None)
            digest = (query.get("digest") or [""])[0]
            content = started[1] + body
            if digest != "sha256:" + hashlib.sha256(content).hexdigest():
                return _error(400, "DIGEST_INVALID", "provided digest did not match uploaded "
                              "content", None)
            with self._lock:
                self._blobs[(name, digest)] = content
            return _Response(201, b"", {"Location": f"/v2/{name}/blobs/{digest}",
                                        "Docker-Content-Digest": digest})
        return _error(405, "UNSUPPORTED", "The operation is unsupported.", None)

    def _put_manifest(self, name: str, reference: str, body: bytes) -> _Response:
        try:
            manifest = json.loads(body)
            referenced = [manifest["config"], *manifest.get("layers", [])]
            digests = [str(descriptor["digest"]) for descriptor in referenced]
        except (ValueError, KeyError, TypeError):
            return _error(400, "MANIFEST_INVALID", "manifest invalid", None)
        with self._lock:
            missing = [d for d in digests if (name, d) not in self._blobs]
        if missing:
            return _error(400, "MANIFEST_BLOB_UNKNOWN", "blob unknown to registry", missing[0])
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        media_type = str(manifest.get("mediaType", ""))
        with self._lock:
            self._manifests[(name, reference)] = (body, media_type)
            self._manifests[(name, digest)] = (body, media_type)
            self._pushed.append(PushedManifest(name, reference, digest, media_type))
        return _Response(201, b"", {"Location": f"/v2/{name}/manifests/{digest}",
                                    "Docker-Content-Digest": digest})

    def unauthorized(self, method: str, target: str) -> _Response:
        """The reference registry's 401: a Basic challenge and the access that was asked for."""
        path = urlsplit(target).path
        name = ""
        for pattern in (_UPLOADS, _BLOB, _MANIFEST):
            if match := pattern.match(path):
                name = match["name"]
                break
        actions = {"GET": ["pull"], "HEAD": ["pull"], "POST": ["pull", "push"],
                   "PUT": ["pull", "push"], "PATCH": ["pull", "push"], "DELETE": ["delete"]}
        # distribution's accessRecords: nil for the base route, which encodes as null.
        detail = [{"Type": "repository", "Class": "", "Name": name, "Action": action}
                  for action in actions.get(method, [])] if name else None
        response = _error(401, "UNAUTHORIZED", "authentication required", detail)
        response.headers["WWW-Authenticate"] = f'Basic realm="{self.realm}"'
        return response


@dataclass
class _Response:
    status: int
    body: bytes
    headers: dict[str, str]


def _json(status: int, document: Any) -> _Response:
    # Go's json.Encoder: compact, newline-terminated.
    body = (json.dumps(document, separators=(",", ":")) + "\n").encode()
    return _Response(status, body, {"Content-Type": "application/json; charset=utf-8"})


def _error(status: int, code: str, message: str, detail: Any) -> _Response:
    return _json(status, {"errors": [{"code": code, "message": message, "detail": detail}]})


class _Server(ThreadingHTTPServer):
    """Handshakes TLS on the worker thread, so a client that gives up never blocks accept."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: TestRegistry,
                 tls: ssl.SSLContext) -> None:
        super().__init__(address, _Handler)
        self.registry = registry
        self.tls = tls

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            connection = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # a client that does not trust the CA aborts the handshake
        with connection:
            _Handler(connection, client_address, self)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients dropping connections are expected; stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "runner-driver-test-registry"
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        registry = self.server.registry
        if not self.path.startswith("/v2/"):
            response = _Response(404, b"404 page not found\n", {"Content-Type": "text/plain"})
        elif not registry.authorized(self.headers.get("Authorization")):
            response = registry.unauthorized(self.command, self.path)
        else:
            response = registry.handle(self.command, self.path, body)
        self.send_response(response.status)
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """No access log on the test's stderr."""
