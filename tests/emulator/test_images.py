"""Image profiles and stand-ins, checked from inside real sandboxes through exec."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from runner_driver.emulator import images
from runner_driver.emulator.registry import TestRegistry
from tests.conftest import (
    HELPER,
    KANIKO,
    finish,
    job_pod,
    open_session,
    wait_for,
    wait_running,
)


def run(api: client.CoreV1Api, namespace: str, pod: str, container: str,
        command: list[str]) -> tuple[int, str, str]:
    """Exec a command and return its exit code (-1 when it could not start), stdout, stderr."""
    out, err, status = finish(open_session(api, namespace, pod, command, container))
    if status and status.get("status") == "Success":
        code = 0
    else:
        causes = (status or {}).get("details", {}).get("causes", [])
        code = next((int(c["message"]) for c in causes if c.get("reason") == "ExitCode"), -1)
    return code, out.decode(), err.decode()


@pytest.fixture
def job(core: client.CoreV1Api, namespace: str) -> str:
    """A running helper+kaniko pod like the driver's."""
    core.create_namespaced_pod(namespace, job_pod("job"))
    wait_running(core, namespace, "job")
    return "job"


def test_resolve_maps_references_to_profiles() -> None:
    """Image references resolve to the right profile, and unknown images to none."""
    assert images.resolve(KANIKO) is images.KANIKO_DEBUG
    assert images.resolve("ghcr.io/osscontainertools/kaniko:v1.28.3-debug") is images.KANIKO_DEBUG
    assert images.resolve("martizih/kaniko:debug") is images.KANIKO_DEBUG
    assert images.resolve("gcr.io/kaniko-project/executor:v1.23.2") is images.KANIKO_SLIM
    assert images.resolve(HELPER) is images.RUNNER_HELPER
    assert images.resolve("alpine:3.20") is images.BUSYBOX
    assert images.resolve("docker.io/library/debian:12") is images.DEBIAN
    assert images.resolve("registry.example.com/team/app:1") is None


def test_kaniko_container_has_busybox_only(exec_core: client.CoreV1Api, namespace: str,
                                           job: str) -> None:
    """The kaniko debug container has busybox under /busybox and no git, bash or /tmp."""
    code, out, _ = run(exec_core, namespace, job, "build", ["/busybox/sh", "-c",
                       "command -v git; command -v bash; ls -d /tmp; readlink /bin/sh; "
                       "ls /kaniko/.docker | wc -l; ls /kaniko/ssl/certs; echo PATH=$PATH; "
                       "echo HOME=$HOME DOCKER_CONFIG=$DOCKER_CONFIG SSL_CERT_DIR=$SSL_CERT_DIR; "
                       "ls -d /root; exit 0"])
    assert code == 0
    assert "/busybox/git" not in out and "bash" not in out.split("PATH=")[0]
    assert "/busybox/sh" in out
    assert "ca-certificates.crt" in out
    assert "PATH=/usr/local/bin:/kaniko:/busybox" in out
    assert "HOME=/root DOCKER_CONFIG=/kaniko/.docker/ SSL_CERT_DIR=/kaniko/ssl/certs" in out
    tmp_code, _, tmp_err = run(exec_core, namespace, job, "build", ["/busybox/ls", "/tmp"])
    assert tmp_code != 0 and "No such file or directory" in tmp_err
    git_code, _, git_err = run(exec_core, namespace, job, "build", ["git", "--version"])
    assert git_code == -1 and git_err == ""
    mktemp_code, _, _ = run(exec_core, namespace, job, "build",
                             ["/busybox/env", "-u", "TMPDIR", "/busybox/mktemp"])
    assert mktemp_code != 0


def test_kaniko_docker_config_dir_is_empty(exec_core: client.CoreV1Api, namespace: str,
                                           job: str) -> None:
    """`/kaniko/.docker/` exists and is empty, as in the real image."""
    code, out, _ = run(exec_core, namespace, job, "build",
                       ["/busybox/sh", "-c", "ls -A /kaniko/.docker/ | wc -l"])
    assert (code, out.strip()) == (0, "0")


