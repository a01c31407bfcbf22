"""`gc`: which job pods and secrets are certainly over (pure), and removing them over the
wire and through `runner-driver gc`, never touching a live job's pod."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from runner_driver import kube
from runner_driver.emulator import EmulatedCluster
from runner_driver.errors import ConfigError
from runner_driver.gc import (
    CLOCK_SLACK_SECONDS,
    Verdict,
    collect,
    parse_duration,
    pod_verdict,
    secret_verdict,
    verdicts,
)
from runner_driver.podspec import MANAGED_BY, MANAGED_SELECTOR, MANAGER_LABEL, manager_selector
from runner_driver.settings import KubernetesSettings, ManagerSettings, Settings
from tests.conftest import HELPER, HELPER_IDLE, wait_for

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY, MANAGER_LABEL: "gc-test"}
# What `gc` lists by default: this manager's objects only.
OURS = manager_selector(Settings(manager=ManagerSettings(id="gc-test")))

# --- parse_duration -----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0), ("0s", 0), ("90", 90), ("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400),
    ("1h30m", 5400), ("1d2h3m4s", 93784), ("1.5h", 5400), ("0.5m", 30), (" 30M ", 1800),
])
def test_parse_duration_reads_seconds_minutes_hours_days_and_sums(text: str,
                                                                  seconds: float) -> None:
    """Bare numbers are seconds; s, m, h and d units add up; case and edge spaces do not matter."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "  ", "abc", "10x", "-5m", "1h 30m", "m", "h1", "1.h",
                                  "1,5h", "30 minutes", "1e3"])
def test_parse_duration_refuses_anything_else_naming_the_option(text: str) -> None:
    """A duration that is not `<number><unit>...` is a ConfigError naming --older-than and it."""
    with pytest.raises(ConfigError) as raised:
        parse_duration(text)
    message = str(raised.value)
    assert message.startswith("reading --older-than: ")
    assert repr(text) in message


# --- pod_verdict -----------------------------------------------------------------------------


