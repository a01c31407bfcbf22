"""Server-side field validation: unknown and duplicate fields in request bodies.

Since Kubernetes 1.27 the API server decodes every create, update and patch body
strictly and, by the request's `fieldValidation` directive, refuses (`Strict`), warns
about (`Warn`, the default when the parameter is absent) or ignores (`Ignore`) unknown
and duplicate fields. In every mode an unknown field is dropped: the typed object has
nowhere to keep it. Drivers meet this as `kubectl` errors and `Warning:` lines, so the
emulator reports the same paths, texts and headers.

Which fields exist comes from the real OpenAPI schemas of the emulated version, as
shipped (strict JSON schemas per Kubernetes release) by the `kubernetes-validate`
package; they are read once per process and compiled to a small field tree.

Taken from kubernetes/kubernetes (v1.34) and kubernetes-sigs/json:
- staging/src/k8s.io/apiserver/pkg/endpoints/handlers/rest.go: `fieldValidation`
  (absent means Warn), `addStrictDecodingWarnings` (one warning per error) and
  `transformDecodeError` (`%s in version %q cannot be handled as a %s: %v`, a 400
  BadRequest), which create.go and update.go apply to a strict decoding failure.
- staging/src/k8s.io/apiserver/pkg/endpoints/handlers/patch.go: patches are checked on
  the patched object; a Strict failure is a 422 `Invalid` on the field `patch` (the
  patched JSON, or `%+v` of the patch map for a strategic merge patch); JSON patch
  operations are decoded strictly and their errors prefixed `json patch `; the patch
  body's own duplicate keys are reported too.
- staging/src/k8s.io/apimachinery/pkg/runtime/error.go: `strict decoding error: `
  followed by the errors joined with `, `.
- staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/validation/validation.go:
  `ValidateFieldValidation` (422 on `<Kind>Options.meta.k8s.io`).
- kubernetes-sigs/json internal/golang/encoding/json (kubernetes_patch.go, decode.go):
  `unknown field "spec.containers[0].foo"` and `duplicate field "metadata.name"` in
  document order, each reported once, at most 100; duplicates are checked for known
  fields and map keys only; an unknown field's value is not looked into.
- staging/src/k8s.io/apiserver/pkg/endpoints/filters/warning.go and
  staging/src/k8s.io/apimachinery/pkg/util/net/http.go: `Warning: 299 - "<text>"`
  headers, deduplicated, truncated past 4096 characters in total.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from .store import RESOURCES, ApiError, Obj

# Objects that had repeated keys, by id(): the full (key, value) list in document order.
Repeated = dict[int, list[tuple[str, Any]]]

STRICT, WARN, IGNORE = "Strict", "Warn", "Ignore"
_DIRECTIVES = ("", IGNORE, STRICT, WARN)  # sets.NewString(...).List(): sorted
MAX_ERRORS = 100  # sigs.k8s.io/json saveStrictError
_TOTAL_WARNING_RUNES, _ITEM_WARNING_RUNES = 4 * 1024, 256

_STRUCT, _MAP, _LIST, _RAW, _ANY = range(5)


class _Node:
    """One type of the schema: a struct, a map, a list, or a value not looked into."""

    __slots__ = ("element", "fields", "kind")

    def __init__(self, kind: int = _RAW) -> None:
        self.kind = kind
        self.fields: dict[str, _Node] = {}
        self.element: _Node | None = None


_ANY_NODE = _Node(_ANY)  # an untyped JSON value (map[string]interface{}): duplicates only
# The operations of an RFC 6902 patch as patch.go decodes them (`jsonPatchOp`).
_JSON_PATCH_OP = _Node(_STRUCT)
_JSON_PATCH_OP.fields = {"op": _Node(), "path": _Node(), "from": _Node(), "value": _ANY_NODE}
_JSON_PATCH = _Node(_LIST)
_JSON_PATCH.element = _JSON_PATCH_OP


class MissingSchemasError(RuntimeError):
    """The `kubernetes-validate` package (the emulator extra) is not installed."""


def _schema_root() -> Path:
    # find_spec locates the package without importing it (and its jsonschema stack).
    spec = importlib.util.find_spec("kubernetes_validate")
    if spec is None or spec.origin is None:
        raise MissingSchemasError("starting the emulated cluster: the Kubernetes schemas are "
                                  "missing; install them with: pip install "
                                  "'runner-driver[emulator]' (kubernetes-validate)")
    return Path(spec.origin).parent / "kubernetes-json-schema"


@cache
def schema_directory(kubernetes_version: str) -> Path:
    """The shipped strict schemas closest to a version (`v1.34.1` -> `v1.34.0-local-strict`).

    Raises:
        MissingSchemasError: no schemas are installed.
    """
    wanted = _minor(kubernetes_version)
    shipped = {}
    root = _schema_root()
    for entry in root.iterdir() if root.is_dir() else ():
        match = re.fullmatch(r"v(\d+)\.(\d+)\.\d+-local-strict", entry.name)
        if match:
            shipped[(int(match.group(1)), int(match.group(2)))] = entry
    if not shipped:
        raise MissingSchemasError(f"no strict Kubernetes schemas under {root}")
    best = min(shipped, key=lambda v: (abs((v[0] - wanted[0]) * 1000 + v[1] - wanted[1]), v))
    return shipped[best]


def _minor(version: str) -> tuple[int, int]:
    match = re.match(r"v?(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else (1, 34)


class _Compiler:
    """Turns JSON schema definitions into `_Node` trees, sharing one node per definition."""

    def __init__(self, definitions: Obj) -> None:
        self._definitions = definitions
        self._compiled: dict[str, _Node] = {}

    def node(self, schema: Obj) -> _Node:
        ref = schema.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            node = self._compiled.get(name)
            if node is None:
                node = self._compiled[name] = _Node()  # first: types can be recursive
                self._fill(node, self._definitions.get(name) or {})
            return node
        node = _Node()
        self._fill(node, schema)
        return node

    def _fill(self, node: _Node, schema: Obj) -> None:
        extra = schema.get("additionalProperties")
        if extra is False:
            node.kind = _STRUCT
            node.fields = {k: self.node(v) for k, v in (schema.get("properties") or {}).items()}
        elif isinstance(extra, dict):
            node.kind, node.element = _MAP, self.node(extra)
        elif isinstance(schema.get("items"), dict):
            node.kind, node.element = _LIST, self.node(schema["items"])


@cache
def _kinds(kubernetes_version: str) -> dict[str, _Node]:
    """Every served kind's field tree, compiled together; the definitions are dropped."""
    directory = schema_directory(kubernetes_version)
    with (directory / "_definitions.json").open("rb") as handle:
        compiler = _Compiler(json.load(handle)["$defs"])
    kinds = {}
    for spec in RESOURCES.values():
        # Schemas of other groups than core are named `<kind>-<group's first label>-v1`.
        group = f"-{spec.group.split('.')[0]}" if spec.group else ""
        with (directory / f"{spec.kind.lower()}{group}-v1.json").open("rb") as handle:
            kinds[spec.kind] = compiler.node(json.load(handle))
    return kinds


