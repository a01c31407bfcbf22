"""The driver's settings: one frozen value, parsed once from TOML before any API call.

Platform teams tune the driver in a TOML file (`--config`, else `$RUNNER_DRIVER_CONFIG`,
else `/etc/runner-driver/config.toml`; with no file the built-in defaults apply).
Mistakes must surface as one line naming the file and the dotted key, before a pod
exists: unknown keys, wrong types and impossible values are all refused here. This
module must not read the job's environment (that is `runner_env`) or talk to the
cluster. `config.example.toml` documents every key; a test loads it through `load`.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

DEFAULT_PATH = Path("/etc/runner-driver/config.toml")
CONFIG_ENV = "RUNNER_DRIVER_CONFIG"

KANIKO_DEBUG_IMAGE = "gcr.io/kaniko-project/executor:v1.23.2-debug"
HELPER_IMAGE = "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper:x86_64-v17.0.0"
# The kaniko debug images of upstream and of the maintained forks: the only images
# that carry busybox under /busybox next to the executor, which the pod relies on.
DEFAULT_ALLOWED_IMAGES = (
    "gcr.io/kaniko-project/executor:*debug*",
    "ghcr.io/osscontainertools/kaniko:*debug*",
    "martizih/kaniko:*debug*",
    "docker.io/martizih/kaniko:*debug*",
    "cgr.dev/chainguard/kaniko:*debug*",
)


@dataclass(frozen=True)
class KubernetesSettings:
    """How to reach the cluster; empty strings mean "as every Kubernetes tool does"."""

    kubeconfig: str = ""
    context: str = ""
    namespace: str = ""
    request_timeout_seconds: float = 30.0
    retry_timeout_seconds: float = 60.0


@dataclass(frozen=True)
class PodSettings:
    """Shape of the job pod that is not tied to one container."""

    builds_dir: str = "/builds"
    cache_dir: str = "/cache"
    scratch_dir: str = "/scratch"
    start_timeout_seconds: float = 300.0
    unschedulable_timeout_seconds: float = 120.0
    termination_grace_period_seconds: int = 10
    default_job_timeout_seconds: int = 3600
    deadline_margin_seconds: int = 900
    builds_size_limit: str = "10Gi"
    cache_size_limit: str = "10Gi"
    scratch_size_limit: str = "10Gi"
    logs_size_limit: str = "1Gi"
    # Files, relative to the settings file: a partial Pod (YAML) and a JSON Patch.
    template: str = ""
    patch: str = ""


@dataclass(frozen=True)
class ContainerResources:
    """A container's resources.requests and resources.limits; empty means unset."""

    cpu_request: str = ""
    memory_request: str = ""
    cpu_limit: str = ""
    memory_limit: str = ""
    ephemeral_storage_request: str = ""
    ephemeral_storage_limit: str = ""


@dataclass(frozen=True)
class BuildSettings(ContainerResources):
    """The `build` container, where `script:` runs."""

    # kaniko unpacks the base image into the container's own root, which counts here.
    ephemeral_storage_request: str = "1Gi"
    ephemeral_storage_limit: str = "20Gi"
    image: str = KANIKO_DEBUG_IMAGE
    allowed_images: tuple[str, ...] = DEFAULT_ALLOWED_IMAGES


@dataclass(frozen=True)
class HelperSettings(ContainerResources):
    """The `helper` container, where git, cache and artifact stages run."""

    ephemeral_storage_request: str = "256Mi"
    ephemeral_storage_limit: str = "4Gi"
    image: str = HELPER_IMAGE
    # 0 keeps the image's own user (root in GitLab's helper images).
    run_as_user: int = 1000


@dataclass(frozen=True)
class ResourceCaps:
    """The highest value a job may ask for, per resource; empty turns the override off."""

    cpu_request_max: str = ""
    cpu_limit_max: str = ""
    memory_request_max: str = ""
    memory_limit_max: str = ""
    ephemeral_storage_request_max: str = ""
    ephemeral_storage_limit_max: str = ""


@dataclass(frozen=True)
class OverrideSettings:
    """What a job may change in its pod through KUBERNETES_* variables; all off by default."""

    build: ResourceCaps = field(default_factory=ResourceCaps)
    helper: ResourceCaps = field(default_factory=ResourceCaps)
    node_selector_keys: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    pod_label_keys: tuple[str, ...] = ()
    pod_annotation_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegistrySettings:
    """Registry logins the operator gives every job's kaniko (see `credentials`)."""

    # Names of kubernetes.io/dockerconfigjson Secrets in the job namespace.
    secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProxySettings:
    """The HTTP(S) proxy every job pod uses; empty means none."""

    http_proxy: str = ""
    https_proxy: str = ""
    no_proxy: str = ""


