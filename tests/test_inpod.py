"""The in-pod shell programs: job data stays out of argv, busybox ash and dash parse them,
they act only in a pod carrying the job's nonce, and the launcher's control lines are read
back by `StageControl`."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner_driver.inpod import (
    BUILD_ENTRYPOINT,
    CHUNK_BYTES,
    CONTROL_PREFIX,
    DRIVER_DIR,
    HELPER_ENTRYPOINT,
    LOG_DIR,
    NOT_OURS,
    RUN_DIR,
    RUNNING,
    STAGE_LAUNCHER,
    STAGE_STOPPER,
    STAGE_SUPERVISOR,
    StageControl,
    launcher_argv,
    standby_argv,
    standby_header,
    stopper_argv,
)
from tests.conftest import wait_for

PROGRAMS = [
    pytest.param(STAGE_LAUNCHER, id="stage-launcher"),
    pytest.param(STAGE_SUPERVISOR, id="stage-supervisor"),
    pytest.param(STAGE_STOPPER, id="stage-stopper"),
    pytest.param(BUILD_ENTRYPOINT[2], id="build-entrypoint"),
    pytest.param(HELPER_ENTRYPOINT[2], id="helper-entrypoint"),
]
# What a Python f-string leaves behind when a name was not substituted ({RUN_DIR}) or a
# literal brace was doubled once too often ({{ or }}). Shell's own `${var##*/}` is fine.
FORMAT_LEFTOVER = re.compile(r"(?<!\$)\{[A-Za-z_][A-Za-z0-9_]*\}|\{\{|\}\}")
# The job's nonce as `config` mints it (32 lowercase hex digits), and another job's.
NONCE = "0123456789abcdef0123456789abcdef"
OTHER_NONCE = "fedcba9876543210fedcba9876543210"
# (the nonce in the pod's env, None when unset; the nonce the driver passes): never ours.
NOT_OUR_POD = [
    pytest.param(NONCE, OTHER_NONCE, id="another-jobs-nonce"),
    pytest.param(NONCE, "", id="no-nonce-given"),
    pytest.param(NONCE, NONCE[:-1], id="a-prefix"),
    pytest.param(NONCE, NONCE + "0", id="longer"),
    pytest.param(NONCE, NONCE.upper(), id="upper-case"),
    pytest.param(NONCE, "*", id="a-glob"),
    pytest.param(None, NONCE, id="pod-without-nonce"),
    pytest.param(None, "", id="neither-has-one"),
    pytest.param("", "", id="both-empty"),
]


def shell(name: str) -> list[str]:
    """The argv prefix of a host shell: busybox ash, or dash (Debian's `sh`)."""
    found = shutil.which(name)
    assert found, f"{name} not installed: apt-get install busybox-static dash"
    return [found, "sh"] if name == "busybox" else [found]


def parse(shell_name: str, program: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Parse `program` with `sh -n -c` (nothing runs), passing `args` as $0, $1, ..."""
    return subprocess.run([*shell(shell_name), "-n", "-c", program, *args],
                          capture_output=True, text=True, timeout=10, check=False)


# --- argv: constants, sizes, ids and offsets only ----------------------------------------


def test_launcher_argv_holds_only_size_id_offset_supervisor_and_nonce() -> None:
    """Launcher argv: the constant program, script size, stage id, offset, supervisor, nonce,
    container name and chunk size."""
    script = "echo 's3cr3t'; docker login -p hunter2\n"
    size = len(script.encode())
    argv = launcher_argv(size, "build-script-3", 0, NONCE)
    assert argv == ["sh", "-c", STAGE_LAUNCHER, "runner-driver-stage", str(size),
                    "build-script-3", "0", STAGE_SUPERVISOR, NONCE, "", str(CHUNK_BYTES)]
    assert all(script.strip() not in part and "hunter2" not in part for part in argv)


def test_launcher_argv_to_follow_a_started_stage() -> None:
    """Following (no script) passes "-" as the size, and the byte offset already received."""
    assert launcher_argv(None, "step_x", 1234, NONCE)[4:7] == ["-", "step_x", "1234"]
    assert launcher_argv(0, "step_x", 7, NONCE)[4:7] == ["0", "step_x", "7"]


@pytest.mark.parametrize(("size", "offset"), [(None, 0), (0, 0), (10, 0), (None, 99),
                                              (2**40, 2**33)])
def test_launcher_argv_never_carries_script_content(size: int | None, offset: int) -> None:
    """Whatever the size and offset, only the two constant programs and short tokens are in argv."""
    argv = launcher_argv(size, "get-sources", offset, NONCE)
    constants = {STAGE_LAUNCHER, STAGE_SUPERVISOR}
    variable = [part for part in argv if part not in constants]
    assert variable == ["sh", "-c", "runner-driver-stage",
                        "-" if size is None else str(size), "get-sources", str(offset), NONCE,
                        "", str(CHUNK_BYTES)]


def test_stopper_argv_holds_only_id_grace_and_nonce() -> None:
    """The stopper's argv is the constant program plus the stage id, grace in tenths, nonce."""
    assert stopper_argv("build-script-3", NONCE) == [
        "sh", "-c", STAGE_STOPPER, "runner-driver-stop", "build-script-3", "20", NONCE]
    assert stopper_argv("step_x", NONCE, grace_tenths=5)[-3:] == ["step_x", "5", NONCE]


@pytest.mark.parametrize(("program", "arguments"), [
    pytest.param(STAGE_LAUNCHER, ("$1", "$2", "$3", "$4", "$5"), id="stage-launcher"),
    pytest.param(STAGE_SUPERVISOR, ("$1", "$2"), id="stage-supervisor"),
    pytest.param(STAGE_STOPPER, ("$1", "$2", "$3"), id="stage-stopper"),
])
def test_programs_read_job_data_only_from_positional_arguments(
        program: str, arguments: tuple[str, ...]) -> None:
    """The programs are constants taking their inputs as $1.., with no f-string leftovers."""
    assert all(argument in program for argument in arguments)
    assert FORMAT_LEFTOVER.findall(program) == []
    assert RUN_DIR in program


@pytest.mark.parametrize("text", ["mkdir {RUN_DIR}", "cat {LOG_DIR}/x", "old=${{done##*/}}",
                                  "a }} b"])
def test_leftover_check_has_teeth(text: str) -> None:
    """The f-string leftover check catches unsubstituted names and doubled braces."""
    assert FORMAT_LEFTOVER.search(text)


def test_leftover_check_allows_shell_parameter_expansion() -> None:
    """`${var##*/}` and `${var%.status}` are shell, not leftovers."""
    assert FORMAT_LEFTOVER.search('old=${done##*/}; old=${old%.status}; echo "${x}"') is None


def test_launcher_keeps_output_on_the_logs_volume() -> None:
    """Stage output goes to LOG_DIR (the disk-backed volume), the script to RUN_DIR (memory)."""
    assert f"ld={LOG_DIR}; log=$ld/$id.log" in STAGE_LAUNCHER
    assert f"run={RUN_DIR}" in STAGE_LAUNCHER


def test_launcher_control_lines_use_the_parsers_prefix() -> None:
    """Every control line the launcher writes starts with CONTROL_PREFIX and goes to stderr."""
    lines = [line for line in STAGE_LAUNCHER.splitlines() if "runner-driver-stage: " in line]
    assert lines
    prefix = CONTROL_PREFIX.decode()
    for line in lines:
        assert f'echo "{prefix}' in line and ">&2" in line, line


def test_entrypoints_are_shell_programs() -> None:
    """Both PID 1 programs run through `sh -c` (busybox's in the kaniko image)."""
    assert BUILD_ENTRYPOINT[:2] == ("/busybox/sh", "-c")
    assert HELPER_ENTRYPOINT[:2] == ("/bin/sh", "-c")


# --- syntax, in busybox ash and dash ------------------------------------------------------


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
@pytest.mark.parametrize("program", PROGRAMS)
def test_program_parses(shell_name: str, program: str) -> None:
    """Each in-pod program is valid syntax for busybox ash and for dash."""
    result = parse(shell_name, program, "runner-driver-test", "12", "stage-1", "0",
                   STAGE_SUPERVISOR, NONCE)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
@pytest.mark.parametrize(("size", "offset"), [(42, 0), (None, 1000)])
def test_launcher_argv_parses_as_given(shell_name: str, size: int | None, offset: int) -> None:
    """The exact argv the driver execs parses when its `sh` is busybox ash or dash."""
    argv = launcher_argv(size, "get-sources", offset, NONCE)
    result = parse(shell_name, *argv[2:])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
def test_stopper_argv_parses_as_given(shell_name: str) -> None:
    """The exact stopper argv the driver execs parses when its `sh` is busybox ash or dash."""
    result = parse(shell_name, *stopper_argv("get-sources", NONCE)[2:])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
def test_supervisor_parses_as_the_launcher_passes_it(shell_name: str) -> None:
    """The supervisor, run as `sh -c "$4" runner-driver-supervise ID SHELL`, parses."""
    result = parse(shell_name, STAGE_SUPERVISOR, "runner-driver-supervise", "stage-1",
                   "/bin/sh")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
def test_running_counts_only_live_processes(shell_name: str, tmp_path: Path) -> None:
    """`running` is false for an empty pid (busybox kill -0 "" succeeds), a gone one, a zombie."""
    path = os.environ.get("PATH", "/usr/bin:/bin")
    if shell_name == "busybox":  # busybox's own grep, as in the kaniko image
        (tmp_path / "grep").symlink_to(shell("busybox")[0])
        path = str(tmp_path)
    live = subprocess.Popen(["sleep", "30"])
    zombie = subprocess.Popen(["true"])
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        wait_for(lambda: Path(f"/proc/{zombie.pid}/status").read_text().count("zombie"),
                 timeout=10, what="the child to become a zombie")

        def running(pid: str) -> int:
            return subprocess.run([*shell(shell_name), "-c", f'{RUNNING}\nrunning "$1"',
                                   "running-test", pid], env={"PATH": path},
                                  timeout=10, check=False).returncode

        assert running(str(live.pid)) == 0
        assert running("") != 0
        assert running(str(gone.pid)) != 0
        assert running(str(zombie.pid)) != 0
    finally:
        live.kill()
        live.wait()
        zombie.wait()


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
def test_parse_check_rejects_broken_syntax(shell_name: str) -> None:
    """The `sh -n` check has teeth: a program with a syntax error fails it."""
    broken = STAGE_STOPPER.replace("; done", "")
    result = parse(shell_name, broken, "runner-driver-test", "stage-1", "20", NONCE)
    assert result.returncode != 0
    assert "syntax error" in result.stderr.lower()


# --- run for real: only in the job's own pod ---------------------------------------------


@pytest.fixture(scope="module")
def busybox_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/busybox as the kaniko image has it: the static busybox and a link per applet."""
    directory = tmp_path_factory.mktemp("busybox")
    binary = shell("busybox")[0]
    shutil.copy(binary, directory / "busybox")
    applets = subprocess.run([binary, "--list"], capture_output=True, text=True, timeout=10,
                             check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (directory / applet).symlink_to("busybox")
    return directory


class Pod:
    """The job pod's build container, on the host: a bwrap sandbox with the driver's two
    volumes bound from host directories and the pod's nonce (if any) in its env, as the
    downward API puts it there. With busybox it holds only /busybox (the kaniko image);
    with dash, the host's /usr (where `sh` is dash). Pids are the host's."""

    def __init__(self, shell_name: str, root: Path, busybox: Path, nonce: str | None) -> None:
        self.driver_dir = root / "runner-driver"
        self.logs_dir = root / "runner-driver-logs"
        for directory in (self.driver_dir, self.logs_dir):
            directory.mkdir(exist_ok=True)
        bwrap = shutil.which("bwrap")
        assert bwrap, "bwrap not installed: apt-get install bubblewrap"
        if shell_name == "busybox":
            image = ["--ro-bind", str(busybox), "/busybox"]
            path = "/busybox"
        else:
            image = ["--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
                     "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                     "--symlink", "usr/sbin", "/sbin"]
            path = "/usr/bin:/bin"
        self.prefix = [bwrap, *image, "--proc", "/proc", "--dev", "/dev",
                       "--bind", str(self.driver_dir), DRIVER_DIR,
                       "--bind", str(self.logs_dir), LOG_DIR, "--chdir", "/",
                       "--die-with-parent", "--"]
        self.env = {"PATH": path} | ({} if nonce is None else {"RUNNER_DRIVER_NONCE": nonce})

    def run(self, argv: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        """Exec `argv` (exactly as the driver sends it) in the container, to its end."""
        return subprocess.run([*self.prefix, *argv], input=stdin, capture_output=True,
                              env=self.env, timeout=30, check=False)

    def start(self, argv: list[str], stdin: bytes) -> subprocess.Popen[bytes]:
        """Exec `argv` in the container and leave it running, `stdin` sent and closed."""
        with tempfile.TemporaryFile() as source:
            source.write(stdin)
            source.seek(0)
            return subprocess.Popen([*self.prefix, *argv], stdin=source,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=self.env)

    def pid(self, name: str) -> int | None:
        """A pid the launcher or supervisor recorded in the run directory (`ID.pid`, ...)."""
        with contextlib.suppress(OSError, ValueError):
            return int((self.driver_dir / "run" / name).read_text())
        return None

    def stored(self) -> list[str]:
        """Every file and directory on the driver's two volumes."""
        return sorted(str(p.relative_to(self.driver_dir.parent))
                      for d in (self.driver_dir, self.logs_dir) for p in d.rglob("*"))


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@contextlib.contextmanager
def sleeping_stage(pod: Pod, stage_id: str) -> Iterator[subprocess.Popen[bytes]]:
    """A stage started in `pod` with the job's nonce, its script asleep; stopped on exit."""
    script = b"echo started; sleep 300\n"
    launcher = pod.start(launcher_argv(len(script), stage_id, 0, NONCE), script)
    try:
        assert launcher.stdout is not None
        assert launcher.stdout.readline() == b"started\n"
        wait_for(lambda: pod.pid(f"{stage_id}.pid"), timeout=10, what="the stage's pid file")
        yield launcher
    finally:
        # The script's group: its supervisor then records the status and the launcher ends.
        kill_group(pod.pid(f"{stage_id}.pid"))
        try:
            launcher.communicate(timeout=10)
        finally:
            kill_group(pod.pid(f"{stage_id}.sup"))
            launcher.kill()  # bwrap, and with it (--die-with-parent) the launcher
            launcher.communicate(timeout=10)


def kill_group(pid: int | None) -> None:
    """SIGKILL to the process group `pid` leads, if there is one."""
    if pid:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
@pytest.mark.parametrize(("pod_nonce", "given"), NOT_OUR_POD)
def test_launcher_starts_nothing_in_a_pod_that_is_not_the_jobs(
        shell_name: str, pod_nonce: str | None, given: str, tmp_path: Path,
        busybox_dir: Path) -> None:
    """With a nonce that is not exactly the pod's, the launcher stores and runs nothing."""
    pod = Pod(shell_name, tmp_path, busybox_dir, pod_nonce)
    script = b"echo ran > /runner-driver/ran; echo ran\n"
    result = pod.run(launcher_argv(len(script), "build-script-1", 0, given), script)
    parsed = control(result.stderr)
    assert result.returncode == 3, result.stderr
    assert (result.stdout, parsed.error, parsed.started, parsed.exit_code) == \
        (b"", NOT_OURS, False, None)
    assert parsed.diagnostics == []
    assert pod.stored() == []


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
def test_a_standby_launcher_runs_the_stage_its_header_names(
        shell_name: str, tmp_path: Path, busybox_dir: Path) -> None:
    """A standby launcher reads size, stage id and offset from its first line of stdin, then
    the script, and runs it as a launcher given them in argv would (output, exit code,
    files named by that stage id)."""
    pod = Pod(shell_name, tmp_path, busybox_dir, NONCE)
    script = b"echo from the standby; exit 7\n"
    result = pod.run(standby_argv(NONCE, "build"),
                     standby_header(len(script), "build_script-5-0123abcd", 0) + script)
    parsed = control(result.stderr)
    assert (result.stdout, parsed.started, parsed.exit_code) == \
        (b"from the standby\n", True, 7), result.stderr
    assert "runner-driver/run/build_script-5-0123abcd.status" in pod.stored()


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
def test_a_standby_launcher_whose_stdin_ends_first_does_nothing(
        shell_name: str, tmp_path: Path, busybox_dir: Path) -> None:
    """A standby closed before its header arrives (never used) exits 4, silently, and
    leaves nothing in the pod."""
    pod = Pod(shell_name, tmp_path, busybox_dir, NONCE)
    result = pod.run(standby_argv(NONCE, "build"), b"")
    assert (result.returncode, result.stdout, result.stderr) == (4, b"", b"")
    assert pod.stored() == []


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
def test_a_standby_launcher_in_a_pod_that_is_not_the_jobs_reads_nothing(
        shell_name: str, tmp_path: Path, busybox_dir: Path) -> None:
    """The nonce is checked before the header is read: in another job's pod a standby
    says so at once and ends, whatever its stdin holds."""
    pod = Pod(shell_name, tmp_path, busybox_dir, "f" * 32)
    script = b"echo ran > /runner-driver/ran\n"
    result = pod.run(standby_argv(NONCE, "build"),
                     standby_header(len(script), "build_script-5-0123abcd", 0) + script)
    assert (result.returncode, control(result.stderr).error) == (3, NOT_OURS)
    assert pod.stored() == []


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
def test_launcher_runs_the_stage_in_the_jobs_own_pod(
        shell_name: str, tmp_path: Path, busybox_dir: Path) -> None:
    """With the pod's own nonce, the launcher runs the script and reports its exit code."""
    pod = Pod(shell_name, tmp_path, busybox_dir, NONCE)
    script = b"echo ran > /runner-driver/ran; echo out; echo err >&2; exit 7\n"
    result = pod.run(launcher_argv(len(script), "build-script-1", 0, NONCE), script)
    parsed = control(result.stderr)
    assert result.returncode == 0, result.stderr
    assert (parsed.started, parsed.exit_code, parsed.error) == (True, 7, "")
    assert result.stdout == b"out\nerr\n"
    assert (pod.driver_dir / "ran").read_text() == "ran\n"


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
def test_launcher_remembers_the_containers_shell_and_probes_again_if_it_is_gone(
        shell_name: str, tmp_path: Path, busybox_dir: Path) -> None:
    """With a container name, the shell found for a stage is kept for the next ones; a
    remembered shell that no longer exists is found anew."""
    pod = Pod(shell_name, tmp_path, busybox_dir, NONCE)
    script = b'echo "$0"\n'
    first = pod.run(launcher_argv(len(script), "build-script-1", 0, NONCE, "build"), script)
    remembered = pod.driver_dir / "run" / "shell-build"
    found = remembered.read_text().strip()
    assert first.stdout.decode().strip() == found and found.endswith("sh")
    remembered.write_text("/nonexistent/bash\n")
    again = pod.run(launcher_argv(len(script), "build-script-2", 0, NONCE, "build"), script)
    assert again.stdout.decode().strip() == found
    assert remembered.read_text().strip() == found


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
def test_launcher_shows_a_stages_output_only_to_its_own_job(
        shell_name: str, tmp_path: Path, busybox_dir: Path) -> None:
    """Following a finished stage with another job's nonce is refused; with ours it replays."""
    pod = Pod(shell_name, tmp_path, busybox_dir, NONCE)
    script = b"echo private output\n"
    assert pod.run(launcher_argv(len(script), "step_1", 0, NONCE), script).returncode == 0
    other = pod.run(launcher_argv(None, "step_1", 0, OTHER_NONCE))
    assert (other.returncode, other.stdout, control(other.stderr).error) == (3, b"", NOT_OURS)
    ours = pod.run(launcher_argv(None, "step_1", 0, NONCE))
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == b"private output\n"
    assert control(ours.stderr).exit_code == 0


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
def test_stopper_signals_nothing_in_a_pod_that_is_not_the_jobs(
        shell_name: str, tmp_path: Path, busybox_dir: Path) -> None:
    """A stopper given another job's nonce, or none, leaves the running stage alone."""
    pod = Pod(shell_name, tmp_path, busybox_dir, NONCE)
    with sleeping_stage(pod, "build-script-2") as launcher:
        script_pid = pod.pid("build-script-2.pid")
        assert script_pid
        for given in (OTHER_NONCE, "", NONCE.upper(), "*"):
            # No grace: had it signalled at all, the script would be killed at once.
            result = pod.run(stopper_argv("build-script-2", given, grace_tenths=0))
            assert result.returncode == 3, (given, result.stderr)
            assert result.stderr.decode() == f"runner-driver-stop: {NOT_OURS}\n"
        time.sleep(0.3)
        assert alive(script_pid)
        assert launcher.poll() is None


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
def test_stopper_stops_the_stage_in_the_jobs_own_pod(
        shell_name: str, tmp_path: Path, busybox_dir: Path) -> None:
    """With the pod's own nonce the stopper ends the stage's process group (TERM: 143)."""
    pod = Pod(shell_name, tmp_path, busybox_dir, NONCE)
    with sleeping_stage(pod, "build-script-2") as launcher:
        script_pid = pod.pid("build-script-2.pid")
        assert script_pid
        result = pod.run(stopper_argv("build-script-2", NONCE))
        assert result.returncode == 0, result.stderr
        _, err = launcher.communicate(timeout=20)
        assert control(err).exit_code == 143, err
        assert not alive(script_pid)


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
def test_pod_sandbox_sees_only_what_it_is_given(
        shell_name: str, tmp_path: Path, busybox_dir: Path) -> None:
    """The stand-in pod has the nonce the test gives it, and its volumes at the driver's paths."""
    pod = Pod(shell_name, tmp_path, busybox_dir, NONCE)
    result = pod.run(["sh", "-c", f'echo "$RUNNER_DRIVER_NONCE" > {RUN_DIR}.probe'])
    assert result.returncode == 0, result.stderr
    assert (pod.driver_dir / "run.probe").read_text() == NONCE + "\n"
    bare = Pod(shell_name, tmp_path, busybox_dir, None)
    assert bare.run(["sh", "-c", '[ -z "${RUNNER_DRIVER_NONCE+set}" ]']).returncode == 0


# --- StageControl: the launcher's control lines -------------------------------------------


def control(*chunks: bytes) -> StageControl:
    """A StageControl fed `chunks` in order."""
    parsed = StageControl()
    for chunk in chunks:
        parsed.feed(chunk)
    return parsed


def test_control_starts_empty() -> None:
    """Before any line nothing is known: not started, no exit code, no error."""
    parsed = StageControl()
    assert (parsed.started, parsed.exit_code, parsed.truncated, parsed.error,
            parsed.diagnostics) == (False, None, False, "", [])


@pytest.mark.parametrize("word", ["started", "attached"])
def test_started_and_attached_both_mean_the_stage_runs(word: str) -> None:
    """`started` (this exec started it) and `attached` (an earlier one did) both set started."""
    parsed = control(b"runner-driver-stage: " + word.encode() + b"\n")
    assert parsed.started and parsed.exit_code is None and parsed.diagnostics == []


@pytest.mark.parametrize(("line", "code"), [(b"exit 0", 0), (b"exit 3", 3), (b"exit 137", 137),
                                            (b"exit 255", 255), (b"exit 7\r", 7)])
def test_exit_line_gives_the_scripts_exit_code(line: bytes, code: int) -> None:
    """`exit N` records the script's exit code N."""
    assert control(CONTROL_PREFIX + line + b"\n").exit_code == code


@pytest.mark.parametrize("line", [b"exit", b"exit ", b"exit abc", b"exit -1", b"exit 1.5"])
def test_exit_line_without_a_code_is_not_an_exit(line: bytes) -> None:
    """An `exit` line without a non-negative integer sets no exit code."""
    assert control(CONTROL_PREFIX + line + b"\n").exit_code is None


def test_lines_split_across_feeds_are_joined() -> None:
    """A control line arriving in pieces (as websocket frames split it) is read whole."""
    parsed = control(b"runner-driver-st", b"age: star", b"ted\nrunner-driver-stage: exi",
                     b"t 4", b"2\n")
    assert parsed.started and parsed.exit_code == 42


def test_a_line_is_read_only_once_it_ends() -> None:
    """Bytes without a newline yet are held back; the newline completes the line."""
    parsed = control(b"runner-driver-stage: exit 0")
    assert parsed.exit_code is None
    parsed.feed(b"\n")
    assert parsed.exit_code == 0


def test_many_lines_in_one_feed() -> None:
    """Several control lines in one chunk are all read, in order."""
    parsed = control(b"runner-driver-stage: started\nrunner-driver-stage: alive\n"
                     b"runner-driver-stage: alive\nrunner-driver-stage: exit 1\n")
    assert parsed.started and parsed.exit_code == 1
    assert parsed.diagnostics == [] and parsed.error == ""


def test_truncated_asks_for_the_script_again() -> None:
    """`truncated` (fewer bytes arrived than announced) is flagged, not an error."""
    parsed = control(b"runner-driver-stage: truncated\n")
    assert parsed.truncated and not parsed.started and parsed.error == ""


def test_error_line_keeps_its_text() -> None:
    """`error TEXT` keeps TEXT for the failure message."""
    parsed = control(b"runner-driver-stage: error stage step_1 was never started in this pod\n")
    assert parsed.error == "stage step_1 was never started in this pod"
    assert parsed.exit_code is None


def test_other_lines_are_kept_as_diagnostics() -> None:
    """Lines from the shell itself (no prefix) are diagnostics; blank lines are dropped."""
    parsed = control(b"sh: head: not found\n", b"\n   \n",
                     b"runner-driver-stage: error cannot store the script in /runner-driver/run\n",
                     b"mkdir: can't create directory '/runner-driver-logs': No space left\n")
    assert parsed.diagnostics == [
        "sh: head: not found",
        "mkdir: can't create directory '/runner-driver-logs': No space left"]
    assert parsed.error == "cannot store the script in /runner-driver/run"


def test_prefix_must_start_the_line() -> None:
    """A control word in the middle of a line is a diagnostic, not a control line."""
    parsed = control(b"echo runner-driver-stage: exit 0\n")
    assert parsed.exit_code is None
    assert parsed.diagnostics == ["echo runner-driver-stage: exit 0"]


def test_undecodable_bytes_do_not_break_parsing() -> None:
    """Bytes that are not UTF-8 are replaced in diagnostics and do not stop later lines."""
    parsed = control(b"sh: \xff\xfe bad\n", b"runner-driver-stage: exit 2\n")
    assert parsed.diagnostics == ["sh: \ufffd\ufffd bad"]
    assert parsed.exit_code == 2


def test_gap_line_gives_the_offset_to_follow_from() -> None:
    """`gap N` tells the driver the output before byte N was trimmed; a bad N is ignored."""
    assert control(b"runner-driver-stage: gap 8388608\n").gap == 8388608
    assert control(b"runner-driver-stage: gap x\n").gap is None


# Stage output in chunks: streamed as it comes, trimmed once delivered, resumable.

CHUNK = 4096
# About 90 KB in lines of growing numbers: many chunks of at most CHUNK bytes.
CHATTY = b'i=0; while [ "$i" -lt 3000 ]; do echo "line $i of the chatty stage"; ' \
         b'i=$((i + 1)); done\n'


def chatty_output() -> bytes:
    """What CHATTY prints."""
    return b"".join(b"line %d of the chatty stage\n" % i for i in range(3000))


def log_files(pod: Pod, stage_id: str) -> dict[int, int]:
    """The stage's output chunks left in the pod: start offset -> size."""
    return {int(p.name.rsplit(".", 1)[1]): p.stat().st_size
            for p in pod.logs_dir.glob(f"{stage_id}.log.*")}


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
def test_long_output_arrives_whole_and_only_the_last_chunks_stay(
        shell_name: str, tmp_path: Path, busybox_dir: Path) -> None:
    """Output of many chunks arrives byte for byte; what the pod keeps afterwards is only its
    last few chunks (what ends more than a chunk before the last one is removed), named
    by their start offsets."""
    pod = Pod(shell_name, tmp_path, busybox_dir, NONCE)
    result = pod.run(launcher_argv(len(CHATTY), "step_chatty", 0, NONCE, "",
                                   chunk_bytes=CHUNK), CHATTY)
    assert control(result.stderr).exit_code == 0, result.stderr
    expected = chatty_output()
    assert result.stdout == expected
    kept = log_files(pod, "step_chatty")
    assert sum(kept.values()) <= 3 * CHUNK, kept
    assert min(kept) >= len(expected) - 3 * CHUNK, kept
    last = max(kept)
    assert last + kept[last] == len(expected)  # the last chunk ends where the output ends
    assert all(start + size <= len(expected) for start, size in kept.items())


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
def test_following_resumes_inside_the_kept_chunk_and_reports_a_trimmed_one(
        shell_name: str, tmp_path: Path, busybox_dir: Path) -> None:
    """A reconnect at an offset in a kept chunk gets exactly the rest; one at an offset whose
    chunk was trimmed gets `gap N` with the first offset still kept, and from N the rest."""
    pod = Pod(shell_name, tmp_path, busybox_dir, NONCE)
    first = pod.run(launcher_argv(len(CHATTY), "step_chatty", 0, NONCE, "",
                                  chunk_bytes=CHUNK), CHATTY)
    assert control(first.stderr).exit_code == 0
    expected = chatty_output()
    kept = min(log_files(pod, "step_chatty"))
    inside = kept + 10 if kept < len(expected) else kept
    resumed = pod.run(launcher_argv(None, "step_chatty", inside, NONCE, "", chunk_bytes=CHUNK))
    assert (resumed.stdout, control(resumed.stderr).exit_code) == (expected[inside:], 0)
    trimmed = pod.run(launcher_argv(None, "step_chatty", 100, NONCE, "", chunk_bytes=CHUNK))
    parsed = control(trimmed.stderr)
    assert (trimmed.returncode, trimmed.stdout, parsed.gap, parsed.exit_code) == \
        (0, b"", kept, None)
    rest = pod.run(launcher_argv(None, "step_chatty", kept, NONCE, "", chunk_bytes=CHUNK))
    assert rest.stdout == expected[kept:]


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
def test_a_background_process_holding_the_output_does_not_hold_the_stage(
        shell_name: str, tmp_path: Path, busybox_dir: Path) -> None:
    """A script that leaves a process writing to its output ends within about a second of
    its own exit, with its exit code and everything it printed itself."""
    pod = Pod(shell_name, tmp_path, busybox_dir, NONCE)
    script = b"(sleep 8; echo late) &\necho mine\nexit 3\n"
    started = time.monotonic()
    result = pod.run(launcher_argv(len(script), "step_bg", 0, NONCE), script)
    took = time.monotonic() - started
    assert control(result.stderr).exit_code == 3, result.stderr
    assert result.stdout == b"mine\n"
    assert took < 4, took


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
def test_the_connection_that_started_a_stage_wakes_when_it_ends(
        shell_name: str, tmp_path: Path, busybox_dir: Path) -> None:
    """The follower that started a stage ends as soon as the stage does, not at its next
    tick: with every `sleep` lasting 5 s, a quick script still ends the exec in well under
    that (its CHLD trap cuts the wait short)."""
    pod = Pod(shell_name, tmp_path, busybox_dir, NONCE)
    slow = tmp_path / "slow-bin"
    slow.mkdir()
    real = "/busybox/sleep" if shell_name == "busybox" else "/usr/bin/sleep"
    interpreter = "/busybox/sh" if shell_name == "busybox" else "/bin/sh"
    (slow / "sleep").write_text(f"#!{interpreter}\nexec {real} 5\n")
    (slow / "sleep").chmod(0o755)
    separator = pod.prefix.index("--")
    pod.prefix[separator:separator] = ["--ro-bind", str(slow), "/slow-bin"]
    pod.env["PATH"] = "/slow-bin:" + pod.env["PATH"]
    script = b"echo quick\n"
    started = time.monotonic()
    result = pod.run(launcher_argv(len(script), "step_quick", 0, NONCE), script)
    took = time.monotonic() - started
    assert (result.stdout, control(result.stderr).exit_code) == (b"quick\n", 0), result.stderr
    assert took < 3, took


def test_exec_url_stays_within_what_proxies_accept() -> None:
    """The launcher's exec query, percent-encoded as the client sends it, stays under 8000
    bytes (common proxies and the emulated API server stop at 8 KiB request lines)."""
    from urllib.parse import quote, urlencode

    argv = launcher_argv(2**40, "a" * 40 + "-4194304-0123abcd", 2**40, NONCE, "helper")
    query = urlencode([("command", part) for part in argv] +
                      [("container", "helper"), ("stdin", "true"), ("stdout", "true"),
                       ("stderr", "true")], quote_via=quote)
    assert len(query) < 8000 - len("/api/v1/namespaces/x/pods/y/exec?"), len(query)
