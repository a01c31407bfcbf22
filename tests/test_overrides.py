"""The job's KUBERNETES_* variables: what each changes in the pod, its caps, notes, refusals."""

from __future__ import annotations

import copy
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from runner_driver.errors import JobFailed
from runner_driver.overrides import RESOURCES, UNSUPPORTED, apply, quantity
from runner_driver.podspec import build_pod
from runner_driver.runner_env import JobContext
from runner_driver.settings import OverrideSettings, ResourceCaps, Settings

JOB = JobContext(job_id="1", project_id="2", timeout_seconds=None, nonce="0" * 32,
                 tmpdir="/tmp/x")
CAPS = OverrideSettings(
    build=ResourceCaps(cpu_request_max="2", cpu_limit_max="4", memory_request_max="4Gi",
                       memory_limit_max="8Gi", ephemeral_storage_request_max="10Gi",
                       ephemeral_storage_limit_max="40Gi"),
    helper=ResourceCaps(cpu_request_max="250m", cpu_limit_max="500m",
                        memory_request_max="256Mi", memory_limit_max="1Gi",
                        ephemeral_storage_request_max="1Gi", ephemeral_storage_limit_max="8Gi"),
    node_selector_keys=("kubernetes.io/arch", "node.example.com/*"),
    service_accounts=("ci-deployer", "ci-*"),
    pod_label_keys=("team", "example.com/*"),
    pod_annotation_keys=("example.com/*",),
)
SETTINGS = Settings(overrides=CAPS)
# Every allow-list open, so only the reserved prefixes can refuse a key.
OPEN = Settings(overrides=replace(CAPS, pod_label_keys=("*",), pod_annotation_keys=("*",)))
OFF = Settings()  # every override off, as shipped
SECRET = "glpat-s3cr3t-token-value"
BUILD, HELPER = 1, 0  # positions in spec.containers of the driver's pod
CONTAINER = {"build": BUILD, "helper": HELPER}


def _pod(settings: Settings = SETTINGS) -> dict[str, Any]:
    """The driver's pod for JOB, as the overrides layer receives it."""
    return build_pod(settings, JOB)


def _apply(requests: dict[str, str], settings: Settings = SETTINGS,
           secrets: tuple[str, ...] = ()) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The pod and notes after the job's `requests` (variable -> value)."""
    applied = apply(_pod(settings), settings, tuple(requests.items()), secrets)
    return applied.pod, applied.notes


def _refusal(requests: dict[str, str], settings: Settings = SETTINGS,
             secrets: tuple[str, ...] = ()) -> str:
    """The message of the JobFailed that the job's `requests` raise."""
    with pytest.raises(JobFailed) as raised:
        _apply(requests, settings, secrets)
    assert raised.value.exit_code == 1
    return str(raised.value)


QUANTITIES = [
    pytest.param("500m", Decimal("0.5"), id="milli"),
    pytest.param("2", Decimal(2), id="integer"),
    pytest.param("1.5", Decimal("1.5"), id="decimal"),
    pytest.param("0", Decimal(0), id="zero"),
    pytest.param("1k", Decimal(1000), id="kilo"),
    pytest.param("2M", Decimal(2 * 10**6), id="mega"),
    pytest.param("3G", Decimal(3 * 10**9), id="giga"),
    pytest.param("1T", Decimal(10**12), id="tera"),
    pytest.param("1P", Decimal(10**15), id="peta"),
    pytest.param("1E", Decimal(10**18), id="exa"),
    pytest.param("1Ki", Decimal(1024), id="kibi"),
    pytest.param("512Mi", Decimal(512 * 2**20), id="mebi"),
    pytest.param("1Gi", Decimal(1073741824), id="gibi"),
    pytest.param("1.5Gi", Decimal(1610612736), id="fractional-gibi"),
    pytest.param("2Ti", Decimal(2 * 2**40), id="tebi"),
    pytest.param("1Pi", Decimal(2**50), id="pebi"),
    pytest.param("1Ei", Decimal(2**60), id="exbi"),
    pytest.param(" 4Gi\n", Decimal(4 * 2**30), id="surrounding-space"),
]


@pytest.mark.parametrize(("text", "value"), QUANTITIES)
def test_quantity_value(text: str, value: Decimal) -> None:
    """Each suffix of the Kubernetes quantity grammar scales by its decimal or binary power."""
    assert quantity(text) == value


@pytest.mark.parametrize("text", [
    pytest.param("", id="empty"),
    pytest.param("two", id="word"),
    pytest.param("-1", id="negative"),
    pytest.param("+1", id="signed"),
    pytest.param("1e3", id="exponent"),
    pytest.param(".5", id="no-integer-part"),
    pytest.param("1.", id="no-fraction-digits"),
    pytest.param("1gi", id="lower-case-suffix"),
    pytest.param("1 Gi", id="space-before-suffix"),
    pytest.param("1Gi1", id="trailing-digits"),
    pytest.param("1mi", id="unknown-suffix"),
    pytest.param("0x10", id="hex"),
    pytest.param("1_000", id="underscore"),
    pytest.param("\u0661", id="arabic-indic-digit"),
    pytest.param("\U0001d7d9Gi", id="mathematical-digit"),
])
def test_quantity_malformed(text: str) -> None:
    """Anything outside the subset of the grammar (including non-ASCII digits) is None."""
    assert quantity(text) is None


