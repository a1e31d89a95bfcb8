"""In-memory edits, their errors, and per-object dirty tracking."""

from __future__ import annotations

import json

import pytest

from canvas_sync.model import HybridClock
from canvas_sync.protocol import Create, Delete, ProtocolError, Update
from canvas_sync.state import CanvasState, Project


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
