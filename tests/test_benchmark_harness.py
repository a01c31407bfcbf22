"""The benchmarks' own measuring tools keep working against the emulated cluster as it is.

The benchmarks are not part of the test run, so a change to the cluster (such as the
API server checking tokens) could break a measurement unnoticed until the next
benchmark run; the tools they share are pinned here instead.
"""

from __future__ import annotations

from pathlib import Path

from kubernetes import client

from runner_driver.emulator import EmulatedCluster
from tests.benchmarks.harness import NAMESPACE, Bench
from tests.conftest import job_pod, wait_running


def test_raw_exec_baseline_authenticates_as_the_driver_does(
        cluster: EmulatedCluster, kubeconfig: Path, core: client.CoreV1Api,
        tmp_path: Path) -> None:
    """The raw websocket exec (item 4's baseline) presents the kubeconfig's token and gets
    the command's output and status, not the API server's 401."""
    name = "bench-raw-exec"
    core.create_namespaced_pod(NAMESPACE, job_pod(name))
    try:
        wait_running(core, NAMESPACE, name)
        bench = Bench(cluster, cluster.port, tmp_path, [], {}, kubeconfig,
                      tmp_path / "driver.toml", None, "")
        received, seconds, status = bench.raw_exec(name, "build",
                                                   ["/busybox/sh", "-c", "printf 12345"])
        assert (received, b'"Success"' in status) == (5, True), status
        assert seconds > 0
    finally:
        core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)
