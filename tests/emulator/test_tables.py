"""Server-side printing matches kubectl's printers for the columns users read."""

from __future__ import annotations

from typing import Any

from runner_driver.emulator.tables import render, wanted


def pod(phase: str, *states: dict[str, Any], **status: Any) -> dict[str, Any]:
    """A pod with one container per state."""
    return {"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": f"c{i}"} for i in range(len(states))]},
            "status": {"phase": phase, **status, "containerStatuses": [
                {"name": f"c{i}", "state": s, "ready": "running" in s, "restartCount": 0}
                for i, s in enumerate(states)]}}


def cells(obj: dict[str, Any]) -> list[Any]:
    """The first row's cells for a pod."""
    table = render("pods", [obj], "Metadata", 7)
    row: list[Any] = table["rows"][0]["cells"]
    return row


def test_accept_header_selects_tables() -> None:
    """Only an Accept header naming as=Table asks for a table."""
    assert wanted("application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
    assert not wanted("application/json")


def test_pod_row_ready_and_status() -> None:
    """READY counts ready containers; STATUS shows the phase while all run."""
    row = cells(pod("Running", {"running": {}}, {"running": {}}))
    assert row[:4] == ["p", "2/2", "Running", "0"]


def test_waiting_reason_and_terminated_reasons_replace_the_phase() -> None:
    """A waiting reason, or Completed/Error, is what kubectl prints instead of the phase."""
    assert cells(pod("Pending", {"waiting": {"reason": "ImagePullBackOff"}}))[2] == \
        "ImagePullBackOff"
    assert cells(pod("Succeeded", {"terminated": {"exitCode": 0, "reason": "Completed"}}))[2] \
        == "Completed"
    assert cells(pod("Failed", {"terminated": {"exitCode": 3, "reason": "Error"}}))[2] == "Error"
    assert cells(pod("Failed", {"terminated": {"exitCode": 137}}))[2] == "ExitCode:137"


def test_pod_reason_shows_unless_a_container_has_one() -> None:
    """A pod-level reason is shown, but a container's reason wins, as in kubectl."""
    assert cells(pod("Failed", {"running": {}}, reason="Evicted"))[2] == "Evicted"
    assert cells(pod("Failed", {"terminated": {"exitCode": 137, "reason": "Error"}},
                     reason="DeadlineExceeded"))[2] == "Error"


def test_rows_carry_partial_metadata_by_default() -> None:
    """Rows carry PartialObjectMetadata unless the whole object is asked for."""
    obj = pod("Running", {"running": {}})
    assert render("pods", [obj], "Metadata", 1)["rows"][0]["object"]["kind"] == \
        "PartialObjectMetadata"
    assert render("pods", [obj], "Object", 1)["rows"][0]["object"] is obj
    table = render("secrets", [{"metadata": {"name": "s"}, "type": "Opaque",
                                "data": {"a": "", "b": ""}}], "Metadata", 1)
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Type", "Data", "Age"]
    assert table["rows"][0]["cells"][:3] == ["s", "Opaque", "2"]
