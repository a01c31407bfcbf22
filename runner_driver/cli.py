"""Command-line entry point: parse arguments, wire the pieces, map outcomes to exit codes.

gitlab-runner reads only our exit code: BUILD_FAILURE_EXIT_CODE when the user's
script failed (its real code written to BUILD_EXIT_CODE_FILE), SYSTEM_FAILURE_EXIT_CODE
for everything else, including bugs; Python's own exit status 1 for an uncaught
exception would wrongly mean "script failed". That mapping happens here and nowhere
else. This module does no work of its own. The emulator commands (`local-cluster`,
`demo`) import the emulator lazily, so the driver's stages never load it.

Stages first offer their work to the runner's agent (`agent_client`); only this module's
light imports run before that, so a stage the agent takes never loads the Kubernetes
client, structlog or the emulator (a test pins that).
"""

from __future__ import annotations

import os
import sys

from . import __version__, agent_client
from .errors import Canceled, DriverError, JobFailed

# Typing names only: `typing`, `collections.abc` and the like cost a stage the agent
# takes more than everything else it imports (see `agent_client`).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any, TextIO

    from . import logs
    from .kube import Connection
    from .runner_env import ExitCodes, JobContext, StageIO
    from .settings import Settings
    from .standby import Standbys

EMULATOR_EXTRA_HINT = (
    "the emulated cluster needs the 'emulator' extra: pip install 'runner-driver[emulator]'")
DOCS = "https://docs.gitlab.com/runner/executors/custom/"
STAGES = ("config", "prepare", "run", "cleanup")
LEAVES_AGENT = ("config", "prepare")  # when they run here, they leave the runner's agent
CLEANUP_SIGTERM_GRACE_SECONDS = 3.0
CANCELED = "canceled: gitlab-runner sent SIGTERM; stopped"


class Wiring:
    """What every stage needs: the settings, the job, and the cluster's credentials; in
    the agent also its standby execs."""

    __slots__ = ("connection", "job", "settings", "standbys")

    def __init__(self, settings: Settings, job: JobContext, connection: Connection,
                 standbys: Standbys | None = None) -> None:
        self.settings = settings
        self.job = job
        self.connection = connection
        self.standbys = standbys


