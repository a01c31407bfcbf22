"""The emulated control plane's loops: scheduler, garbage collector, namespaces, node lifecycle.

These are the controllers a CI driver meets on a real cluster: the scheduler binds
pods to the node or explains why it cannot (`FailedScheduling`); the garbage
collector deletes objects whose owner references point at deleted objects; the
namespace controller seeds each namespace (the `default` service account and
`kube-root-ca.crt`) and empties it on deletion; the node lifecycle controller taints
a NotReady node and evicts its pods after their toleration; the resource quota
controller keeps each quota's `status.used` current, and the quota admission check
runs here because it needs the namespace's objects. The kubelet runs pods; this
module only decides and records.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time

from . import images, quota, scheduler
from .kubelet import Kubelet, PodRun
from .store import RESOURCES, ApiError, Obj, Store, WatchEvent, now_rfc3339

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public")


class ControlPlane:
    """Scheduler, garbage collector, namespace and node-lifecycle controllers."""

    def __init__(self, store: Store, kubelet: Kubelet) -> None:
        self.store = store
        self.kubelet = kubelet
        self.events = kubelet.events
        self._schedule_pending = False
        self._quota_pending: set[str] = set()
        store.add_listener(self._on_change)

    def start(self) -> None:
        """Create the default namespaces and start the periodic loop."""
        for namespace in DEFAULT_NAMESPACES:
            self.store.create("namespaces", "", {
                "metadata": {"name": namespace,
                             "labels": {"kubernetes.io/metadata.name": namespace}},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
        self.kubelet.spawn(self._periodic())

    def _on_change(self, event: WatchEvent) -> None:
        if self.kubelet.closing:
            return
        loop = asyncio.get_running_loop()
        if event.resource == "namespaces" and event.type == "ADDED":
            loop.call_soon(self._namespace_added, event.obj["metadata"]["name"])
        if event.resource == "pods" and event.type in ("ADDED", "DELETED"):
            self._request_scheduling()
        if event.resource in ("pods", "secrets", "configmaps") and event.type == "DELETED":
            loop.call_soon(self._collect_dependents, event.obj["metadata"]["uid"])
        # A quota's own status writes (and spec edits, which the API server folds into
        # its status) need no recount; every other change in its namespace may.
        if event.namespace and event.resource not in quota.IGNORED \
                and not (event.resource == "resourcequotas" and event.type == "MODIFIED") \
                and any(True for _ in self.store.items("resourcequotas", event.namespace)):
            if not self._quota_pending:
                loop.call_soon(self._refresh_pending_quotas)
            self._quota_pending.add(event.namespace)

    async def _periodic(self) -> None:
        """Retry scheduling and collect orphans about twice a second."""
        while not self.kubelet.closing:
            await asyncio.sleep(0.5)
            self._request_scheduling()
            self._collect_orphans()

    def _namespace_added(self, name: str) -> None:
        if self.store.find("serviceaccounts", name, "default") is None:
            self.store.create("serviceaccounts", name, {"metadata": {"name": "default"}})
        if self.store.find("configmaps", name, "kube-root-ca.crt") is None:
            bundle = images.host_ca_bundle()
            ca = bundle.read_text() if bundle else ""
            self.store.create("configmaps", name, {
                "metadata": {"name": "kube-root-ca.crt",
                             "annotations": {"kubernetes.io/description":
                                             "Contains a CA bundle that can be used to verify "
                                             "the kube-apiserver when using internal endpoints "
                                             "such as the internal service IP or "
                                             "kubernetes.default.svc. No other usage is "
                                             "guaranteed across distributions of Kubernetes "
                                             "clusters."}},
                "data": {"ca.crt": ca}})

    def _request_scheduling(self) -> None:
        if not self._schedule_pending:
            self._schedule_pending = True
            asyncio.get_running_loop().call_soon(self._schedule)

    def _schedule(self) -> None:
        self._schedule_pending = False
        node = self.store.find("nodes", "", self.kubelet.settings.name)
        if node is None:
            return
        for pod in list(self.store.items("pods")):
            if pod["spec"].get("nodeName") or pod["metadata"].get("deletionTimestamp"):
                continue
            on_node = [p for p in self.store.items("pods")
                       if p["spec"].get("nodeName") == self.kubelet.settings.name]
            reasons = scheduler.unschedulable_reasons(pod, node, on_node)
            if reasons:
                message = scheduler.failure_message(reasons)
                condition = {"type": "PodScheduled", "status": "False", "lastProbeTime": None,
                             "lastTransitionTime": now_rfc3339(), "reason": "Unschedulable",
                             "message": message}
                current = [c for c in pod["status"].get("conditions", [])
                           if c["type"] == "PodScheduled"]
                if not current or current[0].get("message") != message:
                    pod["status"]["conditions"] = [condition]
                    self.store.touch("pods", pod)
                    self.events.record(pod, "Warning", "FailedScheduling", message,
                                       component="default-scheduler")
                continue
            pod["spec"]["nodeName"] = self.kubelet.settings.name
            pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True",
                                            "lastProbeTime": None,
                                            "lastTransitionTime": now_rfc3339()}]
            self.store.touch("pods", pod)
            meta = pod["metadata"]
            self.events.record(pod, "Normal", "Scheduled",
                               f"Successfully assigned {meta['namespace']}/{meta['name']} to "
                               f"{self.kubelet.settings.name}", component="default-scheduler")

    # Resource quotas

    def _lister(self, namespace: str) -> quota.Lister:
        return lambda resource: self.store.items(resource, namespace)

    def quota_status(self, resource_quota: Obj) -> Obj:
        """A quota's `status` now: `hard` from its spec, `used` over its namespace."""
        namespace = resource_quota["metadata"].get("namespace", "")
        return quota.status(resource_quota, self._lister(namespace), time.time(),
                            [r for r, spec in RESOURCES.items() if spec.namespaced])

    def refresh_quotas(self, namespace: str | None = None) -> None:
        """Recount quotas (in one namespace, or all) and store any status that changed."""
        for resource_quota in list(self.store.items("resourcequotas", namespace)):
            current = self.quota_status(resource_quota)
            if resource_quota.get("status") != current:
                resource_quota["status"] = current
                self.store.touch("resourcequotas", resource_quota)

    def _refresh_pending_quotas(self) -> None:
        pending, self._quota_pending = self._quota_pending, set()
        for namespace in sorted(pending):
            self.refresh_quotas(namespace)

    def admit_quota(self, resource: str, namespace: str, obj: Obj) -> None:
        """The ResourceQuota admission plugin for a create in `namespace`.

        Quotas are checked in name order (a real server's order is its cache's).

        Raises:
            ApiError: 403 Forbidden when a quota refuses the object.
        """
        quotas = sorted(self.store.items("resourcequotas", namespace),
                        key=lambda q: str(q["metadata"]["name"]))
        if not quotas:
            return
        now = time.time()
        served = [r for r, spec in RESOURCES.items() if spec.namespaced]
        lister = self._lister(namespace)
        quota.admit(resource, obj, quotas,
                    lambda q: quota.used(q, lister, now, served), now)

    def _collect_orphans(self) -> None:
        for resource in ("pods", "secrets", "configmaps"):
            for obj in list(self.store.items(resource)):
                owners = obj["metadata"].get("ownerReferences") or []
                if owners and not any(self.store.uid_exists(o.get("uid", "")) for o in owners):
                    self._delete_dependent(resource, obj)

    def _collect_dependents(self, uid: str) -> None:
        for resource in ("pods", "secrets", "configmaps"):
            for obj in list(self.store.items(resource)):
                owners = obj["metadata"].get("ownerReferences") or []
                if any(o.get("uid") == uid for o in owners) and not any(
                        self.store.uid_exists(o.get("uid", "")) for o in owners):
                    self._delete_dependent(resource, obj)

    def _delete_dependent(self, resource: str, obj: Obj) -> None:
        meta = obj["metadata"]
        with contextlib.suppress(ApiError):
            if resource == "pods":
                self.kubelet.delete_pod(meta["namespace"], meta["name"], None)
            else:
                self.store.remove(resource, meta["namespace"], meta["name"])

    def evict(self, namespace: str, name: str) -> None:
        """Evict a pod as the Eviction API does: mark DisruptionTarget, then delete it.

        Raises:
            ApiError: 404 when the pod does not exist.
        """
        pod = self.store.find("pods", namespace, name)
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found',
                           {"name": name, "kind": "pods"})
        pod["status"].setdefault("conditions", []).append({
            "type": "DisruptionTarget", "status": "True", "lastProbeTime": None,
            "lastTransitionTime": now_rfc3339(), "reason": "EvictionByEvictionAPI",
            "message": "Eviction API: evicting"})
        self.store.touch("pods", pod)
        self.events.record(pod, "Normal", "Killing", "Stopping pod (evicted)")
        self.kubelet.delete_pod(namespace, name, None)

    def set_node_ready(self, ready: bool) -> None:
        """Take the node NotReady (or back), with the taints and pod effects that follow."""
        self.kubelet.node_ready = ready
        node = self.store.find("nodes", "", self.kubelet.settings.name)
        if node is None:
            return
        node["status"]["conditions"] = self.kubelet.node_conditions(ready)
        taints = [t for t in node["spec"].get("taints") or []
                  if t.get("key") != "node.kubernetes.io/not-ready"]
        if not ready:
            taints += [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},
                       {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute",
                        "timeAdded": now_rfc3339()}]
        node["spec"]["taints"] = taints
        self.store.touch("nodes", node)
        if not ready:
            self.events.record(node, "Normal", "NodeNotReady",
                               f"Node {self.kubelet.settings.name} status is now: NodeNotReady",
                               component="node-controller")
            for run in list(self.kubelet.runs.values()):
                pod = self.store.find("pods", run.namespace, run.name)
                if pod is None:
                    continue
                for condition in pod["status"].get("conditions", []):
                    if condition["type"] in ("Ready", "ContainersReady"):
                        condition["status"] = "False"
                self.store.touch("pods", pod)
                self.events.record(pod, "Warning", "NodeNotReady", "Node is not ready",
                                   component="node-controller")
                self.kubelet.spawn(self._evict_after_not_ready(run))
        else:
            # The kubelet reports its pods' readiness again once the node is back.
            for run in list(self.kubelet.runs.values()):
                self.kubelet.publish(run)
        self._request_scheduling()

    async def _evict_after_not_ready(self, run: PodRun) -> None:
        """The taint manager: evict a pod that does not tolerate not-ready for ever."""
        await asyncio.sleep(self.kubelet.settings.not_ready_eviction_seconds)
        pod = self.store.find("pods", run.namespace, run.name)
        if self.kubelet.node_ready or pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        # A toleration of the NoExecute taint without tolerationSeconds keeps the pod.
        taint = {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}
        if any(t.get("tolerationSeconds") is None and scheduler.tolerates([t], taint)
               for t in pod["spec"].get("tolerations") or []):
            return
        pod["status"].setdefault("conditions", []).append({
            "type": "DisruptionTarget", "status": "True", "lastProbeTime": None,
            "lastTransitionTime": now_rfc3339(), "reason": "DeletionByTaintManager",
            "message": "Taint manager: deleting due to NoExecute taint"})
        self.store.touch("pods", pod)
        self.events.record(pod, "Normal", "TaintManagerEviction",
                           f"Marking for deletion Pod {run.namespace}/{run.name}",
                           component="taint-eviction-controller")
        self.kubelet.delete_pod(run.namespace, run.name, None)

    def delete_namespace(self, name: str) -> Obj:
        """Start namespace deletion: mark it Terminating and delete everything in it."""
        namespace = self.store.find("namespaces", "", name)
        if namespace is None:
            return self.store.get("namespaces", "", name)
        if not namespace["metadata"].get("deletionTimestamp"):
            namespace["metadata"]["deletionTimestamp"] = now_rfc3339()
            namespace.setdefault("status", {})["phase"] = "Terminating"
            self.store.touch("namespaces", namespace)
            self.kubelet.spawn(self._drain_namespace(name))
        return copy.deepcopy(namespace)

    async def _drain_namespace(self, name: str) -> None:
        for pod in list(self.store.items("pods", name)):
            with contextlib.suppress(ApiError):
                self.kubelet.delete_pod(name, pod["metadata"]["name"], None)
        while any(True for _ in self.store.items("pods", name)):
            await asyncio.sleep(0.1)
        for resource, spec in RESOURCES.items():
            if spec.namespaced:
                for obj in list(self.store.items(resource, name)):
                    with contextlib.suppress(ApiError):
                        self.store.remove(resource, name, obj["metadata"]["name"])
        with contextlib.suppress(ApiError):
            self.store.remove("namespaces", "", name)
