"""Who is asking and whether they may: bearer tokens and RBAC, as a real API server decides.

The admin kubeconfig's token (and a request without any) is a member of
`system:masters`: everything is allowed, as before RBAC was emulated. A service
account's token (`service_account_token`, also what the kubelet projects into pods)
makes the request `system:serviceaccount:NS:NAME`, and every resource request it makes
is authorized against the Roles and ClusterRoles its RoleBindings and
ClusterRoleBindings grant, matching verbs, API groups, resources (with subresources
such as `pods/exec`, and `*`) and resourceNames. A refusal is the API server's 403
Status, word for word (`forbidden`); `authorize` also answers SelfSubjectAccessReviews.

Taken from kubernetes/kubernetes: the request attributes from apiserver's
RequestInfoFactory (`GET /api/v1/namespaces/X` is in namespace X), the message from
responsewriters/errors.go (`forbiddenMessage`) wrapped by apimachinery's
`NewForbidden`, rule matching and the "allowed by" reason from
plugin/pkg/auth/authorizer/rbac. Not emulated: aggregated ClusterRoles, non-resource
URL rules (non-resource requests such as discovery are allowed to everyone
authenticated, as the default `system:discovery` role does), impersonation, token
expiry. Pure functions over the store; no HTTP here.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .fieldvalidation import go_quote
from .store import ApiError, Obj, Store

ADMIN_TOKEN = "emulated-admin-token"  # noqa: S105 (a test cluster's well-known token)
TOKEN_PREFIX = "emulated."  # noqa: S105 (+ base64url("NAMESPACE:NAME"), as in pods)
ALWAYS_ALLOWED = frozenset({  # the default system:basic-user ClusterRole
    ("authorization.k8s.io", "selfsubjectaccessreviews"),
    ("authorization.k8s.io", "selfsubjectrulesreviews"),
    ("authentication.k8s.io", "selfsubjectreviews")})


@dataclass(frozen=True)
class User:
    """An authenticated identity."""

    name: str
    groups: tuple[str, ...]

    @property
    def admin(self) -> bool:
        """A member of system:masters, which no authorizer can refuse."""
        return "system:masters" in self.groups


ADMIN = User("emulated-admin", ("system:masters", "system:authenticated"))


def service_account_token(namespace: str, name: str) -> str:
    """The bearer token of a service account (the kubelet projects the same one)."""
    raw = base64.urlsafe_b64encode(f"{namespace}:{name}".encode()).decode().rstrip("=")
    return TOKEN_PREFIX + raw


def authenticate(store: Store, authorization: str) -> User | None:
    """The user an Authorization header stands for; None for a token nobody issued.

    No header, or the admin token: the admin. A service account's token is valid while
    the service account exists (bound tokens die with it).
    """
    scheme, _, token = authorization.partition(" ")
    if not authorization or (scheme.lower() == "bearer" and token == ADMIN_TOKEN):
        return ADMIN
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX):
        return None
    encoded = token.removeprefix(TOKEN_PREFIX)
    try:
        decoded = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, ValueError):
        return None
    namespace, _, name = decoded.partition(":")
    if not name or store.find("serviceaccounts", namespace, name) is None:
        return None
    return User(f"system:serviceaccount:{namespace}:{name}",
                ("system:serviceaccounts", f"system:serviceaccounts:{namespace}",
                 "system:authenticated"))


def unauthorized() -> ApiError:
    """The 401 a real API server sends for a token it does not accept."""
    return ApiError(401, "Unauthorized", "Unauthorized")


# Subresources a client reaches by upgrading the connection (websocket or SPDY).
UPGRADED_SUBRESOURCES = frozenset({"exec", "attach", "portforward"})


@dataclass(frozen=True)
class Attributes:
    """What a request does, as the authorizer sees it."""

    verb: str
    group: str
    resource: str
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def combined(self) -> str:
        """`pods`, or `pods/exec` for a subresource."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def attributes(method: str, path: str, query: Mapping[str, str]) -> Attributes | None:
    """The request's attributes; None for a non-resource request (discovery, /version)."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, rest = parts[1], parts[3:]
    else:
        return None
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 2:
        namespace = rest[1]
        if len(rest) > 2:
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) >= 2 else ""
    subresource = rest[2] if len(rest) >= 3 else ""
    if method in ("GET", "HEAD"):
        verb = "watch" if query.get("watch") in ("true", "1") else ("get" if name else "list")
    elif method == "POST":
        verb = "create"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = {"PUT": "update", "PATCH": "patch"}.get(method, method.lower())
    return Attributes(verb, group, resource, subresource, namespace, name)


def checks(request: Attributes, websocket: bool) -> tuple[Attributes, ...]:
    """What must be allowed for a request: its own attributes, and for a websocket
    upgrade (which opens with GET) of exec, attach or portforward also `create`, as the
    POST of SPDY needs (Kubernetes >= 1.35, AuthorizePodWebsocketUpgradeCreatePermission
    on by default)."""
    if websocket and request.verb == "get" and request.subresource in UPGRADED_SUBRESOURCES:
        return request, replace(request, verb="create")
    return (request,)


def authorize(store: Store, user: User, request: Attributes) -> tuple[bool, str]:
    """Whether `user` may do `request`, and the authorizer's reason (empty when denied)."""
    if user.admin:
        return True, ""
    if (request.group, request.resource) in ALWAYS_ALLOWED:
        return True, ""
    for binding, role, subject in _grants(store, user, request.namespace):
        if any(_matches(rule, request) for rule in role.get("rules") or ()):
            meta = binding["metadata"]
            where = meta["name"] if binding["kind"] == "ClusterRoleBinding" \
                else f"{meta['name']}/{meta.get('namespace', '')}"
            return True, (f"RBAC: allowed by {binding['kind']} {go_quote(where)} of "
                          f"{role['kind']} {go_quote(role['metadata']['name'])} to {subject}")
    return False, ""


