"""The runner's environment: exit-code contract, the job's identity, services and secrets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runner_driver import jobrecord
from runner_driver.errors import ConfigError, JobFailed
from runner_driver.runner_env import (
    MAX_JOB_TIMEOUT_SECONDS,
    NONCE_KEY,
    SECRET_VARIABLES,
    ExitCodes,
    JobContext,
    JobPayload,
    exit_codes,
    new_nonce,
)

SECRET = "s3cr3t-value-0123"
PAYLOAD: dict[str, Any] = {"id": 42, "token": "", "job_info": {"project_id": 7},
                           "runner_info": {"timeout": 3600}}


def _response_file(tmp_path: Path, payload: Any) -> str:
    path = tmp_path / "response.json"
    path.write_text(json.dumps(payload), encoding="utf-8")
    return str(path)


@pytest.fixture
def job_in(tmp_path: Path) -> Any:
    """Read a job from `env` plus a payload file (PAYLOAD with `changes`)."""
    def read(payload: Any = None, **env: str) -> JobContext:
        response = _response_file(tmp_path, PAYLOAD if payload is None else payload)
        return JobContext.from_env({"JOB_RESPONSE_FILE": response, **env})
    return read


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


# --- the job's identity: only what the runner vouches for -------------------------------


def test_identity_comes_from_the_payload(job_in: Any) -> None:
    """Job id, project id and timeout are the payload's; display fields start empty."""
    job = job_in()
    assert (job.job_id, job.project_id, job.timeout_seconds) == ("42", "7", 3600)
    assert (job.pipeline_id, job.runner_id, job.runner_short_token, job.project_path,
            job.job_image) == ("", "", "", "", "")
    assert (job.services, job.nonce, job.tmpdir) == ((), "", "")
    assert (job.pod_name_from_config, job.namespace_from_config) == ("", "")


def test_overridden_predefined_variables_do_not_change_the_identity(job_in: Any) -> None:
    """A job that sets CI_JOB_ID, CI_PROJECT_ID and CI_JOB_TIMEOUT gets the payload's values."""
    job = job_in(CUSTOM_ENV_CI_JOB_ID="1", CUSTOM_ENV_CI_PROJECT_ID="2",
                 CUSTOM_ENV_CI_JOB_TIMEOUT="99999999999999999999",
                 CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN="victim-token")
    assert (job.job_id, job.project_id, job.timeout_seconds) == ("42", "7", 3600)
    assert job.runner_short_token == "victim-token"  # kept, for display only


def test_claimed_values_are_kept_for_display(job_in: Any) -> None:
    """Pipeline, runner, project path and image are read as claimed, trimmed."""
    job = job_in(CUSTOM_ENV_CI_PIPELINE_ID="1001", CUSTOM_ENV_CI_RUNNER_ID="5",
                 CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN="t0k-EN_1.x",
                 CUSTOM_ENV_CI_PROJECT_PATH=" group/project ",
                 CUSTOM_ENV_CI_JOB_IMAGE=" gcr.io/kaniko-project/executor:debug ")
    assert (job.pipeline_id, job.runner_id, job.runner_short_token) == ("1001", "5",
                                                                         "t0k-EN_1.x")
    assert job.project_path == "group/project"
    assert job.job_image == "gcr.io/kaniko-project/executor:debug"


@pytest.mark.parametrize("value", [
    pytest.param("line\nbreak\x1b[31m", id="control-characters"),
    pytest.param("x" * 500, id="long"),
    pytest.param("\u0661\u0662", id="non-ascii-digits"),
])
def test_hostile_display_values_are_made_safe(job_in: Any, value: str) -> None:
    """A claimed value is shown on one printable line of at most 100 characters."""
    job = job_in(CUSTOM_ENV_CI_PIPELINE_ID=value, CUSTOM_ENV_CI_PROJECT_PATH=value)
    for shown in (job.pipeline_id, job.project_path):
        assert shown.isprintable() and len(shown) <= 100


