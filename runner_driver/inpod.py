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
# The build container runs as root; the helper may not (helper.run_as_user): the run
# directory both containers' launchers write is made writable for both at start.
BUILD_ENTRYPOINT = ("/busybox/sh", "-c", f"mkdir -p {RUN_DIR} && chmod 777 {RUN_DIR}\n{_IDLE}")
# The cache and artifact stages call `gitlab-runner` by that exact name, and the
# official helper image ships only `gitlab-runner-helper`: give it the other name.
HELPER_ENTRYPOINT = ("/bin/sh", "-c", f"""mkdir -p {BIN_DIR}
helper=$(command -v gitlab-runner-helper || command -v gitlab-runner || true)
[ -n "$helper" ] && ln -sf "$helper" {BIN_DIR}/gitlab-runner
{_IDLE}""")

# Stage output lives on its own disk-backed volume: it can be far larger than the
# memory volume, and must outlive any one exec connection.
LOG_DIR = "/runner-driver-logs"
CONTROL_PREFIX = b"runner-driver-stage: "

# `running PID`: whether a process runs. busybox `kill -0 ""` succeeds (it reads as pid
# 0, our own process group), so only a number counts; and a zombie is not running.
RUNNING = """running() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null \\
  && ! grep -qs '^State:.Z' "/proc/$1/status"; }"""

# `ours NONCE`: whether this pod is the job's own. The pod's env carries the nonce of
# the job that created it (from its label, by the downward API), and the driver passes
# the nonce its job's `config` minted: a pod of another job, or one that replaced ours
# under the same name, does not match, and no stage runs there.
OURS = """ours() { [ -n "$1" ] && [ "${RUNNER_DRIVER_NONCE:-}" = "$1" ]; }"""
NOT_OURS = ("this pod belongs to another job: its nonce does not match the one minted "
            "for this job")

# `run`: start a stage script detached from the exec, then follow its output.
# $1 is the script's size in bytes, sent on stdin ("-" when only following), $2 the
# stage id, $3 the byte offset of the output already received, $4 the supervisor, $5
# the job's nonce, $6 the container's name (the key of its remembered shell; optional).
# The script is read in full (stdin is never closed: v4 exec cannot) and kept only in
# an unlinked file on the memory volume. `mkdir` of the claim directory is atomic, so
# a stage starts at most once however often the driver reconnects. The supervisor runs
# the script with stdout and stderr merged into the log file (as the runner's job log
# merges them) and writes the exit code to the status file by rename, so it is read
# whole or not at all. Following: `cat` on a descriptor opened once reads exactly up
# to the current end and advances it, so nothing is sent twice or skipped; the status
# file is checked before reading, so all output is sent before the exit line.
# Control lines go to stderr: started/attached, alive (a heartbeat every ~5 s, so
# the driver can tell a silent script from a dead link), exit N, truncated (send
# again), error TEXT. A stage whose script and supervisor are both gone without a
# status (killed by the script itself, e.g. `kill -9 -1`, even before the supervisor
# recorded the script's pid) is reported after two heartbeats. The launcher that
# starts the stage records the supervisor's pid, so a supervisor still starting the
# script counts as running. Script copies of launchers that died before unlinking
# them are removed when the next stage starts.
STAGE_LAUNCHER = f"""n=$1; id=$2; offset=$3
run={RUN_DIR}; log={LOG_DIR}/$id.log; status=$run/$id.status; pidfile=$run/$id.pid
sup=$run/$id.sup
{RUNNING}
{OURS}
if ! ours "$5"; then echo "runner-driver-stage: error {NOT_OURS}" >&2; exit 3; fi
[ -d "$run" ] && [ -d {LOG_DIR} ] || mkdir -p "$run" {LOG_DIR} || exit 5
if [ "$n" != - ]; then
  script=$run/$id.sh.$$
  if ! (umask 077 && head -c "$n" > "$script"); then
    rm -f "$script"; echo "runner-driver-stage: error cannot store the script in $run" >&2
    exit 5
  fi
  if [ "$(($(wc -c < "$script")))" -ne "$n" ]; then
    rm -f "$script"; echo "runner-driver-stage: truncated" >&2; exit 4
  fi
  if mkdir "$run/$id.claim" 2>/dev/null; then
    for copy in "$run"/*.sh.*; do
      [ -e "$copy" ] && [ "$copy" != "$script" ] || continue
      running "${{copy##*.}}" || rm -f "$copy"
    done
    for done in "$run"/*.status; do
      [ -e "$done" ] || continue
      old=${{done##*/}}; old=${{old%.status}}
      [ "$old" = "$id" ] || rm -rf "$run/$old.claim" "$done" "$run/$old.sup" "{LOG_DIR}/$old.log"
    done
    : > "$log"
    exec 4< "$script"
    rm -f "$script"
    shell=; cache=${{6:+$run/shell-$6}}
    if [ -n "$cache" ] && [ -r "$cache" ]; then read -r shell < "$cache" || shell=; fi
    if [ -z "$shell" ] || [ ! -x "$shell" ]; then
      shell=/busybox/sh
      for candidate in /usr/local/bin/bash /usr/bin/bash /bin/bash /usr/bin/sh /bin/sh; do
        if [ -x "$candidate" ] && "$candidate" -c : </dev/null >/dev/null 2>&1; then
          shell=$candidate; break
        fi
      done
      if [ -n "$cache" ]; then echo "$shell" > "$cache"; fi
    fi
    if command -v setsid >/dev/null 2>&1; then
      setsid sh -c "$4" runner-driver-supervise "$id" "$shell" </dev/null >>"$log" 2>&1 &
    else
      sh -c "$4" runner-driver-supervise "$id" "$shell" </dev/null >>"$log" 2>&1 &
    fi
    echo "$!" > "$sup"
    exec 4<&-
    echo "runner-driver-stage: started" >&2
  else
    rm -f "$script"
    echo "runner-driver-stage: attached" >&2
  fi
elif [ -d "$run/$id.claim" ]; then
  echo "runner-driver-stage: attached" >&2
else
  echo "runner-driver-stage: error stage $id was never started in this pod" >&2; exit 3
fi
i=0
while [ ! -e "$log" ]; do
  i=$((i + 1))
  if [ "$i" -gt 100 ]; then
    echo "runner-driver-stage: error stage $id has no output file" >&2; exit 3
  fi
  sleep 0.1
done
exec 3< "$log"
if [ "$offset" -gt 0 ]; then dd bs=1 skip="$offset" count=0 <&3 2>/dev/null || exit 6; fi
ticks=0; quiet=0
while :; do
  if [ -e "$status" ]; then finished=1; else finished=0; fi
  cat <&3 || exit 6
  if [ "$finished" = 1 ]; then
    read -r rc < "$status"; echo "runner-driver-stage: exit $rc" >&2; exit 0
  fi
  ticks=$((ticks + 1))
  if [ "$ticks" -le 5 ]; then sleep 0.002
  elif [ "$ticks" -le 10 ]; then sleep 0.01
  elif [ "$ticks" -le 20 ]; then sleep 0.02
  elif [ "$ticks" -le 30 ]; then sleep 0.05
  else sleep 0.1
  fi
  if [ $((ticks % 50)) -eq 0 ]; then
    echo "runner-driver-stage: alive" >&2
    if [ -e "$status" ] || running "$(cat "$pidfile" 2>/dev/null)" \
        || running "$(cat "$sup" 2>/dev/null)"; then
      quiet=0
    else
      quiet=$((quiet + 1))
    fi
    if [ "$quiet" -ge 2 ]; then
      echo "runner-driver-stage: error stage $id is not running and left no exit status" >&2
      exit 3
    fi
  fi
done
"""

