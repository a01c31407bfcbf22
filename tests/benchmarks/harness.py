"""What every benchmark needs: a cluster, runners, measured jobs, floors, statistics.

A benchmark number is only as good as what it is compared with, so this module keeps the
comparisons in one place: the floor of a stage is its script run directly in the same
container by `EmulatedCluster.run_in_sandbox` (the exec's own spawn path, no API in
between), and the raw baseline of log throughput is a plain websocket exec from the same
emulator. The driver's CPU is the stage process's own (from the runner emulator's
`os.wait4`) plus what the runner's agent spent meanwhile, when the driver has an agent.
"""

from __future__ import annotations

import importlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

import websocket
import yaml

from runner_driver.emulator import EmulatedCluster, NodeSettings
from runner_driver.emulator.runner import (
    Call,
    Job,
    JobResult,
    JobSession,
    RunnerEmulator,
    bash_script,
)

NAMESPACE = "default"  # the kubeconfig's context namespace, which the driver then uses
HELPER, BUILD = "helper", "build"
# Where the driver runs each stage (README, "How a job runs"): these in `helper`, the
# rest in `build`. Kept here, not imported, so the benchmark does not lean on internals.
HELPER_STAGES = frozenset({"prepare_script", "get_sources", "clear_worktree", "restore_cache",
                           "download_artifacts", "cleanup_file_variables"})
HELPER_STAGE_PREFIXES = ("archive_cache", "upload_artifacts_")
# The shell the driver runs a script in: the first that exists of these, else busybox's.
SHELL_PROBE = ('for c in /usr/local/bin/bash /usr/bin/bash /bin/bash /usr/bin/sh /bin/sh; do '
               'if [ -x "$c" ]; then echo "$c"; exit 0; fi; done; echo /busybox/sh')
# A job's output kept by the runner emulator: enough for a failure's log tail, and
# constant memory however much a stage prints.
KEEP_OUTPUT_BYTES = 1 << 20
# Ten `run` calls: the runner's normal sequence with cache, artifacts, two extra user
# steps and after_script.
TEN_STAGES = ("prepare_script", "get_sources", "restore_cache", "build_script", "step_lint",
              "step_test", "after_script", "archive_cache", "upload_artifacts_on_success",
              "cleanup_file_variables")
AGENT_SETTLE_SECONDS = 1.0
# Issue 13's yardstick for a stage: the cheapest Python process that opens a socket and
# speaks JSON, started with the driver's own interpreter, on the same machine, in the
# same run, so the ratios hold on a slow machine and a fast one alike.
PYTHON_FLOOR = ("-c", "import socket, json")
AGENT_SETTLED_DELTA = 0.002  # asking for stats costs the agent a little CPU itself

StatsFunction = Callable[[Mapping[str, str], Path | None], dict[str, Any] | None]


class BenchError(Exception):
    """A measurement could not be taken (a job failed, a floor failed)."""


def container_for(stage: str) -> str:
    """The container the driver runs `stage` in."""
    if stage in HELPER_STAGES or stage.startswith(HELPER_STAGE_PREFIXES):
        return HELPER
    return BUILD


def ten_stage_job(job_id: int, script: Sequence[str] = ("echo ok",)) -> Job:
    """A trivial job whose runner sequence makes exactly ten `run` calls."""
    return Job(job_id=job_id, script=tuple(script),
               steps=(("lint", ("echo lint",)), ("test", ("echo test",))),
               after_script=("echo after",), cache=True, artifacts=True)


# --- statistics ------------------------------------------------------------------------------

def median(values: Sequence[float]) -> float:
    """The median (NaN for no values)."""
    return statistics.median(values) if values else math.nan


def p95(values: Sequence[float]) -> float:
    """The 95th percentile by nearest rank: the value 95 % of samples do not exceed."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """n, median, p95, min, max and mean of some samples."""
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": median(values), "p95": p95(values),
            "min": min(values), "max": max(values), "mean": statistics.fmean(values)}


# --- floors and the agent --------------------------------------------------------------------

@dataclass(frozen=True)
class Floor:
    """One stage script run directly in its container's sandbox."""

    stage: str
    container: str
    seconds: float