def test_helper_container_has_git_bash_and_helper(exec_core: client.CoreV1Api, namespace: str,
                                                  job: str) -> None:
    """The runner helper container has bash, git and gitlab-runner-helper on a read-only /usr."""
    code, out, err = run(exec_core, namespace, job, "helper", ["bash", "-c",
                         "git --version; bash --version | head -1; gitlab-runner-helper --version; "
                         "touch /usr/bin/x 2>&1 || echo READONLY; ls -d /tmp"])
    assert code == 0, err
    assert out.startswith("git version ")
    assert "GNU bash" in out
    assert "stand-in" in out
    assert "READONLY" in out and "/tmp" in out


def test_helper_standin_archives_and_extracts_cache(exec_core: client.CoreV1Api,
                                                    namespace: str, job: str) -> None:
    """The helper stand-in really archives and restores cache paths."""
    code, out, err = run(exec_core, namespace, job, "helper", ["bash", "-c",
                         "set -e; mkdir -p /builds/p/vendor && cd /builds/p && echo dep > "
                         "vendor/lib && gitlab-runner-helper cache-archiver --file /builds/c.tar "
                         "--path vendor && rm -r vendor && gitlab-runner-helper cache-extractor "
                         "--file /builds/c.tar && cat vendor/lib"])
    assert code == 0, err
    assert out.strip() == "dep"


def test_slim_kaniko_image_has_no_shell(core: client.CoreV1Api, exec_core: client.CoreV1Api,
                                        namespace: str) -> None:
    """A non-debug kaniko image has no shell, so a shell command cannot even start."""
    body = job_pod("slim")
    body["spec"]["containers"] = [{"name": "build",
                                   "image": "gcr.io/kaniko-project/executor:v1.23.2",
                                   "command": ["/busybox/sh", "-c", "sleep 60"]}]
    core.create_namespaced_pod(namespace, body)

    def failed() -> Any:
        statuses = core.read_namespaced_pod("slim", namespace).status.container_statuses or []
        return statuses and statuses[0].state.terminated

    terminated = wait_for(failed, what="slim kaniko container to fail")
    assert terminated.reason == "StartError"
    assert 'exec: "/busybox/sh": executable file not found' in terminated.message


def test_unknown_image_cannot_be_pulled(core: client.CoreV1Api, namespace: str) -> None:
    """An image no profile covers fails to pull, naming the image."""
    body = job_pod("nopull")
    body["spec"]["containers"][1]["image"] = "registry.example.com/team/kaniko:1"
    core.create_namespaced_pod(namespace, body)

    def waiting() -> Any:
        pod = core.read_namespaced_pod("nopull", namespace)
        for status in pod.status.container_statuses or []:
            if status.name == "build" and status.state.waiting and \
                    status.state.waiting.reason in ("ErrImagePull", "ImagePullBackOff"):
                return status.state.waiting
        return None

    state = wait_for(waiting, what="ErrImagePull")
    assert "registry.example.com/team/kaniko:1" in state.message


# The kaniko executor stand-in


@pytest.fixture(scope="module")
def tls_registry() -> Iterator[tuple[int, str]]:
    """The test registry over TLS on 127.0.0.1 (a private CA, Basic auth bob:s3cret);
    yields (port, CA PEM)."""
    with TestRegistry("bob", "s3cret") as registry:
        yield registry.port, registry.ca_file.read_text()