def test_from_env_defaults_to_the_process_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a mapping, `from_env` reads os.environ."""
    monkeypatch.setenv("JOB_RESPONSE_FILE", _response_file(tmp_path, PAYLOAD))
    assert JobContext.from_env().job_id == "42"


def test_missing_payload_variable_names_it() -> None:
    """Without JOB_RESPONSE_FILE the stage fails naming it and the runner version needed."""
    with pytest.raises(ConfigError, match=r"JOB_RESPONSE_FILE is not set.*gitlab-runner 14\.1"):
        JobContext.from_env({"CUSTOM_ENV_CI_JOB_ID": "42", "CUSTOM_ENV_CI_PROJECT_ID": "7"})


@pytest.mark.parametrize(("payload", "message"), [
    pytest.param(None, "No such file", id="missing-file"),
    pytest.param("{not json", "not JSON", id="invalid-json"),
    pytest.param(b"\xff\xfe", "not JSON", id="not-utf8"),
    pytest.param("[1, 2]", "expected a JSON object, got a list", id="array"),
    pytest.param({**PAYLOAD, "id": None}, "id is missing", id="no-id"),
    pytest.param({**PAYLOAD, "id": "42"}, "id: expected an integer, got a string",
                 id="id-string"),
    pytest.param({**PAYLOAD, "id": True}, "id: expected an integer, got a boolean",
                 id="id-boolean"),
    pytest.param({**PAYLOAD, "id": 4.5}, "id: expected an integer, got a number",
                 id="id-float"),
    pytest.param({**PAYLOAD, "id": 0}, "id: expected an id between 1 and", id="id-zero"),
    pytest.param({**PAYLOAD, "id": 2**64}, "id: expected an id between 1 and",
                 id="id-too-large"),
    pytest.param({**PAYLOAD, "job_info": None}, "job_info.project_id is missing",
                 id="no-job-info"),
    pytest.param({**PAYLOAD, "job_info": [7]},
                 "job_info.project_id: expected an object at 'project_id', got a list",
                 id="job-info-list"),
    pytest.param({**PAYLOAD, "job_info": {"project_id": "7"}},
                 "job_info.project_id: expected an integer, got a string",
                 id="project-id-string"),
    pytest.param({**PAYLOAD, "runner_info": {"timeout": "3600"}},
                 "runner_info.timeout: expected an integer number of seconds, got a string",
                 id="timeout-string"),
    pytest.param({**PAYLOAD, "runner_info": {"timeout": 10**20}},
                 f"runner_info.timeout: expected 1 to {MAX_JOB_TIMEOUT_SECONDS} seconds",
                 id="timeout-overflows"),
    pytest.param({**PAYLOAD, "runner_info": {"timeout": -5}},
                 f"runner_info.timeout: expected 1 to {MAX_JOB_TIMEOUT_SECONDS} seconds",
                 id="timeout-negative"),
])
def test_malformed_payload_names_the_file_and_field(tmp_path: Path, payload: Any,
                                                    message: str) -> None:
    """A payload that is missing, not JSON, or has a wrong field: one line naming both."""
    path = tmp_path / "response.json"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    elif isinstance(payload, str):
        path.write_text(payload, encoding="utf-8")
    elif payload is not None:
        path.write_text(json.dumps({k: v for k, v in payload.items() if v is not None}),
                        encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        JobContext.from_env({"JOB_RESPONSE_FILE": str(path)})
    text = str(caught.value)
    assert text.startswith(f"reading the job payload {path} (JOB_RESPONSE_FILE): ")
    assert message in text and "\n" not in text


def test_payload_without_timeout_falls_back_to_the_variable(job_in: Any) -> None:
    """With no runner_info.timeout the (checked) CI_JOB_TIMEOUT variable is used."""
    payload = {k: v for k, v in PAYLOAD.items() if k != "runner_info"}
    assert job_in(payload, CUSTOM_ENV_CI_JOB_TIMEOUT="1800").timeout_seconds == 1800
    assert job_in(payload).timeout_seconds is None


@pytest.mark.parametrize("value", [
    pytest.param("99999999999999999999", id="absurd"),
    pytest.param(str(MAX_JOB_TIMEOUT_SECONDS + 1), id="over-a-month"),
    pytest.param("0", id="zero"),
    pytest.param("-1", id="negative"),
    pytest.param("1.5", id="decimal"),
    pytest.param("12a", id="trailing-letter"),
    pytest.param("\u00b2", id="superscript-digit"),
    pytest.param("\u0661\u0662", id="non-ascii-digits"),
])
def test_hostile_timeout_variable_fails_the_job_naming_it(job_in: Any, value: str) -> None:
    """A bad CI_JOB_TIMEOUT (used without a payload timeout) is the job's failure, named."""
    payload = {k: v for k, v in PAYLOAD.items() if k != "runner_info"}
    with pytest.raises(JobFailed) as caught:
        job_in(payload, CUSTOM_ENV_CI_JOB_TIMEOUT=value)
    text = str(caught.value)
    assert "CUSTOM_ENV_CI_JOB_TIMEOUT" in text and "\n" not in text


