"""``capacity``: what one pod carries. One replica pinned to one core, Locust users on the
canvas mix raised step by step until the acked-edit p99 passes 100 ms (or the load
generator, on the other cores, runs out first: then the server's CPU per edit says how far
one core goes).

    python -m loadtest.bench.capacity
    loadtest/run-local --capacity          # the same steps, with run-local's options

Each step is a fresh Locust run (teams of TEAM users per project) against the same
replica; between steps the replica keeps what it holds, as a pod would. Per step: edits/s,
ack p50/p99, server CPU (cores) and resident memory, the load generator's CPU, and what
the step cost in DynamoDB (items and #head markers written, #head items and change-feed
queries read), for the sizing table.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from canvas_sync.devtools.process import free_port
from canvas_sync.devtools.replicas import ReplicaProcess
from canvas_sync.tokens import generate_keys

from loadtest.run_local import TABLE, counter, run_locust

from .common import cpu_seconds, pinned, rss_bytes, table

STEPS = (25, 50, 100, 200, 400, 800, 1600)
WARM_UP = 4
"""Seconds from the start of a step until it is measured (Locust starts, users connect)."""
TEAM = 10
"""Users per project: a team on its board."""
ACK_P99_MS = 100.0
LOAD_GENERATOR_FULL = 0.9
"""Past this share of its CPUs busy, Locust's own queueing shows in its latencies."""
COUNTERS = {
    "edits": "canvas_edits_total",
    "items_written": "canvas_autosave_objects_written_total",
    "heads_written": "canvas_autosave_heads_written_total",
    "heads_read": "canvas_sync_heads_read_total",
    "feed_queries": "canvas_sync_pulls_total",
}


def _cpu_jiffies(cpus: set[int]) -> tuple[int, int]:
    """Busy and total jiffies of these CPUs so far (/proc/stat)."""
    busy = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(f) for f in fields[:8]]
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]  # less idle and iowait
    return busy, total


class _Window:
    """CPU use while the step runs at full strength: after the users have connected, before
    they stop (so start-up and the convergence check at the end are not counted)."""

    def __init__(self, pid: int, load_cpus: set[int]) -> None:
        self.pid, self.load_cpus = pid, load_cpus

    def open(self) -> None:
        self.cpu, self.load, self.at = cpu_seconds(self.pid), _cpu_jiffies(self.load_cpus), time.monotonic()

    def close(self) -> tuple[float, float]:
        """Server cores, and how busy the load generator's CPUs were (0 to 1)."""
        seconds = time.monotonic() - self.at
        busy, total = _cpu_jiffies(self.load_cpus)
        return (cpu_seconds(self.pid) - self.cpu) / seconds, (busy - self.load[0]) / max(1, total - self.load[1])


