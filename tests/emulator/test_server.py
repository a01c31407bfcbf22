"""Kubernetes API semantics of the emulated cluster, over the wire.

Every test talks to the emulated API server through the official `kubernetes` client,
or through raw HTTP where the client hides what matters (exact `Status` bodies,
content types, query strings). Nothing is patched or mocked.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from runner_driver.emulator import EmulatedCluster
from tests.conftest import wait_for, wait_running

BUSYBOX = "busybox:1.36"
# PID 1 exits at once on SIGTERM.
TRAPS_TERM = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"]
# PID 1 of a pid namespace without a TERM handler: the kernel drops SIGTERM.
IGNORES_TERM = ["sh", "-c", "while :; do sleep 1; done"]
# A node selector no node matches: the pod stays Pending and never starts a process.
NEVER_SCHEDULED = {"emulator.test/never": "true"}
TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def busybox_pod(name: str, command: list[str] | None = None, grace: int = 1,
                **spec: Any) -> dict[str, Any]:
    """A one-container busybox pod without a service account token."""
    body: dict[str, Any] = {
        "metadata": {"name": name, "labels": {"app": "api-test"}},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": grace,
                 "automountServiceAccountToken": False,
                 "containers": [{"name": "main", "image": BUSYBOX,
                                 "command": command or TRAPS_TERM}]},
    }
    body["spec"].update(spec)
    return body


def pending_pod(name: str, **spec: Any) -> dict[str, Any]:
    """A pod no node accepts, so it is only ever an API object."""
    return busybox_pod(name, nodeSelector=NEVER_SCHEDULED, **spec)


def http(cluster: EmulatedCluster, method: str, path: str, body: Any = None,
         content_type: str = "application/json",
         accept: str = "application/json") -> tuple[int, Any]:
    """One raw HTTP request; return the status code and the decoded JSON body."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 - the emulator's http:// URL
        cluster.url + path, data=data, method=method,
        headers={"Content-Type": content_type, "Accept": accept,
                 "Authorization": "Bearer emulated-admin-token"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def status_body(error: ApiException) -> dict[str, Any]:
    """The Status object an ApiException carries."""
    body = json.loads(error.body)
    assert isinstance(body, dict)
    return body


def raises_api(code: int, call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a client method, expect an ApiException with `code`; return its Status."""
    with pytest.raises(ApiException) as caught:
        call(*args, **kwargs)
    assert caught.value.status == code, caught.value.body
    body = status_body(caught.value)
    assert body["kind"] == "Status"
    assert body["status"] == "Failure"
    assert body["code"] == code
    return body


def gone(read: Any, *args: Any) -> bool:
    """Whether reading an object answers 404."""
    try:
        read(*args)
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def parse_time(stamp: str) -> datetime:
    """An RFC 3339 timestamp as the API serialises it."""
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


# Discovery


def test_version_endpoint(api_client: client.ApiClient) -> None:
    """/version reports a v1.x gitVersion with matching major and minor."""
    info = client.VersionApi(api_client).get_code()
    assert info.major == "1"
    assert re.fullmatch(r"v1\.\d+\.\d+", info.git_version)
    assert info.git_version.split(".")[1] == info.minor
    assert info.platform == "linux/amd64"


def test_core_api_versions(api_client: client.ApiClient, cluster: EmulatedCluster) -> None:
    """/api lists the legacy core group's only version, v1."""
    assert client.CoreApi(api_client).get_api_versions().versions == ["v1"]
    code, body = http(cluster, "GET", "/api")
    assert code == 200
    assert body["kind"] == "APIVersions"


def test_core_v1_resource_list(core: client.CoreV1Api) -> None:
    """/api/v1 lists the core resources with scope and verbs, and the pod subresources."""
    resources = {r.name: r for r in core.get_api_resources().resources}
    for name in ("pods", "pods/exec", "pods/log", "secrets", "configmaps", "serviceaccounts",
                 "events", "namespaces", "nodes"):
        assert name in resources, name
    assert resources["pods"].namespaced and resources["pods"].kind == "Pod"
    assert {"create", "delete", "get", "list", "patch", "update", "watch"} \
        <= set(resources["pods"].verbs)
    assert not resources["namespaces"].namespaced
    assert "ns" in resources["namespaces"].short_names
    assert resources["pods/exec"].kind == "PodExecOptions"
    assert {"create", "get"} <= set(resources["pods/exec"].verbs)
    assert resources["pods/log"].verbs == ["get"]


def test_api_groups(api_client: client.ApiClient, cluster: EmulatedCluster) -> None:
    """/apis answers an APIGroupList the client can read."""
    groups = client.ApisApi(api_client).get_api_versions()
    assert isinstance(groups.groups, list)
    code, body = http(cluster, "GET", "/apis")
    assert code == 200
    assert body["kind"] == "APIGroupList"


# Status errors


def test_missing_pod_is_404_status(core: client.CoreV1Api, cluster: EmulatedCluster,
                                   namespace: str) -> None:
    """A missing pod is a 404 NotFound Status naming it, raw and through the client."""
    code, body = http(cluster, "GET", f"/api/v1/namespaces/{namespace}/pods/x")
    assert code == 404
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["reason"] == "NotFound" and body["code"] == 404
    assert body["message"] == 'pods "x" not found'
    assert body["details"] == {"name": "x", "kind": "pods"}
    assert raises_api(404, core.read_namespaced_pod, "x", namespace) == body


def test_duplicate_create_is_409(core: client.CoreV1Api, namespace: str) -> None:
    """Creating a name twice is 409 AlreadyExists."""
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "twice"}})
    body = raises_api(409, core.create_namespaced_config_map, namespace,
                      {"metadata": {"name": "twice"}})
    assert body["reason"] == "AlreadyExists"
    assert body["message"] == 'configmaps "twice" already exists'
    assert body["details"]["name"] == "twice"


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda p: p["metadata"].update(name="Bad_Name"), "metadata.name"),
    (lambda p: p["spec"]["containers"][0].pop("image"), "spec.containers[0].image"),
    (lambda p: p["spec"]["containers"][0].update(
        volumeMounts=[{"name": "undeclared", "mountPath": "/data"}]),
     "spec.containers[0].volumeMounts[0].name"),
    (lambda p: p["spec"]["containers"].append(dict(p["spec"]["containers"][0])),
     "spec.containers[1].name"),
], ids=["bad-name", "missing-image", "undeclared-volume", "duplicate-container"])
def test_invalid_pod_is_422_with_causes(core: client.CoreV1Api, namespace: str,
                                        mutate: Any, field: str) -> None:
    """An invalid pod is 422 Invalid with a cause naming the offending field."""
    pod = pending_pod("invalid")
    mutate(pod)
    body = raises_api(422, core.create_namespaced_pod, namespace, pod)
    assert body["reason"] == "Invalid"
    name = pod["metadata"]["name"]
    assert body["message"].startswith(f'Pod "{name}" is invalid: ')
    assert body["details"]["kind"] == "Pod"
    assert field in [c["field"] for c in body["details"]["causes"]]
    assert gone(core.read_namespaced_pod, name, namespace)


