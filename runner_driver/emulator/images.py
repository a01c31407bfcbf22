"""Image profiles: what each container image looks like inside, so scripts fail as they would.

A real kaniko debug image has only static busybox under `/busybox`, no `/tmp`, no bash
and no git; the GitLab helper image has a full userland with git. A driver that works
here must therefore work there. Each profile builds a container's root filesystem in
a host directory (the container's writable layer) and names the host paths to bind in
read-only. The kaniko executor and the runner helper are stand-ins, and say so in their
output: this module never pretends to build or upload anything.

It must not start processes; `sandbox` does that.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

STANDINS = Path(__file__).parent / "standins"


class MissingToolError(RuntimeError):
    """A host tool the emulator needs (bubblewrap, busybox) is not installed."""


@cache
def busybox_path() -> Path:
    """The host's static busybox (Debian's busybox-static), copied into busybox-based images.

    A dynamically linked busybox would not run inside images that have no libc.

    Raises:
        MissingToolError: busybox is absent from PATH or not statically linked.
    """
    found = shutil.which("busybox")
    if found is None:
        raise MissingToolError("starting the emulated cluster: busybox not found on PATH; "
                               "install it with: apt-get install busybox-static")
    path = Path(found).resolve()
    if _elf_interpreter(path) is not None:
        raise MissingToolError(f"starting the emulated cluster: {found} is dynamically linked "
                               "and cannot run inside busybox-only images; install the static "
                               "build with: apt-get install busybox-static")
    return path


@cache
def busybox_applets() -> tuple[str, ...]:
    """The applet names the host busybox provides."""
    out = subprocess.run([str(busybox_path()), "--list"], capture_output=True, text=True,
                         check=True).stdout
    return tuple(a for a in out.split() if a and a != "busybox")


@cache
def host_ca_bundle() -> Path | None:
    """A CA bundle to stand in for the one frozen into the real images."""
    for candidate in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"):
        if Path(candidate).is_file():
            return Path(candidate)
    return None


@dataclass(frozen=True)
class ImageProfile:
    """How one family of images is laid out and configured."""

    name: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    working_dir: str
    layout: str  # "kaniko", "kaniko-slim", "busybox", "userland"
    runs_as_root: bool = True
    # Host paths bound read-only at the same path inside (the "userland" layout).
    host_binds: tuple[str, ...] = field(default=())


KANIKO_ENV = (
    ("PATH", "/usr/local/bin:/kaniko:/busybox"),
    ("HOME", "/root"),
    ("USER", "root"),
    ("SSL_CERT_DIR", "/kaniko/ssl/certs"),
    ("DOCKER_CONFIG", "/kaniko/.docker/"),
    ("DOCKER_CREDENTIAL_GCR_CONFIG", "/kaniko/.config/gcloud/docker_credential_gcr_config.json"),
)
USERLAND_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

KANIKO_DEBUG = ImageProfile("kaniko-debug", ("/kaniko/executor",), (), KANIKO_ENV,
                            "/workspace", "kaniko")
KANIKO_SLIM = ImageProfile("kaniko", ("/kaniko/executor",), (), KANIKO_ENV,
                           "/workspace", "kaniko-slim")
RUNNER_HELPER = ImageProfile("gitlab-runner-helper", (), ("sh",),
                             (("PATH", USERLAND_PATH), ("HOME", "/root")), "/", "userland",
                             host_binds=("/usr",))
BUSYBOX = ImageProfile("busybox", (), ("sh",), (("PATH", USERLAND_PATH),), "/", "busybox")
DEBIAN = ImageProfile("debian", (), ("bash",), (("PATH", USERLAND_PATH),), "/", "userland",
                      host_binds=("/usr",))

# Image references are matched without registry defaults being guessed: what a
# cluster can pull is decided here, and everything else fails like a missing image.
_PROFILES: tuple[tuple[re.Pattern[str], ImageProfile], ...] = (
    (re.compile(r"^(gcr\.io/kaniko-project/executor|ghcr\.io/osscontainertools/kaniko|"
                r"(docker\.io/)?martizih/kaniko|cgr\.dev/chainguard/kaniko|"
                r"images\.chainguard\.dev/[^:@]*kaniko)"
                r":([^@]*-)?debug(-[^@]*)?(@sha256:[0-9a-f]{64})?$"), KANIKO_DEBUG),
    (re.compile(r"^(gcr\.io/kaniko-project/executor|ghcr\.io/osscontainertools/kaniko|"
                r"(docker\.io/)?martizih/kaniko)(:[^@]*)?(@sha256:[0-9a-f]{64})?$"), KANIKO_SLIM),
    (re.compile(r"^(registry\.gitlab\.com/gitlab-org/gitlab-runner/gitlab-runner-helper|"
                r"(docker\.io/)?gitlab/gitlab-runner-helper)(:[^@]*)?(@sha256:[0-9a-f]{64})?$"),
     RUNNER_HELPER),
    (re.compile(r"^((docker\.io/)?(library/)?(busybox|alpine))(:[^@]*)?(@sha256:[0-9a-f]{64})?$"),
     BUSYBOX),
    (re.compile(r"^((docker\.io/)?(library/)?(debian|ubuntu))(:[^@]*)?(@sha256:[0-9a-f]{64})?$"),
     DEBIAN),
)


def resolve(image: str) -> ImageProfile | None:
    """The profile for an image reference, or None when the cluster cannot pull it."""
    for pattern, profile in _PROFILES:
        if pattern.match(image.strip()):
            return profile
    return None


def _install_busybox(directory: Path, applets: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "busybox"
    shutil.copy2(busybox_path(), binary)
    binary.chmod(0o755)
    if applets:
        for applet in busybox_applets():
            target = directory / applet
            if not target.exists():
                os.link(binary, target)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


@dataclass(frozen=True)
class PythonRuntime:
    """The host Python, as the kaniko stand-in reaches it from inside a sandbox.

    The kaniko image has no Python and no dynamic loader, so the stand-in runs the
    host interpreter through the host's loader, both bound read-only under
    `/kaniko/.emulator`, out of the way of anything a job or kaniko would touch.
    """

    prefix: Path
    loader: Path
    library_dirs: tuple[Path, ...]
    executable: Path

    def inside(self, path: Path) -> str:
        """Where a host path under /usr or the Python prefix appears in the sandbox."""
        real = path.resolve()
        if real.is_relative_to(self.prefix):
            return "/kaniko/.emulator/python/" + str(real.relative_to(self.prefix))
        return "/kaniko/.emulator/usr/" + str(real.relative_to("/usr"))

    def launch_env(self) -> str:
        """Shell assignments the executor stand-in sources."""
        libpath = ":".join(self.inside(d) for d in self.library_dirs)
        return (f"EMU_LOADER='{self.inside(self.loader)}'\n"
                f"EMU_LIBPATH='{libpath}'\n"
                f"EMU_PYTHON='{self.inside(self.executable)}'\n"
                f"EMU_PYHOME='/kaniko/.emulator/python'\n")


def _elf_interpreter(binary: Path) -> Path | None:
    """The dynamic loader an ELF executable asks for (its PT_INTERP), or None if static."""
    with binary.open("rb") as handle:
        header = handle.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # only 64-bit ELF is supported
            return None
        little = header[5] == 1
        order: Literal["little", "big"] = "little" if little else "big"
        phoff = int.from_bytes(header[32:40], order)
        phentsize = int.from_bytes(header[54:56], order)
        phnum = int.from_bytes(header[56:58], order)
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
        for index in range(phnum):
            entry = table[index * phentsize:(index + 1) * phentsize]
            if int.from_bytes(entry[0:4], order) == 3:  # PT_INTERP
                offset = int.from_bytes(entry[8:16], order)
                size = int.from_bytes(entry[32:40], order)
                handle.seek(offset)
                return Path(handle.read(size).rstrip(b"\0").decode())
    return None


@cache
def python_runtime() -> PythonRuntime:
    """Locate the host interpreter, its loader and the directories of its libraries."""
    prefix = Path(sys.base_prefix).resolve()
    executable = Path(sys.executable).resolve()
    if not executable.is_relative_to(prefix):
        candidate = prefix / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
        executable = candidate.resolve()
    ssl_module = next((prefix / "lib").glob(
        f"python{sys.version_info.major}.{sys.version_info.minor}/lib-dynload/_ssl*.so"), None)
    dirs: list[Path] = [prefix / "lib"]
    for binary in (executable, ssl_module):
        if binary is None:
            continue
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                             check=False).stdout
        for match in re.finditer(r"=> (/\S+)", out):
            directory = Path(match.group(1)).resolve().parent
            if directory not in dirs:
                dirs.append(directory)
    loader = _elf_interpreter(executable)
    if loader is None:
        raise MissingToolError(f"starting the emulated cluster: cannot find the dynamic loader "
                               f"of {executable}")
    return PythonRuntime(prefix, loader.resolve(), tuple(dirs), executable)


def build_rootfs(profile: ImageProfile, rootfs: Path) -> None:
    """Lay out a fresh writable root filesystem for one container of `profile`."""
    rootfs.mkdir(parents=True, exist_ok=True)
    (rootfs / "etc").mkdir(exist_ok=True)
    (rootfs / "proc").mkdir(exist_ok=True)
    (rootfs / "dev").mkdir(exist_ok=True)
    if profile.layout in ("kaniko", "kaniko-slim"):
        kaniko = rootfs / "kaniko"
        (kaniko / ".docker").mkdir(parents=True, exist_ok=True)
        (kaniko / "ssl" / "certs").mkdir(parents=True, exist_ok=True)
        bundle = host_ca_bundle()
        if bundle is not None:
            shutil.copyfile(bundle, kaniko / "ssl" / "certs" / "ca-certificates.crt")
        _write(kaniko / "executor", (STANDINS / "kaniko-executor.sh").read_text(), 0o755)
        emulator_dir = kaniko / ".emulator"
        _write(emulator_dir / "executor.py", (STANDINS / "kaniko_executor.py").read_text())
        _write(emulator_dir / "launch.env", python_runtime().launch_env())
        _install_busybox(emulator_dir, applets=False)
        (emulator_dir / "usr").mkdir(exist_ok=True)
        (emulator_dir / "python").mkdir(exist_ok=True)
        for helper in ("docker-credential-gcr", "docker-credential-ecr-login",
                       "docker-credential-acr-env", "warmer"):
            _write(kaniko / helper,
                   (STANDINS / "not-emulated.sh").read_text().replace("@NAME@", helper), 0o755)
        for path in (kaniko, kaniko / ".docker"):
            path.chmod(0o777)
        _write(rootfs / "etc" / "nsswitch.conf", "hosts: files dns\n")
        (rootfs / "workspace").mkdir(exist_ok=True)
        if profile.layout == "kaniko":
            _install_busybox(rootfs / "busybox")
            (rootfs / "bin").mkdir(exist_ok=True)
            (rootfs / "bin" / "sh").symlink_to("/busybox/sh")
    elif profile.layout == "busybox":
        _install_busybox(rootfs / "bin")
        for directory in ("tmp", "root", "usr/bin", "usr/sbin", "sbin", "var", "home"):
            (rootfs / directory).mkdir(parents=True, exist_ok=True)
        (rootfs / "tmp").chmod(0o1777)
        _write(rootfs / "etc" / "passwd", "root:x:0:0:root:/root:/bin/sh\n"
               "nobody:x:65534:65534:nobody:/home:/bin/false\n")
        _write(rootfs / "etc" / "group", "root:x:0:\nnobody:x:65534:\n")
    else:
        for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"),
                             ("lib64", "usr/lib64")):
            if Path("/" + target).exists():
                (rootfs / link).symlink_to(target)
        for directory in ("usr", "usr-local/bin", "tmp", "root", "var/tmp", "home", "run",
                          "etc/ssl"):
            (rootfs / directory).mkdir(parents=True, exist_ok=True)
        (rootfs / "tmp").chmod(0o1777)
        (rootfs / "var" / "tmp").chmod(0o1777)
        _write(rootfs / "etc" / "passwd", "root:x:0:0:root:/root:/bin/bash\n"
               "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
        _write(rootfs / "etc" / "group", "root:x:0:\nnogroup:x:65534:\n")
        if profile is RUNNER_HELPER:
            _write(rootfs / "usr-local" / "bin" / "gitlab-runner-helper",
                   (STANDINS / "gitlab-runner-helper.sh").read_text(), 0o755)


def userland_binds(profile: ImageProfile, rootfs: Path) -> list[tuple[str, str, bool]]:
    """Extra (source, destination, read_only) binds the profile needs on top of `rootfs`."""
    binds: list[tuple[str, str, bool]] = []
    if profile.layout in ("kaniko", "kaniko-slim"):
        runtime = python_runtime()
        binds.append(("/usr", "/kaniko/.emulator/usr", True))
        binds.append((str(runtime.prefix), "/kaniko/.emulator/python", True))
        return binds
    if profile.layout != "userland":
        return binds
    binds.extend((path, path, True) for path in profile.host_binds)
    binds.append((str(rootfs / "usr-local"), "/usr/local", False))
    if Path("/etc/ssl/certs").is_dir():
        binds.append(("/etc/ssl/certs", "/etc/ssl/certs", True))
    for config in ("/etc/alternatives", "/etc/ld.so.cache", "/etc/gitconfig"):
        if Path(config).exists():
            binds.append((config, config, True))
    return binds
