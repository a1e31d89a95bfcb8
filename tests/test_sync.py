"""The sync worker against DynamoDB Local: heads decide which change feeds are queried."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from canvas_sync.dynamodb_local import DynamoDBLocal
from canvas_sync.metrics import Metrics
from canvas_sync.model import HybridClock, ObjectState
from canvas_sync.state import CanvasState, DirtyObject
from canvas_sync.store import DynamoStore, make_client
from canvas_sync.sync import SyncWorker

pytestmark = pytest.mark.dynamodb_local

OVERLAP = 0.3


class Node:
    """One replica's state, store and sync worker, in this process."""

    def __init__(self, endpoint: str, table: str, name: str) -> None:
        self.clock = HybridClock(name)
        self.state = CanvasState(self.clock, 1000, 16384)
        self.store = DynamoStore(make_client(endpoint), table, replica_id=name, concurrency=2)
        self.metrics = Metrics()
        self.sync = SyncWorker(self.state, self.store, self.clock, self.metrics, interval=0.05,
                               overlap=OVERLAP, reconcile_interval=3600)
        self.queried: list[str] = []
        real = self.store.changes_since

        def counted(project: str, after_ms: int) -> Any:
            self.queried.append(project)
            return real(project, after_ms)

        self.store.changes_since = counted  # type: ignore[method-assign]

    def save(self, project: str, object_id: str, **props: Any) -> None:
        state = ObjectState.created(object_id, "rect", props, self.clock.now())
        report = self.store.write([DirtyObject(project, state)], saved_at_ms=self.clock.now()[0])
        assert not report.failed and report.heads == 1

    def pass_once(self) -> list[str]:
        """Run one sync pass; the projects whose feed it queried."""
        self.queried.clear()
        asyncio.run(self.sync.pass_once())
        return sorted(self.queried)


@pytest.fixture
def nodes(dynamodb_local: DynamoDBLocal, table: str) -> Iterator[tuple[Node, Node]]:
    a, b = Node(dynamodb_local.endpoint, table, "a"), Node(dynamodb_local.endpoint, table, "b")
    yield a, b
    a.store.close()
    b.store.close()


def test_only_projects_another_replica_saved_are_queried(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    b.save("shared", "s0", x=0)
    for p in ("mine", "shared", "idle"):
        a.state.install(p, [])
    a.save("mine", "m1", x=1)
    assert a.pass_once() == ["shared"]  # just loaded and saved by another: queried for the overlap window
    time.sleep(OVERLAP + 0.05)
    assert a.pass_once() == []  # own saves and no saves cost no query
    a.save("mine", "m2", x=2)
    assert a.pass_once() == []

    b.save("shared", "s1", x=3)
    assert a.pass_once() == ["shared"]
    assert a.state.get("shared").views["s1"] == '{"id":"s1","type":"rect","x":3}'
    assert a.pass_once() == ["shared"]  # re-read for the overlap window (index lag, skew)
    time.sleep(OVERLAP + 0.05)
    assert a.pass_once() == []
    heads = a.metrics.sync_pulls.labels("heads", "success")._value.get()
    assert heads == 6  # one BatchGetItem a pass for all three projects


def test_unreadable_heads_fall_back_to_every_feed(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    a.state.install("p1", [])
    a.state.install("p2", [])
    a.pass_once()
    time.sleep(OVERLAP + 0.05)
    assert a.pass_once() == []

    def broken(project_ids: list[str]) -> Any:
        raise ConnectionError("injected")

    a.store.heads = broken  # type: ignore[method-assign]
    b.save("p2", "o", x=1)
    assert a.pass_once() == ["p1", "p2"]
    assert "o" in a.state.get("p2").views
    assert a.sync.status()["last_error"] == "ConnectionError: injected"
    assert a.metrics.sync_pulls.labels("heads", "error")._value.get() == 1
