"""The runner's environment, read once into a typed job value.

gitlab-runner passes everything through environment variables: the exit codes it
expects, the file for the script's exit code, the job payload file, the `job_env`
that `config` returned (unprefixed) and every job variable as `CUSTOM_ENV_<NAME>`.
Stages read those only through `JobContext`, so a wrong or missing variable is
reported once, by name.

Every CUSTOM_ENV_* value is written by the job's author and may be hostile: GitLab
appends a job's own `variables:` after the predefined ones, so a job can claim another
job's CI_JOB_ID, CI_PROJECT_ID or CI_RUNNER_SHORT_TOKEN. Identity therefore comes only
from JOB_RESPONSE_FILE (which the runner writes) and from job_env (which our `config`
stage returned); the claimed values are kept for display. This module must not talk
to the cluster or print.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_hex
from typing import Any, TextIO

from . import jobrecord
from .errors import ConfigError, JobFailed

PREFIX = "CUSTOM_ENV_"
RESPONSE_KEY = "JOB_RESPONSE_FILE"
# job_env keys that `config` hands to the later stages. gitlab-runner adds job_env
# unprefixed and every job variable prefixed, so no job can set these.
POD_KEY = "RUNNER_DRIVER_POD"
NAMESPACE_KEY = "RUNNER_DRIVER_NAMESPACE"
NONCE_KEY = jobrecord.NONCE_KEY
# GitLab ids are int64; a job timeout is at most a month in GitLab (project and runner
# timeouts are capped there), so anything longer is a broken or hostile value, and
# this bound keeps activeDeadlineSeconds (timeout + margin) far from overflowing.
MAX_ID = 2**63 - 1
MAX_JOB_TIMEOUT_SECONDS = 31 * 24 * 3600
DISPLAY_LIMIT = 100
# GitLab's per-job pod variables (KUBERNETES_CPU_LIMIT, KUBERNETES_NODE_SELECTOR_*, ...).
OVERRIDE_PREFIX = "KUBERNETES_"
# Job variables that always hold credentials, whether or not the project masks them.
SECRET_VARIABLES = ("CI_JOB_TOKEN", "CI_BUILD_TOKEN", "CI_REGISTRY_PASSWORD",
                    "CI_DEPENDENCY_PROXY_PASSWORD", "CI_DEPLOY_PASSWORD",
                    "DOCKER_AUTH_CONFIG")
# The job variables registry logins come from (see `credentials`).
REGISTRY_VARIABLES = ("CI_REGISTRY", "CI_REGISTRY_USER", "CI_REGISTRY_PASSWORD",
                      "CI_DEPENDENCY_PROXY_SERVER", "CI_DEPENDENCY_PROXY_USER",
                      "CI_DEPENDENCY_PROXY_PASSWORD", "DOCKER_AUTH_CONFIG")


@dataclass(frozen=True)
class ExitCodes:
    """What the runner wants to see for each outcome."""

    build_failure: int = 1
    system_failure: int = 2
    build_exit_code_file: Path | None = None


@dataclass(frozen=True)
class StageIO:
    """Where one stage reads its environment and writes its output.

    A stage process has its own; the agent runs each stage it takes with the
    environment and two pipes its stage process sent, so no stage reads another's.
    """

    environ: Mapping[str, str]
    out: TextIO
    err: TextIO

    @classmethod
    def of_process(cls) -> StageIO:
        """This process's environment, stdout and stderr."""
        return cls(os.environ, sys.stdout, sys.stderr)

    @classmethod
    def on_fds(cls, environ: Mapping[str, str], out_fd: int, err_fd: int) -> StageIO:
        """Text streams over two descriptors (which stay the caller's to close)."""
        def stream(fd: int, errors: str) -> TextIO:
            return open(fd, "w", encoding="utf-8", errors=errors,
                        closefd=False)

        return cls(environ, stream(out_fd, "strict"), stream(err_fd, "backslashreplace"))


def exit_codes(environ: Mapping[str, str]) -> ExitCodes:
    """The runner's exit-code contract; falls back to its documented constants (1, 2).

    This never fails: it is read first, so that even a broken environment is
    reported with the exit code the runner expects.
    """
    def number(name: str, default: int) -> int:
        value = environ.get(name, "").strip()
        # isascii: "²".isdigit() is true, but int("²") raises.
        return int(value) if value.isascii() and value.isdigit() else default

    path = environ.get("BUILD_EXIT_CODE_FILE", "")
    return ExitCodes(number("BUILD_FAILURE_EXIT_CODE", 1),
                     number("SYSTEM_FAILURE_EXIT_CODE", 2),
                     Path(path) if path else None)


