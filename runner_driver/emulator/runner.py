"""A GitLab Runner stand-in that calls a custom-executor driver exactly as the runner does.

It reproduces the parts of gitlab-runner's custom executor a driver can observe
(../shared/docs/runner-protocol.md): one process per stage in its own process group,
stdin from /dev/null, a per-job temporary directory as cwd and TMPDIR, the exit-code
variables, BUILD_EXIT_CODE_FILE, JOB_RESPONSE_FILE, `job_env` from `config`, every
job variable as CUSTOM_ENV_*, waiting for EOF on stdout and stderr, bash scripts
shaped like the runner's generator, the runner's stage order and failure paths,
prepare retried with cleanup after each failed attempt, and cancel by SIGTERM to the
process group. Each call also records what the driver cost (wall and CPU seconds, peak
memory, when it ended) for the benchmarks. It is used by the tests, the benchmarks and
`runner-driver demo`; the driver never imports it. It does not talk to GitLab and does
not fetch sources itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

BUILD_FAILURE_EXIT_CODE = 1
SYSTEM_FAILURE_EXIT_CODE = 2
PREPARE_ATTEMPTS = 3  # common/consts.go PreparationRetries
USER_STAGE_PREFIX = "step_"

# Stages whose generated script calls the `gitlab-runner` binary (abstract.go).
_HELPER_COMMANDS = {
    "restore_cache": ("Extracting cache", "cache-extractor"),
    "archive_cache": ("Creating cache", "cache-archiver"),
    "archive_cache_on_failure": ("Creating cache", "cache-archiver"),
}
Status = Literal["success", "failed", "canceled"]
FailureReason = Literal["", "script_failure", "runner_system_failure"]


@dataclass(frozen=True)
class Job:
    """What GitLab would send for one job, reduced to what a driver can see."""

    job_id: int
    project_id: int = 100
    pipeline_id: int = 500
    runner_id: int = 7
    runner_short_token: str = "t3stRnr1"  # noqa: S105 - a fake id, not a credential
    project_path: str = "group/app"
    image: str = ""
    services: tuple[dict[str, object], ...] = ()
    timeout_seconds: int = 3600
    repository_url: str = ""
    # Commands per user step: build_script first, then step_<name> in order.
    script: tuple[str, ...] = ("echo hello",)
    steps: tuple[tuple[str, tuple[str, ...]], ...] = ()
    after_script: tuple[str, ...] = ()
    cache: bool = False
    artifacts: bool = False
    # The job's own `variables:`. GitLab sends them after the predefined ones, and a job
    # may reuse a predefined name (CI_JOB_ID, say): the later value wins in the env.
    variables: tuple[tuple[str, str], ...] = ()
    masked: frozenset[str] = frozenset()
    token: str = "glcbt-64_secretjobtoken0123456789"  # noqa: S105 - fake job token
    # Top-level payload fields to set (or, with None, remove) after the usual ones, to
    # give the driver a payload as odd as a broken runner or GitLab might send.
    payload_fields: tuple[tuple[str, object], ...] = ()


@dataclass
class Call:
    """One driver process the runner started."""

    stage: str  # config, prepare, cleanup, or the run stage name
    argv: list[str]
    exit_code: int
    stdout: bytes
    stderr: bytes
    seconds: float
    signaled_after: float | None = None  # when SIGTERM was sent, seconds after start
    exited_after_signal: float | None = None  # how long the driver took to exit after it
    pipes_held: bool = False  # stdout/stderr stayed open after the driver exited
    # Resource usage from os.wait4: user + system CPU seconds of the driver process and
    # of the children it waited for, and the peak resident set size (KiB) among them.
    # Linux keeps the spawning process's peak RSS in a child's ru_maxrss across exec, so
    # max_rss_kb is at least this runner's own peak unless the runner was made with
    # own_rss=True (see RunnerEmulator).
    cpu_seconds: float = 0.0
    max_rss_kb: int = 0
    ended_at: float = 0.0  # time.time() when the call finished (exit and EOF on both pipes)
    stdout_bytes: int = 0  # all bytes read from stdout, also those not kept (keep_output_bytes)


@dataclass
class JobResult:
    """The job as GitLab would record it."""

    status: Status
    failure_reason: FailureReason
    exit_code: int | None
    log: bytes
    calls: list[Call] = field(default_factory=list)
    message: str = ""

    def call(self, stage: str) -> Call:
        """The last call for `stage`."""
        return [c for c in self.calls if c.stage == stage][-1]

    @property
    def stages(self) -> list[str]:
        """Stage names in call order."""
        return [c.stage for c in self.calls]


@dataclass(frozen=True)
class Cancel:
    """Cancel the job `after_seconds` into the given stage (SIGTERM to its process group)."""

    stage: str
    after_seconds: float


class StageFailed(Exception):
    """A stage did not succeed: kind is build, system or canceled."""

    def __init__(self, kind: Literal["build", "system", "canceled"], exit_code: int | None,
                 message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.exit_code = exit_code


def ansi_c_quote(value: str) -> str:
    """Quote like gitlab-runner's bash shell writer: bash's $'...' form."""
    out = []
    for char in value:
        if char == "\\":
            out.append("\\\\")
        elif char == "'":
            out.append("\\'")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "$'" + "".join(out) + "'"


def bash_script(body: str) -> str:
    """A stage script in the shape of gitlab-runner's bash generator (19.1+)."""
    return ("#!/usr/bin/env bash\n\n"
            "trap exit 1 TERM\n\n"
            "set -eo pipefail\n"
            "set +o noclobber\n"
            f"(trap 'exit 1' TERM; eval {ansi_c_quote(body)}) < /dev/null\n"
            "exit 0\n")


