"""In-memory edits, their errors, and per-object dirty tracking."""

from __future__ import annotations

import gc
import json

import pytest

from canvas_sync.model import HybridClock, ObjectState
from canvas_sync.protocol import Create, Delete, ProtocolError, Update
from canvas_sync.state import CanvasState, Project, gc_paused


@pytest.fixture
def canvas() -> CanvasState:
    return CanvasState(HybridClock("a"), max_objects_per_project=3, max_object_bytes=200)


@pytest.fixture
def project(canvas: CanvasState) -> Project:
    return canvas.install("p1", [])


def views(project: Project) -> list[dict]:
    return [json.loads(v) for v in project.snapshot_jsons()]


def refused(canvas: CanvasState, project: Project, command: object) -> str:
    before = (dict(project.objects), views(project), canvas.dirty_counts())
    with pytest.raises(ProtocolError) as info:
        canvas.apply(project, command)  # type: ignore[arg-type]
    assert (dict(project.objects), views(project), canvas.dirty_counts()) == before, "a refused edit changed state"
    return info.value.code


def test_create_update_delete(canvas: CanvasState, project: Project) -> None:
    out = canvas.apply(project, Create("1", "r1", "rect", {"x": 1, "fill": "red"}))
    assert json.loads(out) == {"op": "upsert", "object": {"id": "r1", "type": "rect", "x": 1, "fill": "red"}}
    canvas.apply(project, Update("2", "r1", {"x": 2, "fill": None, "type": "ellipse"}))
    assert views(project) == [{"id": "r1", "type": "ellipse", "x": 2}]
    assert json.loads(canvas.apply(project, Delete("3", "r1"))) == {"op": "delete", "id": "r1"}
    assert views(project) == []
    canvas.apply(project, Create("4", "r1", "text", {"y": 5}))
    assert views(project) == [{"id": "r1", "type": "text", "y": 5}]


def test_errors_change_nothing(canvas: CanvasState, project: Project) -> None:
    canvas.apply(project, Create(None, "r1", "rect", {"x": 1}))
    assert refused(canvas, project, Create(None, "r1", "rect", {})) == "conflict"
    assert refused(canvas, project, Update(None, "nope", {"x": 1})) == "not_found"
    assert refused(canvas, project, Delete(None, "nope")) == "not_found"
    assert refused(canvas, project, Update(None, "r1", {"text": "x" * 300})) == "too_large"
    canvas.apply(project, Delete(None, "r1"))
    assert refused(canvas, project, Update(None, "r1", {"x": 1})) == "not_found"
    assert refused(canvas, project, Delete(None, "r1")) == "not_found"


def test_update_cannot_pass_64_properties(project: Project) -> None:
    canvas = CanvasState(HybridClock("a"), 10, 100_000)
    project = canvas.install("p", [])
    canvas.apply(project, Create(None, "r1", "rect", {f"p{i}": i for i in range(64)}))
    assert refused(canvas, project, Update(None, "r1", {"extra": 1})) == "bad_message"
    canvas.apply(project, Update(None, "r1", {"p0": None, "extra": 1}))  # one out, one in: fine


def test_object_limit_counts_live_objects_only(canvas: CanvasState, project: Project) -> None:
    for i in range(3):
        canvas.apply(project, Create(None, f"o{i}", "rect", {}))
    assert refused(canvas, project, Create(None, "o9", "rect", {})) == "limit_exceeded"
    canvas.apply(project, Delete(None, "o0"))
    canvas.apply(project, Create(None, "o9", "rect", {}))


def test_dirty_is_per_object_and_many_edits_cost_one_item(canvas: CanvasState, project: Project) -> None:
    canvas.apply(project, Create(None, "r1", "rect", {"x": 0}))
    for x in range(100):
        canvas.apply(project, Update(None, "r1", {"x": x}))
    canvas.apply(project, Create(None, "r2", "rect", {}))
    assert canvas.dirty_counts() == (1, 2)
    taken = canvas.take_dirty()
    assert sorted(t.state.id for t in taken) == ["r1", "r2"]
    assert canvas.dirty_counts() == (1, 2)  # not durable until the save succeeds
    canvas.finish_save(taken, failed=[])
    assert canvas.dirty_counts() == (0, 0)
    assert canvas.take_dirty() == []


def test_edit_during_save_is_neither_lost_nor_cleared(canvas: CanvasState, project: Project) -> None:
    canvas.apply(project, Create(None, "r1", "rect", {"x": 0}))
    taken = canvas.take_dirty()
    canvas.apply(project, Update(None, "r1", {"x": 1}))  # while the save is in flight
    canvas.finish_save(taken, failed=[])  # the save of x=0 succeeds
    again = canvas.take_dirty()
    assert [t.state.view()["x"] for t in again] == [1]
    assert taken[0].state.view()["x"] == 0  # the taken copy never changed under the saver


