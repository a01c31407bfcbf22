"""Label selectors, field selectors and resource quantities, as the API server parses them.

Clients send these as query strings (`labelSelector=app in (a,b),!debug`,
`fieldSelector=metadata.name=x`) and in pod specs (`cpu: 500m`, `memory: 1Gi`). The
emulator must accept what a real API server accepts and reject what it rejects, with
the same kind of message, so a driver bug in a selector shows up here and not in
production. Nothing here knows about HTTP or storage.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any


class SelectorError(ValueError):
    """A selector or quantity the API server would refuse with 400 Bad Request."""


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op == "=":
            return present and value == self.values[0]
        if self.op == "!=":
            return not present or value != self.values[0]
        if self.op == "in":
            return present and value in self.values
        return not present or value not in self.values  # notin


_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_SET_REQ = re.compile(r"^\s*([^\s!=()]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _check_key(key: str, selector: str) -> str:
    if not _LABEL_KEY.match(key) or len(key.rsplit("/", maxsplit=1)[-1]) > 63:
        raise SelectorError(
            f'unable to parse requirement: invalid label key "{key}" in "{selector}"')
    return key


def parse_label_selector(selector: str) -> Callable[[Mapping[str, str]], bool]:
    """Parse a label selector string into a predicate over a label mapping.

    Raises:
        SelectorError: the string is not a valid selector.
    """
    requirements: list[_Requirement] = []
    for part in _split_top_level(selector):
        set_match = _SET_REQ.match(part)
        if set_match:
            key, op, raw = set_match.groups()
            values = tuple(v.strip() for v in raw.split(",") if v.strip())
            requirements.append(_Requirement(_check_key(key, selector), op, values))
        elif part.startswith("!"):
            requirements.append(_Requirement(_check_key(part[1:].strip(), selector), "!"))
        elif "!=" in part:
            key, value = part.split("!=", 1)
            requirements.append(
                _Requirement(_check_key(key.strip(), selector), "!=", (value.strip(),)))
        elif "==" in part or "=" in part:
            key, value = re.split(r"==?", part, maxsplit=1)
            requirements.append(
                _Requirement(_check_key(key.strip(), selector), "=", (value.strip(),)))
        else:
            requirements.append(_Requirement(_check_key(part, selector), "exists"))

    def matches(labels: Mapping[str, str]) -> bool:
        return all(req.matches(labels) for req in requirements)

    return matches


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, Mapping):
            return ""
        current = current.get(part)
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)


def parse_field_selector(
    selector: str, supported: frozenset[str] | None = None
) -> Callable[[Mapping[str, Any]], bool]:
    """Parse a field selector (`a.b=x,c!=y`) into a predicate over a whole object.

    Args:
        selector: the query string value.
        supported: the field paths this resource allows; others are refused like the
            API server does ("field label not supported").

    Raises:
        SelectorError: malformed, or a field the resource does not support.
    """
    terms: list[tuple[str, bool, str]] = []
    for part in _split_top_level(selector):
        if "!=" in part:
            field, value = part.split("!=", 1)
            negate = True
        elif "=" in part:
            field, value = re.split(r"==?", part, maxsplit=1)
            negate = False
        else:
            raise SelectorError(f"invalid selector: '{selector}'; can't understand '{part}'")
        field = field.strip()
        if supported is not None and field not in supported:
            raise SelectorError(f"field label not supported: {field}")
        terms.append((field, negate, value.strip()))

    def matches(obj: Mapping[str, Any]) -> bool:
        return all((_field_value(obj, field) == value) != negate
                   for field, negate, value in terms)

    return matches


_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")


def parse_quantity(value: object) -> Decimal:
    """Parse a Kubernetes resource quantity (`500m`, `1.5`, `128Mi`, `1e3`) to a number.

    Raises:
        SelectorError: the value is not a quantity; the message matches the API server's.
    """
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if not match:
        raise SelectorError(f"quantities must match the regular expression "
                            f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {text!r}")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation as error:
        raise SelectorError(f"invalid quantity {text!r}") from error
    return number * _SUFFIXES[match.group(2) or ""]
