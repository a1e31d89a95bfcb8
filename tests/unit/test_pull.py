"""The table puller: its decisions as plain functions, then the puller on the in-memory store
(the same against DynamoDB Local: tests/system/test_pull_dynamodb.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from canvas_sync import pull as pull_module
from canvas_sync.dirty import DirtyObject
from canvas_sync.metrics import Metrics
from canvas_sync.model import HybridClock, ObjectState
from canvas_sync.projects import Project, Projects
from canvas_sync.pull import Backoff, Cursor, Puller, feed_since, heads_due, note_heads, plan, reconcile_budget
from canvas_sync.store import MemoryStore, Store
from canvas_sync.store.memory import InjectedFault
from hypothesis import given
from hypothesis import strategies as st

OVERLAP = 0.3

# --- decisions --------------------------------------------------------------------------


def test_a_changed_token_opens_a_feed_window_from_the_save_it_announces() -> None:
    cursor = Cursor(watermark_ms=50_000, last_reconcile=0.0, other_heads={"b": "10000.1"})
    assert not note_heads(cursor, {"b": "10000.1"}, now=1.0, overlap_s=10)
    assert cursor.feed_until == 0.0  # nothing new
    assert note_heads(cursor, {"b": "20000.2", "c": "30000.1"}, now=2.0, overlap_s=10)
    assert cursor.feed_until == 12.0 and cursor.feed_from_ms == 20_000
    assert feed_since(cursor, overlap_ms=10_000) == 19_999  # the slow save is older than the overlap
    note_heads(cursor, {"b": "20000.2", "c": "40000.2"}, now=5.0, overlap_s=10)
    assert cursor.feed_from_ms == 20_000 and cursor.feed_until == 15.0  # still within the window: the lowest stays
    note_heads(cursor, {"b": "45000.3", "c": "40000.2"}, now=20.0, overlap_s=10)
    assert cursor.feed_from_ms == 45_000  # a new window starts afresh
    assert feed_since(cursor, overlap_ms=10_000) == 40_000  # the overlap reaches further back this time


def test_tokens_unknown_at_load_go_by_the_overlap_alone() -> None:
    cursor = Cursor(watermark_ms=50_000, last_reconcile=0.0, other_heads=None)
    note_heads(cursor, {"b": "1000.1"}, now=1.0, overlap_s=10)  # an old token: no query from the dawn of time
    assert cursor.feed_until == 11.0 and cursor.feed_from_ms is None
    assert feed_since(cursor, overlap_ms=10_000) == 40_000


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff()
    delays = []
    for _ in range(8):
        backoff.failed(now=100.0, base=1.0, cap=30.0, rand=1.0)
        delays.append(round(backoff.retry_at - 100.0, 2))
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    backoff.failed(now=100.0, base=1.0, cap=30.0, rand=0.0)
    assert backoff.retry_at == 115.0  # jitter: half to all of the delay
    assert not backoff.ready(114.0) and backoff.ready(115.0)
    backoff.succeeded()
    assert backoff.failures == 0 and backoff.ready(0.0)


def test_heads_are_read_slowly_while_the_relay_is_healthy_and_in_batches() -> None:
    cursors = {f"p{i}": Cursor(0, 0.0, heads_at=float(i)) for i in range(10)}  # read at t=0..9
    assert heads_due(cursors, now=10.0, slow_interval=None) == list(cursors)  # no relay: every pass
    assert heads_due(cursors, now=10.0, slow_interval=15.0) == []
    assert sorted(heads_due(cursors, now=15.0, slow_interval=15.0)) == [
        f"p{i}" for i in range(8)
    ]  # p0 due; 7.5 s+ join
    cursors["p9"].fast_until = 20.0  # catching up: every pass
    assert heads_due(cursors, now=12.0, slow_interval=15.0) == ["p9"] + [f"p{i}" for i in range(5)]


def test_reconciles_are_spread_at_twice_the_steady_rate() -> None:
    assert reconcile_budget(1000, interval=1.0, reconcile_interval=60.0) == 34
    assert reconcile_budget(3, interval=1.0, reconcile_interval=60.0) == 1


cursors_st = st.dictionaries(
    st.text("abcdef", min_size=1, max_size=3),
    st.builds(
        Cursor,
        watermark_ms=st.integers(0, 10**6),
        last_reconcile=st.floats(0, 200),
        other_heads=st.just({}),
        feed_until=st.floats(0, 200),
        feed_from_ms=st.none() | st.integers(0, 10**6),
        backoff=st.builds(Backoff, failures=st.integers(0, 5), retry_at=st.floats(0, 200)),
    ),
    max_size=12,
)


@given(cursors_st, st.floats(0, 200), st.integers(1, 5))
def test_plan_reads_each_project_at_most_once_and_never_while_it_backs_off(
    cursors: dict[str, Cursor], now: float, budget: int
) -> None:
    todo = plan(cursors, now, overlap_ms=10_000, reconcile_interval=60.0, max_reconciles=budget)
    feed = [pid for pid, _ in todo.feed]
    assert len(todo.reconcile) <= budget and not set(todo.reconcile) & set(feed)
    assert len(set(feed)) == len(feed)
    for pid in [*todo.reconcile, *feed]:
        assert cursors[pid].backoff.ready(now)
    for pid in todo.reconcile:
        assert now - cursors[pid].last_reconcile >= 60.0
    waiting = [pid for pid, c in cursors.items() if c.backoff.ready(now) and now - c.last_reconcile >= 60.0]
    skipped = set(waiting) - set(todo.reconcile)
    assert all(cursors[a].last_reconcile <= cursors[b].last_reconcile for a in todo.reconcile for b in skipped)
    for pid, since in todo.feed:
        assert now < cursors[pid].feed_until and since <= cursors[pid].watermark_ms - 10_000
        if cursors[pid].feed_from_ms is not None:
            assert since < cursors[pid].feed_from_ms


# --- the worker, on the in-memory store ------------------------------------------------


class Node:
    """One replica's projects, store and puller, in this process."""

    def __init__(self, store: Store, name: str, reconcile: float = 3600.0) -> None:
        self.clock = HybridClock(name)
        self.projects = Projects(self.clock)
        self.store = store
        self.metrics = Metrics()
        self.puller = Puller(
            self.projects,
            store,
            self.clock,
            self.metrics,
            interval=0.05,
            overlap=OVERLAP,
            reconcile_interval=reconcile,
            max_backoff=2.0,
            rand=lambda: 0.5,
        )
        self.queried: list[str] = []
        real = store.changes_since

        def counted(project: str, after_ms: int) -> Any:
            self.queried.append(project)
            return real(project, after_ms)

        store.changes_since = counted  # type: ignore[method-assign]

    def hold(self, project: str) -> Project:
        project_obj = self.projects.build(project, self.store.load_project(project), self.clock.wall_ms())
        project_obj.loaded_heads = self.store.heads([project])[project]
        return self.projects.install(project_obj)

    def save(self, project: str, object_id: str, saved_at_ms: int | None = None, **props: Any) -> None:
        state = ObjectState.created(object_id, "rect", props, self.clock.now())
        report = self.store.write([DirtyObject(project, state)], saved_at_ms=saved_at_ms or self.clock.now()[0])
        assert not report.failed and report.heads == 1

    def pass_once(self) -> list[str]:
        """Run one pull pass; the projects whose feed it queried."""
        self.queried.clear()
        asyncio.run(self.puller.pass_once())
        return sorted(self.queried)