@pytest.fixture
def kaniko_job(core: client.CoreV1Api, namespace: str, tls_registry: tuple[int, str]) -> str:
    """A kaniko pod with a docker config.json and an extra CA mounted as the driver will."""
    port, ca = tls_registry
    login = {"auth": base64.b64encode(b"bob:s3cret").decode()}
    config = {"auths": {"registry.example.com": login, f"127.0.0.1:{port}": login}}
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": "auth"},
        "stringData": {"config.json": json.dumps(config), "ca.crt": ca}})
    body = job_pod("kaniko")
    build = body["spec"]["containers"][1]
    build["env"] += [{"name": "container", "value": "kube"},
                     {"name": "CI_REGISTRY", "value": "registry.gitlab.example.com"},
                     {"name": "CI_REGISTRY_USER", "value": "gitlab-ci-token"},
                     {"name": "CI_REGISTRY_PASSWORD", "value": "job-token"}]
    body["spec"]["volumes"].append({"name": "auth", "secret": {"secretName": "auth"}})
    build["volumeMounts"] += [
        {"name": "auth", "mountPath": "/kaniko/.docker/config.json", "subPath": "config.json"},
        {"name": "builds", "mountPath": "/workspace"}]
    core.create_namespaced_pod(namespace, body)
    wait_running(core, namespace, "kaniko")
    return "kaniko"


def test_standin_says_it_is_a_standin_and_needs_destination(
        exec_core: client.CoreV1Api, namespace: str, kaniko_job: str) -> None:
    """The stand-in names itself and fails like kaniko without --destination or --no-push."""
    code, _, err = run(exec_core, namespace, kaniko_job, "build", ["/kaniko/executor"])
    assert code == 1
    assert "STAND-IN" in err
    assert "you must provide --destination, or use --no-push" in err


def test_standin_rejects_unknown_flags(exec_core: client.CoreV1Api, namespace: str,
                                       kaniko_job: str) -> None:
    """An unknown flag fails as cobra reports it in the real executor."""
    code, _, err = run(exec_core, namespace, kaniko_job, "build",
                       ["/kaniko/executor", "--no-push", "--bogus"])
    assert code == 1
    assert "Error: unknown flag: --bogus" in err


def test_standin_container_check(core: client.CoreV1Api, exec_core: client.CoreV1Api,
                                 namespace: str) -> None:
    """Without a token or `container` env the executor refuses to run unless forced."""
    core.create_namespaced_pod(namespace, job_pod("bare"))
    wait_running(core, namespace, "bare")
    script = "echo FROM scratch > /scratch/Dockerfile; /kaniko/executor --no-push " \
             "--context dir:///scratch "
    code, _, err = run(exec_core, namespace, "bare", "build", ["/busybox/sh", "-c", script])
    assert code == 1
    assert "kaniko should only be run inside of a container" in err
    code, _, err = run(exec_core, namespace, "bare", "build",
                       ["/busybox/sh", "-c", script + "--force"])
    assert code == 0, err
    code, _, err = run(exec_core, namespace, "bare", "build",
                       ["/busybox/sh", "-c", "export container=kube; " + script])
    assert code == 0, err


def test_standin_reports_credentials(exec_core: client.CoreV1Api, namespace: str,
                                     kaniko_job: str) -> None:
    """The stand-in reports the credentials kaniko would use for each destination registry."""
    code, _, err = run(exec_core, namespace, kaniko_job, "build", ["/busybox/sh", "-c",
                       "echo 'FROM scratch' > /workspace/Dockerfile; /kaniko/executor --no-push "
                       "-d registry.example.com/a:1 -d registry.gitlab.example.com/g/p:1 "
                       "-d docker.io/library/other:1"])
    assert code == 0, err
    assert "credentials for registry.example.com: /kaniko/.docker/config.json " \
           "auths[registry.example.com] (user bob)" in err
    assert "credentials for registry.gitlab.example.com: CI_REGISTRY_USER/CI_REGISTRY_PASSWORD" \
           in err
    assert "credentials for index.docker.io: none (anonymous)" in err
    assert "s3cret" not in err and "job-token" not in err


def test_standin_requires_a_dockerfile(exec_core: client.CoreV1Api, namespace: str,
                                       kaniko_job: str) -> None:
    """A missing Dockerfile fails with kaniko's message."""
    code, _, err = run(exec_core, namespace, kaniko_job, "build",
                       ["/kaniko/executor", "--no-push", "--dockerfile", "Nope"])
    assert code == 1
    assert "error resolving dockerfile path" in err


