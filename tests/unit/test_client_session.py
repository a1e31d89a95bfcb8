"""The client's core (``canvas_sync.client.session``): the local copy, the unsaved changes,
the replay; then a model test against the real service in this process.

The model test is the one that matters: hypothesis interleaves local edits, other
clients' edits, acks and ``saved`` arriving late, sockets cut and replicas dying with
unsaved state, and at the end the local copy must equal the server's, the store must hold
it, and every change the client was told was accepted must be in it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections import deque
from typing import Any

import pytest
from canvas_sync.admission import Admitted
from canvas_sync.auth import Role
from canvas_sync.client.session import (
    V1,
    V2,
    V3,
    Answered,
    Backoff,
    Change,
    Changed,
    ClientError,
    PresenceChanged,
    Refused,
    Saved,
    ServerError,
    Session,
    Synced,
    Throttled,
    messages_of,
    offered,
    renew_in,
    token_expiry,
    version_of,
)
from canvas_sync.config import load_settings
from canvas_sync.connection import Connection
from canvas_sync.service import CanvasService, Fetch
from canvas_sync.store import MemoryStore
from canvas_sync.wiring import build
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.helpers import InProcessClient

# --- the core alone, against a hand-written server ------------------------------------------


def synced(version: int = 3, objects: list[dict[str, Any]] | None = None) -> Session:
    session = Session("p")
    session.opened({3: V3, 2: V2, 1: V1}[version])
    session.receive({"op": "snapshot", "project": "p", "replica": "a", "objects": objects or [], "presence": []})
    return session


def ack(message: dict[str, Any], seq: int, stamp: str | None = None) -> dict[str, Any]:
    return {"op": "ack", "req": message["req"], "seq": seq, "stamp": stamp or f"1.{seq}.a"}


def test_nothing_goes_out_before_the_snapshot_and_the_copy_changes_at_once() -> None:
    session = Session("p")
    session.opened(V3)
    _, changed = session.create({"id": "r1", "type": "rect", "x": 1})
    assert changed == Changed({"r1": {"id": "r1", "type": "rect", "x": 1}})
    assert session.to_send() == []
    events = session.receive({"op": "snapshot", "objects": [{"id": "r0", "type": "rect"}], "presence": []})
    assert Synced(None) in events and set(session.objects) == {"r0", "r1"}
    (sent,) = session.to_send()
    assert sent == {"op": "create", "req": "1", "object": {"id": "r1", "type": "rect", "x": 1}}
    assert session.to_send() == []  # once per connection


def test_a_server_event_never_undoes_a_property_still_waiting_for_its_ack() -> None:
    session = synced(objects=[{"id": "r", "type": "rect", "x": 0, "y": 0}])
    session.update("r", {"x": 5})
    (sent,) = session.to_send()
    session.receive({"op": "upsert", "object": {"id": "r", "type": "rect", "x": 9, "y": 7}})
    assert session.objects["r"] == {"id": "r", "type": "rect", "x": 5, "y": 7}  # y is the server's, x ours
    session.receive(ack(sent, 1, "4.0.a"))
    assert session.objects["r"]["x"] == 5
    # That upsert may have been older or newer than this change: it is asked for again.
    assert session.resend_due and session.to_send() == [{**sent, "stamp": "4.0.a"}]
    session.receive({"op": "upsert", "object": {"id": "r", "type": "rect", "x": 5, "y": 7}})  # the echo
    session.receive(ack(sent, 2, "4.0.a"))
    assert session.objects["r"] == {"id": "r", "type": "rect", "x": 5, "y": 7}
    session.receive({"op": "upsert", "object": {"id": "r", "type": "rect", "x": 9, "y": 7}})
    assert session.objects["r"]["x"] == 9  # once acked, the server's events rule it again
    session.update("r", {"x": 6})
    (sent,) = session.to_send()
    session.receive(ack(sent, 3))  # nothing came meanwhile: nothing to ask again
    assert not session.resend_due and session.to_send() == [] and session.objects["r"]["x"] == 6


def test_an_echo_of_a_check_does_not_cast_doubt_on_the_next_change_of_a_drag() -> None:
    session = synced(objects=[{"id": "r", "type": "rect", "x": 0}])
    session.update("r", {"x": 1})
    (first,) = session.to_send()
    session.receive({"op": "upsert", "object": {"id": "r", "type": "rect", "x": 0, "y": 1}})  # someone else
    session.receive(ack(first, 1, "1.0.a"))
    (check,) = session.to_send()  # asked again, with its stamp
    session.update("r", {"x": 2})
    (second,) = session.to_send()
    session.receive({"op": "upsert", "object": {"id": "r", "type": "rect", "x": 1, "y": 1}})  # the check's echo
    session.receive(ack(check, 2, "1.0.a"))
    session.receive(ack(second, 3, "2.0.a"))
    assert not session.resend_due and session.to_send() == []  # no check of the check's neighbours
    assert session.objects["r"] == {"id": "r", "type": "rect", "x": 2, "y": 1}


def test_a_refused_change_leaves_the_copy_and_its_caller_hears_why() -> None:
    session = synced(objects=[{"id": "r", "type": "rect", "x": 0}])
    change, _ = session.update("r", {"x": 5})
    (sent,) = session.to_send()
    events = session.receive({"op": "error", "req": sent["req"], "code": "forbidden", "message": "viewer"})
    (refused,) = [e for e in events if isinstance(e, Refused)]
    assert refused.change is change and refused.error.code == "forbidden"
    assert session.objects["r"]["x"] == 0 and session.unsaved == 0


def test_v3_keeps_changes_until_saved_and_replays_acked_ones_with_their_stamp() -> None:
    session = synced()
    session.create({"id": "a", "type": "rect"})
    session.update("a", {"x": 1})
    session.delete("a")
    first, second, _third = session.to_send()
    session.receive(ack(first, 1, "10.0.a"))
    session.receive(ack(second, 2, "11.0.a"))
    assert session.unsaved == 3
    assert [type(e) for e in session.receive({"op": "saved", "seq": 1})] == [Saved]
    assert session.unsaved == 2
    session.receive({"op": "saved", "seq": 1})  # never backwards, never twice
    assert session.unsaved == 2
    session.closed()  # the third was in flight: it goes again, marked as a retry
    session.opened(V3)
    session.receive({"op": "snapshot", "objects": [], "presence": []})
    assert session.objects == {}  # the delete still overlays the copy
    replay = session.to_send()
    assert replay == [
        {"op": "update", "req": "2", "id": "a", "props": {"x": 1}, "stamp": "11.0.a"},
        {"op": "delete", "req": "3", "id": "a", "retry": True},
    ]
    session.receive({"op": "delete", "id": "a"})  # the echo before a replay's ack
    session.receive(ack(replay[0], 1, "11.0.a"))
    events = session.receive(ack(replay[1], 2, "12.0.b"))
    assert next(e for e in events if isinstance(e, Answered)).ack["stamp"] == "12.0.b"
    session.receive({"op": "saved", "seq": 2})
    assert session.unsaved == 0 and session.objects == {}


def test_a_replayed_change_that_lost_shows_the_newer_state_the_server_sent_before_its_ack() -> None:
    session = synced(objects=[{"id": "r", "type": "rect", "x": 0}])
    session.update("r", {"x": 1})
    (sent,) = session.to_send()
    session.receive(ack(sent, 1, "5.0.a"))
    session.closed()
    session.opened(V3)
    session.receive({"op": "snapshot", "objects": [{"id": "r", "type": "rect", "x": 0}], "presence": []})
    assert session.objects["r"]["x"] == 1  # replaying: still ours on top
    (replay,) = session.to_send()
    session.receive({"op": "upsert", "object": {"id": "r", "type": "rect", "x": 7}})  # someone newer won
    events = session.receive(ack(replay, 1, "5.0.a"))
    assert not [e for e in events if isinstance(e, Answered)]  # its caller had its answer long ago
    assert session.objects["r"] == {"id": "r", "type": "rect", "x": 7}


def test_older_servers_count_an_ack_as_saved_and_a_landed_resend_as_done() -> None:
    session = synced(version=2)
    session.create({"id": "a", "type": "rect"})
    session.create({"id": "b", "type": "rect"})
    first, _second = session.to_send()
    session.receive({"op": "ack", "req": first["req"]})
    assert session.unsaved == 1
    session.closed()
    session.opened(V2)
    session.receive({"op": "snapshot", "objects": [{"id": "a", "type": "rect"}, {"id": "b", "type": "rect"}]})
    (resent,) = session.to_send()
    assert resent["retry"] is True and "stamp" not in resent
    events = session.receive({"op": "error", "req": resent["req"], "code": "conflict", "message": "exists"})
    assert [type(e) for e in events if isinstance(e, Answered | Refused)] == [Answered]
    assert session.unsaved == 0 and set(session.objects) == {"a", "b"}


def test_a_rate_limited_change_is_sent_again_not_refused() -> None:
    session = synced()
    change, _ = session.create({"id": "a", "type": "rect"})
    (sent,) = session.to_send()
    events = session.receive({"op": "error", "req": sent["req"], "code": "rate_limited", "message": "slow"})
    assert [type(e) for e in events] == [Throttled] and not change.answered and "a" in session.objects
    assert session.resend_due and session.to_send() == [sent]


def test_presence_latest_wins_and_goes_again_after_a_reconnect() -> None:
    session = synced()
    session.set_presence({"cursor": [1, 1]})
    assert session.take_presence(100.0) == {"op": "presence", "state": {"cursor": [1, 1]}}
    session.set_presence({"cursor": [2, 2]})
    session.set_presence({"cursor": [3, 3]})
    assert session.presence_due(100.01) == pytest.approx(0.04)
    assert session.take_presence(100.01) is None
    assert session.take_presence(100.05) == {"op": "presence", "state": {"cursor": [3, 3]}}
    assert session.presence_due(100.06) is None
    session.receive({"op": "presence", "client": "c1", "state": {"name": "Ann"}})
    assert session.others == {"c1": {"name": "Ann"}}
    assert session.closed() == [PresenceChanged("c1", None)]
    session.opened(V3)
    assert session.presence_due(200.0) is None  # not before the snapshot
    session.receive({"op": "snapshot", "objects": [], "presence": [{"client": "c2", "state": {"name": "Bo"}}]})
    assert session.others == {"c2": {"name": "Bo"}}
    assert session.take_presence(200.0) == {"op": "presence", "state": {"cursor": [3, 3]}}
    session.receive({"op": "presence_leave", "client": "c2"})
    assert session.others == {}


def test_replies_errors_without_req_and_frames() -> None:
    session = synced()
    assert session.receive({"op": "pong", "req": "r9"})[0].req == "r9"  # type: ignore[union-attr]
    (event,) = session.receive({"op": "error", "code": "rate_limited", "message": "slow down"})
    assert isinstance(event, ServerError) and event.error.code == "rate_limited"
    assert messages_of('[{"op":"a"},{"op":"b"}]') == [{"op": "a"}, {"op": "b"}]
    assert messages_of('{"op":"a"}') == [{"op": "a"}]
    assert version_of(V3) == 3 and version_of(V2) == 2 and version_of(None) == 1
    assert offered("t") == [V3, V2, V1, "canvas-sync.bearer.t"]
    with pytest.raises(ClientError):
        session.create({"type": "rect"})


def test_backoff_is_jittered_doubles_to_the_cap_and_resets_after_a_stable_connection() -> None:
    backoff = Backoff(1.0, 30.0, 10.0, rng=random.Random(1))
    ceilings = [1, 2, 4, 8, 16, 30, 30]
    delays = [backoff.next_delay() for _ in ceilings]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    backoff.connected_for(3.0)
    assert backoff.attempt == len(ceilings)
    backoff.connected_for(10.0)
    assert backoff.attempt == 0
    spread = [Backoff(rng=random.Random(seed)).next_delay() for seed in range(200)]
    assert max(spread) - min(spread) > 0.8  # a herd is spread over the whole first second


def jwt(exp: float) -> str:
    body = base64.urlsafe_b64encode(json.dumps({"sub": "s", "exp": exp}).encode()).decode().rstrip("=")
    return f"e30.{body}.sig"


def test_tokens_are_renewed_before_they_expire() -> None:
    now = 1_000_000.0
    assert token_expiry(jwt(now + 100)) == now + 100
    assert renew_in(jwt(now + 3600), now) == pytest.approx(2700)  # at 75% of its life, earlier than 30 s before
    assert renew_in(jwt(now + 100), now) == pytest.approx(70)  # 30 s before, earlier than 75%
    assert renew_in(jwt(now + 40), now) == pytest.approx(10)
    assert renew_in(jwt(now + 8), now) == pytest.approx(6)  # shorter than the margin: at 75%, not in a loop
    assert renew_in(jwt(now - 1), now) == 0.0
    assert token_expiry("not a jwt") is None and renew_in("x.y.z") is None


# --- the model test: the real service in this process ---------------------------------------


PRIVATE = ["a0", "a1", "a2", "a3"]
"""Objects only this client edits: at the end each must be exactly what its accepted changes made."""
SHARED = ["s0", "s1"]
"""Objects another client edits too: the copy must still end equal to the server's."""
PROPS = st.dictionaries(st.sampled_from(["x", "y", "fill"]), st.one_of(st.none(), st.integers(0, 9)), min_size=1)


