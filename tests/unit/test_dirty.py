"""The dirty set: marked by the loop, taken and finished by the auto-save thread."""

from __future__ import annotations

from canvas_sync.dirty import DirtyObject, DirtySet
from canvas_sync.model import ObjectState


def state(object_id: str, x: int) -> ObjectState:
    return ObjectState.created(object_id, "rect", {"x": x}, (1000 + x, 0, "a"))


def test_the_latest_state_of_each_object_is_taken_once() -> None:
    dirty = DirtySet()
    for x in range(100):
        dirty.mark("p", state("r1", x))
    dirty.mark("q", state("r2", 0))
    taken = dirty.take()
    assert sorted((t.project, t.state.view()["x"]) for t in taken) == [("p", 99), ("q", 0)]  # type: ignore[index]
    assert dirty.counts() == (2, 2)  # not durable until the pass finishes
    assert dirty.take() == []
    dirty.finish()
    assert dirty.counts() == (0, 0) and dirty.last_save("p") is not None


def test_a_failed_object_waits_again_unless_edited_meanwhile() -> None:
    dirty = DirtySet()
    dirty.mark("p", state("r1", 1))
    dirty.mark("p", state("r2", 1))
    taken = dirty.take()
    dirty.mark("p", state("r1", 2))  # edited during the pass
    dirty.finish(failed=taken)
    again = {t.state.id: t.state.view()["x"] for t in dirty.take()}  # type: ignore[index]
    assert again == {"r1": 2, "r2": 1}
    assert dirty.last_save("p") is None  # the project still had unsaved objects


def test_refused_objects_are_quarantined_kept_and_retried_only_when_changed() -> None:
    dirty = DirtySet()
    dirty.mark("p", state("big", 1))
    dirty.mark("p", state("ok", 1))
    taken = dirty.take()
    big = next(t for t in taken if t.state.id == "big")
    dirty.finish(refused=[(big, "ValidationException: Item size has exceeded the maximum allowed size")])
    assert dirty.counts() == (0, 0) and dirty.take() == []  # not retried on every pass
    assert dirty.holds("p")  # but a project with a quarantined object is never evicted
    (entry,) = dirty.quarantined()
    assert (entry["project"], entry["object"]) == ("p", "big") and "Item size" in entry["error"]
    dirty.mark("p", state("big", 2))  # a client shrinks it: worth another try
    assert dirty.quarantined() == [] and [t.state.id for t in dirty.take()] == ["big"]


def test_merged_states_replace_waiting_ones_and_repairs_are_counted_once() -> None:
    dirty = DirtySet()
    dirty.mark("p", state("r1", 1))
    assert dirty.merged("p", state("r1", 5), table_behind=False) is False
    assert [t.state.view()["x"] for t in dirty.take()] == [5]  # type: ignore[index]
    dirty.finish()
    assert dirty.merged("p", state("r2", 1), table_behind=False) is False and dirty.counts() == (0, 0)
    assert dirty.merged("p", state("r2", 1), table_behind=True) is True
    assert dirty.merged("p", state("r2", 2), table_behind=True) is False  # already waiting
    taken = dirty.take()
    assert dirty.merged("p", taken[0].state, table_behind=True) is False  # the pass in flight writes exactly this
    assert dirty.counts() == (1, 1)
    dirty.finish()
    assert not dirty.holds("p")


def test_dirty_object_key() -> None:
    assert DirtyObject("p", state("r1", 0)).key == ("p", "r1")


def test_versions_say_below_which_every_change_of_a_project_is_saved() -> None:
    dirty = DirtySet()
    assert dirty.saved_below("p") == 1 and dirty.oldest_unsaved() is None
    first = dirty.mark("p", state("r1", 1))
    dirty.mark("p", state("r1", 2))  # the same object again: still unsaved since the first mark
    other = dirty.mark("q", state("r2", 1))
    assert dirty.saved_below("p") == first and dirty.saved_below("q") == other
    oldest = dirty.oldest_unsaved()
    assert oldest is not None
    taken = dirty.take()
    assert dirty.saved_below("p") == first  # in flight is not saved
    later = dirty.mark("p", state("r3", 1))
    dirty.finish()
    assert dirty.saved_below("p") == later and dirty.saved_below("q") == dirty.version() + 1
    assert len(taken) == 2


def test_a_failed_or_refused_object_keeps_its_first_version_when_edited_meanwhile() -> None:
    dirty = DirtySet()
    first = dirty.mark("p", state("r1", 1))
    dirty.mark("p", state("r2", 1))
    taken = {t.state.id: t for t in dirty.take()}
    dirty.mark("p", state("r1", 2))
    dirty.mark("p", state("r2", 2))
    dirty.finish(failed=[taken["r1"]], refused=[(taken["r2"], "too big")])
    assert dirty.saved_below("p") == first  # both copies' changes are unsaved still
    assert {t.state.id: t.state.view()["x"] for t in dirty.take()} == {"r1": 2, "r2": 2}  # type: ignore[index]
    dirty.finish(refused=[])
    assert dirty.saved_below("p") == dirty.version() + 1


def test_a_quarantined_object_holds_its_project_back_until_it_changes() -> None:
    dirty = DirtySet()
    first = dirty.mark("p", state("r1", 1))
    (taken,) = dirty.take()
    dirty.finish(refused=[(taken, "too big")])
    assert dirty.saved_below("p") == first and dirty.oldest_unsaved() == taken.since
    dirty.mark("p", state("r1", 2))
    assert dirty.saved_below("p") == first  # changed, not yet saved: its first change is still waiting
    dirty.take()
    dirty.finish()
    assert dirty.saved_below("p") == dirty.version() + 1 and dirty.oldest_unsaved() is None


def test_a_deleted_projects_entries_go_and_what_its_pass_in_flight_hands_back_is_dropped() -> None:
    dirty = DirtySet()
    dirty.mark("p", state("r1", 1))
    dirty.mark("q", state("r2", 1))
    taken = dirty.take()
    dirty.mark("p", state("r3", 1))
    assert dirty.discard("p", 1) == 1 and dirty.unsaved_states("p") == []  # r1 is in flight: not p's any more
    dirty.finish(failed=taken)  # the pass failed: q's entry waits again, p's old one is dropped
    assert dirty.keys() == [("q", "r2")]
    dirty.mark("p", state("r4", 1), gen=0)  # a late edit of the old copy: ignored
    assert dirty.project_count("p") == 0
    dirty.mark("p", state("r5", 1), gen=1)  # the new copy's
    assert [(o.state.id, o.gen) for o in dirty.take() if o.project == "p"] == [("r5", 1)]


def test_held_projects_wait_while_the_others_are_taken() -> None:
    dirty = DirtySet()
    dirty.mark("stale", state("r1", 1))
    dirty.mark("fresh", state("r2", 1))
    assert [o.project for o in dirty.take(hold=lambda p: p == "stale")] == ["fresh"]
    dirty.finish()
    assert dirty.keys() == [("stale", "r1")] and dirty.unsaved_ids("stale") == {"r1"}
