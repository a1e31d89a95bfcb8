"""``CanvasService``: one replica's parts and their lifetime.

It owns everything with a lifetime (state, store, auto-save thread, background tasks) so
that tests can run it in-process and ``serve`` can shut it down in the right order: not
ready, sockets closed with 1001, the table's copies merged, final flush, read-back.

Threads: the asyncio loop owns the projects, their connections, presence, the relay and
the sync cursors. The auto-save thread owns nothing but its pass: it takes states from
the dirty set and hands back what failed. Reads and writes of DynamoDB run in threads and
hand their results to the loop, which does every merge and every send.

With ``CANVAS_REDIS_URL`` the service is also the relay's handler: it publishes each
edit's state, merges what other replicas relay, answers a hello with what only its
memory holds, and hands catch-ups to sync.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from . import protocol
from .auth import AuthError, ConnectionLimits, Identity, Keys, Role, Verifier, origin_allowed, role_for, token_from
from .autosave import AutosaveWorker
from .config import AuthMode, Settings
from .connection import FLOODING, FORBIDDEN, GOING_AWAY, UNAUTHORIZED, Connection
from .dirty import DirtySet
from .metrics import Metrics
from .model import HybridClock, ObjectState, Stamp
from .presence import Entry, Presence
from .protocol import Auth, Create, Delete, Ping, ProtocolError, Update
from .protocol import Presence as PresenceCommand
from .relay import Kind, Message, RedisTransport, Relay, Transport
from .state import Broadcast, CanvasState, Limits, Project, gc_paused
from .store import DynamoStore, Store, make_client
from .sync import RelayPace, SyncWorker

log = logging.getLogger(__name__)

CLAMP_LOG_EVERY = 60.0
"""Seconds between two log lines about clamped clock stamps (each one is counted)."""
PRESENCE_FLUSH = 0.05
"""Presence updates go out at most this often per client (20 a second), the latest one only."""
PRESENCE_REFRESH = 5.0
"""Seconds between relaying every local client's presence (heals a lost update or leave)."""
HELLO_EVERY = 1.0
"""Seconds between two answers to hellos on one project (gaps can come in bursts)."""
EARLY_LIMIT = 10_000
"""Relayed states kept for a project while it loads; beyond it, catch up from the table."""


class NotReady(Exception):
    """The table is not reachable yet, or shutdown has begun."""


