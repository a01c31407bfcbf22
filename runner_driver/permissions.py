"""The Kubernetes API permissions the driver needs, in one list.

The Helm chart's Role, the plain manifests and `runner-driver check` all read this
list, and a test compares it with the requests the driver made during end-to-end jobs
on the emulated cluster, so the granted rules are exactly what the driver calls:
nothing missing, nothing unused. This module must not talk to the API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .settings import Settings


@dataclass(frozen=True)
class Permission:
    """One verb on one resource (a subresource is written `pods/exec`) of the core group,
    and who needs it."""

    verb: str
    resource: str
    needed_by: str
    # The settings under which nothing calls it ("" = always needed), and that
    # condition's test: whether the given settings need it.
    optional_when: str = ""
    needed_with: Callable[[Settings], bool] | None = None

    def needed(self, settings: Settings) -> bool:
        """Whether the driver calls it with these settings."""
        return self.needed_with is None or self.needed_with(settings)


PERMISSIONS: tuple[Permission, ...] = (
    Permission("create", "pods", "prepare: creates the job's pod"),
    Permission("get", "pods", "prepare, run, cleanup: read the pod's phase and identity"),
    Permission("list", "pods", "prepare waits with list+watch; gc finds orphaned pods"),
    Permission("watch", "pods", "prepare: waits for the pod to run"),
    Permission("delete", "pods", "cleanup and gc: delete the job's pod"),
    # Websocket exec opens with GET; SPDY clients and the API's own check use create.
    Permission("get", "pods/exec", "run: streams each stage into its container"),
    Permission("create", "pods/exec", "run: streams each stage into its container"),
    Permission("list", "events", "prepare: explains a pod that does not start"),
    Permission("create", "secrets", "prepare: the job's registry logins and CA bundle"),
    Permission("patch", "secrets", "prepare: makes the job's Secret owned by its pod"),
    Permission("delete", "secrets", "cleanup and gc: delete the job's Secret"),
    Permission("list", "secrets", "gc: finds Secrets whose job is gone"),
    Permission("get", "secrets", "prepare: reads the operator's registry and CA Secrets",
               optional_when="no [registry] secrets and no [tls] ca_secret",
               needed_with=lambda s: bool(s.registry.secrets or s.tls.ca_secret)),
    Permission("get", "configmaps", "prepare: reads the operator's CA ConfigMap",
               optional_when="no [tls] ca_configmap",
               needed_with=lambda s: bool(s.tls.ca_configmap)),
)


def rules() -> list[dict[str, list[str]]]:
    """PERMISSIONS as RBAC PolicyRules: one rule per resource, verbs in a fixed order."""
    by_resource: dict[str, list[str]] = {}
    for permission in PERMISSIONS:
        by_resource.setdefault(permission.resource, []).append(permission.verb)
    return [{"apiGroups": [""], "resources": [resource], "verbs": sorted(verbs)}
            for resource, verbs in by_resource.items()]
