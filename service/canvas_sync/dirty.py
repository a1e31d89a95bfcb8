"""Which objects still need saving: marked by the event loop, taken by the auto-save thread.

The dirty set holds the latest state of each unsaved object, not just its key, so the
auto-save thread never reads a project: it takes states, writes them, and hands back
what failed. Many edits to one object between two saves replace one entry: one write.

Three places an unsaved object can be:

- ``dirty``: waiting for the next pass;
- ``saving``: taken by the pass in flight (still unsaved: counted, never evicted);
- ``quarantined``: DynamoDB refused the item itself (say, past its 400 KB limit). It is
  kept in memory, reported in ``/health`` and not retried until it changes again, so one
  bad object never holds back the objects saved beside it.

Every mark takes a version (1, 2, 3, ... for this replica), and each unsaved object
remembers the version of its *first* unsaved mark. So "every change marked before version
v is in the table" is a question of one number per project (:meth:`DirtySet.saved_below`):
what saved acknowledgements (``saved.py``) need, without a record per change.

Every entry carries the generation of the copy that made it (``Project.gen``). When a
project is deleted its entries are discarded and its generation raised here: what a
pass in flight hands back from an older generation is dropped, never retried.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .model import ObjectState

Key = tuple[str, str]
"""(project id, object id)"""


@dataclass(frozen=True, slots=True)
class DirtyObject:
    """One object's state taken for saving."""

    project: str
    state: ObjectState
    first: int = 0
    """Version of the object's first mark since it was last saved."""
    since: float = 0.0
    """Wall-clock time of that mark (the age of the oldest unsaved change)."""
    gen: int = 0
    """Generation of the copy that marked it: written with the item (``store/base.py``)."""

    @property
    def key(self) -> Key:
        return self.project, self.state.id


@dataclass(frozen=True, slots=True)
class Quarantined:
    item: DirtyObject
    error: str
    at: float

    @property
    def state(self) -> ObjectState:
        return self.item.state


