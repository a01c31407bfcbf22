"""The driver's settings: the example file, error messages, finding the file, immutability."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest

from runner_driver import settings
from runner_driver.errors import ConfigError
from runner_driver.settings import Settings

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def _sections(cls: type[Any] = Settings, prefix: str = "") -> list[tuple[str, type[Any]]]:
    """The settings model's tables, nested ones dotted: (name, dataclass), in order."""
    hints = typing.get_type_hints(cls)
    found: list[tuple[str, type[Any]]] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            found.append((f"{prefix}{f.name}", hints[f.name]))
            found += _sections(hints[f.name], f"{prefix}{f.name}.")
    return found


def _is_table(cls: type[Any], name: str) -> bool:
    return dataclasses.is_dataclass(typing.get_type_hints(cls)[name])


SECTION_KEYS = [(section, f.name) for section, cls in _sections()
                for f in dataclasses.fields(cls) if not _is_table(cls, f.name)]


def _write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _section_text(text: str, section: str) -> str:
    """The lines of `text` from `[section]` up to the next table header."""
    match = re.search(rf"^\[{re.escape(section)}\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    assert match, f"no [{section}] table in {EXAMPLE.name}"
    return match.group(1)


# --- the example file ----------------------------------------------------------------


def test_model_has_the_documented_sections() -> None:
    """The tables this test module introspects are the fourteen the example documents."""
    assert [name for name, _ in _sections()] == [
        "kubernetes", "pod", "build", "helper", "logging", "agent", "manager", "overrides",
        "overrides.build", "overrides.helper", "security", "registry", "proxy", "tls"]
    assert len(SECTION_KEYS) >= 50


def test_example_loads_to_the_built_in_defaults() -> None:
    """config.example.toml loads through `load` and equals `Settings()` except `source`."""
    loaded = settings.load(EXAMPLE)
    assert loaded.source == str(EXAMPLE)
    assert dataclasses.replace(loaded, source=Settings().source) == Settings()


def test_example_sets_every_key_explicitly() -> None:
    """Every key of every section is set in the example (not left to the default)."""
    raw = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert set(raw) == {name for name, _ in _sections() if "." not in name}
    for section, cls in _sections():
        table = raw
        for part in section.split("."):
            table = table[part]
        assert set(table) == {f.name for f in dataclasses.fields(cls)}, section


@pytest.mark.parametrize(("section", "key"), SECTION_KEYS,
                         ids=[f"{section}.{key}" for section, key in SECTION_KEYS])
def test_example_documents_key(section: str, key: str) -> None:
    """Each key is set right below a `# key: <type> ... default ...` comment in its section."""
    lines = _section_text(EXAMPLE.read_text(encoding="utf-8"), section).splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(f"# {key}:")]
    assert len(starts) == 1, f"{section}.{key} has no `# {key}:` comment"
    block = []
    for line in lines[starts[0]:]:
        if not line.startswith("#"):
            assert line.startswith(f"{key} = "), f"{section}.{key}: comment not followed by it"
            break
        block.append(line)
    else:
        raise AssertionError(f"{section}.{key}: comment not followed by a value")
    assert "default" in " ".join(block), f"{section}.{key}: the comment gives no default"


# --- loading ----------------------------------------------------------------------------


def test_no_file_gives_the_built_in_defaults() -> None:
    """`load(None)` is `Settings()`, whose source says the defaults apply."""
    loaded = settings.load(None)
    assert loaded == Settings()
    assert loaded.source == "built-in defaults"


def test_empty_file_gives_defaults_with_the_file_as_source(tmp_path: Path) -> None:
    """An empty file is valid: every key keeps its default, and `source` names the file."""
    path = _write(tmp_path, "")
    assert settings.load(path) == dataclasses.replace(Settings(), source=str(path))


def test_partial_file_overrides_only_the_keys_it_sets(tmp_path: Path) -> None:
    """Keys left out keep their defaults; keys set replace them, section by section."""
    path = _write(tmp_path, '[pod]\nbuilds_dir = "/work"\n[logging]\nlevel = "debug"\n')
    loaded = settings.load(path)
    assert loaded.pod == dataclasses.replace(settings.PodSettings(), builds_dir="/work")
    assert loaded.logging == settings.LoggingSettings(level="debug")
    assert loaded.kubernetes == settings.KubernetesSettings()
    assert loaded.build == settings.BuildSettings()


