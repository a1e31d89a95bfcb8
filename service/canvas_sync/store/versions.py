"""Versions: snapshots of a project's objects, kept compressed in the project's partition.

A version is what clients saw at one moment (each live object as ``GET /objects`` gives
it), as one canonical JSON array, zlib-compressed and cut into chunks of at most
:data:`CHUNK_BYTES` (DynamoDB items are at most 400 KB):

- ``(project, "#ver#<id>")``: the version's description (name, ``created_at``, objects,
  chunks, bytes); a listing reads these alone, never the chunks;
- ``(project, "#vdata#<id>#<n>")``: chunk ``n`` (``data``, binary). ``#vdata#`` does not
  start with ``#ver#``, so a listing's ``begins_with`` skips every chunk.

Ids are ``<created_at in ms, 13 digits>-<6 hex>``: they sort by time, so the newest
comes first in a descending Query. The chunks are written before the description, so a
version that is listed is whole; a delete removes the description first. No item here has
``saved_at``, so the change feed never sees them, and every sort key starts with ``#``,
so loads skip them.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from botocore.exceptions import ClientError
from tenacity import Retrying, retry_if_result, stop_after_attempt, wait_random_exponential

from .. import protocol
from .registry import HEAD, SAME_GEN, fenced

log = logging.getLogger(__name__)

META_PREFIX = "#ver#"
DATA_PREFIX = "#vdata#"
CHUNK_BYTES = 350 * 1024
"""A chunk and its keys stay well under DynamoDB's 400 KB item limit."""
VERSION_RE = re.compile(r"^[0-9]{13}-[0-9a-f]{6}$")
MAX_NAME_CHARS = 200


_last_ms = 0
_id_lock = threading.Lock()


def new_id(now_ms: int) -> str:
    """A new version id; ids made here sort in the order they were made, even within a
    millisecond (other replicas' only by their time)."""
    global _last_ms
    with _id_lock:
        _last_ms = max(now_ms, _last_ms + 1)
        return f"{_last_ms:013d}-{secrets.token_hex(3)}"


def is_version_id(value: object) -> bool:
    return isinstance(value, str) and VERSION_RE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Version:
    """A version's description (its objects are in the chunks)."""

    version: str
    name: str
    created_at: float
    """Unix seconds."""
    objects: int
    chunks: int
    bytes: int
    """Compressed, as stored."""
    raw_bytes: int
    """The objects' JSON before compression."""
    auto: bool = False
    """Taken by ``CANVAS_VERSION_INTERVAL`` (or before a restore), not asked for by name."""
    by: str | None = None
    """The token subject that asked for it."""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "created_at": self.created_at,
            "objects": self.objects,
            "chunks": self.chunks,
            "bytes": self.bytes,
            "raw_bytes": self.raw_bytes,
            "auto": self.auto,
            "by": self.by,
        }


def pack(objects_json: str, chunk_bytes: int = CHUNK_BYTES) -> tuple[list[bytes], int]:
    """The chunks of a JSON array of objects, and its size before compression."""
    raw = objects_json.encode()
    data = zlib.compress(raw, 6)
    return [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)] or [b""], len(raw)


def unpack_text(chunks: list[bytes]) -> str:
    """The objects' canonical JSON array, as it was taken (to answer with, unparsed)."""
    return zlib.decompress(b"".join(chunks)).decode()


def unpack(chunks: list[bytes]) -> list[dict[str, Any]]:
    """The objects of a version, numbers exact (the standard library reads big integers)."""
    objects = protocol.loads(zlib.decompress(b"".join(chunks)), exact=True)
    if not isinstance(objects, list):
        raise ValueError("a version holds a JSON array of objects")
    return objects


def make(
    version_id: str, name: str, created_at: float, count: int, chunks: list[bytes], raw: int, auto: bool, by: str | None
) -> Version:
    """A version's description; times to the millisecond, as the table keeps them."""
    return Version(version_id, name, round(created_at, 3), count, len(chunks), sum(map(len, chunks)), raw, auto, by)


def to_prune(versions: list[Version], keep: int) -> list[Version]:
    """Which versions go so that ``keep`` stay: the oldest automatic ones first, then the
    oldest named ones (a name is what someone asked to keep)."""
    excess = len(versions) - keep
    if excess <= 0:
        return []
    oldest_first = sorted(versions, key=lambda v: v.version)
    autos = [v for v in oldest_first if v.auto]
    named = [v for v in oldest_first if not v.auto]
    return (autos + named)[:excess]


