"""Operator templates, per-job overrides and hardening, end to end on an emulated cluster
whose only node is tainted, as a dedicated build pool is."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from runner_driver.emulator import EmulatedCluster
from runner_driver.emulator.kubelet import NodeSettings
from runner_driver.emulator.runner import Job

from .conftest import make_runner, next_job_id, pods_left, wait_for

TAINT = {"key": "dedicated", "value": "ci-builds", "effect": "NoSchedule"}
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
OTHER_ARCH = "arm64" if ARCH != "arm64" else "amd64"
TEMPLATE = """\
metadata:
  labels:
    team: platform
spec:
  tolerations:
    - key: dedicated
      operator: Equal
      value: ci-builds
      effect: NoSchedule
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedCluster]:
    """This module's cluster: one node, tainted dedicated=ci-builds:NoSchedule."""
    del tmp_path_factory
    with EmulatedCluster(node=NodeSettings(taints=[dict(TAINT)])) as emulated:
        yield emulated


def templated(kubeconfig: Path, directory: Path, extra: str = "") -> Any:
    """A runner whose driver settings use TEMPLATE (next to them) plus `extra` TOML."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pod.yaml").write_text(TEMPLATE, encoding="utf-8")
    settings = f'[pod]\ntemplate = "{directory / "pod.yaml"}"\n' \
               "unschedulable_timeout_seconds = 1.5\n" + extra
    return make_runner(kubeconfig, directory, settings)


def test_template_toleration_and_label_are_on_the_created_pod(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """With the template, the pod carries its label and toleration, lands on the tainted
    node and runs the job; the driver's labels are still there."""
    runner = templated(kubeconfig, tmp_path)
    with runner.session(Job(job_id=next_job_id())) as session:
        pod = core.read_namespaced_pod(session.hostname, "default")
        call = session.run_body("build_script", "echo built\n")
    assert call.exit_code == 0 and call.stdout == b"built\n"
    assert pod.metadata.labels["team"] == "platform"
    assert pod.metadata.labels["app.kubernetes.io/managed-by"] == "runner-driver"
    tolerations = [t.to_dict() for t in pod.spec.tolerations or ()]
    assert {"key": "dedicated", "operator": "Equal", "value": "ci-builds",
            "effect": "NoSchedule", "toleration_seconds": None} in tolerations
    assert pod.spec.node_name == "emulated-node"


