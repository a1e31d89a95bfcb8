"""Saved acknowledgements and replay: the ledger alone, then the service in-process on the
in-memory store (saves run by hand, so every pass is where the test puts it)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from canvas_sync import protocol
from canvas_sync.auth import Role
from canvas_sync.saved import MAX_WAITING, Ledger
from canvas_sync.service import CanvasService
from canvas_sync.store import MemoryStore
from canvas_sync.store import memory as memory_store
from canvas_sync.store.memory import InjectedFault
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import InProcessClient
from tests.unit.test_service import service, started

# --- the ledger -------------------------------------------------------------------------


def test_saved_moves_to_the_last_change_below_the_watermark() -> None:
    ledger = Ledger(tracked=True)
    assert [ledger.record(v) for v in (3, 5, 9)] == [1, 2, 3]
    assert ledger.advance(3) is None  # version 3 itself is not below 3
    assert ledger.advance(6) == 2 and ledger.saved == 2
    assert ledger.advance(6) is None  # nothing new: no message
    assert ledger.advance(100) == 3 and not ledger.waiting


def test_an_untracked_socket_counts_seq_and_holds_nothing() -> None:
    ledger = Ledger(tracked=False)
    assert [ledger.record(v) for v in range(1, 1000)][-1] == 999
    assert not ledger.waiting and ledger.advance(10**9) is None


def test_a_ledger_is_bounded_however_many_changes_wait() -> None:
    ledger = Ledger(tracked=True)
    for version in range(1, 100_001):
        ledger.record(version)
    assert len(ledger._waiting) == MAX_WAITING
    assert ledger.advance(50_000) == MAX_WAITING - 1  # coarser, never early
    assert ledger.advance(100_001) == 100_000


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4)), max_size=300))
def test_saved_is_never_early_and_always_arrives(steps: list[tuple[int, int]]) -> None:
    """Versions grow with seq; the watermark grows; whatever the ledger reports is below it."""
    ledger, version, watermark, versions = Ledger(tracked=True), 1, 1, {}
    for gap, rise in steps:
        version += gap
        versions[ledger.record(version)] = version
        watermark = min(watermark + rise, version + 1)
        reported = ledger.advance(watermark)
        if reported is not None:
            assert all(versions[seq] < watermark for seq in range(1, reported + 1))
    assert ledger.advance(version + 1) in (None, ledger.seq) and ledger.saved == (ledger.seq if steps else 0)


# --- the service ------------------------------------------------------------------------


def run(test: Callable[[CanvasService, MemoryStore], Awaitable[None]], **settings: Any) -> None:
    async def main() -> None:
        store = MemoryStore("a")
        svc = await started(service(store, **settings))
        try:
            await test(svc, store)
        finally:
            await svc.shutdown()

    asyncio.run(main())


async def v3(svc: CanvasService, project: str = "p1", role: Role = Role.EDITOR) -> InProcessClient:
    return await InProcessClient(svc, project, role).open(protocol.V3)


async def save(svc: CanvasService) -> None:
    """One auto-save pass, and the loop's turn that sends ``saved`` after it."""
    await asyncio.to_thread(svc.autosave.run_pass)
    await asyncio.sleep(0.01)


def saved(client: InProcessClient) -> list[int]:
    return [m["seq"] for m in client.received() if m["op"] == "saved"]


def create(client: InProcessClient, oid: str, **props: Any) -> dict[str, Any]:
    reply = client.send({"op": "create", "object": {"id": oid, "type": "rect", **props}})
    assert reply is not None and reply["op"] == "ack", reply
    return reply


def test_acks_name_a_stamp_and_a_seq_and_saved_follows_the_pass() -> None:
    async def test(svc: CanvasService, store: MemoryStore) -> None:
        client = await v3(svc)
        first = create(client, "r1", x=1)
        second = client.send({"op": "update", "id": "r1", "props": {"x": 2}, "req": "u"})
        assert second is not None and (first["seq"], second["seq"], second["req"]) == (1, 2, "u")
        assert protocol.parse_stamp(second["stamp"], None) == svc.projects.projects["p1"].objects["r1"].props["x"][1]
        assert client.send({"op": "update", "id": "nope", "props": {"x": 1}})["code"] == "not_found"  # type: ignore[index]
        assert saved(client) == []  # acked in memory, not in the table
        await save(svc)
        assert saved(client) == [2]
        assert store.load_project("p1")[0].view() == {"id": "r1", "type": "rect", "x": 2}
        await save(svc)
        assert saved(client) == []  # at most once a pass, and only when it moved

    run(test)


