"""The emulated API server's object store: resource versions, history and watches.

It gives every object what etcd and the API server give it (uid, a global
`resourceVersion`, `creationTimestamp`, `generateName` resolution) and keeps a bounded
history of changes so a watch can resume from a resource version, or get `410 Gone`
when that version has been compacted away, exactly as a real cluster answers.

All methods run on the emulator's event loop thread; nothing here is thread-safe, and
nothing here knows about HTTP, containers or scheduling.
"""

from __future__ import annotations

import asyncio
import copy
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class ResourceType:
    """One REST resource of a served API group (core v1, or RBAC), as discovery describes it."""

    name: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ("create", "delete", "get", "list", "patch", "update", "watch")
    field_selectors: frozenset[str] = frozenset({"metadata.name", "metadata.namespace"})
    group: str = ""  # "" is the core group, served under /api/v1

    @property
    def api_version(self) -> str:
        """The objects' `apiVersion`: `v1`, or `<group>/v1`."""
        return f"{self.group}/v1" if self.group else "v1"


RBAC_GROUP = "rbac.authorization.k8s.io"


RESOURCES: dict[str, ResourceType] = {
    r.name: r
    for r in (
        ResourceType("namespaces", "Namespace", False, ("ns",),
                     field_selectors=frozenset({"metadata.name", "status.phase"})),
        ResourceType("nodes", "Node", False, ("no",),
                     ("get", "list", "patch", "update", "watch"),
                     frozenset({"metadata.name", "spec.unschedulable"})),
        ResourceType("pods", "Pod", True, ("po",),
                     field_selectors=frozenset({
                         "metadata.name", "metadata.namespace", "spec.nodeName",
                         "spec.restartPolicy", "spec.schedulerName",
                         "spec.serviceAccountName", "status.phase", "status.podIP",
                         "status.nominatedNodeName"})),
        ResourceType("secrets", "Secret", True,
                     field_selectors=frozenset({"metadata.name", "metadata.namespace", "type"})),
        ResourceType("configmaps", "ConfigMap", True, ("cm",)),
        ResourceType("serviceaccounts", "ServiceAccount", True, ("sa",)),
        ResourceType("resourcequotas", "ResourceQuota", True, ("quota",)),
        ResourceType("events", "Event", True, ("ev",),
                     field_selectors=frozenset({
                         "metadata.name", "metadata.namespace", "involvedObject.kind",
                         "involvedObject.namespace", "involvedObject.name",
                         "involvedObject.uid", "involvedObject.apiVersion",
                         "involvedObject.resourceVersion", "involvedObject.fieldPath",
                         "reason", "reportingComponent", "source", "type"})),
        # RBAC objects: the emulated API server authorizes every request of a service
        # account against them (see `rbac`).
        ResourceType("roles", "Role", True, group=RBAC_GROUP),
        ResourceType("rolebindings", "RoleBinding", True, group=RBAC_GROUP),
        ResourceType("clusterroles", "ClusterRole", False, group=RBAC_GROUP),
        ResourceType("clusterrolebindings", "ClusterRoleBinding", False, group=RBAC_GROUP),
    )
}


