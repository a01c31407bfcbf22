"""Each job's kaniko config.json: its four sources merged per registry, the summary, bad input."""

from __future__ import annotations

import base64
import copy
import json
import traceback
from dataclasses import dataclass, field
from typing import Any

import pytest

from runner_driver.credentials import DockerConfig, docker_config, parse
from runner_driver.errors import JobFailed
from runner_driver.runner_env import JobContext, RegistryCredential

REGISTRY = "registry.gitlab.example.com"
GITLAB = "gitlab.example.com"
HUB = "https://index.docker.io/v1/"
QUAY = "quay.io"
OTHER = "registry.other.example.com:5050"
ECR = "123.dkr.ecr.eu-west-1.amazonaws.com"
GCR = "gcr.io"
ACR = "corp.azurecr.io"

JOB_TOKEN = "glcbt-job-s3cret-token"
OTHER_TOKEN = "other-s3cret-token"
VAR_PASSWORD = "var-s3cret-password"
PROXY_PASSWORD = "proxy-s3cret-password"
OPS_PASSWORD = "ops-s3cret-password"
MIRROR_PASSWORD = "mirror-s3cret-password"
OVERRIDE_PASSWORD = "override-s3cret-password"
SECRETS = (JOB_TOKEN, OTHER_TOKEN, VAR_PASSWORD, PROXY_PASSWORD, OPS_PASSWORD,
           MIRROR_PASSWORD, OVERRIDE_PASSWORD)

NONE = "Registry credentials for kaniko: none (no job, operator or DOCKER_AUTH_CONFIG login)"
LINE = "Registry credentials for kaniko: "


def auth(user: str, password: str) -> dict[str, str]:
    """A config.json `auths` entry as `docker login` writes it."""
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def logins(config: dict[str, Any]) -> dict[str, str]:
    """Each registry's `auths` entry decoded back to `user:password`."""
    return {registry: base64.b64decode(entry["auth"], validate=True).decode()
            for registry, entry in config["auths"].items()}


def job(registries: tuple[RegistryCredential, ...] = (),
        variables: dict[str, str] | None = None) -> JobContext:
    """A job with these payload logins and registry variables."""
    return JobContext(job_id="1", project_id="2", timeout_seconds=None, nonce="0" * 32,
                      tmpdir="/tmp/x", registries=registries,
                      registry_variables=tuple((variables or {}).items()))


def dac(config: dict[str, Any]) -> dict[str, str]:
    """DOCKER_AUTH_CONFIG holding `config`."""
    return {"DOCKER_AUTH_CONFIG": json.dumps(config)}


PAYLOAD = (RegistryCredential(REGISTRY, "gitlab-ci-token", JOB_TOKEN),)
CI_VARS = {"CI_REGISTRY": REGISTRY, "CI_REGISTRY_USER": "var-user",
           "CI_REGISTRY_PASSWORD": VAR_PASSWORD}
PROXY_VARS = {"CI_DEPENDENCY_PROXY_SERVER": f"{GITLAB}:443",
              "CI_DEPENDENCY_PROXY_USER": "proxy-user",
              "CI_DEPENDENCY_PROXY_PASSWORD": PROXY_PASSWORD}
OPS: tuple[str, dict[str, Any]] = (
    "ops-pull", {"auths": {HUB: auth("ops", OPS_PASSWORD), REGISTRY: auth("ops", OPS_PASSWORD),
                           GITLAB: auth("ops", OPS_PASSWORD)}})
MIRROR: tuple[str, dict[str, Any]] = (
    "ops-mirror", {"auths": {REGISTRY: auth("mirror", MIRROR_PASSWORD),
                             QUAY: auth("mirror", MIRROR_PASSWORD)}})
HELPERS: tuple[str, dict[str, Any]] = (
    "ops-helpers", {"credHelpers": {ECR: "ecr-login", GCR: "gcloud"}, "credsStore": "pass"})


