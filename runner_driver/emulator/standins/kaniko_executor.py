"""Stand-in for the kaniko executor inside the runner-driver emulated cluster.

It runs inside the kaniko-profile sandbox with the host's Python (bound read-only
under /kaniko/.emulator). It reproduces what a driver can get wrong around kaniko:
flags, the container check, the Dockerfile path, which credentials kaniko would use
for each registry, and whether TLS to a registry verifies against the container's CA
store. It builds nothing. To a registry on 127.0.0.1 it does what kaniko's push does
on the wire (the push-permission check, then blob uploads and a manifest, with the
Basic credentials from the docker config), but what it pushes is a tiny stand-in
image: one layer holding the Dockerfile's bytes and a config saying it is a
stand-in. Blobs go up monolithically (kaniko streams them with PATCH) and only Basic
auth is spoken. Where kaniko would fail but the stand-in does not: a 127.0.0.1
endpoint that completes TLS but does not answer HTTP like a registry is reported and
skipped. It says what it did on every run. Only the standard library may be used here.
"""

import base64
import contextlib
import gzip
import hashlib
import http.client
import io
import json
import os
import socket
import ssl
import sys
import tarfile
from http import HTTPStatus
from typing import NoReturn
from urllib.parse import urljoin, urlsplit

BOOL_FLAGS = {
    "no-push", "cache", "cleanup", "force", "insecure", "insecure-pull", "single-snapshot",
    "skip-tls-verify", "skip-tls-verify-pull", "reproducible", "use-new-run",
    "compressed-caching", "skip-push-permission-check", "ignore-var-run", "log-timestamp",
    "cache-copy-layers", "cache-run-layers", "skip-unused-stages", "skip-default-registry-fallback",
    "no-push-cache", "preserve-context", "cache-repo-insecure",
}
VALUE_FLAGS = {
    "context", "dockerfile", "destination", "cache-repo", "cache-dir", "cache-ttl", "build-arg",
    "target", "tar-path", "digest-file", "image-name-with-digest-file",
    "image-name-tag-with-digest-file", "oci-layout-path", "verbosity", "label",
    "snapshot-mode", "custom-platform", "kaniko-dir", "ignore-path", "log-format",
    "push-retry", "image-fs-extract-retry", "image-download-retry", "registry-mirror",
    "registry-map", "registry-certificate", "registry-client-cert", "insecure-registry",
    "skip-tls-verify-registry", "git", "credential-helpers", "push-ignore-immutable-tag-errors",
}
SHORT = {"c": "context", "f": "dockerfile", "d": "destination", "v": "verbosity"}
KNOWN_RUNTIMES = ("docker", "kube", "kubepods", "podman", "containerd", "lxc", "crio", "garden")


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def parse(argv: list[str]) -> dict[str, list[str]]:
    flags: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
        elif arg.startswith("-") and len(arg) >= 2 and arg[1] in SHORT:
            name, value, eq = SHORT[arg[1]], arg[2:], "=" if len(arg) > 2 else ""
        else:
            print(f"Error: unknown command \"{arg}\" for \"executor\"", file=sys.stderr)
            sys.exit(1)
        if name in BOOL_FLAGS:
            flags.setdefault(name, []).append(value if eq else "true")
        elif name in VALUE_FLAGS:
            if not eq:
                if i >= len(argv):
                    print(f"Error: flag needs an argument: --{name}", file=sys.stderr)
                    sys.exit(1)
                value = argv[i]
                i += 1
            flags.setdefault(name, []).append(value)
        else:
            print(f"Error: unknown flag: --{name}", file=sys.stderr)
            sys.exit(1)
    return flags


def in_container() -> bool:
    container = os.environ.get("container", "")
    if any(runtime in container for runtime in KNOWN_RUNTIMES):
        return True
    markers = ("/var/run/secrets/kubernetes.io/serviceaccount", "/.dockerenv",
               "/run/.containerenv", "/run/systemd/container")
    return any(os.path.exists(m) for m in markers)


def registry_of(reference: str) -> str:
    first = reference.split("/", 1)[0]
    if first in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        return "index.docker.io"
    if "/" in reference and ("." in first or ":" in first or first == "localhost"):
        return first
    return "index.docker.io"


def credentials(registry: str) -> str:
    return resolve_credentials(registry)[0]