# Runs detached from any exec, with the script on fd 4 and output going to the log:
# starts the script in its own session (so a cancel can signal its whole process
# group), records the group in the pid file, and the exit code in the status file.
STAGE_SUPERVISOR = f"""id=$1; shell=$2
status={RUN_DIR}/$id.status; pidfile={RUN_DIR}/$id.pid
if command -v setsid >/dev/null 2>&1; then setsid "$shell" <&4 4<&- &
else "$shell" <&4 4<&- & fi
child=$!
exec 4<&-
echo "$child" > "$pidfile.tmp" && mv -f "$pidfile.tmp" "$pidfile"
wait "$child"; rc=$?
echo "$rc" > "$status.tmp" && mv -f "$status.tmp" "$status"
rm -f "$pidfile"
"""

# Stop a stage started by STAGE_LAUNCHER: TERM to its process group (the generated
# script traps it and exits 1), KILL after $2 tenths of a second. A stage that is
# just starting gets a second to record its pid. $3 is the job's nonce: nothing is
# signalled in a pod that is not the job's own.
STAGE_STOPPER = f"""pidfile={RUN_DIR}/$1.pid
{OURS}
if ! ours "$3"; then echo "runner-driver-stop: {NOT_OURS}" >&2; exit 3; fi
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


def launcher_argv(script_size: int | None, stage_id: str, offset: int, nonce: str,
                  container: str = "") -> list[str]:
    """Exec argv that starts (once) and follows the stage `stage_id` from byte `offset`.

    `script_size` is the size of the script sent on stdin; None only follows a stage
    an earlier connection started. The launcher refuses a pod whose nonce is not
    `nonce`. (The nonce is no secret: it is on the pod's label.) With `container`, the
    shell it finds there is remembered for the container's later stages: probing runs
    a shell, a few milliseconds per stage in a dynamically linked userland.
    """
    size = "-" if script_size is None else str(script_size)
    return ["sh", "-c", STAGE_LAUNCHER, "runner-driver-stage", size, stage_id, str(offset),
            STAGE_SUPERVISOR, nonce, *([container] if container else [])]


def stopper_argv(stage_id: str, nonce: str, grace_tenths: int = 20) -> list[str]:
    """Exec argv that stops the stage `stage_id` (TERM, then KILL after the grace)."""
    return ["sh", "-c", STAGE_STOPPER, "runner-driver-stop", stage_id, str(grace_tenths),
            nonce]


class StageControl:
    """Reads the launcher's control lines (the exec's stderr) as they arrive.

    Lines without the control prefix come from the shell itself (a missing command,
    a full disk) and are kept as `diagnostics` for the error message.
    """

    def __init__(self) -> None:
        self.started = False
        self.exit_code: int | None = None
        self.truncated = False
        self.heartbeats = 0
        self.error = ""
        self.diagnostics: list[str] = []
        self._pending = bytearray()

    def feed(self, data: bytes | memoryview) -> None:
        """Take the next bytes of the control channel."""
        self._pending += data
        while (end := self._pending.find(b"\n")) >= 0:
            line = bytes(self._pending[:end])
            del self._pending[:end + 1]
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not line.startswith(CONTROL_PREFIX):
            if line.strip():
                self.diagnostics.append(line.decode(errors="replace"))
            return
        word, _, rest = line[len(CONTROL_PREFIX):].decode(errors="replace").partition(" ")
        if word in ("started", "attached"):
            self.started = True
        elif word == "exit" and rest.strip().isdigit():
            self.exit_code = int(rest.strip())
        elif word == "truncated":
            self.truncated = True
        elif word == "alive":
            self.heartbeats += 1
        elif word == "error":
            self.error = rest.strip()
