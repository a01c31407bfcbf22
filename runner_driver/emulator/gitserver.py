"""A git server on 127.0.0.1 for sample jobs: real `git daemon`, repositories made from files.

Emulated pods share the host's loopback, so a job's `get_sources` stage can fetch from
here with the helper container's git exactly as it would from GitLab (over git://
instead of HTTPS with a job token). It needs the host's git, which the emulated
helper image uses anyway. Read-only: nothing can be pushed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from .images import MissingToolError

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
        git = _git()
        work = self.root / "work" / name
        work.mkdir(parents=True)
        for path, content in files.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_bytes(content)
        bare = self.root / f"{name}.git"
        bare.parent.mkdir(parents=True, exist_ok=True)
        for args in (["init", "-q", str(work)], ["-C", str(work), "add", "-A"],
                     ["-C", str(work), "commit", "-q", "-m", "sample project"],
                     ["clone", "-q", "--bare", str(work), str(bare)]):
            subprocess.run([git, *_IDENTITY, *args], check=True, capture_output=True)
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


def _git() -> str:
    found = shutil.which("git")
    if found is None:
        raise MissingToolError("the sample job needs git on the host (the emulated helper "
                               "image uses it too); install it with: apt-get install git")
    return found
