"""The live relay: its decisions as plain functions, then services in one process relaying
through the in-memory broker and through a real redis-server (the same assertions)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from canvas_sync.config import load_settings
from canvas_sync.connection import Connection
from canvas_sync.relay import (
    HEARTBEAT_CHANNEL,
    Kind,
    MemoryBroker,
    Message,
    Receiver,
    RedisTransport,
    Sequencer,
    Transport,
    Verdict,
    channel,
    decode,
    encode,
)
from canvas_sync.relay.core import project_of
from canvas_sync.service import CanvasService
from canvas_sync.store import MemoryStore
from hypothesis import given
from hypothesis import strategies as st

# --- decisions --------------------------------------------------------------------------


def test_channels_carry_the_project_in_a_hash_tag() -> None:
    assert channel("team-1:board.2") == "canvas:{team-1:board.2}"
    assert project_of(channel("team-1:board.2")) == "team-1:board.2"
    assert project_of(HEARTBEAT_CHANNEL) is None


def test_messages_round_trip_and_foreign_ones_are_refused() -> None:
    message = Message(
        Kind.STATE,
        "a",
        "e1",
        "p",
        7,
        123,
        doc={"alive": True, "stamp": [1, 0, "a"], "type": "r", "props": {"x": 1}},
        object_id="o",
    )
    assert decode(encode(message)) == message
    heartbeat = Message(Kind.HEARTBEAT, "a", "e1", seqs={"p": 3})
    assert decode(encode(heartbeat)) == heartbeat and len(encode(heartbeat)) < 60
    for foreign in (b"hello", b"[1,2]", b'{"k":"zz","r":"a","e":"1"}', b'{"k":"s","r":1,"e":"1"}'):
        with pytest.raises(ValueError):
            decode(foreign)


def test_receiver_tells_order_gaps_duplicates_and_new_epochs() -> None:
    r = Receiver()
    assert r.on_message("a", "e1", "p", 1) == Verdict.FIRST
    assert r.on_message("a", "e1", "p", 2) == Verdict.IN_ORDER
    assert r.on_message("a", "e1", "p", 2) == Verdict.DUPLICATE
    assert r.on_message("a", "e1", "p", 5) == Verdict.GAP
    assert r.on_message("a", "e1", "p", 4) == Verdict.DUPLICATE  # late: already counted in the gap
    assert r.on_message("a", "e2", "p", 1) == Verdict.NEW_EPOCH  # a restart
    assert r.on_message("b", "e9", "p", 40) == Verdict.FIRST  # another publisher, its own count
    assert r.on_message("a", "e2", "q", 1) == Verdict.FIRST  # another project, its own count


def test_a_heartbeat_ahead_of_what_arrived_means_a_lost_last_message() -> None:
    r = Receiver()
    r.on_message("a", "e1", "p", 1)
    assert r.on_heartbeat("a", "e1", {"p": 1, "q": 9}, held={"p", "q"}) == []  # q: first word of it, a baseline
    assert r.on_heartbeat("a", "e1", {"p": 2, "q": 9}, held={"p", "q"}) == ["p"]
    assert r.on_heartbeat("a", "e1", {"p": 2}, held={"p"}) == []  # noted: asked once
    assert r.on_heartbeat("a", "e2", {"p": 1}, held={"p"}) == ["p"]  # new epoch
    assert r.on_heartbeat("a", "e2", {"x": 5}, held={"p"}) == []  # not held: none of our business


@given(st.lists(st.integers(1, 30), max_size=60))
def test_every_lost_sequence_number_is_noticed(delivered: list[int]) -> None:
    """Whatever subset arrives, in whatever order, a loss is seen by a message or the heartbeat."""
    r = Receiver()
    r.on_message("a", "e", "p", 0)
    noticed = False
    for seq in delivered:
        noticed |= r.on_message("a", "e", "p", seq) in (Verdict.GAP, Verdict.NEW_EPOCH)
    noticed |= bool(r.on_heartbeat("a", "e", {"p": 30}, held={"p"}))
    if set(range(1, 31)) - set(delivered):
        assert noticed
    if delivered == list(range(1, 31)):
        assert not noticed  # nothing lost, nothing to catch up


def test_heartbeats_report_only_recent_projects() -> None:
    seq = Sequencer(recent_s=60)
    assert [seq.next("p", now=0), seq.next("p", now=1), seq.next("q", now=10)] == [1, 2, 1]
    assert seq.last(now=30) == {"p": 2, "q": 1}
    assert seq.last(now=65) == {"q": 1}
    assert seq.next("p", now=66) == 3  # the count goes on


# --- services relaying, in one process ------------------------------------------------------


class Client:
    """A connection's view: what the service sent it."""

    def __init__(self, svc: CanvasService, project_id: str) -> None:
        self.svc, self.project_id = svc, project_id
        self.conn = Connection(1024)
        self.project: Any = None

    async def open(self) -> Client:
        self.project = await self.svc.project(self.project_id)
        self.project.connections.add(self.conn)
        self.snapshot = json.loads(self.svc.snapshot(self.project))
        return self

    def send(self, message: dict[str, Any]) -> dict[str, Any] | None:
        reply = self.svc.handle(self.project, self.conn, json.dumps(message))
        return None if reply is None else dict(json.loads(reply))

    def received(self) -> list[dict[str, Any]]:
        return [json.loads(text) for text in self.conn.outbox.take()]

    def close(self) -> None:
        self.project.connections.discard(self.conn)
        self.svc.left(self.project, self.conn)


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Callable[[], Transport]:
    """A factory of transports on one broker: in memory, or a real redis-server."""
    if request.param == "memory":
        broker = MemoryBroker()
        request.node.broker = broker
        return broker.transport
    server = request.getfixturevalue("redis_server")
    request.node.redis = server
    return lambda: RedisTransport(server.url, timeout=1.0)


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
        svc = CanvasService(load_settings(replica_id=name, **values), MemoryStore(name, shared=store), make_transport())
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
            ca, cb, cc = [await Client(s, "p").open() for s in (a, b, c)]
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
            await eventually(lambda: b.state.get("p").views["o"] == '{"id":"o","type":"rect","x":2}')  # type: ignore[union-attr]
            return seconds

    assert asyncio.run(run()) < 1.0