def test_missing_service_account_is_403(core: client.CoreV1Api, namespace: str) -> None:
    """A pod naming a service account that does not exist is refused with 403 Forbidden."""
    body = raises_api(403, core.create_namespaced_pod, namespace,
                      pending_pod("orphan", serviceAccountName="ghost"))
    assert body["reason"] == "Forbidden"
    assert body["message"] == (f'pods "orphan" is forbidden: error looking up service account '
                               f'{namespace}/ghost: serviceaccount "ghost" not found')


# Server-set metadata and defaults


def test_server_sets_metadata(core: client.CoreV1Api, namespace: str) -> None:
    """Creates get a uid, a growing resourceVersion and a creationTimestamp; writes bump it."""
    before = datetime.now(UTC).replace(microsecond=0)
    first = core.create_namespaced_config_map(namespace, {"metadata": {"name": "one"}})
    second = core.create_namespaced_config_map(namespace, {"metadata": {"name": "two"}})
    assert str(uuid.UUID(first.metadata.uid)) == first.metadata.uid
    assert first.metadata.uid != second.metadata.uid
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    assert before <= first.metadata.creation_timestamp <= datetime.now(UTC)
    patched = core.patch_namespaced_config_map("one", namespace, {"data": {"k": "v"}})
    assert int(patched.metadata.resource_version) > int(second.metadata.resource_version)
    assert patched.metadata.uid == first.metadata.uid
    assert patched.metadata.creation_timestamp == first.metadata.creation_timestamp


