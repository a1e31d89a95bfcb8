"""The Python client (``canvas_sync.client``) against real replicas and DynamoDB Local:
snapshot, edits, acks and ``saved``; token renewal; refusals; a half-open socket; a
reconnect storm; and a replica killed with SIGKILL under clients that lose nothing."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from canvas_sync.client import CanvasClient, ClientError
from canvas_sync.client.blocking import BlockingClient
from canvas_sync.devtools.dynamodb_local import DynamoDBLocal
from canvas_sync.devtools.redis_local import RedisServer
from canvas_sync.tokens import generate_keys, mint

from tests.helpers import OUTPUT, Replica, eventually, in_table
from tests.killtest import KillScenario
from tests.system.test_auth_replicas import ISSUER, JwksServer

pytestmark = pytest.mark.dynamodb_local


def ws(replica: Replica) -> str:
    return replica.url.replace("http", "ws", 1)


def test_snapshot_edits_acks_saved_and_presence(replicas: Any, dynamodb_local: DynamoDBLocal, table: str) -> None:
    replica = replicas(autosave_interval=0.5)

    async def run() -> None:
        async with CanvasClient(ws(replica), "p1") as ann, CanvasClient(ws(replica), "p1") as bo:
            await asyncio.wait_for(asyncio.gather(ann.ready, bo.ready), 10)
            assert ann.status == "open" and ann.version == 3 and ann.replica == replica.name
            seen: list[dict[str, Any]] = []
            bo.on("change", seen.append)
            ack = await ann.create({"id": "r1", "type": "rect", "x": 1})
            assert ack["op"] == "ack" and ack["seq"] == 1 and isinstance(ack["stamp"], str)
            ann.update("r1", {"x": 2, "fill": "#f00"})  # applied at once, acked later
            assert ann.objects["r1"] == {"id": "r1", "type": "rect", "x": 2, "fill": "#f00"}
            await ann.create({"id": "r2", "type": "ellipse"})
            await ann.delete("r2")
            assert ann.unsaved == 4
            with pytest.raises(ClientError) as refused:
                await ann.create({"id": "r1", "type": "rect"})
            assert refused.value.code == "conflict" and ann.unsaved == 4
            saved: list[int] = []
            ann.on("saved", saved.append)
            await ann.saved(timeout=10)
            assert ann.unsaved == 0 and saved[-1] == 0
            assert in_table(dynamodb_local.endpoint, table, "p1") == {"r1": ann.objects["r1"]}  # in DynamoDB
            await eventually(lambda: bo.objects == ann.objects, 5, "bo sees ann's edits")
            # bo hears r1's first state or, if its socket gathered meanwhile, the newer one in its place
            assert any("r1" in change for change in seen) and {"r2": None} in seen
            ann.set_presence({"cursor": [1, 1]})
            ann.set_presence({"cursor": [5, 5]})  # the latest wins
            await eventually(lambda: list(bo.others.values()) == [{"cursor": [5, 5]}], 5, "presence")
            assert (await ann.ping())["op"] == "pong"
        assert ann.status == "closed"
        with pytest.raises(ClientError):
            await ann.update("r1", {"x": 3})  # a closed client refuses at once

    asyncio.run(run())


def test_the_blocking_client_over_the_same_core(replicas: Any, dynamodb_local: DynamoDBLocal, table: str) -> None:
    """What the Locust users use: every call waits for its answer; a lost socket is met by the
    next call, which connects again and replays what was unsaved."""
    a, b = replicas("replica-a", autosave_interval=3600), replicas("replica-b", autosave_interval=0.3)
    target = [a]
    client = BlockingClient(lambda: ws(target[0]), "blocking", timeout=5)
    watcher = BlockingClient(ws(b), "blocking", timeout=5)
    watcher.connect()
    assert client.connect()["replica"] == "replica-a" and client.session.version == 3
    assert client.create({"id": "o", "type": "rect", "x": 1})["seq"] == 1
    client.update("o", {"x": 2})
    with pytest.raises(ClientError) as refused:
        client.delete("missing")
    assert refused.value.code == "not_found" and client.unsaved == 2  # acked, not saved (A never saves)
    target[0] = b
    a.kill()
    with pytest.raises(ClientError) as lost:
        client.update("o", {"x": 3})
    assert lost.value.code == "disconnected" and client.objects["o"]["x"] == 3
    assert client.connect()["replica"] == "replica-b"  # and the replay goes out
    client.wait_saved(timeout=10)
    assert in_table(dynamodb_local.endpoint, table, "blocking") == {"o": {"id": "o", "type": "rect", "x": 3}}
    seen = [m for _ in range(20) for m in watcher.poll(0.2) if m.get("op") == "upsert"]
    assert seen and watcher.objects == client.objects
    assert client.request({"op": "ping"})["op"] == "pong"
    client.close()
    watcher.close()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keys(tmp_path_factory.mktemp("client-keys"))


@pytest.fixture
def secured(replicas: Any, keys: tuple[Path, Path]) -> Iterator[Replica]:
    issuer = JwksServer(keys[1])
    yield replicas("secured", auth="jwt", auth_jwks_url=issuer.url, auth_issuer=ISSUER, auth_leeway=0)
    issuer.httpd.shutdown()


def token(keys: tuple[Path, Path], ttl: int = 3600, sub: str = "ann", **grants: str) -> str:
    return mint(sub, grants or {"p": "editor"}, ttl, private_key=keys[0], issuer=ISSUER)


def test_the_token_is_renewed_before_it_expires(secured: Replica, keys: tuple[Path, Path]) -> None:
    """Tokens of 4 s on a replica without leeway: without renewal the socket closes with 4401."""
    minted: list[float] = []

    async def fresh() -> str:
        minted.append(time.monotonic())
        return token(keys, ttl=4)

    async def run() -> None:
        async with CanvasClient(ws(secured), "p", token=fresh) as client:
            await asyncio.wait_for(client.ready, 10)
            for i in range(10):
                await client.update("o", {"i": i}) if i else await client.create({"id": "o", "type": "rect"})
                await asyncio.sleep(1)
            assert client.connects == 1 and client.status == "open"  # never closed, never reconnected
            assert len(minted) >= 3  # the first, then a renewal every 3 s (75% of 4 s)

    asyncio.run(run())


def test_refusals(secured: Replica, keys: tuple[Path, Path]) -> None:
    async def run() -> None:
        async with CanvasClient(ws(secured), "p", token=token(keys, p="viewer")) as viewer:
            await asyncio.wait_for(viewer.ready, 10)
            with pytest.raises(ClientError) as forbidden:
                await viewer.create({"id": "v", "type": "rect"})
            assert forbidden.value.code == "forbidden" and "v" not in viewer.objects
            assert viewer.status == "open"  # the socket stays open for a viewer's refused edit
        statuses: list[str] = []
        stranger = CanvasClient(ws(secured), "p", token=token(keys, other="editor"))
        stranger.on("status", statuses.append)
        async with stranger:
            with pytest.raises(ClientError) as refused:
                await asyncio.wait_for(stranger.ready, 10)
            assert refused.value.code == "forbidden" and "403" in refused.value.message
            assert stranger.status == "closed" and stranger.connects == 0 and statuses == ["closed"]
        calls = 0

        def expired() -> str:
            nonlocal calls
            calls += 1
            return token(keys, ttl=-60)

        async with CanvasClient(ws(secured), "p", token=expired) as late:
            with pytest.raises(ClientError) as unauthorized:
                await asyncio.wait_for(late.ready, 10)
            assert unauthorized.value.code == "unauthorized" and calls == 2  # a new token, one more try
        async with CanvasClient(ws(secured), "-bad", token=token(keys)) as bad:
            with pytest.raises(ClientError) as bad_project:
                await asyncio.wait_for(bad.ready, 10)
            assert bad_project.value.code == "bad_project"

    asyncio.run(run())


def test_a_half_open_socket_is_noticed_by_ping(replicas: Any) -> None:
    """SIGSTOP: the replica's sockets stay open and nothing answers. The client notices within
    two ping intervals and moves on to the other replica, with its unsaved change."""
    a, b = replicas("replica-a", autosave_interval=3600), replicas("replica-b")
    target = [a]

    async def run() -> float:
        async with CanvasClient(lambda: ws(target[0]), "p", ping_interval=0.5) as client:
            await asyncio.wait_for(client.ready, 10)
            await client.create({"id": "kept", "type": "rect"})
            target[0] = b
            assert a.process is not None
            a.process.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                await eventually(lambda: client.status == "reconnecting", 5, "the dead socket noticed")
                noticed = time.monotonic() - stopped
                await eventually(lambda: client.replica == "replica-b" and client.status == "open", 10, "on b")
                await client.saved(timeout=10)
            finally:
                a.process.send_signal(signal.SIGCONT)
            assert b.objects("p") == [{"id": "kept", "type": "rect"}]
            return noticed

    noticed = asyncio.run(run())
    assert 0.5 <= noticed <= 2.5, noticed  # silence of 2 x 0.5 s, plus a loaded machine


def test_a_reconnect_storm_is_spread_by_jittered_backoff(
    replicas: Any, dynamodb_local: DynamoDBLocal, table: str
) -> None:
    """100 clients lose their replica at once: they come back over the backoff's first window
    (1 s, full jitter), not in one burst, and every change of each is replayed and saved."""
    limits = {"max_connections_per_address": 0, "max_connections_per_project": 0, "autosave_interval": 3600}
    a, b = replicas("replica-a", **limits), replicas("replica-b", **{**limits, "autosave_interval": 0.5})
    target = [a]
    count = 100

    async def run() -> dict[str, Any]:
        clients = [CanvasClient(lambda: ws(target[0]), "storm", rng=random.Random(i)) for i in range(count)]
        opened: list[float] = []
        for client in clients:
            client.start()
        await asyncio.wait_for(asyncio.gather(*(c.ready for c in clients)), 60)
        await asyncio.gather(*(c.create({"id": f"o{i}", "type": "rect"}) for i, c in enumerate(clients)))
        for client in clients:
            client.on("status", lambda status: opened.append(time.monotonic()) if status == "open" else None)
        target[0] = b
        killed = time.monotonic()
        a.kill()  # unsaved (autosave_interval 3600): only the clients' replays can save them
        await asyncio.wait_for(asyncio.gather(*(c.saved() for c in clients)), 60)
        for client in clients:
            await client.close()
        times = sorted(t - killed for t in opened)
        buckets = [sum(1 for t in times if i / 10 <= t < (i + 1) / 10) for i in range(30)]
        return {
            "clients": count,
            "reconnected": len(times),
            "first_s": round(times[0], 3),
            "last_s": round(times[-1], 3),
            "spread_s": round(times[-1] - times[0], 3),
            "busiest_100ms": max(buckets),
        }

    summary = asyncio.run(run())
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "reconnect-storm-python.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"reconnect storm: {summary}")
    assert summary["reconnected"] == count
    assert summary["spread_s"] >= 0.6  # uniform over [0, 1) s: a burst would be a few ms wide
    assert summary["busiest_100ms"] <= 30  # about 10 expected per 100 ms
    assert len(in_table(dynamodb_local.endpoint, table, "storm")) == count


# --- the SIGKILL test ------------------------------------------------------------------------

CLIENTS = 8


class Editor:
    """One client editing its own objects: creates, updates and deletes, as fast as a person
    drags, without waiting for acks; ``model`` is what it means the table to hold."""

    def __init__(self, client: CanvasClient, me: int, rng: random.Random) -> None:
        self.client, self.me, self.rng = client, me, rng
        self.model: dict[str, dict[str, Any] | None] = {}
        self.answers: list[asyncio.Future[dict[str, Any]]] = []

    async def run(self, stop: asyncio.Event) -> None:
        client, me, rng, model, answers = self.client, self.me, self.rng, self.model, self.answers
        created = 0
        while not stop.is_set():
            mine = sorted(oid for oid in client.objects if oid.startswith(f"c{me}-"))
            roll = rng.random()
            if not mine or (roll < 0.25 and len(mine) < 12):
                created += 1
                obj = {"id": f"c{me}-{created}", "type": "rect", "x": rng.randint(0, 999), "n": len(answers)}
                answers.append(client.create(obj))
                model[obj["id"]] = obj
            elif roll < 0.9:
                oid = rng.choice(mine)
                props = {"x": rng.randint(0, 999), "n": len(answers), "fill": rng.choice([None, "#e53935", "#1e88e5"])}
                answers.append(client.update(oid, props))
                current = dict(model[oid] or {})
                current.update({k: v for k, v in props.items() if v is not None})
                for name in [k for k, v in props.items() if v is None]:
                    current.pop(name, None)
                model[oid] = current
            else:
                oid = rng.choice(mine)
                answers.append(client.delete(oid))
                model[oid] = None
            await asyncio.sleep(rng.uniform(0.005, 0.03))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("relay", [True, False], ids=["relay", "table"])
def test_sigkill_loses_nothing(relay: bool, request: pytest.FixtureRequest, table: str, tmp_path: Path) -> None:
    """8 clients edit their own objects through replica A (autosave every 2 s); A is killed with
    SIGKILL 2 to 5 s in; the clients' URL function moves them to B; they keep editing, then wait
    for ``saved``. The table must hold exactly each client's final intended state."""
    dynamodb_local: DynamoDBLocal = request.getfixturevalue("dynamodb_local")
    redis: RedisServer | None = request.getfixturevalue("redis_server") if relay else None
    project = "kill"
    with KillScenario(dynamodb_local.endpoint, table, tmp_path, redis_url=redis.url if redis else None) as scenario:

        async def run() -> dict[str, Any]:
            # A watcher on B from the start: B holds the project, so with the relay it has A's
            # unsaved edits in memory (not to save: A will) when A dies.
            watcher = CanvasClient(scenario.urls["b"], project)
            watcher.start()
            clients = [
                CanvasClient(lambda: scenario.current_url, project, rng=random.Random(i)) for i in range(CLIENTS)
            ]
            for client in clients:
                client.start()
            await asyncio.wait_for(asyncio.gather(watcher.ready, *(c.ready for c in clients)), 20)
            stop = asyncio.Event()
            rng = random.Random(scenario.seed)
            editors = [Editor(c, i, random.Random(rng.random())) for i, c in enumerate(clients)]
            running = [asyncio.ensure_future(editor.run(stop)) for editor in editors]
            await asyncio.sleep(scenario.kill_delay)
            made = sum(len(editor.answers) for editor in editors)
            unsaved = [ch for c in clients for ch in c.session.changes]
            at_kill = {
                "changes_before_kill": made,
                "saved_before_kill": made - len(unsaved),
                "acked_unsaved_at_kill": sum(1 for ch in unsaved if ch.acked),
                "unacked_at_kill": sum(1 for ch in unsaved if not ch.acked),
            }
            scenario.kill_a()  # blocks the loop for the kill: nothing moves in between
            killed = time.monotonic()
            await eventually(lambda: all(c.replica == "replica-b" for c in clients), 15, "every client on B")
            moved = time.monotonic() - killed
            await asyncio.sleep(1.5)  # they keep going on B
            stop.set()
            await asyncio.gather(*running)
            answers = [a for editor in editors for a in editor.answers]
            results = await asyncio.wait_for(asyncio.gather(*answers, return_exceptions=True), 30)
            errors = [repr(r) for r in results if isinstance(r, BaseException)]
            await asyncio.wait_for(asyncio.gather(*(c.saved() for c in clients)), 30)
            for editor in editors:  # each copy should show its own intent (checked after the table)
                mine = {k: v for k, v in editor.client.objects.items() if k.startswith(f"c{editor.me}-")}
                meant = {k: v for k, v in editor.model.items() if v is not None}
                copies.update(
                    {k: (mine.get(k), meant.get(k)) for k in set(mine) | set(meant) if mine.get(k) != meant.get(k)}
                )
            for client in (watcher, *clients):
                await client.close()
            expected.update({oid: obj for editor in editors for oid, obj in editor.model.items()})
            return {**at_kill, "changes": len(answers), "errors": errors, "moved_to_b_s": round(moved, 3)}

        expected: dict[str, dict[str, Any] | None] = {}
        copies: dict[str, tuple[Any, Any]] = {}  # id -> (a client's copy, what it meant), where they differ
        counts = asyncio.run(run())
        summary = scenario.check(project, expected, clients=CLIENTS, copies_wrong=len(copies), **counts)
        path = scenario.write_summary(f"sigkill-python-{'relay' if relay else 'table'}", summary)
        print(f"{path.name}: {summary}")
        assert summary["errors"] == [], summary["errors"][:5]
        assert summary["lost"] == 0 and summary["duplicated"] == 0, summary
        assert not copies, (
            f"copies (left) are not what their clients meant (middle); the table (right) is, seed {scenario.seed}: "
            f"{ {k: (*v, scenario.table_state(project).get(k)) for k, v in copies.items()} }"
        )
        assert summary["acked_unsaved_at_kill"] > 0  # the kill did catch changes only A held
