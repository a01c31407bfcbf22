"""Fault injection end to end: what a job sees when the cluster or the runner misbehaves.

Each test runs jobs through the runner emulator, which calls `runner-driver` exactly as
gitlab-runner does, against the emulated cluster over real HTTP and websockets, and
arms one kind of fault through the cluster's fault API: bursts of API errors, exec
websockets cut mid-stage, latency, images that cannot be pulled, unschedulable pods,
quota refusals, eviction, OOM kills, SIGTERM in each stage, and a runner manager killed
mid-job (then `runner-driver gc`). Each test pins the job's status, that its output is
intact (byte-identical to a fault-free run of the same script where the job can get
that far), that no pod and no driver-labelled secret is left, and how long the failure
took to be reported. The timings are printed as a table when the module ends and
written to `fault-timings.json` in pytest's base temporary directory.

Faults that must land at a moment (mid-stage, while a request is in flight) fire on an
observed event rather than after a fixed delay, so a loaded machine cannot move them
into another phase; a cancel is still the runner's: SIGTERM to the stage's process
group, SIGKILL after the graceful timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from runner_driver.emulator import EmulatedCluster, NodeSettings
from runner_driver.emulator.runner import (
    Call,
    Job,
    JobResult,
    JobSession,
    RunnerEmulator,
    StageFailed,
)
from runner_driver.inpod import CONTROL_PREFIX
from tests.conftest import finish, make_runner, next_job_id, open_session, pods_left, wait_for

NS = "default"
MANAGED = "app.kubernetes.io/managed-by=runner-driver"
# Short request and retry budgets, so a driver that stops coping fails the suite fast.
SETTINGS = "[kubernetes]\nrequest_timeout_seconds = 10.0\nretry_timeout_seconds = 20.0\n"
PODS = rf"^/api/v1/namespaces/{NS}/pods$"  # create (POST) and the watch (GET ?watch)
POD = rf"^/api/v1/namespaces/{NS}/pods/[^/]+$"  # read (GET) and delete (DELETE)
EXEC = rf"^/api/v1/namespaces/{NS}/pods/[^/]+/exec$"
STARTED = CONTROL_PREFIX + b"started\n"  # the launcher's first stderr line
ATTACHED = CONTROL_PREFIX + b"attached\n"  # ... and its first line after a reconnect
ROCKET = "🚀".encode()
ROCKETS = 10240
# Build output: multi-byte UTF-8, then 40 KiB of 4-byte characters and nothing else
# (made from octal escapes, so the command line the runner echoes holds none), then a
# last line without a newline.
FAST_SCRIPT = (
    'echo "zażółć gęślą jaźń ✓ $((6 * 7))"',
    "r=$(printf '\\360\\237\\232\\200'); r=$r$r$r$r; r=$r$r$r$r; r=$r$r$r$r; r=$r$r$r$r; "
    "r=$r$r; i=0; while [ $i -lt 20 ]; do printf '%s' \"$r\"; i=$((i + 1)); done; echo",
    "printf 'no final newline: \\304\\205\\304\\231'",
)
# A script that prints slowly (1.6 s) and fails with its own exit code. It stops half-way
# through each 🚀: an exec cut by time while it waits always leaves the driver holding
# half a character.
# Seven ticks (2.8 s) leave room for three cuts and their reconnects on a loaded
# machine; with four, the third cut could land on the next stage's exec instead.
SLOW_SCRIPT = (
    "i=0; while [ $i -lt 7 ]; do printf '\\360\\237'; sleep 0.4; "
    "printf '\\232\\200 tick %s zażółć\\n' $i; i=$((i + 1)); done",
    "exit 7",
)
SLOW_CUT_SECONDS = 0.25
# Allowed by the driver's default allow-list (`cgr.dev/chainguard/kaniko:*debug*`) but
# unknown to the emulated registry, which has Chainguard's `debug`, `<v>-debug` and
# `debug-<suffix>` tags only. (Any tag of gcr.io/kaniko-project/executor exists there:
# `...:nope-debug` as a debug image, `...:nodebug` as the shell-less slim one.)
UNPULLABLE = "cgr.dev/chainguard/kaniko:nodebug"
SIGTERM_EXIT_BOUND = 5.0
DISRUPTION_BOUND = 10.0


# --- timings ----------------------------------------------------------------------


@dataclass
class Timing:
    """One measured delay: for which fault, what was measured, and the bound asserted."""

    fault: str
    outcome: str
    interval: str
    seconds: float
    bound: float | None = None


Timings = list[Timing]


@pytest.fixture(scope="module")
def timings(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Timings]:
    """Collects each test's measured delays; prints them as a table when the module ends."""
    found: Timings = []
    yield found
    path = tmp_path_factory.getbasetemp() / "fault-timings.json"
    path.write_text(json.dumps([asdict(t) for t in found], indent=2), encoding="utf-8")
    widths = [max([len(h)] + [len(r) for r in rows]) for h, rows in (
        ("fault", [t.fault for t in found]), ("outcome", [t.outcome for t in found]),
        ("measured", [t.interval for t in found]))]
    lines = ["", "fault-injection timings (seconds)",
             f"{'fault':<{widths[0]}}  {'outcome':<{widths[1]}}  "
             f"{'measured':<{widths[2]}}  {'seconds':>7}  bound"]
    for t in found:
        bound = f"< {t.bound:g}" if t.bound is not None else ""
        lines.append(f"{t.fault:<{widths[0]}}  {t.outcome:<{widths[1]}}  "
                     f"{t.interval:<{widths[2]}}  {t.seconds:7.2f}  {bound}")
    lines.append(f"(also written to {path})")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print("\n".join(lines))
        return
    with capture.global_and_fixture_disabled():  # shown without -s too
        for line in lines:
            reporter.write_line(line)