def test_v2_and_v1_sockets_get_seq_but_never_saved() -> None:
    async def test(svc: CanvasService, store: MemoryStore) -> None:
        for version in (protocol.V2, protocol.V1, None):
            client = await InProcessClient(svc, "p1").open(version)
            assert create(client, f"r-{version}")["seq"] == 1
            await save(svc)
            assert saved(client) == []
        assert protocol.subprotocol([protocol.V1, protocol.V2, protocol.V3]) == protocol.V3

    run(test)


def test_a_failing_table_holds_saved_back_and_nothing_else() -> None:
    async def test(svc: CanvasService, store: MemoryStore) -> None:
        client = await v3(svc)
        create(client, "r1")

        def fail(op: str) -> None:
            if op == "write":
                raise InjectedFault("throttled")

        store.fault = fail
        await save(svc)
        assert saved(client) == []
        assert client.send({"op": "update", "id": "r1", "props": {"x": 1}})["seq"] == 2  # type: ignore[index]
        store.fault = lambda op: None
        await save(svc)
        assert saved(client) == [2]

    run(test)


def test_a_change_made_during_a_pass_waits_for_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    async def test(svc: CanvasService, store: MemoryStore) -> None:
        client = await v3(svc)
        create(client, "r1")
        taken = svc.dirty.take()  # the pass is in flight...
        client.send({"op": "update", "id": "r1", "props": {"x": 1}})  # ...when this lands
        svc.saved_acks.send()
        assert saved(client) == []  # taken is not written
        store.write(taken, 1)
        svc.dirty.finish()
        svc.saved_acks.send()
        assert saved(client) == [1]  # the create only
        await save(svc)
        assert saved(client) == [2]

    run(test)


def test_a_quarantined_object_holds_saved_back_until_it_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_store, "ITEM_LIMIT_BYTES", 200)

    async def test(svc: CanvasService, store: MemoryStore) -> None:
        client = await v3(svc)
        create(client, "big", s="x" * 300)
        await save(svc)
        assert svc.dirty.quarantined_count() == 1 and saved(client) == []
        client.send({"op": "update", "id": "big", "props": {"s": "small"}})
        await save(svc)
        assert svc.dirty.quarantined_count() == 0 and saved(client) == [2]

    run(test)


def test_a_replay_merges_with_its_stamp_changes_nothing_twice_and_is_saved_again() -> None:
    async def test(svc: CanvasService, store: MemoryStore) -> None:
        author, other = await v3(svc), await v3(svc)
        created = create(author, "r1", x=1)
        moved = author.send({"op": "update", "id": "r1", "props": {"x": 2}})
        assert moved is not None
        await save(svc)
        other.received()
        before = svc.projects.projects["p1"].objects["r1"]
        again = await v3(svc)
        replayed = [
            again.send({"op": "create", "object": {"id": "r1", "type": "rect", "x": 1}, "stamp": created["stamp"]}),
            again.send({"op": "update", "id": "r1", "props": {"x": 2}, "stamp": moved["stamp"]}),
        ]
        assert [r["stamp"] for r in replayed if r] == [created["stamp"], moved["stamp"]]
        assert [r["seq"] for r in replayed if r] == [1, 2]
        assert svc.projects.projects["p1"].objects["r1"] == before  # idempotent
        assert other.received() == []  # nothing changed: nothing to tell
        echoes = [m for m in again.received() if m["op"] == "upsert"]
        assert echoes[-1]["object"] == {"id": "r1", "type": "rect", "x": 2}
        assert svc.dirty.project_count("p1") == 1  # the sender waits for saved: written again
        await save(svc)
        assert saved(again) == [2]
        assert svc.metrics.replays.labels("duplicate")._value.get() == 2

    run(test)


def test_a_later_change_wins_over_a_replay_and_the_sender_hears_it() -> None:
    async def test(svc: CanvasService, store: MemoryStore) -> None:
        author, later = await v3(svc), await v3(svc)
        create(author, "r1", x=0)
        old = author.send({"op": "update", "id": "r1", "props": {"x": 1, "y": 1}})
        later.send({"op": "update", "id": "r1", "props": {"x": 5}})
        assert old is not None
        author.received()
        author.send({"op": "update", "id": "r1", "props": {"x": 1, "y": 1}, "stamp": old["stamp"]})
        assert svc.projects.projects["p1"].views["r1"] == '{"id":"r1","type":"rect","x":5,"y":1}'
        (echo,) = [m for m in author.received() if m["op"] == "upsert"]
        assert echo["object"]["x"] == 5

    run(test)


