"""Prometheus metrics, one registry per service instance (tests run several in one process).

Names are part of the contract; labels never carry project ids (unbounded cardinality).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["API_ROUTES", "CONTENT_TYPE_LATEST", "EDIT_ERROR_CODES", "RELAY_KINDS", "Metrics"]

disable_created_metrics()  # the *_created series only double the scrape size

LAG_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
RELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.5, 5.0, 10.0)

EDIT_ERROR_CODES = (
    "bad_json",
    "bad_message",
    "conflict",
    "not_found",
    "too_large",
    "limit_exceeded",
    "rate_limited",
    "unauthorized",
    "forbidden",
)
"""The protocol's error codes: ``canvas_edit_errors_total{code}`` has a series for each from the start."""
API_ROUTES = {
    "list": "200",
    "ops": "200",
    "import": "200",
    "delete": "204",
    "version_create": "201",
    "versions": "200",
    "version": "200",
    "restore": "200",
}
"""The projects API's routes (``canvas_project_api_requests_total{route}``) and the status each
answers when it succeeds (its series exists from the start)."""
RELAY_KINDS = ("object", "too_big", "presence", "presence_all", "hello", "deleted", "bad")
"""``canvas_relay_received_total{kind}``: ``relay.core.Kind.label`` of each message kind but
heartbeats (not counted), and ``bad`` for what is not a relay message."""


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.edits = Counter("canvas_edits", "Accepted edits, by op", ["op"], registry=r)
        self.replays = Counter(
            "canvas_replays",
            "Changes sent again with their stamp (a client replaying after a reconnect), by outcome: "
            "applied (memory changed), duplicate (memory had it), redated (stamp ahead of the clock: a fresh one)",
            ["outcome"],
            registry=r,
        )
        for outcome in ("applied", "duplicate", "redated"):
            self.replays.labels(outcome)
        self.saved_acks = Counter(
            "canvas_saved_acks", "saved messages sent to canvas-sync.v3 sockets (at most one per pass each)", registry=r
        )
        self.edit_errors = Counter("canvas_edit_errors", "Refused client messages, by error code", ["code"], registry=r)
        self.connections = Gauge("canvas_websocket_connections", "Open WebSocket connections", registry=r)
        self.slow_clients = Counter(
            "canvas_slow_client_disconnects", "Connections closed (1013) for not keeping up", registry=r
        )
        self.projects_loaded = Gauge("canvas_projects_loaded", "Projects held in memory", registry=r)
        self.project_loads = Counter(
            "canvas_project_loads", "Cache-miss loads from DynamoDB, by outcome", ["outcome"], registry=r
        )
        self.project_drops = Counter(
            "canvas_project_drops",
            "Copies of deleted projects let go, by how this replica learned of the delete: here (it deleted "
            "the project), relay, head (a #head read), fenced (the head refused a save's announcement)",
            ["reason"],
            registry=r,
        )
        self.project_reloads = Counter(
            "canvas_project_reloads",
            "Copies read again whole because they fell behind while the project's horizon moved (horizon.py)",
            registry=r,
        )
        self.tombstones_forgotten = Counter(
            "canvas_tombstones_forgotten",
            "Tombstones forgotten, by why: expired (CANVAS_TOMBSTONE_TTL) or budget "
            "(beyond CANVAS_MAX_TOMBSTONES_PER_PROJECT; their items are deleted)",
            ["why"],
            registry=r,
        )
        self.project_load_seconds = Histogram(
            "canvas_project_load_duration_seconds", "Cache-miss load time", registry=r
        )
        self.dirty_objects = Gauge("canvas_dirty_objects", "Objects changed in memory and not yet saved", registry=r)
        self.oldest_unsaved_age = Gauge(
            "canvas_oldest_unsaved_change_age_seconds",
            "Age of the oldest change not yet in the table (quarantined ones included); 0 when all is saved",
            registry=r,
        )
        self.batches = Counter("canvas_autosave_batches", "BatchWriteItem calls, by outcome", ["outcome"], registry=r)
        self.objects_written = Counter("canvas_autosave_objects_written", "Items written to DynamoDB", registry=r)
        self.heads_written = Counter(
            "canvas_autosave_heads_written", "Per-project #head change markers updated after a save pass", registry=r
        )
        self.batch_seconds = Histogram(
            "canvas_autosave_batch_duration_seconds",
            "Duration of one successful BatchWriteItem call (failures are counted, not timed: their timeouts "
            "would read as latency)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.pass_seconds = Histogram(
            "canvas_autosave_pass_duration_seconds",
            "Duration of one auto-save pass that wrote something",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.last_success = Gauge(
            "canvas_autosave_last_success_timestamp_seconds",
            "Unix time of the last pass that saved everything it took (a pass with nothing to save counts; "
            "set at start)",
            registry=r,
        )
        self.sync_pulls = Counter(
            "canvas_sync_pulls",
            "Reads of other replicas' saves, by kind (heads: one per pass; feed; reconcile; before_save: "
            "contended objects read before writing them; refresh: a head read before a snapshot) and outcome",
            ["kind", "outcome"],
            registry=r,
        )
        self.heads_read = Counter(
            "canvas_sync_heads_read", "Project #head items read (one read unit each, consistent reads)", registry=r
        )
        self.sync_merged = Counter(
            "canvas_sync_objects_merged", "Objects whose state changed by merging what another save wrote", registry=r
        )
        self.sync_repairs = Counter(
            "canvas_sync_repairs", "Objects marked dirty because the table was behind memory (anti-entropy)", registry=r
        )
        self.sync_lag = Histogram(
            "canvas_sync_lag_seconds",
            "From a save on another replica to its arrival here",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.quarantined = Gauge(
            "canvas_autosave_quarantined_objects",
            "Objects the store refused outright (too large for an item): kept in memory, listed in /health",
            registry=r,
        )
        self.refused = Counter(
            "canvas_autosave_refused_objects",
            "Writes of one object the store refused outright (quarantined)",
            registry=r,
        )
        self.clock_clamped = Counter(
            "canvas_clock_clamped_stamps",
            "Stamps read from the table further ahead of the wall clock than CANVAS_MAX_CLOCK_DRIFT",
            registry=r,
        )
        self.relay_connected = Gauge(
            "canvas_relay_connected",
            "1 while the live relay (Redis/Valkey) is connected and hears its own heartbeat",
            registry=r,
        )
        self.relay_published = Counter("canvas_relay_published", "Messages published to the relay", registry=r)
        self.relay_received = Counter(
            "canvas_relay_received", "Relay messages received from other replicas, by kind", ["kind"], registry=r
        )
        self.relay_dropped = Counter(
            "canvas_relay_dropped",
            "Messages not published (reason: queue_full, publish_error); receivers see the gap and catch up",
            ["reason"],
            registry=r,
        )
        self.relay_gaps = Counter(
            "canvas_relay_gaps",
            "Losses detected: a sequence gap, a new epoch, a heartbeat ahead",
            ["reason"],
            registry=r,
        )
        self.relay_catch_ups = Counter(
            "canvas_relay_catch_ups",
            "Projects caught up from DynamoDB after a relay loss, by reason",
            ["reason"],
            registry=r,
        )
        self.relay_rebuilds = Counter(
            "canvas_relay_rebuilds", "Subscriptions rebuilt (an error, or our own heartbeat not heard)", registry=r
        )
        self.relay_lag = Histogram(
            "canvas_relay_lag_seconds",
            "From an edit's publish on another replica to its arrival here",
            buckets=RELAY_BUCKETS,
            registry=r,
        )
        self.presence_updates = Counter(
            "canvas_presence_updates",
            "Presence states sent to clients after coalescing (local and relayed)",
            registry=r,
        )
        self.refusals = Counter(
            "canvas_refusals",
            "Requests refused before they cost anything, by HTTP status (401, 403, 429)",
            ["status"],
            registry=r,
        )
        self.worker_alive = Gauge("canvas_autosave_worker_alive", "1 while the auto-save thread runs", registry=r)
        self.ready = Gauge("canvas_ready", "1 while /readyz answers 200", registry=r)
        self.api_requests = Counter(
            "canvas_project_api_requests",
            "Requests to the projects API (list, ops, import, delete, versions), by route and HTTP status",
            ["route", "status"],
            registry=r,
        )
        self.api_seconds = Histogram(
            "canvas_project_api_duration_seconds",
            "Time to answer a projects API request, by route",
            ["route"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.registry_writes = Counter(
            "canvas_registry_writes",
            "Registry entries written (a project at most every CANVAS_REGISTRY_INTERVAL), by outcome",
            ["outcome"],
            registry=r,
        )
        self.versions_created = Counter(
            "canvas_versions_created",
            "Versions written to the table, by kind (named, auto, before_restore)",
            ["kind"],
            registry=r,
        )
        self.version_bytes = Counter(
            "canvas_version_bytes_written", "Compressed bytes of the versions written", registry=r
        )
        self.versions_pruned = Counter(
            "canvas_versions_pruned", "Versions deleted to keep CANVAS_VERSION_RETENTION", registry=r
        )
        for route, status in API_ROUTES.items():
            self.api_requests.labels(route, status)
            self.api_seconds.labels(route)
        for outcome in ("success", "error"):
            self.registry_writes.labels(outcome)
        for kind in ("named", "auto", "before_restore"):
            self.versions_created.labels(kind)
        for op in ("create", "update", "delete"):
            self.edits.labels(op)
        for outcome in ("success", "error"):
            self.batches.labels(outcome)
            self.project_loads.labels(outcome)
            for kind in ("heads", "feed", "reconcile", "before_save", "refresh"):
                self.sync_pulls.labels(kind, outcome)
        for reason in ("here", "relay", "head", "fenced"):
            self.project_drops.labels(reason)
        for why in ("expired", "budget"):
            self.tombstones_forgotten.labels(why)
        for reason in ("queue_full", "publish_error"):
            self.relay_dropped.labels(reason)
        for reason in ("gap", "new_epoch", "heartbeat"):
            self.relay_gaps.labels(reason)
            self.relay_catch_ups.labels(reason)
        for reason in ("rebuild", "too_big"):
            self.relay_catch_ups.labels(reason)
        for status in ("401", "403", "429"):
            self.refusals.labels(status)
        for code in EDIT_ERROR_CODES:
            self.edit_errors.labels(code)
        for kind in RELAY_KINDS:
            self.relay_received.labels(kind)

    def observe_batch(self, outcome: str, seconds: float, written: int) -> None:
        self.batches.labels(outcome).inc()
        if outcome == "success":  # a failure's timeouts and retries are the outage, not latency
            self.batch_seconds.observe(seconds)
        if written:
            self.objects_written.inc(written)

    def bind(
        self,
        *,
        connections: Callable[[], float],
        projects: Callable[[], float],
        dirty: Callable[[], float],
        quarantined: Callable[[], float],
        oldest_unsaved: Callable[[], float | None],
        worker_alive: Callable[[], float],
        ready: Callable[[], float],
        relay_connected: Callable[[], float],
    ) -> None:
        """Gauges read live values at scrape time instead of being kept in step by hand."""
        self.connections.set_function(connections)
        self.projects_loaded.set_function(projects)
        self.dirty_objects.set_function(dirty)
        self.oldest_unsaved_age.set_function(lambda: _age(oldest_unsaved()))
        self.quarantined.set_function(quarantined)
        self.relay_connected.set_function(relay_connected)
        self.worker_alive.set_function(worker_alive)
        self.ready.set_function(ready)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _age(since: float | None) -> float:
    """Seconds since a wall-clock time; 0 for None (nothing waiting)."""
    return 0.0 if since is None else max(0.0, time.time() - since)