def stamp(age_seconds: float) -> str:
    """An RFC 3339 creationTimestamp `age_seconds` before NOW, as the API writes it."""
    return (NOW - timedelta(seconds=age_seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_pod(name: str, age: float, phase: str = "Running", deadline: Any = 3600,
            started: float | None = None, **metadata: Any) -> dict[str, Any]:
    """A driver-labelled job pod of the given age, phase, active deadline and start."""
    spec = {"activeDeadlineSeconds": deadline} if deadline is not None else {}
    status: dict[str, Any] = {"phase": phase}
    if started is not None:
        status["startTime"] = stamp(started)
    return {"metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": stamp(age),
                         "labels": {**MANAGED, "runner-driver/job-id": f"job-{name}"},
                         **metadata},
            "spec": spec, "status": status}


def past(seconds: int, deadline: int = 3600) -> str:
    """gc's reason for a pod running `seconds` past creation with that deadline."""
    return (f"running for {seconds}s, past its active deadline of {deadline}s (its node no "
            "longer enforces it)")


@pytest.mark.parametrize(("pod", "older_than", "reason"), [
    pytest.param(job_pod("p", 10, "Succeeded"), 0, "finished (Succeeded)", id="succeeded"),
    pytest.param({**job_pod("p", 10), "status": {
        "phase": "Failed", "reason": "DeadlineExceeded",
        "message": "Pod was active on the node longer than the specified deadline"}}, 0,
        "finished (Failed: DeadlineExceeded: Pod was active on the node longer than the "
        "specified deadline)", id="failed-with-reason"),
    pytest.param(job_pod("p", 10, "Failed", deadline=None), 0, "finished (Failed)",
                 id="failed-without-deadline"),
    pytest.param(job_pod("p", 3600 + CLOCK_SLACK_SECONDS + 1), 0,
                 past(3600 + CLOCK_SLACK_SECONDS + 1), id="running-past-deadline"),
    pytest.param(job_pod("p", 9000, started=3700), 0, past(3700),
                 id="started-late-and-past-deadline"),
    pytest.param(job_pod("p", 700, "Pending", deadline=600), 0, past(700, 600),
                 id="pending-past-deadline"),
    pytest.param(job_pod("p", 7200, "Succeeded"), 3600, "finished (Succeeded)",
                 id="finished-and-older-than-the-option"),
    pytest.param(job_pod("p", 5000), 4000, past(5000),
                 id="past-deadline-and-older-than-the-option"),
])
def test_pod_whose_job_is_over_is_removed(pod: dict[str, Any], older_than: float,
                                          reason: str) -> None:
    """A finished pod, or one running past its active deadline plus slack, is over, and why."""
    assert pod_verdict(pod, NOW, older_than) == Verdict("pod", "p", reason)


@pytest.mark.parametrize(("pod", "older_than"), [
    pytest.param(job_pod("p", 10), 0, id="running-inside-deadline-even-with-older-than-0"),
    pytest.param(job_pod("p", 3599), 0, id="running-just-inside-deadline"),
    pytest.param(job_pod("p", 9000, started=3000), 0, id="started-late-still-inside-deadline"),
    pytest.param(job_pod("p", 3600 + CLOCK_SLACK_SECONDS), 0,
                 id="inside-the-clock-slack"),
    pytest.param(job_pod("p", 100, "Pending"), 0, id="pending-inside-deadline"),
    pytest.param(job_pod("p", 60, "Succeeded"), 1800, id="finished-but-younger-than-option"),
    pytest.param(job_pod("p", 5000), 7200, id="past-deadline-but-younger-than-option"),
    pytest.param(job_pod("p", 10, "Succeeded",
                         deletionTimestamp="2025-06-01T11:59:59Z"), 0,
                 id="finished-but-being-deleted"),
    pytest.param(job_pod("p", 99999, deletionTimestamp="2025-06-01T11:59:59Z"), 0,
                 id="past-deadline-but-being-deleted"),
    pytest.param(job_pod("p", 99999, deadline=None), 0, id="running-without-deadline"),
    pytest.param(job_pod("p", 99999, deadline="an hour"), 0, id="unreadable-deadline"),
    pytest.param(job_pod("p", -300, "Succeeded"), 0, id="created-in-the-future"),
    pytest.param({**job_pod("p", 0, "Succeeded"), "metadata": {"name": "p"}}, 0,
                 id="no-creation-timestamp"),
    pytest.param({"metadata": {"name": "p", "creationTimestamp": "yesterday"},
                  "status": {"phase": "Succeeded"}}, 0, id="unreadable-creation-timestamp"),
])
def test_pod_of_a_possibly_live_job_is_kept(pod: dict[str, Any], older_than: float) -> None:
    """A pod inside its active deadline, young, being deleted, or of unknown age is kept."""
    assert pod_verdict(pod, NOW, older_than) is None


def test_pod_verdict_accepts_fractional_timestamps() -> None:
    """A creationTimestamp with fractional seconds and an offset is read too."""
    pod = job_pod("p", 0, "Succeeded")
    pod["metadata"]["creationTimestamp"] = "2025-06-01T13:59:00.123456+02:00"
    assert pod_verdict(pod, NOW, 30) == Verdict("pod", "p", "finished (Succeeded)")
    assert pod_verdict(pod, NOW, 90) is None


# --- secret_verdict --------------------------------------------------------------------------


def owned_secret(name: str, age: float, owner: dict[str, Any] | None,
                 **metadata: Any) -> dict[str, Any]:
    """A driver-labelled secret owned by the pod `owner` (None: no owner reference)."""
    refs = [{"apiVersion": "v1", "kind": "Pod", "name": owner["metadata"]["name"],
             "uid": owner["metadata"]["uid"]}] if owner is not None else []
    job = owner["metadata"]["labels"]["runner-driver/job-id"] if owner is not None else "lost"
    return {"metadata": {"name": name, "creationTimestamp": stamp(age),
                         "labels": {**MANAGED, "runner-driver/job-id": job},
                         "ownerReferences": refs, **metadata}, "type": "Opaque"}


LIVE = job_pod("live", 100)
GONE = job_pod("gone", 100)


def test_secret_of_a_kept_pod_is_kept() -> None:
    """A secret owned by a pod gc keeps stays."""
    assert secret_verdict(owned_secret("s", 100, LIVE), [LIVE], NOW, 0) is None


def test_secret_whose_owner_pod_is_gone_is_removed() -> None:
    """A secret whose owner pod is not among the kept pods belongs to no live job."""
    assert secret_verdict(owned_secret("s", 100, GONE), [LIVE], NOW, 0) == \
        Verdict("secret", "s", "its pod is gone")


def test_secret_with_one_live_owner_among_several_is_kept() -> None:
    """Any live owner pod keeps the secret."""
    body = owned_secret("s", 100, GONE)
    body["metadata"]["ownerReferences"].append(
        {"apiVersion": "v1", "kind": "Pod", "name": "live", "uid": "uid-live"})
    assert secret_verdict(body, [LIVE], NOW, 0) is None


@pytest.mark.parametrize(("body", "older_than"), [
    pytest.param(owned_secret("s", 100, GONE, deletionTimestamp="2025-06-01T11:59:59Z"), 0,
                 id="already-being-collected"),
    pytest.param(owned_secret("s", 100, GONE), 3600, id="younger-than-option"),
    pytest.param({"metadata": {"name": "s", "ownerReferences": [
        {"kind": "Pod", "uid": "uid-gone"}]}}, 0, id="no-creation-timestamp"),
])
def test_secret_of_a_gone_pod_is_still_kept_when(body: dict[str, Any],
                                                 older_than: float) -> None:
    """A secret being deleted already, younger than --older-than, or of unknown age is kept."""
    assert secret_verdict(body, [LIVE], NOW, older_than) is None


def test_unowned_secret_of_no_pods_job_is_removed_after_the_slack() -> None:
    """A secret without a Pod owner goes once no pod of its job exists and the slack is over."""
    old = owned_secret("s", CLOCK_SLACK_SECONDS + 1, None)
    assert secret_verdict(old, [LIVE], NOW, 0) == \
        Verdict("secret", "s", "no pod of its job exists")
    assert secret_verdict(owned_secret("s", CLOCK_SLACK_SECONDS, None), [LIVE], NOW, 0) is None


def test_unowned_secret_of_a_live_job_is_kept() -> None:
    """A secret without an owner whose job label matches a kept pod stays."""
    body = owned_secret("s", 9999, None)
    body["metadata"]["labels"]["runner-driver/job-id"] = "job-live"
    assert secret_verdict(body, [LIVE], NOW, 0) is None


def test_owner_references_to_other_kinds_do_not_count_as_a_pod() -> None:
    """A secret owned only by, say, a ConfigMap is judged by its job label."""
    body = owned_secret("s", 9999, None)
    body["metadata"]["ownerReferences"] = [{"kind": "ConfigMap", "uid": "uid-live"}]
    assert secret_verdict(body, [LIVE], NOW, 0) == \
        Verdict("secret", "s", "no pod of its job exists")


# --- verdicts ------------------------------------------------------------------------------


def test_verdicts_remove_finished_pods_then_their_secrets() -> None:
    """Pods come first; a secret whose pod gc removes now goes with it; live ones stay."""
    done = job_pod("done", 500, "Succeeded")
    expired = job_pod("expired", 9999)
    pods = [LIVE, done, expired]
    secrets = [owned_secret("s-live", 100, LIVE), owned_secret("s-done", 100, done),
               owned_secret("s-expired", 100, expired), owned_secret("s-gone", 100, GONE)]
    assert verdicts(pods, secrets, NOW, 0) == [
        Verdict("pod", "done", "finished (Succeeded)"),
        Verdict("pod", "expired", past(9999)),
        Verdict("secret", "s-done", "its pod is gone"),
        Verdict("secret", "s-expired", "its pod is gone"),
        Verdict("secret", "s-gone", "its pod is gone"),
    ]


def test_verdicts_keep_a_pod_being_deleted_and_its_secret() -> None:
    """A pod already being deleted is left to Kubernetes, and so is its secret."""
    going = job_pod("going", 9999, "Succeeded", deletionTimestamp="2025-06-01T11:59:59Z")
    assert verdicts([going], [owned_secret("s", 100, going)], NOW, 0) == []


def test_verdicts_of_nothing_is_nothing() -> None:
    """No pods and no secrets: nothing to remove."""
    assert verdicts([], [], NOW, 0) == []


def test_older_than_keeps_a_young_finished_pod_and_its_secret() -> None:
    """--older-than keeps failed pods (and their secrets) around for inspection."""
    failed = job_pod("failed", 600, "Failed")
    assert verdicts([failed], [owned_secret("s", 600, failed)], NOW, 1800) == []
    assert [v.name for v in verdicts([failed], [owned_secret("s", 600, failed)], NOW,
                                     300)] == ["failed", "s"]


# --- collect, over the wire -----------------------------------------------------------------


@pytest.fixture
def faults(cluster: EmulatedCluster) -> Iterator[EmulatedCluster]:
    """The emulated cluster, with every armed fault disarmed after the test."""
    yield cluster
    cluster.clear_faults()


def wire_pod(name: str, command: list[str], labels: dict[str, str],
             deadline: int = 3600) -> dict[str, Any]:
    """A one-container pod with the given labels and active deadline."""
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                     "activeDeadlineSeconds": deadline,
                     "containers": [{"name": "main", "image": HELPER, "command": command}]}}


