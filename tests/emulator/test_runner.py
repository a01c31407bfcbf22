"""The runner emulator itself, pinned down without a cluster.

Every test drives `RunnerEmulator` against a small fake driver written into tmp_path:
a Python script that records what it received (argv, cwd, environment, stdin, process
group, the stage script) and then behaves per stage as a JSON plan says (print, sleep,
exit with a code, write BUILD_EXIT_CODE_FILE, trap or ignore SIGTERM, leave a child
holding stdout). What is checked is what ../shared/docs/runner-protocol.md says
gitlab-runner does (sections 1-5).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runner_driver.emulator.runner import (
    Call,
    Cancel,
    Job,
    JobResult,
    RunnerEmulator,
    StageFailed,
    ansi_c_quote,
    bash_script,
)
from tests.conftest import wait_for

GRACEFUL_KILL_SECONDS = 2.0
PIPE_GRACE_SECONDS = 1.0

Plan = dict[str, dict[str, Any]]
Record = dict[str, Any]

# One fake driver for every stage. Its plan maps a stage name ("config", "prepare",
# "cleanup" or the run stage) to actions; "<stage>#<n>" applies to the n-th call only.
FAKE_DRIVER = r'''
import json, os, signal, subprocess, sys, time

args = sys.argv[1:]
stage = args[2] if args[0] == "run" else args[0]
records = os.environ["FAKE_RECORDS"]
events = os.environ["FAKE_EVENTS"]
names = sorted(os.listdir(records))
attempt = sum(1 for name in names if name.split("-", 1)[1] == stage + ".json")
with open(os.environ["FAKE_PLAN"]) as plan_file:
    plan = json.load(plan_file)
act = plan.get(f"{stage}#{attempt}", plan.get(stage, {}))


def event(text):
    with open(events, "a") as sink:
        sink.write(text + "\n")


record = {
    "argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ),
    "stdin_null": os.path.samestat(os.fstat(0), os.stat("/dev/null")),
    "pid": os.getpid(), "pgid": os.getpgid(0),
}
if args[0] == "run":
    with open(args[1]) as script:
        record["script"] = script.read()
    record["script_mode"] = os.stat(args[1]).st_mode & 0o777
response = os.environ.get("JOB_RESPONSE_FILE", "")
if response and os.path.exists(response):
    record["response_mode"] = os.stat(response).st_mode & 0o777
    with open(response) as payload:
        record["response"] = json.load(payload)
with open(os.path.join(records, f"{len(names):03d}-{stage}.json"), "w") as out:
    json.dump(record, out)

if act.get("on_term") == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif act.get("on_term") == "record":
    def on_term(signum, frame):
        event("term driver " + stage)
        os._exit(1)
    signal.signal(signal.SIGTERM, on_term)
if act.get("term_child"):
    # A child in the driver's process group that notes the SIGTERM it receives.
    subprocess.Popen(
        ["bash", "-c", f"trap 'echo term child {stage} >> {events}; exit 0' TERM; "
                       "echo ready >> " + events + "; sleep 30 & wait"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not os.path.exists(events) or "ready" not in open(events).read():
        time.sleep(0.005)
hold = act.get("hold")
if hold:
    # A background child left holding stdout or stderr (or neither, when "devnull").
    streams = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    if hold["stream"] in streams:
        streams[hold["stream"]] = None
    child = subprocess.Popen(
        ["sh", "-c", f"sleep {hold['seconds']}; printf %s '{hold.get('say', '')}'"],
        stdin=subprocess.DEVNULL, **streams)
    event(f"holder {child.pid}")
if act.get("child_cpu"):
    # A child the driver waits for, spinning for that much CPU time.
    subprocess.run([sys.executable, "-S", "-c", "import time\n"
                    f"while time.process_time() < {act['child_cpu']}: pass"], check=True)
if act.get("cpu"):
    while time.process_time() < act["cpu"]:
        pass
if act.get("allocate_mb"):
    held = bytearray(act["allocate_mb"] << 20)  # zero pages count once written
    for page in range(0, len(held), 4096):
        held[page] = 1
if act.get("stdout_bytes"):
    line = b"0123456789abcdef" * 7 + b"line\n"
    left = act["stdout_bytes"]
    while left:
        left -= os.write(1, (line * 1000)[:min(left, 64000)])
if "stdout" in act:
    sys.stdout.write(act["stdout"])
    sys.stdout.flush()
if "stderr" in act:
    if "stdout" in act:
        time.sleep(0.05)  # two pipes, two reader threads: keep their order observable
    sys.stderr.write(act["stderr"])
    sys.stderr.flush()
if "exit_code_file" in act:
    with open(os.environ["BUILD_EXIT_CODE_FILE"], "w") as code_file:
        code_file.write(act["exit_code_file"])
if act.get("exec_script"):
    code = subprocess.call(["bash", args[1]])
    if code:
        with open(os.environ["BUILD_EXIT_CODE_FILE"], "w") as code_file:
            code_file.write(str(code))
        sys.exit(int(os.environ["BUILD_FAILURE_EXIT_CODE"]))
if act.get("kill_self"):
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(act.get("sleep", 0))
sys.exit(act.get("exit", 0))
'''

CONFIG_OUTPUT = {"builds_dir": "/builds", "cache_dir": "/cache", "hostname": "fake-host",
                 "driver": {"name": "fake", "version": "0.1"},
                 "job_env": {"FAKE_JOB_ENV": "from-config", "FAKE_POD": "pod-1"}}

FULL_JOB = Job(job_id=4242, cache=True, artifacts=True, after_script=("echo after",),
               steps=(("release", ("echo release",)),),
               variables=(("MY_SECRET", "s3cr3t value"), ("MY_PLAIN", "plain")),
               masked=frozenset({"MY_SECRET"}))
SUCCESS_STAGES = ["config", "prepare", "prepare_script", "get_sources", "restore_cache",
                  "build_script", "step_release", "after_script", "archive_cache",
                  "upload_artifacts_on_success", "cleanup_file_variables", "cleanup"]
FAILURE_TAIL = ["archive_cache_on_failure", "upload_artifacts_on_failure",
                "cleanup_file_variables", "cleanup"]


@dataclass
class Fake:
    """A fake driver in a directory, with its plan and what it recorded."""

    root: Path
    script: Path
    plan_file: Path
    records: Path
    events: Path

    def runner(self, **overrides: float) -> RunnerEmulator:
        """A RunnerEmulator calling this fake with short test timings."""
        timings: dict[str, Any] = {"prepare_retry_seconds": 0.01,
                                     "graceful_kill_seconds": GRACEFUL_KILL_SECONDS,
                                     "pipe_grace_seconds": PIPE_GRACE_SECONDS}
        timings.update(overrides)
        environ = {"PATH": os.environ["PATH"], "FAKE_PLAN": str(self.plan_file),
                   "FAKE_RECORDS": str(self.records), "FAKE_EVENTS": str(self.events),
                   "RUNNER_HOST_MARKER": "from-runner-environ"}
        workdir = self.root / "work"
        workdir.mkdir(exist_ok=True)
        return RunnerEmulator([str(self.script)], environ=environ, workdir=workdir,
                              **timings)

    def calls(self) -> list[Record]:
        """Every call's record, in call order."""
        found: list[Record] = []
        for path in sorted(self.records.iterdir()):
            record: Record = json.loads(path.read_text())
            record["stage"] = path.stem.split("-", 1)[1]
            found.append(record)
        return found

    def call(self, stage: str, index: int = -1) -> Record:
        """The record of one call for `stage` (the last one by default)."""
        return [r for r in self.calls() if r["stage"] == stage][index]

    def events_seen(self) -> list[str]:
        """Lines the fake and its children appended to the events file."""
        return self.events.read_text().splitlines() if self.events.exists() else []