def timed(timings: Timings, fault: str, outcome: str, interval: str, seconds: float,
          bound: float | None = None) -> None:
    """Record a delay, then assert its bound (recorded first, so a failure is in the table)."""
    timings.append(Timing(fault, outcome, interval, round(seconds, 3), bound))
    if bound is not None:
        assert seconds < bound, f"{fault}: {interval} took {seconds:.2f}s (bound {bound:g}s)"


# --- jobs with hooks --------------------------------------------------------------


@dataclass
class Trigger:
    """Run `action(pid)` once `when()` holds while a stage's driver process runs.

    `cancels` makes it the runner's cancel: the job is marked canceled first, SIGKILL
    follows after the graceful timeout, and the stage's Call records when SIGTERM was
    sent and how long the driver took to exit after it.
    """

    when: Callable[[], bool]
    action: Callable[[int], None]
    cancels: bool = False
    pid: int | None = None
    fired_at: float | None = None


class FaultSession(JobSession):
    """One job run exactly as `RunnerEmulator.run_job` runs it, with hooks around stages."""

    def __init__(self, runner: RunnerEmulator, job: Job, tempdir: Path) -> None:
        super().__init__(runner, job, tempdir, None)
        self.before: dict[str, Callable[[], None]] = {}
        self.after: dict[str, Callable[[Call], None]] = {}
        self.triggers: dict[str, Trigger] = {}
        self.ended_at: dict[str, float] = {}

    def log_bytes(self) -> bytes:
        """The job log so far (thread-safe)."""
        with self.log_lock:
            return bytes(self.log)

    def printed(self, marker: bytes) -> Callable[[], bool]:
        """A condition: the job log holds `marker`."""
        return lambda: marker in self.log_bytes()

    def act_when(self, stage: str, when: Callable[[], bool],
                 action: Callable[[int], None]) -> Trigger:
        """Run `action` (given the driver's pid) once `when()` holds during `stage`."""
        trigger = Trigger(when, action)
        self.triggers[stage] = trigger
        return trigger

    def cancel_when(self, stage: str, when: Callable[[], bool]) -> Trigger:
        """Cancel the job as the runner does once `when()` holds during `stage`."""
        def sigterm(pid: int) -> None:
            self.canceled = True
            os.killpg(pid, signal.SIGTERM)

        trigger = Trigger(when, sigterm, cancels=True)
        self.triggers[stage] = trigger
        return trigger

    def call(self, stage: str, args: Sequence[str], *, to_log: bool = True) -> Call:
        hook = self.before.pop(stage, None)
        if hook is not None:
            hook()
        trigger = self.triggers.pop(stage, None)
        done = threading.Event()
        watcher = None
        if trigger is not None:
            watcher = threading.Thread(target=self._watch, args=(stage, trigger, done),
                                       daemon=True)
            watcher.start()
        try:
            record = super().call(stage, args, to_log=to_log)
        finally:
            done.set()
        ended = time.monotonic()
        self.ended_at[stage] = ended
        if watcher is not None:
            watcher.join(30)
        if trigger is not None and trigger.cancels and trigger.fired_at is not None:
            record.signaled_after = trigger.fired_at - (ended - record.seconds)
            record.exited_after_signal = ended - trigger.fired_at
        after = self.after.pop(stage, None)
        if after is not None:
            after(record)
        return record

    def _watch(self, stage: str, trigger: Trigger, done: threading.Event) -> None:
        while not done.is_set():
            try:
                ready = trigger.when()
            except Exception:  # a condition that cannot be read yet is not met
                ready = False
            pid = driver_pid(self.tempdir, stage) if ready else None
            if pid is not None:
                trigger.pid, trigger.fired_at = pid, time.monotonic()
                trigger.action(pid)
                if trigger.cancels and not done.wait(self.runner.graceful_kill_seconds):
                    kill_group(pid, signal.SIGKILL)
                return
            done.wait(0.02)


def driver_pid(tempdir: Path, stage: str) -> int | None:
    """The pid of the driver process the runner started for `stage` in this job's directory."""
    me, where = os.getpid(), str(tempdir.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != me or os.readlink(entry / "cwd") != where:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if stage.encode() in argv:
            return int(entry.name)
    return None


def kill_group(pid: int, signum: int) -> None:
    """Signal a process group that may already be gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def host_processes(*needles: bytes) -> list[str]:
    """Command lines of host processes (pod sandboxes included) holding every needle."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if argv and all(needle in argv for needle in needles):
            found.append(argv.replace(b"\0", b" ").decode(errors="replace"))
    return found


def run_job(runner: RunnerEmulator, job: Job,
            setup: Callable[[FaultSession], None] | None = None
            ) -> tuple[JobResult, FaultSession, float]:
    """Run `job` as `runner.run_job` does, after `setup` armed its hooks; also its duration."""
    tempdir = Path(tempfile.mkdtemp(prefix="custom-executor", dir=runner.workdir))
    session = FaultSession(runner, job, tempdir)
    if setup is not None:
        setup(session)
    started = time.monotonic()
    try:
        result = session.execute()
    finally:
        shutil.rmtree(tempdir, ignore_errors=True)
    return result, session, time.monotonic() - started


# --- outputs ----------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """What the job's scripts printed: each run stage's stdout, the pod name masked."""

    stages: tuple[tuple[str, bytes], ...]
    seconds: dict[str, float] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, result: JobResult, session: JobSession) -> Output:
        pod = session.hostname.encode()
        stages = tuple((c.stage, c.stdout.replace(pod, b"<pod>")) for c in result.calls
                       if c.stage not in ("config", "prepare", "cleanup"))
        return cls(stages, {c.stage: c.seconds for c in result.calls})

    @property
    def build(self) -> bytes:
        return b"".join(out for stage, out in self.stages if stage == "build_script")

    def digest(self) -> str:
        """sha256 over every run stage's name and output, in order."""
        hashed = hashlib.sha256()
        for stage, out in self.stages:
            hashed.update(b"%s %d\n" % (stage.encode(), len(out)))
            hashed.update(out)
        return hashed.hexdigest()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def first_difference(got: bytes, want: bytes) -> str:
    at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
              min(len(got), len(want)))
    return (f"{len(got)} bytes vs {len(want)} expected; first difference at {at}: "
            f"{got[max(0, at - 20):at + 20]!r} vs {want[max(0, at - 20):at + 20]!r}")


