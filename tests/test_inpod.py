"""The in-pod shell programs: job data stays out of argv, and busybox ash and dash parse them."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from runner_driver.inpod import (
    BUILD_ENTRYPOINT,
    HELPER_ENTRYPOINT,
    STAGE_LAUNCHER,
    STAGE_STOPPER,
    launcher_argv,
    stopper_argv,
)

PROGRAMS = [
    pytest.param(STAGE_LAUNCHER, id="stage-launcher"),
    pytest.param(STAGE_STOPPER, id="stage-stopper"),
    pytest.param(BUILD_ENTRYPOINT[2], id="build-entrypoint"),
    pytest.param(HELPER_ENTRYPOINT[2], id="helper-entrypoint"),
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


def test_launcher_argv_holds_only_size_and_id() -> None:
    """The launcher's argv is the constant program plus the script's size and the stage id."""
    script = "echo 's3cr3t'; docker login -p hunter2\n"
    argv = launcher_argv(len(script.encode()), "build-script-3")
    assert argv == ["sh", "-c", STAGE_LAUNCHER, "runner-driver-stage", str(len(script.encode())),
                    "build-script-3"]
    assert all(script.strip() not in part and "hunter2" not in part for part in argv)


def test_stopper_argv_holds_only_id_and_grace() -> None:
    """The stopper's argv is the constant program plus the stage id and the grace in tenths."""
    assert stopper_argv("build-script-3") == ["sh", "-c", STAGE_STOPPER, "runner-driver-stop",
                                              "build-script-3", "20"]
    assert stopper_argv("step_x", grace_tenths=5)[-2:] == ["step_x", "5"]


@pytest.mark.parametrize("program", [STAGE_LAUNCHER, STAGE_STOPPER])
def test_programs_read_job_data_only_from_positional_arguments(program: str) -> None:
    """The programs are constants taking sizes and ids as $1/$2, with no template leftovers."""
    assert "$1" in program and "$2" in program
    assert "{" not in program.replace("${", "") and "}" not in program


def test_entrypoints_are_shell_programs() -> None:
    """Both PID 1 programs run through `sh -c` (busybox's in the kaniko image)."""
    assert BUILD_ENTRYPOINT[:2] == ("/busybox/sh", "-c")
    assert HELPER_ENTRYPOINT[:2] == ("/bin/sh", "-c")


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
@pytest.mark.parametrize("program", PROGRAMS)
def test_program_parses(shell_name: str, program: str) -> None:
    """Each in-pod program is valid syntax for busybox ash and for dash."""
    result = parse(shell_name, program, "runner-driver-test", "12", "stage-1")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
def test_launcher_argv_parses_as_given(shell_name: str) -> None:
    """The exact argv the driver execs parses when its `sh` is busybox ash or dash."""
    argv = launcher_argv(42, "get-sources")
    result = parse(shell_name, *argv[2:])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("shell_name", ["busybox", "dash"])
def test_parse_check_rejects_broken_syntax(shell_name: str) -> None:
    """The `sh -n` check has teeth: a program with a syntax error fails it."""
    broken = STAGE_STOPPER.replace("; done", "")
    result = parse(shell_name, broken, "runner-driver-test", "stage-1", "20")
    assert result.returncode != 0
    assert "syntax error" in result.stderr.lower()
