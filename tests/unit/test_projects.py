"""In-memory edits, their errors, and per-object dirty tracking."""

from __future__ import annotations

import gc
import json

import pytest
from canvas_sync import projects as projects_module
from canvas_sync.model import HybridClock, ObjectState
from canvas_sync.projects import Limits, Project, Projects, gc_paused
from canvas_sync.protocol import Create, Delete, ProtocolError, Update


@pytest.fixture
def projects() -> Projects:
    return Projects(HybridClock("a"), Limits(max_objects=3, max_object_bytes=200, max_stored_object_bytes=1000))


def hold(projects: Projects, project_id: str = "p1", states: list[ObjectState] | None = None) -> Project:
    return projects.install(projects.build(project_id, states or []))


@pytest.fixture
def project(projects: Projects) -> Project:
    return hold(projects)


def views(project: Project) -> list[dict]:
    return [json.loads(v) for v in project.snapshot_jsons()]


def refused(projects: Projects, project: Project, command: object) -> str:
    before = (dict(project.objects), views(project), projects.dirty.counts())
    with pytest.raises(ProtocolError) as info:
        projects.edit(project, command)  # type: ignore[arg-type]
    assert (dict(project.objects), views(project), projects.dirty.counts()) == before, "a refused edit changed state"
    return info.value.code


def test_create_update_delete(projects: Projects, project: Project) -> None:
    out = projects.edit(project, Create("1", "r1", "rect", {"x": 1, "fill": "red"})).broadcast
    assert out is not None and out.key == "r1" and out.latest  # a newer upsert of r1 may replace it in an outbox
    assert json.loads(out.text) == {"op": "upsert", "object": {"id": "r1", "type": "rect", "x": 1, "fill": "red"}}
    projects.edit(project, Update("2", "r1", {"x": 2, "fill": None, "type": "ellipse"}))
    assert views(project) == [{"id": "r1", "type": "ellipse", "x": 2}]
    deleted = projects.edit(project, Delete("3", "r1")).broadcast
    assert deleted is not None and deleted.key == "r1" and not deleted.latest  # nothing later may pass it
    assert json.loads(deleted.text) == {"op": "delete", "id": "r1"}
    assert views(project) == []
    projects.edit(project, Create("4", "r1", "text", {"y": 5}))
    assert views(project) == [{"id": "r1", "type": "text", "y": 5}]


def test_errors_change_nothing(projects: Projects, project: Project) -> None:
    projects.edit(project, Create(None, "r1", "rect", {"x": 1}))
    assert refused(projects, project, Create(None, "r1", "rect", {})) == "conflict"
    assert refused(projects, project, Update(None, "nope", {"x": 1})) == "not_found"
    assert refused(projects, project, Delete(None, "nope")) == "not_found"
    assert refused(projects, project, Update(None, "r1", {"text": "x" * 300})) == "too_large"
    projects.edit(project, Delete(None, "r1"))
    assert refused(projects, project, Update(None, "r1", {"x": 1})) == "not_found"
    assert refused(projects, project, Delete(None, "r1")) == "not_found"


def test_update_cannot_pass_64_properties(project: Project) -> None:
    projects = Projects(
        HybridClock("a"), Limits(max_objects=10, max_object_bytes=100_000, max_stored_object_bytes=100_000)
    )
    project = hold(projects, "p")
    projects.edit(project, Create(None, "r1", "rect", {f"p{i}": i for i in range(64)}))
    assert refused(projects, project, Update(None, "r1", {"extra": 1})) == "bad_message"
    projects.edit(project, Update(None, "r1", {"p0": None, "extra": 1}))  # one out, one in: fine


def test_object_limit_counts_live_objects_only(projects: Projects, project: Project) -> None:
    for i in range(3):
        projects.edit(project, Create(None, f"o{i}", "rect", {}))
    assert refused(projects, project, Create(None, "o9", "rect", {})) == "limit_exceeded"
    projects.edit(project, Delete(None, "o0"))
    projects.edit(project, Create(None, "o9", "rect", {}))


