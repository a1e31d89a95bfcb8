"""``CanvasService``: one replica's parts and their lifetime.

It owns everything with a lifetime (state, store, auto-save thread, background tasks) so
that tests can run it in-process and ``serve`` can shut it down in the right order: not
ready, sockets closed with 1001, the table's copies merged, final flush, read-back.

Threads: the asyncio loop owns the projects, their connections and the sync cursors. The
auto-save thread owns nothing but its pass: it takes states from the dirty set and hands
back what failed. Reads and writes of DynamoDB run in threads and hand their results to
the loop, which does every merge and every send.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from . import protocol
from .autosave import AutosaveWorker
from .config import Settings
from .connection import GOING_AWAY, Connection
from .dirty import DirtySet
from .metrics import Metrics
from .model import HybridClock, Stamp
from .protocol import Create, Delete, Ping, ProtocolError, Update
from .state import CanvasState, Limits, Project, gc_paused
from .store import DynamoStore, Store, make_client
from .sync import SyncWorker

log = logging.getLogger(__name__)

CLAMP_LOG_EVERY = 60.0
"""Seconds between two log lines about clamped clock stamps (each one is counted)."""


class NotReady(Exception):
    """The table is not reachable yet, or shutdown has begun."""


class CanvasService:
    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self._clamp_logged = 0.0
        self.clock = HybridClock(
            settings.replica_id,
            offset_ms=settings.clock_offset_ms,
            max_drift_ms=int(settings.max_clock_drift * 1000),
            on_clamp=self._clock_clamped,
        )
        self.dirty = DirtySet()
        limits = Limits(
            max_objects=settings.max_objects_per_project,
            max_object_bytes=settings.max_object_bytes,
            max_stored_object_bytes=settings.max_stored_object_bytes,
            max_tombstones=settings.max_tombstones_per_project,
            tombstone_ttl_ms=int(settings.tombstone_ttl * 1000),
        )
        self.state = CanvasState(self.clock, limits, self.dirty)
        self.store: Store = store or DynamoStore(
            make_client(settings.dynamodb_endpoint, pool_size=2 * settings.save_concurrency + 4),
            settings.table,
            replica_id=settings.replica_id,
            concurrency=settings.save_concurrency,
            tombstone_ttl=settings.tombstone_ttl,
        )
        self.store.observer = self.metrics.observe_batch
        self.sync = SyncWorker(
            self.state,
            self.store,
            self.clock,
            self.metrics,
            settings.sync_interval,
            settings.sync_overlap,
            settings.reconcile_interval,
            max_backoff=settings.sync_max_backoff,
        )
        self.autosave = AutosaveWorker(
            self.dirty,
            self.store,
            self.clock,
            settings.autosave_interval,
            settings.autosave_max_backoff,
            self.metrics,
            contended=lambda: self.sync.contended,
        )
        self.sync.on_repair = self.autosave.wake
        self.ready = False
        self.shutting_down = False
        self.connections: set[Connection] = set()
        self._loads: dict[str, asyncio.Future[Project]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.writers: set[asyncio.Task[None]] = set()
        """Each connection's send task, awaited (briefly) on shutdown."""
        self._edit_counters = {cls: self.metrics.edits.labels(cls.__name__.lower()) for cls in (Create, Update, Delete)}
        self.metrics.bind(
            connections=lambda: len(self.connections),
            projects=lambda: len(self.state.projects),
            dirty=lambda: self.dirty.counts()[1],
            quarantined=self.dirty.quarantined_count,
            worker_alive=lambda: 1.0 if self.autosave.alive else 0.0,
            ready=lambda: 1.0 if self.ready else 0.0,
        )

    def _clock_clamped(self, stamp: Stamp) -> None:
        """A stamp too far ahead reached the clock (any thread): count it, log now and then."""
        self.metrics.clock_clamped.inc()
        now = time.monotonic()
        if now - self._clamp_logged >= CLAMP_LOG_EVERY:
            self._clamp_logged = now
            log.warning(
                "stamp far ahead of the wall clock; the clock absorbed only the bound",
                extra={
                    "event": "clock_clamped",
                    "stamp": list(stamp),
                    "wall_ms": self.clock.wall_ms(),
                    "max_drift_s": self.settings.max_clock_drift,
                },
            )

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.autosave.start()
        self._tasks = [
            asyncio.create_task(self._become_ready(), name="canvas-ready"),
            asyncio.create_task(self._housekeeping(), name="canvas-housekeeping"),
            asyncio.create_task(self.sync.run(), name="canvas-sync"),
        ]

    async def _become_ready(self) -> None:
        """Poll the table (creating it if configured) until it answers; then serve."""
        delay = 0.2
        while not self.shutting_down:
            try:
                if self.settings.create_table:
                    await asyncio.to_thread(self.store.create_table)
                if await asyncio.to_thread(self.store.table_ready):
                    self.ready = True
                    log.info("ready", extra={"event": "ready", "table": self.settings.table})
                    return
            except Exception as error:
                log.warning(
                    "table not reachable yet", extra={"event": "not_ready", "error": f"{type(error).__name__}: {error}"}
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _housekeeping(self) -> None:
        """Evict idle projects and forget expired tombstones, for as long as the replica runs."""
        period = min(self.settings.project_idle_timeout / 2, 10.0)
        while True:
            await asyncio.sleep(period)
            try:
                self.housekeeping()
            except Exception:  # one failure must not stop it for good
                log.exception("housekeeping failed")

    def housekeeping(self) -> None:
        for pid in self.state.evict_idle(self.settings.project_idle_timeout):
            log.info("project evicted", extra={"event": "evicted", "project": pid})
        if expired := self.state.expire_tombstones():
            log.info("expired tombstones forgotten", extra={"event": "tombstones_expired", "objects": expired})

    async def shutdown(self) -> bool:
        """Stop serving and save everything; True when nothing unsaved is left."""
        if self.shutting_down:
            return self._all_saved()
        self.shutting_down = True
        self.ready = False
        for task in self._tasks:
            task.cancel()
        for conn in list(self.connections):
            conn.close(GOING_AWAY, "server shutting down")
        if self.writers:
            await asyncio.wait(self.writers, timeout=2.0)
        dirty = self.dirty.counts()[1]
        flushed = await self._final_flush(time.monotonic() + self.settings.shutdown_timeout)
        quarantined = self.dirty.quarantined()
        left = self.dirty.counts()[1] + len(quarantined)
        log.log(
            logging.INFO if flushed else logging.ERROR,
            "shutdown flush done" if flushed else "shutdown flush incomplete: unsaved objects remain",
            extra={"event": "shutdown_flush", "dirty_before": dirty, "unsaved": left, "quarantined": quarantined},
        )
        await asyncio.to_thread(self.store.close)
        return flushed

    def _all_saved(self) -> bool:
        return self.dirty.counts()[1] == 0 and self.dirty.quarantined_count() == 0

    async def _final_flush(self, deadline: float) -> bool:
        """Merge the table's copy of dirty objects, flush, read back, write again if behind.

        Merges happen here on the loop; the auto-save thread only saves.
        """
        keys = self.dirty.keys()
        try:
            await self.sync.merge_from_table(keys)
        except Exception:
            log.exception("read before the final flush failed; flushing what memory holds")
        keys = self.dirty.keys()
        await asyncio.to_thread(self.autosave.stop, max(0.0, deadline - time.monotonic()))
        if keys and self.dirty.counts()[1] == 0:
            try:
                await self.sync.merge_from_table(keys)
            except Exception:
                log.exception("read-back after the final flush failed")
            if self.dirty.counts()[1]:  # whatever marked them: the table is behind memory
                log.info(
                    "table behind after the final flush; writing again",
                    extra={"event": "shutdown_repair", "objects": self.dirty.counts()[1]},
                )
                await asyncio.to_thread(self.autosave.stop, max(0.0, deadline - time.monotonic()))
        return self._all_saved()

    # --- projects -----------------------------------------------------------------------

    async def project(self, project_id: str) -> Project:
        """The project in memory, loading it on a cache miss (one load shared by all)."""
        if self.shutting_down or not self.ready:
            raise NotReady()
        project = self.state.get(project_id)
        if project is not None:
            project.last_active = time.monotonic()
            return project
        future = self._loads.get(project_id)
        if future is None:
            future = asyncio.ensure_future(self._load(project_id))
            self._loads[project_id] = future
            future.add_done_callback(lambda _: self._loads.pop(project_id, None))
        return await asyncio.shield(future)

    async def _load(self, project_id: str) -> Project:
        start = time.perf_counter()
        loaded_at = self.clock.wall_ms()  # the change feed takes over from here

        def read_and_build() -> Project:  # in a thread: a big project never blocks the loop
            try:
                heads: dict[str, str] | None = self.store.heads([project_id])[project_id]
            except Exception as error:  # sync then goes by the watermark's overlap alone
                log.warning(
                    "head read before a load failed",
                    extra={"event": "head_error", "project": project_id, "error": f"{type(error).__name__}: {error}"},
                )
                heads = None
            with gc_paused():
                project = self.state.build(project_id, self.store.load_project(project_id), loaded_at)
            project.loaded_heads = heads
            return project

        try:
            project = self.state.install(await asyncio.to_thread(read_and_build))
        except Exception:
            self.metrics.project_loads.labels("error").inc()
            log.exception("project load failed", extra={"event": "load_failed", "project": project_id})
            raise
        seconds = time.perf_counter() - start
        self.metrics.project_loads.labels("success").inc()
        self.metrics.project_load_seconds.observe(seconds)
        log.info(
            "project loaded",
            extra={
                "event": "loaded",
                "project": project_id,
                "objects": len(project.objects),
                "ms": round(seconds * 1000, 1),
            },
        )
        return project

    # --- one client message ------------------------------------------------------------

    def handle(self, project: Project, conn: Connection, text: str) -> str:
        """Apply one text frame and fan out to the others; returns the sender's reply.

        Every frame spends from the connection's rate limit, malformed ones included.
        """
        allowed = conn.allow_edit()
        try:
            command = protocol.parse(text, self.settings.max_object_bytes)
            if not allowed:
                raise self._rate_limited(command.req)
            if isinstance(command, Ping):
                return protocol.pong(command.req)
            fanout = self.state.apply(project, command)
        except ProtocolError as error:
            if not allowed and error.code != "rate_limited":
                error = self._rate_limited(error.req)
            self.metrics.edit_errors.labels(error.code).inc()
            return protocol.error(error)
        self._edit_counters[type(command)].inc()
        if fanout is not None:
            project.broadcast(fanout, exclude=conn)
        return protocol.ack(command.req)

    def _rate_limited(self, req: str | None) -> ProtocolError:
        return ProtocolError("rate_limited", f"more than {self.settings.rate_limit:g} messages per second", req)

    def health(self) -> dict[str, Any]:
        status = "shutting_down" if self.shutting_down else ("ok" if self.ready else "starting")
        return {
            "replica": self.settings.replica_id,
            "status": status,
            "autosave": self.autosave.status(),
            "sync": self.sync.status(),
        }
