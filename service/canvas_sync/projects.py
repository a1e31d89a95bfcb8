"""The projects this replica holds in memory, the edits clients make to them, and the
merge of states saved or relayed by other replicas.

Everything here belongs to the asyncio loop: projects, their objects and views, their
connections. Other threads get only what the loop hands them: a cache-miss load builds a
new project in a thread (nobody sees it yet) and the loop installs it; the auto-save
thread reads the states the loop put in the :class:`~canvas_sync.dirty.DirtySet`.

What a client can make us hold is bounded: live objects per project, the visible size of
an object and the size of what is stored for it (removed properties keep their names and
stamps, so they count). Deletes are remembered within a budget that never refuses an
edit: the oldest tombstones beyond it are forgotten behind the project's horizon
(``horizon.py`` says when that is safe).
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from . import protocol
from .dirty import DirtySet
from .gathering import Gathering
from .horizon import forgettable
from .model import TOMBSTONE_GRACE, TOMBSTONE_TTL, ZERO, HybridClock, ObjectState, Stamp, merge, newer_stamps
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
    def send(self, text: str, key: Hashable | None = None, latest: bool = False) -> None: ...


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
    """Deleted objects still remembered: object id -> when the tombstone settled here (ms:
    its delete, its arrival from another replica or the table, or its save), oldest first
    (in the order they settled, which is close enough: see :meth:`Projects.plan_forget`)."""
    connections: set[Subscriber] = field(default_factory=set)
    direct: set[Subscriber] = field(default_factory=set)
    """The connections that get each broadcast one by one: all but the gathering's members."""
    gathering: Gathering = field(init=False, repr=False)
    """Broadcasts kept once for the sockets that gather (``gathering.py``)."""
    last_active: float = field(default_factory=time.monotonic)
    gen: int = 0
    """The project's generation this copy belongs to (``#head``; a delete raises it)."""
    horizon_ms: int = 0
    """Deletes stamped at or before it may be forgotten here (``horizon.py``): a state of
    an object this copy does not know, stamped no later, is not trusted."""
    dropped: bool = False
    """The project was deleted: this copy no longer takes edits."""

    def __post_init__(self) -> None:
        self.gathering = Gathering(self.direct)

    def set_object(self, state: ObjectState, settled_ms: int | None = None) -> str | None:
        """Store a state and refresh its view; returns the new view JSON (None if deleted).

        ``settled_ms``: when a tombstone settled here (default: its delete's stamp).
        """
        self.objects[state.id] = state
        view = state.view()
        if view is None:
            self.views.pop(state.id, None)
            self.tombstones.pop(state.id, None)  # to the end: the newest delete
            self.tombstones[state.id] = max(state.alive[1][0], settled_ms or 0)
            return None
        self.tombstones.pop(state.id, None)
        text = protocol.encode(view)
        self.views[state.id] = text
        return text

    def snapshot_jsons(self) -> list[str]:
        return [self.views[k] for k in sorted(self.views)]

    def subscribe(self, conn: Subscriber) -> None:
        self.connections.add(conn)
        self.direct.add(conn)

    def unsubscribe(self, conn: Subscriber) -> None:
        self.connections.discard(conn)
        self.direct.discard(conn)
        self.gathering.drop(conn)

    def broadcast(self, message: Broadcast, exclude: Subscriber | None = None) -> None:
        text, key, latest = message
        for conn in self.direct:  # send() never changes the set (a slow client is only marked)
            if conn is not exclude:
                conn.send(text, key, latest)
        if self.gathering.members:
            self.gathering.put(text, key, latest, exclude)


FORWARD_MS = 1_000
"""How far ahead of this replica's clock a replayed stamp may be and still count: the clocks
of two replicas differ by a few milliseconds, and a replay from one that died must keep its
stamp; past this it is dated forward, and a fresh stamp replaces it."""


class Unknown(Exception):
    """A replayed change to an object memory has never seen: read the table, then apply it."""

    def __init__(self, object_id: str) -> None:
        super().__init__(object_id)
        self.object_id = object_id


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