def test_generate_name(core: client.CoreV1Api, namespace: str) -> None:
    """generateName gets a unique random suffix per create."""
    names = {core.create_namespaced_secret(namespace, {"metadata": {"generateName": "job-"}})
             .metadata.name for _ in range(5)}
    assert len(names) == 5
    assert all(re.fullmatch(r"job-[a-z0-9]{5}", n) for n in names), names


def test_stored_pod_gets_defaults_and_token_volume(core: client.CoreV1Api,
                                                   namespace: str) -> None:
    """A stored pod carries the API defaults and the service account token volume."""
    body: dict[str, Any] = {"metadata": {"name": "defaults"}, "spec": {
        "nodeSelector": NEVER_SCHEDULED,
        "containers": [{"name": "main", "image": BUSYBOX, "command": TRAPS_TERM}]}}
    created = core.create_namespaced_pod(namespace, body)
    pod = core.read_namespaced_pod("defaults", namespace)
    assert created.spec == pod.spec
    assert pod.spec.restart_policy == "Always"
    assert pod.spec.termination_grace_period_seconds == 30
    assert pod.spec.service_account_name == "default"
    assert pod.spec.dns_policy == "ClusterFirst"
    assert pod.spec.scheduler_name == "default-scheduler"
    tolerations = {(t.key, t.operator, t.effect, t.toleration_seconds)
                   for t in pod.spec.tolerations}
    assert ("node.kubernetes.io/not-ready", "Exists", "NoExecute", 300) in tolerations
    assert ("node.kubernetes.io/unreachable", "Exists", "NoExecute", 300) in tolerations
    assert pod.spec.containers[0].image_pull_policy == "IfNotPresent"
    assert pod.spec.containers[0].termination_message_path == "/dev/termination-log"
    assert pod.status.phase == "Pending"
    assert pod.status.qos_class == "BestEffort"
    tokens = [v for v in pod.spec.volumes if v.name.startswith("kube-api-access-")]
    assert len(tokens) == 1
    sources = tokens[0].projected.sources
    assert sources[0].service_account_token.path == "token"
    assert sources[1].config_map.name == "kube-root-ca.crt"
    mounts = [m for m in pod.spec.containers[0].volume_mounts if m.mount_path == TOKEN_MOUNT]
    assert [(m.name, m.read_only) for m in mounts] == [(tokens[0].name, True)]


def test_automount_false_skips_token_volume(core: client.CoreV1Api, namespace: str) -> None:
    """automountServiceAccountToken false, on the pod or its service account, mounts no token."""
    core.create_namespaced_service_account(namespace, {
        "metadata": {"name": "quiet"}, "automountServiceAccountToken": False})
    by_pod = core.create_namespaced_pod(namespace, pending_pod("by-pod"))
    body = pending_pod("by-sa", serviceAccountName="quiet")
    del body["spec"]["automountServiceAccountToken"]
    by_sa = core.create_namespaced_pod(namespace, body)
    for pod in (by_pod, by_sa):
        assert not [v for v in pod.spec.volumes or [] if v.projected is not None]
        assert not pod.spec.containers[0].volume_mounts
    assert by_sa.spec.service_account_name == "quiet"


# Namespaces


def test_namespace_lifecycle(core: client.CoreV1Api) -> None:
    """A namespace is created Active with its default SA and CA configmap, listed, then deleted."""
    name = "ns-" + uuid.uuid4().hex[:8]
    created = core.create_namespace({"metadata": {"name": name}})
    assert created.status.phase == "Active"
    assert created.metadata.labels["kubernetes.io/metadata.name"] == name
    assert core.read_namespace(name).metadata.uid == created.metadata.uid
    assert name in [n.metadata.name for n in core.list_namespace().items]
    wait_for(lambda: not gone(core.read_namespaced_service_account, "default", name),
             what="default service account")
    wait_for(lambda: not gone(core.read_namespaced_config_map, "kube-root-ca.crt", name),
             what="kube-root-ca.crt")
    # This client version returns the raw object for namespace deletes.
    deleted = core.delete_namespace(name)
    assert deleted["kind"] == "Namespace"
    assert deleted["status"]["phase"] == "Terminating"
    assert deleted["metadata"]["deletionTimestamp"]
    wait_for(lambda: gone(core.read_namespace, name), what=f"namespace {name} to go")