def make_fake(root: Path, plan: Plan | None = None) -> Fake:
    """Write the fake driver and its plan under `root`; config prints CONFIG_OUTPUT."""
    root.mkdir(parents=True, exist_ok=True)
    script = root / "fake-driver"
    script.write_text(f"#!{sys.executable} -S\n{FAKE_DRIVER}", encoding="utf-8")
    script.chmod(0o755)
    full: Plan = {"config": {"stdout": json.dumps(CONFIG_OUTPUT)}}
    full.update(plan or {})
    plan_file = root / "plan.json"
    plan_file.write_text(json.dumps(full), encoding="utf-8")
    records = root / "records"
    records.mkdir()
    return Fake(root, script, plan_file, records, root / "events")


def run(tmp_path: Path, plan: Plan | None = None, job: Job = FULL_JOB,
        cancel: Cancel | None = None) -> tuple[JobResult, Fake]:
    """Run `job` through a fake driver following `plan`."""
    fake = make_fake(tmp_path, plan)
    return fake.runner().run_job(job, cancel), fake


_ANSI_C = r"\$'(?:[^'\\]|\\.)*'"


def unquote(quoted: str) -> str:
    """What bash makes of a $'...' word."""
    return subprocess.run(["bash", "-c", f"printf %s {quoted}"], check=True,
                          capture_output=True, text=True).stdout


def exported(script: str, name: str) -> str | None:
    """The value a generated stage script's eval'd body exports for `name`."""
    body = re.search(rf"; eval ({_ANSI_C})\) < /dev/null$", script, re.MULTILINE)
    assert body is not None, script
    match = re.search(rf"^export {name}=({_ANSI_C})$", unquote(body.group(1)), re.MULTILINE)
    return None if match is None else unquote(match.group(1))


