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
# Where the job's registry logins (its Secret) are mounted, read-only, in the build
# container: away from /kaniko/.docker, which stays writable for pipelines that still
# write config.json themselves.
DOCKER_SECRET_DIR = "/runner-driver-secrets/docker"  # noqa: S105 - a path
# The CA bundle the job must trust (operator's and the runner's), in both containers; the
# helper gets it joined to its system bundle here (GIT_SSL_CAINFO and SSL_CERT_FILE
# replace the default store, they do not add to it), kaniko appended to its own.
CA_DIR = "/runner-driver-secrets/ca"
CA_BUNDLE = f"{DRIVER_DIR}/ca-bundle.crt"
# The build container runs as root; the helper may not (helper.run_as_user): the run
# directory both containers' launchers write is made writable for both at start. The
# job's config.json is copied to where kaniko (and crane, with DOCKER_CONFIG) read it.
BUILD_ENTRYPOINT = ("/busybox/sh", "-c", f"""mkdir -p {RUN_DIR} && chmod 777 {RUN_DIR}
if [ -f {DOCKER_SECRET_DIR}/config.json ]; then
  mkdir -p /kaniko/.docker && cp {DOCKER_SECRET_DIR}/config.json /kaniko/.docker/config.json
fi
if [ -f {CA_DIR}/ca.crt ]; then
  mkdir -p /kaniko/ssl/certs && cat {CA_DIR}/ca.crt >> /kaniko/ssl/certs/ca-certificates.crt
fi
{_IDLE}""")
# The cache and artifact stages call `gitlab-runner` by that exact name, and the
# official helper image ships only `gitlab-runner-helper`: give it the other name.
HELPER_ENTRYPOINT = ("/bin/sh", "-c", f"""mkdir -p {BIN_DIR}
if [ -f {CA_DIR}/ca.crt ]; then
  cat /etc/ssl/certs/ca-certificates.crt {CA_DIR}/ca.crt > {CA_BUNDLE} 2>/dev/null
fi
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
NOT_OURS = "this pod belongs to another job: its nonce is not the one minted for this job"

def _compact(program: str) -> str:
    """`program` without indentation: it travels percent-encoded in the exec URL, where
    each space costs three bytes and proxies limit URLs to about 8 KiB."""
    return "\n".join(line.strip() for line in program.splitlines()) + "\n"


# Stage output is kept in the pod in chunks of this many bytes, so the part already
# delivered can be removed while a long stage goes on printing.
CHUNK_BYTES = 8 * 1024 * 1024

# `run`: start a stage script detached from the exec, then follow its output. $1 is the
# script's size in bytes, sent on stdin ("-" when only following; "@" when $1 to $3 come
# first on stdin, as one line: a standby exec opened before its stage), $2 the stage id,
# $3 the byte offset of the output already received, $4 the supervisor, $5 the job's
# nonce, $6 the container's name (the key of its remembered shell; may be empty), $7 the
# chunk size (default CHUNK_BYTES).
# The script is read in full (stdin is never closed: v4 exec cannot) and kept only in an
# unlinked file on the memory volume (unlinked once the supervisor holds it open).
# Creating the claim file under `set -C` is atomic (O_EXCL, in the shell itself), so a
# stage starts at most once however often the driver reconnects. The supervisor runs the
# script with stdout and stderr merged (as the runner's job log merges them) into a
# relay that cuts the output into chunk files named by the byte offset they start at
# (ID.log.0, ID.log.4711, ...), each at most $7 bytes, and writes the exit code to the
# status file once the relay has written everything (one short write: a status is
# complete once it is not empty). Following: `cat` on a descriptor opened once reads
# exactly up to the current end and advances it, so nothing is sent twice or skipped; a
# chunk is complete once the next one exists. Delivered output is trimmed: on each move
# to the next chunk, the chunks that end more than $7 bytes before it are removed, so a
# reconnect finds what the connection had in flight and the pod keeps at most about
# three chunks' worth of a stage's output, however much it prints. The status file is
# checked before reading, so all output is sent before the exit line. Between reads the
# follower sleeps, a little longer each time; the connection that started the stage is
# the supervisor's parent, so (with a CHLD trap, in shells whose `wait` a trapped signal
# interrupts: dash and busybox ash) it wakes the moment the stage ends instead of at the
# next tick. Every process start costs a stage about a millisecond, so the path from
# start to exit line runs as few as it can: a chunk still empty is not read. A script
# that exits while processes it left in the background still hold its output open is
# reported after about a second (their later output is not part of the stage). Control
# lines go to stderr: started/attached, alive (a heartbeat every ~5 s, so the driver can
# tell a silent script from a dead link), exit N, truncated (send again), gap N (the
# output before byte N was trimmed: follow again from N), error TEXT. A stage whose
# script and supervisor are both gone without a status (killed by the script itself,
# e.g. `kill -9 -1`, even before the supervisor recorded the script's pid) is reported
# after two heartbeats. The launcher that starts the stage records the supervisor's pid,
# so a supervisor still starting the script counts as running. Script copies of
# launchers that died before unlinking them, and the files of earlier stages, are
# removed when the next stage starts (in the one `rm` that unlinks the script, after the
# supervisor started; the patterns in $gone expand when it does).
STAGE_LAUNCHER = _compact(f"""n=$1; id=$2; off=$3; c=${{7:-{CHUNK_BYTES}}}; N=/dev/null
{RUNNING}
{OURS}
say() {{ echo "runner-driver-stage: $*" >&2; }}
scan() {{ le=; gt=; for q in $log.*; do [ -e $q ] || continue; k=${{q##*.}}
  if [ $k -le $1 ]; then [ -n "$le" ] && [ $k -le $le ] || le=$k
  elif [ -z "$gt" ] || [ $k -lt $gt ]; then gt=$k; fi; done; }}
if ! ours "$5"; then say error {NOT_OURS}; exit 3; fi
[ "$n" != @ ] || read -r n id off || exit 4
run={RUN_DIR}; ld={LOG_DIR}; log=$ld/$id.log; st=$run/$id.status; pf=$run/$id.pid
sup=$run/$id.sup
[ -d $run ] && [ -d $ld ] || mkdir -p $run $ld || exit 5
if [ "$n" != - ]; then
  scr=$run/$id.sh.$$
  if ! (umask 077 && head -c $n > $scr); then
    rm -f $scr; say error cannot store the script in $run; exit 5
  fi
  if [ $(($(wc -c < $scr))) -ne $n ]; then rm -f $scr; say truncated; exit 4; fi
  set -C
  if {{ :; }} 2>$N > $run/$id.claim; then
    set +C
    for y in $run/*.sh.*; do
      [ -e $y ] && [ $y != $scr ] || continue
      running ${{y##*.}} || rm -f $y
    done
    gone=
    for done in $run/*.status; do
      [ -e $done ] || continue
      old=${{done##*/}}; old=${{old%.status}}; b=$run/$old
      [ $old = $id ] || gone="$gone $b.claim $done $done.rc $b.sup $b.pid $b.copied \\
        $ld/$old.log.*"
    done
    : > $log.0
    exec 4< $scr
    sh1=; cf=${{6:+$run/shell-$6}}
    [ -r "$cf" ] && read -r sh1 < $cf || sh1=
    if [ -z "$sh1" ] || [ ! -x "$sh1" ]; then
      sh1=/busybox/sh
      for x in /usr/local/bin/bash /usr/bin/bash /bin/bash /usr/bin/sh /bin/sh; do
        if [ -x $x ] && $x -c : <$N >$N 2>&1; then
          sh1=$x; break
        fi
      done
      [ -z "$cf" ] || echo $sh1 > $cf
    fi
    set -- "$4" runner-driver-supervise $id $sh1 $c
    if command -v setsid >$N; then setsid sh -c "$@" <$N >$N 2>&1 &
    else sh -c "$@" <$N >$N 2>&1 & fi
    echo $! > $sup
    exec 4<&-
    rm -rf $scr $gone
    say started
  else
    set +C; rm -f $scr; say attached
  fi
elif [ -e $run/$id.claim ]; then say attached
else say error stage $id was never started in this pod; exit 3
fi
w=0
while scan $off; [ -z "$le" ]; do
  if [ -n "$gt" ]; then say gap $gt; exit 0; fi
  w=$((w + 1))
  if [ $w -gt 100 ]; then say error stage $id has no output file; exit 3; fi
  sleep 0.1
done
cur=$le; skip=$((off - cur))
exec 3< $log.$cur
if [ $skip -gt 0 ]; then dd bs=1 skip=$skip count=0 <&3 2>$N || exit 6; fi
tk=0; qt=0; left=0; trap : CHLD
while :; do
  fin=0; [ ! -s $st ] || fin=1
  [ ! -s $log.$cur ] || cat <&3 || exit 6
  scan $cur
  if [ -n "$gt" ]; then
    cat <&3 || exit 6
    cur=$gt; exec 3< $log.$cur
    scan $((cur - c)); old=
    for q in $log.*; do
      [ -n "$le" ] && [ -e $q ] && [ ${{q##*.}} -lt $le ] && old="$old $q"
    done
    [ -z "$old" ] || rm -f $old
    continue
  fi
  if [ $fin = 1 ]; then read -r rc < $st; say exit $rc; exit 0; fi
  if [ -s $st.rc ]; then
    left=$((left + 1))
    if [ $left -gt 30 ]; then mv -f $st.rc $st 2>$N; continue; fi
  fi
  tk=$((tk + 1))
  case $tk in ?) d=0.005;; 1?) d=0.02;; 2?) d=0.05;; *) d=0.1;; esac
  sleep $d >$N 2>&1 & z=$!
  [ -s $st ] || wait $z
  if [ $((tk % 50)) -eq 0 ]; then
    say alive
    if [ -s $st ] || running "$(cat $pf 2>$N)" \\
        || running "$(cat $sup 2>$N)"; then qt=0; else qt=$((qt + 1)); fi
    if [ $qt -ge 2 ]; then
      say error stage $id is not running and left no exit status; exit 3
    fi
  fi