class Versions(Protocol):
    """Called from worker threads only."""

    def save(self, project: str, version: Version, chunks: list[bytes], gen: int = 0) -> None:
        """Write the chunks, then the description; :class:`Fenced` when the project's head
        is of a later generation than ``gen`` (it was deleted: nothing is left behind)."""
        ...

    def listing(self, project: str) -> list[Version]:
        """Newest first."""
        ...

    def latest(self, project: str) -> Version | None: ...

    def get(self, project: str, version_id: str) -> tuple[Version, list[bytes]] | None: ...

    def delete(self, project: str, versions: list[Version]) -> None: ...

    def drop(self, project: str) -> int:
        """Delete every version of a project (and any chunk left behind); how many items."""
        ...


class CorruptVersion(Exception):
    """A version's chunks are not all there (it is refused, never restored in part)."""


class Fenced(Exception):
    """The project was deleted since the copy writing the version was loaded."""


# --- in memory ------------------------------------------------------------------------------


class MemoryVersions:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _versions
        self._versions: dict[str, dict[str, tuple[Version, list[bytes]]]] = {}
        self.calls: list[str] = []

    def save(self, project: str, version: Version, chunks: list[bytes], gen: int = 0) -> None:
        self.calls.append("save")
        with self._lock:
            self._versions.setdefault(project, {})[version.version] = (version, list(chunks))

    def listing(self, project: str) -> list[Version]:
        self.calls.append("list")
        with self._lock:
            held = self._versions.get(project, {})
            return [held[v][0] for v in sorted(held, reverse=True)]

    def latest(self, project: str) -> Version | None:
        versions = self.listing(project)
        return versions[0] if versions else None

    def get(self, project: str, version_id: str) -> tuple[Version, list[bytes]] | None:
        self.calls.append("get")
        with self._lock:
            return self._versions.get(project, {}).get(version_id)

    def delete(self, project: str, versions: list[Version]) -> None:
        self.calls.append("delete")
        with self._lock:
            held = self._versions.get(project, {})
            for version in versions:
                held.pop(version.version, None)

    def drop(self, project: str) -> int:
        with self._lock:
            gone = self._versions.pop(project, {})
        return sum(1 + len(chunks) for _, chunks in gone.values())


# --- DynamoDB -------------------------------------------------------------------------------


