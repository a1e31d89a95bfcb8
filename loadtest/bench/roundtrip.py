"""1 and 8. Edit round trips (update -> ack) against baselines, and scaling over replicas."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import uvloop
from websockets.asyncio.client import connect

from common import baseline, pct, replica, table

CLIENTS = (8, 32, 128)


async def _client(url: str, deadline: float, latencies: list[float], oid: str) -> None:
    async with connect(url, max_size=None, open_timeout=30) as ws:
        await asyncio.wait_for(ws.recv(), 30)
        await ws.send(json.dumps({"op": "create", "req": "c", "object": {"id": oid, "type": "rect", "x": 0, "y": 0}}))
        while '"req":"c"' not in await asyncio.wait_for(ws.recv(), 30):
            pass
        i = 0
        while time.perf_counter() < deadline:
            i += 1
            sent = time.perf_counter()
            await ws.send(f'{{"op":"update","req":"{i}","id":"{oid}","props":{{"x":{i},"y":{i % 97}}}}}')
            while True:  # skip upserts from other clients of a shared project
                reply = await asyncio.wait_for(ws.recv(), 30)
                if '"op":"ack"' in reply or '"op":"error"' in reply:
                    break
            latencies.append(time.perf_counter() - sent)


async def _measure(urls: list[str], clients: int, seconds: float, shared: bool) -> dict[str, float]:
    latencies: list[float] = []
    run = time.time_ns()
    ready = time.perf_counter() + seconds + 2.0  # connections open within the first 2 s
    tasks = [
        _client(f"{urls[i % len(urls)]}/ws/rt-{run}" + ("" if shared else f"-{i}"), ready, latencies, f"o{i}")
        for i in range(clients)
    ]
    started = time.perf_counter()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    return {"ops_per_s": round(len(latencies) / elapsed, 1), "p50_ms": round(pct(latencies, 50) * 1000, 3),
            "p99_ms": round(pct(latencies, 99) * 1000, 3)}


def measure(ports: list[int], clients: int, seconds: float, shared: bool = False) -> dict[str, float]:
    return uvloop.run(_measure([f"ws://127.0.0.1:{p}" for p in ports], clients, seconds, shared))


def run(endpoint: str, seconds: float) -> dict[str, Any]:
    rows = []
    with baseline("baseline_websockets.py") as ws_port, baseline("baseline_quart.py") as quart_port, \
            replica(endpoint) as ours, replica(endpoint, event_loop="asyncio") as ours_asyncio:
        for clients in CLIENTS:
            row: dict[str, Any] = {"clients": clients}
            for name, port, shared in (("websockets", ws_port, False), ("quart", quart_port, False),
                                       ("ours", ours, False), ("ours_asyncio", ours_asyncio, False),
                                       ("ours_shared", ours, True)):
                row[name] = measure([port], clients, seconds, shared)
            row["vs_quart"] = round(row["ours"]["ops_per_s"] / row["quart"]["ops_per_s"], 3)
            row["vs_websockets"] = round(row["ours"]["ops_per_s"] / row["websockets"]["ops_per_s"], 3)
            row["uvloop_gain"] = round(row["ours"]["ops_per_s"] / row["ours_asyncio"]["ops_per_s"], 3)
            rows.append(row)
    return {"rows": rows, "seconds": seconds}


def scaling(endpoint: str, seconds: float, clients: int = 32) -> dict[str, Any]:
    rows = []
    for n in (1, 2, 4):
        with _replicas(endpoint, n) as ports:
            rows.append({"replicas": n, **measure(ports, clients, seconds)})
    return {"rows": rows, "clients": clients}


class _replicas:
    """n replica processes at once."""

    def __init__(self, endpoint: str, n: int) -> None:
        self.managers = [replica(endpoint) for _ in range(n)]

    def __enter__(self) -> list[int]:
        return [m.__enter__() for m in self.managers]

    def __exit__(self, *exc: object) -> None:
        for m in self.managers:
            m.__exit__(None, None, None)


def markdown(result: dict[str, Any], scale: dict[str, Any]) -> str:
    rows = []
    for r in result["rows"]:
        for name, label in (("websockets", "bare websockets (parse + ack)"), ("quart", "bare Quart (parse + ack)"),
                            ("ours", "canvas-sync, uvloop"), ("ours_asyncio", "canvas-sync, asyncio loop"),
                            ("ours_shared", "canvas-sync, one shared project")):
            m = r[name]
            rows.append([r["clients"], label, m["ops_per_s"], m["p50_ms"], m["p99_ms"],
                         round(m["ops_per_s"] / r["quart"]["ops_per_s"], 3)])
    out = table("1. Edit round trips (update -> ack), a project per client unless said", 
                ["clients", "server", "ops/s", "p50 ms", "p99 ms", "vs bare Quart"], rows)
    out += "\n" + table(f"8. Scaling: {scale['clients']} clients spread over replicas",
                        ["replicas", "ops/s", "p50 ms", "p99 ms"],
                        [[r["replicas"], r["ops_per_s"], r["p50_ms"], r["p99_ms"]] for r in scale["rows"]])
    return out