def test_a_dropped_message_is_noticed_and_healed() -> None:
    """Drops chosen on the in-memory broker; Redis's own losses are tested end to end."""
    broker = MemoryBroker()
    backend = broker.transport

    def state_of(data: bytes, object_id: str) -> bool:
        message = decode(data)
        return message.kind == Kind.STATE and message.object_id == object_id

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
            ca, cb = await Client(a, "p").open(), await Client(b, "p").open()
            ca.send({"op": "create", "object": {"id": "first", "type": "rect"}})
            await eventually(lambda: "first" in b.state.get("p").views)  # type: ignore[union-attr]
            broker.drop = once("lost")
            broker.duplicate = lambda name, data: state_of(data, "twice")
            ca.send({"op": "create", "object": {"id": "lost", "type": "rect", "x": 1}})
            ca.send({"op": "create", "object": {"id": "twice", "type": "rect"}})
            await eventually(lambda: "lost" in b.state.get("p").views, what="the lost edit healed")  # type: ignore[union-attr]
            assert b.metrics.relay_gaps.labels("gap")._value.get() == 1
            assert b.metrics.relay_catch_ups.labels("gap")._value.get() == 1
            assert b.state.get("p").views == a.state.get("p").views  # type: ignore[union-attr]
            assert sorted(upserts(cb.received())) == ["first", "lost", "twice"]

            broker.drop = once("last")  # nothing comes after it: the heartbeat tells
            ca.send({"op": "create", "object": {"id": "last", "type": "rect"}})
            await eventually(lambda: "last" in b.state.get("p").views, what="the lost last edit")  # type: ignore[union-attr]
            assert b.metrics.relay_gaps.labels("heartbeat")._value.get() >= 1

    asyncio.run(run())


def test_presence_reaches_every_replica_coalesced_and_leaves(backend: Callable[[], Transport]) -> None:
    async def run() -> None:
        async with cluster(backend) as (a, b):
            ca, cb = await Client(a, "p").open(), await Client(b, "p").open()
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
            late = await Client(b, "p").open()
            assert late.snapshot["presence"] == [
                {"client": ca.conn.client_id, "state": {"cursor": [50, 0], "name": "Ann"}}
            ]
            ca.close()
            await eventually(lambda: {"op": "presence_leave", "client": ca.conn.client_id} in cb.received())
            assert (await Client(b, "p").open()).snapshot["presence"] == []

    asyncio.run(run())


def test_a_replica_that_stops_heartbeating_loses_its_presences(backend: Callable[[], Transport]) -> None:
    async def run() -> None:
        async with cluster(backend) as (a, b):
            ca, cb = await Client(a, "p").open(), await Client(b, "p").open()
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
            ca = await Client(a, "solo").open()
            ca.send({"op": "create", "object": {"id": "o", "type": "rect"}})
            assert a.relay is not None
            await eventually(lambda: a.relay.peers.get("solo") == 0, what="the first publish reached nobody else")
            published = a.metrics.relay_published._value.get()
            for x in range(20):
                ca.send({"op": "update", "id": "o", "props": {"x": x}})
            await asyncio.sleep(0.3)
            assert a.metrics.relay_published._value.get() - published <= 2  # heartbeats only
            cb = await Client(b, "solo").open()  # b loads it: hello; a answers with what it has not saved
            assert cb.snapshot["objects"] == []  # nothing saved yet: the table had nothing to load
            await eventually(
                lambda: b.state.get("solo").views.get("o") == '{"id":"o","type":"rect","x":19}',  # type: ignore[union-attr]
                what="a's unsaved state on b",
            )
            ca.send({"op": "update", "id": "o", "props": {"x": 99}})
            await eventually(lambda: '"x":99' in b.state.get("solo").views["o"])  # type: ignore[union-attr]

    asyncio.run(run())


def test_a_password_protected_redis_needs_the_password(tmp_path: Any) -> None:
    """CANVAS_REDIS_PASSWORD reaches AUTH; without it the relay cannot publish."""
    from canvas_sync.redis_local import RedisServer
    from canvas_sync.redis_local import Unavailable as RedisUnavailable

    try:
        server = RedisServer(log_path=tmp_path / "redis.log", password="s3cret-relay-password").start()
    except RedisUnavailable as error:
        from conftest import missing

        missing(f"{error}; .ci/run installs it")

    async def run() -> tuple[list[int], str]:
        good = RedisTransport(server.url, timeout=1.0, password="s3cret-relay-password")
        bad = RedisTransport(server.url, timeout=1.0)
        try:
            counts = await good.publish([("canvas:{p}", b"x")])
            try:
                await bad.publish([("canvas:{p}", b"x")])
                refused = ""
            except Exception as error:  # the relay treats any transport error alike
                refused = type(error).__name__
            return counts, refused
        finally:
            await good.close()
            await bad.close()

    try:
        counts, refused = asyncio.run(run())
    finally:
        server.stop()
    assert counts == [0] and refused == "AuthenticationError"
