"""Shell programs the driver runs inside the job pod, as constant text.

Everything here goes into a pod spec or an exec URL, which API servers log and repeat
in error messages, so none of it may carry job data: scripts and secrets travel on the
exec's stdin, and only sizes and file names go in argv. The programs must run in
busybox `sh` (the kaniko image has nothing else) and in any POSIX `sh`.
"""

from __future__ import annotations

# Mount point of the driver's own memory-backed volume, in both containers: per-stage
# pid files and the `gitlab-runner` name on PATH live here. kaniko ignores mounts, so
# an image build cannot overwrite or snapshot them.
DRIVER_DIR = "/runner-driver"
BIN_DIR = f"{DRIVER_DIR}/bin"
RUN_DIR = f"{DRIVER_DIR}/run"

# PID 1 of both containers: stays alive doing nothing, and exits at once on SIGTERM
# (a shell as PID 1 ignores SIGTERM unless it traps it, which would make every pod
# deletion wait out the whole grace period).
_IDLE = "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"
BUILD_ENTRYPOINT = ("/busybox/sh", "-c", _IDLE)
# The cache and artifact stages call `gitlab-runner` by that exact name, and the
# official helper image ships only `gitlab-runner-helper`: give it the other name.
HELPER_ENTRYPOINT = ("/bin/sh", "-c", f"""mkdir -p {BIN_DIR}
helper=$(command -v gitlab-runner-helper || command -v gitlab-runner || true)
[ -n "$helper" ] && ln -sf "$helper" {BIN_DIR}/gitlab-runner
{_IDLE}""")

# `run`: read exactly $1 bytes of script from stdin (so stdin never has to be closed,
# which v4 exec cannot do), keep them only in an unlinked file on the memory volume,
# and run them with the best shell that actually starts (after a kaniko build, /bin may
# hold another platform's binaries). The shell gets its own session so that a cancel
# can signal the whole process group recorded in $2.
STAGE_LAUNCHER = f"""n=$1; pidfile={RUN_DIR}/$2.pid; script={RUN_DIR}/$2.sh
mkdir -p {RUN_DIR} || exit 125
(umask 077 && head -c "$n" > "$script") || exit 125
if [ "$(($(wc -c < "$script")))" -ne "$n" ]; then
  rm -f "$script"; echo "runner-driver: the stage script arrived truncated" >&2; exit 125
fi
exec 4< "$script"
rm -f "$script"
shell=/busybox/sh
for candidate in /usr/local/bin/bash /usr/bin/bash /bin/bash /usr/bin/sh /bin/sh; do
  if [ -x "$candidate" ] && "$candidate" -c : </dev/null >/dev/null 2>&1; then
    shell=$candidate; break
  fi
done
exec 0</dev/null
if command -v setsid >/dev/null 2>&1; then setsid "$shell" <&4 4<&- &
else "$shell" <&4 4<&- & fi
child=$!
exec 4<&-
echo "$child" > "$pidfile"
wait "$child"; rc=$?
rm -f "$pidfile"
exit "$rc"
"""

# Stop a stage started by STAGE_LAUNCHER: TERM to its process group (the generated
# script traps it and exits 1), KILL after $2 tenths of a second. A stage that is
# just starting gets a second to record its pid.
STAGE_STOPPER = f"""pidfile={RUN_DIR}/$1.pid
i=0
while [ ! -s "$pidfile" ] && [ "$i" -lt 10 ]; do sleep 0.1; i=$((i + 1)); done
[ -s "$pidfile" ] || exit 0
pid=$(cat "$pidfile")
kill -TERM -"$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
i=0
while kill -0 "$pid" 2>/dev/null && [ "$i" -lt "$2" ]; do sleep 0.1; i=$((i + 1)); done
kill -KILL -"$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
exit 0
"""


def launcher_argv(script_size: int, stage_id: str) -> list[str]:
    """Exec argv that runs a stage script of `script_size` bytes sent on stdin."""
    return ["sh", "-c", STAGE_LAUNCHER, "runner-driver-stage", str(script_size), stage_id]


def stopper_argv(stage_id: str, grace_tenths: int = 20) -> list[str]:
    """Exec argv that stops the stage `stage_id` (TERM, then KILL after the grace)."""
    return ["sh", "-c", STAGE_STOPPER, "runner-driver-stop", stage_id, str(grace_tenths)]