def forbidden(user: User, request: Attributes) -> ApiError:
    """The API server's 403 for a request RBAC did not allow."""
    scope = f"in the namespace {go_quote(request.namespace)}" if request.namespace \
        else "at the cluster scope"
    message = (f"User {go_quote(user.name)} cannot {request.verb} resource "
               f"{go_quote(request.combined)} in API group {go_quote(request.group)} {scope}")
    qualified = f"{request.resource}.{request.group}" if request.group else request.resource
    head = f"{qualified} {go_quote(request.name)}" if request.name else qualified
    details: dict[str, Any] = {"kind": request.resource}
    if request.name:
        details["name"] = request.name
    if request.group:
        details["group"] = request.group
    return ApiError(403, "Forbidden", f"{head} is forbidden: {message}", details)


def _grants(store: Store, user: User, namespace: str) -> Iterator[tuple[Obj, Obj, str]]:
    """(binding, role, subject) for every role bound to `user` where `namespace` is."""
    for binding in sorted(store.items("clusterrolebindings"),
                          key=lambda b: str(b["metadata"]["name"])):
        subject = _subject(binding, user, "")
        ref = binding.get("roleRef") or {}
        role = store.find("clusterroles", "", str(ref.get("name", ""))) \
            if ref.get("kind") == "ClusterRole" else None
        if subject and role is not None:
            yield binding, role, subject
    if not namespace:
        return
    for binding in sorted(store.items("rolebindings", namespace),
                          key=lambda b: str(b["metadata"]["name"])):
        subject = _subject(binding, user, namespace)
        ref = binding.get("roleRef") or {}
        role = None
        if ref.get("kind") == "Role":
            role = store.find("roles", namespace, str(ref.get("name", "")))
        elif ref.get("kind") == "ClusterRole":
            role = store.find("clusterroles", "", str(ref.get("name", "")))
        if subject and role is not None:
            yield binding, role, subject


def _subject(binding: Obj, user: User, namespace: str) -> str:
    """How the binding names `user` (`ServiceAccount "sa/ns"`), or "" if it does not."""
    for subject in binding.get("subjects") or ():
        kind, name = subject.get("kind"), str(subject.get("name", ""))
        if kind == "ServiceAccount":
            sa_namespace = str(subject.get("namespace") or namespace)
            if user.name == f"system:serviceaccount:{sa_namespace}:{name}":
                return f"ServiceAccount {go_quote(f'{name}/{sa_namespace}')}"
        elif kind == "User" and name == user.name:
            return f"User {go_quote(name)}"
        elif kind == "Group" and name in user.groups:
            return f"Group {go_quote(name)}"
    return ""


def _matches(rule: Obj, request: Attributes) -> bool:
    verbs = rule.get("verbs") or ()
    groups = rule.get("apiGroups") or ()
    resources = rule.get("resources") or ()
    names = rule.get("resourceNames") or ()
    return ("*" in verbs or request.verb in verbs) \
        and ("*" in groups or request.group in groups) \
        and ("*" in resources or request.combined in resources
             or (bool(request.subresource) and f"*/{request.subresource}" in resources)) \
        and (not names or request.name in names)
