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
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
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
        self._version = 0

    # --- the loop -----------------------------------------------------------------------

    def mark(self, project: str, state: ObjectState) -> int:
        """A new state to save (an edit): replaces any older unsaved one. Returns its version."""
        with self._lock:
            self._version += 1
            waiting = self._dirty.setdefault(project, {})
            old = waiting.get(state.id)
            if old is None:
                held = self._quarantined.get(project, {}).get(state.id)
                old = held.item if held is not None else None
            waiting[state.id] = (
                DirtyObject(project, state, old.first, old.since)
                if old is not None
                else DirtyObject(project, state, self._version, time.time())
            )
            if project in self._quarantined:
                _pop(self._quarantined, project, state.id)  # changed: worth another try
            return self._version

    def version(self) -> int:
        """The newest version handed out: a change that marked nothing is saved with it."""
        with self._lock:
            return self._version

    def merged(self, project: str, state: ObjectState, table_behind: bool) -> bool:
        """Memory took ``state`` from a merge; True when that is a new repair to write.

        An object already waiting keeps waiting, with the newer state. Otherwise it needs
        a write only when the table lacks something memory has (``table_behind``), unless
        the save in flight writes exactly this state.
        """
        with self._lock:
            waiting = self._dirty.get(project)
            if waiting is not None and state.id in waiting:
                old = waiting[state.id]
                waiting[state.id] = DirtyObject(project, state, old.first, old.since)
                return False
            in_flight = self._saving.get(project, {}).get(state.id)
            if not table_behind or (in_flight is not None and in_flight.state == state):
                return False
            self._version += 1
            self._dirty.setdefault(project, {})[state.id] = DirtyObject(project, state, self._version, time.time())
            _pop(self._quarantined, project, state.id)
            return in_flight is None

    def forget(self, project: str) -> None:
        """Drop an evicted project's save time."""
        with self._lock:
            self._last_save.pop(project, None)

    # --- the auto-save thread ----------------------------------------------------------

    def take(self) -> list[DirtyObject]:
        """Everything dirty, now counted as saving. One pass at a time."""
        with self._lock:
            if not self._dirty:
                return []
            taken, self._dirty = self._dirty, {}
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
            for item in failed:
                waiting = self._dirty.setdefault(item.project, {})
                newer = waiting.get(item.state.id)
                waiting[item.state.id] = (
                    item if newer is None else DirtyObject(item.project, newer.state, item.first, item.since)
                )
            for item, error in refused:
                waiting = self._dirty.get(item.project, {})
                newer = waiting.get(item.state.id)
                if newer is None:
                    self._quarantined.setdefault(item.project, {})[item.state.id] = Quarantined(item, error, now)
                else:  # edited meanwhile: worth another try, but the refused changes are unsaved still
                    waiting[item.state.id] = DirtyObject(item.project, newer.state, item.first, item.since)
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

    def holds(self, project: str) -> bool:
        """True while the project has anything only memory holds (dirty, saving, quarantined)."""
        with self._lock:
            return project in self._dirty or project in self._saving or project in self._quarantined

    def unsaved_states(self, project: str) -> list[ObjectState]:
        """What only memory holds of a project (waiting or being saved; the newer wins)."""
        with self._lock:
            items = {**self._saving.get(project, {}), **self._dirty.get(project, {})}
            states = {o: item.state for o, item in items.items()}
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


def _pop(nested: dict[str, dict[str, Any]], project: str, object_id: str) -> None:
    inner = nested.get(project)
    if inner is not None and inner.pop(object_id, None) is not None and not inner:
        del nested[project]
