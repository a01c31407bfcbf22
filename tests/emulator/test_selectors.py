"""Label selectors, field selectors and quantities parse as the API server parses them."""

from __future__ import annotations

from decimal import Decimal

import pytest

from runner_driver.emulator.selectors import (
    SelectorError,
    parse_field_selector,
    parse_label_selector,
    parse_quantity,
)

LABELS = {"app": "web", "tier": "front", "kubernetes.io/arch": "amd64"}


@pytest.mark.parametrize(("selector", "expected"), [
    pytest.param("", True, id="empty-matches-all"),
    pytest.param("app=web", True, id="equal"),
    pytest.param("app==web", True, id="double-equal"),
    pytest.param("app!=web", False, id="not-equal"),
    pytest.param("app!=db", True, id="not-equal-other"),
    pytest.param("missing!=x", True, id="not-equal-absent"),
    pytest.param("app in (db, web)", True, id="in"),
    pytest.param("app notin (db,web)", False, id="notin"),
    pytest.param("tier", True, id="exists"),
    pytest.param("!tier", False, id="not-exists"),
    pytest.param("app=web,tier=back", False, id="and"),
    pytest.param("kubernetes.io/arch=amd64", True, id="prefixed-key"),
])
def test_label_selector_matches(selector: str, expected: bool) -> None:
    """Each label selector operator matches as in the API server."""
    assert parse_label_selector(selector)(LABELS) is expected


def test_label_selector_rejects_bad_keys() -> None:
    """An invalid label key is a 400-worthy parse error naming the key."""
    with pytest.raises(SelectorError, match="invalid label key"):
        parse_label_selector("bad key=x")


def test_field_selector_matches_nested_fields() -> None:
    """Field selectors compare dotted paths, with = and !=."""
    pod = {"metadata": {"name": "p"}, "status": {"phase": "Running"}}
    assert parse_field_selector("metadata.name=p,status.phase!=Failed")(pod)
    assert not parse_field_selector("metadata.name=q")(pod)


def test_field_selector_refuses_unsupported_fields() -> None:
    """A field the resource does not index is refused, as the API server does."""
    with pytest.raises(SelectorError, match=r"field label not supported: spec\.foo"):
        parse_field_selector("spec.foo=x", frozenset({"metadata.name"}))


@pytest.mark.parametrize(("text", "value"), [
    ("500m", Decimal("0.5")), ("2", Decimal(2)), ("1.5", Decimal("1.5")),
    ("128Mi", Decimal(128 * 2**20)), ("1G", Decimal(10**9)), ("1e3", Decimal(1000)),
    ("20Gi", Decimal(20 * 2**30)),
])
def test_quantities(text: str, value: Decimal) -> None:
    """Resource quantities in every suffix parse to their exact value."""
    assert parse_quantity(text) == value


def test_bad_quantity_is_rejected() -> None:
    """A malformed quantity raises with the API server's regular expression message."""
    with pytest.raises(SelectorError, match="quantities must match"):
        parse_quantity("lots")