def assert_same_output(got: Output, want: Output) -> None:
    """The build stage's output and every run stage's output are byte-identical."""
    assert [s for s, _ in got.stages] == [s for s, _ in want.stages]
    assert sha(got.build) == sha(want.build), first_difference(got.build, want.build)
    assert got.digest() == want.digest(), [
        (s, first_difference(g, w)) for (s, g), (_, w) in zip(got.stages, want.stages,
                                                                strict=True) if g != w]


@dataclass(frozen=True)
class Baseline:
    """A fault-free run of a script: the job's outcome, output and duration."""

    status: str
    failure_reason: str
    exit_code: int | None
    output: Output
    seconds: float


# --- cluster state ----------------------------------------------------------------


def secrets_left(core: client.CoreV1Api, namespace: str = NS) -> list[str]:
    """Names of secrets labelled as the driver's that still exist in `namespace`."""
    return [s.metadata.name for s in core.list_namespaced_secret(
        namespace, label_selector=MANAGED).items]


def assert_nothing_left(core: client.CoreV1Api, namespace: str = NS) -> None:
    """No pod and no secret labelled managed-by=runner-driver remains (deletion is async)."""
    wait_for(lambda: not pods_left(core, namespace) and not secrets_left(core, namespace),
             timeout=20, what=f"no driver pods or secrets in {namespace}")


def orphan_secrets(core: client.CoreV1Api, namespace: str = NS) -> list[str]:
    """Driver secrets whose pod no longer exists (or that no pod owns)."""
    alive = {p.metadata.uid for p in core.list_namespaced_pod(namespace).items
             if p.metadata.deletion_timestamp is None}
    return [s.metadata.name for s in core.list_namespaced_secret(
                namespace, label_selector=MANAGED).items
            if not any(o.uid in alive for o in s.metadata.owner_references or ())]


@pytest.fixture(autouse=True)
def no_secret_outlives_its_pod(core: client.CoreV1Api) -> Iterator[None]:
    """After every fault test, each driver Secret left belongs to a pod that still exists
    (a test may leave a pod on purpose: a killed runner's; its Secret goes with it)."""
    yield
    wait_for(lambda: not orphan_secrets(core), timeout=20,
             what="no driver secret without its pod")


def remaining_faults(cluster: EmulatedCluster) -> list[tuple[str, str, int]]:
    """Request faults armed but not yet consumed."""
    return cluster.call(lambda: [(f.method, f.path, f.count)
                                 for f in cluster.faults.request_faults])


def remaining_cuts(cluster: EmulatedCluster) -> int:
    return cluster.call(lambda: sum(c.count for c in cluster.faults.exec_cuts))


def request_log(cluster: EmulatedCluster) -> list[tuple[float, str, str, int]]:
    """(time, method, path, status) of every request the cluster saw."""
    return cluster.call(lambda: [(r.at, r.method, r.path, r.status)
                                 for r in cluster.faults.log])


def retry_after_gaps(log: list[tuple[float, str, str, int]],
                     since: int) -> list[tuple[str, float]]:
    """Each 429 (from log entry `since` on) and the seconds until that request came again."""
    gaps = []
    for index in range(since, len(log)):
        at, method, path, status = log[index]
        if status != 429:
            continue
        again = next((later for later, m, p, _ in log[index + 1:]
                      if (m, p) == (method, path)), None)
        if again is not None:
            gaps.append((f"{method} {path.rsplit('/', 2)[-2]}/{path.rsplit('/', 1)[-1]}",
                         round(again - at, 3)))
    return gaps


# --- fixtures ---------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _disarm(cluster: EmulatedCluster) -> Iterator[None]:
    """Every test starts and ends with no fault armed on the module's cluster."""
    cluster.clear_faults()
    yield
    cluster.clear_faults()