def run(
    endpoint: str, out: Path, step_seconds: int = 20, max_users: int = STEPS[-1], database_pid: int | None = None
) -> dict[str, Any]:
    """Needs a table named ``run_local.TABLE`` at ``endpoint``; DynamoDB Local (``database_pid``)
    is moved onto the load generator's cores, off the pod's."""
    out.mkdir(parents=True, exist_ok=True)
    cores = sorted(os.sched_getaffinity(0))
    server_cpus, load_cpus = {cores[0]}, set(cores[1:]) or {cores[0]}
    with pinned(database_pid, load_cpus):
        private, jwks = generate_keys(out / "keys")
        replica = ReplicaProcess.configure(
            "capacity",
            free_port(),
            endpoint,
            TABLE,
            log_path=out / "replica.log",
            log_level="warning",
            auth="jwt",
            auth_jwks_url=jwks.resolve().as_uri(),
            max_connections_per_address=0,
        )
        replica.cpus = server_cpus
        rows: list[dict[str, Any]] = []
        replica.start()
        try:
            for users in (u for u in STEPS if u <= max_users):
                pool = ThreadPoolExecutor(1)
                locust = pool.submit(
                    run_locust,
                    [replica.url],
                    users,
                    spawn_rate=users,
                    run_time=f"{step_seconds}s",
                    projects=max(1, users // TEAM),
                    out=out,
                    private_key=private,
                    convergence_timeout=30,
                    cpus=load_cpus,
                    batched=True,
                )
                window = _Window(replica.pid, load_cpus)
                time.sleep(WARM_UP)  # Locust starts and connects every user
                before = {k: counter(replica.url, name) for k, name in COUNTERS.items()}
                window.open()
                time.sleep(step_seconds - WARM_UP - 1)
                server_cores, load_busy = window.close()
                after = {k: counter(replica.url, name) for k, name in COUNTERS.items()}
                code, result = locust.result()
                pool.shutdown()
                stats = result.get("stats", {})
                rate = {k: (after[k] - before[k]) / (step_seconds - WARM_UP - 1) for k in COUNTERS}
                row = {
                    "users": users,
                    "projects": max(1, users // TEAM),
                    "edits_per_s": stats.get("ops_per_s"),
                    "ack_p50_ms": stats.get("p50_ms"),
                    "ack_p99_ms": stats.get("p99_ms"),
                    "fail_ratio": stats.get("fail_ratio"),
                    "converged": result.get("converged"),
                    "server_cores": round(server_cores, 2),
                    "server_rss_mib": round(rss_bytes(replica.pid) / 2**20, 1),
                    "load_generator_busy": round(load_busy, 2),
                    "load_generator_cpus": len(load_cpus),
                    "dynamodb_per_s": {k: round(v, 2) for k, v in rate.items()},
                    "locust_exit": code,
                }
                rows.append(row)
                print(f"capacity: {row}", flush=True)
                if (row["ack_p99_ms"] or 0) > ACK_P99_MS or row["load_generator_busy"] >= LOAD_GENERATOR_FULL:
                    break
        finally:
            replica.terminate(60)
    return summarize(rows, step_seconds, len(server_cpus), len(load_cpus))


def summarize(rows: list[dict[str, Any]], step_seconds: int, server_cpus: int, load_cpus: int) -> dict[str, Any]:
    """The last step within the p99 goal, what stopped the ramp, and the server's CPU per edit."""
    within = [
        r
        for r in rows
        if r["ack_p99_ms"] is not None
        and r["ack_p99_ms"] <= ACK_P99_MS
        and r["load_generator_busy"] < LOAD_GENERATOR_FULL
    ]
    best = within[-1] if within else None
    last = rows[-1] if rows else None
    if last is not None and last["load_generator_busy"] >= LOAD_GENERATOR_FULL:
        limit = "the load generator's CPUs were full (its own queueing is in the latencies from there on)"
    elif last is not None and last is not best:
        limit = "ack p99 passed 100 ms"
    else:
        limit = "the largest step"
    cpu_per_edit = best["server_cores"] / best["edits_per_s"] if best and best["edits_per_s"] else None
    return {
        "rows": rows,
        "step_seconds": step_seconds,
        "team": TEAM,
        "server_cpus": server_cpus,
        "load_generator_cpus": load_cpus,
        "best": best,
        "stopped_by": limit,
        "server_cpu_ms_per_edit": round(1000 * cpu_per_edit, 3) if cpu_per_edit else None,
        "edits_per_core": round(1 / cpu_per_edit) if cpu_per_edit else None,
    }


def markdown(r: dict[str, Any]) -> str:
    out = table(
        f"capacity: one replica pinned to {r['server_cpus']} core, Locust (canvas mix, teams of "
        f"{r['team']} per project, tokens on) on {r['load_generator_cpus']} other core(s), "
        f"{r['step_seconds']} s per step; stopped by: {r['stopped_by']}",
        [
            "users",
            "projects",
            "edits/s",
            "ack p50 ms",
            "ack p99 ms",
            "server cores",
            "server RSS MiB",
            "load generator CPUs busy",
            "items written/s",
            "#head reads/s",
        ],
        [
            [
                x["users"],
                x["projects"],
                x["edits_per_s"],
                x["ack_p50_ms"],
                x["ack_p99_ms"],
                x["server_cores"],
                x["server_rss_mib"],
                x["load_generator_busy"],
                x["dynamodb_per_s"]["items_written"],
                x["dynamodb_per_s"]["heads_read"],
            ]
            for x in r["rows"]
        ],
    )
    best = r["best"]
    if best:
        out += (
            f"\nLast step within the goal with the load generator not full: {best['users']} users, "
            f"{best['edits_per_s']} edits/s, ack p99 {best['ack_p99_ms']} ms, the server at "
            f"{best['server_cores']} cores and {best['server_rss_mib']} MiB. Server CPU per acked edit there: "
            f"{r['server_cpu_ms_per_edit']} ms, so one core answers about {r['edits_per_core']:,} edits/s of this "
            "mix before it is full.\n"
        )
    return out


if __name__ == "__main__":
    from .suite import standalone

    sys.exit(standalone("capacity"))
