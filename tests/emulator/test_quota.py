"""ResourceQuota over the wire: quota objects, their status, and admission refusals.

A namespace's quotas are created and read with the official `kubernetes` client, and
pods that would exceed one are refused with the 403 and message text a real API server
sends (`exceeded quota: ...`, `failed quota: ...: must specify ...`). Most pods here
never leave Pending (a node selector no node matches), so no sandbox is started; only
the test about finished pods runs containers.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.conftest import wait_for

BUSYBOX = "busybox:1.36"
NEVER_SCHEDULED = {"emulator.test/never": "true"}


def pod(name: str, *containers: dict[str, Any], scheduled: bool = False,
        command: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    """A pod of busybox containers (default: one `main` without resources).

    Unless `scheduled`, no node accepts it, so it stays Pending without running anything.
    """
    listed = list(containers) or [{"name": "main"}]
    body: dict[str, Any] = {
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "automountServiceAccountToken": False,
                 "containers": [{"image": BUSYBOX, "command": command or ["true"], **c}
                                for c in listed]},
    }
    if not scheduled:
        body["spec"]["nodeSelector"] = NEVER_SCHEDULED
    body["spec"].update(spec)
    return body


def container(name: str, requests: dict[str, str] | None = None,
              limits: dict[str, str] | None = None) -> dict[str, Any]:
    """A container entry with optional requests and limits."""
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return {"name": name, "resources": resources}


def make_quota(core: client.CoreV1Api, namespace: str, name: str, hard: dict[str, str],
               **spec: Any) -> Any:
    """Create a ResourceQuota; return the created object."""
    return core.create_namespaced_resource_quota(
        namespace, {"metadata": {"name": name}, "spec": {"hard": hard, **spec}})


def refused(call: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """Expect a 403 Forbidden Status from a client call; return the Status body."""
    with pytest.raises(ApiException) as caught:
        call(*args)
    assert caught.value.status == 403, caught.value.body
    body = json.loads(caught.value.body)
    assert isinstance(body, dict)
    assert (body["kind"], body["status"], body["reason"], body["code"]) == \
        ("Status", "Failure", "Forbidden", 403)
    return body


def used(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, str]:
    """A quota's `status.used` as read from the API."""
    return dict(core.read_namespaced_resource_quota(name, namespace).status.used or {})


@pytest.fixture
def other_namespace(core: client.CoreV1Api) -> Iterator[str]:
    """A second fresh namespace, deleted afterwards."""
    name = "t-" + uuid.uuid4().hex[:8]
    core.create_namespace({"metadata": {"name": name}})
    wait_for(lambda: any(sa.metadata.name == "default" for sa in
                         core.list_namespaced_service_account(name).items),
             what=f"default service account in {name}")
    yield name
    core.delete_namespace(name)


def test_pod_count_over_quota_is_403_with_the_api_server_message(
        core: client.CoreV1Api, namespace: str) -> None:
    """A pod beyond `pods` is refused: 403 Forbidden, `exceeded quota: ... pods=1 ...` text."""
    make_quota(core, namespace, "pod-count", {"pods": "2"})
    core.create_namespaced_pod(namespace, pod("first"))
    core.create_namespaced_pod(namespace, pod("second"))
    status = refused(core.create_namespaced_pod, namespace, pod("third"))
    assert status["message"] == ('pods "third" is forbidden: exceeded quota: pod-count, '
                                 "requested: pods=1, used: pods=2, limited: pods=2")
    assert status["details"] == {"name": "third", "kind": "pods"}
    assert [p.metadata.name for p in core.list_namespaced_pod(namespace).items] == \
        ["first", "second"]
    # A refused generateName pod is named as validating admission sees it: generated.
    generated = refused(core.create_namespaced_pod, namespace,
                        {**pod(""), "metadata": {"generateName": "job-"}})
    assert generated["message"].startswith('pods "job-')
    assert generated["details"]["name"] != "job-"


def test_memory_request_over_quota_names_requested_used_and_limited(
        core: client.CoreV1Api, namespace: str) -> None:
    """requests.memory over quota is refused with quantities as the API server prints them."""
    make_quota(core, namespace, "mem", {"requests.memory": "32Mi"})
    status = refused(core.create_namespaced_pod, namespace,
                     pod("big", container("main", requests={"memory": "64Mi"})))
    assert status["message"] == ('pods "big" is forbidden: exceeded quota: mem, requested: '
                                 "requests.memory=64Mi, used: requests.memory=0, limited: "
                                 "requests.memory=32Mi")