@pytest.fixture
def memory_nodes() -> tuple[Node, Node]:
    a_store = MemoryStore("a")
    return Node(a_store, "a"), Node(MemoryStore("b", shared=a_store), "b")


def only_other_replicas_saves_are_queried(a: Node, b: Node) -> None:
    b.save("shared", "s0", x=0)
    for p in ("mine", "shared", "idle"):
        a.hold(p)
    a.save("mine", "m1", x=1)
    assert a.pass_once() == []  # b's save was there before the load: in the snapshot already
    a.save("mine", "m2", x=2)
    assert a.pass_once() == []  # own saves and no saves cost no query

    b.save("shared", "s1", x=3)
    assert a.pass_once() == ["shared"]
    assert a.projects.get("shared").views["s1"] == '{"id":"s1","type":"rect","x":3}'  # type: ignore[union-attr]
    assert a.pass_once() == ["shared"]  # re-read for the overlap window (index lag, skew)
    time.sleep(OVERLAP + 0.05)
    assert a.pass_once() == []
    assert a.metrics.sync_pulls.labels("heads", "success")._value.get() == 5  # one read a pass for all three


def test_only_projects_another_replica_saved_are_queried(memory_nodes: tuple[Node, Node]) -> None:
    only_other_replicas_saves_are_queried(*memory_nodes)


