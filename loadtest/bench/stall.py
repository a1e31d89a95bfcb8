"""``stall``: does a big auto-save pass stall the event loop? 128 clients edit one board
while a second project of 10,000 objects is changed all the time, so every pass writes
about 10,000 items; a probe in a process of its own sends a WebSocket ping every few
milliseconds to a third, idle project and times each pong. A pong late by more than a
ping's cost is time the replica's loop could not run: its lag. Samples sent while a pass
was writing (from the replica's ``autosave_pass`` log lines) are reported apart from the
others, beside the propagation p99 of the board (send to arrival at other clients) and
the items saved per second.

Each mode runs on a fresh replica, interleaved: the save path as it is, and with its
pacing off (``CANVAS_SAVE_GIL_SHARE=1``: the code before, but for botocore's client-side
parameter validation, which stays off). The replica and the probe get a core of their
own where there are two or more (``REPLICA_CPUS``): on a shared 2-core machine DynamoDB
Local's own work during a pass otherwise shows up as loop lag (p99 near 60 ms in either
mode), which no change to the replica can remove and which DynamoDB in AWS does not cause.

    python -m loadtest.bench stall
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import uvloop
from websockets.asyncio.client import connect

from .common import ROOT, cpu_seconds, pct, pinned, replica, table

CLIENTS = 128
RATE = 4.0
"""Moves per second per board client (open loop, as a drag)."""
OBSERVERS = 16
"""Board clients that parse what arrives (the others only drain their sockets)."""
OBJECTS = 10_000
INTERVAL = 4.0
"""The replica's auto-save interval: the big project's objects are all changed within one."""
SECONDS = 14.0
PING_EVERY = 0.004
REPEATS = 3
REPLICA_CPUS = {0} if (os.cpu_count() or 1) >= 2 else None
"""The replica (and the probe, which sleeps between pings) on a core of their own, the load
generator and DynamoDB Local on the others: what DynamoDB Local spends on a pass is taken
neither from the replica's loop (DynamoDB runs elsewhere in production) nor from the
probe, so what is left is the save threads' share of the GIL."""
MODES: dict[str, dict[str, object]] = {"paced": {}, "unpaced": {"save_gil_share": 1}}
"""Replica settings per mode: the default, and the save path without its pacing (before)."""


