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

    @property
    def key(self) -> Key:
        return self.project, self.state.id


@dataclass(frozen=True, slots=True)
class Quarantined:
    state: ObjectState
    error: str
    since: float


class DirtySet:
    """Unsaved objects. The loop marks; the auto-save thread takes and finishes."""

    def __init__(self) -> None:
        # Guards every field below. Held for dictionary work only, never for I/O.
        # Each maps project id -> object id -> state; empty inner dicts are removed.
        self._lock = threading.Lock()
        self._dirty: dict[str, dict[str, ObjectState]] = {}
        self._saving: dict[str, dict[str, ObjectState]] = {}
        self._quarantined: dict[str, dict[str, Quarantined]] = {}
        self._last_save: dict[str, float] = {}

    # --- the loop -----------------------------------------------------------------------

    def mark(self, project: str, state: ObjectState) -> None:
        """A new state to save (an edit): replaces any older unsaved one."""
        with self._lock:
            self._dirty.setdefault(project, {})[state.id] = state
            if project in self._quarantined:
                _pop(self._quarantined, project, state.id)  # changed: worth another try

    def merged(self, project: str, state: ObjectState, table_behind: bool) -> bool:
        """Memory took ``state`` from a merge; True when that is a new repair to write.

        An object already waiting keeps waiting, with the newer state. Otherwise it needs
        a write only when the table lacks something memory has (``table_behind``), unless
        the save in flight writes exactly this state.
        """
        with self._lock:
            waiting = self._dirty.get(project)
            if waiting is not None and state.id in waiting:
                waiting[state.id] = state
                return False
            in_flight = self._saving.get(project, {}).get(state.id)
            if not table_behind or in_flight == state:
                return False
            self._dirty.setdefault(project, {})[state.id] = state
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
            return [DirtyObject(project, state) for project, states in taken.items() for state in states.values()]

    def finish(self, failed: Iterable[DirtyObject] = (), refused: Iterable[tuple[DirtyObject, str]] = ()) -> None:
        """End a pass: failed objects wait again, refused ones go to quarantine.

        An object edited during the pass is dirty again with its newer state, which wins
        over the copy that failed.
        """
        now = time.time()
        with self._lock:
            for item in failed:
                self._dirty.setdefault(item.project, {}).setdefault(item.state.id, item.state)
            for item, error in refused:
                if item.state.id not in self._dirty.get(item.project, {}):
                    self._quarantined.setdefault(item.project, {})[item.state.id] = Quarantined(item.state, error, now)
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
            states = {**self._saving.get(project, {}), **self._dirty.get(project, {})}
            states.update({o: q.state for o, q in self._quarantined.get(project, {}).items()})
            return list(states.values())

    def last_save(self, project: str) -> float | None:
        with self._lock:
            return self._last_save.get(project)

    def quarantined(self) -> list[dict[str, Any]]:
        """What DynamoDB refused, for ``/health``: kept in memory, not retried until edited."""
        with self._lock:
            return [
                {"project": p, "object": o, "error": q.error, "since": q.since}
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