@dataclass(frozen=True)
class Case:
    """One combination of sources and the config.json and summary it must give."""

    operator: tuple[tuple[str, dict[str, Any]], ...] = ()
    registries: tuple[RegistryCredential, ...] = ()
    variables: dict[str, str] = field(default_factory=dict)
    logins: dict[str, str] = field(default_factory=dict)  # registry -> "user:password"
    helpers: dict[str, str] = field(default_factory=dict)
    store: str = ""
    summary: str = NONE

    def config(self) -> dict[str, Any]:
        """The exact config.json this case must produce."""
        expected: dict[str, Any] = {"auths": {
            registry: {"auth": base64.b64encode(login.encode()).decode()}
            for registry, login in self.logins.items()}}
        if self.helpers:
            expected["credHelpers"] = self.helpers
        if self.store:
            expected["credsStore"] = self.store
        return expected


CASES = [
    pytest.param(Case(), id="no-source"),
    pytest.param(Case(
        operator=(OPS,),
        logins={HUB: f"ops:{OPS_PASSWORD}", REGISTRY: f"ops:{OPS_PASSWORD}",
                GITLAB: f"ops:{OPS_PASSWORD}"},
        summary=LINE + f"{GITLAB} (operator secret ops-pull), {HUB} (operator secret ops-pull), "
                       f"{REGISTRY} (operator secret ops-pull)"),
        id="operator-secret"),
    pytest.param(Case(
        operator=(OPS, MIRROR),
        logins={HUB: f"ops:{OPS_PASSWORD}", REGISTRY: f"mirror:{MIRROR_PASSWORD}",
                GITLAB: f"ops:{OPS_PASSWORD}", QUAY: f"mirror:{MIRROR_PASSWORD}"},
        summary=LINE + f"{GITLAB} (operator secret ops-pull), {HUB} (operator secret ops-pull), "
                       f"{QUAY} (operator secret ops-mirror), "
                       f"{REGISTRY} (operator secret ops-mirror)"),
        id="later-operator-secret-wins"),
    pytest.param(Case(
        registries=PAYLOAD,
        logins={REGISTRY: f"gitlab-ci-token:{JOB_TOKEN}"},
        summary=LINE + f"{REGISTRY} (the job's registry login)"),
        id="payload-login"),
    pytest.param(Case(
        registries=(*PAYLOAD, RegistryCredential(OTHER, "deploy", OTHER_TOKEN)),
        logins={REGISTRY: f"gitlab-ci-token:{JOB_TOKEN}", OTHER: f"deploy:{OTHER_TOKEN}"},
        summary=LINE + f"{REGISTRY} (the job's registry login), "
                       f"{OTHER} (the job's registry login)"),
        id="two-payload-logins"),
    pytest.param(Case(
        variables=CI_VARS,
        logins={REGISTRY: f"var-user:{VAR_PASSWORD}"},
        summary=LINE + f"{REGISTRY} (CI_REGISTRY_USER)"),
        id="ci-registry-variables"),
    pytest.param(Case(
        variables={**CI_VARS, "CI_REGISTRY": OTHER},
        logins={OTHER: f"var-user:{VAR_PASSWORD}"},
        summary=LINE + f"{OTHER} (CI_REGISTRY_USER)"),
        id="ci-registry-keeps-its-port"),
    pytest.param(Case(
        registries=PAYLOAD, variables=CI_VARS,
        logins={REGISTRY: f"gitlab-ci-token:{JOB_TOKEN}"},
        summary=LINE + f"{REGISTRY} (the job's registry login)"),
        id="payload-preferred-over-variables-same-registry"),
    pytest.param(Case(
        registries=(RegistryCredential(OTHER, "deploy", OTHER_TOKEN),), variables=CI_VARS,
        logins={OTHER: f"deploy:{OTHER_TOKEN}"},
        summary=LINE + f"{OTHER} (the job's registry login)"),
        id="payload-replaces-variables-entirely"),
    pytest.param(Case(
        operator=(OPS,), registries=PAYLOAD,
        logins={HUB: f"ops:{OPS_PASSWORD}", REGISTRY: f"gitlab-ci-token:{JOB_TOKEN}",
                GITLAB: f"ops:{OPS_PASSWORD}"},
        summary=LINE + f"{GITLAB} (operator secret ops-pull), {HUB} (operator secret ops-pull), "
                       f"{REGISTRY} (the job's registry login)"),
        id="payload-over-operator"),
    pytest.param(Case(
        operator=(OPS,), variables=CI_VARS,
        logins={HUB: f"ops:{OPS_PASSWORD}", REGISTRY: f"var-user:{VAR_PASSWORD}",
                GITLAB: f"ops:{OPS_PASSWORD}"},
        summary=LINE + f"{GITLAB} (operator secret ops-pull), {HUB} (operator secret ops-pull), "
                       f"{REGISTRY} (CI_REGISTRY_USER)"),
        id="variables-over-operator"),
    pytest.param(Case(
        variables=PROXY_VARS,
        logins={GITLAB: f"proxy-user:{PROXY_PASSWORD}"},
        summary=LINE + f"{GITLAB} (dependency proxy)"),
        id="dependency-proxy"),
    pytest.param(Case(
        operator=(OPS,), variables=PROXY_VARS,
        logins={HUB: f"ops:{OPS_PASSWORD}", REGISTRY: f"ops:{OPS_PASSWORD}",
                GITLAB: f"proxy-user:{PROXY_PASSWORD}"},
        summary=LINE + f"{GITLAB} (dependency proxy), {HUB} (operator secret ops-pull), "
                       f"{REGISTRY} (operator secret ops-pull)"),
        id="proxy-over-operator"),
    pytest.param(Case(
        registries=(RegistryCredential(GITLAB, "gitlab-ci-token", JOB_TOKEN),),
        variables=PROXY_VARS,
        logins={GITLAB: f"proxy-user:{PROXY_PASSWORD}"},
        summary=LINE + f"{GITLAB} (dependency proxy)"),
        id="proxy-over-payload-login"),
    pytest.param(Case(
        variables={**CI_VARS, "CI_REGISTRY": GITLAB, **PROXY_VARS},
        logins={GITLAB: f"proxy-user:{PROXY_PASSWORD}"},
        summary=LINE + f"{GITLAB} (dependency proxy)"),
        id="proxy-over-ci-registry-variables"),
    pytest.param(Case(
        registries=PAYLOAD, variables=PROXY_VARS,
        logins={REGISTRY: f"gitlab-ci-token:{JOB_TOKEN}", GITLAB: f"proxy-user:{PROXY_PASSWORD}"},
        summary=LINE + f"{GITLAB} (dependency proxy), {REGISTRY} (the job's registry login)"),
        id="payload-and-proxy"),
    pytest.param(Case(
        variables=dac({"auths": {QUAY: auth("robot", OVERRIDE_PASSWORD)}}),
        logins={QUAY: f"robot:{OVERRIDE_PASSWORD}"},
        summary=LINE + f"{QUAY} (DOCKER_AUTH_CONFIG)"),
        id="docker-auth-config"),
    pytest.param(Case(
        registries=PAYLOAD,
        variables={**PROXY_VARS, **dac({"auths": {REGISTRY: auth("robot", OVERRIDE_PASSWORD),
                                                  GITLAB: auth("robot", OVERRIDE_PASSWORD)}})},
        logins={REGISTRY: f"robot:{OVERRIDE_PASSWORD}", GITLAB: f"robot:{OVERRIDE_PASSWORD}"},
        summary=LINE + f"{GITLAB} (DOCKER_AUTH_CONFIG), {REGISTRY} (DOCKER_AUTH_CONFIG)"),
        id="docker-auth-config-over-payload-and-proxy"),
    pytest.param(Case(
        operator=(OPS,), variables={**CI_VARS, **PROXY_VARS,
                                    **dac({"auths": {HUB: auth("robot", OVERRIDE_PASSWORD)}})},
        logins={HUB: f"robot:{OVERRIDE_PASSWORD}", REGISTRY: f"var-user:{VAR_PASSWORD}",
                GITLAB: f"proxy-user:{PROXY_PASSWORD}"},
        summary=LINE + f"{GITLAB} (dependency proxy), {HUB} (DOCKER_AUTH_CONFIG), "
                       f"{REGISTRY} (CI_REGISTRY_USER)"),
        id="docker-auth-config-over-operator"),
    pytest.param(Case(
        operator=(OPS, MIRROR), registries=PAYLOAD,
        variables={**CI_VARS, **PROXY_VARS,
                   **dac({"auths": {QUAY: auth("robot", OVERRIDE_PASSWORD),
                                    "ghcr.io": auth("gh", OVERRIDE_PASSWORD)}})},
        logins={HUB: f"ops:{OPS_PASSWORD}", REGISTRY: f"gitlab-ci-token:{JOB_TOKEN}",
                GITLAB: f"proxy-user:{PROXY_PASSWORD}", QUAY: f"robot:{OVERRIDE_PASSWORD}",
                "ghcr.io": f"gh:{OVERRIDE_PASSWORD}"},
        summary=LINE + f"ghcr.io (DOCKER_AUTH_CONFIG), {GITLAB} (dependency proxy), "
                       f"{HUB} (operator secret ops-pull), {QUAY} (DOCKER_AUTH_CONFIG), "
                       f"{REGISTRY} (the job's registry login)"),
        id="every-source"),
    pytest.param(Case(
        variables={**CI_VARS, "DOCKER_AUTH_CONFIG": ""},
        logins={REGISTRY: f"var-user:{VAR_PASSWORD}"},
        summary=LINE + f"{REGISTRY} (CI_REGISTRY_USER)"),
        id="empty-docker-auth-config-ignored"),
    pytest.param(Case(variables=dac({})), id="docker-auth-config-empty-object"),
    pytest.param(Case(variables=dac({"auths": {}, "credHelpers": {}, "credsStore": ""})),
                 id="docker-auth-config-all-empty"),
    pytest.param(Case(
        operator=(HELPERS,),
        helpers={ECR: "ecr-login", GCR: "gcloud"}, store="pass",
        summary=LINE + f"{ECR} (credential helper ecr-login), {GCR} (credential helper gcloud), "
                       "any other registry (credential store pass)"),
        id="operator-helpers-pass-through"),
    pytest.param(Case(
        variables=dac({"credHelpers": {ECR: "ecr-login"}}),
        helpers={ECR: "ecr-login"},
        summary=LINE + f"{ECR} (credential helper ecr-login)"),
        id="docker-auth-config-helper-only"),
    pytest.param(Case(
        variables=dac({"credsStore": "desktop"}),
        store="desktop",
        summary=LINE + "any other registry (credential store desktop)"),
        id="docker-auth-config-store-only"),
    pytest.param(Case(
        operator=(HELPERS,), registries=PAYLOAD,
        variables=dac({"credHelpers": {GCR: "gcr", ACR: "acr-env"}, "credsStore": "desktop"}),
        logins={REGISTRY: f"gitlab-ci-token:{JOB_TOKEN}"},
        helpers={ECR: "ecr-login", GCR: "gcr", ACR: "acr-env"}, store="desktop",
        summary=LINE + f"{REGISTRY} (the job's registry login), "
                       f"{ECR} (credential helper ecr-login), {ACR} (credential helper acr-env), "
                       f"{GCR} (credential helper gcr), "
                       "any other registry (credential store desktop)"),
        id="helpers-merge-docker-auth-config-wins"),
    pytest.param(Case(
        operator=(HELPERS,),
        variables=dac({"auths": {QUAY: auth("robot", OVERRIDE_PASSWORD)}, "credsStore": ""}),
        logins={QUAY: f"robot:{OVERRIDE_PASSWORD}"},
        helpers={ECR: "ecr-login", GCR: "gcloud"}, store="",
        summary=LINE + f"{QUAY} (DOCKER_AUTH_CONFIG), {ECR} (credential helper ecr-login), "
                       f"{GCR} (credential helper gcloud)"),
        # Docker uses a credsStore before any auths: a later login drops the earlier store.
        id="a-later-login-drops-an-earlier-store"),
    pytest.param(Case(
        operator=(HELPERS,),
        variables=dac({"auths": {ECR: auth("AWS", OVERRIDE_PASSWORD)}}),
        logins={ECR: f"AWS:{OVERRIDE_PASSWORD}"},
        helpers={GCR: "gcloud"}, store="",
        summary=LINE + f"{ECR} (DOCKER_AUTH_CONFIG), {GCR} (credential helper gcloud)"),
        # Docker uses a registry's credHelpers entry before its auths entry.
        id="a-later-login-replaces-an-earlier-helper-for-its-registry"),
    pytest.param(Case(
        operator=(HELPERS, ("ops-store", {"credsStore": "secretservice"})),
        helpers={ECR: "ecr-login", GCR: "gcloud"}, store="secretservice",
        summary=LINE + f"{ECR} (credential helper ecr-login), {GCR} (credential helper gcloud), "
                       "any other registry (credential store secretservice)"),
        id="later-operator-store-wins"),
]