def agent_stats_function() -> tuple[StatsFunction | None, str]:
    """The driver's `stats_for`, and where it came from (or why there is none)."""
    problems = []
    for name in ("runner_driver.agent", "runner_driver.agent_client"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        except Exception as error:  # a driver mid-rewrite: say so, measure without it
            problems.append(f"{name}: {type(error).__name__}: {error}")
            continue
        found = getattr(module, "stats_for", None)
        if callable(found):
            return cast(StatsFunction, found), f"{name}.stats_for"
    return None, "; ".join(problems) or "no runner_driver.agent.stats_for: no agent CPU counted"


@dataclass
class Bench:
    """One emulated cluster and the driver under test, with a runner factory."""

    # In this process (with the hooks floors, latency and request counts need), or None
    # when the cluster runs in a process of its own (`external`).
    cluster: EmulatedCluster | None
    port: int
    workdir: Path
    driver: list[str]
    driver_env: dict[str, str]
    kubeconfig: Path
    config: Path
    stats_for: StatsFunction | None
    stats_source: str
    next_id: int = 1000
    shells: dict[str, str] = field(default_factory=dict)

    @classmethod
    @contextmanager
    def start(cls, driver: Sequence[str], driver_env: Mapping[str, str],
              settings: str = "") -> Iterator[Bench]:
        """An in-process emulated cluster with fast image pulls, like the tests use."""
        workdir = Path(tempfile.mkdtemp(prefix="runner-driver-bench-"))
        try:
            with EmulatedCluster(node=NodeSettings(pull_seconds=0.01,
                                                   pull_backoff_seconds=0.5)) as cluster:
                kubeconfig = cluster.write_kubeconfig(workdir / "kubeconfig")
                config = workdir / "driver.toml"
                config.write_text(settings, encoding="utf-8")
                stats_for, source = agent_stats_function()
                yield cls(cluster, cluster.port, workdir, list(driver), dict(driver_env),
                          kubeconfig, config, stats_for, source)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    @contextmanager
    def external(self) -> Iterator[Bench]:
        """The same driver against an emulated cluster in a process of its own.

        For throughput: a cluster in this process shares its GIL with whatever reads
        the output here (the raw websocket reader, or the runner emulator's pipes), so
        each would slow the server down by its own Python work.
        """
        workdir = Path(tempfile.mkdtemp(prefix="runner-driver-bench-", dir=self.workdir))
        kubeconfig = workdir / "kubeconfig"
        server = subprocess.Popen([sys.executable, "-m", "runner_driver.cli", "local-cluster",
                                   "--kubeconfig", str(kubeconfig)],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not kubeconfig.exists():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("the emulated cluster process did not start")
                time.sleep(0.05)
            url = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
            yield Bench(None, int(url.rsplit(":", 1)[1]), workdir, self.driver,
                        self.driver_env, kubeconfig, self.config, self.stats_for,
                        self.stats_source)
        finally:
            server.terminate()
            server.wait(30)

    @property
    def emulated(self) -> EmulatedCluster:
        """The in-process cluster, for the measurements that need its hooks."""
        if self.cluster is None:
            raise BenchError("this measurement needs the in-process emulated cluster")
        return self.cluster

    def job_id(self) -> int:
        """A job id (so a pod name) not used before in this cluster."""
        self.next_id += 1
        return self.next_id

    def runner(self, **options: Any) -> RunnerEmulator:
        """A runner emulator for the driver, configured as the tests configure theirs."""
        environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir),
                   "KUBECONFIG": str(self.kubeconfig),
                   "RUNNER_DRIVER_CONFIG": str(self.config), **self.driver_env}
        settings: dict[str, Any] = {"prepare_retry_seconds": 0.1,
                                    "keep_output_bytes": KEEP_OUTPUT_BYTES}
        settings.update(options)
        return RunnerEmulator(self.driver, environ=environ, workdir=self.workdir, **settings)

    # Measured jobs

    @contextmanager
    def session(self, runner: RunnerEmulator, job: Job,
                agent: bool = False) -> Iterator[MeasuredSession]:
        """config and prepare done, then the caller's stages, then cleanup (as `session`)."""
        def make(tempdir: Path) -> MeasuredSession:
            return MeasuredSession(self, runner, job, tempdir, agent=agent, floors=False)

        with runner.session(job, make) as session:
            assert isinstance(session, MeasuredSession)
            yield session

    def run_job(self, runner: RunnerEmulator, job: Job, *, floors: bool = False,
                agent: bool = False) -> MeasuredJob:
        """Run a whole job as the runner does; with floors, measure them before cleanup."""
        tempdir = Path(tempfile.mkdtemp(prefix="custom-executor", dir=runner.workdir))
        session = MeasuredSession(self, runner, job, tempdir, agent=agent, floors=floors)
        try:
            started = time.monotonic()
            result = session.execute()
            wall = time.monotonic() - started
        finally:
            shutil.rmtree(tempdir, ignore_errors=True)
        return MeasuredJob(result, wall, session.floors, session.agent_cpu, session.hostname)

    def floor(self, pod: str, stage: str, script: str) -> Floor:
        """Run a stage's script directly in its container, as the driver's shell would.

        Raises:
            BenchError: the script failed there.
        """
        container = container_for(stage)
        shell = self.shell(pod, container)
        code, output, seconds = self.emulated.run_in_sandbox(NAMESPACE, pod, container,
                                                            [shell, "-c", script])
        if code != 0:
            raise BenchError(f"the {stage} script exited {code} when run directly in "
                             f"{container}: {output[-400:].decode(errors='replace')}")
        return Floor(stage, container, seconds)

    def python_floor(self) -> tuple[float, float]:
        """(wall, CPU) seconds of `python -c "import socket, json"` with this interpreter,
        measured as the runner emulator measures a stage: start to exit and EOF on both
        pipes, CPU from os.wait4."""
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, *PYTHON_FLOOR], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert process.stdout is not None and process.stderr is not None
        # EOF on both (it prints nothing, so one after the other cannot block); not
        # communicate(), which reaps the process before wait4 could read its usage.
        process.stdout.read()
        process.stderr.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.stdout.close()
        process.stderr.close()
        wall = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise BenchError(f"{sys.executable} {' '.join(PYTHON_FLOOR)} exited "
                             f"{process.returncode}")
        return wall, usage.ru_utime + usage.ru_stime

    def shell(self, pod: str, container: str) -> str:
        """The shell the driver picks in this container (the same image in every job)."""
        if container not in self.shells:
            code, output, _ = self.emulated.run_in_sandbox(NAMESPACE, pod, container,
                                                          ["/bin/sh", "-c", SHELL_PROBE])
            if code != 0:
                raise BenchError(f"finding the shell in {container}: {output!r}")
            self.shells[container] = output.decode().strip()
        return self.shells[container]

    def agent_stats(self, environ: Mapping[str, str]) -> dict[str, Any] | None:
        """The runner's agent's stats, or None when there is no agent."""
        if self.stats_for is None:
            return None
        return self.stats_for(environ, self.config)

    def settled_agent_stats(self, environ: Mapping[str, str]) -> dict[str, Any] | None:
        """Agent stats once its CPU counter stops moving (at most a second later)."""
        last = self.agent_stats(environ)
        deadline = time.monotonic() + AGENT_SETTLE_SECONDS
        while last is not None and time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.agent_stats(environ)
            if now is None:
                return last
            if abs(float(now["cpu_seconds"]) - float(last["cpu_seconds"])) < AGENT_SETTLED_DELTA:
                return now
            last = now
        return last

    # The raw baseline

    def token(self) -> str:
        """The bearer token of the kubeconfig the driver uses (the API server checks it)."""
        config = yaml.safe_load(self.kubeconfig.read_text())
        return str(config["users"][0]["user"]["token"])

    def raw_exec(self, pod: str, container: str, command: list[str],
                 timeout: float = 300.0) -> tuple[int, float, bytes]:
        """A websocket exec read as fast as websocket-client can, frames discarded.

        Speaks `v4.channel.k8s.io` as the kubernetes client does. Returns the stdout
        bytes received, the seconds from connecting to the close, and the channel-3
        status.
        """
        query = urlencode([("container", container), ("stdout", "true"), ("stderr", "true"),
                           *(("command", part) for part in command)])
        url = (f"ws://127.0.0.1:{self.port}/api/v1/namespaces/{NAMESPACE}/pods/"
               f"{pod}/exec?{query}")
        received, status = 0, b""
        started = time.monotonic()
        ws = websocket.create_connection(url, timeout=timeout,
                                         subprotocols=["v4.channel.k8s.io"],
                                         header=[f"Authorization: Bearer {self.token()}"])
        try:
            while True:
                opcode, frame = ws.recv_data_frame()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
                data = frame.data
                if data[:1] == b"\x01":
                    received += len(data) - 1
                elif data[:1] == b"\x03":
                    status += data[1:]
        finally:
            ws.close()
        return received, time.monotonic() - started, status


