"""The registry of projects that ``GET /projects`` lists, without a Scan and without a
write per edit.

One small item per project, in the project's own partition: ``(project_id, "#meta")`` with
``shard`` (a hash of the id, mod :data:`SHARDS`), ``objects``, ``updated_at`` and
``created_at``. The index :data:`INDEX_REGISTRY` on (``shard``, ``project_id``) holds only
these items (nothing else has ``shard``), so a listing is, per shard, one Query of the
ids between the prefix and its end, starting after the cursor; the shards' pages are
merged in id order. Sixteen shards spread the index's writes over sixteen partitions
(each takes 1,000 writes a second) while a page costs sixteen small queries.

Who writes: the replica that saved a project, right after the first save it sees and then
at most once every ``CANVAS_REGISTRY_INTERVAL`` while the project changes
(``resources.Upkeep`` decides; this module only reads and writes). Deleting a project's
partition deletes its entry with it.

Listing for a token: its grants (exact ids, prefixes ending ``*``, ``*``) become prefix
queries and direct reads (:func:`plan`), merged into one page (:func:`page`).
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from tenacity import Retrying, retry_if_result, stop_after_attempt, wait_random_exponential

log = logging.getLogger(__name__)

HEAD = "#head"
SAME_GEN = "(attribute_not_exists(gen) OR gen = :gen)"
"""The project's head is still of the writer's generation (``store/dynamodb.py`` keeps it)."""
META = "#meta"
"""Sort key of a project's registry entry."""
SHARDS = 16
INDEX_REGISTRY = "by_shard"
ATTRIBUTES = [{"AttributeName": "shard", "AttributeType": "N"}]
"""What :data:`INDEX` adds to the table's attribute definitions."""
INDEX = {
    "IndexName": INDEX_REGISTRY,
    "KeySchema": [
        {"AttributeName": "shard", "KeyType": "HASH"},
        {"AttributeName": "project_id", "KeyType": "RANGE"},
    ],
    "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["objects", "updated_at"]},
}
FIRST_ID_CHAR = "-"
"""The smallest character an id may hold: ``after + "-"`` is the least id after ``after``."""
PAST_ID_CHARS = "~"
"""Larger than every character an id may hold: ``prefix + "~"`` ends the prefix's range."""
MAX_LIMIT = 1000


def shard_of(project_id: str) -> int:
    """Stable across processes (Python's ``hash`` is not)."""
    return zlib.crc32(project_id.encode()) % SHARDS


@dataclass(frozen=True, slots=True)
class Entry:
    """One listed project."""

    project: str
    objects: int
    updated_at: float
    """Unix seconds of the save the entry was written after."""
    gen: int = 0
    """The generation of the copy that wrote it (``#head``'s ``gen``; a delete raises it)."""

    def to_json(self) -> dict[str, Any]:
        return {"project": self.project, "objects": self.objects, "updated_at": self.updated_at}


def bounds(prefix: str, after: str | None) -> tuple[str, str] | None:
    """The inclusive id range of a prefix after a cursor; None when empty."""
    low = (prefix if after is None else max(prefix, after + FIRST_ID_CHAR)) or FIRST_ID_CHAR  # keys are never empty
    high = prefix + PAST_ID_CHARS
    return (low, high) if low <= high else None


class Registry(Protocol):
    """Called from worker threads only."""

    def put(self, entries: list[Entry]) -> list[str]:
        """Write entries; the projects written (a failed one is left out, to be tried again)."""
        ...

    def scan(self, prefix: str, after: str | None, limit: int) -> list[Entry]:
        """Up to ``limit`` entries whose id starts with ``prefix``, after ``after``, in id order."""
        ...

    def get(self, project_ids: list[str]) -> list[Entry]:
        """The entries of these projects that exist, in any order."""
        ...

    def forget(self, project_id: str) -> None: ...


# --- listing for a token (pure) ------------------------------------------------------------


class Plan(NamedTuple):
    """What one listing reads: prefix queries (none inside another) and direct reads."""

    prefixes: list[str]
    exact: list[str]


def plan(grants: Mapping[str, object] | None, prefix: str = "") -> Plan:
    """The reads that list exactly the projects ``grants`` cover under ``prefix``.

    ``None`` (authentication off) covers everything. A prefix grant narrower than the
    filter is queried as itself, a wider one as the filter; exact ids are read directly
    unless a queried prefix holds them already.
    """
    if grants is None:
        return Plan([prefix], [])
    wanted: set[str] = set()
    exact: set[str] = set()
    for pattern in grants:
        if pattern.endswith("*"):
            granted = pattern[:-1]
            if granted.startswith(prefix):
                wanted.add(granted)
            elif prefix.startswith(granted):
                wanted.add(prefix)
        elif pattern.startswith(prefix):
            exact.add(pattern)
    prefixes: list[str] = []
    for candidate in sorted(wanted):  # a prefix sorts right after every prefix of it
        if not any(candidate.startswith(kept) for kept in prefixes):
            prefixes.append(candidate)
    return Plan(prefixes, sorted(e for e in exact if not any(e.startswith(p) for p in prefixes)))


