"""The in-pod shell programs: job data stays out of argv, busybox ash and dash parse them,
and the launcher's control lines are read back by `StageControl`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from runner_driver.inpod import (
    BUILD_ENTRYPOINT,
    CONTROL_PREFIX,
    HELPER_ENTRYPOINT,
    LOG_DIR,
    RUN_DIR,
    RUNNING,
    STAGE_LAUNCHER,
    STAGE_STOPPER,
    STAGE_SUPERVISOR,
    StageControl,
    launcher_argv,
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


def test_launcher_argv_holds_only_size_id_offset_and_supervisor() -> None:
    """Launcher argv: the constant program, script size, stage id, offset, constant supervisor."""
    script = "echo 's3cr3t'; docker login -p hunter2\n"
    size = len(script.encode())
    argv = launcher_argv(size, "build-script-3")
    assert argv == ["sh", "-c", STAGE_LAUNCHER, "runner-driver-stage", str(size),
                    "build-script-3", "0", STAGE_SUPERVISOR]
    assert all(script.strip() not in part and "hunter2" not in part for part in argv)


def test_launcher_argv_to_follow_a_started_stage() -> None:
    """Following (no script) passes "-" as the size, and the byte offset already received."""
    assert launcher_argv(None, "step_x", 1234)[4:7] == ["-", "step_x", "1234"]
    assert launcher_argv(0, "step_x", 7)[4:7] == ["0", "step_x", "7"]


@pytest.mark.parametrize(("size", "offset"), [(None, 0), (0, 0), (10, 0), (None, 99),
                                              (2**40, 2**33)])
def test_launcher_argv_never_carries_script_content(size: int | None, offset: int) -> None:
    """Whatever the size and offset, only the two constant programs and short tokens are in argv."""
    argv = launcher_argv(size, "get-sources", offset)
    constants = {STAGE_LAUNCHER, STAGE_SUPERVISOR}
    variable = [part for part in argv if part not in constants]
    assert variable == ["sh", "-c", "runner-driver-stage",
                        "-" if size is None else str(size), "get-sources", str(offset)]


def test_stopper_argv_holds_only_id_and_grace() -> None:
    """The stopper's argv is the constant program plus the stage id and the grace in tenths."""
    assert stopper_argv("build-script-3") == ["sh", "-c", STAGE_STOPPER, "runner-driver-stop",
                                              "build-script-3", "20"]
    assert stopper_argv("step_x", grace_tenths=5)[-2:] == ["step_x", "5"]


@pytest.mark.parametrize(("program", "arguments"), [
    pytest.param(STAGE_LAUNCHER, ("$1", "$2", "$3", "$4"), id="stage-launcher"),
    pytest.param(STAGE_SUPERVISOR, ("$1", "$2"), id="stage-supervisor"),
    pytest.param(STAGE_STOPPER, ("$1", "$2"), id="stage-stopper"),
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
    assert f"log={LOG_DIR}/$id.log" in STAGE_LAUNCHER
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
                   STAGE_SUPERVISOR)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
@pytest.mark.parametrize(("size", "offset"), [(42, 0), (None, 1000)])
def test_launcher_argv_parses_as_given(shell_name: str, size: int | None, offset: int) -> None:
    """The exact argv the driver execs parses when its `sh` is busybox ash or dash."""
    argv = launcher_argv(size, "get-sources", offset)
    result = parse(shell_name, *argv[2:])
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
    result = parse(shell_name, broken, "runner-driver-test", "stage-1", "20")
    assert result.returncode != 0
    assert "syntax error" in result.stderr.lower()


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
