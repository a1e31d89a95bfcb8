"""The registry of projects: which reads a token's grants make, pages and cursors, the
shards; on memory and on moto (tests/system/test_projects_api.py runs it on DynamoDB Local)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from canvas_sync.store import DynamoStore, make_client
from canvas_sync.store.registry import (
    INDEX_REGISTRY,
    SHARDS,
    DynamoRegistry,
    Entry,
    MemoryRegistry,
    Plan,
    Registry,
    bounds,
    page,
    plan,
    shard_of,
)
from hypothesis import given, settings
from hypothesis import strategies as st


def test_a_tokens_grants_become_prefix_queries_and_direct_reads() -> None:
    assert plan(None, "t:") == Plan(["t:"], [])
    assert plan({"*": "viewer"}) == Plan([""], [])
    assert plan({"*": "viewer", "a": "owner"}, "x") == Plan(["x"], [])
    grants = {"team-1:*": "editor", "team-1:board*": "viewer", "solo": "owner", "team-1:x": "viewer", "zz": "v"}
    assert plan(grants) == Plan(["team-1:"], ["solo", "zz"])  # the longer prefix lies inside the shorter
    assert plan(grants, "team-1:b") == Plan(["team-1:b"], [])
    assert plan(grants, "s") == Plan([], ["solo"])
    assert plan(grants, "team-2") == Plan([], [])


def test_bounds_of_a_prefix_after_a_cursor() -> None:
    assert bounds("", None) == ("-", "~")
    assert bounds("a", None) == ("a", "a~")
    assert bounds("a", "a5") == ("a5-", "a~")
    assert bounds("a", "0") == ("a", "a~")
    assert bounds("a", "b") is None


def test_shards_are_stable_and_spread() -> None:
    assert shard_of("board-1") == shard_of("board-1")
    counts = [0] * SHARDS
    for i in range(16_000):
        counts[shard_of(f"team-{i % 7}:board-{i}")] += 1
    assert min(counts) > 800 and max(counts) < 1200


ID = st.text("ab:-0", min_size=1, max_size=4).filter(lambda s: s[0] not in ":-")


@settings(max_examples=60, deadline=None)
@given(
    ids=st.sets(ID, max_size=40),
    grants=st.dictionaries(st.one_of(ID, ID.map(lambda s: s + "*"), st.just("*")), st.just("viewer"), max_size=4),
    prefix=st.sampled_from(["", "a", "b:", "a-"]),
    limit=st.integers(1, 7),
)
def test_paging_lists_exactly_the_covered_ids_once_in_order(
    ids: set[str], grants: dict[str, str], prefix: str, limit: int
) -> None:
    registry = MemoryRegistry()
    registry.put([Entry(i, 0, 0.0) for i in ids])

    def covered(i: str) -> bool:
        return any(i == g or (g.endswith("*") and i.startswith(g[:-1])) for g in grants)

    expected = sorted(i for i in ids if i.startswith(prefix) and covered(i))
    listed: list[str] = []
    cursor = None
    for _ in range(100):
        entries, cursor = page(registry, plan(grants, prefix), cursor, limit)
        assert len(entries) <= limit
        listed += [e.project for e in entries]
        if cursor is None:
            break
    assert listed == expected


@pytest.fixture
def dynamo(monkeypatch: pytest.MonkeyPatch) -> Iterator[DynamoRegistry]:
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        store = DynamoStore(make_client(None, region="us-east-1"), "objects", "r1", concurrency=1)
        store.create_table()
        registry = DynamoRegistry(store.client, "objects", workers=1)  # moto is not thread-safe
        yield registry
        registry.close()
        store.close()


def test_on_dynamodb_entries_are_written_listed_in_order_and_forgotten(dynamo: DynamoRegistry) -> None:
    described = dynamo.client.describe_table(TableName="objects")["Table"]
    assert INDEX_REGISTRY in [i["IndexName"] for i in described["GlobalSecondaryIndexes"]]
    ids = [f"p{i:03d}" for i in range(60)]
    random.Random(1).shuffle(ids)
    assert sorted(dynamo.put([Entry(p, int(p[1:]), 1700000000.5) for p in ids])) == sorted(ids)
    calls: list[str] = []
    dynamo.client.meta.events.register("before-call.dynamodb.*", lambda model, **_: calls.append(model.name))
    check(dynamo, sorted(ids))
    assert "Scan" not in calls and "Query" in calls
    assert dynamo.get(["p001", "nope"]) == [Entry("p001", 1, 1700000000.5)]
    dynamo.forget("p001")
    assert dynamo.get(["p001"]) == []


def test_in_memory_the_same(dynamo: DynamoRegistry) -> None:
    registry = MemoryRegistry()
    ids = [f"p{i:03d}" for i in range(60)]
    registry.put([Entry(p, int(p[1:]), 1700000000.5) for p in ids])
    check(registry, ids)


def check(registry: Registry, ids: list[str]) -> None:
    listed: list[str] = []
    cursor: Any = None
    while True:
        entries, cursor = page(registry, plan(None), cursor, 7)
        listed += [e.project for e in entries]
        if cursor is None:
            break
    assert listed == ids
    assert [e.project for e in registry.scan("p01", None, 100)] == [f"p01{i}" for i in range(10)]
    assert [e.project for e in registry.scan("p01", "p014", 3)] == ["p015", "p016", "p017"]
    assert registry.scan("p01", "p02", 3) == []