done
""")

# Runs detached from any exec, with the script on fd 4: starts the script in its own
# session (so a cancel can signal its whole process group) with its output into a pipe,
# records the group in the pid file (one short write: read whole or empty) and the exit
# code in ID.status.rc. The relay on the
# pipe's other end copies the output as it comes (`dd` writes each read at once; `head`
# and `split` buffer) into chunk files named by the byte offset they start at, each at
# most $3 bytes (2048 reads of up to 4 KiB: streaming, and few files for output that
# comes a line at a time), and ends when a dd read fewer times than asked (the end of
# the output; dd stops early only there), or at an empty chunk; then it writes the exit
# code to the status file, so the status exists only once all output is on disk. A
# chunk's size comes from dd's own summary (its first word: the bytes copied), else
# from `wc`. At the end it empties the pid file (the group is gone: no stop may signal
# a pid the container has since given to another process) and writes the status with
# shell builtins only: it is the last step before the exit line. If the follower gave
# up waiting for the end (background processes hold the pipe) and wrote the status
# itself, the relay discards what they print.
STAGE_SUPERVISOR = _compact(f"""id=$1; c=$3; log={LOG_DIR}/$id.log; b={RUN_DIR}/$id
st=$b.status; pf=$b.pid; cp=$b.copied
(if command -v setsid >/dev/null; then setsid "$2" <&4 4<&- & else "$2" <&4 4<&- & fi
k=$!; exec 4<&-
echo $k > $pf
wait $k; echo $? > $st.rc) 2>&1 | {{
exec 4<&-; bs=4096; [ $c -ge $bs ] || bs=$c; r=$((c / bs)); o=0
while :; do
  [ ! -e $st ] || exec cat > /dev/null
  dd bs=$bs count=$r of=$log.$o 2> $cp
  rs=; z=; {{ read -r rs _ && read -r _ && read -r z _; }} < $cp
  case $z in ''|*[!0-9]*) z=$(($(wc -c < $log.$o)));; esac
  o=$((o + z))
  case $rs in
    [0-9]*+[0-9]*) [ $((${{rs%+*}} + ${{rs#*+}})) -lt $r ] && break;;
    *) [ $z -gt 0 ] || break;;
  esac
done
: > $pf; [ -s $st.rc ] && read -r rc < $st.rc && echo $rc > $st; }}
""")

# Stop a stage started by STAGE_LAUNCHER: TERM to its process group (the generated
# script traps it and exits 1), KILL after $2 tenths of a second. A stage that is
# just starting gets a second to record its pid; one that has ended is left alone. $3
# is the job's nonce: nothing is signalled in a pod that is not the job's own.
STAGE_STOPPER = f"""pidfile={RUN_DIR}/$1.pid
{OURS}
if ! ours "$3"; then echo "runner-driver-stop: {NOT_OURS}" >&2; exit 3; fi
[ -s {RUN_DIR}/$1.status ] && exit 0
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
                  container: str = "", chunk_bytes: int = CHUNK_BYTES) -> list[str]:
    """Exec argv that starts (once) and follows the stage `stage_id` from byte `offset`.

    `script_size` is the size of the script sent on stdin; None only follows a stage
    an earlier connection started. The launcher refuses a pod whose nonce is not
    `nonce`. (The nonce is no secret: it is on the pod's label.) With `container`, the
    shell it finds there is remembered for the container's later stages: probing runs
    a shell, a few milliseconds per stage in a dynamically linked userland.
    `chunk_bytes` sets the size of the output chunks kept in the pod (tests use small
    ones).
    """
    size = "-" if script_size is None else str(script_size)
    return ["sh", "-c", STAGE_LAUNCHER, "runner-driver-stage", size, stage_id, str(offset),
            STAGE_SUPERVISOR, nonce, container, str(chunk_bytes)]


def standby_argv(nonce: str, container: str = "", chunk_bytes: int = CHUNK_BYTES) -> list[str]:
    """Exec argv of a launcher that waits for its stage: it checks the pod's nonce, then
    reads `standby_header` and the script from stdin and goes on as `launcher_argv`
    would with them. At the end of stdin before a header it exits (code 4) and does
    nothing."""
    return ["sh", "-c", STAGE_LAUNCHER, "runner-driver-stage", "@", "", "0",
            STAGE_SUPERVISOR, nonce, container, str(chunk_bytes)]


def standby_header(script_size: int, stage_id: str, offset: int) -> bytes:
    """The line a standby launcher reads before the script: its size, stage id, offset."""
    return f"{script_size} {stage_id} {offset}\n".encode()


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
        self.gap: int | None = None
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
        elif word == "gap" and rest.strip().isdigit():
            self.gap = int(rest.strip())
        elif word == "alive":
            self.heartbeats += 1
        elif word == "error":
            self.error = rest.strip()