# The parent `own_rss` puts between the runner and the driver: it forks and execs the
# driver (argv[2:]) in its own process group and pipes, ignores the signals the runner
# sends the group (the driver gets them), and writes the driver's CPU seconds and peak
# RSS to fd argv[1] before exiting as the driver did.
_RUSAGE_PARENT = """
import os, signal, sys
report = int(sys.argv[1])
# The driver's agent follows the runner: name it, since we stand in between.
os.environ["RUNNER_DRIVER_RUNNER_PID"] = str(os.getppid())
pid = os.fork()
if pid == 0:
    os.close(report)
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(signum, signal.SIG_IGN)
_, status, usage = os.wait4(pid, 0)
os.write(report, f"{usage.ru_utime + usage.ru_stime} {usage.ru_maxrss}".encode())
os.close(report)
if os.WIFSIGNALED(status):
    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    os.kill(os.getpid(), os.WTERMSIG(status))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _trim(buffer: bytearray, keep: int | None, *, exact: bool = False) -> None:
    """Drop all but the last `keep` bytes (lazily, at twice that, unless `exact`)."""
    if keep is not None and len(buffer) > (keep if exact else 2 * keep):
        del buffer[:len(buffer) - keep]


class RunnerEmulator:
    """Runs jobs through a driver's four stages as gitlab-runner would."""

    def __init__(self, driver: Sequence[str], *, environ: Mapping[str, str] | None = None,
                 workdir: Path | None = None, prepare_retry_seconds: float = 3.0,
                 graceful_kill_seconds: float = 10.0, stage_timeout_seconds: float = 600.0,
                 pipe_grace_seconds: float = 10.0,
                 keep_output_bytes: int | None = None, own_rss: bool = False) -> None:
        self.driver = list(driver)
        # None keeps all output; N keeps only the last N bytes of each call's stdout and
        # stderr and of the job log (benchmarks push hundreds of MB through `run`).
        self.keep_output_bytes = keep_output_bytes
        # True starts each driver through a small Python parent that reports the driver's
        # own rusage, so max_rss_kb is the driver's peak and not this (large) process's:
        # the driver then inherits only that parent's few MB. It costs a Python start
        # per call, so only benchmarks of memory use it.
        self.own_rss = own_rss
        self.environ = dict(os.environ if environ is None else environ)
        self.workdir = workdir
        self.prepare_retry_seconds = prepare_retry_seconds
        self.graceful_kill_seconds = graceful_kill_seconds
        self.stage_timeout_seconds = stage_timeout_seconds
        self.pipe_grace_seconds = pipe_grace_seconds
        self.last_tempdir: Path | None = None

    # --- one job ----------------------------------------------------------------

    @contextmanager
    def session(self, job: Job, make: Callable[[Path], JobSession] | None = None
                ) -> Iterator[JobSession]:
        """config and prepare done (with the runner's retries); cleanup on exit.

        `make` builds the session for the job's temporary directory (a JobSession
        subclass that measures, say).
        """
        tempdir = Path(tempfile.mkdtemp(prefix="custom-executor", dir=self.workdir))
        self.last_tempdir = tempdir
        session = make(tempdir) if make else JobSession(self, job, tempdir, None)
        try:
            session.prepare_with_retries()  # cleans up after each failed attempt itself
            try:
                yield session
            finally:
                session.cleanup()
        finally:
            shutil.rmtree(tempdir, ignore_errors=True)

    def run_job(self, job: Job, cancel: Cancel | None = None) -> JobResult:
        """Run `job` through config, prepare, the run stages and cleanup."""
        tempdir = Path(tempfile.mkdtemp(prefix="custom-executor", dir=self.workdir))
        self.last_tempdir = tempdir
        try:
            return JobSession(self, job, tempdir, cancel).execute()
        finally:
            shutil.rmtree(tempdir, ignore_errors=True)  # the runner removes it after cleanup


