"""RBAC, tokens, access reviews and Pod Security admission of the emulated API server.

Raw HTTP with each identity's bearer token, so the exact Status bodies show; nothing is
patched or mocked.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from runner_driver.emulator import EmulatedCluster
from runner_driver.emulator.rbac import ADMIN_TOKEN, service_account_token
from tests.conftest import finish, job_pod, open_session, wait_running

RBAC = "/apis/rbac.authorization.k8s.io/v1"
SSAR = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


def http(cluster: EmulatedCluster, method: str, path: str, body: Any = None,
         token: str = ADMIN_TOKEN) -> tuple[int, Any]:
    """One raw request as the token's user; the status code and the decoded JSON body."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 - the emulator's http:// URL
        cluster.url + path, data=data, method=method,
        headers={"Content-Type": "application/json", "Accept": "application/json",
                 "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def account(cluster: EmulatedCluster, core: client.CoreV1Api, namespace: str) -> str:
    """A service account `runner` in the test's namespace, bound to nothing; its token."""
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "runner"}})
    return service_account_token(namespace, "runner")


def grant(cluster: EmulatedCluster, namespace: str, rules: list[dict[str, Any]]) -> None:
    """A Role with `rules` bound to the service account `runner`, created through the API."""
    code, _ = http(cluster, "POST", f"{RBAC}/namespaces/{namespace}/roles",
                   {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": {"name": "runner"}, "rules": rules})
    assert code == 201
    code, _ = http(cluster, "POST", f"{RBAC}/namespaces/{namespace}/rolebindings",
                   {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": "runner"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                "name": "runner"},
                    "subjects": [{"kind": "ServiceAccount", "name": "runner",
                                  "namespace": namespace}]})
    assert code == 201


def review(cluster: EmulatedCluster, token: str, **attributes: str) -> dict[str, Any]:
    """A SelfSubjectAccessReview's status."""
    code, body = http(cluster, "POST", SSAR, {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes}}, token)
    assert code == 201
    status: dict[str, Any] = body["status"]
    return status


def test_unbound_service_account_gets_the_real_forbidden_status(
        cluster: EmulatedCluster, namespace: str, account: str) -> None:
    """A denied create is 403 with the API server's message and details, naming no object."""
    code, body = http(cluster, "POST", f"/api/v1/namespaces/{namespace}/pods",
                      job_pod("x"), account)
    assert code == 403
    assert body == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f'pods is forbidden: User "system:serviceaccount:{namespace}:runner" '
                   f'cannot create resource "pods" in API group "" in the namespace '
                   f'"{namespace}"',
        "reason": "Forbidden", "code": 403, "details": {"kind": "pods"}}


def test_forbidden_names_the_object_subresource_and_scope(
        cluster: EmulatedCluster, namespace: str, account: str) -> None:
    """A named request names the object; a subresource is `pods/exec`; cluster scope is said."""
    user = f"system:serviceaccount:{namespace}:runner"
    code, body = http(cluster, "POST", f"/api/v1/namespaces/{namespace}/pods/x/exec"
                                       "?command=true&stdout=true", None, account)
    assert code == 403
    assert body["message"] == (f'pods "x" is forbidden: User "{user}" cannot create resource '
                               f'"pods/exec" in API group "" in the namespace "{namespace}"')
    assert body["details"] == {"kind": "pods", "name": "x"}
    code, body = http(cluster, "GET", "/api/v1/nodes", None, account)
    assert code == 403
    assert body["message"] == (f'nodes is forbidden: User "{user}" cannot list resource '
                               '"nodes" in API group "" at the cluster scope')
    code, body = http(cluster, "GET", f"{RBAC}/namespaces/{namespace}/roles/r", None, account)
    assert body["message"] == (f'roles.rbac.authorization.k8s.io "r" is forbidden: User '
                               f'"{user}" cannot get resource "roles" in API group '
                               f'"rbac.authorization.k8s.io" in the namespace "{namespace}"')


def test_role_binding_allows_exactly_its_rules(cluster: EmulatedCluster, namespace: str,
                                               account: str) -> None:
    """Bound verbs on bound resources are allowed; other verbs, resources and names are not."""
    grant(cluster, namespace, [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"],
         "resourceNames": ["allowed"]}])
    pods = f"/api/v1/namespaces/{namespace}/pods"
    assert http(cluster, "POST", pods + "?dryRun=All", job_pod("x"), account)[0] == 201
    assert http(cluster, "GET", pods, None, account)[0] == 200
    assert http(cluster, "DELETE", pods + "/x", None, account)[0] == 403
    configmaps = f"/api/v1/namespaces/{namespace}/configmaps"
    assert http(cluster, "GET", configmaps + "/allowed", None, account)[0] == 404
    assert http(cluster, "GET", configmaps + "/other", None, account)[0] == 403
    # Another namespace's bindings grant nothing here.
    assert http(cluster, "GET", "/api/v1/namespaces/default/pods", None, account)[0] == 403


def test_access_review_answers_as_the_authorizer(cluster: EmulatedCluster, namespace: str,
                                                 account: str) -> None:
    """SSAR says allowed only once bound, with RBAC's reason; subresources are matched whole."""
    exec_create = {"namespace": namespace, "verb": "create", "resource": "pods",
                   "subresource": "exec"}
    assert review(cluster, account, **exec_create) == {"allowed": False}
    grant(cluster, namespace, [{"apiGroups": [""], "resources": ["pods/exec"],
                                "verbs": ["create"]}])
    assert review(cluster, account, **exec_create) == {
        "allowed": True,
        "reason": f'RBAC: allowed by RoleBinding "runner/{namespace}" of Role "runner" to '
                  f'ServiceAccount "runner/{namespace}"'}
    assert review(cluster, account, namespace=namespace, verb="create",
                  resource="pods") == {"allowed": False}
    assert review(cluster, ADMIN_TOKEN, namespace=namespace, verb="delete",
                  resource="nodes")["allowed"] is True


