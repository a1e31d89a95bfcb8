"""The per-property merge and the hybrid logical clock."""

from __future__ import annotations

import json

from canvas_sync.model import HybridClock, ObjectState, merge
from hypothesis import given, settings
from hypothesis import strategies as st

REPLICAS = ["a", "b", "c"]
stamps = st.tuples(st.integers(0, 20), st.integers(0, 3), st.sampled_from(REPLICAS))
values = st.one_of(
    st.none(), st.integers(-5, 5), st.sampled_from(["red", "blue"]), st.lists(st.integers(0, 2), max_size=2)
)
props = st.dictionaries(st.sampled_from(["x", "y", "fill", "text"]), st.tuples(values, stamps), max_size=4)


@st.composite
def states(draw: st.DrawFn) -> ObjectState:
    return ObjectState(
        "o1",
        (draw(st.booleans()), draw(stamps)),
        (draw(st.sampled_from(["rect", "text"])), draw(stamps)),
        draw(props),
    )


@settings(max_examples=400)
@given(states(), states())
def test_merge_is_commutative(a: ObjectState, b: ObjectState) -> None:
    assert merge(a, b) == merge(b, a)


@settings(max_examples=400)
@given(states(), states(), states())
def test_merge_is_associative(a: ObjectState, b: ObjectState, c: ObjectState) -> None:
    assert merge(merge(a, b), c) == merge(a, merge(b, c))


@settings(max_examples=400)
@given(states(), states())
def test_merge_is_idempotent(a: ObjectState, b: ObjectState) -> None:
    m = merge(a, b)
    assert merge(m, m) == m
    assert merge(m, a) == m
    assert merge(m, b) == m


@given(st.permutations([0, 1, 2, 3]), st.lists(states(), min_size=4, max_size=4))
def test_any_order_of_applying_copies_gives_one_state(order: list[int], copies: list[ObjectState]) -> None:
    forward = copies[0]
    for c in copies[1:]:
        forward = merge(forward, c)
    shuffled = copies[order[0]]
    for i in order[1:]:
        shuffled = merge(shuffled, copies[i])
    assert forward == shuffled


def test_different_properties_changed_concurrently_are_both_kept() -> None:
    base = ObjectState.created("r1", "rect", {"x": 1, "y": 1}, (10, 0, "a"))
    on_a = ObjectState(base.id, base.alive, base.type, {**base.props, "x": (5, (20, 0, "a"))})
    on_b = ObjectState(base.id, base.alive, base.type, {**base.props, "y": (7, (20, 0, "b"))})
    assert merge(on_a, on_b).view() == {"id": "r1", "type": "rect", "x": 5, "y": 7}


def test_same_property_concurrently_later_stamp_wins_ties_by_replica() -> None:
    base = ObjectState.created("r1", "rect", {"x": 1}, (10, 0, "a"))
    on_a = ObjectState(base.id, base.alive, base.type, {"x": (5, (20, 0, "a"))})
    on_b = ObjectState(base.id, base.alive, base.type, {"x": (7, (20, 0, "b"))})
    assert merge(on_a, on_b).view()["x"] == 7  # same ms and counter: replica "b" > "a"


def test_delete_beats_a_stale_live_copy_and_a_later_create_beats_the_delete() -> None:
    live = ObjectState.created("r1", "rect", {"x": 1, "fill": "red"}, (10, 0, "a"))
    concurrent_update = ObjectState(live.id, live.alive, live.type, {**live.props, "x": (9, (30, 0, "b"))})
    deleted = ObjectState(live.id, (False, (20, 0, "a")), live.type, {})
    assert merge(deleted, live).view() is None
    assert merge(concurrent_update, deleted).view() is None  # delete wins over a concurrent update
    recreated = merge(deleted, ObjectState.created("r1", "ellipse", {"x": 3}, (40, 0, "b")))
    assert merge(recreated, live).view() == {"id": "r1", "type": "ellipse", "x": 3}  # old fill stays gone


