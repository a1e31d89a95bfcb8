"""Deleting a project for real, with replica processes, DynamoDB Local and redis-server:
every copy drops it (through the relay, or through the table without it), its sockets
close with 4404, its items leave the table, and no replica that held unsaved changes,
was cut off from DynamoDB or was in the middle of a save brings anything back; the id
then starts empty. ``pytest -s`` prints the timings; test-output/delete.json keeps them."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from canvas_sync.devtools.dynamodb_local import DynamoDBLocal
from canvas_sync.devtools.redis_local import RedisServer
from canvas_sync.store import HEAD, make_client
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.helpers import OUTPUT, Replica, http_json, wait_until
from tests.system.tcp_proxy import Proxy

pytestmark = pytest.mark.dynamodb_local

FAST = {"autosave_interval": 0.5, "sync_interval": 0.5, "relay_heartbeat": 0.2, "rate_limit": 0}
FIGURES: dict[str, Any] = {}


class Client:
    """A socket on one replica: its reader thread records every message and how it closed."""

    def __init__(self, replica: Replica, project: str = "p") -> None:
        self._stack = ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(connect(replica.ws_url(project), open_timeout=10))
        self.snapshot = json.loads(self.ws.recv(10))
        self.messages: list[dict[str, Any]] = []
        self.code: int | None = None
        self.closed_at: float | None = None
        self._n = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                self.messages.append(json.loads(self.ws.recv()))
        except ConnectionClosed as closed:
            self.code = closed.rcvd.code if closed.rcvd else None
            self.closed_at = time.monotonic()

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        self._n += 1
        req = str(self._n)
        self.ws.send(json.dumps({**message, "req": req}))
        wait_until(lambda: any(m.get("req") == req for m in self.messages), timeout=10, what=f"reply to {message}")
        return next(m for m in self.messages if m.get("req") == req)

    def create(self, *ids: str) -> None:
        for oid in ids:
            assert self.call({"op": "create", "object": {"id": oid, "type": "rect", "x": 1}})["op"] == "ack"

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()


def delete(replica: Replica, project: str = "p") -> float:
    started = time.monotonic()
    request = urllib.request.Request(f"{replica.url}/projects/{project}", method="DELETE")
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 204
    return time.monotonic() - started


def partition(endpoint: str, table: str, project: str = "p") -> list[str]:
    """Every sort key in the project's partition but the head: what a delete must leave empty."""
    client = make_client(endpoint)
    pages = client.get_paginator("query").paginate(
        TableName=table,
        KeyConditionExpression="project_id = :p",
        ExpressionAttributeValues={":p": {"S": project}},
        ConsistentRead=True,
    )
    return sorted(i["object_id"]["S"] for page in pages for i in page["Items"] if i["object_id"]["S"] != HEAD)


def objects_in(endpoint: str, table: str, project: str = "p") -> list[str]:
    """The object items of the partition (the registry's ``#meta`` and the like aside)."""
    return [key for key in partition(endpoint, table, project) if not key.startswith("#")]


def dirty(replica: Replica, project: str = "p") -> int:
    return int(http_json(f"{replica.url}/projects/{project}/status")[1]["dirty_objects"])


def starts_empty(replica: Replica, endpoint: str, table: str) -> None:
    """The id starts empty, its old ids are free, and what is made now is saved."""
    assert replica.objects("p") == []
    fresh = Client(replica)
    try:
        assert fresh.snapshot["objects"] == []
        fresh.create("a0", "again")
        wait_until(lambda: objects_in(endpoint, table) == ["a0", "again"], timeout=10, what="the new objects saved")
    finally:
        fresh.close()


def relayed(request: pytest.FixtureRequest, relay: bool) -> dict[str, Any]:
    """The settings of a replica with the relay (a redis-server for this test) or without."""
    if not relay:
        return {}
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"redis_url": server.url}


