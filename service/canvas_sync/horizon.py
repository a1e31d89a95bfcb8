"""Deletes that never lock a board: which tombstones a copy may forget, and which copies
may still be trusted once others have forgotten some (no I/O but a lock).

A project remembers each delete (a tombstone) so that a stale live copy of the object
cannot bring it back. Remembering every delete for a day made a board that draws and
erases a lot refuse new ids; instead each copy forgets its oldest tombstones beyond
``CANVAS_MAX_TOMBSTONES_PER_PROJECT`` (the budget), and the project's *horizon* (in its
``#head``, only moving forward) says that deletes stamped at or before it may be gone.

What keeps a forgotten delete final is the same rule Cassandra keeps for its tombstones
(``gc_grace_seconds``):

- **A grace period.** A tombstone is forgotten only once it has been settled for
  ``CANVAS_TOMBSTONE_GRACE``: in the table (saved by this replica, or read from the table
  or the relay) and not unsaved here. A replica that keeps up (its head reads and pulls
  succeed at least every :attr:`Freshness.stale_after`) has pulled it by then, so its copy
  holds the delete, not the live object.
- **A copy that did not keep up is not trusted.** Its saves wait (:meth:`Freshness.stale`),
  and the next head read judges it (:func:`judge`): if the horizon moved meanwhile it is
  reloaded from the table, keeping only unsaved states that cannot be stale; otherwise it
  catches up from the change feed and is read again before it saves.
- **The horizon guards what memory does not know.** A state of an object a copy does not
  hold, whose create or delete is stamped at or before the copy's horizon, may be the
  stale copy of a forgotten object; it is ignored when it comes from the relay or a
  replay (``projects.Projects.merge``). Items of the table are trusted: what the rules
  above let into it is never stale.

The horizon is written to the head before the tombstones' items are deleted, and read
by a load after its items, so a copy never holds fewer deletes than its horizon says.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Container, Mapping
from enum import StrEnum

from .store.base import Head


class Freshness:
    """When each held copy was last confirmed up to date with the table. The loop
    confirms (loads, head reads, reloads); the auto-save thread asks before each pass."""

    def __init__(self, stale_after: float) -> None:
        self.stale_after = stale_after
        self._lock = threading.Lock()  # guards _confirmed
        self._confirmed: dict[str, float] = {}
        """Project -> monotonic time of its last confirmation."""

    def confirm(self, project: str, at: float | None = None) -> None:
        with self._lock:
            self._confirmed[project] = time.monotonic() if at is None else at

    def forget(self, project: str) -> None:
        with self._lock:
            self._confirmed.pop(project, None)

    def confirmed_at(self, project: str) -> float | None:
        with self._lock:
            return self._confirmed.get(project)

    def stale(self, project: str, now: float | None = None) -> bool:
        """Not confirmed for longer than ``stale_after`` (a copy never confirmed is not
        judged here: only the copies the puller tracks are)."""
        with self._lock:
            at = self._confirmed.get(project)
        return at is not None and (time.monotonic() if now is None else now) - at > self.stale_after


class Judgement(StrEnum):
    CURRENT = "current"
    """Nothing moved: the copy is confirmed."""
    ADOPT = "adopt"
    """The horizon moved and the copy kept up: it takes the new horizon."""
    VERIFY = "verify"
    """The copy did not keep up but nothing was forgotten meanwhile: it catches up from the
    change feed and its head is read again before it is confirmed."""
    RELOAD = "reload"
    """The copy did not keep up and deletes may have been forgotten meanwhile: read it again whole."""
    DELETED = "deleted"
    """The project was deleted: drop the copy."""


def judge(gen: int, horizon_ms: int, head: Head, stale: bool, cut_off: bool = False) -> Judgement:
    """What a copy of generation ``gen`` and horizon ``horizon_ms`` does about a head just read.

    ``stale``: the copy was not confirmed within ``Freshness.stale_after``; ``cut_off``:
    not for about ``CANVAS_TOMBSTONE_TTL`` (tombstones may have expired without the horizon
    moving).
    """
    if head.gen > gen:
        return Judgement.DELETED
    if head.horizon_ms > horizon_ms:
        return Judgement.RELOAD if stale else Judgement.ADOPT
    if stale:
        return Judgement.RELOAD if cut_off else Judgement.VERIFY
    return Judgement.CURRENT


def forgettable(
    tombstones: Mapping[str, int],
    unsaved: Container[str],
    now_ms: int,
    *,
    budget: int,
    grace_ms: int,
    ttl_ms: int,
) -> tuple[list[str], list[str]]:
    """The tombstones a copy may forget now, oldest first: (expired, over the budget).

    ``tombstones`` maps each object id to when the tombstone settled here (ms), oldest
    first. Only tombstones settled for ``grace_ms`` and not unsaved here may go: those
    past ``ttl_ms``, then the oldest while more than ``budget`` remain. The scan stops at
    the first tombstone within the grace, so it costs what it forgets.
    """
    settled_before = now_ms - grace_ms
    expired_before = now_ms - ttl_ms
    expired: list[str] = []
    over: list[str] = []
    for object_id, at in tombstones.items():
        if at > settled_before:
            break
        if object_id in unsaved:
            continue
        if at < expired_before:
            expired.append(object_id)
        elif len(tombstones) - len(expired) - len(over) > budget:
            over.append(object_id)
        else:
            break
    return expired, over
