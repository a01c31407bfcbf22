"""How an operator's template and patch combine with the driver's pod: pure data in, data out.

The template merges as Kubernetes' strategic merge patch does for the Pod fields an
operator writes (the patch tags of `k8s.io/api/core/v1/types.go`): maps merge key by
key, a `null` removes a key, and lists merge by their merge key where Kubernetes has
one (containers and volumes by `name`, env by `name`, volumeMounts by `mountPath`,
ports by `containerPort`, imagePullSecrets by `name`, hostAliases by `ip`,
topologySpreadConstraints by `topologyKey`); a list item with `$patch: delete`
removes its match. Every other list is replaced whole, as Kubernetes does: this
includes `tolerations` and capability lists, which have no merge key. Volumes keep
only the source the template names (Kubernetes' `retainKeys`), so a template can turn
the `cache` emptyDir into a persistentVolumeClaim.

The final patch is RFC 6902 JSON Patch, applied by the `jsonpatch` library. Nothing
here knows what the driver owns; `podspec` checks that after each step.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ConfigError

# (path of the list, as `podspec` paths read) -> the merge key of its items.
MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("spec", "containers"): "name",
    ("spec", "initContainers"): "name",
    ("spec", "volumes"): "name",
    ("spec", "imagePullSecrets"): "name",
    ("spec", "hostAliases"): "ip",
    ("spec", "topologySpreadConstraints"): "topologyKey",
    ("spec", "containers", "*", "env"): "name",
    ("spec", "containers", "*", "volumeMounts"): "mountPath",
    ("spec", "containers", "*", "ports"): "containerPort",
    ("spec", "initContainers", "*", "env"): "name",
    ("spec", "initContainers", "*", "volumeMounts"): "mountPath",
    ("spec", "initContainers", "*", "ports"): "containerPort",
}
# Lists whose items keep only the keys the patch gives (a volume has one source).
RETAIN_KEYS = {("spec", "volumes")}
DIRECTIVE = "$patch"


def strategic_merge(base: dict[str, Any], patch: dict[str, Any],
                    where: str = "") -> dict[str, Any]:
    """`base` with `patch` merged in as Kubernetes' strategic merge would; both unchanged.

    Raises:
        ConfigError: a keyed list item lacks its key, or a directive is unknown;
            `where` (the template's name) starts the message.
    """
    return _merge_map(copy.deepcopy(base), patch, (), where)


def _merge_map(base: dict[str, Any], patch: dict[str, Any], path: tuple[str, ...],
               where: str) -> dict[str, Any]:
    for key, value in patch.items():
        if key == DIRECTIVE:
            raise ConfigError(f"{where}: {_dotted(path)}: only list items may carry "
                              f"{DIRECTIVE} (delete); got {value!r}")
        here = (*path, key)
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _merge_map(base[key], value, here, where)
        elif isinstance(value, list) and isinstance(base.get(key), list) \
                and _merge_key(here) is not None:
            base[key] = _merge_list(base[key], value, here, where)
        else:
            base[key] = _strip(copy.deepcopy(value), here, where)
    return base


def _merge_list(base: list[Any], patch: list[Any], path: tuple[str, ...],
                where: str) -> list[Any]:
    key = _merge_key(path)
    assert key is not None
    merged = list(base)
    for index, item in enumerate(patch):
        if not isinstance(item, dict) or key not in item:
            raise ConfigError(f"{where}: {_dotted(path)}[{index}]: each item needs its "
                              f"merge key {key!r}")
        found = next((i for i, old in enumerate(merged)
                      if isinstance(old, dict) and old.get(key) == item[key]), None)
        directive = item.get(DIRECTIVE)
        if directive not in (None, "delete"):
            raise ConfigError(f"{where}: {_dotted(path)}[{key}={item[key]}]: unknown "
                              f"{DIRECTIVE} {directive!r} (only delete is supported)")
        if directive == "delete":
            if found is not None:
                del merged[found]
            continue
        item_path = (*path, str(item[key]))
        if found is None:
            merged.append(_strip(copy.deepcopy(item), item_path, where))
        elif path in RETAIN_KEYS:
            kept = {k: v for k, v in merged[found].items() if k in item}
            merged[found] = _merge_map(kept, item, item_path, where)
        else:
            merged[found] = _merge_map(merged[found], item, item_path, where)
    return merged


def _strip(value: Any, path: tuple[str, ...], where: str) -> Any:
    """A new value as it will be stored: `null` keys dropped, deletions refused."""
    if isinstance(value, dict):
        if DIRECTIVE in value:
            raise ConfigError(f"{where}: {_dotted(path)}: {DIRECTIVE} only applies to an "
                              "item that the driver's pod has")
        return {k: _strip(v, (*path, k), where) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip(v, path, where) for v in value]
    return value


def _merge_key(path: tuple[str, ...]) -> str | None:
    # Container paths carry the container's name at position 2; the table uses "*".
    if len(path) == 4 and path[1] in ("containers", "initContainers"):
        path = (path[0], path[1], "*", path[3])
    return MERGE_KEYS.get(path)


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path) or "(top level)"


def json_patch(document: dict[str, Any], operations: list[Any], where: str) -> dict[str, Any]:
    """`document` with the RFC 6902 `operations` applied (a new value).

    Raises:
        ConfigError: an operation is malformed, names a path that does not exist, or
            a `test` operation fails; `where` (the patch file) starts the message.
    """
    # Imported only when a patch is configured: stages stay light.
    import jsonpatch  # noqa: PLC0415

    try:
        patch = jsonpatch.JsonPatch(operations)
        result = patch.apply(document, in_place=False)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError,
            KeyError, AttributeError) as error:
        raise ConfigError(f"{where}: cannot apply the JSON Patch: {error}") from error
    if not isinstance(result, dict):
        raise ConfigError(f"{where}: the JSON Patch replaced the whole pod with a "
                          f"{type(result).__name__}")
    return result