class ApiError(Exception):
    """An error the API server returns as a `Status` object with an HTTP code."""

    def __init__(self, code: int, reason: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> Obj:
        """Render as the `metav1.Status` body a real API server sends."""
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def not_found(resource: str, name: str) -> ApiError:
    """The 404 a real server gives for a missing object."""
    return ApiError(404, "NotFound", f'{resource} "{name}" not found',
                    {"name": name, "kind": resource})


def now_rfc3339() -> str:
    """Current time as Kubernetes serialises timestamps (second precision, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class WatchEvent:
    """One change, as stored in history and sent to watchers."""

    rv: int
    type: str
    resource: str
    namespace: str
    obj: Obj
    # The object as it was before a MODIFIED change, for selector transitions.
    prev: Obj | None = None


def visible(event: WatchEvent, predicate: Callable[[Obj], bool]) -> WatchEvent | None:
    """The event a filtered watch sees, as the API server's watch cache converts it.

    A change that makes an object start matching the filter is ADDED; one that makes it
    stop matching is DELETED, carrying the previous object at the new resource version.
    """
    if event.type != "MODIFIED" or event.prev is None:
        return event if predicate(event.obj) else None
    now, before = predicate(event.obj), predicate(event.prev)
    if now and before:
        return event
    if now:
        return WatchEvent(event.rv, "ADDED", event.resource, event.namespace, event.obj)
    if before:
        old = copy.deepcopy(event.prev)
        old["metadata"]["resourceVersion"] = str(event.rv)
        return WatchEvent(event.rv, "DELETED", event.resource, event.namespace, old)
    return None


@dataclass(eq=False)
class Watcher:
    """A subscription created by one watch request."""

    resource: str
    namespace: str | None
    predicate: Callable[[Obj], bool]
    queue: asyncio.Queue[WatchEvent | None] = field(default_factory=asyncio.Queue)


_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def validate_name(resource: str, name: str) -> str | None:
    """Return the API server's complaint about an object name, or None if it is valid."""
    if resource == "namespaces":
        if len(name) > 63 or not _DNS_LABEL.match(name):
            return ("a lowercase RFC 1123 label must consist of lower case alphanumeric "
                    "characters or '-', and must start and end with an alphanumeric "
                    "character (e.g. 'my-name',  or '123-abc', regex used for validation "
                    "is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
        return None
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        return ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric "
                "character (e.g. 'example.com', regex used for validation is "
                "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
    return None


class Store:
    """Objects by resource, namespace and name, with a global resource version."""

    def __init__(self, history_limit: int = 2000) -> None:
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {r: {} for r in RESOURCES}
        self._rv = 1
        self._history: deque[WatchEvent] = deque(maxlen=history_limit)
        self._compacted_rv = 1
        self._watchers: set[Watcher] = set()
        self._listeners: list[Callable[[WatchEvent], None]] = []
        # Each live object as last emitted, the "previous object" of its next change.
        self._last: dict[tuple[str, str, str], Obj] = {}

    @property
    def resource_version(self) -> int:
        """The newest resource version handed out."""
        return self._rv

    def add_listener(self, listener: Callable[[WatchEvent], None]) -> None:
        """Call `listener` synchronously on every change (the controllers use this)."""
        self._listeners.append(listener)

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _emit(self, event_type: str, resource: str, obj: Obj) -> None:
        namespace = obj["metadata"].get("namespace", "")
        key = (resource, namespace, obj["metadata"]["name"])
        previous = self._last.pop(key, None)
        event = WatchEvent(int(obj["metadata"]["resourceVersion"]), event_type, resource,
                           namespace, copy.deepcopy(obj),
                           previous if event_type == "MODIFIED" else None)
        if event_type != "DELETED":
            self._last[key] = copy.deepcopy(obj)
        if len(self._history) == self._history.maxlen:
            self._compacted_rv = self._history[0].rv
        self._history.append(event)
        for watcher in list(self._watchers):
            if watcher.resource == resource and watcher.namespace in (None, namespace):
                seen = visible(event, watcher.predicate)
                if seen is not None:
                    watcher.queue.put_nowait(seen)
        for listener in self._listeners:
            listener(event)

    def compact(self) -> int:
        """Forget all history, as etcd compaction does; return the oldest valid version."""
        self._history.clear()
        self._compacted_rv = self._rv
        return self._rv

    # Reads

    def get(self, resource: str, namespace: str, name: str) -> Obj:
        """Return a copy of one object.

        Raises:
            ApiError: 404 when it does not exist.
        """
        obj = self._objects[resource].get((namespace, name))
        if obj is None:
            raise not_found(resource, name)
        return copy.deepcopy(obj)

    def find(self, resource: str, namespace: str, name: str) -> Obj | None:
        """Return the stored object itself (not a copy), or None; for controllers only."""
        return self._objects[resource].get((namespace, name))

    def items(self, resource: str, namespace: str | None = None) -> Iterator[Obj]:
        """Iterate stored objects (not copies) of one resource, optionally in one namespace."""
        for (ns, _), obj in list(self._objects[resource].items()):
            if namespace is None or ns == namespace:
                yield obj

    def select(self, resource: str, namespace: str | None,
             predicate: Callable[[Obj], bool]) -> tuple[list[Obj], int]:
        """Return copies of matching objects sorted by namespace and name, and the list RV."""
        found = [copy.deepcopy(o) for o in self.items(resource, namespace) if predicate(o)]
        found.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return found, self._rv

    def uid_exists(self, uid: str) -> bool:
        """Whether any stored object has this uid (owner references point by uid)."""
        return any(o["metadata"].get("uid") == uid
                   for objects in self._objects.values() for o in objects.values())

    # Writes

    def generate_name(self, resource: str, namespace: str, meta: Obj) -> None:
        """Give metadata without a name one from its `generateName`, as the server does."""
        if meta.get("name") or not meta.get("generateName"):
            return
        key_namespace = namespace if RESOURCES[resource].namespaced else ""
        for _ in range(20):
            suffix = "".join(_GENERATE_ALPHABET[b % len(_GENERATE_ALPHABET)]
                             for b in uuid.uuid4().bytes[:5])
            candidate = meta["generateName"] + suffix
            if (key_namespace, candidate) not in self._objects[resource]:
                meta["name"] = candidate
                return

    def create(self, resource: str, namespace: str, obj: Obj) -> Obj:
        """Store a new object, filling in server-set metadata.

        Raises:
            ApiError: 409 when the name is taken, 422 when it is invalid, 404 when the
                namespace does not exist.
        """
        meta = obj.setdefault("metadata", {})
        kind = RESOURCES[resource].kind
        if RESOURCES[resource].namespaced:
            if ("", namespace) not in self._objects["namespaces"]:
                raise not_found("namespaces", namespace)
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        self.generate_name(resource, namespace, meta)
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid",
                           f"{kind} \"\" is invalid: metadata.name: Required value: name or "
                           f"generateName is required",
                           {"kind": kind, "causes": [{"reason": "FieldValueRequired",
                                                      "message": "Required value: name or "
                                                      "generateName is required",
                                                      "field": "metadata.name"}]})
        problem = validate_name(resource, name)
        if problem:
            raise ApiError(422, "Invalid",
                           f"{kind} \"{name}\" is invalid: metadata.name: Invalid value: "
                           f"\"{name}\": {problem}",
                           {"name": name, "kind": kind,
                            "causes": [{"reason": "FieldValueInvalid",
                                        "message": f"Invalid value: \"{name}\": {problem}",
                                        "field": "metadata.name"}]})
        key = (namespace if RESOURCES[resource].namespaced else "", name)
        if key in self._objects[resource]:
            raise ApiError(409, "AlreadyExists", f'{resource} "{name}" already exists',
                           {"name": name, "kind": resource})
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["resourceVersion"] = str(self._next_rv())
        meta.pop("deletionTimestamp", None)
        obj["kind"] = kind
        obj["apiVersion"] = RESOURCES[resource].api_version
        self._objects[resource][key] = obj
        self._emit("ADDED", resource, obj)
        return copy.deepcopy(obj)

    def replace(self, resource: str, namespace: str, name: str, obj: Obj) -> Obj:
        """Store a new version of an existing object and notify watchers."""
        key = (namespace if RESOURCES[resource].namespaced else "", name)
        if key not in self._objects[resource]:
            raise not_found(resource, name)
        obj["metadata"]["resourceVersion"] = str(self._next_rv())
        self._objects[resource][key] = obj
        self._emit("MODIFIED", resource, obj)
        return copy.deepcopy(obj)

    def touch(self, resource: str, obj: Obj) -> None:
        """Record that a controller changed a stored object in place (new RV, MODIFIED)."""
        meta = obj["metadata"]
        self.replace(resource, meta.get("namespace", ""), meta["name"], obj)

    def remove(self, resource: str, namespace: str, name: str) -> Obj:
        """Remove an object for good (the end of deletion) and send DELETED."""
        key = (namespace if RESOURCES[resource].namespaced else "", name)
        obj = self._objects[resource].pop(key, None)
        if obj is None:
            raise not_found(resource, name)
        obj["metadata"]["resourceVersion"] = str(self._next_rv())
        self._emit("DELETED", resource, obj)
        return copy.deepcopy(obj)

    # Watches

    def watch(self, resource: str, namespace: str | None, predicate: Callable[[Obj], bool],
              since_rv: int | None) -> tuple[Watcher, list[WatchEvent]]:
        """Subscribe, returning the watcher and the events to send before live ones.

        With no resource version the initial events are synthetic ADDED events for
        every matching object; with one, the stored history after it.

        Raises:
            ApiError: 410 Expired when `since_rv` is older than the retained history.
        """
        watcher = Watcher(resource, namespace, predicate)
        if since_rv is None:
            initial = [WatchEvent(int(o["metadata"]["resourceVersion"]), "ADDED", resource,
                                  o["metadata"].get("namespace", ""), o)
                       for o in self.select(resource, namespace, predicate)[0]]
        else:
            if since_rv < self._compacted_rv:
                raise ApiError(410, "Expired",
                               f"too old resource version: {since_rv} ({self._compacted_rv})")
            initial = [seen for e in self._history
                       if e.rv > since_rv and e.resource == resource
                       and namespace in (None, e.namespace)
                       and (seen := visible(e, predicate)) is not None]
        self._watchers.add(watcher)
        return watcher, initial

    def unwatch(self, watcher: Watcher) -> None:
        """End a subscription."""
        self._watchers.discard(watcher)

    def close_all_watches(self) -> None:
        """End every watch stream (server shutdown)."""
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)
        self._watchers.clear()
