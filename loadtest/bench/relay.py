"""``relay``: the live relay. How fast other replicas see an edit, what it costs, what it survives.

- latency: 3 replicas with the relay; a writer on A updates one object 500 times (about
  100 a second); watchers on B and C. Ack on A to the upsert on both, beside the same
  measure for a watcher on A itself (same-replica fan-out: the floor), and without the
  relay (the table: auto-save + sync pass).
- drops: two services in one process on the in-memory broker, which drops 5% of the
  state messages at random; how many losses were detected, and how long until equal.
- restart: Redis killed while both replicas keep editing, then started again; seconds
  until every replica and the table are byte-equal.
- reads: 20 idle held projects for 60 s; DynamoDB read requests per held project per
  minute with the relay healthy and without a relay.
- solo: round trips on projects nobody else holds, relay on over relay off (median of 3
  interleaved runs at 32 clients).
- writes: one project two replicas hold, the same seeded people (the Locust mix) for 40 s
  with the relay and without: items written per edit, BatchWriteItem calls, repairs, and
  the seconds until both replicas and the table are equal. The relay must add no writes.

    python -m loadtest.bench.relay
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop
from canvas_sync.admission import Admitted
from canvas_sync.auth import Role
from canvas_sync.config import load_settings
from canvas_sync.devtools.redis_local import RedisServer
from canvas_sync.relay import Kind, MemoryBroker, Receiver, Verdict, decode
from canvas_sync.store import DynamoStore, MemoryStore, make_client
from canvas_sync.wiring import build
from websockets.asyncio.client import connect

from loadtest.convergence_check import check_convergence

from . import roundtrip
from .common import TABLE, counter, pct, replica, table, wait_clean


async def _latency(
    writer_url: str, watcher_urls: list[str], project: str, edits: int = 500, gap: float = 0.01
) -> list[float]:
    """Seconds from each edit's ack on the writer to its upsert at every watcher (edits whose
    state arrived; through the table, edits saved in one pass arrive as the last of them)."""
    arrived: dict[int, list[float]] = {}
    acked: dict[int, float] = {}
    watchers = [await connect(_ws(u, project), max_size=None) for u in watcher_urls]
    for ws in watchers:
        await ws.recv()

    async def watch(ws: Any) -> None:
        async for text in ws:
            message = json.loads(text)
            if message.get("op") == "upsert" and message["object"]["id"] == "o":
                arrived.setdefault(message["object"].get("x", -1), []).append(time.perf_counter())

    tasks = [asyncio.create_task(watch(ws)) for ws in watchers]
    async with connect(_ws(writer_url, project), max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"op": "create", "req": "c", "object": {"id": "o", "type": "rect", "x": -1}}))
        while '"req":"c"' not in await ws.recv():
            pass
        await asyncio.sleep(0.5)
        for i in range(edits):
            await ws.send(json.dumps({"op": "update", "req": str(i), "id": "o", "props": {"x": i}}))
            while f'"req":"{i}"' not in await ws.recv():
                pass
            acked[i] = time.perf_counter()
            await asyncio.sleep(gap)
        deadline = time.monotonic() + 15
        while len(arrived.get(edits - 1, ())) < len(watchers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()
    for w in watchers:
        await w.close()
    return [max(0.0, max(arrived[i]) - acked[i]) for i in acked if len(arrived.get(i, ())) == len(watchers)]


def _ws(base: str, project: str) -> str:
    return f"{base.replace('http', 'ws', 1)}/ws/{project}"


def _summary(samples: list[float]) -> dict[str, Any]:
    return {
        "samples": len(samples),
        "p50_ms": round(pct(samples, 50) * 1000, 2),
        "p99_ms": round(pct(samples, 99) * 1000, 2),
    }


def latency(endpoint: str, redis_url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with (
        replica(endpoint, "lat-a", redis_url=redis_url) as a,
        replica(endpoint, "lat-b", redis_url=redis_url) as b,
        replica(endpoint, "lat-c", redis_url=redis_url) as c,
    ):
        time.sleep(1)  # relays healthy
        out["cross_replica"] = _summary(uvloop.run(_latency(a.url, [b.url, c.url], f"lat-{time.time_ns()}")))
        out["same_replica"] = _summary(uvloop.run(_latency(a.url, [a.url], f"lat-{time.time_ns()}")))
    with replica(endpoint, "tab-a") as a, replica(endpoint, "tab-b") as b:  # seconds each: a few edits
        samples = uvloop.run(_latency(a.url, [b.url], f"tab-{time.time_ns()}", edits=6, gap=2.5))
        out["through_the_table"] = _summary(samples)
    return out


class _Recording(Receiver):
    """Remembers which sequence numbers each detection covered."""

    def __init__(self) -> None:
        super().__init__()
        self.covered: set[tuple[str, int]] = set()

    def on_message(self, replica: str, epoch: str, project: str, seq: int) -> Verdict:
        last = self._last.get((replica, project))
        verdict = super().on_message(replica, epoch, project, seq)
        if verdict == Verdict.GAP and last is not None:
            self.covered.update((project, s) for s in range(last[1] + 1, seq))
        return verdict

    def on_heartbeat(self, replica: str, epoch: str, seqs: Any, held: Any) -> list[str]:
        before = {p: self._last.get((replica, p)) for p in held}
        behind = super().on_heartbeat(replica, epoch, seqs, held)
        for project in behind:
            known = before.get(project)
            if known is not None:
                self.covered.update((project, s) for s in range(known[1] + 1, seqs[project] + 1))
        return behind


def drops(rate: float = 0.05, edits: int = 2000) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        broker = MemoryBroker()
        rng = random.Random(7)
        dropped: set[tuple[str, int]] = set()

        def drop(channel: str, data: bytes) -> bool:
            message = decode(data)
            if message.kind == Kind.OBJECT and message.replica == "a" and rng.random() < rate:
                dropped.add((message.project, message.seq))
                return True
            return False

        store = MemoryStore("shared")
        services = []
        for name in ("a", "b"):
            settings = load_settings(
                replica_id=name,
                autosave_interval=3600,
                sync_interval=0.2,
                relay_heartbeat=0.2,
                rate_limit=0,
                auth="off",
            )
            svc = build(settings, MemoryStore(name, shared=store), broker.transport())
            await svc.start()
            services.append(svc)
        a, b = services
        while not (a.relay and a.relay.healthy and b.relay and b.relay.healthy and a.ready and b.ready):
            await asyncio.sleep(0.05)
        assert b.relay is not None
        b.relay.receiver = recording = _Recording()
        await b.project("d")
        conn = await a.open(Admitted("d", None, Role.EDITOR, None), None)
        pa = conn.project
        a.receive(conn, json.dumps({"op": "create", "object": {"id": "seed", "type": "rect"}}))
        await asyncio.sleep(0.3)
        broker.drop = drop
        for i in range(edits):
            oid = f"o{i % 200}"
            op = (
                {"op": "create", "object": {"id": oid, "type": "rect", "x": i}}
                if i < 200
                else {"op": "update", "id": oid, "props": {"x": i}}
            )
            a.receive(conn, json.dumps(op))
            if i % 20 == 0:
                await asyncio.sleep(0.005)
        stopped = time.monotonic()
        broker.drop = lambda channel, data: False
        while time.monotonic() - stopped < 10 and b.projects.get("d").views != pa.views:  # type: ignore[union-attr]
            await asyncio.sleep(0.01)
        equal_after = time.monotonic() - stopped
        result = {
            "state_messages_dropped": len(dropped),
            "losses_detected": len(dropped & recording.covered),
            "detected_ratio": round(len(dropped & recording.covered) / max(1, len(dropped)), 4),
            "equal": b.projects.get("d").views == pa.views,  # type: ignore[union-attr]
            "equal_after_s": round(equal_after, 3),
        }
        for svc in services:
            await svc.shutdown()
        return result

    return uvloop.run(run())


async def _edit(url: str, project: str, ids: list[str], stop: asyncio.Event) -> int:
    n = 0
    async with connect(_ws(url, project)) as ws:
        await ws.recv()
        while not stop.is_set():
            n += 1
            oid = random.choice(ids)
            await ws.send(json.dumps({"op": "create", "req": str(n), "object": {"id": f"{oid}-{n}", "type": "rect"}}))
            while f'"req":"{n}"' not in await ws.recv():
                pass
            await asyncio.sleep(0.005)
    return n


def restart(endpoint: str, rounds: int = 2) -> dict[str, Any]:
    seconds = []
    with (
        RedisServer() as redis,
        replica(endpoint, "rs-a", redis_url=redis.url, relay_heartbeat=0.2, autosave_interval=1) as a,
        replica(endpoint, "rs-b", redis_url=redis.url, relay_heartbeat=0.2, autosave_interval=1) as b,
    ):
        for r in range(rounds):
            project = f"restart-{r}-{time.time_ns()}"

            async def run(project: str = project) -> None:
                stop = asyncio.Event()
                editors = [asyncio.create_task(_edit(u, project, ["a", "b"], stop)) for u in (a.url, b.url)]
                await asyncio.sleep(1)
                redis.kill()
                await asyncio.sleep(2)  # both keep editing; nothing is relayed
                stop.set()
                await asyncio.gather(*editors)

            uvloop.run(run())
            redis.start()
            back = time.monotonic()
            result = check_convergence([a.url, b.url], [project], 20, poll=0.05)
            store = DynamoStore(make_client(endpoint), TABLE)
            table_objects = sorted(s.id for s in store.load_project(project) if s.is_alive)
            store.close()
            memory = sorted(o["id"] for o in json.loads(urlopen(f"{a.url}/projects/{project}/objects"))["objects"])
            assert result["converged"] and table_objects == memory, (result, len(table_objects), len(memory))
            seconds.append(time.monotonic() - back)
    return {"rounds": rounds, "seconds_to_equal": [round(s, 2) for s in seconds]}


async def _person(url: str, project: str, seed: int, seconds: float, done: Callable[[float], None]) -> None:
    """One person of the Locust mix on a shared board, seeded: draws, drags any shape it
    knows (10 to 30 updates at 60 a second), recolours, deletes; 0.1 to 0.5 s between.
    Calls ``done`` with the monotonic time of its last answer before closing its socket."""
    rng = random.Random(seed)
    known: set[str] = set()
    n = 0
    last = time.monotonic()

    def learn(message: dict[str, Any]) -> None:
        if message.get("op") == "snapshot":
            known.update(o["id"] for o in message["objects"])
        elif message.get("op") == "upsert":
            known.add(message["object"]["id"])
        elif message.get("op") == "delete":
            known.discard(message["id"])

    async with connect(_ws(url, project), max_size=None) as ws:

        async def call(op: dict[str, Any]) -> bool:
            nonlocal n, last
            n += 1
            await ws.send(json.dumps({**op, "req": str(n)}))
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if message.get("req") == str(n):
                    last = time.monotonic()
                    return bool(message["op"] == "ack")
                learn(message)

        learn(json.loads(await ws.recv()))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            roll = rng.random()
            shapes = sorted(known)
            if roll < 0.3 or not shapes:
                oid = f"s{seed}-{n}"
                if await call({"op": "create", "object": {"id": oid, "type": "rect", "x": 0, "y": 0, "fill": "#000"}}):
                    known.add(oid)
            elif roll < 0.7:
                oid = rng.choice(shapes)
                for step in range(rng.randint(10, 30)):
                    if not await call({"op": "update", "id": oid, "props": {"x": step, "y": rng.randint(0, 900)}}):
                        known.discard(oid)
                        break
                    await asyncio.sleep(1 / 60)
            elif roll < 0.9:
                oid = rng.choice(shapes)
                if not await call({"op": "update", "id": oid, "props": {"fill": f"#{rng.randrange(999):03}"}}):
                    known.discard(oid)
            else:
                oid = rng.choice(shapes)
                await call({"op": "delete", "id": oid})
                known.discard(oid)
            await asyncio.sleep(rng.uniform(0.1, 0.5))
        done(last)


def _written(port: int) -> dict[str, float]:
    return {
        "edits": counter(port, "canvas_edits_total"),
        "items_written": counter(port, "canvas_autosave_objects_written_total"),
        "head_updates": counter(port, "canvas_autosave_heads_written_total"),
        "batch_calls": counter(port, "canvas_autosave_batches_total", 'outcome="success"'),
        "repairs": counter(port, "canvas_sync_repairs_total"),
    }


def _writes_once(
    endpoint: str, redis_url: str | None, seconds: float, people: int, settle: float, seed: int
) -> dict[str, Any]:
    """Two replicas holding one project, ``people`` on each for ``seconds``; what they wrote
    until both were equal, clean and ``settle`` seconds quiet (late repairs included)."""
    tag = "relay" if redis_url else "table"
    relayed = {"redis_url": redis_url} if redis_url else {}
    with (
        replica(endpoint, f"wr-{tag}-a", **relayed) as a,
        replica(endpoint, f"wr-{tag}-b", **relayed) as b,
    ):
        time.sleep(1)  # relays healthy
        project = f"writes-{tag}-{time.time_ns()}"

        async def run() -> tuple[float, dict[str, Any]]:
            urls = [a.url, b.url] * people
            lasts: list[float] = []
            all_done = asyncio.Event()

            def done(last: float) -> None:
                lasts.append(last)
                if len(lasts) == len(urls):
                    all_done.set()

            tasks = [asyncio.create_task(_person(url, project, seed + i, seconds, done)) for i, url in enumerate(urls)]
            await all_done.wait()  # polled while the sockets close
            checked = time.monotonic()
            result = await asyncio.to_thread(check_convergence, [a.url, b.url], [project], 60, 0.05)
            await asyncio.gather(*tasks)
            return checked + result["seconds"] - max(lasts), result

        before = [_written(s.port) for s in (a, b)]
        converged_s, result = uvloop.run(run())
        time.sleep(settle)
        for s in (a, b):
            wait_clean(s.port)
        after = [_written(s.port) for s in (a, b)]
    totals = {k: sum(x[k] - y[k] for x, y in zip(after, before, strict=True)) for k in before[0]}
    edits = max(totals["edits"], 1)
    return {
        **{k: int(v) for k, v in totals.items()},
        "items_per_edit": round(totals["items_written"] / edits, 4),
        "converged": bool(result["converged"]),
        "convergence_s": round(converged_s, 2),
    }


def writes(
    endpoint: str, redis_url: str, seconds: float = 40.0, people: int = 3, rounds: int = 1, settle: float = 16.0
) -> dict[str, Any]:
    """What a project two replicas hold costs in DynamoDB writes with the relay and without,
    the same seeded people both times, interleaved: the relay must not add writes (an
    object relayed ahead of its origin's save is that origin's to write). ``settle``: past
    the relay's 15 s heads interval, so repairs found late are counted too."""
    runs: dict[str, list[dict[str, Any]]] = {"table": [], "relay": []}
    for r in range(rounds):
        runs["table"].append(_writes_once(endpoint, None, seconds, people, settle, seed=100 * r))
        runs["relay"].append(_writes_once(endpoint, redis_url, seconds, people, settle, seed=100 * r))
    per_edit = {k: statistics.median(x["items_per_edit"] for x in v) for k, v in runs.items()}
    return {
        "seconds": seconds,
        "people_per_replica": people,
        "runs": runs,
        "items_per_edit_relay": per_edit["relay"],
        "items_per_edit_table": per_edit["table"],
        "ratio": round(per_edit["relay"] / max(per_edit["table"], 1e-9), 3),
    }


