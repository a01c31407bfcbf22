"""Decode the Kubernetes protobuf request bodies kubectl sends for a few core kinds.

kubectl's generators (`kubectl create namespace`, `create secret generic|docker-registry|tls`,
`create configmap`, `create serviceaccount`, `create quota`) post protobuf, not JSON, so
an API server that reads only JSON fails them. This module turns those bodies into the JSON objects
the rest of the emulator handles, using the field numbers of Kubernetes'
`generated.proto` for the kinds listed in `SCHEMAS`. Responses stay JSON, which every
client accepts. Anything else is refused with 415, naming what is supported.
"""

from __future__ import annotations

import base64
from typing import Any

from .store import ApiError

MAGIC = b"k8s\x00"

# Field number -> (JSON name, kind). Kinds: "string", "bytes", "int", "bool",
# "message:<schema>", "map:string", "map:bytes", "map:quantity", "repeated:string",
# "repeated:<schema>".
SCHEMAS: dict[str, dict[int, tuple[str, str]]] = {
    "ObjectMeta": {1: ("name", "string"), 2: ("generateName", "string"),
                   3: ("namespace", "string"), 11: ("labels", "map:string"),
                   12: ("annotations", "map:string"),
                   13: ("ownerReferences", "repeated:OwnerReference"),
                   14: ("finalizers", "repeated:string")},
    "OwnerReference": {1: ("kind", "string"), 3: ("name", "string"), 4: ("uid", "string"),
                       5: ("apiVersion", "string"), 6: ("controller", "bool"),
                       7: ("blockOwnerDeletion", "bool")},
    "Namespace": {1: ("metadata", "message:ObjectMeta"), 2: ("spec", "message:NamespaceSpec")},
    "NamespaceSpec": {1: ("finalizers", "repeated:string")},
    "Secret": {1: ("metadata", "message:ObjectMeta"), 2: ("data", "map:bytes"),
               3: ("type", "string"), 4: ("stringData", "map:string"),
               5: ("immutable", "bool")},
    "ConfigMap": {1: ("metadata", "message:ObjectMeta"), 2: ("data", "map:string"),
                  3: ("binaryData", "map:bytes"), 4: ("immutable", "bool")},
    "ServiceAccount": {1: ("metadata", "message:ObjectMeta"),
                       2: ("secrets", "repeated:ObjectReference"),
                       3: ("imagePullSecrets", "repeated:LocalObjectReference"),
                       4: ("automountServiceAccountToken", "bool")},
    "ResourceQuota": {1: ("metadata", "message:ObjectMeta"),
                      2: ("spec", "message:ResourceQuotaSpec")},
    "ResourceQuotaSpec": {1: ("hard", "map:quantity"), 2: ("scopes", "repeated:string"),
                          3: ("scopeSelector", "message:ScopeSelector")},
    "ScopeSelector": {1: ("matchExpressions", "repeated:ScopedResourceSelectorRequirement")},
    "ScopedResourceSelectorRequirement": {1: ("scopeName", "string"), 2: ("operator", "string"),
                                          3: ("values", "repeated:string")},
    "ObjectReference": {1: ("kind", "string"), 2: ("namespace", "string"), 3: ("name", "string")},
    "LocalObjectReference": {1: ("name", "string")},
}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """Split a protobuf message into (field number, varint or bytes) pairs."""
    fields: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            fields.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            fields.append((number, data[pos:pos + length]))
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return fields


def _message(data: bytes, schema: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    known = SCHEMAS[schema]
    for number, value in _fields(data):
        if number not in known:
            continue
        name, kind = known[number]
        if kind == "string" and isinstance(value, bytes):
            # Kubernetes' proto2 messages write unset strings as empty ones.
            if value:
                out[name] = value.decode()
        elif kind == "bool":
            out[name] = bool(value)
        elif kind == "int":
            out[name] = value
        elif kind.startswith("message:") and isinstance(value, bytes):
            out[name] = _message(value, kind.split(":", 1)[1])
        elif kind.startswith("map:") and isinstance(value, bytes):
            entry = dict(_fields(value))
            key = entry.get(1, b"")
            raw = entry.get(2, b"")
            if kind == "map:quantity" and isinstance(raw, bytes):
                # A resource.Quantity message: its text in field 1.
                raw = dict(_fields(raw)).get(1, b"")
            if isinstance(key, bytes) and isinstance(raw, bytes):
                out.setdefault(name, {})[key.decode()] = (
                    base64.b64encode(raw).decode() if kind == "map:bytes" else raw.decode())
        elif kind == "repeated:string" and isinstance(value, bytes):
            out.setdefault(name, []).append(value.decode())
        elif kind.startswith("repeated:") and isinstance(value, bytes):
            out.setdefault(name, []).append(_message(value, kind.split(":", 1)[1]))
    return out


def decode(body: bytes) -> dict[str, Any]:
    """Turn a `application/vnd.kubernetes.protobuf` body into its JSON object.

    Raises:
        ApiError: 415 for kinds this emulator cannot decode, 400 for a malformed body.
    """
    if not body.startswith(MAGIC):
        raise ApiError(400, "BadRequest", "the protobuf body does not start with the "
                       "Kubernetes magic number")
    try:
        envelope = dict(_fields(body[len(MAGIC):]))
        type_meta = envelope.get(1, b"")
        raw = envelope.get(2, b"")
        if not isinstance(type_meta, bytes) or not isinstance(raw, bytes):
            raise ValueError("malformed runtime.Unknown envelope")
        meta = {n: v.decode() for n, v in _fields(type_meta) if isinstance(v, bytes)}
        api_version, kind = meta.get(1, ""), meta.get(2, "")
        if api_version != "v1" or kind not in SCHEMAS or kind in ("ObjectMeta",):
            supported = ", ".join(k for k in ("Namespace", "Secret", "ConfigMap",
                                              "ServiceAccount", "ResourceQuota"))
            raise ApiError(415, "UnsupportedMediaType",
                           f"the emulated cluster decodes protobuf bodies only for v1 "
                           f"{supported}, not {api_version} {kind}; send JSON instead")
        obj = _message(raw, kind)
    except ValueError as error:
        raise ApiError(400, "BadRequest", f"the protobuf body is malformed: {error}") from error
    obj["apiVersion"], obj["kind"] = api_version, kind
    return obj