class Replica:
    """One in-process service on the shared store: no save thread (the test runs passes), so
    what it holds unsaved dies with it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, store: MemoryStore, name: str) -> None:
        values: dict[str, Any] = {"replica_id": name, "autosave_interval": 3600, "sync_interval": 3600, "auth": "off"}
        self.svc: CanvasService = build(load_settings(**values), MemoryStore(name, shared=store))
        self.svc.autosave.start = lambda: None  # type: ignore[method-assign]
        self.loop = loop
        loop.run_until_complete(self._start())

    async def _start(self) -> None:
        await self.svc.start()
        while not self.svc.ready:
            await asyncio.sleep(0.001)

    def save(self) -> None:
        """One auto-save pass, then the saved acks it allows."""
        self.svc.autosave.run_pass()
        self.svc.saved_acks.send()

    def die(self) -> None:
        """SIGKILL: no final flush; its tasks stop."""
        for task in self.svc._loops:
            task.cancel()
        self.loop.run_until_complete(asyncio.sleep(0))

    def views(self, project: str) -> dict[str, dict[str, Any]]:
        held = self.svc.projects.get(project)
        assert held is not None
        return {oid: json.loads(text) for oid, text in held.views.items()}


class Link:
    """One socket between a Session and an in-process replica, frames queued both ways so the
    test decides when each arrives; replies queue behind what waits, as on a real socket."""

    def __init__(self, replica: Replica, session: Session, project: str) -> None:
        self.replica, self.session = replica, session
        admitted = Admitted(project, None, Role.EDITOR, None)
        self.conn: Connection = replica.loop.run_until_complete(replica.svc.open(admitted, V3))
        session.opened(V3)
        self.to_server: deque[str] = deque()
        self.to_client: deque[str] = deque(self.conn.outbox.take())

    def pump(self) -> None:
        for message in self.session.to_send():
            self.to_server.append(json.dumps(message))
        presence = self.session.take_presence(time.monotonic() + 3600)
        if presence is not None:
            self.to_server.append(json.dumps(presence))

    def to_server_one(self) -> None:
        text = self.to_server.popleft()
        reply = self.replica.svc.receive(self.conn, text)
        if isinstance(reply, Fetch):  # as the socket's reader: read the object, then again
            self.replica.loop.run_until_complete(self.replica.svc.fetch(self.conn.project, reply.object_id))
            reply = self.replica.svc.receive(self.conn, text, fetched=True)
        if isinstance(reply, str):
            if len(self.conn.outbox):
                self.conn.send(reply, self.conn.ack_key)  # as Connection.reply: behind what is queued
            else:
                self.to_client.append(reply)

    def flush(self) -> None:
        """The writer's wake: what waited in the outbox goes onto the wire."""
        self.to_client.extend(self.conn.outbox.take())

    def to_client_one(self) -> list[Any]:
        events = []
        for message in messages_of(self.to_client.popleft()):
            events.extend(self.session.receive(message))
        return events

    def cut(self) -> None:
        self.replica.svc.close(self.conn)
        self.session.closed()


