"""`runner-driver check`: can a job run here? Asked of the cluster before any job is.

A missing permission, namespace or operator Secret otherwise shows up only when the
first job fails in `prepare` or `run`, as a system failure the runner retries. So an
operator (or the Helm chart, as an init container and a `helm test` hook) runs this
preflight with the driver's own settings and credentials: it asks the API server,
with a SelfSubjectAccessReview each, for every permission in `permissions.PERMISSIONS`
in the job namespace (the optional ones only when the settings need them), checks the
namespace and the operator's Secrets and ConfigMap named in the settings exist and
read as `prepare` reads them, and has the API server admit, by a server-side dry run,
the pod `render` builds for its sample job (Pod Security, quota, strict field
validation). It prints a table of PASS/FAIL/SKIP rows, each failure saying what to
fix, and exits 0 only when a job can run, else 1.

It must never create anything for real: reviews are answered and not stored, and the
pod is created with `dryRun=All` only. It changes no setting and no object.

It is not a runner stage, so it uses plain exit codes (0, 1) and not the runner's
BUILD_FAILURE/SYSTEM_FAILURE codes: no gitlab-runner reads them, and a chart's init
container or test hook needs the ordinary convention (non-zero means "not ready").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, TextIO

from . import prepare, render
from .errors import ClusterError, ConfigError, DriverError, JobFailed
from .kube import Cluster, Connection
from .permissions import PERMISSIONS, Permission
from .settings import Settings

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
PSA_ENFORCE = "pod-security.kubernetes.io/enforce"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"

@dataclass(frozen=True)
class Result:
    """One row of the table: the outcome, what was checked, and a note or the fix."""

    status: str
    what: str
    detail: str = ""


def check(settings: Settings, connect: Callable[[], Connection], out: TextIO) -> int:
    """Run every check, print the table to `out`; 0 when a job can run, else 1."""
    results = list(run_checks(settings, connect))
    out.write(table(results))
    out.flush()
    return 1 if any(r.status == FAIL for r in results) else 0


def run_checks(settings: Settings, connect: Callable[[], Connection]) -> Iterator[Result]:
    """The checks' results, in the table's order."""
    try:
        connection = connect()
    except ConfigError as error:
        yield Result(FAIL, "cluster credentials", f"{error}")
        return
    cluster = Cluster(connection, settings.kubernetes.request_timeout_seconds,
                      settings.kubernetes.retry_timeout_seconds)
    try:
        user = cluster.who_am_i()
    except ClusterError as error:
        if error.status is None or error.status == 401:
            what = (f"credentials accepted by {connection.server}" if error.status
                    else f"reach the Kubernetes API at {connection.server}")
            yield Result(FAIL, what, f"{error}; fix the kubeconfig or [kubernetes] settings "
                                     f"in {settings.source}")
            return
        user = ""  # an API server without SelfSubjectReview (before 1.28): still usable
    yield Result(PASS, f"credentials accepted by {connection.server}",
                 f"as {_identity(user)}" if user else "as an identity the server did not name")
    dry_run = _dry_run(settings, cluster)
    yield _namespace(settings, cluster, dry_run)
    for permission in PERMISSIONS:
        yield _permission(settings, cluster, permission, user)
    yield from _operator_objects(settings, cluster)
    yield dry_run.result


def _identity(user: str) -> str:
    """`ServiceAccount ns/name` for a service account's user name, else `User "name"`."""
    if user.startswith(SERVICE_ACCOUNT_PREFIX):
        namespace, _, name = user.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
        return f"ServiceAccount {namespace}/{name}"
    return f'User "{user}"' if user else "the driver's identity"


def _permission(settings: Settings, cluster: Cluster, permission: Permission,
                user: str) -> Result:
    verb, resource, namespace = permission.verb, permission.resource, cluster.namespace
    what = f"{verb} {resource} in namespace {namespace}"
    try:
        allowed, _reason = cluster.access_review(verb, resource)
    except ClusterError as error:
        return Result(FAIL, what, f"could not ask: {error}")
    if allowed:
        return Result(PASS, what, permission.needed_by)
    if not permission.needed(settings):
        return Result(SKIP, what, f"not granted, and not needed while "
                                  f"{permission.optional_when}")
    return Result(FAIL, what, f"denied; fix: grant `{verb}` on `{resource}` in namespace "
                              f"{namespace} to {_identity(user)}: {permission.needed_by}")


@dataclass
class _DryRun:
    """The dry-run create's outcome: its row, and whether it found no namespace."""

    result: Result
    namespace_missing: bool = False


def _dry_run(settings: Settings, cluster: Cluster) -> _DryRun:
    what = "the sample job's pod is admitted (server-side dry run)"
    try:
        registries, ca = _operator_inputs(settings, cluster)
        _job, _source, built = render.build(settings, {}, registries, ca)
    except (ConfigError, JobFailed) as error:
        return _DryRun(Result(FAIL, what, f"the pod cannot be built: {error}; fix the "
                                          f"settings, template or patch in {settings.source}"))
    try:
        cluster.dry_run_create_pod(built.pod)
    except ClusterError as error:
        return _DryRun(Result(FAIL, what, _admission_fix(settings, cluster, error)),
                       namespace_missing=_namespace_missing(error, cluster.namespace))
    return _DryRun(Result(PASS, what, "authorization, field validation, Pod Security and "
                                      "quota admission accept it; nothing was created"))


