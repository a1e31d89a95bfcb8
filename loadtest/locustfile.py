"""Locust scenarios for canvas-sync: a realistic canvas mix spread over several replicas,
and a check at the end that every replica holds the same canvases.

Every acked message fires a Locust request event named by what it was (``create``,
``update (drag)``, ``update (recolour)``, ``update (text)``, ``delete``, ``connect``), so
Locust's statistics show per-op latency. Races that concurrent editing of shared objects
produces on purpose (``conflict``, ``not_found``) count as answered requests under their
own name, not as failures; every other error code is a failure.

    python -m locust -f loadtest/locustfile.py --headless -u 60 -r 10 -t 60s \\
        --host http://127.0.0.1:8080 --replica-urls http://127.0.0.1:8080,http://127.0.0.1:8081

Run it from the repository root (``loadtest/run-local`` does): it imports the ``loadtest``
package, and ``canvas_sync`` (installed): users are ``canvas_sync.client``'s blocking
client (the same core as the asyncio one, over websocket-client, which gevent makes
cooperative), and tokens are minted with ``--token-key``.

In a cluster, users connect through the Service (``--host``) and the check finds each pod
with ``--discover-service`` (EndpointSlices). Exit code 1 when the replicas do not
converge within ``--convergence-timeout`` or the failure ratio passes ``--max-error-ratio``.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from pathlib import Path
from typing import Any

import gevent
from canvas_sync.client import V1, V2, V3, ClientError
from canvas_sync.client.blocking import BlockingClient
from canvas_sync.tokens import mint
from locust import User, between, constant, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import WorkerRunner
from locust.stats import StatsEntry

from loadtest.convergence_check import check_convergence

EXPECTED_RACES = {"conflict", "not_found"}
COLOURS = ["#e53935", "#1e88e5", "#43a047", "#fdd835", "#8e24aa", "#fb8c00", "#00acc1", "#6d4c41"]
EDIT_NAMES = ("create", "update (drag)", "update (recolour)", "update (text)", "delete")
CROSS_REPLICA = "cross-replica (ack on one replica -> upsert on every other)"
TOKEN_TTL = 6 * 3600
"""Seconds a minted token lasts: longer than any run."""


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("canvas-sync")
    group.add_argument(
        "--replica-urls",
        env_var="CANVAS_LOAD_REPLICAS",
        default="",
        help="comma-separated base URLs users connect to, spread evenly (default: --host)",
    )
    group.add_argument(
        "--projects",
        type=int,
        env_var="CANVAS_LOAD_PROJECTS",
        default=5,
        help="number of shared projects the users edit",
    )
    group.add_argument(
        "--project-prefix",
        env_var="CANVAS_LOAD_PROJECT_PREFIX",
        default="load",
        help="project ids are <prefix>-0, <prefix>-1, ...",
    )
    group.add_argument(
        "--check-urls",
        env_var="CANVAS_CHECK_URLS",
        default="",
        help="replica URLs the convergence check polls (default: --replica-urls)",
    )
    group.add_argument(
        "--discover-service",
        env_var="CANVAS_DISCOVER_SERVICE",
        default="",
        help="find the replicas to check through this Service's EndpointSlices",
    )
    group.add_argument(
        "--discover-namespace",
        env_var="CANVAS_DISCOVER_NAMESPACE",
        default="default",
        help="namespace of --discover-service",
    )
    group.add_argument(
        "--convergence-timeout",
        type=float,
        env_var="CANVAS_CONVERGENCE_TIMEOUT",
        default=30.0,
        help="seconds the replicas get to agree after the test stops",
    )
    group.add_argument(
        "--max-error-ratio",
        type=float,
        env_var="CANVAS_MAX_ERROR_RATIO",
        default=0.01,
        help="failure ratio above which the run fails",
    )
    group.add_argument(
        "--token",
        env_var="CANVAS_LOAD_TOKEN",
        default="",
        help="a bearer token every user and the check use (it must grant the projects)",
    )
    group.add_argument(
        "--token-key",
        env_var="CANVAS_LOAD_TOKEN_KEY",
        default="",
        help="an ES256 private key (canvas-sync keygen): each user mints its own token (its own subject)",
    )
    group.add_argument(
        "--batched",
        action="store_true",
        env_var="CANVAS_LOAD_BATCHED",
        default=False,
        help="users offer canvas-sync.v2 (as the demo page does): a frame may hold several messages",
    )
    group.add_argument(
        "--durable",
        action="store_true",
        env_var="CANVAS_LOAD_DURABLE",
        default=False,
        help="users offer canvas-sync.v3: each keeps its changes until saved and replays them after a reconnect",
    )
    group.add_argument(
        "--convergence-report",
        env_var="CANVAS_CONVERGENCE_REPORT",
        default="",
        help="write the check and the edit statistics as JSON to this file",
    )


def token_for(environment: Environment, sub: str, role: str = "editor") -> str | None:
    """A user's token: minted with --token-key (one subject per user), else --token, else none."""
    options = environment.parsed_options
    if options.token_key:  # ES256, its kid read from the key's folder (canvas-sync keygen writes it)
        return mint(sub, {f"{options.project_prefix}-*": role}, TOKEN_TTL, private_key=Path(options.token_key))
    return options.token or None


