"""Two benchmarks: ``roundtrip``, edit round trips (update -> ack) against bare Quart and bare
websockets baselines; ``scaling``, the same round trips spread over 1, 2 and 4 replicas.

    python -m loadtest.bench.roundtrip     # both: python -m loadtest.bench roundtrip scaling
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop
from websockets.asyncio.client import connect

from .common import baseline, cpu_seconds, pct, replica, table

CLIENTS = (8, 32, 128)
REPEATS = 5
"""Runs of bare Quart and of canvas-sync per client count, interleaved; the median is reported."""


class _Window:
    """The measured window opens once every client is connected and has created its
    object, so cache-miss loads (the cold-load benchmark) and connection set-up are not counted."""

    def __init__(self, clients: int, seconds: float, pid: int | None) -> None:
        self.waiting = clients
        self.seconds = seconds
        self.pid = pid
        self.cpu_at_open = 0.0
        self.opened = asyncio.Event()
        self.deadline = 0.0
        self.latencies: list[float] = []

    def ready(self) -> None:
        self.waiting -= 1
        if not self.waiting:
            self.cpu_at_open = cpu_seconds(self.pid) if self.pid else 0.0
            self.deadline = time.perf_counter() + self.seconds
            self.opened.set()


async def _client(
    url: str, window: _Window, oid: str, subprotocols: list[str] | None = None, compression: str | None = "deflate"
) -> None:
    async with connect(url, max_size=None, open_timeout=30, subprotocols=subprotocols, compression=compression) as ws:  # type: ignore[arg-type]
        await asyncio.wait_for(ws.recv(), 30)
        await ws.send(json.dumps({"op": "create", "req": "c", "object": {"id": oid, "type": "rect", "x": 0, "y": 0}}))
        while '"req":"c"' not in await asyncio.wait_for(ws.recv(), 30):
            pass
        window.ready()
        await asyncio.wait_for(window.opened.wait(), 60)
        i = 0
        while time.perf_counter() < window.deadline:
            i += 1
            sent = time.perf_counter()
            await ws.send(f'{{"op":"update","req":"{i}","id":"{oid}","props":{{"x":{i},"y":{i % 97}}}}}')
            while True:  # skip upserts from other clients of a shared project
                reply = await asyncio.wait_for(ws.recv(), 30)
                if '"op":"ack"' in reply or '"op":"error"' in reply:
                    break
            window.latencies.append(time.perf_counter() - sent)


async def _measure(
    urls: list[str],
    clients: int,
    seconds: float,
    shared: bool,
    pid: int | None,
    token: str | None = None,
    compression: str | None = "deflate",
    offered: list[str] | None = None,
) -> dict[str, float]:
    window = _Window(clients, seconds, pid)
    run = time.time_ns()
    protocols = [*(offered or ["canvas-sync.v1"]), f"canvas-sync.bearer.{token}"] if token else offered
    await asyncio.gather(
        *(
            _client(
                f"{urls[i % len(urls)]}/ws/rt-{run}" + ("" if shared else f"-{i}"),
                window,
                f"o{i}",
                protocols,
                compression,
            )
            for i in range(clients)
        )
    )
    elapsed = time.perf_counter() - (window.deadline - seconds)  # to the last ack, which may land after the deadline
    lat = window.latencies
    result = {
        "ops_per_s": round(len(lat) / elapsed, 1),
        "p50_ms": round(pct(lat, 50) * 1000, 3),
        "p99_ms": round(pct(lat, 99) * 1000, 3),
    }
    if pid:
        result["server_cpu_us_per_op"] = round(1e6 * (cpu_seconds(pid) - window.cpu_at_open) / max(1, len(lat)), 1)
    return result


def measure(
    ports: list[int],
    clients: int,
    seconds: float,
    shared: bool = False,
    pid: int | None = None,
    compression: str | None = "deflate",
    offered: list[str] | None = None,
) -> dict[str, float]:
    """Round trips over ``seconds`` once all clients are connected; with ``pid``, also the
    server's CPU time per round trip in that window: what the server's own code costs,
    whatever else the shared machine runs, so the steadier of the two ratios. The clients
    offer permessage-deflate as browsers do, unless ``compression`` is None, and the
    subprotocols ``offered`` (none by default)."""
    urls = [f"ws://127.0.0.1:{p}" for p in ports]
    return uvloop.run(_measure(urls, clients, seconds, shared, pid, compression=compression, offered=offered))


def run(endpoint: str, seconds: float) -> dict[str, Any]:
    """Each run on a fresh server process, so no projects held from earlier runs are being
    synced in the background. The bare Quart app and canvas-sync (the ratio the goal is
    about) run REPEATS times, interleaved, so the shared machine's drift falls on both."""
    variants: list[tuple[str, Callable[[], Any], bool, int, str | None]] = [
        ("websockets", lambda: baseline("baseline_websockets.py"), False, 1, "deflate"),
        ("ours_asyncio", lambda: replica(endpoint, event_loop="asyncio"), False, 1, "deflate"),
        ("ours_shared", lambda: replica(endpoint), True, 1, "deflate"),
        ("quart", lambda: baseline("baseline_quart.py"), False, REPEATS, "deflate"),
        ("ours", lambda: replica(endpoint), False, REPEATS, "deflate"),
        ("quart_plain", lambda: baseline("baseline_quart.py"), False, REPEATS, None),
        ("ours_plain", lambda: replica(endpoint), False, REPEATS, None),
    ]
    rows = []
    for clients in CLIENTS:
        runs: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in variants}
        for repeat in range(REPEATS):
            for name, start, shared, times, compression in variants:
                if repeat < times:
                    with start() as server:
                        runs[name].append(measure([server.port], clients, seconds, shared, server.pid, compression))
        row: dict[str, Any] = {"clients": clients}
        for name, results in runs.items():
            row[name] = sorted(results, key=lambda r: r["ops_per_s"])[len(results) // 2]
            row[name]["runs_ops_per_s"] = [r["ops_per_s"] for r in results]
        row["vs_quart"] = round(row["ours"]["ops_per_s"] / row["quart"]["ops_per_s"], 3)
        row["vs_quart_plain"] = round(row["ours_plain"]["ops_per_s"] / row["quart_plain"]["ops_per_s"], 3)
        row["pair_ratios"] = [
            round(o["ops_per_s"] / q["ops_per_s"], 3) for o, q in zip(runs["ours"], runs["quart"], strict=True)
        ]
        row["pair_ratios_plain"] = [
            round(o["ops_per_s"] / q["ops_per_s"], 3)
            for o, q in zip(runs["ours_plain"], runs["quart_plain"], strict=True)
        ]
        cpu = {
            name: sorted(r["server_cpu_us_per_op"] for r in results)[len(results) // 2]
            for name, results in runs.items()
        }
        row["cpu_vs_quart"] = round(cpu["quart"] / cpu["ours"], 3)  # above 1: cheaper per round trip than bare Quart
        row["cpu_vs_quart_plain"] = round(cpu["quart_plain"] / cpu["ours_plain"], 3)
        row["vs_websockets"] = round(row["ours"]["ops_per_s"] / row["websockets"]["ops_per_s"], 3)
        row["uvloop_gain"] = round(row["ours"]["ops_per_s"] / row["ours_asyncio"]["ops_per_s"], 3)
        rows.append(row)
    return {"rows": rows, "seconds": seconds, "repeats": REPEATS}


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
        return [m.__enter__().port for m in self.managers]

    def __exit__(self, *exc: object) -> None:
        for m in self.managers:
            m.__exit__(None, None, None)


def markdown(result: dict[str, Any]) -> str:
    rows = []
    for r in result["rows"]:
        for name, label, base in (
            ("websockets", "bare websockets (parse + ack)", "quart"),
            ("quart", "bare Quart (parse + ack)", "quart"),
            ("ours", "canvas-sync, uvloop", "quart"),
            ("ours_asyncio", "canvas-sync, asyncio loop", "quart"),
            ("ours_shared", "canvas-sync, one shared project", "quart"),
            ("quart_plain", "bare Quart, no compression", "quart_plain"),
            ("ours_plain", "canvas-sync, no compression", "quart_plain"),
        ):
            m = r[name]
            cpu_quart = r[base]["server_cpu_us_per_op"]
            rows.append(
                [
                    r["clients"],
                    label,
                    m["ops_per_s"],
                    m["p50_ms"],
                    m["p99_ms"],
                    round(m["ops_per_s"] / r[base]["ops_per_s"], 3),
                    m["server_cpu_us_per_op"],
                    round(cpu_quart / m["server_cpu_us_per_op"], 3),
                ]
            )
    return table(
        f"roundtrip: edit round trips (update -> ack), a project per client unless said; clients offer "
        f"permessage-deflate as browsers do unless said; bare Quart and canvas-sync: median of "
        f"{result['repeats']} interleaved runs; ratios against bare Quart with the same compression",
        [
            "clients",
            "server",
            "ops/s",
            "p50 ms",
            "p99 ms",
            "ops/s vs bare Quart",
            "server CPU us/op",
            "CPU efficiency vs bare Quart",
        ],
        rows,
    )


def scaling_markdown(scale: dict[str, Any]) -> str:
    return table(
        f"scaling: {scale['clients']} clients spread over replicas",
        ["replicas", "ops/s", "p50 ms", "p99 ms"],
        [[r["replicas"], r["ops_per_s"], r["p50_ms"], r["p99_ms"]] for r in scale["rows"]],
    )


if __name__ == "__main__":
    from .suite import standalone

    sys.exit(standalone("roundtrip", "scaling"))