def process_gone(pid: int) -> bool:
    """True once `pid` no longer runs (gone, or a zombie awaiting its reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in {"Z", "X"}


# --- ansi_c_quote and bash_script ----------------------------------------------------------

def _samples() -> list[str]:
    rng = random.Random(20260826)  # noqa: S311 - reproducible test data, not secrets
    alphabet = [chr(c) for c in range(1, 128)] + list("é✓日本🎉\u0085\u00a0\u2028")
    fixed = ["", "plain", "".join(chr(c) for c in range(1, 128)), "it's", 'a"b',
             "\\x41\\n\\'", "\n\t\r\v\f", "\x01F\x1bab\x7f0\x0f\x10", "trailing\\",
             "$HOME `id` $(id) ${x} * ? [a] ~ ! # ;&|<>", "héllo wörld ✓ 日本語 🎉",
             "\u0085\u00a0\u2028", "'''", "\\\\'\\"]
    fixed += [chr(c) for c in range(1, 128)]
    fixed += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
              for _ in range(300)]
    return fixed


SAMPLES = _samples()


@pytest.mark.parametrize("shell", [["bash", "-c"], ["busybox", "sh", "-c"]],
                         ids=["bash", "busybox-sh"])
def test_ansi_c_quote_round_trips_through_a_real_shell(shell: list[str]) -> None:
    """Every quoted string (all ASCII but NUL, quotes, backslashes, UTF-8) reads back intact."""
    command = "printf '%s\\0' " + " ".join(ansi_c_quote(s) for s in SAMPLES)
    out = subprocess.run([*shell, command], check=True, capture_output=True, timeout=10).stdout
    assert out.split(b"\0")[:-1] == [s.encode() for s in SAMPLES]


def test_ansi_c_quote_writes_only_printable_ascii_for_ascii_input() -> None:
    """Control characters are escaped, so a script file never holds raw control bytes."""
    quoted = ansi_c_quote("".join(chr(c) for c in range(1, 128)))
    assert quoted.startswith("$'") and quoted.endswith("'")
    assert all(32 <= ord(c) < 127 for c in quoted)
    assert ansi_c_quote("a\nb") == "$'a\\nb'" and ansi_c_quote("it's") == "$'it\\'s'"


Completed = subprocess.CompletedProcess[bytes]


def _run_script(tmp_path: Path, body: str, stdin: bytes = b"") -> Completed:
    """Run bash_script(body) as an executable file."""
    path = tmp_path / "script"
    path.write_text(bash_script(body), encoding="utf-8")
    path.chmod(0o700)
    return subprocess.run([str(path)], input=stdin, capture_output=True, timeout=10,
                          check=False)


@pytest.mark.parametrize(("body", "code"), [
    ("true", 0), ("false", 1), ("exit 3", 3), ("(exit 7)", 7), ("echo x | false | true", 1),
    ("x='a b'; [ \"$x\" = 'a b' ]", 0),
])
def test_bash_script_exits_with_the_body_status(tmp_path: Path, body: str, code: int) -> None:
    """A failing command's status (errexit, pipefail) becomes the script's exit code."""
    assert _run_script(tmp_path, body).returncode == code


def test_bash_script_stops_at_the_first_failing_command(tmp_path: Path) -> None:
    """Commands after a failing one do not run."""
    done = _run_script(tmp_path, "echo before\nfalse\necho after\n")
    assert (done.returncode, done.stdout) == (1, b"before\n")


def test_bash_script_body_reads_dev_null(tmp_path: Path) -> None:
    """stdin inside the eval is /dev/null even when the script itself gets input."""
    done = _run_script(tmp_path, "cat\nreadlink /proc/self/fd/0\n", stdin=b"must not be read\n")
    assert (done.returncode, done.stdout) == (0, b"/dev/null\n")


def test_bash_script_exits_1_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM to the script's process group makes it exit 1 promptly (the TERM trap)."""
    path = tmp_path / "script"
    path.write_text(bash_script("echo ready\nsleep 30\necho not-reached\n"), encoding="utf-8")
    path.chmod(0o700)
    process = subprocess.Popen([str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               process_group=0)
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    time.sleep(0.3)  # let `sleep` start: a TERM racing bash's fork is not what this pins
    sent = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=5) == 1
    assert time.monotonic() - sent < 2
    assert process.stdout.read() == b""


# --- how each call is made -------------------------------------------------------------------

@dataclass
class FullJob:
    """One successful FULL_JOB through the fake, shared by the call-shape tests."""

    result: JobResult
    fake: Fake
    tempdir: Path
    workdir: Path


@pytest.fixture(scope="module")
def full_job(tmp_path_factory: pytest.TempPathFactory) -> FullJob:
    """A successful job with cache, artifacts, a step and after_script."""
    fake = make_fake(tmp_path_factory.mktemp("full"))
    runner = fake.runner()
    result = runner.run_job(FULL_JOB)
    assert runner.last_tempdir is not None
    assert runner.workdir is not None
    return FullJob(result, fake, runner.last_tempdir, runner.workdir)


def test_each_call_gets_the_stage_arguments(full_job: FullJob) -> None:
    """argv is the driver plus `config`, `prepare`, `run <script> <stage>` or `cleanup`."""
    driver = str(full_job.fake.script)
    records = full_job.fake.calls()
    assert [r["stage"] for r in records] == SUCCESS_STAGES == full_job.result.stages
    for record, call in zip(records, full_job.result.calls, strict=True):
        stage = record["stage"]
        assert record["argv"] == call.argv
        if stage in {"config", "prepare", "cleanup"}:
            assert record["argv"] == [driver, stage]
        else:
            assert record["argv"][:2] == [driver, "run"] and record["argv"][3] == stage
            assert len(record["argv"]) == 4


def test_each_call_runs_in_the_job_tempdir_with_null_stdin_in_its_own_group(
        full_job: FullJob) -> None:
    """cwd == TMPDIR == one custom-executor* dir under workdir; stdin /dev/null; pgid == pid."""
    tempdir = full_job.tempdir
    assert tempdir.parent == full_job.workdir and tempdir.name.startswith("custom-executor")
    for record in full_job.fake.calls():
        assert record["cwd"] == record["env"]["TMPDIR"] == str(tempdir), record["stage"]
        assert record["stdin_null"], record["stage"]
        assert record["pgid"] == record["pid"], record["stage"]
    assert len({r["pid"] for r in full_job.fake.calls()}) == len(SUCCESS_STAGES)


def test_each_call_gets_the_exit_code_variables_and_files(full_job: FullJob) -> None:
    """BUILD_/SYSTEM_FAILURE_EXIT_CODE are 1/2; the two file paths lie in the tempdir."""
    for record in full_job.fake.calls():
        env = record["env"]
        assert env["BUILD_FAILURE_EXIT_CODE"] == "1"
        assert env["SYSTEM_FAILURE_EXIT_CODE"] == "2"
        assert env["BUILD_EXIT_CODE_FILE"] == str(full_job.tempdir / "build_exit_code")
        assert env["JOB_RESPONSE_FILE"] == str(full_job.tempdir / "response.json")
        assert env["RUNNER_HOST_MARKER"] == "from-runner-environ"  # the runner's own env


