"""The chart's alerts and dashboard in a real Prometheus (Debian's ``prometheus``) scraping
two real replicas with the labels a ServiceMonitor gives them, under WebSocket traffic,
with DynamoDB Local, Redis and then every replica stopped, one at a time.

What an operator relies on, checked end to end: every rule is healthy and every metric it
names is scraped; every dashboard target returns data under normal traffic (the "Ready
replicas" one a 0, not No data, when every pod is down); nothing is pending, let alone
firing, on a healthy system (fresh pods, first edits); each fault fires its alert and only
its alert, and it resolves soon after the fault ends; a dropped socket is an INFO line.

The rules are the chart's own with every ``for:`` cut to a few seconds so that a fault
takes a minute or two, not ten; their real timings are promtool's to check
(tests/system/test_alert_rules.py). The latency thresholds are raised: a loaded 2-core test
machine is not what they are sized for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
import yaml
from canvas_sync.devtools.dynamodb_local import DynamoDBLocal, Unavailable
from canvas_sync.devtools.process import LocalProcess, free_port
from canvas_sync.devtools.redis_local import RedisServer
from canvas_sync.store import DynamoStore, make_client

from tests.helpers import OUTPUT, Replica, http_json, http_text, missing, wait_until
from tests.system.test_chart import CHART, FULLNAME, rules

pytestmark = [pytest.mark.dynamodb_local, pytest.mark.timeout(900)]

NAMESPACE = "canvas"
SHORT_FOR = "5s"
UNSAVED_AGE = 120
"""unsavedAgeSeconds for this run (its least): the rule fires at 60 s of age plus SHORT_FOR."""
AUTOSAVE = 5.0  # the replicas' CANVAS_AUTOSAVE_INTERVAL, set here so the environment cannot move it
VALUES = {
    "redis": {"enabled": True},
    "metrics": {
        "prometheusRule": {
            "enabled": True,
            "unsavedAgeSeconds": UNSAVED_AGE,
            "batchLatencyP99Seconds": 5,
            "relayLagP99Seconds": 2,
        }
    },
}
RATE_INTERVAL = "30s"
"""What the dashboard's $__rate_interval becomes here (Grafana: at least four scrapes)."""
NO_DATA_UNDER_NORMAL_TRAFFIC: dict[str, str] = {}
"""Dashboard targets (panel title: reason) allowed to return nothing while all is well.
None: every counter is pre-initialised, and sync lag is observed with a healthy relay too."""


# --- Prometheus ----------------------------------------------------------------------------


