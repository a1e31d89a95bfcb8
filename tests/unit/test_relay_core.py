"""The relay's decisions (relay/core.py) as plain functions."""

from __future__ import annotations

import pytest
from canvas_sync.relay import (
    HEARTBEAT_CHANNEL,
    Kind,
    Message,
    Receiver,
    Sequencer,
    Verdict,
    channel,
    decode,
    encode,
)
from canvas_sync.relay.core import BadMessage, project_of
from hypothesis import given
from hypothesis import strategies as st

# --- decisions --------------------------------------------------------------------------


def test_channels_carry_the_project_in_a_hash_tag() -> None:
    assert channel("team-1:board.2") == "canvas:{team-1:board.2}"
    assert project_of(channel("team-1:board.2")) == "team-1:board.2"
    assert project_of(HEARTBEAT_CHANNEL) is None


def test_messages_round_trip_and_foreign_ones_are_refused() -> None:
    message = Message(
        Kind.OBJECT,
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


def test_deletes_and_objects_carry_the_generation() -> None:
    deleted = Message(Kind.DELETED, "r1", "e", "p", gen=3)
    assert decode(encode(deleted)) == deleted and b'"g":3' in encode(deleted)
    assert b'"g"' not in encode(Message(Kind.OBJECT, "r1", "e", "p", 1, doc={}))  # 0 is left out
    with pytest.raises(BadMessage):
        decode(b'{"k":"x","r":"r1","e":"e","g":"3"}')
