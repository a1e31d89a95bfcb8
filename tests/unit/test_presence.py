"""Presence: the roster as plain data, then the hub that turns it into messages."""

from __future__ import annotations

import json
from typing import Any

from canvas_sync.connection import Connection
from canvas_sync.metrics import Metrics
from canvas_sync.presence import PresenceHub, Roster
from canvas_sync.projects import Project
from hypothesis import given
from hypothesis import strategies as st

# --- the roster ---------------------------------------------------------------------------


def test_a_local_client_sets_changes_and_leaves() -> None:
    roster = Roster("me", ttl=15)
    assert roster.set("p", "c1", {"x": 1}, now=0.0, sub="ann")
    assert not roster.set("p", "c1", {"x": 1}, now=1.0)  # the same presence: no news, but seen
    assert roster.set("p", "c1", {"x": 2}, now=2.0)
    assert roster.snapshot("p") == [{"client": "c1", "state": {"x": 2}}]  # sub kept only with the change
    assert roster.local("p") == {"c1": {"x": 2}}
    assert roster.leave("p", "c1") and not roster.leave("p", "c1")
    assert roster.projects() == [] and roster.snapshot("p") == []


def test_snapshot_is_sorted_and_names_the_subject() -> None:
    roster = Roster("me")
    roster.set("p", "b", {"n": 2}, 0.0, sub="bob")
    roster.set("p", "a", {"n": 1}, 0.0, replica="other", sub="ann")
    assert roster.snapshot("p") == [
        {"client": "a", "state": {"n": 1}, "sub": "ann"},
        {"client": "b", "state": {"n": 2}, "sub": "bob"},
    ]
    assert roster.snapshot("p", exclude="a") == [{"client": "b", "state": {"n": 2}, "sub": "bob"}]
    assert roster.local("p") == {"b": {"n": 2}}  # "a" is another replica's


def test_only_remote_clients_expire() -> None:
    roster = Roster("me", ttl=15)
    roster.set("p", "mine", {}, 0.0)
    roster.set("p", "theirs", {}, 0.0, replica="r2")
    roster.set("p", "fresh", {}, 10.0, replica="r2")
    assert roster.expire(now=16.0) == [("p", "theirs")]
    assert sorted(e["client"] for e in roster.snapshot("p")) == ["fresh", "mine"]


def test_a_refresh_heals_lost_leaves_and_lost_updates() -> None:
    roster = Roster("me")
    roster.set("p", "c1", {"x": 1}, 0.0, replica="r2")
    roster.set("p", "c2", {"x": 1}, 0.0, replica="r2")
    roster.set("p", "c9", {"x": 1}, 0.0, replica="r3")
    gone, changed = roster.refresh("p", "r2", {"c2": {"x": 5}, "c3": {"x": 0}}, now=1.0)
    assert gone == ["c1"] and changed == ["c2", "c3"]
    assert sorted(e["client"] for e in roster.snapshot("p")) == ["c2", "c3", "c9"]  # r3's client untouched


def test_a_replica_gone_takes_every_client_of_it_on_every_project() -> None:
    roster = Roster("me")
    roster.set("p", "c1", {}, 0.0, replica="r2")
    roster.set("q", "c2", {}, 0.0, replica="r2")
    roster.set("q", "c3", {}, 0.0, replica="r3")
    assert sorted(roster.replica_gone("r2")) == [("p", "c1"), ("q", "c2")]
    assert roster.projects() == ["q"]


@given(st.lists(st.tuples(st.sampled_from("pq"), st.sampled_from("abc"), st.booleans()), max_size=40))
def test_the_roster_holds_exactly_who_joined_and_did_not_leave(events: list[tuple[str, str, bool]]) -> None:
    roster, here = Roster("me"), set()
    for project, client, joins in events:
        if joins:
            roster.set(project, client, {"c": client}, 0.0)
            here.add((project, client))
        else:
            assert roster.leave(project, client) == ((project, client) in here)
            here.discard((project, client))
    assert {(p, e["client"]) for p in "pq" for e in roster.snapshot(p)} == here
    assert set(roster.projects()) == {p for p, _ in here}  # an empty project is not kept


# --- the hub ------------------------------------------------------------------------------


