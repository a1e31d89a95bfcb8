"""What /metrics tells an operator: every labelled series there from the start, label
values one can read, and the auto-save, batch and sync figures meaning what their help says
(the alerts and the dashboard lean on each; tests/system/test_prometheus.py runs them)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from canvas_sync.autosave import AutosaveWorker
from canvas_sync.dirty import DirtyObject, DirtySet
from canvas_sync.metrics import EDIT_ERROR_CODES, RELAY_KINDS, Metrics
from canvas_sync.model import HybridClock, ObjectState
from canvas_sync.projects import Projects
from canvas_sync.pull import Puller
from canvas_sync.relay.core import Kind
from canvas_sync.store import MemoryStore
from canvas_sync.store.memory import InjectedFault
from prometheus_client.parser import text_string_to_metric_families

SERVICE = Path(__file__).resolve().parents[2] / "service" / "canvas_sync"


def bound(oldest_unsaved: float | None = None) -> Metrics:
    metrics = Metrics()
    metrics.bind(
        connections=lambda: 0,
        projects=lambda: 0,
        dirty=lambda: 0,
        quarantined=lambda: 0,
        oldest_unsaved=lambda: oldest_unsaved,
        worker_alive=lambda: 1,
        ready=lambda: 1,
        relay_connected=lambda: 0,
    )
    return metrics


def samples(metrics: Metrics) -> dict[str, list[dict[str, str]]]:
    """Metric family name -> the label sets of its samples, as a scrape sees them."""
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        out[family.name] = [s.labels for s in family.samples]
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    got = metrics.registry.get_sample_value(name, labels)
    return got


# --- series from the start --------------------------------------------------------------


def test_every_labelled_counter_has_its_series_before_its_first_event() -> None:
    """rate() and increase() of a series that appears at its first event miss that event,
    and a panel or rule over it shows No data until then."""
    scraped = samples(bound())
    labelled = {
        name: label_sets
        for name, label_sets in scraped.items()
        if any(set(labels) - {"le"} for labels in label_sets) or name.endswith("_total")
    }
    assert {s["code"] for s in scraped["canvas_edit_errors"]} == set(EDIT_ERROR_CODES)
    assert {s["kind"] for s in scraped["canvas_relay_received"]} == set(RELAY_KINDS)
    for name in (
        "canvas_edits",
        "canvas_autosave_batches",
        "canvas_project_loads",
        "canvas_sync_pulls",
        "canvas_refusals",
        "canvas_relay_dropped",
        "canvas_relay_gaps",
        "canvas_relay_catch_ups",
    ):
        assert labelled[name], f"{name} has no series before its first event"


def test_the_edit_error_codes_cover_every_code_the_service_raises() -> None:
    raised = {
        code
        for path in SERVICE.rglob("*.py")
        for code in re.findall(r'ProtocolError\(\s*"([a-z_]+)"', path.read_text())
    }
    assert raised and raised <= set(EDIT_ERROR_CODES)


def test_relay_kinds_are_readable_names_not_wire_codes() -> None:
    assert {kind.label for kind in Kind if kind is not Kind.HEARTBEAT} | {"bad"} == set(RELAY_KINDS)
    assert Kind.OBJECT.label == "object" and Kind.PRESENCE_ALL.label == "presence_all"
    for label in RELAY_KINDS:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", label) and len(label) > 2, label


def test_the_oldest_unsaved_change_is_an_age_and_zero_when_all_is_saved() -> None:
    assert value(bound(None), "canvas_oldest_unsaved_change_age_seconds") == 0.0
    age = value(bound(time.time() - 42), "canvas_oldest_unsaved_change_age_seconds")
    assert age is not None and 42 <= age < 43
    assert value(bound(time.time() + 5), "canvas_oldest_unsaved_change_age_seconds") == 0.0  # never negative


# --- auto-save --------------------------------------------------------------------------


def test_batch_latency_times_successful_calls_only() -> None:
    """A failed call's timeouts are the outage (counted as errors), not DynamoDB latency:
    timed, an outage would also fire CanvasSyncBatchLatencyHigh."""
    metrics = bound()
    metrics.observe_batch("error", 30.0, 0)
    assert value(metrics, "canvas_autosave_batches_total", outcome="error") == 1
    assert value(metrics, "canvas_autosave_batch_duration_seconds_count") == 0
    metrics.observe_batch("success", 0.02, 25)
    assert value(metrics, "canvas_autosave_batch_duration_seconds_count") == 1
    assert value(metrics, "canvas_autosave_objects_written_total") == 25


@pytest.fixture
def worker() -> tuple[AutosaveWorker, MemoryStore, Metrics]:
    metrics, store = bound(), MemoryStore("a")
    store.observer = metrics.observe_batch
    return AutosaveWorker(DirtySet(), store, HybridClock("a"), interval=60.0, metrics=metrics), store, metrics


def test_last_success_is_set_at_start(worker: tuple[AutosaveWorker, MemoryStore, Metrics]) -> None:
    """A fresh pod has nothing unsaved: 0 (1970) would read as "not saved for 56 years"."""
    autosave, _, metrics = worker
    assert value(metrics, "canvas_autosave_last_success_timestamp_seconds") == 0
    before = time.time()
    autosave.start()
    try:
        last = value(metrics, "canvas_autosave_last_success_timestamp_seconds")
        assert last is not None and before <= last <= time.time()
    finally:
        assert autosave.stop(1.0)


def test_a_pass_with_nothing_to_save_is_a_success_and_a_failed_one_is_not(
    worker: tuple[AutosaveWorker, MemoryStore, Metrics],
) -> None:
    autosave, store, metrics = worker
    before = time.time()
    assert autosave.run_pass() is None
    last = value(metrics, "canvas_autosave_last_success_timestamp_seconds")
    assert last is not None and last >= before

    def refuse(operation: str) -> None:
        if operation == "write":
            raise InjectedFault("down")

    store.fault = refuse
    autosave.dirty.mark("p", ObjectState.created("o1", "rect", {"x": 1}, autosave.clock.now()))
    time.sleep(0.01)
    report = autosave.run_pass()
    assert report is not None and report.failed
    assert value(metrics, "canvas_autosave_last_success_timestamp_seconds") == last  # unsaved: no success


# --- sync lag ---------------------------------------------------------------------------


def test_sync_lag_counts_a_save_the_relay_brought_first_as_zero_and_only_once() -> None:
    """With a healthy relay the table never changes memory, so observing only merges that
    changed something left the sync-lag panel with No data for good."""
    a_store = MemoryStore("a")
    b_store = MemoryStore("b", shared=a_store)
    clock, metrics = HybridClock("a"), bound()
    projects = Projects(clock)
    project = projects.install(projects.build("p", a_store.load_project("p"), clock.wall_ms()))
    project.loaded_heads = a_store.heads(["p"])["p"]
    puller = Puller(projects, a_store, clock, metrics, interval=0.05, overlap=0.3, reconcile_interval=3600.0)
    asyncio.run(puller.pass_once())  # the cursor starts here

    other = HybridClock("b")
    relayed = ObjectState.created("r1", "rect", {"x": 1}, other.now())
    projects.merge(project, [relayed])  # the relay delivered it...
    assert not b_store.write([DirtyObject("p", relayed)], saved_at_ms=other.wall_ms()).failed  # ...then b saved it
    by_table = ObjectState.created("t1", "rect", {"x": 2}, other.now())
    assert not b_store.write([DirtyObject("p", by_table)], saved_at_ms=other.wall_ms() - 2000).failed

    asyncio.run(puller.pass_once())
    assert value(metrics, "canvas_sync_lag_seconds_count") == 2
    assert value(metrics, "canvas_sync_lag_seconds_bucket", le="0.1") == 1  # the relayed one: 0
    assert value(metrics, "canvas_sync_lag_seconds_sum") >= 2.0  # type: ignore[operator]  # the other: its real lag
    asyncio.run(puller.pass_once())  # the feed's overlap reads both again: nothing new to observe
    assert value(metrics, "canvas_sync_lag_seconds_count") == 2
