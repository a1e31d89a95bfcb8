"""``quiet``: a quiet board, where latency is all that matters. 16 clients on one project,
each moving its own object 20 times a second on an open loop (as a drag does, whatever the
acks do); every client times each other client's move from send to arrival. Beside it the
big board (128 clients dragging as fast as acks come) for what gathering buys under load.

Both with sockets that gather only while the loop lags (``CANVAS_GATHER_LAG``, the
default) and with sockets that always gather after a frame of several messages
(``CANVAS_GATHER_LAG=0``, the behaviour before), interleaved on fresh replicas.

    python -m loadtest.bench quiet
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import uvloop
from websockets.asyncio.client import connect

from . import hot
from .common import cpu_seconds, pct, replica, table

CLIENTS = 16
RATE = 20.0
"""Moves per second per client."""
SECONDS = 6.0
REPEATS = 3
MODES = {"adaptive": {}, "always": {"gather_lag": 0}}
"""Replica settings per mode: the default, and gathering after every frame of several messages."""


async def _client(url: str, me: int, lags: list[float], start: asyncio.Event, stop_at: list[float]) -> int:
    oid = f"q{me}"
    sent = 0
    async with connect(url, max_size=None, open_timeout=30, subprotocols=["canvas-sync.v2"]) as ws:  # type: ignore[list-item]
        await ws.recv()
        await ws.send(json.dumps({"op": "create", "object": {"id": oid, "type": "rect", "t": 0.0}}))
        await start.wait()

        async def read() -> None:
            while True:
                body = json.loads(await ws.recv())
                now = time.perf_counter()
                for m in body if isinstance(body, list) else [body]:
                    obj = m.get("object") if m.get("op") == "upsert" else None
                    if obj and obj["id"] != oid and obj.get("t"):
                        lags.append(now - obj["t"])

        reader = asyncio.create_task(read())
        period = 1.0 / RATE
        due = time.perf_counter() + (me / CLIENTS) * period  # spread the clients over one period
        while due < stop_at[0]:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await ws.send(f'{{"op":"update","id":"{oid}","props":{{"t":{time.perf_counter()!r}}}}}')
            sent += 1
            due += period
        await asyncio.sleep(0.5)  # what is still on its way
        reader.cancel()
    return sent


async def _run(url: str, pid: int) -> dict[str, Any]:
    lags: list[float] = []
    start = asyncio.Event()
    stop_at = [0.0]
    clients = [asyncio.create_task(_client(url, i, lags, start, stop_at)) for i in range(CLIENTS)]
    await asyncio.sleep(1.0)  # everyone connected and created
    cpu = cpu_seconds(pid)
    stop_at[0] = time.perf_counter() + SECONDS
    start.set()
    sent = sum(await asyncio.gather(*clients))
    cpu = cpu_seconds(pid) - cpu
    return {
        "edits": sent,
        "deliveries": len(lags),
        "p50_ms": round(pct(lags, 50) * 1000, 2),
        "p99_ms": round(pct(lags, 99) * 1000, 2),
        "server_cpu_ms_per_1000_edits": round(1e6 * cpu / max(1, sent), 1),
    }


def board(endpoint: str, **settings: object) -> dict[str, Any]:
    with replica(endpoint, **settings) as server:
        return uvloop.run(_run(f"{server.ws_url('quiet-')}{time.time_ns()}", server.pid))


def run(endpoint: str) -> dict[str, Any]:
    quiet: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    big: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for _ in range(REPEATS):
        for mode, settings in MODES.items():
            quiet[mode].append(board(endpoint, **settings))
            big[mode].append(hot.board(endpoint, 128, ["canvas-sync.v2"], **settings))
    median = lambda runs, key: sorted(runs, key=lambda r: r[key])[len(runs) // 2]  # noqa: E731
    return {
        "quiet": {mode: median(runs, "p99_ms") for mode, runs in quiet.items()},
        "quiet_runs_p99_ms": {mode: [r["p99_ms"] for r in runs] for mode, runs in quiet.items()},
        "big": {mode: median(runs, "edits_per_s") for mode, runs in big.items()},
        "big_runs_ack_p99_ms": {mode: [r["ack_p99_ms"] for r in runs] for mode, runs in big.items()},
        "repeats": REPEATS,
    }


def markdown(r: dict[str, Any]) -> str:
    labels = {
        "adaptive": "gather while the loop lags (default)",
        "always": "always gather (CANVAS_GATHER_LAG=0, before)",
    }
    quiet = table(
        f"quiet: {CLIENTS} clients on one board, each moving its object {RATE:g} times a second; "
        f"send-to-arrival at every other client; median of {r['repeats']} interleaved runs (by p99)",
        ["sockets", "edits", "deliveries", "p50 ms", "p99 ms", "p99 ms, every run", "server CPU ms / 1,000 edits"],
        [
            [
                labels[m],
                q["edits"],
                q["deliveries"],
                q["p50_ms"],
                q["p99_ms"],
                r["quiet_runs_p99_ms"][m],
                q["server_cpu_ms_per_1000_edits"],
            ]
            for m, q in r["quiet"].items()
        ],
    )
    big = table(
        "quiet (beside it, the big board): 128 v2 clients on one board, dragging as fast as acks come",
        ["sockets", "edits/s", "ack p99 ms", "ack p99 ms, every run", "newest p99 ms", "server CPU ms/edit"],
        [
            [
                labels[m],
                b["edits_per_s"],
                b["ack_p99_ms"],
                r["big_runs_ack_p99_ms"][m],
                b["newest_p99_ms"],
                b["server_cpu_ms_per_edit"],
            ]
            for m, b in r["big"].items()
        ],
    )
    return f"{quiet}\n\n{big}\n"


if __name__ == "__main__":
    from .suite import standalone

    sys.exit(standalone("quiet"))