def test_without_the_template_the_tainted_node_refuses_the_pod(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """The same job without the template is unschedulable, in the scheduler's words: the
    toleration above is what let the pod in."""
    runner = make_runner(kubeconfig, tmp_path, "[pod]\nunschedulable_timeout_seconds = 1.5\n")
    result = runner.run_job(Job(job_id=next_job_id()))
    prepare = result.call("prepare")
    assert result.failure_reason == "runner_system_failure"
    assert b"0/1 nodes are available: 1 node(s) had untolerated taint " \
           b"{dedicated: ci-builds}" in prepare.stderr
    wait_for(lambda: not pods_left(core), timeout=20, what="no pods left")


def test_architecture_override_lands_on_a_matching_node(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """KUBERNETES_NODE_SELECTOR_ARCH for the node's own architecture puts the selector on
    the pod, which runs there; the job log says the override was applied."""
    runner = templated(kubeconfig, tmp_path,
                       '[overrides]\nnode_selector_keys = ["kubernetes.io/arch"]\n')
    job = Job(job_id=next_job_id(), variables=(
        ("KUBERNETES_NODE_SELECTOR_ARCH", f"kubernetes.io/arch={ARCH}"),))
    result = runner.run_job(job)
    assert result.status == "success", result.log.decode(errors="replace")
    assert f"Pod override KUBERNETES_NODE_SELECTOR_ARCH: kubernetes.io/arch={ARCH}".encode() \
        in result.call("prepare").stdout


def test_architecture_no_node_has_is_unschedulable_with_the_schedulers_message(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """An architecture no node has fails prepare with the scheduler's own message."""
    runner = templated(kubeconfig, tmp_path,
                       '[overrides]\nnode_selector_keys = ["kubernetes.io/arch"]\n')
    job = Job(job_id=next_job_id(), variables=(
        ("KUBERNETES_NODE_SELECTOR_ARCH", f"kubernetes.io/arch={OTHER_ARCH}"),))
    result = runner.run_job(job)
    prepare = result.call("prepare")
    assert result.failure_reason == "runner_system_failure"
    assert b"0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector" \
        in prepare.stderr
    wait_for(lambda: not pods_left(core), timeout=20, what="no pods left")


def test_override_above_its_cap_fails_the_job_before_any_pod(
        kubeconfig: Path, tmp_path: Path, cluster: EmulatedCluster) -> None:
    """An override above its cap is the job's failure, one line naming variable, value and
    cap, and no pod is created."""
    runner = templated(kubeconfig, tmp_path, '[overrides.build]\nmemory_limit_max = "2Gi"\n')
    before = cluster.request_counts().get("create pods", 0)
    result = runner.run_job(Job(job_id=next_job_id(), variables=(
        ("KUBERNETES_MEMORY_LIMIT", "3Gi"),)))
    assert result.failure_reason == "script_failure"
    assert result.stages == ["config", "prepare", "cleanup"]
    assert b"refusing KUBERNETES_MEMORY_LIMIT=3Gi: above the runner's cap of 2Gi " \
           b"(overrides.build.memory_limit_max)" in result.call("prepare").stderr
    assert cluster.request_counts().get("create pods", 0) == before


def test_override_whose_cap_is_off_is_reported_not_applied(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """An override the operator has not allowed is ignored with a WARNING in the job log,
    and the pod keeps the settings' value."""
    runner = templated(kubeconfig, tmp_path)
    job = Job(job_id=next_job_id(), variables=(("KUBERNETES_CPU_LIMIT", "3"),))
    with runner.session(job) as session:
        pod = core.read_namespaced_pod(session.hostname, "default")
        log = bytes(session.log)
    build = next(c for c in pod.spec.containers if c.name == "build")
    assert "cpu" not in (build.resources.limits or {})
    assert b"WARNING: KUBERNETES_CPU_LIMIT=3 is ignored: the runner's operator has not " \
           b"allowed it (overrides.build.cpu_limit_max is not set)" in log


def test_a_misspelt_template_field_is_refused_by_the_api_server(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """prepare creates with fieldValidation=Strict: a field the API server does not know
    fails the job with the server's message naming it, and nothing is left behind."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "pod.yaml").write_text(
        TEMPLATE + "  containers:\n    - name: build\n      resourcez: {}\n", encoding="utf-8")
    runner = make_runner(kubeconfig, tmp_path,
                         f'[pod]\ntemplate = "{tmp_path / "pod.yaml"}"\n')
    result = runner.run_job(Job(job_id=next_job_id()))
    prepare = result.call("prepare")
    assert result.failure_reason == "runner_system_failure"
    assert b'Pod in version "v1" cannot be handled as a Pod: strict decoding error: ' \
           b'unknown field "spec.containers[1].resourcez"' in prepare.stderr, prepare.stderr
    wait_for(lambda: not pods_left(core), timeout=20, what="no pods left")


def test_a_job_filling_its_scratch_volume_fails_naming_the_limit(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """A script writing past pod.scratch_size_limit is evicted by the kubelet: the job
    fails as a script failure (137) with the kubelet's message naming volume and limit."""
    runner = templated(kubeconfig, tmp_path, 'scratch_size_limit = "2Mi"\n')
    job = Job(job_id=next_job_id(), script=(
        'dd if=/dev/zero of="$TMPDIR/fill" bs=1024 count=4096 2>/dev/null', "sleep 30"))
    result = runner.run_job(job)
    build = result.call("build_script")
    assert result.failure_reason == "script_failure", result.log.decode(errors="replace")
    assert result.exit_code == 137
    assert b'was evicted by its node: Usage of EmptyDir volume "scratch" exceeds the ' \
           b'limit "2Mi".' in build.stderr
    assert build.seconds < 20
    wait_for(lambda: not pods_left(core), timeout=20, what="no pods left")


def test_a_stage_printing_far_more_than_the_logs_volume_holds_succeeds(
        kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> None:
    """Output already delivered is trimmed in the pod: a stage printing 160 MiB through a
    logs volume of 32Mi is not evicted, and every byte reaches the job log."""
    directory = tmp_path / "runner"
    directory.mkdir()
    (directory / "pod.yaml").write_text(TEMPLATE, encoding="utf-8")
    runner = make_runner(kubeconfig, directory,
                         f'[pod]\ntemplate = "{directory / "pod.yaml"}"\n'
                         'logs_size_limit = "32Mi"\n', keep_output_bytes=4096)
    size = 160 * 1024 * 1024
    job = Job(job_id=next_job_id(), script=(f"head -c {size} /dev/zero | tr '\\0' x",))
    result = runner.run_job(job)
    assert result.status == "success", result.log.decode(errors="replace")
    build = result.call("build_script")
    # The runner's own lines around the script's output are a few hundred bytes.
    assert size <= build.stdout_bytes < size + 4096
    wait_for(lambda: not pods_left(core), timeout=20, what="no pods left")
