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
package, and ``canvas_sync`` (installed) to mint tokens with ``--token-key``.

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
import websocket
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


def subprotocols(token: str | None, batched: bool = False) -> list[str] | None:
    offered = ["canvas-sync.v2"] if batched else ["canvas-sync.v1"] if token else []
    return [*offered, f"canvas-sync.bearer.{token}"] if token else offered or None


def messages(text: str) -> list[dict[str, Any]]:
    """A frame's messages: one, or (canvas-sync.v2) a JSON array of them."""
    data = json.loads(text)
    return data if isinstance(data, list) else [data]


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
        self.objects: dict[str, dict[str, Any]] = {}
        self.created = 0
        self.req = 0
        self.ws: websocket.WebSocket | None = None
        self.token = token_for(self.environment, f"load-user-{self.number}")
        self.connect()

    def on_stop(self) -> None:
        self.hang_up()

    def hang_up(self) -> None:
        """Close without waiting for the server's reply.

        websocket-client's ``close()`` waits for the reply inside a bare ``except: pass``,
        which would swallow the GreenletExit Locust uses to stop a user: the user would
        live on and the run would never end.
        """
        if self.ws is not None:
            try:
                self.ws.send_close()
            except (OSError, websocket.WebSocketException):
                pass
            self.ws.shutdown()
            self.ws = None

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
        url = self.base.replace("http", "ws", 1) + f"/ws/{self.project}"
        started = time.perf_counter()
        try:
            offered = subprotocols(self.token, self.environment.parsed_options.batched)
            self.ws = websocket.create_connection(url, timeout=10, subprotocols=offered)
            text = self.ws.recv()
            snapshot, *after = messages(text)  # v2: what came meanwhile may share its frame
        except (OSError, websocket.WebSocketException, ValueError) as error:
            self.ws = None
            self.fire("connect", started, 0, error)
            return
        self.objects = {o["id"]: o for o in snapshot["objects"]}
        for message in after:
            self.observe(message)
        self.fire("connect", started, len(text))

    def observe(self, message: dict[str, Any]) -> None:
        if message.get("op") == "upsert":
            self.objects[message["object"]["id"]] = message["object"]
        elif message.get("op") == "delete":
            self.objects.pop(message["id"], None)

    def call(self, name: str, message: dict[str, Any]) -> bool:
        """Send one edit, wait for its ack or error (other clients' changes are applied)."""
        if self.ws is None:
            self.connect()
            if self.ws is None:
                return False
        self.req += 1
        req = str(self.req)
        text = json.dumps({**message, "req": req})
        started = time.perf_counter()
        reply: dict[str, Any] | None = None
        try:
            self.ws.send(text)
            while reply is None:
                for message in messages(self.ws.recv()):  # what follows the reply in its frame counts too
                    if message.get("req") == req:
                        reply = message
                    else:
                        self.observe(message)
        except (OSError, websocket.WebSocketException, ValueError) as error:
            self.fire(name, started, len(text), error)
            self.ws = None
            return False
        if reply["op"] == "ack":
            self.fire(name, started, len(text))
            return True
        if reply.get("code") in EXPECTED_RACES:
            self.fire(f"{name} [{reply['code']}]", started, len(text))
            return False
        self.fire(name, started, len(text), ServerError(f"{reply.get('code')}: {reply.get('message')}"))
        return False

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
        oid = f"u{self.number}-{self.created}"
        shape = {
            "id": oid,
            "type": random.choice(["rect", "ellipse"]),
            "x": random.randint(0, 1600),
            "y": random.randint(0, 900),
            "w": random.randint(20, 300),
            "h": random.randint(20, 300),
            "fill": random.choice(COLOURS),
        }
        if self.call("create", {"op": "create", "object": shape}):
            self.objects[oid] = shape

    @task(4)
    def drag(self) -> None:
        """A burst of x/y updates to one object, as a pointer drag sends them (~60 per second)."""
        oid = self.pick()
        if oid is None:
            return
        x, y = self.objects[oid].get("x", 0), self.objects[oid].get("y", 0)
        for _ in range(random.randint(10, 30)):
            x, y = x + random.randint(-8, 8), y + random.randint(-8, 8)
            if not self.call("update (drag)", {"op": "update", "id": oid, "props": {"x": x, "y": y}}):
                return
            gevent.sleep(1 / 60)

    @task(2)
    def recolour(self) -> None:
        oid = self.pick()
        if oid is not None:
            self.call("update (recolour)", {"op": "update", "id": oid, "props": {"fill": random.choice(COLOURS)}})

    @task(2)
    def edit_text(self) -> None:
        oid = self.pick("text")
        if oid is None:
            self.created += 1
            oid = f"u{self.number}-{self.created}"
            label = {"id": oid, "type": "text", "x": random.randint(0, 1600), "y": random.randint(0, 900), "text": ""}
            if not self.call("create", {"op": "create", "object": label}):
                return
            self.objects[oid] = label
        words = " ".join(random.choice(["canvas", "sync", "shape", "note", "idea", "todo"]) for _ in range(4))
        self.call("update (text)", {"op": "update", "id": oid, "props": {"text": words}})

    @task(1)
    def delete(self) -> None:
        oid = self.pick()
        if oid is not None and self.call("delete", {"op": "delete", "id": oid}):
            self.objects.pop(oid, None)

    @task(1)
    def reconnect(self) -> None:
        self.hang_up()
        self.connect()


class CrossReplicaWatcher(User):
    """How long an edit takes to reach the other replicas' clients (the relay, or the table).

    One of these per run: it edits a probe object on the first replica every 200 ms and
    keeps a watcher socket open on every other replica; each edit counts once every
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
        self._call({"op": "create", "object": {"id": self.probe, "type": "probe", "seq": 0}})
        self.readers = [gevent.spawn(self._watch, ws) for ws in self.watchers]

    def _open(self, base: str) -> websocket.WebSocket:
        url = base.replace("http", "ws", 1) + f"/ws/{self.project}"
        token = token_for(self.environment, "load-watcher")
        ws = websocket.create_connection(url, timeout=10, subprotocols=subprotocols(token))
        ws.recv()  # the snapshot
        return ws

    def _call(self, message: dict[str, Any]) -> None:
        self.writer.send(json.dumps({**message, "req": "probe"}))
        while json.loads(self.writer.recv()).get("req") != "probe":
            pass

    def _watch(self, ws: websocket.WebSocket) -> None:
        while True:
            try:
                message = json.loads(ws.recv())
            except (OSError, websocket.WebSocketException, ValueError):
                return
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
        for ws in (self.writer, *self.watchers):
            ws.shutdown()
        gevent.killall(self.readers)

    @task
    def edit_probe(self) -> None:
        self.seq += 1
        self._call({"op": "update", "id": self.probe, "props": {"seq": self.seq}})
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