def wire_secret(name: str, owner: Any | None, labels: dict[str, str]) -> dict[str, Any]:
    """A secret with labels, owned by the pod object `owner` when given."""
    metadata: dict[str, Any] = {"name": name, "labels": labels}
    if owner is not None:
        metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod",
                                        "name": owner.metadata.name, "uid": owner.metadata.uid}]
    return {"metadata": metadata, "stringData": {"k": "v"}}


@pytest.fixture
def leftovers(core: client.CoreV1Api, namespace: str) -> str:
    """In a fresh namespace: a finished job pod, a live one, a finished foreign pod, a
    finished job pod of another runner manager, and labelled secrets owned by the two job
    pods plus an unlabelled one. Returns the namespace."""
    done = core.create_namespaced_pod(namespace, wire_pod("done", ["sh", "-c", "exit 0"],
                                                          MANAGED))
    live = core.create_namespaced_pod(namespace, wire_pod("live", HELPER_IDLE, MANAGED))
    core.create_namespaced_pod(namespace, wire_pod("foreign", ["sh", "-c", "exit 0"],
                                                   {"app.kubernetes.io/managed-by": "tests"}))
    core.create_namespaced_pod(namespace, wire_pod("other", ["sh", "-c", "exit 0"],
                                                   {**MANAGED, MANAGER_LABEL: "other-host"}))
    core.create_namespaced_secret(namespace, wire_secret("s-done", done, MANAGED))
    core.create_namespaced_secret(namespace, wire_secret("s-live", live, MANAGED))
    # Owned by the pod that stays: Kubernetes' own garbage collector would remove it
    # with `done`, and the tests could not tell that from gc deleting it.
    core.create_namespaced_secret(namespace, wire_secret("s-foreign", live, {}))

    def settled() -> bool:
        phases = {p.metadata.name: p.status.phase
                  for p in core.list_namespaced_pod(namespace).items}
        return phases == {"done": "Succeeded", "live": "Running", "foreign": "Succeeded",
                          "other": "Succeeded"}

    wait_for(settled, timeout=20, what="the pods to finish or run")
    return namespace