def urlopen(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


def reads(endpoint: str, projects: int = 20, window: float = 60.0) -> dict[str, Any]:
    """Read requests of held, idle projects (heads reads, feeds and reconciles), and the head
    items read (a read unit each), in steady state: after the catch-up window of a load."""
    kinds = ("heads", "feed", "reconcile")
    with (
        RedisServer() as redis,
        replica(endpoint, "rd-relay", redis_url=redis.url) as relayed,
        replica(endpoint, "rd-table") as plain,
    ):
        servers = (relayed, plain)
        for server in servers:
            for i in range(projects):
                urlopen(f"{server.url}/projects/reads-{server.name}-{i}/objects")
        time.sleep(25)  # past the 20 s after a load when heads are read every pass

        def total(server: Any) -> tuple[float, float]:
            requests = sum(
                counter(server.port, "canvas_sync_pulls_total", f'kind="{k}",outcome="success"') for k in kinds
            )
            return requests, counter(server.port, "canvas_sync_heads_read_total")

        before = {s.name: total(s) for s in servers}
        time.sleep(window)
        after = {s.name: total(s) for s in servers}
    rate = {
        (s.name, i): (after[s.name][i] - before[s.name][i]) / projects * 60 / window for s in servers for i in (0, 1)
    }
    with_relay, without = rate[("rd-relay", 0)], rate[("rd-table", 0)]
    return {
        "held_projects": projects,
        "window_s": window,
        "with_relay": round(with_relay, 3),
        "without_relay": round(without, 3),
        "fewer": round(without / max(with_relay, 1e-9), 1),
        "heads_read_with_relay": round(rate[("rd-relay", 1)], 2),
        "heads_read_without": round(rate[("rd-table", 1)], 2),
    }


def solo(endpoint: str, clients: int = 32, seconds: float = 3.0, repeats: int = 5) -> dict[str, Any]:
    """Relay on against relay off, side by side: two fresh servers measured at the same time,
    half the clients each, so the shared machine's ups and downs fall on both alike."""

    async def pair(off: Any, on: Any) -> list[dict[str, float]]:
        return await asyncio.gather(
            *(roundtrip._measure([f"ws://127.0.0.1:{s.port}"], clients // 2, seconds, False, s.pid) for s in (off, on))
        )

    runs: list[tuple[dict[str, float], dict[str, float]]] = []
    with RedisServer() as redis:
        for _ in range(repeats):
            with replica(endpoint) as off, replica(endpoint, redis_url=redis.url) as on:
                time.sleep(1)  # the relay connected
                first, second = uvloop.run(pair(off, on))
                runs.append((first, second))
    ratios = [on["ops_per_s"] / off["ops_per_s"] for off, on in runs]
    cpu_ratios = [off["server_cpu_us_per_op"] / on["server_cpu_us_per_op"] for off, on in runs]
    return {
        "clients": clients,
        "runs": [{"relay_off": off, "relay_on": on} for off, on in runs],
        "ratios": [round(r, 3) for r in ratios],
        "ratio": round(statistics.median(ratios), 3),
        "cpu_ratio": round(statistics.median(cpu_ratios), 3),
        "relay_off_ops_per_s": round(statistics.median(off["ops_per_s"] for off, _ in runs), 1),
        "relay_on_ops_per_s": round(statistics.median(on["ops_per_s"] for _, on in runs), 1),
    }


def run(endpoint: str) -> dict[str, Any]:
    started = time.monotonic()
    out: dict[str, Any] = {}
    with RedisServer() as redis:
        steps = [
            ("latency", lambda: latency(endpoint, redis.url)),
            ("drops", drops),
            ("restart", lambda: restart(endpoint)),
            ("reads", lambda: reads(endpoint)),
            ("solo", lambda: solo(endpoint)),
            ("writes", lambda: writes(endpoint, redis.url)),
        ]
        for name, step in steps:
            out[name] = step()
            print(f"  relay: {name} done at {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    return out


def markdown(r: dict[str, Any]) -> str:
    lat, d, rs, rd, s = r["latency"], r["drops"], r["restart"], r["reads"], r["solo"]
    w = r.get("writes")
    written = []
    if w:
        relay_run, table_run = w["runs"]["relay"][0], w["runs"]["table"][0]
        written = [
            [
                f"items written per edit, one project on 2 replicas, {w['people_per_replica']} people each "
                f"for {w['seconds']:g} s (items / BatchWriteItem calls / repairs)",
                f"{w['items_per_edit_relay']} with the relay ({relay_run['items_written']} / "
                f"{relay_run['batch_calls']} / {relay_run['repairs']})",
                f"{w['items_per_edit_table']} without ({table_run['items_written']} / "
                f"{table_run['batch_calls']} / {table_run['repairs']})",
                w["ratio"],
            ],
            [
                "the same: seconds from the last edit until both replicas and the table are equal",
                f"{relay_run['convergence_s']} s with the relay",
                f"{table_run['convergence_s']} s without",
                "",
            ],
        ]
    return table(
        "relay: the live relay (Redis pub/sub between replicas)",
        ["measure", "figure", "baseline in the same run", "ratio"],
        [
            [
                "edit ack on A -> upsert on B and C, p50 / p99 (3 replicas, relay)",
                f"{lat['cross_replica']['p50_ms']} / {lat['cross_replica']['p99_ms']} ms",
                f"same replica: {lat['same_replica']['p50_ms']} / {lat['same_replica']['p99_ms']} ms",
                "",
            ],
            [
                "the same without a relay (through the table), p50 / p99",
                f"{lat['through_the_table']['p50_ms']} / {lat['through_the_table']['p99_ms']} ms",
                "",
                "",
            ],
            [
                "injected drops detected (5% of state messages)",
                f"{d['losses_detected']} of {d['state_messages_dropped']}",
                "",
                f"{d['detected_ratio'] * 100:.1f}%",
            ],
            ["replicas equal after the last edit (drops injected)", f"{d['equal_after_s']} s", "", ""],
            [
                "Redis killed while editing, then restarted: byte-equal with the table after",
                " / ".join(f"{x} s" for x in rs["seconds_to_equal"]),
                "",
                "",
            ],
            [
                f"read requests per held project per minute ({rd['held_projects']} idle projects, steady state)",
                f"{rd['with_relay']} with the relay",
                f"{rd['without_relay']} without",
                f"{rd['fewer']}x fewer",
            ],
            [
                "head items read per held project per minute (a read unit each)",
                f"{rd['heads_read_with_relay']} with the relay",
                f"{rd['heads_read_without']} without",
                "",
            ],
            [
                f"round trips, {s['clients']} clients on their own projects, relay on and off at once (median of 5)",
                f"{s['relay_on_ops_per_s']} ops/s relay on",
                f"{s['relay_off_ops_per_s']} ops/s relay off",
                f"{s['ratio']} (CPU {s['cpu_ratio']})",
            ],
            *written,
        ],
    )


if __name__ == "__main__":
    from .suite import standalone

    sys.exit(standalone("relay"))