def versions(batched: bool = False, durable: bool = False) -> tuple[str, ...]:
    """What users offer: v1 (one message a frame) unless --batched (v2) or --durable (v3)."""
    return (V3, V2, V1) if durable else (V2, V1) if batched else (V1,)


def _split(urls: str) -> list[str]:
    return [u.strip().rstrip("/") for u in urls.split(",") if u.strip()]


def user_urls(environment: Environment) -> list[str]:
    return _split(environment.parsed_options.replica_urls) or [str(environment.host).rstrip("/")]


def check_urls(environment: Environment) -> list[str]:
    options = environment.parsed_options
    if options.discover_service:
        from loadtest.discovery import discovery_api, pod_urls

        return pod_urls(discovery_api(), options.discover_namespace, options.discover_service)
    return _split(options.check_urls) or user_urls(environment)


class ServerError(Exception):
    """An error answer the protocol should not have produced."""


class CanvasUser(User):
    """One person on a shared canvas: draws, drags, recolours, types, deletes, reconnects."""

    wait_time = between(0.1, 0.5)
    _numbers = itertools.count()

    def on_start(self) -> None:
        self.number = next(CanvasUser._numbers)
        options = self.environment.parsed_options
        urls = user_urls(self.environment)
        self.base = urls[self.number % len(urls)]
        self.project = f"{options.project_prefix}-{self.number % max(1, options.projects)}"
        self.created = 0
        self.canvas = BlockingClient(
            self.base,
            self.project,
            token=token_for(self.environment, f"load-user-{self.number}"),
            timeout=10,
            versions=versions(options.batched, options.durable),
        )
        self.connect()

    def on_stop(self) -> None:
        self.canvas.close()  # without waiting for the server's close frame (GreenletExit stays seen)

    @property
    def objects(self) -> dict[str, dict[str, Any]]:
        """The local copy: the server's state with this user's changes applied at once."""
        return self.canvas.objects

    # --- plumbing -------------------------------------------------------------------------

    def fire(self, name: str, started: float, length: int, exception: Exception | None = None) -> None:
        self.environment.events.request.fire(
            request_type="WS",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exception,
            context={"project": self.project},
        )

    def connect(self) -> None:
        started = time.perf_counter()
        try:
            self.canvas.connect()
        except ClientError as error:
            self.fire("connect", started, 0, error)
            return
        self.fire("connect", started, self.canvas.snapshot_bytes)

    def call(self, name: str, op: str, *args: Any) -> bool:
        """Make one change and wait for its ack or error (others' changes are applied meanwhile)."""
        if not self.canvas.connected:
            self.connect()
            if not self.canvas.connected:
                return False
        length = len(json.dumps(args))
        started = time.perf_counter()
        try:
            getattr(self.canvas, op)(*args)
        except ClientError as error:
            if error.code in EXPECTED_RACES:
                self.fire(f"{name} [{error.code}]", started, length)
            elif error.code in ("disconnected", "timeout"):
                self.fire(name, started, length, error)
                self.canvas.close()  # the next call connects again (and, with --durable, replays)
            else:
                self.fire(name, started, length, ServerError(f"{error.code}: {error.message}"))
            return False
        self.fire(name, started, length)
        return True

    def pick(self, kind: str | None = None) -> str | None:
        ids = [
            oid
            for oid, o in self.objects.items()
            if (kind is None and o.get("type") != "probe") or o.get("type") == kind
        ]
        return random.choice(ids) if ids else None

    # --- what people do -------------------------------------------------------------------

    @task(3)
    def draw_shape(self) -> None:
        self.created += 1
        shape = {
            "id": f"u{self.number}-{self.created}",
            "type": random.choice(["rect", "ellipse"]),
            "x": random.randint(0, 1600),
            "y": random.randint(0, 900),
            "w": random.randint(20, 300),
            "h": random.randint(20, 300),
            "fill": random.choice(COLOURS),
        }
        self.call("create", "create", shape)

    @task(4)
    def drag(self) -> None:
        """A burst of x/y updates to one object, as a pointer drag sends them (~60 per second)."""
        oid = self.pick()
        if oid is None:
            return
        x, y = self.objects[oid].get("x", 0), self.objects[oid].get("y", 0)
        for _ in range(random.randint(10, 30)):
            x, y = x + random.randint(-8, 8), y + random.randint(-8, 8)
            if not self.call("update (drag)", "update", oid, {"x": x, "y": y}):
                return
            gevent.sleep(1 / 60)

    @task(2)
    def recolour(self) -> None:
        oid = self.pick()
        if oid is not None:
            self.call("update (recolour)", "update", oid, {"fill": random.choice(COLOURS)})

    @task(2)
    def edit_text(self) -> None:
        oid = self.pick("text")
        if oid is None:
            self.created += 1
            oid = f"u{self.number}-{self.created}"
            label = {"id": oid, "type": "text", "x": random.randint(0, 1600), "y": random.randint(0, 900), "text": ""}
            if not self.call("create", "create", label):
                return
        words = " ".join(random.choice(["canvas", "sync", "shape", "note", "idea", "todo"]) for _ in range(4))
        self.call("update (text)", "update", oid, {"text": words})

    @task(1)
    def delete(self) -> None:
        oid = self.pick()
        if oid is not None:
            self.call("delete", "delete", oid)

    @task(1)
    def reconnect(self) -> None:
        self.canvas.close()
        self.connect()


