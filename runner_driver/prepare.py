"""`prepare` stage: create the job's pod and return once both containers run.

Whatever prepare prints lands in the job log, so it says in plain words what it is
doing and, when the pod cannot start, why (the kubelet's or scheduler's message and
the pod's events). It leaves nothing behind on failure: a pod that was created is
deleted again (that incarnation only, by its uid) before the error goes up. It never
deletes or replaces a pod that is not this job's own, whatever name it has. When to
give up on a pod that does not start is decided here (`wait_running`); `kube` only
follows the pod. It must not run job scripts.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TextIO

from . import cancel, credentials, jobrecord, logs
from .errors import Canceled, ClusterError, ConfigError, JobFailed, PodStartError
from .jobrecord import PodRecord
from .kube import Cluster
from .podspec import BUILD, HELPER, JOB_LABEL, MANAGER_LABEL, leftover_of, plan
from .podstatus import PodState, assess
from .runner_env import JobContext, new_nonce
from .settings import Settings

PROGRESS_SECONDS = 1.0


def prepare(settings: Settings, job: JobContext, cluster: Cluster, out: TextIO
            ) -> PodRecord:
    """Create the pod for `job` and wait until it runs; what was created.

    The pod is recorded in the job's temporary directory before it is created and
    again, with its uid, once the API server answers, so `cleanup` deletes exactly it.
    Without a `config` stage (no nonce in job_env) the nonce is minted here.

    Raises:
        JobFailed: the job's image is not allowed (before anything is created).
        ConfigError: the job has no private temporary directory to record the pod in.
        PodStartError, ClusterError: the pod could not be started; it was deleted. A
            pod of the job's name that is not this job's is never replaced.
        Canceled: SIGTERM arrived; the pod was deleted.
    """
    log = logs.get()
    if not job.tmpdir:
        raise ConfigError("preparing the job: TMPDIR is not set to an absolute path; "
                          "runner-driver stages must be started by gitlab-runner")
    if not job.nonce:
        job = replace(job, nonce=new_nonce())
    built = plan(settings, job, operator_registries(cluster, settings),
                 operator_ca(cluster, settings))
    manifest = built.pod
    name = manifest["metadata"]["name"]
    images = {c["name"]: c["image"] for c in manifest["spec"]["containers"]}
    if job.services:
        _say(out, f"WARNING: this job declares services ({', '.join(job.services)}); "
                  "runner-driver starts no service containers, so they are not available.")
    _say(out, built.registries)
    for note in built.notes:
        _say(out, note if note.startswith("WARNING") else f"Pod override {note}")
    _say(out, f"Creating pod {cluster.namespace}/{name} (build image {images[BUILD]}, "
              f"helper image {images[HELPER]})")
    started = time.monotonic()
    secret = built.secret
    if secret is not None:
        # Before the pod, so the kubelet finds it at once (a missing secret volume is
        # retried with a back-off of half a second and more). Not recorded: cleanup
        # acts on the pod only, and `gc` removes a Secret whose pod never came.
        _create_secret(cluster, secret, settings, job)
    record = PodRecord(cluster.namespace, name, job.nonce)
    _record(job, record)
    try:
        created = _create(cluster, manifest, settings, job)
    except BaseException:
        if secret is not None:
            _delete_secret(cluster, secret["metadata"]["name"], out)
        raise
    record = PodRecord(cluster.namespace, name, job.nonce,
                       str(created["metadata"].get("uid") or ""))
    _record(job, record)
    log.info("pod created", namespace=cluster.namespace, uid=record.uid)
    if secret is not None:
        try:
            # Owned by the pod, Kubernetes deletes the Secret with it, whoever deletes it.
            cluster.own_secret(secret["metadata"]["name"], created)
        except (ClusterError, Canceled):
            _remove(cluster, job, record, out)
            _delete_secret(cluster, secret["metadata"]["name"], out)
            raise

    shown = started - PROGRESS_SECONDS

    def progress(state: PodState) -> None:
        # Every change would be a line per container per step: one line a second at most.
        nonlocal shown
        now = time.monotonic()
        if state.phase == "starting" and now - shown >= PROGRESS_SECONDS:
            shown = now
            _say(out, f"Waiting for pod {cluster.namespace}/{name}: {state.message}")

    try:
        pod = wait_running(cluster, created, settings.pod.start_timeout_seconds, progress,
                           settings.pod.unschedulable_timeout_seconds)
    except (PodStartError, ClusterError, Canceled) as error:
        if isinstance(error, PodStartError):
            _say(out, f"ERROR: pod {cluster.namespace}/{name} cannot start: {error}")
            _show_events(cluster, name, record.uid, out)
        _remove(cluster, job, record, out)
        raise
    node = (pod.get("spec") or {}).get("nodeName", "?")
    _say(out, f"Pod {cluster.namespace}/{name} is running on node {node} "
              f"({time.monotonic() - started:.1f}s)")
    return record


def _record(job: JobContext, record: PodRecord) -> None:
    try:
        jobrecord.write(job.tmpdir, record)
    except (OSError, ValueError) as error:
        raise ConfigError(f"recording pod {record.namespace}/{record.name} in the job's "
                          f"temporary directory {job.tmpdir}: {error}") from error


def wait_running(cluster: Cluster, created: dict[str, Any], timeout: float,
                 progress: Callable[[PodState], None],
                 unschedulable_timeout: float | None = None) -> dict[str, Any]:
    """Wait on a watch until every container of the pod runs; the running pod.

    Fails at once when the pod cannot start (see `podstatus.assess`), after
    `unschedulable_timeout` seconds of the scheduler finding no node, and after
    `timeout` seconds when it still has not started (slow pulls, a lost node).
    `progress` gets the first state and every one whose message changed.

    Raises:
        PodStartError: naming the reason; ClusterError when the API fails.
    """
    name = created["metadata"]["name"]
    started = time.monotonic()
    pod: dict[str, Any] = created
    last = assess(created)
    progress(last)
    while last.phase == "starting":
        limit = timeout
        if last.unschedulable and unschedulable_timeout is not None:
            limit = min(timeout, unschedulable_timeout)
        if time.monotonic() - started >= limit:
            raise PodStartError(f"pod {cluster.namespace}/{name} did not start within "
                                f"{limit:g}s: {last.message}")
        for _kind, obj in cluster.pod_updates(pod, started + limit):
            if obj is None:
                raise PodStartError(f"pod {cluster.namespace}/{name} was deleted while "
                                    "it was starting")
            pod = obj
            state = assess(pod)
            if state.message != last.message:
                progress(state)
            changed = state.phase != last.phase or state.unschedulable != last.unschedulable
            last = state
            if changed:  # the time limit may be another one now
                break
    if last.phase == "failed":
        raise PodStartError(last.message)
    return pod


def _create(cluster: Cluster, manifest: dict[str, Any], settings: Settings,
            job: JobContext) -> dict[str, Any]:
    """Create the pod; a leftover of this same job (an earlier attempt) is replaced.

    A pod of the same name whose labels do not show it is this job's own (the payload's
    job and project ids, this manager) is someone else's: it is left alone and the
    attempt fails. A retried create whose first try reached the server meets its own
    pod here too, which the labels show is this job's.
    """
    name = manifest["metadata"]["name"]
    try:
        return cluster.create_pod(manifest)
    except ClusterError as error:
        if error.unsent:
            jobrecord.remove(job.tmpdir)  # nothing was created: cleanup has nothing to do
        if error.status != 409:
            raise
    existing = cluster.read_pod(name)
    if existing is not None:
        if not leftover_of(existing, settings, job):
            found = (existing.get("metadata") or {}).get("labels") or {}
            owner = (f"job {found.get(JOB_LABEL)} of manager {found.get(MANAGER_LABEL)}"
                     if found.get(JOB_LABEL) else "no runner-driver job")
            raise ClusterError(
                f"creating pod {cluster.namespace}/{name}: a pod of that name already exists "
                f"and is not this job's (its labels name {owner}); refusing to replace it",
                status=409)
        uid = str(existing["metadata"].get("uid") or "")
        logs.get().info("replacing a leftover pod of this job", uid=uid)
        try:
            cluster.delete_pod(name, grace_seconds=0, uid=uid)
        except ClusterError as error:
            if error.status != 409:  # 409: it went and another took the name meanwhile
                raise
        cluster.wait_gone(name, timeout=60)
    return cluster.create_pod(manifest)


def operator_registries(cluster: Cluster, settings: Settings
                         ) -> tuple[tuple[str, dict[str, Any]], ...]:
    """The operator's registry Secrets (`[registry] secrets`), parsed.

    Raises:
        ConfigError: a named Secret is missing or holds no .dockerconfigjson config.
    """
    found = []
    for name in settings.registry.secrets:
        where = (f"reading registry secret {cluster.namespace}/{name} (registry.secrets in "
                 f"{settings.source})")
        secret = cluster.read_secret(name)
        if secret is None:
            raise ConfigError(f"{where}: it does not exist")
        value = (secret.get("data") or {}).get(credentials.SECRET_KEY)
        if not value:
            raise ConfigError(f"{where}: it has no {credentials.SECRET_KEY} key (create it "
                              "with kubectl create secret docker-registry)")
        try:
            text = base64.b64decode(value).decode()
        except ValueError as error:
            raise ConfigError(f"{where}: its {credentials.SECRET_KEY} is not UTF-8 text "
                              f"({error.__class__.__name__})") from None
        try:
            found.append((name, credentials.parse(text, f"registry secret "
                                                        f"{cluster.namespace}/{name}")))
        except JobFailed as error:  # the operator's mistake, not the job's
            raise ConfigError(f"{error} (registry.secrets in {settings.source})") from None
    return tuple(found)


def operator_ca(cluster: Cluster, settings: Settings) -> str:
    """The PEM of `[tls] ca_secret` and `ca_configmap` (key ca.crt); "" when unset.

    Raises:
        ConfigError: a named object is missing or has no ca.crt certificate.
    """
    found = []
    for key, kind, read in (("ca_secret", "secret", cluster.read_secret),
                            ("ca_configmap", "configmap", cluster.read_configmap)):
        name = getattr(settings.tls, key)
        if not name:
            continue
        where = (f"reading the CA {kind} {cluster.namespace}/{name} (tls.{key} in "
                 f"{settings.source})")
        obj = read(name)
        if obj is None:
            raise ConfigError(f"{where}: it does not exist")
        value = (obj.get("data") or {}).get("ca.crt", "")
        if kind == "secret" and value:
            try:
                value = base64.b64decode(value).decode("ascii")
            except ValueError:
                value = ""
        if "-----BEGIN CERTIFICATE-----" not in value:
            raise ConfigError(f"{where}: it has no ca.crt key holding PEM certificates")
        found.append(value)
    return "\n".join(found)


def _create_secret(cluster: Cluster, secret: dict[str, Any], settings: Settings,
                   job: JobContext) -> None:
    """Create the job's registry Secret; one left by an earlier attempt of this job is
    replaced, one of another job is never touched."""
    name = secret["metadata"]["name"]
    try:
        cluster.create_secret(secret)
        return
    except ClusterError as error:
        if error.status != 409:
            raise
    existing = cluster.read_secret(name)
    if existing is not None:
        if not leftover_of(existing, settings, job):
            raise ClusterError(f"creating secret {cluster.namespace}/{name}: a secret of that "
                               "name exists and is not this job's; refusing to replace it",
                               status=409)
        cluster.delete_secret(name, uid=str(existing["metadata"].get("uid") or ""))
    cluster.create_secret(secret)


def _delete_secret(cluster: Cluster, name: str, out: TextIO) -> None:
    """Delete the job's registry Secret after a failed start; `gc` removes it otherwise."""
    try:
        with cancel.shielded(cluster.retry_timeout):
            cluster.delete_secret(name)
    except ClusterError as error:
        _say(out, f"ERROR: could not delete secret {cluster.namespace}/{name} after the "
                  f"failed start ({error}); runner-driver gc will remove it")


