"""Server-side field validation over the wire: Strict refusals, Warn headers, Ignore.

Bodies are sent as raw JSON text (duplicate keys cannot be expressed otherwise) and the
answers are read as raw HTTP, because the status code, the `Status` message and the
`Warning` headers are what clients show. The texts are the API server's own (see
`runner_driver.emulator.fieldvalidation`), and the upstream integration test
test/integration/apiserver/field_validation_test.go pins the same wording and order.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from email.message import Message
from typing import Any

import pytest
from kubernetes import client

from runner_driver.emulator import EmulatedCluster

BUSYBOX = "busybox:1.36"
NEVER_SCHEDULED = {"emulator.test/never": "true"}


def request(cluster: EmulatedCluster, method: str, path: str, body: str | None = None,
            content_type: str = "application/json") -> tuple[int, list[str], Any]:
    """One raw HTTP request; return the status, the Warning headers and the JSON body."""
    data = body.encode() if body is not None else None
    raw = urllib.request.Request(  # noqa: S310 - the emulator's http:// URL
        cluster.url + path, data=data, method=method,
        headers={"Content-Type": content_type, "Accept": "application/json"})
    headers: Message
    try:
        with urllib.request.urlopen(raw, timeout=10) as response:  # noqa: S310
            status, headers, text = int(response.status), response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, headers, text = error.code, error.headers, error.read()
    return status, headers.get_all("Warning") or [], json.loads(text)


def pod_text(name: str, extra_container: str = "", extra_spec: str = "") -> str:
    """A never-scheduled pod as JSON text, with raw text spliced into its container and spec."""
    return ('{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "' + name + '"}, '
            '"spec": {"nodeSelector": {"emulator.test/never": "true"}, ' + extra_spec +
            '"containers": [{"name": "main", "image": "' + BUSYBOX + '"' + extra_container +
            "}]}}")


def pods(namespace: str, query: str = "") -> str:
    """The pods collection path, with a query string."""
    return f"/api/v1/namespaces/{namespace}/pods" + (f"?{query}" if query else "")


def test_strict_create_refuses_an_unknown_nested_field(cluster: EmulatedCluster,
                                                       namespace: str) -> None:
    """Strict: 400 BadRequest naming the field's path, and nothing is stored."""
    status, warnings, body = request(cluster, "POST", pods(namespace, "fieldValidation=Strict"),
                                     pod_text("strict", ', "foo": 1'))
    assert status == 400
    assert body["reason"] == "BadRequest"
    assert body["message"] == ('Pod in version "v1" cannot be handled as a Pod: strict decoding '
                               'error: unknown field "spec.containers[0].foo"')
    assert warnings == []
    assert request(cluster, "GET", f"{pods(namespace)}/strict")[0] == 404


def test_strict_lists_duplicates_and_unknowns_in_document_order(cluster: EmulatedCluster,
                                                                 namespace: str) -> None:
    """Duplicates of known fields and map keys, and unknown fields (once each), in order."""
    text = ('{"metadata": {"name": "dupename", "name": "dupes", "labels": {"a": "1", "a": "2"},'
            ' "unknownMeta": "x"}, "spec": {"unknown1": 1, "unknownDupe": 1, "unknownDupe": 2,'
            ' "restartPolicy": "Never", "restartPolicy": "Always",'
            ' "containers": [{"name": "main", "image": "busybox:1.36", "unknownNested": {"x": 1},'
            ' "imagePullPolicy": "Always", "imagePullPolicy": "Never"}]}}')
    status, _, body = request(cluster, "POST", pods(namespace, "fieldValidation=Strict"), text)
    assert status == 400
    assert body["message"] == (
        'Pod in version "v1" cannot be handled as a Pod: strict decoding error: '
        'duplicate field "metadata.name", duplicate field "metadata.labels.a", '
        'unknown field "metadata.unknownMeta", unknown field "spec.unknown1", '
        'unknown field "spec.unknownDupe", duplicate field "spec.restartPolicy", '
        'unknown field "spec.containers[0].unknownNested", '
        'duplicate field "spec.containers[0].imagePullPolicy"')


@pytest.mark.parametrize("query", ["", "fieldValidation=Warn"])
def test_warn_creates_and_answers_one_warning_header_per_field(
        cluster: EmulatedCluster, namespace: str, query: str) -> None:
    """Warn, also when absent: 201, `299 -` warnings, and the unknown fields are not stored."""
    name = "warn-" + uuid.uuid4().hex[:6]
    status, warnings, body = request(cluster, "POST", pods(namespace, query),
                                     pod_text(name, ', "foo": 1', '"bar": {"x": 1}, '))
    assert status == 201
    assert warnings == ['299 - "unknown field \\"spec.bar\\""',
                        '299 - "unknown field \\"spec.containers[0].foo\\""']
    stored = request(cluster, "GET", f"{pods(namespace)}/{name}")[2]
    assert "bar" not in stored["spec"] and "foo" not in stored["spec"]["containers"][0]
    assert body["spec"] == stored["spec"]