class CrossReplicaWatcher(User):
    """How long an edit takes to reach the other replicas' clients (the relay, or the table).

    One of these per run: it edits a probe object on the first replica every 200 ms and
    keeps a watcher client open on every other replica; each edit counts once every
    watcher has its upsert, timed from the edit's ack. With one replica it stops at once.
    """

    fixed_count = 1
    wait_time = constant(0.2)

    def on_start(self) -> None:
        urls = user_urls(self.environment)
        if len(urls) < 2:
            raise StopUser()
        options = self.environment.parsed_options
        self.project = f"{options.project_prefix}-0"
        self.probe = f"probe-{random.getrandbits(32):08x}"
        self.seq = 0
        self.pending: dict[int, list[float]] = {}  # seq -> [acked at, watchers still waiting]
        self.writer = self._open(urls[0])
        self.watchers = [self._open(url) for url in urls[1:]]
        self.writer.create({"id": self.probe, "type": "probe", "seq": 0})
        self.readers = [gevent.spawn(self._watch, client) for client in self.watchers]

    def _open(self, base: str) -> BlockingClient:
        client = BlockingClient(base, self.project, token=token_for(self.environment, "load-watcher"), versions=(V1,))
        client.connect()
        return client

    def _watch(self, client: BlockingClient) -> None:
        # The watcher observes the frames themselves (when each upsert lands), so it reads them
        # as they come instead of looking at the copy.
        while True:
            try:
                messages = client.poll(timeout=None)
            except ClientError:
                return
            for message in messages:
                if message.get("op") != "upsert" or message["object"]["id"] != self.probe:
                    continue
                entry = self.pending.get(message["object"].get("seq"))
                if entry is None:
                    continue
                entry[1] -= 1
                if entry[1] == 0:
                    del self.pending[message["object"]["seq"]]
                    self.environment.events.request.fire(
                        request_type="WS",
                        name=CROSS_REPLICA,
                        response_time=max(0.0, time.perf_counter() - entry[0]) * 1000,
                        response_length=0,
                        exception=None,
                        context={"project": self.project},
                    )

    def on_stop(self) -> None:
        if not hasattr(self, "writer"):
            return  # stopped in on_start: one replica, nothing to watch
        gevent.killall(self.readers)  # first: a reader that met a closed socket would connect again
        for client in (self.writer, *self.watchers):
            client.close()

    @task
    def edit_probe(self) -> None:
        self.seq += 1
        self.writer.update(self.probe, {"seq": self.seq})
        self.pending[self.seq] = [time.perf_counter(), len(self.watchers)]


