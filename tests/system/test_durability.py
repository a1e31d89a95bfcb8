"""Saving, loading and shutdown with real replica processes and AWS DynamoDB Local."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from canvas_sync.client import ClientError
from canvas_sync.client.blocking import BlockingClient
from canvas_sync.devtools.dynamodb_local import DynamoDBLocal
from canvas_sync.devtools.process import free_port
from canvas_sync.store import DynamoStore, make_client
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.helpers import Replica, http_json, http_text, in_table, wait_until

pytestmark = pytest.mark.dynamodb_local


def opened(replica: Replica, project: str = "p1") -> BlockingClient:
    """A client of the replica (``canvas_sync.client``), its snapshot in."""
    client = BlockingClient(replica.url, project, timeout=5)
    client.connect()
    return client


def change(client: BlockingClient, message: dict[str, Any]) -> dict[str, Any]:
    """One change given as its wire message: the ack (a refusal raises ClientError)."""
    if message["op"] == "create":
        return client.create(message["object"])
    if message["op"] == "update":
        return client.update(message["id"], message["props"])
    return client.delete(message["id"])


def edit(replica: Replica, messages: list[dict[str, Any]], project: str = "p1") -> None:
    """Make the changes through one client and wait until each one is acked."""
    client = opened(replica, project)
    try:
        for message in messages:
            assert change(client, message)["op"] == "ack"
    finally:
        client.close()


def creates(n: int, prefix: str = "o") -> list[dict[str, Any]]:
    return [{"op": "create", "object": {"id": f"{prefix}{i}", "type": "rect", "x": i, "y": 0.5}} for i in range(n)]


def metric(replica: Replica, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", http_text(f"{replica.url}/metrics"), re.M)
    assert match, name
    return float(match.group(1))


def test_ten_quick_creates_are_saved_within_one_interval(
    replicas: Any, dynamodb_local: DynamoDBLocal, table: str
) -> None:
    replica = replicas(autosave_interval=1.0)
    edit(replica, creates(10))
    acked = time.monotonic()
    waited = wait_until(lambda: len(in_table(dynamodb_local.endpoint, table)) == 10, timeout=3.0)
    assert time.monotonic() - acked <= 1.0 + 1.0  # interval + save time, with room for a loaded machine
    assert in_table(dynamodb_local.endpoint, table)["o3"] == {"id": "o3", "type": "rect", "x": 3, "y": 0.5}
    passes = [p for p in replica.log_events("autosave_pass") if p["objects"]]
    assert passes, "no autosave_pass line in the log"
    assert sum(p["written"] for p in passes) == 10 and all(p["failed"] == 0 for p in passes)
    assert len(passes) <= 2  # one pass, or two if the interval fell between the creates
    assert waited < 3.0


def test_dirty_lifecycle_and_no_writes_when_idle(replicas: Any) -> None:
    replica = replicas(autosave_interval=0.5)
    status = lambda: http_json(f"{replica.url}/projects/p1/status")[1]  # noqa: E731
    edit(replica, creates(3))
    assert status()["dirty_objects"] == 3
    wait_until(lambda: status()["dirty_objects"] == 0, timeout=5)
    assert status()["last_save_at"] is not None
    # the pass logs its line just after the objects stop counting as dirty
    wait_until(lambda: sum(p["written"] for p in replica.log_events("autosave_pass")) == 3, timeout=5)
    batches = metric(replica, 'canvas_autosave_batches_total{outcome="success"}')
    passes = len(replica.log_events("autosave_pass"))
    time.sleep(2.0)  # four idle intervals
    assert metric(replica, 'canvas_autosave_batches_total{outcome="success"}') == batches
    assert len(replica.log_events("autosave_pass")) == passes  # an idle pass writes and logs nothing


def test_a_second_replica_loads_what_the_first_saved(replicas: Any) -> None:
    a = replicas("replica-a")
    b = replicas("replica-b")
    edit(
        a,
        [*creates(30), {"op": "update", "id": "o1", "props": {"x": 0.1, "fill": "#f00"}}, {"op": "delete", "id": "o2"}],
    )
    wait_until(lambda: http_json(f"{a.url}/projects/p1/status")[1]["dirty_objects"] == 0, timeout=5)
    assert http_json(f"{b.url}/projects/p1/status")[1]["loaded"] is False
    objects = b.objects("p1")  # cache miss on b
    assert len(objects) == 29
    assert json.dumps(objects, sort_keys=True) == json.dumps(a.objects("p1"), sort_keys=True)
    assert {"id": "o1", "type": "rect", "x": 0.1, "y": 0.5, "fill": "#f00"} in objects
    client = opened(b)
    client.close()
    assert client.snapshot is not None and client.snapshot["replica"] == "replica-b"
    assert client.snapshot["objects"] == objects


def test_sigterm_saves_every_unsaved_edit_and_exits_0(replicas: Any, dynamodb_local: DynamoDBLocal, table: str) -> None:
    replica = replicas(autosave_interval=3600)  # nothing would be saved without the final flush
    edit(replica, [*creates(60), {"op": "update", "id": "o5", "props": {"x": 500}}])
    assert in_table(dynamodb_local.endpoint, table) == {}
    # A raw socket: the test observes the close frame itself (1001), not what a client makes of it.
    with connect(replica.ws_url("p1"), open_timeout=5) as ws:
        ws.recv(5)
        started = time.monotonic()
        assert replica.process is not None
        replica.process.send_signal(15)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert replica.terminate(timeout=15) == 0
    assert time.monotonic() - started < 10
    saved = in_table(dynamodb_local.endpoint, table)
    assert len(saved) == 60 and saved["o5"]["x"] == 500
    (flush,) = replica.log_events("shutdown_flush")
    assert flush["dirty_before"] == 60 and flush["unsaved"] == 0


@pytest.fixture
def own_dynamodb(tmp_path: Path) -> Any:
    """A DynamoDB Local on disk that a test may stop and restart on the same port."""
    port = free_port()
    local = DynamoDBLocal(port, db_path=tmp_path / "db", log_path=tmp_path / "ddb.log").start()
    yield local
    local.stop()


def test_acked_edits_survive_a_dynamodb_outage(replicas: Any, own_dynamodb: DynamoDBLocal) -> None:
    DynamoStore(make_client(own_dynamodb.endpoint), "outage").create_table()
    replica = replicas(
        dynamodb_endpoint=own_dynamodb.endpoint, table="outage", autosave_interval=0.3, autosave_max_backoff=1.0
    )
    edit(replica, creates(5, "before"))
    wait_until(lambda: len(in_table(own_dynamodb.endpoint, "outage")) == 5, timeout=5)
    own_dynamodb.stop()
    edit(replica, [*creates(20, "during"), {"op": "update", "id": "before0", "props": {"x": 99}}])
    health = lambda: http_json(f"{replica.url}/health")[1]["autosave"]  # noqa: E731
    wait_until(lambda: health()["last_error"] is not None, timeout=15)
    assert health()["dirty_objects"] == 21
    assert metric(replica, 'canvas_autosave_batches_total{outcome="error"}') >= 1
    own_dynamodb.start()
    wait_until(lambda: len(in_table(own_dynamodb.endpoint, "outage")) == 25, timeout=20, step=0.3)
    assert in_table(own_dynamodb.endpoint, "outage")["before0"]["x"] == 99
    wait_until(lambda: health()["last_error"] is None and health()["dirty_objects"] == 0, timeout=5)


def test_shutdown_while_dynamodb_is_down_reports_unsaved_and_exits_1(
    replicas: Any, own_dynamodb: DynamoDBLocal
) -> None:
    DynamoStore(make_client(own_dynamodb.endpoint), "down").create_table()
    replica = replicas(
        dynamodb_endpoint=own_dynamodb.endpoint, table="down", autosave_interval=3600, shutdown_timeout=2
    )
    edit(replica, creates(3))
    own_dynamodb.stop()
    started = time.monotonic()
    assert replica.terminate(timeout=30) == 1
    assert time.monotonic() - started < 2 + 15  # the flush deadline, plus one in-flight call's timeouts
    (flush,) = replica.log_events("shutdown_flush")
    assert flush["unsaved"] == 3 and flush["level"] == "ERROR"


def test_a_client_cannot_poison_the_saves_of_others(replicas: Any, dynamodb_local: DynamoDBLocal, table: str) -> None:
    """Set-then-remove leaves each name and stamp stored; the visible object stays tiny.

    Unbounded, the stored item passed DynamoDB's 400 KB limit and its whole batch of 25
    was refused on every pass. Now the edit that would pass the stored limit is refused.
    """
    replica = replicas(autosave_interval=0.3, rate_limit=0)
    neighbours = creates(24, "n")
    edit(replica, [{"op": "create", "object": {"id": "bad", "type": "rect"}}, *neighbours])
    accepted = 0
    client = opened(replica)
    for i in range(2500):  # far past 400 KB if nothing stops it
        name = f"p{i:05}" + "x" * 58
        try:
            client.update("bad", {name: 1})
        except ClientError as refused:
            assert refused.code == "too_large"
            break
        client.update("bad", {name: None})
        accepted += 1
    client.close()
    assert 0 < accepted < 2500, "no edit was refused: the stored item grows without bound"
    edit(replica, [{"op": "update", "id": f"n{i}", "props": {"x": 100 + i}} for i in range(24)])
    wait_until(lambda: http_json(f"{replica.url}/projects/p1/status")[1]["dirty_objects"] == 0, timeout=10)
    saved = in_table(dynamodb_local.endpoint, table)
    assert saved["bad"] == {"id": "bad", "type": "rect"} and all(saved[f"n{i}"]["x"] == 100 + i for i in range(24))
    client = make_client(dynamodb_local.endpoint)
    item = client.get_item(TableName=table, Key={"project_id": {"S": "p1"}, "object_id": {"S": "bad"}})["Item"]
    assert len(item["doc"]["S"].encode()) <= 65536
    assert http_json(f"{replica.url}/health")[1]["autosave"]["last_error"] is None
    assert replica.terminate() == 0


def test_create_delete_churn_stays_bounded(replicas: Any, dynamodb_local: DynamoDBLocal, table: str) -> None:
    """Creates and deletes of ever new ids are never refused: past the grace period the
    oldest tombstones beyond CANVAS_MAX_TOMBSTONES_PER_PROJECT are forgotten, in memory, in
    the table and in every load, and all of them once past CANVAS_TOMBSTONE_TTL."""
    limit, grace, ttl = 100, 3, 12
    settings = dict(
        rate_limit=0,
        max_tombstones_per_project=limit,
        tombstone_grace=grace,
        tombstone_ttl=ttl,
        project_idle_timeout=2,  # housekeeping every second
        sync_interval=0.3,
        sync_overlap=1,
    )
    replica = replicas(autosave_interval=0.3, **settings)
    status = lambda r: http_json(f"{r.url}/projects/churn/status")[1]  # noqa: E731
    client = opened(replica, "churn")
    try:
        for i in range(3 * limit):  # a refusal (limit_exceeded, as before) would raise
            change(client, {"op": "create", "object": {"id": f"o{i}", "type": "rect"}})
            change(client, {"op": "delete", "id": f"o{i}"})
        wait_until(lambda: status(replica)["dirty_objects"] == 0, timeout=10)
        store = DynamoStore(make_client(dynamodb_local.endpoint), table)
        wait_until(lambda: status(replica)["tombstones"] == limit, timeout=grace + 10, what="the budget")
        wait_until(lambda: len(store.load_project("churn")) <= limit, timeout=15, what="their items deleted")
        fresh = replicas("replica-fresh", **settings)
        assert fresh.objects("churn") == [] and status(fresh)["tombstones"] <= limit
        wait_until(lambda: status(replica)["tombstones"] == 0, timeout=ttl + 10)  # the TTL passed
        assert store.load_project("churn") == []  # expired in the table's view as well
        assert change(client, {"op": "create", "object": {"id": "new", "type": "rect"}})["op"] == "ack"
        store.close()
    finally:
        client.close()