@pytest.fixture(scope="module")
def fault_runner(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> RunnerEmulator:
    """A runner emulator with short API budgets for the module's cluster."""
    runner: RunnerEmulator = make_runner(kubeconfig, tmp_path_factory.mktemp("faults"),
                                         SETTINGS)
    return runner


@pytest.fixture(scope="module")
def baseline(fault_runner: RunnerEmulator, core: client.CoreV1Api,
             timings: Timings) -> Callable[[tuple[str, ...]], Baseline]:
    """The fault-free run of a job script, made once per script and module."""
    made: dict[tuple[str, ...], Baseline] = {}

    def get(script: tuple[str, ...]) -> Baseline:
        if script not in made:
            result, session, seconds = run_job(fault_runner,
                                               Job(job_id=next_job_id(), script=script))
            assert result.status in ("success", "failed"), result.log.decode()
            assert_nothing_left(core)
            made[script] = Baseline(result.status, result.failure_reason, result.exit_code,
                                    Output.of(result, session), seconds)
            timed(timings, "none (baseline)", f"{result.status} {result.exit_code}",
                  "whole job", seconds)
        return made[script]

    return get


@pytest.fixture(scope="module")
def slow_cluster() -> Iterator[EmulatedCluster]:
    """A cluster whose image pulls take 30 s, so a job's pod stays Pending a while."""
    with EmulatedCluster(node=NodeSettings(pull_seconds=30.0),
                         bookmark_seconds=1.0) as emulated:
        yield emulated


# --- 1. API error bursts --------------------------------------------------------------

# Per stage, (method, path, status, Retry-After) in the order the driver meets them.
BURSTS: dict[str, list[tuple[str, str, int, int | None]]] = {
    # create pod, then the watch
    "prepare": [("POST", PODS, 500, None), ("POST", PODS, 503, None), ("POST", PODS, 429, 1),
                ("GET", PODS, 503, None), ("GET", PODS, 429, 1)],
    # the exec handshake, and the pod read after each failed exec
    "build_script": [("*", EXEC, 500, None), ("*", EXEC, 503, None), ("*", EXEC, 429, 1),
                     ("GET", POD, 500, None), ("GET", POD, 429, 1)],
    "cleanup": [("DELETE", POD, 500, None), ("DELETE", POD, 503, None),
                ("DELETE", POD, 429, 1)],
}


def test_api_error_bursts_in_prepare_run_and_cleanup_are_retried(
        fault_runner: RunnerEmulator, cluster: EmulatedCluster, core: client.CoreV1Api,
        baseline: Callable[[tuple[str, ...]], Baseline], timings: Timings) -> None:
    """500/503/429 bursts in prepare, run and cleanup: retried, Retry-After kept, output same."""
    want = baseline(FAST_SCRIPT)
    log_start = len(request_log(cluster))
    armed: dict[str, int] = {}

    def arm(stage: str) -> Callable[[], None]:
        def now() -> None:
            assert remaining_faults(cluster) == [], f"faults left before {stage}"
            armed[stage] = len(request_log(cluster))
            for method, path, status, retry_after in BURSTS[stage]:
                cluster.fail_requests(method, path, count=1, status=status,
                                      retry_after=retry_after)
        return now

    def setup(session: FaultSession) -> None:
        for stage in BURSTS:
            session.before[stage] = arm(stage)

    result, session, seconds = run_job(fault_runner, Job(job_id=next_job_id(),
                                                         script=FAST_SCRIPT), setup)
    assert remaining_faults(cluster) == [], "not every injected fault was met"
    assert sorted(armed) == sorted(BURSTS)
    assert (result.status, result.exit_code) == ("success", 0), result.log.decode()
    assert_same_output(Output.of(result, session), want.output)
    for stage, faults in BURSTS.items():
        stderr = result.call(stage).stderr
        for _method, _path, status, _ in faults:
            assert f" {status} ".encode() in stderr, (stage, status, stderr.decode())
    gaps = retry_after_gaps(request_log(cluster), log_start)
    # One 429 each on the create, the watch, the exec, the pod read and the delete.
    assert len(gaps) == 5, gaps
    assert all(gap >= 0.95 for _, gap in gaps), \
        f"Retry-After: 1 not kept: {gaps}\n{result.call('build_script').stderr.decode()}"
    assert_nothing_left(core)
    timed(timings, "API 500/503/429 bursts (all phases)", "success", "whole job", seconds,
          want.seconds + 20)
    for stage in BURSTS:
        timed(timings, f"API 500/503/429 burst in {stage}", "success", f"{stage} stage",
              result.call(stage).seconds, want.output.seconds[stage] + 8)


# --- 2. exec websocket cut mid-stage ----------------------------------------------------


def cut_size(start: int, length: int) -> int:
    """An after_bytes value whose cuts land inside 4-byte characters of [start, start+length).

    Each exec's byte count starts with the launcher's control line on stderr ("started"
    on the first, "attached" after), then the stage's output from the resume offset. The
    first exec (the one carrying the script on stdin) may lose everything it was sent
    when it is dropped, so both ways the resume offsets can go are covered.
    """
    for size in range(start + len(STARTED) + 1000, start + len(STARTED) + 8000):
        step = size - len(ATTACHED)
        kept = [size - len(STARTED) + n * step for n in range(3)]
        lost = [n * step for n in range(1, 3)]
        if all(start < o < start + length and (o - start) % 4 for o in kept + lost):
            return size
    raise AssertionError("no cut size found")


def resume_offsets(call: Call) -> list[int]:
    """The output offsets `run` logged when it reconnected to the stage."""
    return [int(o) for o in re.findall(rb"reconnecting to the stage.* offset=(\d+)",
                                        call.stderr)]


def mid_character(output: bytes, offset: int) -> bool:
    """Whether `offset` splits a multi-byte UTF-8 character of `output`."""
    return 0 < offset < len(output) and output[offset] & 0xC0 == 0x80


def test_exec_cut_inside_utf8_characters_resumes_byte_exact(
        fault_runner: RunnerEmulator, cluster: EmulatedCluster, core: client.CoreV1Api,
        baseline: Callable[[tuple[str, ...]], Baseline], timings: Timings) -> None:
    """Three exec drops mid-character in build_script: job succeeds, output byte-identical."""
    want = baseline(FAST_SCRIPT)
    start = want.output.build.index(ROCKET * 4)
    assert want.output.build[start:start + ROCKETS * 4] == ROCKET * ROCKETS
    size = cut_size(start, ROCKETS * 4)

    def setup(session: FaultSession) -> None:
        session.before["build_script"] = lambda: cluster.cut_exec(after_bytes=size, count=3)

    result, session, _seconds = run_job(fault_runner, Job(job_id=next_job_id(),
                                                         script=FAST_SCRIPT), setup)
    assert remaining_cuts(cluster) == 0
    assert (result.status, result.exit_code) == ("success", 0), result.log.decode()
    assert_same_output(Output.of(result, session), want.output)
    build = result.call("build_script")
    offsets = resume_offsets(build)
    assert len(offsets) == 3, build.stderr.decode()
    assert_nothing_left(core)
    # Where the driver resumed: a cut's bytes reach it only if the client library drains
    # the frame before it notices the dropped connection, so some resume from earlier.
    split = sum(mid_character(want.output.build, o) for o in offsets)
    timed(timings, "exec cut x3 after bytes (mid-UTF-8)", "success",
          f"build_script stage (resumed at {offsets}, {split} mid-char)", build.seconds,
          want.output.seconds["build_script"] + 8)


def test_exec_cut_on_a_slow_script_keeps_output_and_exit_code(
        fault_runner: RunnerEmulator, cluster: EmulatedCluster, core: client.CoreV1Api,
        baseline: Callable[[tuple[str, ...]], Baseline], timings: Timings) -> None:
    """Three exec drops by time on a slowly printing script: exit 7 kept, output byte-identical."""
    want = baseline(SLOW_SCRIPT)
    assert (want.status, want.failure_reason, want.exit_code) == \
        ("failed", "script_failure", 7)

    def setup(session: FaultSession) -> None:
        session.before["build_script"] = lambda: cluster.cut_exec(
            after_seconds=SLOW_CUT_SECONDS, count=3)

    result, session, _seconds = run_job(fault_runner, Job(job_id=next_job_id(),
                                                         script=SLOW_SCRIPT), setup)
    assert remaining_cuts(cluster) == 0
    assert (result.status, result.failure_reason, result.exit_code) == \
        ("failed", "script_failure", 7), result.log.decode()
    assert_same_output(Output.of(result, session), want.output)
    build = result.call("build_script")
    offsets = resume_offsets(build)
    assert len(offsets) == 3, build.stderr.decode()
    # Each cut came while the driver held half a 🚀, and it resumed from there.
    assert all(mid_character(want.output.build, o) for o in offsets), offsets
    assert result.log.count(b" tick 0 ") == 1  # the stage was not started twice
    assert_nothing_left(core)
    timed(timings, "exec cut x3 after 0.25 s (slow script)", "script_failure 7",
          f"build_script stage (resumed at {offsets})", build.seconds,
          want.output.seconds["build_script"] + 8)


# --- 3. latency -----------------------------------------------------------------------


def test_latency_on_every_request_changes_nothing_but_time(
        fault_runner: RunnerEmulator, cluster: EmulatedCluster, core: client.CoreV1Api,
        baseline: Callable[[tuple[str, ...]], Baseline], timings: Timings) -> None:
    """0.2 s on every API request and exec handshake: job succeeds, output byte-identical."""
    want = baseline(FAST_SCRIPT)
    cluster.add_latency(0.2)
    result, session, seconds = run_job(fault_runner, Job(job_id=next_job_id(),
                                                         script=FAST_SCRIPT))
    cluster.clear_faults()
    assert (result.status, result.exit_code) == ("success", 0), result.log.decode()
    assert_same_output(Output.of(result, session), want.output)
    noise = [(c.stage, c.stderr.decode()) for c in result.calls
             if b"retrying" in c.stderr or b"reconnecting" in c.stderr]
    assert not noise, f"latency alone must not look like a failure: {noise}"
    assert_nothing_left(core)
    timed(timings, "0.2 s latency on every request", "success", "whole job", seconds,
          want.seconds + 10)


# --- 4, 5. pods that cannot start --------------------------------------------------------


def prepare_attempts(result: JobResult) -> list[Call]:
    return [c for c in result.calls if c.stage == "prepare"]


def test_unpullable_image_fails_fast_as_a_system_failure(
        fault_runner: RunnerEmulator, core: client.CoreV1Api, timings: Timings) -> None:
    """An allowed job image the registry lacks: system failure naming ErrImagePull, in seconds."""
    result, _session, seconds = run_job(fault_runner, Job(job_id=next_job_id(),
                                                          image=UNPULLABLE))
    assert (result.status, result.failure_reason) == ("failed", "runner_system_failure"), \
        result.log.decode()
    assert result.stages == ["config", "prepare", "cleanup"] * 3
    for attempt in prepare_attempts(result):
        assert attempt.exit_code == 2
        assert re.search(rb"ErrImagePull|ImagePullBackOff", attempt.stderr), attempt.stderr
        assert UNPULLABLE.encode() in attempt.stderr
        timed(timings, "image pull failure", "runner_system_failure",
              "prepare attempt", attempt.seconds, 8.0)
    assert b"Deleted pod" in result.log and re.search(rb"[Ee]vents of pod", result.log)
    assert_nothing_left(core)
    timed(timings, "image pull failure", "runner_system_failure", "whole job (3 attempts)",
          seconds)


def test_unschedulable_pod_fails_after_the_unschedulable_timeout(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api, timings: Timings) -> None:
    """A pod no node fits: system failure naming the scheduler's message, ~2 s per attempt."""
    runner = make_runner(kubeconfig, tmp_path, SETTINGS + '[build]\ncpu_request = "1000"\n'
                         "[pod]\nunschedulable_timeout_seconds = 2\n")
    result, _session, seconds = run_job(runner, Job(job_id=next_job_id()))
    assert (result.status, result.failure_reason) == ("failed", "runner_system_failure"), \
        result.log.decode()
    assert result.stages == ["config", "prepare", "cleanup"] * 3
    for attempt in prepare_attempts(result):
        assert attempt.exit_code == 2
        assert b"0/1 nodes are available: 1 Insufficient cpu" in attempt.stderr, \
            attempt.stderr.decode()
        assert attempt.seconds >= 2.0
        timed(timings, "unschedulable (2 s timeout)", "runner_system_failure",
              "prepare attempt", attempt.seconds, 7.0)
    assert_nothing_left(core)
    timed(timings, "unschedulable (2 s timeout)", "runner_system_failure",
          "whole job (3 attempts)", seconds)


def test_exceeded_quota_fails_at_once_as_a_system_failure(
        cluster: EmulatedCluster, namespace: str, tmp_path: Path, core: client.CoreV1Api,
        timings: Timings) -> None:
    """A pod-count quota of 0: system failure naming "exceeded quota", without waiting."""
    core.create_namespaced_resource_quota(
        namespace, {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}})
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig", namespace)
    runner = make_runner(kubeconfig, tmp_path / "runner", SETTINGS)
    result, _session, seconds = run_job(runner, Job(job_id=next_job_id()))
    assert (result.status, result.failure_reason) == ("failed", "runner_system_failure"), \
        result.log.decode()
    for attempt in prepare_attempts(result):
        assert attempt.exit_code == 2
        assert b"exceeded quota: no-pods" in attempt.stderr, attempt.stderr.decode()
        assert b"retrying" not in attempt.stderr  # a refusal is not retried
        timed(timings, "quota exceeded (pods: 0)", "runner_system_failure",
              "prepare attempt", attempt.seconds, 5.0)
    assert_nothing_left(core, namespace)
    timed(timings, "quota exceeded (pods: 0)", "runner_system_failure",
          "whole job (3 attempts)", seconds)