def test_job_response_file_is_private_json_with_masked_flags(full_job: FullJob) -> None:
    """JOB_RESPONSE_FILE exists from config on, mode 0600, with id, token and variables."""
    for record in full_job.fake.calls():
        assert record["response_mode"] == 0o600, record["stage"]
    payload = full_job.fake.call("config")["response"]
    assert payload["id"] == FULL_JOB.job_id and payload["token"] == FULL_JOB.token
    variables = {v["key"]: v for v in payload["variables"]}
    assert variables["MY_SECRET"]["value"] == "s3cr3t value"
    assert variables["MY_SECRET"]["masked"] is True
    assert variables["MY_PLAIN"]["masked"] is False
    assert variables["CI_JOB_ID"]["value"] == str(FULL_JOB.job_id)


def test_job_variables_reach_every_call_as_custom_env(full_job: FullJob) -> None:
    """Every job variable, masked ones in clear text, is CUSTOM_ENV_<KEY>."""
    for record in full_job.fake.calls():
        env = record["env"]
        assert env["CUSTOM_ENV_CI_JOB_ID"] == "4242"
        assert env["CUSTOM_ENV_CI_PROJECT_PATH"] == "group/app"
        assert env["CUSTOM_ENV_CI_JOB_TOKEN"] == FULL_JOB.token
        assert env["CUSTOM_ENV_MY_SECRET"] == "s3cr3t value"
        assert env["CUSTOM_ENV_MY_PLAIN"] == "plain"
    assert "CUSTOM_ENV_CI_PROJECT_DIR" not in full_job.fake.call("config")["env"]
    assert full_job.fake.call("build_script")["env"]["CUSTOM_ENV_CI_PROJECT_DIR"] == \
        "/builds/group/app"


def test_job_env_from_config_reaches_later_stages_unprefixed(full_job: FullJob) -> None:
    """config's job_env is in every later call's environment as is, and not in config's."""
    records = full_job.fake.calls()
    assert "FAKE_JOB_ENV" not in records[0]["env"]
    for record in records[1:]:
        assert record["env"]["FAKE_JOB_ENV"] == "from-config", record["stage"]
        assert record["env"]["FAKE_POD"] == "pod-1"
        assert "CUSTOM_ENV_FAKE_JOB_ENV" not in record["env"]


def test_each_run_gets_a_new_private_script(full_job: FullJob) -> None:
    """Each run call gets its own <tmp>/script*/script, mode 0700, in the runner's bash shape."""
    runs = [r for r in full_job.fake.calls() if r["argv"][1] == "run"]
    paths = [Path(r["argv"][2]) for r in runs]
    assert len(set(paths)) == len(runs) == len(SUCCESS_STAGES) - 3
    for record, path in zip(runs, paths, strict=True):
        assert path.name == "script" and path.parent.name.startswith("script")
        assert path.parent.parent == full_job.tempdir
        assert record["script_mode"] == 0o700
        assert record["script"].startswith("#!/usr/bin/env bash\n")
        assert "trap exit 1 TERM" in record["script"]
    build = full_job.fake.call("build_script")["script"]
    assert exported(build, "CI_JOB_ID") == "4242"
    assert exported(build, "MY_SECRET") == "s3cr3t value"
    assert exported(full_job.fake.call("prepare_script")["script"], "CI_JOB_ID") is None


def test_the_job_tempdir_is_removed_after_the_job(full_job: FullJob) -> None:
    """The per-job directory and its scripts are gone once the job has finished."""
    assert full_job.result.status == "success"
    assert not full_job.tempdir.exists()
    assert list(full_job.workdir.iterdir()) == []


def test_session_runs_config_and_prepare_then_cleanup_on_exit(tmp_path: Path) -> None:
    """session() calls config and prepare on entry and cleanup on exit, then removes the dir."""
    fake = make_fake(tmp_path)
    runner = fake.runner()
    with runner.session(Job(job_id=9)) as session:
        assert [c.stage for c in session.calls] == ["config", "prepare"]
        assert session.job_env == CONFIG_OUTPUT["job_env"]
        call = session.run_body("build_script", "echo hi\n")
        assert call.exit_code == 0
    assert [r["stage"] for r in fake.calls()] == ["config", "prepare", "build_script", "cleanup"]
    assert runner.last_tempdir is not None and not runner.last_tempdir.exists()


def test_session_with_failing_prepare_cleans_up_once_per_attempt(tmp_path: Path) -> None:
    """A session whose prepare keeps failing raises after 3 attempts, one cleanup each."""
    fake = make_fake(tmp_path, {"prepare": {"exit": 2}})
    with pytest.raises(StageFailed) as failed, fake.runner().session(Job(job_id=9)):
        pass
    assert failed.value.kind == "system"
    assert [r["stage"] for r in fake.calls()] == ["config", "prepare", "cleanup"] * 3


# --- stage order and failure paths ------------------------------------------------------------

def test_successful_job_runs_every_stage_in_order(full_job: FullJob) -> None:
    """config, prepare, the run stages of a job with cache/artifacts/step/after_script, cleanup."""
    result = full_job.result
    assert (result.status, result.failure_reason, result.exit_code) == ("success", "", 0)
    assert result.stages == SUCCESS_STAGES
    assert all(c.exit_code == 0 and not c.pipes_held for c in result.calls)
    status = {r["stage"]: r["env"]["CUSTOM_ENV_CI_JOB_STATUS"] for r in full_job.fake.calls()}
    assert status["after_script"] == "success"
    assert exported(full_job.fake.call("after_script")["script"], "CI_JOB_STATUS") == "success"


