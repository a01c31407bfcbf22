"""`cleanup` stage: remove exactly what `prepare` created for the job, nothing else.

gitlab-runner calls it after every job, after every failed prepare attempt and after
cancels, possibly while an old `run` is still alive, and waits for it before it
reports the job's status. So it is idempotent (an absent pod is success) and does not
wait for the pod's containers to finish terminating.

It acts only on the record `prepare` left in the job's private temporary directory
(`jobrecord`), never on a name built from job variables: with no record, prepare
created nothing and cleanup returns at once, without calling the API (a job against
an unreachable cluster then fails in its prepare budget, not three cleanups later).
The delete carries the recorded uid as a precondition, so a newer pod of the same
name is never deleted; a record written before the API server answered (prepare was
killed in between) is completed by reading the pod and checking its nonce.
"""

from __future__ import annotations

from . import jobrecord, logs
from .errors import ClusterError
from .kube import Cluster
from .podspec import NONCE_LABEL
from .runner_env import JobContext


def cleanup(cluster: Cluster, job: JobContext) -> bool:
    """Delete the pod prepare recorded for `job`; False when there was nothing to delete."""
    log = logs.get()
    record = jobrecord.read(job.tmpdir)
    if record is None:
        log.info("nothing to clean up: prepare created no pod for this job")
        return False
    log = log.bind(pod=record.name)
    uid = record.uid
    if not uid:
        pod = cluster.read_pod(record.name)
        labels = ((pod or {}).get("metadata") or {}).get("labels") or {}
        if pod is None or labels.get(NONCE_LABEL) != record.nonce:
            log.info("pod never created, or not this job's; nothing deleted")
            jobrecord.remove(job.tmpdir)
            return False
        uid = str(pod["metadata"].get("uid") or "")
    try:
        deleted = cluster.delete_pod(record.name, uid=uid)
    except ClusterError as error:
        if error.status != 409:
            raise
        log.warning("pod was replaced by one that is not this job's; left alone",
                    error=str(error))
        jobrecord.remove(job.tmpdir)
        return False
    jobrecord.remove(job.tmpdir)
    log.info("pod deleted" if deleted else "pod already gone", uid=uid)
    return deleted