# (variable, value, container, requests or limits, resource name, cap shown in the note)
GRANTED = [
    pytest.param("KUBERNETES_CPU_REQUEST", "1500m", "build", "requests", "cpu", "2",
                 id="cpu-request"),
    pytest.param("KUBERNETES_CPU_LIMIT", "4", "build", "limits", "cpu", "4",
                 id="cpu-limit-at-cap"),
    pytest.param("KUBERNETES_MEMORY_REQUEST", "4096Mi", "build", "requests", "memory", "4Gi",
                 id="memory-request-at-cap-in-other-unit"),
    pytest.param("KUBERNETES_MEMORY_LIMIT", "8G", "build", "limits", "memory", "8Gi",
                 id="memory-limit-decimal-below-binary-cap"),
    pytest.param("KUBERNETES_EPHEMERAL_STORAGE_REQUEST", "2Gi", "build", "requests",
                 "ephemeral-storage", "10Gi", id="storage-request"),
    pytest.param("KUBERNETES_EPHEMERAL_STORAGE_LIMIT", "40Gi", "build", "limits",
                 "ephemeral-storage", "40Gi", id="storage-limit-at-cap"),
    pytest.param("KUBERNETES_HELPER_CPU_REQUEST", "0.1", "helper", "requests", "cpu", "250m",
                 id="helper-cpu-request"),
    pytest.param("KUBERNETES_HELPER_CPU_LIMIT", "500m", "helper", "limits", "cpu", "500m",
                 id="helper-cpu-limit"),
    pytest.param("KUBERNETES_HELPER_MEMORY_REQUEST", "128Mi", "helper", "requests", "memory",
                 "256Mi", id="helper-memory-request"),
    pytest.param("KUBERNETES_HELPER_MEMORY_LIMIT", "1Gi", "helper", "limits", "memory", "1Gi",
                 id="helper-memory-limit"),
    pytest.param("KUBERNETES_HELPER_EPHEMERAL_STORAGE_REQUEST", "512Mi", "helper", "requests",
                 "ephemeral-storage", "1Gi", id="helper-storage-request"),
    pytest.param("KUBERNETES_HELPER_EPHEMERAL_STORAGE_LIMIT", "8Gi", "helper", "limits",
                 "ephemeral-storage", "8Gi", id="helper-storage-limit"),
]


@pytest.mark.parametrize(("name", "value", "container", "kind", "resource", "cap"), GRANTED)
def test_resource_within_cap_is_granted(name: str, value: str, container: str, kind: str,
                                        resource: str, cap: str) -> None:
    """A resource at or below its cap is set on its container alone, and the log says so."""
    expected = _pod()
    expected["spec"]["containers"][CONTAINER[container]]["resources"][kind][resource] = value
    pod, notes = _apply({name: value})
    assert pod == expected
    assert notes == (f"{name}={value}: {container} container {kind}.{resource} (cap {cap})",)


def test_resource_value_is_stripped_and_set_where_none_was() -> None:
    """Spaces around a value are dropped; a container without resources gets the block."""
    pod = _pod()
    del pod["spec"]["containers"][BUILD]["resources"]
    applied = apply(pod, SETTINGS, (("KUBERNETES_CPU_LIMIT", "  3 "),))
    assert applied.pod["spec"]["containers"][BUILD]["resources"] == {"limits": {"cpu": "3"}}
    assert applied.notes == ("KUBERNETES_CPU_LIMIT=3: build container limits.cpu (cap 4)",)