def test_build_failure_reports_the_code_from_build_exit_code_file(tmp_path: Path) -> None:
    """build_script exit 1 + BUILD_EXIT_CODE_FILE=42: script_failure 42, failure stages run."""
    result, fake = run(tmp_path, {"build_script": {"exit": 1, "exit_code_file": "42\n"}})
    assert (result.status, result.failure_reason, result.exit_code) == \
        ("failed", "script_failure", 42)
    assert result.stages == [*SUCCESS_STAGES[:6], "after_script", *FAILURE_TAIL]
    assert fake.call("after_script")["env"]["CUSTOM_ENV_CI_JOB_STATUS"] == "failed"
    assert exported(fake.call("after_script")["script"], "CI_JOB_STATUS") == "failed"
    assert b"ERROR: Job failed: exit code 42" in result.log


def test_build_failure_without_exit_code_file_reports_1(tmp_path: Path) -> None:
    """Exit 1 with no BUILD_EXIT_CODE_FILE written is a script_failure with exit code 1."""
    result, _ = run(tmp_path, {"build_script": {"exit": 1}})
    assert (result.status, result.failure_reason, result.exit_code) == \
        ("failed", "script_failure", 1)


@pytest.mark.parametrize(("content", "code"), [
    ("7", 7), ("42\n", 42), ("42\r\n", 42), ("-3\n", -3), ("+5", 5), ("13\nignored", 13),
    ("007", 7),
])
def test_exit_code_file_first_line_is_read_like_go_atoi(tmp_path: Path, content: str,
                                                        code: int) -> None:
    """The first line of BUILD_EXIT_CODE_FILE, an optionally signed integer, is the exit code."""
    result, _ = run(tmp_path, {"build_script": {"exit": 1, "exit_code_file": content}},
                    job=Job(job_id=1))
    assert (result.failure_reason, result.exit_code) == ("script_failure", code)


@pytest.mark.parametrize("content", ["abc", "", "\n5", " 42", "42 ", "4.2", "--5", "0x10",
                                     "\u0663"])
def test_non_integer_exit_code_file_is_a_system_failure(tmp_path: Path, content: str) -> None:
    """A first line that is not an integer makes a build failure a runner_system_failure."""
    result, _ = run(tmp_path, {"build_script": {"exit": 1, "exit_code_file": content}},
                    job=Job(job_id=1))
    assert (result.status, result.failure_reason, result.exit_code) == \
        ("failed", "runner_system_failure", None)
    assert b"invalid content in BUILD_EXIT_CODE_FILE" in result.log


@pytest.mark.parametrize("action", [{"exit": 2}, {"exit": 3}, {"exit": 127},
                                    {"kill_self": True}], ids=["2", "3", "127", "signal"])
def test_run_exit_other_than_0_or_1_is_a_system_failure(tmp_path: Path,
                                                        action: dict[str, Any]) -> None:
    """run exiting 2, any other code, or dying by a signal is runner_system_failure."""
    result, _ = run(tmp_path, {"build_script": action})
    assert (result.status, result.failure_reason, result.exit_code) == \
        ("failed", "runner_system_failure", None)
    assert result.stages == [*SUCCESS_STAGES[:6], "after_script", *FAILURE_TAIL]


@pytest.mark.parametrize(("plan", "attempt", "reason"), [
    ({"prepare": {"exit": 2}}, ["config", "prepare", "cleanup"], "runner_system_failure"),
    ({"prepare": {"exit": 3}}, ["config", "prepare", "cleanup"], "runner_system_failure"),
    ({"config": {"exit": 2}}, ["config", "cleanup"], "runner_system_failure"),
    ({"config": {"stdout": "Starting...\n{}"}}, ["config", "cleanup"], "runner_system_failure"),
    ({"config": {"stdout": "[1, 2]"}}, ["config", "cleanup"], "runner_system_failure"),
], ids=["prepare-2", "prepare-3", "config-2", "config-invalid-json", "config-not-object"])
def test_system_failure_in_prepare_phase_is_retried_with_cleanup_after_each(
        tmp_path: Path, plan: Plan, attempt: list[str], reason: str) -> None:
    """config/prepare system failures: 3 attempts, cleanup after each, no run stage."""
    result, _ = run(tmp_path, plan)
    assert (result.status, result.failure_reason, result.exit_code) == ("failed", reason, None)
    assert result.stages == attempt * 3
    assert result.log.count(b"WARNING: Preparation failed") == 2


@pytest.mark.parametrize(("plan", "attempt"), [
    ({"prepare": {"exit": 1}}, ["config", "prepare", "cleanup"]),
    ({"config": {"exit": 1}}, ["config", "cleanup"]),
    ({"prepare": {"exit": 1, "exit_code_file": "9"}}, ["config", "prepare", "cleanup"]),
], ids=["prepare", "config", "prepare-with-code-file"])
def test_build_failure_in_prepare_phase_is_not_retried(tmp_path: Path, plan: Plan,
                                                       attempt: list[str]) -> None:
    """config/prepare exiting 1 is a script_failure at once: one attempt, one cleanup."""
    result, _ = run(tmp_path, plan)
    assert (result.status, result.failure_reason) == ("failed", "script_failure")
    assert result.exit_code == (9 if "exit_code_file" in plan.get("prepare", {}) else 1)
    assert result.stages == attempt
    assert b"Preparation failed" not in result.log


def test_a_retried_prepare_phase_can_still_succeed(tmp_path: Path) -> None:
    """Invalid JSON from the first config is retried; the second attempt runs the job."""
    result, _ = run(tmp_path, {"config#0": {"stdout": "not json"}})
    assert result.status == "success"
    assert result.stages == ["config", "cleanup", *SUCCESS_STAGES]
    assert b"error while parsing JSON output" in result.log


