"""In-memory projects, the edits applied to them, and which objects still need saving.

The asyncio loop applies edits; the auto-save thread takes dirty objects. Both go through
one lock, held only for dictionary work (never for I/O or JSON encoding of a whole
project), so the loop never waits on DynamoDB.

Dirty tracking is per object: many edits to one object between two saves cost one write,
and a project of 10,000 objects with one edit writes one item.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import protocol
from .model import ZERO, HybridClock, ObjectState, merge
from .protocol import Create, Delete, ProtocolError, Update


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a project loads.

    A load allocates a few containers per object, all of them kept; the collector would
    run over them again and again (about a fifth of a 10,000-object load). Reference
    counting still frees everything meanwhile. Nested and concurrent loads share one pause.
    """
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


class Subscriber(Protocol):
    def send(self, text: str) -> None: ...


@dataclass
class Project:
    """One canvas held in memory."""

    id: str
    objects: dict[str, ObjectState] = field(default_factory=dict)
    views: dict[str, str] = field(default_factory=dict)
    """Canonical JSON of each live object, kept current so snapshots cost no encoding."""
    connections: set[Subscriber] = field(default_factory=set)
    last_save_at: float | None = None
    last_active: float = field(default_factory=time.monotonic)
    sync_watermark_ms: int = 0
    """Largest ``saved_at`` pulled from the change feed (or the load's start)."""
    last_reconcile: float = field(default_factory=time.monotonic)
    other_heads: dict[str, str] = field(default_factory=dict)
    """Other replicas' tokens in the project's ``#head`` as last read (see sync.py)."""
    feed_until: float = 0.0
    """Monotonic time until which the change feed is queried every pass."""

    def set_object(self, state: ObjectState) -> str | None:
        """Store a state and refresh its view; returns the new view JSON (None if deleted)."""
        self.objects[state.id] = state
        view = state.view()
        if view is None:
            self.views.pop(state.id, None)
            return None
        text = protocol.encode(view)
        self.views[state.id] = text
        return text

    def snapshot_jsons(self) -> list[str]:
        return [self.views[k] for k in sorted(self.views)]

    def broadcast(self, text: str, exclude: Subscriber | None = None) -> None:
        for conn in self.connections:  # send() never changes the set (a slow client is only marked)
            if conn is not exclude:
                conn.send(text)


@dataclass
class RemoteMerge:
    """What merging table states changed: ids, messages for clients, ids marked for repair."""

    changed: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DirtyObject:
    """A copy of one object's state taken for saving."""

    project: str
    state: ObjectState


