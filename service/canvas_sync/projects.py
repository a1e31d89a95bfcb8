"""The projects this replica holds in memory, the edits clients make to them, and the
merge of states saved or relayed by other replicas.

Everything here belongs to the asyncio loop: projects, their objects and views, their
connections. Other threads get only what the loop hands them: a cache-miss load builds a
new project in a thread (nobody sees it yet) and the loop installs it; the auto-save
thread reads the states the loop put in the :class:`~canvas_sync.dirty.DirtySet`.

What a client can make us hold is bounded: live objects and tombstones per project, the
visible size of an object and the size of what is stored for it (removed properties keep
their names and stamps, so they count).
"""

from __future__ import annotations

import gc
import itertools
import threading
import time
from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from . import protocol
from .dirty import DirtySet
from .model import TOMBSTONE_TTL, ZERO, HybridClock, ObjectState, Stamp, merge, newer_stamps
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
    def send(self, text: str, key: Hashable | None = None, latest: bool = False) -> bool | None: ...


class Broadcast(NamedTuple):
    """A message for a project's clients; ``key`` and ``latest`` as in :meth:`Outbox.put`."""

    text: str
    key: Hashable | None = None
    latest: bool = False

    @staticmethod
    def upsert(object_id: str, view_json: str) -> Broadcast:
        return Broadcast(protocol.upsert(view_json), object_id, True)

    @staticmethod
    def deleted(object_id: str) -> Broadcast:
        return Broadcast(protocol.deleted(object_id), object_id, False)


@dataclass
class Project:
    """One canvas held in memory (owned by the loop)."""

    id: str
    loaded_at_ms: int = 0
    """Wall-clock ms when its load began: the change feed takes over from there."""
    loaded_heads: dict[str, str] | None = field(default_factory=dict)
    """The project's head as read just before the load (None: it could not be read)."""
    objects: dict[str, ObjectState] = field(default_factory=dict)
    views: dict[str, str] = field(default_factory=dict)
    """Canonical JSON of each live object, kept current so snapshots cost no encoding."""
    tombstones: dict[str, int] = field(default_factory=dict)
    """Deleted objects still remembered: object id -> delete time (ms), oldest first
    (in the order the deletes reached this replica, which is close enough: see
    :meth:`Projects.expire_tombstones`)."""
    connections: set[Subscriber] = field(default_factory=set)
    last_active: float = field(default_factory=time.monotonic)

    def set_object(self, state: ObjectState) -> str | None:
        """Store a state and refresh its view; returns the new view JSON (None if deleted)."""
        self.objects[state.id] = state
        view = state.view()
        if view is None:
            self.views.pop(state.id, None)
            self.tombstones.pop(state.id, None)  # to the end: the newest delete
            self.tombstones[state.id] = state.alive[1][0]
            return None
        self.tombstones.pop(state.id, None)
        text = protocol.encode(view)
        self.views[state.id] = text
        return text

    def snapshot_jsons(self) -> list[str]:
        return [self.views[k] for k in sorted(self.views)]

    def broadcast(self, message: Broadcast, exclude: Subscriber | None = None) -> int:
        """Returns how many idle writers this woke."""
        text, key, latest = message
        woken = 0
        for conn in self.connections:  # send() never changes the set (a slow client is only marked)
            if conn is not exclude and conn.send(text, key, latest):
                woken += 1
        return woken


class Edit(NamedTuple):
    """What one accepted change did."""

    broadcast: Broadcast | None
    """For the other clients; None when nothing they see changed."""
    stamp: Stamp
    """The stamp the change was given: what its ``ack`` names, and what a replay sends back."""
    version: int
    """Its mark in the dirty set (saved acknowledgements wait for it)."""
    echo: Broadcast | None = None
    """A replay's answer to its sender before the ack: the object as it is now, which may
    be newer than the replayed change."""
    replay: str = ""
    """For a replay, ``applied`` (memory changed) or ``duplicate`` (memory had it already)."""