# --- 6, 7. the pod dies under a stage ------------------------------------------------------


def sleeping_job(pause: str, job_id: int | None = None) -> Job:
    """A job whose build_script prints `sleeping-42`, sleeps `pause` s, then more."""
    return Job(job_id=job_id or next_job_id(), script=(
        'echo "before $((6 * 7))"', f'echo "sleeping-$((6 * 7))" && sleep {pause}',
        "echo not-reached"))


# The emulated taint manager evicts 2 s after NotReady (Kubernetes' default: 300 s).
DISRUPTIONS = [
    pytest.param("eviction mid-stage", "evict", rb"[Ee]vict", id="eviction"),
    pytest.param("node NotReady mid-stage (eviction after 2 s)", "not-ready",
                 rb"DeletionByTaintManager", id="node-not-ready"),
]


@pytest.mark.parametrize(("label", "fault", "reason"), DISRUPTIONS)
def test_pod_disrupted_mid_stage_is_a_system_failure_naming_why(
        fault_runner: RunnerEmulator, cluster: EmulatedCluster, core: client.CoreV1Api,
        timings: Timings, label: str, fault: str, reason: bytes) -> None:
    """Pod evicted or its node NotReady while build_script sleeps: system failure saying why."""
    job = sleeping_job("30")
    trigger: list[Trigger] = []

    def disrupt(hostname: str) -> None:
        if fault == "evict":
            cluster.evict(NS, hostname)
        else:
            cluster.set_node_ready(False)

    def setup(session: FaultSession) -> None:
        trigger.append(session.act_when(
            "build_script", session.printed(b"sleeping-42\n"),
            lambda _pid: disrupt(session.hostname)))

    try:
        result, session, _seconds = run_job(fault_runner, job, setup)
    finally:
        cluster.set_node_ready(True)
    build = result.call("build_script")
    assert trigger[0].fired_at is not None, f"{fault} never fired"
    assert (result.status, result.failure_reason) == ("failed", "runner_system_failure"), \
        result.log.decode()
    assert build.exit_code == 2
    assert re.search(reason, build.stderr), build.stderr.decode()
    assert b"before 42\n" in result.log and result.log.count(b"\nsleeping-42\n") == 1
    assert b"not-reached\n" not in result.log
    assert_nothing_left(core)
    timed(timings, label, "runner_system_failure", f"{fault} -> build_script driver exit",
          session.ended_at["build_script"] - trigger[0].fired_at, DISRUPTION_BOUND)


