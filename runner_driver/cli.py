"""Command-line entry point: parse arguments, wire the pieces, map outcomes to exit codes.

This module does no work of its own. The emulator commands (`local-cluster`, `demo`)
import the emulator lazily, so the driver's own stages never load it or its
dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__

EMULATOR_EXTRA_HINT = (
    "the emulated cluster needs the 'emulator' extra: pip install 'runner-driver[emulator]'")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner-driver",
        description="GitLab Runner custom executor driver that runs each job in an "
                    "unprivileged Kubernetes pod built around the kaniko debug image.")
    parser.add_argument("--version", action="version", version=f"runner-driver {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
        description="Start the embedded emulated cluster, run a sample kaniko-style job in "
                    "it and print its log and a summary.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the process exit code."""
    args = _parser().parse_args(argv)
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
        if args.command == "demo":
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
    return 2


if __name__ == "__main__":
    sys.exit(main())