def test_namespace_deletion_removes_contents(core: client.CoreV1Api) -> None:
    """Deleting a namespace: Terminating, creates refused with 403, then pods and secrets gone."""
    name = "ns-" + uuid.uuid4().hex[:8]
    core.create_namespace({"metadata": {"name": name}})
    wait_for(lambda: not gone(core.read_namespaced_service_account, "default", name),
             what="default service account")
    core.create_namespaced_secret(name, {"metadata": {"name": "s"}, "stringData": {"a": "b"}})
    # Ignores SIGTERM with a 1 s grace period: the namespace stays Terminating that long.
    core.create_namespaced_pod(name, busybox_pod("slow", IGNORES_TERM, grace=1))
    wait_running(core, name, "slow")
    core.delete_namespace(name)
    assert core.read_namespace(name).status.phase == "Terminating"
    assert core.read_namespace(name).metadata.deletion_timestamp is not None
    assert core.read_namespaced_pod("slow", name).metadata.deletion_timestamp is not None
    body = raises_api(403, core.create_namespaced_config_map, name, {"metadata": {"name": "c"}})
    assert body["reason"] == "Forbidden"
    assert body["message"] == (f'configmaps "c" is forbidden: unable to create new content in '
                               f"namespace {name} because it is being terminated")
    assert body["details"]["causes"][0]["reason"] == "NamespaceTerminating"
    wait_for(lambda: gone(core.read_namespace, name), timeout=10, what=f"namespace {name}")
    assert gone(core.read_namespaced_pod, "slow", name)
    assert gone(core.read_namespaced_secret, "s", name)
    assert core.list_namespaced_pod(name).items == []


def test_create_in_missing_namespace_is_404(core: client.CoreV1Api) -> None:
    """Creating in a namespace that does not exist is 404 naming the namespace."""
    body = raises_api(404, core.create_namespaced_secret, "no-such-ns",
                      {"metadata": {"name": "s"}})
    assert body["reason"] == "NotFound"
    assert body["message"] == 'namespaces "no-such-ns" not found'


# Secrets, configmaps, service accounts, events


def test_secret_string_data_folds_into_data(core: client.CoreV1Api, namespace: str) -> None:
    """stringData is stored base64-encoded under data (winning over data) and not kept."""
    created = core.create_namespaced_secret(namespace, {
        "metadata": {"name": "creds"},
        "data": {"user": base64.b64encode(b"old").decode(),
                 "keep": base64.b64encode(b"\x00\xff").decode()},
        "stringData": {"user": "admin", "password": "s3cret"}})
    assert created.type == "Opaque"
    read = core.read_namespaced_secret("creds", namespace)
    assert read.string_data is None
    assert {k: base64.b64decode(v) for k, v in read.data.items()} == {
        "user": b"admin", "password": b"s3cret", "keep": b"\x00\xff"}


def test_secret_invalid_base64_is_rejected(core: client.CoreV1Api, cluster: EmulatedCluster,
                                           namespace: str) -> None:
    """A secret whose data is not base64 is refused with 400 and not stored."""
    secret = {"metadata": {"name": "bad"}, "data": {"k": "not base64!"}}
    code, body = http(cluster, "POST", f"/api/v1/namespaces/{namespace}/secrets", secret)
    assert code == 400
    assert body["kind"] == "Status" and body["reason"] == "BadRequest"
    raises_api(400, core.create_namespaced_secret, namespace, secret)
    assert gone(core.read_namespaced_secret, "bad", namespace)


