"""A blocking client over the same :class:`~canvas_sync.client.session.Session`.

Locust runs each user in a gevent greenlet, where an asyncio loop per user does not fit;
this transport waits on a plain socket instead (``websocket-client``, which gevent's
monkey-patching makes cooperative). It has no tasks of its own: it reads only while a
call waits, so the caller decides when time passes, and a lost socket is noticed by the
call that meets it (``ClientError("disconnected")``); the next call connects again and
replays what is unsaved, exactly as the asyncio client does. It needs ``websocket-client``
(a test and load-test dependency, not the service's).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import websocket

from .session import (
    OFFERED,
    Answered,
    Change,
    ClientError,
    Event,
    Refused,
    Reply,
    Session,
    Throttled,
    messages_of,
)

_SOCKET_ERRORS = (OSError, websocket.WebSocketException)


def _value(source: str | Callable[[], str] | None) -> str | None:
    return source() if callable(source) else source


class BlockingClient:
    """One project's copy over a blocking socket; every call waits for its answer."""

    def __init__(
        self,
        url: str | Callable[[], str],
        project: str,
        *,
        token: str | Callable[[], str] | None = None,
        timeout: float = 10.0,
        versions: Iterable[str] = OFFERED,
        presence_interval: float = 0.05,
    ) -> None:
        self.url, self.project, self.token = url, project, token
        self.timeout = timeout
        """Seconds a connect or an answer may take before ``ClientError("timeout")``."""
        self.versions = tuple(versions)
        self.session = Session(project, presence_interval)
        self.ws: websocket.WebSocket | None = None
        self.snapshot: dict[str, Any] | None = None
        """The current connection's snapshot message."""
        self.snapshot_bytes = 0
        """The size of the frame that brought it."""
        self._frame_bytes = 0
        self._throttled = False

    @property
    def objects(self) -> dict[str, dict[str, Any]]:
        return self.session.objects

    @property
    def others(self) -> dict[str, dict[str, Any]]:
        return self.session.others

    @property
    def unsaved(self) -> int:
        return self.session.unsaved

    @property
    def connected(self) -> bool:
        return self.ws is not None

    # --- the connection ------------------------------------------------------------------

    def connect(self) -> dict[str, Any]:
        """Open a socket, read its snapshot and send the replay; the snapshot. Refusals raise
        :class:`ClientError` with the HTTP answer's code (``forbidden``, ``unauthorized``, ...)."""
        self.close()
        from .aio import _http_error, ws_url  # the shared helpers (no asyncio needed to call them)

        base = _value(self.url)
        assert base is not None
        token = _value(self.token)
        headers = [f"Authorization: Bearer {token}"] if token else []
        try:
            self.ws = websocket.create_connection(
                ws_url(base, self.project), timeout=self.timeout, subprotocols=list(self.versions), header=headers
            )
        except websocket.WebSocketBadStatusException as refusal:
            raise _http_error(refusal.status_code, refusal.resp_body) from None
        except _SOCKET_ERRORS as error:
            raise ClientError("unavailable", f"could not connect: {error}") from None
        self.session.opened(self.ws.getsubprotocol())
        self.snapshot = None
        deadline = time.monotonic() + self.timeout
        while not self.session.synced:
            for message in self._read(deadline):
                if message.get("op") == "snapshot":
                    self.snapshot, self.snapshot_bytes = message, self._frame_bytes
        self._flush()
        assert self.snapshot is not None
        return self.snapshot

    def close(self) -> None:
        """Send a close frame and drop the socket without waiting for the answer.

        websocket-client's own ``close()`` waits for the reply inside a bare ``except``,
        which would swallow the GreenletExit Locust stops a user with."""
        ws, self.ws = self.ws, None
        if ws is not None:
            try:
                ws.send_close()
            except _SOCKET_ERRORS:
                pass
            ws.shutdown()
            self.session.closed()

    # --- edits and requests --------------------------------------------------------------

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        return self._change(self.session.create(obj)[0])

    def update(self, object_id: str, props: Mapping[str, Any]) -> dict[str, Any]:
        return self._change(self.session.update(object_id, props)[0])

    def delete(self, object_id: str) -> dict[str, Any]:
        return self._change(self.session.delete(object_id)[0])

    def request(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Send a message that is not a change (``ping``, ``presence`` with req); its reply."""
        self._ensure()
        req = self.session.new_req("r")
        self._send({**message, "req": req})
        deadline = time.monotonic() + self.timeout
        while True:
            for message in self._read(deadline):
                if message.get("req") == req and message.get("op") not in ("snapshot",):
                    return message

    def set_presence(self, state: Mapping[str, Any]) -> None:
        """Keep the latest presence; it goes now if due, else with a later call."""
        self.session.set_presence(state)
        if self.ws is not None:
            self._flush()

    def poll(self, timeout: float | None = 0.0) -> list[dict[str, Any]]:
        """The messages that arrive within ``timeout`` seconds (None: wait for one frame),
        applied to the copy; pending presence goes out."""
        self._ensure()
        assert self.ws is not None
        self.ws.settimeout(timeout)
        try:
            messages = self._receive_frame()
        except websocket.WebSocketTimeoutException:
            messages = []
        finally:
            if self.ws is not None:
                self.ws.settimeout(self.timeout)
        self._flush()
        return messages

    def wait_saved(self, timeout: float | None = None) -> None:
        """Read until nothing is unsaved (v3: ``saved`` covers every change)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self.session.unsaved:
            self._ensure()
            self._read(deadline)

    # --- plumbing ------------------------------------------------------------------------

    def _ensure(self) -> None:
        if self.ws is None:
            self.connect()

    def _change(self, change: Change) -> dict[str, Any]:
        self._ensure()
        self._flush()
        deadline = time.monotonic() + self.timeout
        while not change.answered:
            self._read(deadline)
        outcome = change.handle
        if isinstance(outcome, ClientError):
            raise outcome
        assert isinstance(outcome, dict)
        return outcome

    def _flush(self) -> None:
        for message in self.session.to_send():
            self._send(message)
        presence = self.session.take_presence(time.monotonic())
        if presence is not None:
            self._send(presence)

    def _send(self, message: Mapping[str, Any]) -> None:
        assert self.ws is not None
        try:
            self.ws.send(json.dumps(message, separators=(",", ":"), allow_nan=False))
        except _SOCKET_ERRORS as error:
            self._lost(error)

    def _read(self, deadline: float) -> list[dict[str, Any]]:
        """One frame's messages, applied; ``ClientError("timeout")`` past ``deadline``."""
        assert self.ws is not None
        left = deadline - time.monotonic()
        if left <= 0:
            raise ClientError("timeout", f"no answer within {self.timeout:g}s")
        self.ws.settimeout(left)
        try:
            return self._receive_frame()
        except websocket.WebSocketTimeoutException:
            raise ClientError("timeout", f"no answer within {self.timeout:g}s") from None

    def _receive_frame(self) -> list[dict[str, Any]]:
        assert self.ws is not None
        try:
            frame = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            raise
        except _SOCKET_ERRORS as error:
            self._lost(error)
        if not frame:  # the server closed the socket
            self._lost(None)
        self._frame_bytes = len(frame)
        messages = messages_of(frame)
        for message in messages:
            self._apply(self.session.receive(message))
        if self._throttled:
            self._throttled = False
            time.sleep(1.0)  # refused as rate_limited: let the server's bucket refill (gevent: cooperative)
        if self.session.resend_due:
            self._flush()
        return messages

    def _apply(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Answered):
                event.change.handle = event.ack
            elif isinstance(event, Refused):
                event.change.handle = event.error
            elif isinstance(event, Reply):
                pass  # read by request() from the messages themselves
            elif isinstance(event, Throttled):
                self._throttled = True

    def _lost(self, error: Exception | None) -> Any:
        ws, self.ws = self.ws, None
        if ws is not None:
            ws.shutdown()
        self.session.closed()
        raise ClientError("disconnected", f"the socket closed: {error or 'by the server'}")