def resolve_credentials(registry: str) -> tuple[str, str | None]:
    """What kaniko would use for `registry`, and the Basic Authorization value if any."""
    config_dir = os.environ.get("DOCKER_CONFIG", "")
    path = os.path.join(config_dir, "config.json") if config_dir else ""
    if path and os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as handle:
                config = json.load(handle)
        except (OSError, ValueError) as error:
            fail(f"loading {path}: invalid docker config: {error}")
        keys = {registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/"}
        if registry == "index.docker.io":
            keys |= {"https://index.docker.io/v1/", "docker.io"}
        for key, entry in (config.get("auths") or {}).items():
            if key.rstrip("/") in {k.rstrip("/") for k in keys}:
                if entry.get("auth"):
                    user = base64.b64decode(entry["auth"]).decode(errors="replace").split(":")[0]
                    return f"{path} auths[{key}] (user {user})", f"Basic {entry['auth']}"
                if entry.get("username"):
                    pair = f"{entry['username']}:{entry.get('password', '')}".encode()
                    return (f"{path} auths[{key}] (user {entry['username']})",
                            "Basic " + base64.b64encode(pair).decode())
                if entry.get("identitytoken") or entry.get("registrytoken"):
                    return f"{path} auths[{key}] (token)", None
        helpers = config.get("credHelpers") or {}
        if registry in helpers:
            return f"{path} credHelpers -> docker-credential-{helpers[registry]}", None
        if config.get("credsStore"):
            return f"{path} credsStore -> docker-credential-{config['credsStore']}", None
    ci_registry = os.environ.get("CI_REGISTRY", "")
    if ci_registry and ci_registry.split("://")[-1].rstrip("/") == registry \
            and os.environ.get("CI_REGISTRY_USER") and os.environ.get("CI_REGISTRY_PASSWORD"):
        user = os.environ["CI_REGISTRY_USER"]
        pair = f"{user}:{os.environ['CI_REGISTRY_PASSWORD']}".encode()
        return (f"CI_REGISTRY_USER/CI_REGISTRY_PASSWORD (built-in GitLab helper, user {user})",
                "Basic " + base64.b64encode(pair).decode())
    return "none (anonymous)", None


def tls_context(registry: str, certificates: dict[str, str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cert_file = os.environ.get("SSL_CERT_FILE")
    if cert_file and os.path.isfile(cert_file):
        context.load_verify_locations(cafile=cert_file)
    for directory in os.environ.get("SSL_CERT_DIR", "").split(":"):
        if directory and os.path.isdir(directory):
            # Go reads every file in SSL_CERT_DIR, not only hashed names.
            for name in sorted(os.listdir(directory)):
                path = os.path.join(directory, name)
                if os.path.isfile(path):
                    # Go skips files that hold no certificate; so does the stand-in.
                    with contextlib.suppress(ssl.SSLError, ValueError):
                        context.load_verify_locations(cafile=path)
    if registry in certificates:
        context.load_verify_locations(cafile=certificates[registry])
    return context


def on_loopback(registry: str) -> bool:
    host = registry.partition(":")[0]
    return host == "localhost" or host.startswith("127.") or host in ("[::1]", "::1")


def check_tls(registry: str, certificates: dict[str, str], insecure: set[str]) -> str:
    if registry in insecure:
        return "skipped (TLS verification disabled for this registry)"
    host, _, port = registry.partition(":")
    if not on_loopback(registry):
        # The emulated cluster has no network beyond this machine's loopback.
        return "not checked: the emulated cluster reaches only registries on 127.0.0.1"
    try:
        context = tls_context(registry, certificates)
        with socket.create_connection((host, int(port or 443)), timeout=3) as sock, \
                context.wrap_socket(sock, server_hostname=host):
            return "verified"
    except ssl.SSLCertVerificationError as error:
        return f"FAILED: x509: {error.verify_message}"
    except (OSError, ValueError) as error:
        return f"not checked: cannot connect ({error})"


# Pushing, as go-containerregistry's remote package does it on the wire (kaniko uses it).

PERMISSION_HINT = ("error checking push permissions -- make sure you entered the correct tag "
                   "name, and that you are authenticated correctly, and try again")


class RegistryError(Exception):
    """A failed registry request, worded as go-containerregistry's transport.Error."""


class NotARegistry(Exception):
    """Nothing at the address answered HTTP like a registry."""


def go_value(value: object) -> str:
    """A decoded JSON value as Go's %v prints it (maps with sorted keys)."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(go_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_value(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def registry_error(method: str, url: str, status: int, body: bytes) -> RegistryError:
    """transport.Error's text: `METHOD URL: CODE: message[; detail]` from the JSON body."""
    try:
        errors = json.loads(body).get("errors") or []
        diagnostics = [f"{e.get('code', '')}: {e.get('message', '')}"
                       + (f"; {go_value(e['detail'])}" if e.get("detail") is not None else "")
                       for e in errors]
    except (ValueError, AttributeError):
        diagnostics = []
    if len(diagnostics) == 1:
        text = diagnostics[0]
    elif diagnostics:
        text = "multiple errors returned: " + "; ".join(diagnostics)
    else:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        text = f"unexpected status code {status} {phrase}"
        if body:
            text += f": {body.decode(errors='replace')}"
        elif method == "HEAD":
            text += " (HEAD responses have no body, use GET for details)"
    return RegistryError(f"{method} {url}: {text}")


class Pusher:
    """One destination's registry session: ping, permission check, blob and manifest puts."""

    def __init__(self, destination: str, registry: str, context: ssl.SSLContext,
                 authorization: str | None) -> None:
        host, _, port = registry.partition(":")
        self.base = f"https://{registry}"
        self.connection = http.client.HTTPSConnection(host, int(port or 443), context=context,
                                                      timeout=10)
        self.credentials = authorization
        self.authorization: str | None = None
        remainder = destination.split("/", 1)[1] if "/" in destination else destination
        self.repository, _, self.tag = remainder.rpartition(":")
        if not self.repository or "/" in self.tag:
            self.repository, self.tag = remainder, "latest"
        self.reference = f"{registry}/{self.repository}:{self.tag}"

    def request(self, method: str, url: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage,
                                                                 bytes]:
        split = urlsplit(url)
        target = split.path + (f"?{split.query}" if split.query else "")
        sent = dict(headers or {})
        if self.authorization:
            sent["Authorization"] = self.authorization
        if body or method in ("PUT", "POST"):
            sent["Content-Length"] = str(len(body))
        self.connection.request(method, target, body=body or None, headers=sent)
        response = self.connection.getresponse()
        return response.status, response.headers, response.read()

    def ping(self) -> None:
        """GET /v2/: a 401 with a Basic challenge means credentials go on every request."""
        url = f"{self.base}/v2/"
        try:
            status, headers, body = self.request("GET", url)
        except (OSError, http.client.HTTPException) as error:
            raise NotARegistry(f"GET {url}: {error!r}") from error
        if status == 200:
            return  # anonymous access: go-containerregistry sends no credentials
        challenge = headers.get("WWW-Authenticate", "")
        if status == 401 and challenge.lower().startswith("basic"):
            self.authorization = self.credentials
            return
        if status == 401:
            raise RegistryError(f"GET {url}: stand-in: only Basic auth is emulated, not "
                                f"{challenge.split(' ')[0]}")
        raise registry_error("GET", url, status, body)

    def initiate_upload(self) -> str:
        """POST .../blobs/uploads/, which is kaniko's whole push-permission check."""
        url = f"{self.base}/v2/{self.repository}/blobs/uploads/"
        status, headers, body = self.request("POST", url)
        if status != 202:
            raise registry_error("POST", url, status, body)
        return urljoin(url, headers.get("Location", ""))

    def put_blob(self, blob: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        url = f"{self.base}/v2/{self.repository}/blobs/{digest}"
        status, _, body = self.request("HEAD", url)
        if status == 200:
            return digest
        if status != 404:
            raise registry_error("HEAD", url, status, body)
        location = self.initiate_upload()
        put = location + ("&" if "?" in location else "?") + f"digest={digest}"
        status, _, body = self.request("PUT", put, blob,
                                       {"Content-Type": "application/octet-stream"})
        if status != 201:
            raise registry_error("PUT", put.split("?")[0], status, body)
        return digest

    def put_manifest(self, manifest: bytes, media_type: str) -> str:
        url = f"{self.base}/v2/{self.repository}/manifests/{self.tag}"
        status, headers, body = self.request("PUT", url, manifest,
                                             {"Content-Type": media_type})
        if status not in (200, 201, 202):
            raise registry_error("PUT", url, status, body)
        return headers.get("Docker-Content-Digest") or \
            "sha256:" + hashlib.sha256(manifest).hexdigest()


def standin_image(dockerfile: str | None) -> tuple[list[bytes], bytes]:
    """The blobs (layer, config) and OCI manifest of a one-layer stand-in image."""
    content = b""
    if dockerfile and os.path.isfile(dockerfile):
        with open(dockerfile, "rb") as handle:
            content = handle.read()
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("Dockerfile")
        info.size, info.mode, info.mtime = len(content), 0o644, 0
        archive.addfile(info, io.BytesIO(content))
    layer_tar = tar_bytes.getvalue()
    layer = gzip.compress(layer_tar, mtime=0)
    note = "runner-driver emulator: stand-in image from the kaniko stand-in; nothing was built"
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {"org.opencontainers.image.description": note}},
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
    }, separators=(",", ":")).encode()

    def descriptor(media_type: str, blob: bytes) -> dict[str, object]:
        return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
                "size": len(blob)}

    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
        "annotations": {"org.opencontainers.image.description": note},
    }, separators=(",", ":")).encode()
    return [layer, config], manifest