def test_dirty_is_per_object_and_many_edits_cost_one_item(projects: Projects, project: Project) -> None:
    projects.edit(project, Create(None, "r1", "rect", {"x": 0}))
    for x in range(100):
        projects.edit(project, Update(None, "r1", {"x": x}))
    projects.edit(project, Create(None, "r2", "rect", {}))
    assert projects.dirty.counts() == (1, 2)
    taken = projects.dirty.take()
    assert sorted(t.state.id for t in taken) == ["r1", "r2"]
    assert projects.dirty.counts() == (1, 2)  # not durable until the save succeeds
    projects.dirty.finish()
    assert projects.dirty.counts() == (0, 0)
    assert projects.dirty.take() == []


def test_edit_during_save_is_neither_lost_nor_cleared(projects: Projects, project: Project) -> None:
    projects.edit(project, Create(None, "r1", "rect", {"x": 0}))
    taken = projects.dirty.take()
    projects.edit(project, Update(None, "r1", {"x": 1}))  # while the save is in flight
    projects.dirty.finish()  # the save of x=0 succeeds
    again = projects.dirty.take()
    assert [t.state.view()["x"] for t in again] == [1]
    assert taken[0].state.view()["x"] == 0  # the taken copy never changed under the saver


def test_failed_save_puts_objects_back(projects: Projects, project: Project) -> None:
    projects.edit(project, Create(None, "r1", "rect", {}))
    projects.edit(project, Create(None, "r2", "rect", {}))
    taken = projects.dirty.take()
    projects.dirty.finish(failed=[t for t in taken if t.state.id == "r2"])
    assert [t.state.id for t in projects.dirty.take()] == ["r2"]


def test_idle_projects_are_evicted_only_when_clean_and_unwatched(projects: Projects, project: Project) -> None:
    projects.edit(project, Create(None, "r1", "rect", {}))
    assert projects.evict_idle(0, now=project.last_active + 1) == []  # dirty
    projects.dirty.take()
    assert projects.evict_idle(0, now=project.last_active + 1) == []  # save in flight
    projects.dirty.finish()
    project.subscribe(object())  # type: ignore[arg-type]
    assert projects.evict_idle(0, now=project.last_active + 1) == []  # watched
    project.connections.clear()
    assert projects.evict_idle(10, now=project.last_active + 1) == []  # not idle long enough
    assert projects.evict_idle(10, now=project.last_active + 11) == ["p1"]
    assert projects.get("p1") is None


def remote_copy(state: ObjectState, **props: object) -> ObjectState:
    stamp = (state.latest_stamp()[0] + 1000, 0, "zz")  # a later write on another replica
    return ObjectState(state.id, state.alive, state.type, {**state.props, **{k: (v, stamp) for k, v in props.items()}})


def test_merge_remote_newer_state_updates_memory_and_tells_clients(projects: Projects, project: Project) -> None:
    projects.edit(project, Create(None, "r1", "rect", {"x": 1}))
    projects.dirty.take()
    projects.dirty.finish()
    result = projects.merge(project, [remote_copy(project.objects["r1"], x=5)])
    assert result.changed == ["r1"] and result.repaired == []
    assert [json.loads(m.text) for m in result.messages] == [
        {"op": "upsert", "object": {"id": "r1", "type": "rect", "x": 5}}
    ]
    assert projects.dirty.counts() == (0, 0)  # the table already holds exactly this


def test_merge_remote_behind_memory_marks_a_repair(projects: Projects, project: Project) -> None:
    projects.edit(project, Create(None, "r1", "rect", {"x": 1}))
    stale = project.objects["r1"]
    projects.edit(project, Update(None, "r1", {"y": 2}))
    projects.dirty.take()
    projects.dirty.finish()
    theirs = remote_copy(stale, fill="red")  # another replica's item, lacking our y
    result = projects.merge(project, [theirs])
    assert views(project) == [{"id": "r1", "type": "rect", "x": 1, "y": 2, "fill": "red"}]
    assert result.repaired == ["r1"] and projects.dirty.counts() == (1, 1)
    again = projects.merge(project, [theirs])  # pulled again before the repair is saved
    assert again.repaired == [] and again.messages == []