@pytest.mark.parametrize("case", CASES)
def test_each_combination_of_sources_gives_exactly_this_config(case: Case) -> None:
    """Per combination of sources, config.json is exactly the merged logins (later source
    winning per registry, the others kept), helpers and store, and nothing else."""
    docker = docker_config(job(case.registries, case.variables), case.operator)
    assert docker.config == case.config()
    assert logins(docker.config) == case.logins
    assert json.loads(docker.json_bytes()) == case.config()


@pytest.mark.parametrize("case", CASES)
def test_each_combination_names_registries_and_sources_in_one_summary_line(case: Case) -> None:
    """The summary is exactly one line naming each registry with its source, then helpers
    and store, and holds no password nor any `auth` value."""
    docker = docker_config(job(case.registries, case.variables), case.operator)
    summary = docker.summary()
    assert summary == case.summary
    assert "\n" not in summary
    encoded = [entry["auth"] for entry in docker.config["auths"].values()]
    for secret in (*SECRETS, *encoded):
        assert secret not in summary


@pytest.mark.parametrize("case", CASES)
def test_empty_means_no_login_no_helper_and_no_store(case: Case) -> None:
    """`empty` (nothing to write) holds exactly when no source gave a login, helper or store."""
    docker = docker_config(job(case.registries, case.variables), case.operator)
    assert docker.empty is (not case.logins and not case.helpers and not case.store)
    assert (docker.summary() == NONE) is docker.empty


