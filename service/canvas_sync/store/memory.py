"""The store in a dictionary: DynamoDB's layout and rules, for fast tests of the logic above.

Same items (the stored document, ``saved_at``, ``saved_by``, tombstone expiry), same
heads with tokens, same 25-item batches and the same refusal of an item past 400 KB.
``fault`` lets a test make any call fail (throttling, an outage) by raising from it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..dirty import DirtyObject
from ..model import TOMBSTONE_TTL, ObjectState, encode_doc
from .base import BATCH_LIMIT, ITEM_LIMIT_BYTES, BatchObserver, Saved, WriteReport
from .heads import Announcements


class InjectedFault(Exception):
    """What a test's ``fault`` hook raises; counted as a failed call."""


@dataclass(frozen=True, slots=True)
class _Item:
    doc: str
    saved_at: int
    saved_by: str
    expires_at: float | None


class MemoryStore:
    def __init__(
        self, replica_id: str = "", tombstone_ttl: float = TOMBSTONE_TTL, shared: MemoryStore | None = None
    ) -> None:
        """``shared``: another replica's store, whose table this one uses (several replicas, one table)."""
        self.replica_id = replica_id
        self.tombstone_ttl = tombstone_ttl
        self.observer: BatchObserver = lambda outcome, seconds, written: None
        self.fault: Callable[[str], None] = lambda operation: None
        """Called with the operation's name (write, head, heads, load, feed, get) before it runs."""
        self.calls: list[str] = []
        """Every request made, by operation name, as DynamoDB would count them."""
        self._table: _Table = shared._table if shared else _Table()
        self._announcements = Announcements()

    def _call(self, operation: str) -> None:
        self.calls.append(operation)
        self.fault(operation)

    # --- table --------------------------------------------------------------------------

    def create_table(self, wait_seconds: float = 60) -> None:
        pass

    def table_ready(self) -> bool:
        self._call("describe")
        return True

    def close(self) -> None:
        pass

    # --- saving -------------------------------------------------------------------------

    def write(self, objects: list[DirtyObject], saved_at_ms: int) -> WriteReport:
        if len({o.key for o in objects}) != len(objects):
            raise ValueError("duplicate keys in one save")
        report = WriteReport()
        for i in range(0, len(objects), BATCH_LIMIT):
            chunk = objects[i : i + BATCH_LIMIT]
            report.batches += 1
            start = time.perf_counter()
            try:
                self._call("write")
            except Exception as error:
                self.observer("error", time.perf_counter() - start, 0)
                report.failed.extend(chunk)
                report.errors.append(f"{type(error).__name__}: {error}")
                continue
            for obj in chunk:
                doc = encode_doc(obj.state)
                if len(doc.encode()) > ITEM_LIMIT_BYTES:  # DynamoDB would refuse the batch; we split it
                    report.refused.append((obj, "ValidationException: Item size has exceeded the maximum allowed size"))
                    continue
                expires = (
                    None if obj.state.is_alive else min(obj.state.alive[1][0], saved_at_ms) / 1000 + self.tombstone_ttl
                )
                self._table.put(obj.project, obj.state.id, _Item(doc, saved_at_ms, self.replica_id, expires))
                report.written += 1
                self._announcements.owe([obj.project], saved_at_ms)
            self.observer("success", time.perf_counter() - start, len(chunk))
        report.heads = self.announce()
        return report

    @property
    def heads_owed(self) -> bool:
        return self._announcements.owed

    def announce(self) -> int:
        return self._announcements.announce(self._touch_head)

    def _touch_head(self, project: str, token: str) -> bool:
        try:
            self._call("head")
        except Exception:
            return False
        self._table.set_head(project, self.replica_id, token)
        return True

    # --- reading ------------------------------------------------------------------------

    def heads(self, project_ids: list[str]) -> dict[str, dict[str, str]]:
        for _ in range(0, len(project_ids), 100):
            self._call("heads")
        return {p: self._table.head(p) for p in project_ids}

    def load_project(self, project_id: str) -> list[ObjectState]:
        self._call("load")
        return [saved.state for saved in self._table.records(project_id)]

    def changes_since(self, project_id: str, after_ms: int) -> list[Saved]:
        self._call("feed")
        return [saved for saved in self._table.records(project_id) if saved.saved_at > after_ms]

    def get_many(self, keys: list[tuple[str, str]]) -> list[Saved]:
        for _ in range(0, len(keys), 100):
            self._call("get")
        wanted = set(keys)
        return [
            saved
            for project in {p for p, _ in keys}
            for saved in self._table.records(project)
            if (project, saved.state.id) in wanted
        ]


class _Table:
    """The shared dictionary behind one or more MemoryStores."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _items and _heads
        self._items: dict[str, dict[str, _Item]] = {}
        self._heads: dict[str, dict[str, str]] = {}

    def put(self, project: str, object_id: str, item: _Item) -> None:
        with self._lock:
            self._items.setdefault(project, {})[object_id] = item

    def set_head(self, project: str, writer: str, token: str) -> None:
        with self._lock:
            self._heads.setdefault(project, {})[writer] = token

    def head(self, project: str) -> dict[str, str]:
        with self._lock:
            return dict(self._heads.get(project, {}))

    def records(self, project: str) -> list[Saved]:
        now = time.time()
        with self._lock:
            items = sorted(self._items.get(project, {}).items())
        return [
            Saved(project, ObjectState.from_doc(object_id, json.loads(item.doc)), item.saved_at, item.saved_by)
            for object_id, item in items
            if item.expires_at is None or item.expires_at >= now
        ]
