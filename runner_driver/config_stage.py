"""`config` stage: tell gitlab-runner where the job's directories are and who runs it.

The runner parses this stage's stdout as one JSON document; a single stray byte there
fails the job, so this module returns a value and `cli` alone prints it. It must not
create anything in the cluster: `config` only names what `prepare` will create.

It also mints the job's nonce. gitlab-runner passes `job_env` to the later stages
unprefixed, where no job variable can reach it, so the nonce in it is something the
job's author cannot choose: `prepare` stores it on the pod, and every later stage acts
on a pod, or talks to an agent, only when the nonce matches.
"""

from __future__ import annotations

from typing import Any

from . import __version__
from .podspec import pod_name
from .runner_env import NAMESPACE_KEY, NONCE_KEY, POD_KEY, JobContext, new_nonce
from .settings import Settings

DRIVER_NAME = "runner-driver"


def config(settings: Settings, job: JobContext, namespace: str) -> dict[str, Any]:
    """The `config_exec` output for this job, with a freshly minted nonce in `job_env`.

    Each prepare attempt runs `config` again, so each attempt has its own nonce.
    """
    name = pod_name(settings, job)
    return {
        "builds_dir": settings.pod.builds_dir,
        "cache_dir": settings.pod.cache_dir,
        # One pod per job: nothing else ever writes to its builds volume.
        "builds_dir_is_shared": False,
        "hostname": name,
        "driver": {"name": DRIVER_NAME, "version": __version__},
        "job_env": {POD_KEY: name, NAMESPACE_KEY: namespace, NONCE_KEY: new_nonce()},
    }
