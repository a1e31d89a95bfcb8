"""``robustness``: what a hostile client or a struggling DynamoDB can do to a replica, measured.

- poisoning: one client sets and removes ever new property names on one object (each
  removal keeps the name and its stamp); how many updates are acked, what the stored item
  then weighs, whether the 24 objects saved beside it land.
- churn: one client creates and deletes 12,000 objects with new ids; tombstones held,
  items in the table, and what a fresh replica's load of the project then costs.
- throttling: 100 held projects, all due for a reconcile, while DynamoDB answers every
  request with ProvisionedThroughputExceededException for 30 s; read requests a second
  (as sent over HTTP, botocore's retries included) before and during.
- stall: the event loop's longest stall while a 10,000-object project is reconciled.

    python -m loadtest.bench.robustness
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time
import urllib.request
from typing import Any

import uvloop
from botocore.awsrequest import AWSResponse
from canvas_sync.dirty import DirtyObject
from canvas_sync.metrics import Metrics
from canvas_sync.model import HybridClock, ObjectState
from canvas_sync.projects import Limits, Projects
from canvas_sync.pull import Puller
from canvas_sync.store import DynamoStore, make_client
from websockets.asyncio.client import connect

from .common import TABLE, replica, rss_bytes, table, wait_clean

THROTTLED = (
    b'{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"throttled"}'
)


async def _call(ws: Any, message: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(message))
    return dict(json.loads(await ws.recv()))


def _status(port: int, project: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/projects/{project}/status", timeout=5) as response:
        return dict(json.loads(response.read()))


def poisoning(endpoint: str) -> dict[str, Any]:
    async def attack(url: str) -> int:
        async with connect(url, max_size=None) as ws:
            await ws.recv()
            await _call(ws, {"op": "create", "object": {"id": "bad", "type": "rect"}})
            for i in range(24):
                await _call(ws, {"op": "create", "object": {"id": f"n{i:02}", "type": "rect", "x": i}})
            for i in range(5000):  # 5,000 set-and-remove pairs: about 850 KB stored if nothing stops it
                name = f"p{i:05}" + "x" * 58
                if (await _call(ws, {"op": "update", "id": "bad", "props": {name: 1}}))["op"] != "ack":
                    return i
                await _call(ws, {"op": "update", "id": "bad", "props": {name: None}})
            return 5000

    with replica(endpoint, autosave_interval=0.5) as server:
        accepted = uvloop.run(attack(server.ws_url("poison")))
        wait_clean(server.port, timeout=20)
        store = DynamoStore(make_client(endpoint), TABLE)
        saved = {s.id: s for s in store.load_project("poison")}
        item = store.client.get_item(
            TableName=TABLE, Key={"project_id": {"S": "poison"}, "object_id": {"S": "bad"}}, ConsistentRead=True
        )["Item"]
        store.close()
    return {
        "updates_accepted": accepted,
        "stored_item_bytes": len(item["doc"]["S"].encode()),
        "neighbours_saved": sum(1 for oid in saved if oid.startswith("n")),
    }


def churn(endpoint: str, n: int = 12_000) -> dict[str, Any]:
    async def run(url: str) -> int:
        refused = 0
        async with connect(url) as ws:
            await ws.recv()
            for i in range(n):
                if (await _call(ws, {"op": "create", "object": {"id": f"o{i}", "type": "rect"}}))["op"] != "ack":
                    refused += 1
                    continue
                await _call(ws, {"op": "delete", "id": f"o{i}"})
        return refused

    with replica(endpoint, autosave_interval=1) as server:
        time.sleep(0.5)
        rss_before = rss_bytes(server.pid)
        started = time.monotonic()
        refused = uvloop.run(run(server.ws_url("churn")))
        seconds = time.monotonic() - started
        wait_clean(server.port, timeout=60)
        held = _status(server.port, "churn")["tombstones"]
        rss_after = rss_bytes(server.pid)
    store = DynamoStore(make_client(endpoint), TABLE)
    items = len(store.load_project("churn"))
    store.close()
    with replica(endpoint) as fresh:
        started = time.monotonic()
        with urllib.request.urlopen(f"{fresh.url}/projects/churn/objects", timeout=60) as response:
            response.read()
        load_s = time.monotonic() - started
    return {
        "creates_and_deletes": n,
        "seconds": round(seconds, 1),
        "creates_refused": refused,
        "tombstones_held": held,
        "items_in_table": items,
        "rss_growth_mib": round((rss_after - rss_before) / 2**20, 1),
        "fresh_load_s": round(load_s, 3),
    }


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Any:
        yield self.body


def throttling(endpoint: str, projects: int = 100, healthy_s: float = 15, throttled_s: float = 30) -> dict[str, Any]:
    """In-process sync at the defaults (interval 1 s, overlap 10 s, reconcile 60 s)."""
    client = make_client(endpoint)
    store = DynamoStore(client, TABLE, "reader")
    other = DynamoStore(make_client(endpoint), TABLE, "writer")
    clock = HybridClock("reader")
    held = Projects(clock)
    writer_clock = HybridClock("writer")
    for i in range(projects):
        stamp = writer_clock.now()
        states = [ObjectState.created(f"o{j}", "rect", {"x": j}, stamp) for j in range(20)]
        other.write([DirtyObject(f"thr{i}", state) for state in states], stamp[0])
        held.install(held.build(f"thr{i}", store.load_project(f"thr{i}"), clock.wall_ms()))
    requests: collections.Counter[str] = collections.Counter()
    throttle = False

    def before_send(request: Any, **_: Any) -> AWSResponse | None:
        requests[request.headers.get("X-Amz-Target", b"").decode().split(".")[-1]] += 1
        if throttle:
            return AWSResponse(request.url, 400, {"x-amzn-RequestId": "bench"}, _Raw(THROTTLED))
        return None

    client.meta.events.register("before-send.dynamodb", before_send)
    sync = Puller(held, store, clock, Metrics(), interval=1.0, overlap=10.0, reconcile_interval=60.0)

    async def run() -> tuple[dict[str, int], dict[str, int]]:
        nonlocal throttle
        task = asyncio.create_task(sync.run())
        await asyncio.sleep(60 - throttled_s / 2 - healthy_s)  # the episode straddles the reconciles falling due
        requests.clear()
        await asyncio.sleep(healthy_s)
        healthy = dict(requests)
        throttle = True
        requests.clear()
        await asyncio.sleep(throttled_s)
        throttled = dict(requests)
        throttle = False
        task.cancel()
        return healthy, throttled

    healthy, throttled = uvloop.run(run())
    store.close()
    other.close()
    return {
        "held_projects": projects,
        "healthy_requests_per_s": round(sum(healthy.values()) / healthy_s, 2),
        "throttled_requests_per_s": round(sum(throttled.values()) / throttled_s, 2),
        "healthy": healthy,
        "throttled": throttled,
    }


def stall(endpoint: str, objects: int = 10_000, runs: int = 3) -> dict[str, Any]:
    """The longest loop stall while reconciling a held project whose table copy is unchanged,
    and one where every object changed."""
    store = DynamoStore(make_client(endpoint), TABLE, "a")
    clock = HybridClock("a")
    held = Projects(clock, Limits(max_objects=objects * 2))

    def saved(x: int) -> None:
        props = {"x": x, "y": 0.5, "fill": "#abcdef", "w": 10, "h": 20}
        stamp = clock.now()
        states = [ObjectState.created(f"o{j:05}", "rect", props, stamp) for j in range(objects)]
        store.write([DirtyObject("big", state) for state in states], stamp[0])

    saved(0)
    project = held.install(held.build("big", store.load_project("big")))
    sync = Puller(held, store, clock, Metrics(), interval=1.0, overlap=10.0, reconcile_interval=60.0)
    sync._track_projects(time.monotonic())

    async def measure() -> float:
        worst, done = 0.0, False

        async def ticker() -> None:
            nonlocal worst
            while not done:
                t = time.perf_counter()
                await asyncio.sleep(0.001)
                worst = max(worst, time.perf_counter() - t - 0.001)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        worst = 0.0
        await sync._pull("big", None)
        done = True
        await task
        return worst * 1000

    unchanged = [uvloop.run(measure()) for _ in range(runs)]
    saved(1)  # another replica changed every object
    changed = uvloop.run(measure())
    assert len(project.views) == objects
    store.close()
    return {"objects": objects, "unchanged_ms": [round(s, 1) for s in unchanged], "all_changed_ms": round(changed, 1)}


def run(endpoint: str) -> dict[str, Any]:
    return {
        "poisoning": poisoning(endpoint),
        "churn": churn(endpoint),
        "stall": stall(endpoint),
        "throttling": throttling(endpoint),
    }


def markdown(r: dict[str, Any]) -> str:
    p, c, s, t = r["poisoning"], r["churn"], r["stall"], r["throttling"]
    return table(
        "robustness: hostile clients, a throttling DynamoDB, big reconciles",
        ["case", "figure"],
        [
            ["poisoning: set-and-remove updates acked before `too_large`", p["updates_accepted"]],
            ["poisoning: stored item then (bytes)", f"{p['stored_item_bytes']:,}"],
            ["poisoning: neighbours saved", f"{p['neighbours_saved']}/24"],
            [f"churn: {c['creates_and_deletes']:,} creates + deletes, refused creates", f"{c['creates_refused']:,}"],
            ["churn: tombstones held / items in the table", f"{c['tombstones_held']:,} / {c['items_in_table']:,}"],
            ["churn: RSS growth / fresh replica's load", f"{c['rss_growth_mib']} MiB / {c['fresh_load_s']} s"],
            [f"reconcile of {s['objects']:,} unchanged objects: longest loop stall (ms)", s["unchanged_ms"]],
            [f"reconcile of {s['objects']:,} changed objects: longest loop stall (ms)", s["all_changed_ms"]],
            [f"reads/s, {t['held_projects']} held projects, healthy", t["healthy_requests_per_s"]],
            ["reads/s during 30 s of throttling", t["throttled_requests_per_s"]],
        ],
    )


if __name__ == "__main__":
    from .suite import standalone

    sys.exit(standalone("robustness"))
