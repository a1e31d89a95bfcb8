"""The outbox: a newer state replaces one still waiting, deletes keep their place."""

from __future__ import annotations

import json

from canvas_sync.outbox import Outbox, batch
from hypothesis import given
from hypothesis import strategies as st

# ("upsert", key, version) | ("delete", key, 0) | ("ack", None, n)
_messages = st.lists(
    st.tuples(st.sampled_from(["upsert", "delete", "ack"]), st.sampled_from(["a", "b", "c"]), st.integers(0, 99)),
    max_size=60,
)


def _put(outbox: Outbox, message: tuple[str, str, int]) -> bool:
    op, key, n = message
    text = json.dumps([op, key, n])
    if op == "upsert":
        return outbox.put(text, key, latest=True)
    if op == "delete":
        return outbox.put(text, key)
    return outbox.put(text)


def _client(texts: list[str]) -> tuple[dict[str, object], list[int]]:
    """What a client ends with: each object's state, and the acks in the order seen."""
    objects: dict[str, object] = {}
    acks = []
    for op, key, n in (json.loads(t) for t in texts):
        if op == "upsert":
            objects[key] = n
        elif op == "delete":
            objects[key] = "deleted"
        else:
            acks.append(n)
    return objects, acks


@given(_messages, st.lists(st.integers(1, 60), max_size=4))
def test_the_client_ends_in_the_same_state_with_fewer_messages(
    messages: list[tuple[str, str, int]], takes: list[int]
) -> None:
    outbox, sent = Outbox(limit=1000), []
    for i, message in enumerate(messages):
        assert _put(outbox, message)
        if i in takes:  # the writer drained part way
            sent += outbox.take()
    sent += outbox.take()
    everything = [json.dumps(list(m)) for m in messages]
    assert _client(sent) == _client(everything)
    assert len(sent) <= len(everything)
    assert [t for t in sent if '"upsert"' not in t] == [t for t in everything if '"upsert"' not in t]


def test_a_state_after_a_delete_waits_behind_it() -> None:
    outbox = Outbox(limit=10)
    outbox.put("up1", "a", latest=True)
    outbox.put("del", "a")
    outbox.put("up2", "a", latest=True)
    outbox.put("up3", "a", latest=True)
    assert outbox.take() == ["up1", "del", "up3"] and outbox.replaced == 1


def test_a_full_outbox_refuses_new_messages_but_takes_newer_states() -> None:
    outbox = Outbox(limit=2)
    assert outbox.put("up1", "a", latest=True) and outbox.put("ack")
    assert not outbox.put("up1", "b", latest=True) and not outbox.put("ack2")
    assert outbox.put("up2", "a", latest=True)  # replaces: the line does not grow
    assert len(outbox) == 2 and outbox.take() == ["up2", "ack"] and len(outbox) == 0


def test_a_batch_is_one_message_or_an_array_of_them() -> None:
    assert batch(['{"op":"ack"}']) == '{"op":"ack"}'
    assert json.loads(batch(['{"op":"ack"}', '{"op":"pong"}'])) == [{"op": "ack"}, {"op": "pong"}]
