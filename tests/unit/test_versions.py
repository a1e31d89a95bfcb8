"""Versions: packing, chunks, ids, retention; on memory and on moto
(tests/system/test_projects_api.py runs them on DynamoDB Local)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator

import pytest
from canvas_sync import protocol
from canvas_sync.store import DynamoStore, make_client
from canvas_sync.store.versions import (
    CHUNK_BYTES,
    DynamoVersions,
    MemoryVersions,
    Versions,
    is_version_id,
    make,
    new_id,
    pack,
    to_prune,
    unpack,
)


def objects(n: int, seed: int = 0) -> list[dict[str, object]]:
    rng = random.Random(seed)
    return [
        {"id": f"o{i}", "type": "rect", "x": rng.random(), "n": 2**70 + i, "t": rng.randbytes(40).hex()}
        for i in range(n)
    ]


def test_pack_and_unpack_keep_numbers_exact_and_chunks_small() -> None:
    given = objects(50)
    chunks, raw = pack(protocol.encode(given), chunk_bytes=1000)
    assert raw == len(protocol.encode(given).encode()) and len(chunks) > 1
    assert all(len(c) <= 1000 for c in chunks)
    assert unpack(chunks) == given and unpack(chunks)[0]["n"] == 2**70
    assert unpack(pack("[]")[0]) == []
    with pytest.raises(ValueError):
        unpack(pack('{"a":1}')[0])


def test_ids_sort_in_the_order_they_are_made() -> None:
    now = int(time.time() * 1000)
    ids = [new_id(now) for _ in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50 and all(is_version_id(i) for i in ids)
    assert not is_version_id("1234") and not is_version_id("../../x")


def test_retention_drops_automatic_versions_first_then_the_oldest_named() -> None:
    def v(i: int, auto: bool):  # type: ignore[no-untyped-def]
        return make(f"{i:013d}-000000", "", i, 0, [b""], 0, auto, None)

    versions = [v(1, False), v(2, True), v(3, False), v(4, True), v(5, True)]
    assert to_prune(versions, 5) == []
    assert [x.version for x in to_prune(versions, 3)] == [v(2, True).version, v(4, True).version]
    assert [x.version for x in to_prune(versions, 1)] == [v(i, a).version for i, a in ((2, 1), (4, 1), (5, 1), (1, 0))]


@pytest.fixture
def dynamo(monkeypatch: pytest.MonkeyPatch) -> Iterator[DynamoVersions]:
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        store = DynamoStore(make_client(None, region="us-east-1"), "objects", "r1", concurrency=1)
        store.create_table()
        yield DynamoVersions(store.client, "objects")
        store.close()


@pytest.mark.parametrize("kind", ["memory", "dynamodb"])
def test_save_list_get_delete_drop(kind: str, dynamo: DynamoVersions) -> None:
    store: Versions = MemoryVersions() if kind == "memory" else dynamo
    check(store)


def check(store: Versions, chunk_bytes: int = 2000) -> None:
    """The same assertions on every store."""
    given = objects(200)
    text = protocol.encode(given)
    made = []
    for i in range(3):
        chunks, raw = pack(text, chunk_bytes)
        version = make(new_id(int(time.time() * 1000)), f"v{i}", time.time(), len(given), chunks, raw, i == 1, "ann")
        store.save("p", version, chunks)
        made.append(version)
    assert made[0].chunks > 3 and made[0].bytes < made[0].raw_bytes
    assert store.listing("p") == made[::-1]  # newest first, the descriptions alone
    assert store.latest("p") == made[-1] and store.latest("other") is None
    got = store.get("p", made[1].version)
    assert got is not None and got[0] == made[1] and unpack(got[1]) == given
    assert store.get("p", "0000000000000-000000") is None
    store.delete("p", [made[0]])
    assert store.listing("p") == [made[2], made[1]] and store.get("p", made[0].version) is None
    assert store.drop("p") == 2 * (1 + made[1].chunks)
    assert store.listing("p") == []
    json.dumps([v.to_json() for v in made])


def test_a_big_project_is_cut_at_the_chunk_size() -> None:
    given = objects(10_000, seed=2)
    chunks, raw = pack(protocol.encode(given))
    assert all(len(c) <= CHUNK_BYTES for c in chunks) and raw > 1_000_000
    assert unpack(chunks) == given
