"""Parsing and validating client frames; canonical encoding."""

from __future__ import annotations

import json

import pytest
from canvas_sync import protocol
from canvas_sync.protocol import Create, Delete, Ping, ProtocolError, Update
from hypothesis import given, settings
from hypothesis import strategies as st

MAX = 16384


def parse(message: object) -> protocol.Command:
    return protocol.parse(message if isinstance(message, str) else json.dumps(message), MAX)


def refused(message: object) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse(message)
    return info.value


def test_valid_commands() -> None:
    assert parse({"op": "ping", "req": "1"}) == Ping("1")
    assert parse({"op": "create", "object": {"id": "r1", "type": "rect", "x": 1}}) == Create(
        None, "r1", "rect", {"x": 1}
    )
    assert parse({"op": "update", "id": "r1", "props": {"x": None, "type": "ellipse"}}) == Update(
        None, "r1", {"x": None, "type": "ellipse"}
    )
    assert parse({"op": "delete", "id": "r1", "req": "z"}) == Delete("z", "r1")


def test_escaped_surrogate_pairs_are_text_but_lone_surrogates_are_refused() -> None:
    emoji = parse('{"op":"update","id":"r1","props":{"t":"\\ud83d\\ude00"}}')
    assert emoji == Update(None, "r1", {"t": "\U0001f600"})
    assert refused('{"op":"update","id":"r1","props":{"t":"\\ud83d"}}').code == "bad_json"


def test_replies_are_canonical_json() -> None:
    for req in (None, "1", 'quote " and \u00e9'):
        for make, op in ((protocol.ack, "ack"), (protocol.pong, "pong")):
            text = make(req)
            expected = {"op": op} if req is None else {"op": op, "req": req}
            assert text == protocol.encode(expected)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{not json", "bad_json"),
        ('{"op":"create","object":{"id":"r1","type":"rect","x":NaN}}', "bad_json"),
        ('{"op":"create","object":{"id":"r1","type":"rect","x":Infinity}}', "bad_json"),
        ('{"op":"create","object":{"id":"r1","type":"rect","x":1e400}}', "bad_json"),
        ('{"op":"create","object":{"id":"r1","type":"rect","t":"\\ud800"}}', "bad_json"),
        ('{"op":"update","id":"r1","props":{"\\udfff":1}}', "bad_json"),
        ("[1,2]", "bad_message"),
        ({"op": "jump"}, "bad_message"),
        ({"op": "ping", "req": 5}, "bad_message"),
        ({"op": "ping", "req": "r" * 65}, "bad_message"),
        ({"op": "create"}, "bad_message"),
        ({"op": "create", "object": {"type": "rect"}}, "bad_message"),
        ({"op": "create", "object": {"id": "-bad", "type": "rect"}}, "bad_message"),
        ({"op": "create", "object": {"id": "r" * 129, "type": "rect"}}, "bad_message"),
        ({"op": "create", "object": {"id": "r1"}}, "bad_message"),
        ({"op": "create", "object": {"id": "r1", "type": "t" * 33}}, "bad_message"),
        ({"op": "create", "object": {"id": "r1", "type": 3}}, "bad_message"),
        ({"op": "create", "object": {"id": "r1", "type": "rect", "1x": 1}}, "bad_message"),
        ({"op": "create", "object": {"id": "r1", "type": "rect", "x-y": 1}}, "bad_message"),
        ({"op": "create", "object": {"id": "r1", "type": "rect", "x": None}}, "bad_message"),
        ({"op": "create", "object": {"id": "r1", "type": "rect", "deep": [[[[[1]]]]]}}, "bad_message"),
        ({"op": "create", "object": {"id": "r1", "type": "rect", **{f"p{i}": i for i in range(65)}}}, "bad_message"),
        ({"op": "create", "object": {"id": "r1", "type": "rect", "text": "x" * MAX}}, "too_large"),
        ({"op": "update", "id": "r1"}, "bad_message"),
        ({"op": "update", "id": "r1", "props": {}}, "bad_message"),
        ({"op": "update", "id": "r1", "props": {"id": "r2"}}, "bad_message"),
        ({"op": "update", "id": "r1", "props": {"type": None}}, "bad_message"),
        ({"op": "update", "id": "r1", "props": {"bad name": 1}}, "bad_message"),
        ({"op": "delete"}, "bad_message"),
        ({"op": "delete", "id": 7}, "bad_message"),
    ],
)
def test_bad_messages_get_the_contract_code(message: object, code: str) -> None:
    assert refused(message).code == code


def test_error_echoes_req_when_it_is_valid() -> None:
    err = refused({"op": "update", "id": "r1", "props": {}, "req": "q7"})
    assert json.loads(protocol.error(err)) == {
        "op": "error",
        "req": "q7",
        "code": "bad_message",
        "message": err.message,
    }


