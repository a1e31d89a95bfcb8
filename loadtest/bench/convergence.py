"""``convergence``: convergence across three replica processes, against AWS DynamoDB Local.

Each round: six clients (two per replica) make random concurrent edits on 15 shared
objects of a new project for a few seconds; then the time until every replica's
``GET /projects/{p}/objects`` returns the same bytes with nothing unsaved is measured.
After the rounds: the sync lag histogram (save on one replica to arrival on another)
and the DynamoDB read requests that one idle held project costs per minute.

    python -m loadtest.bench.convergence [--rounds 10] [--autosave 5] [--sync 1]

It starts a DynamoDB Local of its own; ``python -m loadtest.bench convergence`` runs it
(5 rounds, 30 idle seconds) in a subprocess, as part of the whole suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import uvloop
from canvas_sync.devtools.dynamodb_local import DynamoDBLocal
from canvas_sync.store import DynamoStore, make_client
from websockets.asyncio.client import connect

from loadtest.convergence_check import check_convergence

from .common import ROOT, TABLE, counter, get, replica, table

IDS = [f"s{i}" for i in range(15)]


async def editor(port: int, project: str, seed: int, seconds: float) -> int:
    rng = random.Random(seed)
    acked = 0
    async with connect(f"ws://127.0.0.1:{port}/ws/{project}") as ws:
        await ws.recv()
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            i += 1
            oid, roll = rng.choice(IDS), rng.random()
            if roll < 0.25:
                msg = {"op": "create", "object": {"id": oid, "type": "rect", "x": i, "y": rng.random()}}
            elif roll < 0.9:
                msg = {"op": "update", "id": oid, "props": {rng.choice("xyz"): i, "fill": f"c{seed}-{i}"}}
            else:
                msg = {"op": "delete", "id": oid}
            await ws.send(json.dumps({**msg, "req": str(i)}))
            while True:
                reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if reply.get("req") == str(i):
                    acked += reply["op"] == "ack"
                    break
            await asyncio.sleep(rng.uniform(0, 0.01))
    return acked


async def edit_round(ports: list[int], project: str, round_: int, seconds: float) -> list[int]:
    return await asyncio.gather(*(editor(ports[i % 3], project, round_ * 10 + i, seconds) for i in range(6)))


def converge_seconds(ports: list[int], project: str, timeout: float = 60) -> float:
    result = check_convergence([f"http://127.0.0.1:{p}" for p in ports], [project], timeout, poll=0.02)
    if not result["converged"]:
        raise RuntimeError(f"no convergence within {timeout}s: {result['mismatches'][:3]}")
    return float(result["seconds"])


def histogram(port: int, name: str) -> dict[float, float]:
    text = get(port, "/metrics").decode()
    return {
        float(m.group(1)): float(m.group(2)) for m in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M)
    }


def quantile(buckets: dict[float, float], q: float) -> float:
    """Linear interpolation inside the bucket, as PromQL's histogram_quantile does."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    rank, prev_bound, prev_count = q * total, 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return prev_bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / max(buckets[bound] - prev_count, 1e-9)
        prev_bound, prev_count = bound, buckets[bound]
    return bounds[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--edit-seconds", type=float, default=3.0)
    parser.add_argument("--autosave", type=float, default=5.0)
    parser.add_argument("--sync", type=float, default=1.0)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "convergence.json")
    args = parser.parse_args()
    with DynamoDBLocal() as ddb:
        DynamoStore(make_client(ddb.endpoint), TABLE).create_table()
        with ExitStack() as stack:
            ports = [
                stack.enter_context(
                    replica(ddb.endpoint, f"replica-{n}", autosave_interval=args.autosave, sync_interval=args.sync)
                ).port
                for n in "abc"
            ]
            times, edits = [], 0
            for r in range(args.rounds):
                project = f"round-{r}"
                edits += sum(uvloop.run(edit_round(ports, project, r, args.edit_seconds)))
                seconds = converge_seconds(ports, project)
                times.append(seconds)
                print(f"round {r}: converged {seconds:.2f}s after the last edit", flush=True)
            written = sum(
                counter(p, "canvas_autosave_objects_written_total") + counter(p, "canvas_autosave_heads_written_total")
                for p in ports
            )  # items + #head updates
            repairs = sum(counter(p, "canvas_sync_repairs_total") for p in ports)
            lag: dict[float, float] = {}
            for port in ports:
                for bound, count in histogram(port, "canvas_sync_lag_seconds").items():
                    lag[bound] = lag.get(bound, 0) + count
            held = args.rounds  # every replica holds every round's project (idle eviction: 300 s)
            pulls = lambda p: counter(p, "canvas_sync_pulls_total", 'outcome="success"')  # noqa: E731
            before = [pulls(p) for p in ports]
            time.sleep(args.idle_seconds)
            after = [pulls(p) for p in ports]
            per_project_per_min = statistics.mean(
                (a - b) / held * 60 / args.idle_seconds for a, b in zip(after, before, strict=True)
            )
    # inclusive: with a handful of rounds, never extrapolate past the slowest one
    q = statistics.quantiles(times, n=100, method="inclusive") if len(times) > 1 else times * 99
    result = {
        "replicas": 3,
        "clients": 6,
        "rounds": args.rounds,
        "autosave_s": args.autosave,
        "sync_s": args.sync,
        "acked_edits": edits,
        "items_written": int(written),
        "items_per_edit": round(written / max(edits, 1), 3),
        "repairs": int(repairs),
        "convergence_s": {
            "p50": round(statistics.median(times), 2),
            "p99": round(q[98], 2),
            "max": round(max(times), 2),
        },
        "bound_s": args.autosave + args.sync + 2,
        "sync_lag_s": {
            "p50": round(quantile(lag, 0.5), 2),
            "p99": round(quantile(lag, 0.99), 2),
            "samples": int(lag.get(float("inf"), 0)),
        },
        "idle_reads_per_project_per_min": round(per_project_per_min, 1),
    }
    print(json.dumps(result, indent=2))
    print(markdown(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def markdown(c: dict[str, Any]) -> str:
    return table(
        f"convergence: across {c['replicas']} replicas (autosave {c['autosave_s']:g} s, sync {c['sync_s']:g} s; "
        "contended random edits)",
        ["convergence p50", "convergence p99", "bound", "sync lag p50", "sync lag p99", "items per edit"],
        [
            [
                f"{c['convergence_s']['p50']} s",
                f"{c['convergence_s']['p99']} s",
                f"{c['bound_s']} s",
                f"{c['sync_lag_s']['p50']} s",
                f"{c['sync_lag_s']['p99']} s",
                c["items_per_edit"],
            ]
        ],
    )


if __name__ == "__main__":
    sys.exit(main())
