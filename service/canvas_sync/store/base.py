"""The storage interface the auto-save and sync use, and what passes through it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..dirty import DirtyObject
from ..model import ObjectState

BATCH_LIMIT = 25
"""BatchWriteItem takes at most 25 put/delete requests."""
ITEM_LIMIT_BYTES = 400 * 1024
"""DynamoDB refuses an item larger than this (names and values together)."""
HEAD = "#head"
"""Sort key of the per-project change marker (sort keys starting with # are not objects)."""
FIRST_OBJECT_KEY = "0"
"""Object ids start with a letter or digit, all sorting after ``#``: loads query sort keys
from here, so items that are not objects (``#head``, ``#meta``, ``#ver#...``) are never read."""

BatchObserver = Callable[[str, float, int], None]
"""Called after every batch write with (outcome, seconds, items written)."""


@dataclass(frozen=True, slots=True)
class Saved:
    """One object as read from the table, with who saved it and when."""

    project: str
    state: ObjectState
    saved_at: int
    saved_by: str
    gen: int = 0
    """The generation of the copy that wrote it: an item below the head's is from before
    a delete of the project, and is not the project's any more."""


@dataclass(frozen=True, slots=True)
class Head:
    """A project's ``#head`` item: who saved it lately, and what every copy must agree on."""

    tokens: dict[str, str] = field(default_factory=dict)
    """Replica id -> token of its latest announced save."""
    gen: int = 0
    """Bumped by each delete of the project: items and copies of a lower one are gone."""
    horizon_ms: int = 0
    """Deletes stamped at or before it may be forgotten by every copy and the table
    (``horizon.py``); it only moves forward."""


@dataclass(frozen=True, slots=True)
class Loaded:
    """A whole project as a load or a reconcile reads it."""

    states: list[ObjectState]
    gen: int = 0
    horizon_ms: int = 0
    """The head's, read after the items (see :meth:`Store.load`)."""
    stale: int = 0
    """Items of an older generation met on the way (left by a save that raced a delete), deleted."""


@dataclass
class WriteReport:
    """What one save pass achieved."""

    written: int = 0
    batches: int = 0
    heads: int = 0
    """Projects whose ``#head`` was updated after their objects were written."""
    failed: list[DirtyObject] = field(default_factory=list)
    """Not written this time (throttling, an outage): to be retried."""
    refused: list[tuple[DirtyObject, str]] = field(default_factory=list)
    """Refused by the store itself (too large for an item), with why: retrying cannot help."""
    errors: list[str] = field(default_factory=list)

    def add(self, other: WriteReport) -> None:
        self.written += other.written
        self.batches += other.batches
        self.failed.extend(other.failed)
        self.refused.extend(other.refused)
        self.errors.extend(other.errors)


class Store(Protocol):
    """What the replica needs from its database. Called from worker threads only.

    Items are written with ``saved_at`` (the save's clock, the change feed's order),
    ``saved_by`` and ``gen`` (the generation of the copy that wrote them); after a pass has
    written some of a project's items, the writer's token in the project's head changes
    (``heads.py``: the same bookkeeping for every store), on condition that the head is
    still of that generation. BatchWriteItem takes no conditions, so a copy that missed a
    delete may still land items: they carry the old generation, every reader skips them,
    and the refused announcement tells the writer to drop its copy and sweep them.
    """

    replica_id: str
    observer: BatchObserver

    def create_table(self, wait_seconds: float = 60) -> None: ...

    def table_ready(self) -> bool: ...

    def close(self) -> None: ...

    def write(self, objects: list[DirtyObject], saved_at_ms: int) -> WriteReport:
        """Save objects (one entry per key), then announce the projects in their heads."""
        ...

    @property
    def heads_owed(self) -> bool:
        """True when written items wait for their head update (it failed)."""
        ...

    def announce(self) -> int:
        """Retry owed head updates; how many projects were announced."""
        ...

    def heads(self, project_ids: list[str]) -> dict[str, dict[str, str]]:
        """Each project's head: replica id -> token of its latest announced save."""
        ...

    def load_project(self, project_id: str) -> list[ObjectState]:
        """Every object of a project, tombstones included, expired ones skipped."""
        ...

    def load(self, project_id: str) -> Loaded:
        """Every object of the project's current generation, then its head (read after the
        items: a horizon or generation that moved meanwhile is never missed). Items of older
        generations are skipped and deleted."""
        ...

    def read_heads(self, project_ids: list[str]) -> dict[str, Head]:
        """Each project's whole head (tokens, generation, horizon); consistent reads."""
        ...

    def take_fenced(self) -> dict[str, int]:
        """Projects whose head refused this replica's announcement since the last call
        (its generation moved on: the project was deleted), with the generation written."""
        ...

    def bump_generation(self, project_id: str, horizon_ms: int = 0) -> int:
        """Delete the project logically: its head's generation + 1, returned. From then on
        no reader sees any item of an older generation, wherever it comes from. The new
        generation's horizon is ``horizon_ms`` (the delete's time: whatever was stamped
        before it is gone, so a client replaying an old change cannot bring it back)."""
        ...

    def sweep(self, project_id: str) -> int:
        """Delete every item of the partition but the head that is of an older generation
        than the head's (each on that condition, so an item written meanwhile by a copy of
        the new generation stays); how many."""
        ...

    def advance_horizon(self, project_id: str, gen: int, horizon_ms: int) -> bool:
        """Move the head's horizon forward to ``horizon_ms`` (never back); False when the
        head is of another generation (the project was deleted)."""
        ...

    def purge(self, project_id: str, items: list[tuple[str, str]]) -> int:
        """Delete forgotten tombstones, each ``(object id, stored doc)`` only while the item
        still holds that very doc (a re-create written meanwhile stays); how many."""
        ...

    def changes_since(self, project_id: str, after_ms: int) -> list[Saved]:
        """Items of a project saved after ``after_ms``: the change feed."""
        ...

    def get_many(self, keys: list[tuple[str, str]]) -> list[Saved]:
        """Consistent reads of (project, object) keys; missing keys are left out."""
        ...