def test_secret_crud_and_patches(core: client.CoreV1Api, namespace: str) -> None:
    """Secrets: create, get, list, merge patch, JSON patch and delete with a Success Status."""
    core.create_namespaced_secret(namespace, {"metadata": {"name": "s1", "labels": {"x": "1"}},
                                              "stringData": {"a": "1", "b": "2"}})
    assert core.read_namespaced_secret("s1", namespace).metadata.labels == {"x": "1"}
    listed = core.list_namespaced_secret(namespace)
    assert [s.metadata.name for s in listed.items] == ["s1"]
    assert int(listed.metadata.resource_version) > 0
    merged = core.patch_namespaced_secret(
        "s1", namespace, {"metadata": {"labels": {"x": None, "y": "2"}}, "data": {"a": None}},
        _content_type="application/merge-patch+json")
    assert merged.metadata.labels == {"y": "2"}
    assert set(merged.data) == {"b"}
    patched = core.patch_namespaced_secret(
        "s1", namespace, [{"op": "add", "path": "/data/c", "value": "Mw=="},
                          {"op": "replace", "path": "/metadata/labels/y", "value": "3"}])
    assert patched.data == {"b": "Mg==", "c": "Mw=="}
    assert patched.metadata.labels == {"y": "3"}
    status = core.delete_namespaced_secret("s1", namespace)
    assert status["kind"] == "Status" and status["status"] == "Success"
    assert status["details"] == {"name": "s1", "kind": "secrets", "uid": patched.metadata.uid}
    assert gone(core.read_namespaced_secret, "s1", namespace)
    raises_api(404, core.delete_namespaced_secret, "s1", namespace)


def test_configmap_crud_and_patches(core: client.CoreV1Api, namespace: str) -> None:
    """ConfigMaps: create, get, list, strategic merge patch, JSON patch, delete."""
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cm"},
                                                  "data": {"a": "1", "b": "2"}})
    assert core.read_namespaced_config_map("cm", namespace).data == {"a": "1", "b": "2"}
    names = [c.metadata.name for c in core.list_namespaced_config_map(namespace).items]
    assert names == ["cm", "kube-root-ca.crt"]
    assert core.patch_namespaced_config_map("cm", namespace, {"data": {"b": "3", "c": "4"}}) \
        .data == {"a": "1", "b": "3", "c": "4"}
    assert core.patch_namespaced_config_map("cm", namespace, [
        {"op": "remove", "path": "/data/a"}, {"op": "test", "path": "/data/c", "value": "4"},
    ]).data == {"b": "3", "c": "4"}
    core.delete_namespaced_config_map("cm", namespace)
    assert gone(core.read_namespaced_config_map, "cm", namespace)


def test_service_account_crud(core: client.CoreV1Api, namespace: str) -> None:
    """ServiceAccounts: create, get, list, patch, delete."""
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "builder"}})
    assert core.read_namespaced_service_account("builder", namespace).metadata.name == "builder"
    names = {s.metadata.name for s in core.list_namespaced_service_account(namespace).items}
    assert names == {"builder", "default"}
    patched = core.patch_namespaced_service_account(
        "builder", namespace, {"automountServiceAccountToken": False})
    assert patched.automount_service_account_token is False
    core.delete_namespaced_service_account("builder", namespace)
    assert gone(core.read_namespaced_service_account, "builder", namespace)


def test_event_crud(core: client.CoreV1Api, namespace: str) -> None:
    """Events: create, get, list by involvedObject field selector, patch, delete."""
    event = {"metadata": {"name": "ev1"}, "reason": "Testing", "message": "hello",
             "type": "Normal", "count": 1,
             "involvedObject": {"kind": "Pod", "name": "somepod", "namespace": namespace}}
    core.create_namespaced_event(namespace, event)
    assert core.read_namespaced_event("ev1", namespace).reason == "Testing"
    selected = core.list_namespaced_event(namespace,
                                          field_selector="involvedObject.name=somepod")
    assert [e.metadata.name for e in selected.items] == ["ev1"]
    assert core.list_namespaced_event(namespace,
                                      field_selector="involvedObject.name=other").items == []
    assert core.patch_namespaced_event("ev1", namespace, {"count": 2}).count == 2
    core.delete_namespaced_event("ev1", namespace)
    assert gone(core.read_namespaced_event, "ev1", namespace)