class Refusal(Exception):
    """A request refused before it costs anything: HTTP status, error code, a safe message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class CanvasService:
    def __init__(
        self, settings: Settings, store: Store | None = None, relay_transport: Transport | None = None
    ) -> None:
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
        self.verifier: Verifier | None = None
        if settings.auth == AuthMode.jwt:
            secret = settings.auth_secret.get_secret_value().encode() if settings.auth_secret else None
            algorithms = [a.strip() for a in settings.auth_algorithms.split(",")]
            keys = Keys(jwks_url=settings.auth_jwks_url, secret=secret, algorithms=algorithms)
            self.verifier = Verifier(keys, settings.auth_audience, settings.auth_issuer, settings.auth_leeway)
        self.limits = ConnectionLimits(
            settings.max_connections_per_subject,
            settings.max_connections_per_address,
            settings.max_connections_per_project,
        )
        self.presence = Presence(settings.replica_id, ttl=3 * PRESENCE_REFRESH)
        self._presence_pending: dict[tuple[str, str], Connection] = {}
        self._early: dict[str, list[ObjectState]] = {}
        self._hellos: set[str] = set()
        """Projects whose hello waits for an answer (given by the presence loop)."""
        self._hello_answered: dict[str, float] = {}
        self.relay: Relay | None = None
        if relay_transport is None and settings.redis_url:
            password = settings.redis_password.get_secret_value() if settings.redis_password else None
            relay_transport = RedisTransport(settings.redis_url, password=password)
        transport = relay_transport
        pace = None
        if transport is not None:
            self.relay = Relay(
                transport,
                settings.replica_id,
                self,
                self.metrics,
                heartbeat=settings.relay_heartbeat,
                queue_size=settings.relay_queue_size,
            )
            pace = RelayPace(
                healthy=lambda: self.relay is not None and self.relay.healthy,
                heads_interval=settings.relay_heads_interval,
                reconcile_interval=settings.relay_reconcile_interval,
                catch_up_window=2 * settings.autosave_interval + settings.sync_overlap,
            )
        self.sync = SyncWorker(
            self.state,
            self.store,
            self.clock,
            self.metrics,
            settings.sync_interval,
            settings.sync_overlap,
            settings.reconcile_interval,
            max_backoff=settings.sync_max_backoff,
            relay=pace,
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
            relay_connected=lambda: 1.0 if self.relay is not None and self.relay.healthy else 0.0,
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
            asyncio.create_task(self._presence_loop(), name="canvas-presence"),
        ]
        if self.relay is not None:
            await self.relay.start()
            log.info("live relay on", extra={"event": "relay_on", "epoch": self.relay.epoch})
        if self.verifier is None:
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
        for pid in self.state.evict_idle(self.settings.project_idle_timeout):
            log.info("project evicted", extra={"event": "evicted", "project": pid})
            self.presence.forget(pid)
            self._hello_answered.pop(pid, None)
            if self.relay is not None:
                task = asyncio.ensure_future(self.relay.unsubscribe(pid))
                self.writers.add(task)  # kept referenced until done
                task.add_done_callback(self.writers.discard)
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
        if self.relay is not None:  # before reading: what is relayed meanwhile is kept for after
            self._early[project_id] = []
            await self.relay.subscribe(project_id)
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
            self._early.pop(project_id, None)
            if self.relay is not None:
                await self.relay.unsubscribe(project_id)
            raise
        early = self._early.pop(project_id, None)
        if early:
            self._merge_relayed(project, early)
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

    # --- who may come in ----------------------------------------------------------------

    async def admit(
        self,
        project_id: str,
        headers: Any,
        subprotocols: list[str],
        query: Any,
        address: str | None,
    ) -> tuple[Identity | None, Role]:
        """The identity and role of a request on a project, or :class:`Refusal`; checked
        before an upgrade and before a load, so a refused request costs no read."""
        origin = headers.get("Origin")
        if not origin_allowed(origin, headers.get("Host"), self.settings.origins):
            raise self._refuse(
                403, "forbidden", "this browser origin may not open sockets here", project_id, address, origin, None
            )
        if self.verifier is None:
            return None, Role.EDITOR
        token = token_from(headers, subprotocols, query, self.settings.auth_query_token)
        if token is None:
            raise self._refuse(401, "unauthorized", "a token is required", project_id, address, origin, None)
        try:
            identity = await self.verifier.verify(token)
        except AuthError as error:
            raise self._refuse(401, "unauthorized", str(error), project_id, address, origin, None) from None
        role = role_for(identity.grants, project_id)
        if role is None:
            raise self._refuse(
                403, "forbidden", "the token grants nothing on this project", project_id, address, origin, identity.sub
            )
        return identity, role

    def _refuse(
        self,
        status: int,
        code: str,
        reason: str,
        project: str,
        address: str | None,
        origin: str | None,
        sub: str | None,
    ) -> Refusal:
        self.metrics.refusals.labels(str(status)).inc()
        log.info(
            "refused",
            extra={
                "event": "refused",
                "status": status,
                "reason": reason,
                "project": project,
                "sub": sub,
                "address": address,
                "origin": origin,
            },
        )
        return Refusal(status, code, reason)

    def reserve(self, identity: Identity | None, address: str | None, project_id: str) -> None:
        """Count one more connection, or :class:`Refusal` (429) when it does not fit."""
        sub = identity.sub if identity else None
        why = self.limits.refusal(sub, address, project_id)
        if why is not None:
            raise self._refuse(429, "too_many_connections", why, project_id, address, None, sub)
        self.limits.opened(sub, address, project_id)

    def release(self, identity: Identity | None, address: str | None, project_id: str) -> None:
        self.limits.closed(identity.sub if identity else None, address, project_id)

    def watch_expiry(self, conn: Connection, identity: Identity | None) -> None:
        """Close the socket (4401) when its token expires, leeway included."""
        if conn.expiry is not None:
            conn.expiry.cancel()
            conn.expiry = None
        if identity is None:
            return
        delay = identity.expires_at + self.settings.auth_leeway - time.time()
        conn.expiry = asyncio.get_running_loop().call_later(max(0.0, delay), conn.close, UNAUTHORIZED, "token expired")

    async def renew(self, project: Project, conn: Connection, command: Auth) -> None:
        """``{"op":"auth"}``: a new token for the same subject moves the expiry; an invalid one
        closes the socket with 4401, one without this project's grant with 4403."""
        assert self.verifier is not None
        try:
            identity = await self.verifier.verify(command.token)
        except AuthError as error:
            self._refuse(401, "unauthorized", str(error), project.id, None, None, conn.sub)
            conn.close(UNAUTHORIZED, "invalid token")
            return
        if identity.sub != conn.sub:
            self._refuse(
                401, "unauthorized", "a renewal must be for the same subject", project.id, None, None, identity.sub
            )
            conn.close(UNAUTHORIZED, "a renewal must be for the same subject")
            return
        role = role_for(identity.grants, project.id)
        if role is None:
            self._refuse(
                403,
                "forbidden",
                "the renewed token grants nothing on this project",
                project.id,
                None,
                None,
                identity.sub,
            )
            conn.close(FORBIDDEN, "no grant for this project")
            return
        conn.editor = role == Role.EDITOR
        self.watch_expiry(conn, identity)
        conn.send(protocol.ack(command.req))

    # --- one client message ------------------------------------------------------------

    def handle(self, project: Project, conn: Connection, text: str) -> str | None:
        """Apply one text frame and fan out to the others; returns the sender's reply (if any).

        Every frame spends from the connection's rate limit, malformed ones included.
        """
        allowed = conn.allow_edit()
        try:
            command = protocol.parse(text, self.settings.max_object_bytes)
            if not allowed:
                raise self._rate_limited(command.req)
            conn.refused_in_row = 0
            if isinstance(command, Ping):
                return protocol.pong(command.req)
            if isinstance(command, PresenceCommand):
                return self._presence(project, conn, command)
            if isinstance(command, Auth):
                if self.verifier is None:
                    raise ProtocolError("bad_message", "authentication is off on this replica", command.req)
                task = asyncio.ensure_future(self.renew(project, conn, command))
                self.writers.add(task)  # kept referenced until done
                task.add_done_callback(self.writers.discard)
                return None
            if not conn.editor:
                raise ProtocolError("forbidden", "this token may view this project, not edit it", command.req)
            fanout = self.state.apply(project, command)
        except ProtocolError as error:
            if not allowed:
                error = self._rate_limited(error.req) if error.code != "rate_limited" else error
                conn.refused_in_row += 1
                if conn.refused_in_row >= self.settings.rate_limit_close_after:
                    conn.close(FLOODING, "kept sending after rate_limited")
            self.metrics.edit_errors.labels(error.code).inc()
            return protocol.error(error)
        self._edit_counters[type(command)].inc()
        if fanout is not None:
            woken = project.broadcast(fanout, exclude=conn)
            conn.woke_peers = 0 < woken >= len(project.connections) - 1  # every peer was idle: not a busy board
            if self.relay is not None:
                self.relay.publish_state(project.id, project.objects[command.id])
        return protocol.ack(command.req)

    # --- presence -----------------------------------------------------------------------

    def snapshot(self, project: Project) -> str:
        """The first message of a connection: objects and who is here."""
        return protocol.snapshot(
            project.id, self.settings.replica_id, project.snapshot_jsons(), self.presence.snapshot(project.id)
        )

    def _presence(self, project: Project, conn: Connection, command: PresenceCommand) -> str | None:
        """Keep the latest state; it goes out with the next flush (at most 20 a second)."""
        if self.presence.set(project.id, conn.client_id, command.state, time.monotonic(), sub=conn.sub):
            self._presence_pending[(project.id, conn.client_id)] = conn
        return protocol.ack(command.req) if command.req is not None else None

    def left(self, project: Project, conn: Connection) -> None:
        """A connection closed: its presence leaves, here and on every replica."""
        self._presence_pending.pop((project.id, conn.client_id), None)
        if self.presence.leave(project.id, conn.client_id):
            project.broadcast(_presence_leave(conn.client_id))
            if self.relay is not None:
                self.relay.publish_presence(project.id, conn.client_id, None)

    def flush_presence(self) -> None:
        pending, self._presence_pending = self._presence_pending, {}
        for (pid, client), conn in pending.items():
            project, entry = self.state.get(pid), self.presence.entry(pid, client)
            if project is None or entry is None:
                continue
            project.broadcast(_presence(client, entry), exclude=conn)
            self.metrics.presence_updates.inc()
            if self.relay is not None:
                self.relay.publish_presence(pid, client, entry.state, entry.sub)

    async def _presence_loop(self) -> None:
        refreshed = time.monotonic()
        while True:
            await asyncio.sleep(PRESENCE_FLUSH)
            try:
                self.flush_presence()
                now = time.monotonic()
                if self._hellos:
                    self._answer_hellos(now)
                if now - refreshed >= PRESENCE_REFRESH:
                    refreshed = now
                    self._refresh_presence(now)
            except Exception:  # one failure must not stop presence for good
                log.exception("presence flush failed")

    def _refresh_presence(self, now: float) -> None:
        for pid, client in self.presence.expire(now):
            self._announce_leave(pid, client)
        if self.relay is not None:
            for pid in self.presence.projects():
                local = self.presence.local(pid)
                if local and self.state.get(pid) is not None:
                    self.relay.publish_presences(pid, local)

    def _announce_leave(self, pid: str, client: str) -> None:
        project = self.state.get(pid)
        if project is not None:
            project.broadcast(_presence_leave(client))

    # --- the relay's handler (on the loop) ------------------------------------------------

    def held(self) -> list[str]:
        return list(self.state.projects)

    def on_state(self, project_id: str, state: ObjectState, sent_ms: int) -> None:
        project = self.state.get(project_id)
        if project is not None:
            self._merge_relayed(project, [state])
            return
        early = self._early.get(project_id)
        if early is None:
            return
        if len(early) >= EARLY_LIMIT:
            early.clear()
            self.sync.catch_up(project_id)
        early.append(state)

    def _merge_relayed(self, project: Project, states: list[ObjectState]) -> None:
        result = self.state.merge_remote(project, states)
        for message in result.messages:
            project.broadcast(message)

    def on_presence(self, message: Message) -> None:
        project = self.state.get(message.project)
        if project is None:
            return
        now = time.monotonic()
        if message.kind == Kind.PRESENCE_ALL:
            gone, changed = self.presence.refresh(message.project, message.replica, message.state or {}, now)
        elif message.state is None:
            gone = [message.client] if self.presence.leave(message.project, message.client) else []
            changed = []
        else:
            gone = []
            changed = (
                [message.client]
                if self.presence.set(message.project, message.client, message.state, now, message.replica, message.sub)
                else []
            )
        for client in gone:
            project.broadcast(_presence_leave(client))
        for client in changed:
            entry = self.presence.entry(message.project, client)
            if entry is not None:
                project.broadcast(_presence(client, entry))
                self.metrics.presence_updates.inc()

    def on_hello(self, project_id: str) -> None:
        """Another replica joined or lost messages: it gets what only this memory holds, at
        the next presence tick, and at most once a second per project (a lossy link must not
        turn every gap into a resend of everything)."""
        self._hellos.add(project_id)

    def _answer_hellos(self, now: float) -> None:
        for project_id in list(self._hellos):
            if now - self._hello_answered.get(project_id, float("-inf")) < HELLO_EVERY:
                continue
            self._hellos.discard(project_id)
            self._hello_answered[project_id] = now
            if self.state.get(project_id) is None or self.relay is None:
                continue
            for state in self.dirty.unsaved_states(project_id):
                self.relay.publish_state(project_id, state)
            local = self.presence.local(project_id)
            if local:
                self.relay.publish_presences(project_id, local)

    def on_catch_up(self, project_id: str, reason: str) -> None:
        self.sync.catch_up(project_id)

    def on_replica_gone(self, replica: str) -> None:
        for pid, client in self.presence.replica_gone(replica):
            self._announce_leave(pid, client)

    def _rate_limited(self, req: str | None) -> ProtocolError:
        return ProtocolError("rate_limited", f"more than {self.settings.rate_limit:g} messages per second", req)

    def health(self) -> dict[str, Any]:
        status = "shutting_down" if self.shutting_down else ("ok" if self.ready else "starting")
        return {
            "relay": self.relay.status() if self.relay is not None else {"enabled": False},
            "replica": self.settings.replica_id,
            "status": status,
            "autosave": self.autosave.status(),
            "sync": self.sync.status(),
        }


def _presence(client: str, entry: Entry) -> Broadcast:
    """A client's newest presence replaces one still waiting in an outbox (cursors move fast)."""
    return Broadcast(protocol.presence(client, protocol.encode(entry.state), entry.sub), ("presence", client), True)


def _presence_leave(client: str) -> Broadcast:
    return Broadcast(protocol.presence_leave(client), ("presence", client), False)
