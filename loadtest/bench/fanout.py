"""``fanout``: one writer, 50 readers on one project, against a bare Quart relay.

python -m loadtest.bench.fanout
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import uvloop
from websockets.asyncio.client import connect

from .common import baseline, pct, replica, table

READERS = 50


async def _reader(url: str, stop: asyncio.Event, latencies: list[float], ready: asyncio.Semaphore) -> None:
    async with connect(url, max_size=None, open_timeout=30) as ws:
        await ws.recv()
        ready.release()
        while not stop.is_set():
            try:
                text = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                continue
            if '"t":' in text:
                sent_ns = int(json.loads(text)["object" if '"object"' in text else "props"]["t"])
                latencies.append((time.perf_counter_ns() - sent_ns) / 1e9)


async def _run(base: str, seconds: float) -> dict[str, float]:
    stop, ready = asyncio.Event(), asyncio.Semaphore(0)
    latencies: list[float] = []
    readers = [asyncio.create_task(_reader(base, stop, latencies, ready)) for _ in range(READERS)]
    for _ in range(READERS):
        await asyncio.wait_for(ready.acquire(), 60)
    async with connect(base, max_size=None) as writer:
        await writer.recv()
        await writer.send(json.dumps({"op": "create", "req": "c", "object": {"id": "w", "type": "rect"}}))
        while '"req":"c"' not in await writer.recv():
            pass
        await asyncio.sleep(0.5)
        latencies.clear()
        started = time.perf_counter()
        sent = 0
        while time.perf_counter() - started < seconds:
            sent += 1
            await writer.send(f'{{"op":"update","req":"{sent}","id":"w","props":{{"t":{time.perf_counter_ns()}}}}}')
            while '"op":"ack"' not in await writer.recv():
                pass
        elapsed = time.perf_counter() - started
        await asyncio.sleep(1.0)  # let the last deliveries land
    stop.set()
    await asyncio.gather(*readers)
    return {
        "updates": sent,
        "deliveries_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(pct(latencies, 50) * 1000, 2),
        "p99_ms": round(pct(latencies, 99) * 1000, 2),
        "delivered_ratio": round(len(latencies) / max(1, sent * READERS), 4),
    }


REPEATS = 3


def run(endpoint: str, seconds: float) -> dict[str, Any]:
    """Medians of REPEATS interleaved runs each, every run on a fresh server."""
    bare_runs, ours_runs = [], []
    for _ in range(REPEATS):
        with baseline("baseline_quart.py") as quart:
            bare_runs.append(uvloop.run(_run(f"ws://127.0.0.1:{quart.port}/relay/fan-{time.time_ns()}", seconds)))
        with replica(endpoint) as server:
            ours_runs.append(uvloop.run(_run(f"{server.ws_url('fan-')}{time.time_ns()}", seconds)))
    bare, ours = (sorted(runs, key=lambda r: r["deliveries_per_s"])[len(runs) // 2] for runs in (bare_runs, ours_runs))
    return {
        "readers": READERS,
        "repeats": REPEATS,
        "bare_quart_relay": bare,
        "ours": ours,
        "ratio": round(ours["deliveries_per_s"] / bare["deliveries_per_s"], 3),
        "runs_bare_per_s": [r["deliveries_per_s"] for r in bare_runs],
        "runs_ours_per_s": [r["deliveries_per_s"] for r in ours_runs],
    }


def markdown(r: dict[str, Any]) -> str:
    rows = [
        [label, m["updates"], m["deliveries_per_s"], m["p50_ms"], m["p99_ms"], m["delivered_ratio"]]
        for label, m in (("bare Quart relay", r["bare_quart_relay"]), ("canvas-sync", r["ours"]))
    ]
    return table(
        f"fanout: 1 writer, {r['readers']} readers on one project "
        f"(ratio {r['ratio']}; median of {r['repeats']} runs each)",
        ["server", "updates sent", "deliveries/s", "p50 delivery ms", "p99 delivery ms", "delivered"],
        rows,
    )


if __name__ == "__main__":
    from .suite import standalone

    sys.exit(standalone("fanout"))
