"""DynamoDB repository: the table layout, batched saves and paginated loads.

One item per object (tombstones included), keyed ``(project_id, object_id)``:

- ``doc`` (S): the object's stamped state as JSON text. Keeping it as text makes numbers
  come back exactly as sent (``1`` stays ``1``, ``0.1`` stays ``0.1``) without DynamoDB's
  Decimal type and its 38-digit range, and keeps the per-property stamps with the values.
- ``saved_at`` (N): hybrid-clock milliseconds of the save; the ``by_saved_at`` index
  (``project_id``, ``saved_at``) is the change feed other replicas pull from.
- ``saved_by`` (S): the replica that wrote the item.
- ``expires_at`` (N, tombstones only): DynamoDB TTL, so deleted objects eventually go.
- ``gen`` (N, left out while 0): the generation of the copy that wrote the item. Readers
  skip items below the head's generation: what a save that raced a delete of the project
  wrote after it is never seen, and is swept.

One more item per project, ``(project_id, "#head")``: after a save pass has written some
of a project's objects, the replica sets its own attribute ``w_<replica id>`` there to a
token new for every pass (``heads.py``). A
replica holding the project reads the heads of all its projects with BatchGetItem (100 a
request) and queries the change feed only of projects another replica saved lately, so
an idle project costs a hundredth of a request per sync pass instead of one Query. The
head has no ``saved_at``, so it stays out of the index. It also holds ``gen`` (raised by
each delete of the project; a replica's token is written only while the head is of its
copy's generation) and ``horizon_ms`` (``horizon.py``: deletes behind it may be forgotten).

The store is called from worker threads only; boto3 clients are thread-safe.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from tenacity import Retrying, retry_if_result, stop_after_attempt, stop_after_delay, wait_random_exponential

from ..dirty import DirtyObject
from ..model import TOMBSTONE_TTL, ObjectState, encode_doc
from ..pacing import GilBudget
from . import registry
from .base import BATCH_LIMIT, FIRST_OBJECT_KEY, HEAD, BatchObserver, Head, Loaded, Saved, WriteReport
from .heads import Announcements, token_ms

log = logging.getLogger(__name__)

INDEX_SAVED_AT = "by_saved_at"
TTL_ATTRIBUTE = "expires_at"
WRITER_PREFIX = "w_"
GEN = "gen"
HORIZON = "horizon_ms"
SAME_GEN = "(attribute_not_exists(gen) OR gen = :gen)"
"""The condition of every head write made for a copy: the head is still of its generation."""
OLDER_GEN = "(attribute_not_exists(gen) OR gen < :gen)"
"""The condition of every sweep: the item is of an older generation than the head's."""
HEAD_WRITER_MAX_AGE_MS = 7 * 24 * 3600 * 1000
"""A replica that has not saved a project for this long is dropped from its head."""

STORE_ERRORS = (BotoCoreError, ClientError)
"""What a failing DynamoDB call raises."""


def make_client(endpoint: str | None, region: str | None = None, pool_size: int = 10) -> Any:
    """A DynamoDB client with botocore's ``standard`` retries.

    With an endpoint (DynamoDB Local) and no credentials in boto3's chain, dummy
    credentials and ``us-east-1`` are used, as the contract says.

    Without botocore's client-side parameter validation: it walks every request in Python
    with the GIL held, about a third of the 1.5 ms a BatchWriteItem of 25 items cost the
    save threads (``pacing.py``); DynamoDB validates every request anyway, and a request
    it refuses is answered as before (a ``ValidationException``).
    """
    session = boto3.session.Session()
    kwargs: dict[str, Any] = {}
    if endpoint:
        kwargs["endpoint_url"] = endpoint
        if session.get_credentials() is None:
            kwargs.update(aws_access_key_id="dummy", aws_secret_access_key="dummy")
        region = region or session.region_name or "us-east-1"
    config = Config(
        retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=pool_size,
        connect_timeout=3,
        read_timeout=10,
        parameter_validation=False,
    )
    return session.client("dynamodb", region_name=region or session.region_name, config=config, **kwargs)


