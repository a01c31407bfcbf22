"""Kubernetes Event objects, recorded the way the kubelet and the scheduler record them.

Drivers show users a pod's warning events when it cannot start, so the emulator
records the same reasons, messages, sources and field paths, and counts repeats on
one event as the kubelet's event correlator does. Nothing here decides when an event
happens.
"""

from __future__ import annotations

import time

from .store import Obj, Store, now_rfc3339


class EventRecorder:
    """Creates `Event` objects the way the kubelet and scheduler do, deduplicating repeats."""

    def __init__(self, store: Store, node: str) -> None:
        self._store = store
        self._node = node

    def record(self, obj: Obj, event_type: str, reason: str, message: str,
               component: str = "kubelet", field_path: str | None = None) -> None:
        """Record (or count again) one event about `obj`."""
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        if self._store.find("namespaces", "", namespace) is None:
            return
        stamp = now_rfc3339()
        for existing in self._store.items("events", namespace):
            about = existing["involvedObject"]
            if (about.get("uid") == meta.get("uid") and existing["reason"] == reason
                    and existing["message"] == message
                    and about.get("fieldPath") == field_path):
                existing["count"] = existing.get("count", 1) + 1
                existing["lastTimestamp"] = stamp
                self._store.touch("events", existing)
                return
        involved: Obj = {"kind": obj.get("kind", "Pod"), "namespace": meta.get("namespace", ""),
                         "name": meta["name"], "uid": meta.get("uid", ""), "apiVersion": "v1",
                         "resourceVersion": meta.get("resourceVersion", "")}
        if field_path:
            involved["fieldPath"] = field_path
        event = {
            # The kubelet names events after the object and the time in nanoseconds.
            "metadata": {"name": f"{meta['name']}.{time.time_ns():x}"},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "source": {"component": component} | ({"host": self._node}
                                                   if component == "kubelet" else {}),
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "type": event_type,
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": self._node if component == "kubelet" else "",
        }
        self._store.create("events", namespace, event)
