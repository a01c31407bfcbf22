"""`run` stage: run one generated script in the right container, output streamed back.

gitlab-runner calls this about ten times per job with a script that holds the job's
secrets. The script travels on the exec's stdin (never in the URL, the pod spec or a
log) and lives in the pod only as an unlinked file on a memory volume. It runs
detached from the exec (see `inpod.STAGE_LAUNCHER`), writing its output to a file on
a pod volume, so a dropped connection loses nothing: `run` reconnects with backoff and
resumes from the byte offset it has, and the stage is never started twice. Output
reaches our stdout byte for byte as it arrives. A non-zero exit of the script (or its
container being OOM-killed) is the job's failure (`JobFailed` with its code); anything
else that goes wrong is the system's. This module must not interpret the script.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path

from . import cancel, logs
from .errors import Canceled, ClusterError, ConfigError, DriverError, JobFailed
from .inpod import StageControl, launcher_argv, standby_header, stopper_argv
from .kube import Cluster, RetryPolicy, write_all
from .podspec import BUILD, HELPER
from .podstatus import diagnose
from .standby import Standbys, next_container

# The stages GitLab's own Kubernetes executor runs in its helper container: they need
# git and the `gitlab-runner` binary, which the kaniko image lacks.
HELPER_STAGES = frozenset({"prepare_script", "get_sources", "clear_worktree", "restore_cache",
                           "download_artifacts", "cleanup_file_variables"})
HELPER_STAGE_PREFIXES = ("archive_cache", "upload_artifacts_")
STOP_TIMEOUT_SECONDS = 4.0
# The stop's command, and its exec handshake (bounded by the request timeout) before it.
STOP_SHIELD_SECONDS = STOP_TIMEOUT_SECONDS + 30.0
# The launcher says "alive" every ~5 s; a connection silent for four of those is dead
# even if no error reached us. Heartbeats also count as progress when reconnecting.
STALL_SECONDS = 20.0
DEATH_SETTLE_SECONDS = 1.0
# Reconnects start sooner than API retries: the job log stands still while we wait.
RECONNECT = RetryPolicy(initial=0.1, maximum=5.0)
_STAGE_ID = re.compile(r"[a-z0-9_]{0,40}-[0-9]+-[0-9a-f]{8}")


def container_for(stage: str) -> str:
    """The container a stage runs in: predefined stages in `helper`, the rest in `build`.

    Unknown stage names go to `build`: new user steps are what the runner adds over time.
    """
    if stage in HELPER_STAGES or stage.startswith(HELPER_STAGE_PREFIXES):
        return HELPER
    return BUILD


def new_stage_id(stage: str) -> str:
    """A fresh id for one run of `stage`: the name of its files in the pod."""
    return f"{re.sub(r'[^a-z0-9_]', '_', stage.lower())[:40]}-{os.getpid()}-" \
           f"{secrets.token_hex(4)}"


def run(cluster: Cluster, pod: str, script_path: Path, stage: str, nonce: str,
        out_fd: int = 1, stall_seconds: float = STALL_SECONDS, stage_id: str = "",
        offset: int = 0, standbys: Standbys | None = None) -> None:
    """Run the stage's script in the pod, its output (stdout and stderr merged) to `out_fd`.

    The pod must carry the job's `nonce` (the launcher checks it in the pod): a pod of
    the same name that is not the job's own runs nothing.

    With the `stage_id` and `offset` of a run that an earlier process started, it
    resumes that run: the script starts at most once, and output goes on from `offset`.

    With `standbys` (the agent's), the stage starts on the job's standby exec when it
    has a usable one, and once the script has ended a standby is opened for the next.

    Raises:
        JobFailed: the script exited non-zero (its code is kept), or its build
            container was OOM-killed (137).
        ClusterError: the script could not be run, or the pod died under it.
        Canceled: SIGTERM arrived; the script in the pod was stopped first.
    """
    try:
        script = script_path.read_bytes()
    except OSError as error:
        raise ConfigError(f"reading the {stage} script {script_path}: "
                          f"{error.strerror or error}") from error
    container = container_for(stage)
    if stage_id and not _STAGE_ID.fullmatch(stage_id):
        raise ClusterError(f"resuming the {stage} stage: malformed stage id {stage_id!r}")
    stage_id = stage_id or new_stage_id(stage)
    log = logs.get().bind(container=container, stage_id=stage_id)
    log.debug("running stage script", bytes=len(script))
    try:
        code = _follow(cluster, pod, container, stage_id, script, out_fd, stall_seconds,
                       offset, nonce, standbys)
    except (Canceled, OutputError):
        # Nobody reads the stage any more (a cancel, or the runner gone): stop it, and
        # let no second SIGTERM cut the stop short.
        with cancel.shielded(STOP_SHIELD_SECONDS):
            _stop(cluster, pod, container, stage_id, nonce)
        raise
    if standbys is not None and (following := next_container(stage, container)):
        standbys.prepare(cluster, pod, nonce, following)
    if code != 0:
        log.info("stage script failed", exit_code=code)
        raise JobFailed(f"the {stage} script exited with code {code}", exit_code=code)


class OutputError(DriverError):
    """Our own stdout (the runner's job log pipe) failed: nothing a reconnect can mend."""


class _Output:
    """Writes the stage's output through and counts it: the offset to resume from."""

    def __init__(self, fd: int, offset: int) -> None:
        self.fd = fd
        self.offset = offset

    def __call__(self, data: bytes | memoryview) -> None:
        try:
            write_all(self.fd, data)
        except OSError as error:
            # Not an OSError any more: the exec layer would take it for a dropped link.
            raise OutputError(f"writing the stage's output to the job log: "
                              f"{error.strerror or error}") from None
        self.offset += len(data)


def _follow(cluster: Cluster, pod: str, container: str, stage_id: str, script: bytes,
            out_fd: int, stall_seconds: float, offset: int, nonce: str,
            standbys: Standbys | None) -> int:
    """Start the stage (once) and follow it to its exit code across reconnects."""
    log = logs.get()
    output = _Output(out_fd, offset)
    started = False
    attempt = 0
    progress_at = time.monotonic()
    while True:
        control = StageControl()
        before = output.offset
        argv = launcher_argv(None if started else len(script), stage_id, output.offset,
                             nonce, container)
        stdin = None if started else script
        # Only the first try: after a failure, each try opens an exec of its own.
        opened = standbys.take(cluster, pod, nonce, container) \
            if standbys is not None and attempt == 0 and not started else None
        if opened is not None:
            log.debug("starting the stage on the standby exec")
            stdin = standby_header(len(script), stage_id, output.offset) + script
        failure: ClusterError | None = None
        status = b""
        try:
            status = cluster.exec_stream(pod, container, argv, stdin, output, control.feed,
                                         stall_seconds=stall_seconds, opened=opened)
        except ClusterError as error:
            failure = error
        first_start = control.started and not started
        started = started or control.started
        # On a failed connection the exit line (stderr) may have overtaken the last
        # output (stdout): follow once more from the offset to fetch the rest.
        if control.exit_code is not None and failure is None:
            return control.exit_code
        if control.gap is not None and failure is None and control.gap > output.offset:
            # Only after a long break in the link: the pod kept one chunk behind what it
            # sent, and the break lost more than that. Say so in the job log; go on.
            _notice(output, f"\n[runner-driver: {control.gap - output.offset} bytes of this "
                            "stage's output were lost while the connection to the pod was "
                            "down]\n")
            output.offset = control.gap
            continue
        if control.error:
            raise ClusterError(f"running the stage in container {container} of pod "
                               f"{cluster.namespace}/{pod}: {control.error}")
        if control.exit_code is None:
            # No exit status: the connection dropped, or the pod or container died.
            _raise_if_dead(cluster, pod, container)
        if failure is None:
            failure = ClusterError(
                f"running the stage in container {container} of pod {cluster.namespace}/"
                f"{pod}: the exec ended without the stage's exit status "
                f"({_describe(status, control)})", transient=not control.diagnostics)
        if not failure.transient:
            # The pod may not show yet why the container went (an OOM kill, say).
            cancel.sleep(DEATH_SETTLE_SECONDS)
            _raise_if_dead(cluster, pod, container)
            raise failure
        if output.offset > before or first_start or control.heartbeats:
            progress_at = time.monotonic()
            attempt = 0
        attempt += 1
        waited = time.monotonic() - progress_at
        if waited > cluster.retry_timeout:
            _stop(cluster, pod, container, stage_id, nonce)
            raise ClusterError(f"{failure}; gave up reconnecting after {waited:.0f}s "
                               f"without progress (the stage was asked to stop)")
        if control.truncated:
            failure = ClusterError("the script arrived truncated in the pod; sending it again",
                                   transient=True)
        wait = RECONNECT.delay(attempt, failure)
        log.warning("reconnecting to the stage after a lost connection", attempt=attempt,
                    offset=output.offset, error=str(failure), retry_in=f"{wait:.1f}s")
        cancel.sleep(wait)


def _notice(output: _Output, text: str) -> None:
    """A line of the driver's own in the job log, not counted as the stage's output."""
    offset = output.offset
    output(text.encode())
    output.offset = offset


def _raise_if_dead(cluster: Cluster, pod: str, container: str) -> None:
    """Raise why the stage cannot go on if the pod or its container died; else return."""
    death = diagnose(cluster.read_pod(pod), f"{cluster.namespace}/{pod}", container)
    if death is None:
        return
    code = death.storage_exit_code
    if death.oom_exit_code is not None and container == BUILD:
        code = death.oom_exit_code
    if code is not None:
        err = logs.stderr()
        err.write(f"runner-driver: {death.message}\n")
        err.flush()
        raise JobFailed(death.message, exit_code=code)
    raise ClusterError(f"running the stage in container {container}: {death.message}")


def _describe(status: bytes, control: StageControl) -> str:
    """The exec's end in a few words: its exit code, not the API's echo of our script."""
    said = "; ".join(control.diagnostics[-3:])
    return f"{_exec_end(status)}{'; ' + said if said else ''}"


def _exec_end(status: bytes) -> str:
    if not status:
        return "no status"
    try:
        parsed = json.loads(status)
        causes = parsed.get("details", {}).get("causes", [])
        code = next((c["message"] for c in causes if c.get("reason") == "ExitCode"), None)
        if code is not None:
            return f"the in-pod program exited with code {code}"
        return f"{parsed.get('reason') or parsed.get('status')}: {parsed.get('message', '')[:200]}"
    except (ValueError, AttributeError, TypeError, KeyError):
        return status.decode(errors="replace")[:300]


def _stop(cluster: Cluster, pod: str, container: str, stage_id: str, nonce: str) -> None:
    """Stop the stage's processes in the pod (best effort, bounded)."""
    log = logs.get()
    try:
        cluster.run_quiet(pod, container, stopper_argv(stage_id, nonce),
                          timeout=STOP_TIMEOUT_SECONDS)
    except ClusterError as error:
        log.warning("could not stop the stage script in the pod", error=str(error))
    else:
        log.info("stopped the stage script in the pod")
