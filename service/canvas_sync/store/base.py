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

BatchObserver = Callable[[str, float, int], None]
"""Called after every batch write with (outcome, seconds, items written)."""


@dataclass(frozen=True, slots=True)
class Saved:
    """One object as read from the table, with who saved it and when."""

    project: str
    state: ObjectState
    saved_at: int
    saved_by: str


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

    Items are written with ``saved_at`` (the save's clock, the change feed's order) and
    ``saved_by``; after a pass has written some of a project's items, the writer's token
    in the project's head changes (``heads.py``: the same bookkeeping for every store).
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

    def changes_since(self, project_id: str, after_ms: int) -> list[Saved]:
        """Items of a project saved after ``after_ms``: the change feed."""
        ...

    def get_many(self, keys: list[tuple[str, str]]) -> list[Saved]:
        """Consistent reads of (project, object) keys; missing keys are left out."""
        ...
