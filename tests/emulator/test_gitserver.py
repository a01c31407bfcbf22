"""The HTTPS git test server, driven by the host's real git."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from runner_driver.emulator.gitserver import GitHttpsServer

IDENTITY = ["-c", "user.name=test", "-c", "user.email=test@example.invalid"]


def git(*args: str, ca_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the host's git, trusting `ca_file` alone when given."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    if ca_file is not None:
        env["GIT_SSL_CAINFO"] = str(ca_file)
    return subprocess.run(["git", *IDENTITY, *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def test_https_server_serves_clones_over_both_protocols_and_refuses_pushes(
        tmp_path: Path) -> None:
    """A repository clones byte-exact over smart HTTP v2 and v0 with the server's CA, and
    a push is refused with 403."""
    content = bytes(range(256)) * 8192  # 2 MiB: more than one pack-protocol buffer
    with GitHttpsServer(tmp_path / "server") as server:
        url = server.add_repository("group/app", {"data.bin": content, "a/b.txt": b"b\n"})
        assert url == f"https://127.0.0.1:{server.port}/group/app.git"
        for version in ("2", "0"):
            clone = tmp_path / f"v{version}"
            done = git("-c", f"protocol.version={version}", "clone", "-q", url, str(clone),
                       ca_file=server.ca_file)
            assert done.returncode == 0, done.stderr
            assert (clone / "data.bin").read_bytes() == content
            assert (clone / "a" / "b.txt").read_bytes() == b"b\n"
        assert git("-C", str(tmp_path / "v2"), "commit", "-q", "--allow-empty", "-m", "x"
                   ).returncode == 0
        pushed = git("-C", str(tmp_path / "v2"), "push", "origin", "HEAD:main",
                     ca_file=server.ca_file)
    assert pushed.returncode != 0
    assert "The requested URL returned error: 403" in pushed.stderr


def test_https_server_is_untrusted_without_its_ca(tmp_path: Path) -> None:
    """Without the test CA, the host's git rejects the server's certificate."""
    with GitHttpsServer(tmp_path / "server") as server:
        url = server.add_repository("app", {"README": b"x\n"})
        done = git("clone", "-q", url, str(tmp_path / "clone"))
    assert done.returncode != 0
    assert f"fatal: unable to access '{url}/': " in done.stderr
    assert ("server certificate verification failed" in done.stderr
            or "SSL certificate problem: unable to get local issuer certificate"
            in done.stderr), done.stderr
