"""`cleanup` stage: remove everything the driver created for the job.

gitlab-runner calls it after every job, after every failed prepare attempt and after
cancels, possibly while an old `run` is still alive, and waits for it before it
reports the job's status. So it is idempotent (an absent pod is success), needs
nothing from earlier stages but the job's identity, and does not wait for the pod's
containers to finish terminating.
"""

from __future__ import annotations

from . import logs
from .kube import Cluster


def cleanup(cluster: Cluster, pod: str) -> bool:
    """Delete the job's pod; False when there was nothing to delete."""
    deleted = cluster.delete_pod(pod)
    logs.get().info("pod deleted" if deleted else "pod already gone")
    return deleted
