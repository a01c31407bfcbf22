"""Watch semantics of the emulated API server, over the wire.

Watches are driven with the official client's `kubernetes.watch.Watch` or with raw
HTTP where the client hides the wire (ERROR events, streaming-list bookmarks). The
module's cluster sends bookmarks every second (conftest `bookmark_seconds=1.0`).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from runner_driver.emulator import EmulatedCluster
from tests.conftest import wait_for

BUSYBOX = "busybox:1.36"
TRAPS_TERM = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"]

Event = dict[str, Any]


def pod_body(name: str, **spec: Any) -> dict[str, Any]:
    """A one-container busybox pod that exits promptly on SIGTERM."""
    body: dict[str, Any] = {
        "metadata": {"name": name, "labels": {"app": "watch-test"}},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
                 "automountServiceAccountToken": False,
                 "containers": [{"name": "main", "image": BUSYBOX, "command": TRAPS_TERM}]},
    }
    body["spec"].update(spec)
    return body


def collect(func: Any, *args: Any, until: Callable[[Event], bool] | None = None,
            **kwargs: Any) -> list[Event]:
    """Run a client watch to the end of its stream, or until an event satisfies `until`."""
    events: list[Event] = []
    stream = watch.Watch()
    for event in stream.stream(func, *args, **kwargs):
        events.append(event)
        if until is not None and until(event):
            stream.stop()
    return events


class Background:
    """A client watch consuming events on a thread while the test makes changes."""

    def __init__(self, func: Any, *args: Any, until: Callable[[Event], bool],
                 **kwargs: Any) -> None:
        self.events: list[Event] = []
        self.error: BaseException | None = None
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, args=(func, until, args, kwargs),
                                        daemon=True)
        self._thread.start()

    def _run(self, func: Any, until: Callable[[Event], bool], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> None:
        try:
            for event in self._watch.stream(func, *args, **kwargs):
                self.events.append(event)
                if until(event):
                    self._watch.stop()
        except BaseException as error:  # handed to the test thread
            self.error = error

    def wait_for(self, predicate: Callable[[Event], bool], what: str) -> Event:
        """Wait until an event satisfying `predicate` arrived; return it."""
        def found() -> Event | None:
            if self.error is not None:
                raise self.error
            return next((e for e in self.events if predicate(e)), None)

        return wait_for(found, timeout=20, what=what)

    def join(self) -> list[Event]:
        """Wait for the stream to end and return every event."""
        self._thread.join(20)
        assert not self._thread.is_alive(), "watch did not end"
        if self.error is not None:
            raise self.error
        return self.events


def raw_watch(cluster: EmulatedCluster, path: str, **query: str) -> list[Event]:
    """One watch request over plain HTTP, read to the end of the stream."""
    connection = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=15)
    try:
        connection.request("GET", f"{path}?{urllib.parse.urlencode({'watch': '1', **query})}",
                           headers={"Accept": "application/json",
                                    "Authorization": "Bearer emulated-admin-token"})
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("application/json")
        return [json.loads(line) for line in response if line.strip()]
    finally:
        connection.close()


def names(events: list[Event]) -> list[tuple[str, str]]:
    """Event types with object names."""
    return [(e["type"], e["raw_object"]["metadata"]["name"]) for e in events]


def list_rv(core: client.CoreV1Api, namespace: str) -> str:
    """The resourceVersion of a secret list in the namespace."""
    return str(core.list_namespaced_secret(namespace).metadata.resource_version)


def test_watch_replays_added_modified_deleted_in_order(core: client.CoreV1Api,
                                                       namespace: str) -> None:
    """A watch from an earlier resourceVersion replays ADDED, MODIFIED, DELETED in order."""
    rv = core.list_namespaced_pod(namespace).metadata.resource_version
    core.create_namespaced_pod(namespace, pod_body("other"))
    core.create_namespaced_pod(namespace, pod_body("p", nodeSelector={"never": "true"}))
    core.patch_namespaced_pod("p", namespace, {"metadata": {"labels": {"seen": "yes"}}})
    core.delete_namespaced_pod("p", namespace)
    stream = watch.Watch()
    events = []
    for event in stream.stream(core.list_namespaced_pod, namespace,
                               field_selector="metadata.name=p", resource_version=rv,
                               timeout_seconds=5):
        events.append(event)
        if event["type"] == "DELETED":
            stream.stop()
    types = [e["type"] for e in events]
    assert types[0] == "ADDED" and types[-1] == "DELETED"
    assert set(types[1:-1]) == {"MODIFIED"}
    assert all(e["object"].metadata.name == "p" for e in events)
    assert isinstance(events[0]["object"], client.V1Pod)
    versions = [int(e["object"].metadata.resource_version) for e in events]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert any((e["object"].metadata.labels or {}).get("seen") == "yes" for e in events[1:-1])
    # The client tracks the last resourceVersion it saw, to resume from there.
    assert stream.resource_version == events[-1]["object"].metadata.resource_version


def test_live_watch_follows_pod_lifecycle(core: client.CoreV1Api, namespace: str) -> None:
    """A running watch sees a pod added, Pending then Running, then deleted."""
    rv = core.list_namespaced_pod(namespace).metadata.resource_version
    live = Background(core.list_namespaced_pod, namespace, field_selector="metadata.name=life",
                      resource_version=rv, timeout_seconds=20,
                      until=lambda e: e["type"] == "DELETED")
    core.create_namespaced_pod(namespace, pod_body("life"))
    live.wait_for(lambda e: e["object"].status.phase == "Running", "pod Running")
    core.delete_namespaced_pod("life", namespace)
    events = live.join()
    assert events[0]["type"] == "ADDED"
    assert events[0]["object"].status.phase == "Pending"
    assert events[-1]["type"] == "DELETED"
    assert {e["type"] for e in events[1:-1]} == {"MODIFIED"}
    phases = [e["object"].status.phase for e in events]
    assert phases.index("Running") < len(phases) - 1
    terminating = [e for e in events if e["object"].metadata.deletion_timestamp is not None]
    assert terminating, "no event showed the deletionTimestamp"
    assert terminating[0]["type"] == "MODIFIED"


def test_label_selected_watch_filters(core: client.CoreV1Api, namespace: str) -> None:
    """A label-selected watch only sees objects matching the selector."""
    rv = list_rv(core, namespace)
    for name, labels in (("keep", {"app": "keep"}), ("other", {"app": "other"}),
                         ("bare", {})):
        core.create_namespaced_secret(namespace, {"metadata": {"name": name, "labels": labels}})
        core.patch_namespaced_secret(name, namespace, {"stringData": {"k": name}})
    for name in ("other", "bare", "keep"):
        core.delete_namespaced_secret(name, namespace)
    events = collect(core.list_namespaced_secret, namespace, label_selector="app=keep",
                     resource_version=rv, timeout_seconds=5,
                     until=lambda e: e["type"] == "DELETED")
    assert names(events) == [("ADDED", "keep"), ("MODIFIED", "keep"), ("DELETED", "keep")]
    everywhere = collect(core.list_secret_for_all_namespaces, label_selector="app in (other)",
                         resource_version=rv, timeout_seconds=5,
                         until=lambda e: e["type"] == "DELETED")
    assert names(everywhere) == [("ADDED", "other"), ("MODIFIED", "other"),
                                 ("DELETED", "other")]


def test_leaving_and_entering_selector_is_deleted_and_added(core: client.CoreV1Api,
                                                            namespace: str) -> None:
    """An object that stops matching a watch's selector is DELETED; matching again is ADDED."""
    core.create_namespaced_secret(namespace, {"metadata": {"name": "marker",
                                                           "labels": {"app": "keep"}}})

    def done(event: Event) -> bool:
        return bool(event["type"] == "DELETED"
                    and event["raw_object"]["metadata"]["name"] == "marker")

    # No resourceVersion: the watch starts with the marker, so later changes arrive live.
    live = Background(core.list_namespaced_secret, namespace, label_selector="app=keep",
                      timeout_seconds=20, until=done)
    live.wait_for(lambda e: e["type"] == "ADDED", "the initial ADDED of the marker")
    core.create_namespaced_secret(namespace, {"metadata": {"name": "s", "labels": {"app": "keep"}}})
    left = core.patch_namespaced_secret("s", namespace, {"metadata": {"labels": {"app": "gone"}}})
    core.patch_namespaced_secret("s", namespace, {"metadata": {"labels": {"app": "keep"}}})
    core.patch_namespaced_secret("s", namespace, {"metadata": {"labels": {"x": "1"}}})
    core.delete_namespaced_secret("marker", namespace)
    events = live.join()
    assert names(events) == [("ADDED", "marker"), ("ADDED", "s"), ("DELETED", "s"),
                             ("ADDED", "s"), ("MODIFIED", "s"), ("DELETED", "marker")]
    deleted = events[2]["object"]
    # The DELETED event carries the object as it last matched, at the new version.
    assert deleted.metadata.labels == {"app": "keep"}
    assert deleted.metadata.resource_version == left.metadata.resource_version
    # A watch replaying history from before the changes converts them the same way.
    replayed = collect(core.list_namespaced_secret, namespace, label_selector="app=keep",
                       resource_version=events[0]["object"].metadata.resource_version,
                       timeout_seconds=5, until=done)
    assert names(replayed) == names(events)[1:]