def test_integer_is_accepted_where_a_number_is_expected(tmp_path: Path) -> None:
    """An integer for a float key is stored as a float."""
    path = _write(tmp_path, "[pod]\nstart_timeout_seconds = 60\n")
    value = settings.load(path).pod.start_timeout_seconds
    assert value == 60.0 and isinstance(value, float)


def test_allowed_images_become_a_tuple(tmp_path: Path) -> None:
    """A TOML list is stored as a tuple, in order; an empty list is allowed."""
    path = _write(tmp_path, '[build]\nallowed_images = ["b:*debug*", "a:*debug*"]\n')
    assert settings.load(path).build.allowed_images == ("b:*debug*", "a:*debug*")
    empty = _write(tmp_path, "[build]\nallowed_images = []\n", "empty.toml")
    assert settings.load(empty).build.allowed_images == ()


@pytest.mark.parametrize("text", [
    pytest.param('[pod]\nbuilds_dir = "/builds2"\ncache_dir = "/builds-cache"\n',
                 id="sibling-prefix-is-not-nesting"),
    pytest.param('[pod]\nbuilds_dir = "/builds/"\n', id="trailing-slash"),
    pytest.param('[pod]\nscratch_dir = "/tmp/scratch"\n', id="below-tmp"),
    pytest.param("[pod]\ntermination_grace_period_seconds = 0\n", id="zero-grace"),
    pytest.param("[pod]\ndeadline_margin_seconds = 0\n", id="zero-margin"),
])
def test_boundary_values_are_accepted(tmp_path: Path, text: str) -> None:
    """Values at the edge of what `_check` allows load without error."""
    path = _write(tmp_path, text)
    assert settings.load(path).source == str(path)


def test_new_keys_have_their_documented_defaults() -> None:
    """Retries get 60 s, unschedulable pods 120 s, and no container resources are set."""
    defaults = Settings()
    assert defaults.kubernetes.retry_timeout_seconds == 60.0
    assert defaults.pod.unschedulable_timeout_seconds == 120.0
    for section in (defaults.build, defaults.helper):
        assert (section.cpu_request, section.memory_request, section.cpu_limit,
                section.memory_limit) == ("", "", "", "")


def test_timeouts_and_resources_load_from_the_file(tmp_path: Path) -> None:
    """The retry and unschedulable timeouts and both containers' resources are read as set."""
    path = _write(tmp_path, "[kubernetes]\nretry_timeout_seconds = 5\n"
                            "[pod]\nunschedulable_timeout_seconds = 30.5\n"
                            '[build]\ncpu_request = "500m"\nmemory_request = "1Gi"\n'
                            'cpu_limit = "2"\nmemory_limit = "4Gi"\n'
                            '[helper]\ncpu_request = "100m"\nmemory_limit = "256Mi"\n')
    loaded = settings.load(path)
    assert loaded.kubernetes.retry_timeout_seconds == 5.0
    assert isinstance(loaded.kubernetes.retry_timeout_seconds, float)
    assert loaded.pod.unschedulable_timeout_seconds == 30.5
    assert loaded.build == dataclasses.replace(settings.BuildSettings(), cpu_request="500m",
                                               memory_request="1Gi", cpu_limit="2",
                                               memory_limit="4Gi")
    assert loaded.helper == dataclasses.replace(settings.HelperSettings(), cpu_request="100m",
                                                memory_limit="256Mi")


@pytest.mark.parametrize("quantity", ["1", "2", "0.5", "1.25", "500m", "1500m", "64"])
def test_cpu_quantities_operators_write_are_accepted(tmp_path: Path, quantity: str) -> None:
    """Whole and decimal cores and millicores are valid for every CPU key."""
    text = "".join(f'[{section}]\ncpu_request = "{quantity}"\ncpu_limit = "{quantity}"\n'
                   for section in ("build", "helper"))
    loaded = settings.load(_write(tmp_path, text))
    assert loaded.build.cpu_request == loaded.helper.cpu_limit == quantity


@pytest.mark.parametrize("quantity", ["128974848", "512Mi", "1.5Gi", "4Gi", "1Ti", "64Ki",
                                      "129M", "1G", "500k"])