def test_a_save_that_lands_late_is_found_through_its_token(memory_nodes: tuple[Node, Node]) -> None:
    """A batch slowed past the overlap: its items carry an old saved_at, its token says so."""
    a, b = memory_nodes
    a.hold("p")
    late_stamp = b.clock.now()[0]  # b's pass fixes saved_at here...
    time.sleep(OVERLAP + 0.1)
    c = Node(MemoryStore("c", shared=a.store), "c")  # type: ignore[arg-type]
    c.save("p", "c1", x=1)  # ...meanwhile c saves, and a's watermark moves past b's saved_at + overlap
    assert a.pass_once() == ["p"]
    assert a.puller.cursors["p"].watermark_ms - late_stamp > OVERLAP * 1000
    b.save("p", "b1", saved_at_ms=late_stamp, x=2)  # ...and b's batch lands now
    a.pass_once()
    assert "b1" in a.projects.get("p").views  # type: ignore[union-attr]


def test_throttling_backs_off_instead_of_reading_more(monkeypatch: pytest.MonkeyPatch) -> None:
    """30 simulated seconds of throttling with 100 held projects, all due for a reconcile."""
    store = MemoryStore("a")
    other = MemoryStore("b", shared=store)
    node = Node(store, "a", reconcile=60.0)
    node.puller.interval, node.puller.max_backoff = 1.0, 30.0
    for i in range(100):
        other.write([DirtyObject(f"p{i}", ObjectState.created("o", "rect", {}, (1, 0, "b")))], saved_at_ms=1)
        node.hold(f"p{i}")
    now = [1000.0]
    monkeypatch.setattr(pull_module.time, "monotonic", lambda: now[0])
    node.pass_once()  # cursors start; reconciles fall due 60 s later
    now[0] += 61.0
    throttled = True

    def fault(operation: str) -> None:
        if throttled:
            raise InjectedFault("ProvisionedThroughputExceededException")

    store.fault = fault
    store.calls.clear()
    for _ in range(30):
        node.pass_once()
        now[0] += 1.0
    reads = len(store.calls)
    assert node.puller.last_error is not None and "ProvisionedThroughput" in node.puller.last_error
    # Healthy, this is one heads read a pass (30). Per-project backoff alone still spends the
    # reconcile budget every pass (126 measured); whole passes back off, so far fewer.
    assert reads <= 40, store.calls
    assert node.puller.status()["projects_backing_off"] > 0
    throttled = False
    for _ in range(120):  # recovery: every project reconciled within the interval and the cap
        node.pass_once()
        now[0] += 1.0
    assert node.puller.last_error is None and node.puller.status()["projects_backing_off"] == 0
    assert all(now[0] - c.last_reconcile < 62 for c in node.puller.cursors.values())


def test_a_failed_heads_read_backs_off_and_queries_no_feed_blindly(memory_nodes: tuple[Node, Node]) -> None:
    a, b = memory_nodes
    a.hold("p1")
    a.hold("p2")
    a.pass_once()

    def broken(operation: str) -> None:
        if operation == "heads":
            raise InjectedFault("injected")

    a.store.fault = broken  # type: ignore[attr-defined]
    b.save("p2", "o", x=1)
    assert a.pass_once() == []
    assert a.puller.status()["last_error"] == "InjectedFault: injected"
    assert a.metrics.sync_pulls.labels("heads", "error")._value.get() == 1
    assert a.pass_once() == [] and a.metrics.sync_pulls.labels("heads", "error")._value.get() == 1  # backing off
    a.store.fault = lambda operation: None  # type: ignore[attr-defined]
    time.sleep(0.1)
    assert a.pass_once() == ["p2"] and a.puller.last_error is None
    assert "o" in a.projects.get("p2").views  # type: ignore[union-attr]


