"""The Quart application: WebSocket and HTTP endpoints over one :class:`CanvasService`.

The service object owns everything with a lifetime (state, store, auto-save thread,
background tasks) so that tests can run it in-process and ``serve`` can shut it down in
the right order: not ready, sockets closed with 1001, final flush, then the server stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from quart import Quart, Response, send_from_directory, websocket

from . import protocol
from .autosave import AutosaveWorker
from .config import Settings
from .connection import GOING_AWAY, Connection
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .model import HybridClock
from .protocol import Create, Delete, Ping, ProtocolError, Update
from .state import CanvasState, Project, gc_paused
from .store import DynamoStore, StoreError, make_client
from .sync import SyncWorker

log = logging.getLogger(__name__)


class NotReady(Exception):
    """The table is not reachable yet, or shutdown has begun."""


class CanvasService:
    def __init__(self, settings: Settings, store: DynamoStore | None = None) -> None:
        self.settings = settings
        self.clock = HybridClock(settings.replica_id, offset_ms=settings.clock_offset_ms)
        self.state = CanvasState(self.clock, settings.max_objects_per_project, settings.max_object_bytes)
        self.metrics = Metrics()
        self.store = store or DynamoStore(
            make_client(settings.dynamodb_endpoint, pool_size=2 * settings.save_concurrency + 4),
            settings.table,
            replica_id=settings.replica_id,
            concurrency=settings.save_concurrency,
            tombstone_ttl=settings.tombstone_ttl,
        )
        self.store.observer = self.metrics.observe_batch
        self.autosave = AutosaveWorker(
            self.state, self.store, self.clock, settings.autosave_interval, settings.autosave_max_backoff, self.metrics
        )
        self.sync = SyncWorker(
            self.state, self.store, self.clock, self.metrics,
            settings.sync_interval, settings.sync_overlap, settings.reconcile_interval,
            on_repair=self.autosave.wake,
        )
        self.ready = False
        self.shutting_down = False
        self.connections: set[Connection] = set()
        self._loads: dict[str, asyncio.Future[Project]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._writers: set[asyncio.Task[None]] = set()
        self._edit_counters = {cls: self.metrics.edits.labels(cls.__name__.lower()) for cls in (Create, Update, Delete)}
        self.metrics.bind(
            connections=lambda: len(self.connections),
            projects=lambda: len(self.state.projects),
            dirty=lambda: self.state.dirty_counts()[1],
            worker_alive=lambda: 1.0 if self.autosave.alive else 0.0,
            ready=lambda: 1.0 if self.ready else 0.0,
        )

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.autosave.start()
        self._tasks = [
            asyncio.create_task(self._become_ready(), name="canvas-ready"),
            asyncio.create_task(self._evict_idle_projects(), name="canvas-evict"),
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
            except StoreError as error:
                log.warning("table not reachable yet", extra={"event": "not_ready", "error": str(error)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _evict_idle_projects(self) -> None:
        period = min(self.settings.project_idle_timeout / 2, 10.0)
        while True:
            await asyncio.sleep(period)
            for pid in self.state.evict_idle(self.settings.project_idle_timeout):
                log.info("project evicted", extra={"event": "evicted", "project": pid})

    async def shutdown(self) -> bool:
        """Stop serving and save everything; True when nothing unsaved is left."""
        if self.shutting_down:
            return self.state.dirty_counts()[1] == 0
        self.shutting_down = True
        self.ready = False
        for task in self._tasks:
            task.cancel()
        for conn in list(self.connections):
            conn.close(GOING_AWAY, "server shutting down")
        if self._writers:
            await asyncio.wait(self._writers, timeout=2.0)
        dirty = self.state.dirty_counts()[1]
        flushed = await asyncio.to_thread(self._final_flush, time.monotonic() + self.settings.shutdown_timeout)
        left = self.state.dirty_counts()[1]
        log.log(
            logging.INFO if flushed else logging.ERROR,
            "shutdown flush done" if flushed else "shutdown flush incomplete: unsaved objects remain",
            extra={"event": "shutdown_flush", "dirty_before": dirty, "unsaved": left},
        )
        await asyncio.to_thread(self.store.close)
        return flushed

    def _final_flush(self, deadline: float) -> bool:
        """Read the table's copy of dirty objects, flush, read back, repair (in a thread)."""
        try:
            self.sync.merge_from_table(self.state.dirty_keys())
        except Exception:
            log.exception("read before the final flush failed; flushing what memory holds")
        keys = self.state.dirty_keys()
        flushed = self.autosave.stop(max(0.0, deadline - time.monotonic()))
        if flushed and keys:
            try:
                repairs = self.sync.merge_from_table(keys)
            except Exception:
                log.exception("read-back after the final flush failed")
                repairs = 0
            if repairs:
                log.info("table behind after the final flush; writing again", extra={"event": "shutdown_repair", "objects": repairs})
                flushed = self.autosave.stop(max(0.0, deadline - time.monotonic()))
        return flushed

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
        watermark = self.clock.wall_ms()  # the change feed takes over from here
        def read_and_install() -> Project:  # in a thread: a big project never blocks the loop
            with gc_paused():
                return self.state.install(project_id, self.store.load_project(project_id), watermark_ms=watermark)

        try:
            project = await asyncio.to_thread(read_and_install)
        except StoreError:
            self.metrics.project_loads.labels("error").inc()
            log.exception("project load failed", extra={"event": "load_failed", "project": project_id})
            raise
        seconds = time.perf_counter() - start
        self.metrics.project_loads.labels("success").inc()
        self.metrics.project_load_seconds.observe(seconds)
        log.info("project loaded", extra={"event": "loaded", "project": project_id, "objects": len(project.objects), "ms": round(seconds * 1000, 1)})
        return project

    # --- one client message ------------------------------------------------------------

    def handle(self, project: Project, conn: Connection, text: str) -> str:
        """Apply one text frame and fan out to the others; returns the sender's reply."""
        try:
            command = protocol.parse(text, self.settings.max_object_bytes)
            if isinstance(command, Ping):
                return protocol.pong(command.req)
            if not conn.allow_edit():
                raise ProtocolError("rate_limited", f"more than {self.settings.rate_limit:g} edits per second", command.req)
            fanout = self.state.apply(project, command)
        except ProtocolError as error:
            self.metrics.edit_errors.labels(error.code).inc()
            return protocol.error(error)
        self._edit_counters[type(command)].inc()
        project.broadcast(fanout, exclude=conn)
        return protocol.ack(command.req)

    def health(self) -> dict[str, Any]:
        status = "shutting_down" if self.shutting_down else ("ok" if self.ready else "starting")
        return {"replica": self.settings.replica_id, "status": status, "autosave": self.autosave.status(),
                "sync": self.sync.status()}