def _operator_inputs(settings: Settings, cluster: Cluster
                     ) -> tuple[tuple[tuple[str, dict[str, Any]], ...], str | None]:
    """The operator's registry logins and CA as prepare reads them, where readable.

    What cannot be read has its own row (`_operator_objects`); the pod is then built
    with what was read and render's CA stand-in, so its shape is still prepare's.
    """
    try:
        registries = prepare.operator_registries(cluster, settings)
    except DriverError:
        registries = ()
    try:
        ca: str | None = prepare.operator_ca(cluster, settings) or None
    except DriverError:
        ca = None
    return registries, ca


def _namespace_missing(error: ClusterError, namespace: str) -> bool:
    return error.status == 404 and f'namespaces "{namespace}" not found' in str(error)


def _admission_fix(settings: Settings, cluster: Cluster, error: ClusterError) -> str:
    """The API server's refusal, and what to change."""
    text, namespace = str(error), cluster.namespace
    if "violates PodSecurity" in text:
        fix = (f"the job pod needs the Pod Security level baseline: label namespace "
               f"{namespace} with {PSA_ENFORCE}=baseline (kaniko builds as root), or change "
               f"the pod template or patch in {settings.source}")
    elif _namespace_missing(error, namespace):
        fix = f"create namespace {namespace}"
    elif error.status == 403 and "exceeded quota" in text:
        fix = (f"raise the ResourceQuota in namespace {namespace}, or lower the requests "
               f"in [build] and [helper] in {settings.source}")
    elif error.status == 403:
        fix = "grant the permissions above"
    elif error.status in (400, 422):
        fix = f"fix the pod template or patch in {settings.source}"
    else:
        fix = "see the API server's message"
    return f"{text}; fix: {fix}"


def _namespace(settings: Settings, cluster: Cluster, dry_run: _DryRun) -> Result:
    namespace = cluster.namespace
    what = f"namespace {namespace} exists"
    missing = (f"it does not exist; fix: create it (kubectl create namespace {namespace}), "
               f"or name the right one in [kubernetes] namespace in {settings.source} or in "
               "the kubeconfig context")
    try:
        found = cluster.read_namespace()
    except ClusterError as error:
        if error.status != 403:
            return Result(FAIL, what, f"could not read it: {error}")
        # Reading namespaces is not among the driver's permissions: the dry run tells.
        if dry_run.namespace_missing:
            return Result(FAIL, what, missing)
        return Result(PASS, what, "the dry-run create found it (reading it is not granted, "
                                  "and the driver does not need to)")
    if found is None:
        return Result(FAIL, what, missing)
    labels = (found.get("metadata") or {}).get("labels") or {}
    level = labels.get(PSA_ENFORCE)
    return Result(PASS, what, f"Pod Security enforce: {level}" if level
                  else "no Pod Security level enforced")


def _operator_objects(settings: Settings, cluster: Cluster) -> Iterator[Result]:
    """A row for each registry Secret and CA object the settings name, read as prepare does."""
    namespace = cluster.namespace
    for name in settings.registry.secrets:
        only = dataclasses.replace(settings, registry=dataclasses.replace(
            settings.registry, secrets=(name,)))
        yield _read_row(f"registry Secret {namespace}/{name} ([registry] secrets)",
                        partial(prepare.operator_registries, cluster, only),
                        f"create it: kubectl -n {namespace} create secret docker-registry "
                        f"{name} ...")
    for key, kind in (("ca_secret", "Secret"), ("ca_configmap", "ConfigMap")):
        name = getattr(settings.tls, key)
        if not name:
            continue
        other = "ca_configmap" if key == "ca_secret" else "ca_secret"
        only = dataclasses.replace(settings, tls=dataclasses.replace(
            settings.tls, **{other: ""}))
        yield _read_row(f"CA {kind} {namespace}/{name} ([tls] {key})",
                        partial(prepare.operator_ca, cluster, only),
                        f"create it with the PEM certificates under the key ca.crt: kubectl "
                        f"-n {namespace} create {kind.lower()} "
                        f"{'generic ' if kind == 'Secret' else ''}{name} "
                        "--from-file=ca.crt=...")


def _read_row(what: str, read: Callable[[], object], fix: str) -> Result:
    try:
        read()
    except ConfigError as error:
        return Result(FAIL, what, f"{error}; fix: {fix}")
    except ClusterError as error:
        return Result(FAIL, what, f"{error}")
    return Result(PASS, what, "present and readable as prepare reads it")


def table(results: list[Result]) -> str:
    """The results as an aligned plain-text table, with a closing verdict."""
    width = max([len("CHECK"), *(len(r.what) for r in results)])
    lines = [f"{'RESULT':<6}  {'CHECK':<{width}}  DETAIL"]
    lines += [f"{r.status:<6}  {r.what:<{width}}  {r.detail}".rstrip() for r in results]
    failed = sum(r.status == FAIL for r in results)
    lines.append("")
    lines.append(f"{failed} of {len(results)} checks failed: a job cannot run here"
                 if failed else f"all {len(results)} checks passed: a job can run here")
    return "\n".join(lines) + "\n"
