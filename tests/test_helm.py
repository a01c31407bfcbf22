"""The Helm chart, the plain manifests, the manager image and the example NetworkPolicy,
checked offline with real Helm (helm-python-sdk bundles it) and the Kubernetes schemas.

`python -m tests.test_helm` rewrites deploy/manifests/ from the chart's default render.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import typing
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from runner_driver import permissions, settings
from runner_driver.podspec import MANAGED_BY

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "runner-driver"
CI_FILES = sorted(CHART.glob("ci/*.yaml"))
MANIFESTS = ROOT / "deploy" / "manifests" / "runner-driver.yaml"
NETWORK_POLICY = ROOT / "deploy" / "examples" / "networkpolicy.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
CONSTRAINTS = ROOT / "deploy" / "constraints.txt"
RELEASE, NAMESPACE = "ci", "gitlab-runner"
KUBE_VERSION = kubernetes_validate.utils.latest_version()
# The order `helm template` prints kinds in (Helm's install order), for the plain manifests.
INSTALL_ORDER = ("Namespace", "PodDisruptionBudget", "ServiceAccount", "Secret", "ConfigMap",
                 "Role", "RoleBinding", "Deployment", "CronJob")
MANIFESTS_HEADER = """\
# runner-driver for clusters without Helm: the chart's default render, made with
#   python -m tests.test_helm
# (as `helm template runner-driver helm/runner-driver --namespace gitlab-runner`; a test
# fails when this file and the chart drift apart). Before applying:
#   kubectl create namespace gitlab-runner
#   set the image (registry.example.com/runner-driver:0.1.0: build deploy/Dockerfile),
#   gitlabUrl in the ConfigMap runner-driver-runner, and the token: the Secret
#   runner-driver's runner-token is empty here; put your glrt-... token there in base64,
#   or apply, then replace the Secret with
#     kubectl -n gitlab-runner create secret generic runner-driver \\
#       --from-literal=runner-token=glrt-... --dry-run=client -o yaml | kubectl apply -f -
#   (applying this file again empties it).
"""
# Keys of the driver's settings the chart fills in itself (values.yaml says which).
CHART_OWNED = {"kubernetes.kubeconfig", "kubernetes.context", "kubernetes.namespace",
               "pod.template", "pod.patch", "tls.ca_file"}


@functools.cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def values_of(path: Path | None) -> dict[str, Any]:
    """A values file as Helm reads it (None: the chart's defaults alone)."""
    if path is None:
        return {}
    loaded: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return loaded


def render(values: dict[str, Any] | None = None, name: str = RELEASE,
           namespace: str = NAMESPACE) -> dict[str, str]:
    """`helm template`: template path -> rendered text."""
    return chart().render(values or {}, name=name, namespace=namespace)


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every manifest of a render (NOTES.txt left out)."""
    found: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            found += [doc for doc in yaml.safe_load_all(text) if doc]
    return found


def one(found: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    """The single object of `kind` whose name ends with `suffix`."""
    matches = [o for o in found if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    assert len(matches) == 1, (kind, suffix, [o["metadata"]["name"] for o in matches])
    return matches[0]


CASES = [None, *CI_FILES]
IDS = ["chart-defaults", *(p.stem for p in CI_FILES)]


@functools.cache
def rendered_case(path: Path | None) -> dict[str, str]:
    return render(values_of(path))


# --- rendering, lint, schema ----------------------------------------------------------------


def test_ci_values_files_cover_the_combinations() -> None:
    """ci/ holds the value files the chart's combinations are rendered with."""
    assert {p.name for p in CI_FILES} == {
        "default-values.yaml", "existing-secret-values.yaml", "namespace-values.yaml",
        "ca-proxy-registry-values.yaml", "pod-template-values.yaml"}


@pytest.mark.parametrize("path", CASES, ids=IDS)
def test_every_rendered_manifest_validates_against_kubernetes(path: Path | None) -> None:
    """Each render's manifests pass the Kubernetes schemas of a recent release, strictly."""
    found = objects(rendered_case(path))
    kinds = {o["kind"] for o in found}
    assert {"ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Deployment", "CronJob",
            "PodDisruptionBudget"} <= kinds
    for manifest in found:
        kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("path", CASES, ids=IDS)
def test_helm_lint_strict_is_clean(path: Path | None) -> None:
    """`helm lint --strict` finds no error and no warning with any values file."""
    report = helm.lint(CHART, values_of(path), strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize(("values", "where"), [
    ({"concurrent": "ten"}, "/concurrent"),
    ({"runner": {"timeouts": {"prepareExec": 1.5}}}, "/runner/timeouts/prepareExec"),
    ({"driver": {"settings": {"pod": {"termination_grace_period_seconds": "5"}}}},
     "/driver/settings/pod/termination_grace_period_seconds"),
    ({"driver": {"settings": {"overrides": {"node_selector_keys": "kubernetes.io/arch"}}}},
     "/driver/settings/overrides/node_selector_keys"),
    ({"jobNamespace": {"create": "yes"}}, "/jobNamespace/create"),
], ids=["top-level", "timeouts", "driver-integer", "driver-list", "namespace-create"])
def test_schema_rejects_a_wrong_type(values: dict[str, Any], where: str) -> None:
    """A value of the wrong type fails `helm template`, naming its path."""
    with pytest.raises(helm.HelmValuesError, match=re.escape(f"at '{where}'")):
        render(values)


@pytest.mark.parametrize(("values", "where"), [
    ({"concurent": 5}, ""),
    ({"runner": {"buildDir": "/b"}}, "/runner"),
    ({"driver": {"settings": {"pod": {"build_dir": "/b"}}}}, "/driver/settings/pod"),
    ({"driver": {"settings": {"overrides": {"build": {"memory_max": "1Gi"}}}}},
     "/driver/settings/overrides/build"),
    ({"driver": {"settings": {"kubernetes": {"namespace": "other"}}}},
     "/driver/settings/kubernetes"),
], ids=["top-level", "runner", "driver-section", "driver-subsection", "chart-owned-key"])
def test_schema_rejects_an_unknown_key(values: dict[str, Any], where: str) -> None:
    """A key the chart does not define fails `helm template` (a typo never passes silently)."""
    with pytest.raises(helm.HelmValuesError,
                       match=re.escape(f"at '{where}': additional properties")):
        render(values)


def test_schema_driver_settings_are_exactly_the_drivers_keys() -> None:
    """values.schema.json's driver.settings lists every settings key, with its type."""
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    sections = schema["properties"]["driver"]["properties"]["settings"]["properties"]
    kinds = {str: "string", bool: "boolean", int: "integer", float: "number"}

    def expected(cls: type, prefix: str) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        keys: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            dotted = f"{prefix}{f.name}"
            hint = hints[f.name]
            if dotted in CHART_OWNED or f.name in {"source", "pod_template", "pod_patch",
                                                   "ca_pem"}:
                continue
            if dataclasses.is_dataclass(hint):
                keys[f.name] = expected(typing.cast(type, hint), f"{dotted}.")
            else:
                keys[f.name] = "array" if typing.get_origin(hint) is tuple else kinds[hint]
        return keys

    def declared(node: dict[str, Any]) -> dict[str, Any]:
        assert node["additionalProperties"] is False
        return {key: declared(sub) if sub["type"] == "object" else sub["type"][0]
                for key, sub in node["properties"].items()}

    assert declared({"type": "object", "additionalProperties": False,
                     "properties": sections}) == expected(settings.Settings, "")


# --- what the manager runs with ---------------------------------------------------------------


def config_files(rendered: dict[str, str], directory: Path) -> Path:
    """Write the driver ConfigMap's files to `directory`; the settings file's path."""
    config_map = one(objects(rendered), "ConfigMap", "-driver")
    for name, text in config_map["data"].items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory / "config.toml"


@pytest.mark.parametrize("path", CASES, ids=IDS)
def test_rendered_driver_settings_load(path: Path | None, tmp_path: Path) -> None:
    """The driver settings the chart renders load with the driver's own loader, as given."""
    values = values_of(path)
    loaded = settings.load(config_files(rendered_case(path), tmp_path))
    job_namespace = (values.get("jobNamespace") or {}).get("name") or NAMESPACE
    driver = values.get("driver") or {}
    given = driver.get("settings") or {}
    assert loaded.kubernetes.namespace == job_namespace
    assert loaded.manager.id == (given.get("manager") or {}).get("id", f"{RELEASE}-runner-driver")
    for section, keys in given.items():
        for key, value in keys.items():
            if not isinstance(value, dict):
                got = getattr(getattr(loaded, section), key)
                assert (list(got) if isinstance(got, tuple) else got) == value, (section, key)
    assert loaded.pod_template == (driver.get("podTemplate") or None)
    assert loaded.pod_patch == (tuple(driver["podPatch"]) if driver.get("podPatch") else None)
    assert loaded.ca_pem.strip() == (driver.get("caBundle") or "").strip()


def test_chart_defaults_leave_the_drivers_defaults() -> None:
    """With no driver settings, only the keys the chart owns differ from the built-in defaults."""
    config_map = one(objects(rendered_case(None)), "ConfigMap", "-driver")
    assert tomllib.loads(config_map["data"]["config.toml"]) == {
        "kubernetes": {"namespace": NAMESPACE}, "manager": {"id": f"{RELEASE}-runner-driver"},
        "pod": {"builds_dir": "/builds", "cache_dir": "/cache"}}


@pytest.mark.parametrize("path", CASES, ids=IDS)
def test_runner_config_runs_every_stage_through_the_driver(path: Path | None) -> None:
    """config.toml parses; one custom runner whose four stages run the `runner-driver` script."""
    rendered = rendered_case(path)
    config = tomllib.loads(one(objects(rendered), "ConfigMap", "-runner")["data"]["config.toml"])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
        "project"]["scripts"]
    assert scripts["runner-driver"] == "runner_driver.cli:main"
    [runner] = config["runners"]
    assert runner["executor"] == "custom" and runner["token"] == "@RUNNER_TOKEN@"
    custom = runner["custom"]
    for stage in ("config", "prepare", "run", "cleanup"):
        assert custom[f"{stage}_exec"] == "runner-driver" and custom[f"{stage}_args"] == [stage]
    assert set(custom) - {f"{s}_{k}" for s in ("config", "prepare", "run", "cleanup")
                          for k in ("exec", "args")} == {
        "config_exec_timeout", "prepare_exec_timeout", "cleanup_exec_timeout",
        "graceful_kill_timeout", "force_kill_timeout"}
    assert all(isinstance(v, int) for k, v in custom.items() if k.endswith("_timeout"))
    assert config["listen_address"] == ":9252" and isinstance(config["concurrent"], int)
    driver = tomllib.loads(one(objects(rendered), "ConfigMap", "-driver")["data"]["config.toml"])
    assert (runner["builds_dir"], runner["cache_dir"]) == (
        driver["pod"]["builds_dir"], driver["pod"]["cache_dir"])


def entrypoint_run(tmp_path: Path, token: str) -> subprocess.CompletedProcess[str]:
    """The chart's entrypoint with its paths moved under tmp_path and a stand-in gitlab-runner."""
    config_map = one(objects(rendered_case(None)), "ConfigMap", "-runner")
    for directory in ("secrets", "configmaps/runner", "home", "bin"):
        (tmp_path / directory).mkdir(parents=True, exist_ok=True)
    (tmp_path / "secrets" / "runner-token").write_text(token, encoding="utf-8")
    (tmp_path / "configmaps/runner/config.toml").write_text(config_map["data"]["config.toml"],
                                                            encoding="utf-8")
    fake = tmp_path / "bin" / "gitlab-runner"
    fake.write_text('#!/bin/sh\necho "gitlab-runner $*"\n', encoding="utf-8")
    fake.chmod(0o755)
    script = config_map["data"]["entrypoint"].replace("/secrets/", f"{tmp_path}/secrets/") \
        .replace("/configmaps/", f"{tmp_path}/configmaps/")
    env = {"HOME": str(tmp_path / "home"), "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    return subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True,
                          timeout=10, check=False)


def test_entrypoint_writes_the_token_and_starts_gitlab_runner(tmp_path: Path) -> None:
    """The entrypoint puts the Secret's token into a private config.toml and runs the runner."""
    done = entrypoint_run(tmp_path, "glrt-AbC_123.x-y\n")
    written = tmp_path / "home" / ".gitlab-runner" / "config.toml"
    assert done.returncode == 0, done.stderr
    assert shlex.split(done.stdout) == ["gitlab-runner", "run", "--config", str(written),
                                        "--working-directory", str(tmp_path / "home")]
    assert tomllib.loads(written.read_text(encoding="utf-8"))["runners"][0]["token"] \
        == "glrt-AbC_123.x-y"
    assert written.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("token", ["", 'glrt-x"\nurl = "https://evil.example.com'],
                         ids=["empty", "not-a-token"])
def test_entrypoint_refuses_a_missing_or_odd_token(tmp_path: Path, token: str) -> None:
    """An empty token, or one that could break out of its TOML string, stops the start."""
    done = entrypoint_run(tmp_path, token)
    assert done.returncode == 1 and "gitlab-runner run" not in done.stdout
    assert "the runner token (key runner-token of Secret ci-runner-driver) is empty or not " \
           "a token" in done.stderr


# --- RBAC, namespaces, secrets, sizing --------------------------------------------------------


@pytest.mark.parametrize("path", CASES, ids=IDS)
def test_role_grants_exactly_the_drivers_permissions(path: Path | None) -> None:
    """The Role's rules equal permissions.rules(), in the job namespace, bound to the manager."""
    found = objects(rendered_case(path))
    values = values_of(path)
    job_namespace = (values.get("jobNamespace") or {}).get("name") or NAMESPACE
    role, binding = one(found, "Role"), one(found, "RoleBinding")
    assert role["rules"] == permissions.rules()
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == job_namespace
    account = one(found, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": NAMESPACE}]
    deployment, cron = one(found, "Deployment"), one(found, "CronJob")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] \
        == cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"] \
        == account["metadata"]["name"]


def test_role_comments_name_the_stage_of_every_verb() -> None:
    """Every verb the Role grants has a comment line naming who needs it."""
    text = (CHART / "templates" / "role.yaml").read_text(encoding="utf-8")
    comments = re.findall(r"#\s*(\w+):", text)
    for rule in permissions.rules():
        for verb in rule["verbs"]:
            assert verb in comments or rule["resources"] == ["pods/exec"], (rule, verb)
    assert "run streams each stage" in text


def test_job_namespace_is_created_with_pod_security_labels() -> None:
    """jobNamespace.create makes the namespace, enforcing the baseline Pod Security level."""
    found = objects(rendered_case(CHART / "ci" / "namespace-values.yaml"))
    namespace = one(found, "Namespace")
    assert namespace["metadata"]["name"] == "ci-jobs"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
    assert not [o for o in objects(rendered_case(None)) if o["kind"] == "Namespace"]


def test_job_namespace_create_needs_a_name() -> None:
    """Asking to create the job namespace without naming it fails the render, saying so."""
    needs = re.escape("jobNamespace.create needs jobNamespace.name")
    with pytest.raises(helm.HelmError, match=needs):
        render({"jobNamespace": {"create": True}})


def test_builds_dir_must_agree_between_runner_and_driver() -> None:
    """A driver builds_dir other than the runner's fails the render, naming both keys."""
    with pytest.raises(helm.HelmError, match=re.escape(
            "driver.settings.pod.builds_dir (/work) must equal runner.buildsDir (/builds)")):
        render({"driver": {"settings": {"pod": {"builds_dir": "/work"}}}})


def test_existing_secret_replaces_the_charts_own() -> None:
    """With existingSecret the chart makes no Secret and mounts the named one's runner-token."""
    found = objects(rendered_case(CHART / "ci" / "existing-secret-values.yaml"))
    assert not [o for o in found if o["kind"] == "Secret"]
    volumes = one(found, "Deployment")["spec"]["template"]["spec"]["volumes"]
    [token] = [v for v in volumes if v["name"] == "token"]
    assert token["secret"] == {"secretName": "gitlab-runner-token",
                               "items": [{"key": "runner-token", "path": "runner-token"}]}


def test_runner_token_is_stored_in_the_charts_secret() -> None:
    """runnerToken lands base64-encoded in the chart's Secret, nowhere else."""
    rendered = rendered_case(CHART / "ci" / "default-values.yaml")
    secret = one(objects(rendered), "Secret")
    token = "glrt-t3st_T0ken.for-chart-tests"
    assert secret["data"] == {"runner-token": "Z2xydC10M3N0X1Qwa2VuLmZvci1jaGFydC10ZXN0cw=="}
    assert sum(token in text for text in rendered.values()) == 0


@pytest.mark.parametrize(("concurrent", "request_mi"), [(1, 74), (10, 164), (25, 314)])
def test_manager_memory_follows_concurrency(concurrent: int, request_mi: int) -> None:
    """Default memory is 64Mi + 10Mi per concurrent job, limit twice that; no CPU limit."""
    found = objects(render({"concurrent": concurrent}))
    [container] = one(found, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": f"{request_mi}Mi"},
                                      "limits": {"memory": f"{2 * request_mi}Mi"}}


def test_manager_pod_shuts_down_gracefully_and_is_probed() -> None:
    """dumb-init turns SIGTERM into SIGQUIT, the grace period is 3600 s, /metrics is probed."""
    found = objects(rendered_case(None))
    spec = one(found, "Deployment")["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert spec["terminationGracePeriodSeconds"] == 3600
    assert container["command"][:4] == ["/usr/bin/dumb-init", "--rewrite", "15:3", "--"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert container["ports"] == [{"name": "metrics", "containerPort": 9252, "protocol": "TCP"}]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert one(found, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_gc_cronjob_runs_runner_driver_gc_with_the_managers_settings() -> None:
    """The CronJob runs `runner-driver gc` with the driver ConfigMap (same manager id)."""
    found = objects(render({"gc": {"args": ["--older-than", "30m"]}}))
    pod = one(found, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["runner-driver", "gc", "--older-than", "30m"]
    assert {"name": "driver-config", "configMap": {"name": f"{RELEASE}-runner-driver-driver"}} \
        in pod["volumes"]



def test_preflight_runs_check_before_the_manager_and_as_a_helm_test() -> None:
    """`runner-driver check` runs as the manager's init container and as a `helm test`
    hook, with the manager's settings and service account; each can be turned off."""
    found = objects(render())
    deployment = one(found, "Deployment")["spec"]["template"]["spec"]
    [init] = deployment["initContainers"]
    hook = next(o for o in found if o["kind"] == "Pod")
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert hook["spec"]["serviceAccountName"] == deployment["serviceAccountName"]
    for container in (init, hook["spec"]["containers"][0]):
        assert container["command"] == ["runner-driver", "check"]
        assert {"name": "RUNNER_DRIVER_CONFIG", "value": "/etc/runner-driver/config.toml"} \
            in container["env"]
        assert {"name": "driver-config", "mountPath": "/etc/runner-driver", "readOnly": True} \
            in container["volumeMounts"]
    off = objects(render({"preflight": {"initContainer": False, "helmTest": False}}))
    assert "initContainers" not in one(off, "Deployment")["spec"]["template"]["spec"]
    assert not [o for o in off if o["kind"] == "Pod"]

# --- plain manifests, NetworkPolicy, image ----------------------------------------------------


def plain_manifests() -> str:
    """deploy/manifests/runner-driver.yaml as the chart's default render makes it."""
    rendered = render(name="runner-driver", namespace="gitlab-runner")
    # As Helm prints them: each template's text (its comments kept), in install order.
    # Without the `helm test` hook (as `helm template --skip-tests`): it is Helm's.
    files = [(path, text.strip()) for path, text in rendered.items()
             if path.endswith(".yaml") and text.strip() and "/templates/tests/" not in path]
    files.sort(key=lambda item: (INSTALL_ORDER.index(yaml.safe_load(item[1])["kind"]), item[0]))
    return MANIFESTS_HEADER + "".join(f"---\n# Source: {path}\n{text}\n" for path, text in files)


def test_plain_manifests_match_the_charts_default_render() -> None:
    """deploy/manifests/ is the chart's default render (regenerate: python -m tests.test_helm)."""
    assert MANIFESTS.read_text(encoding="utf-8") == plain_manifests(), \
        "deploy/manifests drifted from the chart: run `.venv/bin/python -m tests.test_helm`"


def test_plain_manifests_validate_against_kubernetes() -> None:
    """Every object in deploy/manifests/ passes the Kubernetes schemas strictly."""
    for manifest in yaml.safe_load_all(MANIFESTS.read_text(encoding="utf-8")):
        kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)


def test_network_policy_isolates_job_pods() -> None:
    """The example policy selects job pods by the driver's label: no ingress; DNS and
    non-private addresses out, never the metadata endpoint."""
    policy = yaml.safe_load(NETWORK_POLICY.read_text(encoding="utf-8"))
    kubernetes_validate.validate(policy, KUBE_VERSION, strict=True)
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/managed-by": MANAGED_BY}}
    assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["ingress"] == []
    dns, outside = spec["egress"]
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    assert outside == {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": [
        "169.254.169.254/32", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]}}]}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_builds_on_a_pinned_gitlab_runner_and_runs_as_gitlab_runner() -> None:
    """One FROM: the official gitlab-runner image at a release tag; USER ends as gitlab-runner."""
    steps = dockerfile_instructions()
    [base] = [args for op, args in steps if op == "FROM"]
    assert re.fullmatch(r"gitlab/gitlab-runner:(alpine[0-9.]*|ubuntu)-v\d+\.\d+\.\d+", base), base
    assert [args for op, args in steps if op == "USER"][-1] == "gitlab-runner"
    [entrypoint] = [json.loads(args) for op, args in steps if op == "ENTRYPOINT"]
    assert entrypoint[0] == "/usr/bin/dumb-init"


