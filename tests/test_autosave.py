"""The auto-save worker against AWS DynamoDB Local, with injected faults."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from canvas_sync.autosave import AutosaveWorker
from canvas_sync.model import HybridClock
from canvas_sync.protocol import Create, Update
from canvas_sync.state import CanvasState
from canvas_sync.store import DynamoStore
from test_store import FlakyClient

pytestmark = pytest.mark.dynamodb_local


def make(store: DynamoStore, interval: float = 60.0) -> tuple[CanvasState, AutosaveWorker]:
    clock = HybridClock("a")
    state = CanvasState(clock, 10_000, 16_384)
    return state, AutosaveWorker(state, store, clock, interval=interval, max_backoff=0.2)


def saved(store: DynamoStore, project: str = "p1") -> dict[str, dict[str, Any] | None]:
    return {s.id: s.view() for s in store.load_project(project)}


def test_fifty_objects_go_out_in_batches_of_at_most_25(ddb_store: DynamoStore) -> None:
    calls: list[int] = []
    ddb_store.observer = lambda outcome, seconds, written: calls.append(written)
    state, worker = make(ddb_store)
    project = state.install("p1", [])
    for i in range(50):
        state.apply(project, Create(None, f"o{i}", "rect", {"i": i}))
    report = worker.run_pass()
    assert report is not None and report.written == 50 and report.batches == 2
    assert calls == [25, 25]
    assert len(saved(ddb_store)) == 50
    assert state.dirty_counts() == (0, 0) and project.last_save_at is not None


def test_no_write_when_nothing_changed(ddb_store: DynamoStore) -> None:
    calls: list[int] = []
    ddb_store.observer = lambda outcome, seconds, written: calls.append(written)
    state, worker = make(ddb_store, interval=0.05)
    state.install("p1", [])
    worker.start()
    time.sleep(0.5)  # about ten intervals
    assert worker.stop(timeout=1)
    assert calls == []
    assert worker.run_pass() is None


def test_one_pass_logs_one_structured_line(ddb_store: DynamoStore, caplog: pytest.LogCaptureFixture) -> None:
    state, worker = make(ddb_store)
    project = state.install("p1", [])
    state.apply(project, Create(None, "r1", "rect", {}))
    state.apply(project, Create(None, "r2", "rect", {}))
    with caplog.at_level(logging.INFO, logger="canvas_sync.autosave"):
        worker.run_pass()
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "autosave_pass"]
    assert (record.projects, record.objects, record.batches, record.written, record.failed) == (1, 2, 1, 2, 0)
    assert record.latency_ms > 0 and record.errors == []


def test_failed_and_partial_batches_are_retried_and_nothing_is_lost(ddb_store: DynamoStore) -> None:
    real = ddb_store.client
    ddb_store.client = FlakyClient(real, ["error", "half", "half"])
    state, worker = make(ddb_store)
    project = state.install("p1", [])
    for i in range(20):
        state.apply(project, Create(None, f"o{i}", "rect", {"i": i}))
    first = worker.run_pass()
    assert first is not None and len(first.failed) == 20 and worker.last_error
    assert state.dirty_counts() == (1, 20)  # all put back
    second = worker.run_pass()  # two partial answers, then the rest
    assert second is not None and not second.failed and second.written == 20
    assert worker.last_error is None and state.dirty_counts() == (0, 0)
    assert len(saved(ddb_store)) == 20


class BlockingClient:
    """Holds every BatchWriteItem call until released."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.inside, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def batch_write_item(self, **kwargs: Any) -> Any:
        self.inside.set()
        assert self.release.wait(5)
        return self.client.batch_write_item(**kwargs)


def test_edit_during_a_save_is_not_lost_or_cleared(ddb_store: DynamoStore) -> None:
    ddb_store.client = blocking = BlockingClient(ddb_store.client)
    state, worker = make(ddb_store)
    project = state.install("p1", [])
    state.apply(project, Create(None, "r1", "rect", {"x": 0}))
    saver = threading.Thread(target=worker.run_pass)
    saver.start()
    assert blocking.inside.wait(5)
    state.apply(project, Update(None, "r1", {"x": 1}))  # lands while x=0 is being written
    blocking.release.set()
    saver.join(5)
    assert saved(ddb_store)["r1"] == {"id": "r1", "type": "rect", "x": 0}
    assert state.dirty_counts() == (1, 1)  # the newer edit is still dirty
    worker.run_pass()
    assert saved(ddb_store)["r1"] == {"id": "r1", "type": "rect", "x": 1}


def test_stop_flushes_everything_first(ddb_store: DynamoStore) -> None:
    state, worker = make(ddb_store, interval=3600)
    worker.start()
    project = state.install("p1", [])
    for i in range(40):
        state.apply(project, Create(None, f"o{i}", "rect", {}))
    assert worker.stop(timeout=10)
    assert len(saved(ddb_store)) == 40


def test_stop_while_dynamodb_fails_gives_up_at_the_deadline_and_keeps_the_data(ddb_store: DynamoStore) -> None:
    ddb_store.client = FlakyClient(ddb_store.client, ["error"] * 1000)
    state, worker = make(ddb_store, interval=3600)
    worker.start()
    project = state.install("p1", [])
    state.apply(project, Create(None, "r1", "rect", {}))
    start = time.monotonic()
    assert worker.stop(timeout=1.0) is False
    assert time.monotonic() - start < 3
    assert state.dirty_counts() == (1, 1)  # still in memory, not dropped


def test_contended_objects_are_merged_with_the_table_copy_before_writing(ddb_store: DynamoStore) -> None:
    state, worker = make(ddb_store)
    other_clock = HybridClock("b")
    other_state = CanvasState(other_clock, 10_000, 16_384)
    other = AutosaveWorker(other_state, DynamoStore(ddb_store.client, ddb_store.table, "b"), other_clock, interval=60)
    for p in ("calm", "busy"):
        project = state.install(p, [])
        state.apply(project, Create(None, "o", "rect", {"x": 0}))
        worker.run_pass()
        theirs = other_state.install(p, ddb_store.load_project(p))
        other_state.apply(theirs, Update(None, "o", {"y": 7}))  # another replica adds y and saves it
        other.run_pass()
        state.apply(project, Update(None, "o", {"x": 1}))  # before this replica has pulled it
    state.get("busy").feed_until = time.monotonic() + 10  # what sync sets when b's token changes
    reads: list[str] = []
    ddb_store.client.meta.events.register("before-call.dynamodb.BatchGetItem", lambda **kw: reads.append("get"))
    worker.run_pass()
    assert saved(ddb_store, "busy")["o"] == {"id": "o", "type": "rect", "x": 1, "y": 7}  # the union
    assert saved(ddb_store, "calm")["o"] == {"id": "o", "type": "rect", "x": 1}  # clobbered: anti-entropy's job
    assert reads == ["get"]  # only the contended project was read
    other.store.close()
