"""`runner-driver demo`: a sample kaniko-style job through the driver's real stages.

It shows a newcomer, in one command and without a real cluster, what a job looks like:
the embedded emulated cluster starts, a runner stand-in calls `runner-driver config`,
`prepare`, `run` for each stage and `cleanup` as separate processes exactly as
gitlab-runner does, sources are fetched with git in the helper container from a
local git server, the build step runs `/kaniko/executor` in the busybox-only kaniko
container, and the pod is removed. It says plainly that the cluster is emulated and
that the kaniko executor in it is a stand-in.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from .cluster import EmulatedCluster
from .gitserver import GitServer
from .kubelet import NodeSettings
from .runner import Job, JobResult, RunnerEmulator

KANIKO = "gcr.io/kaniko-project/executor:v1.23.2-debug"
SAMPLE_FILES = {
    "Dockerfile": b"FROM alpine:3.20\nRUN echo built by kaniko > /built.txt\n",
    "README.md": b"A sample project for runner-driver's demo.\n",
}
SCRIPT = (
    'echo "Building $CI_PROJECT_PATH in $(pwd) with the kaniko debug image"',
    "ls -l",
    '/kaniko/executor --context "$CI_PROJECT_DIR" --dockerfile "$CI_PROJECT_DIR/Dockerfile" '
    '--destination "$CI_REGISTRY/$CI_PROJECT_PATH:$CI_JOB_ID" --no-push',
)


def driver_command() -> list[str]:
    """The installed `runner-driver` beside this Python, as a runner would be set up."""
    beside = Path(sys.executable).parent / "runner-driver"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("runner-driver")
    return [found] if found else [sys.executable, "-m", "runner_driver.cli"]


def run_demo(out: TextIO = sys.stdout) -> int:
    """Run the sample job; return 0 when it succeeded."""
    out.write("runner-driver demo: the Kubernetes cluster below is EMULATED (runner-driver's "
              "embedded emulator: real HTTP API and exec websockets, containers in bubblewrap "
              "sandboxes), and the kaniko executor in it is a STAND-IN that checks flags, "
              "credentials and TLS and builds nothing. A runner stand-in calls "
              "the driver's stages exactly as gitlab-runner does.\n\n")
    out.flush()
    with tempfile.TemporaryDirectory(prefix="runner-driver-demo-") as scratch, \
            EmulatedCluster(node=NodeSettings(pull_seconds=0.05)) as cluster, \
            GitServer(Path(scratch) / "git") as git:
        kubeconfig = cluster.write_kubeconfig(Path(scratch) / "kubeconfig")
        settings = Path(scratch) / "config.toml"
        settings.write_text("# the demo uses the built-in defaults\n", encoding="utf-8")
        url = git.add_repository("demo/app", SAMPLE_FILES)
        runner = RunnerEmulator(driver_command(), environ={
            "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": scratch,
            "KUBECONFIG": str(kubeconfig), "RUNNER_DRIVER_CONFIG": str(settings)},
            workdir=Path(scratch))
        job = Job(job_id=1001, project_id=42, project_path="demo/app", image=KANIKO,
                  repository_url=url, script=SCRIPT,
                  after_script=('echo "after_script sees CI_JOB_STATUS=$CI_JOB_STATUS"',))
        started = time.monotonic()
        result = runner.run_job(job)
        total = time.monotonic() - started
        requests = sum(cluster.request_counts().values())
    out.write("---- job log (as the runner would show it) ----\n")
    out.write(result.log.decode(errors="replace"))
    out.write("---- end of job log ----\n\n")
    _summary(out, result, total, requests)
    return 0 if result.status == "success" else 1


def _summary(out: TextIO, result: JobResult, total: float, requests: int) -> None:
    pod = ""
    for call in result.calls:
        if call.stage == "config" and call.stdout:
            pod = str(json.loads(call.stdout).get("hostname", ""))
    out.write("Summary (emulated cluster, stand-in kaniko executor)\n")
    out.write(f"  pod          {pod}\n")
    for call in result.calls:
        out.write(f"  {call.stage:<24} exit {call.exit_code}  {call.seconds:6.2f}s\n")
    out.write(f"  API requests {requests}\n")
    out.write(f"  total        {total:6.2f}s\n")
    verdict = result.status if not result.failure_reason else \
        f"{result.status} ({result.failure_reason})"
    out.write(f"  result       job {verdict}\n")
