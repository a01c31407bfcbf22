"""`run` stage: run one generated script in the right container, output streamed back.

gitlab-runner calls this about ten times per job with a script that holds the job's
secrets. The script travels on the exec's stdin (never in the URL, the pod spec or a
log), lives in the pod only as an unlinked file on a memory volume, and its output
reaches our stdout and stderr byte for byte as it arrives. A non-zero exit of the
script is the job's failure (`JobFailed` with its code); anything else that goes
wrong is the system's. This module must not interpret the script.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from . import logs
from .errors import Canceled, ClusterError, ConfigError, JobFailed
from .inpod import launcher_argv, stopper_argv
from .kube import Cluster
from .podspec import BUILD, HELPER

# The stages GitLab's own Kubernetes executor runs in its helper container: they need
# git and the `gitlab-runner` binary, which the kaniko image lacks.
HELPER_STAGES = frozenset({"prepare_script", "get_sources", "clear_worktree", "restore_cache",
                           "download_artifacts", "cleanup_file_variables"})
HELPER_STAGE_PREFIXES = ("archive_cache", "upload_artifacts_")
STOP_TIMEOUT_SECONDS = 4.0


def container_for(stage: str) -> str:
    """The container a stage runs in: predefined stages in `helper`, the rest in `build`.

    Unknown stage names go to `build`: new user steps are what the runner adds over time.
    """
    if stage in HELPER_STAGES or stage.startswith(HELPER_STAGE_PREFIXES):
        return HELPER
    return BUILD


def run(cluster: Cluster, pod: str, script_path: Path, stage: str) -> None:
    """Run the stage's script in the pod.

    Raises:
        JobFailed: the script exited non-zero (its code is kept).
        ClusterError: the script could not be run or its outcome is unknown.
        Canceled: SIGTERM arrived; the script in the pod was stopped first.
    """
    try:
        script = script_path.read_bytes()
    except OSError as error:
        raise ConfigError(f"reading the {stage} script {script_path}: "
                          f"{error.strerror or error}") from error
    container = container_for(stage)
    stage_id = f"{re.sub(r'[^a-z0-9_]', '_', stage.lower())[:40]}-{os.getpid()}-" \
               f"{secrets.token_hex(4)}"
    log = logs.get().bind(container=container, stage_id=stage_id)
    log.debug("running stage script", bytes=len(script))
    try:
        code = cluster.run_script(pod, container, launcher_argv(len(script), stage_id),
                                  script, stdout_fd=1, stderr_fd=2)
    except Canceled:
        _stop(cluster, pod, container, stage_id)
        raise
    if code != 0:
        log.info("stage script failed", exit_code=code)
        raise JobFailed(f"the {stage} script exited with code {code}", exit_code=code)


def _stop(cluster: Cluster, pod: str, container: str, stage_id: str) -> None:
    """Stop the stage's processes in the pod (best effort, bounded)."""
    log = logs.get()
    try:
        cluster.run_quiet(pod, container, stopper_argv(stage_id),
                          timeout=STOP_TIMEOUT_SECONDS)
    except ClusterError as error:
        log.warning("could not stop the stage script in the pod", error=str(error))
    else:
        log.info("stopped the stage script in the pod")