def test_an_ack_behind_a_newer_upsert_is_checked_again() -> None:
    """The outbox lets a newer upsert take the place of an older one still waiting, ahead of
    this client's ack: the upsert holds a later change, and applying the acked one on top
    would hide it. The client asks again (a replay with the stamp) and gets the state now."""
    loop = asyncio.new_event_loop()
    replica = Replica(loop, MemoryStore("table"), "r1")
    try:
        session = Session("p")
        link = Link(replica, session, "p")
        other = loop.run_until_complete(InProcessClient(replica.svc, "p").open())
        other.send({"op": "create", "object": {"id": "s0", "type": "rect", "x": 0}})
        link.flush()
        while link.to_client:
            link.to_client_one()
        other.send({"op": "update", "id": "s0", "props": {"y": 1}})  # an upsert waits for this client
        session.update("s0", {"x": 5})
        link.pump()
        link.to_server_one()  # its ack waits behind that upsert
        other.send({"op": "update", "id": "s0", "props": {"x": 7}})  # takes the waiting upsert's place
        link.flush()
        while link.to_client:
            link.to_client_one()
        link.pump()
        assert [json.loads(t).get("stamp") is not None for t in link.to_server] == [True]  # asked again
        link.to_server_one()
        link.flush()
        while link.to_client:
            link.to_client_one()
        assert session.objects["s0"] == replica.views("p")["s0"] == {"id": "s0", "type": "rect", "x": 7, "y": 1}
    finally:
        replica.die()
        loop.close()