def test_failed_save_puts_objects_back(canvas: CanvasState, project: Project) -> None:
    canvas.apply(project, Create(None, "r1", "rect", {}))
    canvas.apply(project, Create(None, "r2", "rect", {}))
    taken = canvas.take_dirty()
    canvas.finish_save(taken, failed=[t for t in taken if t.state.id == "r2"])
    assert [t.state.id for t in canvas.take_dirty()] == ["r2"]


def test_idle_projects_are_evicted_only_when_clean_and_unwatched(canvas: CanvasState, project: Project) -> None:
    canvas.apply(project, Create(None, "r1", "rect", {}))
    assert canvas.evict_idle(0, now=project.last_active + 1) == []  # dirty
    taken = canvas.take_dirty()
    assert canvas.evict_idle(0, now=project.last_active + 1) == []  # save in flight
    canvas.finish_save(taken, [])
    project.connections.add(object())  # type: ignore[arg-type]
    assert canvas.evict_idle(0, now=project.last_active + 1) == []  # watched
    project.connections.clear()
    assert canvas.evict_idle(10, now=project.last_active + 1) == []  # not idle long enough
    assert canvas.evict_idle(10, now=project.last_active + 11) == ["p1"]
    assert canvas.get("p1") is None


def remote_copy(state: ObjectState, **props: object) -> ObjectState:
    stamp = (state.latest_stamp()[0] + 1000, 0, "zz")  # a later write on another replica
    return ObjectState(state.id, state.alive, state.type, {**state.props, **{k: (v, stamp) for k, v in props.items()}})


def test_merge_remote_newer_state_updates_memory_and_tells_clients(canvas: CanvasState, project: Project) -> None:
    canvas.apply(project, Create(None, "r1", "rect", {"x": 1}))
    canvas.finish_save(canvas.take_dirty(), [])
    result = canvas.merge_remote(project, [remote_copy(project.objects["r1"], x=5)])
    assert result.changed == ["r1"] and result.repaired == []
    assert [json.loads(m) for m in result.messages] == [{"op": "upsert", "object": {"id": "r1", "type": "rect", "x": 5}}]
    assert canvas.dirty_counts() == (0, 0)  # the table already holds exactly this


def test_merge_remote_behind_memory_marks_a_repair(canvas: CanvasState, project: Project) -> None:
    canvas.apply(project, Create(None, "r1", "rect", {"x": 1}))
    stale = project.objects["r1"]
    canvas.apply(project, Update(None, "r1", {"y": 2}))
    canvas.finish_save(canvas.take_dirty(), [])
    theirs = remote_copy(stale, fill="red")  # another replica's item, lacking our y
    result = canvas.merge_remote(project, [theirs])
    assert views(project) == [{"id": "r1", "type": "rect", "x": 1, "y": 2, "fill": "red"}]
    assert result.repaired == ["r1"] and canvas.dirty_counts() == (1, 1)
    again = canvas.merge_remote(project, [theirs])  # pulled again before the repair is saved
    assert again.repaired == [] and again.messages == []


def test_merge_remote_delete_and_stale_copies(canvas: CanvasState, project: Project) -> None:
    canvas.apply(project, Create(None, "r1", "rect", {"x": 1}))
    live = project.objects["r1"]
    canvas.finish_save(canvas.take_dirty(), [])
    later = live.latest_stamp()[0] + 1000
    tomb = ObjectState("r1", (False, (later, 0, "zz")), live.type, {})
    result = canvas.merge_remote(project, [tomb])
    assert [json.loads(m) for m in result.messages] == [{"op": "delete", "id": "r1"}] and views(project) == []
    result = canvas.merge_remote(project, [live])  # a stale live copy
    assert result.messages == [] and views(project) == [] and result.repaired == ["r1"]
    with pytest.raises(ProtocolError):
        canvas.apply(project, Update(None, "r1", {"x": 2}))


def test_merged_stamps_move_the_clock_forward(canvas: CanvasState, project: Project) -> None:
    far = ObjectState.created("r9", "rect", {}, (canvas.clock.wall_ms() + 60_000, 0, "zz"))
    canvas.merge_remote(project, [far])
    canvas.apply(project, Update(None, "r9", {"x": 1}))
    assert project.objects["r9"].props["x"][1] > far.alive[1]


def test_merging_into_an_evicted_project_changes_nothing(canvas: CanvasState, project: Project) -> None:
    assert canvas.evict_idle(0, now=project.last_active + 1) == ["p1"]
    late = ObjectState.created("r1", "rect", {}, (canvas.clock.wall_ms(), 0, "zz"))
    result = canvas.merge_remote(project, [late])  # a pull that was in flight during the eviction
    assert result.changed == [] and canvas.dirty_counts() == (0, 0)
    assert canvas.take_dirty() == []


def test_gc_pause_is_shared_by_nested_loads_and_restores_the_previous_setting() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer load is still running
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()