def test_field_selected_watch_on_phase(core: client.CoreV1Api, namespace: str) -> None:
    """A status.phase=Running watch gets ADDED on entering Running, DELETED on leaving it."""
    rv = core.list_namespaced_pod(namespace).metadata.resource_version
    live = Background(core.list_namespaced_pod, namespace, field_selector="status.phase=Running",
                      resource_version=rv, timeout_seconds=20,
                      until=lambda e: e["type"] == "DELETED")
    core.create_namespaced_pod(namespace, pod_body("phased"))
    live.wait_for(lambda e: e["type"] == "ADDED", "pod to enter Running")
    core.delete_namespaced_pod("phased", namespace)
    events = live.join()
    assert events[0]["type"] == "ADDED"
    assert events[-1]["type"] == "DELETED"
    assert all(e["object"].status.phase == "Running" for e in events)
    wait_for(lambda: core.list_namespaced_pod(namespace).items == [], what="pod removed")


def test_watch_without_resource_version_starts_with_current_objects(
        core: client.CoreV1Api, namespace: str) -> None:
    """A watch with no resourceVersion first sends every current object as ADDED."""
    for name in ("b", "a"):
        core.create_namespaced_config_map(namespace, {"metadata": {"name": name}})
    events = collect(core.list_namespaced_config_map, namespace, timeout_seconds=1)
    assert names(events) == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "kube-root-ca.crt")]