@pytest.mark.parametrize("kind", ["config_map", "secret"])
def test_put_with_stale_resource_version_conflicts(core: client.CoreV1Api, namespace: str,
                                                   kind: str) -> None:
    """PUT with an outdated resourceVersion is 409 Conflict; with the current one it succeeds."""
    create = getattr(core, f"create_namespaced_{kind}")
    read = getattr(core, f"read_namespaced_{kind}")
    replace = getattr(core, f"replace_namespaced_{kind}")
    patch = getattr(core, f"patch_namespaced_{kind}")
    create(namespace, {"metadata": {"name": "obj"}})
    stale = read("obj", namespace)
    patch("obj", namespace, {"metadata": {"labels": {"touched": "yes"}}})
    stale.metadata.labels = {"mine": "yes"}
    resource = {"config_map": "configmaps", "secret": "secrets"}[kind]
    body = raises_api(409, replace, "obj", namespace, stale)
    assert body["reason"] == "Conflict"
    assert body["message"] == (f'Operation cannot be fulfilled on {resource} "obj": the object '
                               "has been modified; please apply your changes to the latest "
                               "version and try again")
    assert body["details"] == {"name": "obj", "kind": resource}
    fresh = read("obj", namespace)
    fresh.metadata.labels = {"mine": "yes"}
    replaced = replace("obj", namespace, fresh)
    assert replaced.metadata.labels == {"mine": "yes"}
    assert int(replaced.metadata.resource_version) > int(fresh.metadata.resource_version)


def test_patch_with_stale_resource_version_conflicts(core: client.CoreV1Api,
                                                     namespace: str) -> None:
    """A patch carrying an outdated resourceVersion is a 409 Conflict precondition failure."""
    created = core.create_namespaced_config_map(namespace, {"metadata": {"name": "obj"}})
    core.patch_namespaced_config_map("obj", namespace, {"data": {"a": "1"}})
    body = raises_api(409, core.patch_namespaced_config_map, "obj", namespace, {
        "metadata": {"resourceVersion": created.metadata.resource_version},
        "data": {"a": "2"}})
    assert body["reason"] == "Conflict"
    assert core.read_namespaced_config_map("obj", namespace).data == {"a": "1"}


def test_pod_get_modify_put_of_metadata(core: client.CoreV1Api, namespace: str) -> None:
    """Reading a pod and PUTting it back with new labels and annotations succeeds."""
    core.create_namespaced_pod(namespace, pending_pod("put-me"))
    pod = core.read_namespaced_pod("put-me", namespace)
    pod.metadata.labels["extra"] = "yes"
    pod.metadata.annotations = {"note": "hi"}
    replaced = core.replace_namespaced_pod("put-me", namespace, pod)
    assert replaced.metadata.labels == {"app": "api-test", "extra": "yes"}
    assert replaced.metadata.annotations == {"note": "hi"}
    assert replaced.spec == pod.spec


def test_pod_spec_updates_beyond_allowed_fields_are_422(core: client.CoreV1Api,
                                                        namespace: str) -> None:
    """Changing an immutable pod spec field is 422; activeDeadlineSeconds may be set."""
    core.create_namespaced_pod(namespace, pending_pod("immutable"))
    body = raises_api(422, core.patch_namespaced_pod, "immutable", namespace,
                      {"spec": {"restartPolicy": "Always"}})
    assert body["reason"] == "Invalid"
    assert body["message"].startswith('Pod "immutable" is invalid: spec: Forbidden: pod updates '
                                      "may not change fields other than")
    assert [c["field"] for c in body["details"]["causes"]] == ["spec"]
    pod = core.read_namespaced_pod("immutable", namespace)
    pod.spec.containers[0].command = ["sh", "-c", "exit 0"]
    raises_api(422, core.replace_namespaced_pod, "immutable", namespace, pod)
    patched = core.patch_namespaced_pod("immutable", namespace,
                                        {"spec": {"activeDeadlineSeconds": 600}})
    assert patched.spec.active_deadline_seconds == 600
    assert core.read_namespaced_pod("immutable", namespace).spec.restart_policy == "Never"


# List selectors


@pytest.mark.parametrize(("selector", "expected"), [
    ("tier=web", {"a", "c"}),
    ("tier==web,env=prod", {"a"}),
    ("tier!=web", {"b", "d"}),
    ("tier in (db,cache)", {"b"}),
    ("tier notin (web)", {"b", "d"}),
    ("env", {"a", "b"}),
    ("!env", {"c", "d"}),
    ("env,tier in (web,db),tier!=db", {"a"}),
])
def test_label_selectors(core: client.CoreV1Api, namespace: str, selector: str,
                         expected: set[str]) -> None:
    """Label selectors filter lists with equality, set and existence requirements."""
    labels = {"a": {"tier": "web", "env": "prod"}, "b": {"tier": "db", "env": "prod"},
              "c": {"tier": "web"}, "d": {"other": "x"}}
    for name, these in labels.items():
        core.create_namespaced_secret(namespace, {"metadata": {"name": name, "labels": these}})
    found = {s.metadata.name for s in
             core.list_namespaced_secret(namespace, label_selector=selector).items}
    assert found == expected


