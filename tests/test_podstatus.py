"""Reading pod status: running, still starting, or failed, in the kubelet's own words;
and why a running job pod can no longer run a stage (`diagnose`)."""

from __future__ import annotations

from typing import Any

import pytest

from runner_driver.podstatus import Death, PodState, assess, diagnose

KANIKO = "gcr.io/kaniko-project/executor:v1.23.2-debug"
HELPER = "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper:x86_64-v17.0.0"
NAME = "runner-abc123xy-project-42-job-1234"


def running(name: str, image: str) -> dict[str, Any]:
    """A containerStatuses entry for a running container, as the kubelet reports it."""
    return {"name": name, "image": image, "imageID": f"{image.partition(':')[0]}@sha256:0123",
            "containerID": f"containerd://{name}0123", "ready": True, "restartCount": 0,
            "started": True,
            "state": {"running": {"startedAt": "2025-01-01T10:00:05Z"}}}


def waiting(name: str, image: str, reason: str, message: str = "") -> dict[str, Any]:
    """A containerStatuses entry for a container the kubelet has not started."""
    state: dict[str, Any] = {"reason": reason}
    if message:
        state["message"] = message
    return {"name": name, "image": image, "imageID": "", "ready": False, "restartCount": 0,
            "started": False, "state": {"waiting": state}}


def terminated(name: str, image: str, code: int, reason: str,
               message: str = "") -> dict[str, Any]:
    """A containerStatuses entry for a container that already exited."""
    ended: dict[str, Any] = {"exitCode": code, "reason": reason,
                             "startedAt": "2025-01-01T10:00:05Z",
                             "finishedAt": "2025-01-01T10:00:06Z",
                             "containerID": f"containerd://{name}0123"}
    if message:
        ended["message"] = message
    return {"name": name, "image": image, "imageID": f"{image.partition(':')[0]}@sha256:0123",
            "ready": False, "restartCount": 0, "started": False,
            "state": {"terminated": ended}}