def _parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="runner-driver",
        description="GitLab Runner custom executor driver that runs each job in an "
                    "unprivileged Kubernetes pod built around the kaniko debug image.")
    parser.add_argument("--version", action="version", version=f"runner-driver {__version__}")
    parser.add_argument("--config", default=None, metavar="PATH",
                        help="driver settings (TOML); default: $RUNNER_DRIVER_CONFIG, else "
                             "/etc/runner-driver/config.toml if present, else built-in "
                             "defaults")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("config", help="print the job's directories and pod name as JSON",
                        description=f"config_exec stage ({DOCS}#config).")
    commands.add_parser("prepare", help="create the job's pod and wait until it runs",
                        description=f"prepare_exec stage ({DOCS}#prepare).")
    run = commands.add_parser("run", help="run one stage script in the job's pod",
                              description=f"run_exec stage ({DOCS}#run).")
    run.add_argument("script", help="the script file gitlab-runner generated")
    run.add_argument("stage", help="the stage name, e.g. get_sources or build_script")
    commands.add_parser("cleanup", help="delete everything created for the job",
                        description=f"cleanup_exec stage ({DOCS}#cleanup).")
    gc = commands.add_parser(
        "gc", help="delete job pods and secrets whose job is over (for a CronJob)",
        description="Find the pods and secrets this runner manager's driver labelled in its "
                    "namespace and delete those whose job is certainly over: the pod "
                    "finished, or it runs past its active deadline (job timeout plus "
                    "margin). A pod inside its deadline is never touched. Prints what it "
                    "did.")
    gc.add_argument("--older-than", default="0s", metavar="DURATION",
                    help="keep anything younger than this, finished or not (e.g. 30m to "
                         "keep failed pods around for inspection; default 0s)")
    gc.add_argument("--dry-run", action="store_true",
                    help="only print what would be deleted")
    gc.add_argument("--all-managers", action="store_true",
                    help="also collect objects of other runner managers sharing the "
                         "namespace (default: only this manager's, by [manager] id)")
    commands.add_parser(
        "render", help="print the job pod's manifests as YAML, offline",
        description="Build the objects `prepare` would create, with the settings, the pod "
                    "template and patch, for the job that the CUSTOM_ENV_* variables and "
                    "JOB_RESPONSE_FILE describe (as gitlab-runner sets them), or for a "
                    "sample job when JOB_RESPONSE_FILE is not set; print them as YAML. No "
                    "cluster is needed, and no secret value is printed.")
    commands.add_parser(
        "check", help="preflight: can a job run with these settings and credentials?",
        description="Ask the cluster, with the driver's settings and credentials, whether "
                    "a job can run: every API permission the driver needs in the job "
                    "namespace (SelfSubjectAccessReview), the namespace, the operator's "
                    "Secrets and ConfigMap named in the settings, and the admission of the "
                    "sample job's pod by a server-side dry run (Pod Security, quota). Prints "
                    "a table with what to fix; exit status 0 only when a job can run. "
                    "Nothing is created.")
    local = commands.add_parser(
        "local-cluster", help="serve an emulated Kubernetes cluster on 127.0.0.1",
        description="Serve the embedded emulated cluster in the foreground and write a "
                    "kubeconfig for it once it is ready. Stop it with Ctrl-C or SIGTERM.")
    local.add_argument("--kubeconfig", required=True,
                       help="where to write the kubeconfig (context 'emulated', namespace "
                            "'default')")
    local.add_argument("--port", type=int, default=0,
                       help="TCP port on 127.0.0.1 (default: a free port)")
    commands.add_parser(
        "demo", help="run a sample kaniko-style job on the embedded emulated cluster",
        description="Start the embedded emulated cluster and run a sample kaniko-style job "
                    "through every stage exactly as gitlab-runner would.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    call = stage_call(argv)
    if call is not None:
        return _stage(*call)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        # argparse has printed the usage error; for the runner that is a system failure.
        if exit_.code in (0, None):
            return 0
        from .runner_env import exit_codes

        return exit_codes(os.environ).system_failure
    if args.command in STAGES:
        arguments = {"script": args.script, "stage": args.stage} if args.command == "run" \
            else {}
        return _stage(args.command, args.config, arguments)
    if args.command == "gc":
        return _gc(args)
    if args.command == "render":
        return _render(args)
    if args.command == "check":
        return _check(args)
    return _emulator_command(args)


def stage_call(argv: Sequence[str]) -> tuple[str, str | None, dict[str, str]] | None:
    """A stage call as gitlab-runner makes it, read without argparse; None for the rest.

    argparse and the `re` it imports cost a stage more than everything else it loads, so
    the exact calls the runner makes are recognised here: `[--config PATH] prepare`,
    `[--config PATH] cleanup` and `[--config PATH] run SCRIPT STAGE`. Anything else
    (help, mistakes, other commands) goes to argparse, whose reading of these calls this
    matches (a test compares the two).
    """
    args = list(argv)
    config = None
    if len(args) >= 2 and args[0] == "--config" and not args[1].startswith("-"):
        config, args = args[1], args[2:]
    elif args and args[0].startswith("--config="):
        config, args = args[0].removeprefix("--config="), args[1:]
    if args in (["prepare"], ["cleanup"]):
        return args[0], config, {}
    if len(args) == 3 and args[0] == "run" and not any(a.startswith("-") for a in args[1:]):
        return "run", config, {"script": args[1], "stage": args[2]}
    return None


def _stage(stage: str, config: str | None, arguments: dict[str, Any]) -> int:
    spec = agent_client.config_spec(config, os.environ)
    claim = None
    for looked in (False, True):
        try:
            handoff = agent_client.hand_over(stage, arguments, os.environ, spec)
        except Exception as error:  # a bug in the light path is still a system failure
            return _system_failure(stage,
                                   f"unexpected error: {type(error).__name__}: {error}")
        if handoff is not None and handoff.exit_code is not None:
            return handoff.exit_code
        if handoff is not None and handoff.canceled:
            return _canceled(stage)
        if handoff is not None or looked or stage not in LEAVES_AGENT:
            break
        claim = _claim(stage, spec)
        if claim is not None:
            break
        # Another stage claimed the socket since we looked: its agent serves us.
    if handoff is not None and stage == "run" and handoff.stage_id:
        arguments |= {"stage_id": handoff.stage_id, "offset": handoff.offset}
    from .runner_env import StageIO

    io = StageIO.of_process()
    try:
        return execute(stage, arguments, io, lambda: _wire(config, io), spec, claim)
    finally:
        if claim is not None:
            claim.release()


def _claim(stage: str, spec: str) -> agent_client.Claim | None:
    """For a stage that will leave an agent: its socket, taken before the slow part."""
    path = agent_client.socket_path(os.environ, spec, agent_client.runner_pid(os.environ))
    return agent_client.claim(path)


def _canceled(stage: str) -> int:
    return _system_failure(stage, CANCELED)


def _system_failure(stage: str, message: str) -> int:
    from .runner_env import exit_codes

    _fail(sys.stderr, stage, message)
    return exit_codes(os.environ).system_failure


def execute(stage: str, arguments: Mapping[str, Any], io: StageIO,
            wire: Callable[[], Wiring], agent_spec: str | None,
            claim: agent_client.Claim | None = None) -> int:
    """Run one stage here; the runner's exit code for its outcome.

    The runner's agent runs its stages through here too, each in a thread with its own
    `io`. With the socket `claim`ed for it, `config` and `prepare` leave an agent for
    the later stages (`agent_spec` names their settings; both None in the agent).
    """
    from contextlib import nullcontext

    from . import cancel, logs
    from .runner_env import exit_codes

    codes = exit_codes(io.environ)
    redactor = logs.configure(stream=io.err)
    try:
        try:
            cancel.install()
            # Deleting the pod is the whole point of cleanup: let the request in flight
            # land, but stop within the runner's patience.
            with cancel.shielded(CLEANUP_SIGTERM_GRACE_SECONDS) if stage == "cleanup" \
                    else nullcontext():
                return _dispatch(stage, arguments, wire, redactor, agent_spec, io, claim)
        finally:
            cancel.uninstall()
    except JobFailed as failure:
        _write_exit_code(codes, failure.exit_code)
        if stage != "run":  # run's failures are the script's own output
            _fail(io.err, stage, redactor.mask(str(failure)))
        return codes.build_failure
    except Canceled:
        _fail(io.err, stage, CANCELED)
        return codes.system_failure
    except DriverError as error:
        _fail(io.err, stage, redactor.mask(str(error)))
        return codes.system_failure
    except Exception as error:  # a bug is still a system failure, never "script failed"
        logs.get().exception("unexpected error")
        _fail(io.err, stage,
              redactor.mask(f"unexpected error: {type(error).__name__}: {error}"))
        return codes.system_failure


def _wire(config_path: str | None, io: StageIO) -> Wiring:
    from pathlib import Path

    from . import kube, settings
    from .runner_env import JobContext

    loaded = settings.resolve_manager(
        settings.load_from(Path(config_path) if config_path else None))
    job = JobContext.from_env(io.environ)
    return Wiring(loaded, job, kube.connect(loaded.kubernetes, loaded.source))


def _dispatch(stage: str, arguments: Mapping[str, Any], wire: Callable[[], Wiring],
              redactor: logs.Redactor, agent_spec: str | None, io: StageIO,
              claim: agent_client.Claim | None) -> int:
    import json
    from pathlib import Path

    from . import kube, logs
    from .cleanup import cleanup
    from .config_stage import config
    from .podspec import pod_name
    from .prepare import prepare
    from .run import run

    wiring = wire()
    loaded, job = wiring.settings, wiring.job
    logs.configure(loaded.logging.level, loaded.logging.format, job.secrets,
                   stream=io.err, redactor=redactor)
    name = pod_name(loaded, job)
    # For `run`, the runner's stage name (get_sources, build_script, ...) says more.
    logs.bind(stage=str(arguments.get("stage") or stage), job_id=job.job_id, pod=name)
    if stage == "config":
        output = config(loaded, job, wiring.connection.namespace)
        io.out.write(json.dumps(output) + "\n")
        io.out.flush()
        _leave_agent(wiring, agent_spec, io, claim)
        return 0
    namespace = job.namespace_from_config or wiring.connection.namespace
    cluster = kube.Cluster(kube.Connection(wiring.connection.configuration, namespace,
                                           wiring.connection.server),
                           loaded.kubernetes.request_timeout_seconds,
                           loaded.kubernetes.retry_timeout_seconds)
    if stage == "prepare":
        prepare(loaded, job, cluster, io.out)
        _leave_agent(wiring, agent_spec, io, claim)
    elif stage == "run":
        io.out.flush()
        run(cluster, name, Path(arguments["script"]), arguments["stage"], job.nonce,
            out_fd=io.out.fileno(), stage_id=str(arguments.get("stage_id") or ""),
            offset=int(arguments.get("offset") or 0), standbys=wiring.standbys)
    else:
        if wiring.standbys is not None:
            wiring.standbys.end(cluster, name, job.nonce)
        cleanup(cluster, job)
    return 0


def _leave_agent(wiring: Wiring, agent_spec: str | None, io: StageIO,
                 claim: agent_client.Claim | None) -> None:
    """Fork the runner's agent on the claimed socket, so later stages start warm."""
    from . import agent, logs, settings
    from .runner_env import JobContext
    from .standby import Standbys

    if agent_spec is None or not wiring.settings.agent.enabled:
        return
    if claim is None:
        logs.get().info("no agent left: another serves this runner, or the agent "
                        "directory is not private to this user",
                        directory=agent_client.agent_directory(io.environ))
        return
    watched = [*wiring.settings.watched_files(), io.environ.get("KUBECONFIG", "")]
    standbys = Standbys() if wiring.settings.agent.standby_exec else None

    def serve(stage: str, arguments: dict[str, Any], stage_io: StageIO) -> int:
        def served() -> Wiring:
            return Wiring(wiring.settings, JobContext.from_env(stage_io.environ),
                          wiring.connection, standbys)

        return execute(stage, arguments, stage_io, served, None)

    agent.start(claim, serve, wiring.settings.agent.idle_timeout_seconds, wiring.job.tmpdir,
                lambda: settings.stamp(watched), agent_client.runner_pid(io.environ))


def _gc(args: argparse.Namespace) -> int:
    """`gc` is an operator's command, not a runner stage: plain exit codes (0, 1)."""
    from datetime import UTC, datetime
    from pathlib import Path

    from . import kube, logs, settings
    from .gc import collect, parse_duration
    from .podspec import MANAGED_SELECTOR, manager_selector

    redactor = logs.configure()
    try:
        older_than = parse_duration(args.older_than)
        loaded = settings.resolve_manager(
            settings.load_from(Path(args.config) if args.config else None))
        logs.configure(loaded.logging.level, loaded.logging.format, (), redactor=redactor)
        logs.bind(stage="gc")
        connection = kube.connect(loaded.kubernetes, loaded.source)
        cluster = kube.Cluster(connection, loaded.kubernetes.request_timeout_seconds,
                               loaded.kubernetes.retry_timeout_seconds)
        selector = MANAGED_SELECTOR if args.all_managers else manager_selector(loaded)
        failures = collect(cluster, selector, datetime.now(UTC), older_than, args.dry_run,
                           lambda line: print(line, flush=True))
    except DriverError as error:
        _fail(sys.stderr, "gc", str(error))
        return 1
    return 1 if failures else 0


def _render(args: argparse.Namespace) -> int:
    """`render` is an operator's command: YAML on stdout, plain exit codes (0, 1)."""
    from pathlib import Path

    from . import settings
    from .render import render

    try:
        loaded = settings.resolve_manager(
            settings.load_from(Path(args.config) if args.config else None))
        text = render(loaded, os.environ)
    except DriverError as error:
        _fail(sys.stderr, "render", str(error))
        return 1
    sys.stdout.write(text)
    return 0


def _check(args: argparse.Namespace) -> int:
    """`check` is an operator's command: a table on stdout, plain exit codes (0, 1)."""
    from pathlib import Path

    from . import kube, logs, settings
    from .check import check

    redactor = logs.configure()
    try:
        loaded = settings.resolve_manager(
            settings.load_from(Path(args.config) if args.config else None))
    except DriverError as error:
        _fail(sys.stderr, "check", str(error))
        return 1
    logs.configure(loaded.logging.level, loaded.logging.format, (), redactor=redactor)
    logs.bind(stage="check")
    return check(loaded, lambda: kube.connect(loaded.kubernetes, loaded.source), sys.stdout)


def _fail(err: TextIO, stage: str, message: str) -> None:
    err.write(f"runner-driver {stage}: {message}\n")
    err.flush()


def _write_exit_code(codes: ExitCodes, code: int) -> None:
    if codes.build_exit_code_file is None:
        return
    try:
        codes.build_exit_code_file.write_text(str(code), encoding="ascii")
    except OSError as error:
        from . import logs

        logs.get().warning("could not write BUILD_EXIT_CODE_FILE",
                           path=str(codes.build_exit_code_file), error=str(error))


def _emulator_command(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    try:
        if args.command == "local-cluster":
            from .emulator import MissingToolError, serve_forever

            try:
                asyncio.run(serve_forever(Path(args.kubeconfig), args.port,
                                          announce=lambda m: print(m, file=sys.stderr)))
            except MissingToolError as error:
                print(f"runner-driver: {error}", file=sys.stderr)
                return 2
            return 0
        from .emulator import MissingToolError
        from .emulator.demo import run_demo

        try:
            return run_demo()
        except MissingToolError as error:
            print(f"runner-driver: {error}", file=sys.stderr)
            return 2
    except ModuleNotFoundError as error:
        if error.name == "aiohttp":
            print(f"runner-driver: {EMULATOR_EXTRA_HINT}", file=sys.stderr)
            return 2
        raise




if __name__ == "__main__":
    sys.exit(main())