def test_invalid_label_selector_is_400(core: client.CoreV1Api, namespace: str) -> None:
    """A malformed label selector is refused with 400 BadRequest."""
    body = raises_api(400, core.list_namespaced_secret, namespace, label_selector="bad key=x")
    assert body["reason"] == "BadRequest"


def test_field_selectors(core: client.CoreV1Api, namespace: str) -> None:
    """Field selectors match metadata.name and status.phase (Running vs Pending pods)."""
    core.create_namespaced_pod(namespace, busybox_pod("runs"))
    core.create_namespaced_pod(namespace, pending_pod("waits"))
    wait_running(core, namespace, "runs")
    by_name = core.list_namespaced_pod(namespace, field_selector="metadata.name=waits")
    assert [p.metadata.name for p in by_name.items] == ["waits"]
    running = core.list_namespaced_pod(namespace, field_selector="status.phase=Running")
    assert [p.metadata.name for p in running.items] == ["runs"]
    not_running = core.list_namespaced_pod(namespace, field_selector="status.phase!=Running")
    assert [p.metadata.name for p in not_running.items] == ["waits"]
    everywhere = core.list_pod_for_all_namespaces(
        field_selector=f"metadata.namespace={namespace},status.phase=Running")
    assert [p.metadata.name for p in everywhere.items] == ["runs"]


def test_unsupported_field_selector_is_400(core: client.CoreV1Api, cluster: EmulatedCluster,
                                           namespace: str) -> None:
    """A field the resource cannot select on is 400 BadRequest 'field label not supported'."""
    body = raises_api(400, core.list_namespaced_pod, namespace,
                      field_selector="spec.containers=x")
    assert body["reason"] == "BadRequest"
    assert body["message"] == "field label not supported: spec.containers"
    code, raw = http(cluster, "GET",
                     f"/api/v1/namespaces/{namespace}/secrets?fieldSelector=data.k%3Dv")
    assert code == 400
    assert raw["message"] == "field label not supported: data.k"