def deliver(link: Link, replica: Replica | None = None) -> None:
    """Everything both ways, and (with ``replica``) a save pass and its saved acks."""
    for _ in range(3):
        link.pump()
        while link.to_server:
            link.to_server_one()
        if replica is not None:
            replica.save()
        link.flush()
        while link.to_client:
            link.to_client_one()


def replay_to_a_replica_behind_the_table(op: str) -> tuple[dict[str, Any], dict[str, Any], Session]:
    """A saves ``x``; the client changes it (acked, unsaved); A dies; the client replays to B,
    which held the project before A's save and has not pulled it yet; then B pulls."""
    loop = asyncio.new_event_loop()
    store = MemoryStore("table")
    a, b = Replica(loop, store, "ra"), Replica(loop, store, "rb")
    try:
        loop.run_until_complete(InProcessClient(b.svc, "p").open())  # b holds the project (empty)
        session = Session("p")
        link = Link(a, session, "p")
        session.create({"id": "x", "type": "rect", "v": 0})
        deliver(link, a)
        assert session.unsaved == 0  # in the table; b has not read it
        session.update("x", {"v": 1}) if op == "update" else session.delete("x")
        deliver(link)
        assert session.unsaved == 1  # acked, not saved
        a.die()
        session.closed()
        link = Link(b, session, "p")
        deliver(link)  # the replay, answered by a replica that does not know x yet
        b.svc.puller.catch_up("p")
        loop.run_until_complete(b.svc.puller.pass_once())  # now it does
        deliver(link, b)
        deliver(link, b)  # the retried replay, if any
        table = {s.id: s.view() for s in store.load_project("p") if s.is_alive}
        return b.views("p"), table, session
    finally:
        a.die()
        b.die()
        loop.close()