def driver_cluster(kubeconfig: Path, namespace: str) -> kube.Cluster:
    """The driver's Cluster for `namespace`, with a short retry budget."""
    settings = KubernetesSettings(kubeconfig=str(kubeconfig), namespace=namespace)
    return kube.Cluster(kube.connect(settings, "test"), 10.0, 2.0)


def names(core: client.CoreV1Api, namespace: str, kind: str) -> set[str]:
    """Names of the pods (kind "pod", not being deleted) or secrets in the namespace."""
    if kind == "pod":
        return {p.metadata.name for p in core.list_namespaced_pod(namespace).items
                if p.metadata.deletion_timestamp is None}
    return {s.metadata.name for s in core.list_namespaced_secret(namespace).items}


def test_collect_dry_run_lists_and_deletes_nothing(kubeconfig: Path, core: client.CoreV1Api,
                                                   leftovers: str) -> None:
    """--dry-run prints what would go, with the reason, and leaves everything in place."""
    said: list[str] = []
    failures = collect(driver_cluster(kubeconfig, leftovers), OURS, datetime.now(UTC), 0, True,
                       said.append)
    assert failures == 0
    assert said == [f"would delete pod {leftovers}/done: finished (Succeeded)",
                    f"would delete secret {leftovers}/s-done: its pod is gone",
                    f"gc: 2 to delete (dry run), 2 kept (namespace {leftovers}, {OURS})"]
    assert names(core, leftovers, "pod") == {"done", "live", "foreign", "other"}
    assert {"s-done", "s-live", "s-foreign"} <= names(core, leftovers, "secret")


