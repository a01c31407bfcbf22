"""How the operator's template merges into the pod (strategic merge) and its JSON Patch applies."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from runner_driver.errors import ConfigError
from runner_driver.podmerge import MERGE_KEYS, json_patch, strategic_merge

WHERE = "pod.template /etc/runner-driver/template.yaml"
PATCH_WHERE = "pod.patch /etc/runner-driver/patch.yaml"
# Marks a key that the merge must have removed (see `_expect`).
GONE = object()

# A small pod with one of each list kind the merge treats differently.
BASE: dict[str, Any] = {
    "metadata": {"labels": {"app": "ci", "team": "a"}, "annotations": {"note": "n"}},
    "spec": {
        "restartPolicy": "Never",
        "nodeSelector": {"disk": "ssd"},
        "tolerations": [{"key": "a", "operator": "Exists", "effect": "NoSchedule"}],
        "imagePullSecrets": [{"name": "pull-a"}],
        "hostAliases": [{"ip": "10.0.0.1", "hostnames": ["a.local"]}],
        "topologySpreadConstraints": [{"topologyKey": "zone", "maxSkew": 1,
                                       "whenUnsatisfiable": "DoNotSchedule"}],
        "volumes": [{"name": "cache", "emptyDir": {"sizeLimit": "10Gi"}},
                    {"name": "builds", "emptyDir": {"sizeLimit": "10Gi"}}],
        "initContainers": [{"name": "init", "image": "busybox",
                            "env": [{"name": "A", "value": "1"}]}],
        "containers": [
            {"name": "helper", "image": "helper:1",
             "env": [{"name": "PATH", "value": "/bin"}, {"name": "TMPDIR", "value": "/scratch"}],
             "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
             "ports": [{"containerPort": 8080, "protocol": "TCP"}],
             "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}}},
            {"name": "build", "image": "kaniko:debug", "args": ["a", "b"]},
        ],
    },
}
HELPER, BUILD = 0, 1  # positions in spec.containers


def _expect(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """BASE with the value at `path` set (or removed, for GONE): the whole expected pod."""
    expected = copy.deepcopy(BASE)
    target: Any = expected
    for step in path[:-1]:
        target = target[step]
    if value is GONE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return expected


# Each rule as the patch tags of k8s.io/api/core/v1/types.go declare it (PodSpec and
# Container) and as the strategic merge patch design document describes the directives
# (kubernetes/community contributors/devel/sig-api-machinery/strategic-merge-patch.md).
MERGES = [
    # Maps merge key by key (strategic-merge-patch.md, "maps": merged recursively).
    pytest.param({"metadata": {"labels": {"extra": "1"}}},
                 ("metadata", "labels"), {"app": "ci", "team": "a", "extra": "1"},
                 id="map-merges-key-by-key"),
    pytest.param({"spec": {"restartPolicy": "OnFailure"}},
                 ("spec", "restartPolicy"), "OnFailure", id="scalar-replaced"),
    # `null` deletes the key (strategic-merge-patch.md: "a null value deletes the field").
    pytest.param({"metadata": {"labels": {"team": None}}},
                 ("metadata", "labels"), {"app": "ci"}, id="null-deletes-a-key"),
    pytest.param({"spec": {"nodeSelector": None}},
                 ("spec", "nodeSelector"), GONE, id="null-deletes-a-whole-map"),
    pytest.param({"metadata": {"labels": {"absent": None}}},
                 ("metadata", "labels"), {"app": "ci", "team": "a"},
                 id="null-for-an-absent-key-is-a-no-op"),
    pytest.param({"spec": {"dnsConfig": {"nameservers": ["1.1.1.1"], "searches": None}}},
                 ("spec", "dnsConfig"), {"nameservers": ["1.1.1.1"]},
                 id="new-map-stored-without-its-nulls"),
    # Containers: `patchStrategy:"merge" patchMergeKey:"name"`.
    pytest.param({"spec": {"containers": [{"name": "build", "workingDir": "/w"}]}},
                 ("spec", "containers", BUILD),
                 {"name": "build", "image": "kaniko:debug", "args": ["a", "b"],
                  "workingDir": "/w"},
                 id="containers-merge-by-name"),
    pytest.param({"spec": {"containers": [{"name": "side", "image": "s", "args": None}]}},
                 ("spec", "containers"),
                 [*BASE["spec"]["containers"], {"name": "side", "image": "s"}],
                 id="new-container-appended"),
    # InitContainers: `patchStrategy:"merge" patchMergeKey:"name"`.
    pytest.param({"spec": {"initContainers": [{"name": "init", "image": "alpine"}]}},
                 ("spec", "initContainers", 0),
                 {"name": "init", "image": "alpine", "env": [{"name": "A", "value": "1"}]},
                 id="init-containers-merge-by-name"),
    # Container.Env: `patchStrategy:"merge" patchMergeKey:"name"`.
    pytest.param({"spec": {"containers": [{"name": "helper", "env": [
        {"name": "TMPDIR", "value": "/tmp2"}, {"name": "NEW", "value": "n"}]}]}},
                 ("spec", "containers", HELPER, "env"),
                 [{"name": "PATH", "value": "/bin"}, {"name": "TMPDIR", "value": "/tmp2"},
                  {"name": "NEW", "value": "n"}],
                 id="env-merges-by-name"),
    pytest.param({"spec": {"initContainers": [{"name": "init", "env": [
        {"name": "A", "value": "2"}]}]}},
                 ("spec", "initContainers", 0, "env"), [{"name": "A", "value": "2"}],
                 id="init-container-env-merges-by-name"),
    # Container.VolumeMounts: `patchStrategy:"merge" patchMergeKey:"mountPath"`.
    pytest.param({"spec": {"containers": [{"name": "helper", "volumeMounts": [
        {"mountPath": "/cache", "readOnly": True}]}]}},
                 ("spec", "containers", HELPER, "volumeMounts"),
                 [{"name": "cache", "mountPath": "/cache", "readOnly": True}],
                 id="volume-mounts-merge-by-mount-path"),
    # Container.Ports: `patchStrategy:"merge" patchMergeKey:"containerPort"`.
    pytest.param({"spec": {"containers": [{"name": "helper", "ports": [
        {"containerPort": 8080, "name": "http"}, {"containerPort": 9090}]}]}},
                 ("spec", "containers", HELPER, "ports"),
                 [{"containerPort": 8080, "protocol": "TCP", "name": "http"},
                  {"containerPort": 9090}],
                 id="ports-merge-by-container-port"),
    # PodSpec.ImagePullSecrets: `patchStrategy:"merge" patchMergeKey:"name"`.
    pytest.param({"spec": {"imagePullSecrets": [{"name": "pull-b"}]}},
                 ("spec", "imagePullSecrets"), [{"name": "pull-a"}, {"name": "pull-b"}],
                 id="image-pull-secrets-merge-by-name"),
    # PodSpec.HostAliases: `patchStrategy:"merge" patchMergeKey:"ip"`; its hostnames
    # list has no patch strategy, so it is replaced.
    pytest.param({"spec": {"hostAliases": [{"ip": "10.0.0.1", "hostnames": ["b.local"]}]}},
                 ("spec", "hostAliases"), [{"ip": "10.0.0.1", "hostnames": ["b.local"]}],
                 id="host-aliases-merge-by-ip"),
    # PodSpec.TopologySpreadConstraints: `patchStrategy:"merge" patchMergeKey:"topologyKey"`.
    pytest.param({"spec": {"topologySpreadConstraints": [{"topologyKey": "zone",
                                                          "maxSkew": 2}]}},
                 ("spec", "topologySpreadConstraints"),
                 [{"topologyKey": "zone", "maxSkew": 2, "whenUnsatisfiable": "DoNotSchedule"}],
                 id="topology-spread-merges-by-topology-key"),
    # PodSpec.Volumes: `patchStrategy:"merge,retainKeys" patchMergeKey:"name"`. The item
    # keeps only the keys the template gives, as a patch carrying `$retainKeys` of those
    # keys would (the union-type rule of strategic-merge-patch.md, "retainKeys").
    pytest.param({"spec": {"volumes": [{"name": "cache",
                                        "persistentVolumeClaim": {"claimName": "ci-cache"}}]}},
                 ("spec", "volumes", 0),
                 {"name": "cache", "persistentVolumeClaim": {"claimName": "ci-cache"}},
                 id="volume-resourced-keeps-only-the-new-source"),
    pytest.param({"spec": {"volumes": [{"name": "cache", "emptyDir": {"medium": "Memory"}}]}},
                 ("spec", "volumes", 0),
                 {"name": "cache", "emptyDir": {"sizeLimit": "10Gi", "medium": "Memory"}},
                 id="volume-same-source-merges"),
    pytest.param({"spec": {"volumes": [{"name": "certs", "secret": {"secretName": "ca"}}]}},
                 ("spec", "volumes"),
                 [*BASE["spec"]["volumes"], {"name": "certs", "secret": {"secretName": "ca"}}],
                 id="new-volume-appended"),
    # PodSpec.Tolerations has no patchStrategy, so the list is replaced whole
    # (kubernetes.io docs, "Update API Objects in Place Using kubectl patch": "the
    # tolerations list in the PodSpec was replaced, not merged").
    pytest.param({"spec": {"tolerations": [{"key": "b", "operator": "Exists"}]}},
                 ("spec", "tolerations"), [{"key": "b", "operator": "Exists"}],
                 id="tolerations-replaced-whole"),
    # Capabilities.Add has no patchStrategy: replaced; its sibling `drop` stays.
    pytest.param({"spec": {"containers": [{"name": "helper", "securityContext": {
        "capabilities": {"add": ["SETUID"]}}}]}},
                 ("spec", "containers", HELPER, "securityContext"),
                 {"capabilities": {"drop": ["ALL"], "add": ["SETUID"]}},
                 id="capabilities-add-replaced-whole"),
    # Container.Args has no patchStrategy: replaced.
    pytest.param({"spec": {"containers": [{"name": "build", "args": ["c"]}]}},
                 ("spec", "containers", BUILD, "args"), ["c"], id="args-replaced-whole"),
    # `$patch: delete` on a list item removes the item with that merge key
    # (strategic-merge-patch.md, "Delete Directive").
    pytest.param({"spec": {"containers": [{"name": "helper", "env": [
        {"name": "PATH", "$patch": "delete"}]}]}},
                 ("spec", "containers", HELPER, "env"), [{"name": "TMPDIR", "value": "/scratch"}],
                 id="patch-delete-removes-env-item"),
    pytest.param({"spec": {"volumes": [{"name": "builds", "$patch": "delete"}]}},
                 ("spec", "volumes"), [{"name": "cache", "emptyDir": {"sizeLimit": "10Gi"}}],
                 id="patch-delete-removes-volume"),
    pytest.param({"spec": {"imagePullSecrets": [{"name": "absent", "$patch": "delete"}]}},
                 ("spec", "imagePullSecrets"), [{"name": "pull-a"}],
                 id="patch-delete-of-absent-item-is-a-no-op"),
    pytest.param({"spec": {"imagePullSecrets": []}},
                 ("spec", "imagePullSecrets"), [{"name": "pull-a"}],
                 id="empty-keyed-list-changes-nothing"),
    pytest.param({"spec": {"tolerations": []}},
                 ("spec", "tolerations"), [], id="empty-unkeyed-list-empties-it"),
    pytest.param({"spec": {"containers": [{"name": "build", "env": [
        {"name": "X", "value": "1", "valueFrom": None}]}]}},
                 ("spec", "containers", BUILD, "env"), [{"name": "X", "value": "1"}],
                 id="keyed-list-new-to-the-item-stored-without-nulls"),
]


@pytest.mark.parametrize(("patch", "path", "value"), MERGES)
def test_strategic_merge_rule(patch: dict[str, Any], path: tuple[str | int, ...],
                              value: Any) -> None:
    """Each merge rule changes exactly the field it names and nothing else in the pod."""
    assert strategic_merge(BASE, patch, WHERE) == _expect(path, value)


def test_strategic_merge_changes_neither_input() -> None:
    """The base pod and the template are left as they were; the result shares nothing."""
    base, patch = copy.deepcopy(BASE), {"spec": {
        "containers": [{"name": "helper", "env": [{"name": "NEW", "value": "n"}]},
                       {"name": "side", "image": "s"}],
        "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": "c"}}],
        "tolerations": [{"key": "b"}]}}
    patch_before = copy.deepcopy(patch)
    merged = strategic_merge(base, patch, WHERE)
    merged["spec"]["containers"][2]["image"] = "changed"
    merged["spec"]["tolerations"][0]["key"] = "changed"
    merged["spec"]["containers"][0]["env"][0]["value"] = "changed"
    assert base == BASE
    assert patch == patch_before


def test_strategic_merge_of_several_rules_at_once() -> None:
    """A realistic template (labels, toleration, re-sourced cache, env) merges in one go."""
    patch = {
        "metadata": {"labels": {"team": None, "cost-center": "ci"}},
        "spec": {"tolerations": [{"key": "ci", "operator": "Exists", "effect": "NoSchedule"}],
                 "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": "pvc"}}],
                 "containers": [{"name": "build", "env": [{"name": "HTTP_PROXY",
                                                           "value": "http://proxy:3128"}]}]},
    }
    expected = copy.deepcopy(BASE)
    expected["metadata"]["labels"] = {"app": "ci", "cost-center": "ci"}
    expected["spec"]["tolerations"] = [{"key": "ci", "operator": "Exists",
                                        "effect": "NoSchedule"}]
    expected["spec"]["volumes"][0] = {"name": "cache",
                                      "persistentVolumeClaim": {"claimName": "pvc"}}
    expected["spec"]["containers"][BUILD]["env"] = [{"name": "HTTP_PROXY",
                                                     "value": "http://proxy:3128"}]
    assert strategic_merge(BASE, patch, WHERE) == expected


@pytest.mark.parametrize(("path", "key"), [
    pytest.param(("spec", "containers"), "name", id="containers"),
    pytest.param(("spec", "initContainers"), "name", id="init-containers"),
    pytest.param(("spec", "volumes"), "name", id="volumes"),
    pytest.param(("spec", "imagePullSecrets"), "name", id="image-pull-secrets"),
    pytest.param(("spec", "hostAliases"), "ip", id="host-aliases"),
    pytest.param(("spec", "topologySpreadConstraints"), "topologyKey", id="topology-spread"),
    pytest.param(("spec", "containers", "*", "env"), "name", id="env"),
    pytest.param(("spec", "containers", "*", "volumeMounts"), "mountPath", id="volume-mounts"),
    pytest.param(("spec", "containers", "*", "ports"), "containerPort", id="ports"),
    pytest.param(("spec", "initContainers", "*", "env"), "name", id="init-env"),
    pytest.param(("spec", "initContainers", "*", "volumeMounts"), "mountPath",
                 id="init-volume-mounts"),
    pytest.param(("spec", "initContainers", "*", "ports"), "containerPort", id="init-ports"),
])
def test_merge_keys_match_the_kubernetes_patch_tags(path: tuple[str, ...], key: str) -> None:
    """Each keyed list uses the patchMergeKey its field has in k8s.io/api/core/v1/types.go."""
    assert MERGE_KEYS[path] == key


def test_merge_keys_have_no_list_without_a_kubernetes_merge_key() -> None:
    """No list that Kubernetes replaces whole (tolerations, capabilities) is keyed here."""
    assert len(MERGE_KEYS) == 12
    assert not any(path[-1] in ("tolerations", "add", "drop", "args", "command", "envFrom")
                   for path in MERGE_KEYS)


REFUSALS = [
    pytest.param({"spec": {"containers": [{"image": "x"}]}},
                 f"{WHERE}: spec.containers[0]: each item needs its merge key 'name'",
                 id="container-without-name"),
    pytest.param({"spec": {"imagePullSecrets": [{"name": "ok"}, "pull-b"]}},
                 f"{WHERE}: spec.imagePullSecrets[1]: each item needs its merge key 'name'",
                 id="item-not-a-map"),
    pytest.param({"spec": {"containers": [{"name": "helper", "env": [
        {"name": "A", "value": "1"}, {"value": "2"}]}]}},
                 f"{WHERE}: spec.containers.helper.env[1]: each item needs its merge key 'name'",
                 id="env-item-without-name"),
    pytest.param({"spec": {"containers": [{"name": "helper", "volumeMounts": [
        {"name": "cache"}]}]}},
                 f"{WHERE}: spec.containers.helper.volumeMounts[0]: each item needs its merge "
                 "key 'mountPath'", id="mount-without-mount-path"),
    pytest.param({"spec": {"volumes": [{"name": "cache", "$patch": "replace"}]}},
                 f"{WHERE}: spec.volumes[name=cache]: unknown $patch 'replace' (only delete is "
                 "supported)", id="unknown-list-directive"),
    pytest.param({"spec": {"hostAliases": [{"ip": "10.0.0.9", "$patch": "merge"}]}},
                 f"{WHERE}: spec.hostAliases[ip=10.0.0.9]: unknown $patch 'merge' (only delete "
                 "is supported)", id="unknown-directive-on-absent-item"),
    pytest.param({"spec": {"$patch": "replace"}},
                 f"{WHERE}: spec: only list items may carry $patch (delete); got 'replace'",
                 id="directive-in-a-map"),
    pytest.param({"$patch": "delete"},
                 f"{WHERE}: (top level): only list items may carry $patch (delete); got "
                 "'delete'", id="directive-at-top-level"),
    pytest.param({"spec": {"containers": [{"name": "helper", "securityContext": {
        "$patch": "replace", "privileged": False}}]}},
                 f"{WHERE}: spec.containers.helper.securityContext: only list items may carry "
                 "$patch (delete); got 'replace'", id="directive-in-a-merged-item-map"),
    pytest.param({"spec": {"containers": [{"name": "build", "securityContext": {
        "$patch": "delete"}}]}},
                 f"{WHERE}: spec.containers.build.securityContext: $patch only applies to an "
                 "item that the driver's pod has", id="directive-in-a-new-map"),
    pytest.param({"spec": {"containers": [{"name": "side", "env": [
        {"name": "X", "$patch": "delete"}]}]}},
                 f"{WHERE}: spec.containers.side.env: $patch only applies to an item that the "
                 "driver's pod has", id="delete-inside-a-new-container"),
    pytest.param({"spec": {"containers": [{"name": "build", "env": [
        {"name": "X", "$patch": "delete"}]}]}},
                 f"{WHERE}: spec.containers.build.env: $patch only applies to an item that the "
                 "driver's pod has", id="delete-in-a-list-the-pod-lacks"),
]


@pytest.mark.parametrize(("patch", "message"), REFUSALS)
def test_strategic_merge_refuses(patch: dict[str, Any], message: str) -> None:
    """A template the merge cannot apply is refused with one line naming it and the path."""
    with pytest.raises(ConfigError) as raised:
        strategic_merge(BASE, patch, WHERE)
    assert str(raised.value) == message


DOCUMENT: dict[str, Any] = {
    "metadata": {"name": "p", "labels": {"example.com/team": "a"}},
    "spec": {"terminationGracePeriodSeconds": 10,
             "tolerations": [{"key": "a"}],
             "containers": [{"name": "helper"}, {"name": "build"}]},
}


def _document(change: dict[str, Any]) -> dict[str, Any]:
    """DOCUMENT with `change` (top-level section -> its whole new value)."""
    return copy.deepcopy(DOCUMENT) | change


PATCHES = [
    pytest.param([], DOCUMENT, id="no-operations"),
    pytest.param([{"op": "add", "path": "/spec/priorityClassName", "value": "ci"}],
                 _document({"spec": {**DOCUMENT["spec"], "priorityClassName": "ci"}}),
                 id="add-a-field"),
    pytest.param([{"op": "add", "path": "/spec/tolerations/-", "value": {"key": "b"}}],
                 _document({"spec": {**DOCUMENT["spec"],
                                     "tolerations": [{"key": "a"}, {"key": "b"}]}}),
                 id="add-appends-with-dash"),
    pytest.param([{"op": "add", "path": "/spec/tolerations/0", "value": {"key": "b"}}],
                 _document({"spec": {**DOCUMENT["spec"],
                                     "tolerations": [{"key": "b"}, {"key": "a"}]}}),
                 id="add-inserts-at-index"),
    pytest.param([{"op": "remove", "path": "/metadata/labels/example.com~1team"}],
                 _document({"metadata": {"name": "p", "labels": {}}}),
                 id="remove-with-escaped-slash"),
    pytest.param([{"op": "replace", "path": "/spec/terminationGracePeriodSeconds",
                   "value": 30}],
                 _document({"spec": {**DOCUMENT["spec"], "terminationGracePeriodSeconds": 30}}),
                 id="replace"),
    pytest.param([{"op": "test", "path": "/metadata/name", "value": "p"},
                  {"op": "remove", "path": "/spec/tolerations"}],
                 _document({"spec": {"terminationGracePeriodSeconds": 10,
                                     "containers": DOCUMENT["spec"]["containers"]}}),
                 id="test-passes-then-remove"),
    pytest.param([{"op": "copy", "from": "/metadata/labels", "path": "/metadata/annotations"}],
                 _document({"metadata": {**DOCUMENT["metadata"],
                                         "annotations": {"example.com/team": "a"}}}),
                 id="copy"),
    pytest.param([{"op": "move", "from": "/spec/tolerations/0",
                   "path": "/spec/containers/1/x"}],
                 _document({"spec": {"terminationGracePeriodSeconds": 10, "tolerations": [],
                                     "containers": [{"name": "helper"},
                                                    {"name": "build", "x": {"key": "a"}}]}}),
                 id="move"),
    pytest.param([{"op": "replace", "path": "", "value": {"kind": "Pod"}}], {"kind": "Pod"},
                 id="replace-whole-document-with-a-map"),
]


@pytest.mark.parametrize(("operations", "expected"), PATCHES)
def test_json_patch_applies(operations: list[Any], expected: dict[str, Any]) -> None:
    """Each RFC 6902 operation gives exactly this document; the input is left unchanged."""
    document = copy.deepcopy(DOCUMENT)
    result = json_patch(document, operations, PATCH_WHERE)
    assert result == expected
    assert document == DOCUMENT
    assert result is not document


PATCH_ERRORS = [
    pytest.param([{"op": "remove", "path": "/spec/absent"}],
                 "can't remove a non-existent object 'absent'", id="remove-absent"),
    pytest.param([{"op": "add", "path": "/spec/containers/5", "value": {}}],
                 "can't insert outside of list", id="index-out-of-range"),
    pytest.param([{"op": "test", "path": "/metadata/name", "value": "q"}],
                 "p (<class 'str'>) is not equal to tested value q (<class 'str'>)",
                 id="test-fails"),
    pytest.param([{"op": "frob", "path": "/x"}], "Unknown operation 'frob'",
                 id="unknown-op"),
    pytest.param([{"path": "/x"}], "Operation does not contain 'op' member", id="no-op"),
    pytest.param([{"op": 5, "path": "/x"}], "Operation's op must be a string",
                 id="op-not-a-string"),
    pytest.param([{"op": "add", "path": "/x"}],
                 "The operation does not contain a 'value' member", id="add-without-value"),
    pytest.param([{"op": "move", "path": "/x"}],
                 "The operation does not contain a 'from' member", id="move-without-from"),
    pytest.param([{"op": "add", "path": "spec", "value": 1}], "Location must start with /",
                 id="path-without-slash"),
    pytest.param([{"op": "remove", "path": 5}], "Invalid 'path'", id="path-not-a-string"),
    pytest.param([{"op": "add", "path": "/a~2", "value": 1}], "Found invalid escape ~2",
                 id="bad-escape"),
    pytest.param([{"op": "add", "path": "/spec/containers/01", "value": {}}],
                 "'01' is not a valid sequence index", id="leading-zero-index"),
    pytest.param([{"op": "remove", "path": "/metadata/name/0"}],
                 "Cannot apply token '0' to non-container type <class 'str'>",
                 id="index-into-a-string"),
    pytest.param([{"op": "add", "path": "/spec/terminationGracePeriodSeconds/x", "value": 1}],
                 "Document '<class 'int'>' does not support indexing, must be mapping/sequence "
                 "or support __getitem__", id="index-into-a-number"),
    pytest.param([{"op": "move", "from": "/spec", "path": "/spec/x"}],
                 "Cannot move values into their own children", id="move-into-itself"),
    pytest.param([{"op": "remove", "path": ""}], "can't remove the whole document",
                 id="remove-whole-document"),
    pytest.param([5], "Operation must be an object", id="operation-not-a-map"),
]


@pytest.mark.parametrize(("operations", "detail"), PATCH_ERRORS)
def test_json_patch_refuses(operations: list[Any], detail: str) -> None:
    """A patch the library cannot apply becomes one ConfigError starting with the patch file."""
    document = copy.deepcopy(DOCUMENT)
    with pytest.raises(ConfigError) as raised:
        json_patch(document, operations, PATCH_WHERE)
    assert str(raised.value) == f"{PATCH_WHERE}: cannot apply the JSON Patch: {detail}"
    assert raised.value.__cause__ is not None
    assert document == DOCUMENT


def test_json_patch_failing_late_leaves_the_document_unchanged() -> None:
    """Operations before a failing one are not applied to the caller's document either."""
    document = copy.deepcopy(DOCUMENT)
    with pytest.raises(ConfigError):
        json_patch(document, [{"op": "remove", "path": "/spec/tolerations"},
                              {"op": "test", "path": "/metadata/name", "value": "q"}],
                   PATCH_WHERE)
    assert document == DOCUMENT


@pytest.mark.parametrize(("value", "kind"), [
    pytest.param([1], "list", id="list"),
    pytest.param("pod", "str", id="string"),
    pytest.param(None, "NoneType", id="null"),
])
def test_json_patch_refuses_replacing_the_pod_with_a_non_map(value: Any, kind: str) -> None:
    """A patch whose result is not a mapping is refused, naming what it made of the pod."""
    with pytest.raises(ConfigError) as raised:
        json_patch(DOCUMENT, [{"op": "replace", "path": "", "value": value}], PATCH_WHERE)
    assert str(raised.value) == (f"{PATCH_WHERE}: the JSON Patch replaced the whole pod with "
                                 f"a {kind}")
