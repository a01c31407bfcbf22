"""The runner's environment: exit-code contract, the job's identity, services and secrets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runner_driver.errors import ConfigError
from runner_driver.runner_env import SECRET_VARIABLES, ExitCodes, JobContext, exit_codes

BASE = {"CUSTOM_ENV_CI_JOB_ID": "42", "CUSTOM_ENV_CI_PROJECT_ID": "7"}
SECRET = "s3cr3t-value-0123"


def _job(**extra: str) -> JobContext:
    return JobContext.from_env({**BASE, **extra})


def _response_file(tmp_path: Path, payload: Any) -> str:
    path = tmp_path / "response.json"
    path.write_text(json.dumps(payload), encoding="utf-8")
    return str(path)


# --- exit codes -----------------------------------------------------------------------


def test_exit_codes_default_to_the_runners_constants() -> None:
    """With nothing set, build failure is 1, system failure 2, and no exit-code file."""
    assert exit_codes({}) == ExitCodes(build_failure=1, system_failure=2,
                                       build_exit_code_file=None)


def test_exit_codes_read_from_the_environment() -> None:
    """BUILD_FAILURE_EXIT_CODE and SYSTEM_FAILURE_EXIT_CODE replace the defaults."""
    codes = exit_codes({"BUILD_FAILURE_EXIT_CODE": "17", "SYSTEM_FAILURE_EXIT_CODE": " 23 "})
    assert (codes.build_failure, codes.system_failure) == (17, 23)


@pytest.mark.parametrize("value", [
    pytest.param("", id="empty"),
    pytest.param("abc", id="word"),
    pytest.param("-1", id="negative"),
    pytest.param("1.5", id="decimal"),
    pytest.param("0x10", id="hex"),
    pytest.param("\u00b2", id="superscript-digit"),
    pytest.param("\u0661", id="non-ascii-digit"),
])
def test_non_numeric_exit_codes_fall_back(value: str) -> None:
    """A malformed exit-code variable never raises: the documented constant is used."""
    codes = exit_codes({"BUILD_FAILURE_EXIT_CODE": value, "SYSTEM_FAILURE_EXIT_CODE": value})
    assert (codes.build_failure, codes.system_failure) == (1, 2)


def test_build_exit_code_file_is_a_path() -> None:
    """BUILD_EXIT_CODE_FILE is returned as a Path; an empty value means no file."""
    codes = exit_codes({"BUILD_EXIT_CODE_FILE": "/runner/tmp/exit-code"})
    assert codes.build_exit_code_file == Path("/runner/tmp/exit-code")
    assert exit_codes({"BUILD_EXIT_CODE_FILE": ""}).build_exit_code_file is None


# --- the job's identity ----------------------------------------------------------------


def test_minimal_job_reads_required_ids_and_leaves_the_rest_empty() -> None:
    """Only the job and project ids are required; everything else defaults to empty."""
    job = _job()
    assert (job.job_id, job.project_id) == ("42", "7")
    assert (job.pipeline_id, job.runner_id, job.runner_short_token, job.project_path,
            job.job_image) == ("", "", "", "", "")
    assert job.services == ()
    assert job.timeout_seconds is None
    assert (job.pod_name_from_config, job.namespace_from_config) == ("", "")
    assert job.secrets == ()


def test_full_job_reads_every_variable() -> None:
    """Every CUSTOM_ENV_ variable the driver knows ends up in its field, trimmed and typed."""
    job = _job(CUSTOM_ENV_CI_PIPELINE_ID="1001", CUSTOM_ENV_CI_RUNNER_ID="5",
               CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN="t0k-EN_1.x",
               CUSTOM_ENV_CI_PROJECT_PATH="group/project",
               CUSTOM_ENV_CI_JOB_IMAGE=" gcr.io/kaniko-project/executor:debug ",
               CUSTOM_ENV_CI_JOB_TIMEOUT="3600")
    assert (job.pipeline_id, job.runner_id, job.runner_short_token) == ("1001", "5",
                                                                         "t0k-EN_1.x")
    assert job.project_path == "group/project"
    assert job.job_image == "gcr.io/kaniko-project/executor:debug"
    assert job.timeout_seconds == 3600


def test_unprefixed_job_variables_are_ignored() -> None:
    """Job variables are read only with the CUSTOM_ENV_ prefix the runner adds."""
    with pytest.raises(ConfigError, match="CUSTOM_ENV_CI_JOB_ID is not set"):
        JobContext.from_env({"CI_JOB_ID": "42", "CI_PROJECT_ID": "7"})


def test_from_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a mapping, `from_env` reads os.environ."""
    monkeypatch.setenv("CUSTOM_ENV_CI_JOB_ID", "99")
    monkeypatch.setenv("CUSTOM_ENV_CI_PROJECT_ID", "3")
    assert (JobContext.from_env().job_id, JobContext.from_env().project_id) == ("99", "3")