def test_depth_four_is_allowed() -> None:
    assert isinstance(parse({"op": "create", "object": {"id": "r1", "type": "t", "v": [[[[1]]]]}}), Create)


def test_values_round_trip_exactly() -> None:
    cmd = parse('{"op":"create","object":{"id":"r1","type":"t","a":1,"b":0.1,"c":123456789012345678901234567890}}')
    assert protocol.encode(cmd.props) == '{"a":1,"b":0.1,"c":123456789012345678901234567890}'


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(["a", "b", "c"]), children),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(props=st.dictionaries(st.sampled_from(["x", "y", "fill", "pts"]), _json_values, min_size=1))
def test_the_fast_reader_reads_what_the_standard_library_reads(props: dict[str, object]) -> None:
    """orjson does the reading; the standard library is the reference for every value."""
    for message in (
        {"op": "update", "req": "1", "id": "r1", "props": props},
        {"op": "create", "object": {"id": "r1", "type": "t", **{k: v for k, v in props.items() if v is not None}}},
        {"op": "presence", "state": props},
    ):
        text = json.dumps(message)
        try:
            expected: object = protocol._parse(text, 1 << 20, exact=True)
        except ProtocolError as error:
            expected = (error.code, error.message)
        try:
            got: object = protocol.parse(text, 1 << 20)
        except ProtocolError as error:
            got = (error.code, error.message)
        assert got == expected
        assert repr(got) == repr(expected)  # the same types too: 1 is not 1.0, big integers stay exact


def test_encoding_is_canonical() -> None:
    assert protocol.encode({"b": 1, "a": "é"}) == '{"a":"é","b":1}'
    assert json.loads(protocol.snapshot("p", "r", ['{"id":"a"}'])) == {
        "op": "snapshot",
        "project": "p",
        "replica": "r",
        "objects": [{"id": "a"}],
        "presence": [],
    }
    assert json.loads(protocol.upsert('{"id":"a"}')) == {"op": "upsert", "object": {"id": "a"}}
    for text in (
        protocol.snapshot("p", "r", [], [{"client": "c", "state": {"x": 1}}]),
        protocol.presence("c", '{"x":1}', "alice"),
        protocol.presence("c", '{"x":1}'),
        protocol.presence_leave("c"),
    ):
        assert protocol.encode(json.loads(text)) == text  # keys sorted, compact: canonical


def test_presence_messages() -> None:
    cmd = parse('{"op":"presence","req":"1","state":{"cursor":[1,2],"name":"Ann","colour":"#f00"}}')
    assert isinstance(cmd, protocol.SetPresence) and cmd.presence["name"] == "Ann" and cmd.req == "1"
    assert cmd.presence_json == '{"colour":"#f00","cursor":[1,2],"name":"Ann"}'
    for bad in ('{"op":"presence"}', '{"op":"presence","state":[1]}', '{"op":"presence","state":"x"}'):
        with pytest.raises(ProtocolError) as info:
            parse(bad)
        assert info.value.code == "bad_message"
    with pytest.raises(ProtocolError) as info:
        parse(json.dumps({"op": "presence", "req": "r", "state": {"name": "x" * 1100}}))
    assert (info.value.code, info.value.req) == ("too_large", "r")


@given(st.integers(0, 2**53), st.integers(0, 10**9), st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True))
def test_a_stamp_reads_back_as_it_was_written(ms: int, counter: int, replica: str) -> None:
    stamp = (ms, counter, replica)
    assert protocol.parse_stamp(protocol.stamp_text(stamp), None) == stamp
    parsed = protocol.parse(
        json.dumps({"op": "update", "id": "r1", "props": {"x": 1}, "stamp": protocol.stamp_text(stamp)}), 1000
    )
    assert isinstance(parsed, Update) and parsed.stamp == stamp


def test_v3_is_chosen_first_and_acks_carry_stamp_and_seq() -> None:
    assert protocol.subprotocol([protocol.V2, protocol.V3]) == protocol.V3
    assert protocol.subprotocol([protocol.V1, protocol.V2]) == protocol.V2
    assert json.loads(protocol.change_ack("r", (5, 1, "a.b"), 7)) == {
        "op": "ack",
        "req": "r",
        "stamp": "5.1.a.b",
        "seq": 7,
    }
    assert json.loads(protocol.saved(3)) == {"op": "saved", "seq": 3}


def test_ids_and_property_names_match_whole_strings() -> None:
    with pytest.raises(ProtocolError):
        protocol.parse('{"op":"delete","id":"r1\\n"}', 1000)
    with pytest.raises(ProtocolError):
        protocol.parse('{"op":"update","id":"r1","props":{"x\\n":1}}', 1000)
    retried = protocol.parse('{"op":"delete","id":"r1","retry":true}', 1000)
    assert isinstance(retried, Delete) and retried.retry
