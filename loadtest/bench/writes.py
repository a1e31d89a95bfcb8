"""``writes``: write reduction, edits against DynamoDB items written and BatchWriteItem calls.

python -m loadtest.bench.writes
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any

import uvloop
from websockets.asyncio.client import connect

from .common import metrics, replica, table, wait_clean


async def _call(ws: Any, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))
    await asyncio.wait_for(ws.recv(), 30)


async def drag(port: int, project: str) -> None:
    """60 updates a second on one object for 10 seconds."""
    async with connect(f"ws://127.0.0.1:{port}/ws/{project}") as ws:
        await ws.recv()
        await _call(ws, {"op": "create", "object": {"id": "dragged", "type": "rect", "x": 0, "y": 0}})
        started = time.perf_counter()
        for i in range(600):
            await _call(ws, {"op": "update", "id": "dragged", "props": {"x": i, "y": i // 2}})
            await asyncio.sleep(max(0.0, started + (i + 1) / 60 - time.perf_counter()))


async def burst(port: int, project: str) -> None:
    async with connect(f"ws://127.0.0.1:{port}/ws/{project}") as ws:
        await ws.recv()
        for i in range(1000):
            await _call(ws, {"op": "create", "object": {"id": f"b{i}", "type": "rect", "x": i, "y": 0}})


async def mixed(port: int, project: str) -> None:
    """Four people for 10 s on 40 shapes: creates, drags, recolours, deletes."""

    async def person(n: int) -> None:
        rng = random.Random(n)
        async with connect(f"ws://127.0.0.1:{port}/ws/{project}") as ws:
            await ws.recv()
            mine: list[str] = []
            deadline = time.perf_counter() + 10
            k = 0
            while time.perf_counter() < deadline:
                k += 1
                roll = rng.random()
                if roll < 0.1 or not mine:
                    oid = f"p{n}-{k}"
                    mine.append(oid)
                    await _call(ws, {"op": "create", "object": {"id": oid, "type": "rect", "x": 0, "y": 0}})
                elif roll < 0.8:
                    oid = rng.choice(mine)
                    for step in range(10):
                        await _call(ws, {"op": "update", "id": oid, "props": {"x": step, "y": k}})
                        await asyncio.sleep(1 / 60)
                elif roll < 0.95:
                    await _call(ws, {"op": "update", "id": rng.choice(mine), "props": {"fill": f"#{k % 999:03}"}})
                else:
                    await _call(ws, {"op": "delete", "id": mine.pop(rng.randrange(len(mine)))})
                await asyncio.sleep(0.05)

    await asyncio.gather(*(person(n) for n in range(4)))


def _measure(port: int, scenario: Any) -> dict[str, Any]:
    wait_clean(port)
    before = metrics(port)
    uvloop.run(scenario(port, f"wr-{time.time_ns()}"))
    time.sleep(0.3)
    wait_clean(port)
    after = metrics(port)
    delta = lambda name: after[name] - before[name]  # noqa: E731
    edits = sum(delta(f'canvas_edits_total{{op="{op}"}}') for op in ("create", "update", "delete"))
    written = delta("canvas_autosave_objects_written_total")
    heads = delta("canvas_autosave_heads_written_total")  # one UpdateItem per saved project per pass
    calls = delta('canvas_autosave_batches_total{outcome="success"}')
    writes = written + heads
    return {
        "edits": int(edits),
        "items_written": int(written),
        "head_updates": int(heads),
        "batch_calls": int(calls),
        "items_per_edit": round(writes / edits, 4),
        "reduction_pct": round(100 * (1 - writes / edits), 2),
    }


def run(endpoint: str) -> dict[str, Any]:
    with replica(endpoint) as server:  # the default 5 s auto-save interval
        port = server.port
        return {"drag": _measure(port, drag), "burst": _measure(port, burst), "mixed": _measure(port, mixed)}


def markdown(r: dict[str, Any]) -> str:
    labels = {
        "drag": "drag: 60 updates/s on one object for 10 s",
        "burst": "burst of 1,000 creates",
        "mixed": "mixed session: 4 people, 10 s",
    }
    rows = [
        [
            labels[k],
            v["edits"],
            v["items_written"],
            v["head_updates"],
            v["batch_calls"],
            v["items_per_edit"],
            f"{v['reduction_pct']}%",
        ]
        for k, v in r.items()
    ]
    return table(
        "writes: write reduction (auto-save every 5 s; writes = object items + #head updates)",
        [
            "scenario",
            "edits",
            "object items written",
            "#head updates",
            "BatchWriteItem calls",
            "writes per edit",
            "reduction",
        ],
        rows,
    )


if __name__ == "__main__":
    from .suite import standalone

    sys.exit(standalone("writes"))
