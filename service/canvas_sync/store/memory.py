"""The store in a dictionary: DynamoDB's layout and rules, for fast tests of the logic above.

Same items (the stored document, ``saved_at``, ``saved_by``, ``gen``, tombstone expiry),
same heads with tokens, generation and horizon (and the same conditions on writing them),
same 25-item batches and the same refusal of an item past 400 KB.
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
from .base import BATCH_LIMIT, ITEM_LIMIT_BYTES, BatchObserver, Head, Loaded, Saved, WriteReport
from .heads import Announcements


class InjectedFault(Exception):
    """What a test's ``fault`` hook raises; counted as a failed call."""


@dataclass(frozen=True, slots=True)
class _Item:
    doc: str
    saved_at: int
    saved_by: str
    expires_at: float | None
    gen: int = 0


class MemoryStore:
    def __init__(
        self, replica_id: str = "", tombstone_ttl: float = TOMBSTONE_TTL, shared: MemoryStore | None = None
    ) -> None:
        """``shared``: another replica's store, whose table this one uses (several replicas, one table)."""
        self.replica_id = replica_id
        self.tombstone_ttl = tombstone_ttl
        self.observer: BatchObserver = lambda outcome, seconds, written: None
        self.fault: Callable[[str], None] = lambda operation: None
        """Called with the operation's name (write, head, heads, load, feed, get, bump, sweep,
        horizon, purge) before it runs."""
        self.calls: list[str] = []
        """Every request made, by operation name, as DynamoDB would count them."""
        self._table: _Table = shared._table if shared else _Table()
        self._announcements = Announcements()

    def stored(self, project_id: str) -> int:
        """Items stored for the project, expired or of any generation (what a Scan would count)."""
        return self._table.count(project_id)

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
                self._table.put(obj.project, obj.state.id, _Item(doc, saved_at_ms, self.replica_id, expires, obj.gen))
                report.written += 1
                self._announcements.owe([obj.project], saved_at_ms, obj.gen)
            self.observer("success", time.perf_counter() - start, len(chunk))
        report.heads = self.announce()
        return report

    @property
    def heads_owed(self) -> bool:
        return self._announcements.owed

    def announce(self) -> int:
        return self._announcements.announce(self._touch_head)

    def take_fenced(self) -> dict[str, int]:
        return self._announcements.take_fenced()

    def _touch_head(self, project: str, token: str, gen: int) -> bool | None:
        try:
            self._call("head")
        except Exception:
            return False
        return True if self._table.set_head(project, self.replica_id, token, gen) else None

    # --- reading ------------------------------------------------------------------------

    def heads(self, project_ids: list[str]) -> dict[str, dict[str, str]]:
        return {p: head.tokens for p, head in self.read_heads(project_ids).items()}

    def read_heads(self, project_ids: list[str]) -> dict[str, Head]:
        for _ in range(0, len(project_ids), 100):
            self._call("heads")
        return {p: self._table.head(p) for p in project_ids}

    def load_project(self, project_id: str) -> list[ObjectState]:
        return self.load(project_id).states

    def load(self, project_id: str) -> Loaded:
        self._call("load")
        records = self._table.records(project_id)
        head = self._table.head(project_id)  # after the items, as DynamoStore reads it
        stale = [r.state.id for r in records if r.gen < head.gen]
        older = _older_than(head.gen)
        for object_id in stale:
            self._table.delete_if(project_id, object_id, older)
        return Loaded([r.state for r in records if r.gen >= head.gen], head.gen, head.horizon_ms, len(stale))

    # --- deletes ------------------------------------------------------------------------

    def bump_generation(self, project_id: str, horizon_ms: int = 0) -> int:
        self._call("bump")
        return self._table.bump(project_id, horizon_ms)

    def sweep(self, project_id: str) -> int:
        self._call("sweep")
        older = _older_than(self._table.head(project_id).gen)
        return sum(self._table.delete_if(project_id, object_id, older) for object_id in self._table.keys(project_id))

    def advance_horizon(self, project_id: str, gen: int, horizon_ms: int) -> bool:
        self._call("horizon")
        return self._table.advance(project_id, gen, horizon_ms)

    def purge(self, project_id: str, items: list[tuple[str, str]]) -> int:
        try:
            self._call("purge")
        except Exception:
            return 0  # best effort, as DynamoStore's
        return sum(self._table.delete_if(project_id, object_id, _holding(doc)) for object_id, doc in items)

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


def _older_than(gen: int) -> Callable[[_Item], bool]:
    return lambda item: item.gen < gen


def _holding(doc: str) -> Callable[[_Item], bool]:
    return lambda item: item.doc == doc


class _Table:
    """The shared dictionary behind one or more MemoryStores."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _items and _heads
        self._items: dict[str, dict[str, _Item]] = {}
        self._heads: dict[str, Head] = {}

    def put(self, project: str, object_id: str, item: _Item) -> None:
        with self._lock:
            self._items.setdefault(project, {})[object_id] = item

    def set_head(self, project: str, writer: str, token: str, gen: int) -> bool:
        """The writer's token, if the head is of ``gen`` (as DynamoStore's condition)."""
        with self._lock:
            head = self._heads.get(project, Head())
            if head.gen != gen:
                return False
            self._heads[project] = Head({**head.tokens, writer: token}, head.gen, head.horizon_ms)
            return True

    def head(self, project: str) -> Head:
        with self._lock:
            head = self._heads.get(project, Head())
            return Head(dict(head.tokens), head.gen, head.horizon_ms)

    def bump(self, project: str, horizon_ms: int) -> int:
        with self._lock:
            head = self._heads.get(project, Head())
            self._heads[project] = Head(head.tokens, head.gen + 1, horizon_ms)
            return head.gen + 1

    def advance(self, project: str, gen: int, horizon_ms: int) -> bool:
        with self._lock:
            head = self._heads.get(project, Head())
            if head.gen != gen:
                return False
            if horizon_ms > head.horizon_ms:
                self._heads[project] = Head(head.tokens, head.gen, horizon_ms)
            return True

    def keys(self, project: str) -> list[str]:
        with self._lock:
            return list(self._items.get(project, {}))

    def delete_if(self, project: str, object_id: str, condition: Callable[[_Item], bool]) -> bool:
        """Delete one item if it exists and meets ``condition`` (a conditional DeleteItem)."""
        with self._lock:
            items = self._items.get(project, {})
            item = items.get(object_id)
            if item is None or not condition(item):
                return False
            del items[object_id]
            return True

    def count(self, project: str) -> int:
        """Items stored for the project, expired or of any generation (what a Scan would count)."""
        with self._lock:
            return len(self._items.get(project, {}))

    def records(self, project: str) -> list[Saved]:
        now = time.time()
        with self._lock:
            items = sorted(self._items.get(project, {}).items())
        return [
            Saved(
                project, ObjectState.from_doc(object_id, json.loads(item.doc)), item.saved_at, item.saved_by, item.gen
            )
            for object_id, item in items
            if item.expires_at is None or item.expires_at >= now
        ]