@dataclass(frozen=True)
class RegistryCredential:
    """A registry login the runner vouches for (the payload's `credentials` list)."""

    registry: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class JobPayload:
    """What the runner vouches for about the job, from JOB_RESPONSE_FILE.

    gitlab-runner writes the job payload GitLab sent it to this file (mode 0600) before
    `config` runs. Nothing in `.gitlab-ci.yml` can change its `id`, `job_info` or
    `runner_info`, unlike the CUSTOM_ENV_* variables, which a job's own `variables:`
    may override (predefined ones included).
    """

    job_id: str
    project_id: str
    timeout_seconds: int | None
    secrets: tuple[str, ...] = field(default=(), repr=False)
    registries: tuple[RegistryCredential, ...] = field(default=(), repr=False)

    @classmethod
    def read(cls, path: str) -> JobPayload:
        """Parse the payload file at `path`.

        Raises:
            ConfigError: naming the file and the field that is missing or malformed.
        """
        where = f"reading the job payload {path} ({RESPONSE_KEY})"
        try:
            payload = json.loads(Path(path).read_bytes())
        except OSError as error:
            raise ConfigError(f"{where}: {error.strerror or error}") from error
        except ValueError as error:
            raise ConfigError(f"{where}: not JSON: {error}") from error
        if not isinstance(payload, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {_json_kind(payload)}")

        def get(dotted: str) -> Any:
            value: Any = payload
            for key in dotted.split("."):
                if value is not None and not isinstance(value, dict):
                    raise ConfigError(f"{where}: {dotted}: expected an object at {key!r}, "
                                      f"got {_json_kind(value)}")
                value = None if value is None else value.get(key)
            return value

        def integer(dotted: str, value: object, high: int, kind: str, bounds: str) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}: {dotted}: expected {kind}, got "
                                  f"{_json_kind(value)}")
            if not 0 < value <= high:
                raise ConfigError(f"{where}: {dotted}: expected {bounds}, got {value}")
            return value

        def identifier(dotted: str) -> str:
            value = get(dotted)
            if value is None:
                raise ConfigError(f"{where}: {dotted} is missing")
            return str(integer(dotted, value, MAX_ID, "an integer",
                               f"an id between 1 and {MAX_ID}"))

        timeout = get("runner_info.timeout")
        if timeout is not None:
            timeout = integer("runner_info.timeout", timeout, MAX_JOB_TIMEOUT_SECONDS,
                              "an integer number of seconds",
                              f"1 to {MAX_JOB_TIMEOUT_SECONDS} seconds")
        return cls(job_id=identifier("id"), project_id=identifier("job_info.project_id"),
                   timeout_seconds=timeout, secrets=_payload_secrets(payload),
                   registries=_registries(payload))


