"""`runner-driver check` against the emulated cluster, as the admin and as a service account.

The command runs through `cli.main` with real settings files and kubeconfigs; the
emulated API server answers the access reviews, enforces RBAC and Pod Security, and
admits the dry-run pod over real HTTP.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from runner_driver import cli, permissions
from runner_driver.emulator import EmulatedCluster
from runner_driver.emulator.rbac import ADMIN_TOKEN

RBAC = "/apis/rbac.authorization.k8s.io/v1"
ENFORCE = "pod-security.kubernetes.io/enforce"


@pytest.fixture
def check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    """`runner-driver --config FILE check` with these settings: (exit code, table)."""
    def run(kubeconfig: Path, namespace: str, extra: str = "") -> tuple[int, str]:
        config = tmp_path / "driver.toml"
        config.write_text(f'[kubernetes]\nkubeconfig = "{kubeconfig}"\n'
                          f'namespace = "{namespace}"\nretry_timeout_seconds = 2\n{extra}',
                          encoding="utf-8")
        code = cli.main(["--config", str(config), "check"])
        return code, capsys.readouterr().out

    return run


def post(cluster: EmulatedCluster, path: str, body: dict[str, Any]) -> None:
    """Create an object through the API as the admin."""
    request = urllib.request.Request(  # noqa: S310 - the emulator's http:// URL
        cluster.url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        assert response.status == 201


def service_account(cluster: EmulatedCluster, core: client.CoreV1Api, namespace: str,
                    rules: list[dict[str, Any]], tmp_path: Path) -> Path:
    """A service account `runner` bound to a Role with `rules`; a kubeconfig for it."""
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "runner"}})
    post(cluster, f"{RBAC}/namespaces/{namespace}/roles",
         {"metadata": {"name": "runner-driver"}, "rules": rules})
    post(cluster, f"{RBAC}/namespaces/{namespace}/rolebindings",
         {"metadata": {"name": "runner-driver"},
          "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                      "name": "runner-driver"},
          "subjects": [{"kind": "ServiceAccount", "name": "runner", "namespace": namespace}]})
    return cluster.write_kubeconfig(tmp_path / "sa-kubeconfig", namespace, "runner")


def rows(table: str, status: str) -> list[str]:
    """The table's rows with this result."""
    return [line for line in table.splitlines() if line.startswith(status + " ")]


def test_admin_passes_in_a_baseline_namespace(check: Any, kubeconfig: Path,
                                              core: client.CoreV1Api, namespace: str) -> None:
    """With the admin kubeconfig every row passes, the driver pod meets baseline: exit 0."""
    core.patch_namespace(namespace, {"metadata": {"labels": {ENFORCE: "baseline"}}})
    code, table = check(kubeconfig, namespace)
    assert code == 0, table
    assert not rows(table, "FAIL") and not rows(table, "SKIP")
    assert len(rows(table, "PASS")) == len(permissions.PERMISSIONS) + 3
    assert f"namespace {namespace} exists" in table
    assert "Pod Security enforce: baseline" in table
    assert "checks passed: a job can run here" in table


def test_service_account_with_the_driver_role_passes(
        check: Any, cluster: EmulatedCluster, core: client.CoreV1Api, namespace: str,
        tmp_path: Path) -> None:
    """A service account granted exactly permissions.rules() can run jobs (no namespace read)."""
    sa_config = service_account(cluster, core, namespace, permissions.rules(), tmp_path)
    code, table = check(sa_config, namespace)
    assert code == 0, table
    assert f"as ServiceAccount {namespace}/runner" in table
    assert "the dry-run create found it" in table
    assert not rows(table, "FAIL")


