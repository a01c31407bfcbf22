"""Git servers on 127.0.0.1 for sample jobs and tests, repositories made from files.

`GitServer` is a real `git daemon` (git://). `GitHttpsServer` serves smart HTTP over
TLS: real `git http-backend` as a CGI behind a small standard-library HTTPS server,
with a server certificate from its own test CA (`ca_file`), so tests can check what
a job needs to trust to clone from a GitLab with a private CA.

Emulated pods share the host's loopback, so a job's `get_sources` stage can fetch from
here with the helper container's git exactly as it would from GitLab (without a job
token). They need the host's git, which the emulated helper image uses anyway.
Read-only: nothing can be pushed.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from .images import MissingToolError
from .testca import make_certificates, serve_in_background, stop_serving

_IDENTITY = ["-c", "user.name=runner-driver demo", "-c", "user.email=demo@example.invalid",
             "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"]


class GitServer:
    """`git daemon` serving bare repositories under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    def add_repository(self, name: str, files: dict[str, bytes]) -> str:
        """Create `<name>.git` with one commit on `main` holding `files`; its clone URL."""
        _make_repository(self.root / "work" / name, self.root / f"{name}.git", files)
        return f"git://127.0.0.1:{self.port}/{name}.git"

    def start(self) -> GitServer:
        """Start the daemon on a free port and wait until it accepts connections."""
        git = _git()
        self.root.mkdir(parents=True, exist_ok=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._process = subprocess.Popen(
            [git, "daemon", "--reuseaddr", "--export-all", f"--base-path={self.root}",
             "--listen=127.0.0.1", f"--port={self.port}", str(self.root)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("starting git daemon for the sample job failed") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop the daemon."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def __enter__(self) -> GitServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


class GitHttpsServer:
    """`git http-backend` over HTTPS on https://127.0.0.1:PORT, serving bare repositories
    under `root/repos` read-only; its certificates live in `root/tls`. Use it as a
    context manager."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 0
        self._server: _HttpsServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def ca_file(self) -> Path:
        """The PEM file of the test CA that signed the server certificate."""
        if self._server is None:
            raise RuntimeError("the HTTPS git server is not started")
        return self.root / "tls" / "ca.pem"

    def add_repository(self, name: str, files: dict[str, bytes]) -> str:
        """Create `<name>.git` with one commit on `main` holding `files`; its clone URL."""
        if self._server is None:
            raise RuntimeError("the HTTPS git server is not started")
        _make_repository(self.root / "work" / name, self.root / "repos" / f"{name}.git", files)
        return f"https://127.0.0.1:{self.port}/{name}.git"

    def start(self) -> GitHttpsServer:
        """Make the CA and certificate, then serve on a free port on a background thread."""
        backend = Path(subprocess.run([_git(), "--exec-path"], check=True, capture_output=True,
                                      text=True).stdout.strip()) / "git-http-backend"
        if not backend.is_file():
            raise MissingToolError(f"the HTTPS git server needs {backend}; install it with: "
                                   "apt-get install git")
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        certificates = make_certificates(self.root / "tls", "runner-driver test git CA",
                                         "the HTTPS git server")
        self._server = _HttpsServer(("127.0.0.1", 0), backend, self.root / "repos",
                                    certificates.server_context())
        self.port = self._server.server_address[1]
        self._thread = serve_in_background(self._server, "test-git-https")
        return self

    def stop(self) -> None:
        """Stop serving (the repositories and certificates stay under `root`)."""
        stop_serving(self._server, self._thread)
        self._server, self._thread = None, None

    def __enter__(self) -> GitHttpsServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


class _HttpsServer(ThreadingHTTPServer):
    """Handshakes TLS on the worker thread, so a client that gives up never blocks accept."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], backend: Path, project_root: Path,
                 tls: ssl.SSLContext) -> None:
        super().__init__(address, _CgiHandler)
        self.backend = backend
        self.project_root = project_root
        self.tls = tls

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            connection = self.tls.wrap_socket(request, server_side=True)
        except OSError:  # ssl.SSLError too: a client that does not trust the CA aborts
            return
        with connection:
            _CgiHandler(connection, client_address, self)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients dropping connections are expected; stay quiet."""


class _CgiHandler(BaseHTTPRequestHandler):
    """Runs `git http-backend` once per request (RFC 3875 CGI, as git's docs set it up)."""

    protocol_version = "HTTP/1.1"
    server_version = "runner-driver-test-git"
    server: _HttpsServer

    def _serve(self) -> None:
        target = urlsplit(self.path)
        body = self._body()
        if "git-receive-pack" in target.path or "service=git-receive-pack" in target.query:
            self._send(403, {"Content-Type": "text/plain"}, b"read-only: pushing is refused\n")
            return
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "GIT_PROJECT_ROOT": str(self.server.project_root), "GIT_HTTP_EXPORT_ALL": "1",
               "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_PROTOCOL": "HTTP/1.1",
               "SERVER_SOFTWARE": self.server_version, "REQUEST_METHOD": self.command,
               "PATH_INFO": unquote(target.path), "QUERY_STRING": target.query,
               "REMOTE_ADDR": self.client_address[0], "CONTENT_LENGTH": str(len(body)),
               "CONTENT_TYPE": self.headers.get("Content-Type", "")}
        for header in ("Git-Protocol", "Content-Encoding"):
            if value := self.headers.get(header):
                env["HTTP_" + header.upper().replace("-", "_")] = value
        done = subprocess.run([str(self.server.backend)], input=body, capture_output=True,
                              env=env, timeout=60, check=False)
        head, content = _split_cgi_output(done.stdout)
        status, headers = 200, dict[str, str]()
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "status":
                status = int(value.split()[0])
            elif key.strip():
                headers[key.strip()] = value.strip()
        if done.returncode != 0 and not head:
            status, headers, content = 500, {"Content-Type": "text/plain"}, done.stderr
        self._send(status, headers, content)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers, up to the blank line
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, headers: dict[str, str], content: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    do_GET = do_HEAD = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """No access log on the test's stderr."""


def _split_cgi_output(output: bytes) -> tuple[bytes, bytes]:
    """A CGI response's header block and body, split at the first blank line (CRLF or LF)."""
    ends = [(found, len(blank)) for blank in (b"\r\n\r\n", b"\n\n")
            if (found := output.find(blank)) >= 0]
    if not ends:
        return b"", output
    found, width = min(ends)
    return output[:found], output[found + width:]


def _make_repository(work: Path, bare: Path, files: dict[str, bytes]) -> None:
    """A work tree at `work` with one commit on `main` holding `files`, cloned bare to `bare`."""
    git = _git()
    work.mkdir(parents=True)
    for path, content in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_bytes(content)
    bare.parent.mkdir(parents=True, exist_ok=True)
    for args in (["init", "-q", str(work)], ["-C", str(work), "add", "-A"],
                 ["-C", str(work), "commit", "-q", "-m", "sample project"],
                 ["clone", "-q", "--bare", str(work), str(bare)]):
        subprocess.run([git, *_IDENTITY, *args], check=True, capture_output=True)


def _git() -> str:
    found = shutil.which("git")
    if found is None:
        raise MissingToolError("the sample job needs git on the host (the emulated helper "
                               "image uses it too); install it with: apt-get install git")
    return found
