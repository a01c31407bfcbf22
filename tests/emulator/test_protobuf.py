"""Protobuf request bodies decode into the JSON objects the API handles."""

from __future__ import annotations

import pytest

from runner_driver.emulator.protobuf import MAGIC, decode
from runner_driver.emulator.store import ApiError


def field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (payloads here are under 128 bytes)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def envelope(kind: str, raw: bytes, api_version: str = "v1") -> bytes:
    """A runtime.Unknown envelope as client-go writes it."""
    type_meta = field(1, api_version.encode()) + field(2, kind.encode())
    return MAGIC + field(1, type_meta) + field(2, raw)


def test_secret_with_labels_and_binary_data() -> None:
    """A Secret's name, labels, bytes data and type decode; data comes back base64."""
    meta = field(1, b"creds") + field(11, field(1, b"team") + field(2, b"ci"))
    raw = field(1, meta) + field(2, field(1, b"key") + field(2, b"\x00\xff")) + \
        field(3, b"kubernetes.io/basic-auth")
    obj = decode(envelope("Secret", raw))
    assert obj == {"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "creds", "labels": {"team": "ci"}},
                   "data": {"key": "AP8="}, "type": "kubernetes.io/basic-auth"}


def test_empty_strings_are_unset() -> None:
    """Empty strings written by proto2 encoders are treated as unset fields."""
    obj = decode(envelope("Namespace", field(1, field(1, b"ns") + field(2, b""))))
    assert obj["metadata"] == {"name": "ns"}


def test_unsupported_kind_is_415() -> None:
    """A kind without a schema here is refused with 415, naming the supported ones."""
    with pytest.raises(ApiError) as caught:
        decode(envelope("Pod", field(1, field(1, b"p"))))
    assert caught.value.code == 415
    assert "Namespace, Secret, ConfigMap, ServiceAccount" in caught.value.message


def test_malformed_body_is_400() -> None:
    """A body without the magic number or with a truncated field is a 400."""
    with pytest.raises(ApiError) as caught:
        decode(b"{}")
    assert caught.value.code == 400
    with pytest.raises(ApiError) as caught:
        decode(MAGIC + b"\x0a\x7f")
    assert caught.value.code in (400, 415)
