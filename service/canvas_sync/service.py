"""``CanvasService``: one replica's projects and sockets, from start to shutdown.

It holds document lifecycle only, as Hocuspocus' hub does: loading projects (one load
shared by all who ask), evicting idle ones, a socket's whole life (open, serve, close),
dispatching each client message, and a shutdown in the right order: not ready, sockets
closed with 1001, the table's copies merged, final flush, read-back. Who may come in is
``admission.py``; presence is ``presence.PresenceHub``; the relay's handler is
``relay/bridge.py``; pulling other replicas' saves is ``pull.py``; saving is
``autosave.py``. ``wiring.build`` makes every part from ``Settings``.

Threads: the asyncio loop owns the projects, their connections, presence, the relay and
the pull cursors. The auto-save thread owns nothing but its pass: it takes states from
the dirty set and hands back what failed. Reads and writes of DynamoDB run in threads and
hand their results to the loop, which does every merge and every send.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from . import protocol
from .admission import Admission, Admitted
from .autosave import AutosaveWorker
from .config import Settings
from .connection import DELETED, FLOODING, GOING_AWAY, Connection, Flush, Socket
from .dirty import DirtySet
from .horizon import Freshness
from .lag import LoopLag
from .metrics import Metrics
from .model import HybridClock, encode_doc
from .presence import PRESENCE_FLUSH, PRESENCE_REFRESH, PresenceHub
from .projects import Edit, Forget, Project, Projects, Unknown, gc_paused
from .protocol import Auth, Create, Delete, Ping, ProtocolError, SetPresence, Update
from .pull import Puller
from .relay import Relay, RelayBridge
from .saved import SavedAcks
from .store import Store

log = logging.getLogger(__name__)

BINARY_REFUSED = protocol.error(ProtocolError("bad_message", "binary frames are not accepted; send JSON text"))


@dataclass(frozen=True)
class Fetch:
    """``receive``'s answer to a replay of an object memory has never seen: read it first."""

    object_id: str


class NotReady(Exception):
    """The table is not reachable yet, or shutdown has begun."""


