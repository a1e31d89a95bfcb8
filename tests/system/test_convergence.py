"""Several replica processes serving one project converge through DynamoDB Local."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request
from typing import Any

import pytest
from canvas_sync.client import ClientError
from canvas_sync.client.blocking import BlockingClient

from loadtest.convergence_check import check_convergence
from tests.helpers import Replica, http_json, wait_until

pytestmark = pytest.mark.dynamodb_local

AUTOSAVE = 0.5
SYNC = 0.3
BOUND = AUTOSAVE + SYNC + 2.0  # the contract: autosave + sync interval + a second or two
FAST = {"autosave_interval": AUTOSAVE, "sync_interval": SYNC, "rate_limit": 0}


def body(replica: Replica, project: str) -> bytes:
    with urllib.request.urlopen(f"{replica.url}/projects/{project}/objects", timeout=5) as response:
        return response.read()


def settled(replica: Replica, project: str) -> bool:
    return http_json(f"{replica.url}/projects/{project}/status")[1]["dirty_objects"] == 0


def sync_passes(replica: Replica) -> float:
    """Sync passes so far: each reads the heads once."""
    text = urllib.request.urlopen(f"{replica.url}/metrics", timeout=5).read().decode()
    line = next(x for x in text.splitlines() if x.startswith('canvas_sync_pulls_total{kind="heads",outcome="success"}'))
    return float(line.split()[-1])


def converge(replicas: list[Replica], project: str, timeout: float = 30.0) -> tuple[float, bytes]:
    """Seconds until every replica returns the same bytes and has nothing unsaved, and those bytes."""
    result = check_convergence([r.url for r in replicas], [project], timeout, poll=0.05)
    assert result["converged"], f"no convergence in {timeout}s: {result}"
    return result["seconds"], body(replicas[0], project)


class Client(BlockingClient):
    """``canvas_sync.client``'s blocking client; ``call`` answers a change given as its wire
    message with the reply (the ack, or the error as the server sent it)."""

    def __init__(self, replica: Replica, project: str) -> None:
        super().__init__(replica.url, project, timeout=10)
        self.connect()

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            if message["op"] == "create":
                return self.create(message["object"])
            if message["op"] == "update":
                return self.update(message["id"], message["props"])
            return self.delete(message["id"])
        except ClientError as error:
            return {"op": "error", "code": error.code, "message": error.message}

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        """Read until ``predicate(self)`` holds (the copy has what another client did)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            assert time.monotonic() < deadline, "timed out"
            self.poll(0.05)


IDS = [f"s{i}" for i in range(15)]


def random_edits(client: Client, seed: int, count: int) -> None:
    rng = random.Random(seed)
    for i in range(count):
        oid = rng.choice(IDS)
        roll = rng.random()
        if roll < 0.25:
            msg = {
                "op": "create",
                "object": {"id": oid, "type": rng.choice(["rect", "ellipse"]), "x": i, "y": rng.random()},
            }
        elif roll < 0.85:
            props = {
                k: rng.choice([None, i, rng.random(), f"c{seed}"]) for k in rng.sample(["x", "y", "fill", "text"], 2)
            }
            if rng.random() < 0.1:
                props["type"] = "text"
            msg = {"op": "update", "id": oid, "props": props}
        else:
            msg = {"op": "delete", "id": oid}
        reply = client.call(msg)
        assert reply["op"] == "ack" or reply["code"] in ("conflict", "not_found"), reply


def run_concurrently(clients: list[Client], count: int) -> None:
    errors: list[BaseException] = []

    def work(c: Client, seed: int) -> None:
        try:
            random_edits(c, seed, count)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(c, i)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


def test_three_replicas_six_clients_converge_byte_for_byte(replicas: Any) -> None:
    nodes = [replicas(f"replica-{n}", **FAST) for n in "abc"]
    clients = [Client(nodes[i % 3], "shared") for i in range(6)]
    run_concurrently(clients, count=80)  # 480 concurrent random edits on 15 shared objects
    for c in clients:
        c.close()
    seconds, final = converge(nodes, "shared")
    print(f"converged in {seconds:.2f}s")
    assert seconds <= BOUND, f"converged in {seconds:.2f}s, bound {BOUND}s"
    fresh = replicas("replica-fresh", **FAST)
    assert body(fresh, "shared") == final  # the table holds the same state
    assert json.loads(final)["objects"], "the run left no objects: the test would prove little"


def test_concurrent_changes_to_different_properties_are_all_kept(replicas: Any) -> None:
    a, b = replicas("replica-a", **FAST), replicas("replica-b", **FAST)
    ca, cb = Client(a, "p"), Client(b, "p")
    ca.call({"op": "create", "object": {"id": "o", "type": "rect", "x": 0, "y": 0, "fill": "white"}})
    cb.wait_for(lambda c: "o" in c.objects)
    ca.call({"op": "update", "id": "o", "props": {"x": 10, "fill": "red"}})  # neither replica has the
    cb.call({"op": "update", "id": "o", "props": {"y": 20, "fill": "blue"}})  # other's: saves come later
    _, final = converge([a, b], "p")
    (obj,) = json.loads(final)["objects"]
    assert obj["x"] == 10 and obj["y"] == 20  # different properties: both kept
    assert obj["fill"] in ("red", "blue")  # same property: one value, everywhere
    assert body(replicas("replica-c", **FAST), "p") == final