def test_oom_kill_mid_stage_is_the_scripts_failure_with_137(
        kubeconfig: Path, tmp_path: Path, cluster: EmulatedCluster, core: client.CoreV1Api,
        timings: Timings) -> None:
    """The build container OOM-killed mid-script: script_failure 137, log names build and 64Mi."""
    runner = make_runner(kubeconfig, tmp_path, SETTINGS + '[build]\nmemory_limit = "64Mi"\n')
    job = sleeping_job("30")
    trigger: list[Trigger] = []

    def setup(session: FaultSession) -> None:
        trigger.append(session.act_when(
            "build_script", session.printed(b"sleeping-42\n"),
            lambda _pid: cluster.oom_kill(NS, session.hostname, "build")))

    result, session, _seconds = run_job(runner, job, setup)
    build = result.call("build_script")
    assert trigger[0].fired_at is not None, "the OOM kill never fired"
    assert (result.status, result.failure_reason, result.exit_code) == \
        ("failed", "script_failure", 137), result.log.decode()
    line = (rf"container build of pod {NS}/{session.hostname} was OOMKilled: it used all of "
            r"its memory limit of 64Mi").encode()
    assert re.search(line, result.log), result.log.decode()
    assert re.search(line, build.stderr) and not re.search(line, build.stdout)
    assert result.log.count(b"\nsleeping-42\n") == 1 and b"not-reached\n" not in result.log
    assert_nothing_left(core)
    timed(timings, "OOM kill mid-stage", "script_failure 137",
          "oom_kill -> build_script driver exit",
          session.ended_at["build_script"] - trigger[0].fired_at, DISRUPTION_BOUND)


# --- 8. SIGTERM in each stage -------------------------------------------------------------