def test_merge_remote_delete_and_stale_copies(projects: Projects, project: Project) -> None:
    projects.edit(project, Create(None, "r1", "rect", {"x": 1}))
    live = project.objects["r1"]
    projects.dirty.take()
    projects.dirty.finish()
    later = live.latest_stamp()[0] + 1000
    tomb = ObjectState("r1", (False, (later, 0, "zz")), live.type, {})
    result = projects.merge(project, [tomb])
    assert [json.loads(m.text) for m in result.messages] == [{"op": "delete", "id": "r1"}] and views(project) == []
    result = projects.merge(project, [live])  # a stale live copy
    assert result.messages == [] and views(project) == [] and result.repaired == []  # zz's own save is on its way
    projects.repair_grace_ms = -2_000  # ...and now overdue: whoever knows the delete writes it
    result = projects.merge(project, [live])
    assert result.messages == [] and views(project) == [] and result.repaired == ["r1"]
    with pytest.raises(ProtocolError):
        projects.edit(project, Update(None, "r1", {"x": 2}))


def test_merged_stamps_move_the_clock_forward(projects: Projects, project: Project) -> None:
    far = ObjectState.created("r9", "rect", {}, (projects.clock.wall_ms() + 60_000, 0, "zz"))
    projects.merge(project, [far])
    projects.edit(project, Update(None, "r9", {"x": 1}))
    assert project.objects["r9"].props["x"][1] > far.alive[1]


def test_merging_into_an_evicted_project_changes_nothing(projects: Projects, project: Project) -> None:
    assert projects.evict_idle(0, now=project.last_active + 1) == ["p1"]
    late = ObjectState.created("r1", "rect", {}, (projects.clock.wall_ms(), 0, "zz"))
    result = projects.merge(project, [late])  # a pull that was in flight during the eviction
    assert result.changed == [] and projects.dirty.counts() == (0, 0)
    assert projects.dirty.take() == []


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


# --- what a client can make us store is bounded (the robustness issue) ------------------


def test_removing_a_property_that_is_not_there_stores_nothing(projects: Projects, project: Project) -> None:
    projects.edit(project, Create(None, "r1", "rect", {"x": 1}))
    before = project.objects["r1"]
    for i in range(100):
        edit = projects.edit(project, Update(None, "r1", {f"never_set_{i}": None}))
        assert edit.broadcast is None  # acked, nothing to send
    assert project.objects["r1"] is before and project.objects["r1"].stored_size() == before.stored_size()


def test_removed_properties_count_against_the_stored_limit(projects: Projects, project: Project) -> None:
    """Set-then-remove keeps each name and stamp: the visible object stays tiny, what is stored does not."""
    projects.edit(project, Create(None, "r1", "rect", {}))
    accepted = 0
    with pytest.raises(ProtocolError) as info:
        for i in range(1000):
            name = f"p{i:04}" + "x" * 40
            projects.edit(project, Update(None, "r1", {name: 1}))
            projects.edit(project, Update(None, "r1", {name: None}))
            accepted += 1
    assert info.value.code == "too_large" and "store" in info.value.message
    assert 0 < accepted < 20
    assert views(project) == [{"id": "r1", "type": "rect"}]
    assert project.objects["r1"].stored_size() <= projects.limits.max_stored_object_bytes
    assert refused(projects, project, Update(None, "r1", {"y" * 60: 1})) == "too_large"  # and it changed nothing
    projects.edit(project, Update(None, "r1", {"x": 5}))  # names it already stores still change