def test_role_without_pods_exec_fails_naming_it(
        check: Any, cluster: EmulatedCluster, core: client.CoreV1Api, namespace: str,
        tmp_path: Path) -> None:
    """Without pods/exec the check fails (exit 1), saying which verbs to grant to whom, and why."""
    rules = [r for r in permissions.rules() if r["resources"] != ["pods/exec"]]
    sa_config = service_account(cluster, core, namespace, rules, tmp_path)
    code, table = check(sa_config, namespace)
    assert code == 1
    failed = rows(table, "FAIL")
    assert len(failed) == 2, table
    for verb in ("get", "create"):
        assert (f"grant `{verb}` on `pods/exec` in namespace {namespace} to ServiceAccount "
                f"{namespace}/runner: run: streams each stage into its container") in table
    assert "2 of" in table and "a job cannot run here" in table


def test_optional_permissions_are_skipped_when_not_needed(
        check: Any, cluster: EmulatedCluster, core: client.CoreV1Api, namespace: str,
        tmp_path: Path) -> None:
    """Without registry secrets or CA objects set, missing `get secrets/configmaps` is a SKIP."""
    rules = [r for r in permissions.rules() if r["resources"] != ["configmaps"]]
    for rule in rules:
        if rule["resources"] == ["secrets"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != "get"]
    sa_config = service_account(cluster, core, namespace, rules, tmp_path)
    code, table = check(sa_config, namespace)
    assert code == 0, table
    skipped = rows(table, "SKIP")
    assert [line.split()[1:3] for line in skipped] == [["get", "secrets"],
                                                       ["get", "configmaps"]]


def test_missing_namespace_is_named(check: Any, kubeconfig: Path) -> None:
    """A namespace that does not exist fails its row and the dry run, naming it."""
    code, table = check(kubeconfig, "no-such-namespace")
    assert code == 1
    assert any("namespace no-such-namespace exists" in row and
               "kubectl create namespace no-such-namespace" in row
               for row in rows(table, "FAIL")), table
    assert 'namespaces "no-such-namespace" not found' in table


def test_restricted_namespace_fails_the_dry_run_with_the_psa_message(
        check: Any, kubeconfig: Path, core: client.CoreV1Api, namespace: str) -> None:
    """The driver pod is baseline, not restricted: the dry run fails naming PSA's refusal."""
    core.patch_namespace(namespace, {"metadata": {"labels": {ENFORCE: "restricted"}}})
    code, table = check(kubeconfig, namespace)
    assert code == 1
    (failed,) = rows(table, "FAIL")
    assert "the sample job's pod is admitted (server-side dry run)" in failed
    assert 'violates PodSecurity "restricted:latest"' in failed
    assert 'runAsNonRoot != true (pod or container "build" must set' in failed
    assert f"label namespace {namespace} with {ENFORCE}=baseline" in failed


def test_missing_registry_secret_is_named(check: Any, kubeconfig: Path,
                                          namespace: str) -> None:
    """A registry Secret named in [registry] secrets that does not exist fails its row."""
    code, table = check(kubeconfig, namespace, '[registry]\nsecrets = ["regcred"]\n')
    assert code == 1
    (failed,) = rows(table, "FAIL")
    assert f"registry Secret {namespace}/regcred ([registry] secrets)" in failed
    assert "it does not exist" in failed
    assert f"kubectl -n {namespace} create secret docker-registry regcred" in failed


def test_unreachable_api_is_one_failure(check: Any, tmp_path: Path,
                                        cluster: EmulatedCluster) -> None:
    """No API server at the kubeconfig's address: one FAIL row saying so, exit 1."""
    config = cluster.kubeconfig("default")
    config["clusters"][0]["cluster"]["server"] = "http://127.0.0.1:9"
    path = tmp_path / "unreachable"
    path.write_text(json.dumps(config), encoding="utf-8")
    code, table = check(path, "default")
    assert code == 1
    (failed,) = rows(table, "FAIL")
    assert "reach the Kubernetes API at http://127.0.0.1:9" in failed
    assert len(table.strip().splitlines()) == 4  # header, the row, blank line, verdict