ABOVE_CAP = [
    pytest.param("KUBERNETES_CPU_REQUEST", "2001m", "2", "overrides.build.cpu_request_max",
                 id="cpu-request"),
    pytest.param("KUBERNETES_CPU_LIMIT", "4.5", "4", "overrides.build.cpu_limit_max",
                 id="cpu-limit"),
    pytest.param("KUBERNETES_CPU_LIMIT", "1k", "4", "overrides.build.cpu_limit_max",
                 id="cpu-limit-kilo"),
    pytest.param("KUBERNETES_MEMORY_REQUEST", "5Gi", "4Gi",
                 "overrides.build.memory_request_max", id="memory-request"),
    pytest.param("KUBERNETES_MEMORY_LIMIT", "8.6G", "8Gi", "overrides.build.memory_limit_max",
                 id="memory-limit-decimal-above-binary-cap"),
    pytest.param("KUBERNETES_EPHEMERAL_STORAGE_REQUEST", "10241Mi", "10Gi",
                 "overrides.build.ephemeral_storage_request_max", id="storage-request"),
    pytest.param("KUBERNETES_EPHEMERAL_STORAGE_LIMIT", "1Ti", "40Gi",
                 "overrides.build.ephemeral_storage_limit_max", id="storage-limit"),
    pytest.param("KUBERNETES_HELPER_CPU_REQUEST", "251m", "250m",
                 "overrides.helper.cpu_request_max", id="helper-cpu-request"),
    pytest.param("KUBERNETES_HELPER_CPU_LIMIT", "1", "500m", "overrides.helper.cpu_limit_max",
                 id="helper-cpu-limit"),
    pytest.param("KUBERNETES_HELPER_MEMORY_REQUEST", "257Mi", "256Mi",
                 "overrides.helper.memory_request_max", id="helper-memory-request"),
    pytest.param("KUBERNETES_HELPER_MEMORY_LIMIT", "2Gi", "1Gi",
                 "overrides.helper.memory_limit_max", id="helper-memory-limit"),
    pytest.param("KUBERNETES_HELPER_EPHEMERAL_STORAGE_REQUEST", "2Gi", "1Gi",
                 "overrides.helper.ephemeral_storage_request_max", id="helper-storage-request"),
    pytest.param("KUBERNETES_HELPER_EPHEMERAL_STORAGE_LIMIT", "9Gi", "8Gi",
                 "overrides.helper.ephemeral_storage_limit_max", id="helper-storage-limit"),
]


@pytest.mark.parametrize(("name", "value", "cap", "key"), ABOVE_CAP)
def test_resource_above_cap_fails_the_job(name: str, value: str, cap: str, key: str) -> None:
    """A value above its cap fails the job naming the variable, the value, cap and setting."""
    assert _refusal({name: value}) == (f"refusing {name}={value}: above the runner's cap of "
                                       f"{cap} ({key})")


@pytest.mark.parametrize(("suffix", "resource", "kind", "key"), RESOURCES)
@pytest.mark.parametrize("helper", [False, True], ids=["build", "helper"])
def test_resource_with_cap_off_is_noted_and_ignored(suffix: str, resource: str, kind: str,
                                                    key: str, helper: bool) -> None:
    """Every resource variable is ignored with a WARNING naming its unset setting."""
    name = f"KUBERNETES_{'HELPER_' if helper else ''}{suffix}"
    section = "overrides.helper" if helper else "overrides.build"
    pod, notes = _apply({name: "1"}, OFF)
    assert pod == _pod(OFF)
    assert notes == (f"WARNING: {name}=1 is ignored: the runner's operator has not allowed it "
                     f"({section}.{key} is not set)",)


def test_resource_table_names_real_cap_settings() -> None:
    """Each row of the resource table names a field of ResourceCaps and a container resource."""
    assert [(row[0], row[1], row[2]) for row in RESOURCES] == [
        ("CPU_REQUEST", "cpu", "requests"), ("CPU_LIMIT", "cpu", "limits"),
        ("MEMORY_REQUEST", "memory", "requests"), ("MEMORY_LIMIT", "memory", "limits"),
        ("EPHEMERAL_STORAGE_REQUEST", "ephemeral-storage", "requests"),
        ("EPHEMERAL_STORAGE_LIMIT", "ephemeral-storage", "limits")]
    assert {row[3] for row in RESOURCES} == set(ResourceCaps.__dataclass_fields__)


CPU_EXAMPLE = "not a Kubernetes quantity such as 500m or 2"
MEMORY_EXAMPLE = "not a Kubernetes quantity such as 512Mi or 4Gi"
MALFORMED_RESOURCES = [
    pytest.param("KUBERNETES_CPU_LIMIT", "two", f"'two': {CPU_EXAMPLE}", id="cpu-word"),
    pytest.param("KUBERNETES_CPU_REQUEST", "-1", f"'-1': {CPU_EXAMPLE}", id="cpu-negative"),
    pytest.param("KUBERNETES_CPU_LIMIT", "1e3", f"'1e3': {CPU_EXAMPLE}", id="cpu-exponent"),
    pytest.param("KUBERNETES_CPU_LIMIT", "\u0661", f"'\u0661': {CPU_EXAMPLE}",
                 id="cpu-non-ascii-digit"),
    pytest.param("KUBERNETES_MEMORY_LIMIT", "512m", f"'512m': {MEMORY_EXAMPLE}",
                 id="memory-millibytes"),
    pytest.param("KUBERNETES_MEMORY_REQUEST", "1gi", f"'1gi': {MEMORY_EXAMPLE}",
                 id="memory-lower-case-suffix"),
    pytest.param("KUBERNETES_EPHEMERAL_STORAGE_LIMIT", "1m", f"'1m': {MEMORY_EXAMPLE}",
                 id="storage-millibytes"),
    pytest.param("KUBERNETES_HELPER_MEMORY_LIMIT", "lots", f"'lots': {MEMORY_EXAMPLE}",
                 id="helper-memory-word"),
    pytest.param("KUBERNETES_CPU_LIMIT", "1\x1b[31m", f"'1?[31m': {CPU_EXAMPLE}",
                 id="control-characters-shown-as-question-marks"),
    pytest.param("KUBERNETES_MEMORY_LIMIT", "9" * 100 + "x",
                 f"'{'9' * 80}...': {MEMORY_EXAMPLE}", id="long-value-cut-at-80"),
]