class Relay:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def publish_presence(self, project: str, client: str, presence: Any, sub: str | None = None) -> None:
        self.sent.append(("one", project, client, presence))

    def publish_presences(self, project: str, clients: dict[str, Any]) -> None:
        self.sent.append(("all", project, clients))


def hub_with(*clients: str) -> tuple[PresenceHub, Project, dict[str, Connection], Relay]:
    project, relay = Project("p"), Relay()
    conns = {}
    for name in clients:
        conn = Connection(64)
        conn.client_id = name
        project.subscribe(conn)
        conns[name] = conn
    hub = PresenceHub(Roster("me"), lambda pid: project if pid == "p" else None, Metrics(), relay)
    return hub, project, conns, relay


def got(conn: Connection) -> list[dict[str, Any]]:
    return [json.loads(text) for text in conn.outbox.take()]


def test_a_fast_cursor_goes_out_once_per_flush_the_latest_only_to_the_others() -> None:
    hub, project, conns, relay = hub_with("ann", "bob")
    for x in range(5):
        hub.set(project, conns["ann"], {"x": x}, now=float(x))
    assert got(conns["bob"]) == []  # nothing until the flush
    hub.flush()
    assert got(conns["bob"]) == [{"op": "presence", "client": "ann", "state": {"x": 4}}]
    assert got(conns["ann"]) == []  # never echoed to its sender
    assert relay.sent == [("one", "p", "ann", {"x": 4})]
    hub.flush()
    assert got(conns["bob"]) == [] and len(relay.sent) == 1  # nothing new: nothing sent


def test_leaving_tells_the_others_and_the_relay_once() -> None:
    hub, project, conns, relay = hub_with("ann", "bob")
    hub.set(project, conns["ann"], {"x": 1}, 0.0)
    hub.left(project, conns["ann"])
    hub.flush()  # the pending update of a client that left goes nowhere
    assert got(conns["bob"]) == [{"op": "presence_leave", "client": "ann"}]
    assert relay.sent == [("one", "p", "ann", None)]
    hub.left(project, conns["ann"])
    assert got(conns["bob"]) == [] and len(relay.sent) == 1
    hub.left(project, conns["bob"])  # never set a presence: nobody to tell
    assert relay.sent == [("one", "p", "ann", None)]


def test_relayed_presence_reaches_local_clients_and_expires() -> None:
    hub, _, conns, relay = hub_with("bob")
    hub.relayed("p", "r2", "zoe", {"x": 1}, "zoe-sub", now=0.0)
    hub.relayed("p", "r2", "zoe", {"x": 1}, "zoe-sub", now=1.0)  # the same again: no message
    assert got(conns["bob"]) == [{"op": "presence", "client": "zoe", "state": {"x": 1}, "sub": "zoe-sub"}]
    hub.relayed("elsewhere", "r2", "kim", {"x": 1}, None, now=0.0)  # a project not held: ignored
    assert hub.snapshot("elsewhere") == []
    hub.refresh(now=100.0)
    assert got(conns["bob"]) == [{"op": "presence_leave", "client": "zoe"}]
    assert relay.sent == []  # no local presence to refresh


def test_a_relayed_full_list_and_a_silent_replica_heal_what_was_lost() -> None:
    hub, _, conns, _r = hub_with("bob")
    hub.relayed("p", "r2", "zoe", {"x": 1}, None, 0.0)
    hub.relayed("p", "r2", "kim", {"x": 1}, None, 0.0)
    got(conns["bob"])
    hub.relayed_all("p", "r2", {"kim": {"x": 2}}, 1.0)  # zoe's leave was lost, kim's update too
    assert got(conns["bob"]) == [
        {"op": "presence_leave", "client": "zoe"},
        {"op": "presence", "client": "kim", "state": {"x": 2}},
    ]
    hub.replica_gone("r2")
    assert got(conns["bob"]) == [{"op": "presence_leave", "client": "kim"}]


def test_refresh_relays_every_local_presence_of_held_projects() -> None:
    hub, project, conns, relay = hub_with("ann", "bob")
    hub.set(project, conns["ann"], {"x": 1}, 0.0)
    hub.set(project, conns["bob"], {"y": 2}, 0.0)
    hub.refresh(now=1.0)
    assert relay.sent == [("all", "p", {"ann": {"x": 1}, "bob": {"y": 2}})]