def test_job_env_of_an_earlier_attempt_is_not_reused(tmp_path: Path) -> None:
    """After a failed attempt, a config that fails again leaves no job_env for its cleanup."""
    result, fake = run(tmp_path, {"prepare#0": {"exit": 2}, "config#1": {"exit": 2}})
    assert result.status == "success"
    assert result.stages[:6] == ["config", "prepare", "cleanup", "config", "cleanup", "config"]
    assert fake.call("cleanup", 0)["env"]["FAKE_JOB_ENV"] == "from-config"
    assert "FAKE_JOB_ENV" not in fake.call("config", 1)["env"]
    assert "FAKE_JOB_ENV" not in fake.call("cleanup", 1)["env"]
    assert fake.call("prepare", 1)["env"]["FAKE_JOB_ENV"] == "from-config"


def test_prepare_script_failure_runs_only_cleanup(tmp_path: Path) -> None:
    """A failing prepare_script is followed by cleanup alone: no after_script, no uploads."""
    result, _ = run(tmp_path, {"prepare_script": {"exit": 1}})
    assert (result.status, result.failure_reason, result.exit_code) == \
        ("failed", "script_failure", 1)
    assert result.stages == ["config", "prepare", "prepare_script", "cleanup"]


@pytest.mark.parametrize("stage", ["get_sources", "restore_cache"])
def test_sources_failure_skips_user_steps_but_runs_failure_stages(tmp_path: Path,
                                                                  stage: str) -> None:
    """get_sources/restore_cache failing: no build_script/after_script; on_failure stages run."""
    result, _ = run(tmp_path, {stage: {"exit": 1}})
    assert (result.status, result.failure_reason) == ("failed", "script_failure")
    upto = SUCCESS_STAGES.index(stage) + 1
    assert result.stages == [*SUCCESS_STAGES[:upto], *FAILURE_TAIL]


def test_step_failure_skips_later_steps_but_not_after_script(tmp_path: Path) -> None:
    """A failing step_* skips the steps after it; after_script sees CI_JOB_STATUS=failed."""
    job = Job(job_id=5, after_script=("echo after",),
              steps=(("one", ("false",)), ("two", ("true",))))
    result, fake = run(tmp_path, {"step_one": {"exit": 1}}, job=job)
    assert result.stages == ["config", "prepare", "prepare_script", "get_sources",
                             "build_script", "step_one", "after_script",
                             "cleanup_file_variables", "cleanup"]
    assert fake.call("after_script")["env"]["CUSTOM_ENV_CI_JOB_STATUS"] == "failed"


def test_after_script_failure_does_not_change_success(tmp_path: Path) -> None:
    """A failing after_script only warns; the job still succeeds and uploads as successful."""
    result, _ = run(tmp_path, {"after_script": {"exit": 1}})
    assert (result.status, result.failure_reason, result.exit_code) == ("success", "", 0)
    assert result.stages == SUCCESS_STAGES
    assert b"after_script failed, but job will continue unaffected" in result.log


def test_upload_failure_of_a_good_job_fails_it(tmp_path: Path) -> None:
    """When the job is fine, a failing artifact upload becomes the job's error."""
    result, _ = run(tmp_path, {"upload_artifacts_on_success": {"exit": 1}})
    assert (result.status, result.failure_reason) == ("failed", "script_failure")
    assert result.stages == SUCCESS_STAGES


def test_cleanup_file_variables_and_cleanup_failures_only_warn(tmp_path: Path) -> None:
    """Failing cleanup_file_variables or cleanup leave a successful job successful."""
    result, _ = run(tmp_path, {"cleanup_file_variables": {"exit": 2}, "cleanup": {"exit": 2}})
    assert (result.status, result.exit_code) == ("success", 0)
    assert result.stages == SUCCESS_STAGES
    assert b"WARNING: cleanup_file_variables failed" in result.log
    assert b"WARNING: Cleanup script failed" in result.log


def test_scripts_run_by_a_local_fake_driver_behave_like_the_job(tmp_path: Path) -> None:
    """Executing the generated scripts with bash: output reaches the log, codes the result."""
    builds = tmp_path / "builds"
    config = dict(CONFIG_OUTPUT, builds_dir=str(builds), cache_dir=str(tmp_path / "cache"))
    job = Job(job_id=77, script=("echo first-command", "exit 6", "echo not-reached"),
              after_script=('echo "status=$CI_JOB_STATUS"',))
    plan: Plan = {"config": {"stdout": json.dumps(config)}, "prepare_script": {},
                  **{s: {"exec_script": True} for s in
                     ["get_sources", "build_script", "after_script", "cleanup_file_variables"]}}
    result, _ = run(tmp_path, plan, job=job)
    log = result.log.decode()
    assert (result.failure_reason, result.exit_code) == ("script_failure", 6), log
    assert "$ echo first-command" in log and "\nfirst-command\n" in log
    assert "not-reached" not in log
    assert "status=failed" in log
    assert (builds / "group" / "app").is_dir()


# --- cancel --------------------------------------------------------------------------------