def test_payload_reads_alone(tmp_path: Path) -> None:
    """`JobPayload.read` gives the ids as strings and the timeout as an int."""
    payload = JobPayload.read(_response_file(tmp_path, PAYLOAD))
    assert (payload.job_id, payload.project_id, payload.timeout_seconds) == ("42", "7", 3600)


# --- the nonce ------------------------------------------------------------------------------


def test_new_nonces_are_random_label_values() -> None:
    """A nonce is 32 lowercase hex characters, and no two are alike."""
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(n) == 32 and set(n) <= set("0123456789abcdef") for n in nonces)


def test_nonce_comes_from_job_env(job_in: Any) -> None:
    """The nonce `config` put in job_env is the job's."""
    nonce = new_nonce()
    assert job_in(**{NONCE_KEY: nonce}).nonce == nonce


def test_job_cannot_set_the_nonce(job_in: Any) -> None:
    """CUSTOM_ENV_RUNNER_DRIVER_NONCE (a job variable) is not a nonce."""
    assert job_in(**{f"CUSTOM_ENV_{NONCE_KEY}": new_nonce()}).nonce == ""


def test_malformed_nonce_is_no_nonce(job_in: Any) -> None:
    """A job_env nonce that is not 32 hex characters is ignored, not trusted."""
    assert job_in(**{NONCE_KEY: "not-a-nonce"}).nonce == ""


def test_nonce_comes_from_the_record_without_config(job_in: Any, tmp_path: Path) -> None:
    """Without a config stage, the nonce `prepare` recorded in TMPDIR is the job's."""
    tmp = tmp_path / "job"
    tmp.mkdir(mode=0o700)
    nonce = new_nonce()
    jobrecord.write(str(tmp), jobrecord.PodRecord("ns", "pod", nonce))
    job = job_in(TMPDIR=str(tmp))
    assert (job.nonce, job.tmpdir) == (nonce, str(tmp))


def test_relative_tmpdir_is_ignored(job_in: Any) -> None:
    """A TMPDIR that is not absolute is no job directory."""
    assert job_in(TMPDIR="relative/dir").tmpdir == ""


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
def test_services_are_read_by_name(job_in: Any, raw: str, expected: tuple[str, ...]) -> None:
    """CI_JOB_SERVICES gives one entry per array item: its name, or `(unnamed)`."""
    assert job_in(CUSTOM_ENV_CI_JOB_SERVICES=raw).services == expected


def test_absent_services_variable_means_no_services(job_in: Any) -> None:
    """Without CI_JOB_SERVICES the job declares no services."""
    assert job_in().services == ()


@pytest.mark.parametrize(("raw", "message"), [
    pytest.param("[{", "CUSTOM_ENV_CI_JOB_SERVICES is not JSON", id="invalid-json"),
    pytest.param("postgres", "CUSTOM_ENV_CI_JOB_SERVICES is not JSON", id="bare-word"),
    pytest.param('{"name": "postgres"}', "CUSTOM_ENV_CI_JOB_SERVICES must be a JSON array",
                 id="object"),
    pytest.param('"postgres"', "CUSTOM_ENV_CI_JOB_SERVICES must be a JSON array",
                 id="string"),
    pytest.param("null", "CUSTOM_ENV_CI_JOB_SERVICES must be a JSON array", id="null"),
])
def test_malformed_services_name_the_variable(job_in: Any, raw: str, message: str) -> None:
    """CI_JOB_SERVICES that is not a JSON array is a ConfigError naming the variable."""
    with pytest.raises(ConfigError, match=message):
        job_in(CUSTOM_ENV_CI_JOB_SERVICES=raw)


# --- secrets ------------------------------------------------------------------------------


def test_credential_variables_are_secrets(job_in: Any) -> None:
    """CI_JOB_TOKEN and CI_REGISTRY_PASSWORD values are collected, sorted and deduplicated."""
    job = job_in(CUSTOM_ENV_CI_JOB_TOKEN="glcbt-job-token-123",
               CUSTOM_ENV_CI_REGISTRY_PASSWORD="registry-password-456",
               CUSTOM_ENV_CI_BUILD_TOKEN="glcbt-job-token-123")
    assert job.secrets == ("glcbt-job-token-123", "registry-password-456")


@pytest.mark.parametrize("name", SECRET_VARIABLES)
def test_every_credential_variable_is_a_secret(job_in: Any, name: str) -> None:
    """Each variable that always holds a credential is collected from its CUSTOM_ENV_ form."""
    assert job_in(**{f"CUSTOM_ENV_{name}": SECRET}).secrets == (SECRET,)