class DynamoStore:
    def __init__(
        self,
        client: Any,
        table: str,
        replica_id: str = "",
        concurrency: int = 4,
        unprocessed_attempts: int = 6,
        tombstone_ttl: float = TOMBSTONE_TTL,
        write_deadline: float = 15.0,
        gil_share: float = 1.0,
    ) -> None:
        """``write_deadline``: seconds after which a batch is no longer retried (it is
        reported failed and waits for the next pass): a pass must land within the bound
        ``horizon.py`` relies on, not whenever throttling lets it. ``gil_share``: the
        share of the GIL the save threads may hold together (``pacing.py``; 1: unpaced)."""
        self.client = client
        self.table = table
        self.replica_id = replica_id
        self.unprocessed_attempts = unprocessed_attempts
        self.tombstone_ttl = tombstone_ttl
        self.write_deadline = write_deadline
        self.budget = GilBudget(gil_share)
        """Paces each batch's Python work (building its items, botocore's request and
        response), so the event loop gets the GIL back when it asks."""
        self.observer: BatchObserver = lambda outcome, seconds, written: None
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="canvas-save")
        self._deletes = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="canvas-delete")
        """Deletes of swept items and forgotten tombstones: apart, so they never hold up a save."""
        self._announcements = Announcements()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._deletes.shutdown(wait=True)

    # --- table --------------------------------------------------------------------------

    def create_table(self, wait_seconds: float = 60) -> None:
        """Create the table, its change-feed and registry indexes and TTL if missing; wait until ACTIVE."""
        try:
            self.client.create_table(
                TableName=self.table,
                BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[
                    {"AttributeName": "project_id", "AttributeType": "S"},
                    {"AttributeName": "object_id", "AttributeType": "S"},
                    {"AttributeName": "saved_at", "AttributeType": "N"},
                    *registry.ATTRIBUTES,
                ],
                KeySchema=[
                    {"AttributeName": "project_id", "KeyType": "HASH"},
                    {"AttributeName": "object_id", "KeyType": "RANGE"},
                ],
                GlobalSecondaryIndexes=[
                    {
                        "IndexName": INDEX_SAVED_AT,
                        "KeySchema": [
                            {"AttributeName": "project_id", "KeyType": "HASH"},
                            {"AttributeName": "saved_at", "KeyType": "RANGE"},
                        ],
                        "Projection": {"ProjectionType": "ALL"},
                    },
                    registry.INDEX,
                ],
            )
            log.info("table created", extra={"table": self.table})
        except ClientError as error:
            if error.response["Error"]["Code"] != "ResourceInUseException":
                raise
        self.client.get_waiter("table_exists").wait(
            TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": max(1, int(wait_seconds))}
        )
        try:
            self.client.update_time_to_live(
                TableName=self.table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
            )
        except ClientError as error:
            # Enabling twice is refused with a ValidationException; that is fine.
            if error.response["Error"]["Code"] != "ValidationException":
                raise
        registry.ensure_index(self.client, self.table, wait_seconds)  # tables made before the registry

    def table_ready(self) -> bool:
        """True when the table exists and is ACTIVE (used by /readyz)."""
        table = self.client.describe_table(TableName=self.table)["Table"]
        return table["TableStatus"] == "ACTIVE"

    # --- saving -------------------------------------------------------------------------

    def item(self, obj: DirtyObject, saved_at_ms: int) -> dict[str, Any]:
        item = {
            "project_id": {"S": obj.project},
            "object_id": {"S": obj.state.id},
            "doc": {"S": encode_doc(obj.state)},
            "saved_at": {"N": str(saved_at_ms)},
            "saved_by": {"S": self.replica_id},
        }
        if obj.gen:
            item[GEN] = {"N": str(obj.gen)}
        if not obj.state.is_alive:
            # a stamp from a clock far ahead must not keep a tombstone for ever
            deleted_s = min(obj.state.alive[1][0], saved_at_ms) / 1000
            item[TTL_ATTRIBUTE] = {"N": str(int(deleted_s + self.tombstone_ttl))}
        return item

    def write(self, objects: list[DirtyObject], saved_at_ms: int) -> WriteReport:
        """Save objects in batches of at most 25, in parallel; report what failed.

        The caller guarantees one entry per key, so no batch holds two requests for one
        key (which DynamoDB refuses). A batch DynamoDB refuses as invalid (one item past
        the 400 KB limit refuses all 25) is split until the bad item stands alone; only
        that one is reported refused.
        """
        keys = {(o.project, o.state.id) for o in objects}
        if len(keys) != len(objects):
            raise ValueError("duplicate keys in one save")
        chunks = [objects[i : i + BATCH_LIMIT] for i in range(0, len(objects), BATCH_LIMIT)]
        report = WriteReport()
        for chunk_report in self._pool.map(lambda c: self._write_chunk(c, saved_at_ms), chunks):
            report.add(chunk_report)
        not_written = {o.key for o in report.failed} | {o.key for o, _ in report.refused}
        gens: dict[int, set[str]] = {}
        for o in objects:
            if o.key not in not_written:
                gens.setdefault(o.gen, set()).add(o.project)
        for gen, projects in gens.items():
            self._announcements.owe(projects, saved_at_ms, gen)
        report.heads = self.announce()
        return report

    # --- change markers -----------------------------------------------------------------

    @property
    def heads_owed(self) -> bool:
        """True when written items wait for their head update (it failed)."""
        return self._announcements.owed

    def announce(self) -> int:
        """Mark projects as saved by this replica, after their objects are in the table
        (never beside them), in parallel; failures stay owed for the next call."""
        now_ms = int(time.time() * 1000)
        return self._announcements.announce(
            lambda project, token, gen: self._touch_head(project, token, gen, now_ms), self._pool.map
        )

    def take_fenced(self) -> dict[str, int]:
        return self._announcements.take_fenced()

    def _touch_head(self, project: str, token: str, gen: int, now_ms: int) -> bool | None:
        key = {"project_id": {"S": project}, "object_id": {"S": HEAD}}
        try:
            head = self.client.update_item(
                TableName=self.table,
                Key=key,
                UpdateExpression="SET #me = :t",
                ConditionExpression=SAME_GEN,
                ExpressionAttributeNames={"#me": WRITER_PREFIX + self.replica_id},
                ExpressionAttributeValues={":t": {"S": token}, ":gen": {"N": str(gen)}},
                ReturnValues="ALL_NEW",
            )["Attributes"]
        except ClientError as error:
            if _code(error) == "ConditionalCheckFailedException":
                log.info(
                    "head of another generation: the project was deleted",
                    extra={"event": "fenced", "project": project, "gen": gen},
                )
                return None
            log.warning(
                "head update failed; retried with the next pass",
                extra={"event": "head_error", "project": project, "error": _describe(error)},
            )
            return False
        except STORE_ERRORS as error:
            log.warning(
                "head update failed; retried with the next pass",
                extra={"event": "head_error", "project": project, "error": _describe(error)},
            )
            return False
        self._prune_head(key, head, now_ms)
        return True

    def _prune_head(self, key: dict[str, Any], head: dict[str, Any], now_ms: int) -> None:
        """Drop replicas long gone (pods come and go) from a head, to keep it small.

        Conditional on each token being the one read: a replica that wrote again in the
        meantime keeps its entry.
        """
        me = WRITER_PREFIX + self.replica_id
        gone = {
            name: value
            for name, value in head.items()
            if name.startswith(WRITER_PREFIX)
            and name != me
            and now_ms - token_ms(value.get("S", "")) > HEAD_WRITER_MAX_AGE_MS
        }
        if not gone:
            return
        names = {f"#g{i}": name for i, name in enumerate(gone)}
        values = {f":g{i}": gone[name] for i, name in enumerate(gone)}
        try:
            self.client.update_item(
                TableName=self.table,
                Key=key,
                UpdateExpression="REMOVE " + ", ".join(names),
                ConditionExpression=" AND ".join(f"{n} = {v}" for n, v in zip(names, values, strict=True)),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except STORE_ERRORS as error:  # a condition that failed included: tried again next time
            log.info("pruning a head skipped", extra={"event": "head_prune_skipped", "error": _describe(error)})

    def heads(self, project_ids: list[str]) -> dict[str, dict[str, str]]:
        """Each project's head: replica id -> token of its latest save (consistent reads)."""
        return {p: head.tokens for p, head in self.read_heads(project_ids).items()}

    def read_heads(self, project_ids: list[str]) -> dict[str, Head]:
        """Each project's whole head (tokens, generation, horizon); consistent reads, 100 a request."""
        out: dict[str, Head] = {p: Head() for p in project_ids}
        for item in self._batch_get([(p, HEAD) for p in project_ids]):
            out[item["project_id"]["S"]] = _head(item)
        return out

    def _read_head(self, project_id: str) -> Head:
        item = self.client.get_item(
            TableName=self.table,
            Key={"project_id": {"S": project_id}, "object_id": {"S": HEAD}},
            ConsistentRead=True,
        ).get("Item")
        return _head(item) if item else Head()

    # --- deletes of a whole project, and of forgotten tombstones ----------------------------

    def bump_generation(self, project_id: str, horizon_ms: int = 0) -> int:
        """The project's head one generation on (created if missing), its horizon the
        delete's; the new generation."""
        attributes = self.client.update_item(
            TableName=self.table,
            Key={"project_id": {"S": project_id}, "object_id": {"S": HEAD}},
            UpdateExpression="SET gen = if_not_exists(gen, :zero) + :one, deleted_at = :now, horizon_ms = :h",
            ExpressionAttributeValues={
                ":zero": {"N": "0"},
                ":one": {"N": "1"},
                ":now": {"N": str(int(time.time() * 1000))},
                ":h": {"N": str(horizon_ms)},
            },
            ReturnValues="UPDATED_NEW",
        )["Attributes"]
        return int(attributes[GEN]["N"])

    def sweep(self, project_id: str) -> int:
        """Delete every item of an older generation than the head's (the head stays), in
        parallel, each on that condition; how many. Raises when some could not be deleted
        (they are invisible meanwhile; a later sweep or load takes them)."""
        gen = self._read_head(project_id).gen
        pages = self.client.get_paginator("query").paginate(
            TableName=self.table,
            KeyConditionExpression="project_id = :p",
            ExpressionAttributeValues={":p": {"S": project_id}},
            ProjectionExpression="object_id, gen",
            ConsistentRead=True,
        )
        keys = [
            item["object_id"]["S"]
            for page in pages
            for item in page["Items"]
            if item["object_id"]["S"] != HEAD and _gen(item) < gen
        ]
        return self._delete_each(project_id, [(oid, OLDER_GEN, {":gen": {"N": str(gen)}}) for oid in keys])

    def advance_horizon(self, project_id: str, gen: int, horizon_ms: int) -> bool:
        """``horizon_ms`` into the head unless it holds a later one; False when the head is
        of another generation."""
        try:
            self.client.update_item(
                TableName=self.table,
                Key={"project_id": {"S": project_id}, "object_id": {"S": HEAD}},
                UpdateExpression="SET horizon_ms = :h",
                ConditionExpression=f"{SAME_GEN} AND (attribute_not_exists(horizon_ms) OR horizon_ms < :h)",
                ExpressionAttributeValues={":h": {"N": str(horizon_ms)}, ":gen": {"N": str(gen)}},
            )
        except ClientError as error:
            if _code(error) != "ConditionalCheckFailedException":
                raise
            return self._read_head(project_id).gen == gen  # the head holds a later horizon already
        return True

    def purge(self, project_id: str, items: list[tuple[str, str]]) -> int:
        """Delete forgotten tombstones, each only while it holds the doc given; how many.
        Best effort: what fails stays (skipped by readers once expired, forgotten again by
        the next copy that loads it)."""
        try:
            return self._delete_each(project_id, [(oid, "doc = :doc", {":doc": {"S": doc}}) for oid, doc in items])
        except _PartlyDeleted as error:
            log.warning(
                "forgotten tombstones partly deleted",
                extra={"event": "purge_error", "project": project_id, "deleted": error.deleted, "error": str(error)},
            )
            return error.deleted

    def _delete_each(self, project_id: str, deletes: list[tuple[str, str, dict[str, Any]]]) -> int:
        """DeleteItem of each (object id, condition, values), in parallel; a condition that
        fails means the item is not the one meant (or gone): left alone. How many were deleted."""

        def delete(job: tuple[str, str, dict[str, Any]]) -> bool | Exception:
            object_id, condition, values = job
            try:
                self.client.delete_item(
                    TableName=self.table,
                    Key={"project_id": {"S": project_id}, "object_id": {"S": object_id}},
                    ConditionExpression=condition,
                    ExpressionAttributeValues=values,
                )
            except ClientError as error:
                if _code(error) == "ConditionalCheckFailedException":
                    return False
                return error
            except BotoCoreError as error:
                return error
            return True

        results = list(self._deletes.map(delete, deletes))
        deleted = sum(1 for r in results if r is True)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise _PartlyDeleted(deleted, f"{len(errors)} deletes failed, e.g. {_describe(errors[0])}")
        return deleted

    def _write_chunk(self, chunk: list[DirtyObject], saved_at_ms: int) -> WriteReport:
        with self.budget.slice():
            pending = {(o.project, o.state.id): (o, self.item(o, saved_at_ms)) for o in chunk}
        report = WriteReport()

        def attempt() -> dict:
            nonlocal pending
            report.batches += 1
            pending = self._batch_call(pending)
            return pending

        retrying = Retrying(
            retry=retry_if_result(bool),
            wait=wait_random_exponential(multiplier=0.05, max=2.0),  # full jitter
            stop=stop_after_attempt(self.unprocessed_attempts) | stop_after_delay(self.write_deadline),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        try:
            retrying(attempt)
        except ClientError as error:
            if _code(error) != "ValidationException":
                return self._chunk_failed(report, chunk, pending, error)
            if len(pending) == 1:
                ((item, _),) = pending.values()
                report.refused.append((item, _describe(error)))
                report.written = len(chunk) - 1
                return report
            left = [o for o, _ in pending.values()]  # the invalid item is among these: halve
            report.written = len(chunk) - len(left)
            for half in (left[: len(left) // 2], left[len(left) // 2 :]):
                report.add(self._write_chunk(half, saved_at_ms))
            return report
        except STORE_ERRORS as error:
            return self._chunk_failed(report, chunk, pending, error)
        report.failed = [o for o, _ in pending.values()]
        report.written = len(chunk) - len(report.failed)
        if report.failed:
            report.errors.append(f"{len(report.failed)} items still unprocessed after {report.batches} attempts")
        return report

    @staticmethod
    def _chunk_failed(report: WriteReport, chunk: list[DirtyObject], pending: dict, error: Exception) -> WriteReport:
        report.failed = [o for o, _ in pending.values()]
        report.written = len(chunk) - len(pending)
        report.errors.append(_describe(error))
        return report

    def _batch_call(self, pending: dict) -> dict:
        requests = [{"PutRequest": {"Item": item}} for _, item in pending.values()]
        start = time.perf_counter()
        try:
            with self.budget.slice():
                response = self.client.batch_write_item(RequestItems={self.table: requests})
        except STORE_ERRORS:
            self.observer("error", time.perf_counter() - start, 0)
            raise
        unprocessed = response.get("UnprocessedItems", {}).get(self.table, [])
        left = {}
        for request in unprocessed:
            item = request["PutRequest"]["Item"]
            key = (item["project_id"]["S"], item["object_id"]["S"])
            left[key] = pending[key]
        self.observer("success", time.perf_counter() - start, len(pending) - len(left))
        return left

    # --- loading ------------------------------------------------------------------------

    def load_project(self, project_id: str) -> list[ObjectState]:
        """Every object of a project (tombstones included, expired ones skipped)."""
        return self.load(project_id).states

    def load(self, project_id: str) -> Loaded:
        """Every object of the project's generation (a paginated, consistent Query of the
        object keys alone), then its head; items of older generations are skipped and
        deleted (what a save that raced a delete left)."""
        pages = self.client.get_paginator("query").paginate(
            TableName=self.table,
            KeyConditionExpression="project_id = :p AND object_id >= :first",
            ExpressionAttributeValues={":p": {"S": project_id}, ":first": {"S": FIRST_OBJECT_KEY}},
            ConsistentRead=True,
        )
        records = list(self._records(item for page in pages for item in page["Items"]))
        head = self._read_head(project_id)
        stale = [r.state.id for r in records if r.gen < head.gen]
        if stale:
            values = {":gen": {"N": str(head.gen)}}
            try:
                self._delete_each(project_id, [(oid, OLDER_GEN, values) for oid in stale])
            except _PartlyDeleted as error:  # invisible all the same; the next load tries again
                log.warning("sweep during a load failed", extra={"event": "sweep_error", "error": str(error)})
        states = [r.state for r in records if r.gen >= head.gen]
        return Loaded(states, head.gen, head.horizon_ms, len(stale))

    def changes_since(self, project_id: str, after_ms: int) -> list[Saved]:
        """Items of a project saved after ``after_ms``: the change feed (index query).

        An idle project costs one request that returns nothing. The index is eventually
        consistent; callers re-read an overlap window to catch late arrivals.
        """
        pages = self.client.get_paginator("query").paginate(
            TableName=self.table,
            IndexName=INDEX_SAVED_AT,
            KeyConditionExpression="project_id = :p AND saved_at > :t",
            ExpressionAttributeValues={":p": {"S": project_id}, ":t": {"N": str(after_ms)}},
        )
        return list(self._records(item for page in pages for item in page["Items"]))

    def get_many(self, keys: list[tuple[str, str]]) -> list[Saved]:
        """Consistent reads of the given (project, object) keys, 100 a request."""
        return list(self._records(self._batch_get(keys)))

    def _batch_get(self, keys: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
        """BatchGetItem, 100 keys a request, UnprocessedKeys retried with backoff."""
        for i in range(0, len(keys), 100):
            pending: dict[str, Any] = {
                self.table: {
                    "Keys": [{"project_id": {"S": p}, "object_id": {"S": o}} for p, o in keys[i : i + 100]],
                    "ConsistentRead": True,
                }
            }
            items: list[dict[str, Any]] = []

            def attempt(items: list[dict[str, Any]] = items) -> dict[str, Any]:
                nonlocal pending
                response = self.client.batch_get_item(RequestItems=pending)
                items.extend(response.get("Responses", {}).get(self.table, []))
                pending = response.get("UnprocessedKeys") or {}
                return pending

            Retrying(
                retry=retry_if_result(bool),
                wait=wait_random_exponential(multiplier=0.05, max=2.0),
                stop=stop_after_attempt(self.unprocessed_attempts),
                reraise=True,
            )(attempt)
            yield from items

    def _records(self, items: Iterator[dict[str, Any]]) -> Iterator[Saved]:
        now = time.time()
        for item in items:
            object_id = item["object_id"]["S"]
            if object_id.startswith("#"):
                continue  # per-project metadata, not an object
            expires = item.get(TTL_ATTRIBUTE)
            if expires is not None and float(expires["N"]) < now:
                continue  # expired tombstone that DynamoDB has not removed yet
            yield Saved(
                item["project_id"]["S"],
                ObjectState.from_doc(object_id, json.loads(item["doc"]["S"])),
                int(item["saved_at"]["N"]),
                item.get("saved_by", {}).get("S", ""),
                _gen(item),
            )


class _PartlyDeleted(Exception):
    def __init__(self, deleted: int, message: str) -> None:
        super().__init__(message)
        self.deleted = deleted


def _gen(item: dict[str, Any]) -> int:
    return int(item[GEN]["N"]) if GEN in item else 0


def _head(item: dict[str, Any]) -> Head:
    tokens = {
        name[len(WRITER_PREFIX) :]: value["S"]
        for name, value in item.items()
        if name.startswith(WRITER_PREFIX) and "S" in value
    }
    horizon = int(item[HORIZON]["N"]) if HORIZON in item else 0
    return Head(tokens, _gen(item), horizon)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _describe(error: Exception) -> str:
    if isinstance(error, ClientError):
        err = error.response.get("Error", {})
        return f"{err.get('Code', 'ClientError')}: {err.get('Message', '')}"
    return f"{type(error).__name__}: {error}"