def push_context(registry: str, certificates: dict[str, str], verified: bool) -> ssl.SSLContext:
    if verified:
        return tls_context(registry, certificates)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # --skip-tls-verify / --insecure-registry
    return context



def main() -> None:
    print("kaniko executor STAND-IN (runner-driver emulated cluster): it checks flags, "
          "credentials and TLS trust, builds nothing, and pushes only a stand-in image to "
          "registries on 127.0.0.1.", file=sys.stderr)
    flags = parse(sys.argv[1:])
    if not flags.get("force") and not in_container():
        fail("kaniko should only be run inside of a container, run with the --force flag "
             "if you are sure you want to continue")
    destinations = flags.get("destination", [])
    no_push = "true" in flags.get("no-push", [])
    if not destinations and not no_push:
        fail("you must provide --destination, or use --no-push")
    context = flags.get("context", ["/workspace/"])[-1]
    if context.startswith("dir://"):
        context = context[len("dir://"):]
    dockerfile = flags.get("dockerfile", ["Dockerfile"])[-1]
    dockerfile_path = None
    if "://" not in context:
        path = dockerfile if os.path.isabs(dockerfile) else os.path.join(context, dockerfile)
        if not os.path.isfile(path):
            fail("error resolving dockerfile path: please provide a valid path to a "
                 "Dockerfile within the build context with --dockerfile")
        print(f"stand-in: would build {path} with context {context}", file=sys.stderr)
        dockerfile_path = path
    certificates = dict(v.split("=", 1) for v in flags.get("registry-certificate", []) if "=" in v)
    insecure = set(flags.get("insecure-registry", []))
    insecure |= set(flags.get("skip-tls-verify-registry", []))
    skip_all = "true" in flags.get("skip-tls-verify", [])
    failed = False
    pushers: list[Pusher] = []
    for destination in destinations:
        registry = registry_of(destination)
        print(f"stand-in: destination {destination}", file=sys.stderr)
        described, authorization = resolve_credentials(registry)
        print(f"stand-in:   credentials for {registry}: {described}", file=sys.stderr)
        tls = check_tls(registry, certificates, insecure | ({registry} if skip_all else set()))
        print(f"stand-in:   TLS to {registry}: {tls}", file=sys.stderr)
        if tls.startswith("FAILED"):
            failed = True
            print(f"{PERMISSION_HINT}: checking push permission for \"{destination}\": "
                  f"{tls[len('FAILED: '):]}", file=sys.stderr)
            continue
        if no_push or not on_loopback(registry) or tls.startswith("not checked"):
            continue
        pusher = Pusher(destination, registry,
                        push_context(registry, certificates, tls == "verified"), authorization)
        try:
            pusher.ping()
            pusher.initiate_upload()
        except (NotARegistry, RegistryError, OSError, http.client.HTTPException) as error:
            failed = True
            print(f"{PERMISSION_HINT}: checking push permission for \"{pusher.reference}\": "
                  f"{error}", file=sys.stderr)
            continue
        pusher.connection.close()  # reopened for the push, after the (stand-in) build
        pushers.append(pusher)
    if failed:
        sys.exit(1)
    if not pushers:
        print("stand-in: checks passed; no image was built or pushed (emulated cluster)",
              file=sys.stderr)
        return
    blobs, manifest = standin_image(dockerfile_path)
    for pusher in pushers:
        print(f"INFO[0000] Pushing image to {pusher.reference}", file=sys.stderr)
        try:
            for blob in blobs:
                pusher.put_blob(blob)
            digest = pusher.put_manifest(manifest, "application/vnd.oci.image.manifest.v1+json")
        except (RegistryError, OSError, http.client.HTTPException) as error:
            print(f"error pushing image: failed to push to destination {pusher.reference}: "
                  f"{error}", file=sys.stderr)
            sys.exit(1)
        registry = pusher.reference.split("/", 1)[0]
        print(f"INFO[0000] Pushed {registry}/{pusher.repository}@{digest}", file=sys.stderr)
    print(f"stand-in: checks passed; pushed a stand-in image (the Dockerfile as its only "
          f"layer) to {len(pushers)} destination(s); nothing was built", file=sys.stderr)


if __name__ == "__main__":
    main()
