"""A throwaway test CA and a server certificate for 127.0.0.1, made with the `openssl` CLI.

The emulator's TLS test servers (the registry, the HTTPS git server) each make their
own in a private directory: `ca.pem` (the CA a client must trust), and `server.pem`
with `server.key` (what the server presents). The CA's key is deleted once the server
certificate is signed, so nothing else can ever be signed with it. P-256 keys, valid
for two days.
"""

from __future__ import annotations

import contextlib
import shutil
import socketserver
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from .images import MissingToolError


@dataclass(frozen=True)
class TestCertificates:
    """The files `make_certificates` wrote."""

    __test__ = False  # not a pytest test class, despite its name

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context presenting the certificate."""
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(self.cert_file, self.key_file)
        return tls


def make_certificates(directory: Path, ca_name: str, user: str) -> TestCertificates:
    """A test CA named `ca_name` and a server certificate for 127.0.0.1 that it signed,
    written to `directory`; `user` names what needs them in the missing-openssl error."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise MissingToolError(f"{user} needs the openssl CLI to make its test CA; "
                               "install it with: apt-get install openssl")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    directory.mkdir(parents=True, exist_ok=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", f"/CN={ca_name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    with contextlib.suppress(OSError):
        (directory / "ca.key").unlink()  # nothing else is ever signed with it
    return TestCertificates(directory / "ca.pem", directory / "server.pem",
                            directory / "server.key")


def serve_in_background(server: socketserver.BaseServer, name: str) -> threading.Thread:
    """Run `server` on a daemon thread (the test servers' shared start)."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=name, daemon=True)
    thread.start()
    return thread


def stop_serving(server: socketserver.BaseServer | None,
                 thread: threading.Thread | None) -> None:
    """Stop a server `serve_in_background` started, and wait for its thread."""
    if server is not None:
        server.shutdown()
        server.server_close()
    if thread is not None:
        thread.join(5)