class Background:
    """Tasks nobody awaits (socket writers, token renewals, unsubscribes): kept referenced
    until done, so the loop never drops one half-way, and awaited briefly on shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    def __len__(self) -> int:
        return len(self._tasks)


@dataclass(frozen=True)
class Parts:
    """Everything a replica is made of (``wiring.build`` makes them from ``Settings``)."""

    metrics: Metrics
    clock: HybridClock
    dirty: DirtySet
    projects: Projects
    store: Store
    admission: Admission
    presence: PresenceHub
    puller: Puller
    autosave: AutosaveWorker
    relay: Relay | None = None
    bridge: RelayBridge | None = None
    freshness: Freshness | None = None


class CanvasService:
    def __init__(self, settings: Settings, parts: Parts) -> None:
        self.settings = settings
        self.metrics, self.clock, self.dirty = parts.metrics, parts.clock, parts.dirty
        self.projects, self.store, self.admission = parts.projects, parts.store, parts.admission
        self.presence, self.puller, self.autosave = parts.presence, parts.puller, parts.autosave
        self.relay, self.bridge = parts.relay, parts.bridge
        self.freshness = parts.freshness
        self.ready = False
        self.shutting_down = False
        self.connections: set[Connection] = set()
        self.background = Background()
        self._loads: dict[str, asyncio.Future[Project]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._edit_counters = {cls: self.metrics.edits.labels(cls.__name__.lower()) for cls in (Create, Update, Delete)}
        self._replays = {o: self.metrics.replays.labels(o) for o in ("applied", "duplicate", "redated")}
        self.lag = LoopLag(settings.gather_lag)
        self.flush = Flush()
        """The sockets with messages to send at the end of this turn of the loop (all of them share it)."""
        self.saved_acks = SavedAcks(self.dirty, lambda: self.connections, self.metrics.saved_acks.inc)
        self.autosave.on_pass = self.saved_acks.after_pass
        self.autosave.on_saved = self._from_autosave
        self.puller.on_deleted = self.drop_project
        if self.bridge is not None:
            self.bridge.on_project_deleted = lambda pid, gen: self.drop_project(pid, gen, "relay")
        self._forgetting: set[str] = set()
        """Projects whose over-budget tombstones are being forgotten (one round at a time)."""
        self.metrics.bind(
            connections=lambda: len(self.connections),
            projects=lambda: len(self.projects.projects),
            dirty=lambda: self.dirty.counts()[1],
            quarantined=self.dirty.quarantined_count,
            oldest_unsaved=self.dirty.oldest_unsaved,
            worker_alive=lambda: 1.0 if self.autosave.alive else 0.0,
            ready=lambda: 1.0 if self.ready else 0.0,
            relay_connected=lambda: 1.0 if self.relay is not None and self.relay.healthy else 0.0,
        )

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.saved_acks.loop = asyncio.get_running_loop()
        self.autosave.start()
        self._loops = [
            asyncio.create_task(self._become_ready(), name="canvas-ready"),
            asyncio.create_task(self._housekeeping(), name="canvas-housekeeping"),
            asyncio.create_task(self.puller.run(), name="canvas-pull"),
            asyncio.create_task(self._tick(), name="canvas-tick"),
        ]
        if self.relay is not None:
            await self.relay.start()
            log.info("live relay on", extra={"event": "relay_on", "epoch": self.relay.epoch})
        if self.admission.verifier is None:
            log.warning(
                "authentication is OFF: anyone who reaches this replica may read and edit every project "
                "(CANVAS_AUTH=off is for development only)",
                extra={"event": "auth_off"},
            )
        if self.settings.dev_token_key:
            log.warning(
                "development tokens are handed out at /dev/token (CANVAS_DEV_TOKEN_KEY): never in production",
                extra={"event": "dev_tokens_on"},
            )

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
        for pid in self.projects.evict_idle(self.settings.project_idle_timeout):
            log.info("project evicted", extra={"event": "evicted", "project": pid})
            self.presence.forget(pid)
            if self.freshness is not None:
                self.freshness.forget(pid)
            if self.bridge is not None:
                self.background.spawn(self.bridge.evicted(pid), "canvas-unsubscribe")
        expired = 0
        for plan in self.projects.plan_forget():
            expired += self.projects.forget(plan.project, plan.expired)
            if plan.over and plan.project.id not in self._forgetting:
                self._forgetting.add(plan.project.id)
                self.background.spawn(self._forget_over_budget(plan), "canvas-forget")
        if expired:
            self.metrics.tombstones_forgotten.labels("expired").inc(expired)
            log.info("expired tombstones forgotten", extra={"event": "tombstones_expired", "objects": expired})

    async def _forget_over_budget(self, plan: Forget) -> None:
        """Forget the oldest tombstones beyond the budget: the head's horizon first (so no
        copy ever holds fewer deletes than its horizon says), then memory, then their items."""
        project = plan.project
        try:
            ok = await asyncio.to_thread(self.store.advance_horizon, project.id, project.gen, plan.horizon_ms)
            if not ok:
                self.drop_project(project.id, project.gen + 1, "head")
                return
            if self.projects.get(project.id) is not project:
                return
            forgotten = [s for s in plan.over if project.objects.get(s.id) is s]
            count = self.projects.forget(project, forgotten)
            self.metrics.tombstones_forgotten.labels("budget").inc(count)
            purged = await asyncio.to_thread(self.store.purge, project.id, [(s.id, encode_doc(s)) for s in forgotten])
            log.info(
                "tombstones beyond the budget forgotten",
                extra={
                    "event": "tombstones_forgotten",
                    "project": project.id,
                    "objects": count,
                    "purged": purged,
                    "horizon_ms": project.horizon_ms,
                },
            )
        except Exception as error:  # tried again at the next housekeeping
            log.warning(
                "forgetting tombstones failed",
                extra={"event": "forget_error", "project": project.id, "error": f"{type(error).__name__}: {error}"},
            )
        finally:
            self._forgetting.discard(project.id)

    def _from_autosave(self, tombstones: list[tuple[str, str]], fenced: dict[str, int]) -> None:
        """Called by the auto-save thread after a pass: the loop settles the tombstones it
        wrote, and drops the copies whose head refused the pass (their project was deleted)."""
        loop = self.saved_acks.loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._after_save, tombstones, fenced)
        except RuntimeError:  # the loop closed meanwhile
            pass

    def _after_save(self, tombstones: list[tuple[str, str]], fenced: dict[str, int]) -> None:
        if tombstones:
            self.projects.settled(tombstones)
        for pid, gen in fenced.items():
            self.drop_project(pid, gen + 1, "fenced")
            self.background.spawn(self._sweep(pid), "canvas-sweep")  # what that pass left, invisible, goes

    async def _tick(self) -> None:
        """Presence goes out at most every PRESENCE_FLUSH; hellos are answered; every
        PRESENCE_REFRESH remote presence expires and local presence is relayed again."""
        refreshed = time.monotonic()
        loop = asyncio.get_running_loop()
        while True:
            asleep = loop.time()
            await asyncio.sleep(PRESENCE_FLUSH)
            self.lag.observe(max(0.0, loop.time() - asleep - PRESENCE_FLUSH))  # how far behind the loop runs
            try:
                self.presence.flush()
                now = time.monotonic()
                if self.bridge is not None:
                    self.bridge.tick(now)
                if now - refreshed >= PRESENCE_REFRESH:
                    refreshed = now
                    self.presence.refresh(now)
            except Exception:  # one failure must not stop presence for good
                log.exception("presence tick failed")

    async def shutdown(self) -> bool:
        """Stop serving and save everything; True when nothing unsaved is left."""
        if self.shutting_down:
            return self._all_saved()
        self.shutting_down = True
        self.ready = False
        for task in self._loops:
            task.cancel()
        for conn in list(self.connections):
            conn.close(GOING_AWAY, "server shutting down")
        await self.background.wait(2.0)
        dirty = self.dirty.counts()[1]
        flushed = await self._final_flush(time.monotonic() + self.settings.shutdown_timeout)
        quarantined = self.dirty.quarantined()
        left = self.dirty.counts()[1] + len(quarantined)
        log.log(
            logging.INFO if flushed else logging.ERROR,
            "shutdown flush done" if flushed else "shutdown flush incomplete: unsaved objects remain",
            extra={"event": "shutdown_flush", "dirty_before": dirty, "unsaved": left, "quarantined": quarantined},
        )
        if self.relay is not None:
            await self.relay.stop()
        await asyncio.to_thread(self.store.close)
        return flushed

    def _all_saved(self) -> bool:
        return self.dirty.counts()[1] == 0 and self.dirty.quarantined_count() == 0

    async def _final_flush(self, deadline: float) -> bool:
        """Merge the table's copy of dirty objects, flush, read back, write again if behind.

        Merges happen here on the loop; the auto-save thread only saves.
        """
        try:  # a copy that fell behind is judged first: its saves wait until then
            await asyncio.wait_for(self.puller.judge_stale(), max(0.0, deadline - time.monotonic()) / 2)
        except Exception:
            log.exception("judging copies that fell behind failed; they stay unsaved")
        keys = self.dirty.keys()
        try:
            await self.puller.merge_from_table(keys)
        except Exception:
            log.exception("read before the final flush failed; flushing what memory holds")
        keys = self.dirty.keys()
        await asyncio.to_thread(self.autosave.stop, max(0.0, deadline - time.monotonic()))
        if keys and self.dirty.counts()[1] == 0:
            try:
                await self.puller.merge_from_table(keys)
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
        project = self.projects.get(project_id)
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
        if self.bridge is not None:  # before reading: what is relayed meanwhile is kept for after
            await self.bridge.before_load(project_id)
        loaded_at = self.clock.wall_ms()  # the change feed takes over from here

        def read_and_build() -> Project:  # in a thread: a big project never blocks the loop
            try:
                heads: dict[str, str] | None = self.store.heads([project_id])[project_id]
            except Exception as error:  # the puller then goes by the watermark's overlap alone
                log.warning(
                    "head read before a load failed",
                    extra={"event": "head_error", "project": project_id, "error": f"{type(error).__name__}: {error}"},
                )
                heads = None
            with gc_paused():
                loaded = self.store.load(project_id)  # its head (generation, horizon) is read after the items
                project = self.projects.build(project_id, loaded.states, loaded_at, loaded.gen, loaded.horizon_ms)
            project.loaded_heads = heads
            return project

        try:
            confirmed = time.monotonic()  # the copy is as fresh as the table when its read began
            built = await asyncio.to_thread(read_and_build)
            project = self.projects.install(built)
            if project is built and self.freshness is not None:
                self.freshness.confirm(project.id, confirmed)
        except Exception:
            self.metrics.project_loads.labels("error").inc()
            log.exception("project load failed", extra={"event": "load_failed", "project": project_id})
            if self.bridge is not None:
                await self.bridge.load_failed(project_id)
            raise
        if self.bridge is not None:
            self.bridge.loaded(project)
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

    # --- deleting a project ----------------------------------------------------------------

    async def delete_project(self, project_id: str) -> None:
        """Delete a project for real, on every replica, and leave its id empty.

        The head's generation goes up first (from then on no reader sees an item of an
        older one, whoever writes it: a replica partitioned, or mid-save, or holding
        unsaved changes cannot bring anything back); then this replica drops its copy (its
        sockets close with 4404) and tells the others over the relay (without it, each
        learns at its next read of the head); then every item of the partition but the
        head is deleted. Raises when the table cannot be reached (nothing changed then).
        """
        deleted_at = self.clock.now()[0]  # the new generation's horizon: nothing stamped before comes back
        gen = await asyncio.to_thread(self.store.bump_generation, project_id, deleted_at)
        self.drop_project(project_id, gen, "here")
        if self.bridge is not None:
            self.bridge.deleted(project_id, gen)
        log.info("project deleted", extra={"event": "project_deleted", "project": project_id, "gen": gen})
        if not await self._sweep(project_id):
            self.background.spawn(self._sweep_until_done(project_id), "canvas-sweep")

    async def _sweep(self, project_id: str) -> bool:
        """Delete the items of older generations than the head's; False when some remain."""
        started = time.perf_counter()
        try:
            deleted = await asyncio.to_thread(self.store.sweep, project_id)
        except Exception as error:  # invisible meanwhile: tried again
            log.warning(
                "sweeping a deleted project failed",
                extra={"event": "sweep_error", "project": project_id, "error": f"{type(error).__name__}: {error}"},
            )
            return False
        log.info(
            "deleted project swept",
            extra={
                "event": "swept",
                "project": project_id,
                "items": deleted,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        return True

    async def _sweep_until_done(self, project_id: str, attempts: int = 10) -> None:
        delay = 1.0
        for _ in range(attempts):
            await asyncio.sleep(delay)
            if await self._sweep(project_id):
                return
            delay = min(2 * delay, 60.0)

    def drop_project(self, project_id: str, gen: int, reason: str) -> None:
        """The project is deleted (its generation is now ``gen``): let go of an older copy
        held here, with everything unsaved of it; its sockets close with 4404."""
        project = self.projects.drop(project_id, gen)
        if project is None:
            return
        for conn in list(project.connections):
            if isinstance(conn, Connection):
                conn.close(DELETED, "project deleted")
        self.presence.forget(project_id)
        if self.freshness is not None:
            self.freshness.forget(project_id)
        if self.bridge is not None:
            self.background.spawn(self.bridge.dropped(project_id), "canvas-unsubscribe")
        self.metrics.project_drops.labels(reason).inc()
        log.info(
            "copy of a deleted project dropped",
            extra={"event": "project_dropped", "project": project_id, "gen": gen, "reason": reason},
        )

    # --- one socket's life --------------------------------------------------------------

    async def open(self, admitted: Admitted, subprotocol: str | None) -> Connection:
        """A connection to an admitted project, its snapshot queued first.

        Raises :class:`~canvas_sync.admission.Refusal` (429: too many connections),
        :class:`NotReady`, or the load's error; nothing is held then.
        """
        self.admission.reserve(admitted)
        try:
            # A load this socket starts reads the table after it opened; a held copy (or a load
            # already in flight) may be behind what other replicas saved before now.
            behind = self.projects.get(admitted.project) is not None or admitted.project in self._loads
            project = await self.project(admitted.project)
            if behind:
                await self.puller.refresh(project.id)
                project = await self.project(admitted.project)  # the same copy, unless it was dropped meanwhile
        except BaseException:
            self.admission.release(admitted)
            raise
        conn = Connection(
            self.settings.send_queue_size,
            self.settings.rate_limit,
            self.metrics.slow_clients.inc,
            batched=subprotocol in protocol.BATCHED,
            send_interval=self.settings.send_interval,
            saved_acks=subprotocol == protocol.V3,
            busy=self.lag.busy,
            flush=self.flush,
        )
        conn.project, conn.admitted = project, admitted
        conn.sub, conn.editor = admitted.sub, admitted.role.can_edit
        self.admission.watch_expiry(conn, admitted.identity)
        conn.gathering = project.gathering
        self.connections.add(conn)
        project.subscribe(conn)
        conn.send(self.snapshot(project))
        return conn

    async def serve(self, conn: Connection, socket: Socket) -> None:
        """Send and receive until the client leaves or the connection is closed."""
        writer = self.background.spawn(conn.pump(socket), "canvas-writer")
        reader = asyncio.create_task(self._read(conn, socket), name="canvas-reader")
        socket.listen(functools.partial(self._take, conn, socket))
        try:
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            socket.listen(None)
            reader.cancel()
            if not writer.done() and conn.close_code is None:
                writer.cancel()

    async def _read(self, conn: Connection, socket: Socket) -> None:
        while (data := await socket.receive()) is not None:
            await self._answer(conn, socket, data)

    async def _answer(self, conn: Connection, socket: Socket, data: str | bytes, fetch: Fetch | None = None) -> None:
        """One message the reader's way: it may wait for a read of the table, the peers'
        writers and the socket. ``fetch``: :meth:`receive` already asked for this read."""
        if isinstance(data, bytes):
            reply: str | Fetch | None = BINARY_REFUSED
        else:
            reply = fetch or self.receive(conn, data)
            if isinstance(reply, Fetch):  # this socket waits for the read; the others go on
                await self.fetch(conn.project, reply.object_id)
                reply = self.receive(conn, data, fetched=True)
        if isinstance(reply, str):
            await conn.reply(socket, reply, conn.ack_key)

    def _take(self, conn: Connection, socket: Socket, text: str) -> asyncio.Future[None] | None:
        """One message as it arrives, in the socket's read callback (``Socket.listen``):
        what :meth:`_answer` does, without a task switch, where nothing needs a wait; a
        replay of an object memory lacks goes to a task, which the next message waits for."""
        reply = self.receive(conn, text)
        if isinstance(reply, Fetch):
            return self.background.spawn(self._answer(conn, socket, text, reply), "canvas-replay")
        if isinstance(reply, str) and not conn.answer(socket, reply, conn.ack_key):
            conn.send(reply, conn.ack_key)  # backed up: the writer waits for the client
        return None

    async def fetch(self, project: Project, object_id: str) -> None:
        """Read one object from the table into memory (a replay to a replica behind it)."""
        try:
            await self.puller.merge_from_table([(project.id, object_id)])
        except Exception as error:  # then the replay applies to what memory has
            log.warning(
                "read before a replay failed",
                extra={
                    "event": "replay_read_error",
                    "project": project.id,
                    "error": f"{type(error).__name__}: {error}",
                },
            )

    def close(self, conn: Connection) -> None:
        """The socket is gone: forget the connection, its presence leaves, its slot frees."""
        project = conn.project
        self.connections.discard(conn)
        project.unsubscribe(conn)
        project.last_active = time.monotonic()
        self.presence.left(project, conn)
        self.admission.watch_expiry(conn, None)
        self.admission.release(conn.admitted)

    def snapshot(self, project: Project) -> str:
        """The first message of a connection: objects and who is here."""
        return protocol.snapshot(
            project.id, self.settings.replica_id, project.snapshot_jsons(), self.presence.snapshot(project.id)
        )

    # --- one client message ------------------------------------------------------------

    def receive(self, conn: Connection, text: str, fetched: bool = False) -> str | Fetch | None:
        """Dispatch one text frame and fan out to the others; returns the sender's reply (if any).

        Every frame spends from the connection's rate limit, malformed ones included. A
        replay of an object memory does not know returns :class:`Fetch`: the reader reads
        it from the table and hands the same frame in again, ``fetched``.
        """
        project = conn.project
        conn.ack_key = None
        if project.dropped:  # deleted: its socket is closing, nothing more is applied or relayed
            return None
        allowed = fetched or conn.allow_edit()
        try:
            command = protocol.parse(text, self.settings.max_object_bytes)
            if not allowed:
                raise self._rate_limited(command.req)
            conn.refused_in_row = 0
            if isinstance(command, Ping):
                return protocol.pong(command.req)
            if isinstance(command, SetPresence):
                self.presence.set(project, conn, command.presence, time.monotonic())
                return protocol.ack(command.req) if command.req is not None else None
            if isinstance(command, Auth):
                if self.admission.verifier is None:
                    raise ProtocolError("bad_message", "authentication is off on this replica", command.req)
                self.background.spawn(self.admission.renew(project.id, conn, command), "canvas-renew")
                return None
            if not conn.editor:
                raise ProtocolError("forbidden", "this token may view this project, not edit it", command.req)
            edit = self.projects.edit(project, command, fetched)
        except Unknown as unknown:
            return Fetch(unknown.object_id)
        except ProtocolError as error:
            if not allowed:
                error = self._rate_limited(error.req) if error.code != "rate_limited" else error
                conn.refused_in_row += 1
                if conn.refused_in_row >= self.settings.rate_limit_close_after:
                    conn.close(FLOODING, "kept sending after rate_limited")
            self.metrics.edit_errors.labels(error.code).inc()
            return protocol.error(error)
        self.fan_out(project, command, edit, conn)
        if edit.echo is not None:  # a replay: the sender's copy may be older than memory's
            conn.send(*edit.echo)
        conn.ack_key = command.id
        return protocol.change_ack(command.req, edit.stamp, conn.ledger.record(edit.version))

    def fan_out(
        self, project: Project, command: Create | Update | Delete, edit: Edit, sender: Connection | None
    ) -> None:
        """After an accepted change: count it, send it to the project's other clients and
        relay it. A socket's edits and the HTTP ops route (``resources.py``) share this."""
        self._edit_counters[type(command)].inc()
        if edit.broadcast is not None:
            project.broadcast(edit.broadcast, exclude=sender)
            if self.bridge is not None:
                self.bridge.edited(project.id, project.objects[command.id], project.gen)
        if command.stamp is not None:
            self._replays["redated" if edit.stamp != command.stamp else edit.replay].inc()

    def _rate_limited(self, req: str | None) -> ProtocolError:
        return ProtocolError("rate_limited", f"more than {self.settings.rate_limit:g} messages per second", req)

    def health(self) -> dict[str, Any]:
        status = "shutting_down" if self.shutting_down else ("ok" if self.ready else "starting")
        return {
            "relay": self.relay.status() if self.relay is not None else {"enabled": False},
            "replica": self.settings.replica_id,
            "status": status,
            "autosave": self.autosave.status(),
            "sync": self.puller.status(),
        }