def test_a_replayed_update_waits_for_a_replica_behind_the_table() -> None:
    """The replica reads the object from the table before it applies the replay (and the
    client would send it again after ``not_found`` all the same)."""
    memory, table, session = replay_to_a_replica_behind_the_table("update")
    assert memory == table == session.objects == {"x": {"id": "x", "type": "rect", "v": 1}}
    assert session.unsaved == 0


def test_a_replayed_delete_to_a_replica_behind_the_table_is_kept() -> None:
    memory, table, session = replay_to_a_replica_behind_the_table("delete")
    assert memory == table == session.objects == {}


class ClientModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = MemoryStore("table")
        self.replicas = 0
        self.replica = self._new_replica()
        self.session = Session("p")
        self.link: Link | None = Link(self.replica, self.session, "p")
        self.other = self._other()
        self.made: list[Change] = []
        self.accepted: set[int] = set()
        self.answered: set[int] = set()
        self.kills = 0
        self.log: list[str] = []

    def _new_replica(self) -> Replica:
        self.replicas += 1
        return Replica(self.loop, self.store, f"r{self.replicas}")

    def _other(self) -> InProcessClient:
        return self.loop.run_until_complete(InProcessClient(self.replica.svc, "p").open())

    def _record(self, events: list[Any]) -> None:
        for event in events:
            self.log.append(repr(event)[:300])
            if isinstance(event, Answered):
                self.accepted.add(id(event.change))
                self.answered.add(id(event.change))
            elif isinstance(event, Refused):
                self.answered.add(id(event.change))

    # --- this client ------------------------------------------------------------------------
    # Private objects get only edits that make sense on the local copy (create what is not
    # there, change what is), as an app's user makes them: then each one must be accepted,
    # and the end state is exactly theirs. Shared ones get anything, refusals included.

    @rule(oid=st.sampled_from(PRIVATE), x=st.integers(0, 9), props=PROPS)
    def edit_private(self, oid: str, x: int, props: dict[str, Any]) -> None:
        if oid not in self.session.objects:
            self.made.append(self.session.create({"id": oid, "type": "rect", "x": x})[0])
        elif x < 7:
            self.made.append(self.session.update(oid, props)[0])
        else:
            self.made.append(self.session.delete(oid)[0])

    @rule(oid=st.sampled_from(SHARED), x=st.integers(0, 9), props=PROPS, kind=st.sampled_from(["c", "u", "d"]))
    def edit_shared(self, oid: str, x: int, props: dict[str, Any], kind: str) -> None:
        if kind == "c":
            self.made.append(self.session.create({"id": oid, "type": "rect", "x": x})[0])
        elif kind == "u":
            self.made.append(self.session.update(oid, props)[0])
        else:
            self.made.append(self.session.delete(oid)[0])

    @rule(x=st.integers(0, 99))
    def presence(self, x: int) -> None:
        self.session.set_presence({"cursor": [x, x]})

    @invariant()
    def private_objects_show_every_change_made(self) -> None:
        """Whatever was acked, saved, lost with a replica or still in flight: the copy shows it."""
        mine = {k: v for k, v in self.session.objects.items() if k in PRIVATE}
        assert mine == self._intended(every=True)

    # --- the wire ---------------------------------------------------------------------------

    @precondition(lambda self: self.link is not None)
    @rule(n=st.integers(1, 4))
    def send(self, n: int) -> None:
        assert self.link is not None
        self.link.pump()
        for _ in range(min(n, len(self.link.to_server))):
            self.link.to_server_one()

    @precondition(lambda self: self.link is not None)
    @rule(n=st.integers(1, 4), flush=st.booleans())
    def receive(self, n: int, flush: bool) -> None:
        assert self.link is not None
        if flush:
            self.link.flush()
        for _ in range(min(n, len(self.link.to_client))):
            self._record(self.link.to_client_one())

    @rule()
    def save(self) -> None:
        self.replica.save()

    @precondition(lambda self: self.link is not None)
    @rule()
    def cut(self) -> None:
        assert self.link is not None
        self.link.cut()
        self.link = None

    @precondition(lambda self: self.kills < 3)
    @rule()
    def kill(self) -> None:
        """The replica dies with whatever it held unsaved; the next one loads from the table."""
        self.kills += 1
        if self.link is not None:
            self.session.closed()
            self.link = None
        self.replica.die()
        self.replica = self._new_replica()
        self.other = self._other()

    @precondition(lambda self: self.link is None)
    @rule()
    def reconnect(self) -> None:
        self.link = Link(self.replica, self.session, "p")

    # --- another client ---------------------------------------------------------------------

    @rule(oid=st.sampled_from(SHARED), props=PROPS, kind=st.sampled_from(["create", "update", "delete"]))
    def other_edits(self, oid: str, props: dict[str, Any], kind: str) -> None:
        message: dict[str, Any] = {"op": kind, "id": oid}
        if kind == "create":
            message = {"op": "create", "object": {"id": oid, "type": "ellipse", "y": 1}}
        elif kind == "update":
            message["props"] = props
        self.other.send(message)
        self.other.received()  # what it was sent: not looked at

    # --- the end ----------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            self._settle()
            server = self.replica.views("p")
            assert self.session.objects == server
            table = {s.id: s.view() for s in self.store.load_project("p") if s.is_alive}
            assert table == server, "the table must hold what was saved"
            assert all(id(c) in self.answered for c in self.made), "every change gets an answer"
            refused = [c for c in self.made if c.id in PRIVATE and id(c) not in self.accepted]
            assert not refused, f"a change that made sense was refused:\n{self._history()}"
            assert {k: v for k, v in server.items() if k in PRIVATE} == self._intended(), self._history()
        finally:
            self.replica.die()
            self.loop.close()

    def _settle(self) -> None:
        """Everything delivered, reconnected if need be, saved, until nothing is unsaved."""
        if self.link is None:
            self.reconnect()
        assert self.link is not None
        for _ in range(50):
            self.link.pump()
            while self.link.to_server:
                self.link.to_server_one()
            self.replica.save()
            self.link.flush()
            while self.link.to_client:
                self._record(self.link.to_client_one())
            if not self.session.unsaved and not self.link.to_server:
                return
        raise AssertionError(f"{self.session.unsaved} changes never saved: {self.session.changes}")

    def _history(self) -> str:
        return (
            "\n".join(self.log)
            + "\n"
            + "\n".join(
                f"{c.req} {c.op} {c.id} {c.body} {'accepted' if id(c) in self.accepted else 'refused'}"
                for c in self.made
            )
        )

    def _intended(self, every: bool = False) -> dict[str, dict[str, Any]]:
        """The private objects as the accepted changes (``every``: all changes) make them, in order."""
        state: dict[str, dict[str, Any]] = {}
        for change in self.made:
            if change.id not in PRIVATE or not (every or id(change) in self.accepted):
                continue
            if change.op == "create":
                state[change.id] = change.body
            elif change.op == "delete":
                state.pop(change.id, None)
            else:
                assert change.id in state, (
                    f"an update of {change.id} was accepted before any create:\n{self._history()}"
                )
                obj = dict(state[change.id])
                for name, value in change.body.items():
                    if value is None:
                        obj.pop(name, None)
                    else:
                        obj[name] = value
                state[change.id] = obj
        return state


ClientModel.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_client_against_the_service = ClientModel.TestCase