def test_every_exceeded_resource_is_listed_sorted_and_comma_joined(
        core: client.CoreV1Api, namespace: str) -> None:
    """Several exceeded resources of one quota are listed in name order, joined by commas."""
    make_quota(core, namespace, "compute", {"requests.memory": "100Mi",
                                            "limits.memory": "0.0625Gi", "requests.cpu": "1",
                                            "pods": "10"})
    sized = container("main", requests={"memory": "64Mi", "cpu": "0.25"},
                      limits={"memory": "64Mi"})
    core.create_namespaced_pod(namespace, pod("first", sized))
    status = refused(core.create_namespaced_pod, namespace, pod("second", sized))
    assert status["message"] == (
        'pods "second" is forbidden: exceeded quota: compute, requested: '
        "limits.memory=64Mi,requests.memory=64Mi, used: limits.memory=64Mi,"
        "requests.memory=64Mi, limited: limits.memory=64Mi,requests.memory=100Mi")


def test_quota_on_cpu_or_memory_requires_every_container_to_state_it(
        core: client.CoreV1Api, namespace: str) -> None:
    """A container without a quota'd cpu/memory value is refused with `must specify`."""
    make_quota(core, namespace, "mem", {"requests.memory": "1Gi", "limits.memory": "1Gi"})
    status = refused(core.create_namespaced_pod, namespace, pod(
        "bare", container("main", requests={"memory": "16Mi"}), container("sidecar"),
        initContainers=[{"name": "setup", "image": BUSYBOX, "command": ["true"],
                         "resources": {"limits": {"memory": "16Mi"}}}]))
    assert status["message"] == ('pods "bare" is forbidden: failed quota: mem: must specify '
                                 "limits.memory for: main,sidecar; requests.memory for: sidecar")
    # A limit alone also counts as the request (requests default to limits).
    core.create_namespaced_pod(namespace, pod("limited", container(
        "main", limits={"memory": "16Mi"})))
    assert used(core, namespace, "mem") == {"limits.memory": "16Mi", "requests.memory": "16Mi"}


def test_finished_pods_free_compute_quota_but_count_pods_counts_them(
        core: client.CoreV1Api, namespace: str) -> None:
    """Succeeded and Failed pods leave `pods` and memory; `count/pods` still counts them."""
    make_quota(core, namespace, "compute", {"pods": "1", "requests.memory": "64Mi"})
    make_quota(core, namespace, "objects", {"count/pods": "10"})
    sized = container("main", requests={"memory": "64Mi"})
    core.create_namespaced_pod(namespace, pod("ok", sized, scheduled=True))
    wait_for(lambda: core.read_namespaced_pod("ok", namespace).status.phase == "Succeeded",
             10, what="the pod to succeed")
    core.create_namespaced_pod(namespace, pod("bad", sized, scheduled=True, command=["false"]))
    wait_for(lambda: core.read_namespaced_pod("bad", namespace).status.phase == "Failed",
             10, what="the pod to fail")
    assert used(core, namespace, "compute") == {"pods": "0", "requests.memory": "0"}
    assert used(core, namespace, "objects") == {"count/pods": "2"}
    core.create_namespaced_pod(namespace, pod("next", sized))
    assert used(core, namespace, "compute") == {"pods": "1", "requests.memory": "64Mi"}


def test_deleting_a_pod_frees_its_quota(core: client.CoreV1Api, namespace: str) -> None:
    """Once a pod is deleted, a pod refused for its quota is admitted."""
    make_quota(core, namespace, "one", {"pods": "1"})
    core.create_namespaced_pod(namespace, pod("holder"))
    refused(core.create_namespaced_pod, namespace, pod("waiting"))
    core.delete_namespaced_pod("holder", namespace)
    core.create_namespaced_pod(namespace, pod("waiting"))
    assert used(core, namespace, "one") == {"pods": "1"}


def test_status_mirrors_hard_and_reports_used_in_canonical_quantities(
        core: client.CoreV1Api, namespace: str) -> None:
    """status.hard mirrors spec.hard and status.used tracks pods, both in canonical form."""
    created = make_quota(core, namespace, "team", {
        "pods": "1000", "requests.cpu": "0.5", "limits.cpu": "4", "requests.memory": "1.5Gi",
        "count/pods": "5", "configmaps": "10", "secrets": "3"})
    hard = {"pods": "1k", "requests.cpu": "500m", "limits.cpu": "4", "requests.memory": "1536Mi",
            "count/pods": "5", "configmaps": "10", "secrets": "3"}
    assert created.spec.hard == hard
    sized = container("main", requests={"cpu": "100m", "memory": "100Mi"}, limits={"cpu": "1"})
    core.create_namespaced_pod(namespace, pod("a", sized))
    core.create_namespaced_pod(namespace, pod("b", sized, container(
        "side", requests={"cpu": "150m", "memory": "28Mi"}, limits={"cpu": "0.5"})))
    quota = core.read_namespaced_resource_quota("team", namespace)
    assert quota.status.hard == hard
    # The namespace's kube-root-ca.crt config map counts; there are no secrets.
    assert quota.status.used == {"pods": "2", "count/pods": "2", "requests.cpu": "350m",
                                 "limits.cpu": "2500m", "requests.memory": "228Mi",
                                 "configmaps": "1", "secrets": "0"}
    listed = core.list_namespaced_resource_quota(namespace).items
    assert [(q.metadata.name, q.status.used["pods"]) for q in listed] == [("team", "2")]
    core.delete_namespaced_pod("a", namespace)
    assert used(core, namespace, "team")["requests.memory"] == "128Mi"


