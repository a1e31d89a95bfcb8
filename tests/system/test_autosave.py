"""The auto-save worker against AWS DynamoDB Local (and the in-memory store), with injected faults."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from canvas_sync.autosave import AutosaveWorker
from canvas_sync.metrics import Metrics
from canvas_sync.model import HybridClock, ObjectState
from canvas_sync.projects import Project, Projects
from canvas_sync.protocol import Create, Delete, ProtocolError, Update
from canvas_sync.store import DynamoStore, MemoryStore, Store

from tests.doubles import BlockingClient, FlakyClient

pytestmark = pytest.mark.dynamodb_local


def make(store: Store, interval: float = 60.0, metrics: Metrics | None = None) -> tuple[Projects, AutosaveWorker]:
    clock = HybridClock("a")
    projects = Projects(clock)
    return projects, AutosaveWorker(projects.dirty, store, clock, interval=interval, max_backoff=0.2, metrics=metrics)


def hold(projects: Projects, project_id: str = "p1", store: Store | None = None) -> Project:
    return projects.install(projects.build(project_id, store.load_project(project_id) if store else []))


def saved(store: Store, project: str = "p1") -> dict[str, dict[str, Any] | None]:
    return {s.id: s.view() for s in store.load_project(project)}


def test_fifty_objects_go_out_in_batches_of_at_most_25(ddb_store: DynamoStore) -> None:
    calls: list[int] = []
    ddb_store.observer = lambda outcome, seconds, written: calls.append(written)
    projects, worker = make(ddb_store)
    project = hold(projects)
    for i in range(50):
        projects.edit(project, Create(None, f"o{i}", "rect", {"i": i}))
    report = worker.run_pass()
    assert report is not None and report.written == 50 and report.batches == 2
    assert calls == [25, 25]
    assert len(saved(ddb_store)) == 50
    assert projects.dirty.counts() == (0, 0) and projects.dirty.last_save("p1") is not None


def test_no_write_when_nothing_changed(ddb_store: DynamoStore) -> None:
    calls: list[int] = []
    ddb_store.observer = lambda outcome, seconds, written: calls.append(written)
    projects, worker = make(ddb_store, interval=0.05)
    hold(projects)
    worker.start()
    time.sleep(0.5)  # about ten intervals
    assert worker.stop(timeout=1)
    assert calls == []
    assert worker.run_pass() is None


def test_one_pass_logs_one_structured_line(ddb_store: DynamoStore, caplog: pytest.LogCaptureFixture) -> None:
    projects, worker = make(ddb_store)
    project = hold(projects)
    projects.edit(project, Create(None, "r1", "rect", {}))
    projects.edit(project, Create(None, "r2", "rect", {}))
    with caplog.at_level(logging.INFO, logger="canvas_sync.autosave"):
        worker.run_pass()
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "autosave_pass"]
    assert (record.projects, record.objects, record.batches, record.written, record.failed) == (1, 2, 1, 2, 0)
    assert record.latency_ms > 0 and record.errors == []


def test_failed_and_partial_batches_are_retried_and_nothing_is_lost(ddb_store: DynamoStore) -> None:
    real = ddb_store.client
    ddb_store.client = FlakyClient(real, ["error", "half", "half"])
    projects, worker = make(ddb_store)
    project = hold(projects)
    for i in range(20):
        projects.edit(project, Create(None, f"o{i}", "rect", {"i": i}))
    first = worker.run_pass()
    assert first is not None and len(first.failed) == 20 and worker.last_error
    assert projects.dirty.counts() == (1, 20)  # all put back
    second = worker.run_pass()  # two partial answers, then the rest
    assert second is not None and not second.failed and second.written == 20
    assert worker.last_error is None and projects.dirty.counts() == (0, 0)
    assert len(saved(ddb_store)) == 20


def test_edit_during_a_save_is_not_lost_or_cleared(ddb_store: DynamoStore) -> None:
    ddb_store.client = blocking = BlockingClient(ddb_store.client)
    projects, worker = make(ddb_store)
    project = hold(projects)
    projects.edit(project, Create(None, "r1", "rect", {"x": 0}))
    saver = threading.Thread(target=worker.run_pass)
    saver.start()
    assert blocking.inside.wait(5)
    projects.edit(project, Update(None, "r1", {"x": 1}))  # lands while x=0 is being written
    blocking.release.set()
    saver.join(5)
    assert saved(ddb_store)["r1"] == {"id": "r1", "type": "rect", "x": 0}
    assert projects.dirty.counts() == (1, 1)  # the newer edit is still dirty
    worker.run_pass()
    assert saved(ddb_store)["r1"] == {"id": "r1", "type": "rect", "x": 1}


def test_stop_flushes_everything_first(ddb_store: DynamoStore) -> None:
    projects, worker = make(ddb_store, interval=3600)
    worker.start()
    project = hold(projects)
    for i in range(40):
        projects.edit(project, Create(None, f"o{i}", "rect", {}))
    assert worker.stop(timeout=10)
    assert len(saved(ddb_store)) == 40


def test_stop_while_dynamodb_fails_gives_up_at_the_deadline_and_keeps_the_data(ddb_store: DynamoStore) -> None:
    ddb_store.client = FlakyClient(ddb_store.client, ["error"] * 1000)
    projects, worker = make(ddb_store, interval=3600)
    worker.start()
    project = hold(projects)
    projects.edit(project, Create(None, "r1", "rect", {}))
    start = time.monotonic()
    assert worker.stop(timeout=1.0) is False
    assert time.monotonic() - start < 3
    assert projects.dirty.counts() == (1, 1)  # still in memory, not dropped


def test_contended_objects_are_merged_with_the_table_copy_before_writing(ddb_store: DynamoStore) -> None:
    projects, worker = make(ddb_store)
    other_clock = HybridClock("b")
    other_state = Projects(other_clock)
    other = AutosaveWorker(
        other_state.dirty, DynamoStore(ddb_store.client, ddb_store.table, "b"), other_clock, interval=60
    )
    for p in ("calm", "busy"):
        project = hold(projects, p)
        projects.edit(project, Create(None, "o", "rect", {"x": 0}))
        worker.run_pass()
        theirs = hold(other_state, p, ddb_store)
        other_state.edit(theirs, Update(None, "o", {"y": 7}))  # another replica adds y and saves it
        other.run_pass()
        projects.edit(project, Update(None, "o", {"x": 1}))  # before this replica has pulled it
    worker.contended = lambda: frozenset({"busy"})  # what sync publishes when b's token changes
    reads: list[str] = []
    ddb_store.client.meta.events.register("before-call.dynamodb.BatchGetItem", lambda **kw: reads.append("get"))
    worker.run_pass()
    assert saved(ddb_store, "busy")["o"] == {"id": "o", "type": "rect", "x": 1, "y": 7}  # the union
    assert saved(ddb_store, "calm")["o"] == {"id": "o", "type": "rect", "x": 1}  # clobbered: anti-entropy's job
    assert reads == ["get"]  # only the contended project was read
    other.store.close()


def poisoned(object_id: str) -> ObjectState:
    """An object whose stored form is past DynamoDB's 400 KB item limit, as no client edit can make
    any more (a forged item, or a limit raised by hand): 5,000 removed properties."""
    stamp = (int(time.time() * 1000), 0, "a")
    removed = {f"p{i:05}" + "x" * 58: (None, (stamp[0] + 1, i, "a")) for i in range(5000)}
    return ObjectState(object_id, (True, stamp), ("rect", stamp), removed)


@pytest.mark.parametrize("backend", ["memory", "dynamodb_local"])
def test_one_object_the_store_refuses_never_holds_back_its_neighbours(
    backend: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    store: Store = MemoryStore("a") if backend == "memory" else request.getfixturevalue("ddb_store")
    metrics = Metrics()
    projects, worker = make(store, metrics=metrics)
    project = hold(projects)
    for i in range(24):
        projects.edit(project, Create(None, f"n{i:02}", "rect", {"i": i}))
    bad = poisoned("bad")
    project.set_object(bad)
    projects.dirty.mark("p1", bad)
    with caplog.at_level(logging.ERROR, logger="canvas_sync.autosave"):
        report = worker.run_pass()
    assert report is not None and report.written == 24 and not report.failed
    assert sorted(saved(store)) == [f"n{i:02}" for i in range(24)]  # all 24 neighbours landed
    assert [(o.state.id, "Item size" in why) for o, why in report.refused] == [("bad", True)]
    assert projects.dirty.counts() == (0, 0) and worker.last_error is None  # no backoff for everyone
    (entry,) = worker.status()["quarantined"]
    assert (entry["project"], entry["object"]) == ("p1", "bad")
    assert metrics.quarantined._value.get() == 0  # bound by the service; the counter below is the worker's
    assert metrics.refused._value.get() == 1
    assert [r.event for r in caplog.records if getattr(r, "event", None)] == ["quarantined"]
    assert "bad" in project.objects and projects.dirty.holds("p1")  # kept in memory, never evicted
    assert worker.run_pass() is None  # not retried on every pass
    with pytest.raises(ProtocolError) as info:
        projects.edit(project, Update(None, "bad", {"x": 1}))  # a client cannot make it bigger still
    assert info.value.code == "too_large"
    projects.edit(project, Delete(None, "bad"))  # but can delete it: a small tombstone, saved
    again = worker.run_pass()
    assert again is not None and again.written == 1 and not again.refused and worker.status()["quarantined"] == []