def page(registry: Registry, reads: Plan, after: str | None, limit: int) -> tuple[list[Entry], str | None]:
    """One page of a listing and the cursor of the next (None at the end). Blocking."""
    lists = [registry.scan(p, after, limit + 1) for p in reads.prefixes]
    ids = [i for i in reads.exact if after is None or i > after]
    found: list[Entry] = []
    for i in range(0, len(ids), 100):
        found.extend(registry.get(ids[i : i + 100]))
        if len(found) > limit:  # ids are sorted: later batches hold only later ids
            break
    lists.append(sorted(found, key=lambda e: e.project))
    out: list[Entry] = []
    for entry in heapq.merge(*lists, key=lambda e: e.project):
        if out and out[-1].project == entry.project:
            continue
        out.append(entry)
        if len(out) > limit:
            break
    if len(out) > limit:
        return out[:limit], out[limit - 1].project
    return out, None


# --- in memory ------------------------------------------------------------------------------


class MemoryRegistry:
    """The same rules in a dictionary, counting requests as DynamoDB would take them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _entries
        self._entries: dict[str, Entry] = {}
        self.calls: list[str] = []
        """Requests by kind: ``put``, ``query`` (one per shard and page), ``get`` (per 100), ``delete``."""

    def put(self, entries: list[Entry]) -> list[str]:
        with self._lock:
            for entry in entries:
                self.calls.append("put")
                self._entries[entry.project] = entry
        return [e.project for e in entries]

    def scan(self, prefix: str, after: str | None, limit: int) -> list[Entry]:
        self.calls.extend(["query"] * SHARDS)
        span = bounds(prefix, after)
        if span is None:
            return []
        with self._lock:
            ids = sorted(p for p in self._entries if span[0] <= p <= span[1])[:limit]
            return [self._entries[p] for p in ids]

    def get(self, project_ids: list[str]) -> list[Entry]:
        self.calls.extend(["get"] * -(-len(project_ids) // 100))
        with self._lock:
            return [self._entries[p] for p in project_ids if p in self._entries]

    def forget(self, project_id: str) -> None:
        self.calls.append("delete")
        with self._lock:
            self._entries.pop(project_id, None)


# --- DynamoDB -------------------------------------------------------------------------------


class DynamoRegistry:
    """Entries in the objects table, listed through :data:`INDEX_REGISTRY`."""

    def __init__(self, client: Any, table: str, attempts: int = 6, workers: int = 8) -> None:
        """``workers``: requests in flight at once (a listing's shards, a batch of writes)."""
        self.client = client
        self.table = table
        self.attempts = attempts
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="canvas-registry")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def put(self, entries: list[Entry]) -> list[str]:
        done = self._pool.map(self._put_one, entries)
        return [entry.project for entry, ok in zip(entries, done, strict=True) if ok]

    def _put_one(self, entry: Entry) -> bool:
        """One entry, in a transaction with a check of the project's head: a copy of a
        generation a delete has ended cannot write it back (False then)."""
        gen = {":gen": {"N": str(entry.gen)}}
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "ConditionCheck": {
                            "TableName": self.table,
                            "Key": {"project_id": {"S": entry.project}, "object_id": {"S": HEAD}},
                            "ConditionExpression": SAME_GEN,
                            "ExpressionAttributeValues": gen,
                        }
                    },
                    {
                        "Update": {
                            "TableName": self.table,
                            "Key": {"project_id": {"S": entry.project}, "object_id": {"S": META}},
                            "UpdateExpression": (
                                "SET #s = :s, objects = :o, updated_at = :u, gen = :gen, "
                                "created_at = if_not_exists(created_at, :u)"
                            ),
                            "ExpressionAttributeNames": {"#s": "shard"},
                            "ExpressionAttributeValues": {
                                ":s": {"N": str(shard_of(entry.project))},
                                ":o": {"N": str(entry.objects)},
                                ":u": {"N": repr(round(entry.updated_at, 3))},
                                **gen,
                            },
                        }
                    },
                ]
            )
        except ClientError as error:
            if fenced(error):
                log.info(
                    "registry entry of a deleted generation not written",
                    extra={"event": "registry_fenced", "project": entry.project, "gen": entry.gen},
                )
                return False
            return self._failed(entry, error)
        except BotoCoreError as error:
            return self._failed(entry, error)
        return True

    def _failed(self, entry: Entry, error: Exception) -> bool:
        log.warning(  # tried again at the next upkeep
            "registry write failed; tried again later",
            extra={"event": "registry_error", "project": entry.project, "error": f"{type(error).__name__}: {error}"},
        )
        return False

    def scan(self, prefix: str, after: str | None, limit: int) -> list[Entry]:
        span = bounds(prefix, after)
        if span is None:
            return []
        per_page = min(limit, max(10, 2 * limit // SHARDS + 2))  # ids spread evenly over the shards
        firsts = list(self._pool.map(lambda s: self._query(s, span, per_page, None), range(SHARDS)))
        streams = [self._stream(s, span, per_page, first) for s, first in enumerate(firsts)]
        out = []
        for entry in heapq.merge(*streams, key=lambda e: e.project):
            out.append(entry)
            if len(out) >= limit:
                break
        return out

    def _stream(
        self, shard: int, span: tuple[str, str], per_page: int, first: tuple[list[Entry], Any]
    ) -> Iterator[Entry]:
        entries, last = first
        while True:
            yield from entries
            if not last:
                return
            entries, last = self._query(shard, span, per_page, last)

    def _query(self, shard: int, span: tuple[str, str], limit: int, start: Any) -> tuple[list[Entry], Any]:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": INDEX_REGISTRY,
            "KeyConditionExpression": "#s = :s AND project_id BETWEEN :lo AND :hi",
            "ExpressionAttributeNames": {"#s": "shard"},
            "ExpressionAttributeValues": {
                ":s": {"N": str(shard)},
                ":lo": {"S": span[0]},
                ":hi": {"S": span[1]},
            },
            "Limit": limit,
        }
        if start:
            kwargs["ExclusiveStartKey"] = start
        response = self.client.query(**kwargs)
        return [_entry(item) for item in response.get("Items", [])], response.get("LastEvaluatedKey")

    def get(self, project_ids: list[str]) -> list[Entry]:
        out: list[Entry] = []
        for i in range(0, len(project_ids), 100):
            pending: dict[str, Any] = {
                self.table: {
                    "Keys": [{"project_id": {"S": p}, "object_id": {"S": META}} for p in project_ids[i : i + 100]],
                    "ProjectionExpression": "project_id, objects, updated_at",
                }
            }

            def attempt() -> dict[str, Any]:
                nonlocal pending
                response = self.client.batch_get_item(RequestItems=pending)
                out.extend(_entry(item) for item in response.get("Responses", {}).get(self.table, []))
                pending = response.get("UnprocessedKeys") or {}
                return pending

            Retrying(
                retry=retry_if_result(bool),
                wait=wait_random_exponential(multiplier=0.05, max=2.0),
                stop=stop_after_attempt(self.attempts),
                reraise=True,
            )(attempt)
        return out

    def forget(self, project_id: str) -> None:
        self.client.delete_item(TableName=self.table, Key={"project_id": {"S": project_id}, "object_id": {"S": META}})


def fenced(error: ClientError) -> bool:
    """A transaction cancelled because the head is of a later generation."""
    reasons = error.response.get("CancellationReasons") or []
    return error.response.get("Error", {}).get("Code") == "TransactionCanceledException" and any(
        r.get("Code") == "ConditionalCheckFailed" for r in reasons
    )


def _entry(item: Mapping[str, Any]) -> Entry:
    return Entry(
        item["project_id"]["S"],
        int(item.get("objects", {}).get("N", "0")),
        float(item.get("updated_at", {}).get("N", "0")),
    )


def ensure_index(client: Any, table: str, wait_seconds: float = 60) -> None:
    """Add the registry's index to a table made before it existed; wait until it serves.

    ``create-table`` calls this, so an upgrade needs nothing but running it again.
    """

    def indexes() -> dict[str, str]:
        described = client.describe_table(TableName=table)["Table"]
        return {i["IndexName"]: i.get("IndexStatus", "ACTIVE") for i in described.get("GlobalSecondaryIndexes", [])}

    if INDEX_REGISTRY not in indexes():
        try:
            client.update_table(
                TableName=table,
                AttributeDefinitions=[*ATTRIBUTES, {"AttributeName": "project_id", "AttributeType": "S"}],
                GlobalSecondaryIndexUpdates=[{"Create": INDEX}],
            )
            log.info("registry index created", extra={"event": "registry_index", "table": table})
        except ClientError as error:  # another replica is adding it at this moment
            if error.response.get("Error", {}).get("Code") not in ("ResourceInUseException", "ValidationException"):
                raise
    deadline = time.monotonic() + wait_seconds
    while indexes().get(INDEX_REGISTRY) != "ACTIVE" and time.monotonic() < deadline:
        time.sleep(1)