@pytest.mark.parametrize(("name", "value", "detail"), MALFORMED_RESOURCES)
@pytest.mark.parametrize("settings", [SETTINGS, OFF], ids=["caps-on", "caps-off"])
def test_malformed_resource_fails_the_job(name: str, value: str, detail: str,
                                          settings: Settings) -> None:
    """A value that is no quantity fails the job, showing it safely, whether or not capped."""
    assert _refusal({name: value}, settings) == f"refusing {name}={detail}"


REQUEST_OVER_LIMIT = [
    pytest.param({"KUBERNETES_EPHEMERAL_STORAGE_LIMIT": "512Mi"},
                 "the build container's ephemeral-storage: request 1Gi is above its limit "
                 "512Mi", id="limit-below-the-settings-request"),
    pytest.param({"KUBERNETES_EPHEMERAL_STORAGE_REQUEST": "2Gi",
                  "KUBERNETES_EPHEMERAL_STORAGE_LIMIT": "1Gi"},
                 "the build container's ephemeral-storage: request 2Gi is above its limit 1Gi",
                 id="both-asked-request-first"),
    pytest.param({"KUBERNETES_CPU_LIMIT": "1500m", "KUBERNETES_CPU_REQUEST": "2"},
                 "the build container's cpu: request 2 is above its limit 1500m",
                 id="both-asked-limit-first"),
    pytest.param({"KUBERNETES_MEMORY_REQUEST": "4Gi", "KUBERNETES_MEMORY_LIMIT": "4G"},
                 "the build container's memory: request 4Gi is above its limit 4G",
                 id="binary-request-above-decimal-limit"),
    pytest.param({"KUBERNETES_HELPER_EPHEMERAL_STORAGE_LIMIT": "128Mi"},
                 "the helper container's ephemeral-storage: request 256Mi is above its limit "
                 "128Mi", id="helper"),
]


@pytest.mark.parametrize(("requests", "detail"), REQUEST_OVER_LIMIT)
def test_request_above_limit_fails_the_job(requests: dict[str, str], detail: str) -> None:
    """Overrides that leave a request above its limit fail the job before the API would."""
    assert _refusal(requests) == (f"refusing {detail} (set by the job's KUBERNETES_* "
                                  "variables, on top of the runner's settings)")


def test_request_equal_to_limit_is_granted() -> None:
    """A request equal to its limit, written in other units, is no clash."""
    pod, notes = _apply({"KUBERNETES_CPU_REQUEST": "2", "KUBERNETES_CPU_LIMIT": "2000m"})
    assert pod["spec"]["containers"][BUILD]["resources"] == {
        "requests": {"ephemeral-storage": "1Gi", "cpu": "2"},
        "limits": {"ephemeral-storage": "20Gi", "cpu": "2000m"}}
    assert notes == ("KUBERNETES_CPU_REQUEST=2: build container requests.cpu (cap 2)",
                     "KUBERNETES_CPU_LIMIT=2000m: build container limits.cpu (cap 4)")


# (variable, value, settings, section of the pod, key set, value set)
PAIRS_GRANTED = [
    pytest.param("KUBERNETES_NODE_SELECTOR_ARCH", "kubernetes.io/arch=arm64", SETTINGS,
                 ("spec", "nodeSelector"), "kubernetes.io/arch", "arm64", id="node-selector"),
    pytest.param("KUBERNETES_NODE_SELECTOR_POOL", " node.example.com/pool = gpu-a100 ",
                 SETTINGS, ("spec", "nodeSelector"), "node.example.com/pool", "gpu-a100",
                 id="node-selector-glob-and-spaces"),
    pytest.param("KUBERNETES_POD_LABELS_TEAM", "team=platform", SETTINGS,
                 ("metadata", "labels"), "team", "platform", id="label"),
    pytest.param("KUBERNETES_POD_LABELS_1", "example.com/cost-center=CC_42.a", SETTINGS,
                 ("metadata", "labels"), "example.com/cost-center", "CC_42.a",
                 id="label-prefixed-glob"),
    pytest.param("KUBERNETES_POD_LABELS_EMPTY", "team=", SETTINGS, ("metadata", "labels"),
                 "team", "", id="label-empty-value"),
    pytest.param("KUBERNETES_POD_LABELS_LONG", "team=" + "v" * 63, SETTINGS,
                 ("metadata", "labels"), "team", "v" * 63, id="label-value-of-63"),
    pytest.param("KUBERNETES_POD_LABELS_KEY", "k" * 63 + "=v", OPEN, ("metadata", "labels"),
                 "k" * 63, "v", id="label-name-of-63"),
    pytest.param("KUBERNETES_POD_ANNOTATIONS_OWNER",
                 "example.com/owner=Jane Doe <jane@example.com>=x", SETTINGS,
                 ("metadata", "annotations"), "example.com/owner",
                 "Jane Doe <jane@example.com>=x", id="annotation-free-text-value"),
    pytest.param("KUBERNETES_POD_ANNOTATIONS_BIG", "example.com/big=" + "a" * 4096, SETTINGS,
                 ("metadata", "annotations"), "example.com/big", "a" * 4096,
                 id="annotation-of-4096"),
]


