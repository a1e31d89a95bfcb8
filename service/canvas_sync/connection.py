"""One WebSocket client: a bounded send queue, the task that drains it, and a rate limit.

Fan-out never awaits a client: it puts text on the client's queue. A client whose queue
is full is too slow to keep up, and is closed with 1013 rather than letting memory grow.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Any

SLOW_CLIENT = 1013
GOING_AWAY = 1001
UNAUTHORIZED = 4401
"""The token expired, or a renewal was invalid or for another subject."""
FORBIDDEN = 4403
"""A renewed token no longer grants this project."""
FLOODING = 4429
"""The client kept sending after ``rate_limited``."""

_CLOSE = object()


class Connection:
    def __init__(
        self, queue_size: int, rate_per_second: float = 0.0, on_slow: Callable[[], None] = lambda: None
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
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=queue_size)
        self._sending = asyncio.Lock()  # one frame at a time, in queue order
        self.close_code: int | None = None
        self.close_reason = ""
        self._rate = rate_per_second
        self._burst = 2 * rate_per_second
        self._tokens = self._burst
        self._refilled = time.monotonic()

    def send(self, text: str) -> None:
        """Queue a message; never blocks. A full queue closes the connection (1013)."""
        if self.close_code is not None:
            return
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.close(SLOW_CLIENT, "client too slow to keep up")

    def close(self, code: int, reason: str = "") -> None:
        """Ask the writer to close; messages already queued go first when there is room."""
        if self.close_code is not None:
            return
        self.close_code, self.close_reason = code, reason
        if code == SLOW_CLIENT:
            self.on_slow()
            _drain(self.queue)
        while self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(_CLOSE)

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

    async def reply(self, websocket: Any, text: str) -> None:
        """Answer the sender from its own reader task when nothing is queued ahead.

        That saves the hop through the writer task for every ack; order is kept because
        a message queued earlier (or one the writer is about to send) makes this queue too.
        """
        if self.close_code is None and self.queue.empty() and not self._sending.locked():
            async with self._sending:
                await websocket.send(text)
        else:
            self.send(text)

    async def pump(self, websocket: Any) -> None:
        """Send queued messages in order until asked to close."""
        while True:
            item = await self.queue.get()
            async with self._sending:
                if item is _CLOSE:
                    await websocket.close(self.close_code, self.close_reason)
                    return
                await websocket.send(item)


def _drain(queue: asyncio.Queue[Any]) -> None:
    while not queue.empty():
        queue.get_nowait()