def test_graceful_cancel_terms_the_group_and_still_runs_after_script(tmp_path: Path) -> None:
    """Cancel in build_script: SIGTERM to the group, then after_script (canceled) and cleanup."""
    plan: Plan = {"build_script": {"sleep": 30, "on_term": "record", "term_child": True}}
    result, fake = run(tmp_path, plan, cancel=Cancel("build_script", 0.3))
    assert (result.status, result.failure_reason, result.exit_code) == ("canceled", "", None)
    assert result.stages == [*SUCCESS_STAGES[:6], "after_script", *FAILURE_TAIL]
    assert "term driver build_script" in fake.events_seen()
    assert "term child build_script" in fake.events_seen()
    build = result.call("build_script")
    assert build.signaled_after is not None and 0.3 <= build.signaled_after < 0.45
    assert build.exited_after_signal is not None and build.exited_after_signal < 0.5
    assert build.exit_code == 1 and build.seconds < 1.0
    assert all(c.signaled_after is None for c in result.calls if c.stage != "build_script")
    assert fake.call("after_script")["env"]["CUSTOM_ENV_CI_JOB_STATUS"] == "canceled"
    assert exported(fake.call("after_script")["script"], "CI_JOB_STATUS") == "canceled"
    assert b"ERROR: Job failed: canceled" in result.log


def test_cancel_of_a_driver_ignoring_sigterm_kills_it_after_the_grace(tmp_path: Path) -> None:
    """A driver ignoring SIGTERM gets SIGKILL graceful_kill_seconds after it; job canceled."""
    plan: Plan = {"build_script": {"sleep": 30, "on_term": "ignore"}}
    result, _ = run(tmp_path, plan, job=Job(job_id=3), cancel=Cancel("build_script", 0.3))
    build = result.call("build_script")
    assert build.exit_code == -signal.SIGKILL
    assert build.exited_after_signal is None
    assert build.signaled_after is not None and 0.3 <= build.signaled_after < 0.45
    assert 0.3 + GRACEFUL_KILL_SECONDS <= build.seconds < 0.3 + GRACEFUL_KILL_SECONDS + 0.5
    assert result.status == "canceled"
    assert result.stages[-2:] == ["cleanup_file_variables", "cleanup"]


@pytest.mark.parametrize(("stage", "stages"), [
    ("get_sources", ["config", "prepare", "prepare_script", "get_sources", "cleanup"]),
    ("prepare_script", ["config", "prepare", "prepare_script", "cleanup"]),
    ("prepare", ["config", "prepare", "cleanup"]),
])
def test_cancel_before_user_steps_is_followed_by_cleanup_only(tmp_path: Path, stage: str,
                                                              stages: list[str]) -> None:
    """A cancel before the user steps stops the job: no later stage, no retry, only cleanup."""
    plan: Plan = {stage: {"sleep": 30, "on_term": "record"}}
    result, fake = run(tmp_path, plan, cancel=Cancel(stage, 0.2))
    assert (result.status, result.failure_reason) == ("canceled", "")
    assert result.stages == stages
    assert f"term driver {stage}" in fake.events_seen()


# --- waiting for EOF on stdout and stderr --------------------------------------------------------

@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_child_holding_a_pipe_fails_the_stage_after_the_grace(tmp_path: Path,
                                                              stream: str) -> None:
    """run exits 0 but a child keeps its pipe open: pipes_held, system failure, child killed."""
    plan: Plan = {"build_script": {"hold": {"stream": stream, "seconds": 30}}}
    started = time.monotonic()
    result, fake = run(tmp_path, plan, job=Job(job_id=8))
    elapsed = time.monotonic() - started
    build = result.call("build_script")
    assert build.exit_code == 0 and build.pipes_held
    assert PIPE_GRACE_SECONDS <= build.seconds < PIPE_GRACE_SECONDS + 0.5
    assert (result.status, result.failure_reason) == ("failed", "runner_system_failure")
    assert b"holding stdout/stderr" in result.log
    assert elapsed < PIPE_GRACE_SECONDS + 2.0
    holder = int(next(e for e in fake.events_seen() if e.startswith("holder")).split()[1])
    wait_for(lambda: process_gone(holder), timeout=3, what="the pipe-holding child killed")


def test_stage_ends_at_pipe_eof_not_at_driver_exit(tmp_path: Path) -> None:
    """A child writing after the driver exited is waited for; its output lands in the log."""
    plan: Plan = {"build_script": {"hold": {"stream": "stdout", "seconds": 0.4,
                                            "say": "LATE-OUTPUT"}}}
    result, _ = run(tmp_path, plan, job=Job(job_id=8))
    build = result.call("build_script")
    assert result.status == "success" and not build.pipes_held
    assert build.seconds >= 0.4 and build.stdout == b"LATE-OUTPUT"
    assert b"LATE-OUTPUT" in result.log


def test_a_detached_child_does_not_delay_the_stage(tmp_path: Path) -> None:
    """A background child with its output elsewhere is not waited for."""
    plan: Plan = {"build_script": {"hold": {"stream": "devnull", "seconds": 5}}}
    result, fake = run(tmp_path, plan, job=Job(job_id=8))
    holder = int(next(e for e in fake.events_seen() if e.startswith("holder")).split()[1])
    try:
        build = result.call("build_script")
        assert result.status == "success" and not build.pipes_held
        assert build.seconds < 0.5
    finally:
        os.killpg(os.getpgid(holder), signal.SIGKILL)  # the sh and its sleep


# --- the job log ---------------------------------------------------------------------------------

