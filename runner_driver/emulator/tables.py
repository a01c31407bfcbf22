"""Server-side printing: objects as the `meta.k8s.io/v1` Table that `kubectl get` asks for.

kubectl renders whatever columns the server sends, so these columns and cell texts
(READY `1/2`, STATUS `Completed` or `ImagePullBackOff`, AGE `5s`) follow kubectl's own
printers for each resource. Pure functions; no HTTP here.
"""

from __future__ import annotations

from datetime import UTC, datetime

from .store import Obj


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    seconds = int((datetime.now(UTC) - then).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 600:
        return f"{seconds // 60}m{seconds % 60}s"
    if seconds < 3 * 3600:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _terminated_text(terminated: Obj) -> str:
    if terminated.get("reason"):
        return str(terminated["reason"])
    if terminated.get("signal"):
        return f"Signal:{terminated['signal']}"
    return f"ExitCode:{terminated.get('exitCode', 0)}"


def _pod_status_text(pod: Obj) -> str:
    """The STATUS column as kubectl's pod printer computes it (printers.go printPod)."""
    status = pod.get("status", {})
    phase = status.get("phase", "Pending")
    reason = status.get("reason") or phase
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    init_statuses = status.get("initContainerStatuses") or []
    initializing = False
    for index, c in enumerate(init_statuses):
        state = c.get("state", {})
        if "terminated" in state and state["terminated"].get("exitCode") == 0:
            continue
        if "terminated" in state:
            reason = "Init:" + _terminated_text(state["terminated"])
        elif "waiting" in state and state["waiting"].get("reason") not in (None, "",
                                                                           "PodInitializing"):
            reason = f"Init:{state['waiting']['reason']}"
        else:
            reason = f"Init:{index}/{len(pod['spec'].get('initContainers') or init_statuses)}"
        initializing = True
        break
    if not initializing or conditions.get("Initialized") == "True":
        has_running = False
        # kubectl walks the statuses backwards, so the first container's state wins.
        for c in reversed(status.get("containerStatuses") or []):
            state = c.get("state", {})
            if "waiting" in state and state["waiting"].get("reason"):
                reason = state["waiting"]["reason"]
            elif "terminated" in state:
                reason = _terminated_text(state["terminated"])
            elif c.get("ready") and "running" in state:
                has_running = True
        if reason == "Completed" and has_running:
            reason = "Running" if conditions.get("Ready") == "True" else "NotReady"
    if pod["metadata"].get("deletionTimestamp") and phase not in ("Succeeded", "Failed"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    return str(reason)


def render(resource: str, objects: list[Obj], include: str, rv: int) -> Obj:
    """Render objects as a meta.k8s.io Table, as `kubectl get` asks for."""
    def column(name: str, kind: str = "string", fmt: str = "", priority: int = 0) -> Obj:
        return {"name": name, "type": kind, "format": fmt, "description": name,
                "priority": priority}

    rows = []
    if resource == "pods":
        columns = [column("Name", fmt="name"), column("Ready"), column("Status"),
                   column("Restarts", "string"), column("Age"), column("IP", priority=1),
                   column("Node", priority=1), column("Nominated Node", priority=1),
                   column("Readiness Gates", priority=1)]
        for pod in objects:
            statuses = pod.get("status", {}).get("containerStatuses") or []
            ready = sum(1 for c in statuses if c.get("ready"))
            restarts = sum(int(c.get("restartCount", 0)) for c in statuses)
            cells = [pod["metadata"]["name"], f"{ready}/{len(pod['spec']['containers'])}",
                     _pod_status_text(pod), str(restarts),
                     _age(pod["metadata"].get("creationTimestamp")),
                     pod.get("status", {}).get("podIP") or "<none>",
                     pod["spec"].get("nodeName") or "<none>", "<none>", "<none>"]
            rows.append((cells, pod))
    elif resource == "nodes":
        columns = [column("Name", fmt="name"), column("Status"), column("Roles"), column("Age"),
                   column("Version"), column("Internal-IP", priority=1),
                   column("External-IP", priority=1), column("OS-Image", priority=1),
                   column("Kernel-Version", priority=1), column("Container-Runtime", priority=1)]
        for node in objects:
            info = node["status"].get("nodeInfo", {})
            addresses = {a["type"]: a["address"] for a in node["status"].get("addresses", [])}
            node_ready = next((c["status"] for c in node["status"].get("conditions", [])
                               if c["type"] == "Ready"), "Unknown")
            roles = ",".join(k.split("/", 1)[1] for k in node["metadata"].get("labels", {})
                             if k.startswith("node-role.kubernetes.io/")) or "<none>"
            cells = [node["metadata"]["name"], "Ready" if node_ready == "True" else "NotReady",
                     roles, _age(node["metadata"].get("creationTimestamp")),
                     info.get("kubeletVersion", ""), addresses.get("InternalIP", "<none>"),
                     addresses.get("ExternalIP", "<none>"), info.get("osImage", "<unknown>"),
                     info.get("kernelVersion", "<unknown>"),
                     info.get("containerRuntimeVersion", "<unknown>")]
            rows.append((cells, node))
    elif resource == "namespaces":
        columns = [column("Name", fmt="name"), column("Status"), column("Age")]
        rows = [([n["metadata"]["name"], n.get("status", {}).get("phase", "Active"),
                  _age(n["metadata"].get("creationTimestamp"))], n) for n in objects]
    elif resource == "secrets":
        columns = [column("Name", fmt="name"), column("Type"), column("Data"), column("Age")]
        rows = [([s["metadata"]["name"], s.get("type", "Opaque"), str(len(s.get("data") or {})),
                  _age(s["metadata"].get("creationTimestamp"))], s) for s in objects]
    elif resource == "configmaps":
        columns = [column("Name", fmt="name"), column("Data"), column("Age")]
        rows = [([c["metadata"]["name"],
                  str(len(c.get("data") or {}) + len(c.get("binaryData") or {})),
                  _age(c["metadata"].get("creationTimestamp"))], c) for c in objects]
    elif resource == "resourcequotas":
        # printers.go printResourceQuota: "name: used/hard" sorted, limits.* apart.
        columns = [column("Name", fmt="name"), column("Age"), column("Request"),
                   column("Limit")]
        for quota in objects:
            hard = quota.get("status", {}).get("hard") or {}
            used = quota.get("status", {}).get("used") or {}
            columns_text: dict[bool, list[str]] = {False: [], True: []}
            for name in sorted(hard):
                limit = len(name.split(".")) > 1 and name.split(".")[0] == "limits"
                columns_text[limit].append(f"{name}: {used.get(name, '0')}/{hard[name]}")
            rows.append(([quota["metadata"]["name"],
                          _age(quota["metadata"].get("creationTimestamp")),
                          ", ".join(columns_text[False]), ", ".join(columns_text[True])], quota))
    elif resource == "events":
        columns = [column("Last Seen"), column("Type"), column("Reason"), column("Object"),
                   column("Message")]
        rows = [([_age(e.get("lastTimestamp")), e.get("type", ""), e.get("reason", ""),
                  f"{e['involvedObject'].get('kind', '').lower()}/{e['involvedObject']['name']}",
                  e.get("message", "")], e) for e in objects]
    else:
        columns = [column("Name", fmt="name"), column("Age")]
        rows = [([o["metadata"]["name"], _age(o["metadata"].get("creationTimestamp"))], o)
                for o in objects]

    def row_object(obj: Obj) -> Obj:
        if include == "Object":
            return obj
        if include == "None":
            return {}
        return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"]}

    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": str(rv)}, "columnDefinitions": columns,
            "rows": [{"cells": cells, "object": row_object(obj)} for cells, obj in rows]}


def wanted(accept: str) -> bool:
    """Whether an Accept header asks for server-side printing (`as=Table`)."""
    return "as=Table" in accept
