"""Finding cluster credentials, and getting the client ready before a job needs it.

`connect` looks where every Kubernetes tool looks and turns anything unusable into a
`ConfigError` naming the place and the setting to fix. It sends no request: it may run
before we know a job will talk to the cluster.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from ..errors import ConfigError
from ..settings import KubernetesSettings

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
@dataclass(frozen=True)
class Connection:
    """A configured client and the namespace the driver works in."""

    configuration: Any
    namespace: str
    server: str


def connect(settings: KubernetesSettings, source: str,
            environ: Mapping[str, str] | None = None,
            service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> Connection:
    """Find cluster credentials as every Kubernetes tool does.

    An explicit `[kubernetes] kubeconfig` wins; otherwise the pod's service account
    when running in a cluster, else $KUBECONFIG, else ~/.kube/config.

    Raises:
        ConfigError: no usable credentials, naming where they were looked for.
    """
    env = os.environ if environ is None else environ
    configuration = client.Configuration()
    in_cluster = (not settings.kubeconfig and bool(env.get("KUBERNETES_SERVICE_HOST"))
                  and (service_account_dir / "token").exists())
    if in_cluster:
        where = "the pod's service account"
    else:
        where = settings.kubeconfig or env.get("KUBECONFIG") or "~/.kube/config"
    try:
        if in_cluster:
            config.incluster_config.InClusterConfigLoader(
                token_filename=str(service_account_dir / "token"),
                cert_filename=str(service_account_dir / "ca.crt"),
                environ=env).load_and_set(configuration)
            namespace = settings.namespace or _read(service_account_dir / "namespace")
        else:
            # Load exactly the file(s) `where` names: the client's own default is
            # $KUBECONFIG as it was at import, not that of `environ`.
            path = where
            context = settings.context or None
            config.load_kube_config(config_file=path, context=context,
                                    client_configuration=configuration)
            namespace = settings.namespace or _context_namespace(path, context)
    # TypeError and AttributeError: the client's loader on a YAML document that is not
    # a mapping (a stray string, list or number).
    except (config.ConfigException, OSError, ValueError, yaml.YAMLError, TypeError,
            AttributeError) as error:
        detail = " ".join(str(error).split())  # YAML errors span lines; ours is one line
        raise ConfigError(
            f"loading cluster credentials from {where}: {detail}; set [kubernetes] kubeconfig "
            f"and context in {source}, or KUBECONFIG") from error
    # urllib3 would otherwise retry some failures silently (and others not at all):
    # every retry goes through `Cluster._call`, where it is bounded and logged.
    configuration.retries = False
    return Connection(configuration, namespace or "default", configuration.host)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip() if path.exists() else ""


def _context_namespace(path: str | None, context: str | None) -> str:
    contexts, active = config.list_kube_config_contexts(config_file=path)
    chosen = next((c for c in contexts if c.get("name") == context), active) if context \
        else active
    return str(((chosen or {}).get("context") or {}).get("namespace") or "")