@pytest.mark.parametrize(("server", "host"), [
    ("gitlab.example.com:443", "gitlab.example.com"),
    ("gitlab.example.com:8443", "gitlab.example.com"),
    ("gitlab.example.com", "gitlab.example.com"),
    ("10.0.0.7:443", "10.0.0.7"),
    ("[fd00::7]:443", "[fd00::7]"),
])
def test_the_dependency_proxy_is_keyed_by_its_host_without_port(server: str, host: str) -> None:
    """CI_DEPENDENCY_PROXY_SERVER's port is stripped, as Docker keys the proxy; a server
    without port is kept as given."""
    docker = docker_config(job(variables={**PROXY_VARS, "CI_DEPENDENCY_PROXY_SERVER": server}))
    assert docker.config == {"auths": {host: auth("proxy-user", PROXY_PASSWORD)}}
    assert docker.summary() == LINE + f"{host} (dependency proxy)"


@pytest.mark.parametrize("missing", ["CI_REGISTRY", "CI_REGISTRY_USER", "CI_REGISTRY_PASSWORD",
                                     "CI_DEPENDENCY_PROXY_SERVER", "CI_DEPENDENCY_PROXY_USER",
                                     "CI_DEPENDENCY_PROXY_PASSWORD"])
@pytest.mark.parametrize("unset", [True, False], ids=["unset", "empty"])
def test_an_incomplete_variable_set_gives_no_login(missing: str, unset: bool) -> None:
    """A registry or proxy variable set lacking one of its three values (unset or empty)
    gives no login from that set; the other, complete set still does."""
    variables = {**CI_VARS, **PROXY_VARS}
    if unset:
        del variables[missing]
    else:
        variables[missing] = ""
    docker = docker_config(job(variables=variables))
    if missing.startswith("CI_REGISTRY"):
        assert docker.config == {"auths": {GITLAB: auth("proxy-user", PROXY_PASSWORD)}}
        assert docker.summary() == LINE + f"{GITLAB} (dependency proxy)"
    else:
        assert docker.config == {"auths": {REGISTRY: auth("var-user", VAR_PASSWORD)}}
        assert docker.summary() == LINE + f"{REGISTRY} (CI_REGISTRY_USER)"


