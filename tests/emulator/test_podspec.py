"""Pod validation, admission and defaults, as the API server applies them before storing."""

from __future__ import annotations

from typing import Any

import pytest

from runner_driver.emulator.podspec import TOKEN_MOUNT_PATH, apply_defaults, qos_class, validate
from runner_driver.emulator.store import ApiError

SA: dict[str, Any] = {"metadata": {"name": "default"}}


def pod(**spec: Any) -> dict[str, Any]:
    """A minimal valid pod."""
    return {"metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}], **spec}}


def causes(body: dict[str, Any]) -> list[str]:
    """The fields a validation error names."""
    with pytest.raises(ApiError) as caught:
        validate(body)
    assert caught.value.code == 422 and caught.value.reason == "Invalid"
    assert caught.value.details is not None
    return [c["field"] for c in caught.value.details["causes"]]


def test_valid_pod_passes() -> None:
    """A minimal pod is accepted."""
    validate(pod())


def test_missing_containers_and_image() -> None:
    """No containers, or a container without an image, is Invalid naming the field."""
    assert causes(pod(containers=[])) == ["spec.containers"]
    assert causes(pod(containers=[{"name": "c"}])) == ["spec.containers[0].image"]


def test_duplicate_and_bad_names() -> None:
    """Container names must be unique DNS labels."""
    twins = [{"name": "c", "image": "x"}, {"name": "c", "image": "x"}]
    assert causes(pod(containers=twins)) == ["spec.containers[1].name"]
    assert causes(pod(containers=[{"name": "Bad_Name", "image": "x"}])) == [
        "spec.containers[0].name"]


def test_mount_must_name_a_volume() -> None:
    """A volumeMount naming an undeclared volume is refused."""
    body = pod(containers=[{"name": "c", "image": "x",
                            "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}])
    assert causes(body) == ["spec.containers[0].volumeMounts[0].name"]


def test_request_above_limit_and_bad_quantity() -> None:
    """Requests above limits and malformed quantities are refused."""
    body = pod(containers=[{"name": "c", "image": "x", "resources": {
        "requests": {"cpu": "2"}, "limits": {"cpu": "1", "memory": "lots"}}}])
    assert sorted(causes(body)) == ["spec.containers[0].resources.limits[memory]",
                                    "spec.containers[0].resources.requests"]


def test_restart_policy_and_deadline() -> None:
    """Unsupported restart policies and non-positive deadlines are refused."""
    assert causes(pod(restartPolicy="Sometimes")) == ["spec.restartPolicy"]
    assert causes(pod(activeDeadlineSeconds=0)) == ["spec.activeDeadlineSeconds"]


def test_defaults_and_token_mount() -> None:
    """Defaults are filled in and the service-account token is mounted unless opted out."""
    body = pod()
    apply_defaults(body, SA)
    spec = body["spec"]
    assert spec["restartPolicy"] == "Always"
    assert spec["terminationGracePeriodSeconds"] == 30
    assert spec["serviceAccountName"] == "default"
    assert {t["key"] for t in spec["tolerations"]} == {"node.kubernetes.io/not-ready",
                                                      "node.kubernetes.io/unreachable"}
    container = spec["containers"][0]
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert any(m["mountPath"] == TOKEN_MOUNT_PATH for m in container["volumeMounts"])
    assert body["status"] == {"phase": "Pending", "qosClass": "BestEffort"}
    opted_out = pod(automountServiceAccountToken=False)
    apply_defaults(opted_out, SA)
    assert "volumeMounts" not in opted_out["spec"]["containers"][0]


def test_latest_tag_pulls_always() -> None:
    """Images without a tag or with :latest default to imagePullPolicy Always."""
    body = pod(containers=[{"name": "c", "image": "alpine"}])
    apply_defaults(body, SA)
    assert body["spec"]["containers"][0]["imagePullPolicy"] == "Always"


def test_missing_service_account_is_forbidden() -> None:
    """Admission refuses a pod whose service account does not exist (403)."""
    with pytest.raises(ApiError) as caught:
        apply_defaults(pod(serviceAccountName="builder"), None)
    assert caught.value.code == 403
    assert 'serviceaccount "builder" not found' in caught.value.message


def test_qos_class() -> None:
    """QoS class follows requests and limits as in the API server."""
    assert qos_class(pod()["spec"]) == "BestEffort"
    guaranteed = {"limits": {"cpu": "1", "memory": "1Gi"}}
    assert qos_class(pod(containers=[{"name": "c", "image": "x",
                                      "resources": guaranteed}])["spec"]) == "Guaranteed"
    burstable = {"requests": {"cpu": "1"}}
    assert qos_class(pod(containers=[{"name": "c", "image": "x",
                                      "resources": burstable}])["spec"]) == "Burstable"