def test_a_replay_of_a_delete_after_a_later_create_changes_nothing() -> None:
    async def test(svc: CanvasService, store: MemoryStore) -> None:
        client = await v3(svc)
        create(client, "r1")
        gone = client.send({"op": "delete", "id": "r1"})
        create(client, "r1", x=9)
        assert gone is not None
        client.received()
        again = client.send({"op": "delete", "id": "r1", "stamp": gone["stamp"]})
        assert again is not None and again["op"] == "ack"
        assert svc.projects.projects["p1"].views["r1"] == '{"id":"r1","type":"rect","x":9}'
        assert client.send({"op": "delete", "id": "never", "stamp": gone["stamp"]})["op"] == "ack"  # type: ignore[index]

    run(test)


def test_a_stamp_dated_ahead_is_replaced_and_a_malformed_one_refused() -> None:
    async def test(svc: CanvasService, store: MemoryStore) -> None:
        client = await v3(svc)
        create(client, "r1")
        ahead = f"{svc.clock.wall_ms() + 3_600_000}.0.zzz"
        ack = client.send({"op": "update", "id": "r1", "props": {"x": 1}, "stamp": ahead})
        assert ack is not None and ack["stamp"] != ahead and ack["stamp"].endswith(".a")
        assert svc.metrics.replays.labels("redated")._value.get() == 1
        for bad in ("1.2", "01.0.a", "1.0.", "x.0.a", 12, "1.0.a\n", "1.0." + "a" * 200):
            reply = client.send({"op": "update", "id": "r1", "props": {"x": 2}, "stamp": bad})
            assert reply is not None and reply["code"] == "bad_message", bad
        assert svc.projects.projects["p1"].views["r1"] == '{"id":"r1","type":"rect","x":1}'
        assert client.send({"op": "update", "id": "r1", "props": {"x": 3}})["seq"] == 3  # type: ignore[index]

    run(test)


def test_a_viewer_cannot_replay() -> None:
    async def test(svc: CanvasService, store: MemoryStore) -> None:
        editor, viewer = await v3(svc), await v3(svc, role=Role.VIEWER)
        ack = create(editor, "r1")
        reply = viewer.send({"op": "delete", "id": "r1", "stamp": ack["stamp"]})
        assert reply is not None and reply["code"] == "forbidden"
        assert "r1" in svc.projects.projects["p1"].views

    run(test)


def test_a_retried_create_or_delete_is_acked_and_saved_but_a_plain_one_still_refused() -> None:
    async def test(svc: CanvasService, store: MemoryStore) -> None:
        client = await v3(svc)
        create(client, "r1", x=1)
        create(client, "r2")
        client.send({"op": "delete", "id": "r2"})
        await save(svc)
        assert saved(client) == [3]
        same = {"op": "create", "object": {"id": "r1", "type": "rect", "x": 1}}
        assert client.send(same)["code"] == "conflict"  # type: ignore[index]
        assert client.send({**same, "retry": True})["op"] == "ack"  # type: ignore[index]
        assert client.send({"op": "delete", "id": "r2"})["code"] == "not_found"  # type: ignore[index]
        assert client.send({"op": "delete", "id": "r2", "retry": True})["op"] == "ack"  # type: ignore[index]
        assert client.send({"op": "delete", "id": "r3", "retry": "yes"})["code"] == "bad_message"  # type: ignore[index]
        assert svc.dirty.project_count("p1") == 2  # both written again: they may have come by the relay alone
        await save(svc)
        assert saved(client) == [5]

    run(test)


def test_a_replay_on_another_replica_recreates_what_the_first_never_saved() -> None:
    async def test(svc: CanvasService, store: MemoryStore) -> None:
        client = await v3(svc)
        ack = create(client, "r1", x=1)
        state = svc.projects.projects["p1"].objects["r1"]
        other = await started(service(MemoryStore("b", shared=store), replica_id="b"))
        try:
            moved = await v3(other)
            moved.send({"op": "create", "object": {"id": "r1", "type": "rect", "x": 1}, "stamp": ack["stamp"]})
            await save(other)
            assert saved(moved) == [1]
            assert store.load_project("p1") == [state]  # the very state A held, stamps and all
        finally:
            await other.shutdown()

    run(test)
