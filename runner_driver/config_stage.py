"""`config` stage: tell gitlab-runner where the job's directories are and who runs it.

The runner parses this stage's stdout as one JSON document; a single stray byte there
fails the job, so this module returns a value and `cli` alone prints it. It must not
create anything in the cluster: `config` only names what `prepare` will create.
"""

from __future__ import annotations

from typing import Any

from . import __version__
from .podspec import pod_name
from .runner_env import NAMESPACE_KEY, POD_KEY, JobContext
from .settings import Settings

DRIVER_NAME = "runner-driver"


def config(settings: Settings, job: JobContext, namespace: str) -> dict[str, Any]:
    """The `config_exec` output for this job."""
    name = pod_name(job)
    return {
        "builds_dir": settings.pod.builds_dir,
        "cache_dir": settings.pod.cache_dir,
        # One pod per job: nothing else ever writes to its builds volume.
        "builds_dir_is_shared": False,
        "hostname": name,
        "driver": {"name": DRIVER_NAME, "version": __version__},
        "job_env": {POD_KEY: name, NAMESPACE_KEY: namespace},
    }
