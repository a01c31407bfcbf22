"""The measurements of issues 5 (1-6), 12 (7) and 13 (8), each returning rows and samples.

Every function runs real jobs through the runner emulator against the bench's emulated
cluster; nothing is estimated. Times are seconds in the data and milliseconds in the
table; "overhead" is always what the driver adds over running the same script directly
in the same container (`Bench.floor`).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner_driver.emulator.runner import Call, Job, JobSession, StageFailed, bash_script

from .harness import (
    BUILD,
    NAMESPACE,
    TEN_STAGES,
    Bench,
    BenchError,
    MeasuredJob,
    container_for,
    median,
    p95,
    summary,
    ten_stage_job,
)

Verdict = Literal["PASS", "FAIL", "info"]
MB = 1_000_000
# An 80-column log line; the generator ends by itself (no SIGPIPE under pipefail).
LOG_LINE = "2026-01-01T00:00:00Z INFO step 42 of the build: compiling module with flags -O2"
# Issue 13: a `run` stage as gitlab-runner sees it, against a bare Python start
# (`Bench.python_floor`) measured in the same run.
STAGE_WALL_RATIO_TARGET = 1.5
STAGE_CPU_RATIO_TARGET = 1.3
RUNNING_TO_PREPARE_TARGET = 0.100
THROUGHPUT_RATIO_TARGET = 0.80
RSS_TARGET_KB = 80_000
RSS_GROWTH_ALLOWED = 1.10  # "the same at 20 MB and 200 MB": within 10 %
REQUESTS_TARGET = 25
DEAD_API_JOB_TARGET = 240.0  # issue 12: "under 4 minutes"
FOOTPRINT_TARGET_KB = 10_000  # issue 13: summed PSS per concurrent job
GITLAB_EXECUTOR_KB = 2_500  # issue 13's reference: GitLab's Kubernetes executor per job


@dataclass
class Row:
    """One line of the printed table."""

    measurement: str
    value: str
    target: str = "-"
    verdict: Verdict = "info"


@dataclass
class Item:
    """One measurement's rows and raw data."""

    title: str
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def ms(seconds: float) -> str:
    """A duration for the table: milliseconds below a second, else seconds."""
    if math.isnan(seconds):
        return "n/a"
    return f"{seconds * 1000:.1f} ms" if abs(seconds) < 1 else f"{seconds:.2f} s"


def at_most(value: float, limit: float) -> Verdict:
    """PASS when a measured value is within its limit."""
    return "PASS" if not math.isnan(value) and value <= limit else "FAIL"


def require_success(job: MeasuredJob, what: str) -> None:
    """Fail the measurement with the log tail when a job did not succeed.

    Raises:
        BenchError: the job failed.
    """
    if job.result.status != "success":
        raise BenchError(f"{what}: job {job.result.status} ({job.result.message}); log tail:\n"
                         f"{job.log_tail()}")


def call_data(call: Call, agent_cpu: float | None = None) -> dict[str, Any]:
    """One driver call as JSON data."""
    # No max_rss_kb: without own_rss it holds this process's peak (see runner.Call).
    found: dict[str, Any] = {"stage": call.stage, "exit_code": call.exit_code,
                             "wall_seconds": call.seconds, "cpu_seconds": call.cpu_seconds,
                             "ended_at": call.ended_at}
    if agent_cpu is not None:
        found["agent_cpu_seconds"] = agent_cpu
    return found


# --- 1. per-stage overhead ------------------------------------------------------------------

