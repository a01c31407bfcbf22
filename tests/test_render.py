"""`runner-driver render`: the final manifests offline, schema-valid, errors by name, no secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from runner_driver.render import redacted

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "deploy" / "examples"
K8S_VERSION: str = kubernetes_validate.latest_version()
TOKEN = "glcbt-64_s3cr3tJobT0ken"  # a job token made up for the test


def render(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `runner-driver [args] render` as an operator would, with only `env` set."""
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"),
            # No cluster anywhere: render must not need one.
            "KUBECONFIG": "/nonexistent/kubeconfig"}
    return subprocess.run([sys.executable, "-m", "runner_driver.cli", *args, "render"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**base, **(env or {})})


def documents(text: str) -> list[dict[str, Any]]:
    """The YAML documents of `text`, each checked to be a mapping."""
    found = [d for d in yaml.safe_load_all(text) if d is not None]
    assert found and all(isinstance(d, dict) for d in found)
    return found


def job_env(tmp_path: Path, variables: dict[str, str], job_id: int = 77) -> dict[str, str]:
    """The environment gitlab-runner gives a stage: a payload file and CUSTOM_ENV_* vars."""
    payload = tmp_path / f"payload-{job_id}.json"
    payload.write_text(json.dumps({"id": job_id, "token": TOKEN,
                                   "job_info": {"project_id": 5}}), encoding="utf-8")
    env = {"JOB_RESPONSE_FILE": str(payload), "CUSTOM_ENV_CI_JOB_TOKEN": TOKEN}
    env |= {f"CUSTOM_ENV_{name}": value for name, value in variables.items()}
    return env


@pytest.mark.parametrize("config", [
    pytest.param(None, id="built-in-defaults"),
    pytest.param(ROOT / "config.example.toml", id="config.example.toml"),
    pytest.param(EXAMPLES / "config-with-template.toml", id="config-with-template.toml"),
    pytest.param(EXAMPLES / "config-behind-a-proxy.toml", id="config-behind-a-proxy.toml"),
])
def test_render_gives_schema_valid_yaml(config: Path | None) -> None:
    """render of the defaults, config.example.toml and each example's settings is strictly
    schema-valid (the Pod, and the job's Secret when there is one), for a sample job, with
    no cluster reachable."""
    result = render(*(["--config", str(config)] if config else []))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# runner-driver render: the objects `prepare` creates "
                                    "for a sample job (JOB_RESPONSE_FILE is not set)\n")
    *secrets, pod = documents(result.stdout)
    assert pod["kind"] == "Pod" and [s["kind"] for s in secrets] in ([], ["Secret"])
    for manifest in (*secrets, pod):
        assert kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_example_template_lands_in_the_rendered_pod() -> None:
    """The example template's node pool, tolerations, labels and resources are in the pod."""
    result = render("--config", str(EXAMPLES / "config-with-template.toml"))
    (pod,) = documents(result.stdout)
    template = yaml.safe_load((EXAMPLES / "pod-template.yaml").read_text(encoding="utf-8"))
    assert pod["spec"]["nodeSelector"] == {"node-pool": "ci-builds"}
    assert pod["spec"]["tolerations"] == template["spec"]["tolerations"]
    assert pod["metadata"]["labels"]["team"] == "platform"
    build = next(c for c in pod["spec"]["containers"] if c["name"] == "build")
    assert build["resources"]["limits"] == {"ephemeral-storage": "20Gi", "memory": "6Gi"}


@pytest.mark.parametrize("job", ["build-amd64", "build-arm64"])
def test_multi_arch_example_jobs_pin_their_architecture(tmp_path: Path, job: str) -> None:
    """Each build job of the multi-arch example, rendered with its own variables under the
    example settings, gets its architecture as a nodeSelector, and the header says so."""
    pipeline = yaml.safe_load((EXAMPLES / "multi-arch.gitlab-ci.yml").read_text(encoding="utf-8"))
    variables = pipeline[job]["variables"]
    result = render("--config", str(EXAMPLES / "config-with-template.toml"),
                    env=job_env(tmp_path, variables))
    assert result.returncode == 0, result.stderr
    (pod,) = documents(result.stdout)
    arch = variables["ARCH"]
    assert pod["spec"]["nodeSelector"] == {"node-pool": "ci-builds", "kubernetes.io/arch": arch}
    assert f"# KUBERNETES_NODE_SELECTOR_ARCH: kubernetes.io/arch={arch}\n" in result.stdout
    assert "the job in this environment" in result.stdout
    assert TOKEN not in result.stdout