def test_an_incomplete_variable_set_is_not_completed_by_the_payload() -> None:
    """Payload logins replace the CI_REGISTRY variables whole: no mix of the two sets."""
    variables = {"CI_REGISTRY": OTHER, "CI_REGISTRY_USER": "var-user"}
    docker = docker_config(job(PAYLOAD, variables))
    assert docker.config == {"auths": {REGISTRY: auth("gitlab-ci-token", JOB_TOKEN)}}


def test_docker_auth_config_entries_pass_through_whole() -> None:
    """A DOCKER_AUTH_CONFIG entry is copied as given (tokens, username/password fields),
    replacing the lower source's entry for that registry whole, not field by field."""
    entries = {REGISTRY: {"identitytoken": OVERRIDE_PASSWORD},
               QUAY: {"username": "robot", "password": OVERRIDE_PASSWORD,
                      "email": "robot@example.com"}}
    docker = docker_config(job(PAYLOAD, dac({"auths": entries})))
    assert docker.config == {"auths": entries}
    assert docker.summary() == (LINE + f"{QUAY} (DOCKER_AUTH_CONFIG), "
                                f"{REGISTRY} (DOCKER_AUTH_CONFIG)")
    assert OVERRIDE_PASSWORD not in docker.summary()


def test_merging_leaves_the_operator_configs_unchanged() -> None:
    """The operator's parsed configs are read, never written: a second job merges the same."""
    operator = (copy.deepcopy(OPS), copy.deepcopy(HELPERS))
    before = copy.deepcopy(operator)
    variables = {**CI_VARS, **PROXY_VARS,
                 **dac({"auths": {HUB: auth("robot", OVERRIDE_PASSWORD)},
                        "credHelpers": {GCR: "gcr"}, "credsStore": "desktop"})}
    first = docker_config(job(PAYLOAD, variables), operator)
    assert operator == before
    assert docker_config(job(), operator).config == {
        "auths": OPS[1]["auths"], "credHelpers": {ECR: "ecr-login", GCR: "gcloud"},
        "credsStore": "pass"}
    assert first.config["credHelpers"] == {ECR: "ecr-login", GCR: "gcr"}