def per_stage_overhead(bench: Bench, samples: int = 30) -> Item:
    """`run` of a trivial script, 30 times per container, against a bare Python start.

    Each call is interleaved with one start of `python -c "import socket, json"` (the
    yardstick of issue 13) and one run of the script straight in the container's sandbox
    (the floor of the script itself), so drift hits all three alike.
    """
    item = Item("1. per-stage cost of `run` (trivial script) against a bare Python start")
    runner = bench.runner()
    with bench.session(runner, Job(job_id=bench.job_id()), agent=True) as session:
        session.run_stage("prepare_script")
        session.run_stage("get_sources")  # creates the project dir build_script enters
        cases = (("build_script", session.stage_body("build_script", ("echo ok",))),
                 ("get_sources", session.stage_body("get_sources")))
        for stage, body in cases:
            script = bash_script(body)
            calls: list[Call] = []
            agent: list[float] = []
            floors: list[float] = []
            python: list[tuple[float, float]] = []
            for _ in range(samples):
                calls.append(session.run_body(stage, body))
                agent.append(session.agent_cpu[-1])
                python.append(bench.python_floor())
                floors.append(bench.floor(session.hostname, stage, script).seconds)
            floor = median(floors)
            wall = [c.seconds for c in calls]
            client = [c.cpu_seconds for c in calls]
            cpu = [c + a for c, a in zip(client, agent, strict=True)]
            python_wall = median([w for w, _ in python])
            python_cpu = median([c for _, c in python])
            wall_ratio = median(wall) / python_wall
            cpu_ratio = median(cpu) / python_cpu
            container = container_for(stage)
            item.data[stage] = {
                "container": container, "floor_seconds": floors,
                "python_floor": [{"wall": w, "cpu": c} for w, c in python],
                "calls": [call_data(c, a) for c, a in zip(calls, agent, strict=True)],
                "wall": summary(wall), "overhead_wall": summary([w - floor for w in wall]),
                "cpu_total": summary(cpu), "cpu_client": summary(client),
                "cpu_agent": summary(agent), "floor": summary(floors),
                "wall_ratio": wall_ratio, "cpu_ratio": cpu_ratio}
            name = f"{stage} ({container})"
            item.rows += [
                Row(f"{name}: wall / bare Python start, medians",
                    f"{wall_ratio:.2f}x ({ms(median(wall))} / {ms(python_wall)})",
                    f"<= {STAGE_WALL_RATIO_TARGET}x",
                    at_most(wall_ratio, STAGE_WALL_RATIO_TARGET)),
                Row(f"{name}: CPU client+agent / bare Python start, medians",
                    f"{cpu_ratio:.2f}x ({ms(median(cpu))} / {ms(python_cpu)})",
                    f"<= {STAGE_CPU_RATIO_TARGET}x",
                    at_most(cpu_ratio, STAGE_CPU_RATIO_TARGET)),
                Row(f"{name}: wall p95; overhead over the script's floor, median",
                    f"{ms(p95(wall))}; {ms(median(wall) - floor)}"),
                Row(f"{name}: CPU client / agent, median",
                    f"{ms(median(client))} / {ms(median(agent))}"),
                Row(f"{name}: script in its sandbox (floor), median", ms(floor)),
            ]
    item.data["agent_stats"] = bench.stats_source
    return item


# --- 2. job overhead --------------------------------------------------------------------------

