"""The asyncio client: a :class:`~canvas_sync.client.session.Session` behind a socket that
reconnects.

What this module adds to the session is time and I/O: one task connects (and reconnects
with jittered backoff), reads frames and hands each message to the session; one writer
sends what the session says, in order; a pinger notices a half-open socket (no frame
within two ping intervals); a renewer sends a fresh token before the current one expires.
Everything a user awaits (``ready``, an edit's ack, ``saved()``) is a future resolved
from the session's events, so a reconnect in between is invisible to the caller except
for the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .session import (
    OFFERED,
    Answered,
    Backoff,
    Change,
    Changed,
    ClientError,
    Event,
    PresenceChanged,
    Refused,
    Reply,
    Saved,
    ServerError,
    Session,
    Status,
    Synced,
    Throttled,
    messages_of,
    renew_in,
)

log = logging.getLogger("canvas_sync.client")

Source = str | Callable[[], str | Awaitable[str]]
"""A value, or a function (plain or async) called for it on every connect."""

FATAL_HTTP = {400: "bad_project", 403: "forbidden", 404: "not_found"}
"""HTTP refusals that another try cannot fix."""
FATAL_CLOSE = {4403: "forbidden", 4404: "project_deleted"}
"""Close codes that another try cannot fix (4401 gets one more try with a new token)."""
UNAUTHORIZED_CLOSE = 4401
EVENTS = ("status", "change", "presence", "saved", "error")

_CONNECT_ERRORS = (OSError, InvalidHandshake, TimeoutError)
_HAS_PROXY = "proxy" in inspect.signature(connect).parameters  # websockets >= 15 reads proxy variables


class _Fatal(Exception):
    def __init__(self, error: ClientError) -> None:
        super().__init__(str(error))
        self.error = error


async def _resolve(source: Source | None) -> str | None:
    if source is None or isinstance(source, str):
        return source
    value = source()
    if inspect.isawaitable(value):
        value = await value
    return str(value)


def ws_url(base: str, project: str) -> str:
    """``base`` (``ws://host:port``, ``http://...`` or already ``.../ws/<project>``) to the socket's URL."""
    base = base.rstrip("/")
    if base.startswith("http"):
        base = "ws" + base[4:]
    return base if base.endswith(f"/ws/{project}") else f"{base}/ws/{project}"


class CanvasClient:
    """One project's live copy over WebSocket; ``async with CanvasClient(url, project) as c``.

    ``url`` is the service's base WebSocket URL (``ws://host:port``) or a function returning
    it, called on every connect (so a caller may move the client to another replica);
    ``token`` a JWT string or a function (plain or async) returning one, called on every
    connect and before expiry. Edits apply to :attr:`objects` at once and return the ack;
    :meth:`saved` waits until the server says they are in DynamoDB (v3).
    """

    def __init__(
        self,
        url: Source,
        project: str,
        *,
        token: Source | None = None,
        ping_interval: float = 10.0,
        presence_interval: float = 0.05,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        stable_after: float = 10.0,
        open_timeout: float = 10.0,
        versions: Iterable[str] = OFFERED,
        reconnect: bool = True,
        send_rate: float = 500.0,
        rng: random.Random | None = None,
    ) -> None:
        self.url, self.project, self.token = url, project, token
        self.ping_interval = ping_interval
        """Seconds between pings; a socket silent for two of them is taken for dead."""
        self.open_timeout = open_timeout
        self.versions = tuple(versions)
        self.reconnect = reconnect
        """False: the first lost connection (or refusal) is fatal (the probe wants that)."""
        self.send_rate = send_rate
        """Messages a second at most, bursts of twice that: under the server's default limit
        (``CANVAS_RATE_LIMIT`` 1000), so a replay of many unsaved changes is not refused."""
        self._throttled = False
        self.session = Session(project, presence_interval)
        self.backoff = Backoff(backoff_base, backoff_max, stable_after, rng=rng or random.Random())
        self.error: ClientError | None = None
        """Why the client closed itself (a fatal refusal), else None."""
        self.connects = 0
        """Sockets opened so far (the first one included)."""
        self.connected_at: float | None = None
        """``time.time()`` when the current socket's snapshot came in."""
        self._status: Status = "connecting"
        self._listeners: dict[str, list[Callable[..., Any]]] = {name: [] for name in EVENTS}
        self._ws: ClientConnection | None = None
        self._wake = asyncio.Event()
        self._extra: list[dict[str, Any]] = []
        self._requests: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._saved_waiters: list[asyncio.Future[None]] = []
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._current_token: str | None = None
        self._ready: asyncio.Future[None] | None = None
        self._listener_tasks: set[asyncio.Future[Any]] = set()

    # --- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> CanvasClient:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Begin connecting (``async with`` does this); returns at once."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"canvas-client-{self.project}")

    @property
    def ready(self) -> asyncio.Future[None]:
        """Resolved once the first snapshot is in; raises :class:`ClientError` on a fatal refusal."""
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
            self._ready.add_done_callback(_retrieve)
        return self._ready

    async def close(self) -> None:
        """Close the socket and stop. Changes not yet saved are given up: ``await saved()`` first."""
        self._closing = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(*_CONNECT_ERRORS, ConnectionClosed):
                await asyncio.wait_for(ws.close(1000), 2)
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._shut(ClientError("closed", "the client was closed"))

    # --- what users read -----------------------------------------------------------------

    @property
    def objects(self) -> dict[str, dict[str, Any]]:
        """id -> object: the server's state with this client's waiting changes on top (read only)."""
        return self.session.objects

    @property
    def others(self) -> dict[str, dict[str, Any]]:
        """Other clients' presence: client id -> state."""
        return self.session.others

    @property
    def status(self) -> Status:
        """``connecting`` (never open yet), ``open``, ``reconnecting`` or ``closed``."""
        return self._status

    @property
    def unsaved(self) -> int:
        """Changes not yet saved (waiting for their ack or, with v3, for ``saved``)."""
        return self.session.unsaved

    @property
    def replica(self) -> str | None:
        """The replica the last snapshot came from."""
        return self.session.replica

    @property
    def version(self) -> int:
        """The protocol version of the open socket (3, 2 or 1; 0 when not connected)."""
        return self.session.version

    # --- what users do -------------------------------------------------------------------

    # Edits apply to the copy when called, not when awaited, and return a future: a caller
    # may make many before the first ack (a drag) and await them later, or never.

    def create(self, obj: Mapping[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """Add an object (``id`` and ``type`` required); resolves to the ack, or raises
        :class:`ClientError` (``conflict``, ``forbidden``, ...)."""
        return self._change(*self.session.create(obj))

    def update(self, object_id: str, props: Mapping[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """Set properties (``None`` removes one); resolves to the ack, or raises :class:`ClientError`."""
        return self._change(*self.session.update(object_id, props))

    def delete(self, object_id: str) -> asyncio.Future[dict[str, Any]]:
        """Delete an object; resolves to the ack, or raises :class:`ClientError`."""
        return self._change(*self.session.delete(object_id))

    def set_presence(self, state: Mapping[str, Any]) -> None:
        """This client's presence (cursor, selection, ...). Sent at most once per
        ``presence_interval`` (the latest state wins), and again after every reconnect."""
        self.session.set_presence(state)
        self._wake.set()

    async def saved(self, timeout: float | None = None) -> None:
        """Wait until no change is unsaved (v3: written to DynamoDB; older servers: acked)."""
        if self.error is not None:
            raise self.error
        if self.session.unsaved == 0:
            return
        if self._closing:
            raise ClientError("closed", f"the client was closed with {self.session.unsaved} changes unsaved")
        waiter = asyncio.get_running_loop().create_future()
        self._saved_waiters.append(waiter)
        await asyncio.wait_for(waiter, timeout)

    async def ping(self, timeout: float = 10.0) -> dict[str, Any]:
        """Send a ping on the open socket; the pong."""
        await asyncio.wait_for(asyncio.shield(self.ready), timeout)
        return await self._request({"op": "ping"}, timeout)

    def on(self, event: str, fn: Callable[..., Any]) -> Callable[[], None]:
        """Call ``fn`` on ``status`` (status), ``change`` ({id: object or None}), ``presence``
        (client, state or None), ``saved`` (unsaved count), ``error`` (ClientError); returns
        a function that removes it."""
        if event not in self._listeners:
            raise ValueError(f"unknown event {event!r}: one of {', '.join(EVENTS)}")
        self._listeners[event].append(fn)
        return lambda: self._listeners[event].remove(fn) if fn in self._listeners[event] else None

    # --- plumbing ------------------------------------------------------------------------

    def _change(self, change: Change, changed: Changed) -> asyncio.Future[dict[str, Any]]:
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        answer.add_done_callback(_retrieve)  # an edit nobody awaits must not warn when refused
        if self.error is not None or self._closing:
            self.session.withdraw(change)
            answer.set_exception(self.error or ClientError("closed", "the client was closed"))
            return answer
        change.handle = answer
        self._emit_change(changed)
        self._wake.set()
        return answer

    async def _request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        req = self.session.new_req("r")
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._requests[req] = waiter
        self._extra.append({**message, "req": req})
        self._wake.set()
        try:
            reply = await asyncio.wait_for(waiter, timeout)
        finally:
            self._requests.pop(req, None)
        if reply.get("op") == "error":
            raise ClientError(str(reply.get("code")), str(reply.get("message", "")))
        return reply

    def _set_status(self, status: Status) -> None:
        if status != self._status:
            self._status = status
            self._emit("status", status)

    def _emit(self, event: str, *args: Any) -> None:
        for fn in list(self._listeners[event]):
            try:
                result = fn(*args)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._listener_tasks.add(task)  # referenced until done (tasks are weakly held)
                    task.add_done_callback(self._listener_tasks.discard)
            except Exception:
                log.exception("a %s listener failed", event)

    def _emit_change(self, changed: Changed) -> None:
        if changed.objects:
            self._emit("change", changed.objects)

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Changed):
                self._emit_change(event)
            elif isinstance(event, Answered):
                if event.change.handle is not None and not event.change.handle.done():
                    event.change.handle.set_result(event.ack)
            elif isinstance(event, Refused):
                if event.change.handle is not None and not event.change.handle.done():
                    event.change.handle.set_exception(event.error)
            elif isinstance(event, Saved):
                self._emit("saved", event.unsaved)
                if event.unsaved == 0:
                    self._release_saved(None)
            elif isinstance(event, PresenceChanged):
                self._emit("presence", event.client, event.state)
            elif isinstance(event, Reply):
                waiter = self._requests.get(event.req)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event.message)
            elif isinstance(event, Synced):
                self.connected_at = time.time()
                self._set_status("open")
                if not self.ready.done():
                    self.ready.set_result(None)
                self._wake.set()  # the replay, then what waited
            elif isinstance(event, ServerError):
                self._emit("error", event.error)
            elif isinstance(event, Throttled):
                self._throttled = True

    def _release_saved(self, error: ClientError | None) -> None:
        waiters, self._saved_waiters = self._saved_waiters, []
        for waiter in waiters:
            if not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)

    def _shut(self, error: ClientError) -> None:
        """Closed for good: every waiter gets ``error``."""
        self._set_status("closed")
        if not self.ready.done():
            self.ready.set_exception(error)
        for change in self.session.changes:
            if change.handle is not None and not change.handle.done():
                change.handle.set_exception(error)
        for waiter in self._requests.values():
            if not waiter.done():
                waiter.set_exception(error)
        self._release_saved(error)

    def _fail(self, error: ClientError) -> None:
        log.warning("canvas client stopped: %s", error)
        self.error = error
        self._emit("error", error)
        self._shut(error)

    # --- the connection ------------------------------------------------------------------

    async def _run(self) -> None:
        auth_retry = False
        try:
            while not self._closing:
                self._set_status("connecting" if self.connects == 0 else "reconnecting")
                try:
                    ws = await self._open()
                except InvalidStatus as refusal:
                    status = refusal.response.status_code
                    error = _http_error(status, refusal.response.body)
                    if status == 401 and not auth_retry:
                        auth_retry = True  # the token function is asked again: one more try
                        continue
                    if status == 401 or status in FATAL_HTTP or not self.reconnect:
                        raise _Fatal(error) from None
                    await self._pause()
                    continue
                except _CONNECT_ERRORS as error:
                    if not self.reconnect:
                        raise _Fatal(ClientError("unavailable", f"could not connect: {error}")) from None
                    await self._pause()
                    continue
                self.connects += 1
                opened = time.monotonic()
                code, reason = await self._serve(ws)
                lived = time.monotonic() - opened
                self.backoff.connected_for(lived)
                if self._closing:
                    return
                if code in FATAL_CLOSE:
                    raise _Fatal(ClientError(FATAL_CLOSE[code], reason or f"closed with {code}"))
                if code == UNAUTHORIZED_CLOSE:
                    if auth_retry and lived < self.backoff.stable_after:
                        raise _Fatal(ClientError("unauthorized", reason or "the token was refused twice"))
                    auth_retry = True
                    continue  # at once, with a new token
                auth_retry = False
                if not self.reconnect:
                    raise _Fatal(ClientError("closed", f"closed by the server with {code}: {reason}"))
                await self._pause()
        except _Fatal as fatal:
            self._fail(fatal.error)

    async def _pause(self) -> None:
        await asyncio.sleep(self.backoff.next_delay())

    async def _open(self) -> ClientConnection:
        base = await _resolve(self.url)
        assert base is not None
        token = self._current_token = await _resolve(self.token)
        options: dict[str, Any] = {
            "subprotocols": list(self.versions),
            "open_timeout": self.open_timeout,
            "ping_interval": None,  # liveness is the protocol's own ping, below
            "close_timeout": 2,
            "max_size": None,  # the server is trusted: a snapshot may be large
        }
        if token:
            options["additional_headers"] = {"Authorization": f"Bearer {token}"}
        if _HAS_PROXY:
            options["proxy"] = None
        return await connect(ws_url(base, self.project), **options)

    async def _serve(self, ws: ClientConnection) -> tuple[int | None, str]:
        """Read until the socket closes; (close code, reason), None when it died unclosed."""
        self._ws = ws
        self.session.opened(ws.subprotocol)
        self._extra = []
        writer = asyncio.ensure_future(self._write(ws))
        pinger = asyncio.ensure_future(self._ping(ws))
        renewer = asyncio.ensure_future(self._renew(ws))
        try:
            return await self._read(ws)
        finally:
            for task in (writer, pinger, renewer):
                task.cancel()
            for task in (writer, pinger, renewer):
                with contextlib.suppress(asyncio.CancelledError, *_CONNECT_ERRORS, ConnectionClosed):
                    await task
            self._ws = None
            self.connected_at = None
            ws.transport.abort()
            self._handle(self.session.closed())
            for waiter in self._requests.values():  # pings and renewals do not outlive their socket
                if not waiter.done():
                    waiter.set_exception(ClientError("disconnected", "the socket closed before the answer"))

    async def _read(self, ws: ClientConnection) -> tuple[int | None, str]:
        silence = 2 * self.ping_interval
        while True:
            try:
                frame = await asyncio.wait_for(ws.recv(), silence)
            except TimeoutError:
                log.info("no frame for %.1fs: the socket is taken for dead", silence)
                return None, "no answer"
            except ConnectionClosed as closed:
                received = closed.rcvd
                return (received.code, received.reason) if received else (None, "connection lost")
            try:
                messages = messages_of(frame)
            except ValueError:
                log.warning("a frame that is not JSON was ignored")
                continue
            for message in messages:
                self._handle(self.session.receive(message))
            if self.session.resend_due:
                self._wake.set()

    async def _write(self, ws: ClientConnection) -> None:
        """The one sender: replay and changes in order, then pings, renewals and presence."""
        loop = asyncio.get_running_loop()
        burst = max(1.0, 2 * self.send_rate)
        tokens, refilled = burst, loop.time()
        while True:
            due = self.session.presence_due(loop.time())
            if due is None or due > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), due)
            self._wake.clear()
            if self._throttled:
                self._throttled = False
                await asyncio.sleep(1.0)  # refused as rate_limited: let the server's bucket refill
            out = self.session.to_send()
            if self.session.synced:
                out, self._extra = out + self._extra, []
            presence = self.session.take_presence(loop.time())
            if presence is not None:
                out.append(presence)
            for message in out:
                if self.send_rate:
                    now = loop.time()
                    tokens, refilled = min(burst, tokens + (now - refilled) * self.send_rate), now
                    if tokens < 1:
                        await asyncio.sleep((1 - tokens) / self.send_rate)
                        tokens, refilled = 1.0, loop.time()
                    tokens -= 1
                await ws.send(json.dumps(message, separators=(",", ":"), allow_nan=False))

    async def _ping(self, ws: ClientConnection) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            self._extra.append({"op": "ping"})
            self._wake.set()

    async def _renew(self, ws: ClientConnection) -> None:
        """Before the token expires, ask the token function for a new one and send it."""
        if not callable(self.token):
            return  # a fixed string cannot be renewed: the server closes with 4401 at expiry
        await asyncio.shield(self.ready)
        while True:
            token = self._current_token
            delay = renew_in(token) if token else None
            if delay is None:
                return
            await asyncio.sleep(delay)
            fresh = await _resolve(self.token)
            if not fresh:
                return
            try:
                await self._request({"op": "auth", "token": fresh}, timeout=10)
            except ClientError as error:
                if error.code == "disconnected":
                    return
                log.warning("token renewal refused: %s", error)
                return  # e.g. bad_message: authentication is off on this replica
            except TimeoutError:
                log.warning("token renewal unanswered")
                continue
            self._current_token = fresh


def _http_error(status: int, body: bytes | bytearray | str | None) -> ClientError:
    """A refusal's JSON body ``{"error", "message"}`` as a ClientError (or the status alone)."""
    code, message = FATAL_HTTP.get(status, "unauthorized" if status == 401 else f"http_{status}"), f"HTTP {status}"
    try:
        data = json.loads(body or b"")
        if isinstance(data, dict):
            code = str(data.get("error") or code)
            message = f"HTTP {status}: {data.get('message') or code}"
    except ValueError:
        pass
    return ClientError(code, message)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen (nobody may await ``ready`` or a dropped edit)."""
    if not future.cancelled():
        future.exception()
