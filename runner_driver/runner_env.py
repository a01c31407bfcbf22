"""The runner's environment, read once into a typed job value.

gitlab-runner passes everything through environment variables: the exit codes it
expects, the file for the script's exit code, the job payload file, the `job_env`
that `config` returned (unprefixed) and every job variable as `CUSTOM_ENV_<NAME>`.
Stages read those only through `JobContext`, so a wrong or missing variable is
reported once, by name. This module must not talk to the cluster or print.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

PREFIX = "CUSTOM_ENV_"
# job_env keys that `config` hands to the later stages.
POD_KEY = "RUNNER_DRIVER_POD"
NAMESPACE_KEY = "RUNNER_DRIVER_NAMESPACE"
# Job variables that always hold credentials, whether or not the project masks them.
SECRET_VARIABLES = ("CI_JOB_TOKEN", "CI_BUILD_TOKEN", "CI_REGISTRY_PASSWORD",
                    "CI_DEPENDENCY_PROXY_PASSWORD", "CI_DEPLOY_PASSWORD",
                    "DOCKER_AUTH_CONFIG")
_TOKEN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class ExitCodes:
    """What the runner wants to see for each outcome."""

    build_failure: int = 1
    system_failure: int = 2
    build_exit_code_file: Path | None = None


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
class JobContext:
    """One CI job as the runner describes it to every stage."""

    job_id: str
    project_id: str
    pipeline_id: str
    runner_id: str
    runner_short_token: str
    project_path: str
    job_image: str
    services: tuple[str, ...]
    timeout_seconds: int | None
    pod_name_from_config: str
    namespace_from_config: str
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> JobContext:
        """Read the job from the runner's environment.

        Raises:
            ConfigError: naming the variable that is missing or malformed.
        """
        env = os.environ if environ is None else environ

        def job_var(name: str, *, required: bool = False, digits: bool = False) -> str:
            value = env.get(PREFIX + name, "").strip()
            if required and not value:
                raise ConfigError(
                    f"reading the job from the environment: {PREFIX}{name} is not set; "
                    "runner-driver stages must be started by gitlab-runner (custom executor)")
            if value and digits and not (value.isascii() and value.isdigit()):
                raise ConfigError(f"reading the job from the environment: {PREFIX}{name} "
                                  f"must be a number, got {value!r}")
            return value

        token = job_var("CI_RUNNER_SHORT_TOKEN")
        if token and not _TOKEN.match(token):
            raise ConfigError("reading the job from the environment: "
                              f"{PREFIX}CI_RUNNER_SHORT_TOKEN has unexpected characters")
        timeout = job_var("CI_JOB_TIMEOUT", digits=True)
        return cls(
            job_id=job_var("CI_JOB_ID", required=True, digits=True),
            project_id=job_var("CI_PROJECT_ID", required=True, digits=True),
            pipeline_id=job_var("CI_PIPELINE_ID", digits=True),
            runner_id=job_var("CI_RUNNER_ID", digits=True),
            runner_short_token=token,
            project_path=job_var("CI_PROJECT_PATH"),
            job_image=job_var("CI_JOB_IMAGE"),
            services=_services(env),
            timeout_seconds=int(timeout) if timeout else None,
            pod_name_from_config=env.get(POD_KEY, ""),
            namespace_from_config=env.get(NAMESPACE_KEY, ""),
            secrets=_secrets(env),
        )


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
        names.append(str(name) if name else "(unnamed)")
    return tuple(names)


def _secrets(env: Mapping[str, str]) -> tuple[str, ...]:
    """Values no log line may show: credential variables and the job's masked variables."""
    found = {env.get(PREFIX + name, "") for name in SECRET_VARIABLES}
    response = env.get("JOB_RESPONSE_FILE", "")
    if response:
        try:
            payload = json.loads(Path(response).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            payload = {}
        variables = payload.get("variables") if isinstance(payload, dict) else None
        for variable in variables if isinstance(variables, list) else ():
            if isinstance(variable, dict) and variable.get("masked"):
                found.add(str(variable.get("value", "")))
        token = payload.get("token") if isinstance(payload, dict) else None
        if isinstance(token, str):
            found.add(token)
    # Very short values would redact ordinary words; GitLab refuses to mask < 8 chars.
    return tuple(sorted(v for v in found if len(v) >= 8))