def test_watch_from_list_resource_version_replays_nothing_old(core: client.CoreV1Api,
                                                              namespace: str) -> None:
    """Watching from a list's resourceVersion skips what the list had and sees the next change."""
    core.create_namespaced_secret(namespace, {"metadata": {"name": "old"}})
    rv = list_rv(core, namespace)
    live = Background(core.list_namespaced_secret, namespace, resource_version=rv,
                      timeout_seconds=20, until=lambda e: e["type"] == "ADDED")
    time.sleep(0.2)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "new"}})
    events = live.join()
    assert names(events) == [("ADDED", "new")]
    assert int(events[0]["object"].metadata.resource_version) > int(rv)


def test_bookmarks_carry_resource_version(core: client.CoreV1Api, namespace: str) -> None:
    """allowWatchBookmarks yields BOOKMARK events with a resourceVersion about every second."""
    rv = list_rv(core, namespace)
    stream = watch.Watch()
    arrivals: list[tuple[float, Event]] = []
    started = time.monotonic()
    for event in stream.stream(core.list_namespaced_secret, namespace, resource_version=rv,
                               allow_watch_bookmarks=True, timeout_seconds=3):
        arrivals.append((time.monotonic() - started, event))
    bookmarks = [(at, e) for at, e in arrivals if e["type"] == "BOOKMARK"]
    assert len(bookmarks) >= 2, arrivals
    assert len(bookmarks) == len(arrivals)
    for _, event in bookmarks:
        assert event["raw_object"]["kind"] == "Secret"
        assert int(event["raw_object"]["metadata"]["resourceVersion"]) >= int(rv)
    # The first two are periodic; a last one may come right before the deadline.
    assert 0.5 <= bookmarks[0][0] <= 1.8, bookmarks
    assert 0.5 <= bookmarks[1][0] - bookmarks[0][0] <= 1.8, bookmarks
    # The client remembers the bookmark's version to resume from it.
    assert stream.resource_version == bookmarks[-1][1]["raw_object"]["metadata"][
        "resourceVersion"]