@pytest.mark.parametrize(("name", "value", "settings", "section", "key", "text"), PAIRS_GRANTED)
def test_key_value_override_is_granted(name: str, value: str, settings: Settings,
                                       section: tuple[str, str], key: str, text: str) -> None:
    """An allowed key=value lands in its section of the pod, and the log line says which."""
    expected = _pod(settings)
    expected[section[0]].setdefault(section[1], {})[key] = text
    pod, notes = _apply({name: value}, settings)
    assert pod == expected
    shown = text if len(text) <= 80 else text[:80] + "..."
    assert notes == (f"{name}: {key}={shown}",)


PAIRS_NOT_ALLOWED = [
    pytest.param("KUBERNETES_NODE_SELECTOR_OS", "kubernetes.io/os=linux",
                 "'kubernetes.io/os' is not among the allowed label keys "
                 "(overrides.node_selector_keys = kubernetes.io/arch, node.example.com/*)",
                 id="node-selector-key"),
    pytest.param("KUBERNETES_NODE_SELECTOR_POOL", "example.com/pool=a",
                 "'example.com/pool' is not among the allowed label keys "
                 "(overrides.node_selector_keys = kubernetes.io/arch, node.example.com/*)",
                 id="node-selector-glob-is-anchored"),
    pytest.param("KUBERNETES_POD_LABELS_TEAM", "Team=a",
                 "'Team' is not among the allowed label keys "
                 "(overrides.pod_label_keys = team, example.com/*)",
                 id="label-key-case-sensitive"),
    pytest.param("KUBERNETES_POD_LABELS_X", "sub.example.com/x=a",
                 "'sub.example.com/x' is not among the allowed label keys "
                 "(overrides.pod_label_keys = team, example.com/*)", id="label-key"),
    pytest.param("KUBERNETES_POD_ANNOTATIONS_X", "team=a",
                 "'team' is not among the allowed annotation keys "
                 "(overrides.pod_annotation_keys = example.com/*)", id="annotation-key"),
]


@pytest.mark.parametrize(("name", "value", "detail"), PAIRS_NOT_ALLOWED)
def test_key_outside_allow_list_fails_the_job(name: str, value: str, detail: str) -> None:
    """A key no pattern of its allow-list matches (fnmatch, case-sensitive) fails the job."""
    assert _refusal({name: value}) == f"refusing {name}={value}: {detail}"


@pytest.mark.parametrize(("name", "value", "setting"), [
    pytest.param("KUBERNETES_NODE_SELECTOR_ARCH", "kubernetes.io/arch=arm64",
                 "overrides.node_selector_keys", id="node-selector"),
    pytest.param("KUBERNETES_POD_LABELS_TEAM", "team=platform", "overrides.pod_label_keys",
                 id="label"),
    pytest.param("KUBERNETES_POD_ANNOTATIONS_X", "example.com/x=" + "y" * 100,
                 "overrides.pod_annotation_keys", id="annotation-long-value-cut"),
    pytest.param("KUBERNETES_SERVICE_ACCOUNT_OVERWRITE", "ci-deployer",
                 "overrides.service_accounts", id="service-account"),
])
def test_allow_list_off_is_noted_and_ignored(name: str, value: str, setting: str) -> None:
    """With its allow-list empty the override is ignored with a WARNING naming the setting."""
    pod, notes = _apply({name: value}, OFF)
    assert pod == _pod(OFF)
    shown = value if len(value) <= 80 else value[:80] + "..."
    assert notes == (f"WARNING: {name}={shown} is ignored: the runner's operator has not "
                     f"allowed it ({setting} is empty)",)