def job_overhead(bench: Bench, jobs: int = 5) -> Item:
    """config + prepare + ten `run` + cleanup of a trivial job, against its ten floors."""
    item = Item("2. job overhead (config, prepare, 10 run stages, cleanup)")
    runner = bench.runner()
    per_job: list[dict[str, Any]] = []
    for _ in range(jobs):
        job = bench.run_job(runner, ten_stage_job(bench.job_id()), floors=True)
        require_success(job, "job overhead")
        runs = [c for c in job.result.calls if c.stage not in ("config", "prepare", "cleanup")]
        if tuple(c.stage for c in runs) != TEN_STAGES or len(job.floors) != len(runs):
            raise BenchError(f"expected the ten stages {TEN_STAGES}, got {job.result.stages}")
        stages = {c.stage: {"wall_seconds": c.seconds, "cpu_seconds": c.cpu_seconds}
                  for c in job.result.calls}
        for call, floor in zip(runs, job.floors, strict=True):
            stages[call.stage]["floor_seconds"] = floor.seconds
            stages[call.stage]["overhead_seconds"] = call.seconds - floor.seconds
        for stage in ("config", "prepare", "cleanup"):
            stages[stage]["overhead_seconds"] = stages[stage]["wall_seconds"]
        calls_wall = sum(c.seconds for c in job.result.calls)
        floor_total = sum(f.seconds for f in job.floors)
        per_job.append({"pod": job.pod, "job_wall_seconds": job.wall,
                        "calls_wall_seconds": calls_wall, "floor_seconds": floor_total,
                        "overhead_seconds": calls_wall - floor_total,
                        "client_cpu_seconds": sum(c.cpu_seconds for c in job.result.calls),
                        "stages": stages})
    overhead = [j["overhead_seconds"] for j in per_job]
    floors = [j["floor_seconds"] for j in per_job]
    kinds = {stage: median([j["stages"][stage]["overhead_seconds"] for j in per_job])
             for stage in ("config", "prepare", *TEN_STAGES, "cleanup")}
    run_stages = median([sum(j["stages"][s]["overhead_seconds"] for s in TEN_STAGES)
                         for j in per_job])
    item.data = {"jobs": per_job, "overhead": summary(overhead), "floor": summary(floors),
                 "median_overhead_by_stage": kinds,
                 "client_cpu": summary([j["client_cpu_seconds"] for j in per_job])}
    item.rows = [
        Row(f"job overhead, median of {jobs}", ms(median(overhead))),
        Row("  of which config / prepare / cleanup",
            f"{ms(kinds['config'])} / {ms(kinds['prepare'])} / {ms(kinds['cleanup'])}"),
        Row("  of which the ten run stages", ms(run_stages)),
        Row("job floor (ten scripts in sandbox), median", ms(median(floors))),
        Row("driver client CPU per job, median",
            ms(median([j["client_cpu_seconds"] for j in per_job]))),
    ]
    return item


# --- 3. pod running -> prepare returns --------------------------------------------------------

def running_to_prepare(bench: Bench, jobs: int = 10) -> Item:
    """From the pod's phase turning Running to the prepare process having finished."""
    item = Item("3. pod Running -> prepare returns")
    runner = bench.runner()
    samples: list[dict[str, Any]] = []
    for _ in range(jobs):
        with bench.session(runner, Job(job_id=bench.job_id())) as session:
            prepare = [c for c in session.calls if c.stage == "prepare"][-1]
            running = bench.emulated.running_at(NAMESPACE, session.hostname)
            if running is None:
                raise BenchError(f"pod {session.hostname} has no Running time")
            samples.append({"pod": session.hostname, "running_at": running,
                            "prepare_ended_at": prepare.ended_at,
                            "prepare_wall_seconds": prepare.seconds,
                            "latency_seconds": prepare.ended_at - running})
    latency = [s["latency_seconds"] for s in samples]
    item.data = {"samples": samples, "latency": summary(latency),
                 "prepare_wall": summary([s["prepare_wall_seconds"] for s in samples])}
    item.rows = [
        Row(f"pod Running -> prepare returns, median of {jobs}", ms(median(latency)),
            f"<= {ms(RUNNING_TO_PREPARE_TARGET)}",
            at_most(median(latency), RUNNING_TO_PREPARE_TARGET)),
        Row("  p95 / prepare wall median",
            f"{ms(p95(latency))} / {ms(median([s['prepare_wall_seconds'] for s in samples]))}"),
    ]
    return item


# --- 4. log throughput and memory -------------------------------------------------------------

def generator(size: int) -> str:
    """Shell text printing `size` bytes of log lines, exiting 0 by itself."""
    return f"{{ yes '{LOG_LINE}' || true; }} | head -c {size}"


