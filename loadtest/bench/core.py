"""``make bench``: the first benchmark, against AWS DynamoDB Local on this machine.

1. WebSocket edit round trips (send an update, wait for its ack) with 8 and 32 clients,
   each on its own project and all on one project, beside a bare Quart-on-hypercorn app
   that only parses JSON and acks (measured in the same run: the ratio is what our
   pipeline costs over the framework).
2. Write reduction: DynamoDB items written per accepted edit for 1,000 updates on 20
   objects, at the default 5 s auto-save interval.
3. Auto-save batch latency: p50/p99 of BatchWriteItem calls (25 items) while flushing
   2,000 dirty objects with the worker's parallelism.

Clients run in this process on uvloop; the server is a separate process. On a 2-core
machine client and server share the CPUs, so absolute figures are low; ratios hold.
Prints tables and writes ``docs/bench/core.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import uvloop
from websockets.asyncio.client import connect

from canvas_sync.dynamodb_local import DynamoDBLocal, free_port
from canvas_sync.model import ObjectState
from canvas_sync.state import DirtyObject
from canvas_sync.store import DynamoStore, make_client

ROOT = Path(__file__).resolve().parents[2]
TABLE = "bench_objects"


def pct(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1] if len(samples) > 1 else samples[0]


def start(cmd: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).close()
            return proc
        except urllib.error.HTTPError as error:
            if error.code == 404:  # the baseline has no /readyz: it is up
                return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{cmd} did not start")


async def recv(ws: Any) -> str:
    return await asyncio.wait_for(ws.recv(), 10)  # a lost reply fails the run instead of hanging it


async def client(url: str, project: str, deadline: float, latencies: list[float], oid: str) -> None:
    async with connect(url + project, max_size=None) as ws:
        await recv(ws)
        await ws.send(json.dumps({"op": "create", "req": "c", "object": {"id": oid, "type": "rect", "x": 0, "y": 0}}))
        while '"req":"c"' not in await recv(ws):
            pass
        i = 0
        while time.perf_counter() < deadline:
            i += 1
            sent = time.perf_counter()
            await ws.send(f'{{"op":"update","req":"{i}","id":"{oid}","props":{{"x":{i},"y":{i % 97}}}}}')
            while True:  # skip upserts from the other clients of a shared project
                reply = await recv(ws)
                if '"op":"ack"' in reply or '"op":"error"' in reply:
                    break
            latencies.append(time.perf_counter() - sent)


async def round_trips(port: int, clients: int, seconds: float, shared: bool) -> dict[str, float]:
    url = f"ws://127.0.0.1:{port}/ws/"
    latencies: list[float] = []
    run = f"{time.time_ns()}"
    deadline = time.perf_counter() + seconds
    await asyncio.gather(*(
        client(url, f"bench-{run}" if shared else f"bench-{run}-{i}", deadline, latencies, f"o{i}") for i in range(clients)
    ))
    return {
        "ops_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(pct(latencies, 50) * 1000, 3),
        "p99_ms": round(pct(latencies, 99) * 1000, 3),
    }


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(canvas_[^ ]+) (\S+)$", text, re.M)}


def wait_clean(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while metrics(port)["canvas_dirty_objects"] and time.monotonic() < deadline:
        time.sleep(0.1)


async def edit_session(port: int, project: str, objects: int, updates: int) -> None:
    async with connect(f"ws://127.0.0.1:{port}/ws/{project}") as ws:
        await recv(ws)
        for i in range(objects):
            await ws.send(json.dumps({"op": "create", "object": {"id": f"o{i}", "type": "rect", "x": 0}}))
            await recv(ws)
        for i in range(updates):
            await ws.send(json.dumps({"op": "update", "id": f"o{i % objects}", "props": {"x": i}}))
            await recv(ws)


def write_reduction(port: int, objects: int = 20, updates: int = 1000) -> dict[str, float]:
    wait_clean(port)
    before = metrics(port)
    uvloop.run(edit_session(port, f"wr-{time.time_ns()}", objects, updates))
    time.sleep(0.2)
    wait_clean(port)
    after = metrics(port)
    edits = sum(after[f'canvas_edits_total{{op="{op}"}}'] - before[f'canvas_edits_total{{op="{op}"}}'] for op in ("create", "update"))
    written = after["canvas_autosave_objects_written_total"] - before["canvas_autosave_objects_written_total"]
    calls = after['canvas_autosave_batches_total{outcome="success"}'] - before['canvas_autosave_batches_total{outcome="success"}']
    return {"edits": edits, "items_written": written, "batch_calls": calls,
            "items_per_edit": round(written / edits, 4), "reduction_pct": round(100 * (1 - written / edits), 2)}


def batch_latency(endpoint: str, objects: int = 2000) -> dict[str, float]:
    store = DynamoStore(make_client(endpoint, pool_size=12), TABLE, "bench", concurrency=4)
    calls: list[float] = []
    store.observer = lambda outcome, seconds, written: calls.append(seconds)
    stamp = (int(time.time() * 1000), 0, "bench")
    dirty = [DirtyObject("flush", ObjectState.created(f"o{i}", "rect", {"x": i, "y": i / 3, "fill": "#abc"}, stamp))
             for i in range(objects)]
    started = time.perf_counter()
    report = store.write(dirty, saved_at_ms=stamp[0])
    total = time.perf_counter() - started
    store.close()
    assert not report.failed, report.errors
    return {"objects": objects, "calls": len(calls), "total_s": round(total, 3),
            "p50_ms": round(pct(calls, 50) * 1000, 2), "p99_ms": round(pct(calls, 99) * 1000, 2)}


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    lines = [f"\n### {title}", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each round-trip run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "core.json")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} cores", "seconds_per_run": args.seconds}
    with DynamoDBLocal() as ddb:
        DynamoStore(make_client(ddb.endpoint), TABLE).create_table()
        env = dict(os.environ, CANVAS_DYNAMODB_ENDPOINT=ddb.endpoint, CANVAS_TABLE=TABLE, CANVAS_RATE_LIMIT="0",
                   CANVAS_REPLICA_ID="bench", CANVAS_LOG_LEVEL="warning")
        ours_port, base_port = free_port(), free_port()
        ours = start([sys.executable, "-m", "canvas_sync", "serve", "--host", "127.0.0.1", "--port", str(ours_port)], env, ours_port)
        base = start([sys.executable, str(Path(__file__).with_name("baseline_quart.py")), str(base_port)], env, base_port)
        try:
            rows = []
            for clients in (8, 32):
                for name, port, shared in (("bare Quart (parse + ack)", base_port, False),
                                           ("canvas-sync, a project each", ours_port, False),
                                           ("canvas-sync, one shared project", ours_port, True)):
                    r = uvloop.run(round_trips(port, clients, args.seconds, shared))
                    rows.append({"server": name, "clients": clients, **r})
            for clients in (8, 32):
                base_ops = next(r["ops_per_s"] for r in rows if r["clients"] == clients and r["server"].startswith("bare"))
                for r in rows:
                    if r["clients"] == clients:
                        r["ratio_vs_bare"] = round(r["ops_per_s"] / base_ops, 3)
            results["round_trips"] = rows
            results["write_reduction"] = write_reduction(ours_port)
        finally:
            for proc in (ours, base):
                proc.terminate()
                proc.wait(30)
        results["batch_latency"] = batch_latency(ddb.endpoint)

    print(table("WebSocket edit round trips (update -> ack)", ["server", "clients", "ops/s", "p50 ms", "p99 ms", "vs bare Quart"],
                [[r["server"], r["clients"], r["ops_per_s"], r["p50_ms"], r["p99_ms"], r["ratio_vs_bare"]] for r in results["round_trips"]]))
    w = results["write_reduction"]
    print(table("Write reduction: 1,000 updates on 20 objects (+20 creates), autosave every 5 s",
                ["edits", "items written", "BatchWriteItem calls", "items per edit", "reduction"],
                [[int(w["edits"]), int(w["items_written"]), int(w["batch_calls"]), w["items_per_edit"], f'{w["reduction_pct"]}%']]))
    b = results["batch_latency"]
    print(table("Auto-save BatchWriteItem latency (25 items a call, 4 in parallel)",
                ["objects", "calls", "total s", "p50 ms", "p99 ms"],
                [[b["objects"], b["calls"], b["total_s"], b["p50_ms"], b["p99_ms"]]]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