def test_sigterm_while_the_pod_is_pending_deletes_it(
        slow_cluster: EmulatedCluster, tmp_path: Path, timings: Timings) -> None:
    """SIGTERM in prepare while the image pulls: canceled, exit < 5 s, pod deleted, no retry."""
    kubeconfig = slow_cluster.write_kubeconfig(tmp_path / "kubeconfig")
    slow_core = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
    runner = make_runner(kubeconfig, tmp_path / "runner", SETTINGS)
    trigger: list[Trigger] = []

    def setup(session: FaultSession) -> None:
        def pending() -> bool:
            pod = slow_core.read_namespaced_pod(session.hostname, NS)
            return bool(pod.status.phase == "Pending")

        trigger.append(session.cancel_when("prepare", pending))

    result, _session, _seconds = run_job(runner, Job(job_id=next_job_id()), setup)
    prepare = result.call("prepare")
    assert trigger[0].fired_at is not None, "the pod was never seen Pending"
    assert result.status == "canceled", result.log.decode()
    assert result.stages == ["config", "prepare", "cleanup"]
    assert prepare.exited_after_signal is not None, "the driver ignored SIGTERM (SIGKILLed)"
    assert not prepare.pipes_held
    wait_for(lambda: not pods_left(slow_core) and not secrets_left(slow_core), timeout=20,
             what="no pods left on the slow cluster")
    assert slow_cluster.sandbox_pids() == []
    timed(timings, "SIGTERM in prepare (pod Pending)", "canceled",
          "SIGTERM -> driver exit", prepare.exited_after_signal, SIGTERM_EXIT_BOUND)


def test_sigterm_during_a_run_stage_stops_the_script_in_the_pod(
        fault_runner: RunnerEmulator, core: client.CoreV1Api, timings: Timings) -> None:
    """SIGTERM mid-build_script: canceled, exit < 5 s, none of the stage's processes left."""
    job_id = next_job_id()
    pause = f"40.{job_id}"  # a sleep argument no other process has
    job = sleeping_job(pause, job_id)
    sleeper = b"sleep\0" + pause.encode()
    trigger: list[Trigger] = []
    seen: dict[str, list[str]] = {}

    def setup(session: FaultSession) -> None:
        def sigterm(pid: int) -> None:
            seen["before"] = host_processes(sleeper)
            cancel(pid)

        armed = session.cancel_when("build_script", session.printed(b"sleeping-42\n"))
        cancel = armed.action
        armed.action = sigterm
        trigger.append(armed)

        def check(_call: Call) -> None:
            pid = trigger[0].pid
            stage_id = f"build_script-{pid}-".encode()
            seen["at_exit"] = host_processes(sleeper) + host_processes(stage_id)
            started = time.monotonic()
            while host_processes(stage_id) and time.monotonic() - started < 5:
                time.sleep(0.05)
            seen["after_5s"] = host_processes(sleeper) + host_processes(stage_id)

        session.after["build_script"] = check

    result, _session, _seconds = run_job(fault_runner, job, setup)
    build = result.call("build_script")
    assert trigger[0].fired_at is not None, "the stage never printed its marker"
    assert result.status == "canceled", result.log.decode()
    assert build.exited_after_signal is not None, "the driver ignored SIGTERM (SIGKILLed)"
    assert seen["before"], "the sleeping script was not visible before the cancel"
    assert seen["at_exit"] == [], "stage processes outlived the driver"
    assert seen["after_5s"] == []
    assert b"not-reached\n" not in result.log and not build.pipes_held
    assert result.stages[-3:] == ["build_script", "cleanup_file_variables", "cleanup"]
    assert_nothing_left(core)
    timed(timings, "SIGTERM in build_script", "canceled", "SIGTERM -> driver exit",
          build.exited_after_signal, SIGTERM_EXIT_BOUND)


def test_sigterm_during_cleanup_lets_the_delete_land(
        fault_runner: RunnerEmulator, cluster: EmulatedCluster, core: client.CoreV1Api,
        timings: Timings) -> None:
    """SIGTERM while cleanup's DELETE is in flight: exit < 5 s and the pod is still deleted."""
    trigger: list[Trigger] = []

    def setup(session: FaultSession) -> None:
        def delete_in_flight() -> bool:
            path = f"/api/v1/namespaces/{NS}/pods/{session.hostname}"
            return any(m == "DELETE" and p == path and status == 0
                       for _at, m, p, status in request_log(cluster))

        session.before["cleanup"] = lambda: cluster.add_latency(
            1.5, "DELETE", rf"/pods/{re.escape(session.hostname)}$", count=1)
        trigger.append(session.cancel_when("cleanup", delete_in_flight))

    result, _session, _seconds = run_job(fault_runner, Job(job_id=next_job_id()), setup)
    cleanup = result.call("cleanup")
    assert trigger[0].fired_at is not None, "cleanup's DELETE was never seen in flight"
    assert result.status == "canceled", result.log.decode()
    assert cleanup.exited_after_signal is not None, "the driver ignored SIGTERM (SIGKILLed)"
    assert cleanup.exit_code == 0, cleanup.stderr.decode()
    assert not cleanup.pipes_held
    assert_nothing_left(core)
    timed(timings, "SIGTERM in cleanup (DELETE in flight)", "canceled",
          "SIGTERM -> driver exit", cleanup.exited_after_signal, SIGTERM_EXIT_BOUND)


# --- 9. a runner manager killed mid-job, and gc -----------------------------------------------


def owned_secret(core: client.CoreV1Api, pod_name: str, job_id: int) -> str:
    """Create a driver-labelled secret owned by the pod of job `job_id`; its name."""
    assert pod_name.endswith(f"-job-{job_id}")
    pod = core.read_namespaced_pod(pod_name, NS)
    name = f"{pod_name}-extra"
    core.create_namespaced_secret(NS, {
        # As the driver labels a job's objects: with its pod's labels (manager included).
        "metadata": {"name": name, "labels": dict(pod.metadata.labels),
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Pod",
                                          "name": pod_name, "uid": pod.metadata.uid,
                                          "blockOwnerDeletion": False}]},
        "stringData": {"token": "not-a-real-one"}})
    return name