@dataclass
class MeasuredJob:
    """A whole job: the runner's result, its wall time, floors and per-call agent CPU."""

    result: JobResult
    wall: float
    floors: list[Floor]
    agent_cpu: list[float]
    pod: str

    def log_tail(self, size: int = 1500) -> str:
        """The end of the job log, for a failure report."""
        return self.result.log[-size:].decode(errors="replace")


class MeasuredSession(JobSession):
    """A runner job that also records scripts, floors and the agent's CPU per call."""

    def __init__(self, bench: Bench, runner: RunnerEmulator, job: Job, tempdir: Path, *,
                 agent: bool, floors: bool) -> None:
        super().__init__(runner, job, tempdir, None)
        self.bench = bench
        self.track_agent = agent
        self.want_floors = floors
        self.scripts: list[tuple[str, str]] = []
        self.floors: list[Floor] = []
        self.agent_cpu: list[float] = []  # per call, 0.0 when there was no agent
        self.agent_last: dict[str, Any] | None = None

    def call(self, stage: str, args: Sequence[str], *, to_log: bool = True) -> Call:
        if not self.track_agent:
            return super().call(stage, args, to_log=to_log)
        before = self.bench.agent_stats(self.environment())
        call = super().call(stage, args, to_log=to_log)
        after = self.bench.settled_agent_stats(self.environment())
        spent = 0.0
        if after is not None:
            spent = float(after["cpu_seconds"])
            if before is not None and before.get("pid") == after.get("pid"):
                spent -= float(before["cpu_seconds"])
            self.agent_last = after
        self.agent_cpu.append(spent)
        return call

    def run_body(self, stage: str, body: str) -> Call:
        self.scripts.append((stage, bash_script(body)))
        return super().run_body(stage, body)

    def cleanup(self) -> None:
        try:
            if self.want_floors and self.scripts and not self.floors:
                self.floors = [self.bench.floor(self.hostname, stage, script)
                               for stage, script in self.scripts]
        finally:
            super().cleanup()
