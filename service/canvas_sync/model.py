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
from typing import Any

Stamp = tuple[int, int, str]
"""(wall-clock milliseconds, logical counter, replica id): compares as a tuple."""

Field = tuple[Any, Stamp]
"""A value and the stamp of the write that set it."""

ZERO: Stamp = (0, 0, "")

TOMBSTONE_TTL = 24 * 3600.0
"""Seconds a delete is remembered by default, in memory and in the table (``CANVAS_TOMBSTONE_TTL``)."""
TOMBSTONE_GRACE = 90.0
"""Seconds a tombstone stays settled before it may be forgotten (``CANVAS_TOMBSTONE_GRACE``, ``horizon.py``)."""


class HybridClock:
    """Hybrid logical clock: never goes backwards and stays ahead of every stamp it saw.

    A replica whose wall clock is behind still issues stamps larger than any it has read,
    so its new writes win over the older writes they replace. What it absorbs is bounded:
    a stamp more than ``max_drift_ms`` ahead of the wall clock (a replica with a broken
    clock, a forged item) moves the clock only up to that bound, so one bad stamp cannot
    drag every replica's stamps, ``saved_at`` and tombstone expiry into the future for
    good. Merging still compares the stamps as they are, so it stays deterministic.
    """

    def __init__(
        self,
        replica_id: str,
        wall_ms: Callable[[], int] | None = None,
        offset_ms: int = 0,
        max_drift_ms: int = 300_000,
        on_clamp: Callable[[Stamp], None] = lambda stamp: None,
    ) -> None:
        self.replica_id = replica_id
        self.max_drift_ms = max_drift_ms
        self.on_clamp = on_clamp
        self._wall = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._offset = offset_ms
        self._last: tuple[int, int] = (0, 0)
        self._lock = threading.Lock()  # guards _last: the loop, the load and save threads stamp

    def wall_ms(self) -> int:
        return self._wall() + self._offset

    def now(self) -> Stamp:
        with self._lock:
            wall = self.wall_ms()
            last_ms, last_counter = self._last
            self._last = (wall, 0) if wall > last_ms else (last_ms, last_counter + 1)
            return (*self._last, self.replica_id)

    def now_after(self, floor: Stamp) -> Stamp:
        """A stamp for an edit of a field stamped ``floor``: larger than both now and floor.

        A field may carry a stamp beyond what the clock absorbs (see above); a client's
        edit of it must still win, without moving the clock.
        """
        stamp = self.now()
        return stamp if stamp > floor else (floor[0], floor[1] + 1, self.replica_id)

    def observe(self, stamp: Stamp) -> bool:
        """Absorb a stamp read from elsewhere so later stamps sort after it.

        Returns True (and calls ``on_clamp``) when the stamp was too far ahead of the wall
        clock and only the bound was absorbed.
        """
        with self._lock:
            limit = self.wall_ms() + self.max_drift_ms
            clamped = stamp[0] > limit
            seen = (limit, 0) if clamped else (stamp[0], stamp[1])
            if seen > self._last:
                self._last = seen
        if clamped:
            self.on_clamp(stamp)
        return clamped


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _newer(a: Field, b: Field) -> Field:
    """The field that wins; equal stamps (never issued twice) fall back to the value."""
    if a[1] != b[1]:
        return a if a[1] > b[1] else b
    return a if _canonical(a[0]) >= _canonical(b[0]) else b


_TYPE = "#type"
"""Key of the type field's stamp in ``ObjectState._stamps`` (no property name starts with #)."""