def test_a_refresh_brings_in_what_another_replica_saved_before_it(memory_nodes: tuple[Node, Node]) -> None:
    """A socket opening on a held copy asks first: the snapshot then has b's last save, not
    a copy one pass behind (a client that moved from b after ``saved`` would miss it)."""
    a, b = memory_nodes
    a.hold("p")
    a.pass_once()
    b.save("p", "s1", x=1)
    a.queried.clear()
    assert asyncio.run(a.puller.refresh("p")) is True
    assert a.queried == ["p"] and "s1" in a.projects.get("p").views  # type: ignore[union-attr]
    a.queried.clear()
    assert asyncio.run(a.puller.refresh("p")) is True
    assert a.queried == ["p"]  # within the feed window: a pass may not have merged a save it noted
    time.sleep(OVERLAP + 0.05)
    a.queried.clear()
    assert asyncio.run(a.puller.refresh("p")) is True
    assert a.queried == []  # no token changed, no window open: one head read, no feed query
    assert a.metrics.sync_pulls.labels("refresh", "success")._value.get() == 3


def test_a_refresh_pulls_a_save_a_pass_noted_and_has_not_merged_yet(memory_nodes: tuple[Node, Node]) -> None:
    a, b = memory_nodes
    a.hold("p")
    a.pass_once()
    b.save("p", "s1", x=1)
    asyncio.run(a.puller._read_heads(time.monotonic()))  # a pass read the head; its feed query is yet to come
    asyncio.run(a.puller.refresh("p"))
    assert "s1" in a.projects.get("p").views  # type: ignore[union-attr]


def test_a_refresh_of_a_copy_loaded_since_the_last_pass_compares_with_its_load() -> None:
    a_store = MemoryStore("a")
    a, b = Node(a_store, "a"), Node(MemoryStore("b", shared=a_store), "b")
    a.hold("p")  # no pass yet: no cursor
    b.save("p", "s1", x=1)
    asyncio.run(a.puller.refresh("p"))
    assert "s1" in a.projects.get("p").views  # type: ignore[union-attr]


def test_refreshes_asked_together_share_one_head_read(memory_nodes: tuple[Node, Node]) -> None:
    a, b = memory_nodes
    a.hold("p")
    a.pass_once()
    b.save("p", "s1", x=1)
    a.store.calls.clear()  # type: ignore[attr-defined]

    async def many() -> list[bool]:
        return await asyncio.gather(*(a.puller.refresh("p") for _ in range(20)))

    assert asyncio.run(many()) == [True] * 20
    assert a.store.calls == ["heads", "feed"]  # type: ignore[attr-defined]


def test_a_refresh_that_fails_serves_the_copy_as_it_is(memory_nodes: tuple[Node, Node]) -> None:
    a, b = memory_nodes
    a.hold("p")
    a.pass_once()
    b.save("p", "s1", x=1)
    a.store.fault = lambda operation: (_ for _ in ()).throw(InjectedFault("down"))  # type: ignore[attr-defined]
    assert asyncio.run(a.puller.refresh("p")) is False
    assert "s1" not in a.projects.get("p").views  # type: ignore[union-attr]

    a.store.fault = lambda operation: time.sleep(0.3)  # type: ignore[attr-defined]
    assert asyncio.run(a.puller.refresh("p", timeout=0.05)) is False  # not waited for past its timeout


def test_last_error_clears_once_no_project_is_held(memory_nodes: tuple[Node, Node]) -> None:
    a, _ = memory_nodes
    a.hold("p1")
    a.store.fault = lambda operation: (_ for _ in ()).throw(InjectedFault("down"))  # type: ignore[attr-defined]
    a.pass_once()
    assert a.puller.last_error
    assert a.projects.evict_idle(0, now=time.monotonic() + 1) == ["p1"]
    a.pass_once()
    assert a.puller.last_error is None and a.puller.cursors == {}


def test_a_big_merge_gives_the_loop_back_between_chunks(memory_nodes: tuple[Node, Node]) -> None:
    a, b = memory_nodes
    project = a.hold("big")
    stamp = b.clock.now()
    states = [ObjectState.created(f"o{i:05}", "rect", {"x": i}, stamp) for i in range(5 * pull_module.MERGE_CHUNK)]

    async def run() -> int:
        turns = 0
        done = False

        async def ticker() -> None:
            nonlocal turns
            while not done:
                turns += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        turns = 0
        result = await a.puller.merge(project, states)
        done = True
        await task
        assert len(result.changed) == len(states)
        return turns

    assert asyncio.run(run()) >= 4  # the ticker ran between every two chunks
    assert len(project.views) == len(states)