def _json(body: Any, status: int = 200) -> Response:
    text = body if isinstance(body, str) else protocol.encode(body)
    return Response(text, status=status, content_type="application/json")


def _problem(status: int, code: str, message: str) -> Response:
    return _json({"error": code, "message": message}, status)


def _bad_project(project_id: str) -> Response:
    return _problem(400, "bad_project", f"project id {project_id!r} must match {protocol.ID_RE.pattern}")


def create_app(service: CanvasService) -> Quart:
    app = Quart("canvas_sync", static_folder="static", static_url_path="/static")
    app.extensions["canvas"] = service

    @app.before_serving
    async def _start() -> None:
        await service.start()

    @app.after_serving
    async def _stop() -> None:
        await service.shutdown()

    async def load(project_id: str) -> Project | Response:
        if not protocol.is_valid_id(project_id):
            return _bad_project(project_id)
        try:
            return await service.project(project_id)
        except NotReady:
            return _problem(503, "not_ready", "this replica is not serving (starting or shutting down)")
        except StoreError as error:
            return _problem(503, "store_unavailable", f"could not load the project from DynamoDB: {error}")

    @app.websocket("/ws/<project_id>")
    async def ws(project_id: str) -> Response | None:
        project = await load(project_id)
        if isinstance(project, Response):
            return project  # refuses the upgrade with this status
        await websocket.accept()
        ws_obj = websocket._get_current_object()
        conn = Connection(service.settings.send_queue_size, service.settings.rate_limit, service.metrics.slow_clients.inc)
        service.connections.add(conn)
        project.connections.add(conn)
        conn.send(protocol.snapshot(project.id, service.settings.replica_id, project.snapshot_jsons()))
        writer = asyncio.create_task(conn.pump(ws_obj))
        service._writers.add(writer)

        async def read() -> None:
            while True:
                data = await ws_obj.receive()
                if isinstance(data, bytes):
                    reply = protocol.error(ProtocolError("bad_message", "binary frames are not accepted; send JSON text"))
                else:
                    reply = service.handle(project, conn, data)
                await conn.reply(ws_obj, reply)

        reader = asyncio.create_task(read())
        try:
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            if not writer.done() and conn.close_code is None:
                writer.cancel()
            service._writers.discard(writer)
            service.connections.discard(conn)
            project.connections.discard(conn)
            project.last_active = time.monotonic()
        return None

    @app.get("/projects/<project_id>/objects")
    async def objects(project_id: str) -> Response:
        project = await load(project_id)
        if isinstance(project, Response):
            return project
        body = f'{{"objects":[{",".join(project.snapshot_jsons())}],"project":{protocol.encode(project.id)}}}'
        return _json(body)

    @app.get("/projects/<project_id>/status")
    async def status(project_id: str) -> Response:
        if not protocol.is_valid_id(project_id):
            return _bad_project(project_id)
        project = service.state.get(project_id)
        return _json(
            {
                "project": project_id,
                "loaded": project is not None,
                "connections": len(project.connections) if project else 0,
                "objects": len(project.views) if project else 0,
                "dirty_objects": service.state.project_dirty(project_id),
                "last_save_at": project.last_save_at if project else None,
            }
        )

    @app.get("/")
    async def page() -> Response:
        """The demo canvas (static/index.html); the project comes from ?project=."""
        return await send_from_directory(app.static_folder, "index.html")

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "alive"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if service.ready and not service.shutting_down:
            return _json({"status": "ready"})
        return _json({"status": "shutting_down" if service.shutting_down else "starting"}, 503)

    @app.get("/health")
    async def health() -> Response:
        return _json(service.health())

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), content_type=CONTENT_TYPE_LATEST)

    @app.errorhandler(404)
    async def not_found(_: Exception) -> Response:
        return _problem(404, "not_found", "no such endpoint")

    return app