def gc(runner: RunnerEmulator, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """`runner-driver gc` as an operator's CronJob runs it, with the runner's environment."""
    started = time.monotonic()
    done = subprocess.run([*runner.driver, "gc", *args], env=runner.environ,
                          capture_output=True, text=True, timeout=60, check=False)
    return done, time.monotonic() - started


def test_gc_removes_what_a_killed_manager_left_and_spares_a_live_job(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api, exec_core: client.CoreV1Api,
        timings: Timings) -> None:
    """SIGKILLed manager: gc deletes its pod and secret once over; a live job is never touched."""
    # The crashed job's timeout is 5 s and the deadline margin 0, so its pod is Failed
    # (DeadlineExceeded) 5 s after it started: certainly over, without waiting minutes.
    runner = make_runner(kubeconfig, tmp_path, SETTINGS + "[pod]\ndeadline_margin_seconds = 0\n")
    live_job = Job(job_id=next_job_id())  # timeout 3600 s
    live: dict[str, Any] = {}
    live_ready = threading.Event()

    def run_live() -> None:
        try:
            with runner.session(live_job) as session:
                live["pod"] = session.hostname
                live["session"] = session
                live_ready.set()
                # Mid-stage until the test releases it (at most 60 s).
                live["call"] = session.run_body("build_script", (
                    "echo live-start; i=0\n"
                    "while [ ! -e /scratch/release ] && [ $i -lt 600 ]; do sleep 0.1; "
                    "i=$((i + 1)); done\necho live-done\n"))
        except BaseException as error:
            live["error"] = error
        finally:
            live_ready.set()

    live_thread = threading.Thread(target=run_live, daemon=True)
    live_thread.start()

    crash_id = next_job_id()
    pause = f"60.{crash_id}"
    crashed = FaultSession(runner, Job(job_id=crash_id, timeout_seconds=5),
                           Path(tempfile.mkdtemp(prefix="custom-executor", dir=tmp_path)))
    try:
        crashed.prepare_with_retries()
        crash = crashed.act_when("build_script", crashed.printed(b"sleeping-42\n"),
                                 lambda pid: kill_group(pid, signal.SIGKILL))
        with pytest.raises(StageFailed) as killed:
            crashed.run_body("build_script", f'echo "sleeping-$((6 * 7))"; sleep {pause}\n')
    finally:
        shutil.rmtree(crashed.tempdir, ignore_errors=True)
    # No cleanup: the manager is dead. Its stage goes on in the pod.
    assert killed.value.kind == "system" and crash.fired_at is not None
    crashed_pod = crashed.hostname
    assert host_processes(b"sleep\0" + pause.encode()), "the orphaned stage is not running"
    assert live_ready.wait(30) and "error" not in live, live.get("error")
    def live_log() -> bytes:
        with live["session"].log_lock:
            return bytes(live["session"].log)

    wait_for(lambda: b"live-start" in live_log(), timeout=30,
             what="the live job to be mid-stage")
    crashed_secret = owned_secret(core, crashed_pod, crash_id)
    live_secret = owned_secret(core, live["pod"], live_job.job_id)
    # Each job also has its registry-login Secret, owned by its pod.
    crashed_login, live_login = f"{crashed_pod}-docker", f"{live['pod']}-docker"

    def phase(name: str) -> str | None:
        try:
            return str(core.read_namespaced_pod(name, NS).status.phase)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    wait_for(lambda: phase(crashed_pod) == "Failed", timeout=20,
             what="the crashed job's pod to pass its deadline")
    over_at = time.monotonic()
    timed(timings, "manager SIGKILLed mid-stage", "pod left running",
          "crash -> pod Failed (deadline 5 s)", over_at - crash.fired_at)

    dry, dry_seconds = gc(runner, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would delete pod {NS}/{crashed_pod}: finished (Failed" in dry.stdout, dry.stdout
    assert f"would delete secret {NS}/{crashed_secret}: its pod is gone" in dry.stdout
    assert live["pod"] not in dry.stdout and "\ndeleted" not in "\n" + dry.stdout
    assert sorted(pods_left(core)) == sorted([crashed_pod, live["pod"]])
    assert sorted(secrets_left(core)) == sorted([crashed_secret, live_secret, crashed_login,
                                                 live_login])
    timed(timings, "gc --dry-run", "nothing deleted", "gc run", dry_seconds, 10.0)

    gc_started = time.monotonic()
    done, gc_seconds = gc(runner)
    assert done.returncode == 0, done.stderr
    assert f"deleted pod {NS}/{crashed_pod}: finished (Failed" in done.stdout, done.stdout
    assert f"deleted secret {NS}/{crashed_secret}: its pod is gone" in done.stdout
    assert f"deleted secret {NS}/{crashed_login}: its pod is gone" in done.stdout
    assert live["pod"] not in done.stdout and live_secret not in done.stdout
    wait_for(lambda: pods_left(core) == [live["pod"]]
             and sorted(secrets_left(core)) == sorted([live_secret, live_login]),
             timeout=20, what="gc's deletions to finish, the live job's objects kept")
    assert phase(live["pod"]) == "Running"
    assert host_processes(b"sleep\0" + pause.encode()) == []
    timed(timings, "gc after manager crash", "pod+secret deleted", "gc run", gc_seconds, 10.0)
    timed(timings, "gc after manager crash", "pod+secret deleted", "gc start -> pod gone",
          time.monotonic() - gc_started, 10.0)

    # The live job was mid-stage throughout and finishes untouched.
    release = open_session(exec_core, NS, live["pod"],
                           ["/busybox/sh", "-c", "touch /scratch/release"], container="build")
    finish(release)
    live_thread.join(60)
    assert not live_thread.is_alive() and "error" not in live, live.get("error")
    assert live["call"].stdout == b"live-start\nlive-done\n"
    assert_nothing_left(core)