def test_dockerfile_installs_the_driver_pinned_and_on_path() -> None:
    """The package is pip-installed from the context under the constraints file, and
    `runner-driver` is linked onto PATH; the constraints pin every runtime dependency."""
    runs = " ".join(args for op, args in dockerfile_instructions() if op == "RUN")
    assert "PIP_CONSTRAINT=/tmp/runner-driver/constraints.txt" in runs
    assert re.search(r"python3~3\.(1[1-9])", runs)
    assert "ln -s /opt/runner-driver/bin/runner-driver /usr/local/bin/runner-driver" in runs
    assert "runner-driver --version" in runs
    copies = [args for op, args in dockerfile_instructions() if op == "COPY"]
    assert "deploy/constraints.txt /tmp/runner-driver/constraints.txt" in copies
    pins = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            pins[name] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for requirement in project["dependencies"]:
        assert re.split(r"[<>=!~ ]", requirement)[0].lower() in pins, requirement


def write_manifests() -> None:
    """Regenerate deploy/manifests/ from the chart."""
    MANIFESTS.parent.mkdir(parents=True, exist_ok=True)
    MANIFESTS.write_text(plain_manifests(), encoding="utf-8")
    print(f"wrote {MANIFESTS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    os.chdir(ROOT)
    write_manifests()
