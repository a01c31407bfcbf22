"""The test registry alone, and the kaniko stand-in pushing to it from an emulated pod."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import ssl
import tarfile
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from runner_driver.emulator.registry import PushedManifest, TestRegistry
from tests.conftest import finish, job_pod, open_session, wait_running

USER, PASSWORD = "ci-pusher", "s3cret-pw"
DOCKERFILE = "FROM scratch\nLABEL stand-in=yes\n"


@pytest.fixture(scope="module")
def registry() -> Iterator[TestRegistry]:
    """One TLS registry with Basic auth on 127.0.0.1 per module."""
    with TestRegistry(USER, PASSWORD) as started:
        yield started


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def call(registry: TestRegistry, method: str, path: str, body: bytes = b"",
         headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request to the registry, trusting its test CA."""
    context = ssl.create_default_context(cafile=str(registry.ca_file))
    connection = http.client.HTTPSConnection("127.0.0.1", registry.port, context=context,
                                             timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def upload(registry: TestRegistry, name: str, blob: bytes) -> str:
    """Upload a blob monolithically (POST then PUT ?digest=) with good credentials."""
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    status, headers, _ = call(registry, "POST", f"/v2/{name}/blobs/uploads/",
                              headers=basic(USER, PASSWORD))
    assert status == 202
    status, _, body = call(registry, "PUT", f"{headers['Location']}?digest={digest}", blob,
                           basic(USER, PASSWORD))
    assert status == 201, body
    return digest


# The registry alone


def test_registry_requires_basic_auth_with_distribution_401() -> None:
    """Without credentials /v2/ answers distribution's 401: a Basic challenge and UNAUTHORIZED."""
    with TestRegistry(USER, PASSWORD, realm="Test Realm") as registry:
        status, headers, body = call(registry, "GET", "/v2/")
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Basic realm="Test Realm"'
        assert headers["Docker-Distribution-Api-Version"] == "registry/2.0"
        assert body == b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required",' \
                       b'"detail":null}]}\n'
        status, _, body = call(registry, "GET", "/v2/", headers=basic(USER, PASSWORD))
        assert (status, body) == (200, b"{}\n")


def test_registry_rejects_wrong_password_listing_requested_access(
        registry: TestRegistry) -> None:
    """A wrong password gets a 401 whose detail lists the pull and push access a POST asks."""
    status, _, body = call(registry, "POST", "/v2/team/app/blobs/uploads/",
                           headers=basic(USER, "wrong"))
    assert status == 401
    assert json.loads(body) == {"errors": [{
        "code": "UNAUTHORIZED", "message": "authentication required",
        "detail": [{"Type": "repository", "Class": "", "Name": "team/app", "Action": "pull"},
                   {"Type": "repository", "Class": "", "Name": "team/app", "Action": "push"}]}]}


def test_registry_accepts_authenticated_push(registry: TestRegistry) -> None:
    """With credentials, blobs then a manifest are accepted and the manifest is recorded."""
    layer = upload(registry, "alone/app", b"layer bytes")
    config = upload(registry, "alone/app", b"{}")
    status, _, _ = call(registry, "HEAD", f"/v2/alone/app/blobs/{layer}",
                        headers=basic(USER, PASSWORD))
    assert status == 200
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config,
                   "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer, "size": 11}]}).encode()
    status, headers, _ = call(registry, "PUT", "/v2/alone/app/manifests/v1", manifest,
                              {**basic(USER, PASSWORD),
                               "Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert status == 201
    assert headers["Docker-Content-Digest"] == digest
    assert PushedManifest("alone/app", "v1", digest,
                          "application/vnd.oci.image.manifest.v1+json") in registry.pushed
    assert registry.manifest("alone/app", "v1") == manifest


def test_registry_refuses_manifest_with_unknown_blob(registry: TestRegistry) -> None:
    """A manifest naming a blob never uploaded is refused with MANIFEST_BLOB_UNKNOWN."""
    missing = "sha256:" + "0" * 64
    manifest = json.dumps({"schemaVersion": 2, "config": {"digest": missing}}).encode()
    status, _, body = call(registry, "PUT", "/v2/alone/other/manifests/v1", manifest,
                           basic(USER, PASSWORD))
    assert status == 400
    assert json.loads(body)["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    assert all(p.name != "alone/other" for p in registry.pushed)


def test_registry_certificate_verifies_only_with_its_ca(registry: TestRegistry) -> None:
    """The server certificate does not verify against the system CAs, only the test CA."""
    connection = http.client.HTTPSConnection("127.0.0.1", registry.port, timeout=10,
                                             context=ssl.create_default_context())
    with pytest.raises(ssl.SSLCertVerificationError):
        connection.request("GET", "/v2/")
    connection.close()


# The kaniko stand-in pushing from an emulated kaniko pod


def run(api: client.CoreV1Api, namespace: str, pod: str, script: str) -> tuple[int, str]:
    """Run a busybox shell script in the build container; its exit code and stderr."""
    out, err, status = finish(open_session(api, namespace, pod, ["/busybox/sh", "-c", script],
                                           "build"))
    del out
    if status and status.get("status") == "Success":
        return 0, err.decode()
    causes = (status or {}).get("details", {}).get("causes", [])
    code = next((int(c["message"]) for c in causes if c.get("reason") == "ExitCode"), -1)
    return code, err.decode()


def kaniko_pod(core: client.CoreV1Api, namespace: str, registry: TestRegistry,
               auth: dict[str, Any] | None) -> str:
    """A running kaniko pod with the test CA at /certs/ca.crt and, if given, a config.json."""
    data = {"ca.crt": registry.ca_file.read_text()}
    if auth is not None:
        data["config.json"] = json.dumps({"auths": {registry.address: auth}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "push"}, "stringData": data})
    body = job_pod("kaniko")
    build = body["spec"]["containers"][1]
    build["env"].append({"name": "container", "value": "kube"})
    body["spec"]["volumes"].append({"name": "push", "secret": {"secretName": "push"}})
    build["volumeMounts"] += [{"name": "push", "mountPath": "/certs/ca.crt", "subPath": "ca.crt"},
                              {"name": "builds", "mountPath": "/workspace"}]
    if auth is not None:
        build["volumeMounts"].append({"name": "push", "mountPath": "/kaniko/.docker/config.json",
                                      "subPath": "config.json"})
    core.create_namespaced_pod(namespace, body)
    wait_running(core, namespace, "kaniko")
    return "kaniko"


GOOD_AUTH = {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
PREPARE = f"printf '{DOCKERFILE}' > /workspace/Dockerfile && "
TRUST_CA = "cat /certs/ca.crt >> /kaniko/ssl/certs/ca-certificates.crt && "


def unauthorized(registry: TestRegistry, tag: str) -> str:
    """kaniko's wording for a push-permission check the registry answered with 401."""
    repo = "team/app"
    access = " ".join(f"map[Action:{a} Class: Name:{repo} Type:repository]"
                      for a in ("pull", "push"))
    return ("error checking push permissions -- make sure you entered the correct tag name, "
            "and that you are authenticated correctly, and try again: checking push permission "
            f'for "{registry.address}/{repo}:{tag}": POST https://{registry.address}/v2/{repo}'
            f"/blobs/uploads/: UNAUTHORIZED: authentication required; [{access}]")


@pytest.mark.parametrize("trust", ["bundle", "flag"])
def test_standin_pushes_with_ca_and_credentials(
        core: client.CoreV1Api, exec_core: client.CoreV1Api, namespace: str,
        registry: TestRegistry, trust: str) -> None:
    """With the CA trusted (bundle or --registry-certificate) and credentials, the push lands."""
    kaniko_pod(core, namespace, registry, GOOD_AUTH)
    tag = f"ok-{trust}"
    destination = f"{registry.address}/team/app:{tag}"
    if trust == "bundle":
        script = PREPARE + TRUST_CA + f"/kaniko/executor -d {destination}"
    else:
        script = PREPARE + (f"/kaniko/executor -d {destination} "
                            f"--registry-certificate {registry.address}=/certs/ca.crt")
    code, err = run(exec_core, namespace, "kaniko", script)
    assert code == 0, err
    pushed = [p for p in registry.pushed if (p.name, p.tag) == ("team/app", tag)]
    assert len(pushed) == 1
    assert f"Pushed {registry.address}/team/app@{pushed[0].digest}" in err
    assert "nothing was built" in err
    manifest = json.loads(registry.manifest("team/app", tag) or b"null")
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    layer = registry.blob("team/app", manifest["layers"][0]["digest"]) or b""
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as archive:
        extracted = archive.extractfile("Dockerfile")
        assert extracted is not None and extracted.read() == DOCKERFILE.encode()


def test_standin_push_without_credentials_gets_401(
        core: client.CoreV1Api, exec_core: client.CoreV1Api, namespace: str,
        registry: TestRegistry) -> None:
    """With the CA but no credentials, the push fails with the registry's 401 in kaniko's words."""
    kaniko_pod(core, namespace, registry, None)
    code, err = run(exec_core, namespace, "kaniko", PREPARE + TRUST_CA
                    + f"/kaniko/executor -d {registry.address}/team/app:anon")
    assert code == 1
    assert unauthorized(registry, "anon") in err
    assert all(p.tag != "anon" for p in registry.pushed)


def test_standin_push_without_ca_fails_x509(
        core: client.CoreV1Api, exec_core: client.CoreV1Api, namespace: str,
        registry: TestRegistry) -> None:
    """With credentials but the CA untrusted, the push fails TLS verification before any HTTP."""
    kaniko_pod(core, namespace, registry, GOOD_AUTH)
    code, err = run(exec_core, namespace, "kaniko",
                    PREPARE + f"/kaniko/executor -d {registry.address}/team/app:noca")
    assert code == 1
    assert (f'checking push permission for "{registry.address}/team/app:noca": x509: '
            "unable to get local issuer certificate") in err
    assert "UNAUTHORIZED" not in err
    assert all(p.tag != "noca" for p in registry.pushed)


def test_standin_push_with_wrong_password_gets_401(
        core: client.CoreV1Api, exec_core: client.CoreV1Api, namespace: str,
        registry: TestRegistry) -> None:
    """A wrong password in config.json (username/password form) fails with the 401 wording."""
    kaniko_pod(core, namespace, registry, {"username": USER, "password": "not-it"})
    code, err = run(exec_core, namespace, "kaniko", PREPARE + TRUST_CA
                    + f"/kaniko/executor -d {registry.address}/team/app:badpw")
    assert code == 1
    assert unauthorized(registry, "badpw") in err
    assert "not-it" not in err
    assert all(p.tag != "badpw" for p in registry.pushed)


def test_standin_skip_tls_verify_pushes_without_ca(
        core: client.CoreV1Api, exec_core: client.CoreV1Api, namespace: str,
        registry: TestRegistry) -> None:
    """--skip-tls-verify pushes without the CA, still needing the registry's credentials."""
    kaniko_pod(core, namespace, registry, GOOD_AUTH)
    code, err = run(exec_core, namespace, "kaniko", PREPARE
                    + f"/kaniko/executor -d {registry.address}/team/app:skip --skip-tls-verify")
    assert code == 0, err
    assert any(p.tag == "skip" for p in registry.pushed)