@dataclass(frozen=True)
class TlsSettings:
    """A private CA that job pods must trust (GitLab, registries, proxies behind it)."""

    # A PEM file on the runner manager (relative to the settings file), and/or a Secret
    # or ConfigMap in the job namespace holding it under the key ca.crt.
    ca_file: str = ""
    ca_secret: str = ""
    ca_configmap: str = ""


# The Pod Security Standards "baseline" controls an operator may opt out of.
SECURITY_EXCEPTIONS = ("privileged", "host_namespaces", "host_path", "host_ports",
                       "capabilities", "seccomp", "proc_mount", "sysctls", "selinux",
                       "apparmor", "probe_hosts")


@dataclass(frozen=True)
class SecuritySettings:
    """Which baseline checks of the final pod the operator has knowingly turned off."""

    exceptions: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoggingSettings:
    """Driver logs on stderr (which gitlab-runner shows in the job log)."""

    level: str = "warning"
    format: str = "console"


@dataclass(frozen=True)
class AgentSettings:
    """The runner's agent that keeps the Kubernetes client loaded for every job's stages."""

    enabled: bool = True
    idle_timeout_seconds: float = 600.0
    # Open each job's next exec when a stage ends (see `standby`).
    standby_exec: bool = True


@dataclass(frozen=True)
class ManagerSettings:
    """Who this runner manager is, as the labels on its job pods say."""

    # Empty: the host name, resolved by `resolve_manager` when a command starts.
    id: str = ""