@dataclass(frozen=True)
class JobContext:
    """One CI job as the runner describes it to every stage.

    `job_id`, `project_id` and `timeout_seconds` come from the payload the runner vouches
    for, `nonce` from what our own `config` stage minted (job_env, or the record
    `prepare` left when there is no `config` stage): these alone name, label and find the
    job's objects. The other fields are what the job's variables claim; they are shown
    to people (annotations, log lines) and never used to find or trust anything.
    """

    job_id: str
    project_id: str
    timeout_seconds: int | None
    nonce: str
    tmpdir: str
    pipeline_id: str = ""
    runner_id: str = ""
    runner_short_token: str = ""
    project_path: str = ""
    job_image: str = ""
    services: tuple[str, ...] = ()
    pod_name_from_config: str = ""
    namespace_from_config: str = ""
    # The job's KUBERNETES_* variables (name without prefix, value): requests to change
    # the pod, which `overrides` grants only within the operator's caps.
    pod_requests: tuple[tuple[str, str], ...] = ()
    # Registry logins: the payload's, and the job's own registry variables (hostile
    # values are only ever put into the job's own config.json).
    registries: tuple[RegistryCredential, ...] = field(default=(), repr=False)
    registry_variables: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # The CA the runner verified GitLab with (the file variable CI_SERVER_TLS_CA_FILE,
    # whose value is the PEM text): trusted in the pod too.
    server_ca: str = field(default="", repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> JobContext:
        """Read the job from the runner's environment.

        Raises:
            ConfigError: JOB_RESPONSE_FILE is missing or malformed (naming the field).
            JobFailed: a job variable the driver must use holds a hostile value (naming
                the variable); retrying cannot help, so it is the job's failure.
        """
        env = os.environ if environ is None else environ
        response = env.get(RESPONSE_KEY, "")
        if not response:
            raise ConfigError(f"reading the job: {RESPONSE_KEY} is not set; runner-driver "
                              "stages must be started by gitlab-runner 14.1 or later "
                              "(custom executor)")
        payload = JobPayload.read(response)
        tmpdir = env.get("TMPDIR", "")
        tmpdir = tmpdir if os.path.isabs(tmpdir) else ""
        nonce = jobrecord.job_nonce(env.get(NONCE_KEY, ""), tmpdir)
        timeout = payload.timeout_seconds
        if timeout is None:
            timeout = _timeout_variable(env.get(PREFIX + "CI_JOB_TIMEOUT", ""))
        return cls(
            job_id=payload.job_id,
            project_id=payload.project_id,
            timeout_seconds=timeout,
            nonce=nonce,
            tmpdir=tmpdir,
            pipeline_id=_display(env.get(PREFIX + "CI_PIPELINE_ID", "")),
            runner_id=_display(env.get(PREFIX + "CI_RUNNER_ID", "")),
            runner_short_token=_display(env.get(PREFIX + "CI_RUNNER_SHORT_TOKEN", "")),
            project_path=_display(env.get(PREFIX + "CI_PROJECT_PATH", "")),
            job_image=env.get(PREFIX + "CI_JOB_IMAGE", "").strip(),
            services=_services(env),
            pod_name_from_config=env.get(POD_KEY, ""),
            namespace_from_config=env.get(NAMESPACE_KEY, ""),
            pod_requests=tuple(sorted(
                (name[len(PREFIX):], value) for name, value in env.items()
                if name.startswith(PREFIX + OVERRIDE_PREFIX))),
            registries=payload.registries,
            registry_variables=tuple((name, env[PREFIX + name]) for name in REGISTRY_VARIABLES
                                     if env.get(PREFIX + name)),
            server_ca=_pem(env.get(PREFIX + "CI_SERVER_TLS_CA_FILE", "")),
            secrets=_secrets(env, payload),
        )


def new_nonce() -> str:
    """A fresh per-job nonce: 128 random bits, valid as a label value."""
    return token_hex(16)


def _timeout_variable(raw: str) -> int | None:
    """CI_JOB_TIMEOUT, used only when the payload has no runner_info.timeout."""
    value = raw.strip()
    if not value:
        return None
    name = PREFIX + "CI_JOB_TIMEOUT"
    if not (value.isascii() and value.isdigit()):
        raise JobFailed(f"reading the job's timeout: {name} must be a whole number of "
                        f"seconds, got {_display(value)!r}")
    # int() of a long digit string is slow and pointless: anything this long is too big.
    seconds = int(value) if len(value) <= 12 else MAX_JOB_TIMEOUT_SECONDS + 1
    if not 0 < seconds <= MAX_JOB_TIMEOUT_SECONDS:
        raise JobFailed(f"reading the job's timeout: {name} must be between 1 and "
                        f"{MAX_JOB_TIMEOUT_SECONDS} seconds, got {_display(value)!r}")
    return seconds


def _display(value: str) -> str:
    """A job-claimed value made safe to show: printable, one line, bounded."""
    cleaned = "".join(c if c.isprintable() else "?" for c in value.strip())
    return cleaned[:DISPLAY_LIMIT]


def _json_kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _services(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get(PREFIX + "CI_JOB_SERVICES", "").strip()
    if not raw:
        return ()
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ConfigError("reading the job from the environment: "
                          f"{PREFIX}CI_JOB_SERVICES is not JSON: {error}") from error
    if not isinstance(parsed, list):
        raise ConfigError("reading the job from the environment: "
                          f"{PREFIX}CI_JOB_SERVICES must be a JSON array")
    names = []
    for item in parsed:
        name = item.get("name") if isinstance(item, dict) else None
        names.append(_display(str(name)) if name else "(unnamed)")
    return tuple(names)


def _payload_secrets(payload: dict[str, Any]) -> tuple[str, ...]:
    """The payload's secrets: the job token, masked variables, registry passwords."""
    found: set[str] = set()
    token = payload.get("token")
    if isinstance(token, str):
        found.add(token)
    variables = payload.get("variables")
    for variable in variables if isinstance(variables, list) else ():
        if isinstance(variable, dict) and variable.get("masked"):
            found.add(str(variable.get("value", "")))
    credentials = payload.get("credentials")
    for credential in credentials if isinstance(credentials, list) else ():
        if isinstance(credential, dict) and isinstance(credential.get("password"), str):
            found.add(credential["password"])
    return tuple(found)


def _pem(value: str) -> str:
    """`value` if it holds PEM certificates (a file variable's text), else ""."""
    return value if "-----BEGIN CERTIFICATE-----" in value else ""


def _registries(payload: dict[str, Any]) -> tuple[RegistryCredential, ...]:
    """The payload's registry logins (`credentials` entries of type registry)."""
    found = []
    credentials = payload.get("credentials")
    for item in credentials if isinstance(credentials, list) else ():
        if not isinstance(item, dict) or item.get("type") != "registry":
            continue
        url, user, password = (item.get(k) for k in ("url", "username", "password"))
        if all(isinstance(v, str) and v for v in (url, user, password)):
            found.append(RegistryCredential(str(url), str(user), str(password)))
    return tuple(found)


def _secrets(env: Mapping[str, str], payload: JobPayload) -> tuple[str, ...]:
    """Values no log line may show: credential variables, the payload's secrets, and each
    `user:password` login (config.json holds its base64)."""
    found = {env.get(PREFIX + name, "") for name in SECRET_VARIABLES} | set(payload.secrets)
    logins = [(c.username, c.password) for c in payload.registries]
    for user, password in (("CI_REGISTRY_USER", "CI_REGISTRY_PASSWORD"),
                           ("CI_DEPENDENCY_PROXY_USER", "CI_DEPENDENCY_PROXY_PASSWORD")):
        logins.append((env.get(PREFIX + user, ""), env.get(PREFIX + password, "")))
    found |= {f"{user}:{password}" for user, password in logins if user and password}
    # Very short values would redact ordinary words; GitLab refuses to mask < 8 chars.
    return tuple(sorted(v for v in found if len(v) >= 8))