KEY_FORM = "expected key=value with a Kubernetes label key (such as kubernetes.io/arch=arm64)"
MALFORMED_PAIRS = [
    pytest.param("KUBERNETES_NODE_SELECTOR_X", "arm64", f"'arm64': {KEY_FORM}",
                 id="no-equals"),
    pytest.param("KUBERNETES_NODE_SELECTOR_X", "=arm64", f"'=arm64': {KEY_FORM}",
                 id="empty-key"),
    pytest.param("KUBERNETES_NODE_SELECTOR_X", "Kubernetes.io/arch=arm64",
                 f"'Kubernetes.io/arch=arm64': {KEY_FORM}", id="upper-case-prefix"),
    pytest.param("KUBERNETES_NODE_SELECTOR_X", "/arch=arm64", f"'/arch=arm64': {KEY_FORM}",
                 id="empty-prefix"),
    pytest.param("KUBERNETES_NODE_SELECTOR_X", "example.com/=a", f"'example.com/=a': {KEY_FORM}",
                 id="empty-name"),
    pytest.param("KUBERNETES_POD_LABELS_X", "a/b/c=d", f"'a/b/c=d': {KEY_FORM}",
                 id="two-slashes"),
    pytest.param("KUBERNETES_POD_LABELS_X", "-team=a", f"'-team=a': {KEY_FORM}",
                 id="name-starts-with-dash"),
    pytest.param("KUBERNETES_POD_LABELS_X", "k" * 64 + "=v", f"'{'k' * 64}=v': {KEY_FORM}",
                 id="name-of-64"),
    pytest.param("KUBERNETES_POD_ANNOTATIONS_X", "a" * 254 + "/x=v",
                 f"'{'a' * 80}...': {KEY_FORM}", id="prefix-over-253"),
    pytest.param("KUBERNETES_POD_ANNOTATIONS_X", "example.com/a b=v",
                 f"'example.com/a b=v': {KEY_FORM}", id="space-in-name"),
    pytest.param("KUBERNETES_NODE_SELECTOR_X", "kubernetes.io/arch=arm 64",
                 "'kubernetes.io/arch=arm 64': 'arm 64' is not a label value (at most 63 "
                 "letters, digits, '-', '_' or '.')", id="space-in-label-value"),
    pytest.param("KUBERNETES_POD_LABELS_X", "team=-a",
                 "'team=-a': '-a' is not a label value (at most 63 letters, digits, '-', '_' "
                 "or '.')", id="label-value-starts-with-dash"),
    pytest.param("KUBERNETES_POD_LABELS_X", "team=" + "v" * 64,
                 f"'team={'v' * 64}': '{'v' * 64}' is not a label value (at most 63 "
                 "letters, digits, '-', '_' or '.')", id="label-value-of-64"),
    pytest.param("KUBERNETES_POD_LABELS_X", "team=a/b",
                 "'team=a/b': 'a/b' is not a label value (at most 63 letters, digits, '-', '_' "
                 "or '.')", id="slash-in-label-value"),
]


@pytest.mark.parametrize(("name", "value", "detail"), MALFORMED_PAIRS)
@pytest.mark.parametrize("settings", [OPEN, OFF], ids=["allowed", "off"])
def test_malformed_key_value_fails_the_job(name: str, value: str, detail: str,
                                           settings: Settings) -> None:
    """A key=value that Kubernetes would refuse fails the job, whether or not allowed."""
    assert _refusal({name: value}, settings) == f"refusing {name}={detail}"


def test_annotation_value_over_4096_fails_the_job() -> None:
    """An annotation value past 4096 characters fails the job without echoing it."""
    assert _refusal({"KUBERNETES_POD_ANNOTATIONS_X": "example.com/x=" + "a" * 4097}) == (
        "refusing KUBERNETES_POD_ANNOTATIONS_X: the annotation value is over 4096 characters")


@pytest.mark.parametrize(("name", "key"), [
    pytest.param("KUBERNETES_POD_LABELS_X", "runner-driver/job-id", id="label-driver"),
    pytest.param("KUBERNETES_POD_LABELS_X", "runner-driver/other", id="label-driver-new"),
    pytest.param("KUBERNETES_POD_LABELS_X", "app.kubernetes.io/managed-by",
                 id="label-app-kubernetes-io"),
    pytest.param("KUBERNETES_POD_ANNOTATIONS_X", "runner-driver/version",
                 id="annotation-driver"),
    pytest.param("KUBERNETES_POD_ANNOTATIONS_X", "app.kubernetes.io/name",
                 id="annotation-app-kubernetes-io"),
])
@pytest.mark.parametrize("settings", [OPEN, OFF], ids=["allowed", "off"])
def test_reserved_key_fails_the_job(name: str, key: str, settings: Settings) -> None:
    """The driver's own label and annotation prefixes are refused even to an open allow-list."""
    assert _refusal({name: f"{key}=9"}, settings) == (
        f"refusing {name}: the key {key!r} is reserved for the driver's own labels and "
        "annotations (runner-driver/, app.kubernetes.io/)")


def test_node_selector_keys_are_not_reserved() -> None:
    """Node labels are the nodes': a node selector may use any allowed key."""
    settings = Settings(overrides=replace(CAPS, node_selector_keys=("*",)))
    pod, _ = _apply({"KUBERNETES_NODE_SELECTOR_X": "app.kubernetes.io/pool=ci"}, settings)
    assert pod["spec"]["nodeSelector"] == {"app.kubernetes.io/pool": "ci"}


@pytest.mark.parametrize("account", ["ci-deployer", "ci-builder", "ci-a.b"])
def test_service_account_in_allow_list_is_granted(account: str) -> None:
    """An allowed service account (exact or glob) runs the pod; no token is mounted still."""
    expected = _pod()
    expected["spec"]["serviceAccountName"] = account
    pod, notes = _apply({"KUBERNETES_SERVICE_ACCOUNT_OVERWRITE": account})
    assert pod == expected
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert notes == (f"KUBERNETES_SERVICE_ACCOUNT_OVERWRITE={account}: the pod runs as "
                     f"service account {account}",)