def test_list_as_table(cluster: EmulatedCluster, namespace: str,
                       core: client.CoreV1Api) -> None:
    """Asking for a Table (as kubectl get does) returns columns and one row per object."""
    core.create_namespaced_pod(namespace, pending_pod("tabled"))
    code, body = http(cluster, "GET", f"/api/v1/namespaces/{namespace}/pods",
                      accept="application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
    assert code == 200
    assert body["kind"] == "Table" and body["apiVersion"] == "meta.k8s.io/v1"
    columns = [c["name"] for c in body["columnDefinitions"]]
    assert columns[:3] == ["Name", "Ready", "Status"]
    assert [r["cells"][:3] for r in body["rows"]] == [["tabled", "0/1", "Pending"]]


# Deletion


def test_delete_running_pod_is_graceful(core: client.CoreV1Api, namespace: str) -> None:
    """Deleting a running pod sets deletionTimestamp; it goes once its container stops."""
    core.create_namespaced_pod(namespace, busybox_pod("polite", TRAPS_TERM, grace=20))
    wait_running(core, namespace, "polite")
    started = time.monotonic()
    deleted = core.delete_namespaced_pod("polite", namespace)
    assert deleted.metadata.deletion_timestamp is not None
    assert deleted.metadata.deletion_grace_period_seconds == 20
    # The deletion timestamp is when the grace period runs out.
    until = (deleted.metadata.deletion_timestamp - datetime.now(UTC)).total_seconds()
    assert 17 <= until <= 21, until
    wait_for(lambda: gone(core.read_namespaced_pod, "polite", namespace), timeout=10,
             what="pod to go")
    # The container trapped TERM and exited: nothing waited for the grace period.
    assert time.monotonic() - started < 5


def test_sigterm_ignored_is_killed_after_grace(core: client.CoreV1Api, namespace: str) -> None:
    """A PID 1 that ignores SIGTERM is SIGKILLed when terminationGracePeriodSeconds is over."""
    core.create_namespaced_pod(namespace, busybox_pod("stubborn", IGNORES_TERM, grace=2))
    wait_running(core, namespace, "stubborn")
    started = time.monotonic()
    core.delete_namespaced_pod("stubborn", namespace)
    time.sleep(1.0)
    still = core.read_namespaced_pod("stubborn", namespace)
    assert still.metadata.deletion_timestamp is not None
    assert still.status.container_statuses[0].state.running is not None
    wait_for(lambda: gone(core.read_namespaced_pod, "stubborn", namespace), timeout=10,
             interval=0.05, what="pod to go")
    elapsed = time.monotonic() - started
    assert 1.8 <= elapsed <= 4.0, elapsed


def test_grace_period_zero_is_immediate(core: client.CoreV1Api, namespace: str) -> None:
    """grace_period_seconds=0 kills a SIGTERM-ignoring pod at once."""
    core.create_namespaced_pod(namespace, busybox_pod("doomed", IGNORES_TERM, grace=30))
    wait_running(core, namespace, "doomed")
    started = time.monotonic()
    deleted = core.delete_namespaced_pod("doomed", namespace, grace_period_seconds=0)
    assert deleted.metadata.deletion_grace_period_seconds == 0
    wait_for(lambda: gone(core.read_namespaced_pod, "doomed", namespace), timeout=10,
             what="pod to go")
    assert time.monotonic() - started < 1.5


def test_deletion_records_killing_event(core: client.CoreV1Api, namespace: str) -> None:
    """Graceful deletion records a Killing event per running container."""
    core.create_namespaced_pod(namespace, busybox_pod("evented"))
    wait_running(core, namespace, "evented")
    core.delete_namespaced_pod("evented", namespace)
    wait_for(lambda: gone(core.read_namespaced_pod, "evented", namespace), what="pod to go")
    events = core.list_namespaced_event(namespace,
                                        field_selector="involvedObject.name=evented").items
    reasons = [e.reason for e in events]
    assert "Scheduled" in reasons and "Started" in reasons
    killing = [e for e in events if e.reason == "Killing"]
    assert [(e.message, e.involved_object.field_path) for e in killing] == [
        ("Stopping container main", "spec.containers{main}")]


def test_pending_pod_deletion_is_immediate(core: client.CoreV1Api, namespace: str) -> None:
    """A pod that was never scheduled is removed by the delete call itself."""
    core.create_namespaced_pod(namespace, pending_pod("never", grace=30))
    core.delete_namespaced_pod("never", namespace)
    assert gone(core.read_namespaced_pod, "never", namespace)


# Owner references


def test_dependents_of_deleted_pod_are_collected(core: client.CoreV1Api, namespace: str) -> None:
    """A secret and a configmap owned by a pod are garbage-collected after the pod goes."""
    pod = core.create_namespaced_pod(namespace, pending_pod("owner"))
    owner = [{"apiVersion": "v1", "kind": "Pod", "name": "owner", "uid": pod.metadata.uid}]
    core.create_namespaced_secret(namespace, {"metadata": {"name": "owned",
                                                           "ownerReferences": owner}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "owned",
                                                               "ownerReferences": owner}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "free"}})
    time.sleep(1.0)  # a collector pass runs, and must leave dependents of a live owner alone
    assert not gone(core.read_namespaced_secret, "owned", namespace)
    assert not gone(core.read_namespaced_config_map, "owned", namespace)
    core.delete_namespaced_pod("owner", namespace)
    wait_for(lambda: gone(core.read_namespaced_secret, "owned", namespace),
             what="owned secret collected")
    wait_for(lambda: gone(core.read_namespaced_config_map, "owned", namespace),
             what="owned configmap collected")
    assert not gone(core.read_namespaced_secret, "free", namespace)


def test_dependent_of_missing_owner_is_collected(core: client.CoreV1Api, namespace: str) -> None:
    """A secret whose only owner uid does not exist is garbage-collected."""
    owner = [{"apiVersion": "v1", "kind": "Pod", "name": "ghost", "uid": str(uuid.uuid4())}]
    core.create_namespaced_secret(namespace, {"metadata": {"name": "orphan",
                                                           "ownerReferences": owner}})
    wait_for(lambda: gone(core.read_namespaced_secret, "orphan", namespace), timeout=5,
             what="orphan collected")
