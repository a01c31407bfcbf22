"""get_sources over HTTPS from a git server with a private CA: the helper's git trusts it
only through the driver's `[tls] ca_file`, end to end through the emulated cluster."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner_driver.emulator.gitserver import GitHttpsServer
from runner_driver.emulator.runner import Job

from .conftest import make_runner, next_job_id

README = b"cloned over https\n"
# git's wording when no trusted CA signed the server certificate: libcurl built with
# GnuTLS (Debian's git, which the emulated helper runs) or with OpenSSL (the real
# helper image's).
UNTRUSTED = re.compile(r"server certificate verification failed\. CAfile: \S+ CRLfile: none"
                       r"|SSL certificate problem: unable to get local issuer certificate")


@pytest.fixture(scope="module")
def git_https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHttpsServer]:
    """An HTTPS git server on 127.0.0.1 with its own test CA, which pods can clone from."""
    with GitHttpsServer(tmp_path_factory.mktemp("git-https")) as server:
        yield server


def test_the_job_clones_over_https_when_the_driver_trusts_the_servers_ca(
        kubeconfig: Path, tmp_path: Path, git_https: GitHttpsServer) -> None:
    """With `[tls] ca_file` naming the git server's CA, get_sources clones and the build
    container sees the checked-out files."""
    runner = make_runner(kubeconfig, tmp_path, f'[tls]\nca_file = "{git_https.ca_file}"\n')
    url = git_https.add_repository(f"tls/app{next_job_id()}", {"README.md": README})
    result = runner.run_job(Job(job_id=next_job_id(), repository_url=url,
                                script=("cat README.md",)))
    log = result.log.decode()
    assert result.status == "success", log
    assert "build_script" in result.stages
    assert "Checking out" in log and README.decode() in log
    assert not UNTRUSTED.search(log)


def test_without_the_ca_the_clone_fails_with_gits_certificate_error(
        kubeconfig: Path, tmp_path: Path, git_https: GitHttpsServer) -> None:
    """Without the CA in the driver's settings, get_sources fails with git's own
    certificate-verification error and the user's script never runs."""
    runner = make_runner(kubeconfig, tmp_path)
    url = git_https.add_repository(f"tls/app{next_job_id()}", {"README.md": README})
    result = runner.run_job(Job(job_id=next_job_id(), repository_url=url,
                                script=("cat README.md",)))
    log = result.log.decode()
    assert (result.status, result.failure_reason) == ("failed", "script_failure"), log
    assert result.call("get_sources").exit_code != 0
    assert "build_script" not in result.stages
    assert f"fatal: unable to access '{url}/': " in log
    assert UNTRUSTED.search(log), log
    assert README.decode() not in log