class ObjectState:
    """One object with a stamp per field, as held in memory and saved to the table.

    Immutable: an edit makes a new state, so a reference taken for saving is a snapshot.

    Logically every field is a ``(value, stamp)`` pair (``alive``, ``type``, ``props``).
    Stored compactly, because a replica holds every object of its projects: most fields
    carry the stamp of the object's create (or delete), so only stamps that differ from
    it are kept. A created object holds its values and no per-field stamps at all, about
    450 bytes less than a tuple per field.
    """

    __slots__ = ("_base", "_latest", "_live", "_stamps", "_type", "_values", "id")
    __hash__ = None  # type: ignore[assignment]

    id: str
    _live: Any
    _base: Stamp
    _type: Any
    _values: dict[str, Any]
    _stamps: dict[str, Stamp] | None
    _latest: Stamp
    """The newest stamp in the state (kept: every edit asks for it)."""

    def __init__(self, id: str, alive: Field, type: Field, props: dict[str, Field] | None = None) -> None:
        base = alive[1]
        stamps = {name: stamp for name, (_, stamp) in (props or {}).items() if stamp != base}
        if type[1] != base:
            stamps[_TYPE] = type[1]
        self._init(
            id, alive[0], base, type[0], {name: value for name, (value, _) in (props or {}).items()}, stamps or None
        )

    def _init(
        self,
        id: str,
        live: Any,
        base: Stamp,
        type_: Any,
        values: dict[str, Any],
        stamps: dict[str, Stamp] | None,
        latest: Stamp | None = None,
    ) -> None:
        set_ = object.__setattr__  # the class refuses plain assignment; an update makes one of these
        set_(self, "id", id)
        set_(self, "_live", live)
        set_(self, "_base", base)
        set_(self, "_type", type_)
        set_(self, "_values", values)
        set_(self, "_stamps", stamps)
        set_(self, "_latest", latest if latest is not None else max((base, *(stamps or {}).values())))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("ObjectState is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ObjectState):
            return NotImplemented
        return (self.id, self._live, self._base, self._type, self._values, self._stamps) == (
            other.id,
            other._live,
            other._base,
            other._type,
            other._values,
            other._stamps,
        )

    def __repr__(self) -> str:
        return f"ObjectState({self.id!r}, {self.alive!r}, {self.type!r}, {self.props!r})"

    @classmethod
    def created(cls, object_id: str, type_: str, props: dict[str, Any], stamp: Stamp) -> ObjectState:
        state = cls.__new__(cls)
        state._init(object_id, True, stamp, type_, dict(props), None, stamp)
        return state

    def updated(self, changes: dict[str, Any], stamp: Stamp) -> ObjectState:
        """A client's update: each changed property (``type`` included) gets ``stamp``."""
        values = dict(self._values)
        stamps = dict(self._stamps) if self._stamps else {}
        type_ = self._type
        for name, value in changes.items():
            if name == "type":
                type_, name = value, _TYPE
            else:
                values[name] = value
            if stamp != self._base:  # keep the form __init__ makes, so equal states compare equal
                stamps[name] = stamp
            else:
                stamps.pop(name, None)
        state = ObjectState.__new__(ObjectState)
        latest = stamp if stamp >= self._latest else None  # None: an older stamp may have been replaced
        state._init(self.id, self._live, self._base, type_, values, stamps or None, latest)
        return state

    @property
    def alive(self) -> Field:
        return self._live, self._base

    @property
    def type(self) -> Field:
        return self._type, (self._stamps or {}).get(_TYPE, self._base)

    @property
    def props(self) -> dict[str, Field]:
        stamps, base = self._stamps or {}, self._base
        return {name: (value, stamps.get(name, base)) for name, value in self._values.items()}

    @property
    def is_alive(self) -> bool:
        return bool(self._live)

    def latest_stamp(self) -> Stamp:
        return self._latest

    def view(self) -> dict[str, Any] | None:
        """What clients see: id, type and the visible properties; ``None`` when deleted."""
        if not self._live:
            return None
        out = {k: v for k, v in self._values.items() if v is not None}
        out["id"] = self.id
        out["type"] = self._type
        return out

    def stored_size(self) -> int:
        """Bytes of the stored document (UTF-8): removed properties and stamps included.

        This, not the view, is what a client's edits make us write: removing a property
        keeps its name and stamp (so it still beats older sets of it).
        """
        return len(encode_doc(self).encode())

    def stored_size_bound(self, view_bytes: int) -> int:
        """An upper bound of :meth:`stored_size` from the view's size, in constant time.

        Every stored entry beyond the view is at most a removed property (``"name":null,``)
        plus a stamp naming a replica, and names and replica ids are at most 64 characters.
        Edits check this first and encode the document only when the bound is too large.
        """
        entries = len(self._values) + (len(self._stamps) if self._stamps else 0)
        return view_bytes + _DOC_BYTES + _NAME_BYTES + entries * _ENTRY_BYTES

    def pruned(self) -> ObjectState:
        """Drop properties older than the last create/delete: they can never show again."""
        floor = self._base
        if not self._stamps or all(s >= floor for name, s in self._stamps.items() if name != _TYPE):
            return self
        return ObjectState(self.id, self.alive, self.type, {k: f for k, f in self.props.items() if f[1] >= floor})

    def to_doc(self) -> dict[str, Any]:
        """Plain JSON-able form, used for storage: the compact form, as held in memory.

        ``{"alive": true, "stamp": [ms, counter, replica], "type": "rect", "props": {...},
        "stamps": {"x": [...], "#type": [...]}}``; ``stamps`` holds only the fields whose
        stamp differs from ``stamp`` and is left out when empty. Half the size of a pair
        per field, so items cost fewer write and read units and load faster.
        """
        doc: dict[str, Any] = {
            "alive": self._live,
            "stamp": list(self._base),
            "type": self._type,
            "props": self._values,
        }
        if self._stamps:
            doc["stamps"] = {name: list(stamp) for name, stamp in self._stamps.items()}
        return doc

    @classmethod
    def from_doc(cls, object_id: str, doc: dict[str, Any]) -> ObjectState:
        """The inverse of :meth:`to_doc`; also reads the first layout, a pair per field."""
        if "stamp" not in doc:
            return cls._from_pairs_doc(object_id, doc)
        base = _stamp(doc["stamp"])
        raw = doc.get("stamps")
        stamps = {name: stamp for name, value in raw.items() if (stamp := _stamp(value)) != base} if raw else None
        state = cls.__new__(cls)
        state._init(
            object_id,
            doc["alive"],
            base,
            doc["type"],
            {sys.intern(name): value for name, value in doc.get("props", {}).items()},
            stamps or None,
        )
        return state

    @classmethod
    def _from_pairs_doc(cls, object_id: str, doc: dict[str, Any]) -> ObjectState:
        """``{"alive": [v, stamp], "type": [v, stamp], "props": {name: [v, stamp]}}``."""

        def fld(pair: list[Any]) -> Field:
            return pair[0], _stamp(pair[1])

        return cls(
            object_id,
            fld(doc["alive"]),
            fld(doc["type"]),
            {sys.intern(k): fld(v) for k, v in doc.get("props", {}).items()},
        )


_NAME_BYTES = 64
"""Property names (protocol.PROP_RE) and replica ids (config) are at most this long."""
_STAMP_BYTES = 48
"""Bytes of one ``"name":[ms,counter,"replica"],`` entry beyond the two names: generous."""
_ENTRY_BYTES = (_NAME_BYTES + 8) + (_NAME_BYTES + _STAMP_BYTES + _NAME_BYTES)
"""At most, per stored name: its removal's ``"name":null,`` and its stamp."""
_DOC_BYTES = 100
"""Bytes of a document's own keys and punctuation beyond the view and its stamps: generous."""
_DOC_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode_doc(state: ObjectState) -> str:
    """The stored form of a state as JSON text (see :meth:`ObjectState.to_doc`)."""
    return _DOC_ENCODER.encode(state.to_doc())


def _stamp(raw: list[Any]) -> Stamp:
    return int(raw[0]), int(raw[1]), str(raw[2])


def merge(a: ObjectState, b: ObjectState) -> ObjectState:
    """Field-by-field last-writer-wins of two copies of one object (a pure function)."""
    if a.id != b.id:
        raise ValueError(f"cannot merge different objects {a.id!r} and {b.id!r}")
    props = dict(a.props)
    for name, theirs in b.props.items():
        mine = props.get(name)
        props[name] = theirs if mine is None else _newer(mine, theirs)
    return ObjectState(a.id, _newer(a.alive, b.alive), _newer(a.type, b.type), props).pruned()


def newer_stamps(mine: ObjectState, theirs: ObjectState) -> list[Stamp]:
    """Stamps of the fields ``mine`` holds newer than ``theirs`` (or that ``theirs`` lacks):
    what a copy knows that the other does not. Empty when ``theirs`` is as new everywhere."""
    out = [s for s, t in ((mine.alive[1], theirs.alive[1]), (mine.type[1], theirs.type[1])) if s > t]
    props = theirs.props
    for name, (_, stamp) in mine.props.items():
        other = props.get(name)
        if other is None or stamp > other[1]:
            out.append(stamp)
    return out