def test_memory_quantities_operators_write_are_accepted(tmp_path: Path, quantity: str) -> None:
    """Plain bytes, binary (Ki, Mi, Gi, ...) and decimal (k, M, G, ...) suffixes are valid."""
    text = "".join(f'[{section}]\nmemory_request = "{quantity}"\n'
                   f'memory_limit = "{quantity}"\n' for section in ("build", "helper"))
    loaded = settings.load(_write(tmp_path, text))
    assert loaded.build.memory_limit == loaded.helper.memory_request == quantity


@pytest.mark.parametrize("manager_id", [
    "runner-manager-1", "a", "Runner_01.example.com", "9" * 63, "gitlab-runner.ci-system"])
def test_valid_manager_id_is_accepted(tmp_path: Path, manager_id: str) -> None:
    """A manager id that is a Kubernetes label value (up to 63 characters) loads as written."""
    path = _write(tmp_path, f'[manager]\nid = "{manager_id}"\n')
    assert settings.load(path).manager == settings.ManagerSettings(id=manager_id)


def test_manager_id_defaults_to_empty() -> None:
    """Without a `[manager]` table the id is empty (the host name is filled in later)."""
    assert Settings().manager.id == ""


def test_resolve_manager_fills_the_host_name_when_empty(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty manager id becomes this machine's host name; nothing else changes."""
    class Uname:
        nodename = "ci-host-7"

    monkeypatch.setattr(os, "uname", Uname)
    before = dataclasses.replace(Settings(), source="somewhere.toml")
    resolved = settings.resolve_manager(before)
    assert resolved.manager.id == "ci-host-7"
    assert dataclasses.replace(resolved, manager=before.manager) == before


def test_resolve_manager_uses_the_real_host_name() -> None:
    """Unpatched, the filled-in id is os.uname().nodename."""
    assert settings.resolve_manager(Settings()).manager.id == os.uname().nodename


def test_resolve_manager_keeps_a_configured_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """A configured manager id is kept as is, and the host name is not even looked up."""
    def no_uname() -> None:
        raise AssertionError("the host name was looked up")

    monkeypatch.setattr(os, "uname", no_uname)
    configured = Settings(manager=settings.ManagerSettings(id="chosen-by-operator"))
    assert settings.resolve_manager(configured) == configured


# --- errors name the file and the dotted key ----------------------------------------------

ERRORS = [
    # unknown keys
    pytest.param('colour = "blue"\n', "colour", "unknown key", id="unknown-top-level-key"),
    pytest.param("[podd]\n", "podd", "unknown key", id="unknown-section"),
    pytest.param('[pod]\nbuild_dir = "/b"\n', "pod.build_dir", "unknown key",
                 id="unknown-nested-key"),
    pytest.param('source = "elsewhere"\n', "source", "unknown key", id="source-not-settable"),
    # wrong types
    pytest.param('[pod]\ntermination_grace_period_seconds = "10"\n',
                 "pod.termination_grace_period_seconds", "expected an integer, got a string",
                 id="string-for-int"),
    pytest.param("[pod]\ndeadline_margin_seconds = true\n", "pod.deadline_margin_seconds",
                 "expected an integer, got a boolean", id="bool-for-int"),
    pytest.param("[pod]\ndefault_job_timeout_seconds = 3600.0\n",
                 "pod.default_job_timeout_seconds", "expected an integer, got a number",
                 id="float-for-int"),
    pytest.param("[kubernetes]\nrequest_timeout_seconds = false\n",
                 "kubernetes.request_timeout_seconds", "expected a number, got a boolean",
                 id="bool-for-float"),
    pytest.param('[kubernetes]\nrequest_timeout_seconds = "30"\n',
                 "kubernetes.request_timeout_seconds", "expected a number, got a string",
                 id="string-for-float"),
    pytest.param("[pod]\nstart_timeout_seconds = nan\n", "pod.start_timeout_seconds",
                 "expected a finite number", id="nan-for-float"),
    pytest.param("[kubernetes]\nrequest_timeout_seconds = inf\n",
                 "kubernetes.request_timeout_seconds", "expected a finite number",
                 id="inf-for-float"),
    pytest.param("[build]\nimage = 1\n", "build.image", "expected a string, got an integer",
                 id="int-for-string"),
    pytest.param('[build]\nallowed_images = ["a:*debug*", 1]\n', "build.allowed_images",
                 "expected a list of strings, got a list", id="list-with-non-strings"),
    pytest.param('[build]\nallowed_images = "a:*debug*"\n', "build.allowed_images",
                 "expected a list of strings, got a string", id="string-for-list"),
    pytest.param("pod = 1\n", "pod", "expected a table, got an integer",
                 id="non-table-section"),
    pytest.param('logging = "debug"\n', "logging", "expected a table, got a string",
                 id="string-for-section"),
    # impossible values
    pytest.param('[logging]\nlevel = "verbose"\n', "logging.level",
                 "must be one of debug, info, warning, error, got 'verbose'",
                 id="bad-logging-level"),
    pytest.param('[logging]\nlevel = "WARNING"\n', "logging.level", "must be one of",
                 id="logging-level-is-case-sensitive"),
    pytest.param('[logging]\nformat = "text"\n', "logging.format",
                 "must be one of console, json, got 'text'", id="bad-logging-format"),
    pytest.param('[pod]\nbuilds_dir = "builds"\n', "pod.builds_dir",
                 "must be an absolute path other than / and /tmp", id="relative-builds-dir"),
    pytest.param('[pod]\nbuilds_dir = "/tmp"\n', "pod.builds_dir",
                 "must be an absolute path other than / and /tmp", id="builds-dir-is-tmp"),
    pytest.param('[pod]\ncache_dir = "/tmp/"\n', "pod.cache_dir",
                 "must be an absolute path other than / and /tmp", id="cache-dir-is-tmp-slash"),
    pytest.param('[pod]\nscratch_dir = "/"\n', "pod.scratch_dir",
                 "must be an absolute path other than / and /tmp", id="scratch-dir-is-root"),
    pytest.param('[pod]\nbuilds_dir = ""\n', "pod.builds_dir",
                 "must be an absolute path", id="empty-builds-dir"),
    pytest.param('[pod]\nbuilds_dir = "/cache"\n', "pod",
                 "must be separate directories", id="builds-dir-equals-cache-dir"),
    pytest.param('[pod]\nbuilds_dir = "/scratch/"\n', "pod",
                 "must be separate directories", id="equal-up-to-trailing-slash"),
    pytest.param('[pod]\ncache_dir = "/builds/cache"\n', "pod",
                 "none inside another", id="cache-dir-inside-builds-dir"),
    pytest.param('[pod]\nbuilds_dir = "/scratch/builds"\n', "pod",
                 "none inside another", id="builds-dir-inside-scratch-dir"),
    pytest.param("[pod]\nstart_timeout_seconds = 0\n", "pod.start_timeout_seconds",
                 "must be greater than 0", id="zero-start-timeout"),
    pytest.param("[pod]\nstart_timeout_seconds = -1.5\n", "pod.start_timeout_seconds",
                 "must be greater than 0", id="negative-start-timeout"),
    pytest.param("[pod]\ndefault_job_timeout_seconds = 0\n", "pod.default_job_timeout_seconds",
                 "must be greater than 0", id="zero-default-job-timeout"),
    pytest.param("[kubernetes]\nrequest_timeout_seconds = 0\n",
                 "kubernetes.request_timeout_seconds", "must be greater than 0",
                 id="zero-request-timeout"),
    pytest.param("[pod]\ntermination_grace_period_seconds = -1\n",
                 "pod.termination_grace_period_seconds", "must not be negative",
                 id="negative-grace-period"),
    pytest.param("[pod]\ndeadline_margin_seconds = -60\n", "pod.deadline_margin_seconds",
                 "must not be negative", id="negative-deadline-margin"),
    pytest.param('[build]\nimage = ""\n', "build.image", "must not be empty",
                 id="empty-build-image"),
    pytest.param('[helper]\nimage = ""\n', "helper.image", "must not be empty",
                 id="empty-helper-image"),
    # retrying and scheduling timeouts
    pytest.param("[kubernetes]\nretry_timeout_seconds = 0\n",
                 "kubernetes.retry_timeout_seconds", "must be greater than 0",
                 id="zero-retry-timeout"),
    pytest.param("[kubernetes]\nretry_timeout_seconds = -5\n",
                 "kubernetes.retry_timeout_seconds", "must be greater than 0",
                 id="negative-retry-timeout"),
    pytest.param('[kubernetes]\nretry_timeout_seconds = "60"\n',
                 "kubernetes.retry_timeout_seconds", "expected a number, got a string",
                 id="string-for-retry-timeout"),
    pytest.param("[kubernetes]\nretry_timeout_seconds = inf\n",
                 "kubernetes.retry_timeout_seconds", "expected a finite number",
                 id="inf-retry-timeout"),
    pytest.param("[pod]\nunschedulable_timeout_seconds = 0\n",
                 "pod.unschedulable_timeout_seconds", "must be greater than 0",
                 id="zero-unschedulable-timeout"),
    pytest.param("[pod]\nunschedulable_timeout_seconds = -0.5\n",
                 "pod.unschedulable_timeout_seconds", "must be greater than 0",
                 id="negative-unschedulable-timeout"),
    pytest.param("[pod]\nunschedulable_timeout_seconds = true\n",
                 "pod.unschedulable_timeout_seconds", "expected a number, got a boolean",
                 id="bool-for-unschedulable-timeout"),
    # the runner's agent
    pytest.param("[agent]\nidle_timeout_seconds = 0\n",
                 "agent.idle_timeout_seconds", "must be greater than 0",
                 id="zero-agent-idle-timeout"),
    pytest.param('[agent]\nenabled = "no"\n', "agent.enabled",
                 "expected true or false, got a string", id="string-for-agent-enabled"),
    pytest.param("[agent]\nstandby_exec = 1\n", "agent.standby_exec",
                 "expected true or false, got an integer", id="int-for-standby-exec"),
    # the runner manager's id: a Kubernetes label value
    pytest.param("[manager]\nid = 7\n", "manager.id", "expected a string, got an integer",
                 id="int-for-manager-id"),
    pytest.param('[manager]\nid = "runner one"\n', "manager.id",
                 "must be a Kubernetes label value", id="manager-id-with-space"),
    pytest.param('[manager]\nid = "-runner"\n', "manager.id",
                 "must be a Kubernetes label value", id="manager-id-leading-dash"),
    pytest.param('[manager]\nid = "runner."\n', "manager.id",
                 "must be a Kubernetes label value", id="manager-id-trailing-dot"),
    pytest.param('[manager]\nid = "runner/1"\n', "manager.id",
                 "must be a Kubernetes label value", id="manager-id-with-slash"),
    pytest.param('[manager]\nid = "r\u00e9gion"\n', "manager.id",
                 "must be a Kubernetes label value", id="manager-id-non-ascii"),
    pytest.param('[manager]\nid = "' + "a" * 64 + '"\n', "manager.id",
                 "got '" + "a" * 64 + "'", id="manager-id-64-chars"),
    pytest.param('[manager]\nname = "x"\n', "manager.name", "unknown key (known here: id)",
                 id="unknown-manager-key"),
    # container resources: strings holding Kubernetes quantities
    pytest.param("[build]\ncpu_request = 2\n", "build.cpu_request",
                 "expected a string, got an integer", id="int-for-cpu-request"),
    pytest.param("[helper]\nmemory_limit = 1.5\n", "helper.memory_limit",
                 "expected a string, got a number", id="float-for-memory-limit"),
    pytest.param('[build]\ncpu_request = "1 core"\n', "build.cpu_request",
                 "must be a CPU quantity such as 500m or 2, got '1 core'", id="cpu-in-words"),
    pytest.param('[build]\ncpu_limit = "512Mi"\n', "build.cpu_limit",
                 "must be a CPU quantity", id="memory-quantity-for-cpu"),
    pytest.param('[helper]\ncpu_request = "1.5m"\n', "helper.cpu_request",
                 "must be a CPU quantity", id="fractional-millicores"),
    pytest.param('[helper]\ncpu_limit = "-1"\n', "helper.cpu_limit",
                 "must be a CPU quantity", id="negative-cpu"),
    pytest.param('[build]\ncpu_request = "1e3"\n', "build.cpu_request",
                 "must be a CPU quantity", id="cpu-exponent"),
    pytest.param('[build]\nmemory_request = "4GB"\n', "build.memory_request",
                 "must be a memory quantity such as 512Mi or 2Gi, got '4GB'",
                 id="memory-with-byte-suffix"),
    pytest.param('[build]\nmemory_limit = "512m"\n', "build.memory_limit",
                 "must be a memory quantity", id="memory-in-millibytes"),
    pytest.param('[helper]\nmemory_request = "512mi"\n', "helper.memory_request",
                 "must be a memory quantity", id="memory-suffix-is-case-sensitive"),
    pytest.param('[helper]\nmemory_limit = " 1Gi"\n', "helper.memory_limit",
                 "must be a memory quantity", id="memory-with-space"),
]


@pytest.mark.parametrize(("text", "key", "message"), ERRORS)
def test_error_names_file_and_dotted_key(tmp_path: Path, text: str, key: str,
                                         message: str) -> None:
    """A bad file is refused with `<path>: <dotted key>: <what is wrong>` on one line."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        settings.load(path)
    error = str(caught.value)
    assert error.startswith(f"reading driver config {path}: {key}: "), error
    assert message in error
    assert "\n" not in error


def test_unknown_key_error_lists_the_known_keys(tmp_path: Path) -> None:
    """An unknown key's message lists the keys valid at that level, to spot the typo."""
    path = _write(tmp_path, '[logging]\nlevels = "info"\n')
    with pytest.raises(ConfigError, match=r"logging\.levels: unknown key \(known here: "
                                          r"format, level\)"):
        settings.load(path)


@pytest.mark.parametrize(("content", "message"), [
    pytest.param(b"[pod\n", "invalid TOML", id="invalid-toml"),
    pytest.param(b"[pod]\nbuilds_dir = \n", "invalid TOML", id="missing-value"),
    pytest.param(b'[pod]\nbuilds_dir = "/b"\nbuilds_dir = "/c"\n', "invalid TOML",
                 id="duplicate-key"),
    pytest.param(b'[build]\nimage = "\xff"\n', "not UTF-8", id="not-utf8"),
])
def test_unparsable_file_is_refused_naming_it(tmp_path: Path, content: bytes,
                                              message: str) -> None:
    """A file that is not valid UTF-8 TOML is refused with its path and the parser's reason."""
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        settings.load(path)
    assert str(caught.value).startswith(f"reading driver config {path}: {message}")


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    """A named file that does not exist is refused, naming it (no silent defaults)."""
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        settings.load(path)
    assert str(caught.value) == f"reading driver config {path}: No such file or directory"


def test_directory_instead_of_file_is_an_error(tmp_path: Path) -> None:
    """A path naming a directory is refused with the OS's reason."""
    with pytest.raises(ConfigError, match="Is a directory"):
        settings.load(tmp_path)


# --- where the file is found ----------------------------------------------------------


def test_default_location_and_variable_name() -> None:
    """The documented default path and environment variable are the ones the code uses."""
    assert (str(settings.DEFAULT_PATH), settings.CONFIG_ENV) == (
        "/etc/runner-driver/config.toml", "RUNNER_DRIVER_CONFIG")


@pytest.fixture
def default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the default location at a file under tmp_path (created by the test if wanted)."""
    path = tmp_path / "etc" / "config.toml"
    path.parent.mkdir()
    monkeypatch.setattr(settings, "DEFAULT_PATH", path)
    return path


def test_cli_path_wins_over_variable_and_default(tmp_path: Path, default_file: Path) -> None:
    """`--config` is used even when $RUNNER_DRIVER_CONFIG and the default file exist."""
    default_file.write_text("")
    cli = tmp_path / "cli.toml"
    chosen = settings.config_path(cli, {"RUNNER_DRIVER_CONFIG": str(tmp_path / "env.toml")})
    assert chosen == cli


def test_variable_wins_over_default(tmp_path: Path, default_file: Path) -> None:
    """Without `--config`, $RUNNER_DRIVER_CONFIG is used even when the default file exists."""
    default_file.write_text("")
    env = tmp_path / "env.toml"
    assert settings.config_path(None, {"RUNNER_DRIVER_CONFIG": str(env)}) == env


def test_default_used_when_present(default_file: Path) -> None:
    """With neither `--config` nor the variable, an existing default file is used."""
    default_file.write_text("")
    assert settings.config_path(None, {}) == default_file


def test_empty_variable_counts_as_unset(default_file: Path) -> None:
    """An empty $RUNNER_DRIVER_CONFIG falls through to the default location."""
    default_file.write_text("")
    assert settings.config_path(None, {"RUNNER_DRIVER_CONFIG": ""}) == default_file


def test_nothing_given_and_no_default_gives_defaults(default_file: Path) -> None:
    """With no `--config`, no variable and no default file: no path, built-in defaults."""
    assert not default_file.exists()
    assert settings.config_path(None, {}) is None
    assert settings.load_from(None, {}) == Settings()


def test_explicit_paths_are_returned_even_if_absent(tmp_path: Path, default_file: Path) -> None:
    """Only the default location may be absent: named files are returned for `load` to refuse."""
    absent = tmp_path / "absent.toml"
    assert settings.config_path(absent, {}) == absent
    assert settings.config_path(None, {"RUNNER_DRIVER_CONFIG": str(absent)}) == absent
    with pytest.raises(ConfigError, match=re.escape(str(absent))):
        settings.load_from(None, {"RUNNER_DRIVER_CONFIG": str(absent)})


def test_load_from_reads_the_chosen_file(tmp_path: Path, default_file: Path) -> None:
    """`load_from` loads the file `config_path` picks, and records it as the source."""
    default_file.write_text('[logging]\nlevel = "error"\n')
    env = _write(tmp_path, '[logging]\nlevel = "info"\n', "env.toml")
    cli = _write(tmp_path, '[logging]\nlevel = "debug"\n', "cli.toml")
    environ = {"RUNNER_DRIVER_CONFIG": str(env)}
    assert settings.load_from(cli, environ).logging.level == "debug"
    assert settings.load_from(None, environ).source == str(env)
    assert settings.load_from(None, environ).logging.level == "info"
    assert settings.load_from(None, {}).logging.level == "error"


def test_load_from_reads_the_process_environment(tmp_path: Path, default_file: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping, `load_from` reads $RUNNER_DRIVER_CONFIG from os.environ."""
    env = _write(tmp_path, '[logging]\nformat = "json"\n', "env.toml")
    monkeypatch.setenv("RUNNER_DRIVER_CONFIG", str(env))
    assert settings.load_from(None).logging.format == "json"


# --- immutability ---------------------------------------------------------------------


def test_settings_are_frozen() -> None:
    """Assigning to the loaded settings raises, so no stage can change them after parsing."""
    loaded = settings.load(EXAMPLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.source = "changed"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.pod = settings.PodSettings()  # type: ignore[misc]
    assert loaded.source == str(EXAMPLE)


@pytest.mark.parametrize(("section", "key"), SECTION_KEYS,
                         ids=[f"{section}.{key}" for section, key in SECTION_KEYS])
def test_every_section_is_frozen(section: str, key: str) -> None:
    """Assigning to any key of any section raises and leaves the value unchanged."""
    part: Any = Settings()
    for name in section.split("."):
        part = getattr(part, name)
    before = getattr(part, key)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(part, key, before)
    assert getattr(part, key) == before


# --- pod template and patch files ---------------------------------------------------------


def test_template_and_patch_are_read_relative_to_the_settings_file(tmp_path: Path) -> None:
    """`pod.template` and `pod.patch` name files next to the settings file; both are parsed
    once at load, and `watched_files` lists them so an agent notices their change."""
    (tmp_path / "pod.yaml").write_text("spec:\n  nodeSelector: {pool: ci}\n", encoding="utf-8")
    (tmp_path / "patch.json").write_text('[{"op": "remove", "path": "/spec/x"}]',
                                         encoding="utf-8")
    path = _write(tmp_path, '[pod]\ntemplate = "pod.yaml"\npatch = "patch.json"\n')
    loaded = settings.load(path)
    assert loaded.pod_template == {"spec": {"nodeSelector": {"pool": "ci"}}}
    assert loaded.pod_patch == ({"op": "remove", "path": "/spec/x"},)
    assert loaded.watched_files() == [str(path), str(tmp_path / "pod.yaml"),
                                      str(tmp_path / "patch.json")]


@pytest.mark.parametrize(("files", "toml", "expected"), [
    pytest.param({}, 'template = "missing.yaml"',
                 "pod.template: {dir}/missing.yaml: No such file or directory", id="missing"),
    pytest.param({"pod.yaml": "spec: [unclosed"}, 'template = "pod.yaml"',
                 "pod.template: {dir}/pod.yaml: invalid YAML: ", id="bad-yaml"),
    pytest.param({"pod.yaml": "- a\n- b\n"}, 'template = "pod.yaml"',
                 "pod.template: {dir}/pod.yaml: expected a partial Pod (a YAML mapping), "
                 "got a list", id="template-list"),
    pytest.param({"patch.yaml": "op: remove\n"}, 'patch = "patch.yaml"',
                 "pod.patch: {dir}/patch.yaml: expected a JSON Patch (a list of operations",
                 id="patch-mapping"),
])
def test_unreadable_pod_files_name_the_key_and_file(tmp_path: Path, files: dict[str, str],
                                                    toml: str, expected: str) -> None:
    """A missing or malformed template or patch fails loading, naming the settings file, the
    key and the file it points to."""
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    path = _write(tmp_path, f"[pod]\n{toml}\n")
    with pytest.raises(ConfigError) as caught:
        settings.load(path)
    assert str(caught.value).startswith(f"reading driver config {path}: ")
    assert expected.format(dir=tmp_path) in str(caught.value)


@pytest.mark.parametrize(("toml", "expected"), [
    pytest.param('[pod]\nscratch_size_limit = ""', "pod.scratch_size_limit: must not be empty",
                 id="empty-size"),
    pytest.param('[pod]\nbuilds_size_limit = "lots"',
                 "pod.builds_size_limit: must be a storage quantity", id="bad-size"),
    pytest.param('[build]\nephemeral_storage_limit = "1m"',
                 "build.ephemeral_storage_limit: must be a storage quantity", id="milli-storage"),
    pytest.param('[overrides.build]\nmemory_limit_max = "8 GB"',
                 "overrides.build.memory_limit_max: must be a memory quantity", id="bad-cap"),
    pytest.param('[overrides.helper]\ncpu_limit_max = "x"',
                 "overrides.helper.cpu_limit_max: must be a CPU quantity", id="bad-cpu-cap"),
    pytest.param('[overrides]\nnode_selector_keys = [""]',
                 "overrides.node_selector_keys: must not hold empty patterns", id="empty-pattern"),
    pytest.param('[security]\nexceptions = ["everything"]',
                 "security.exceptions: unknown check 'everything'", id="unknown-exception"),
    pytest.param('[helper]\nrun_as_user = -1', "helper.run_as_user: must be a user id",
                 id="negative-uid"),
    pytest.param('[overrides]\nbuild = "8Gi"', "overrides.build: expected a table, got a string",
                 id="cap-not-table"),
    pytest.param('[proxy]\nhttp_proxy = "proxy:3128"', "proxy.http_proxy: must be a URL",
                 id="proxy-not-a-url"),
    pytest.param('[proxy]\nhttps_proxy = "http://u:p@proxy:3128"',
                 "proxy.https_proxy: must not hold credentials", id="proxy-credentials"),
    pytest.param('[proxy]\nno_proxy = "a, b"', "proxy.no_proxy: must be a comma-separated",
                 id="no-proxy-spaces"),
    pytest.param('[registry]\nsecrets = ["Corp_Registry"]',
                 "registry.secrets: must hold Secret names", id="registry-secret-name"),
])
def test_new_pod_keys_are_checked(tmp_path: Path, toml: str, expected: str) -> None:
    """Size limits, ephemeral storage, caps, patterns and exceptions are checked at load,
    naming the dotted key."""
    path = _write(tmp_path, toml + "\n")
    with pytest.raises(ConfigError) as caught:
        settings.load(path)
    assert str(caught.value).startswith(f"reading driver config {path}: {expected}")


def test_a_ca_file_is_read_at_load_and_must_hold_a_certificate(tmp_path: Path) -> None:
    """tls.ca_file is read when the settings load (relative to them) and watched; a file
    without a PEM certificate is refused naming the key and the file."""
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    (tmp_path / "ca.pem").write_text(pem, encoding="ascii")
    path = _write(tmp_path, '[tls]\nca_file = "ca.pem"\n')
    loaded = settings.load(path)
    assert loaded.ca_pem == pem
    assert str(tmp_path / "ca.pem") in loaded.watched_files()
    (tmp_path / "ca.pem").write_text("not a certificate\n", encoding="ascii")
    with pytest.raises(ConfigError) as caught:
        settings.load(path)
    assert str(caught.value) == (f"reading driver config {path}: tls.ca_file: "
                                 f"{tmp_path}/ca.pem: not a PEM file: no "
                                 "-----BEGIN CERTIFICATE----- line")