def test_collect_deletes_finished_pods_and_their_secrets_only(
        kubeconfig: Path, core: client.CoreV1Api, leftovers: str) -> None:
    """The finished job pod and its secret go; the live pod, foreign objects and theirs stay."""
    said: list[str] = []
    failures = collect(driver_cluster(kubeconfig, leftovers), OURS, datetime.now(UTC), 0, False,
                       said.append)
    assert failures == 0
    assert said == [f"deleted pod {leftovers}/done: finished (Succeeded)",
                    f"deleted secret {leftovers}/s-done: its pod is gone",
                    f"gc: 2 to delete, 2 kept (namespace {leftovers}, {OURS})"]
    assert names(core, leftovers, "pod") == {"live", "foreign", "other"}
    secrets = names(core, leftovers, "secret")
    assert "s-done" not in secrets and {"s-live", "s-foreign"} <= secrets


def test_collect_keeps_young_pods_with_older_than(kubeconfig: Path, core: client.CoreV1Api,
                                                  leftovers: str) -> None:
    """With --older-than 1h nothing just created is touched, finished or not."""
    said: list[str] = []
    assert collect(driver_cluster(kubeconfig, leftovers), OURS, datetime.now(UTC), 3600, False,
                   said.append) == 0
    assert said == [f"gc: 0 to delete, 4 kept (namespace {leftovers}, {OURS})"]
    assert names(core, leftovers, "pod") == {"done", "live", "foreign", "other"}


def test_collect_removes_a_pod_past_its_deadline(kubeconfig: Path, core: client.CoreV1Api,
                                                 leftovers: str) -> None:
    """Seen from two hours later, the running pod is past its 1 h deadline and goes too."""
    said: list[str] = []
    later = datetime.now(UTC) + timedelta(hours=2)
    assert collect(driver_cluster(kubeconfig, leftovers), OURS, later, 0, False, said.append) == 0
    assert f"deleted pod {leftovers}/done: finished (Succeeded)" in said
    assert any(line.startswith(f"deleted pod {leftovers}/live: ") and
               "past its active deadline of 3600s" in line for line in said)
    assert said[-1] == f"gc: 4 to delete, 0 kept (namespace {leftovers}, {OURS})"
    assert names(core, leftovers, "pod") == {"foreign", "other"}


def test_collect_reports_a_failed_delete_and_goes_on(kubeconfig: Path, core: client.CoreV1Api,
                                                     faults: EmulatedCluster,
                                                     leftovers: str) -> None:
    """A refused delete is counted and printed with the server's words; the rest still goes."""
    faults.fail_requests("DELETE", f"^/api/v1/namespaces/{leftovers}/pods/done$", 1, 403)
    said: list[str] = []
    failures = collect(driver_cluster(kubeconfig, leftovers), OURS, datetime.now(UTC), 0, False,
                       said.append)
    assert failures == 1
    assert said[0].startswith(f"could not delete pod {leftovers}/done: deleting pod "
                              f"{leftovers}/done: 403")
    assert said[1] == f"deleted secret {leftovers}/s-done: its pod is gone"
    assert "done" in names(core, leftovers, "pod")


def test_collect_lists_only_what_the_driver_labelled(kubeconfig: Path, cluster: EmulatedCluster,
                                                     leftovers: str) -> None:
    """gc reads pods and secrets by this manager's selector, once each."""
    assert OURS == "app.kubernetes.io/managed-by=runner-driver,runner-driver/manager=gc-test"
    before = cluster.request_counts()
    collect(driver_cluster(kubeconfig, leftovers), OURS, datetime.now(UTC), 0, True,
            lambda _: None)
    after = cluster.request_counts()
    spent = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert spent == {"list pods": 1, "list secrets": 1}


def test_collect_with_the_managed_selector_also_takes_other_managers_pods(
        kubeconfig: Path, core: client.CoreV1Api, leftovers: str) -> None:
    """With the plain managed-by selector the other manager's finished pod goes too."""
    said: list[str] = []
    assert collect(driver_cluster(kubeconfig, leftovers), MANAGED_SELECTOR, datetime.now(UTC),
                   0, False, said.append) == 0
    assert f"deleted pod {leftovers}/other: finished (Succeeded)" in said
    assert names(core, leftovers, "pod") == {"live", "foreign"}


# --- `runner-driver gc` ------------------------------------------------------------------------

DRIVER = Path(sys.executable).parent / "runner-driver"


