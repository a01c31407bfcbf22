"""Command-line entry point: parse arguments, wire the pieces, map outcomes to exit codes.

gitlab-runner reads only our exit code: BUILD_FAILURE_EXIT_CODE when the user's
script failed (its real code written to BUILD_EXIT_CODE_FILE), SYSTEM_FAILURE_EXIT_CODE
for everything else, including bugs; Python's own exit status 1 for an uncaught
exception would wrongly mean "script failed". That mapping happens here and nowhere
else. This module does no work of its own. The emulator commands (`local-cluster`,
`demo`) import the emulator lazily, so the driver's stages never load it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from . import __version__, logs
from .errors import Canceled, DriverError, JobFailed
from .runner_env import ExitCodes, exit_codes

EMULATOR_EXTRA_HINT = (
    "the emulated cluster needs the 'emulator' extra: pip install 'runner-driver[emulator]'")
DOCS = "https://docs.gitlab.com/runner/executors/custom/"
STAGES = ("config", "prepare", "run", "cleanup")
CLEANUP_SIGTERM_GRACE_SECONDS = 3.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner-driver",
        description="GitLab Runner custom executor driver that runs each job in an "
                    "unprivileged Kubernetes pod built around the kaniko debug image.")
    parser.add_argument("--version", action="version", version=f"runner-driver {__version__}")
    parser.add_argument("--config", type=Path, default=None, metavar="PATH",
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
    run.add_argument("script", type=Path, help="the script file gitlab-runner generated")
    run.add_argument("stage", help="the stage name, e.g. get_sources or build_script")
    commands.add_parser("cleanup", help="delete everything created for the job",
                        description=f"cleanup_exec stage ({DOCS}#cleanup).")
    gc = commands.add_parser(
        "gc", help="delete job pods and secrets whose job is over (for a CronJob)",
        description="Find the pods and secrets runner-driver labelled in its namespace and "
                    "delete those whose job is certainly over: the pod finished, or it runs "
                    "past its active deadline (job timeout plus margin). A pod inside its "
                    "deadline is never touched. Prints what it did.")
    gc.add_argument("--older-than", default="0s", metavar="DURATION",
                    help="keep anything younger than this, finished or not (e.g. 30m to "
                         "keep failed pods around for inspection; default 0s)")
    gc.add_argument("--dry-run", action="store_true",
                    help="only print what would be deleted")
    local = commands.add_parser(
        "local-cluster", help="serve an emulated Kubernetes cluster on 127.0.0.1",
        description="Serve the embedded emulated cluster in the foreground and write a "
                    "kubeconfig for it once it is ready. Stop it with Ctrl-C or SIGTERM.")
    local.add_argument("--kubeconfig", type=Path, required=True,
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
    codes = exit_codes(os.environ)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        # argparse has printed the usage error; for the runner that is a system failure.
        return 0 if exit_.code in (0, None) else codes.system_failure
    if args.command in STAGES:
        return _stage(args, codes)
    if args.command == "gc":
        return _gc(args)
    return _emulator_command(args)


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    # Ignore further SIGTERMs while we stop: the runner escalates to SIGKILL anyway.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Canceled("received SIGTERM")


def _on_sigterm_in_cleanup(_signum: int, _frame: FrameType | None) -> None:
    # Deleting the pod is the whole point of cleanup: let the request in flight land,
    # but stop within the runner's patience.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _on_sigterm)
    signal.setitimer(signal.ITIMER_REAL, CLEANUP_SIGTERM_GRACE_SECONDS)


def _stage(args: argparse.Namespace, codes: ExitCodes) -> int:
    stage: str = args.command
    redactor = logs.configure()
    signal.signal(signal.SIGTERM, _on_sigterm_in_cleanup if stage == "cleanup" else _on_sigterm)
    try:
        try:
            return _dispatch(stage, args, redactor)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)  # cleanup's SIGTERM grace, if armed
    except JobFailed as failure:
        _write_exit_code(codes, failure.exit_code)
        if stage != "run":  # run's failures are the script's own output
            _fail(stage, redactor.mask(str(failure)))
        return codes.build_failure
    except Canceled:
        _fail(stage, "canceled: gitlab-runner sent SIGTERM; stopped")
        return codes.system_failure
    except DriverError as error:
        _fail(stage, redactor.mask(str(error)))
        return codes.system_failure
    except Exception as error:  # a bug is still a system failure, never "script failed"
        logs.get().exception("unexpected error")
        _fail(stage, redactor.mask(f"unexpected error: {type(error).__name__}: {error}"))
        return codes.system_failure


def _dispatch(stage: str, args: argparse.Namespace, redactor: logs.Redactor) -> int:
    from . import kube, settings
    from .cleanup import cleanup
    from .config_stage import config
    from .podspec import pod_name
    from .prepare import prepare
    from .run import run
    from .runner_env import JobContext

    loaded = settings.load_from(args.config)
    job = JobContext.from_env()
    logs.configure(loaded.logging.level, loaded.logging.format, job.secrets,
                   redactor=redactor)
    name = pod_name(job)
    # For `run`, the runner's stage name (get_sources, build_script, ...) says more.
    logs.bind(stage=args.stage if stage == "run" else stage, job_id=job.job_id, pod=name)
    connection = kube.connect(loaded.kubernetes, loaded.source)
    if stage == "config":
        sys.stdout.write(json.dumps(config(loaded, job, connection.namespace)) + "\n")
        sys.stdout.flush()
        return 0
    namespace = job.namespace_from_config or connection.namespace
    cluster = kube.Cluster(kube.Connection(connection.configuration, namespace,
                                           connection.server),
                           loaded.kubernetes.request_timeout_seconds,
                           loaded.kubernetes.retry_timeout_seconds)
    if stage == "prepare":
        prepare(loaded, job, cluster, sys.stdout)
    elif stage == "run":
        run(cluster, name, args.script, args.stage)
    else:
        cleanup(cluster, name)
    return 0


def _gc(args: argparse.Namespace) -> int:
    """`gc` is an operator's command, not a runner stage: plain exit codes (0, 1)."""
    from datetime import UTC, datetime

    from . import kube, settings
    from .gc import collect, parse_duration

    redactor = logs.configure()
    try:
        older_than = parse_duration(args.older_than)
        loaded = settings.load_from(args.config)
        logs.configure(loaded.logging.level, loaded.logging.format, (), redactor=redactor)
        logs.bind(stage="gc")
        connection = kube.connect(loaded.kubernetes, loaded.source)
        cluster = kube.Cluster(connection, loaded.kubernetes.request_timeout_seconds,
                               loaded.kubernetes.retry_timeout_seconds)
        failures = collect(cluster, datetime.now(UTC), older_than, args.dry_run,
                           lambda line: print(line, flush=True))
    except DriverError as error:
        _fail("gc", str(error))
        return 1
    return 1 if failures else 0


def _fail(stage: str, message: str) -> None:
    sys.stderr.write(f"runner-driver {stage}: {message}\n")
    sys.stderr.flush()


def _write_exit_code(codes: ExitCodes, code: int) -> None:
    if codes.build_exit_code_file is None:
        return
    try:
        codes.build_exit_code_file.write_text(str(code), encoding="ascii")
    except OSError as error:
        logs.get().warning("could not write BUILD_EXIT_CODE_FILE",
                           path=str(codes.build_exit_code_file), error=str(error))


def _emulator_command(args: argparse.Namespace) -> int:
    try:
        if args.command == "local-cluster":
            from .emulator import MissingToolError, serve_forever

            try:
                asyncio.run(serve_forever(args.kubeconfig, args.port,
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
