"""The relay between real replica processes, a real redis-server and DynamoDB Local, with
Redis killed, restarted and paused, and a replica killed."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from canvas_sync.client.blocking import BlockingClient
from canvas_sync.devtools.dynamodb_local import DynamoDBLocal
from canvas_sync.devtools.redis_local import RedisServer
from canvas_sync.store import DynamoStore, make_client

from loadtest.convergence_check import check_convergence
from tests.helpers import Replica, http_json, http_text, wait_until

pytestmark = pytest.mark.dynamodb_local

SETTINGS = {"autosave_interval": 0.5, "sync_interval": 1, "relay_heartbeat": 0.2, "rate_limit": 0}


class Watcher(BlockingClient):
    """``canvas_sync.client``'s blocking client, reading the messages themselves as they come:
    these tests time when each one arrives."""

    def __init__(self, replica: Replica, project: str) -> None:
        super().__init__(replica.url, project, timeout=5)
        self.connect()

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        """A change given as its wire message; its ack."""
        if message["op"] == "create":
            return self.create(message["object"])
        return self.update(message["id"], message["props"])

    def wait(self, predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, "timed out"
            for message in self.poll(max(0.01, deadline - time.monotonic())):
                if predicate(message):
                    return message


def metric(replica: Replica, name: str) -> float:
    text = http_text(f"{replica.url}/metrics")
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def table_objects(endpoint: str, table: str, project: str) -> list[dict[str, Any]]:
    store = DynamoStore(make_client(endpoint), table)
    try:
        return sorted((s.view() for s in store.load_project(project) if s.is_alive), key=lambda o: o["id"])  # type: ignore[arg-type, return-value]
    finally:
        store.close()


def converged(replicas: list[Replica], project: str, endpoint: str, table: str, timeout: float) -> float:
    result = check_convergence([r.url for r in replicas], [project], timeout, poll=0.05)
    assert result["converged"], result
    (objects,) = {json.dumps(r.objects(project)) for r in replicas}
    assert json.loads(objects) == table_objects(endpoint, table, project)  # and the table holds the same
    return float(result["seconds"])


def relaying(replicas: Any, redis_server: RedisServer, *names: str) -> list[Replica]:
    """Replica processes on one redis-server, once every relay is healthy."""
    nodes = [replicas(name, redis_url=redis_server.url, **SETTINGS) for name in names]
    wait_until(lambda: all(relay_healthy(n) for n in nodes), timeout=10)
    return nodes


def relay_healthy(replica: Replica) -> bool:
    return bool(http_json(f"{replica.url}/health")[1]["relay"]["healthy"])


def test_edits_and_presence_reach_every_replica_in_milliseconds(replicas: Any, redis_server: RedisServer) -> None:
    nodes = relaying(replicas, redis_server, *("a", "b", "c"))
    wa, wb, wc = (Watcher(n, "live") for n in nodes)
    lags = []
    for i in range(20):
        sent = time.monotonic()
        assert wa.call({"op": "create", "object": {"id": f"o{i}", "type": "rect", "x": i}})["op"] == "ack"
        for w in (wb, wc):
            w.wait(lambda m, i=i: m.get("op") == "upsert" and m["object"]["id"] == f"o{i}", timeout=2)
        lags.append(time.monotonic() - sent)
    print(f"create on a -> upsert on b and c: max {max(lags) * 1000:.1f} ms over {len(lags)}")
    assert sorted(lags)[len(lags) // 2] < 0.5  # about a millisecond here; the table would take seconds
    wa.set_presence({"cursor": [3, 4], "name": "Ann", "colour": "#e53935"})
    seen = wc.wait(lambda m: m.get("op") == "presence")
    assert seen["state"] == {"cursor": [3, 4], "name": "Ann", "colour": "#e53935"}
    late = Watcher(nodes[1], "live")
    assert late.snapshot is not None and [p["state"]["name"] for p in late.snapshot["presence"]] == ["Ann"]
    wa.close()
    wc.wait(lambda m: m.get("op") == "presence_leave" and m["client"] == seen["client"])
    for w in (wb, wc, late):
        w.close()


def test_redis_killed_and_restarted_loses_nothing(
    replicas: Any, redis_server: RedisServer, dynamodb_local: DynamoDBLocal, table: str
) -> None:
    nodes = relaying(replicas, redis_server, *("a", "b"))
    wa, wb = Watcher(nodes[0], "kill"), Watcher(nodes[1], "kill")
    for i in range(10):
        wa.call({"op": "create", "object": {"id": f"a{i}", "type": "rect"}})
        wb.call({"op": "create", "object": {"id": f"b{i}", "type": "rect"}})
    redis_server.kill()
    for i in range(10, 40):  # edits while Redis is down: acked from memory, relayed to nobody
        assert wa.call({"op": "create", "object": {"id": f"a{i}", "type": "rect", "x": i}})["op"] == "ack"
        assert wb.call({"op": "update", "id": f"b{i % 10}", "props": {"x": i}})["op"] == "ack"
    wait_until(lambda: not relay_healthy(nodes[0]), timeout=5)
    redis_server.start()
    back = time.monotonic()
    wait_until(lambda: all(relay_healthy(n) for n in nodes), timeout=15)
    seconds = converged(nodes, "kill", dynamodb_local.endpoint, table, timeout=10)
    print(f"equal with the table {time.monotonic() - back:.2f}s after Redis came back")
    assert len(nodes[1].objects("kill")) == 50  # a0..a39 and b0..b9
    assert all(metric(n, "canvas_relay_catch_ups_total") >= 1 for n in nodes)
    assert all(metric(n, "canvas_relay_rebuilds_total") >= 1 for n in nodes)
    assert seconds < 10
    wa.close()
    wb.close()


def test_redis_paused_past_the_timeout_never_slows_edits(
    replicas: Any, redis_server: RedisServer, dynamodb_local: DynamoDBLocal, table: str
) -> None:
    nodes = relaying(replicas, redis_server, *("a", "b"))
    wa = Watcher(nodes[0], "pause")
    Watcher(nodes[1], "pause").close()  # b holds the project too
    redis_server.pause()  # SIGSTOP: connections stay open, nothing answers (a half-open peer)
    try:
        slowest = 0.0
        deadline = time.monotonic() + 4  # past the client's 2 s timeout
        i = 0
        while time.monotonic() < deadline:
            started = time.monotonic()
            assert wa.call({"op": "create", "object": {"id": f"p{i}", "type": "rect"}})["op"] == "ack"
            slowest = max(slowest, time.monotonic() - started)
            i += 1
            time.sleep(0.005)
        print(f"{i} edits acked while Redis was paused, slowest {slowest * 1000:.1f} ms")
        assert slowest < 0.5  # publishing never blocks an edit
        health = http_json(f"{nodes[0].url}/health")[1]["relay"]
        assert not health["healthy"] and health["queued"] <= 10_000  # bounded
    finally:
        redis_server.resume()
    wait_until(lambda: all(relay_healthy(n) for n in nodes), timeout=15)
    converged(nodes, "pause", dynamodb_local.endpoint, table, timeout=10)
    assert len(nodes[1].objects("pause")) == i
    wa.close()


def test_a_killed_replicas_presences_leave(replicas: Any, redis_server: RedisServer) -> None:
    nodes = relaying(replicas, redis_server, *("a", "b"))
    wa, wb = Watcher(nodes[0], "crash"), Watcher(nodes[1], "crash")
    wa.set_presence({"name": "Ann"})
    ann = wb.wait(lambda m: m.get("op") == "presence")["client"]
    nodes[0].kill()  # SIGKILL: no leave message is ever sent
    killed = time.monotonic()
    wb.wait(lambda m: m.get("op") == "presence_leave" and m["client"] == ann, timeout=5)
    print(f"presence left {time.monotonic() - killed:.2f}s after SIGKILL")
    assert time.monotonic() - killed < 3
    wb.close()