def condition(kind: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    """A pod condition."""
    found: dict[str, Any] = {"type": kind, "status": status, "lastProbeTime": None,
                             "lastTransitionTime": "2025-01-01T10:00:00Z"}
    if reason:
        found["reason"] = reason
    if message:
        found["message"] = message
    return found


def pod(status: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    """The job pod as the API returns it, with the given status."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": NAME, "namespace": "ci", "uid": "5f0c-11ef",
                     "resourceVersion": "1234", "creationTimestamp": "2025-01-01T10:00:00Z",
                     "labels": {"app.kubernetes.io/managed-by": "runner-driver"},
                     **metadata},
        "spec": {"restartPolicy": "Never", "nodeName": "node-1",
                 "containers": [{"name": "helper", "image": HELPER},
                                {"name": "build", "image": KANIKO}]},
        "status": {} if status is None else status,
    }


SCHEDULED = [condition("Initialized", "True"), condition("PodScheduled", "True")]


def pending(*statuses: dict[str, Any]) -> dict[str, Any]:
    """A scheduled, pending pod's status with these container statuses."""
    return {"phase": "Pending", "conditions": SCHEDULED, "hostIP": "10.0.0.1",
            "startTime": "2025-01-01T10:00:01Z", "containerStatuses": list(statuses)}


CASES = [
    pytest.param(
        pod({"phase": "Running", "conditions": [*SCHEDULED, condition("Ready", "True")],
             "podIP": "10.1.0.7", "containerStatuses": [running("helper", HELPER),
                                                        running("build", KANIKO)]}),
        "running", [NAME, "running"], id="all-running"),
    pytest.param(
        pod(pending(running("helper", HELPER), waiting("build", KANIKO, "ContainerCreating"))),
        "starting", ["build", "ContainerCreating"], id="one-creating"),
    pytest.param(
        pod(pending(waiting("helper", HELPER, "PodInitializing"),
                    waiting("build", KANIKO, "ContainerCreating"))),
        "starting", ["helper: PodInitializing", "build: ContainerCreating"], id="both-creating"),
    pytest.param(
        pod(pending(running("helper", HELPER),
                    waiting("build", KANIKO, "ErrImagePull",
                            f'failed to pull and unpack image "{KANIKO}": not found'))),
        "failed", ["build", KANIKO, "ErrImagePull", "not found"], id="err-image-pull"),
    pytest.param(
        pod(pending(running("helper", HELPER),
                    waiting("build", KANIKO, "ImagePullBackOff",
                            f'Back-off pulling image "{KANIKO}"'))),
        "failed", ["build", KANIKO, "ImagePullBackOff", f'Back-off pulling image "{KANIKO}"'],
        id="image-pull-back-off"),
    pytest.param(
        pod(pending(waiting("helper", HELPER, "CreateContainerConfigError",
                            'secret "registry-ca" not found'),
                    waiting("build", KANIKO, "ContainerCreating"))),
        "failed", ["helper", HELPER, "CreateContainerConfigError", 'secret "registry-ca"'],
        id="create-container-config-error"),
    pytest.param(
        pod(pending(running("helper", HELPER),
                    waiting("build", KANIKO, "InvalidImageName",
                            f'Failed to apply default image tag "{KANIKO}": couldn\'t parse'))),
        "failed", ["build", "InvalidImageName", "couldn't parse"], id="invalid-image-name"),
    pytest.param(
        pod({"phase": "Running", "conditions": SCHEDULED,
             "containerStatuses": [running("helper", HELPER),
                                   terminated("build", KANIKO, 127, "Error",
                                              "/busybox/sh: not found")]}),
        "failed", ["build", "exited with code 127", "/busybox/sh: not found"],
        id="terminated-with-message"),
    pytest.param(
        pod({"phase": "Running", "conditions": SCHEDULED,
             "containerStatuses": [terminated("helper", HELPER, 0, "Completed"),
                                   running("build", KANIKO)]}),
        "failed", ["helper", "exited with code 0", "Completed"], id="terminated-completed"),
    pytest.param(
        pod({"phase": "Failed", "reason": "Evicted",
             "message": "The node was low on resource: ephemeral-storage.",
             "containerStatuses": [terminated("helper", HELPER, 137, "Error"),
                                   terminated("build", KANIKO, 137, "Error")]}),
        "failed", [NAME, "Failed", "Evicted", "low on resource: ephemeral-storage"],
        id="evicted"),
    pytest.param(
        pod({"phase": "Failed", "reason": "DeadlineExceeded",
             "message": "Pod was active on the node longer than the specified deadline"}),
        "failed", [NAME, "Failed", "DeadlineExceeded", "longer than the specified deadline"],
        id="deadline-exceeded"),
    pytest.param(
        pod({"phase": "Running", "containerStatuses": [running("helper", HELPER),
                                                       running("build", KANIKO)]},
            deletionTimestamp="2025-01-01T10:05:00Z", deletionGracePeriodSeconds=10),
        "failed", [NAME, "being deleted"], id="being-deleted"),
    pytest.param(pod({}), "starting", [NAME, "Pending"], id="empty-status"),
    pytest.param(pod({"phase": "Pending"}), "starting", [NAME, "Pending"], id="phase-only"),
]


@pytest.mark.parametrize(("body", "phase", "words"), CASES)
def test_assess(body: dict[str, Any], phase: str, words: list[str]) -> None:
    """Each pod status maps to the expected phase, with a message naming what matters."""
    state = assess(body)
    assert state.phase == phase
    assert not state.unschedulable
    for word in words:
        assert word in state.message, (word, state.message)


def test_unschedulable_pod_is_starting_with_scheduler_message() -> None:
    """A pod the scheduler cannot place keeps starting, flagged, in the scheduler's words."""
    message = ("0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are "
               "available: 3 No preemption victims found for incoming pod.")
    state = assess(pod({"phase": "Pending", "conditions": [
        condition("PodScheduled", "False", "Unschedulable", message)]}))
    assert state == PodState("starting", f"pod {NAME} is not scheduled: Unschedulable: {message}",
                             unschedulable=True)


def test_not_yet_scheduled_without_unschedulable_reason_is_not_flagged() -> None:
    """PodScheduled False for another reason is a slow start, not an unschedulable pod."""
    state = assess(pod({"phase": "Pending", "conditions": [
        condition("PodScheduled", "False", "SchedulingGated", "waiting for gates")]}))
    assert state.phase == "starting" and not state.unschedulable
    assert "SchedulingGated: waiting for gates" in state.message


def test_running_needs_every_container() -> None:
    """One container running while the other has no status yet is still starting."""
    state = assess(pod({"phase": "Pending", "containerStatuses": [running("helper", HELPER)]}))
    assert state.phase == "starting"


def test_fatal_waiting_names_spec_image_when_status_differs() -> None:
    """The failure names the image the pod asked for, from the spec, not a resolved one."""
    state = assess(pod(pending(running("helper", HELPER),
                               waiting("build", "docker.io/library/resolved:1", "ErrImagePull",
                                       "pull access denied"))))
    assert state.phase == "failed"
    assert KANIKO in state.message and "pull access denied" in state.message


def test_assess_does_not_change_the_pod() -> None:
    """Assessing is a pure read of the pod dict."""
    body = pod(pending(running("helper", HELPER), waiting("build", KANIKO, "ContainerCreating")))
    before = repr(body)
    assess(body)
    assert repr(body) == before


# --- diagnose: why a running job pod can no longer run a stage ----------------------------


def limited(body: dict[str, Any], container: str, memory: str) -> dict[str, Any]:
    """`body` with a memory limit on one container of its spec."""
    for spec in body["spec"]["containers"]:
        if spec["name"] == container:
            spec["resources"] = {"requests": {"memory": "1Gi"}, "limits": {"memory": memory}}
    return body


RUNNING = [running("helper", HELPER), running("build", KANIKO)]
OOM_BUILD = [running("helper", HELPER), terminated("build", KANIKO, 137, "OOMKilled")]
DISRUPTED = condition("DisruptionTarget", "True", "EvictionByEvictionAPI",
                      "Eviction API: evicting")

DIAGNOSES = [
    pytest.param(None, "build", None, [NAME, "no longer exists"], id="pod-gone"),
    pytest.param(pod({"phase": "Running", "conditions": [*SCHEDULED, DISRUPTED],
                      "containerStatuses": RUNNING}),
                 "build", None,
                 [NAME, "disrupted", "EvictionByEvictionAPI: Eviction API: evicting",
                  "runner_system_failure"], id="disruption-target"),
    pytest.param(pod({"phase": "Running",
                      "conditions": [*SCHEDULED, condition("DisruptionTarget", "True")],
                      "containerStatuses": RUNNING}),
                 "build", None, ["disrupted", "no reason given"],
                 id="disruption-target-without-reason"),
    pytest.param(limited(pod({"phase": "Running", "conditions": [*SCHEDULED, DISRUPTED],
                              "containerStatuses": OOM_BUILD}), "build", "4Gi"),
                 "build", None, ["disrupted"], id="disruption-wins-over-oom"),
    pytest.param(pod({"phase": "Failed", "reason": "Evicted",
                      "message": "The node was low on resource: memory.",
                      "containerStatuses": RUNNING}),
                 "build", None, [NAME, "ended (Failed: Evicted: The node was low on resource"],
                 id="failed-evicted"),
    pytest.param(pod({"phase": "Failed", "reason": "DeadlineExceeded",
                      "message": "Pod was active on the node longer than the specified "
                                 "deadline"}),
                 "helper", None, ["Failed: DeadlineExceeded", "deadline"],
                 id="failed-deadline-exceeded"),
    pytest.param(pod({"phase": "Succeeded",
                      "containerStatuses": [terminated("helper", HELPER, 0, "Completed"),
                                            terminated("build", KANIKO, 0, "Completed")]}),
                 "build", None, [NAME, "ended (Succeeded)"], id="succeeded"),
    pytest.param(pod({"phase": "Running", "containerStatuses": RUNNING},
                     deletionTimestamp="2025-01-01T10:05:00Z", deletionGracePeriodSeconds=10),
                 "build", None, [NAME, "is being deleted"], id="being-deleted"),
    pytest.param(limited(pod({"phase": "Failed", "containerStatuses": [
        terminated("helper", HELPER, 143, "Error"),
        terminated("build", KANIKO, 137, "OOMKilled")]}),
        "build", "2Gi"),
                 "build", 137, ["OOMKilled", "its memory limit of 2Gi"],
                 id="oom-wins-over-the-failed-pod-it-caused"),
    pytest.param(pod({"phase": "Running", "containerStatuses": [
        running("helper", HELPER), terminated("build", KANIKO, 137, "Error")]},
        deletionTimestamp="2025-01-01T10:05:00Z"),
                 "build", None, [NAME, "is being deleted"],
                 id="deletion-wins-over-the-containers-it-stopped"),
    pytest.param(limited(pod({"phase": "Running", "containerStatuses": OOM_BUILD}),
                         "build", "4Gi"),
                 "build", 137,
                 ["container build", NAME, "OOMKilled", "its memory limit of 4Gi",
                  "exit code 137"], id="oom-killed-with-limit"),
    pytest.param(pod({"phase": "Running", "containerStatuses": OOM_BUILD}),
                 "build", 137,
                 ["container build", "OOMKilled", "the node's memory (no memory limit is set)"],
                 id="oom-killed-without-limit"),
    pytest.param(limited(pod({"phase": "Running", "containerStatuses": OOM_BUILD}),
                         "helper", "256Mi"),
                 "build", 137, ["no memory limit is set"],
                 id="oom-killed-other-containers-limit-not-named"),
    pytest.param(limited(pod({"phase": "Running", "containerStatuses": [
        running("helper", HELPER), terminated("build", KANIKO, 0, "OOMKilled")]}),
        "build", "1Gi"),
                 "build", 137, ["its memory limit of 1Gi", "exit code 137"],
                 id="oom-killed-without-exit-code-is-137"),
    pytest.param(pod({"phase": "Running", "containerStatuses": [
        terminated("helper", HELPER, 2, "Error", "gitlab-runner-helper: fatal"),
        running("build", KANIKO)]}),
                 "helper", None,
                 ["container helper", NAME, "stopped with exit code 2",
                  "gitlab-runner-helper: fatal"], id="terminated-with-message"),
    pytest.param(pod({"phase": "Running", "containerStatuses": [
        running("helper", HELPER), terminated("build", KANIKO, 143, "Error")]}),
                 "build", None, ["stopped with exit code 143 (Error)"],
                 id="terminated-reason-only"),
    pytest.param(pod({"phase": "Running", "containerStatuses": [
        running("helper", HELPER),
        {"name": "build", "image": KANIKO, "state": {"terminated": {"exitCode": 1}}}]}),
                 "build", None, ["stopped with exit code 1 (no reason given)"],
                 id="terminated-without-reason"),
]


@pytest.mark.parametrize(("body", "container", "oom_exit_code", "words"), DIAGNOSES)
def test_diagnose(body: dict[str, Any] | None, container: str, oom_exit_code: int | None,
                  words: list[str]) -> None:
    """Each dead or dying pod gets a Death naming why; only an OOM kill carries an exit code."""
    death = diagnose(body, NAME, container)
    assert death is not None
    assert death.oom_exit_code == oom_exit_code
    for word in words:
        assert word in death.message, (word, death.message)


@pytest.mark.parametrize(("body", "container"), [
    pytest.param(pod({"phase": "Running", "conditions": SCHEDULED, "containerStatuses": RUNNING}),
                 "build", id="all-running"),
    pytest.param(pod({"phase": "Running", "containerStatuses": OOM_BUILD}), "helper",
                 id="other-container-oom-killed"),
    pytest.param(pod({"phase": "Running", "containerStatuses": [
        running("helper", HELPER), waiting("build", KANIKO, "ContainerCreating")]}),
                 "build", id="container-waiting"),
    pytest.param(pod({"phase": "Running", "containerStatuses": [running("helper", HELPER)]}),
                 "build", id="no-status-for-the-container"),
    pytest.param(pod({"phase": "Running",
                      "conditions": [*SCHEDULED, condition("DisruptionTarget", "False")],
                      "containerStatuses": RUNNING}), "build", id="disruption-target-false"),
    pytest.param(pod({}), "build", id="empty-status"),
])
def test_diagnose_a_pod_that_can_still_run_the_stage(body: dict[str, Any],
                                                     container: str) -> None:
    """A pod whose container still runs (or has not reported) gets no Death."""
    assert diagnose(body, NAME, container) is None


def test_diagnose_pod_gone_is_exactly_worded() -> None:
    """A vanished pod is the system's failure, worded for the job log."""
    assert diagnose(None, "p", "build") == Death(
        "pod p no longer exists (deleted, or its node was removed)")


def test_diagnose_does_not_change_the_pod() -> None:
    """Diagnosing is a pure read of the pod dict."""
    body = limited(pod({"phase": "Running", "containerStatuses": OOM_BUILD}), "build", "4Gi")
    before = repr(body)
    diagnose(body, NAME, "build")
    assert repr(body) == before


def evicted(message: str) -> dict[str, Any]:
    """A pod the kubelet evicted with `message`, as its eviction manager leaves it."""
    return pod({"phase": "Failed", "reason": "Evicted", "message": message,
                "conditions": [{"type": "DisruptionTarget", "status": "True",
                                "reason": "TerminationByKubelet", "message": message}]})


@pytest.mark.parametrize(("message", "storage"), [
    pytest.param('Usage of EmptyDir volume "scratch" exceeds the limit "2Mi". ', True,
                 id="empty-dir-over-size-limit"),
    pytest.param('Container build exceeded its local ephemeral storage limit "1Gi". ', True,
                 id="container-over-ephemeral-limit"),
    pytest.param("Pod ephemeral local storage usage exceeds the total limit of containers 3Gi. ",
                 True, id="pod-over-total-limit"),
    pytest.param("The node was low on resource: ephemeral-storage. Threshold quantity: 1Gi, "
                 "available: 512Mi. ", False, id="node-pressure-is-the-systems"),
])
def test_storage_evictions_are_the_jobs_failure(message: str, storage: bool) -> None:
    """An eviction for storage the job wrote is the job's failure (exit 137) and the message
    keeps the kubelet's words, limit included; node pressure stays the system's."""
    death = diagnose(evicted(message), NAME, "build")
    assert death is not None
    assert message.strip() in death.message
    assert death.storage_exit_code == (137 if storage else None)
    assert death.oom_exit_code is None
