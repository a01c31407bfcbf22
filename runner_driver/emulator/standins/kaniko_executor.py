"""Stand-in for the kaniko executor inside the runner-driver emulated cluster.

It runs inside the kaniko-profile sandbox with the host's Python (bound read-only
under /kaniko/.emulator). It reproduces what a driver can get wrong before kaniko
builds anything: flags, the container check, the Dockerfile path, which credentials
kaniko would use for each registry, and whether TLS to a registry verifies against the
container's CA store. It never builds or pushes an image and says so on every run.
Only the standard library may be used here.
"""

import base64
import contextlib
import json
import os
import socket
import ssl
import sys

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


def fail(message: str) -> None:
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
                    return f"{path} auths[{key}] (user {user})"
                if entry.get("username"):
                    return f"{path} auths[{key}] (user {entry['username']})"
                if entry.get("identitytoken") or entry.get("registrytoken"):
                    return f"{path} auths[{key}] (token)"
        helpers = config.get("credHelpers") or {}
        if registry in helpers:
            return f"{path} credHelpers -> docker-credential-{helpers[registry]}"
        if config.get("credsStore"):
            return f"{path} credsStore -> docker-credential-{config['credsStore']}"
    ci_registry = os.environ.get("CI_REGISTRY", "")
    if ci_registry and ci_registry.split("://")[-1].rstrip("/") == registry \
            and os.environ.get("CI_REGISTRY_USER") and os.environ.get("CI_REGISTRY_PASSWORD"):
        user = os.environ["CI_REGISTRY_USER"]
        return f"CI_REGISTRY_USER/CI_REGISTRY_PASSWORD (built-in GitLab helper, user {user})"
    return "none (anonymous)"


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


def check_tls(registry: str, certificates: dict[str, str], insecure: set[str]) -> str:
    if registry in insecure:
        return "skipped (TLS verification disabled for this registry)"
    host, _, port = registry.partition(":")
    if host != "localhost" and not host.startswith("127.") and host not in ("[::1]", "::1"):
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


def main() -> None:
    print("kaniko executor STAND-IN (runner-driver emulated cluster): it checks flags, "
          "credentials and TLS trust; it builds and pushes nothing.", file=sys.stderr)
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
    if "://" not in context:
        path = dockerfile if os.path.isabs(dockerfile) else os.path.join(context, dockerfile)
        if not os.path.isfile(path):
            fail("error resolving dockerfile path: please provide a valid path to a "
                 "Dockerfile within the build context with --dockerfile")
        print(f"stand-in: would build {path} with context {context}", file=sys.stderr)
    certificates = dict(v.split("=", 1) for v in flags.get("registry-certificate", []) if "=" in v)
    insecure = set(flags.get("insecure-registry", []))
    insecure |= set(flags.get("skip-tls-verify-registry", []))
    skip_all = "true" in flags.get("skip-tls-verify", [])
    failed = False
    for destination in destinations:
        registry = registry_of(destination)
        print(f"stand-in: destination {destination}", file=sys.stderr)
        print(f"stand-in:   credentials for {registry}: {credentials(registry)}", file=sys.stderr)
        tls = check_tls(registry, certificates, insecure | ({registry} if skip_all else set()))
        print(f"stand-in:   TLS to {registry}: {tls}", file=sys.stderr)
        if tls.startswith("FAILED"):
            failed = True
            print(f"error checking push permissions -- make sure you entered the correct tag "
                  f"name, and that you are authenticated correctly, and try again: checking "
                  f"push permission for \"{destination}\": {tls[len('FAILED: '):]}",
                  file=sys.stderr)
    if failed:
        sys.exit(1)
    print("stand-in: checks passed; no image was built or pushed (emulated cluster)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