@dataclass(frozen=True)
class Settings:
    """Everything the operator can tune; see config.example.toml."""

    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    pod: PodSettings = field(default_factory=PodSettings)
    build: BuildSettings = field(default_factory=BuildSettings)
    helper: HelperSettings = field(default_factory=HelperSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    manager: ManagerSettings = field(default_factory=ManagerSettings)
    overrides: OverrideSettings = field(default_factory=OverrideSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    source: str = "built-in defaults"
    # Read from the files `pod.template` and `pod.patch` name, when `load` runs.
    pod_template: dict[str, Any] | None = field(default=None, compare=False)
    pod_patch: tuple[Any, ...] | None = field(default=None, compare=False)
    # Read from `tls.ca_file` when `load` runs.
    ca_pem: str = field(default="", compare=False, repr=False)

    def watched_files(self) -> list[str]:
        """Files whose change makes these settings stale."""
        return [self.source, *(resolve(self, p) for p in (self.pod.template, self.pod.patch,
                                                          self.tls.ca_file) if p)]


_DERIVED = ("source", "pod_template", "pod_patch", "ca_pem")


LEVELS = ("debug", "info", "warning", "error")
# Kubernetes quantities as operators write them (a subset of the API's grammar that
# excludes the surprising ones: exponents, and `m` on memory, which means millibytes).
_CPU = re.compile(r"(\d+(\.\d+)?|\d+m)", re.ASCII)
# A label value (the manager id is one): at most 63 characters, alphanumeric at both ends.
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_MEMORY = re.compile(r"\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?", re.ASCII)
FORMATS = ("console", "json")
PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*",
                            re.ASCII)


def config_path(cli_path: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The file to read: `--config`, else $RUNNER_DRIVER_CONFIG, else the default if present.

    An explicitly named file must exist; only the default location may be absent.
    """
    if cli_path is not None:
        return cli_path
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    return DEFAULT_PATH if DEFAULT_PATH.exists() else None


def load(path: Path | None) -> Settings:
    """Parse and check a settings file; `None` gives the built-in defaults.

    Raises:
        ConfigError: naming the file and the dotted key at fault.
    """
    if path is None:
        return Settings()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"reading driver config {path}: {error.strerror or error}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"reading driver config {path}: invalid TOML: {error}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"reading driver config {path}: not UTF-8 text: {error}") from error
    settings = _build(Settings, raw, path, "")
    settings = replace(settings, source=str(path))
    _check(settings, path)
    return _read_pod_files(settings, path)


def resolve(settings: Settings, name: str) -> str:
    """A file named in the settings: relative names are relative to the settings file."""
    if os.path.isabs(name) or settings.source == Settings.source:
        return name
    return os.path.join(os.path.dirname(settings.source), name)


def _read_pod_files(settings: Settings, path: Path) -> Settings:
    """The settings with the pod template and patch files read and parsed."""
    def read(key: str, name: str) -> Any:
        import yaml  # noqa: PLC0415 - only when a template or patch is configured

        file = resolve(settings, name)
        where = f"reading driver config {path}: {key}: {file}"
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"{where}: {error.strerror or error}") from error
        except UnicodeDecodeError as error:
            raise ConfigError(f"{where}: not UTF-8 text: {error}") from error
        try:
            # YAML is a superset of JSON, so a JSON Patch file reads the same way.
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"{where}: invalid YAML: {error}".replace("\n", " ")) from error

    template = patch = None
    if settings.pod.template:
        template = read("pod.template", settings.pod.template)
        if not isinstance(template, dict):
            raise ConfigError(f"reading driver config {path}: pod.template: "
                              f"{resolve(settings, settings.pod.template)}: expected a partial "
                              f"Pod (a YAML mapping), got {_kind(template)}")
    if settings.pod.patch:
        operations = read("pod.patch", settings.pod.patch)
        if not isinstance(operations, list) or \
                not all(isinstance(op, dict) for op in operations):
            raise ConfigError(f"reading driver config {path}: pod.patch: "
                              f"{resolve(settings, settings.pod.patch)}: expected a JSON Patch "
                              f"(a list of operations such as {{op: remove, path: /spec/x}}), "
                              f"got {_kind(operations)}")
        patch = tuple(operations)
    ca = ""
    if settings.tls.ca_file:
        file = resolve(settings, settings.tls.ca_file)
        where = f"reading driver config {path}: tls.ca_file: {file}"
        try:
            ca = Path(file).read_text(encoding="ascii")
        except OSError as error:
            raise ConfigError(f"{where}: {error.strerror or error}") from error
        except UnicodeDecodeError as error:
            raise ConfigError(f"{where}: not a PEM file ({error.reason})") from error
        if PEM_CERTIFICATE not in ca:
            raise ConfigError(f"{where}: not a PEM file: no {PEM_CERTIFICATE} line")
    return replace(settings, pod_template=template, pod_patch=patch, ca_pem=ca)


def resolve_manager(settings: Settings) -> Settings:
    """`settings` with `manager.id` filled in: the host name when the operator left it empty.

    Done once when a command starts, so the pod builder stays free of I/O.
    """
    if settings.manager.id:
        return settings
    return replace(settings, manager=ManagerSettings(id=os.uname().nodename))


def load_from(cli_path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """`load` the file `config_path` picks."""
    return load(config_path(cli_path, os.environ if environ is None else environ))


T = TypeVar("T")


def _build(cls: type[T], raw: Mapping[str, Any], path: Path, prefix: str) -> T:
    assert is_dataclass(cls)
    known = {f.name: f for f in fields(cls) if f.name not in _DERIVED}
    for key in raw:
        if key not in known:
            where = f"{prefix}{key}"
            raise ConfigError(f"reading driver config {path}: {where}: unknown key "
                              f"(known here: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for name in known:
        if name not in raw:
            continue
        dotted = f"{prefix}{name}"
        hint = hints[name]
        value = raw[name]
        if is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"reading driver config {path}: {dotted}: expected a table, "
                                  f"got {_kind(value)}")
            values[name] = _build(typing.cast(type[Any], hint), value, path, f"{dotted}.")
        else:
            values[name] = _coerce(hint, value, path, dotted)
    return cls(**values)


def _coerce(hint: Any, value: Any, path: Path, dotted: str) -> Any:
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"reading driver config {path}: {dotted}: expected {expected}, "
                           f"got {_kind(value)}")

    if hint is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail("a number")
        if isinstance(value, float) and not math.isfinite(value):  # TOML has nan and inf
            raise ConfigError(f"reading driver config {path}: {dotted}: expected a finite "
                              f"number, got {value}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail("a list of strings")
        return tuple(value)
    if origin in (dict, types.MappingProxyType):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise fail("a table of strings")
        return dict(value)
    raise TypeError(f"settings field {dotted} has an unsupported type {hint!r}")


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _check(settings: Settings, path: Path) -> None:
    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"reading driver config {path}: {key}: {message}")

    pod = settings.pod
    for key in ("builds_dir", "cache_dir", "scratch_dir"):
        value = getattr(pod, key)
        if not value.startswith("/") or value.rstrip("/") in ("", "/tmp"):
            raise fail(f"pod.{key}", f"must be an absolute path other than / and /tmp, "
                                     f"got {value!r}")
    dirs = [pod.builds_dir.rstrip("/"), pod.cache_dir.rstrip("/"), pod.scratch_dir.rstrip("/")]
    if len(set(dirs)) != 3 or any(a != b and b.startswith(a + "/") for a in dirs for b in dirs):
        raise fail("pod", "builds_dir, cache_dir and scratch_dir must be separate directories, "
                          "none inside another")
    for key in ("start_timeout_seconds", "unschedulable_timeout_seconds"):
        if getattr(pod, key) <= 0:
            raise fail(f"pod.{key}", "must be greater than 0")
    for key in ("termination_grace_period_seconds", "deadline_margin_seconds"):
        if getattr(pod, key) < 0:
            raise fail(f"pod.{key}", "must not be negative")
    if pod.default_job_timeout_seconds <= 0:
        raise fail("pod.default_job_timeout_seconds", "must be greater than 0")
    for key in ("request_timeout_seconds", "retry_timeout_seconds"):
        if getattr(settings.kubernetes, key) <= 0:
            raise fail(f"kubernetes.{key}", "must be greater than 0")
    def quantity(key: str, value: str, kind: str) -> None:
        pattern, example = (_CPU, "500m or 2") if kind == "cpu" else (_MEMORY, "512Mi or 2Gi")
        if value and not pattern.fullmatch(value):
            what = "a CPU" if kind == "cpu" else "a memory" if kind == "memory" else \
                "a storage"
            raise fail(key, f"must be {what} quantity such as {example}, got {value!r}")

    for section, container in (("build", settings.build), ("helper", settings.helper),
                               ("overrides.build", settings.overrides.build),
                               ("overrides.helper", settings.overrides.helper)):
        suffix = "_max" if section.startswith("overrides") else ""
        for resource in ("cpu", "memory", "ephemeral_storage"):
            for kind in ("request", "limit"):
                key = f"{resource}_{kind}{suffix}"
                quantity(f"{section}.{key}", getattr(container, key), resource)
    for key in ("builds_size_limit", "cache_size_limit", "scratch_size_limit",
                "logs_size_limit"):
        quantity(f"pod.{key}", getattr(pod, key), "storage")
        if not getattr(pod, key):
            raise fail(f"pod.{key}", "must not be empty: every volume of the job pod has a "
                                     "size limit, so no job can fill the node's disk")
    if settings.helper.run_as_user < 0:
        raise fail("helper.run_as_user", "must be a user id (0 keeps the image's user)")
    for name in settings.security.exceptions:
        if name not in SECURITY_EXCEPTIONS:
            raise fail("security.exceptions", f"unknown check {name!r} (known: "
                                              f"{', '.join(SECURITY_EXCEPTIONS)})")
    for key in ("http_proxy", "https_proxy"):
        value = getattr(settings.proxy, key)
        scheme, sep, rest = value.partition("://")
        if value and (not sep or scheme not in ("http", "https", "socks5")
                      or not rest.strip("/")):
            raise fail(f"proxy.{key}", f"must be a URL such as http://proxy.example.com:3128, "
                                       f"got {value!r}")
        if "@" in rest.split("/", 1)[0]:
            # It would be in the pod spec's env, readable by anyone who can read pods.
            raise fail(f"proxy.{key}", "must not hold credentials (user:password@): they "
                                       "would be readable in every job pod's spec")
    if any(c.isspace() for c in settings.proxy.no_proxy):
        raise fail("proxy.no_proxy", "must be a comma-separated list without spaces, such as "
                                     "localhost,.svc,.cluster.local,10.0.0.0/8")
    for key in ("ca_secret", "ca_configmap"):
        name = getattr(settings.tls, key)
        if name and (not _DNS_SUBDOMAIN.fullmatch(name) or len(name) > 253):
            raise fail(f"tls.{key}", f"must be an object name (lower-case letters, digits, "
                                     f"'-' and '.'), got {name!r}")
    for name in settings.registry.secrets:
        if not _DNS_SUBDOMAIN.fullmatch(name) or len(name) > 253:
            raise fail("registry.secrets", f"must hold Secret names (lower-case letters, "
                                           f"digits, '-' and '.'), got {name!r}")
    for key in ("node_selector_keys", "service_accounts", "pod_label_keys",
                "pod_annotation_keys"):
        if any(not value.strip() for value in getattr(settings.overrides, key)):
            raise fail(f"overrides.{key}", "must not hold empty patterns")
    if not settings.build.image:
        raise fail("build.image", "must not be empty")
    if not settings.helper.image:
        raise fail("helper.image", "must not be empty")
    if settings.logging.level not in LEVELS:
        raise fail("logging.level", f"must be one of {', '.join(LEVELS)}, "
                                    f"got {settings.logging.level!r}")
    if settings.agent.idle_timeout_seconds <= 0:
        raise fail("agent.idle_timeout_seconds", "must be greater than 0")
    manager = settings.manager.id
    if manager and not _LABEL_VALUE.fullmatch(manager):
        raise fail("manager.id", "must be a Kubernetes label value (at most 63 letters, "
                                 "digits, '-', '_' or '.', starting and ending with a letter "
                                 f"or digit), got {manager!r}")
    if settings.logging.format not in FORMATS:
        raise fail("logging.format", f"must be one of {', '.join(FORMATS)}, "
                                     f"got {settings.logging.format!r}")



def stamp(paths: Iterable[str]) -> tuple[tuple[int, int, int] | None, ...]:
    """Inode, size and modification time of each file (None when missing or not a path):
    equal stamps mean the settings or credentials read from them are still current."""
    found: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            info = os.stat(path)
        except (OSError, ValueError):
            found.append(None)
            continue
        found.append((info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(found)
