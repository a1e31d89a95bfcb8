"""Deleting a project and forgetting tombstones, with services in one process on a shared
memory store (and the in-memory broker): the decisions end to end, in milliseconds.
tests/system/test_delete.py and test_tombstones.py show the same with real processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from canvas_sync.config import load_settings
from canvas_sync.connection import DELETED
from canvas_sync.dirty import DirtyObject
from canvas_sync.model import ObjectState
from canvas_sync.relay import MemoryBroker
from canvas_sync.service import CanvasService
from canvas_sync.store import MemoryStore
from canvas_sync.wiring import build

from tests.helpers import InProcessClient, eventually


@asynccontextmanager
async def cluster(n: int = 2, relay: bool = True, **settings: Any) -> AsyncIterator[list[CanvasService]]:
    store = MemoryStore("shared")
    broker = MemoryBroker() if relay else None
    values: dict[str, Any] = {
        "autosave_interval": 3600,
        "sync_interval": 0.05,
        "relay_heartbeat": 0.2,
        "auth": "off",
        **settings,
    }
    services = []
    for i in range(n):
        name = f"r{i}"
        transport = broker.transport() if broker else None
        svc = build(load_settings(replica_id=name, **values), MemoryStore(name, shared=store), transport)
        await svc.start()
        services.append(svc)
    await eventually(lambda: all(s.ready and (s.relay is None or s.relay.healthy) for s in services), what="ready")
    try:
        yield services
    finally:
        for svc in services:
            await svc.shutdown()


def create(client: InProcessClient, *ids: str) -> None:
    for oid in ids:
        assert client.send({"op": "create", "object": {"id": oid, "type": "rect"}})["op"] == "ack"  # type: ignore[index]


def table(svc: CanvasService, project: str = "p") -> list[str]:
    return sorted(s.id for s in svc.store.load(project).states if s.is_alive)


def test_a_delete_drops_every_copy_at_once_and_nothing_unsaved_comes_back() -> None:
    async def run() -> None:
        async with cluster(3) as (a, b, c):
            ca, cb, cc = [await InProcessClient(s, "p").open() for s in (a, b, c)]
            create(ca, "saved")
            acked = ca.send({"op": "create", "object": {"id": "replayed", "type": "rect"}})
            assert acked is not None and acked["op"] == "ack"
            await asyncio.to_thread(a.autosave.run_pass)
            create(cb, "unsaved-on-b")  # only b's memory holds it (and its relay)
            await eventually(lambda: "unsaved-on-b" in (c.projects.get("p") or ca.project).views)
            started = time.monotonic()
            await a.delete_project("p")
            await eventually(lambda: b.projects.get("p") is None and c.projects.get("p") is None, timeout=1)
            assert time.monotonic() - started < 0.5  # the relay, not a sync pass
            assert {cl.conn.close_code for cl in (ca, cb, cc)} == {DELETED}
            assert b.dirty.counts() == (0, 0) and table(a) == [] and a.store.stored("p") == 0  # type: ignore[attr-defined]
            assert cb.send({"op": "create", "object": {"id": "late", "type": "rect"}}) is None  # closing: ignored
            await asyncio.to_thread(b.autosave.run_pass)  # nothing of the old copy is left to write
            fresh = await InProcessClient(c, "p").open()
            assert fresh.snapshot["objects"] == [] and fresh.project.gen == 1
            replay = {"op": "create", "object": {"id": "replayed", "type": "rect"}, "stamp": acked["stamp"]}
            assert fresh.send(replay)["op"] == "ack"  # type: ignore[index]  # a client replaying it after the delete
            assert "replayed" not in fresh.project.objects  # cannot bring it back
            create(fresh, "saved")  # the id starts empty, and its ids are free
            await asyncio.to_thread(c.autosave.run_pass)
            assert table(a) == ["saved"]

    asyncio.run(run())


def test_without_the_relay_the_others_drop_it_at_their_next_head_read() -> None:
    async def run() -> None:
        async with cluster(2, relay=False) as (a, b):
            ca, cb = await InProcessClient(a, "p").open(), await InProcessClient(b, "p").open()
            create(cb, "x")
            await a.delete_project("p")
            seconds = await eventually(lambda: b.projects.get("p") is None, timeout=2)
            assert seconds < 1.0 and cb.conn.close_code == DELETED and ca.conn.close_code == DELETED
            assert b.metrics.project_drops.labels("head")._value.get() == 1

    asyncio.run(run())


def test_a_save_that_lands_after_the_delete_is_invisible_fenced_and_swept() -> None:
    async def run() -> None:
        async with cluster(2, relay=False, sync_interval=3600) as (a, b):
            cb = await InProcessClient(b, "p").open()
            create(cb, "x", "y")
            taken = b.dirty.take()  # b's pass is in flight ...
            await a.delete_project("p")  # ... while a deletes the project
            b.dirty.finish(b.store.write(taken, saved_at_ms=b.clock.now()[0]).failed)  # it lands afterwards
            assert b.store.stored("p") == 2 and b.store.read_heads(["p"])["p"].tokens == {}  # type: ignore[attr-defined]
            b.autosave._report_saved([])  # as the pass reports: its head refused the announcement
            await eventually(lambda: b.projects.get("p") is None and b.store.stored("p") == 0, timeout=2)  # type: ignore[attr-defined]
            assert table(a) == []
            assert cb.conn.close_code == DELETED and b.metrics.project_drops.labels("fenced")._value.get() == 1

    asyncio.run(run())


def test_a_copy_that_fell_behind_while_deletes_were_forgotten_is_read_again_not_saved() -> None:
    async def run() -> None:
        async with cluster(2, relay=False, tombstone_grace=3) as (a, b):  # b is stale after 1 s without reads
            ca, cb = await InProcessClient(a, "p").open(), await InProcessClient(b, "p").open()
            create(ca, "keep", "gone")
            await asyncio.to_thread(a.autosave.run_pass)
            await eventually(lambda: "gone" in cb.project.views, timeout=2)
            b.store.fault = lambda op: (_ for _ in ()).throw(OSError("cut off"))  # type: ignore[attr-defined]
            assert ca.send({"op": "delete", "id": "gone"})["op"] == "ack"  # type: ignore[index]
            await asyncio.to_thread(a.autosave.run_pass)
            b_gone = cb.project.objects["gone"]
            assert b_gone.is_alive  # b never heard of the delete
            cb.send({"op": "update", "id": "gone", "props": {"x": 1}})  # and edits it: unsaved on b
            # a forgets the delete, as its budget would, and deletes its item
            project = a.projects.get("p")
            assert project is not None
            tomb = project.objects["gone"]
            assert a.store.advance_horizon("p", 0, tomb.alive[1][0])
            a.projects.forget(project, [tomb])
            from canvas_sync.model import encode_doc

            assert a.store.purge("p", [("gone", encode_doc(tomb))]) == 1
            await asyncio.sleep(1.2)  # b is stale now
            assert b.freshness is not None and b.freshness.stale("p")
            assert b.autosave.run_pass() is None and b.dirty.counts() == (1, 1)  # its save waits
            b.store.fault = lambda op: None  # type: ignore[attr-defined]
            await eventually(lambda: "gone" not in cb.project.objects, timeout=3, what="b read again")
            assert b.metrics.project_reloads._value.get() == 1 and b.dirty.counts() == (0, 0)
            assert {m["id"] for m in cb.received() if m["op"] == "delete"} == {"gone"}
            await asyncio.to_thread(b.autosave.run_pass)
            assert table(a) == ["keep"]  # nothing was brought back
            assert not b.freshness.stale("p")

    asyncio.run(run())


def test_stale_copies_catch_up_and_save_when_nothing_was_forgotten() -> None:
    async def run() -> None:
        async with cluster(2, relay=False, tombstone_grace=3) as (a, b):
            cb = await InProcessClient(b, "p").open()
            b.store.fault = lambda op: (_ for _ in ()).throw(OSError("cut off"))  # type: ignore[attr-defined]
            create(cb, "during")
            await asyncio.sleep(1.2)
            assert b.freshness is not None and b.freshness.stale("p")
            b.store.fault = lambda op: None  # type: ignore[attr-defined]
            await eventually(lambda: not b.freshness.stale("p"), timeout=2)  # type: ignore[union-attr]
            assert b.metrics.project_reloads._value.get() == 0  # no horizon moved: a feed read, not a reload
            await asyncio.to_thread(b.autosave.run_pass)
            assert table(a) == ["during"]

    asyncio.run(run())


def test_relayed_states_of_another_generation_are_not_merged() -> None:
    async def run() -> None:
        async with cluster(2) as (a, b):
            await InProcessClient(a, "p").open()
            cb = await InProcessClient(b, "p").open()
            assert b.bridge is not None
            old = ObjectState.created("old", "rect", {}, b.clock.now())
            b.bridge.on_object("p", old, gen=0)
            assert "old" in cb.project.views
            b.bridge.on_object("p", ObjectState.created("stale", "rect", {}, b.clock.now()), gen=-1)
            assert "stale" not in cb.project.objects
            b.bridge.on_object("p", ObjectState.created("newer", "rect", {}, b.clock.now()), gen=3)
            assert b.projects.get("p") is None and cb.conn.close_code == DELETED  # deleted elsewhere

    asyncio.run(run())


def test_the_dirty_set_writes_each_entry_with_its_copys_generation() -> None:
    store = MemoryStore("r")
    store.bump_generation("p")
    state = ObjectState.created("o", "rect", {}, (1, 0, "r"))
    store.write([DirtyObject("p", state, gen=1)], saved_at_ms=1)
    assert [s.id for s in store.load("p").states] == ["o"] and store.take_fenced() == {}