@pytest.mark.parametrize("name", ["CUSTOM_ENV_CI_JOB_ID", "CUSTOM_ENV_CI_PROJECT_ID"])
@pytest.mark.parametrize("value", [None, "", "   "], ids=["absent", "empty", "blank"])
def test_missing_required_id_names_the_variable(name: str, value: str | None) -> None:
    """A missing or blank job or project id is a ConfigError naming the variable."""
    env = {key: val for key, val in BASE.items() if key != name}
    if value is not None:
        env[name] = value
    with pytest.raises(ConfigError) as caught:
        JobContext.from_env(env)
    assert f"{name} is not set" in str(caught.value)
    assert "gitlab-runner" in str(caught.value)


@pytest.mark.parametrize("name", [
    "CUSTOM_ENV_CI_JOB_ID", "CUSTOM_ENV_CI_PROJECT_ID", "CUSTOM_ENV_CI_PIPELINE_ID",
    "CUSTOM_ENV_CI_RUNNER_ID", "CUSTOM_ENV_CI_JOB_TIMEOUT"])
@pytest.mark.parametrize("value", [
    pytest.param("abc", id="word"),
    pytest.param("-1", id="negative"),
    pytest.param("1.5", id="decimal"),
    pytest.param("12a", id="trailing-letter"),
    pytest.param("\u00b2", id="superscript-digit"),
    pytest.param("\u0661\u0662", id="non-ascii-digits"),
])
def test_non_numeric_id_names_the_variable(name: str, value: str) -> None:
    """A numeric variable holding anything but ASCII digits is a ConfigError naming it."""
    with pytest.raises(ConfigError) as caught:
        JobContext.from_env({**BASE, name: value})
    assert f"{name} must be a number, got {value!r}" in str(caught.value)


@pytest.mark.parametrize("token", [
    pytest.param("abc/def", id="slash"),
    pytest.param("abc def", id="space"),
    pytest.param("tok\u00e9n", id="non-ascii"),
    pytest.param("x" * 65, id="too-long"),
])
def test_bad_short_token_is_refused_without_echoing_it(token: str) -> None:
    """A runner short token with unexpected characters is refused; the message omits it."""
    with pytest.raises(ConfigError) as caught:
        _job(CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN=token)
    message = str(caught.value)
    assert "CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN has unexpected characters" in message
    assert token not in message


def test_longest_valid_short_token_is_accepted() -> None:
    """A 64-character token of letters, digits, `_`, `.` and `-` is accepted as is."""
    token = ("aZ09_.-" * 10)[:64]
    assert _job(CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN=token).runner_short_token == token


# --- services ----------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    pytest.param("", (), id="empty"),
    pytest.param("  ", (), id="blank"),
    pytest.param("[]", (), id="empty-array"),
    pytest.param('[{"name": "postgres:16"}, {"name": "redis", "alias": "cache"}]',
                 ("postgres:16", "redis"), id="named-objects"),
    pytest.param('[{"alias": "db"}, {"name": ""}, "redis", 3]',
                 ("(unnamed)", "(unnamed)", "(unnamed)", "(unnamed)"), id="unnamed-items"),
])
def test_services_are_read_by_name(raw: str, expected: tuple[str, ...]) -> None:
    """CI_JOB_SERVICES gives one entry per array item: its name, or `(unnamed)`."""
    assert _job(CUSTOM_ENV_CI_JOB_SERVICES=raw).services == expected


def test_absent_services_variable_means_no_services() -> None:
    """Without CI_JOB_SERVICES the job declares no services."""
    assert _job().services == ()


@pytest.mark.parametrize(("raw", "message"), [
    pytest.param("[{", "CUSTOM_ENV_CI_JOB_SERVICES is not JSON", id="invalid-json"),
    pytest.param("postgres", "CUSTOM_ENV_CI_JOB_SERVICES is not JSON", id="bare-word"),
    pytest.param('{"name": "postgres"}', "CUSTOM_ENV_CI_JOB_SERVICES must be a JSON array",
                 id="object"),
    pytest.param('"postgres"', "CUSTOM_ENV_CI_JOB_SERVICES must be a JSON array",
                 id="string"),
    pytest.param("null", "CUSTOM_ENV_CI_JOB_SERVICES must be a JSON array", id="null"),
])
def test_malformed_services_name_the_variable(raw: str, message: str) -> None:
    """CI_JOB_SERVICES that is not a JSON array is a ConfigError naming the variable."""
    with pytest.raises(ConfigError, match=message):
        _job(CUSTOM_ENV_CI_JOB_SERVICES=raw)


# --- secrets ------------------------------------------------------------------------------