def test_stored_size_bound_is_never_below_the_exact_size(projects: Projects, project: Project) -> None:
    projects.edit(project, Create(None, "r1", "rect", {"a": "é" * 10, "b": [1, {"c": None}]}))
    for i in range(5):
        projects.edit(project, Update(None, "r1", {f"n{i}": i, "a": None if i % 2 else "z"}))
        projects.edit(project, Update(None, "r1", {f"n{i}": None, "type": "ellipse"}))
        state = project.objects["r1"]
        assert state.stored_size_bound(len(project.views["r1"].encode())) >= state.stored_size()


def test_a_stamp_far_ahead_moves_the_clock_only_to_the_bound_and_edits_still_win() -> None:
    wall = [1_000_000]
    clamped: list[tuple[int, int, str]] = []
    clock = HybridClock("a", wall_ms=lambda: wall[0], max_drift_ms=5_000, on_clamp=clamped.append)
    projects = Projects(clock)
    project = hold(projects)
    forged = ObjectState.created("r1", "rect", {"x": 1}, (wall[0] + 3_600_000, 7, "zz"))  # an hour ahead
    projects.merge(project, [forged])
    assert clamped == [forged.alive[1]]
    assert clock.now()[0] <= wall[0] + 5_000  # the clock is not dragged an hour ahead
    projects.edit(project, Create(None, "r2", "rect", {}))
    assert project.objects["r2"].alive[1][0] <= wall[0] + 5_000
    projects.edit(project, Update(None, "r1", {"x": 2}))  # the client's edit still beats the forged stamp
    assert views(project)[0] == {"id": "r1", "type": "rect", "x": 2}
    assert project.objects["r1"].props["x"][1] > forged.alive[1]
    near = ObjectState.created("r3", "rect", {}, (wall[0] + 1_000, 0, "zz"))
    projects.merge(project, [near])
    assert len(clamped) == 1 and clock.now()[:2] > (wall[0] + 1_000, 0)  # within the bound: absorbed as is


def test_merging_unchanged_states_costs_no_merge(projects: Projects, monkeypatch: pytest.MonkeyPatch) -> None:
    projects = Projects(HybridClock("a"), Limits(max_objects=100))
    stamp = (projects.clock.wall_ms(), 0, "b")
    table = [ObjectState.created(f"o{i}", "rect", {"x": i}, stamp) for i in range(50)]
    project = hold(projects, "p", [ObjectState.from_doc(s.id, s.to_doc()) for s in table])
    merges: list[str] = []
    real = projects_module.merge
    monkeypatch.setattr(projects_module, "merge", lambda a, b: merges.append(a.id) or real(a, b))
    result = projects.merge(project, [ObjectState.from_doc(s.id, s.to_doc()) for s in table])
    assert merges == [] and result.changed == [] and projects.dirty.counts() == (0, 0)
    newer = ObjectState.created("o7", "rect", {"x": 70}, (stamp[0] + 1, 0, "b"))
    assert projects.merge(project, [newer]).changed == ["o7"] and merges == ["o7"]


def test_fields_relayed_ahead_of_their_replicas_save_are_not_written_twice(
    projects: Projects, project: Project
) -> None:
    """A relayed state newer than the table's copy is its origin's to save, for a grace period;
    fields stamped here are always ours to repair."""
    now = projects.clock.wall_ms()
    saved = ObjectState.created("r1", "rect", {"x": 1}, (now, 0, "b"))
    relayed = saved.updated({"x": 2}, (now + 1, 0, "b"))
    projects.merge(project, [relayed], relayed=True)  # by the relay: memory is ahead of the table
    assert projects.merge(project, [saved]).repaired == []  # the feed brings b's older save: b saves x=2 itself
    assert projects.dirty.counts() == (0, 0)
    projects.edit(project, Update(None, "r1", {"y": 1}))  # ours: dirty anyway
    projects.dirty.take()
    projects.dirty.finish()
    assert projects.merge(project, [relayed]).repaired == ["r1"]  # the table lost our y (b's write clobbered it)