def test_delete_against_concurrent_update_and_a_stale_replica(replicas: Any) -> None:
    a, b = replicas("replica-a", **FAST), replicas("replica-b", **FAST)
    stale = replicas("replica-stale", autosave_interval=AUTOSAVE, sync_interval=4, rate_limit=0)  # pulls seldom
    ca, cb = Client(a, "p"), Client(b, "p")
    ca.call({"op": "create", "object": {"id": "o", "type": "rect", "x": 0}})
    cb.wait_for(lambda c: "o" in c.objects)
    wait_until(lambda: settled(a, "p"))
    cs = Client(stale, "p")  # loads the live object
    assert cs.snapshot is not None and [o["id"] for o in cs.snapshot["objects"]] == ["o"]
    before = sync_passes(stale)
    wait_until(lambda: sync_passes(stale) > before)  # it just pulled: about 4 s until the next pull
    ca.call({"op": "delete", "id": "o"})
    cb.call({"op": "update", "id": "o", "props": {"x": 1}})  # b has not heard of the delete yet
    time.sleep(AUTOSAVE + SYNC + 0.5)  # the delete is saved and pulled by a and b
    assert cs.call({"op": "update", "id": "o", "props": {"x": 2}})["op"] == "ack"  # stale: still thinks it lives
    _, final = converge([a, b, stale], "p", timeout=15)
    assert json.loads(final)["objects"] == []  # the stale write resurrected it nowhere
    assert body(replicas("replica-d", **FAST), "p") == final  # nor in the table


def test_a_snapshot_holds_what_another_replica_saved_before_the_socket_opened(replicas: Any) -> None:
    """B holds the project and pulls seldom; a client saves on A, then opens a socket on B
    (as after a failover): B reads the project's head before the snapshot, so the client
    finds its create, and not the object it deleted, instead of B's copy from before."""
    a = replicas("replica-a", autosave_interval=0.2, rate_limit=0)
    b = replicas("replica-b", autosave_interval=0.2, sync_interval=30, rate_limit=0)
    ca = Client(a, "p")
    ca.call({"op": "create", "object": {"id": "gone", "type": "rect"}})
    ca.wait_for(lambda c: c.unsaved == 0)
    watcher = Client(b, "p")  # B holds the project from here on, with "gone" from its load
    assert "gone" in watcher.objects
    for round_ in range(3):
        ca.call({"op": "create", "object": {"id": f"new{round_}", "type": "rect", "x": round_}})
        ca.call(
            {"op": "delete", "id": "gone"} if round_ == 0 else {"op": "update", "id": "new0", "props": {"x": -round_}}
        )
        ca.wait_for(lambda c: c.unsaved == 0)  # saved: the client may forget its changes now
        moved = Client(b, "p")
        assert moved.objects == ca.objects, (round_, moved.objects, ca.objects)
        moved.close()
    for client in (ca, watcher):
        client.close()


@pytest.mark.parametrize("skew_ms", [-4000, 4000])
def test_a_replica_with_a_skewed_clock_converges(replicas: Any, skew_ms: int) -> None:
    nodes = [replicas("replica-a", **FAST), replicas("replica-skewed", clock_offset_ms=skew_ms, **FAST)]
    clients = [Client(nodes[i % 2], "skew") for i in range(4)]
    run_concurrently(clients, count=50)
    seconds, final = converge(nodes, "skew")
    print(f"skew {skew_ms}: converged in {seconds:.2f}s")
    assert seconds <= BOUND
    assert body(replicas("replica-fresh", **FAST), "skew") == final
    # a later edit on the replica that is behind still wins over older values
    slow = clients[1] if skew_ms < 0 else clients[0]
    alive = [o["id"] for o in json.loads(final)["objects"]]
    if alive:
        assert slow.call({"op": "update", "id": alive[0], "props": {"fill": "last"}})["op"] == "ack"
        _, final = converge(nodes, "skew")
        assert next(o for o in json.loads(final)["objects"] if o["id"] == alive[0])["fill"] == "last"


def test_sigterm_right_after_a_conflicting_save_leaves_the_union(replicas: Any) -> None:
    # a never pulls on its own (long intervals): only its shutdown can learn b's change
    a = replicas("replica-a", autosave_interval=60, sync_interval=60, reconcile_interval=600)
    b = replicas("replica-b", autosave_interval=0.2, sync_interval=60)
    Client(a, "p").call({"op": "create", "object": {"id": "o", "type": "rect", "x": 0, "y": 0}})
    assert a.terminate() == 0  # saved; start again so that both hold the object
    a = replicas("replica-a2", autosave_interval=60, sync_interval=60, reconcile_interval=600)
    ca, cb = Client(a, "p"), Client(b, "p")
    assert cb.call({"op": "update", "id": "o", "props": {"y": 7}})["op"] == "ack"
    wait_until(lambda: settled(b, "p"))
    assert b.terminate() == 0  # b's change is only in the table now
    assert ca.call({"op": "update", "id": "o", "props": {"x": 5}})["op"] == "ack"  # a never saw y=7
    assert a.terminate() == 0
    check = replicas("replica-check", **FAST)
    assert json.loads(body(check, "p"))["objects"] == [{"id": "o", "type": "rect", "x": 5, "y": 7}]