def test_service_account_outside_allow_list_fails_the_job() -> None:
    """A service account no pattern matches fails the job, listing the allowed ones."""
    assert _refusal({"KUBERNETES_SERVICE_ACCOUNT_OVERWRITE": "default"}) == (
        "refusing KUBERNETES_SERVICE_ACCOUNT_OVERWRITE=default: 'default' is not among the "
        "allowed service accounts (overrides.service_accounts = ci-deployer, ci-*)")


@pytest.mark.parametrize(("value", "shown"), [
    pytest.param("CI-deployer", "CI-deployer", id="upper-case"),
    pytest.param("ci_deployer", "ci_deployer", id="underscore"),
    pytest.param("-ci", "-ci", id="leading-dash"),
    pytest.param("ci..a", "ci..a", id="empty-label"),
    pytest.param("system:serviceaccount:kube-system:admin",
                 "system:serviceaccount:kube-system:admin", id="full-username"),
    pytest.param("c" * 254, "c" * 80 + "...", id="over-253"),
])
@pytest.mark.parametrize("settings", [SETTINGS, OFF], ids=["allowed", "off"])
def test_malformed_service_account_fails_the_job(value: str, shown: str,
                                                 settings: Settings) -> None:
    """A value that is no service account name fails the job, whether or not allowed."""
    assert _refusal({"KUBERNETES_SERVICE_ACCOUNT_OVERWRITE": value}, settings) == (
        f"refusing KUBERNETES_SERVICE_ACCOUNT_OVERWRITE={shown!r}: not a service account name "
        "(lower-case letters, digits, '-' and '.')")


SECRET_REFUSALS = [
    pytest.param("KUBERNETES_POD_ANNOTATIONS_X", f"example.com/token={SECRET}",
                 id="annotation"),
    pytest.param("KUBERNETES_POD_LABELS_X", f"team=x{SECRET}x", id="label-substring"),
    pytest.param("KUBERNETES_NODE_SELECTOR_X", f"kubernetes.io/arch={SECRET}",
                 id="node-selector"),
    pytest.param("KUBERNETES_SERVICE_ACCOUNT_OVERWRITE", SECRET, id="service-account"),
    pytest.param("KUBERNETES_MEMORY_LIMIT", "12345678", id="resource"),
    pytest.param("KUBERNETES_HELPER_CPU_LIMIT", "12345678", id="helper-resource"),
]


@pytest.mark.parametrize(("name", "value"), SECRET_REFUSALS)
@pytest.mark.parametrize("settings", [OPEN, OFF], ids=["allowed", "off"])
def test_secret_in_a_used_value_fails_the_job(name: str, value: str,
                                              settings: Settings) -> None:
    """A value holding a job secret fails the job, without the secret in the message."""
    message = _refusal({name: value}, settings, secrets=("12345678", SECRET))
    assert message == (f"refusing {name}: its value holds one of the job's secrets (a token "
                       "or masked variable), which must not go into a pod spec")


@pytest.mark.parametrize(("name", "notes"), [
    pytest.param("KUBERNETES_DEPLOY_TOKEN", (), id="project-variable"),
    pytest.param("KUBERNETES_HELPER_IMAGE", (), id="unknown-helper-variable"),
    pytest.param("KUBERNETES_BEARER_TOKEN",
                 ("WARNING: KUBERNETES_BEARER_TOKEN is ignored: runner-driver does not support "
                  "it",), id="unsupported-gitlab-variable"),
])
def test_secret_in_an_unread_variable_is_no_refusal(name: str,
                                                    notes: tuple[str, ...]) -> None:
    """A masked KUBERNETES_* variable the driver never reads neither fails the job nor shows."""
    pod, found = _apply({name: SECRET}, OPEN, secrets=(SECRET,))
    assert pod == _pod(OPEN)
    assert found == notes
    assert not any(SECRET in note for note in found)


@pytest.mark.parametrize("name", [
    "KUBERNETES_NAMESPACE_OVERWRITE", "KUBERNETES_BEARER_TOKEN",
    "KUBERNETES_NODE_TOLERATIONS_GPU", "KUBERNETES_SERVICE_CPU_LIMIT",
    "KUBERNETES_SERVICE_MEMORY_REQUEST", "KUBERNETES_SERVICE_EPHEMERAL_STORAGE_LIMIT",
    "KUBERNETES_POD_CPU_REQUEST", "KUBERNETES_POD_MEMORY_LIMIT",
])
def test_unsupported_gitlab_variable_is_noted(name: str) -> None:
    """GitLab variables the driver has no use for are named in a WARNING, pod unchanged."""
    pod, notes = _apply({name: "anything: at all"})
    assert pod == _pod()
    assert notes == (f"WARNING: {name} is ignored: runner-driver does not support it",)