def record(name: str, **figures: Any) -> None:
    FIGURES[name] = figures
    print(f"\n{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "delete.json").write_text(json.dumps(FIGURES, indent=2, sort_keys=True))


@pytest.mark.parametrize("relay", [True, False], ids=["relay", "table"])
@pytest.mark.parametrize("n", [2, 3])
def test_a_delete_drops_every_copy_and_unsaved_changes_of_another_replica_stay_gone(
    replicas: Any,
    dynamodb_local: DynamoDBLocal,
    table: str,
    clients: list[Client],
    request: pytest.FixtureRequest,
    relay: bool,
    n: int,
) -> None:
    extra = relayed(request, relay)
    nodes = [replicas(f"replica-{i}", **FAST, **extra) for i in range(n - 1)]
    holder = replicas("replica-holder", **{**FAST, "autosave_interval": 3600}, **extra)  # never saves on its own
    nodes.append(holder)
    for node in nodes:
        clients.append(Client(node))
    clients[0].create(*(f"a{i}" for i in range(20)))
    wait_until(lambda: len(objects_in(dynamodb_local.endpoint, table)) == 20, timeout=10, what="a's objects saved")
    clients[-1].create(*(f"h{i}" for i in range(10)))  # only the holder's memory has these
    assert dirty(holder) == 10
    wait_until(lambda: all(len(c.snapshot["objects"]) + len(c.messages) >= 20 for c in clients), timeout=10)
    started = time.monotonic()
    seconds = delete(nodes[0])
    wait_until(lambda: all(c.code is not None for c in clients), timeout=10, what="every socket closed")
    closed = {i: round((c.closed_at or 0) - started, 3) for i, c in enumerate(clients)}
    assert {c.code for c in clients} == {4404}
    assert partition(dynamodb_local.endpoint, table) == []  # 204: every item is gone already
    assert http_json(f"{holder.url}/projects/p/status")[1]["loaded"] is False and dirty(holder) == 0
    assert holder.terminate() == 0  # its final flush has nothing of the project left to save
    assert partition(dynamodb_local.endpoint, table) == []
    starts_empty(nodes[-2], dynamodb_local.endpoint, table)
    record(
        f"delete, {n} replicas, {'relay' if relay else 'table only'}",
        delete_s=round(seconds, 3),
        slowest_close_s=max(closed.values()),
        closes_s=closed,
    )
    if relay:
        assert max(closed.values()) < 1.0  # the relay, not a sync pass
    else:
        assert max(closed.values()) < 0.5 + 3.0  # within a sync interval or two


@pytest.fixture
def proxy(dynamodb_local: DynamoDBLocal) -> Iterator[Proxy]:
    with Proxy(dynamodb_local.port) as p:
        yield p


@pytest.mark.parametrize("relay", [True, False], ids=["relay", "table"])
def test_a_replica_cut_off_from_dynamodb_during_the_delete_brings_nothing_back(
    replicas: Any,
    dynamodb_local: DynamoDBLocal,
    table: str,
    clients: list[Client],
    request: pytest.FixtureRequest,
    proxy: Proxy,
    relay: bool,
) -> None:
    extra = relayed(request, relay)
    backoff = {"autosave_max_backoff": 1.0, "sync_max_backoff": 1.0}
    a = replicas("replica-a", **FAST, **extra)
    cut = replicas("replica-cut", dynamodb_endpoint=proxy.endpoint, **FAST, **backoff, **extra)
    ca, cc = Client(a), Client(cut)
    clients.extend([ca, cc])
    ca.create(*(f"a{i}" for i in range(10)))
    wait_until(lambda: len(cc.snapshot["objects"]) + len(cc.messages) >= 10, timeout=10)
    proxy.cut()
    cc.create(*(f"c{i}" for i in range(10)))  # unsaved: its saves fail
    wait_until(lambda: dirty(cut) == 10 and http_json(f"{cut.url}/health")[1]["autosave"]["last_error"], timeout=15)
    started = time.monotonic()
    delete(a)
    if relay:  # the relay still reaches it: it drops its copy at once, unsaved changes and all
        wait_until(lambda: cc.code is not None, timeout=5, what="the cut-off replica's socket closed")
        closed = (cc.closed_at or 0) - started
        assert closed < 1.0 and dirty(cut) == 0
    else:  # it cannot know yet: it keeps serving, and its saves keep failing
        time.sleep(2.0)
        assert cc.code is None
        cc.create("c-late")
    assert partition(dynamodb_local.endpoint, table) == []
    proxy.heal()
    healed = time.monotonic()
    wait_until(lambda: cc.code is not None, timeout=20, what="the socket on the healed replica closed")
    assert cc.code == 4404
    wait_until(lambda: dirty(cut) == 0, timeout=10)
    time.sleep(3.0)  # a few of its passes: nothing it held may land visibly, and nothing stays
    assert partition(dynamodb_local.endpoint, table) == [] and a.objects("p") == []
    assert cut.objects("p") == []  # loaded again: empty
    starts_empty(a, dynamodb_local.endpoint, table)
    events = {e["event"] for e in cut.log_events("project_dropped")} | {e["event"] for e in cut.log_events("fenced")}
    record(
        f"delete while the other replica is cut off from DynamoDB, {'relay' if relay else 'table only'}",
        closed_after_delete_s=round((cc.closed_at or 0) - started, 3),
        closed_after_heal_s=round(max(0.0, (cc.closed_at or 0) - healed), 3),
        how=sorted(e["reason"] for e in cut.log_events("project_dropped")),
        events=sorted(events),
    )


def test_a_save_in_flight_during_the_delete_lands_invisible_and_is_swept(
    replicas: Any, dynamodb_local: DynamoDBLocal, table: str, clients: list[Client], proxy: Proxy
) -> None:
    a = replicas("replica-a", **FAST)
    slow = replicas("replica-slow", dynamodb_endpoint=proxy.endpoint, **{**FAST, "sync_interval": 30})
    ca, cs = Client(a), Client(slow)
    clients.extend([ca, cs])
    ca.create("a0")
    proxy.hold(watch=b"BatchWriteItem")  # the next save of the slow replica stays in flight
    cs.create(*(f"s{i}" for i in range(25)))
    assert proxy.holding.wait(10), "the slow replica's save never started"
    started = time.monotonic()
    delete(a)
    assert partition(dynamodb_local.endpoint, table) == []
    proxy.release()  # its BatchWriteItem lands after the delete, then its head refuses the announcement
    wait_until(lambda: cs.code is not None, timeout=20, what="the slow replica dropped its copy")
    assert cs.code == 4404
    wait_until(lambda: partition(dynamodb_local.endpoint, table) == [], timeout=15, what="the late items swept")
    assert a.objects("p") == [] and slow.objects("p") == []
    reasons = sorted(e["reason"] for e in slow.log_events("project_dropped"))
    record(
        "delete while another replica's save is in flight",
        closed_after_delete_s=round((cs.closed_at or 0) - started, 3),
        how=reasons,
        fenced=len(slow.log_events("fenced")),
        swept=[e["items"] for e in slow.log_events("swept")],
    )
    starts_empty(a, dynamodb_local.endpoint, table)
