"""The `pods/exec` websocket endpoint, checked over the wire like a real API server's.

Sessions are driven with the official client (`stream(..., binary=True,
_preload_content=False)`) and, where the protocol itself is the subject, with a raw
websocket or HTTP client. The facts pinned here come from the Kubernetes sources:
apiserver `util/proxy/websocket.go` and `streamtranslator.go`, `wsstream/conn.go`
(over `golang.org/x/net/websocket`) and the pod REST `streamLocation` errors.
"""

from __future__ import annotations

import base64
import codecs
import gc
import hashlib
import http.client
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
import websocket
from kubernetes import client
from kubernetes.client.rest import ApiException

from runner_driver.emulator import EmulatedCluster
from tests.conftest import finish, job_pod, open_session, take, wait_for, wait_running

V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"
STDIN, STDOUT, STDERR, ERROR, CLOSE = 0, 1, 2, 3, 255
IDLE = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"]
BOX_ENV = [{"name": "FOO", "value": "bar baz=qux"},
           {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
MiB = 1024 * 1024
# A whole 50 MiB stream held anywhere (server, either socket end, the client) would
# raise the process's peak RSS by at least 50 MiB. Streaming should cost a few frames
# of 32 KiB plus allocator and socket-buffer noise. 24 MiB sits well above that noise
# and well below half the payload, so it fails for any buffering of the stream.
STREAM_BYTES = 50 * MiB
RSS_BOUND = 24 * MiB


# Raw protocol helpers


def exec_path(namespace: str, pod: str, command: list[str], container: str | None = None,
              stdin: bool = False, stdout: bool = True, stderr: bool = True) -> str:
    """The exec URL path with its query, each argv element a `command=` parameter."""
    query: list[tuple[str, str]] = [("command", part) for part in command]
    if container is not None:
        query.append(("container", container))
    query += [(k, "true") for k, on in (("stdin", stdin), ("stdout", stdout),
                                        ("stderr", stderr)) if on]
    return f"/api/v1/namespaces/{namespace}/pods/{pod}/exec?{urlencode(query)}"


def connect(cluster: EmulatedCluster, path: str,
            protocols: tuple[str, ...] = (V5,)) -> websocket.WebSocket:
    """Open a raw websocket (a GET upgrade) offering the given subprotocols in order."""
    return websocket.create_connection(f"ws://127.0.0.1:{cluster.port}{path}", timeout=30,
                                       subprotocols=list(protocols))


def send(ws: websocket.WebSocket, channel: int, payload: bytes) -> None:
    """Send one binary frame on a channel."""
    ws.send(bytes([channel]) + payload, opcode=websocket.ABNF.OPCODE_BINARY)


@dataclass
class Session:
    """Everything a raw exec session delivered, frame by frame."""

    protocol: str | None
    frames: list[bytes] = field(default_factory=list)

    def channel(self, number: int) -> bytes:
        """All payload bytes received on one channel, in order."""
        return b"".join(f[1:] for f in self.frames if f and f[0] == number)

    @property
    def status(self) -> Any:
        """The decoded channel-3 Status, or None when none arrived."""
        raw = self.channel(ERROR)
        return json.loads(raw) if raw else None


def collect(ws: websocket.WebSocket) -> Session:
    """Read frames until the server closes the connection."""
    session = Session(ws.subprotocol)
    while True:
        opcode, frame = ws.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        if opcode in (websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_TEXT):
            session.frames.append(bytes(frame.data))
    ws.close()
    return session


def raw_exec(cluster: EmulatedCluster, namespace: str, pod: str, command: list[str],
             protocols: tuple[str, ...] = (V5,), *, stdin: bool = False, stdout: bool = True,
             stderr: bool = True) -> Session:
    """Run a command over a raw websocket and collect the whole session."""
    path = exec_path(namespace, pod, command, stdin=stdin, stdout=stdout, stderr=stderr)
    return collect(connect(cluster, path, protocols))


def handshake(cluster: EmulatedCluster, path: str, method: str = "GET",
              upgrade: str = "websocket",
              protocol: str = V5) -> tuple[int, dict[str, str], bytes]:
    """Send an upgrade request and return the status, headers and body it got back."""
    connection = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=30)
    headers = {"Connection": "Upgrade", "Upgrade": upgrade, "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    if upgrade == "websocket":
        headers["Sec-WebSocket-Protocol"] = protocol
    else:
        headers["X-Stream-Protocol-Version"] = protocol
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        body = response.read() if response.status != 101 else b""
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


# Official-client helpers


def run(api: client.CoreV1Api, namespace: str, pod: str, command: list[str],
        container: str | None = None) -> tuple[int | None, bytes, bytes]:
    """Run a command with the official client: its returncode, stdout and stderr."""
    session = open_session(api, namespace, pod, command, container)
    out, err, _ = finish(session)
    return session.returncode, out, err


def upload(api: client.CoreV1Api, namespace: str, pod: str, path: str, data: bytes) -> None:
    """Write bytes to a file in the container through stdin, ended by the v5 CLOSE frame."""
    session = open_session(api, namespace, pod, ["sh", "-c", f"cat > {path}"], stdin=True)
    assert session.subprotocol == V5
    out, err = bytearray(), bytearray()
    for offset in range(0, len(data), 64 * 1024):
        session.write_stdin(data[offset:offset + 64 * 1024])
        session.update(timeout=0)
        take(session, out, err)
    session.close_channel(STDIN)
    _, stderr, status = finish(session)
    assert status == {"metadata": {}, "status": "Success"}, (status, err + stderr)


def memory_kib(field_name: str) -> int:
    """A VmRSS/VmHWM figure of this process (which also runs the emulator), in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field_name} missing from /proc/self/status")


# Fixtures


@pytest.fixture(scope="module")
def space(core: client.CoreV1Api) -> Iterator[str]:
    """One namespace for the module's pods."""
    name = "exec-" + uuid.uuid4().hex[:6]
    core.create_namespace({"metadata": {"name": name}})
    wait_for(lambda: core.list_namespaced_service_account(name).items, what="service account")
    yield name
    core.delete_namespace(name)


def box_pod(name: str) -> dict[str, Any]:
    """A one-container busybox pod with env, a working dir and an emptyDir at /data."""
    return {"metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
                     "automountServiceAccountToken": False,
                     "volumes": [{"name": "data", "emptyDir": {}}],
                     "containers": [{"name": "main", "image": "busybox:1.36", "command": IDLE,
                                     "env": BOX_ENV, "workingDir": "/work",
                                     "volumeMounts": [{"name": "data",
                                                       "mountPath": "/data"}]}]}}


@pytest.fixture(scope="module")
def box(core: client.CoreV1Api, space: str) -> str:
    """A running single-container pod."""
    core.create_namespaced_pod(space, box_pod("box"))
    wait_running(core, space, "box")
    return "box"


@pytest.fixture(scope="module")
def twin(core: client.CoreV1Api, space: str) -> str:
    """A second running pod, identical to `box` (emptyDir at the same path)."""
    core.create_namespaced_pod(space, box_pod("twin"))
    wait_running(core, space, "twin")
    return "twin"


@pytest.fixture(scope="module")
def job(core: client.CoreV1Api, space: str) -> str:
    """A running helper+build pod like the driver's (two containers)."""
    core.create_namespaced_pod(space, job_pod("job"))
    wait_running(core, space, "job")
    return "job"


@pytest.fixture(scope="module")
def unplaced(core: client.CoreV1Api, space: str) -> str:
    """A pod no node can take (impossible nodeSelector), so it never gets a host."""
    body = box_pod("unplaced")
    body["spec"]["nodeSelector"] = {"example.com/no-such-node": "true"}
    core.create_namespaced_pod(space, body)
    return "unplaced"


# Subprotocol negotiation and framing


def test_official_client_negotiates_v5(exec_core: client.CoreV1Api, space: str,
                                       box: str) -> None:
    """The official client offers v5 and v4 and the server picks v5."""
    session = open_session(exec_core, space, box, ["true"])
    assert session.subprotocol == V5
    finish(session)
    assert session.returncode == 0


@pytest.mark.parametrize(("offered", "chosen"), [
    ((V5,), V5),
    ((V4,), V4),
    ((V5, V4), V5),
    # A real server terminates any v5 offer itself and speaks only v5 there.
    ((V4, V5), V5),
])
def test_subprotocol_choice(cluster: EmulatedCluster, space: str, box: str,
                            offered: tuple[str, ...], chosen: str) -> None:
    """v5 is chosen whenever offered, v4 when only v4 is offered, and the exec then works."""
    session = raw_exec(cluster, space, box, ["echo", "hi"], offered)
    assert session.protocol == chosen
    assert session.channel(STDOUT) == b"hi\n"
    assert session.status == {"metadata": {}, "status": "Success"}


@pytest.mark.parametrize(("stdout", "stderr", "stdin", "first"), [
    (True, True, False, bytes([STDOUT])),
    (False, True, False, bytes([STDERR])),
    (False, False, True, bytes([ERROR])),
])
def test_first_frame_is_empty_on_lowest_output_channel(cluster: EmulatedCluster, space: str,
                                                       box: str, stdout: bool, stderr: bool,
                                                       stdin: bool, first: bytes) -> None:
    """Right after the upgrade an empty frame arrives on the lowest writable channel."""
    session = raw_exec(cluster, space, box, ["true"], stdin=stdin, stdout=stdout,
                       stderr=stderr)
    assert session.frames[0] == first, session.frames
    assert session.status == {"metadata": {}, "status": "Success"}, session.frames


def test_post_upgrade_is_refused_like_golang_websocket(cluster: EmulatedCluster, space: str,
                                                       box: str) -> None:
    """A websocket upgrade must be a GET: a POST upgrade gets 405 "bad method", a GET 101."""
    path = exec_path(space, box, ["true"])
    code, headers, body = handshake(cluster, path, method="POST")
    assert (code, body) == (405, b"bad method")
    assert "upgrade" not in headers
    code, headers, _ = handshake(cluster, path, method="GET")
    assert code == 101
    assert headers["sec-websocket-protocol"] == V5
    # The pod lookup comes first, so a POST for a missing pod is still a 404 Status.
    code, _, body = handshake(cluster, exec_path(space, "ghost", ["true"]), method="POST")
    assert (code, json.loads(body)["reason"]) == (404, "NotFound")


# Channel 3 status and exit codes


@pytest.mark.parametrize(("script", "code"), [
    ("exit 0", 0), ("exit 1", 1), ("exit 7", 7), ("exit 255", 255), ("kill -9 $$", 137)])
def test_exit_status_on_channel_3(exec_core: client.CoreV1Api, space: str, box: str,
                                  script: str, code: int) -> None:
    """Exit 0 is a Success Status; others are NonZeroExitCode with an ExitCode cause."""
    session = open_session(exec_core, space, box, ["sh", "-c", script])
    _, _, status = finish(session)
    if code == 0:
        assert status == {"metadata": {}, "status": "Success"}
    else:
        assert status["status"] == "Failure"
        assert status["reason"] == "NonZeroExitCode"
        assert status["details"]["causes"][0] == {"reason": "ExitCode", "message": str(code)}
        assert status["message"].startswith("command terminated with non-zero exit code")
    assert session.returncode == code


def test_missing_executable_fails_without_exit_code(exec_core: client.CoreV1Api, space: str,
                                                    box: str) -> None:
    """A command that is not there is a Failure with no ExitCode cause, not an exit code."""
    session = open_session(exec_core, space, box, ["no-such-tool", "--flag"])
    out, _, status = finish(session)
    assert out == b""
    assert (status["status"], status["reason"], status["code"]) == ("Failure", "InternalError",
                                                                    500)
    assert "executable file not found" in status["message"]
    causes = status.get("details", {}).get("causes", [])
    assert all(cause.get("reason") != "ExitCode" for cause in causes)
    # The official client reads causes[0].message as the exit code, and cannot here.
    with pytest.raises((ValueError, KeyError, TypeError)):
        _ = session.returncode


# stdin


def test_v5_close_frame_ends_stdin(exec_core: client.CoreV1Api, space: str, box: str) -> None:
    """On v5, CLOSE [255, 0] ends stdin: `cat` exits and every byte sent came back."""
    data = bytes(range(256)) * 4 + os.urandom(512 * 1024)
    session = open_session(exec_core, space, box, ["cat"], stdin=True)
    assert session.subprotocol == V5
    out, err = bytearray(), bytearray()
    for offset in range(0, len(data), 16 * 1024):
        session.write_stdin(data[offset:offset + 16 * 1024])
        session.update(timeout=0)
        take(session, out, err)
    session.close_channel(STDIN)
    rest, _, status = finish(session)
    assert hashlib.sha256(bytes(out) + rest).hexdigest() == hashlib.sha256(data).hexdigest()
    assert status == {"metadata": {}, "status": "Success"}
    assert session.returncode == 0


def test_raw_close_frame_on_v5(cluster: EmulatedCluster, space: str, box: str) -> None:
    """The exact frame [255, 0] half-closes stdin on v5 while output still flows back."""
    ws = connect(cluster, exec_path(space, box, ["sh", "-c", "cat; echo eof"], stdin=True))
    send(ws, STDIN, b"hello ")
    send(ws, STDIN, b"world\n")
    ws.send(bytes([CLOSE, STDIN]), opcode=websocket.ABNF.OPCODE_BINARY)
    session = collect(ws)
    assert session.channel(STDOUT) == b"hello world\neof\n"
    assert session.status == {"metadata": {}, "status": "Success"}


def test_v4_ignores_close_frame(cluster: EmulatedCluster, space: str, box: str) -> None:
    """On v4 channel 255 means nothing: stdin stays open and `head -c` reads what follows."""
    ws = connect(cluster, exec_path(space, box, ["head", "-c", "5"], stdin=True), (V4,))
    assert ws.subprotocol == V4
    ws.send(bytes([CLOSE, STDIN]), opcode=websocket.ABNF.OPCODE_BINARY)
    send(ws, STDIN, b"hel")
    send(ws, STDIN, b"lo, and more")
    session = collect(ws)
    assert session.channel(STDOUT) == b"hello"
    assert session.status == {"metadata": {}, "status": "Success"}


def test_v4_stdin_with_head_and_official_client(exec_core: client.CoreV1Api, space: str,
                                                box: str) -> None:
    """On v4 the client cannot close stdin, so `head -c N` consumes exactly N bytes."""
    data = os.urandom(100_000) + bytes(range(256))
    session = open_session(exec_core, space, box, ["head", "-c", str(len(data))], stdin=True,
                           headers={"sec-websocket-protocol": V4})
    assert session.subprotocol == V4
    out, err = bytearray(), bytearray()
    for offset in range(0, len(data), 16 * 1024):
        session.write_stdin(data[offset:offset + 16 * 1024])
        session.update(timeout=0)
        take(session, out, err)
    session.close_channel(STDIN)  # silently nothing on v4
    rest, _, status = finish(session)
    assert bytes(out) + rest == data
    assert status == {"metadata": {}, "status": "Success"}
    assert session.returncode == 0


# Byte-exactness


def test_binary_stdout_is_byte_exact(exec_core: client.CoreV1Api, space: str,
                                     box: str) -> None:
    """All 256 byte values and 3 MiB of random data come back through stdout unchanged."""
    data = bytes(range(256)) * 16 + os.urandom(3 * MiB)
    upload(exec_core, space, box, "/data/blob", data)
    code, out, _ = run(exec_core, space, box, ["sha256sum", "/data/blob"])
    assert code == 0
    assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()
    code, out, err = run(exec_core, space, box, ["cat", "/data/blob"])
    assert (code, err) == (0, b"")
    assert len(out) == len(data)
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(data).hexdigest()


def test_stderr_is_kept_apart_from_stdout(cluster: EmulatedCluster, space: str,
                                          box: str) -> None:
    """stdout and stderr arrive on channels 1 and 2, each complete and unmixed."""
    script = ("printf out1; printf err1 >&2; printf out2; printf err2 >&2; "
              "head -c 200000 /dev/zero | tr '\\0' o; head -c 100000 /dev/zero | tr '\\0' e >&2")
    session = raw_exec(cluster, space, box, ["sh", "-c", script])
    assert session.channel(STDOUT) == b"out1out2" + b"o" * 200_000
    assert session.channel(STDERR) == b"err1err2" + b"e" * 100_000
    assert session.status == {"metadata": {}, "status": "Success"}


def test_utf8_split_across_frames_reassembles(cluster: EmulatedCluster,
                                              exec_core: client.CoreV1Api, space: str,
                                              box: str) -> None:
    """A frame boundary inside a 4-byte character is repaired by binary mode plus a decoder."""
    text = "a" * 32767 + "\U0001f600" * 8192
    upload(exec_core, space, box, "/data/utf8.txt", text.encode())
    session = raw_exec(cluster, space, box, ["cat", "/data/utf8.txt"])
    payloads = [f[1:] for f in session.frames if f[:1] == bytes([STDOUT]) and len(f) > 1]
    assert len(payloads) > 1

    def splits_a_character(payload: bytes) -> bool:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False

    assert any(splits_a_character(p) for p in payloads[:-1]), "no frame split a character"
    official = open_session(exec_core, space, box, ["cat", "/data/utf8.txt"])
    decoder = codecs.getincrementaldecoder("utf-8")()
    pieces: list[str] = []
    while official.is_open():
        official.update(timeout=1)
        if official.peek_channel(STDOUT):
            pieces.append(decoder.decode(official.read_channel(STDOUT)))
    pieces.append(decoder.decode(official.read_channel(STDOUT), final=True))
    assert "".join(pieces) == text
    assert official.returncode == 0


def test_50_mib_stream_with_bounded_memory(cluster: EmulatedCluster,
                                           exec_core: client.CoreV1Api, space: str, box: str,
                                           record_property: Any) -> None:
    """50 MiB through one exec arrive exactly while the process RSS stays bounded."""
    seed = os.urandom(MiB)
    upload(exec_core, space, box, "/data/seed", seed)
    repeats = STREAM_BYTES // MiB
    expected = hashlib.sha256()
    for _ in range(repeats):
        expected.update(seed)
    script = f'i=0; while [ $i -lt {repeats} ]; do cat /data/seed; i=$((i+1)); done'
    del seed
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM, so the peak measured is this stream's
    baseline = memory_kib("VmRSS")
    peak = baseline
    started = time.monotonic()
    ws = connect(cluster, exec_path(space, box, ["sh", "-c", script]))
    received, frames = 0, 0
    digest = hashlib.sha256()
    status: Any = None
    while True:
        opcode, frame = ws.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        data = frame.data
        if data[:1] == bytes([STDOUT]):
            digest.update(data[1:])
            received += len(data) - 1
        elif data[:1] == bytes([ERROR]):
            status = json.loads(data[1:])
        frames += 1
        if frames % 64 == 0:
            peak = max(peak, memory_kib("VmRSS"))
    ws.close()
    seconds = time.monotonic() - started
    growth = (max(peak, memory_kib("VmHWM")) - baseline) * 1024
    record_property("stream_seconds", round(seconds, 2))
    record_property("stream_rss_growth_mib", round(growth / MiB, 1))
    print(f"\n50 MiB exec stream: {seconds:.2f}s, {frames} frames, "
          f"peak RSS growth {growth / MiB:.1f} MiB")
    assert status == {"metadata": {}, "status": "Success"}
    assert received == STREAM_BYTES
    assert digest.hexdigest() == expected.hexdigest()
    assert growth < RSS_BOUND, f"RSS grew {growth / MiB:.1f} MiB while streaming 50 MiB"


# Handshake errors


@pytest.mark.parametrize(("case", "code", "reason", "message"), [
    ("missing pod", 404, "NotFound", 'pods "ghost" not found'),
    ("no container named", 400, "BadRequest",
     "a container name must be specified for pod job, choose one of: [helper build]"),
    ("unknown container", 400, "BadRequest", "container nope is not valid for pod job"),
    ("not scheduled", 400, "BadRequest", "pod unplaced does not have a host assigned"),
])
def test_handshake_errors_are_status_bodies(cluster: EmulatedCluster, space: str, job: str,
                                            unplaced: str, case: str, code: int, reason: str,
                                            message: str) -> None:
    """Refused execs answer the upgrade with the real server's Status JSON and HTTP code."""
    path = {
        "missing pod": exec_path(space, "ghost", ["true"]),
        "no container named": exec_path(space, job, ["true"]),
        "unknown container": exec_path(space, job, ["true"], container="nope"),
        "not scheduled": exec_path(space, unplaced, ["true"]),
    }[case]
    status, headers, body = handshake(cluster, path)
    assert status == code
    assert "upgrade" not in headers
    assert headers["content-type"].startswith("application/json")
    parsed = json.loads(body)
    assert parsed["kind"] == "Status"
    assert parsed["apiVersion"] == "v1"
    assert parsed["status"] == "Failure"
    assert (parsed["code"], parsed["reason"], parsed["message"]) == (code, reason, message)


def test_spdy_and_missing_command_are_bad_requests(cluster: EmulatedCluster, space: str,
                                                   box: str) -> None:
    """A SPDY upgrade (unsupported here) and an exec without a command get 400 Status."""
    status, _, body = handshake(cluster, exec_path(space, box, ["true"]), upgrade="SPDY/3.1")
    assert status == 400
    spdy = json.loads(body)
    assert (spdy["kind"], spdy["code"], spdy["reason"]) == ("Status", 400, "BadRequest")
    assert "websocket" in spdy["message"].lower()
    status, _, body = handshake(cluster, exec_path(space, box, []))
    assert status == 400
    empty = json.loads(body)
    assert (empty["kind"], empty["code"], empty["reason"]) == ("Status", 400, "BadRequest")
    assert "command" in empty["message"]


def test_official_client_surfaces_handshake_status(exec_core: client.CoreV1Api, space: str,
                                                   job: str) -> None:
    """The official client raises ApiException carrying the handshake's code and Status."""
    with pytest.raises(ApiException) as raised:
        open_session(exec_core, space, job, ["true"], container="nope")
    text = str(raised.value.reason)
    assert "Handshake status 400" in text
    assert "container nope is not valid for pod job" in text


# The exec runs inside the container


def test_exec_shares_the_container_filesystem(exec_core: client.CoreV1Api, space: str,
                                              box: str) -> None:
    """A file written by one exec is read by the next: both use the container's root."""
    token = uuid.uuid4().hex
    code, _, _ = run(exec_core, space, box, ["sh", "-c", f"echo {token} > /exec-probe"])
    assert code == 0
    code, out, _ = run(exec_core, space, box, ["cat", "/exec-probe"])
    assert (code, out) == (0, f"{token}\n".encode())


def test_exec_joins_the_container_pid_namespace(exec_core: client.CoreV1Api, space: str,
                                                box: str) -> None:
    """`ps` in an exec shows the container's command as PID 1."""
    code, out, _ = run(exec_core, space, box, ["ps"])
    assert code == 0
    first = next(line for line in out.decode().splitlines() if line.split()[:1] == ["1"])
    assert first.split(None, 2)[2] == " ".join(IDLE)
    code, cmdline, _ = run(exec_core, space, box, ["cat", "/proc/1/cmdline"])
    assert code == 0
    assert cmdline.rstrip(b"\0").split(b"\0") == [part.encode() for part in IDLE]


def test_exec_environment_is_the_containers(exec_core: client.CoreV1Api, space: str,
                                            box: str) -> None:
    """The exec's environment equals PID 1's: pod-spec vars, HOSTNAME = pod name."""
    code, out, _ = run(exec_core, space, box, ["env"])
    assert code == 0
    env = dict(line.split("=", 1) for line in out.decode().splitlines())
    code, raw, _ = run(exec_core, space, box, ["cat", "/proc/1/environ"])
    assert code == 0
    container_env = dict(item.split("=", 1) for item in raw.decode().split("\0") if item)
    assert env == container_env
    assert env["FOO"] == "bar baz=qux"
    assert env["POD_NAME"] == "box"
    assert env["HOSTNAME"] == "box"
    code, out, _ = run(exec_core, space, box, ["hostname"])
    assert (code, out) == (0, b"box\n")


def test_exec_starts_in_the_working_dir(exec_core: client.CoreV1Api, space: str,
                                        box: str) -> None:
    """The exec's current directory is the container's workingDir."""
    assert run(exec_core, space, box, ["pwd"])[:2] == (0, b"/work\n")


def test_detached_process_outlives_exec_and_can_be_killed(exec_core: client.CoreV1Api,
                                                          space: str, box: str) -> None:
    """A setsid'd process with its fds redirected survives its exec; a later exec kills it."""
    started = time.monotonic()
    code, out, _ = run(exec_core, space, box, [
        "sh", "-c", "setsid sleep 321 </dev/null >/dev/null 2>&1 & echo $!"])
    assert code == 0
    assert time.monotonic() - started < 5, "the exec waited for its detached child"
    pid = out.decode().strip()
    assert pid.isdigit()
    time.sleep(0.3)
    code, out, _ = run(exec_core, space, box, ["cat", f"/proc/{pid}/cmdline"])
    assert (code, out) == (0, b"sleep\x00321\x00")
    assert run(exec_core, space, box, ["kill", pid])[0] == 0
    gone = f"[ ! -e /proc/{pid} ] || grep -q '^State:.*Z' /proc/{pid}/status"
    wait_for(lambda: run(exec_core, space, box, ["sh", "-c", gone])[0] == 0, timeout=10,
             what=f"pid {pid} to die")


def test_empty_dirs_of_two_pods_are_separate(exec_core: client.CoreV1Api, space: str,
                                             box: str, twin: str) -> None:
    """Two pods with an emptyDir at the same path do not see each other's files."""
    token = uuid.uuid4().hex
    assert run(exec_core, space, box, ["sh", "-c", f"echo box > /data/{token}"])[0] == 0
    assert run(exec_core, space, twin, ["sh", "-c", f"echo twin > /data/{token}.twin"])[0] == 0
    code, out, _ = run(exec_core, space, twin, ["ls", "/data"])
    assert code == 0
    assert out.split() == [f"{token}.twin".encode()]
    assert run(exec_core, space, box, ["cat", f"/data/{token}"])[:2] == (0, b"box\n")
    assert run(exec_core, space, box, ["test", "-e", f"/data/{token}.twin"])[0] == 1


def test_process_completes_after_client_drops(cluster: EmulatedCluster,
                                              exec_core: client.CoreV1Api, space: str,
                                              box: str) -> None:
    """A dropped client does not stop the process: it runs on, output drained, to the end."""
    marker = f"/data/dropped-{uuid.uuid4().hex}"
    script = (f"echo start; sleep 2; head -c 2000000 /dev/zero; echo more; "
              f"echo finished > {marker}")
    ws = connect(cluster, exec_path(space, box, ["sh", "-c", script]))
    seen = b""
    while b"start" not in seen:
        _, frame = ws.recv_data_frame(True)
        seen += frame.data[1:]
    assert ws.sock is not None
    ws.sock.close()  # abrupt: no close frame, no status read
    assert run(exec_core, space, box, ["test", "-e", marker])[0] == 1, "finished too early"
    wait_for(lambda: run(exec_core, space, box, ["cat", marker])[:2] == (0, b"finished\n"),
             timeout=20, what="the dropped exec's process to finish")