@dataclass
class Merged:
    """What merging saved or relayed states changed: ids, messages for clients, ids marked for repair."""

    changed: list[str] = field(default_factory=list)
    messages: list[Broadcast] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one project may hold; docs/configuration.md says what each setting means."""

    max_objects: int = 10_000
    max_object_bytes: int = 16_384
    max_stored_object_bytes: int = 65_536
    max_tombstones: int = 10_000
    tombstone_ttl_ms: int = int(TOMBSTONE_TTL * 1000)


class Projects:
    """The registry: every project this replica holds, and the edits and merges applied to them."""

    def __init__(
        self,
        clock: HybridClock,
        limits: Limits | None = None,
        dirty: DirtySet | None = None,
        repair_grace_ms: int = 7_000,
    ) -> None:
        self.clock = clock
        self.limits = limits or Limits()
        self.dirty = dirty or DirtySet()
        self.repair_grace_ms = repair_grace_ms
        """How long another replica's relayed fields may be missing from the table before
        this replica writes them itself (``_owed``): its auto-save interval and a margin."""
        self.projects: dict[str, Project] = {}

    # --- holding projects -------------------------------------------------------------

    def get(self, project_id: str) -> Project | None:
        return self.projects.get(project_id)

    def build(self, project_id: str, states: Iterable[ObjectState], loaded_at_ms: int = 0) -> Project:
        """A project from the states a load read (run in the load's thread: nobody sees it yet).

        Tombstones past their expiry are left out, as the table's readers do.
        """
        project = Project(project_id, loaded_at_ms=loaded_at_ms)
        latest = ZERO
        horizon = self.clock.wall_ms() - self.limits.tombstone_ttl_ms
        for state in states:
            if not state.is_alive and state.alive[1][0] < horizon:
                continue
            latest = max(latest, state.latest_stamp())
            project.set_object(state)
        project.tombstones = dict(sorted(project.tombstones.items(), key=lambda item: item[1]))
        self.clock.observe(latest)
        return project

    def install(self, project: Project) -> Project:
        """Hold a built project; if a concurrent load got there first, that one stays."""
        return self.projects.setdefault(project.id, project)

    def evict_idle(self, idle_seconds: float, now: float | None = None) -> list[str]:
        """Drop projects with no connections, nothing unsaved and no recent activity."""
        now = time.monotonic() if now is None else now
        evicted = [
            pid
            for pid, project in self.projects.items()
            if not project.connections and now - project.last_active >= idle_seconds and not self.dirty.holds(pid)
        ]
        for pid in evicted:
            del self.projects[pid]
            self.dirty.forget(pid)
        return evicted

    def expire_tombstones(self, now_ms: int | None = None) -> int:
        """Forget tombstones older than the horizon (``CANVAS_TOMBSTONE_TTL``); how many.

        The table's copies expire on the same horizon (their TTL), so memory, loads and
        reconciles stay bounded by what clients deleted lately. Each project is read from
        its oldest delete up to the first one still within the horizon, so a pass costs
        what it forgets, not what is held. A delete merged late from another replica may
        sit behind newer ones and is forgotten with them, at most one horizon later.
        """
        horizon = (self.clock.wall_ms() if now_ms is None else now_ms) - self.limits.tombstone_ttl_ms
        dropped = 0
        for project in self.projects.values():
            old = [oid for oid, _ in itertools.takewhile(lambda item: item[1] < horizon, project.tombstones.items())]
            for oid in old:
                del project.tombstones[oid]
                del project.objects[oid]
            dropped += len(old)
        return dropped

    # --- edits --------------------------------------------------------------------------

    def edit(self, project: Project, command: Create | Update | Delete) -> Edit:
        """Apply a client's change; raises :class:`ProtocolError` and changes nothing when refused.

        A change that carries a stamp (a replay of one acked before, perhaps by a replica
        that died since) merges with that stamp: idempotent, and anything newer still
        wins. A stamp ahead of this replica's clock gets a fresh one instead, so no client
        wins by dating its change forward.
        """
        project.last_active = time.monotonic()
        stamp = command.stamp
        if stamp is not None and stamp < self.clock.now():
            return self._replay(project, command, stamp)
        if isinstance(command, Create):
            return self._create(project, command)
        if isinstance(command, Update):
            return self._update(project, command)
        return self._delete(project, command)

    def _live(self, project: Project, object_id: str, req: str | None) -> ObjectState:
        state = project.objects.get(object_id)
        if state is None or not state.is_alive:
            raise ProtocolError("not_found", f"no object {object_id!r}", req)
        return state

    def _check_stored(self, state: ObjectState, view_bytes: int, req: str | None) -> None:
        limit = self.limits.max_stored_object_bytes
        if state.stored_size_bound(view_bytes) > limit and state.stored_size() > limit:
            raise ProtocolError(
                "too_large",
                f"object would take more than {limit} bytes to store "
                "(removed properties keep their names until the object is deleted)",
                req,
            )

    def _check_room(self, project: Project, old: ObjectState | None, req: str | None) -> None:
        """A create of a new id (or of a deleted one) must fit the project's limits."""
        if len(project.views) >= self.limits.max_objects:
            raise ProtocolError("limit_exceeded", f"a project holds at most {self.limits.max_objects} objects", req)
        if old is None and len(project.tombstones) >= self.limits.max_tombstones:
            raise ProtocolError(
                "limit_exceeded",
                f"this project remembers {self.limits.max_tombstones} recently deleted objects, "
                "the most it may: re-create a deleted id or try again later",
                req,
            )

    def _create(self, project: Project, cmd: Create) -> Edit:
        old = project.objects.get(cmd.id)
        if old is not None and old.is_alive:
            if cmd.retry:  # it landed before the socket died (the relay may have brought it): set it again
                return self._update(project, Update(cmd.req, cmd.id, {**cmd.props, "type": cmd.type}), force=True)
            raise ProtocolError("conflict", f"object {cmd.id!r} already exists", cmd.req)
        self._check_room(project, old, cmd.req)
        stamp = self.clock.now() if old is None else self.clock.now_after(old.latest_stamp())
        new = ObjectState.created(cmd.id, cmd.type, cmd.props, stamp)
        if old is not None:
            new = merge(old, new)
        view = protocol.encode(new.view())
        self._check_stored(new, len(view.encode()), cmd.req)
        project.set_object(new)
        return Edit(Broadcast.upsert(cmd.id, view), stamp, self.dirty.mark(project.id, new))

    def _update(self, project: Project, cmd: Update, force: bool = False) -> Edit:
        """``force``: mark the object for saving even if nothing changes (a retried create)."""
        state = self._live(project, cmd.id, cmd.req)
        view: dict[str, Any] = state.view() or {}
        absent = []
        for name, value in cmd.props.items():
            if value is not None:
                view[name] = value
            elif name in view:
                del view[name]
            else:
                absent.append(name)  # removing what is not there: nothing to remember
        changes = {k: v for k, v in cmd.props.items() if k not in absent} if absent else cmd.props
        if not changes:
            return Edit(None, self.clock.now(), self.dirty.mark(project.id, state) if force else self.dirty.version())
        self._check_props(len(view), cmd.req)
        text = protocol.encode(view)  # the new view: checked for size, then kept and sent as is
        size = self._check_view(text, cmd.req)
        stamp = self.clock.now_after(state.latest_stamp())
        new = state.updated(changes, stamp)
        self._check_stored(new, size, cmd.req)
        project.objects[cmd.id] = new
        project.views[cmd.id] = text
        return Edit(Broadcast.upsert(cmd.id, text), stamp, self.dirty.mark(project.id, new))

    def _check_props(self, view_keys: int, req: str | None) -> None:
        if view_keys - 2 > protocol.MAX_PROPS:
            raise ProtocolError("bad_message", f"at most {protocol.MAX_PROPS} properties besides id and type", req)

    def _check_view(self, text: str, req: str | None) -> int:
        size = len(text.encode())
        if size > self.limits.max_object_bytes:
            raise ProtocolError("too_large", f"object would be larger than {self.limits.max_object_bytes} bytes", req)
        return size

    def _delete(self, project: Project, cmd: Delete) -> Edit:
        gone = project.objects.get(cmd.id)
        if cmd.retry and (gone is None or not gone.is_alive):  # it landed before the socket died
            version = self.dirty.mark(project.id, gone) if gone is not None else self.dirty.version()
            return Edit(None, gone.alive[1] if gone is not None else self.clock.now(), version)
        state = self._live(project, cmd.id, cmd.req)
        stamp = self.clock.now_after(state.latest_stamp())
        tomb = ObjectState(state.id, (False, stamp), state.type, {})
        project.set_object(tomb)
        return Edit(Broadcast.deleted(cmd.id), stamp, self.dirty.mark(project.id, tomb))

    # --- replays ------------------------------------------------------------------------

    def _replay(self, project: Project, cmd: Create | Update | Delete, stamp: Stamp) -> Edit:
        """Merge a change with the stamp it was first given, field by field.

        A create of an object that exists (with that stamp, or newer) and a delete of one
        already gone are no conflict: the merge keeps what is newest. The result is marked
        dirty even when memory held it already: it may have come by the relay from a
        replica that died before saving it, and its sender waits for ``saved``.
        """
        old = project.objects.get(cmd.id)
        if isinstance(cmd, Create):
            new = ObjectState.created(cmd.id, cmd.type, cmd.props, stamp)
            if old is None or (not old.is_alive and old.alive[1] < stamp):
                self._check_room(project, old, cmd.req)
            if old is not None:
                new = merge(old, new)
        elif isinstance(cmd, Update):
            if old is None:
                raise ProtocolError("not_found", f"no object {cmd.id!r}", cmd.req)
            type_ = (cmd.props["type"], stamp) if "type" in cmd.props else (old.type[0], ZERO)
            props = {name: (value, stamp) for name, value in cmd.props.items() if name != "type"}
            new = merge(old, ObjectState(cmd.id, (old.alive[0], ZERO), type_, props))
        else:
            if old is None:  # never here, or forgotten: gone either way
                return Edit(None, stamp, self.dirty.version(), Broadcast.deleted(cmd.id), "duplicate")
            new = merge(old, ObjectState(cmd.id, (False, stamp), old.type, {}))
        view = new.view()
        if view is not None and new != old:
            self._check_props(len(view), cmd.req)
            text = protocol.encode(view)
            self._check_stored(new, self._check_view(text, cmd.req), cmd.req)
        before = project.views.get(cmd.id)
        after = project.set_object(new) if new != old else before
        version = self.dirty.mark(project.id, new)
        outcome = "applied" if new != old else "duplicate"
        if after is not None:
            echo = Broadcast.upsert(cmd.id, after)
            return Edit(echo if after != before else None, stamp, version, echo, outcome)
        gone = Broadcast.deleted(cmd.id)
        return Edit(gone if before is not None else None, stamp, version, gone, outcome)

    # --- states from other replicas ---------------------------------------------------

    def _owed(self, merged: ObjectState, table: ObjectState) -> bool:
        """Whether this replica should write what memory knows beyond the table's copy.

        Fields stamped here are ours to save. Fields another replica stamped lately came
        by the relay ahead of that replica's own save, which is on its way: writing them
        too would double the writes of every relayed edit. Once older than
        ``repair_grace_ms`` and still missing from the table (the change feed re-reads a
        save for ``CANVAS_SYNC_OVERLAP``, longer than the grace), they were lost or
        overwritten, and any replica that knows them repairs.
        """
        me, horizon = self.clock.replica_id, self.clock.wall_ms() - self.repair_grace_ms
        return any(stamp[2] == me or stamp[0] < horizon for stamp in newer_stamps(merged, table))

    def merge(self, project: Project, states: Iterable[ObjectState]) -> Merged:
        """Merge states saved or relayed by other replicas into memory, per property.

        A state equal to memory's costs one comparison. Clients of this replica get an
        upsert/delete for every visible change. Where the merged state differs from what
        the table holds (our copy knew something the item lacks, e.g. after another
        replica's batch overwrote it), the object is marked dirty so the next save writes
        the union back: anti-entropy.
        """
        result = Merged()
        if self.projects.get(project.id) is not project:
            return result  # evicted while the read was in flight: nothing to merge into
        for remote in states:
            local = project.objects.get(remote.id)
            if local is not None and local == remote:
                continue
            remote = remote.pruned()
            self.clock.observe(remote.latest_stamp())
            merged = remote if local is None else merge(local, remote)
            if merged != local:
                before = project.views.get(remote.id)
                after = project.set_object(merged)
                result.changed.append(remote.id)
                if after is not None and after != before:
                    result.messages.append(Broadcast.upsert(remote.id, after))
                elif after is None and before is not None:
                    result.messages.append(Broadcast.deleted(remote.id))
            if self.dirty.merged(project.id, merged, table_behind=merged != remote and self._owed(merged, remote)):
                result.repaired.append(remote.id)
        return result