def capped_run(session: JobSession, size: int, cap_seconds: float) -> tuple[Call, bool]:
    """build_script printing `size` bytes, stopped after `cap_seconds`; call and completeness.

    A driver too slow to pass hundreds of MB in reasonable time is stopped as a runner
    stops a stage at its timeout; its throughput is then measured over what it delivered.

    Raises:
        BenchError: the stage failed for another reason than the cap.
    """
    runner = session.runner
    saved = runner.stage_timeout_seconds
    runner.stage_timeout_seconds = cap_seconds
    try:
        session.run_body("build_script", session.stage_body("build_script",
                                                             (generator(size),)))
    except StageFailed as failure:
        call = session.calls[-1]
        if call.seconds < cap_seconds:
            raise BenchError(f"build_script failed: {failure}; driver stderr: "
                             f"{call.stderr[-400:].decode(errors='replace')}") from failure
    finally:
        runner.stage_timeout_seconds = saved
    call = session.calls[-1]
    return call, call.stdout_bytes >= size


def log_throughput(bench: Bench, repeats: int = 3, cap_seconds: float = 30.0) -> Item:
    """200 MB through `run` against a raw exec, and the driver's peak RSS at 20/200 MB."""
    item = Item("4. log throughput and peak memory")
    size = 200 * MB
    command = generator(size)
    # The cluster in a process of its own: see `Bench.external`.
    with bench.external() as remote:
        driver, raw, complete = _throughputs(remote, command, size, repeats, cap_seconds)
    ratio = median(driver) / median(raw)
    memory = {mb: peak_memory(bench, mb * MB, cap_seconds) for mb in (20, 200)}
    floor_kb = rss_floor_kb(bench)
    item.data = {"bytes": size, "cap_seconds": cap_seconds, "complete": complete,
                 "driver_bytes_per_second": driver, "raw_bytes_per_second": raw,
                 "ratio_of_medians": ratio, "peak_memory": memory,
                 "rss_measurement_floor_kb": floor_kb}
    note = "" if all(complete) else f" (stopped at the {cap_seconds:g} s cap)"
    item.rows = [
        Row(f"throughput via run / raw exec, median of {len(driver)}",
            f"{median(driver) / MB:.1f} / {median(raw) / MB:.0f} MB/s{note}"),
        Row("throughput ratio run : raw exec", f"{ratio:.1%}",
            f">= {THROUGHPUT_RATIO_TARGET:.0%}",
            "PASS" if ratio >= THROUGHPUT_RATIO_TARGET and all(complete) else "FAIL"),
    ]
    for who, key in (("client", "client_max_rss_kb"), ("agent (all its stages)",
                                                      "agent_max_rss_kb")):
        small, large = memory[20][key], memory[200][key]
        if small is None or large is None:
            item.rows.append(Row(f"peak RSS {who} at 20 / 200 MB", "no agent"))
            continue
        finished = memory[20]["complete"] and memory[200]["complete"]
        partial = "" if finished else " (after " + " / ".join(
            f"{memory[mb]['delivered_bytes'] / MB:.0f}" for mb in (20, 200)) + " MB: capped)"
        item.rows.append(Row(f"peak RSS {who} at 20 / 200 MB",
                             f"{small / 1000:.1f} / {large / 1000:.1f} MB{partial}",
                             f"<= {RSS_TARGET_KB / 1000:.0f} MB, 200 <= 20 + 10 %",
                             "PASS" if finished and max(small, large) <= RSS_TARGET_KB
                             and large <= small * RSS_GROWTH_ALLOWED else "FAIL"))
    item.rows.append(Row("  RSS measurement floor (reporting parent)",
                         f"{floor_kb / 1000:.1f} MB"))
    return item