def test_a_relayed_state_is_never_taken_for_the_table(projects: Projects, project: Project) -> None:
    """A relayed state is another replica's memory: one that lacks a field saved here only
    means the sender had not heard of it yet. It marks nothing (the feed shows whether the
    table lost the field); an object waiting to be saved takes the merged state."""
    projects.edit(project, Create(None, "r1", "rect", {"x": 1}))
    sent = project.objects["r1"]
    projects.dirty.take()
    projects.dirty.finish()  # saved
    theirs = ObjectState.created("r1", "rect", {"x": 1}, sent.latest_stamp()).updated(
        {"fill": "red"}, (projects.clock.wall_ms() + 1, 0, "b")
    )
    theirs = ObjectState(theirs.id, theirs.alive, theirs.type, {"fill": theirs.props["fill"]})  # b lacks our x
    result = projects.merge(project, [theirs], relayed=True)
    assert result.changed == ["r1"] and result.repaired == [] and projects.dirty.counts() == (0, 0)
    assert json.loads(project.views["r1"]) == {"id": "r1", "type": "rect", "x": 1, "fill": "red"}
    assert projects.merge(project, [theirs]).repaired == ["r1"]  # the same copy read from the table: ours to repair
    projects.dirty.take()
    projects.dirty.finish()
    projects.edit(project, Update(None, "r1", {"y": 2}))  # waiting to be saved here...
    later = theirs.updated({"fill": "blue"}, (projects.clock.wall_ms() + 5, 0, "b"))
    assert projects.merge(project, [later], relayed=True).repaired == []
    (waiting,) = projects.dirty.take()  # ...with what was relayed meanwhile: one write of the union
    assert waiting.state.view() == {"id": "r1", "type": "rect", "x": 1, "y": 2, "fill": "blue"}


# --- deletes that never lock a board: the budget, the grace, the horizon (horizon.py) -------


def churned(limits: Limits, n: int, wall: list[int], step_ms: int = 0) -> tuple[Projects, Project]:
    """A project where ``n`` objects were created and deleted, every delete saved."""
    projects = Projects(HybridClock("a", wall_ms=lambda: wall[0]), limits)
    project = hold(projects)
    for i in range(n):
        projects.edit(project, Create(None, f"o{i}", "rect", {}))
        projects.edit(project, Delete(None, f"o{i}"))
        wall[0] += step_ms
    projects.dirty.take()
    projects.dirty.finish()  # saved
    return projects, project


def test_past_deletes_never_refuse_a_create() -> None:
    projects = Projects(HybridClock("a"), Limits(max_objects=3, max_tombstones=4))
    project = hold(projects)
    for i in range(50):
        projects.edit(project, Create(None, f"o{i}", "rect", {}))  # never limit_exceeded
        projects.edit(project, Delete(None, f"o{i}"))
    assert len(project.tombstones) == 50  # none is forgotten within the grace
    projects.edit(project, Create(None, "o1", "rect", {}))  # re-creating a deleted id takes its tombstone away
    assert len(project.tombstones) == 49 and views(project) == [{"id": "o1", "type": "rect"}]


def test_the_oldest_settled_tombstones_beyond_the_budget_are_forgotten_behind_the_horizon() -> None:
    wall = [1_000_000]
    limits = Limits(max_tombstones=4, tombstone_grace_ms=10_000)
    projects, project = churned(limits, 10, wall, step_ms=1_000)  # deleted 1 s apart
    wall[0] = 1_000_000 + 10_000 - 1
    assert projects.plan_forget() == []  # every delete is within the grace: nothing yet
    wall[0] = 1_000_000 + 10_000 + 5_000  # o0..o5 have settled for 10 s or more, o6 nearly
    (plan,) = projects.plan_forget()
    assert [s.id for s in plan.over] == ["o0", "o1", "o2", "o3", "o4", "o5"] and plan.expired == []
    assert plan.horizon_ms == project.objects["o5"].alive[1][0]  # the newest delete forgotten
    assert projects.forget(project, plan.over) == 6
    assert list(project.tombstones) == ["o6", "o7", "o8", "o9"]  # the budget
    assert project.horizon_ms >= plan.horizon_ms
    assert "o0" not in project.objects and projects.plan_forget() == []


