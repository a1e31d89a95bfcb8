"""One WebSocket client: its outbox, the task that drains it, and a rate limit.

Fan-out never awaits a client: it puts text in the client's outbox, where a newer state
of an object replaces one still waiting. A client whose outbox is full all the same is
too slow to keep up, and is closed with 1013 rather than letting memory grow. What the
sockets got during one turn of the event loop goes out at the end of that turn
(:class:`Flush`), one frame per socket written straight to its transport
(:meth:`Socket.write`), as Hocuspocus sends what one turn merged. A socket that just got a
frame of several messages on a busy pod (the loop lags), or of :data:`CROWDED` on any,
gathers (:meth:`Connection.gathers`): what comes for it in the next ``send_interval`` goes
out together, on one timer shared by every gathering socket, without a task switch. Only
a socket that cannot take a frame at once (backed up, a frame in flight, closing) wakes
its writer, which waits for the client and gathers by the same rule.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Protocol

from .outbox import Outbox, batch
from .saved import Ledger

if TYPE_CHECKING:
    from .admission import Admitted
    from .gathering import Gathering, Unread
    from .projects import Project

CROWDED = 4
"""Messages in one end-of-turn frame from which a socket gathers even on a quiet pod: they
come faster than it pays to send them a frame each, for its client as much as for us (a
hot board's clients, each parsing every frame, fell to a fifth of the edits without it)."""
SHORT_UNREAD = 64
"""What a socket had not read of its gathering goes to its outbox as it is up to this many
messages, else one by one (so that newer states of an object replace older ones)."""
SLOW_CLIENT = 1013
GOING_AWAY = 1001
UNAUTHORIZED = 4401
"""The token expired, or a renewal was invalid or for another subject."""
FORBIDDEN = 4403
"""A renewed token no longer grants this project."""
DELETED = 4404
"""The project was deleted (``DELETE /projects/{p}``, on any replica): nothing of it is left."""
FLOODING = 4429
"""The client kept sending after ``rate_limited``."""


class Socket(Protocol):
    """What a connection reads and writes (``patches.DirectSocket`` in the service)."""

    async def receive(self) -> str | bytes | None:
        """The next message; None once the client is gone."""
        ...

    async def send(self, text: str) -> None: ...

    def write(self, text: str) -> bool:
        """Send ``text`` now without awaiting, if the socket can (else False, nothing sent)."""
        ...

    def listen(self, take: Callable[[str], asyncio.Future[Any] | None] | None) -> bool:
        """Hand text messages to ``take`` as they arrive, where that keeps their order
        (``patches.Take``: a future it returns holds back the messages after it); False
        where the socket cannot: :meth:`receive` has them all."""
        ...

    async def close(self, code: int, reason: str) -> None: ...


class Flush:
    """The connections with messages to send at the end of this turn of the loop, or after
    a gathering interval (owned by the loop): one callback for a broadcast, whatever its
    fan-out, instead of a task switch per socket; a burst of edits in one turn leaves as
    one frame per socket; and the sockets that gather share one timer."""

    def __init__(self) -> None:
        self._due: list[Connection] = []
        self._later: list[Connection] = []
        self._timer: asyncio.TimerHandle | None = None

    def add(self, conn: Connection) -> None:
        if not self._due:
            asyncio.get_running_loop().call_soon(self._run)
        self._due.append(conn)

    def later(self, conn: Connection, delay: float) -> None:
        """At the latest ``delay`` from now (with the others that wait: one timer for all)."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(delay, self._run_later)
        self._later.append(conn)

    def _run(self) -> None:
        due, self._due = self._due, []
        for conn in due:
            conn.flush()

    def _run_later(self) -> None:
        self._timer = None
        due, self._later = self._later, []
        for conn in due:
            conn.flush()


class Connection:
    # No instance dict: ``project`` and ``admitted``, set after __init__, turned a shared-key
    # dict of 296 bytes into one of 1,584 (measured); a replica holds thousands of these.
    __slots__ = (
        "_burst",
        "_busy",
        "_due",
        "_flush",
        "_gathering",
        "_held_until",
        "_later",
        "_member",
        "_rate",
        "_refilled",
        "_socket",
        "_tokens",
        "_wakeup",
        "ack_key",
        "admitted",
        "batched",
        "busy",
        "client_id",
        "close_code",
        "close_reason",
        "editor",
        "expiry",
        "gathering",
        "ledger",
        "on_slow",
        "outbox",
        "project",
        "refused_in_row",
        "send_interval",
        "sub",
    )

    project: Project
    """The project this socket is open on (set by ``CanvasService.open``)."""
    admitted: Admitted
    """Who it is, as admission let it in (set by ``CanvasService.open``)."""

    def __init__(
        self,
        queue_size: int,
        rate_per_second: float = 0.0,
        on_slow: Callable[[], None] = lambda: None,
        batched: bool = False,
        send_interval: float = 0.0,
        saved_acks: bool = False,
        busy: Callable[[], bool] = lambda: True,
        flush: Flush | None = None,
    ) -> None:
        self.on_slow = on_slow
        self.client_id = secrets.token_hex(6)
        """Who this connection is to other clients (presence); unique per connection."""
        self.sub: str | None = None
        """The token's subject (None without authentication)."""
        self.editor = True
        """False for a viewer: it reads and is present, but cannot edit."""
        self.expiry: asyncio.TimerHandle | None = None
        """Closes the socket (4401) when the token expires; re-armed by a renewal."""
        self.refused_in_row = 0
        """Messages answered ``rate_limited`` in a row."""
        self.outbox = Outbox(queue_size)
        self.batched = batched
        """The client chose ``canvas-sync.v2`` or v3: what waited goes out as one frame (a JSON array)."""
        self.ledger = Ledger(tracked=saved_acks)
        """This socket's changes in order; with v3 also which are saved (``saved.py``)."""
        self.send_interval = send_interval
        """After a frame that :meth:`gathers`, how long messages gather before the next one."""
        self.busy = busy
        """Whether the loop runs late (``lag.LoopLag.busy``): then any frame of several messages gathers."""
        self.ack_key: Hashable | None = None
        """The object the reply ``CanvasService.receive`` just made is an ack of (see :meth:`reply`)."""
        self._wakeup: asyncio.Future[None] | None = None  # the idle writer waits on it
        self._busy = False  # a frame is being sent (reply or writer): one at a time, in order
        self._flush = flush or Flush()
        self.gathering: Gathering | None = None
        """The project's gathering, which the socket reads from while its frames gather
        (set by ``CanvasService.open``; batched clients only)."""
        self._member = False  # it reads from the gathering: what waits for it waits there
        self._socket: Socket | None = None  # set while the writer runs: a flush may write to it
        self._due = False  # this connection waits for a flush (the end of the turn, or later)
        self._held_until = 0.0  # after a frame of several messages (busy, or crowded): the next waits till then
        self._later = False  # the flush this connection waits for is the gathering timer's
        self._gathering = False  # the writer lets messages gather: they wait for its next frame
        self.close_code: int | None = None
        self.close_reason = ""
        self._rate = rate_per_second
        self._burst = 2 * rate_per_second
        self._tokens = self._burst
        self._refilled = time.monotonic()

    def send(self, text: str, key: Hashable | None = None, latest: bool = False) -> None:
        """Queue a message (see :meth:`Outbox.put`) for the end of the turn; never blocks.
        A full outbox closes the connection (1013)."""
        if self.close_code is not None:
            return
        if self._member and self.gathering is not None:
            if not self.gathering.keep(self, text, key):  # too much waits there: the outbox
                self._leave()
                self.send(text, key, latest)
                return
        elif not self.outbox.put(text, key, latest):
            self.close(SLOW_CLIENT, "client too slow to keep up")
            return
        if self._due:
            return
        wakeup = self._wakeup
        if self._socket is not None and wakeup is not None and not wakeup.done():
            self._due = True  # the writer is idle: no need to wake it
            wait = self._held_until and self._held_until - asyncio.get_running_loop().time()
            if wait > 0:
                self._later = True  # gathering
                self._flush.later(self, wait)
            else:
                self._held_until = 0.0  # over: no clock read per message until the next
                self._flush.add(self)
            return
        self._wake()  # not yet started, or busy: it sends this after what it has

    def flush(self) -> None:
        """End of the turn: what waits goes out as one frame now, or to the writer if the
        socket cannot take it at once (backed up, a frame in flight, closing)."""
        self._due = self._later = False
        if self._member and self.gathering is not None:
            self.gathering.read(self)
            return
        texts = self.outbox.peek()
        socket = self._socket
        if not texts or socket is None or self._busy or self.close_code is not None:
            self._wake()
            return
        if len(texts) == 1 or self.batched:
            if socket.write(batch(texts)):
                self.outbox.take()
                if self.gathers(len(texts)):
                    self._held_until = asyncio.get_running_loop().time() + self.send_interval
                    if self.gathering is not None and self.batched and self.close_code is None:
                        self._member = True
                        self.gathering.join(self)
                return
        self._wake()

    @property
    def held_until(self) -> float:
        return self._held_until

    def deliver(self, text: str, messages: int) -> bool:
        """A frame from the gathering: written now if the socket can take it at once."""
        socket = self._socket
        if socket is None or self._busy or self.close_code is not None or not socket.write(text):
            return False
        if self.gathers(messages):
            self._held_until = asyncio.get_running_loop().time() + self.send_interval
        return True

    def left(self, unread: Unread) -> None:
        """Out of the gathering (it could not take a frame, or its frames no longer gather)."""
        self._member = False
        if unread.texts:
            self._queue(unread)
            self._wake()

    def _leave(self) -> None:
        """Out of the gathering, what it had not read into the outbox, ahead of what comes next."""
        self._member = False
        assert self.gathering is not None
        unread = self.gathering.leave(self)
        if unread.texts:
            self._queue(unread)

    def _queue(self, unread: Unread) -> None:
        """What it had not read, into the outbox: as it is when it is short (the usual
        case: an ack within the interval), else one by one, so that newer states take
        older ones' places as they would have there (a member the loop could not read in
        time, which must not be closed 1013 for what its own outbox would have absorbed)."""
        if len(unread.texts) <= SHORT_UNREAD:
            if self.outbox.extend(unread.texts):
                return
        else:
            put = self.outbox.put
            if all(put(text, key, latest) for text, (key, latest) in zip(unread.texts, unread.keys, strict=True)):
                return
        self.close(SLOW_CLIENT, "client too slow to keep up")

    def _wake(self) -> bool:
        """Wake the writer if it is idle (a bare future: cheaper than an Event per message)."""
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is None or wakeup.done():
            return False
        wakeup.set_result(None)
        return True

    def close(self, code: int, reason: str = "") -> None:
        """Ask the writer to close; messages already queued go first, unless the client is
        too slow (1013): then they are dropped."""
        if self.close_code is not None:
            return
        if self._member:
            self._leave()
            if self.close_code is not None:
                return
        self.close_code, self.close_reason = code, reason
        if code == SLOW_CLIENT:
            self.on_slow()
            self.outbox.clear()
        self._wake()

    def allow_edit(self) -> bool:
        """Token bucket: ``rate`` edits per second on average, bursts of twice that."""
        if not self._rate:
            return True
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def gathers(self, messages: int) -> bool:
        """Whether a frame of ``messages`` makes the next wait ``send_interval``: on a busy
        pod any frame of several, on a quiet one a :data:`CROWDED` frame."""
        return bool(self.send_interval) and messages > 1 and (messages >= CROWDED or self.busy())

    @property
    def idle(self) -> bool:
        """Nothing waits to go to this client, or is being sent: an answer may go at once."""
        return self.close_code is None and not (
            self.outbox or self._busy or self._gathering or self._due or self._member
        )

    def answer(self, websocket: Socket, text: str, key: Hashable | None = None) -> bool:
        """Answer the sender without awaiting: written now when nothing is queued ahead,
        else queued behind it; False when only an await can send it (the socket is backed
        up), and then nothing was done.

        That saves the hop through the writer task for every ack; order is kept because
        a message queued earlier (or one the writer is sending) makes this queue too.
        ``key``: the object an ack is about. Queued, the ack ends that object's line, so a
        newer upsert of it cannot take the place of one waiting ahead of the ack: the
        client would hear the newer state before its own change's ack, and keep its own.
        """
        if not self.idle:
            self.send(text, key)
            if self._later:  # an answer does not wait for the gathering: all goes at the end of the turn
                self._later, self._held_until = False, 0.0
                self._flush.add(self)
            return True
        return websocket.write(text)

    async def reply(self, websocket: Socket, text: str, key: Hashable | None = None) -> None:
        """:meth:`answer`, or else send it and wait for the socket (the reader waits too)."""
        if self.answer(websocket, text, key):
            return
        self._busy = True
        try:
            await websocket.send(text)
        finally:
            self._busy = False
            if self.outbox or self.close_code is not None:
                self._wake()  # what came meanwhile waited for this frame

    async def pump(self, websocket: Socket) -> None:
        """Send what waits, in order, until asked to close; then close the socket."""
        loop = asyncio.get_running_loop()
        self._socket = websocket
        try:
            await self._pump(websocket, loop)
        finally:
            self._socket = None

    async def _pump(self, websocket: Socket, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            while self._busy or (not self.outbox and self.close_code is None):
                self._wakeup = loop.create_future()
                await self._wakeup
            texts = self.outbox.take()
            self._busy = True
            try:
                if texts and self.batched:
                    frame = batch(texts)
                    if not websocket.write(frame):
                        await websocket.send(frame)
                else:
                    for text in texts:
                        if self.close_code == SLOW_CLIENT:
                            break  # what it could not take in time is dropped, not sent late
                        if not websocket.write(text):
                            await websocket.send(text)
                if self.close_code is not None and not self.outbox:
                    await websocket.close(self.close_code, self.close_reason)
                    return
            finally:
                self._busy = False
            if self.gathers(len(texts)):
                self._gathering = True  # messages came faster than one a frame: gather
                try:
                    await asyncio.sleep(self.send_interval)
                finally:
                    self._gathering = False