def test_credential_variables_are_secrets() -> None:
    """CI_JOB_TOKEN and CI_REGISTRY_PASSWORD values are collected, sorted and deduplicated."""
    job = _job(CUSTOM_ENV_CI_JOB_TOKEN="glcbt-job-token-123",
               CUSTOM_ENV_CI_REGISTRY_PASSWORD="registry-password-456",
               CUSTOM_ENV_CI_BUILD_TOKEN="glcbt-job-token-123")
    assert job.secrets == ("glcbt-job-token-123", "registry-password-456")


@pytest.mark.parametrize("name", SECRET_VARIABLES)
def test_every_credential_variable_is_a_secret(name: str) -> None:
    """Each variable that always holds a credential is collected from its CUSTOM_ENV_ form."""
    assert _job(**{f"CUSTOM_ENV_{name}": SECRET}).secrets == (SECRET,)


def test_ordinary_variables_are_not_secrets() -> None:
    """Values of variables outside the credential list are not collected."""
    assert _job(CUSTOM_ENV_CI_PROJECT_PATH="group/long-project-name").secrets == ()


def test_short_secret_values_are_ignored(tmp_path: Path) -> None:
    """Values under 8 characters are not collected (they would mask ordinary words)."""
    response = _response_file(tmp_path, {"variables": [
        {"key": "SHORT", "value": "1234567", "masked": True},
        {"key": "EIGHT", "value": "12345678", "masked": True}]})
    job = _job(CUSTOM_ENV_CI_JOB_TOKEN="short", JOB_RESPONSE_FILE=response)
    assert job.secrets == ("12345678",)


def test_masked_variables_from_the_response_file_are_secrets(tmp_path: Path) -> None:
    """Masked variables of the job payload are collected; unmasked ones are not."""
    response = _response_file(tmp_path, {"variables": [
        {"key": "DEPLOY_KEY", "value": "masked-value-1", "masked": True},
        {"key": "PUBLIC_URL", "value": "https://example.com/public", "masked": False},
        {"key": "NO_FLAG", "value": "no-masked-flag-here"},
        {"key": "API_KEY", "value": "masked-value-2", "masked": True}]})
    job = _job(JOB_RESPONSE_FILE=response)
    assert job.secrets == ("masked-value-1", "masked-value-2")


def test_response_file_token_is_a_secret(tmp_path: Path) -> None:
    """The job token in the payload's `token` field is collected with the env credentials."""
    response = _response_file(tmp_path, {"token": "payload-job-token", "variables": []})
    job = _job(JOB_RESPONSE_FILE=response, CUSTOM_ENV_CI_REGISTRY_PASSWORD=SECRET)
    assert job.secrets == ("payload-job-token", SECRET)


@pytest.mark.parametrize("content", [
    pytest.param(None, id="missing-file"),
    pytest.param("{not json", id="invalid-json"),
    pytest.param(b"\xff\xfe", id="not-utf8"),
    pytest.param("[1, 2]", id="array"),
    pytest.param('{"variables": "masked"}', id="variables-not-a-list"),
    pytest.param('{"variables": ["x", null, 3]}', id="variables-not-objects"),
    pytest.param('{"token": 12345678}', id="token-not-a-string"),
])
def test_unusable_response_file_is_tolerated(tmp_path: Path, content: str | bytes | None) -> None:
    """An unreadable or odd response file adds no secrets and raises nothing."""
    path = tmp_path / "response.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    job = _job(JOB_RESPONSE_FILE=str(path), CUSTOM_ENV_CI_JOB_TOKEN=SECRET)
    assert job.secrets == (SECRET,)


def test_response_file_that_is_a_directory_is_tolerated(tmp_path: Path) -> None:
    """A response-file path naming a directory adds no secrets and raises nothing."""
    assert _job(JOB_RESPONSE_FILE=str(tmp_path)).secrets == ()


def test_secrets_are_not_in_the_repr() -> None:
    """The job's repr (as in a traceback or debug log) never shows secret values."""
    job = _job(CUSTOM_ENV_CI_JOB_TOKEN=SECRET)
    assert job.secrets == (SECRET,)
    assert SECRET not in repr(job)


# --- job_env from `config` ----------------------------------------------------------------


def test_job_env_keys_are_read_unprefixed() -> None:
    """RUNNER_DRIVER_POD and RUNNER_DRIVER_NAMESPACE from `config`'s job_env are read."""
    job = _job(RUNNER_DRIVER_POD="runner-project-7-job-42", RUNNER_DRIVER_NAMESPACE="ci")
    assert job.pod_name_from_config == "runner-project-7-job-42"
    assert job.namespace_from_config == "ci"


def test_job_cannot_set_job_env_keys() -> None:
    """CUSTOM_ENV_RUNNER_DRIVER_* (a job variable) does not name the pod or namespace."""
    job = _job(CUSTOM_ENV_RUNNER_DRIVER_POD="someone-elses-pod",
               CUSTOM_ENV_RUNNER_DRIVER_NAMESPACE="kube-system")
    assert (job.pod_name_from_config, job.namespace_from_config) == ("", "")
