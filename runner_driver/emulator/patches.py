"""PATCH bodies: JSON merge patch (RFC 7386) and JSON patch (RFC 6902).

Strategic merge patches are applied as merge patches, which is exact for the maps
(labels, annotations, data) clients patch on the kinds the emulator serves. Pure
functions over dicts; errors are the API server's 422.
"""

from __future__ import annotations

import copy
from typing import Any

from .store import ApiError, Obj


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge patches of maps)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Obj, operations: list[Obj]) -> Obj:
    """RFC 6902 JSON patch: add, replace, remove and test."""
    result = copy.deepcopy(target)
    for operation in operations:
        parts = [p.replace("~1", "/").replace("~0", "~")
                 for p in operation.get("path", "").split("/")[1:]]
        parent: Any = result
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1] if parts else ""
        op = operation.get("op")
        try:
            if op in ("add", "replace"):
                if isinstance(parent, list):
                    index = len(parent) if last == "-" else int(last)
                    if op == "add":
                        parent.insert(index, operation.get("value"))
                    else:
                        parent[index] = operation.get("value")
                else:
                    parent[last] = operation.get("value")
            elif op == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            elif op == "test":
                current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
                if current != operation.get("value"):
                    raise ApiError(422, "Invalid", f"the test operation failed at "
                                   f"{operation.get('path')}")
        except (KeyError, IndexError, ValueError) as error:
            raise ApiError(422, "Invalid", f"the json patch could not be applied: "
                           f"{operation.get('path')}: {error}") from error
    return result