class Replaced(NamedTuple):
    """What :meth:`Projects.replace` did."""

    messages: list[Broadcast]
    """For every client of the project (none sent this change over a socket)."""
    states: list[ObjectState]
    """The new state of every object it changed (for the relay)."""
    created: int
    updated: int
    deleted: int
    version: int
    """Its last mark in the dirty set."""


def _differences(old: ObjectState, old_json: str | None, cmd: Create) -> tuple[dict[str, Any], str]:
    """The update that turns a live object into the one given (changed values, and ``None``
    for each property it lacks; values compared as canonical JSON: ``1`` is not ``true``),
    and the given object's canonical JSON. An object equal to the one held costs one encoding."""
    target: dict[str, Any] = {**cmd.props, "type": cmd.type}
    target_json = protocol.encode({**target, "id": cmd.id})
    if target_json == old_json:
        return {}, target_json
    view = old.view() or {}
    changes = {k: v for k, v in target.items() if k not in view or protocol.encode(view[k]) != protocol.encode(v)}
    changes.update({k: None for k in view if k not in target and k != "id"})
    return changes, target_json


class Forget(NamedTuple):
    """What one project may forget now (:meth:`Projects.plan_forget`)."""

    project: Project
    expired: list[ObjectState]
    """Past ``CANVAS_TOMBSTONE_TTL``: forgotten at once (the table's copies expire too)."""
    over: list[ObjectState]
    """Beyond the budget: forgotten once the head's horizon covers ``horizon_ms``, then
    their items are deleted."""
    horizon_ms: int
    """The newest delete among ``over`` (0 when none)."""


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
    """The tombstone budget: beyond it the oldest settled ones are forgotten (never a refusal)."""
    tombstone_ttl_ms: int = int(TOMBSTONE_TTL * 1000)
    tombstone_grace_ms: int = int(TOMBSTONE_GRACE * 1000)


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

    def build(
        self, project_id: str, states: Iterable[ObjectState], loaded_at_ms: int = 0, gen: int = 0, horizon_ms: int = 0
    ) -> Project:
        """A project from the states a load read (run in the load's thread: nobody sees it yet).

        Tombstones past their expiry or behind the horizon are left out, as the table's
        readers skip them; the copy's horizon covers what expiry dropped. The tombstones
        kept settle now: they may have been saved a moment ago.
        """
        now = self.clock.wall_ms()
        horizon = max(horizon_ms, now - self.limits.tombstone_ttl_ms)
        project = Project(project_id, loaded_at_ms=loaded_at_ms, gen=gen, horizon_ms=horizon)
        latest = ZERO
        for state in states:
            if not state.is_alive and state.alive[1][0] <= horizon:
                continue
            latest = max(latest, state.latest_stamp())
            project.set_object(state, now)
        project.tombstones = dict(sorted(project.tombstones.items(), key=lambda item: item[1]))
        self.clock.observe(max(latest, (horizon_ms, 0, "")))  # what this copy stamps is never behind its horizon
        return project

    def install(self, project: Project) -> Project:
        """Hold a built project; if a concurrent load got there first, that one stays."""
        held = self.projects.setdefault(project.id, project)
        self.dirty.holding(held.id, held.gen)
        return held

    def drop(self, project_id: str, gen: int) -> Project | None:
        """The project was deleted (its generation is now ``gen``): let go of a copy of an
        older generation and of everything unsaved of it; the copy, if one was held."""
        self.dirty.discard(project_id, gen)
        project = self.projects.get(project_id)
        if project is None or project.gen >= gen:
            return None
        del self.projects[project_id]
        project.dropped = True
        return project

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

    # --- forgetting deletes (horizon.py says when it is safe) -----------------------------

    def plan_forget(self, now_ms: int | None = None) -> list[Forget]:
        """What every held project may forget now: tombstones past ``CANVAS_TOMBSTONE_TTL``
        (the table's copies expire with them) and the oldest beyond the budget (their items
        are to be deleted once the head's horizon covers them). Each project is read from
        its oldest tombstone to the first one still within the grace, so a pass costs what
        it forgets, not what is held."""
        now = self.clock.wall_ms() if now_ms is None else now_ms
        plans = []
        for project in self.projects.values():
            if not project.tombstones:
                continue
            expired, over = forgettable(
                project.tombstones,
                self.dirty.unsaved_ids(project.id),
                now,
                budget=self.limits.max_tombstones,
                grace_ms=self.limits.tombstone_grace_ms,
                ttl_ms=self.limits.tombstone_ttl_ms,
            )
            if expired or over:
                objects = project.objects
                plans.append(
                    Forget(
                        project,
                        [objects[oid] for oid in expired],
                        [objects[oid] for oid in over],
                        max((objects[oid].alive[1][0] for oid in over), default=0),
                    )
                )
        return plans

    def forget(self, project: Project, states: Iterable[ObjectState]) -> int:
        """Forget these tombstones (as :meth:`plan_forget` gave them) unless changed since;
        the copy's horizon covers them from now on. How many were forgotten."""
        forgotten = 0
        for state in states:
            if project.objects.get(state.id) is not state or state.id not in project.tombstones:
                continue  # re-created, or deleted again, meanwhile
            del project.tombstones[state.id]
            del project.objects[state.id]
            project.horizon_ms = max(project.horizon_ms, state.alive[1][0])
            forgotten += 1
        return forgotten

    def settled(self, keys: Iterable[tuple[str, str]], now_ms: int | None = None) -> None:
        """These tombstones were just written to the table: their grace starts again, so
        the replicas that learn deletes from the table have it before it is forgotten."""
        now = self.clock.wall_ms() if now_ms is None else now_ms
        for project_id, object_id in keys:
            project = self.projects.get(project_id)
            if project is not None and project.tombstones.pop(object_id, None) is not None:
                project.tombstones[object_id] = now

    def refresh(self, project: Project, fresh: Project) -> list[Broadcast]:
        """Replace a copy that fell behind with one just read whole (``fresh``, built from
        the table), in place (its connections stay), and say what its clients must hear.

        What only memory held is kept on top, unless it may be stale: the state of an
        object the table does not know, stamped at or before the horizon, may be a live
        copy of an object whose delete was forgotten, and is dropped unsaved.
        """
        stale = []
        now = self.clock.wall_ms()
        for state in self.dirty.unsaved_states(project.id):
            known = fresh.objects.get(state.id)
            if known is None and state.alive[1][0] <= fresh.horizon_ms:
                stale.append(state.id)
                continue
            merged = state if known is None else merge(known, state)
            fresh.set_object(merged, now)
            self.dirty.merged(project.id, merged, table_behind=merged != known, gen=fresh.gen)
        self.dirty.drop(project.id, stale)
        messages = []
        for object_id in sorted(project.views.keys() | fresh.views.keys()):
            before, after = project.views.get(object_id), fresh.views.get(object_id)
            if after is not None and after != before:
                messages.append(Broadcast.upsert(object_id, after))
            elif after is None and before is not None:
                messages.append(Broadcast.deleted(object_id))
        project.objects, project.views, project.tombstones = fresh.objects, fresh.views, fresh.tombstones
        project.gen, project.horizon_ms = fresh.gen, fresh.horizon_ms
        project.loaded_at_ms, project.loaded_heads = fresh.loaded_at_ms, fresh.loaded_heads
        self.dirty.holding(project.id, project.gen)
        return messages

    # --- edits --------------------------------------------------------------------------

    def edit(self, project: Project, command: Create | Update | Delete, fetched: bool = True) -> Edit:
        """Apply a client's change; raises :class:`ProtocolError` and changes nothing when refused.

        A change that carries a stamp (a replay of one acked before, perhaps by a replica
        that died since) merges with that stamp: idempotent, and anything newer still
        wins. A stamp ahead of this replica's clock gets a fresh one instead, so no client
        wins by dating its change forward. Unless ``fetched``, a replayed update or delete
        of an object memory has never seen raises :class:`Unknown`: the table may hold it
        already (saved by the replica that died) and should be read first.
        """
        project.last_active = time.monotonic()
        stamp = command.stamp
        if stamp is not None:
            if stamp[0] > self.clock.wall_ms() + FORWARD_MS:
                stamp = self.clock.now()  # dated ahead: merged as a replay, with a fresh stamp
            else:
                self.clock.observe(stamp)
            if not fetched and not isinstance(command, Create) and command.id not in project.objects:
                raise Unknown(command.id)
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
        """A create of a new id (or of a deleted one) must fit the project's limits.

        Past deletes never refuse one: the oldest are forgotten beyond the budget instead.
        """
        if len(project.views) >= self.limits.max_objects:
            raise ProtocolError("limit_exceeded", f"a project holds at most {self.limits.max_objects} objects", req)

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
        return Edit(Broadcast.upsert(cmd.id, view), stamp, self.dirty.mark(project.id, new, project.gen))

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
            version = self.dirty.mark(project.id, state, project.gen) if force else self.dirty.version()
            return Edit(None, self.clock.now(), version)
        self._check_props(len(view), cmd.req)
        text = protocol.encode(view)  # the new view: checked for size, then kept and sent as is
        size = self._check_view(text, cmd.req)
        stamp = self.clock.now_after(state.latest_stamp())
        new = state.updated(changes, stamp)
        self._check_stored(new, size, cmd.req)
        project.objects[cmd.id] = new
        project.views[cmd.id] = text
        return Edit(Broadcast.upsert(cmd.id, text), stamp, self.dirty.mark(project.id, new, project.gen))

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
            version = self.dirty.mark(project.id, gone, project.gen) if gone is not None else self.dirty.version()
            return Edit(None, gone.alive[1] if gone is not None else self.clock.now(), version)
        state = self._live(project, cmd.id, cmd.req)
        stamp = self.clock.now_after(state.latest_stamp())
        tomb = ObjectState(state.id, (False, stamp), state.type, {})
        project.set_object(tomb)
        return Edit(Broadcast.deleted(cmd.id), stamp, self.dirty.mark(project.id, tomb, project.gen))

    # --- a whole project at once ----------------------------------------------------------

    def replace(self, project: Project, objects: list[Create]) -> Replaced:
        """Make the project hold exactly ``objects`` (an import, a restore) as one change.

        Every object that differs gets a fresh stamp, so the change wins over what it
        replaces and later edits win over it, as for any edit: new ids are created, live
        objects updated to equal the one given (properties it lacks are removed), live
        objects not given are deleted. All or nothing: a refusal (a :class:`ProtocolError`
        naming the object) changes nothing. Stamps the objects carry are ignored.
        """
        project.last_active = time.monotonic()
        if len(objects) > self.limits.max_objects:
            raise ProtocolError("limit_exceeded", f"a project holds at most {self.limits.max_objects} objects")
        wanted: dict[str, Create] = {}
        for cmd in objects:
            if cmd.id in wanted:
                raise ProtocolError("bad_message", f"object {cmd.id!r} is given twice")
            wanted[cmd.id] = cmd
        planned: list[tuple[ObjectState, str | None]] = []
        created = updated = revived = 0
        for cmd in objects:
            old = project.objects.get(cmd.id)
            if old is None or not old.is_alive:
                stamp = self.clock.now() if old is None else self.clock.now_after(old.latest_stamp())
                new = ObjectState.created(cmd.id, cmd.type, cmd.props, stamp)
                if old is not None:
                    new, revived = merge(old, new), revived + 1
                created += 1
                text = protocol.encode({**cmd.props, "id": cmd.id, "type": cmd.type})
            else:
                changes, text = _differences(old, project.views.get(cmd.id), cmd)
                if not changes:
                    continue
                new = old.updated(changes, self.clock.now_after(old.latest_stamp()))
                updated += 1
            try:  # the view is the object given: its properties are checked already
                self._check_stored(new, self._check_view(text, None), None)
            except ProtocolError as error:
                raise ProtocolError(error.code, f"object {cmd.id!r}: {error.message}") from None
            planned.append((new, text))
        gone = [state for oid, state in project.objects.items() if state.is_alive and oid not in wanted]
        for state in gone:
            tomb = ObjectState(state.id, (False, self.clock.now_after(state.latest_stamp())), state.type, {})
            planned.append((tomb, None))
        messages = []
        version = self.dirty.version()
        for new, view_json in planned:
            if view_json is None:
                project.set_object(new)
                messages.append(Broadcast.deleted(new.id))
            else:
                project.objects[new.id] = new
                project.views[new.id] = view_json
                project.tombstones.pop(new.id, None)
                messages.append(Broadcast.upsert(new.id, view_json))
            version = self.dirty.mark(project.id, new, project.gen)
        return Replaced(messages, [state for state, _ in planned], created, updated, len(gone), version)

    # --- replays ------------------------------------------------------------------------

    def _replay(self, project: Project, cmd: Create | Update | Delete, stamp: Stamp) -> Edit:
        """Merge a change with the stamp it was first given, field by field.

        A create of an object that exists (with that stamp, or newer) and a delete of one
        already gone are no conflict: the merge keeps what is newest. The result is marked
        dirty even when memory held it already: it may have come by the relay from a
        replica that died before saving it, and its sender waits for ``saved``.
        """
        old = project.objects.get(cmd.id)
        if old is None and isinstance(cmd, Create) and stamp[0] <= project.horizon_ms:
            # created behind the horizon and unknown here: its delete may have been forgotten (horizon.py)
            return Edit(None, stamp, self.dirty.version(), Broadcast.deleted(cmd.id), "duplicate")
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
        else:  # not in memory nor (the caller read it) in the table: keep the delete, so the
            # create it deletes cannot come back when its save is read later
            type_ = old.type if old is not None else ("", ZERO)
            new = ObjectState(cmd.id, (False, stamp), type_, {})
            if old is not None:
                new = merge(old, new)
        view = new.view()
        if view is not None and new != old:
            self._check_props(len(view), cmd.req)
            text = protocol.encode(view)
            self._check_stored(new, self._check_view(text, cmd.req), cmd.req)
        before = project.views.get(cmd.id)
        after = project.set_object(new, self.clock.wall_ms()) if new != old else before
        version = self.dirty.mark(project.id, new, project.gen)
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

    def merge(
        self, project: Project, states: Iterable[ObjectState], trusted: bool = False, relayed: bool = False
    ) -> Merged:
        """Merge states saved or relayed by other replicas into memory, per property.

        A state equal to memory's costs one comparison. Clients of this replica get an
        upsert/delete for every visible change. Where the merged state differs from what
        the table holds (our copy knew something the item lacks, e.g. after another
        replica's batch overwrote it), the object is marked dirty so the next save writes
        the union back: anti-entropy (``_owed`` says which differences are this replica's
        to write).

        ``relayed``: the states are another replica's memory, not the table's copies, so
        they never show the table behind: an object waiting to be saved here takes the
        merged state, and nothing else is marked. A relayed state that lacks a field this
        replica saved only means the sender had not heard of it yet; if the sender's save
        then overwrites it, the feed brings that item and the repair follows from it.

        A state of an object this copy does not know, created or deleted at or before its
        horizon, is ignored (``horizon.py``): a tombstone there is forgotten already, and a
        live state may be the stale copy of an object whose delete was forgotten, unless it
        is ``trusted`` (read from the table, where nothing stale gets in).
        """
        result = Merged()
        if self.projects.get(project.id) is not project:
            return result  # evicted while the read was in flight: nothing to merge into
        now, horizon = self.clock.wall_ms(), project.horizon_ms
        for remote in states:
            local = project.objects.get(remote.id)
            if local is None:
                if remote.alive[1][0] <= horizon and not (trusted and remote.is_alive):
                    continue
            elif local == remote:
                continue
            remote = remote.pruned()
            self.clock.observe(remote.latest_stamp())
            merged = remote if local is None else merge(local, remote)
            if merged != local:
                before = project.views.get(remote.id)
                after = project.set_object(merged, now)
                result.changed.append(remote.id)
                if after is not None and after != before:
                    result.messages.append(Broadcast.upsert(remote.id, after))
                elif after is None and before is not None:
                    result.messages.append(Broadcast.deleted(remote.id))
            table_behind = not relayed and merged != remote and self._owed(merged, remote)
            if self.dirty.merged(project.id, merged, table_behind=table_behind, gen=project.gen):
                result.repaired.append(remote.id)
        return result
