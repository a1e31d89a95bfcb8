"""Two benchmarks, each beside plain boto3: ``save``, one auto-save pass over 10,000 dirty
objects; ``cold-load``, loading a project that is not in memory (a cache miss).

    python -m loadtest.bench.storage       # both: python -m loadtest.bench save cold-load
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from canvas_sync.autosave import AutosaveWorker
from canvas_sync.dirty import DirtyObject
from canvas_sync.model import HybridClock, ObjectState
from canvas_sync.projects import Limits, Projects, gc_paused
from canvas_sync.protocol import Create
from canvas_sync.store import DynamoStore, make_client

from .common import TABLE, pct, table


def _store(endpoint: str) -> DynamoStore:
    return DynamoStore(make_client(endpoint, pool_size=12), TABLE, "bench", concurrency=4)


SAVE_REPEATS = 3


def _save_ours(store: DynamoStore, n: int, calls: list[float]) -> float:
    """One auto-save pass over ``n`` dirty objects: serialising the items is included."""
    clock = HybridClock("bench")
    projects = Projects(clock, Limits(max_objects=n))
    project = projects.install(projects.build(f"flush-{time.time_ns()}", []))
    for i in range(n):
        projects.edit(project, Create(None, f"o{i}", "rect", {"x": i, "y": i / 3, "fill": "#abc", "w": 100, "h": 60}))
    worker = AutosaveWorker(projects.dirty, store, clock, interval=3600)
    store.observer = lambda outcome, seconds, written: calls.append(seconds)
    started = time.perf_counter()
    report = worker.run_pass()
    assert report is not None and not report.failed
    return time.perf_counter() - started


def _save_plain(store: DynamoStore, n: int, calls: list[float]) -> float:
    """The same items, one plain BatchWriteItem after another (UnprocessedItems retried at once).

    The items are built before the clock starts: the baseline gets its serialisation free.
    """
    clock = HybridClock("bench")
    project = f"plain-{time.time_ns()}"
    items = [
        store.item(
            DirtyObject(
                project,
                ObjectState.created(
                    f"o{i}", "rect", {"x": i, "y": i / 3, "fill": "#abc", "w": 100, "h": 60}, clock.now()
                ),
            ),
            clock.now()[0],
        )
        for i in range(n)
    ]
    started = time.perf_counter()
    for i in range(0, len(items), 25):
        pending = [{"PutRequest": {"Item": it}} for it in items[i : i + 25]]
        while pending:
            t = time.perf_counter()
            response = store.client.batch_write_item(RequestItems={TABLE: pending})
            calls.append(time.perf_counter() - t)
            pending = response.get("UnprocessedItems", {}).get(TABLE, [])
    return time.perf_counter() - started


def save(endpoint: str, n: int = 10_000) -> dict[str, Any]:
    """Medians of SAVE_REPEATS runs each; the order alternates so neither side always
    runs on a warmer DynamoDB Local."""
    store = _store(endpoint)
    ours_calls: list[float] = []
    plain_calls: list[float] = []
    ours, plain = [], []
    for repeat in range(SAVE_REPEATS):
        if repeat % 2:
            plain.append(_save_plain(store, n, plain_calls))
            ours.append(_save_ours(store, n, ours_calls))
        else:
            ours.append(_save_ours(store, n, ours_calls))
            plain.append(_save_plain(store, n, plain_calls))
    store.close()
    ours_s, plain_s = statistics.median(ours), statistics.median(plain)
    return {
        "objects": n,
        "repeats": SAVE_REPEATS,
        "ours": {
            "seconds": round(ours_s, 2),
            "requests": len(ours_calls) // SAVE_REPEATS,
            "p50_ms": round(pct(ours_calls, 50) * 1000, 1),
            "p99_ms": round(pct(ours_calls, 99) * 1000, 1),
        },
        "plain_boto3": {
            "seconds": round(plain_s, 2),
            "requests": len(plain_calls) // SAVE_REPEATS,
            "p50_ms": round(pct(plain_calls, 50) * 1000, 1),
            "p99_ms": round(pct(plain_calls, 99) * 1000, 1),
        },
        "speedup": round(plain_s / ours_s, 2),
        "runs_ours_s": [round(x, 2) for x in ours],
        "runs_plain_s": [round(x, 2) for x in plain],
    }


LOAD_REPEATS = 3


def cold_load(endpoint: str, sizes: tuple[int, ...] = (1_000, 10_000, 50_000)) -> dict[str, Any]:
    store = _store(endpoint)
    clock = HybridClock("bench")
    rows = []
    for n in sizes:
        project = f"cold-{n}-{time.time_ns()}"
        stamp = clock.now()
        objects = [
            DirtyObject(project, ObjectState.created(f"o{i:06}", "rect", {"x": i, "y": i / 7, "fill": "#abc"}, stamp))
            for i in range(n)
        ]
        store.write(objects, saved_at_ms=stamp[0])
        bare, ours = [], []
        for _ in range(LOAD_REPEATS):  # interleaved, so the machine's drift falls on both
            started = time.perf_counter()
            pages = store.client.get_paginator("query").paginate(
                TableName=TABLE,
                KeyConditionExpression="project_id = :p",
                ExpressionAttributeValues={":p": {"S": project}},
                ConsistentRead=True,
            )
            raw = sum(len(page["Items"]) for page in pages)
            bare.append(time.perf_counter() - started)
            started = time.perf_counter()
            projects = Projects(HybridClock("reader"), Limits(max_objects=n))
            store.heads([project])  # what a cache miss does (CanvasService._load): the head, then the items
            with gc_paused():
                loaded = projects.install(projects.build(project, store.load_project(project)))
            ours.append(time.perf_counter() - started)
            assert raw == n + 1 and len(loaded.views) == n  # + the project's #head item
        bare_s, ours_s = statistics.median(bare), statistics.median(ours)
        rows.append(
            {
                "objects": n,
                "bare_query_s": round(bare_s, 3),
                "ours_s": round(ours_s, 3),
                "ratio": round(ours_s / bare_s, 2),
                "runs_bare_s": [round(x, 3) for x in bare],
                "runs_ours_s": [round(x, 3) for x in ours],
            }
        )
    store.close()
    return {"rows": rows}


def save_markdown(saved: dict[str, Any]) -> str:
    return table(
        f"save: saving {saved['objects']:,} dirty objects "
        f"(speedup {saved['speedup']}x; median of {saved['repeats']} runs each)",
        ["writer", "seconds", "BatchWriteItem requests", "p50 ms", "p99 ms"],
        [
            ["canvas-sync auto-save pass (4 in parallel)", *saved["ours"].values()],
            ["plain boto3, one call after another", *saved["plain_boto3"].values()],
        ],
    )


def cold_load_markdown(loads: dict[str, Any]) -> str:
    return table(
        "cold-load: a cold load (cache miss) beside a bare paginated boto3 Query "
        f"(median of {LOAD_REPEATS} interleaved runs)",
        ["objects", "bare Query s", "canvas-sync load s", "ratio"],
        [[r["objects"], r["bare_query_s"], r["ours_s"], r["ratio"]] for r in loads["rows"]],
    )


if __name__ == "__main__":
    from .suite import standalone

    sys.exit(standalone("save", "cold-load"))