def test_tokens_nobody_issued_are_401(cluster: EmulatedCluster, namespace: str) -> None:
    """An unknown token, or one of a service account that does not exist, is Unauthorized."""
    for token in ("nonsense", service_account_token(namespace, "missing")):
        code, body = http(cluster, "GET", f"/api/v1/namespaces/{namespace}/pods", None, token)
        assert (code, body["reason"], body["message"]) == (401, "Unauthorized", "Unauthorized")


def test_rbac_objects_are_served_in_their_group(cluster: EmulatedCluster,
                                                namespace: str) -> None:
    """Roles come back with their group's apiVersion, in lists and discovery."""
    grant(cluster, namespace, [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}])
    code, body = http(cluster, "GET", f"{RBAC}/namespaces/{namespace}/roles")
    assert code == 200
    assert body["apiVersion"] == "rbac.authorization.k8s.io/v1"
    assert [r["metadata"]["name"] for r in body["items"]] == ["runner"]
    code, body = http(cluster, "GET", f"{RBAC}/namespaces/{namespace}/roles/runner")
    assert (body["kind"], body["apiVersion"]) == ("Role", "rbac.authorization.k8s.io/v1")
    code, body = http(cluster, "GET", "/apis")
    assert "rbac.authorization.k8s.io" in [g["name"] for g in body["groups"]]
    code, body = http(cluster, "GET", "/api/v1")
    assert "roles" not in [r["name"] for r in body["resources"]]


def test_pod_security_restricted_refuses_with_the_real_message(
        cluster: EmulatedCluster, core: client.CoreV1Api, namespace: str) -> None:
    """A `restricted` namespace refuses a root pod, dry runs included, naming every check."""
    core.patch_namespace(namespace, {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted"}}})
    pod = job_pod("root")
    pod["spec"]["containers"] = pod["spec"]["containers"][:1]
    code, body = http(cluster, "POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All", pod)
    assert code == 403
    assert body["message"] == (
        'pods "root" is forbidden: violates PodSecurity "restricted:latest": '
        'allowPrivilegeEscalation != false (container "helper" must set '
        "securityContext.allowPrivilegeEscalation=false), unrestricted capabilities "
        '(container "helper" must set securityContext.capabilities.drop=["ALL"]), '
        'runAsNonRoot != true (pod or container "helper" must set '
        "securityContext.runAsNonRoot=true), seccompProfile (pod or container \"helper\" "
        'must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")')


def test_pod_security_baseline_refuses_privileged_only(
        cluster: EmulatedCluster, core: client.CoreV1Api, namespace: str) -> None:
    """`baseline` admits an ordinary root pod and refuses a privileged one by name."""
    core.patch_namespace(namespace, {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "baseline",
        "pod-security.kubernetes.io/enforce-version": "v1.34"}}})
    pods = f"/api/v1/namespaces/{namespace}/pods?dryRun=All"
    assert http(cluster, "POST", pods, job_pod("plain"))[0] == 201
    privileged = job_pod("privileged")
    privileged["spec"]["containers"][1]["securityContext"] = {"privileged": True}
    code, body = http(cluster, "POST", pods, privileged)
    assert code == 403
    assert body["message"] == ('pods "privileged" is forbidden: violates PodSecurity '
                               '"baseline:v1.34": privileged (container "build" must not set '
                               "securityContext.privileged=true)")


def test_dry_run_in_a_missing_namespace_is_404(cluster: EmulatedCluster) -> None:
    """A dry-run create meets NamespaceLifecycle as a real one does."""
    code, body = http(cluster, "POST", "/api/v1/namespaces/absent-ns/pods?dryRun=All",
                      job_pod("x"))
    assert (code, body["message"]) == (404, 'namespaces "absent-ns" not found')


def test_websocket_exec_needs_create_as_well_as_get(
        cluster: EmulatedCluster, core: client.CoreV1Api, namespace: str, account: str,
        tmp_path: Path) -> None:
    """A websocket exec (it opens with GET) is refused with `get` alone on pods/exec and
    allowed with `get` and `create`, as Kubernetes >= 1.35 authorizes upgrades."""
    core.create_namespaced_pod(namespace, job_pod("box"))
    wait_running(core, namespace, "box")
    as_account = client.CoreV1Api(config.new_client_from_config(str(
        cluster.write_kubeconfig(tmp_path / "config", namespace, "runner"))))
    grant(cluster, namespace, [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
                               {"apiGroups": [""], "resources": ["pods/exec"],
                                "verbs": ["get"]}])
    user = f"system:serviceaccount:{namespace}:runner"
    with pytest.raises(ApiException) as refused:
        finish(open_session(as_account, namespace, "box", ["true"], "helper"))
    # The client reports a refused upgrade as its handshake's status, with the body.
    assert "Handshake status 403" in str(refused.value)
    assert f'User \\"{user}\\" cannot create resource \\"pods/exec\\"' in str(refused.value)
    code, _ = http(cluster, "PUT", f"{RBAC}/namespaces/{namespace}/roles/runner", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "runner"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
                  {"apiGroups": [""], "resources": ["pods/exec"],
                   "verbs": ["get", "create"]}]})
    assert code == 200
    out, _, status = finish(open_session(as_account, namespace, "box", ["echo", "in"],
                                         "helper"))
    assert (out, status["status"]) == (b"in\n", "Success")
    assert cluster.authorization_counts(user).get("create pods/exec", 0) == 2