def kind_schema(kubernetes_version: str, kind: str) -> _Node:
    """The compiled field tree of a served core v1 kind, loaded once per process.

    Raises:
        MissingSchemasError: no schemas are installed.
    """
    return _kinds(kubernetes_version)[kind]


def loads(raw: bytes) -> tuple[Any, Repeated]:
    """Parse JSON keeping what a strict decoder needs: objects whose keys repeat.

    Raises:
        ValueError: the body is not JSON (json.JSONDecodeError, UnicodeDecodeError).
    """
    repeated: Repeated = {}

    def hook(pairs: list[tuple[str, Any]]) -> Obj:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            repeated[id(obj)] = pairs  # keeps the earlier values alive, so ids stay unique
        return obj

    return json.loads(raw, object_pairs_hook=hook), repeated


def go_quote(text: str) -> str:
    """Go's `strconv.Quote`, which strict decoding errors and `%q` use."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        elif char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x80:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)


_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
            "\v": "\\v"}


class _Checker:
    """Walks a decoded body as the strict decoder does, dropping unknown fields."""

    def __init__(self, repeated: Repeated) -> None:
        self.repeated = repeated
        self.errors: list[str] = []
        self._seen: set[str] = set()

    def _report(self, what: str, path: str) -> None:
        text = f"{what} {go_quote(path)}"
        if len(self.errors) < MAX_ERRORS and text not in self._seen:
            self._seen.add(text)
            self.errors.append(text)

    def walk(self, value: Any, node: _Node, path: str) -> None:
        kind = node.kind
        if kind == _LIST or (kind == _ANY and isinstance(value, list)):
            if isinstance(value, list):
                element = node.element or _ANY_NODE
                for index, item in enumerate(value):
                    self.walk(item, element, f"{path}[{index}]")
            return
        if kind == _RAW or not isinstance(value, dict):
            return
        pairs = self.repeated.get(id(value)) or list(value.items())
        seen: set[str] = set()
        unknown: list[str] = []
        for key, item in pairs:
            child = node.fields.get(key) if kind == _STRUCT else (node.element or _ANY_NODE)
            field_path = f"{path}.{key}" if path else key
            if child is None:
                self._report("unknown field", field_path)
                unknown.append(key)
                continue
            if key in seen:
                self._report("duplicate field", field_path)
            seen.add(key)
            self.walk(item, child, field_path)
        for key in unknown:
            value.pop(key, None)


def check(kubernetes_version: str, kind: str, obj: Any, repeated: Repeated) -> list[str]:
    """Strict decoding errors of a body for `kind`; unknown fields are removed from `obj`.

    Raises:
        MissingSchemasError: no schemas are installed.
    """
    checker = _Checker(repeated)
    checker.walk(obj, kind_schema(kubernetes_version, kind), "")
    return checker.errors


def duplicates(obj: Any, repeated: Repeated) -> list[str]:
    """Duplicate keys anywhere in an untyped body (a merge patch decoded into a map)."""
    checker = _Checker(repeated)
    checker.walk(obj, _ANY_NODE, "")
    return checker.errors


def json_patch_errors(operations: Any, repeated: Repeated) -> list[str]:
    """Unknown and duplicate fields of RFC 6902 operations, as patch.go reports them."""
    checker = _Checker(repeated)
    checker.walk(operations, _JSON_PATCH, "")
    return [f"json patch {error}" for error in checker.errors]


def directive(value: str | None, options_kind: str) -> str:
    """The request's `fieldValidation` (absent: Warn), validated like `<Kind>Options`.

    Raises:
        ApiError: 422 Invalid for a value that is not a directive.
    """
    if value in (None, ""):
        return WARN
    assert value is not None
    if value in _DIRECTIVES:
        return value
    supported = ", ".join(go_quote(v) for v in _DIRECTIVES)
    detail = f"Unsupported value: {go_quote(value)}: supported values: {supported}"
    raise ApiError(422, "Invalid",
                   f'{options_kind}.meta.k8s.io "" is invalid: fieldValidation: {detail}',
                   {"group": "meta.k8s.io", "kind": options_kind,
                    "causes": [{"reason": "FieldValueNotSupported", "message": detail,
                                "field": "fieldValidation"}]})


def strict_message(errors: list[str]) -> str:
    """`runtime.NewStrictDecodingError(errors).Error()`."""
    return "strict decoding error: " + ", ".join(errors)


def decode_error(kind: str, version: str, errors: list[str]) -> ApiError:
    """The 400 a Strict create or update gets (rest.go `transformDecodeError`)."""
    return ApiError(400, "BadRequest", f"{kind} in version {go_quote(version)} cannot be "
                    f"handled as a {kind}: {strict_message(errors)}")


def patch_error(bad_value: str, errors: list[str]) -> ApiError:
    """The 422 a Strict patch gets: `field.Invalid(patch, <value>, <strict error>)`."""
    detail = f"Invalid value: {go_quote(bad_value)}: {strict_message(errors)}"
    return ApiError(422, "Invalid", f' "" is invalid: patch: {detail}',
                    {"causes": [{"reason": "FieldValueInvalid", "message": detail,
                                 "field": "patch"}]})


def go_format(value: Any) -> str:
    """Go's `%+v` of a decoded JSON value (a strategic merge patch map in messages)."""
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_format(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, list):
        return "[" + " ".join(go_format(v) for v in value) + "]"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    return str(value)