# --- the check at the end -------------------------------------------------------------------


def edit_statistics(environment: Environment) -> dict[str, Any]:
    """Acked-edit latency percentiles over every edit kind (connects excluded)."""
    combined = StatsEntry(environment.stats, "edits", "WS")
    for (name, _), entry in environment.stats.entries.items():
        if name.split(" [")[0] in EDIT_NAMES:
            combined.extend(entry)
    seconds = max(1e-9, (combined.last_request_timestamp or 0) - (combined.start_time or 0))
    return {
        "edits": combined.num_requests,
        "failures": combined.num_failures,
        "ops_per_s": round(combined.num_requests / seconds, 1),
        **{f"p{q}_ms": round(combined.get_response_time_percentile(q / 100), 2) for q in (50, 95, 99)},
        "fail_ratio": round(environment.stats.total.fail_ratio, 5),
    }


def cross_replica_statistics(environment: Environment) -> dict[str, Any]:
    """Ack on one replica to the upsert on every other (the CrossReplicaWatcher's samples)."""
    entry = environment.stats.entries.get((CROSS_REPLICA, "WS"))
    if entry is None or not entry.num_requests:
        return {"samples": 0}
    return {
        "samples": entry.num_requests,
        **{f"p{q}_ms": round(entry.get_response_time_percentile(q / 100), 2) for q in (50, 99)},
    }


@events.test_stop.add_listener
def _check_on_stop(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return  # the master (or the local runner) checks once
    options = environment.parsed_options
    projects = [f"{options.project_prefix}-{i}" for i in range(max(1, options.projects))]
    urls = check_urls(environment)
    result = check_convergence(
        urls, projects, options.convergence_timeout, token=token_for(environment, "load-check", "viewer")
    )
    result["stats"] = edit_statistics(environment)
    result["cross_replica"] = cross_replica_statistics(environment)
    environment.canvas_convergence = result  # type: ignore[attr-defined]
    if result["converged"]:
        print(
            f"canvas-sync: {len(urls)} replicas converged on {len(projects)} projects "
            f"{result['seconds']:.2f}s after the test stopped"
        )
    else:
        print(
            f"canvas-sync: replicas did NOT converge within {options.convergence_timeout:.0f}s: "
            f"projects {result['pending']}, {len(result['mismatches'])} mismatching objects shown in the report"
        )
        for mismatch in result["mismatches"][:5]:
            print("  " + json.dumps(mismatch, sort_keys=True)[:400])
    if options.convergence_report:
        Path(options.convergence_report).write_text(json.dumps(result, indent=2) + "\n")


@events.quitting.add_listener
def _exit_code(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    result = getattr(environment, "canvas_convergence", None)
    too_many_errors = environment.stats.total.fail_ratio > environment.parsed_options.max_error_ratio
    if result is None or not result["converged"] or too_many_errors:
        if too_many_errors:
            print(
                f"canvas-sync: failure ratio {environment.stats.total.fail_ratio:.4f} is above "
                f"--max-error-ratio {environment.parsed_options.max_error_ratio}"
            )
        environment.process_exit_code = 1
    else:
        environment.process_exit_code = 0