def test_standin_verifies_tls_against_container_ca_store(
        core: client.CoreV1Api, exec_core: client.CoreV1Api, namespace: str, kaniko_job: str,
        tls_registry: tuple[int, str]) -> None:
    """TLS to a registry verifies only once its CA is in the container's CA store."""
    port, ca = tls_registry
    destination = f"127.0.0.1:{port}/team/app:1"
    prepare = "echo 'FROM scratch' > /workspace/Dockerfile; "
    code, _, err = run(exec_core, namespace, kaniko_job, "build", ["/busybox/sh", "-c",
                       prepare + f"/kaniko/executor -d {destination}"])
    assert code == 1
    assert f"TLS to 127.0.0.1:{port}: FAILED: x509" in err
    assert "error checking push permissions" in err
    code, _, err = run(exec_core, namespace, kaniko_job, "build", ["/busybox/sh", "-c",
                       prepare + f"/kaniko/executor -d {destination} --skip-tls-verify"])
    assert code == 0, err
    assert "skipped (TLS verification disabled" in err
    # Trust the private CA the way the driver will: one extra file in SSL_CERT_DIR.
    body = job_pod("trusting")
    build = body["spec"]["containers"][1]
    build["env"].append({"name": "container", "value": "kube"})
    body["spec"]["volumes"].append({"name": "auth", "secret": {"secretName": "auth"}})
    build["volumeMounts"] += [
        {"name": "auth", "mountPath": "/kaniko/ssl/certs/extra-ca.crt", "subPath": "ca.crt"},
        {"name": "auth", "mountPath": "/kaniko/.docker/config.json", "subPath": "config.json"},
        {"name": "builds", "mountPath": "/workspace"}]
    core.create_namespaced_pod(namespace, body)
    wait_running(core, namespace, "trusting")
    code, _, err = run(exec_core, namespace, "trusting", "build", ["/busybox/sh", "-c",
                       prepare + f"/kaniko/executor -d {destination}"])
    assert code == 0, err
    assert f"TLS to 127.0.0.1:{port}: verified" in err
    del ca


def test_standin_never_reaches_beyond_loopback(exec_core: client.CoreV1Api, namespace: str,
                                               kaniko_job: str) -> None:
    """Registries off this machine are reported as not checked, without any connection."""
    code, _, err = run(exec_core, namespace, kaniko_job, "build", ["/busybox/sh", "-c",
                       "echo 'FROM scratch' > /workspace/Dockerfile; "
                       "/kaniko/executor -d registry.example.com/a:1"])
    assert code == 0, err
    assert "not checked: the emulated cluster reaches only registries on 127.0.0.1" in err



def test_standin_fails_the_push_check_where_no_registry_answers(
        exec_core: client.CoreV1Api, namespace: str, kaniko_job: str) -> None:
    """A loopback destination with nothing listening fails the push check, as in kaniko."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    code, _, err = run(exec_core, namespace, kaniko_job, "build", ["/busybox/sh", "-c",
                       "echo 'FROM scratch' > /workspace/Dockerfile; "
                       f"/kaniko/executor -d 127.0.0.1:{port}/a:1 --skip-tls-verify"])
    assert code == 1
    assert "error checking push permissions" in err

def test_build_rootfs_layouts(tmp_path: Path) -> None:
    """Each layout writes the files its image has, and no more."""
    images.build_rootfs(images.KANIKO_DEBUG, tmp_path / "kaniko")
    assert (tmp_path / "kaniko/busybox/sh").exists()
    assert (tmp_path / "kaniko/bin/sh").is_symlink()
    assert not (tmp_path / "kaniko/tmp").exists()
    assert not (tmp_path / "kaniko/root").exists()
    assert (tmp_path / "kaniko/kaniko/executor").exists()
    images.build_rootfs(images.KANIKO_SLIM, tmp_path / "slim")
    assert not (tmp_path / "slim/busybox").exists()
    assert not (tmp_path / "slim/bin").exists()
    images.build_rootfs(images.BUSYBOX, tmp_path / "bb")
    assert (tmp_path / "bb/bin/sh").exists() and (tmp_path / "bb/tmp").is_dir()