def test_unsupported_table_covers_its_rows() -> None:
    """The unsupported list is GitLab's variables and prefixes this driver does not honour."""
    assert UNSUPPORTED == (
        "KUBERNETES_NAMESPACE_OVERWRITE", "KUBERNETES_BEARER_TOKEN",
        "KUBERNETES_NODE_TOLERATIONS_", "KUBERNETES_SERVICE_CPU_", "KUBERNETES_SERVICE_MEMORY_",
        "KUBERNETES_SERVICE_EPHEMERAL_STORAGE_", "KUBERNETES_POD_CPU_", "KUBERNETES_POD_MEMORY_")


@pytest.mark.parametrize(("name", "value"), [
    pytest.param("KUBERNETES_FOO", "bar", id="unknown"),
    pytest.param("KUBERNETES_NODE_SELECTOR", "kubernetes.io/arch=arm64", id="no-suffix"),
    pytest.param("KUBERNETES_HELPER_NODE_SELECTOR_X", "kubernetes.io/arch=arm64",
                 id="helper-prefixed"),
    pytest.param("KUBERNETES_CPU_LIMIT", "   ", id="blank-value"),
    pytest.param("KUBERNETES_SERVICE_ACCOUNT_OVERWRITE", "", id="empty-value"),
])
def test_variable_without_effect_changes_nothing(name: str, value: str) -> None:
    """Unknown names and blank values leave the pod as it was, with no note and no refusal."""
    pod, notes = _apply({name: value})
    assert pod == _pod()
    assert notes == ()


def test_several_overrides_apply_in_place_with_notes_in_order() -> None:
    """A job's overrides all apply to the pod given (changed in place), noted in their order."""
    pod = _pod()
    expected = copy.deepcopy(pod)
    expected["spec"]["nodeSelector"] = {"kubernetes.io/arch": "arm64"}
    expected["metadata"]["labels"]["team"] = "platform"
    expected["spec"]["containers"][BUILD]["resources"]["limits"]["memory"] = "6Gi"
    expected["spec"]["serviceAccountName"] = "ci-deployer"
    applied = apply(pod, SETTINGS, (
        ("KUBERNETES_NODE_SELECTOR_ARCH", "kubernetes.io/arch=arm64"),
        ("KUBERNETES_MEMORY_LIMIT", "6Gi"),
        ("KUBERNETES_NAMESPACE_OVERWRITE", "other"),
        ("KUBERNETES_POD_LABELS_TEAM", "team=platform"),
        ("KUBERNETES_SERVICE_ACCOUNT_OVERWRITE", "ci-deployer"),
        ("KUBERNETES_HELPER_CPU_LIMIT", "100m"),
    ))
    expected["spec"]["containers"][HELPER]["resources"]["limits"]["cpu"] = "100m"
    assert applied.pod is pod
    assert pod == expected
    assert applied.notes == (
        "KUBERNETES_NODE_SELECTOR_ARCH: kubernetes.io/arch=arm64",
        "KUBERNETES_MEMORY_LIMIT=6Gi: build container limits.memory (cap 8Gi)",
        "WARNING: KUBERNETES_NAMESPACE_OVERWRITE is ignored: runner-driver does not support it",
        "KUBERNETES_POD_LABELS_TEAM: team=platform",
        "KUBERNETES_SERVICE_ACCOUNT_OVERWRITE=ci-deployer: the pod runs as service account "
        "ci-deployer",
        "KUBERNETES_HELPER_CPU_LIMIT=100m: helper container limits.cpu (cap 500m)",
    )


def test_later_override_of_the_same_key_wins() -> None:
    """Two variables naming the same label key: the later one's value is kept."""
    pod, notes = _apply({"KUBERNETES_POD_LABELS_1": "team=a", "KUBERNETES_POD_LABELS_2": "team=b"})
    assert pod["metadata"]["labels"]["team"] == "b"
    assert notes == ("KUBERNETES_POD_LABELS_1: team=a", "KUBERNETES_POD_LABELS_2: team=b")


def test_annotation_note_shows_control_characters_safely() -> None:
    """An annotation value is stored as given, but its log line shows no control characters."""
    pod, notes = _apply({"KUBERNETES_POD_ANNOTATIONS_X": "example.com/x=a\x1b[2Jb\tc"})
    assert pod["metadata"]["annotations"]["example.com/x"] == "a\x1b[2Jb\tc"
    assert notes == ("KUBERNETES_POD_ANNOTATIONS_X: example.com/x=a?[2Jb?c",)


def test_refusal_after_a_granted_override_still_fails_the_job() -> None:
    """A refusal after a granted override raises: the job fails rather than run half-changed."""
    with pytest.raises(JobFailed, match=r"^refusing KUBERNETES_CPU_LIMIT=9: above"):
        apply(_pod(), SETTINGS, (("KUBERNETES_MEMORY_LIMIT", "1Gi"),
                                 ("KUBERNETES_CPU_LIMIT", "9")))