def test_job_log_holds_what_the_runner_shows_and_nothing_else(tmp_path: Path) -> None:
    """prepare and run output in order; config stderr but not stdout; no cleanup output."""
    config = dict(CONFIG_OUTPUT, marker="CONFIG-STDOUT")
    plan: Plan = {
        "config": {"stdout": json.dumps(config), "stderr": "CONFIG-STDERR\n"},
        "prepare": {"stdout": "PREPARE-STDOUT\n", "stderr": "PREPARE-STDERR\n"},
        "prepare_script": {"stdout": "PREPARE-SCRIPT-STDOUT\n"},
        "build_script": {"stdout": "RUN-STDOUT\n", "stderr": "RUN-STDERR\n"},
        "cleanup": {"stdout": "CLEANUP-STDOUT\n", "stderr": "CLEANUP-STDERR\n"},
    }
    result, _ = run(tmp_path, plan, job=Job(job_id=11))
    log = result.log.decode()
    order = ["CONFIG-STDERR", "Using Custom executor with driver fake 0.1...",
             "PREPARE-STDOUT", "PREPARE-STDERR", "PREPARE-SCRIPT-STDOUT",
             "RUN-STDOUT", "RUN-STDERR", "Job succeeded"]
    positions = [log.index(marker) for marker in order]
    assert positions == sorted(positions), log
    assert "CONFIG-STDOUT" not in log and "CLEANUP-STDOUT" not in log
    assert "CLEANUP-STDERR" not in log
    cleanup: Call = result.call("cleanup")
    assert (cleanup.stdout, cleanup.stderr) == (b"CLEANUP-STDOUT\n", b"CLEANUP-STDERR\n")
    assert '"build_script" stage of the job script' in log


def test_job_log_names_no_driver_when_config_gives_none(tmp_path: Path) -> None:
    """Without `driver` in config's output the runner prints plain "Using Custom executor..."."""
    config: Mapping[str, object] = {k: v for k, v in CONFIG_OUTPUT.items() if k != "driver"}
    result, _ = run(tmp_path, {"config": {"stdout": json.dumps(config)}}, job=Job(job_id=12))
    assert b"Using Custom executor...\n" in result.log
    assert b"with driver" not in result.log


# --- resource usage and output limits -------------------------------------------------------

def test_call_reports_cpu_peak_memory_and_end_time(tmp_path: Path) -> None:
    """CPU of the driver and the child it waited for, its peak RSS, and when it ended."""
    plan: Plan = {"build_script": {"cpu": 0.3, "child_cpu": 0.3, "allocate_mb": 96}}
    # own_rss: a plain ru_maxrss starts at this pytest worker's own peak, which earlier
    # test modules (emulated clusters) can push past the 96 MB compared below.
    runner = make_fake(tmp_path, plan).runner()
    runner.own_rss = True
    before = time.time()
    result = runner.run_job(Job(job_id=13))
    after = time.time()
    build, config = result.call("build_script"), result.call("config")
    assert result.status == "success"
    assert 0.6 <= build.cpu_seconds <= build.seconds + 0.3
    assert build.max_rss_kb >= 96 * 1024 > config.max_rss_kb > 0
    assert config.cpu_seconds < 0.3
    assert before < config.ended_at < build.ended_at < after
    assert build.ended_at - build.seconds >= config.ended_at


def test_keep_output_bytes_keeps_only_the_tail_and_counts_everything(tmp_path: Path) -> None:
    """A runner told to keep 1000 bytes keeps the last 1000 of stdout and of the log."""
    fake = make_fake(tmp_path, {"build_script": {"stdout_bytes": 3_000_000, "stdout": "END\n"}})
    runner = fake.runner()
    runner.keep_output_bytes = 1000
    result = runner.run_job(Job(job_id=14))
    build = result.call("build_script")
    assert result.status == "success"
    assert build.stdout_bytes == 3_000_004 and len(build.stdout) == 1000
    assert build.stdout.endswith(b"END\n") and b"0123456789abcdefline\n" in build.stdout
    assert len(result.log) <= 1000 and result.log.endswith(b"Job succeeded\n")


def test_own_rss_reports_the_drivers_peak_not_the_runners(tmp_path: Path) -> None:
    """A runner holding 200 MB: ru_maxrss says 200 MB, own_rss the driver's own ~100 MB."""
    ballast = bytearray(200 << 20)
    for page in range(0, len(ballast), 4096):
        ballast[page] = 1
    plan: Plan = {"build_script": {"allocate_mb": 96, "cpu": 0.2}}
    plain, _ = run(tmp_path / "plain", plan, job=Job(job_id=15))
    fake = make_fake(tmp_path / "own", plan)
    runner = fake.runner()
    runner.own_rss = True
    own = runner.run_job(Job(job_id=15))
    del ballast
    assert plain.status == own.status == "success"
    assert plain.call("build_script").max_rss_kb > 200 * 1024
    assert 96 * 1024 < own.call("build_script").max_rss_kb < 150 * 1024
    assert own.call("config").max_rss_kb < 50 * 1024
    assert 0.2 <= own.call("build_script").cpu_seconds < 0.6
    assert [c.stage for c in own.calls] == [c.stage for c in plain.calls]


def test_own_rss_keeps_exit_codes_and_cancel(tmp_path: Path) -> None:
    """Through the reporting parent, exit codes and SIGTERM reach the runner as before."""
    fake = make_fake(tmp_path, {"build_script": {"exit": 1, "exit_code_file": "7"},
                                "step_release": {"on_term": "record", "sleep": 30}})
    runner = fake.runner()
    runner.own_rss = True
    failed = runner.run_job(Job(job_id=16))
    assert (failed.status, failed.exit_code) == ("failed", 7)
    fake = make_fake(tmp_path / "cancel", {"build_script": {"on_term": "record", "sleep": 30}})
    runner = fake.runner()
    runner.own_rss = True
    canceled = runner.run_job(Job(job_id=17), Cancel("build_script", 0.5))
    build = canceled.call("build_script")
    assert canceled.status == "canceled" and build.exited_after_signal is not None
    assert build.exited_after_signal < 1.0 and "term driver build_script" in fake.events_seen()