def test_ordinary_variables_are_not_secrets(job_in: Any) -> None:
    """Values of variables outside the credential list are not collected."""
    assert job_in(CUSTOM_ENV_CI_PROJECT_PATH="group/long-project-name").secrets == ()


def test_short_secret_values_are_ignored(job_in: Any) -> None:
    """Values under 8 characters are not collected (they would mask ordinary words)."""
    job = job_in({**PAYLOAD, "variables": [
        {"key": "SHORT", "value": "1234567", "masked": True},
        {"key": "EIGHT", "value": "12345678", "masked": True}]},
        CUSTOM_ENV_CI_JOB_TOKEN="short")
    assert job.secrets == ("12345678",)


def test_masked_variables_from_the_response_file_are_secrets(job_in: Any) -> None:
    """Masked variables of the job payload are collected; unmasked ones are not."""
    job = job_in({**PAYLOAD, "variables": [
        {"key": "DEPLOY_KEY", "value": "masked-value-1", "masked": True},
        {"key": "PUBLIC_URL", "value": "https://example.com/public", "masked": False},
        {"key": "NO_FLAG", "value": "no-masked-flag-here"},
        {"key": "API_KEY", "value": "masked-value-2", "masked": True}]})
    assert job.secrets == ("masked-value-1", "masked-value-2")


def test_response_file_token_is_a_secret(job_in: Any) -> None:
    """The job token in the payload's `token` field is collected with the env credentials."""
    job = job_in({**PAYLOAD, "token": "payload-job-token"},
                 CUSTOM_ENV_CI_REGISTRY_PASSWORD=SECRET)
    assert job.secrets == ("payload-job-token", SECRET)


def test_registry_credentials_in_the_payload_are_secrets(job_in: Any) -> None:
    """Passwords of the payload's `credentials` list are collected, with each login's
    `user:password` (whose base64 config.json holds); malformed entries are skipped."""
    job = job_in({**PAYLOAD, "credentials": [
        {"type": "registry", "url": "registry.example.com", "username": "u",
         "password": "registry-pass-1"}, {"type": "registry", "password": 5}, "odd"]})
    assert job.secrets == ("registry-pass-1", "u:registry-pass-1")
    assert [(c.registry, c.username) for c in job.registries] == [("registry.example.com", "u")]


@pytest.mark.parametrize("fields", [
    pytest.param({"variables": "masked"}, id="variables-not-a-list"),
    pytest.param({"variables": ["x", None, 3]}, id="variables-not-objects"),
    pytest.param({"token": 12345678}, id="token-not-a-string"),
    pytest.param({"credentials": {"password": "x" * 10}}, id="credentials-not-a-list"),
])
def test_odd_secret_fields_are_tolerated(job_in: Any, fields: dict[str, Any]) -> None:
    """Odd secret-bearing fields add no secrets and raise nothing (identity is intact)."""
    job = job_in({**PAYLOAD, **fields}, CUSTOM_ENV_CI_JOB_TOKEN=SECRET)
    assert job.secrets == (SECRET,)


def test_secrets_are_not_in_the_repr(job_in: Any) -> None:
    """The job's repr (as in a traceback or debug log) never shows secret values."""
    job = job_in(CUSTOM_ENV_CI_JOB_TOKEN=SECRET)
    assert job.secrets == (SECRET,)
    assert SECRET not in repr(job)


# --- job_env from `config` ----------------------------------------------------------------


def test_job_env_keys_are_read_unprefixed(job_in: Any) -> None:
    """RUNNER_DRIVER_POD and RUNNER_DRIVER_NAMESPACE from `config`'s job_env are read."""
    job = job_in(RUNNER_DRIVER_POD="runner-project-7-job-42", RUNNER_DRIVER_NAMESPACE="ci")
    assert job.pod_name_from_config == "runner-project-7-job-42"
    assert job.namespace_from_config == "ci"


def test_job_cannot_set_job_env_keys(job_in: Any) -> None:
    """CUSTOM_ENV_RUNNER_DRIVER_* (a job variable) does not name the pod or namespace."""
    job = job_in(CUSTOM_ENV_RUNNER_DRIVER_POD="someone-elses-pod",
               CUSTOM_ENV_RUNNER_DRIVER_NAMESPACE="kube-system")
    assert (job.pod_name_from_config, job.namespace_from_config) == ("", "")
