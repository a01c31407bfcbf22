"""Registry logins for kaniko: one `config.json` per job, merged per registry from four sources.

GitLab's kaniko guide has every team write `/kaniko/.docker/config.json` by hand with
echo, base64 and awk. The driver writes it instead, from, lowest to highest
precedence: the operator's registry Secrets (`[registry] secrets`), the job's own
registry login (the payload's `credentials`, which the runner vouches for, else
CI_REGISTRY, CI_REGISTRY_USER and CI_REGISTRY_PASSWORD), the dependency proxy
(CI_DEPENDENCY_PROXY_SERVER with its port stripped, as Docker keys it, plus its user
and password), and DOCKER_AUTH_CONFIG (the job's explicit choice wins). A later
source replaces an earlier one's entry for the same registry, whether a login
(`auths`) or a credential helper (`credHelpers`); a `credsStore` is kept only if no
later source gives a login (Docker and kaniko would use it before any `auths`).
Pure: no I/O; nothing here may put a secret into a message.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import JobFailed
from .runner_env import JobContext

DOCKER_AUTH_CONFIG = "DOCKER_AUTH_CONFIG"
# The key of a kubernetes.io/dockerconfigjson Secret (a key name, not a password).
SECRET_KEY = ".dockerconfigjson"  # noqa: S105


@dataclass(frozen=True)
class DockerConfig:
    """The job's config.json and, per registry, where its login came from."""

    config: dict[str, Any] = field(repr=False)
    sources: tuple[tuple[str, str], ...]

    @property
    def empty(self) -> bool:
        """No login and no helper: nothing to write."""
        return not any(self.config.get(k) for k in ("auths", "credHelpers", "credsStore"))

    def summary(self) -> str:
        """One job-log line: which registries have a login, from which source. No secret."""
        if self.empty:
            return "Registry credentials for kaniko: none (no job, operator or " \
                   "DOCKER_AUTH_CONFIG login)"
        parts = [f"{registry} ({source})" for registry, source in self.sources]
        helpers = self.config.get("credHelpers") or {}
        parts += [f"{registry} (credential helper {helper})"
                  for registry, helper in sorted(helpers.items())]
        if self.config.get("credsStore"):
            parts.append(f"any other registry (credential store {self.config['credsStore']})")
        return "Registry credentials for kaniko: " + ", ".join(parts)

    def json_bytes(self) -> bytes:
        """config.json as written into the job's Secret."""
        return json.dumps(self.config, sort_keys=True).encode()


def docker_config(job: JobContext, operator: tuple[tuple[str, dict[str, Any]], ...] = ()
                  ) -> DockerConfig:
    """The job's config.json from every source, lowest precedence first.

    `operator` holds (Secret name, its parsed .dockerconfigjson) pairs.

    Raises:
        JobFailed: DOCKER_AUTH_CONFIG is not a JSON object of the config.json shape; the
            message names the variable and the JSON error's position, never the value.
    """
    auths: dict[str, Any] = {}
    sources: dict[str, str] = {}
    helpers: dict[str, str] = {}
    store = ""

    def take(config: dict[str, Any], source: str) -> None:
        # Docker and kaniko use a registry's credHelpers entry before its auths entry,
        # and a credsStore before any auths: so a later source's login must remove what
        # an earlier one would have used instead, or it would be shadowed.
        nonlocal store
        given = config.get("auths") or {}
        if given:
            store = ""
        for registry, entry in given.items():
            auths[registry] = entry
            sources[registry] = source
            helpers.pop(registry, None)
        for registry, helper in (config.get("credHelpers") or {}).items():
            helpers[registry] = helper
            auths.pop(registry, None)
            sources.pop(registry, None)
        store = config.get("credsStore") or store

    for name, given in operator:
        take(given, f"operator secret {name}")
    variables = dict(job.registry_variables)
    if job.registries:
        for login in job.registries:
            take({"auths": {login.registry: _auth(login.username, login.password)}},
                 "the job's registry login")
    elif all(variables.get(k) for k in ("CI_REGISTRY", "CI_REGISTRY_USER",
                                          "CI_REGISTRY_PASSWORD")):
        take({"auths": {variables["CI_REGISTRY"]: _auth(variables["CI_REGISTRY_USER"],
                                                        variables["CI_REGISTRY_PASSWORD"])}},
             "CI_REGISTRY_USER")
    proxy = variables.get("CI_DEPENDENCY_PROXY_SERVER", "")
    if proxy and variables.get("CI_DEPENDENCY_PROXY_USER") \
            and variables.get("CI_DEPENDENCY_PROXY_PASSWORD"):
        # Docker keys the dependency proxy by host alone (GitLab's kaniko guide strips
        # the port with awk for this reason).
        host = proxy.rpartition(":")[0] if proxy.rpartition(":")[2].isdigit() else proxy
        take({"auths": {host: _auth(variables["CI_DEPENDENCY_PROXY_USER"],
                                    variables["CI_DEPENDENCY_PROXY_PASSWORD"])}},
             "dependency proxy")
    if variables.get(DOCKER_AUTH_CONFIG):
        take(parse(variables[DOCKER_AUTH_CONFIG], DOCKER_AUTH_CONFIG), DOCKER_AUTH_CONFIG)
    merged: dict[str, Any] = {"auths": auths}
    if helpers:
        merged["credHelpers"] = helpers
    if store:
        merged["credsStore"] = store
    return DockerConfig(merged, tuple(sorted(sources.items())))


def parse(text: str, what: str) -> dict[str, Any]:
    """A config.json given as text (a variable or a Secret's value), checked for shape.

    Raises:
        JobFailed: naming `what` and the position of the JSON error, never the value.
    """
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        # The message of a JSONDecodeError is the reason and the position only.
        reason = error.msg.removesuffix(" at")  # some messages end in "at" already
        raise JobFailed(f"reading {what}: not JSON: {reason} at line {error.lineno} "
                        f"column {error.colno} (char {error.pos})") from None
    except (ValueError, RecursionError):
        # Valid JSON that Python will not read: nested too deeply (RecursionError) or an
        # integer of more than sys.get_int_max_str_digits() digits (ValueError).
        raise JobFailed(f"reading {what}: not JSON the driver can read (nested too deeply "
                        "or a number too long)") from None
    if not isinstance(config, dict):
        raise JobFailed(f"reading {what}: expected a JSON object like "
                        '{"auths": {"registry.example.com": {"auth": "..."}}}')
    for key, kind in (("auths", dict), ("credHelpers", dict), ("credsStore", str)):
        if key in config and not isinstance(config[key], kind):
            raise JobFailed(f"reading {what}: {key} must be a JSON "
                            f"{'object' if kind is dict else 'string'}")
    for registry, entry in (config.get("auths") or {}).items():
        if not isinstance(entry, dict):
            raise JobFailed(f"reading {what}: auths[{registry!r}] must be a JSON object")
    return config


def _auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