class DirtySet:
    """Unsaved objects. The loop marks; the auto-save thread takes and finishes."""

    def __init__(self) -> None:
        # Guards every field below. Held for dictionary work only, never for I/O.
        # Each maps project id -> object id -> entry; empty inner dicts are removed.
        self._lock = threading.Lock()
        self._dirty: dict[str, dict[str, DirtyObject]] = {}
        self._saving: dict[str, dict[str, DirtyObject]] = {}
        self._quarantined: dict[str, dict[str, Quarantined]] = {}
        self._last_save: dict[str, float] = {}
        self._gens: dict[str, int] = {}
        """Project -> generation of the copy held (set at install, raised by a delete)."""
        self._version = 0

    # --- the loop -----------------------------------------------------------------------

    def holding(self, project: str, gen: int) -> None:
        """A copy of ``project`` of generation ``gen`` is held: marks without a generation get it."""
        with self._lock:
            self._gens[project] = max(gen, self._gens.get(project, 0))

    def mark(self, project: str, state: ObjectState, gen: int | None = None) -> int:
        """A new state to save (an edit): replaces any older unsaved one. Returns its version.

        ``gen``: the generation of the copy edited (default: the one held). A mark from a
        copy older than the one held (a deleted project's) is ignored.
        """
        with self._lock:
            held_gen = self._gens.get(project, 0)
            gen = held_gen if gen is None else gen
            self._version += 1
            if gen < held_gen:
                return self._version
            waiting = self._dirty.setdefault(project, {})
            old = waiting.get(state.id)
            if old is None:
                held = self._quarantined.get(project, {}).get(state.id)
                old = held.item if held is not None else None
            waiting[state.id] = (
                DirtyObject(project, state, old.first, old.since, gen)
                if old is not None
                else DirtyObject(project, state, self._version, time.time(), gen)
            )
            if project in self._quarantined:
                _pop(self._quarantined, project, state.id)  # changed: worth another try
            return self._version

    def version(self) -> int:
        """The newest version handed out: a change that marked nothing is saved with it."""
        with self._lock:
            return self._version

    def merged(self, project: str, state: ObjectState, table_behind: bool, gen: int | None = None) -> bool:
        """Memory took ``state`` from a merge; True when that is a new repair to write.

        An object already waiting keeps waiting, with the newer state. Otherwise it needs
        a write only when the table lacks something memory has (``table_behind``), unless
        the save in flight writes exactly this state.
        """
        with self._lock:
            held_gen = self._gens.get(project, 0)
            gen = held_gen if gen is None else gen
            if gen < held_gen:
                return False
            waiting = self._dirty.get(project)
            if waiting is not None and state.id in waiting:
                old = waiting[state.id]
                waiting[state.id] = DirtyObject(project, state, old.first, old.since, gen)
                return False
            in_flight = self._saving.get(project, {}).get(state.id)
            if not table_behind or (in_flight is not None and in_flight.state == state):
                return False
            self._version += 1
            self._dirty.setdefault(project, {})[state.id] = DirtyObject(project, state, self._version, time.time(), gen)
            _pop(self._quarantined, project, state.id)
            return in_flight is None

    def forget(self, project: str) -> None:
        """Drop an evicted project's save time."""
        with self._lock:
            self._last_save.pop(project, None)

    def discard(self, project: str, gen: int) -> int:
        """The project was deleted (its generation is now ``gen``): forget everything
        unsaved of older copies, and whatever the pass in flight hands back of them; how
        many entries were dropped. Items that pass still writes are of the old generation:
        invisible to every reader."""
        with self._lock:
            self._gens[project] = max(gen, self._gens.get(project, 0))
            dropped = 0
            for nested in (self._dirty, self._quarantined):
                inner = nested.get(project, {})
                for object_id in [o for o, e in inner.items() if _gen_of(e) < gen]:
                    del inner[object_id]
                    dropped += 1
                if project in nested and not inner:
                    del nested[project]
            self._last_save.pop(project, None)
            return dropped

    def drop(self, project: str, object_ids: Iterable[str]) -> None:
        """Unsaved states that must not be saved after all (a reload found them stale:
        ``projects.Projects.refresh``); one in flight is written, of its generation."""
        with self._lock:
            for object_id in object_ids:
                _pop(self._dirty, project, object_id)
                _pop(self._quarantined, project, object_id)

    # --- the auto-save thread ----------------------------------------------------------

    def take(self, hold: Callable[[str], bool] | None = None) -> list[DirtyObject]:
        """Everything dirty, now counted as saving. One pass at a time.

        ``hold``: projects to leave waiting this pass (a copy not known fresh enough to
        save: ``horizon.Freshness``).
        """
        with self._lock:
            if not self._dirty:
                return []
            taken, self._dirty = self._dirty, {}
            if hold is not None:
                for project in [p for p in taken if hold(p)]:
                    self._dirty[project] = taken.pop(project)
            self._saving = taken
            return [item for items in taken.values() for item in items.values()]

    def finish(self, failed: Iterable[DirtyObject] = (), refused: Iterable[tuple[DirtyObject, str]] = ()) -> None:
        """End a pass: failed objects wait again, refused ones go to quarantine.

        An object edited during the pass is dirty again with its newer state, which wins
        over the copy that failed, and keeps the failed copy's first version and time:
        the changes in the failed copy are still unsaved.
        """
        now = time.time()
        with self._lock:
            failed = [item for item in failed if item.gen >= self._gens.get(item.project, 0)]
            refused = [(item, why) for item, why in refused if item.gen >= self._gens.get(item.project, 0)]
            for item in failed:
                waiting = self._dirty.setdefault(item.project, {})
                newer = waiting.get(item.state.id)
                waiting[item.state.id] = (
                    item if newer is None else DirtyObject(item.project, newer.state, item.first, item.since, newer.gen)
                )
            for item, error in refused:
                waiting = self._dirty.get(item.project, {})
                newer = waiting.get(item.state.id)
                if newer is None:
                    self._quarantined.setdefault(item.project, {})[item.state.id] = Quarantined(item, error, now)
                else:  # edited meanwhile: worth another try, but the refused changes are unsaved still
                    waiting[item.state.id] = DirtyObject(item.project, newer.state, item.first, item.since, newer.gen)
            for project in self._saving:
                if project not in self._dirty:
                    self._last_save[project] = now
            self._saving = {}

    # --- anyone -------------------------------------------------------------------------

    def keys(self) -> list[Key]:
        """Every unsaved key, dirty or being saved."""
        with self._lock:
            return [(p, o) for p in self._dirty.keys() | self._saving.keys() for o in self._unsaved(p)]

    def _unsaved(self, project: str) -> set[str]:
        return self._dirty.get(project, {}).keys() | self._saving.get(project, {}).keys()

    def counts(self) -> tuple[int, int]:
        """(projects with unsaved objects, unsaved objects), counting a save in progress."""
        with self._lock:
            projects = self._dirty.keys() | self._saving.keys()
            return len(projects), sum(len(self._unsaved(p)) for p in projects)

    def project_count(self, project: str) -> int:
        with self._lock:
            return len(self._unsaved(project))

    def unsaved_ids(self, project: str) -> set[str]:
        """Objects of the project not in the table yet (waiting, being saved, quarantined)."""
        with self._lock:
            return self._unsaved(project) | self._quarantined.get(project, {}).keys()

    def holds(self, project: str) -> bool:
        """True while the project has anything only memory holds (dirty, saving, quarantined)."""
        with self._lock:
            return project in self._dirty or project in self._saving or project in self._quarantined

    def unsaved_states(self, project: str) -> list[ObjectState]:
        """What only memory holds of a project (waiting or being saved; the newer wins)."""
        with self._lock:
            gen = self._gens.get(project, 0)  # what a pass in flight writes of a deleted copy is not the project's
            items = {**self._saving.get(project, {}), **self._dirty.get(project, {})}
            states = {o: item.state for o, item in items.items() if item.gen >= gen}
            states.update({o: q.state for o, q in self._quarantined.get(project, {}).items()})
            return list(states.values())

    def saved_below(self, project: str) -> int:
        """Every change to ``project`` marked with a version below this is in the table.

        The smallest first version of anything unsaved (waiting, being saved, quarantined),
        or the next version when the project has nothing unsaved.
        """
        with self._lock:
            firsts = [item.first for item in self._dirty.get(project, {}).values()]
            firsts += [item.first for item in self._saving.get(project, {}).values()]
            firsts += [q.item.first for q in self._quarantined.get(project, {}).values()]
            return min(firsts, default=self._version + 1)

    def oldest_unsaved(self) -> float | None:
        """Wall-clock time of the oldest change not yet in the table (None: all saved).

        Quarantined objects count: their changes are unsaved too.
        """
        with self._lock:
            times = [item.since for items in (*self._dirty.values(), *self._saving.values()) for item in items.values()]
            times += [q.item.since for items in self._quarantined.values() for q in items.values()]
            return min(times, default=None)

    def last_save(self, project: str) -> float | None:
        with self._lock:
            return self._last_save.get(project)

    def quarantined(self) -> list[dict[str, Any]]:
        """What DynamoDB refused, for ``/health``: kept in memory, not retried until edited."""
        with self._lock:
            return [
                {"project": p, "object": o, "error": q.error, "since": q.at}
                for p, states in sorted(self._quarantined.items())
                for o, q in sorted(states.items())
            ]

    def quarantined_count(self) -> int:
        with self._lock:
            return sum(len(states) for states in self._quarantined.values())


def _gen_of(entry: DirtyObject | Quarantined) -> int:
    return entry.gen if isinstance(entry, DirtyObject) else entry.item.gen


def _pop(nested: dict[str, dict[str, Any]], project: str, object_id: str) -> None:
    inner = nested.get(project)
    if inner is not None and inner.pop(object_id, None) is not None and not inner:
        del nested[project]
