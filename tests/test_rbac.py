"""The chart's Role grants exactly what the driver needs: real jobs (with an operator
registry Secret and a CA Secret and ConfigMap, a refused create, an evicted pod, a pod
that cannot start, cleanups) and `runner-driver gc` run on the emulated cluster as the
chart's ServiceAccount, which enforces RBAC, so a missing rule fails them with 403; and
the (verb, resource) pairs the API server authorized for that identity (websocket exec's
`create`, checked since Kubernetes 1.35, included) must equal what the Role grants.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from kubernetes import client

from runner_driver import permissions
from runner_driver.emulator import EmulatedCluster
from runner_driver.emulator.runner import Job, StageFailed

from .conftest import make_runner, next_job_id, wait_for

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "runner-driver"
NS = "default"
# Allowed by the default allow-list, unknown to the emulated registry (see test_faults.py).
UNPULLABLE = "cgr.dev/chainguard/kaniko:nodebug"
# The chart's test CA (a certificate only; no key exists anywhere).
CA_PEM: str = yaml.safe_load((CHART / "ci" / "ca-proxy-registry-values.yaml").read_text(
    encoding="utf-8"))["driver"]["caBundle"]
SETTINGS = """\
[kubernetes]
request_timeout_seconds = 10.0
retry_timeout_seconds = 20.0
[manager]
id = "rbac-test"
[registry]
secrets = ["corp-registry"]
[tls]
ca_secret = "corp-ca"
ca_configmap = "corp-ca-bundle"
"""
def chart_identity() -> dict[str, dict[str, Any]]:
    """The ServiceAccount, Role and RoleBinding the chart renders with its default values."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render({}, name="rbac", namespace=NS)
    found = {doc["kind"]: doc for path, text in rendered.items() if path.endswith(".yaml")
             for doc in yaml.safe_load_all(text)
             if doc and doc.get("kind") in ("ServiceAccount", "Role", "RoleBinding")}
    assert set(found) == {"ServiceAccount", "Role", "RoleBinding"}, sorted(found)
    return found


def granted_by_chart() -> set[tuple[str, str]]:
    """(verb, resource) pairs of the Role the chart renders with its default values."""
    role = chart_identity()["Role"]
    pairs = set()
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""], rule
        pairs |= {(verb, resource) for verb in rule["verbs"] for resource in rule["resources"]}
    return pairs


def used(before: dict[str, int], after: dict[str, int]) -> set[tuple[str, str]]:
    """(verb, resource) pairs authorized between two counts of authorization checks."""
    pairs = [key.split(" ", 1) for key, count in after.items() if count > before.get(key, 0)]
    return {(verb, resource) for verb, resource in pairs}


def test_the_role_grants_exactly_what_jobs_and_gc_request(
        cluster: EmulatedCluster, kubeconfig: Path, core: client.CoreV1Api,
        tmp_path: Path) -> None:
    """Jobs (operator Secrets and CA, a failed start, cleanups) and gc, run as the chart's
    ServiceAccount bound to its Role, succeed, and use every permission it grants."""
    login = {"auths": {"registry.example.com": {"auth": base64.b64encode(b"op:pw").decode()}}}
    core.create_namespaced_secret(NS, {
        "metadata": {"name": "corp-registry"}, "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(login).encode()).decode()}})
    core.create_namespaced_secret(NS, {"metadata": {"name": "corp-ca"},
                                       "stringData": {"ca.crt": CA_PEM}})
    core.create_namespaced_config_map(NS, {"metadata": {"name": "corp-ca-bundle"},
                                           "data": {"ca.crt": CA_PEM}})
    identity = chart_identity()
    account = identity["ServiceAccount"]["metadata"]["name"]
    core.create_namespaced_service_account(NS, identity["ServiceAccount"])
    rbac_api = client.RbacAuthorizationV1Api(core.api_client)
    rbac_api.create_namespaced_role(NS, identity["Role"])
    rbac_api.create_namespaced_role_binding(NS, identity["RoleBinding"])
    # The driver runs as the chart's ServiceAccount: anything the Role lacks is a 403.
    as_account = cluster.write_kubeconfig(tmp_path / "account" / "config", NS, account)
    user = f"system:serviceaccount:{NS}:{account}"
    runner: Any = make_runner(as_account, tmp_path, SETTINGS)
    before = cluster.authorization_counts(user)

    ok = runner.run_job(Job(job_id=next_job_id(), script=("echo built",)))
    assert ok.status == "success", ok.log.decode(errors="replace")
    assert b"Registry credentials for kaniko: registry.example.com" in ok.log
    # A pod create the API server refuses (403, as a quota does): prepare deletes the
    # job's Secret it made first, and the runner's next prepare attempt succeeds.
    cluster.fail_requests("POST", rf"^/api/v1/namespaces/{NS}/pods$", count=1, status=403)
    refused = runner.run_job(Job(job_id=next_job_id()))
    assert refused.status == "success" and refused.stages.count("prepare") == 2, \
        refused.log.decode(errors="replace")
    # The pod evicted between stages: run reads the pod to say why it is gone.
    with runner.session(Job(job_id=next_job_id())) as session:
        cluster.evict(NS, session.hostname)
        wait_for(lambda: not core.list_namespaced_pod(
            NS, field_selector=f"metadata.name={session.hostname}").items,
            timeout=15, what="the evicted pod to be gone")
        with pytest.raises(StageFailed) as lost:
            session.run_body("build_script", "echo unreachable\n")
        log = bytes(session.log)
    assert lost.value.kind == "system" and b"no longer exists" in log, log.decode(errors="replace")
    failed = runner.run_job(Job(job_id=next_job_id(), image=UNPULLABLE))
    assert (failed.status, failed.failure_reason) == ("failed", "runner_system_failure"), \
        failed.log.decode(errors="replace")
    gc = subprocess.run([*runner.driver, "gc"], env=runner.environ, capture_output=True,
                        text=True, timeout=60, check=False)
    assert gc.returncode == 0, gc.stderr

    def settled() -> set[tuple[str, str]] | None:
        # Requests still open (the watch) are logged when they arrive, so nothing lags.
        return used(before, cluster.authorization_counts(user)) or None

    requested = wait_for(settled, timeout=5, what="the request log")
    granted = granted_by_chart()
    missing, unused = sorted(requested - granted), sorted(granted - requested)
    assert not missing and not unused, (
        f"requested but not granted by the chart's Role: {missing}; "
        f"granted but never requested: {unused}")


def test_the_charts_role_is_permissions_py() -> None:
    """The rendered Role is the list in runner_driver/permissions.py, one rule per resource."""
    assert granted_by_chart() == {(p.verb, p.resource) for p in permissions.PERMISSIONS}