def _throughputs(bench: Bench, command: str, size: int, repeats: int,
                 cap_seconds: float) -> tuple[list[float], list[float], list[bool]]:
    """Bytes per second through `run` and through a raw exec, alternated; completeness."""
    driver: list[float] = []
    raw: list[float] = []
    complete: list[bool] = []
    runner = bench.runner()
    with bench.session(runner, Job(job_id=bench.job_id())) as session:
        session.run_stage("prepare_script")
        session.run_stage("get_sources")
        for _ in range(repeats):  # alternated, so drift hits both alike
            call, finished = capped_run(session, size, cap_seconds)
            driver.append(call.stdout_bytes / call.seconds)
            complete.append(finished)
            received, seconds, status = bench.raw_exec(session.hostname, BUILD,
                                                       ["sh", "-c", command])
            if received != size or b"Success" not in status:
                raise BenchError(f"raw exec delivered {received} of {size} bytes: {status!r}")
            raw.append(size / seconds)
            if not finished:
                break  # one capped sample says enough, and repeats would take minutes
    return driver, raw, complete


def peak_memory(bench: Bench, size: int, cap_seconds: float) -> dict[str, Any]:
    """The driver's peak RSS in a job whose build_script prints `size` bytes."""
    runner = bench.runner(own_rss=True)
    with bench.session(runner, Job(job_id=bench.job_id()), agent=True) as session:
        session.run_stage("prepare_script")
        session.run_stage("get_sources")
        call, finished = capped_run(session, size, cap_seconds)
        agent = session.agent_last
    return {"bytes": size, "complete": finished, "delivered_bytes": call.stdout_bytes,
            "wall_seconds": call.seconds, "client_max_rss_kb": call.max_rss_kb,
            "agent_max_rss_kb": None if agent is None else agent.get("rss_kb"),
            "agent_stats": agent}


def rss_floor_kb(bench: Bench) -> int:
    """The peak RSS `own_rss` reports for a process that uses almost none (/bin/true).

    A driver's reported peak is at least this; below it the number would be meaningless.
    """
    runner = bench.runner(own_rss=True)
    runner.driver = ["true"]
    tempdir = Path(tempfile.mkdtemp(prefix="custom-executor", dir=runner.workdir))
    try:
        return JobSession(runner, Job(job_id=bench.job_id()), tempdir, None).call(
            "probe", []).max_rss_kb
    finally:
        shutil.rmtree(tempdir, ignore_errors=True)


# --- 5. API requests per job ------------------------------------------------------------------

def api_requests(bench: Bench, long_seconds: float) -> Item:
    """Requests the driver makes for a ten-stage job sleeping 10 s, and one sleeping longer."""
    item = Item("5. API requests per job")
    runner = bench.runner(stage_timeout_seconds=max(600.0, long_seconds + 120))
    totals: dict[str, int] = {}
    for seconds in (10.0, long_seconds):
        before = bench.emulated.request_counts()
        job = bench.run_job(runner, ten_stage_job(bench.job_id(), (f"sleep {seconds:g}",)))
        after = bench.emulated.request_counts()
        require_success(job, f"{seconds:g} s job")
        delta = {k: n - before.get(k, 0) for k, n in sorted(after.items())
                 if n - before.get(k, 0)}
        label = f"{seconds:g}s"
        totals[label] = sum(delta.values())
        item.data[label] = {"requests": delta, "total": totals[label],
                            "job_wall_seconds": job.wall}
        item.rows.append(Row(f"requests, {seconds:g} s job (ten stages)", str(totals[label]),
                             f"<= {REQUESTS_TARGET}",
                             at_most(totals[label], REQUESTS_TARGET)))
        item.rows.append(Row("  by verb and resource",
                             ", ".join(f"{k} {n}" for k, n in delta.items())))
    short, long = totals.values()
    item.rows.append(Row("requests independent of duration", f"{short} vs {long}",
                         "equal", "PASS" if short == long else "FAIL"))
    return item


# --- 6. concurrent jobs -----------------------------------------------------------------------

