"""``memory``: resident memory of a replica per 10,000 stored objects and per 1,000 idle connections.

python -m loadtest.bench.memory
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import uvloop
from websockets.asyncio.client import connect

from .common import replica, rss_bytes, table

OBJECT = {
    "type": "rect",
    "x": 1234,
    "y": 567,
    "w": 180,
    "h": 120,
    "fill": "#1e88e5",
    "stroke": "#333333",
    "label": "a shape",
}


async def _fill(port: int, n: int) -> int:
    async with connect(f"ws://127.0.0.1:{port}/ws/mem-{time.time_ns()}") as ws:
        await ws.recv()
        size = 0
        for i in range(n):
            obj = {"id": f"object-{i:06}", **OBJECT}
            size += len(json.dumps(obj, separators=(",", ":")))
            await ws.send(json.dumps({"op": "create", "object": obj}))
            await ws.recv()
        return size


async def _idle(port: int, n: int, measure: Any) -> int:
    sockets = []
    for i in range(n):
        ws = await connect(f"ws://127.0.0.1:{port}/ws/idle-{i % 10}", open_timeout=30)
        await ws.recv()
        sockets.append(ws)
    await asyncio.sleep(1.0)
    value = measure()
    for ws in sockets:
        await ws.close()
    return value


def _connections(endpoint: str, **settings: object) -> dict[str, float]:
    with replica(endpoint, autosave_interval=3600, **settings) as server:
        time.sleep(0.5)
        before = rss_bytes(server.pid)
        after = uvloop.run(_idle(server.port, 1000, lambda: rss_bytes(server.pid)))
    per_connection = (after - before) / 1000
    return {
        "rss_idle_mib": round(before / 2**20, 1),
        "rss_delta_mib": round((after - before) / 2**20, 2),
        "rss_bytes_per_connection": round(per_connection),
        "connections_per_gib": round(2**30 / per_connection),
    }


def run(endpoint: str) -> dict[str, Any]:
    # Saving is off while measuring: a save pass leaves boto3's and the allocator's
    # high-water marks in RSS, which would be charged to the objects.
    with replica(endpoint, max_objects_per_project=20_000, autosave_interval=3600) as server:
        time.sleep(0.5)
        before = rss_bytes(server.pid)
        json_bytes = uvloop.run(_fill(server.port, 10_000))
        time.sleep(0.5)
        after_objects = rss_bytes(server.pid)
    per_object = (after_objects - before) / 10_000
    # The client offers permessage-deflate, as browsers do; the server answers with no
    # context takeover, so no zlib state outlives a message and the two rows match.
    return {
        "objects": {
            "rss_delta_mib": round((after_objects - before) / 2**20, 2),
            "json_bytes_per_object": round(json_bytes / 10_000),
            "rss_bytes_per_object": round(per_object),
            "beyond_json": round(per_object - json_bytes / 10_000),
        },
        "connections": _connections(endpoint),
        "connections_no_deflate": _connections(endpoint, websocket_compression="false"),
    }


def markdown(r: dict[str, Any]) -> str:
    o, c, n = r["objects"], r["connections"], r["connections_no_deflate"]
    return table(
        "memory: resident memory of one replica",
        ["what", "RSS growth", "per item", "beyond the object's JSON / connections per GiB"],
        [
            [
                "10,000 objects (not yet saved)",
                f"{o['rss_delta_mib']} MiB",
                f"{o['rss_bytes_per_object']} B",
                f"{o['beyond_json']} B (JSON {o['json_bytes_per_object']} B)",
            ],
            *(
                [
                    label,
                    f"{m['rss_delta_mib']} MiB",
                    f"{m['rss_bytes_per_connection']} B",
                    f"{m['connections_per_gib']:,}",
                ]
                for label, m in (
                    ("1,000 idle WebSocket connections, permessage-deflate (no context takeover)", c),
                    ("1,000 idle WebSocket connections, CANVAS_WEBSOCKET_COMPRESSION=false", n),
                )
            ),
        ],
    )


if __name__ == "__main__":
    from .suite import standalone

    sys.exit(standalone("memory"))