def test_ignore_creates_silently_without_the_unknown_fields(cluster: EmulatedCluster,
                                                            namespace: str) -> None:
    """Ignore: 201 with no Warning header; the unknown field is dropped all the same."""
    status, warnings, body = request(cluster, "POST",
                                     pods(namespace, "fieldValidation=Ignore"),
                                     pod_text("ignored", ', "foo": 1'))
    assert (status, warnings) == (201, [])
    assert "foo" not in body["spec"]["containers"][0]


def test_an_unsupported_directive_is_invalid_create_options(cluster: EmulatedCluster,
                                                            namespace: str) -> None:
    """A directive other than Strict, Warn or Ignore is refused as CreateOptions (422)."""
    status, _, body = request(cluster, "POST", pods(namespace, "fieldValidation=strict"),
                              pod_text("lowercase"))
    assert status == 422
    assert body["message"] == ('CreateOptions.meta.k8s.io "" is invalid: fieldValidation: '
                               'Unsupported value: "strict": supported values: "", "Ignore", '
                               '"Strict", "Warn"')
    assert body["details"] == {
        "group": "meta.k8s.io", "kind": "CreateOptions",
        "causes": [{"reason": "FieldValueNotSupported", "field": "fieldValidation",
                    "message": 'Unsupported value: "strict": supported values: "", '
                               '"Ignore", "Strict", "Warn"'}]}


def test_strict_secret_create_names_the_kind(cluster: EmulatedCluster, namespace: str) -> None:
    """Secrets are checked against their own schema (`stringData` known, `strings` not)."""
    path = f"/api/v1/namespaces/{namespace}/secrets?fieldValidation=Strict"
    status, _, body = request(cluster, "POST", path,
                              '{"metadata": {"name": "s"}, "stringData": {"a": "b"}, '
                              '"strings": {"a": "b"}}')
    assert status == 400
    assert body["message"] == ('Secret in version "v1" cannot be handled as a Secret: strict '
                               'decoding error: unknown field "strings"')
    status, _, body = request(cluster, "POST", path,
                              '{"metadata": {"name": "s"}, "stringData": {"a": "b"}}')
    assert status == 201


def test_dry_run_create_is_validated_the_same_way(cluster: EmulatedCluster,
                                                  namespace: str) -> None:
    """A dry-run create is refused (Strict) or warned about (Warn) like a real one."""
    status, _, body = request(cluster, "POST",
                              pods(namespace, "dryRun=All&fieldValidation=Strict"),
                              pod_text("dry", ', "foo": 1'))
    assert status == 400
    assert body["message"].endswith('strict decoding error: unknown field "spec.containers[0].foo"')
    status, warnings, body = request(cluster, "POST", pods(namespace, "dryRun=All"),
                                     pod_text("dry", ', "foo": 1'))
    assert status == 201
    assert warnings == ['299 - "unknown field \\"spec.containers[0].foo\\""']
    assert "foo" not in body["spec"]["containers"][0]


def test_warnings_also_come_with_a_later_refusal(cluster: EmulatedCluster,
                                                 namespace: str) -> None:
    """Warnings recorded while decoding are sent even when validation then refuses (422)."""
    status, warnings, body = request(cluster, "POST", pods(namespace),
                                     '{"metadata": {"name": "bad"}, "spec": {"foo": 1}}')
    assert status == 422
    assert body["reason"] == "Invalid"
    assert warnings == ['299 - "unknown field \\"spec.foo\\""']


def test_strict_reports_at_most_a_hundred_fields(cluster: EmulatedCluster,
                                                 namespace: str) -> None:
    """The strict decoder stops collecting after 100 errors."""
    extra = "".join(f'"x{i}": 1, ' for i in range(150))
    status, _, body = request(cluster, "POST", pods(namespace, "fieldValidation=Strict"),
                              pod_text("many", extra_spec=extra))
    assert status == 400
    assert body["message"].count("unknown field") == 100
    assert body["message"].endswith('unknown field "spec.x99"')