def gc_command(tmp_path: Path, kubeconfig: Path, namespace: str,
               *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed `runner-driver gc` against the namespace, as a CronJob would."""
    config = tmp_path / "driver.toml"
    config.write_text(f'[kubernetes]\nnamespace = "{namespace}"\nretry_timeout_seconds = 2\n'
                      '[manager]\nid = "gc-test"\n', encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "KUBECONFIG": str(kubeconfig), "RUNNER_DRIVER_CONFIG": str(config)}
    return subprocess.run([str(DRIVER), "gc", *args], env=env, cwd=tmp_path,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60, check=False)


def test_gc_command_deletes_and_prints_what_it_did(tmp_path: Path, kubeconfig: Path,
                                                   core: client.CoreV1Api,
                                                   leftovers: str) -> None:
    """`runner-driver gc` prints each deletion and a summary on stdout and exits 0."""
    result = gc_command(tmp_path, kubeconfig, leftovers)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"deleted pod {leftovers}/done: finished (Succeeded)",
        f"deleted secret {leftovers}/s-done: its pod is gone",
        f"gc: 2 to delete, 2 kept (namespace {leftovers}, {OURS})"]
    assert result.stderr == ""
    assert names(core, leftovers, "pod") == {"live", "foreign", "other"}


def test_gc_command_dry_run_deletes_nothing(tmp_path: Path, kubeconfig: Path,
                                            core: client.CoreV1Api, leftovers: str) -> None:
    """`runner-driver gc --dry-run` says "would delete" and exits 0 with everything in place."""
    result = gc_command(tmp_path, kubeconfig, leftovers, "--dry-run", "--older-than", "0s")
    assert result.returncode == 0, result.stderr
    assert f"would delete pod {leftovers}/done: finished (Succeeded)" in result.stdout
    assert result.stdout.splitlines()[-1] == \
        f"gc: 2 to delete (dry run), 2 kept (namespace {leftovers}, {OURS})"
    assert names(core, leftovers, "pod") == {"done", "live", "foreign", "other"}


def test_gc_command_older_than_keeps_young_pods(tmp_path: Path, kubeconfig: Path,
                                                core: client.CoreV1Api, leftovers: str) -> None:
    """`--older-than 30m` keeps the pods just created."""
    result = gc_command(tmp_path, kubeconfig, leftovers, "--older-than", "30m")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"gc: 0 to delete, 4 kept (namespace {leftovers}, {OURS})"]
    assert names(core, leftovers, "pod") == {"done", "live", "foreign", "other"}


def test_gc_command_bad_duration_is_one_line_and_exit_1(tmp_path: Path, kubeconfig: Path,
                                                        namespace: str) -> None:
    """An unreadable --older-than fails with exit code 1 and one line naming the option."""
    result = gc_command(tmp_path, kubeconfig, namespace, "--older-than", "soon")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "runner-driver gc: reading --older-than: expected a duration such as 90s, 10m, 2h or "
        "1h30m, got 'soon'"]


def test_gc_command_failed_delete_exits_1(tmp_path: Path, kubeconfig: Path,
                                          faults: EmulatedCluster, leftovers: str) -> None:
    """A delete the API refuses is printed and makes `gc` exit 1 (a CronJob shows it failed)."""
    faults.fail_requests("DELETE", f"^/api/v1/namespaces/{leftovers}/pods/done$", 1, 403)
    result = gc_command(tmp_path, kubeconfig, leftovers)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].startswith(
        f"could not delete pod {leftovers}/done: deleting pod {leftovers}/done: 403")


def test_gc_command_keeps_other_managers_pods_unless_told(tmp_path: Path, kubeconfig: Path,
                                                          core: client.CoreV1Api,
                                                          leftovers: str) -> None:
    """By default `gc` leaves another manager's finished pod; `--all-managers` removes it."""
    result = gc_command(tmp_path, kubeconfig, leftovers)
    assert result.returncode == 0, result.stderr
    assert "other" in names(core, leftovers, "pod")
    result = gc_command(tmp_path, kubeconfig, leftovers, "--all-managers")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"deleted pod {leftovers}/other: finished (Succeeded)",
        f"gc: 1 to delete, 2 kept (namespace {leftovers}, {MANAGED_SELECTOR})"]
    assert names(core, leftovers, "pod") == {"live", "foreign"}


def test_gc_command_help_documents_its_options(tmp_path: Path, kubeconfig: Path) -> None:
    """`runner-driver gc --help` exits 0 and describes --older-than and --dry-run."""
    result = gc_command(tmp_path, kubeconfig, "default", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: runner-driver gc")
    assert "--older-than DURATION" in result.stdout and "--dry-run" in result.stdout
    assert "--all-managers" in result.stdout