class DynamoVersions:
    def __init__(self, client: Any, table: str, attempts: int = 6) -> None:
        self.client = client
        self.table = table
        self.attempts = attempts

    def _key(self, project: str, sort_key: str) -> dict[str, Any]:
        return {"project_id": {"S": project}, "object_id": {"S": sort_key}}

    def save(self, project: str, version: Version, chunks: list[bytes], gen: int = 0) -> None:
        """The chunks, then the description in a transaction with a check of the head's
        generation: a version of a deleted copy never shows (its chunks are removed)."""
        gen_value = {"N": str(gen)}
        self._batch(
            [
                {
                    "PutRequest": {
                        "Item": {
                            **self._key(project, _chunk_key(version.version, n)),
                            "data": {"B": chunk},
                            "gen": gen_value,
                        }
                    }
                }
                for n, chunk in enumerate(chunks)
            ]
        )
        item: dict[str, Any] = {
            **self._key(project, META_PREFIX + version.version),
            "name": {"S": version.name},
            "created_at": {"N": repr(round(version.created_at, 3))},
            "objects": {"N": str(version.objects)},
            "chunks": {"N": str(version.chunks)},
            "bytes": {"N": str(version.bytes)},
            "raw_bytes": {"N": str(version.raw_bytes)},
            "auto": {"BOOL": version.auto},
        }
        if version.by is not None:
            item["by"] = {"S": version.by}
        item["gen"] = gen_value
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "ConditionCheck": {
                            "TableName": self.table,
                            "Key": self._key(project, HEAD),
                            "ConditionExpression": SAME_GEN,
                            "ExpressionAttributeValues": {":gen": gen_value},
                        }
                    },
                    {"Put": {"TableName": self.table, "Item": item}},
                ]
            )
        except ClientError as error:
            if not fenced(error):
                raise
            self._batch(
                [
                    {"DeleteRequest": {"Key": self._key(project, _chunk_key(version.version, n))}}
                    for n in range(len(chunks))
                ]
            )
            raise Fenced(f"project {project!r} was deleted (generation {gen} ended)") from None

    def _gen(self, project: str) -> int:
        """The head's generation: items of older ones wait for a sweep and are not shown."""
        item = self.client.get_item(
            TableName=self.table, Key=self._key(project, HEAD), ProjectionExpression="gen", ConsistentRead=True
        ).get("Item")
        return int(item["gen"]["N"]) if item and "gen" in item else 0

    def _query(self, project: str, prefix: str, newest_first: bool = False, limit: int | None = None) -> list[Any]:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "project_id = :p AND begins_with(object_id, :v)",
            "ExpressionAttributeValues": {":p": {"S": project}, ":v": {"S": prefix}},
            "ConsistentRead": True,
            "ScanIndexForward": not newest_first,
        }
        if limit is not None:
            kwargs["Limit"] = limit
            return list(self.client.query(**kwargs).get("Items", []))
        pages = self.client.get_paginator("query").paginate(**kwargs)
        return [item for p in pages for item in p["Items"]]

    def listing(self, project: str) -> list[Version]:
        gen = self._gen(project)
        items = self._query(project, META_PREFIX, newest_first=True)
        return [_version(item) for item in items if _item_gen(item) >= gen]

    def latest(self, project: str) -> Version | None:
        versions = self.listing(project)  # at most CANVAS_VERSION_RETENTION small items
        return versions[0] if versions else None

    def get(self, project: str, version_id: str) -> tuple[Version, list[bytes]] | None:
        item = self.client.get_item(
            TableName=self.table, Key=self._key(project, META_PREFIX + version_id), ConsistentRead=True
        ).get("Item")
        if item is None or _item_gen(item) < self._gen(project):
            return None
        version = _version(item)
        chunks = [bytes(i["data"]["B"]) for i in self._query(project, f"{DATA_PREFIX}{version_id}#")]
        if len(chunks) != version.chunks:
            raise CorruptVersion(f"version {version_id} has {len(chunks)} of its {version.chunks} chunks")
        return version, chunks

    def delete(self, project: str, versions: list[Version]) -> None:
        for version in versions:  # the description first: a listed version is always whole
            self.client.delete_item(TableName=self.table, Key=self._key(project, META_PREFIX + version.version))
            self._batch(
                [
                    {"DeleteRequest": {"Key": self._key(project, _chunk_key(version.version, n))}}
                    for n in range(version.chunks)
                ]
            )

    def drop(self, project: str) -> int:
        prefixes = (META_PREFIX, DATA_PREFIX)
        keys = [item["object_id"]["S"] for prefix in prefixes for item in self._query(project, prefix)]
        self._batch([{"DeleteRequest": {"Key": self._key(project, k)}} for k in keys])
        return len(keys)

    def _batch(self, requests: list[dict[str, Any]]) -> None:
        """BatchWriteItem, 25 a request, UnprocessedItems retried with backoff; raises when
        some are still left."""
        for i in range(0, len(requests), 25):
            pending: list[dict[str, Any]] = requests[i : i + 25]

            def attempt() -> list[dict[str, Any]]:
                nonlocal pending
                response = self.client.batch_write_item(RequestItems={self.table: pending})
                pending = response.get("UnprocessedItems", {}).get(self.table, [])
                return pending

            left = Retrying(
                retry=retry_if_result(bool),
                wait=wait_random_exponential(multiplier=0.05, max=2.0),
                stop=stop_after_attempt(self.attempts),
                retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
            )(attempt)
            if left:
                raise RuntimeError(f"{len(left)} version items still unprocessed after {self.attempts} attempts")


def _item_gen(item: Mapping[str, Any]) -> int:
    return int(item["gen"]["N"]) if "gen" in item else 0


def _chunk_key(version_id: str, n: int) -> str:
    return f"{DATA_PREFIX}{version_id}#{n:05d}"


def _version(item: Mapping[str, Any]) -> Version:
    return Version(
        item["object_id"]["S"][len(META_PREFIX) :],
        item.get("name", {}).get("S", ""),
        float(item["created_at"]["N"]),
        int(item["objects"]["N"]),
        int(item["chunks"]["N"]),
        int(item["bytes"]["N"]),
        int(item.get("raw_bytes", {}).get("N", "0")),
        bool(item.get("auto", {}).get("BOOL", False)),
        item.get("by", {}).get("S"),
    )
