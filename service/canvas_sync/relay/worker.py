"""The relay's tasks on the event loop: publish what changed, receive what others changed.

Publishing never blocks an edit: the edit puts a message on one bounded queue, and one
task encodes and publishes what has gathered, pipelined. When the queue is full the
message is dropped and counted; its sequence number is spent, so receivers see the gap
(at the next message or heartbeat) and catch up. A project whose last publish reached no
other replica is not published to until another replica says hello on its channel.

Receiving: one task reads the subscription. It rebuilds the subscription after any error,
and when its own heartbeat (published every second through the same path as everything
else) has not come back for three intervals, which catches a half-open socket and a
subscriber that Redis cut off for a full output buffer. After a rebuild every held
project is caught up and said hello to.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ..metrics import Metrics
from ..model import ObjectState
from .core import (
    CATCH_UP,
    HEARTBEAT_CHANNEL,
    MAX_MESSAGE_BYTES,
    BadMessage,
    Kind,
    Message,
    Receiver,
    Sequencer,
    Verdict,
    channel,
    decode,
    encode,
    project_of,
)
from .transport import TRANSPORT_ERRORS, Transport

log = logging.getLogger(__name__)

RETRY_MAX = 0.5
"""Longest pause between two attempts to reach Redis again: one connect every half second
costs nothing, and Redis back means the relay back at most this much later."""


class Handler(Protocol):
    """What the relay asks of the service (all on the event loop)."""

    def held(self) -> Iterable[str]: ...

    def on_object(self, project: str, state: ObjectState, gen: int = 0) -> None: ...

    def on_deleted(self, project: str, gen: int) -> None:
        """The project was deleted elsewhere: drop a copy older than ``gen``."""
        ...

    def on_presence(self, message: Message) -> None: ...

    def on_hello(self, project: str) -> None:
        """Another replica (re)joined a project: send it what only our memory holds."""
        ...

    def on_catch_up(self, project: str) -> None:
        """Something of this project may have been lost: pull it from the table now."""
        ...

    def on_replica_gone(self, replica: str) -> None: ...


@dataclass
class _Outgoing:
    channel: str
    message: Message
    queued: float


class Relay:
    handler: Handler
    """What received messages do to this replica (``bridge.RelayBridge``), set before :meth:`start`."""

    def __init__(
        self,
        transport: Transport,
        replica_id: str,
        metrics: Metrics,
        heartbeat: float = 1.0,
        queue_size: int = 10_000,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.transport = transport
        self.replica_id = replica_id
        self.epoch = secrets.token_hex(4)
        """New at every start: receivers that knew an older epoch catch up."""
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.wall_ms = wall_ms
        self.sequencer = Sequencer()
        self.receiver = Receiver()
        self.peers: dict[str, int] = {}
        """Other replicas the last publish to a project reached (absent: not known yet)."""
        self.subscribed: set[str] = set()
        self.connected = False
        self.last_error: str | None = None
        self.rebuilds = 0
        self._queue: asyncio.Queue[_Outgoing] = asyncio.Queue(maxsize=queue_size)
        self._own_heard = 0.0
        self._heartbeat_sent = 0.0
        self._replicas_heard: dict[str, float] = {}
        self._hello_at: dict[str, float] = {}
        self._asked: dict[str, float] = {}
        """When we last said hello after a loss on a project."""
        self._to_ask: set[str] = set()
        """When another replica last said hello on a project: older publish answers are stale."""
        self._tasks: list[asyncio.Task[None]] = []
        self._rebuild = asyncio.Event()

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self._own_heard = time.monotonic()
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="relay-publish"),
            asyncio.create_task(self._receive_loop(), name="relay-receive"),
            asyncio.create_task(self._heartbeat_loop(), name="relay-heartbeat"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a cancel swallowed by a library must not hold up shutdown
            await asyncio.wait(self._tasks, timeout=2.0)
        try:
            await self.transport.close()
        except (*TRANSPORT_ERRORS, RuntimeError):
            pass

    @property
    def healthy(self) -> bool:
        """Connected, and our own heartbeat came back lately: other replicas hear us, we hear them."""
        return self.connected and time.monotonic() - self._own_heard < 3 * self.heartbeat

    def status(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "healthy": self.healthy,
            "connected": self.connected,
            "epoch": self.epoch,
            "subscribed_projects": len(self.subscribed),
            "queued": self._queue.qsize(),
            "rebuilds": self.rebuilds,
            "last_error": self.last_error,
        }

    # --- publishing (called on the loop by edits; never waits) ---------------------------

    def publish_object(self, project: str, state: ObjectState, gen: int = 0) -> None:
        """``gen``: the generation of the copy the state comes from."""
        if self.peers.get(project) == 0:
            return  # nobody else holds it: no message, no sequence number
        message = Message(
            Kind.OBJECT,
            self.replica_id,
            self.epoch,
            project,
            self.sequencer.next(project),
            self.wall_ms(),
            doc=state.to_doc(),
            object_id=state.id,
            gen=gen,
        )
        self._enqueue(channel(project), message)

    def publish_deleted(self, project: str, gen: int) -> None:
        """The project was deleted here: every holder drops it at once (the heads tell
        those that miss this within a sync pass)."""
        self._enqueue(
            channel(project),
            Message(Kind.DELETED, self.replica_id, self.epoch, project, sent_ms=self.wall_ms(), gen=gen),
        )

    def publish_presence(
        self, project: str, client: str, presence: dict[str, Any] | None, sub: str | None = None
    ) -> None:
        """One client's presence; None: it left."""
        if self.peers.get(project) == 0:
            return
        message = Message(
            Kind.PRESENCE,
            self.replica_id,
            self.epoch,
            project,
            sent_ms=self.wall_ms(),
            client=client,
            presence=presence,
            sub=sub,
        )
        self._enqueue(channel(project), message)

    def publish_presences(self, project: str, clients: dict[str, dict[str, Any]]) -> None:
        """Every one of our clients on a project: a refresh that also heals lost leaves."""
        if self.peers.get(project) == 0:
            return
        message = Message(
            Kind.PRESENCE_ALL, self.replica_id, self.epoch, project, sent_ms=self.wall_ms(), presence=clients
        )
        self._enqueue(channel(project), message)

    def hello(self, project: str) -> None:
        self._enqueue(channel(project), Message(Kind.HELLO, self.replica_id, self.epoch, project))

    def _enqueue(self, name: str, message: Message) -> None:
        try:
            self._queue.put_nowait(_Outgoing(name, message, time.monotonic()))
        except asyncio.QueueFull:
            self.metrics.relay_dropped.labels("queue_full").inc()

    async def _publish_loop(self) -> None:
        delay = 0.1
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 512:
                batch.append(self._queue.get_nowait())
            wire = []
            for item in batch:
                data = encode(item.message)
                if len(data) > MAX_MESSAGE_BYTES and item.message.kind == Kind.OBJECT:
                    data = encode(
                        Message(
                            Kind.TOO_BIG,
                            item.message.replica,
                            item.message.epoch,
                            item.message.project,
                            item.message.seq,
                            object_id=item.message.object_id,
                            gen=item.message.gen,
                        )
                    )
                wire.append((item.channel, data))
            try:
                counts = await self.transport.publish(wire)
            except TRANSPORT_ERRORS as error:
                self._failed(error, "publish")
                self.metrics.relay_dropped.labels("publish_error").inc(len(batch))
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = 0.1
            self.metrics.relay_published.inc(len(batch))
            for item, count in zip(batch, counts, strict=True):
                project = item.message.project
                if project and item.queued >= self._hello_at.get(project, 0.0):  # else a hello came since
                    self.peers[project] = max(0, count - (1 if project in self.subscribed else 0))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            self._enqueue(
                HEARTBEAT_CHANNEL,
                Message(
                    Kind.HEARTBEAT, self.replica_id, self.epoch, sent_ms=self.wall_ms(), seqs=self.sequencer.last()
                ),
            )
            self._heartbeat_sent = time.monotonic()
            self._check_replicas()
            self._ask()

    def _check_replicas(self) -> None:
        now = time.monotonic()
        for replica in [r for r, heard in self._replicas_heard.items() if now - heard > 3 * self.heartbeat]:
            del self._replicas_heard[replica]
            log.info("replica silent on the relay", extra={"event": "relay_replica_gone", "replica": replica})
            self.handler.on_replica_gone(replica)

    # --- subscriptions -------------------------------------------------------------------

    async def subscribe(self, project: str) -> bool:
        """Subscribe before a load (so nothing relayed meanwhile is missed) and say hello.

        False when the relay is down: the project is then caught up through the table
        until the subscription is rebuilt.
        """
        self.subscribed.add(project)
        try:
            await self.transport.subscribe([channel(project)])
        except TRANSPORT_ERRORS as error:
            self._failed(error, "subscribe")
            return False
        self.hello(project)
        return True

    async def unsubscribe(self, project: str) -> None:
        self.subscribed.discard(project)
        self.peers.pop(project, None)
        self._hello_at.pop(project, None)
        self._asked.pop(project, None)
        self._to_ask.discard(project)
        self.receiver.forget_project(project)
        try:
            await self.transport.unsubscribe([channel(project)])
        except TRANSPORT_ERRORS as error:
            self._failed(error, "unsubscribe")

    async def _resubscribe(self) -> None:
        """A new subscription connection with every channel; then catch up what it missed."""
        await self.transport.reset()
        held = sorted(set(self.handler.held()) | self.subscribed)
        self.subscribed = set(held)
        await self.transport.subscribe([HEARTBEAT_CHANNEL] + [channel(p) for p in held])
        self.connected = True
        self.last_error = None
        self._own_heard = time.monotonic()
        self.peers.clear()  # not known until the next publish answers
        for project in held:
            self.metrics.relay_catch_ups.labels("rebuild").inc()
            self.handler.on_catch_up(project)
            self.hello(project)

    def _failed(self, error: BaseException, where: str) -> None:
        if self.connected:
            log.warning(
                "relay connection failed",
                extra={"event": "relay_error", "where": where, "error": f"{type(error).__name__}: {error}"},
            )
        self.connected = False
        self.last_error = f"{where}: {type(error).__name__}: {error}"
        self._rebuild.set()

    # --- receiving -----------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        delay = 0.1
        first = True
        while True:
            try:
                if first or self._rebuild.is_set():
                    self._rebuild.clear()
                    if not first:
                        self.rebuilds += 1
                        self.metrics.relay_rebuilds.inc()
                    await self._resubscribe()
                    first = False
                    delay = 0.1
                received = await self.transport.receive(timeout=min(0.5, self.heartbeat))
                if received is not None:
                    self._dispatch(*received)
                elif self._heartbeat_sent - self._own_heard > 3 * self.heartbeat:
                    raise ConnectionError("our own heartbeat has not come back: the subscription is dead")
            except TRANSPORT_ERRORS as error:
                self._failed(error, "receive")
                first = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    def _dispatch(self, name: str, data: bytes) -> None:
        try:
            message = decode(data)
        except BadMessage:
            self.metrics.relay_received.labels("bad").inc()
            return
        if message.kind == Kind.HEARTBEAT:
            self._on_heartbeat(message)
            return
        if message.replica == self.replica_id:
            return  # our own, back from Redis
        self._replicas_heard[message.replica] = time.monotonic()  # silent for long from here on: gone
        project = project_of(name)
        if project is None or project not in self.subscribed:
            return
        self.metrics.relay_received.labels(message.kind.label).inc()
        if message.kind == Kind.DELETED:
            self.handler.on_deleted(project, message.gen)
            return
        if message.kind in (Kind.HELLO, Kind.PRESENCE, Kind.PRESENCE_ALL):
            self._hello_at[project] = time.monotonic()
            self.peers[project] = max(1, self.peers.get(project, 1))  # someone else is here
            if message.kind == Kind.HELLO:
                self.handler.on_hello(project)
            else:
                self.handler.on_presence(message)
            return
        verdict = self.receiver.on_message(message.replica, message.epoch, project, message.seq)
        if verdict in CATCH_UP:
            self.metrics.relay_gaps.labels(str(verdict)).inc()
            self._catch_up(project, str(verdict))
        if message.kind == Kind.TOO_BIG:
            self._catch_up(project, "too_big")
        elif verdict != Verdict.DUPLICATE and message.doc is not None:
            self.metrics.relay_lag.observe(max(0.0, (self.wall_ms() - message.sent_ms) / 1000))
            self.handler.on_object(project, ObjectState.from_doc(message.object_id, message.doc), message.gen)

    def _on_heartbeat(self, message: Message) -> None:
        now = time.monotonic()
        if message.replica == self.replica_id:
            if message.epoch == self.epoch:
                self._own_heard = now
            return
        self._replicas_heard[message.replica] = now
        for project in self.receiver.on_heartbeat(message.replica, message.epoch, message.seqs, self.subscribed):
            self.metrics.relay_gaps.labels("heartbeat").inc()
            self._catch_up(project, "heartbeat")

    def _catch_up(self, project: str, reason: str) -> None:
        self.metrics.relay_catch_ups.labels(reason).inc()
        log.info("relay catch-up", extra={"event": "relay_catch_up", "project": project, "reason": reason})
        self.handler.on_catch_up(project)
        self._to_ask.add(project)
        self._ask()

    def _ask(self) -> None:
        """Say hello after losses (the holders' unsaved states come back at once; the table has
        the rest), at most once a second per project: a burst of gaps asks once, a later one
        waits for the next heartbeat tick."""
        now = time.monotonic()
        for project in list(self._to_ask):
            if now - self._asked.get(project, float("-inf")) >= 1.0:
                self._to_ask.discard(project)
                self._asked[project] = now
                self.hello(project)