def test_removed_property_is_kept_as_a_stamp_so_an_older_set_cannot_restore_it() -> None:
    base = ObjectState.created("r1", "rect", {"fill": "red"}, (10, 0, "a"))
    removed = ObjectState(base.id, base.alive, base.type, {"fill": (None, (20, 0, "a"))})
    assert merge(removed, base).view() == {"id": "r1", "type": "rect"}


def test_doc_round_trip_keeps_values_exactly() -> None:
    state = ObjectState.created("r1", "rect", {"x": 1, "y": 0.1, "big": 10**30, "pts": [[1, 2.5]]}, (1, 2, "a"))
    assert ObjectState.from_doc("r1", state.to_doc()) == state


def test_clock_never_goes_backwards() -> None:
    wall = [1000]
    clock = HybridClock("a", wall_ms=lambda: wall[0])
    first = clock.now()
    wall[0] = 500  # the wall clock jumps back
    second = clock.now()
    assert second > first


def test_clock_absorbs_stamps_it_reads() -> None:
    clock = HybridClock("slow", wall_ms=lambda: 1000, offset_ms=-5000)  # 5 s behind
    clock.observe((9000, 3, "fast"))
    assert clock.now() > (9000, 3, "fast")


def test_clock_ties_broken_by_replica_id() -> None:
    a = HybridClock("a", wall_ms=lambda: 1000).now()
    b = HybridClock("b", wall_ms=lambda: 1000).now()
    assert a[:2] == b[:2] and b > a


@settings(max_examples=300)
@given(states(), st.dictionaries(st.sampled_from(["x", "fill", "type"]), values, min_size=1), stamps)
def test_the_compact_form_holds_exactly_the_fields_it_was_given(
    state: ObjectState, changes: dict[str, object], stamp: tuple[int, int, str]
) -> None:
    rebuilt = ObjectState(state.id, state.alive, state.type, state.props)
    assert rebuilt == state and rebuilt.props == state.props and rebuilt.type == state.type
    assert ObjectState.from_doc(state.id, json.loads(json.dumps(state.to_doc()))) == state
    first_layout = {
        "alive": [state.alive[0], list(state.alive[1])],
        "type": [state.type[0], list(state.type[1])],
        "props": {k: [v, list(s)] for k, (v, s) in state.props.items()},
    }
    assert ObjectState.from_doc(state.id, json.loads(json.dumps(first_layout))) == state  # items saved before
    # an update is the same state as building it field by field
    expected_type = (changes["type"], stamp) if "type" in changes else state.type
    expected_props = {**state.props, **{k: (v, stamp) for k, v in changes.items() if k != "type"}}
    assert state.updated(changes, stamp) == ObjectState(state.id, state.alive, expected_type, expected_props)


def test_a_created_object_keeps_no_stamp_per_field() -> None:
    created = ObjectState.created("o", "rect", {"x": 1, "y": 2}, (5, 0, "a"))
    assert created == ObjectState(
        "o", (True, (5, 0, "a")), ("rect", (5, 0, "a")), {"x": (1, (5, 0, "a")), "y": (2, (5, 0, "a"))}
    )
    assert created._stamps is None  # the memory saving this form exists for
    moved = created.updated({"x": 3}, (6, 0, "a"))
    assert moved._stamps == {"x": (6, 0, "a")} and moved.props["y"] == (2, (5, 0, "a"))
    try:
        created.id = "other"  # type: ignore[misc]
    except AttributeError:
        pass
    else:
        raise AssertionError("ObjectState must be immutable")


def test_a_created_object_is_stored_without_a_stamp_per_field() -> None:
    doc = ObjectState.created("o", "rect", {"x": 1, "fill": "red"}, (5, 0, "a")).to_doc()
    assert doc == {"alive": True, "stamp": [5, 0, "a"], "type": "rect", "props": {"x": 1, "fill": "red"}}
