"""The emulated API server: Kubernetes REST, watches and logs over real HTTP.

It serves what the official Python client and kubectl use (legacy discovery, core v1
CRUD with Status errors and `fieldValidation` with its `Warning` headers
(`fieldvalidation`), server-side Table printing for `kubectl get`, chunked
watches with bookmarks and 410, `pods/log` with follow) and routes `pods/exec` to
`execstream`, plus an admin API under `/emulator/` for fault injection. RBAC objects
(rbac.authorization.k8s.io/v1) are served like core ones; every request is
authenticated and authorized first (`rbac`), and SelfSubjectAccessReviews and
SelfSubjectReviews answer from the same decision. Pod creates pass Pod Security
admission (`podsecurity`), dry runs included. Requests become store, kubelet and
control-plane operations; this module holds no cluster state of its own.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import contextvars
import copy
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from . import fieldvalidation, patches, podsecurity, podspec, protobuf, quota, rbac, tables
from .controllers import ControlPlane
from .execstream import EXEC_PROTOCOLS, ExecEndpoint, drop
from .faults import ExecCut, Faults, RequestFault
from .kubelet import Kubelet
from .selectors import SelectorError, parse_field_selector, parse_label_selector
from .store import RBAC_GROUP, RESOURCES, ApiError, Obj, Store, WatchEvent, not_found

log = logging.getLogger("runner_driver.emulator")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The warnings the request being handled answers with as `Warning` headers.
WARNINGS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "runner_driver_warnings", default=None)
# Who sent the request being handled (set once it is authenticated).
USER: contextvars.ContextVar[rbac.User] = contextvars.ContextVar("runner_driver_user",
                                                                 default=rbac.ADMIN)
OPENAPI_HASH = "0" * 128  # the one OpenAPI document never changes
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
AUTHORIZATION_GROUP = "authorization.k8s.io"
AUTHENTICATION_GROUP = "authentication.k8s.io"
# The groups served under /apis, each with its resources as discovery lists them.
GROUP_RESOURCES: dict[str, list[Obj]] = {
    RBAC_GROUP: [],  # from RESOURCES
    AUTHORIZATION_GROUP: [{"name": "selfsubjectaccessreviews", "singularName": "",
                           "namespaced": False, "kind": "SelfSubjectAccessReview",
                           "verbs": ["create"]}],
    AUTHENTICATION_GROUP: [{"name": "selfsubjectreviews", "singularName": "",
                            "namespaced": False, "kind": "SelfSubjectReview",
                            "verbs": ["create"]}],
}
JSON_PATCH = "application/json-patch+json"


def status_response(error: ApiError) -> web.Response:
    """An error as the JSON Status body and HTTP code a real API server uses."""
    return web.json_response(error.status(), status=error.code)


class ApiServer:
    """HTTP routes over a store and a kubelet."""

    def __init__(self, store: Store, kubelet: Kubelet, control: ControlPlane, faults: Faults,
                 bookmark_seconds: float = 60.0,
                 exec_protocols: tuple[str, ...] = EXEC_PROTOCOLS) -> None:
        self.store = store
        self.kubelet = kubelet
        self.control = control
        self.faults = faults
        self.bookmark_seconds = bookmark_seconds
        self.version = kubelet.settings.kubernetes_version
        self._streams: set[web.StreamResponse] = set()
        self.exec = ExecEndpoint(kubelet, faults, self._streams, exec_protocols)
        self.closing = asyncio.Event()
        # Load the field schemas now (once per process), not on the first create.
        fieldvalidation.kind_schema(self.version, "Pod")

    def app(self) -> web.Application:
        """The aiohttp application with every route."""
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        r = app.router
        r.add_get("/version", self._version)
        r.add_get("/version/", self._version)
        for probe in ("/healthz", "/readyz", "/livez"):
            r.add_get(probe, self._ok)
        r.add_get("/api", self._api_versions)
        r.add_get("/api/", self._api_versions)
        r.add_get("/apis", self._api_groups)
        r.add_get("/apis/", self._api_groups)
        r.add_get("/api/v1", self._api_resources)
        r.add_get("/api/v1/", self._api_resources)
        r.add_get("/apis/{group}/{version}", self._group_resources)
        r.add_get("/apis/{group}/{version}/", self._group_resources)
        r.add_post(f"/apis/{AUTHORIZATION_GROUP}/v1/selfsubjectaccessreviews",
                   self._access_review)
        r.add_post(f"/apis/{AUTHENTICATION_GROUP}/v1/selfsubjectreviews", self._self_review)
        r.add_get("/openapi/v3", self._openapi_root)
        r.add_get("/openapi/v3/api/v1", self._openapi_v1)
        r.add_route("*", "/api/v1/namespaces/{namespace}/pods/{name}/exec", self.exec.handle)
        r.add_route("*", "/api/v1/namespaces/{namespace}/pods/{name}/log", self._log)
        r.add_post("/api/v1/namespaces/{namespace}/pods/{name}/eviction", self._eviction)
        r.add_get("/api/v1/namespaces/{namespace}/pods/{name}/status", self._pod_status)
        r.add_route("*", "/api/v1/namespaces/{namespace}/{resource}", self._collection)
        r.add_route("*", "/api/v1/namespaces/{namespace}/{resource}/{name}", self._item)
        r.add_route("*", "/api/v1/{resource}", self._collection)
        r.add_route("*", "/api/v1/{resource}/{name}", self._item)
        group = "/apis/{group}/{version}"
        r.add_route("*", group + "/namespaces/{namespace}/{resource}", self._collection)
        r.add_route("*", group + "/namespaces/{namespace}/{resource}/{name}", self._item)
        r.add_route("*", group + "/{resource}", self._collection)
        r.add_route("*", group + "/{resource}/{name}", self._item)
        r.add_post("/emulator/faults", self._admin_fault)
        r.add_delete("/emulator/faults", self._admin_clear)
        r.add_post("/emulator/exec-cuts", self._admin_exec_cut)
        r.add_get("/emulator/requests", self._admin_requests)
        r.add_post("/emulator/compact", self._admin_compact)
        r.add_post("/emulator/node", self._admin_node)
        r.add_post("/emulator/namespaces/{namespace}/pods/{name}/evict", self._admin_evict)
        r.add_post("/emulator/namespaces/{namespace}/pods/{name}/containers/{container}/oom",
                   self._admin_oom)
        return app

    # Middleware: request log, faults, errors

    @staticmethod
    def _attributes(request: web.Request) -> rbac.Attributes | None:
        return rbac.attributes(request.method, request.path, request.query)

    @classmethod
    def _classify(cls, request: web.Request) -> tuple[str, str]:
        """The request's verb and resource (`pods/exec` for a subresource), for the log."""
        found = cls._attributes(request)
        if found is None:
            parts = [p for p in request.path.split("/") if p]
            return request.method.lower(), "/" + "/".join(parts)
        return found.verb, found.combined

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/emulator/"):
            return await handler(request)
        verb, resource = self._classify(request)
        fault = self.faults.take_request_fault(request.method, request.path)
        entry = self.faults.record(request.method, request.path, verb, resource)
        status = 0
        warnings: list[str] = []
        token = WARNINGS.set(warnings)
        try:
            if fault is not None:
                if fault.latency:
                    await asyncio.sleep(fault.latency)
                if fault.reset:
                    status = -1
                    if request.transport is not None:
                        request.transport.abort()
                    return web.Response(status=500)
                if fault.status:
                    status = fault.status
                    reason = {429: "TooManyRequests", 503: "ServiceUnavailable",
                              504: "Timeout"}.get(fault.status, "InternalError")
                    error = ApiError(fault.status, reason, fault.message,
                                     {"retryAfterSeconds": fault.retry_after}
                                     if fault.retry_after else None)
                    response = status_response(error)
                    if fault.retry_after is not None:
                        response.headers["Retry-After"] = str(fault.retry_after)
                    return response
            try:
                self._authorize(request)
                result = await handler(request)
            except ApiError as error:
                result = status_response(error)
            except web.HTTPException as error:
                if error.status >= 400:
                    result = status_response(ApiError(error.status, error.reason,
                                                      error.text or error.reason))
                else:
                    raise
            status = result.status
            if warnings and not result.prepared:
                for header in fieldvalidation.warning_headers(warnings):
                    result.headers.add("Warning", header)
            return result
        finally:
            WARNINGS.reset(token)
            entry.status = status

    def _authorize(self, request: web.Request) -> None:
        """Authenticate the request (its user kept in `USER`) and authorize it.

        Raises:
            ApiError: 401 for a token nobody issued, 403 when RBAC does not allow it.
        """
        user = rbac.authenticate(self.store, request.headers.get("Authorization", ""))
        if user is None:
            raise rbac.unauthorized()
        USER.set(user)
        attributes = self._attributes(request)
        if attributes is None:
            return
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        for check in rbac.checks(attributes, websocket):
            self.faults.authorized(user.name, check.verb, check.combined)
            if not rbac.authorize(self.store, user, check)[0]:
                raise rbac.forbidden(user, check)

    async def _access_review(self, request: web.Request) -> web.Response:
        """A SelfSubjectAccessReview, answered by the authorizer that guards requests."""
        body = await self._body(request)
        spec = body.get("spec") or {}
        attributes = spec.get("resourceAttributes")
        if isinstance(attributes, dict) != (spec.get("nonResourceAttributes") is None):
            message = ("exactly one of nonResourceAttributes or resourceAttributes must be "
                       "specified")
            raise ApiError(422, "Invalid", f'SelfSubjectAccessReview.{AUTHORIZATION_GROUP} "" '
                           f'is invalid: spec.resourceAttributes: Invalid value: "null": '
                           f"{message}", {"group": AUTHORIZATION_GROUP,
                                          "kind": "SelfSubjectAccessReview"})
        user = USER.get()
        if isinstance(attributes, dict):
            asked = rbac.Attributes(*(str(attributes.get(key) or "") for key in (
                "verb", "group", "resource", "subresource", "namespace", "name")))
            allowed, reason = rbac.authorize(self.store, user, asked)
        else:  # non-resource rules are not emulated: only the admin is allowed
            allowed, reason = user.admin, ""
        status: Obj = {"allowed": allowed}
        if reason:
            status["reason"] = reason
        return web.json_response({"kind": "SelfSubjectAccessReview",
                                  "apiVersion": f"{AUTHORIZATION_GROUP}/v1",
                                  "metadata": {"creationTimestamp": None}, "spec": spec,
                                  "status": status}, status=201)

    async def _self_review(self, request: web.Request) -> web.Response:
        """A SelfSubjectReview: who the request's credentials make the caller."""
        user = USER.get()
        return web.json_response({"kind": "SelfSubjectReview",
                                  "apiVersion": f"{AUTHENTICATION_GROUP}/v1",
                                  "metadata": {"creationTimestamp": None},
                                  "status": {"userInfo": {"username": user.name,
                                                          "groups": list(user.groups)}}},
                                 status=201)

    # Discovery

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _version(self, request: web.Request) -> web.Response:
        major, minor, *_ = self.version.lstrip("v").split(".")
        return web.json_response({
            "major": major, "minor": minor, "gitVersion": self.version,
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0",
            "compiler": "gc", "platform": "linux/amd64",
            "emulated": "runner-driver embedded cluster emulator"})

    async def _api_versions(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": "APIVersions", "versions": ["v1"],
                                  "serverAddressByClientCIDRs": [
                                      {"clientCIDR": "0.0.0.0/0",
                                       "serverAddress": request.host}]})

    async def _api_groups(self, request: web.Request) -> web.Response:
        groups = [{"name": name, "versions": [{"groupVersion": f"{name}/v1", "version": "v1"}],
                   "preferredVersion": {"groupVersion": f"{name}/v1", "version": "v1"}}
                  for name in GROUP_RESOURCES]
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})

    async def _group_resources(self, request: web.Request) -> web.Response:
        group = request.match_info["group"]
        if group not in GROUP_RESOURCES or request.match_info["version"] != "v1":
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        resources = [{"name": spec.name, "singularName": spec.kind.lower(),
                      "namespaced": spec.namespaced, "kind": spec.kind,
                      "verbs": list(spec.verbs)}
                     for spec in RESOURCES.values() if spec.group == group]
        return web.json_response({"kind": "APIResourceList", "apiVersion": "v1",
                                  "groupVersion": f"{group}/v1",
                                  "resources": resources + GROUP_RESOURCES[group]})

    async def _api_resources(self, request: web.Request) -> web.Response:
        resources = []
        for spec in RESOURCES.values():
            if spec.group:
                continue
            entry: Obj = {"name": spec.name, "singularName": spec.kind.lower(),
                          "namespaced": spec.namespaced, "kind": spec.kind,
                          "verbs": list(spec.verbs)}
            if spec.short_names:
                entry["shortNames"] = list(spec.short_names)
            if spec.name == "pods":
                entry["categories"] = ["all"]
            resources.append(entry)
        resources += [
            {"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions",
             "verbs": ["create", "get"]},
            {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod",
             "verbs": ["get"]},
            {"name": "pods/eviction", "singularName": "", "namespaced": True,
             "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]},
            {"name": "pods/status", "singularName": "", "namespaced": True, "kind": "Pod",
             "verbs": ["get"]},
        ]
        return web.json_response({"kind": "APIResourceList", "groupVersion": "v1",
                                  "resources": resources})

    async def _openapi_root(self, request: web.Request) -> web.Response:
        """OpenAPI v3 discovery: one group version, the core one."""
        return web.json_response({"paths": {"api/v1": {
            "serverRelativeURL": f"/openapi/v3/api/v1?hash={OPENAPI_HASH}"}}})

    async def _openapi_v1(self, request: web.Request) -> web.Response:
        """The core group's OpenAPI v3 paths, only as far as clients look at them.

        kubectl (`QueryParamVerifierV3`) reads each kind's PATCH operation to learn
        whether the server takes `fieldValidation` before it sends `Strict`; without
        this document `kubectl create -f` and `apply -f` refuse to run. Schemas are not
        served (`components` is empty).
        """
        params = [{"name": name, "in": "query", "schema": {"type": "string",
                                                           "uniqueItems": True}}
                  for name in ("dryRun", "fieldManager", "fieldValidation", "force")]
        paths = {}
        for spec in RESOURCES.values():
            if spec.group:
                continue
            prefix = "/api/v1/namespaces/{namespace}/" if spec.namespaced else "/api/v1/"
            paths[f"{prefix}{spec.name}/{{name}}"] = {"patch": {
                "parameters": params, "responses": {},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": "", "version": "v1",
                                                    "kind": spec.kind}}}
        return web.json_response({"openapi": "3.0.0", "paths": paths,
                                  "info": {"title": "Kubernetes", "version": self.version},
                                  "components": {"schemas": {}}})

    # CRUD

    def _resource(self, request: web.Request) -> tuple[str, str]:
        resource = request.match_info["resource"]
        spec = RESOURCES.get(resource)
        group = request.match_info.get("group", "")
        if spec is None or spec.group != group or request.match_info.get("version",
                                                                         "v1") != "v1":
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {"causes": [{"reason": "UnexpectedServerResponse",
                                        "message": "404 page not found"}]})
        namespace = request.match_info.get("namespace", "")
        if spec.namespaced != bool(namespace) and not (spec.namespaced and request.method == "GET"
                                                       and "name" not in request.match_info):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return resource, namespace

    def _predicate(self, request: web.Request, resource: str) -> Callable[[Obj], bool]:
        try:
            labels = parse_label_selector(request.query.get("labelSelector", ""))
            fields = parse_field_selector(request.query.get("fieldSelector", ""),
                                          RESOURCES[resource].field_selectors)
        except SelectorError as error:
            raise ApiError(400, "BadRequest", str(error)) from error
        return lambda obj: labels(obj["metadata"].get("labels") or {}) and fields(obj)

    async def _body(self, request: web.Request) -> Obj:
        body: Obj = (await self._decode(request))[0]
        return body

    async def _decode(self, request: web.Request, patch: bool = False
                      ) -> tuple[Any, fieldvalidation.Repeated, bool]:
        """The request body, its repeated keys, and whether strict decoding applies.

        A protobuf body is never strictly decoded (the API server has no strict
        protobuf serializer); a JSON patch may be a list.
        """
        if request.content_type == "application/vnd.kubernetes.protobuf" and not patch:
            return protobuf.decode(await request.read()), {}, False
        try:
            body, repeated = fieldvalidation.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ApiError(400, "BadRequest", f"the body of the request was in an unknown "
                           f"format - accepted media types include: application/json: "
                           f"{error}") from error
        if not isinstance(body, dict) and not (patch and isinstance(body, list)):
            raise ApiError(400, "BadRequest", "the body of the request must be an object")
        return body, repeated, True

    def _check_fields(self, directive: str, kind: str, body: Obj,
                      repeated: fieldvalidation.Repeated) -> None:
        """Strictly decode a create or update body.

        Unknown fields are dropped in every mode; the directive then refuses (400),
        warns or says nothing.
        """
        if body.get("kind") not in (None, kind):
            return  # refused as a kind mismatch in any mode
        errors = fieldvalidation.check(self.version, kind, body, repeated)
        self._apply_directive(directive, errors,
                              lambda: fieldvalidation.decode_error(kind, "v1", errors))

    @staticmethod
    def _apply_directive(directive: str, errors: list[str],
                         refusal: Callable[[], ApiError]) -> None:
        """Refuse (Strict), record the request's warnings (Warn) or do nothing (Ignore)."""
        if not errors or directive == fieldvalidation.IGNORE:
            return
        if directive == fieldvalidation.STRICT:
            raise refusal()
        warnings = WARNINGS.get()
        if warnings is not None:
            warnings.extend(errors)

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        resource, namespace = self._resource(request)
        if request.method == "GET":
            predicate = self._predicate(request, resource)
            if resource == "resourcequotas":
                self.control.refresh_quotas(namespace or None)
            if request.query.get("watch") in ("true", "1"):
                return await self._watch(request, resource, namespace or None, predicate)
            items, rv = self.store.select(resource, namespace or None, predicate)
            if tables.wanted(request.headers.get("Accept", "")):
                return web.json_response(tables.render(resource, items,
                                                request.query.get("includeObject", "Metadata"),
                                                rv))
            for item in items:
                item.pop("kind", None)
                item.pop("apiVersion", None)
            return web.json_response({"kind": f"{RESOURCES[resource].kind}List",
                                      "apiVersion": RESOURCES[resource].api_version,
                                      "metadata": {"resourceVersion": str(rv)}, "items": items})
        if request.method == "POST":
            directive = fieldvalidation.directive(request.query.get("fieldValidation"),
                                                  "CreateOptions")
            body, repeated, typed = await self._decode(request)
            if typed:
                self._check_fields(directive, RESOURCES[resource].kind, body, repeated)
            created = self._create(resource, namespace, body,
                                   dry_run=request.query.get("dryRun") == "All")
            return web.json_response(created, status=201)
        if request.method == "DELETE":
            predicate = self._predicate(request, resource)
            items, rv = self.store.select(resource, namespace or None, predicate)
            for item in items:
                with contextlib.suppress(ApiError):
                    self._delete(resource, item["metadata"].get("namespace", ""),
                                 item["metadata"]["name"], None)
            return web.json_response({"kind": f"{RESOURCES[resource].kind}List",
                                      "apiVersion": RESOURCES[resource].api_version,
                                      "metadata": {"resourceVersion": str(rv)}, "items": items})
        raise ApiError(405, "MethodNotAllowed",
                       "the server does not allow this method on the requested resource")

    def _create(self, resource: str, namespace: str, body: Obj, dry_run: bool = False) -> Obj:
        kind = RESOURCES[resource].kind
        if body.get("kind") not in (None, kind):
            raise ApiError(400, "BadRequest",
                           f"the kind of the provided object ({body.get('kind')}) does not "
                           f"match the kind of the request ({kind})")
        meta = body.setdefault("metadata", {})
        if namespace and meta.get("namespace") not in (None, "", namespace):
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not "
                           "match the namespace sent on the request")
        for server_field in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp"):
            meta.pop(server_field, None)
        owner = self.store.find("namespaces", "", namespace) if namespace else None
        if namespace and owner is None:
            raise not_found("namespaces", namespace)  # NamespaceLifecycle, dry runs too
        if owner is not None and owner["metadata"].get("deletionTimestamp"):
            # The NamespaceLifecycle admission plugin, before any validation.
            raise ApiError(403, "Forbidden",
                           f'{resource} "{meta.get("name", "")}" is forbidden: unable to create '
                           f"new content in namespace {namespace} because it is being "
                           "terminated",
                           {"name": meta.get("name", ""), "kind": resource,
                            "causes": [{"reason": "NamespaceTerminating",
                                        "message": f"namespace {namespace} is being terminated",
                                        "field": "metadata.namespace"}]})
        if resource == "pods":
            meta["namespace"] = namespace
            podspec.validate(body)
            sa_name = body["spec"].get("serviceAccountName") or \
                body["spec"].get("serviceAccount") or "default"
            podspec.apply_defaults(body, self.store.find("serviceaccounts", namespace, sa_name))
        elif resource == "secrets":
            data = body.get("data") or {}
            for key, value in data.items():
                try:
                    base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError, TypeError) as error:
                    raise ApiError(400, "BadRequest", f"illegal base64 data for key {key}: "
                                   f"{error}") from error
            for key, value in (body.pop("stringData", None) or {}).items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            body["data"] = data
            body["type"] = body.get("type") or "Opaque"
        elif resource == "namespaces":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")
            body["spec"] = {"finalizers": ["kubernetes"]}
            body["status"] = {"phase": "Active"}
        elif resource == "resourcequotas":
            quota.prepare(body)
            meta["namespace"] = namespace
            body["status"] = self.control.quota_status(body)
        elif resource == "nodes":
            raise ApiError(403, "Forbidden", "nodes cannot be created in the emulated cluster")
        if namespace:
            # Validating admission sees the generated name, so its refusals name it.
            self.store.generate_name(resource, namespace, meta)
            if resource == "pods":
                podsecurity.admit(owner, body)
            self.control.admit_quota(resource, namespace, body)
        if dry_run:
            return body
        return self.store.create(resource, namespace, body)

    def _check_preconditions(self, resource: str, namespace: str, name: str,
                             preconditions: Obj) -> None:
        """DeleteOptions.preconditions, refused as apiserver's etcd3 store does.

        Text from staging/src/k8s.io/apiserver/pkg/storage/etcd3/store.go
        (checkPreconditions) wrapped as a StorageError invalid object (Code 4), which the
        registry turns into 409 Conflict "Operation cannot be fulfilled on ...".
        """
        current = self.store.get(resource, namespace, name)
        meta = current["metadata"]
        failed = ""
        uid = preconditions.get("uid")
        version = preconditions.get("resourceVersion")
        if uid is not None and uid != meta.get("uid"):
            failed = f"UID in precondition: {uid}, UID in object meta: {meta.get('uid')}"
        elif version is not None and version != meta.get("resourceVersion"):
            failed = (f"ResourceVersion in precondition: {version}, ResourceVersion in object "
                      f"meta: {meta.get('resourceVersion')}")
        if failed:
            key = f"/registry/{resource}/{namespace + '/' if namespace else ''}{name}"
            raise ApiError(409, "Conflict",
                           f'Operation cannot be fulfilled on {resource} "{name}": StorageError: '
                           f"invalid object, Code: 4, Key: {key}, ResourceVersion: 0, "
                           f"AdditionalErrorMsg: Precondition failed: {failed}",
                           {"name": name, "kind": resource})

    def _delete(self, resource: str, namespace: str, name: str, grace: int | None) -> Obj:
        if resource == "pods":
            return self.kubelet.delete_pod(namespace, name, grace)
        if resource == "namespaces":
            return self.control.delete_namespace(name)
        if resource == "nodes":
            raise ApiError(403, "Forbidden", "the emulated node cannot be deleted")
        removed = self.store.remove(resource, namespace, name)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "kind": resource,
                            "uid": removed["metadata"]["uid"]}}

    async def _item(self, request: web.Request) -> web.StreamResponse:
        resource, namespace = self._resource(request)
        name = request.match_info["name"]
        if request.method == "GET":
            if resource == "resourcequotas":
                self.control.refresh_quotas(namespace)
            obj = self.store.get(resource, namespace, name)
            if tables.wanted(request.headers.get("Accept", "")):
                return web.json_response(tables.render(resource, [obj],
                                                request.query.get("includeObject", "Metadata"),
                                                self.store.resource_version))
            return web.json_response(obj)
        if request.method == "DELETE":
            grace: int | None = None
            if request.query.get("gracePeriodSeconds"):
                grace = int(request.query["gracePeriodSeconds"])
            if request.can_read_body:
                options: Obj = {}
                with contextlib.suppress(ApiError):
                    options = await self._body(request)
                if options.get("gracePeriodSeconds") is not None:
                    grace = int(options["gracePeriodSeconds"])
                self._check_preconditions(resource, namespace, name,
                                          options.get("preconditions") or {})
            return web.json_response(self._delete(resource, namespace, name, grace))
        if request.method in ("PUT", "PATCH"):
            kind = RESOURCES[resource].kind
            directive = fieldvalidation.directive(
                request.query.get("fieldValidation"),
                "UpdateOptions" if request.method == "PUT" else "PatchOptions")
            body, repeated, typed = await self._decode(request, patch=request.method == "PATCH")
            current = self.store.get(resource, namespace, name)
            if request.method == "PATCH":
                updated = self._patched(request, directive, kind, current, body, repeated)
            else:
                if typed:
                    self._check_fields(directive, kind, body, repeated)
                updated = body
            # A resourceVersion in the body (sent by a PUT, or set by a patch) is a
            # precondition on the stored version.
            sent_rv = (updated.get("metadata") or {}).get("resourceVersion")
            if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict",
                               f'Operation cannot be fulfilled on {resource} "{name}": the '
                               "object has been modified; please apply your changes to the "
                               "latest version and try again",
                               {"name": name, "kind": resource})
            return web.json_response(self._update(resource, namespace, name, current, updated))
        raise ApiError(405, "MethodNotAllowed",
                       "the server does not allow this method on the requested resource")

    def _patched(self, request: web.Request, directive: str, kind: str, current: Obj,
                 patch: Any, repeated: fieldvalidation.Repeated) -> Obj:
        """Apply a patch, then strictly decode the patched object as patch.go does.

        The patch body's own duplicate keys (and, for a JSON patch, unknown operation
        fields) come first; the patched object's unknown fields follow and are dropped.
        """
        content_type = request.content_type
        errors: list[str] = []
        if directive != fieldvalidation.IGNORE and content_type == JSON_PATCH:
            errors = fieldvalidation.json_patch_errors(patch, repeated)
        elif directive != fieldvalidation.IGNORE:
            errors = fieldvalidation.duplicates(patch, repeated)
        if content_type == JSON_PATCH:
            if not isinstance(patch, list):
                raise ApiError(400, "BadRequest", "the body of the request must be a list")
            updated = patches.json_patch(current, patch)
        else:
            if not isinstance(patch, dict):
                raise ApiError(400, "BadRequest", "the body of the request must be an object")
            updated = patches.merge_patch(current, patch)
        # A refusal shows the patched object with its unknown fields (JSON and merge
        # patches) or the patch map (strategic merge patches), as patch.go's field.Invalid.
        shown = "" if directive != fieldvalidation.STRICT else (
            fieldvalidation.go_format(patch) if content_type == STRATEGIC_MERGE_PATCH
            else json.dumps(updated, separators=(",", ":")))
        errors += fieldvalidation.check(self.version, kind, updated, {})
        self._apply_directive(directive, errors,
                              lambda: fieldvalidation.patch_error(shown, errors))
        return updated

    def _update(self, resource: str, namespace: str, name: str, current: Obj,
                updated: Obj) -> Obj:
        meta = updated.setdefault("metadata", {})
        for server_field in ("uid", "creationTimestamp", "namespace", "name",
                             "deletionTimestamp", "generateName"):
            if server_field in current["metadata"]:
                meta[server_field] = current["metadata"][server_field]
        updated["kind"] = current["kind"]
        updated["apiVersion"] = RESOURCES[resource].api_version
        if resource in ("pods", "nodes", "namespaces"):
            mutable = {"pods": ("activeDeadlineSeconds",), "nodes": ("taints", "unschedulable"),
                       "namespaces": ()}[resource]
            spec = copy.deepcopy(current.get("spec", {}))
            for key in mutable:
                if key in (updated.get("spec") or {}):
                    spec[key] = updated["spec"][key]
            if resource == "pods":
                changed = {k for k in set(spec) | set(updated.get("spec") or {})
                           if spec.get(k) != (updated.get("spec") or {}).get(k)}
                if changed:
                    forbidden = ("Forbidden: pod updates may not change fields other than "
                                 "`spec.containers[*].image`, `spec.initContainers[*].image`, "
                                 "`spec.activeDeadlineSeconds`, `spec.tolerations` (only "
                                 "additions to existing tolerations), "
                                 "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 "
                                 "if it was previously negative)")
                    raise ApiError(422, "Invalid", f'Pod "{name}" is invalid: spec: {forbidden}',
                                   {"name": name, "kind": "Pod",
                                    "causes": [{"reason": "FieldValueForbidden",
                                                "message": forbidden, "field": "spec"}]})
            updated["spec"] = spec
            updated["status"] = current.get("status", {})
        if resource == "resourcequotas":
            # Status is the controller's: hard follows the new spec, used is recounted.
            quota.prepare(updated)
            updated["status"] = self.control.quota_status(updated)
        if resource == "secrets":
            data = updated.get("data") or {}
            for key, value in (updated.pop("stringData", None) or {}).items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            updated["data"] = data
        return self.store.replace(resource, namespace, name, updated)

    async def _pod_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.store.get("pods", request.match_info["namespace"],
                                                request.match_info["name"]))

    async def _eviction(self, request: web.Request) -> web.Response:
        self.control.evict(request.match_info["namespace"], request.match_info["name"])
        return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                  "status": "Success"}, status=201)

    # Watch

    async def _watch(self, request: web.Request, resource: str, namespace: str | None,
                     predicate: Callable[[Obj], bool]) -> web.StreamResponse:
        raw_rv = request.query.get("resourceVersion", "")
        # Streaming lists (kubectl >= 1.32 "WatchList") ask for the current state as
        # events, closed by a bookmark annotated k8s.io/initial-events-end.
        initial_end = request.query.get("sendInitialEvents") in ("true", "1")
        since = int(raw_rv) if raw_rv not in ("", "0") and not initial_end else None
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        bookmarks = request.query.get("allowWatchBookmarks") in ("true", "1")
        response = web.StreamResponse(headers={"Content-Type": "application/json",
                                               "Transfer-Encoding": "chunked"})
        await response.prepare(request)
        self._streams.add(response)
        kind = RESOURCES[resource].kind

        async def send(event_type: str, obj: Obj) -> None:
            await response.write(json.dumps({"type": event_type, "object": obj},
                                            separators=(",", ":")).encode() + b"\n")

        try:
            watcher, initial = self.store.watch(resource, namespace, predicate, since)
        except ApiError as error:
            await send("ERROR", error.status())
            self._streams.discard(response)
            return response
        try:
            for past in initial:
                await send(past.type, past.obj)
            if initial_end:
                await send("BOOKMARK", {"kind": kind, "apiVersion": "v1", "metadata": {
                    "resourceVersion": str(self.store.resource_version),
                    "annotations": {"k8s.io/initial-events-end": "true"}}})
            deadline = time.monotonic() + timeout
            next_bookmark = time.monotonic() + self.bookmark_seconds
            while not self.closing.is_set():
                now = time.monotonic()
                if now >= deadline:
                    if bookmarks:
                        await send("BOOKMARK", {"kind": kind, "apiVersion": "v1", "metadata": {
                            "resourceVersion": str(self.store.resource_version)}})
                    break
                wait = min(deadline, next_bookmark if bookmarks else deadline) - now
                try:
                    event: WatchEvent | None = await asyncio.wait_for(watcher.queue.get(),
                                                                      max(wait, 0.001))
                except TimeoutError:
                    if bookmarks and time.monotonic() >= next_bookmark:
                        await send("BOOKMARK", {"kind": kind, "apiVersion": "v1", "metadata": {
                            "resourceVersion": str(self.store.resource_version)}})
                        next_bookmark = time.monotonic() + self.bookmark_seconds
                    continue
                if event is None:
                    break
                await send(event.type, event.obj)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.unwatch(watcher)
            self._streams.discard(response)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await response.write_eof()
        return response

    # Logs

    async def _log(self, request: web.Request) -> web.StreamResponse:
        if request.method != "GET":
            raise ApiError(405, "MethodNotAllowed", "only GET is allowed on pods/log")
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        if request.query.get("previous") in ("true", "1"):
            raise ApiError(400, "BadRequest", f'previous terminated container '
                           f'"{request.query.get("container", "")}" in pod "{name}" not found')
        run, container = self.kubelet.container_for(namespace, name,
                                                    request.query.get("container"), "log")
        follow = request.query.get("follow") in ("true", "1")
        timestamps = request.query.get("timestamps") in ("true", "1")
        tail = int(request.query["tailLines"]) if request.query.get("tailLines") else None
        limit = int(request.query["limitBytes"]) if request.query.get("limitBytes") else None
        since = float(request.query["sinceSeconds"]) if request.query.get("sinceSeconds") else None
        assert container.log_path is not None
        path = container.log_path
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        sent = 0

        def render(line: bytes) -> bytes | None:
            stamp, _, rest = line.partition(b" ")
            _, _, rest = rest.partition(b" ")
            tag, _, content = rest.partition(b" ")
            if since is not None:
                moment = datetime.strptime(stamp.decode()[:26] + "Z", "%Y-%m-%dT%H:%M:%S.%fZ")
                if moment.replace(tzinfo=UTC).timestamp() < time.time() - since:
                    return None
            text = content + (b"\n" if tag == b"F" else b"")
            return (stamp[:-1] + b"000Z " if timestamps else b"") + text

        async def emit(chunk: bytes) -> bool:
            nonlocal sent
            if limit is not None:
                chunk = chunk[: max(0, limit - sent)]
            if chunk:
                await response.write(chunk)
                sent += len(chunk)
            return limit is None or sent < limit

        try:
            # One handle for the whole request: following reads only what was appended,
            # and keeps working if the pod's directory is removed meanwhile.
            with path.open("rb") as handle:
                # The last element is empty or a line the kubelet is still writing.
                *complete, partial = handle.read().split(b"\n")
                offset = handle.tell() - len(partial)
                if tail is not None:
                    complete = complete[-tail:] if tail > 0 else []
                for line in complete:
                    rendered = render(line)
                    if rendered is not None and not await emit(rendered):
                        return response
                while follow and not self.closing.is_set():
                    exited = container.exited.is_set() and all(
                        t.done() for t in container.log_writers)
                    handle.seek(offset)
                    *new, _ = handle.read().split(b"\n")
                    for line in new:
                        offset += len(line) + 1
                        rendered = render(line)
                        if rendered is not None and not await emit(rendered):
                            return response
                    if exited or (run.namespace, run.name) not in self.kubelet.runs:
                        break
                    await asyncio.sleep(0.05)
            await response.write_eof()
        except (ConnectionResetError, FileNotFoundError):
            pass
        return response

    # Admin API

    async def _admin_fault(self, request: web.Request) -> web.Response:
        body = await request.json()
        fault = RequestFault(method=body.get("method", "*"), path=body.get("path", ".*"),
                             count=int(body.get("count", 1)), status=body.get("status"),
                             retry_after=body.get("retryAfter"), reset=bool(body.get("reset")),
                             latency=float(body.get("latency", 0.0)),
                             message=body.get("message", "injected fault"))
        self.faults.add_request_fault(fault)
        return web.json_response({"armed": True})

    async def _admin_clear(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({"cleared": True})

    async def _admin_exec_cut(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.faults.add_exec_cut(ExecCut(int(body.get("count", 1)), body.get("afterBytes"),
                                         body.get("afterSeconds")))
        return web.json_response({"armed": True})

    async def _admin_requests(self, request: web.Request) -> web.Response:
        return web.json_response({"counts": self.faults.counts(),
                                  "requests": self.faults.as_json()})

    async def _admin_compact(self, request: web.Request) -> web.Response:
        return web.json_response({"compactedTo": self.store.compact()})

    async def _admin_node(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.control.set_node_ready(bool(body.get("ready", True)))
        return web.json_response({"ready": self.kubelet.node_ready})

    async def _admin_evict(self, request: web.Request) -> web.Response:
        try:
            self.control.evict(request.match_info["namespace"], request.match_info["name"])
        except ApiError as error:
            return status_response(error)
        return web.json_response({"evicted": True})

    async def _admin_oom(self, request: web.Request) -> web.Response:
        try:
            self.kubelet.oom_kill(request.match_info["namespace"], request.match_info["name"],
                                  request.match_info["container"])
        except ApiError as error:
            return status_response(error)
        return web.json_response({"killed": True})

    async def close_streams(self) -> None:
        """End watches, log follows and exec sessions (server stop)."""
        self.closing.set()
        self.store.close_all_watches()
        # A stopping API server drops its connections; a graceful websocket close
        # would wait for clients that may never answer.
        for stream in list(self._streams):
            if isinstance(stream, web.WebSocketResponse):
                await drop(stream)