def _go_float(number: float) -> str:
    """`%v` of a float64: shortest digits, exponent form below 1e-4 or from 1e+06."""
    if not math.isfinite(number):
        return "NaN" if math.isnan(number) else ("+Inf" if number > 0 else "-Inf")
    if number == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(number)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    power = len(text) + exponent - 1
    prefix = "-" if sign else ""
    if -4 <= power < 6:  # strconv 'g' with the shortest precision uses 6 here
        fixed = format(Decimal(repr(abs(number))), "f")
        return prefix + (fixed.rstrip("0").rstrip(".") if "." in fixed else fixed)
    mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
    return f"{prefix}{mantissa}e{'+' if power >= 0 else '-'}{abs(power):02d}"


def warning_headers(texts: list[str]) -> list[str]:
    """The `Warning` header values the API server's warning recorder writes for `texts`."""
    recorded: set[str] = set()
    ordered: list[str] = []
    headers: list[str] = []
    written, truncating = 0, False
    for text in texts:
        if not text or (written >= _TOTAL_WARNING_RUNES and truncating) or text in recorded:
            continue
        recorded.add(text)
        ordered.append(text)
        shown = text[:_ITEM_WARNING_RUNES] if truncating else text
        header = _warning_header(shown)
        if header is None:
            continue
        if written + len(shown) <= _TOTAL_WARNING_RUNES or truncating:
            written += len(shown)
            headers.append(header)
            continue
        truncating, written, headers = True, 0, []
        for earlier in ordered:
            cut = earlier[:_ITEM_WARNING_RUNES]
            replayed = _warning_header(cut)
            if replayed is not None:
                written += len(cut)
                headers.append(replayed)
    return headers


def _warning_header(text: str) -> str | None:
    """`net.NewWarningHeader(299, "", text)`: None for text with control characters."""
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text):
        return None
    quoted = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 - "{quoted}"'
