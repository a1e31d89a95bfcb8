"""Every part of a replica, made from ``Settings`` in one place.

Tests pass a store (``MemoryStore``) and a relay transport (``MemoryBroker``) of their own;
everything else is made as ``canvas-sync serve`` makes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .admission import Admission
from .auth import ConnectionLimits, Keys, Verifier
from .autosave import AutosaveWorker
from .config import AuthMode, Settings
from .dirty import DirtySet
from .horizon import Freshness
from .metrics import Metrics
from .model import HybridClock, Stamp
from .presence import PresenceHub, Roster
from .projects import Limits, Projects
from .pull import Puller, RelayPace
from .relay import RedisTransport, Relay, RelayBridge, Transport
from .service import CanvasService, Parts
from .store import DynamoStore, Store, make_client

log = logging.getLogger(__name__)

CLAMP_LOG_EVERY = 60.0
"""Seconds between two log lines about clamped clock stamps (each one is counted)."""


def build(settings: Settings, store: Store | None = None, relay_transport: Transport | None = None) -> CanvasService:
    metrics = Metrics()
    clock = HybridClock(
        settings.replica_id, offset_ms=settings.clock_offset_ms, max_drift_ms=int(settings.max_clock_drift * 1000)
    )
    clock.on_clamp = _clamp_logger(metrics, clock, settings.max_clock_drift)
    dirty = DirtySet()
    limits = Limits(
        max_objects=settings.max_objects_per_project,
        max_object_bytes=settings.max_object_bytes,
        max_stored_object_bytes=settings.max_stored_object_bytes,
        max_tombstones=settings.max_tombstones_per_project,
        tombstone_ttl_ms=int(settings.tombstone_ttl * 1000),
        tombstone_grace_ms=int(settings.tombstone_grace * 1000),
    )
    projects = Projects(clock, limits, dirty, repair_grace_ms=repair_grace_ms(settings))
    if store is None:
        store = DynamoStore(
            make_client(settings.dynamodb_endpoint, pool_size=3 * settings.save_concurrency + 4),
            settings.table,
            replica_id=settings.replica_id,
            concurrency=settings.save_concurrency,
            tombstone_ttl=settings.tombstone_ttl,
            gil_share=settings.save_gil_share,
            write_deadline=settings.tombstone_grace / 6,  # horizon.py: a pass lands within a sixth of the grace
        )
    store.observer = metrics.observe_batch
    admission = Admission(
        _verifier(settings),
        ConnectionLimits(
            settings.max_connections_per_subject,
            settings.max_connections_per_address,
            settings.max_connections_per_project,
        ),
        metrics,
        origins=settings.origins,
        query_token=settings.auth_query_token,
        leeway=settings.auth_leeway,
    )
    if relay_transport is None and settings.redis_url:
        password = settings.redis_password.get_secret_value() if settings.redis_password else None
        relay_transport = RedisTransport(settings.redis_url, password=password)
    relay = None
    pace = None
    if relay_transport is not None:
        relay = Relay(
            relay_transport,
            settings.replica_id,
            metrics,
            heartbeat=settings.relay_heartbeat,
            queue_size=settings.relay_queue_size,
        )
        pace = RelayPace(
            healthy=lambda: relay.healthy,
            heads_interval=settings.relay_heads_interval,
            reconcile_interval=settings.relay_reconcile_interval,
            catch_up_window=2 * settings.autosave_interval + settings.sync_overlap,
        )
    freshness = Freshness(stale_after=settings.tombstone_grace / 3)
    _check_grace(settings, freshness.stale_after)
    presence = PresenceHub(Roster(settings.replica_id), projects.get, metrics, relay)
    puller = Puller(
        projects,
        store,
        clock,
        metrics,
        settings.sync_interval,
        settings.sync_overlap,
        settings.reconcile_interval,
        max_backoff=settings.sync_max_backoff,
        relay=pace,
        freshness=freshness,
        cut_off_after=max(settings.tombstone_ttl - settings.tombstone_grace, settings.tombstone_grace / 3),
    )
    autosave = AutosaveWorker(
        dirty,
        store,
        clock,
        settings.autosave_interval,
        settings.autosave_max_backoff,
        metrics,
        contended=lambda: puller.contended,
        hold=freshness.stale,
    )
    puller.on_repair = autosave.wake
    bridge = None
    if relay is not None:
        bridge = RelayBridge(relay, projects, dirty, presence, puller)
        relay.handler = bridge
    parts = Parts(
        metrics, clock, dirty, projects, store, admission, presence, puller, autosave, relay, bridge, freshness
    )
    return CanvasService(settings, parts)


def _check_grace(settings: Settings, stale_after: float) -> None:
    """Say so at start when the tombstone grace is too short for how often heads are read:
    copies would count as stale between two reads (their saves wait for the next one), or a
    delete could be forgotten before a replica that keeps up has pulled it (horizon.py)."""
    reads = max(settings.sync_interval, settings.relay_heads_interval if settings.redis_url else 0.0)
    if stale_after < 2 * reads or settings.tombstone_grace < 2 * settings.sync_overlap:
        log.warning(
            "CANVAS_TOMBSTONE_GRACE is short for how often this replica reads the heads of its projects",
            extra={
                "event": "grace_short",
                "tombstone_grace": settings.tombstone_grace,
                "head_reads_every_s": reads,
                "sync_overlap": settings.sync_overlap,
            },
        )


def _verifier(settings: Settings) -> Verifier | None:
    if settings.auth == AuthMode.off:
        return None
    secret = settings.auth_secret.get_secret_value().encode() if settings.auth_secret else None
    keys = Keys(jwks_url=settings.auth_jwks_url, secret=secret, algorithms=settings.algorithms)
    return Verifier(keys, settings.auth_audience, settings.auth_issuer, settings.auth_leeway)


def _clamp_logger(metrics: Metrics, clock: HybridClock, max_drift_s: float) -> Callable[[Stamp], None]:
    """A stamp too far ahead reached the clock (any thread): count it, log now and then."""
    logged = [float("-inf")]

    def clamped(stamp: Stamp) -> None:
        metrics.clock_clamped.inc()
        now = time.monotonic()
        if now - logged[0] >= CLAMP_LOG_EVERY:
            logged[0] = now
            log.warning(
                "stamp far ahead of the wall clock; the clock absorbed only the bound",
                extra={
                    "event": "clock_clamped",
                    "stamp": list(stamp),
                    "wall_ms": clock.wall_ms(),
                    "max_drift_s": max_drift_s,
                },
            )

    return clamped


def repair_grace_ms(settings: Settings) -> int:
    """How long a field another replica stamped may be missing from the table before this
    replica writes it back (``Projects._owed``): its origin's next save (one auto-save
    interval, and 2 s for the pass), but at most a second less than the change feed
    re-reads, so that if the origin died first, a later pull still finds the item behind."""
    return int(max(0.0, min(settings.autosave_interval + 2.0, settings.sync_overlap - 1.0)) * 1000)