def test_the_config_and_its_secrets_stay_out_of_repr() -> None:
    """repr of the result (as a log or traceback would show it) holds no password or auth."""
    docker = docker_config(job(PAYLOAD, {**PROXY_VARS, **dac(
        {"auths": {QUAY: auth("robot", OVERRIDE_PASSWORD)}})}), (OPS,))
    text = repr(docker)
    for secret in (*SECRETS, *(e["auth"] for e in docker.config["auths"].values())):
        assert secret not in text
    assert text.startswith("DockerConfig(sources=")


def test_json_bytes_is_config_json_with_sorted_keys() -> None:
    """json_bytes is the config, keys sorted, so the same logins give the same Secret."""
    docker = DockerConfig({"credsStore": "pass", "auths": {QUAY: {"auth": "eA=="}}}, ())
    assert docker.json_bytes() == b'{"auths": {"quay.io": {"auth": "eA=="}}, "credsStore": "pass"}'


SECRET = "dXNlcjpzM2NyZXQtdmFsdWU="  # what must never show in a message

MALFORMED = [
    pytest.param('{"auths": {"r.example.com": {"auth": "' + SECRET + '"}',
                 "not JSON: Expecting ',' delimiter at line 1 column 65 (char 64)",
                 id="unclosed-object"),
    pytest.param(SECRET, "not JSON: Expecting value at line 1 column 1 (char 0)",
                 id="bare-secret"),
    pytest.param("   ", "not JSON: Expecting value at line 1 column 4 (char 3)",
                 id="blank"),
    pytest.param('{\n  "auths": {\n    "r.example.com": {"auth": ' + SECRET + "}\n  }\n}",
                 "not JSON: Expecting value at line 3 column 31 (char 45)",
                 id="unquoted-value-on-line-3"),
    pytest.param('{"auths": {}} ' + SECRET, "not JSON: Extra data at line 1 column 15 (char 14)",
                 id="trailing-data"),
    pytest.param("{'auths': {'r.example.com': {'auth': '" + SECRET + "'}}}",
                 "not JSON: Expecting property name enclosed in double quotes at line 1 "
                 "column 2 (char 1)",
                 id="single-quotes"),
    pytest.param('{"auths": {"r.example.com": {"auth": "' + SECRET + "\n" + '"}}}',
                 "not JSON: Invalid control character at line 1 column 63 (char 62)",
                 id="raw-newline-in-string"),
    pytest.param('{"auths": {"r": {"auth": "' + SECRET + '", "n": ' + "9" * 5000 + "}}}",
                 "not JSON the driver can read (nested too deeply or a number too long)",
                 id="integer-too-long"),
    pytest.param('{"auths": {"r": {"auth": "' + SECRET + '", "n": ' + "[" * 100_000,
                 "not JSON the driver can read (nested too deeply or a number too long)",
                 id="nested-too-deeply"),
    pytest.param(json.dumps([SECRET]), 'expected a JSON object like {"auths": '
                 '{"registry.example.com": {"auth": "..."}}}', id="array"),
    pytest.param(json.dumps(SECRET), 'expected a JSON object like {"auths": '
                 '{"registry.example.com": {"auth": "..."}}}', id="string"),
    pytest.param("null", 'expected a JSON object like {"auths": '
                 '{"registry.example.com": {"auth": "..."}}}', id="null"),
    pytest.param(json.dumps({"auths": [SECRET]}), "auths must be a JSON object",
                 id="auths-array"),
    pytest.param(json.dumps({"auths": SECRET}), "auths must be a JSON object",
                 id="auths-string"),
    pytest.param(json.dumps({"auths": None}), "auths must be a JSON object", id="auths-null"),
    pytest.param(json.dumps({"credHelpers": SECRET}), "credHelpers must be a JSON object",
                 id="credhelpers-string"),
    pytest.param(json.dumps({"credHelpers": [SECRET]}), "credHelpers must be a JSON object",
                 id="credhelpers-array"),
    pytest.param(json.dumps({"credsStore": {"x": SECRET}}), "credsStore must be a JSON string",
                 id="credsstore-object"),
    pytest.param(json.dumps({"credsStore": 7, "x": SECRET}), "credsStore must be a JSON string",
                 id="credsstore-number"),
    pytest.param(json.dumps({"auths": {"r.example.com": SECRET}}),
                 "auths['r.example.com'] must be a JSON object", id="auth-entry-string"),
    pytest.param(json.dumps({"auths": {"ok.example.com": {"auth": SECRET},
                                       "r.example.com": [SECRET]}}),
                 "auths['r.example.com'] must be a JSON object", id="auth-entry-array"),
    pytest.param(json.dumps({"auths": {"r.example.com": None}, "x": SECRET}),
                 "auths['r.example.com'] must be a JSON object", id="auth-entry-null"),
]


