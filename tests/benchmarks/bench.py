"""`make benchmark`: run the measurements of issue 5, print a table, write JSON.

One command answers "what does the driver cost a job, and does it meet the targets?" on
this machine, against the driver installed beside this Python (or `--driver`). The JSON
holds every raw sample, the summaries and the machine, so runs on different machines or
commits can be compared without rerunning them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner_driver.emulator.demo import driver_command

from . import items
from .harness import Bench
from .items import Item, Row

DEFAULT_JSON = Path(__file__).resolve().parent / "results.json"
ALL_ITEMS = ("1", "2", "3", "4", "5", "6", "7", "8")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks",
        description="Benchmark runner-driver on the embedded emulated cluster "
                    "(issues 5, 12 and 13).")
    parser.add_argument("--only", default=",".join(ALL_ITEMS), metavar="ITEMS",
                        help="comma-separated measurements to run, of 1-8 (default: all)")
    parser.add_argument("--long-job-seconds", type=float, default=300.0,
                        help="duration of the long job of item 5 (default: 300)")
    parser.add_argument("--jobs", type=int, default=50,
                        help="concurrent jobs of item 6 (default: 50)")
    parser.add_argument("--footprint-jobs", type=int, default=20,
                        help="concurrent jobs of item 8 (default: 20)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, metavar="PATH",
                        help=f"where to write the results (default: {DEFAULT_JSON})")
    parser.add_argument("--driver", default="", metavar="COMMAND",
                        help="driver command, shell-split; leading VAR=value words go to "
                             "its environment (default: runner-driver beside this Python)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a target is missed (default: report only)")
    args = parser.parse_args(argv)
    chosen = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = sorted(set(chosen) - set(ALL_ITEMS))
    if unknown or not chosen:
        parser.error(f"--only takes items of {','.join(ALL_ITEMS)}, not {args.only!r}")
    args.items = [key for key in ALL_ITEMS if key in chosen]
    if args.jobs < 1 or args.long_job_seconds <= 0:
        parser.error("--jobs and --long-job-seconds must be positive")
    return args


def split_driver(command: str) -> tuple[list[str], dict[str, str]]:
    """The driver argv and the VAR=value words before it."""
    words = shlex.split(command) if command else []
    env: dict[str, str] = {}
    while words and _ASSIGNMENT.match(words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return (words or driver_command()), env


def machine_info(driver: list[str], driver_env: dict[str, str]) -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    root = Path(__file__).resolve().parents[2]
    commit = _git(root, "rev-parse", "HEAD")
    dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
    return {"cpu_model": model, "cores": os.cpu_count(), "python": sys.version.split()[0],
            "kernel": platform.release(), "date": datetime.now(UTC).isoformat(),
            "load_average_start": os.getloadavg(),
            "git_commit": commit, "git_dirty": dirty, "driver": driver,
            "driver_env": driver_env}


def _git(root: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=False, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"cluster_and_runner": own.ru_utime + own.ru_stime,
            "drivers_and_sandboxes": children.ru_utime + children.ru_stime}


def run_item(key: str, bench: Bench, args: argparse.Namespace,
             done: dict[str, Item]) -> Item:
    """One measurement by its number."""
    if key == "1":
        return items.per_stage_overhead(bench)
    if key == "2":
        return items.job_overhead(bench)
    if key == "3":
        return items.running_to_prepare(bench)
    if key == "4":
        return items.log_throughput(bench)
    if key == "5":
        return items.api_requests(bench, args.long_job_seconds)
    if key == "7":
        return items.dead_api_server(bench)
    if key == "8":
        return items.footprint(bench, args.footprint_jobs)
    floor = done["2"].data.get("floor", {}).get("median") if "2" in done else None
    return items.concurrent_jobs(bench, args.jobs, floor)


def format_table(rows: Sequence[Row | str]) -> str:
    """Rows as fixed-width text; a plain string is a section heading."""
    real = [r for r in rows if isinstance(r, Row)]
    widths = [max([len(h), *(len(getattr(r, f)) for r in real)])
              for h, f in (("measurement", "measurement"), ("value", "value"),
                           ("target", "target"))]
    header = f"{'measurement':<{widths[0]}}  {'value':<{widths[1]}}  " \
             f"{'target':<{widths[2]}}  result"
    lines = [header, "-" * len(header)]
    for row in rows:
        if isinstance(row, str):
            lines.append(row)
            continue
        lines.append(f"{row.measurement:<{widths[0]}}  {row.value:<{widths[1]}}  "
                     f"{row.target:<{widths[2]}}  {row.verdict}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (a CI timeout, `timeout`) unwinds like Ctrl-C: the cluster stops its sandboxes.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    driver, driver_env = split_driver(args.driver)
    started = time.monotonic()
    machine = machine_info(driver, driver_env)
    done: dict[str, Item] = {}
    errors: dict[str, str] = {}
    print(f"runner-driver benchmarks {','.join(args.items)} on the EMULATED cluster; "
          f"driver: {shlex.join([*(f'{k}={v}' for k, v in driver_env.items()), *driver])}",
          flush=True)
    with Bench.start(driver, driver_env) as bench:
        print(f"agent CPU from: {bench.stats_source}", flush=True)
        for key in args.items:
            print(f"\n[{key}] running ...", flush=True)
            item_started = time.monotonic()
            cpu_before = _cpu()
            try:
                item = run_item(key, bench, args, done)
            except Exception as error:  # one broken item must not lose the others' data
                item = Item(f"{key}. failed to measure",
                            [Row(f"item {key}", f"error: {type(error).__name__}", "-", "FAIL")])
                errors[key] = traceback.format_exc()
                print(errors[key], file=sys.stderr, flush=True)
            item.data["runtime_seconds"] = time.monotonic() - item_started
            # This process (emulated cluster and runner emulator) against its reaped
            # children (driver processes and sandboxes): where the machine's CPU went.
            item.data["process_cpu_seconds"] = {
                k: v - cpu_before[k] for k, v in _cpu().items()}
            done[key] = item
            print(format_table([item.title, *item.rows]), flush=True)
            for failure in item.data.get("failures", []):
                print(f"FAILED JOB: {json.dumps(failure, indent=1)}", flush=True)
    runtime = time.monotonic() - started
    table: list[Row | str] = []
    for item in done.values():
        table += [item.title, *item.rows]
    print(f"\n{format_table(table)}\n\nbenchmark runtime {runtime:.0f} s; "
          f"results in {args.json}", flush=True)
    # Other work on the machine skews every number: say how busy it was.
    machine["load_average_end"] = os.getloadavg()
    report = {"machine": machine,
              "options": {"only": args.items, "long_job_seconds": args.long_job_seconds,
                          "jobs": args.jobs, "footprint_jobs": args.footprint_jobs},
              "runtime_seconds": runtime,
              "table": [r.__dict__ for r in table if isinstance(r, Row)],
              "items": {key: {"title": item.title, **item.data} for key, item in done.items()},
              "errors": errors}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    missed = any(r.verdict == "FAIL" for r in table if isinstance(r, Row))
    return 1 if errors or (args.check and missed) else 0