def test_unsaved_tombstones_are_kept_and_a_save_starts_their_grace_again() -> None:
    wall = [1_000_000]
    limits = Limits(max_tombstones=1, tombstone_grace_ms=10_000)
    projects, project = churned(limits, 3, wall)
    projects.edit(project, Create(None, "late", "rect", {}))
    projects.edit(project, Delete(None, "late"))  # unsaved
    wall[0] += 60_000
    (plan,) = projects.plan_forget()
    assert [s.id for s in plan.over] == ["o0", "o1", "o2"]  # "late" waits: unsaved here
    projects.settled([("p1", "o1")])  # written again just now (a repair): settled now
    (plan,) = projects.plan_forget()
    assert [s.id for s in plan.over] == ["o0", "o2"]


def test_a_tombstone_changed_since_the_plan_is_not_forgotten() -> None:
    wall = [1_000_000]
    projects, project = churned(Limits(max_tombstones=0, tombstone_grace_ms=1), 2, wall)
    wall[0] += 10
    (plan,) = projects.plan_forget()
    projects.edit(project, Create(None, "o0", "rect", {"x": 1}))  # re-created meanwhile
    assert projects.forget(project, plan.over) == 1
    assert views(project) == [{"id": "o0", "type": "rect", "x": 1}] and list(project.tombstones) == []


def test_expired_tombstones_are_forgotten_and_not_loaded() -> None:
    wall = [1_000_000]
    limits = Limits(tombstone_ttl_ms=60_000, tombstone_grace_ms=1_000)
    projects, project = churned(limits, 2, wall, step_ms=30_000)  # o0 deleted at 0 s, o1 at 30 s
    projects.edit(project, Create(None, "live", "rect", {}))
    wall[0] = 1_070_000  # o0 settled 70 s ago, o1 40 s ago
    (plan,) = projects.plan_forget()
    assert [s.id for s in plan.expired] == ["o0"] and plan.over == []
    projects.forget(project, plan.expired)
    assert sorted(project.objects) == ["live", "o1"]
    old = ObjectState("old", (False, (1, 0, "b")), ("rect", (1, 0, "b")))
    reloaded = projects.build("p2", [*project.objects.values(), old])
    assert sorted(reloaded.objects) == ["live", "o1"]  # a load skips expired tombstones too
    assert reloaded.horizon_ms >= wall[0] - 60_000  # and does not trust what expiry dropped


