"""Pod, event and secret calls in the driver's namespace, and following one pod on a watch.

`check` also asks here whether the namespace exists, what our credentials may do
(SelfSubjectAccessReview, SelfSubjectReview) and whether a pod would be admitted
(a dry-run create); none of these stores anything.

Each call is one API request under the retry policy (transient failures retried within
`retry_timeout`, everything else raised at once as a `ClusterError`), answers with
plain dicts, and takes "not found" as an answer where it is one. `pod_updates`
follows a pod through dropped watches, compacted histories and flaky API servers up
to a deadline. What a pod's state means for the job (started, failed, dead) is for the
stages to decide, with `podstatus`: nothing here waits for a particular state but the
pod's disappearance.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

from .. import cancel, logs
from ..errors import ClusterError
from . import rest, streams
from .connection import Connection
from .errors import api_error
from .rest import Query, Rest
from .retry import API_RETRY
from .streams import Sink


class Cluster:
    """Pod operations in the driver's namespace."""

    def __init__(self, connection: Connection, request_timeout: float,
                 retry_timeout: float = 60.0) -> None:
        self.namespace = connection.namespace
        self.server = connection.server
        self.retry_timeout = retry_timeout
        self._retry = dataclasses.replace(API_RETRY, budget=retry_timeout)
        self._timeout = request_timeout
        self._rest = Rest(connection.configuration)

    def _params(self, name: str = "") -> dict[str, str]:
        return {"namespace": self.namespace, "name": name} if name \
            else {"namespace": self.namespace}

    def _once(self, what: str, method: str, path: str, name: str = "", query: Query = (),
              body: Any = None, content_type: str = "") -> Any:
        try:
            return self._rest.call(method, path, self._params(name), self._timeout, query,
                                   body, content_type)
        except Exception as error:
            raise api_error(what, error) from error

    def _call(self, what: str, method: str, path: str, name: str = "", query: Query = (),
              body: Any = None, content_type: str = "") -> Any:
        """One API request, retried while it fails transiently."""
        return self._retry.retrying(what)(self._once, what, method, path, name, query, body,
                                          content_type)

    # --- pods -------------------------------------------------------------------

    def create_pod(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create the pod; the stored pod comes back.

        Raises:
            ClusterError: status 409 when a pod of that name exists, which a retried
                create whose first try reached the server also meets; `unsent` when no
                attempt reached a server, so certainly nothing was created.
        """
        name = manifest["metadata"]["name"]
        what = f"creating pod {self.namespace}/{name}"
        reached = False

        def attempt() -> Any:
            nonlocal reached
            try:
                # Strict: a field the API server does not know (a template's typo) is
                # refused with its path instead of silently dropped.
                return self._once(what, "POST", rest.pods(self.namespace),
                                  query=[("fieldValidation", "Strict")], body=manifest)
            except ClusterError as error:
                reached = reached or not error.unsent
                raise

        try:
            return dict(self._retry.retrying(what)(attempt))
        except ClusterError as error:
            # Unsent only if no attempt reached a server: an earlier one may have
            # created the pod even though its answer was lost.
            error.unsent = not reached
            raise

    def dry_run_create_pod(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Ask the API server to admit the pod without creating it (`dryRun=All`).

        Authorization, field validation (Strict), Pod Security and quota admission all
        run; nothing is stored, so retrying is harmless. The pod as it would be stored
        comes back.

        Raises:
            ClusterError: the server refused it, with its status and message.
        """
        name = manifest["metadata"]["name"]
        return dict(self._call(f"creating pod {self.namespace}/{name} (dry run)", "POST",
                               rest.pods(self.namespace),
                               query=[("dryRun", "All"), ("fieldValidation", "Strict")],
                               body=manifest))

    def read_pod(self, name: str) -> dict[str, Any] | None:
        """The pod, or None when it does not exist."""
        return self._read(f"reading pod {self.namespace}/{name}",
                          rest.pods(self.namespace, name), name)

    def _read(self, what: str, path: str, name: str) -> dict[str, Any] | None:
        """One object, or None when it does not exist."""
        try:
            return dict(self._call(what, "GET", path, name))
        except ClusterError as error:
            if error.status == 404:
                return None
            raise

    def list_pods(self, label_selector: str) -> list[dict[str, Any]]:
        """The pods whose labels match `label_selector`."""
        listed = self._call(f"listing pods in {self.namespace} ({label_selector})", "GET",
                            rest.pods(self.namespace), query=[("labelSelector", label_selector)])
        return list(listed.get("items") or [])

    def delete_pod(self, name: str, grace_seconds: int | None = None, uid: str = "") -> bool:
        """Ask for the pod's deletion; False when it was already gone.

        With `uid`, only that incarnation of the name is deleted: a newer pod of the same
        name makes the API server refuse with 409 Conflict. Objects the pod owns (see
        `owner_reference`) are removed by Kubernetes with it.
        """
        options: dict[str, Any] = {"propagationPolicy": "Background"}
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        return self._delete(f"deleting pod {self.namespace}/{name}",
                            rest.pods(self.namespace, name), name, uid, options)

    def _delete(self, what: str, path: str, name: str, uid: str,
                options: dict[str, Any]) -> bool:
        """A delete (of incarnation `uid` only, when given); False when already gone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", **options}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self._call(what, "DELETE", path, name, body=body)
        except ClusterError as error:
            if error.status == 404:
                return False
            raise
        return True

    def pod_events(self, name: str, uid: str = "") -> list[dict[str, Any]]:
        """The events about the pod, oldest first; with `uid`, only this incarnation's.

        Earlier prepare attempts create pods of the same name: their events would
        otherwise show up again.
        """
        selector = f"involvedObject.name={name}" + (f",involvedObject.uid={uid}" if uid else "")
        listed = self._call(f"listing events of pod {self.namespace}/{name}", "GET",
                            rest.events(self.namespace), query=[("fieldSelector", selector)])
        items = list(listed.get("items") or [])
        items.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        return items

    # --- the namespace and our own access (for `check`) -------------------------------

    def read_namespace(self) -> dict[str, Any] | None:
        """The driver's namespace, or None when it does not exist."""
        return self._read(f"reading namespace {self.namespace}", rest.namespace_path(),
                          self.namespace)

    def access_review(self, verb: str, resource: str) -> tuple[bool, str]:
        """Whether our credentials may `verb` the `resource` (`pods/exec` for a
        subresource) in the namespace, by a SelfSubjectAccessReview; and the
        authorizer's reason ("" when it gave none)."""
        plural, _, subresource = resource.partition("/")
        attributes = {"namespace": self.namespace, "verb": verb, "group": "",
                      "resource": plural}
        if subresource:
            attributes["subresource"] = subresource
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes}}
        answer = self._call(f"asking whether we may {verb} {resource} in {self.namespace}",
                            "POST", rest.SELF_SUBJECT_ACCESS_REVIEWS, body=body)
        status = answer.get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason") or "")

    def who_am_i(self) -> str:
        """The user name the API server sees for our credentials (a SelfSubjectReview)."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        answer = self._call("asking the API server who we are", "POST",
                            rest.SELF_SUBJECT_REVIEWS, body=body)
        return str(((answer.get("status") or {}).get("userInfo") or {}).get("username") or "")

    # --- objects owned by the pod -------------------------------------------------

    def create_secret(self, manifest: dict[str, Any],
                      owner: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create a per-job secret, owned by the pod `owner` if given (it goes with it)."""
        body = manifest if owner is None else {
            **manifest, "metadata": {**manifest["metadata"],
                                     "ownerReferences": [owner_reference(owner)]}}
        name = body["metadata"]["name"]
        return dict(self._call(f"creating secret {self.namespace}/{name}", "POST",
                               rest.secrets(self.namespace), query=[("fieldValidation",
                                                                     "Strict")],
                               body=body))

    def own_secret(self, name: str, owner: dict[str, Any]) -> None:
        """Make the pod `owner` the secret's owner, so Kubernetes deletes it with the pod."""
        patch = {"metadata": {"ownerReferences": [owner_reference(owner)]}}
        self._call(f"setting the owner of secret {self.namespace}/{name}", "PATCH",
                   rest.secrets(self.namespace, name), name, body=patch,
                   content_type="application/merge-patch+json")

    def read_configmap(self, name: str) -> dict[str, Any] | None:
        """The configmap, or None when it does not exist."""
        return self._read(f"reading configmap {self.namespace}/{name}",
                          rest.configmaps(self.namespace, name), name)

    def read_secret(self, name: str) -> dict[str, Any] | None:
        """The secret, or None when it does not exist."""
        return self._read(f"reading secret {self.namespace}/{name}",
                          rest.secrets(self.namespace, name), name)

    def list_secrets(self, label_selector: str) -> list[dict[str, Any]]:
        """The secrets whose labels match `label_selector` (values are not used)."""
        listed = self._call(f"listing secrets in {self.namespace} ({label_selector})", "GET",
                            rest.secrets(self.namespace),
                            query=[("labelSelector", label_selector)])
        return list(listed.get("items") or [])

    def delete_secret(self, name: str, uid: str = "") -> bool:
        """Delete a secret (only incarnation `uid` when given); False when already gone."""
        return self._delete(f"deleting secret {self.namespace}/{name}",
                            rest.secrets(self.namespace, name), name, uid, {})

    # --- following a pod ------------------------------------------------------------

    def _watch_pod(self, name: str, resource_version: str,
                   timeout: float) -> Iterator[tuple[str, dict[str, Any]]]:
        """Events (type, pod) for one pod from `resource_version`, for at most `timeout` s."""
        query = [("fieldSelector", f"metadata.name={name}"), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(max(1, int(timeout))))]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        try:
            for event in self._rest.watch(rest.pods(self.namespace), self._params(),
                                          timeout + self._timeout, query):
                yield str(event.get("type")), dict(event.get("object") or {})
        except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as error:
            raise api_error(f"watching pod {self.namespace}/{name}", error) from error

    def pod_updates(self, pod: dict[str, Any], deadline: float
                    ) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """("MODIFIED"/"DELETED", pod) for one pod until `deadline`, surviving a flaky API.

        A watch that ends is reopened from the last resource version (bookmarks keep it
        fresh); `410 Gone` re-reads the pod; transient errors are retried with backoff
        until `deadline` (a monotonic time). Yields ("DELETED", None) when the pod
        disappeared.
        """
        name = pod["metadata"]["name"]
        version = str(pod["metadata"].get("resourceVersion") or "")
        failures = 0
        while (remaining := deadline - time.monotonic()) > 0:
            cancel.check()
            opened, seen = time.monotonic(), False
            try:
                for kind, obj in self._watch_pod(name, version, remaining):
                    failures, seen = 0, True
                    version = str((obj.get("metadata") or {}).get("resourceVersion")
                                  or version)
                    if kind == "BOOKMARK":
                        continue
                    # (ERROR events never get here: the client raises them as ApiException.)
                    yield kind, (None if kind == "DELETED" else obj)
                    if kind == "DELETED":
                        return
                if not seen and time.monotonic() - opened < 1.0:
                    cancel.sleep(0.2)  # a server that ends watches at once: do not spin
            except ClusterError as error:
                if error.status == 410:
                    # Our resource version is too old: re-list. The list's own version
                    # is current, where an unchanged pod's would be too old again.
                    listed = self._call(f"listing pod {self.namespace}/{name}", "GET",
                                        rest.pods(self.namespace),
                                        query=[("fieldSelector", f"metadata.name={name}")])
                    items = list(listed.get("items") or [])
                    if not items:
                        yield "DELETED", None
                        return
                    version = str((listed.get("metadata") or {}).get("resourceVersion")
                                  or items[0]["metadata"].get("resourceVersion") or "")
                    yield "MODIFIED", dict(items[0])
                    continue
                if not error.transient:
                    raise
                failures += 1
                wait = self._retry.delay(failures, error, deadline - time.monotonic())
                logs.get().warning("watching the pod again after a transient error",
                                   attempt=failures, action=f"watching pod {self.namespace}/"
                                   f"{name}", error=str(error), retry_in=f"{wait:.1f}s")
                cancel.sleep(wait)

    def wait_gone(self, name: str, timeout: float) -> bool:
        """Wait until the pod no longer exists; False if it is still there after `timeout`."""
        deadline = time.monotonic() + timeout
        pod = self.read_pod(name)
        if pod is None:
            return True
        for _kind, obj in self.pod_updates(pod, deadline):
            if obj is None:
                return True
        return self.read_pod(name) is None

    # --- exec (see `streams`) ----------------------------------------------------------

    def exec_stream(self, pod: str, container: str, argv: list[str], stdin: bytes | None,
                    out: Sink, err: Sink, stall_seconds: float,
                    opened: rest.ExecSocket | None = None) -> bytes:
        """Run `argv` in the container (or feed the exec `opened` earlier), `stdin` sent
        first; see `streams.exec_stream`."""
        return streams.exec_stream(self._rest, self.namespace, self._timeout, pod,
                                   container, argv, stdin, out, err, stall_seconds, opened)

    def open_exec(self, pod: str, container: str, argv: list[str]) -> rest.ExecSocket:
        """Start `argv` in the container with stdin and return the open session, once
        (no retry: a caller that can do without it does); see `streams.open_exec`."""
        return streams.open_exec(self._rest, self.namespace, self._timeout, pod, container,
                                 argv, stdin=True)

    def run_quiet(self, pod: str, container: str, argv: list[str],
                  timeout: float) -> tuple[int, bytes]:
        """A short command's exit code and combined output; see `streams.run_quiet`."""
        return streams.run_quiet(self._rest, self.namespace, self._timeout, pod,
                                 container, argv, timeout)


def owner_reference(pod: dict[str, Any]) -> dict[str, Any]:
    """An ownerReference to the pod: Kubernetes deletes the dependent with it."""
    metadata = pod["metadata"]
    return {"apiVersion": "v1", "kind": "Pod", "name": metadata["name"],
            "uid": metadata["uid"], "blockOwnerDeletion": False}
