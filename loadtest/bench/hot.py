"""``hot``: a hot project, many clients on one board, each dragging its own object as fast as
the server acks, so the pod is saturated. Two figures per run: the ack p99, and how long
after an ack every other client holds that object's state (or a newer one).

Old clients (one message a frame) and ``canvas-sync.v2`` clients (a frame may hold
several messages) are measured alike.

    python -m loadtest.bench.hot
"""

from __future__ import annotations

import asyncio
import bisect
import re
import sys
import time
from typing import Any

import uvloop
from websockets.asyncio.client import connect

from .common import cpu_seconds, pct, replica, table

CLIENTS = (32, 128)
SECONDS = 5.0
OBSERVERS = 16
"""Clients that record every state they see (parsing every frame in all 128 would make the
load generator, on the same cores, the bottleneck); the others only look for their acks."""
SETTLE = 1.0
"""After the run, how long late deliveries may still land before what is missing counts as never seen."""
_STATE = re.compile(r'"id":"(c\d+)","type":"rect","v":(\d+)')


class _Board:
    def __init__(self, clients: int) -> None:
        self.seen: list[dict[str, tuple[list[int], list[float]]]] = [{} for _ in range(clients)]
        """Per client, per object: the versions it saw (rising) and when."""
        self.acks: list[tuple[int, int, float]] = []  # (writer, version, acked at)
        self.ack_latencies: list[float] = []
        self.ready = 0
        self.opened = asyncio.Event()
        self.deadline = 0.0


async def _client(url: str, me: int, board: _Board, clients: int, offered: list[str] | None) -> None:
    seen = board.seen[me]
    observer = me % (clients // OBSERVERS) == 0
    oid = f"c{me}"
    async with connect(url, max_size=None, open_timeout=60, subprotocols=offered) as ws:  # type: ignore[arg-type]
        await asyncio.wait_for(ws.recv(), 60)
        await ws.send(f'{{"op":"create","req":"c","object":{{"id":"{oid}","type":"rect","v":0}}}}')
        while '"req":"c"' not in await asyncio.wait_for(ws.recv(), 60):
            pass
        board.ready += 1
        if board.ready == clients:
            board.deadline = time.perf_counter() + SECONDS
            board.opened.set()
        await asyncio.wait_for(board.opened.wait(), 120)
        version = 0
        sent = 0.0
        acked = True
        while True:
            now = time.perf_counter()
            if acked:
                if now >= board.deadline:
                    break
                version += 1
                sent = now
                acked = False
                await ws.send(f'{{"op":"update","req":"{version}","id":"{oid}","props":{{"v":{version}}}}}')
            try:
                text = await asyncio.wait_for(ws.recv(), SECONDS + 30)
            except TimeoutError:
                break
            at = time.perf_counter()
            if observer:
                _record(seen, text, at)
            if '"op":"ack"' in text and f'"req":"{version}"' in text:
                acked = True
                board.ack_latencies.append(at - sent)
                board.acks.append((me, version, at))
        # keep reading what is still on its way, so late deliveries count
        settle_until = time.perf_counter() + SETTLE
        while observer and (left := settle_until - time.perf_counter()) > 0:
            try:
                text = await asyncio.wait_for(ws.recv(), left)
            except TimeoutError:
                break
            _record(seen, text, time.perf_counter())


def _record(seen: dict[str, tuple[list[int], list[float]]], text: str, at: float) -> None:
    for other, v in _STATE.findall(text):
        versions, times = seen.setdefault(other, ([], []))
        versions.append(int(v))
        times.append(at)


def _lags(board: _Board) -> tuple[list[float], int]:
    """For every ack and every other observer: from the ack until that client held the
    acked state or a newer one. Returns the lags and how many were never seen."""
    lags: list[float] = []
    missing = 0
    for writer, version, acked_at in board.acks:
        oid = f"c{writer}"
        for reader, seen in enumerate(board.seen):
            if reader == writer or reader % (len(board.seen) // OBSERVERS):
                continue
            versions, times = seen.get(oid, ([], []))
            i = bisect.bisect_left(versions, version)
            if i == len(versions):
                missing += 1
            else:
                lags.append(max(0.0, times[i] - acked_at))
    return lags, missing


async def _run(url: str, clients: int, offered: list[str] | None, pid: int) -> dict[str, Any]:
    board = _Board(clients)
    cpu_before = 0.0

    async def start_cpu() -> None:
        nonlocal cpu_before
        await board.opened.wait()
        cpu_before = cpu_seconds(pid)

    watcher = asyncio.create_task(start_cpu())
    load_cpu = time.process_time()
    await asyncio.gather(*(_client(url, i, board, clients, offered) for i in range(clients)))
    await watcher
    cpu = cpu_seconds(pid) - cpu_before
    load_cpu = time.process_time() - load_cpu
    lags, missing = _lags(board)
    edits = len(board.ack_latencies)
    return {
        "edits_per_s": round(edits / SECONDS, 1),
        "ack_p50_ms": round(pct(board.ack_latencies, 50) * 1000, 1),
        "ack_p99_ms": round(pct(board.ack_latencies, 99) * 1000, 1),
        "newest_p50_ms": round(pct(lags, 50) * 1000, 1),
        "newest_p99_ms": round(pct(lags, 99) * 1000, 1),
        "newest_within_100ms": round(sum(1 for lag in lags if lag <= 0.1) / max(1, len(lags) + missing), 4),
        "never_seen": missing,
        "server_cpu_ms_per_edit": round(1000 * cpu / max(1, edits), 2),
        "server_cores": round(cpu / SECONDS, 2),
        "load_generator_cores": round(load_cpu / (SECONDS + SETTLE), 2),
    }


def board(endpoint: str, clients: int, offered: list[str] | None, **settings: object) -> dict[str, Any]:
    """One run on a fresh replica (``settings`` for it): ``clients`` on one board, offering ``offered``."""
    with replica(endpoint, **settings) as server:
        url = f"{server.ws_url('hot-')}{time.time_ns()}"
        return uvloop.run(_run(url, clients, offered, server.pid))


def run(endpoint: str) -> dict[str, Any]:
    rows = []
    for clients in CLIENTS:
        for v2 in (False, True):
            rows.append({"clients": clients, "v2": v2, **board(endpoint, clients, ["canvas-sync.v2"] if v2 else None)})
    return {"rows": rows, "seconds": SECONDS}


def markdown(r: dict[str, Any]) -> str:
    return table(
        f"hot: a hot project, every client drags its own object on one board, as fast as acks come "
        f"({r['seconds']:.0f} s; 'newest': from an ack until each other client holds that state or a newer one)",
        [
            "clients",
            "frames",
            "edits/s",
            "ack p50 ms",
            "ack p99 ms",
            "newest p50 ms",
            "newest p99 ms",
            "newest within 100 ms",
            "server CPU ms/edit",
            "server cores",
            "load generator cores",
        ],
        [
            [
                x["clients"],
                "v2 (batched)" if x["v2"] else "v1 (one message each)",
                x["edits_per_s"],
                x["ack_p50_ms"],
                x["ack_p99_ms"],
                x["newest_p50_ms"],
                x["newest_p99_ms"],
                f"{100 * x['newest_within_100ms']:.1f}%",
                x["server_cpu_ms_per_edit"],
                x["server_cores"],
                x["load_generator_cores"],
            ]
            for x in r["rows"]
        ],
    )


if __name__ == "__main__":
    from .suite import standalone

    sys.exit(standalone("hot"))