def concurrent_jobs(bench: Bench, jobs: int, floor_seconds: float | None) -> Item:
    """`jobs` trivial ten-stage jobs started at once; all must succeed."""
    item = Item(f"6. {jobs} concurrent jobs")
    floor_from = "item 2 (median job floor)"
    if floor_seconds is None:
        floor_seconds = job_overhead(bench, jobs=1).data["floor"]["median"]
        floor_from = "one extra floor job (item 2 not run)"
    assert floor_seconds is not None
    barrier = threading.Barrier(jobs)
    results: list[MeasuredJob | BaseException | None] = [None] * jobs
    requests_before = sum(bench.emulated.request_counts().values())

    def one(index: int, job_id: int) -> None:
        runner = bench.runner(stage_timeout_seconds=600.0)
        barrier.wait()
        try:
            results[index] = bench.run_job(runner, ten_stage_job(job_id))
        except BaseException as error:  # reported, not raised: the other jobs go on
            results[index] = error

    threads = [threading.Thread(target=one, args=(i, bench.job_id()), daemon=True)
               for i in range(jobs)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    done = [r for r in results if isinstance(r, MeasuredJob)]
    failures = [describe_failure(r) for r in results if not isinstance(r, MeasuredJob)
                or r.result.status != "success"]
    walls = [j.wall for j in done if j.result.status == "success"]
    overhead = [w - floor_seconds for w in walls]
    item.data = {"jobs": jobs, "elapsed_seconds": elapsed, "floor_seconds": floor_seconds,
                 "floor_from": floor_from, "failures": failures,
                 "job_wall_seconds": [j.wall for j in done], "overhead": summary(overhead),
                 "api_requests": sum(bench.emulated.request_counts().values()) - requests_before,
                 "calls": [[call_data(c) for c in j.result.calls] for j in done]}
    item.rows = [
        Row("jobs failed", f"{len(failures)} of {jobs}", "0",
            "PASS" if not failures else "FAIL"),
        Row("job overhead p50 / p95", f"{ms(median(overhead))} / {ms(p95(overhead))}"),
        Row("all jobs done after", f"{elapsed:.1f} s"),
    ]
    return item


def describe_failure(outcome: MeasuredJob | BaseException | None) -> dict[str, Any]:
    """A failed job as JSON: its status and log tail, or the exception."""
    if isinstance(outcome, MeasuredJob):
        return {"pod": outcome.pod, "status": outcome.result.status,
                "message": outcome.result.message, "log_tail": outcome.log_tail()}
    return {"error": repr(outcome)}



# --- 7. a job against an API server that is not there ------------------------------------------


def dead_api_server(bench: Bench) -> Item:
    """One whole job, with default driver settings, whose kubeconfig names a closed port.

    gitlab-runner makes three prepare attempts, 3 s apart, each followed by a cleanup:
    the job's time should be nearly all the documented prepare retry budget
    (`[kubernetes] retry_timeout_seconds`, 60 s by default), and each cleanup instant.
    """
    item = Item("7. a job against an unreachable API server (default settings)")
    dead = bench.workdir / "dead.kubeconfig"
    dead.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: dead\n"
        "clusters: [{name: dead, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "contexts: [{name: dead, context: {cluster: dead, user: dead, namespace: default}}]\n"
        "users: [{name: dead, user: {token: x}}]\n", encoding="utf-8")
    defaults = bench.workdir / "defaults.toml"
    defaults.write_text("", encoding="utf-8")
    runner = bench.runner(prepare_retry_seconds=3.0)
    runner.environ.update(KUBECONFIG=str(dead), RUNNER_DRIVER_CONFIG=str(defaults))
    started = time.monotonic()
    result = runner.run_job(Job(job_id=bench.job_id()))
    took = time.monotonic() - started
    if (result.status, result.failure_reason) != ("failed", "runner_system_failure"):
        raise BenchError(f"the job ended {result.status}/{result.failure_reason}, "
                         "not as a runner system failure")
    prepares = [c.seconds for c in result.calls if c.stage == "prepare"]
    cleanups = [c.seconds for c in result.calls if c.stage == "cleanup"]
    item.data = {"job_seconds": took, "prepare_seconds": prepares,
                 "cleanup_seconds": cleanups}
    item.rows = [
        Row("whole job, config to the last cleanup", f"{took:.1f} s",
            f"< {DEAD_API_JOB_TARGET:.0f} s", at_most(took, DEAD_API_JOB_TARGET)),
        Row(f"  {len(prepares)} prepares / {len(cleanups)} cleanups",
            f"{' '.join(f'{s:.1f}' for s in prepares)} s / "
            f"{' '.join(ms(s) for s in cleanups)}"),
    ]
    return item