def test_quota_in_another_namespace_has_no_effect(
        core: client.CoreV1Api, namespace: str, other_namespace: str) -> None:
    """A quota only limits its own namespace."""
    make_quota(core, other_namespace, "none", {"pods": "0"})
    core.create_namespaced_pod(namespace, pod("free"))
    status = refused(core.create_namespaced_pod, other_namespace, pod("capped"))
    assert status["message"] == ('pods "capped" is forbidden: exceeded quota: none, '
                                 "requested: pods=1, used: pods=0, limited: pods=0")


def test_scoped_quota_counts_only_pods_in_its_scope(core: client.CoreV1Api,
                                                    namespace: str) -> None:
    """A `NotBestEffort` quota ignores BestEffort pods and caps pods with resources."""
    make_quota(core, namespace, "sized", {"pods": "1"}, scopes=["NotBestEffort"])
    core.create_namespaced_pod(namespace, pod("plain-1"))
    core.create_namespaced_pod(namespace, pod("plain-2"))
    sized = container("main", requests={"cpu": "10m"})
    core.create_namespaced_pod(namespace, pod("sized-1", sized))
    status = refused(core.create_namespaced_pod, namespace, pod("sized-2", sized))
    assert "exceeded quota: sized, requested: pods=1, used: pods=1" in status["message"]


def test_object_count_quota_caps_secrets(core: client.CoreV1Api, namespace: str) -> None:
    """`secrets` and `count/secrets` quotas refuse the secret beyond the limit."""
    make_quota(core, namespace, "secrets", {"secrets": "1", "count/secrets": "5"})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "one"},
                                              "stringData": {"k": "v"}})
    status = refused(core.create_namespaced_secret, namespace,
                     {"metadata": {"name": "two"}, "stringData": {"k": "v"}})
    assert status["message"] == ('secrets "two" is forbidden: exceeded quota: secrets, '
                                 "requested: secrets=1, used: secrets=1, limited: secrets=1")
    assert used(core, namespace, "secrets") == {"secrets": "1", "count/secrets": "1"}


def test_invalid_quota_values_are_refused(core: client.CoreV1Api, namespace: str) -> None:
    """Negative limits and fractional counts are 422 Invalid; non-quantities are 400."""
    with pytest.raises(ApiException) as caught:
        make_quota(core, namespace, "bad", {"requests.cpu": "-1"})
    assert caught.value.status == 422
    assert json.loads(caught.value.body)["message"] == (
        'ResourceQuota "bad" is invalid: spec.hard[requests.cpu]: Invalid value: "-1": must '
        "be greater than or equal to 0")
    with pytest.raises(ApiException) as caught:
        make_quota(core, namespace, "bad", {"pods": "1500m"})
    assert caught.value.status == 422
    assert "spec.hard[pods]" in json.loads(caught.value.body)["message"]
    with pytest.raises(ApiException) as caught:
        make_quota(core, namespace, "bad", {"pods": "lots"})
    assert caught.value.status == 400


@pytest.mark.kubectl
def test_kubectl_creates_and_lists_quotas(
        kubectl: Callable[..., subprocess.CompletedProcess[bytes]], core: client.CoreV1Api,
        namespace: str) -> None:
    """`kubectl create quota` (protobuf) and `kubectl get quota` (Table) work as on a cluster."""
    created = kubectl("create", "quota", "ci", "-n", namespace,
                      "--hard=pods=4,requests.memory=1Gi,limits.memory=2Gi")
    assert created.returncode == 0, created.stderr
    core.create_namespaced_pod(namespace, pod("p", container(
        "main", requests={"memory": "256Mi"}, limits={"memory": "512Mi"})))
    listed = kubectl("get", "quota", "-n", namespace)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.decode().splitlines()
    assert header.split() == ["NAME", "AGE", "REQUEST", "LIMIT"]
    assert row.startswith("ci ")
    assert row.endswith("pods: 1/4, requests.memory: 256Mi/1Gi   limits.memory: 512Mi/2Gi")