def _say(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()


def _show_events(cluster: Cluster, name: str, uid: str, out: TextIO) -> None:
    try:
        events = cluster.pod_events(name, uid)
    except ClusterError as error:
        _say(out, f"(could not list the pod's events: {error})")
        return
    # Normal events (Scheduled, Pulling, Created) say nothing about why it failed.
    events = [e for e in events if e.get("type") == "Warning"]
    if not events:
        return
    _say(out, f"Warning events of pod {cluster.namespace}/{name}:")
    for event in events:
        count = event.get("count") or 1
        repeat = f" (x{count})" if count > 1 else ""
        _say(out, f"  {event.get('type', '')} {event.get('reason', '')}: "
                  f"{event.get('message', '')}{repeat}")


def _remove(cluster: Cluster, job: JobContext, record: PodRecord, out: TextIO) -> None:
    """Delete the pod this attempt created (that incarnation only), and its record.

    A cancel does not cut the delete short: it has the API retry budget to land.
    """
    where = f"{cluster.namespace}/{record.name}"
    try:
        with cancel.shielded(cluster.retry_timeout):
            cluster.delete_pod(record.name, grace_seconds=0, uid=record.uid)
    except ClusterError as error:
        if error.status == 409:  # replaced by a pod that is not ours: not ours to delete
            jobrecord.remove(job.tmpdir)
            return
        _say(out, f"ERROR: could not delete pod {where} after the failed start ({error}); "
                  "cleanup will try again")
    else:
        jobrecord.remove(job.tmpdir)
        _say(out, f"Deleted pod {where}")