@pytest.mark.parametrize(("value", "reason"), MALFORMED)
def test_a_malformed_docker_auth_config_fails_the_job_naming_only_where(
        value: str, reason: str) -> None:
    """A malformed DOCKER_AUTH_CONFIG fails the job (JobFailed, never a system failure) with
    a message naming the variable and what or where the error is; neither the message nor
    the traceback holds the value, and no chained exception carries it."""
    with pytest.raises(JobFailed) as raised:
        docker_config(job(PAYLOAD, {**CI_VARS, "DOCKER_AUTH_CONFIG": value}), (OPS,))
    error = raised.value
    assert str(error) == f"reading DOCKER_AUTH_CONFIG: {reason}"
    assert error.exit_code == 1
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    shown = "".join(traceback.format_exception(error))
    for secret in (SECRET, *SECRETS):
        assert secret not in shown


@pytest.mark.parametrize(("value", "reason"), MALFORMED)
def test_parse_names_the_given_source(value: str, reason: str) -> None:
    """parse (also used for the operator's Secrets) names the source it is given."""
    with pytest.raises(JobFailed) as raised:
        parse(value, "registry secret ci/corp")
    assert str(raised.value) == f"reading registry secret ci/corp: {reason}"
    assert SECRET not in str(raised.value)


def test_parse_returns_a_well_formed_config_as_given() -> None:
    """parse accepts a config.json of the right shape and returns it unchanged."""
    config = {"auths": {REGISTRY: {"auth": SECRET}, QUAY: {"identitytoken": "t"}},
              "credHelpers": {ECR: "ecr-login"}, "credsStore": "pass", "HttpHeaders": {}}
    assert parse(json.dumps(config), "DOCKER_AUTH_CONFIG") == config
