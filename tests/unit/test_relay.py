"""Services relaying through one another in one process, on the in-memory broker: what
the relay does to a replica (relay/bridge.py). tests/system/test_relay_redis.py runs the
same tests on a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from canvas_sync.config import Settings, load_settings
from canvas_sync.dirty import DirtyObject
from canvas_sync.relay import Kind, MemoryBroker, Transport, decode
from canvas_sync.service import CanvasService
from canvas_sync.store import MemoryStore, Store
from canvas_sync.wiring import build, repair_grace_ms

from tests.helpers import InProcessClient, eventually


@pytest.fixture
def backend() -> Callable[[], Transport]:
    """A factory of transports on one in-memory broker (tests/system/test_relay_redis.py
    runs these same tests on a real redis-server)."""
    return MemoryBroker().transport


@asynccontextmanager
async def cluster(
    make_transport: Callable[[], Transport], n: int = 2, **settings: Any
) -> AsyncIterator[list[CanvasService]]:
    store = MemoryStore("shared")
    services = []
    values: dict[str, Any] = {
        "autosave_interval": 3600,
        "sync_interval": 0.05,
        "relay_heartbeat": 0.2,
        "auth": "off",
        **settings,
    }
    for i in range(n):
        name = f"r{i}"
        svc = build(load_settings(replica_id=name, **values), MemoryStore(name, shared=store), make_transport())
        await svc.start()
        services.append(svc)
    await eventually(lambda: all(s.ready and s.relay and s.relay.healthy for s in services), what="relays healthy")
    try:
        yield services
    finally:
        for svc in services:
            await svc.shutdown()


def upserts(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["object"]["id"]: m["object"] for m in messages if m["op"] == "upsert"}


def test_an_edit_reaches_the_other_replicas_clients_at_once(backend: Callable[[], Transport]) -> None:
    async def run() -> float:
        async with cluster(backend, n=3) as (a, b, c):
            ca, cb, cc = [await InProcessClient(s, "p").open() for s in (a, b, c)]
            assert ca.send({"op": "create", "object": {"id": "o", "type": "rect", "x": 1}})["op"] == "ack"  # type: ignore[index]
            got: dict[str, list[dict[str, Any]]] = {"b": [], "c": []}

            def arrived() -> bool:
                got["b"] += cb.received()
                got["c"] += cc.received()
                return "o" in upserts(got["b"]) and "o" in upserts(got["c"])

            seconds = await eventually(arrived, timeout=2, what="the upsert on b and c")
            assert upserts(got["b"])["o"] == {"id": "o", "type": "rect", "x": 1}
            assert a.dirty.counts() == (1, 1) and b.dirty.counts() == (0, 0)  # relayed, not saved twice
            ca.send({"op": "update", "id": "o", "props": {"x": 2}})
            await eventually(lambda: b.projects.get("p").views["o"] == '{"id":"o","type":"rect","x":2}')  # type: ignore[union-attr]
            return seconds

    assert asyncio.run(run()) < 1.0


def test_a_dropped_message_is_noticed_and_healed() -> None:
    """Drops chosen on the in-memory broker; Redis's own losses are tested end to end."""
    broker = MemoryBroker()
    backend = broker.transport

    def state_of(data: bytes, object_id: str) -> bool:
        message = decode(data)
        return message.kind == Kind.OBJECT and message.object_id == object_id

    def once(object_id: str) -> Callable[[str, bytes], bool]:
        """Drop the first message carrying this object's state (not the resend it causes)."""
        done: list[bool] = []

        def drop(name: str, data: bytes) -> bool:
            if done or not state_of(data, object_id):
                return False
            done.append(True)
            return True

        return drop

    async def run() -> None:
        async with cluster(backend) as (a, b):
            ca, cb = await InProcessClient(a, "p").open(), await InProcessClient(b, "p").open()
            ca.send({"op": "create", "object": {"id": "first", "type": "rect"}})
            await eventually(lambda: "first" in b.projects.get("p").views)  # type: ignore[union-attr]
            broker.drop = once("lost")
            broker.duplicate = lambda name, data: state_of(data, "twice")
            ca.send({"op": "create", "object": {"id": "lost", "type": "rect", "x": 1}})
            ca.send({"op": "create", "object": {"id": "twice", "type": "rect"}})
            await eventually(lambda: "lost" in b.projects.get("p").views, what="the lost edit healed")  # type: ignore[union-attr]
            assert b.metrics.relay_gaps.labels("gap")._value.get() == 1
            assert b.metrics.relay_catch_ups.labels("gap")._value.get() == 1
            assert b.projects.get("p").views == a.projects.get("p").views  # type: ignore[union-attr]
            assert sorted(upserts(cb.received())) == ["first", "lost", "twice"]

            broker.drop = once("last")  # nothing comes after it: the heartbeat tells
            ca.send({"op": "create", "object": {"id": "last", "type": "rect"}})
            await eventually(lambda: "last" in b.projects.get("p").views, what="the lost last edit")  # type: ignore[union-attr]
            assert b.metrics.relay_gaps.labels("heartbeat")._value.get() >= 1

    asyncio.run(run())