def test_timeout_seconds_ends_the_stream(core: client.CoreV1Api, namespace: str) -> None:
    """timeoutSeconds makes the server end an idle watch, and the client's stream ends."""
    started = time.monotonic()
    events = collect(core.list_namespaced_secret, namespace,
                     resource_version=list_rv(core, namespace), timeout_seconds=1)
    elapsed = time.monotonic() - started
    assert events == []
    assert 0.9 <= elapsed < 3, elapsed


def test_send_initial_events_ends_with_annotated_bookmark(core: client.CoreV1Api,
                                                          cluster: EmulatedCluster,
                                                          namespace: str) -> None:
    """sendInitialEvents streams current objects, then a BOOKMARK marking initial-events-end."""
    created = [core.create_namespaced_secret(namespace, {"metadata": {"name": n}})
               for n in ("one", "two")]
    events = raw_watch(cluster, f"/api/v1/namespaces/{namespace}/secrets",
                       sendInitialEvents="true", allowWatchBookmarks="true",
                       resourceVersionMatch="NotOlderThan", timeoutSeconds="1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events[:2]] == [
        ("ADDED", "one"), ("ADDED", "two")]
    marker = events[2]
    assert marker["type"] == "BOOKMARK"
    assert marker["object"]["kind"] == "Secret"
    assert marker["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert int(marker["object"]["metadata"]["resourceVersion"]) >= max(
        int(s.metadata.resource_version) for s in created)
    assert all(e["type"] == "BOOKMARK" for e in events[3:])


def test_compacted_resource_version_is_410_error_event(core: client.CoreV1Api,
                                                       cluster: EmulatedCluster,
                                                       namespace: str) -> None:
    """After compaction a watch from an older version gets one ERROR event: 410 Expired."""
    old = list_rv(core, namespace)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "after"}})
    compacted = cluster.compact()
    assert compacted > int(old)
    events = raw_watch(cluster, f"/api/v1/namespaces/{namespace}/secrets",
                       resourceVersion=old, timeoutSeconds="5")
    assert len(events) == 1
    assert events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert status["kind"] == "Status" and status["status"] == "Failure"
    assert status["code"] == 410 and status["reason"] == "Expired"
    assert status["message"].startswith(f"too old resource version: {old} ")
    # From a version at or after the compaction the watch is fine.
    fresh = raw_watch(cluster, f"/api/v1/namespaces/{namespace}/secrets",
                      resourceVersion=list_rv(core, namespace), timeoutSeconds="1")
    assert all(e["type"] != "ERROR" for e in fresh)


@pytest.mark.parametrize("with_timeout", [True, False], ids=["timeout", "no-timeout"])
def test_client_watch_raises_410_after_compaction(core: client.CoreV1Api,
                                                  cluster: EmulatedCluster, namespace: str,
                                                  with_timeout: bool) -> None:
    """The client's Watch turns the 410 ERROR into ApiException(410), retrying once at most."""
    old = list_rv(core, namespace)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "bump"}})
    cluster.compact()
    before = cluster.request_counts().get("watch secrets", 0)
    options: dict[str, Any] = {"timeout_seconds": 5} if with_timeout else {}
    with pytest.raises(ApiException) as caught:
        collect(core.list_namespaced_secret, namespace, resource_version=old, **options)
    assert caught.value.status == 410
    assert caught.value.reason.startswith("Expired: too old resource version")
    requests = cluster.request_counts().get("watch secrets", 0) - before
    # With timeout_seconds the client never retries; without, it retries the same
    # (still too old) version once before giving up.
    assert requests == (1 if with_timeout else 2)