# --- 8. the runner manager's footprint at N concurrent jobs ---------------------------------


def driver_processes(driver: list[str]) -> dict[int, int]:
    """PSS in kB of every live process running the driver's command (agents, stage
    processes, anything they forked without exec), by pid."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if driver[0].encode() not in argv:
                continue
            for line in (entry / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    found[int(entry.name)] = int(line.split()[1])
                    break
        except (OSError, ValueError):
            continue  # gone meanwhile, or a zombie without maps
    return found


def footprint(bench: Bench, jobs: int, hold_seconds: float = 6.0) -> Item:
    """`jobs` jobs started at once, then all in a build_script at once: the summed PSS of
    every driver process, sampled from the first config to the last cleanup (so the
    start, when every job's stages begin together, counts too), and the driver
    processes left afterwards.

    PSS shares each page among the processes that map it, so the sum is what the
    runner's host really spends on the driver, however the work is split into processes.
    """
    item = Item(f"8. footprint at {jobs} concurrent jobs (summed PSS of driver processes)")
    ready = threading.Barrier(jobs)
    outcomes: list[BaseException | None] = [None] * jobs
    finished = threading.Event()
    remaining = [jobs]
    lock = threading.Lock()

    def one(index: int, job_id: int) -> None:
        runner = bench.runner(stage_timeout_seconds=600.0)
        try:
            with bench.session(runner, Job(job_id=job_id)) as session:
                ready.wait(timeout=600)
                session.run_body("build_script", f"sleep {hold_seconds}\n")
        except BaseException as error:  # reported, not raised: the other jobs go on
            outcomes[index] = error
            ready.abort()
        finally:
            with lock:
                remaining[0] -= 1
                if not remaining[0]:
                    finished.set()

    threads = [threading.Thread(target=one, args=(i, bench.job_id()), daemon=True)
               for i in range(jobs)]
    samples: list[dict[str, Any]] = []
    for thread in threads:
        thread.start()
    while not finished.wait(0.25):
        found = driver_processes(bench.driver)
        samples.append({"at": time.monotonic(), "processes": len(found),
                        "pss_kb": sum(found.values())})
    for thread in threads:
        thread.join()
    ended = time.monotonic()
    failures = [repr(o) for o in outcomes if o is not None]
    time.sleep(5.0)
    left = driver_processes(bench.driver)
    peak = max(samples, key=lambda s: s["pss_kb"]) if samples else {"pss_kb": 0, "processes": 0}
    per_job = peak["pss_kb"] / jobs
    item.data = {"jobs": jobs, "samples": samples, "peak": peak, "per_job_kb": per_job,
                 "failures": failures, "left_after_5s": left, "ended_at": ended}
    item.rows = [
        Row("jobs failed", f"{len(failures)} of {jobs}", "0", "PASS" if not failures else "FAIL"),
        Row("peak summed PSS per concurrent job", f"{per_job / 1000:.1f} MB",
            f"<= {FOOTPRINT_TARGET_KB / 1000:.0f} MB", at_most(per_job, FOOTPRINT_TARGET_KB)),
        Row("  at that peak: total / driver processes",
            f"{peak['pss_kb'] / 1000:.0f} MB / {peak['processes']}",
            f"GitLab executor: {GITLAB_EXECUTOR_KB / 1000:.1f} MB per job"),
        Row("driver processes left 5 s after the last cleanup", str(len(left)), "0",
            "PASS" if not left else "FAIL"),
    ]
    return item