def test_strict_update_refuses_like_a_create(cluster: EmulatedCluster, namespace: str,
                                             core: client.CoreV1Api) -> None:
    """PUT: the same 400 as a create; Warn stores the object without the unknown field."""
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    path = f"/api/v1/namespaces/{namespace}/configmaps/cm"
    text = '{"metadata": {"name": "cm"}, "data": {"a": "2"}, "date": {"a": "2"}}'
    status, _, body = request(cluster, "PUT", path + "?fieldValidation=Strict", text)
    assert status == 400
    assert body["message"] == ('ConfigMap in version "v1" cannot be handled as a ConfigMap: '
                               'strict decoding error: unknown field "date"')
    status, warnings, body = request(cluster, "PUT", path, text)
    assert (status, warnings) == (200, ['299 - "unknown field \\"date\\""'])
    assert "date" not in core.read_namespaced_config_map("cm", namespace).to_dict()
    assert body["data"] == {"a": "2"} and "date" not in body


@pytest.mark.parametrize(("content_type", "patch", "bad_value"), [
    ("application/merge-patch+json", '{"data": {"b": "2"}, "date": 1}',
     lambda value: value.startswith('Invalid value: "{') and '\\"date\\":1' in value),
    ("application/strategic-merge-patch+json", '{"data": {"b": "2"}, "date": 1}',
     lambda value: value.startswith('Invalid value: "map[data:map[b:2] date:1]"')),
    ("application/json-patch+json", '[{"op": "add", "path": "/date", "value": 1}]',
     lambda value: value.startswith('Invalid value: "{') and '\\"date\\":1' in value),
])
def test_strict_patch_is_an_invalid_patch(cluster: EmulatedCluster, namespace: str,
                                          core: client.CoreV1Api, content_type: str,
                                          patch: str, bad_value: Callable[[str], bool]) -> None:
    """Strict patch: 422 Invalid on `patch` showing the patched object; nothing changes."""
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    path = f"/api/v1/namespaces/{namespace}/configmaps/cm?fieldValidation=Strict"
    status, _, body = request(cluster, "PATCH", path, patch, content_type)
    assert status == 422
    assert body["reason"] == "Invalid"
    assert body["message"].startswith(' "" is invalid: patch: Invalid value: "')
    assert body["message"].endswith(': strict decoding error: unknown field "date"')
    [cause] = body["details"]["causes"]
    assert (cause["reason"], cause["field"]) == ("FieldValueInvalid", "patch")
    assert bad_value(cause["message"]), cause["message"]
    assert core.read_namespaced_config_map("cm", namespace).data == {"a": "1"}


def test_warn_patch_applies_without_the_unknown_field(cluster: EmulatedCluster,
                                                      namespace: str,
                                                      core: client.CoreV1Api) -> None:
    """Warn patch: applied, the unknown field dropped, duplicates in the patch warned about."""
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    status, warnings, body = request(
        cluster, "PATCH", f"/api/v1/namespaces/{namespace}/configmaps/cm",
        '{"data": {"b": "1", "b": "2"}, "date": 1}', "application/merge-patch+json")
    assert status == 200
    assert warnings == ['299 - "duplicate field \\"data.b\\""',
                        '299 - "unknown field \\"date\\""']
    assert body["data"] == {"a": "1", "b": "2"} and "date" not in body


def test_json_patch_operations_are_decoded_strictly(cluster: EmulatedCluster,
                                                    namespace: str,
                                                    core: client.CoreV1Api) -> None:
    """Unknown fields of RFC 6902 operations are reported with a `json patch` prefix."""
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    status, warnings, _ = request(
        cluster, "PATCH", f"/api/v1/namespaces/{namespace}/configmaps/cm",
        '[{"op": "add", "path": "/data/b", "value": "2", "valeu": "2"}]',
        "application/json-patch+json")
    assert status == 200
    assert warnings == ['299 - "json patch unknown field \\"[0].valeu\\""']


def test_the_official_client_gets_its_objects_without_warnings(
        core: client.CoreV1Api, namespace: str) -> None:
    """A typed client only sends known fields, so nothing it sends is dropped."""
    pod = core.create_namespaced_pod(namespace, {
        "metadata": {"name": "typed"},
        "spec": {"nodeSelector": NEVER_SCHEDULED, "containers": [
            {"name": "main", "image": BUSYBOX, "resources": {"limits": {"memory": "64Mi"}}}]}})
    assert pod.spec.containers[0].resources.limits == {"memory": "64Mi"}


def test_warnings_stop_once_they_exceed_four_thousand_characters(cluster: EmulatedCluster,
                                                                 namespace: str) -> None:
    """Warnings are sent until their text passes 4096 characters; the one crossing it is last."""
    extra = "".join(f'"x{i:03d}{"y" * 50}": 1, ' for i in range(100))
    status, warnings, _ = request(cluster, "POST", pods(namespace),
                                  pod_text("chatty", extra_spec=extra))
    assert status == 201
    # Each warning is 75 characters: 54 fit in 4096, the 55th crosses it.
    assert len(warnings) == 55
    assert warnings[-1] == '299 - "unknown field \\"spec.x054' + "y" * 50 + '\\""'
