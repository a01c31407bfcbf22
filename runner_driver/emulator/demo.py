"""`runner-driver demo`: a sample kaniko-style job on the embedded emulated cluster.

It shows a newcomer, in one command and without a real cluster, what a job looks like:
a pod with a git-capable helper container and a busybox-only kaniko container sharing
a builds volume, sources fetched in the helper, the image build step in the kaniko
container, and the pod removed afterwards. Until the driver's stages exist (issue 3)
the demo drives the emulated cluster directly through the official Kubernetes client;
it says so, and it says that the cluster and the kaniko executor are stand-ins.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from kubernetes import client, config, watch
from kubernetes.stream import stream

from .cluster import EmulatedCluster
from .kubelet import NodeSettings

KANIKO = "gcr.io/kaniko-project/executor:v1.23.2-debug"
HELPER = "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper:x86_64-v17.0.0"
PROJECT = "/builds/demo/app"

STAGES: tuple[tuple[str, str, list[str]], ...] = (
    ("get_sources", "helper", ["bash", "-c", f"""set -eo pipefail
echo "Fetching the sample project with git $(git --version | cut -d' ' -f3)"
mkdir -p /tmp/origin && cd /tmp/origin && git init -q -b main
printf 'FROM alpine:3.20\\nRUN echo built by kaniko\\n' > Dockerfile
git -c user.name=demo -c user.email=demo@example.com add Dockerfile
git -c user.name=demo -c user.email=demo@example.com commit -q -m 'sample project'
git clone -q /tmp/origin {PROJECT}
echo "Checked out $(git -C {PROJECT} rev-parse --short HEAD) into {PROJECT}"
"""]),
    ("build_script", "build", ["/busybox/sh", "-c", f"""set -e
cd {PROJECT}
echo "Running in the kaniko debug image: $(ls /busybox | wc -l) busybox applets, no git, no bash"
ls -l Dockerfile
/kaniko/executor --context "dir://{PROJECT}" --dockerfile "{PROJECT}/Dockerfile" \\
  --destination registry.example.com/demo/app:latest --no-push
"""]),
)


def _pod() -> dict[str, Any]:
    idle = "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"
    security = {"privileged": False, "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["NET_RAW"]},
                "seccompProfile": {"type": "RuntimeDefault"}}
    return {"metadata": {"name": "runner-demo-job-1",
                         "labels": {"app.kubernetes.io/managed-by": "runner-driver-demo"}},
            "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                     "terminationGracePeriodSeconds": 5, "activeDeadlineSeconds": 600,
                     "volumes": [{"name": "builds", "emptyDir": {}},
                                 {"name": "scratch", "emptyDir": {}}],
                     "containers": [
                         {"name": "helper", "image": HELPER, "command": ["sh", "-c", idle],
                          "securityContext": security,
                          "volumeMounts": [{"name": "builds", "mountPath": "/builds"}]},
                         {"name": "build", "image": KANIKO,
                          "command": ["/busybox/sh", "-c", idle], "securityContext": security,
                          "env": [{"name": "TMPDIR", "value": "/scratch"},
                                  {"name": "container", "value": "kube"}],
                          "volumeMounts": [{"name": "builds", "mountPath": "/builds"},
                                           {"name": "scratch", "mountPath": "/scratch"}]}]}}


def _exec(api: client.CoreV1Api, pod: str, container: str, command: list[str],
          out: TextIO) -> int:
    session = stream(api.connect_get_namespaced_pod_exec, pod, "default", container=container,
                     command=command, stdout=True, stderr=True, stdin=False, tty=False,
                     binary=True, _preload_content=False)
    while session.is_open():
        session.update(timeout=1)
        for channel in (1, 2):
            if session.peek_channel(channel):
                out.write(session.read_channel(channel).decode(errors="replace"))
        out.flush()
    status = session.read_channel(3)
    session.close()
    if b'"Success"' in status:
        return 0
    marker = b'"ExitCode", "message": "'
    if marker in status:
        return int(status.split(marker)[1].split(b'"')[0])
    return -1


def run_demo(out: TextIO = sys.stdout) -> int:
    """Run the demo job; return 0 when every stage succeeded."""
    out.write("runner-driver demo: the Kubernetes cluster below is EMULATED (runner-driver's "
              "embedded emulator: real HTTP API, containers in bubblewrap sandboxes), and the "
              "kaniko executor in it is a STAND-IN that checks flags and credentials but builds "
              "nothing.\nThe driver's own stages arrive with issue 3; this demo drives the "
              "cluster directly with the Kubernetes client.\n\n")
    timings: list[tuple[str, str, int, float]] = []
    with EmulatedCluster(node=NodeSettings(pull_seconds=0.05)) as cluster, \
            tempfile.TemporaryDirectory() as scratch:
        kubeconfig = cluster.write_kubeconfig(Path(scratch) / "kubeconfig")
        api = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
        exec_api = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
        started = time.monotonic()
        body = _pod()
        created = api.create_namespaced_pod("default", body)
        name = created.metadata.name
        out.write(f"\x1b[36;1mPreparing pod {name} on {cluster.url}\x1b[0m\n")
        watcher = watch.Watch()
        for event in watcher.stream(api.list_namespaced_pod, "default",
                                    field_selector=f"metadata.name={name}",
                                    resource_version=created.metadata.resource_version,
                                    timeout_seconds=60):
            statuses = event["object"].status.container_statuses or []
            if statuses and all(s.state.running for s in statuses):
                watcher.stop()
        prepare_seconds = time.monotonic() - started
        out.write(f"Pod running after {prepare_seconds:.2f}s\n")
        failed = False
        for stage, container, command in STAGES:
            out.write(f"\n\x1b[36;1m$ stage {stage} in container {container}\x1b[0m\n")
            stage_started = time.monotonic()
            code = _exec(exec_api, name, container, command, out)
            timings.append((stage, container, code, time.monotonic() - stage_started))
            if code != 0:
                failed = True
                break
        cleanup_started = time.monotonic()
        api.delete_namespaced_pod(name, "default")
        deadline = time.monotonic() + 30
        while api.list_namespaced_pod("default").items and time.monotonic() < deadline:
            time.sleep(0.05)
        cleanup_seconds = time.monotonic() - cleanup_started
    out.write("\nSummary (emulated cluster, stand-in kaniko executor)\n")
    out.write(f"  pod            {name}\n")
    out.write(f"  prepare        {prepare_seconds:6.2f}s\n")
    for stage, container, code, seconds in timings:
        out.write(f"  {stage:<14} {seconds:6.2f}s  exit {code}  ({container})\n")
    out.write(f"  cleanup        {cleanup_seconds:6.2f}s  (pod deleted)\n")
    out.write(f"  result         {'FAILED' if failed else 'job succeeded'}\n")
    return 1 if failed else 0
