"""Merge patches and JSON patches apply as RFC 7386 and RFC 6902 say."""

from __future__ import annotations

from typing import Any

import pytest

from runner_driver.emulator.patches import json_patch, merge_patch
from runner_driver.emulator.store import ApiError


def test_merge_patch_merges_maps_and_deletes_nulls() -> None:
    """Maps merge recursively, null deletes a key, lists are replaced whole."""
    target: dict[str, Any] = {"metadata": {"labels": {"a": "1", "b": "2"}}, "list": [1, 2]}
    patched = merge_patch(target, {"metadata": {"labels": {"b": None, "c": "3"}}, "list": [3]})
    assert patched == {"metadata": {"labels": {"a": "1", "c": "3"}}, "list": [3]}
    assert target["metadata"]["labels"] == {"a": "1", "b": "2"}


def test_json_patch_operations() -> None:
    """add, replace, remove and test work on maps and lists, with ~1 escapes."""
    target = {"metadata": {"annotations": {}}, "items": [1, 2]}
    patched = json_patch(target, [
        {"op": "add", "path": "/metadata/annotations/example.com~1k", "value": "v"},
        {"op": "replace", "path": "/items/0", "value": 9},
        {"op": "add", "path": "/items/-", "value": 3},
        {"op": "remove", "path": "/items/1"},
        {"op": "test", "path": "/items/0", "value": 9},
    ])
    assert patched == {"metadata": {"annotations": {"example.com/k": "v"}}, "items": [9, 3]}


def test_failed_test_operation_is_422() -> None:
    """A failing test operation, or a path that does not exist, is 422 Invalid."""
    with pytest.raises(ApiError) as caught:
        json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": 2}])
    assert caught.value.code == 422
    with pytest.raises(ApiError) as caught:
        json_patch({"a": []}, [{"op": "remove", "path": "/a/4"}])
    assert caught.value.code == 422