def test_presence_reaches_every_replica_coalesced_and_leaves(backend: Callable[[], Transport]) -> None:
    async def run() -> None:
        async with cluster(backend) as (a, b):
            ca, cb = await InProcessClient(a, "p").open(), await InProcessClient(b, "p").open()
            started = time.monotonic()
            for x in range(50):  # a pointer moving at 100 a second: coalesced to about 20 a second
                assert ca.send({"op": "presence", "state": {"cursor": [x, 0], "name": "Ann"}}) is None
                await asyncio.sleep(0.01)
            elapsed = time.monotonic() - started
            assert ca.send({"op": "presence", "req": "r", "state": {"cursor": [50, 0], "name": "Ann"}}) == {
                "op": "ack",
                "req": "r",
            }
            seen: list[dict[str, Any]] = []

            def last_cursor() -> Any:
                seen.extend(m for m in cb.received() if m["op"] == "presence")
                return seen and seen[-1]["state"]["cursor"] == [50, 0]

            await eventually(last_cursor, what="the latest cursor on b")
            assert len(seen) <= elapsed * 20 + 3 and seen[-1]["client"] == ca.conn.client_id  # not 51
            late = await InProcessClient(b, "p").open()
            assert late.snapshot["presence"] == [
                {"client": ca.conn.client_id, "state": {"cursor": [50, 0], "name": "Ann"}}
            ]
            ca.close()
            await eventually(lambda: {"op": "presence_leave", "client": ca.conn.client_id} in cb.received())
            assert (await InProcessClient(b, "p").open()).snapshot["presence"] == []

    asyncio.run(run())


def test_a_replica_that_stops_heartbeating_loses_its_presences(backend: Callable[[], Transport]) -> None:
    async def run() -> None:
        async with cluster(backend) as (a, b):
            ca, cb = await InProcessClient(a, "p").open(), await InProcessClient(b, "p").open()
            ca.send({"op": "presence", "state": {"name": "Ann"}})
            await eventually(lambda: any(m["op"] == "presence" for m in cb.received()))
            assert a.relay is not None
            for task in a.relay._tasks:  # as if a's process died: no leave, no heartbeat
                task.cancel()
            seconds = await eventually(lambda: {"op": "presence_leave", "client": ca.conn.client_id} in cb.received())
            assert seconds < 5 * 0.2 + 1  # three heartbeats of silence, then the leave

    asyncio.run(run())


def test_nobody_else_holding_a_project_costs_no_publish(backend: Callable[[], Transport]) -> None:
    async def run() -> None:
        async with cluster(backend) as (a, b):
            ca = await InProcessClient(a, "solo").open()
            ca.send({"op": "create", "object": {"id": "o", "type": "rect"}})
            assert a.relay is not None
            await eventually(lambda: a.relay.peers.get("solo") == 0, what="the first publish reached nobody else")
            published = a.metrics.relay_published._value.get()
            for x in range(20):
                ca.send({"op": "update", "id": "o", "props": {"x": x}})
            await asyncio.sleep(0.3)
            assert a.metrics.relay_published._value.get() - published <= 2  # heartbeats only
            cb = await InProcessClient(b, "solo").open()  # b loads it: hello; a answers with what it has not saved
            assert cb.snapshot["objects"] == []  # nothing saved yet: the table had nothing to load
            await eventually(
                lambda: b.projects.get("solo").views.get("o") == '{"id":"o","type":"rect","x":19}',  # type: ignore[union-attr]
                what="a's unsaved state on b",
            )
            ca.send({"op": "update", "id": "o", "props": {"x": 99}})
            await eventually(lambda: '"x":99' in b.projects.get("solo").views["o"])  # type: ignore[union-attr]

    asyncio.run(run())


def written(svc: CanvasService) -> float:
    return float(svc.metrics.objects_written._value.get())


