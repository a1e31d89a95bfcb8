"""``saved`` on the wire against AWS DynamoDB Local: whenever it comes, the table already
holds every change it covers; while DynamoDB is down it stops, and it resumes after.

These tests watch the frames themselves, so they use a raw socket, not the client library
(the SIGKILL tests in test_client.py and test_js_client.py drive the clients)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from canvas_sync.devtools.dynamodb_local import DynamoDBLocal
from canvas_sync.devtools.process import free_port
from canvas_sync.store import DynamoStore, make_client
from websockets.sync.client import ClientConnection, connect

from tests.helpers import Replica, in_table

pytestmark = pytest.mark.dynamodb_local


def messages(ws: ClientConnection, timeout: float) -> list[dict[str, Any]]:
    """Every server message of one frame (v3 frames may hold several)."""
    body = json.loads(ws.recv(timeout))
    return body if isinstance(body, list) else [body]


@contextmanager
def v3(replica: Replica, project: str) -> Iterator[ClientConnection]:
    with connect(replica.ws_url(project), subprotocols=["canvas-sync.v3"], open_timeout=5) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "canvas-sync.v3"
        assert messages(ws, 5)[0]["op"] == "snapshot"
        yield ws


def test_whenever_saved_comes_the_table_holds_what_it_covers(
    replicas: Any, dynamodb_local: DynamoDBLocal, table: str
) -> None:
    replica = replicas(autosave_interval=0.3)
    expected: dict[int, tuple[str, int]] = {}  # seq -> (object, x it set)
    checked = 0
    with v3(replica, "sv") as ws:
        for i in range(10):
            ws.send(json.dumps({"op": "create", "object": {"id": f"o{i}", "type": "rect", "x": 0}}))
        deadline = time.monotonic() + 4.0
        sent = 0
        while time.monotonic() < deadline:
            sent += 1
            oid = f"o{sent % 10}"
            ws.send(json.dumps({"op": "update", "id": oid, "props": {"x": sent}, "req": str(sent)}))
            for message in messages(ws, 5):
                if message["op"] == "ack" and "req" in message:
                    x = int(message["req"])
                    expected[message["seq"]] = (f"o{x % 10}", x)
                elif message["op"] == "saved":
                    views = in_table(dynamodb_local.endpoint, table, "sv")
                    covered = [expected[s] for s in expected if s <= message["seq"]]
                    latest: dict[str, int] = {}
                    for oid_, x in covered:
                        latest[oid_] = max(latest.get(oid_, 0), x)
                    behind = {o: (x, views[o]["x"]) for o, x in latest.items() if views[o]["x"] < x}
                    assert not behind, (message, behind)
                    checked += 1
            time.sleep(0.005)
    assert checked >= 3, "saved came too rarely to check"


@pytest.fixture
def own_dynamodb(tmp_path: Path) -> Iterator[DynamoDBLocal]:
    local = DynamoDBLocal(free_port(), db_path=tmp_path / "db", log_path=tmp_path / "ddb.log").start()
    yield local
    local.stop()


def read_until(ws: ClientConnection, wanted: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
    """Messages up to and including ``wanted``; fails after ``timeout``."""
    seen: list[dict[str, Any]] = []
    end = time.monotonic() + timeout
    while wanted not in seen:
        left = end - time.monotonic()
        assert left > 0, f"no {wanted} in {timeout}s: {seen}"
        try:
            seen += messages(ws, left)
        except TimeoutError:
            pass
    return seen


def test_saved_stops_while_dynamodb_is_down_and_resumes(replicas: Any, own_dynamodb: DynamoDBLocal) -> None:
    DynamoStore(make_client(own_dynamodb.endpoint), "down").create_table()
    replica = replicas(
        dynamodb_endpoint=own_dynamodb.endpoint, table="down", autosave_interval=0.3, autosave_max_backoff=1.0
    )
    with v3(replica, "p1") as ws:
        ws.send(json.dumps({"op": "create", "object": {"id": "a", "type": "rect"}}))
        read_until(ws, {"op": "saved", "seq": 1}, 10)
        own_dynamodb.stop()
        ws.send(json.dumps({"op": "create", "object": {"id": "b", "type": "rect"}}))
        quiet: list[dict[str, Any]] = []
        end = time.monotonic() + 3.0
        while (left := end - time.monotonic()) > 0:
            try:
                quiet += messages(ws, left)
            except TimeoutError:
                break
        assert [m["op"] for m in quiet] == ["ack"], quiet  # the ack, and no saved while the table is down
        own_dynamodb.start()
        read_until(ws, {"op": "saved", "seq": 2}, 30)
    assert set(in_table(own_dynamodb.endpoint, "down", "p1")) == {"a", "b"}
