"""The DynamoDB repository on moto; tests/system/test_store_dynamodb.py runs these same
assertions against AWS DynamoDB Local (moto is laxer: never the only evidence)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from canvas_sync.dirty import DirtyObject
from canvas_sync.model import TOMBSTONE_TTL, ObjectState, encode_doc
from canvas_sync.store import (
    HEAD,
    HEAD_WRITER_MAX_AGE_MS,
    INDEX_SAVED_AT,
    TTL_ATTRIBUTE,
    DynamoStore,
    Head,
    MemoryStore,
    Store,
    make_client,
)

from tests.doubles import FlakyClient


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[DynamoStore]:
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        s = DynamoStore(make_client(None, region="us-east-1"), "objects", "r1", concurrency=1)
        s.create_table()
        yield s
        s.close()


def dirty(n: int, project: str = "p1", **props: Any) -> list[DirtyObject]:
    stamp = (int(time.time() * 1000), 0, "r1")
    return [DirtyObject(project, ObjectState.created(f"o{i:03}", "rect", {"i": i, **props}, stamp)) for i in range(n)]


def test_create_table_is_idempotent_with_index_and_ttl(store: DynamoStore) -> None:
    store.create_table()
    table = store.client.describe_table(TableName=store.table)["Table"]
    assert table["TableStatus"] == "ACTIVE"
    assert [k["AttributeName"] for k in table["KeySchema"]] == ["project_id", "object_id"]
    assert sorted(i["IndexName"] for i in table["GlobalSecondaryIndexes"]) == sorted([INDEX_SAVED_AT, "by_shard"])
    ttl = store.client.describe_time_to_live(TableName=store.table)["TimeToLiveDescription"]
    assert ttl.get("AttributeName") == TTL_ATTRIBUTE
    assert store.table_ready()


def test_saves_in_batches_of_at_most_25_and_loads_everything(store: DynamoStore) -> None:
    calls: list[tuple[str, int]] = []
    store.observer = lambda outcome, seconds, written: calls.append((outcome, written))
    report = store.write(dirty(60), saved_at_ms=1)
    assert report.written == 60 and not report.failed
    assert sorted(calls) == [("success", 10), ("success", 25), ("success", 25)]
    loaded = {s.id: s for s in store.load_project("p1")}
    assert len(loaded) == 60 and loaded["o007"].view() == {"id": "o007", "type": "rect", "i": 7}
    assert store.load_project("other") == []


def test_values_survive_the_round_trip_exactly(store: DynamoStore) -> None:
    values = {"one": 1, "tenth": 0.1, "huge": 10**40, "tiny": 5e-324, "nested": {"a": [1, 2.5, "é"]}, "neg": -0.0}
    store.write(dirty(1, **values), saved_at_ms=1)
    (state,) = store.load_project("p1")
    view = state.view()
    assert view is not None
    for key, value in values.items():
        assert view[key] == value and type(view[key]) is type(value), key
    assert repr(view["tenth"]) == "0.1" and view["one"] == 1 and not isinstance(view["one"], float)


def test_tombstones_carry_ttl_and_expired_ones_are_skipped(store: DynamoStore) -> None:
    now = int(time.time() * 1000)
    gone = ObjectState("dead", (False, (now, 0, "r1")), ("rect", (now - 1, 0, "r1")), {})
    old = ObjectState("old", (False, (now - 10**10, 0, "r1")), ("rect", (1, 0, "r1")), {})
    store.write([DirtyObject("p1", gone), DirtyObject("p1", old)], saved_at_ms=now)
    item = store.client.get_item(TableName=store.table, Key={"project_id": {"S": "p1"}, "object_id": {"S": "dead"}})[
        "Item"
    ]
    assert int(item[TTL_ATTRIBUTE]["N"]) == int(now / 1000 + store.tombstone_ttl)  # the delete's time + the TTL
    assert store.tombstone_ttl == TOMBSTONE_TTL  # one default, the service's
    assert [s.id for s in store.load_project("p1")] == ["dead"]  # "old" expired long ago


def test_metadata_items_are_not_objects(store: DynamoStore) -> None:
    store.client.put_item(TableName=store.table, Item={"project_id": {"S": "p1"}, "object_id": {"S": "#meta"}})
    store.write(dirty(1), saved_at_ms=1)
    assert [s.id for s in store.load_project("p1")] == ["o000"]


def test_one_save_never_holds_two_requests_for_one_key(store: DynamoStore) -> None:
    with pytest.raises(ValueError):
        store.write(dirty(2) + dirty(1), saved_at_ms=1)


def test_unprocessed_items_are_retried_until_written(store: DynamoStore) -> None:
    flaky = FlakyClient(store.client, ["half", "half", "ok"])
    store.client = flaky
    report = store.write(dirty(20), saved_at_ms=1)
    assert report.written == 20 and not report.failed and report.batches == 3
    assert flaky.sizes == [20, 10, 5]
    assert len(store.load_project("p1")) == 20


def test_a_failing_batch_is_reported_not_lost(store: DynamoStore) -> None:
    store.client = FlakyClient(store.client, ["error"])
    report = store.write(dirty(30), saved_at_ms=1)
    assert report.errors and "InternalServerError" in report.errors[0]
    assert report.written + len(report.failed) == 30
    failed_ids = {o.state.id for o in report.failed}
    saved_ids = {s.id for s in store.load_project("p1")}
    assert failed_ids | saved_ids == {f"o{i:03}" for i in range(30)} and not failed_ids & saved_ids


def test_change_feed_returns_only_items_saved_after_the_watermark(store: DynamoStore) -> None:
    store.write(dirty(30), saved_at_ms=1_000)
    store.write(dirty(2, project="p2"), saved_at_ms=9_000)
    calls: list[str] = []
    store.client.meta.events.register("before-call.dynamodb.Query", lambda **kw: calls.append("query"))
    assert store.changes_since("p1", 5_000) == []  # idle: one request, nothing read
    assert calls == ["query"]
    changed = store.changes_since("p1", 500)
    assert len(changed) == 30 and {c.saved_at for c in changed} == {1_000} and changed[0].saved_by == "r1"
    assert sorted(c.state.id for c in store.changes_since("p2", 5_000)) == ["o000", "o001"]


def test_get_many_reads_the_given_keys(store: DynamoStore) -> None:
    store.write(dirty(120), saved_at_ms=1)
    keys = [("p1", f"o{i:03}") for i in range(0, 120, 1)] + [("p1", "missing")]
    got = store.get_many(keys)
    assert sorted(r.state.id for r in got) == [f"o{i:03}" for i in range(120)]


def test_a_save_pass_marks_each_saved_project_in_its_head(store: DynamoStore) -> None:
    now = int(time.time() * 1000)
    assert store.heads(["p1"]) == {"p1": {}}
    first = store.write(dirty(30) + dirty(2, project="p2"), saved_at_ms=now)
    assert first.heads == 2
    heads = store.heads(["p1", "p2", "p3"])
    assert set(heads["p1"]) == {"r1"} and heads["p1"] == heads["p2"] and heads["p3"] == {}
    store.write(dirty(1), saved_at_ms=now)  # same milliseconds, still a new token
    again = store.heads(["p1", "p2"])
    assert again["p1"]["r1"] != heads["p1"]["r1"] and again["p2"] == heads["p2"]
    other = DynamoStore(store.client, store.table, "r2", concurrency=1)
    other.write(dirty(1), saved_at_ms=now + 1)
    assert set(store.heads(["p1"])["p1"]) == {"r1", "r2"}  # one attribute per replica, none overwritten
    other.close()
    # the head is not an object: not loaded, not in the change feed
    assert len(store.load_project("p1")) == 30
    assert all(c.state.id != HEAD for c in store.changes_since("p1", 0))


def test_heads_are_touched_only_after_the_objects_are_written(store: DynamoStore) -> None:
    store.client = FlakyClient(store.client, ["error"] * 6)
    report = store.write(dirty(3), saved_at_ms=1)
    assert report.failed and report.heads == 0
    assert store.heads(["p1"]) == {"p1": {}}  # a reader is not sent looking for items not there


class FailingUpdates:
    """Wraps a real client: the first ``n`` UpdateItem calls fail."""

    def __init__(self, client: Any, n: int) -> None:
        self.client, self.n = client, n

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def update_item(self, **kwargs: Any) -> Any:
        if self.n:
            self.n -= 1
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "injected"}}, "UpdateItem")
        return self.client.update_item(**kwargs)


def test_a_failed_head_update_is_owed_and_retried(store: DynamoStore) -> None:
    store.client = FailingUpdates(store.client, 1)
    report = store.write(dirty(2), saved_at_ms=1)
    assert not report.failed and report.heads == 0 and store.heads_owed
    assert store.heads(["p1"]) == {"p1": {}}
    assert store.announce() == 1 and not store.heads_owed
    assert set(store.heads(["p1"])["p1"]) == {"r1"}


def test_a_token_names_the_lowest_saved_at_it_announces(store: DynamoStore) -> None:
    """Items saved in a pass whose head update failed are announced later with their own saved_at."""
    store.client = FailingUpdates(store.client, 1)
    store.write(dirty(1), saved_at_ms=1_000)  # written, not announced
    store.write(dirty(1, project="p1", extra=1)[:1], saved_at_ms=2_000)
    token = store.heads(["p1"])["p1"]["r1"]
    assert token.startswith("1000.")  # a reader queries the feed from the first pass on
    store.write(dirty(1), saved_at_ms=3_000)
    assert store.heads(["p1"])["p1"]["r1"].startswith("3000.")


def test_pruning_a_head_keeps_a_replica_that_wrote_again(store: DynamoStore) -> None:
    now = int(time.time() * 1000)
    old = f"{now - HEAD_WRITER_MAX_AGE_MS - 1000}.1"
    key = {"project_id": {"S": "p1"}, "object_id": {"S": HEAD}}
    store.client.put_item(TableName=store.table, Item={**key, "w_pod": {"S": f"{now}.9"}})  # it came back
    store._prune_head(key, {**key, "w_pod": {"S": old}}, now)  # a stale read still says it is gone
    assert set(store.heads(["p1"])["p1"]) == {"pod"}
    store._prune_head(key, {**key, "w_pod": {"S": f"{now}.9"}}, now + HEAD_WRITER_MAX_AGE_MS + 1000)
    assert store.heads(["p1"])["p1"] == {}


def test_an_item_past_the_size_limit_is_refused_alone_and_its_batch_saved(store: DynamoStore) -> None:
    stamp = (int(time.time() * 1000), 0, "r1")
    bad = ObjectState(
        "bad", (True, stamp), ("rect", stamp), {f"p{i:05}" + "x" * 58: (None, stamp) for i in range(8000)}
    )
    objects = [*dirty(12), DirtyObject("p1", bad), *dirty(12, project="p2")]
    report = store.write(objects, saved_at_ms=1)
    assert [(o.state.id, "size" in why.lower()) for o, why in report.refused] == [("bad", True)]
    assert report.written == 24 and not report.failed
    assert len(store.load_project("p1")) == 12 and len(store.load_project("p2")) == 12
    assert set(store.heads(["p1", "p2"])) == {"p1", "p2"} and all(store.heads(["p1", "p2"]).values())


def test_replicas_gone_for_long_are_dropped_from_heads(store: DynamoStore) -> None:
    now = int(time.time() * 1000)
    store.client.put_item(
        TableName=store.table,
        Item={
            "project_id": {"S": "p1"},
            "object_id": {"S": HEAD},
            "w_old-pod": {"S": f"{now - HEAD_WRITER_MAX_AGE_MS - 1000}.1"},
            "w_recent-pod": {"S": f"{now - 1000}.1"},
        },
    )
    store.write(dirty(1), saved_at_ms=now)
    assert set(store.heads(["p1"])["p1"]) == {"r1", "recent-pod"}


def test_heads_of_many_projects_take_one_request_per_hundred(store: DynamoStore) -> None:
    store.write([o for p in range(150) for o in dirty(1, project=f"p{p}")], saved_at_ms=1)
    calls: list[str] = []
    store.client.meta.events.register("before-call.dynamodb.BatchGetItem", lambda **kw: calls.append("get"))
    heads = store.heads([f"p{p}" for p in range(150)] + ["none"])
    assert len(calls) == 2
    assert all(set(heads[f"p{p}"]) == {"r1"} for p in range(150)) and heads["none"] == {}


# --- generations, the horizon and forgotten tombstones: the same on both stores -------------


@pytest.fixture(params=["dynamodb", "memory"])
def either(request: pytest.FixtureRequest) -> Store:
    """DynamoStore (moto here, DynamoDB Local in tests/system/test_store_dynamodb.py) or MemoryStore."""
    if request.param == "memory":
        return MemoryStore("r1")
    return request.getfixturevalue("store")  # type: ignore[no-any-return]


def stored(store: Store, project: str = "p1") -> int:
    """Items in the partition, whatever they are (what a Scan would count), the head aside."""
    if isinstance(store, MemoryStore):
        return store.stored(project)
    assert isinstance(store, DynamoStore)
    items = store.client.query(
        TableName=store.table,
        KeyConditionExpression="project_id = :p",
        ExpressionAttributeValues={":p": {"S": project}},
        ConsistentRead=True,
    )["Items"]
    return sum(1 for item in items if item["object_id"]["S"] != HEAD)


def of_gen(gen: int, n: int, prefix: str = "o", project: str = "p1") -> list[DirtyObject]:
    stamp = (int(time.time() * 1000), gen, "r1")
    return [
        DirtyObject(project, ObjectState.created(f"{prefix}{i}", "rect", {"g": gen}, stamp), gen=gen) for i in range(n)
    ]


def test_a_bumped_generation_hides_every_older_item_wherever_it_comes_from(either: Store) -> None:
    either.write(of_gen(0, 5), saved_at_ms=1_000)
    assert either.load("p1").gen == 0 and len(either.load("p1").states) == 5
    assert either.bump_generation("p1") == 1 and either.bump_generation("p1") == 2
    assert either.read_heads(["p1", "none"]) == {
        "p1": Head({"r1": either.heads(["p1"])["p1"]["r1"]}, 2, 0),
        "none": Head(),
    }
    late = of_gen(1, 3, prefix="late")  # a save of a copy that missed the delete, landing after it
    either.write(late, saved_at_ms=2_000)
    loaded = either.load("p1")
    assert (loaded.states, loaded.gen) == ([], 2)
    assert stored(either) == 0 and loaded.stale == 8  # what a load meets of older generations goes
    either.write(of_gen(2, 2, prefix="new"), saved_at_ms=3_000)
    assert sorted(s.id for s in either.load("p1").states) == ["new0", "new1"]
    feed = either.changes_since("p1", 0)  # the feed and reads by key say which generation wrote what
    assert {(r.state.id, r.gen) for r in feed} == {("new0", 2), ("new1", 2)}
    assert {r.gen for r in either.get_many([("p1", "new0")])} == {2}


def test_a_sweep_deletes_what_older_generations_wrote_and_nothing_newer(either: Store) -> None:
    either.write(of_gen(0, 30), saved_at_ms=1_000)
    either.bump_generation("p1")
    either.write(of_gen(1, 2, prefix="o"), saved_at_ms=2_000)  # o0, o1 rewritten by the new generation
    assert either.sweep("p1") == 28 and stored(either) == 2
    assert sorted(s.id for s in either.load("p1").states) == ["o0", "o1"]
    assert either.sweep("p1") == 0


def test_an_announcement_to_a_head_of_another_generation_is_fenced_not_owed(either: Store) -> None:
    either.write(of_gen(0, 1), saved_at_ms=1_000)
    token = either.heads(["p1"])["p1"]["r1"]
    either.bump_generation("p1")
    report = either.write(of_gen(0, 2, prefix="x"), saved_at_ms=2_000)  # written, then refused by the head
    assert report.written == 2 and report.heads == 0 and not either.heads_owed
    assert either.heads(["p1"])["p1"]["r1"] == token  # no reader is sent looking for them
    assert either.take_fenced() == {"p1": 0} and either.take_fenced() == {}
    either.write(of_gen(1, 1), saved_at_ms=3_000)  # a copy of the new generation announces as ever
    assert either.heads(["p1"])["p1"]["r1"] != token and either.take_fenced() == {}


def test_the_horizon_only_moves_forward_within_a_generation(either: Store) -> None:
    assert either.advance_horizon("p1", 0, 1_000)
    assert either.advance_horizon("p1", 0, 500)  # someone went further already: fine
    assert either.read_heads(["p1"])["p1"].horizon_ms == 1_000 and either.load("p1").horizon_ms == 1_000
    either.bump_generation("p1")
    assert not either.advance_horizon("p1", 0, 2_000)  # the copy is of a deleted generation
    assert either.advance_horizon("p1", 1, 2_000) and either.read_heads(["p1"])["p1"] == Head({}, 1, 2_000)


def test_purge_deletes_a_forgotten_tombstone_only_while_it_is_that_tombstone(either: Store) -> None:
    now = int(time.time() * 1000)
    tombs = [ObjectState(f"t{i}", (False, (now, i, "r1")), ("rect", (now - 1, 0, "r1")), {}) for i in range(3)]
    either.write([DirtyObject("p1", t) for t in tombs], saved_at_ms=now)
    again = ObjectState.created("t1", "rect", {"x": 1}, (now + 5, 0, "r2"))  # re-created meanwhile
    either.write([DirtyObject("p1", again)], saved_at_ms=now + 5)
    docs = [(t.id, encode_doc(t)) for t in tombs] + [("missing", encode_doc(tombs[0]))]
    assert either.purge("p1", docs) == 2
    assert [s.view() for s in either.load("p1").states] == [{"id": "t1", "type": "rect", "x": 1}]