def saved_view(store: Store, project: str, object_id: str) -> dict[str, Any] | None:
    return next((s.view() for s in store.load_project(project) if s.id == object_id), None)


def test_a_relayed_edit_is_saved_by_its_origin_alone(backend: Callable[[], Transport]) -> None:
    """The relay brings b an object's states ahead of a's saves, and b's feed then reads a's
    older saves: memory ahead of the table. That is a's to write. b, whose clients edited
    nothing, writes nothing: were it to repair, every relayed edit would be written twice."""

    async def run() -> None:
        async with cluster(backend, autosave_interval=0.1, relay_heads_interval=0.1) as (a, b):
            ca, _ = await InProcessClient(a, "p").open(), await InProcessClient(b, "p").open()
            ca.send({"op": "create", "object": {"id": "o", "type": "rect", "x": 0}})
            for x in range(1, 61):  # a drag across several of a's saves
                ca.send({"op": "update", "id": "o", "props": {"x": x}})
                await asyncio.sleep(0.01)
            final = {"id": "o", "type": "rect", "x": 60}

            def settled() -> bool:
                views = [s.projects.get("p").views.get("o") for s in (a, b)]  # type: ignore[union-attr]
                clean = all(s.dirty.counts() == (0, 0) for s in (a, b))
                return clean and views[0] == views[1] and saved_view(a.store, "p", "o") == final

            await eventually(settled, what="both equal, the table too")
            await asyncio.sleep(0.5)  # b's feed keeps re-reading a's saves (the overlap)
            assert b.metrics.sync_pulls.labels("feed", "success")._value.get() > 0
            assert written(a) >= 2  # a drag over several of a's passes
            assert written(b) == 0 and b.metrics.sync_repairs._value.get() == 0
            assert saved_view(a.store, "p", "o") == final

    asyncio.run(run())


def test_a_write_overwritten_in_the_table_is_repaired_with_the_relay_on(backend: Callable[[], Transport]) -> None:
    """The relay does not give up anti-entropy: a batch that overwrites a's saved field with
    an older copy (BatchWriteItem takes no conditions) is found through the feed and written
    again by a, whose field it was; b, which only heard of it, leaves it to a."""

    async def run() -> None:
        async with cluster(backend, autosave_interval=0.1, relay_heads_interval=0.1) as (a, b):
            b.projects.repair_grace_ms = 60_000  # a's fields stay a's to repair however slow this machine is
            ca, _ = await InProcessClient(a, "p").open(), await InProcessClient(b, "p").open()
            ca.send({"op": "create", "object": {"id": "o", "type": "rect", "fill": "red"}})
            await eventually(lambda: saved_view(a.store, "p", "o") is not None and b.projects.get("p").views.get("o"))  # type: ignore[union-attr]
            (old,) = [s for s in a.store.load_project("p") if s.id == "o"]
            ca.send({"op": "update", "id": "o", "props": {"fill": "blue"}})
            blue = {"id": "o", "type": "rect", "fill": "blue"}
            await eventually(lambda: saved_view(a.store, "p", "o") == blue, what="a's fill saved")
            await eventually(lambda: '"blue"' in b.projects.get("p").views["o"], what="b heard of it")  # type: ignore[union-attr]
            await asyncio.sleep(0.3)
            before_a, before_b = written(a), written(b)
            other = MemoryStore("c", shared=a.store)  # type: ignore[arg-type]
            other.write([DirtyObject("p", old)], saved_at_ms=a.clock.wall_ms())  # a stale batch lands last
            assert saved_view(a.store, "p", "o") == {"id": "o", "type": "rect", "fill": "red"}
            await eventually(lambda: saved_view(a.store, "p", "o") == blue, what="the overwritten fill repaired")
            assert written(a) > before_a and a.metrics.sync_repairs._value.get() >= 1
            await asyncio.sleep(0.3)
            assert written(b) == before_b

    asyncio.run(run())


@pytest.mark.parametrize(
    ("interval", "overlap", "grace_ms"),
    [(5.0, 10.0, 7_000), (8.0, 10.0, 9_000), (30.0, 10.0, 9_000), (2.0, 0.5, 0)],
)
def test_the_repair_grace_ends_inside_what_the_feed_re_reads(interval: float, overlap: float, grace_ms: int) -> None:
    """Past the overlap a field whose origin died unsaved would be left to the slow reconcile."""
    settings = Settings(autosave_interval=interval, sync_overlap=overlap)
    assert repair_grace_ms(settings) == grace_ms