class CanvasState:
    """All projects this replica holds, plus the per-object dirty set."""

    def __init__(self, clock: HybridClock, max_objects_per_project: int, max_object_bytes: int) -> None:
        self.clock = clock
        self.max_objects = max_objects_per_project
        self.max_object_bytes = max_object_bytes
        self.projects: dict[str, Project] = {}
        self._dirty: dict[str, set[str]] = {}
        self._saving: dict[str, set[str]] = {}
        """Objects taken by the save in progress: not yet durable, so still counted dirty."""
        self.lock = threading.Lock()

    # --- holding projects -------------------------------------------------------------

    def get(self, project_id: str) -> Project | None:
        return self.projects.get(project_id)

    def install(self, project_id: str, states: Iterable[ObjectState], watermark_ms: int = 0) -> Project:
        """Hold a project loaded from the table (first load wins if raced).

        The project and its views are built before taking the lock (nobody sees it yet),
        so a big load run in a thread never holds up the loop's edits.
        """
        project = Project(project_id, sync_watermark_ms=watermark_ms)
        latest = ZERO
        for state in states:
            latest = max(latest, state.latest_stamp())
            project.set_object(state)
        self.clock.observe(latest)
        with self.lock:
            return self.projects.setdefault(project_id, project)

    def evict_idle(self, idle_seconds: float, now: float | None = None) -> list[str]:
        """Drop projects with no connections, nothing unsaved and no recent activity."""
        now = time.monotonic() if now is None else now
        evicted = []
        with self.lock:
            for pid, project in list(self.projects.items()):
                if (
                    not project.connections
                    and not self._dirty.get(pid)
                    and not self._saving.get(pid)
                    and now - project.last_active >= idle_seconds
                ):
                    del self.projects[pid]
                    evicted.append(pid)
        return evicted

    # --- edits --------------------------------------------------------------------------

    def apply(self, project: Project, command: Create | Update | Delete) -> str:
        """Apply a client edit; returns the message for the other clients.

        Raises :class:`ProtocolError` and changes nothing when the edit is refused.
        """
        with self.lock:
            project.last_active = time.monotonic()
            if isinstance(command, Create):
                text = self._create(project, command)
            elif isinstance(command, Update):
                text = self._update(project, command)
            else:
                text = self._delete(project, command)
            self._dirty.setdefault(project.id, set()).add(command.id)
            return text

    def _live(self, project: Project, object_id: str, req: str | None) -> ObjectState:
        state = project.objects.get(object_id)
        if state is None or not state.is_alive:
            raise ProtocolError("not_found", f"no object {object_id!r}", req)
        return state

    def _create(self, project: Project, cmd: Create) -> str:
        old = project.objects.get(cmd.id)
        if old is not None and old.is_alive:
            raise ProtocolError("conflict", f"object {cmd.id!r} already exists", cmd.req)
        if len(project.views) >= self.max_objects:
            raise ProtocolError("limit_exceeded", f"a project holds at most {self.max_objects} objects", cmd.req)
        new = ObjectState.created(cmd.id, cmd.type, cmd.props, self.clock.now())
        view = project.set_object(merge(old, new) if old is not None else new)
        assert view is not None
        return protocol.upsert(view)

    def _update(self, project: Project, cmd: Update) -> str:
        state = self._live(project, cmd.id, cmd.req)
        view: dict[str, Any] = state.view() or {}
        for name, value in cmd.props.items():
            if value is None:
                view.pop(name, None)
            else:
                view[name] = value
        if len(view) - 2 > protocol.MAX_PROPS:
            raise ProtocolError("bad_message", f"at most {protocol.MAX_PROPS} properties besides id and type", cmd.req)
        text = protocol.encode(view)  # the new view: checked for size, then kept and sent as is
        if len(text.encode()) > self.max_object_bytes:
            raise ProtocolError("too_large", f"object would be larger than {self.max_object_bytes} bytes", cmd.req)
        project.objects[cmd.id] = state.updated(cmd.props, self.clock.now())
        project.views[cmd.id] = text
        return protocol.upsert(text)

    def _delete(self, project: Project, cmd: Delete) -> str:
        state = self._live(project, cmd.id, cmd.req)
        project.set_object(ObjectState(state.id, (False, self.clock.now()), state.type, {}))
        return protocol.deleted(cmd.id)

    # --- states read from the table -------------------------------------------------

    def merge_remote(self, project: Project, states: Iterable[ObjectState]) -> RemoteMerge:
        """Merge states read from the table into memory, per property.

        Clients of this replica get an upsert/delete for every visible change. Where the
        merged state differs from what the table holds (our copy knew something the item
        lacks, e.g. after another replica's batch overwrote it), the object is marked
        dirty so the next save writes the union back: anti-entropy.
        """
        result = RemoteMerge()
        with self.lock:
            if self.projects.get(project.id) is not project:
                return result  # evicted while the read was in flight: nothing to merge into
            for remote in states:
                remote = remote.pruned()
                self.clock.observe(remote.latest_stamp())
                local = project.objects.get(remote.id)
                merged = remote if local is None else merge(local, remote)
                if merged != local:
                    before = project.views.get(remote.id)
                    after = project.set_object(merged)
                    result.changed.append(remote.id)
                    if after is not None and after != before:
                        result.messages.append(protocol.upsert(after))
                    elif after is None and before is not None:
                        result.messages.append(protocol.deleted(remote.id))
                if merged != remote:
                    dirty = self._dirty.setdefault(project.id, set())
                    saving = remote.id in self._saving.get(project.id, ())
                    if merged == local and saving:
                        continue  # the save in flight writes exactly this: no second write
                    if remote.id not in dirty and not saving:
                        result.repaired.append(remote.id)
                    dirty.add(remote.id)
        return result

    def dirty_keys(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(pid, oid) for pid, ids in self._dirty.items() for oid in ids]

    # --- saving -------------------------------------------------------------------------

    def _unsaved(self, project_id: str) -> int:
        dirty, saving = self._dirty.get(project_id, set()), self._saving.get(project_id, set())
        return len(dirty) + len(saving - dirty)

    def dirty_counts(self) -> tuple[int, int]:
        """(projects with unsaved objects, unsaved objects), counting a save in progress."""
        with self.lock:
            counts = [self._unsaved(pid) for pid in self._dirty.keys() | self._saving.keys()]
            return sum(1 for n in counts if n), sum(counts)

    def project_dirty(self, project_id: str) -> int:
        with self.lock:
            return self._unsaved(project_id)

    def take_dirty(self) -> list[DirtyObject]:
        """Swap the dirty set for an empty one and copy the states (one short lock).

        One save at a time: the auto-save thread is the only caller.
        """
        with self.lock:
            taken, self._dirty = self._dirty, {}
            self._saving = taken
            out = []
            for pid, ids in taken.items():
                project = self.projects.get(pid)
                if project is None:  # cannot happen: dirty projects are never evicted
                    continue
                for oid in ids:
                    # ObjectState is replaced, never mutated, on each edit: the reference is a copy.
                    out.append(DirtyObject(pid, project.objects[oid]))
            return out

    def finish_save(self, taken: list[DirtyObject], failed: Iterable[DirtyObject]) -> None:
        """Record a pass: failed objects become dirty again, saved projects get a timestamp.

        An object edited during the save is already dirty again (the edit re-added it),
        so nothing here can clear or lose it.
        """
        failed_list = list(failed)
        now = time.time()
        with self.lock:
            for item in failed_list:
                self._dirty.setdefault(item.project, set()).add(item.state.id)
            failed_projects = {item.project for item in failed_list}
            self._saving = {}
            for pid in {item.project for item in taken}:
                project = self.projects.get(pid)
                if project is not None and pid not in failed_projects:
                    project.last_save_at = now