def _post(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()


def _fill(base: str, project: str) -> None:
    """The big project's OBJECTS objects, 1,000 ops a request."""
    for start in range(0, OBJECTS, 1000):
        ops = [
            {"op": "create", "object": {"id": f"b{i}", "type": "rect", "x": i, "y": 0, "fill": "#abc", "w": 100}}
            for i in range(start, start + 1000)
        ]
        _post(f"{base}/projects/{project}/ops", {"ops": ops})


# --- the probe, in a process of its own (its loop is not the load generator's) ---------------


def probe_main(url: str, seconds: float, out: str) -> None:
    """The probe's process: its samples as JSON into ``out``."""
    Path(out).write_text(json.dumps(uvloop.run(_pings(url, seconds))))


async def _pings(url: str, seconds: float) -> list[tuple[float, float]]:
    """(wall-clock time sent, round trip) of a ping every PING_EVERY seconds."""
    samples: list[tuple[float, float]] = []
    async with connect(url, open_timeout=60) as ws:
        await ws.recv()  # the snapshot
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            sent_wall, sent = time.time(), time.perf_counter()
            await ws.send('{"op":"ping"}')
            while '"pong"' not in await asyncio.wait_for(ws.recv(), 30):
                pass
            samples.append((sent_wall, time.perf_counter() - sent))
            await asyncio.sleep(max(0.0, sent + PING_EVERY - time.perf_counter()))
    return samples


# --- the board: CLIENTS moving their objects --------------------------------------------------


async def _mover(url: str, me: int, lags: list[float], start: asyncio.Event, stop_at: list[float]) -> int:
    oid = f"m{me}"
    observer = me % (CLIENTS // OBSERVERS) == 0
    sent = 0
    async with connect(url, max_size=None, open_timeout=60, compression=None, subprotocols=["canvas-sync.v2"]) as ws:  # type: ignore[list-item]
        await ws.recv()
        await ws.send(json.dumps({"op": "create", "object": {"id": oid, "type": "rect", "t": 0.0}}))
        await start.wait()

        async def read() -> None:
            while True:
                text = await ws.recv()
                if not observer:
                    continue
                now = time.perf_counter()
                body = json.loads(text)
                for m in body if isinstance(body, list) else [body]:
                    obj = m.get("object") if m.get("op") == "upsert" else None
                    if obj and obj["id"] != oid and obj.get("t"):
                        lags.append(now - obj["t"])

        reader = asyncio.create_task(read())
        period = 1.0 / RATE
        due = time.perf_counter() + (me / CLIENTS) * period
        while due < stop_at[0]:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await ws.send(f'{{"op":"update","id":"{oid}","props":{{"t":{time.perf_counter()!r}}}}}')
            sent += 1
            due += period
        await asyncio.sleep(0.5)
        reader.cancel()
    return sent


async def _churn(url: str, stop_at: list[float], start: asyncio.Event) -> int:
    """Changes every object of the big project once per INTERVAL, in small bursts."""
    burst = 25
    per_s = OBJECTS / (INTERVAL * 0.9)
    sent = 0
    async with connect(url, max_size=None, open_timeout=60, compression=None, subprotocols=["canvas-sync.v2"]) as ws:  # type: ignore[list-item]
        await ws.recv()

        async def drain() -> None:
            while True:
                await ws.recv()

        reader = asyncio.create_task(drain())
        await start.wait()
        began = time.perf_counter()
        while time.perf_counter() < stop_at[0]:
            for _ in range(burst):
                await ws.send(f'{{"op":"update","id":"b{sent % OBJECTS}","props":{{"x":{sent}}}}}')
                sent += 1
            await asyncio.sleep(max(0.0, began + sent / per_s - time.perf_counter()))
        reader.cancel()
    return sent


async def _board(base_ws: str, tag: str, pid: int) -> dict[str, Any]:
    lags: list[float] = []
    start = asyncio.Event()
    stop_at = [float("inf")]
    movers = [
        asyncio.create_task(_mover(f"{base_ws}/ws/stall-board-{tag}", i, lags, start, stop_at)) for i in range(CLIENTS)
    ]
    churn = asyncio.create_task(_churn(f"{base_ws}/ws/stall-big-{tag}", stop_at, start))
    await asyncio.sleep(2.0)  # everyone connected and created
    cpu = cpu_seconds(pid)
    stop_at[0] = time.perf_counter() + SECONDS
    start.set()
    edits = sum(await asyncio.gather(*movers))
    churned = await churn
    cpu = cpu_seconds(pid) - cpu
    return {
        "edits": edits,
        "churned": churned,
        "propagation_p50_ms": round(pct(lags, 50) * 1000, 1),
        "propagation_p99_ms": round(pct(lags, 99) * 1000, 1),
        "server_cores": round(cpu / SECONDS, 2),
    }


# --- one run ---------------------------------------------------------------------------------


def _passes(log: Path) -> list[tuple[float, float, int]]:
    """(start, end, objects) of every pass that wrote something, from the replica's log."""
    out = []
    for line in log.read_text().splitlines():
        if '"autosave_pass"' not in line:
            continue
        record = json.loads(line)
        end = datetime.strptime(record["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        out.append((end - record["latency_ms"] / 1000, end, int(record["written"])))
    return out


def _lag_figures(samples: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in samples]
    return {
        "samples": len(ms),
        "p50_ms": round(pct(ms, 50), 2),
        "p99_ms": round(pct(ms, 99), 2),
        "max_ms": round(max(ms, default=float("nan")), 1),
        "over_10ms": sum(1 for m in ms if m > 10),
    }


def once(endpoint: str, **settings: object) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="stall-") as folder:
        log = Path(folder) / "replica.log"
        settings = {"log_level": "info", "autosave_interval": INTERVAL, **settings}
        with replica(endpoint, log_path=log, cpus=REPLICA_CPUS, stop_timeout=60, **settings) as server:
            tag = str(time.time_ns())
            _fill(server.url, f"stall-big-{tag}")
            base_ws = server.url.replace("http", "ws", 1)
            pings = Path(folder) / "pings.json"
            url = f"{base_ws}/ws/stall-probe-{tag}"
            code = f"from loadtest.bench.stall import probe_main; probe_main({url!r}, {SECONDS + 2.5}, {str(pings)!r})"
            cpus = REPLICA_CPUS  # beside the replica: it sleeps between pings, so it is woken at once
            pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
            probe = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, preexec_fn=pin)
            board = uvloop.run(_board(base_ws, tag, server.pid))
            probe.wait(60)
            samples: list[tuple[float, float]] = json.loads(pings.read_text())
        passes = [p for p in _passes(log) if p[2] >= OBJECTS // 2]
    during = [rtt for at, rtt in samples if any(s <= at <= e for s, e, _ in passes)]
    between = [rtt for at, rtt in samples if not any(s - 0.2 <= at <= e + 0.2 for s, e, _ in passes)]
    slowest = sorted(((rtt, at) for at, rtt in samples), reverse=True)[:6]
    where = [
        # the slowest pings: ms, and seconds after the start of the pass they fell in (None: between passes)
        (round(rtt * 1000, 1), next((round(at - s, 2) for s, e, _ in passes if s <= at <= e), None))
        for rtt, at in slowest
    ]
    saved = sum(n for _, _, n in passes)
    busy = sum(e - s for s, e, _ in passes)
    return {
        "passes": len(passes),
        "pass_s": [round(e - s, 2) for s, e, _ in passes],
        "items_per_s": round(saved / busy) if busy else 0,
        "lag_during_passes": _lag_figures(during),
        "lag_between_passes": _lag_figures(between),
        "slowest_pings": where,
        **board,
    }


@contextmanager
def _elsewhere(database_pid: int | None) -> Iterator[None]:
    """This process (and its children) and DynamoDB Local's threads off the replica's core."""
    others = set(range(os.cpu_count() or 1)) - REPLICA_CPUS if REPLICA_CPUS is not None else None
    with pinned(0, others), pinned(database_pid, others):
        yield


def run(endpoint: str, database_pid: int | None = None) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with _elsewhere(database_pid):
        for repeat in range(REPEATS):  # the order alternates: the first run meets a colder DynamoDB Local
            for mode, settings in list(MODES.items())[:: -1 if repeat % 2 else 1]:
                runs[mode].append(once(endpoint, **settings))
    by_p99 = lambda r: r["lag_during_passes"]["p99_ms"]  # noqa: E731
    median = {mode: sorted(rs, key=by_p99)[len(rs) // 2] for mode, rs in runs.items()}
    return {
        "modes": median,
        "runs_lag_p99_ms": {mode: [by_p99(r) for r in rs] for mode, rs in runs.items()},
        "clients": CLIENTS,
        "rate": RATE,
        "objects": OBJECTS,
        "interval_s": INTERVAL,
        "seconds": SECONDS,
        "repeats": REPEATS,
        "cores": os.cpu_count(),
        "replica_cpus": sorted(REPLICA_CPUS) if REPLICA_CPUS else None,
    }


def markdown(r: dict[str, Any]) -> str:
    labels = {"paced": "paced save slices (default)", "unpaced": "unpaced (CANVAS_SAVE_GIL_SHARE=1, before)"}
    return table(
        f"stall: {r['clients']} clients moving {r['rate']:g} times a second on one board, a project of "
        f"{r['objects']:,} objects all changed every {r['interval_s']:g} s auto-save interval; a probe pings an "
        f"idle project every {PING_EVERY * 1000:g} ms (loop lag = its round trip); median of {r['repeats']} "
        "interleaved runs (by the p99 during passes)",
        [
            "save path",
            "lag p99 ms during passes",
            "max ms",
            "pings over 10 ms",
            "lag p99 ms between passes",
            "p99 ms, every run",
            "propagation p99 ms",
            "items saved/s",
            "pass seconds",
        ],
        [
            [
                labels.get(mode, mode),
                m["lag_during_passes"]["p99_ms"],
                m["lag_during_passes"]["max_ms"],
                f"{m['lag_during_passes']['over_10ms']} of {m['lag_during_passes']['samples']}",
                m["lag_between_passes"]["p99_ms"],
                r["runs_lag_p99_ms"][mode],
                m["propagation_p99_ms"],
                m["items_per_s"],
                m["pass_s"],
            ]
            for mode, m in r["modes"].items()
        ],
    )


if __name__ == "__main__":
    from .suite import standalone

    sys.exit(standalone("stall"))
