"""Objects as per-property last-writer-wins registers, and their merge.

Every field of an object (its liveness, its type, each property) carries the stamp of the
write that set it: a hybrid-logical-clock value ``(wall_ms, counter, replica_id)``. Merging
two copies keeps, field by field, the value with the larger stamp. That merge is
commutative, associative and idempotent, so replicas may apply each other's saved states
in any order, any number of times, and still end equal (DESIGN.md, point 1).

- Deletion is the field ``alive`` set to ``False``: a stale live copy has an older stamp
  and cannot undo it; a later create sets ``alive`` to ``True`` with a newer stamp.
- Properties older than the latest create or delete are invisible forever, so they are
  pruned; a property set to ``None`` (removed) is kept so it still beats older sets.

Nothing here does I/O or reads the clock: callers pass stamps in.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Stamp = tuple[int, int, str]
"""(wall-clock milliseconds, logical counter, replica id): compares as a tuple."""

Field = tuple[Any, Stamp]
"""A value and the stamp of the write that set it."""

ZERO: Stamp = (0, 0, "")


class HybridClock:
    """Hybrid logical clock: never goes backwards and stays ahead of every stamp it saw.

    A replica whose wall clock is behind still issues stamps larger than any it has read,
    so its new writes win over the older writes they replace.
    """

    def __init__(
        self,
        replica_id: str,
        wall_ms: Callable[[], int] | None = None,
        offset_ms: int = 0,
    ) -> None:
        self.replica_id = replica_id
        self._wall = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._offset = offset_ms
        self._last: tuple[int, int] = (0, 0)
        self._lock = threading.Lock()

    def wall_ms(self) -> int:
        return self._wall() + self._offset

    def now(self) -> Stamp:
        with self._lock:
            wall = self.wall_ms()
            last_ms, last_counter = self._last
            self._last = (wall, 0) if wall > last_ms else (last_ms, last_counter + 1)
            return (*self._last, self.replica_id)

    def observe(self, stamp: Stamp) -> None:
        """Absorb a stamp read from elsewhere so later stamps sort after it."""
        with self._lock:
            if stamp[:2] > self._last:
                self._last = (stamp[0], stamp[1])

    def peek(self) -> tuple[int, int]:
        with self._lock:
            return self._last


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _newer(a: Field, b: Field) -> Field:
    """The field that wins; equal stamps (never issued twice) fall back to the value."""
    if a[1] != b[1]:
        return a if a[1] > b[1] else b
    return a if _canonical(a[0]) >= _canonical(b[0]) else b


@dataclass(frozen=True, slots=True)
class ObjectState:
    """One object with a stamp per field, as held in memory and saved to the table.

    Immutable: an edit makes a new state, so a reference taken for saving is a snapshot.
    """

    id: str
    alive: Field
    type: Field
    props: dict[str, Field] = field(default_factory=dict)

    @classmethod
    def created(cls, object_id: str, type_: str, props: dict[str, Any], stamp: Stamp) -> ObjectState:
        return cls(object_id, (True, stamp), (type_, stamp), {k: (v, stamp) for k, v in props.items()})

    @property
    def is_alive(self) -> bool:
        return bool(self.alive[0])

    def latest_stamp(self) -> Stamp:
        stamps = [self.alive[1], self.type[1], *(s for _, s in self.props.values())]
        return max(stamps)

    def view(self) -> dict[str, Any] | None:
        """What clients see: id, type and the visible properties; ``None`` when deleted."""
        if not self.is_alive:
            return None
        out = {k: v for k, (v, _) in self.props.items() if v is not None}
        out["id"] = self.id
        out["type"] = self.type[0]
        return out

    def pruned(self) -> ObjectState:
        """Drop properties older than the last create/delete: they can never show again."""
        floor = self.alive[1]
        if all(s >= floor for _, s in self.props.values()):
            return self
        return ObjectState(self.id, self.alive, self.type, {k: f for k, f in self.props.items() if f[1] >= floor})

    def to_doc(self) -> dict[str, Any]:
        """Plain JSON-able form, used for storage."""
        return {
            "alive": [self.alive[0], list(self.alive[1])],
            "type": [self.type[0], list(self.type[1])],
            "props": {k: [v, list(s)] for k, (v, s) in self.props.items()},
        }

    @classmethod
    def from_doc(cls, object_id: str, doc: dict[str, Any]) -> ObjectState:
        def fld(pair: list[Any]) -> Field:
            value, stamp = pair
            return value, (int(stamp[0]), int(stamp[1]), str(stamp[2]))

        return cls(
            object_id,
            fld(doc["alive"]),
            fld(doc["type"]),
            {sys.intern(k): fld(v) for k, v in doc.get("props", {}).items()},
        )


def merge(a: ObjectState, b: ObjectState) -> ObjectState:
    """Field-by-field last-writer-wins of two copies of one object (a pure function)."""
    if a.id != b.id:
        raise ValueError(f"cannot merge different objects {a.id!r} and {b.id!r}")
    props = dict(a.props)
    for name, theirs in b.props.items():
        mine = props.get(name)
        props[name] = theirs if mine is None else _newer(mine, theirs)
    return ObjectState(a.id, _newer(a.alive, b.alive), _newer(a.type, b.type), props).pruned()