class Prometheus(LocalProcess):
    """Debian's prometheus server on loopback, scraping and evaluating every second."""

    name = "prometheus"

    def __init__(self, binary: str, folder: Path) -> None:
        super().__init__(folder / "prometheus.log")
        self.binary, self.folder, self.port = binary, folder, free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def configure(self, targets: dict[str, Replica], rule_spec: dict[str, Any]) -> None:
        """Scrape ``targets`` (pod name: replica) with a ServiceMonitor's target labels."""
        (self.folder / "rules.yaml").write_text(yaml.safe_dump(rule_spec))
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(self.folder / "rules.yaml")],
            "scrape_configs": [
                {
                    "job_name": f"serviceMonitor/{NAMESPACE}/{FULLNAME}/0",
                    "metrics_path": "/metrics",
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{replica.port}"],
                            "labels": {
                                "namespace": NAMESPACE,
                                "service": FULLNAME,
                                "pod": pod,
                                "container": "canvas-sync",
                                "endpoint": "http",
                                "job": "canvas-sync",  # the ServiceMonitor's jobLabel: app.kubernetes.io/name
                            },
                        }
                        for pod, replica in targets.items()
                    ],
                }
            ],
        }
        (self.folder / "prometheus.yml").write_text(yaml.safe_dump(config))

    def start(self) -> Prometheus:
        self.launch(
            [
                self.binary,
                f"--config.file={self.folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ]
        )
        self.wait_until(self._ready, 60)
        return self

    def _ready(self) -> bool:
        try:
            return http_text(f"{self.url}/-/ready", timeout=1).strip() != ""
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http_json(f"{self.url}/api/v1/{path}{query}", timeout=10)
        assert status == 200 and body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    def alerts(self, state: str | None = None) -> list[dict[str, Any]]:
        """Active alerts (pending and firing), or only those in ``state``."""
        found = self.api("alerts")["alerts"]
        return [a for a in found if state is None or a["state"] == state]

    def firing(self) -> set[str]:
        return {a["labels"]["alertname"] for a in self.alerts("firing")}


def shortened(spec: dict[str, Any]) -> dict[str, Any]:
    for group in spec["groups"]:
        for rule in group["rules"]:
            if rule.get("for", "0m") not in ("0m", "0s"):
                rule["for"] = SHORT_FOR
    return spec


# --- traffic ---------------------------------------------------------------------------------


class Traffic(threading.Thread):
    """Editors on both replicas (an object each, moved five times a second, and a cursor),
    and a client that drops its socket without a close frame every few seconds. They
    reconnect whenever a replica goes away."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True, name="traffic")
        self.urls = urls
        self.acks = 0
        self.drops = 0
        self._stopping = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    def stop(self) -> None:
        self._stopping.set()
        self.join(15)

    async def _main(self) -> None:
        editors = [self._editor(url, f"{n}-{i}") for n, url in enumerate(self.urls) for i in range(2)]
        await asyncio.gather(*editors, self._dropper())

    async def _editor(self, url: str, name: str) -> None:
        moves = 0
        while not self._stopping.is_set():
            try:
                async with websockets.connect(url, open_timeout=5, close_timeout=1) as ws:
                    await ws.recv()  # the snapshot
                    await ws.send(json.dumps({"op": "create", "object": {"id": name, "type": "rect", "x": 0}}))
                    reader = asyncio.create_task(self._read(ws))
                    try:
                        while not self._stopping.is_set() and not reader.done():
                            moves += 1
                            await ws.send(json.dumps({"op": "update", "id": name, "props": {"x": moves}}))
                            if moves % 5 == 0:
                                await ws.send(json.dumps({"op": "presence", "state": {"cursor": [moves, 1]}}))
                            await asyncio.sleep(0.2)
                    finally:
                        reader.cancel()
            except (OSError, websockets.WebSocketException):  # TimeoutError is an OSError
                await asyncio.sleep(0.5)

    async def _read(self, ws: Any) -> None:
        with contextlib.suppress(websockets.WebSocketException):
            async for text in ws:
                if '"op":"ack"' in text:
                    self.acks += 1

    async def _dropper(self) -> None:
        turn = 0
        while not self._stopping.is_set():
            turn += 1
            with contextlib.suppress(OSError, websockets.WebSocketException):
                ws = await websockets.connect(self.urls[turn % len(self.urls)], open_timeout=5)
                await ws.recv()
                ws.transport.abort()  # gone without a close frame, as a phone losing its network
                self.drops += 1
            await asyncio.sleep(3)


# --- the system under test ----------------------------------------------------------------------


class System:
    """DynamoDB Local (on disk, so that it can stop and start again), redis-server, two
    replicas, Prometheus and traffic."""

    def __init__(self, folder: Path, prometheus: str) -> None:
        self.folder = folder
        self.dynamodb = DynamoDBLocal(db_path=folder / "ddb", log_path=folder / "dynamodb-local.log")
        self.redis = RedisServer(log_path=folder / "redis.log")
        self.table = "prometheus_test"
        self.replicas: dict[str, Replica] = {}
        self.prometheus = Prometheus(prometheus, folder)
        self.traffic: Traffic | None = None

    def start(self) -> None:
        self.dynamodb.start()
        DynamoStore(make_client(self.dynamodb.endpoint), self.table).create_table()
        self.redis.start()
        for name in ("a", "b"):
            pod = f"{FULLNAME}-{name}"
            self.replicas[pod] = Replica.configure(
                pod,
                free_port(),
                endpoint=self.dynamodb.endpoint,
                table=self.table,
                log_path=self.folder / f"{pod}.log",
                auth="off",
                redis_url=self.redis.url,
                relay_heads_interval=2,
                shutdown_timeout=5,
                autosave_interval=AUTOSAVE,
            )
        self.prometheus.configure(self.replicas, shortened(rules(**VALUES)))
        self.prometheus.start()  # before the replicas: it sees them start
        for replica in self.replicas.values():
            replica.start()

    def start_traffic(self) -> Traffic:
        self.traffic = Traffic([r.ws_url("board") for r in self.replicas.values()])
        self.traffic.start()
        return self.traffic

    def stop(self) -> None:
        """Everything, whatever fails on the way: no process outlives the test."""
        try:
            if self.traffic is not None:
                self.traffic.stop()
        finally:
            for process in (*self.replicas.values(), self.prometheus, self.redis, self.dynamodb):
                with contextlib.suppress(Exception):
                    process.kill()


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    binary = shutil.which("prometheus")
    if binary is None:
        missing("the prometheus server is not installed (Debian package prometheus, as for promtool)")
    if shutil.which("redis-server") is None:
        missing("redis-server is not installed (Debian package redis-server)")
    OUTPUT.mkdir(exist_ok=True)
    running = System(tmp_path, binary)
    try:
        running.start()
    except BaseException as error:
        running.stop()
        if isinstance(error, Unavailable):
            missing(f"DynamoDB Local unavailable: {error}")
        raise
    yield running
    running.stop()
    for log in tmp_path.glob("*.log"):  # kept for a look after a failure
        shutil.copy(log, OUTPUT / f"prometheus-test-{log.name}")


# --- checks -----------------------------------------------------------------------------------


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expression) of every target, with the dashboard's variables filled in."""
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    variables = {"$namespace": NAMESPACE, "$service": FULLNAME, "$__rate_interval": RATE_INTERVAL}
    out = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(name, value)
            assert "$" not in expr, f"{panel['title']}: a variable this test does not know: {expr}"
            out.append((panel["title"], expr))
    return out


def has_data(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


def wait_for(what: str, predicate: Any, timeout: float) -> float:
    """Seconds until ``predicate()`` held (polled every half second)."""
    return wait_until(predicate, timeout=timeout, what=what, step=0.5)


def active_names(prometheus: Prometheus) -> set[str]:
    return {a["labels"]["alertname"] for a in prometheus.alerts()}


def ever_active(prometheus: Prometheus, seconds: float, names: str = ".+") -> list[str]:
    """Alerts pending or firing at any evaluation within the last ``seconds``."""
    found = prometheus.query(f'max_over_time(ALERTS{{alertname=~"{names}"}}[{max(1, round(seconds))}s])')
    return sorted({f"{s['metric']['alertname']} ({s['metric']['alertstate']})" for s in found})


def fault(
    system: System, name: str, expected: set[str], inject: Any, recover: Any, fire_within: float, resolve_within: float
) -> dict[str, Any]:
    """Inject a fault, wait for exactly ``expected`` to fire, recover, wait until no alert is
    active. Seconds from the fault to each alert firing, and from the recovery to none left."""
    prometheus = system.prometheus
    assert active_names(prometheus) == set(), f"before {name}: {prometheus.alerts()}"
    started = time.monotonic()
    first_fired: dict[str, float] = {}

    def all_fired() -> bool:
        for alert in prometheus.firing() & expected:
            first_fired.setdefault(alert, round(time.monotonic() - started, 1))
        return expected <= first_fired.keys()

    inject()
    wait_for(f"{sorted(expected)} to fire ({name})", all_fired, fire_within)
    assert prometheus.firing() == expected, f"{name}: one fault, one alert each: {prometheus.alerts('firing')}"
    for alert in prometheus.alerts("firing"):
        for text in alert["annotations"].values():
            assert text and "<no value>" not in text and "error executing template" not in text, (alert, text)
    lasted = time.monotonic() - started
    recovered = time.monotonic()
    recover()
    resolved = wait_for(f"every alert to resolve after {name}", lambda: not prometheus.alerts(), resolve_within)
    silent = ever_active(prometheus, lasted + (time.monotonic() - recovered), "|".join(sorted(NEVER_ON_FAULTS)))
    assert silent == [], f"{name} also raised {silent}"
    return {"fired_s": first_fired, "recovered_at_s": round(recovered - started, 1), "resolved_s": round(resolved, 1)}


NEVER_ON_FAULTS = {"CanvasSyncBatchLatencyHigh", "CanvasSyncDirtyBacklogGrowing", "CanvasSyncSyncLagHigh"}
"""An outage must not come back as a latency or backlog alert too (one page per fault)."""


def test_alerts_and_dashboard_in_a_real_prometheus(system: System) -> None:
    prometheus = system.prometheus

    # every rule evaluates, every metric it names is scraped
    wait_for("both targets up", lambda: len(prometheus.query('up{job="canvas-sync"} == 1')) == 2, 30)
    wait_for("both pods seen ready", lambda: has_data(prometheus.query("sum(canvas_ready) == 2")), 30)
    time.sleep(2)  # the pending CanvasSyncNoReadyReplicas from before they started is over
    started = time.monotonic()
    traffic = system.start_traffic()  # fresh pods, and their first edits

    def evaluated() -> bool:
        return all(r["health"] == "ok" for g in prometheus.api("rules")["groups"] for r in g["rules"])

    wait_for("the rules evaluated", evaluated, 10)
    for group in prometheus.api("rules")["groups"]:
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule
            for metric in set(re.findall(r"\bcanvas_[a-z_]+\b", rule["query"])):
                selector = f'{{__name__="{metric}", namespace="{NAMESPACE}", service="{FULLNAME}"}}'
                assert prometheus.query(f"count({selector})"), f"{rule['name']}: {metric} is not scraped"

    # the exposition is clean
    promtool = shutil.which("promtool")
    if promtool is not None:
        for replica in system.replicas.values():
            text = http_text(f"{replica.url}/metrics")
            checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
            assert checked.returncode == 0, checked.stdout + checked.stderr

    # normal traffic: every dashboard target returns data, nothing is pending or firing
    time.sleep(40)  # rate windows fill; relayed edits, saves and heads reads come and go
    assert traffic.acks > 100 and traffic.drops >= 5
    empty = [
        f"{title}: {expr}"
        for title, expr in dashboard_targets()
        if title not in NO_DATA_UNDER_NORMAL_TRAFFIC and not has_data(prometheus.query(expr))
    ]
    assert empty == [], "dashboard targets without data under normal traffic:\n" + "\n".join(empty)
    assert ever_active(prometheus, time.monotonic() - started) == [], "alerts on a healthy system"

    timings: dict[str, dict[str, float]] = {}

    # DynamoDB stopped: the warning, then (unsavedAgeSeconds) the critical one; both resolve
    timings["dynamodb"] = fault(
        system,
        "DynamoDB Local stopped",
        {"CanvasSyncDynamoDBFailing", "CanvasSyncUnsavedEditsStuck"},
        system.dynamodb.stop,
        system.dynamodb.start,
        fire_within=150,
        resolve_within=90,
    )
    fired = timings["dynamodb"]["fired_s"]
    assert fired["CanvasSyncDynamoDBFailing"] >= 55, "fired before a minute without any success"
    age = UNSAVED_AGE - 60 + int(SHORT_FOR.removesuffix("s"))  # the threshold, then the (shortened) for:
    # the oldest unsaved edit may predate the stop by up to one save interval (61.2 s was seen against 65)
    earliest = age - AUTOSAVE - 3
    assert earliest <= fired["CanvasSyncUnsavedEditsStuck"] <= age + 20, "not when the oldest edit is that old"

    # Redis stopped: the relay alert alone; edits still converge through the table
    timings["redis"] = fault(
        system, "redis-server stopped", {"CanvasSyncRelayDown"}, system.redis.stop, system.redis.start, 60, 60
    )

    # every replica stopped: critical, and the Ready replicas panel shows 0, not No data
    ready_panel = next(expr for title, expr in dashboard_targets() if title == "Ready replicas")

    def stop_all() -> None:
        for replica in system.replicas.values():
            assert replica.terminate(30) == 0  # SIGTERM: every edit saved first
        wait_for("the panel at 0", lambda: [float(s["value"][1]) for s in prometheus.query(ready_panel)] == [0.0], 30)

    def start_all() -> None:
        for replica in system.replicas.values():
            replica.start()

    timings["replicas"] = fault(
        system, "every replica stopped", {"CanvasSyncNoReadyReplicas"}, stop_all, start_all, 60, 60
    )
    print(f"\nalert timings (seconds from fault / from recovery): {json.dumps(timings)}")

    # a dropped socket is an INFO line, never an ERROR with a CancelledError traceback
    traffic.stop()
    for replica in system.replicas.values():
        assert replica.terminate(30) == 0
        records = [json.loads(line) for line in replica.logs().splitlines() if line.startswith("{")]
        assert [r for r in records if r.get("event") == "socket_dropped" and r["level"] == "INFO"], replica.name
        cancelled = [r for r in records if r["level"] == "ERROR" and "CancelledError" in json.dumps(r)]
        assert cancelled == [], cancelled[:2]