def test_errors_name_the_key_the_file_or_the_variable(tmp_path: Path) -> None:
    """A missing template names the key and file; an override above its cap names the
    variable and the cap; both exit 1 with nothing on stdout."""
    config = tmp_path / "config.toml"
    config.write_text('[pod]\ntemplate = "nope.yaml"\n', encoding="utf-8")
    result = render("--config", str(config))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (f"runner-driver render: reading driver config {config}: "
                             f"pod.template: {tmp_path}/nope.yaml: No such file or directory\n")
    result = render("--config", str(EXAMPLES / "config-with-template.toml"),
                    env=job_env(tmp_path, {"KUBERNETES_MEMORY_LIMIT": "64Gi"}))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == ("runner-driver render: refusing KUBERNETES_MEMORY_LIMIT=64Gi: above "
                             "the runner's cap of 12Gi (overrides.build.memory_limit_max)\n")


def test_a_secret_never_reaches_the_output(tmp_path: Path) -> None:
    """A job trying to put its token into a pod label is refused without printing it."""
    result = render("--config", str(EXAMPLES / "config-with-template.toml"),
                    env=job_env(tmp_path, {"KUBERNETES_POD_LABELS_1": f"team={TOKEN}"}))
    assert result.returncode == 1
    assert TOKEN not in result.stdout + result.stderr
    assert "refusing KUBERNETES_POD_LABELS_1: its value holds one of the job's secrets" \
        in result.stderr


def test_secrets_are_shown_with_keys_and_redacted_values() -> None:
    """A Secret renders with its keys and each value replaced by its size; a Pod is as is."""
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
              "data": {"config.json": "eyJhdXRocyI6e319"}, "stringData": {"token": "abc"}}
    assert redacted(secret)["data"] == {"config.json": "<redacted: 16 characters>"}
    assert redacted(secret)["stringData"] == {"token": "<redacted: 3 characters>"}
    assert secret["data"] == {"config.json": "eyJhdXRocyI6e319"}
    pod = {"kind": "Pod", "data": {"x": "y"}}
    assert redacted(pod) is pod


def test_proxy_example_renders_the_ca_layer_and_the_build_args() -> None:
    """The proxy example's pod trusts the operator's CA in both containers and hands the
    pipeline its --build-arg flags; the header says which Secrets prepare reads."""
    result = render("--config", str(EXAMPLES / "config-behind-a-proxy.toml"))
    assert result.returncode == 0, result.stderr
    assert "# (not read here: the operator's registry secrets corp-mirror and the CA in " \
           "corp-ca, which prepare merges in)" in result.stdout
    secret, pod = documents(result.stdout)
    assert secret["kind"] == "Secret" and set(secret["data"]) == {"ca.crt"}
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    for container in containers.values():
        assert "ca-bundle" in {m["name"] for m in container["volumeMounts"]}
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["https_proxy"] == env["HTTPS_PROXY"] == "http://proxy.corp.example.com:3128"
    build_env = {e["name"]: e.get("value") for e in containers["build"]["env"]}
    assert "--build-arg=no_proxy=.svc,.cluster.local,10.0.0.0/8,registry.corp.example.com" \
        in build_env["RUNNER_DRIVER_PROXY_BUILD_ARGS"].split()
    pipeline = (EXAMPLES / "behind-a-proxy.gitlab-ci.yml").read_text(encoding="utf-8")
    assert "${RUNNER_DRIVER_PROXY_BUILD_ARGS}" in yaml.safe_load(pipeline)["build-image"][
        "script"][0]