class JobSession:
    """One job's stages, callable one by one (tests) or all in order (`execute`)."""

    def __init__(self, runner: RunnerEmulator, job: Job, tempdir: Path,
                 cancel: Cancel | None) -> None:
        self.runner = runner
        self.job = job
        self.tempdir = tempdir
        self.cancel = cancel
        self.canceled = False
        self.calls: list[Call] = []
        self.log = bytearray()
        self.log_lock = threading.Lock()
        self.job_env: dict[str, str] = {}
        self.builds_dir = ""
        self.cache_dir = ""
        self.hostname = ""
        self.driver_name = ""
        self.job_status = "success"
        self.exit_code_file = tempdir / "build_exit_code"
        self.response_file = tempdir / "response.json"
        self._write_response()

    # --- environment and scripts -------------------------------------------------

    def _write_response(self) -> None:
        job = self.job
        # As GitLab builds the list: predefined variables first, then the job's own,
        # duplicates and all (the runner's env keeps the last of each name).
        listed = [*self.predefined().items(), *job.variables]
        payload: dict[str, object] = {
            "id": job.job_id, "token": job.token,
            "job_info": {"project_id": job.project_id, "name": "build"},
            "runner_info": {"timeout": job.timeout_seconds},
            "image": {"name": job.image, "entrypoint": [""] if job.image else None},
            "services": list(job.services),
            "variables": [{"key": k, "value": v, "masked": k in job.masked, "public": True}
                          for k, v in listed],
        }
        for key, value in job.payload_fields:
            if value is None:
                payload.pop(key, None)
            else:
                payload[key] = value
        self.response_file.write_text(json.dumps(payload), encoding="utf-8")
        self.response_file.chmod(0o600)

    def project_dir(self) -> str:
        return f"{self.builds_dir.rstrip('/')}/{self.job.project_path}" if self.builds_dir \
            else ""

    def variables(self) -> dict[str, str]:
        """Every job variable as the runner's env has it: the job's own win."""
        return {**self.predefined(), **dict(self.job.variables)}

    def predefined(self) -> dict[str, str]:
        """The variables GitLab and the runner define for the job."""
        job = self.job
        found = {
            "CI": "true", "GITLAB_CI": "true",
            "CI_JOB_ID": str(job.job_id), "CI_JOB_TOKEN": job.token,
            "CI_PROJECT_ID": str(job.project_id), "CI_PIPELINE_ID": str(job.pipeline_id),
            "CI_RUNNER_ID": str(job.runner_id), "CI_RUNNER_SHORT_TOKEN": job.runner_short_token,
            "CI_PROJECT_PATH": job.project_path, "CI_JOB_IMAGE": job.image,
            "CI_JOB_SERVICES": json.dumps(list(job.services)) if job.services else "",
            "CI_JOB_TIMEOUT": str(job.timeout_seconds), "CI_JOB_STATUS": self.job_status,
            "CI_SHARED_ENVIRONMENT": "true", "CI_CONCURRENT_ID": "0",
            "CI_CONCURRENT_PROJECT_ID": "0", "CI_SERVER_URL": "https://gitlab.example.com",
            "CI_REPOSITORY_URL": job.repository_url,
            "CI_REGISTRY": "registry.example.com",
            "CI_REGISTRY_USER": "gitlab-ci-token", "CI_REGISTRY_PASSWORD": job.token,
        }
        if self.builds_dir:
            found["CI_BUILDS_DIR"] = self.builds_dir
            found["CI_PROJECT_DIR"] = self.project_dir()
        return found

    def environment(self) -> dict[str, str]:
        env = dict(self.runner.environ)
        env.update({
            "TMPDIR": str(self.tempdir),
            "BUILD_FAILURE_EXIT_CODE": str(BUILD_FAILURE_EXIT_CODE),
            "SYSTEM_FAILURE_EXIT_CODE": str(SYSTEM_FAILURE_EXIT_CODE),
            "BUILD_EXIT_CODE_FILE": str(self.exit_code_file),
            "JOB_RESPONSE_FILE": str(self.response_file),
        })
        env.update(self.job_env)
        env.update({f"CUSTOM_ENV_{k}": v for k, v in self.variables().items()})
        return env

    def exports(self) -> str:
        return "".join(f"export {k}={ansi_c_quote(v)}\n" for k, v in self.variables().items())

    def stage_body(self, stage: str, commands: Sequence[str] = ()) -> str:
        project = self.project_dir()
        if stage == "prepare_script":
            return f'echo "Running on $(hostname) via {self.hostname}..."\n'
        if stage == "clear_worktree":
            return f"cd {ansi_c_quote(project)}\ngit rm -rf --ignore-unmatch . >/dev/null\n" \
                   "git clean -ffdx\n"
        body = self.exports()
        if stage == "get_sources":
            url = self.job.repository_url
            if not url:
                return body + 'echo "Skipping Git repository setup"\n' \
                              f"mkdir -p {ansi_c_quote(project)}\n"
            return body + (
                f"mkdir -p {ansi_c_quote(project)} {ansi_c_quote(project + '.tmp')}\n"
                f"cd {ansi_c_quote(project)}\n"
                'echo "Fetching changes..."\n'
                "git init -q 2>/dev/null || true\n"
                f"git remote add origin {ansi_c_quote(url)} 2>/dev/null || "
                f"git remote set-url origin {ansi_c_quote(url)}\n"
                "git fetch -q origin '+refs/heads/*:refs/remotes/origin/*'\n"
                'echo "Checking out $(git rev-parse --short origin/HEAD 2>/dev/null || '
                'git rev-parse --short origin/main) as detached HEAD"\n'
                "git checkout -q -f origin/main\n")
        if stage == "cleanup_file_variables":
            return body + f"rm -rf {ansi_c_quote(project + '.tmp')}\n"
        if stage in _HELPER_COMMANDS:
            # Like abstract.go's guardRunnerCommand: a missing binary only warns.
            action, command = _HELPER_COMMANDS[stage]
            archive = f"{self.cache_dir.rstrip('/')}/{self.job.project_path}/default/cache.zip"
            return body + (
                f"cd {ansi_c_quote(project)}\n"
                "if gitlab-runner --version >/dev/null 2>&1; then\n"
                f"  gitlab-runner {command} --file {ansi_c_quote(archive)} --path . || "
                f"echo 'WARNING: {action} failed'\n"
                f"else\n  echo 'Missing gitlab-runner. {action} is disabled.'\nfi\n")
        lines = [body, f"cd {ansi_c_quote(project)}\n"]
        for command in commands:
            lines.append(f"echo {ansi_c_quote(chr(27) + '[32;1m$ ' + command + chr(27) + '[0;m')}"
                         "\n")
            lines.append(command + "\n")
        return "".join(lines)

    # --- calling the driver --------------------------------------------------------

    def say(self, text: str) -> None:
        with self.log_lock:
            self.log += text.encode()
            _trim(self.log, self.runner.keep_output_bytes, exact=True)

    def call(self, stage: str, args: Sequence[str], *, to_log: bool = True) -> Call:
        argv = [*self.runner.driver, *args]
        started = time.monotonic()
        spawn, report = argv, None
        if self.runner.own_rss:
            report, report_write = os.pipe()
            spawn = [sys.executable, "-S", "-I", "-c", _RUSAGE_PARENT, str(report_write), *argv]
        try:
            process = subprocess.Popen(spawn, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, cwd=self.tempdir,
                                       env=self.environment(), process_group=0,
                                       pass_fds=() if report is None else (report_write,))
        except OSError:
            if report is not None:
                os.close(report)
            raise
        finally:
            if report is not None:
                os.close(report_write)
        out, err = bytearray(), bytearray()
        out_bytes = [0]
        keep = self.runner.keep_output_bytes

        def pump(stream: IO[bytes], sink: bytearray, counted: list[int] | None) -> None:
            while True:
                chunk = os.read(stream.fileno(), 65536)
                if not chunk:
                    return
                if counted is not None:
                    counted[0] += len(chunk)
                sink += chunk
                _trim(sink, keep)
                if to_log:
                    with self.log_lock:
                        self.log += chunk
                        _trim(self.log, keep)

        readers = [threading.Thread(target=pump, args=(process.stdout, out, out_bytes),
                                    daemon=True),
                   threading.Thread(target=pump, args=(process.stderr, err, None), daemon=True)]
        for reader in readers:
            reader.start()
        # A thread watches for the exit, so it is seen at once while cancel and timeout
        # are still timed here. It leaves the driver a zombie (WNOWAIT): until it is
        # reaped below, its pid, which names its process group, cannot be reused, so the
        # kills here never reach an unrelated process that got the same number.
        exited = threading.Event()

        def watch() -> None:
            os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
            exited.set()

        threading.Thread(target=watch, daemon=True).start()
        signaled_after = exited_after = None
        cancel_at = (started + self.cancel.after_seconds
                     if self.cancel and self.cancel.stage == stage and not self.canceled
                     else None)
        deadline = started + self.runner.stage_timeout_seconds
        while not exited.is_set():
            now = time.monotonic()
            if cancel_at is not None and now >= cancel_at:
                self.canceled = True
                signaled_after = now - started
                exited_after = self._kill(process, exited)
                cancel_at = None
                break
            if now > deadline:
                self._kill(process, exited)
                break
            exited.wait((deadline if cancel_at is None else min(deadline, cancel_at)) - now)
        exited.wait()
        # gitlab-runner waits for EOF on both pipes, not just for the process.
        pipe_deadline = time.monotonic() + self.runner.pipe_grace_seconds
        for reader in readers:
            reader.join(max(0.0, pipe_deadline - time.monotonic()))
        held = any(reader.is_alive() for reader in readers)
        if held:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        # Reaped with os.wait4 (not Popen.wait) for the driver's resource usage.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        ended_at = time.time()
        for sink in (out, err):
            _trim(sink, keep, exact=True)
        if to_log:
            with self.log_lock:
                _trim(self.log, keep, exact=True)
        cpu_seconds = usage.ru_utime + usage.ru_stime
        max_rss_kb = usage.ru_maxrss
        if report is not None:
            with os.fdopen(report, "rb") as report_file:
                own = report_file.read().split()
            if len(own) == 2:  # none when the parent itself was killed
                cpu_seconds, max_rss_kb = float(own[0]), int(own[1])
        record = Call(stage, argv, process.returncode, bytes(out), bytes(err), seconds,
                      signaled_after, exited_after, held, cpu_seconds=cpu_seconds,
                      max_rss_kb=max_rss_kb, ended_at=ended_at, stdout_bytes=out_bytes[0])
        self.calls.append(record)
        return record

    def _kill(self, process: subprocess.Popen[bytes], exited: threading.Event) -> float | None:
        """SIGTERM to the process group, SIGKILL after the graceful timeout; exit delay."""
        sent = time.monotonic()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        if exited.wait(self.runner.graceful_kill_seconds):
            return time.monotonic() - sent
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        exited.wait()
        return None

    def outcome(self, call: Call) -> None:
        """Raise the runner's reading of a stage's exit code, or return on success."""
        if call.pipes_held:
            raise StageFailed("system", None, f"{call.stage}: the driver left a process "
                                                "holding stdout/stderr")
        if self.canceled and call.signaled_after is not None:
            raise StageFailed("canceled", None, f"{call.stage}: canceled")
        if call.exit_code == 0:
            return
        if call.exit_code == BUILD_FAILURE_EXIT_CODE:
            code = 1
            if self.exit_code_file.exists():
                # The first line (bufio.ScanLines: split on \n, drop one \r) must pass
                # Go's strconv.Atoi: an optional sign and ASCII digits, nothing else.
                first = self.exit_code_file.read_bytes().split(b"\n", 1)[0].removesuffix(b"\r")
                if not re.fullmatch(rb"[+-]?[0-9]+", first):
                    raise StageFailed("system", None, f"{call.stage}: invalid content in "
                                                        "BUILD_EXIT_CODE_FILE")
                code = int(first)
            raise StageFailed("build", code, f"{call.stage}: exit code {code}")
        raise StageFailed("system", None, f"{call.stage}: exit status {call.exit_code}")

    # --- the job flow (build.go) ------------------------------------------------------

    def execute(self) -> JobResult:
        try:
            self.prepare_with_retries()
        except StageFailed as early:  # each failed attempt was already cleaned up
            return self.finish(early, cleanup=False)
        try:
            self.run_stage("prepare_script")
        except StageFailed as early:
            return self.finish(early)
        failure: StageFailed | None = None
        try:
            self.run_stage("get_sources")
            if self.job.cache:
                self.run_stage("restore_cache")
        except StageFailed as error:
            if error.kind == "canceled":  # before user steps: the whole job stops
                return self.finish(error)
            failure = error
        if failure is None:
            try:
                self.run_stage("build_script", self.job.script)
                for name, commands in self.job.steps:
                    self.run_stage(USER_STAGE_PREFIX + name, commands)
            except StageFailed as error:
                failure = error  # a graceful cancel lands here too, and the job goes on
            if self.job.after_script:
                self.job_status = ("canceled" if self.canceled
                                   else "failed" if failure else "success")
                try:
                    self.run_stage("after_script", self.job.after_script)
                except StageFailed:
                    self.say("WARNING: after_script failed, but job will continue unaffected\n")
        ok = failure is None and not self.canceled
        try:
            if self.job.cache:
                self.run_stage("archive_cache" if ok else "archive_cache_on_failure")
            if self.job.artifacts:
                self.run_stage("upload_artifacts_on_success" if ok
                               else "upload_artifacts_on_failure")
        except StageFailed as error:
            failure = failure or error
        try:
            self.run_stage("cleanup_file_variables")
        except StageFailed:
            self.say("WARNING: cleanup_file_variables failed\n")
        return self.finish(failure)

    def prepare_with_retries(self) -> None:
        for attempt in range(1, PREPARE_ATTEMPTS + 1):
            # Each attempt is a new executor: nothing from an earlier config survives.
            self.job_env, self.driver_name = {}, ""
            try:
                self.say("Preparing the \"custom\" executor\n")
                config = self.call("config", ["config"], to_log=False)
                with self.log_lock:
                    self.log += config.stderr
                    _trim(self.log, self.runner.keep_output_bytes, exact=True)
                self.outcome(config)
                self.apply_config(config)
                self.say(f"Using Custom executor with driver {self.driver_name}...\n"
                         if self.driver_name else "Using Custom executor...\n")
                self.outcome(self.call("prepare", ["prepare"]))
                return
            except StageFailed as failure:
                self.cleanup()
                if failure.kind != "system" or attempt == PREPARE_ATTEMPTS:
                    raise
                self.say(f"WARNING: Preparation failed: {failure}\n"
                         f"Will be retried in {self.runner.prepare_retry_seconds}s ...\n")
                time.sleep(self.runner.prepare_retry_seconds)

    def apply_config(self, call: Call) -> None:
        text = call.stdout.decode(errors="replace").strip()
        try:
            parsed = json.loads(text) if text else {}
        except ValueError as error:
            raise StageFailed("system", None, f"config: error while parsing JSON output: "
                                                f"{error}") from error
        if not isinstance(parsed, dict):
            raise StageFailed("system", None, "config: JSON output is not an object")
        self.builds_dir = str(parsed.get("builds_dir") or "")
        self.cache_dir = str(parsed.get("cache_dir") or "")
        if not self.builds_dir:
            raise StageFailed("system", None, "the builds_dir is not configured")
        self.hostname = str(parsed.get("hostname") or "")
        self.job_env = {str(k): str(v) for k, v in (parsed.get("job_env") or {}).items()}
        driver = parsed.get("driver") or {}
        self.driver_name = f"{driver.get('name', '')} {driver.get('version', '')}".strip()

    def run_stage(self, stage: str, commands: Sequence[str] = ()) -> None:
        """Call `run` for one stage; raises the runner's reading of a failure."""
        self.run_body(stage, self.stage_body(stage, commands))

    def run_body(self, stage: str, body: str) -> Call:
        """Call `run` with a script around `body`; raises the runner's reading of a failure."""
        directory = Path(tempfile.mkdtemp(prefix="script", dir=self.tempdir))
        script = directory / "script"
        script.write_text(bash_script(body), encoding="utf-8")
        script.chmod(0o700)
        self.say(f"\x1b[36;1mExecuting \"{stage}\" stage of the job script\x1b[0;m\n")
        call = self.call(stage, ["run", str(script), stage])
        self.outcome(call)
        return call

    def cleanup(self) -> None:
        call = self.call("cleanup", ["cleanup"], to_log=False)
        if call.exit_code != 0:  # its output stays out of the job log, the failure does not
            self.say(f"WARNING: Cleanup script failed: exit status {call.exit_code}\n")

    def finish(self, failure: StageFailed | None, *, cleanup: bool = True) -> JobResult:
        if cleanup:
            self.cleanup()
        if failure is None and not self.canceled:
            self.say("Job succeeded\n")
            return JobResult("success", "", 0, bytes(self.log), self.calls)
        if self.canceled or (failure is not None and failure.kind == "canceled"):
            self.say("ERROR: Job failed: canceled\n")
            return JobResult("canceled", "", None, bytes(self.log), self.calls, "canceled")
        assert failure is not None
        if failure.kind == "build":
            self.say(f"ERROR: Job failed: exit code {failure.exit_code}\n")
            return JobResult("failed", "script_failure", failure.exit_code, bytes(self.log),
                             self.calls, str(failure))
        self.say(f"ERROR: Job failed (system failure): {failure}\n")
        return JobResult("failed", "runner_system_failure", None, bytes(self.log), self.calls,
                         str(failure))