def test_forgetting_reads_only_the_oldest_tombstones(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass costs what it forgets: the scan stops at the first tombstone within the grace."""
    wall = [1_000_000]
    projects, project = churned(Limits(max_tombstones=10, tombstone_grace_ms=5_000), 1000, wall, step_ms=1)
    wall[0] = 1_000_000 + 5_000 + 4  # o0..o4 (deleted 1 ms apart) settled
    read: list[str] = []

    class Counting(dict):  # type: ignore[type-arg]
        def items(self):  # type: ignore[no-untyped-def]
            for item in super().items():
                read.append(item[0])
                yield item

    project.tombstones = Counting(project.tombstones)
    (plan,) = projects.plan_forget()
    assert [s.id for s in plan.over] == [f"o{i}" for i in range(5)] and len(read) == 6


def test_states_behind_the_horizon_of_objects_not_known_here_are_trusted_only_from_the_table() -> None:
    projects = Projects(HybridClock("a"), Limits(max_objects=100))
    project = hold(projects)
    now = projects.clock.wall_ms()
    project.horizon_ms = now - 1_000  # deletes up to a second ago may be forgotten
    projects.edit(project, Create(None, "known", "rect", {"x": 1}))
    old = (now - 5_000, 0, "b")
    stale = ObjectState.created("gone", "rect", {"x": 1}, old)  # perhaps the live copy of a forgotten object
    tomb = ObjectState("dead", (False, old), ("rect", old))
    fresh = ObjectState.created("new", "rect", {}, (now + 1, 0, "b"))
    relayed = projects.merge(project, [stale, tomb, fresh])
    assert relayed.changed == ["new"] and "gone" not in project.objects and "dead" not in project.objects
    update = ObjectState(
        "known", project.objects["known"].alive, project.objects["known"].type, {"x": (2, (now + 2, 0, "b"))}
    )
    assert projects.merge(project, [update]).changed == ["known"]  # objects known here merge as ever
    from_table = projects.merge(project, [stale, tomb], trusted=True)
    assert from_table.changed == ["gone"] and "dead" not in project.objects  # nothing stale gets into the table


def test_a_replay_of_a_create_behind_the_horizon_does_not_bring_it_back(projects: Projects, project: Project) -> None:
    now = projects.clock.wall_ms()
    project.horizon_ms = now - 1_000
    edit = projects.edit(project, Create(None, "gone", "rect", {}, stamp=(now - 5_000, 0, "a")))
    assert edit.replay == "duplicate" and edit.echo is not None and json.loads(edit.echo.text)["op"] == "delete"
    assert "gone" not in project.objects and projects.dirty.counts() == (0, 0)
    edit = projects.edit(project, Create(None, "new", "rect", {}, stamp=(now - 10, 0, "a")))  # after the horizon
    assert edit.replay == "applied" and "new" in project.views


def test_refresh_keeps_what_only_memory_holds_unless_it_may_be_stale(projects: Projects, project: Project) -> None:
    projects.edit(project, Create(None, "a", "rect", {"x": 1}))
    projects.edit(project, Create(None, "b", "rect", {}))
    projects.edit(project, Create(None, "c", "rect", {}))
    projects.dirty.take()
    projects.dirty.finish()
    projects.edit(project, Update(None, "a", {"x": 2}))  # unsaved, of an object the table still has
    projects.edit(project, Delete(None, "b"))  # unsaved: "b" went from the table too (forgotten)
    projects.edit(project, Update(None, "c", {"y": 3}))  # unsaved: "c" was deleted and forgotten elsewhere
    conn = Recorder()
    project.subscribe(conn)  # type: ignore[arg-type]
    table = [project.objects["a"].updated({"x": 1}, project.objects["a"].alive[1])]  # the table's "a": x=1
    horizon = projects.clock.wall_ms()
    fresh = projects.build("p1", [ObjectState.from_doc(s.id, s.to_doc()) for s in table], 0, gen=0, horizon_ms=horizon)
    messages = projects.refresh(project, fresh)
    assert views(project) == [{"id": "a", "type": "rect", "x": 2}]  # kept and merged
    assert {json.loads(m.text)["op"] for m in messages} == {"delete"} and len(messages) == 1  # "c" went
    assert project.horizon_ms >= horizon and project.connections == {conn}
    assert sorted(o for _, o in projects.dirty.keys()) == ["a"]  # "c" is dropped unsaved; "b" is unknown: gone


def test_a_dropped_copy_takes_no_more_marks_and_its_unsaved_states_go(projects: Projects, project: Project) -> None:
    projects.edit(project, Create(None, "a", "rect", {}))
    assert projects.drop("p1", 1) is project and project.dropped and projects.get("p1") is None
    assert projects.dirty.counts() == (0, 0)
    projects.edit(project, Create(None, "b", "rect", {}))  # the old copy, edited late: nothing to save
    assert projects.dirty.counts() == (0, 0)
    new = projects.install(projects.build("p1", [], gen=1))  # the id starts again, empty, in generation 1
    assert projects.drop("p1", 1) is None  # a second word of the same delete drops nothing
    projects.edit(new, Create(None, "c", "rect", {}))
    assert [(o.state.id, o.gen) for o in projects.dirty.take()] == [("c", 1)]


class Recorder:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, text: str, key: object = None, latest: bool = False) -> bool:
        self.sent.append(text)
        return False
