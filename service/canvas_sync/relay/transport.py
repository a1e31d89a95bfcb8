"""How relay messages travel: Redis/Valkey pub/sub, or an in-memory broker for tests.

Both take batches to publish (answering how many subscribers got each message), keep one
subscription connection, and hand back one message at a time. Neither reconnects on its
own: the relay decides when a subscription is broken (an error, or its own heartbeat not
heard) and rebuilds it, because redis-py's pub/sub does not reliably do so itself
(redis/redis-py#2089, #2417) and a half-open socket raises nothing at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import redis.asyncio as redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

TRANSPORT_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
"""What a failing transport raises."""


class Transport(Protocol):
    async def publish(self, batch: list[tuple[str, bytes]]) -> list[int]:
        """Publish in order; how many subscribers received each message."""
        ...

    async def subscribe(self, channels: list[str]) -> None: ...

    async def unsubscribe(self, channels: list[str]) -> None: ...

    async def receive(self, timeout: float) -> tuple[str, bytes] | None:
        """The next (channel, data), or None when ``timeout`` passed quietly."""
        ...

    async def reset(self) -> None:
        """Drop the subscription connection; the next subscribe opens a new one."""
        ...

    async def close(self) -> None: ...


class RedisTransport:
    """Two connections: one publishes (pipelined), one holds the subscriptions.

    Timeouts, keepalive and retries are set explicitly (redis-py's defaults changed twice
    in 2026): a call that cannot finish within ``timeout`` fails instead of waiting, and
    nothing is retried under us, since the relay's own recovery covers every loss.
    """

    def __init__(self, url: str, timeout: float = 2.0, password: str | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.password = password
        self._client = self._connect()
        self._pubsub: Any = None

    def _connect(self) -> Any:
        extra: dict[str, Any] = {"password": self.password} if self.password else {}
        return redis.Redis.from_url(
            self.url,
            **extra,
            protocol=2,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            socket_keepalive=True,
            health_check_interval=0,
            retry=Retry(NoBackoff(), 0),
            max_connections=4,
        )

    async def publish(self, batch: list[tuple[str, bytes]]) -> list[int]:
        pipe = self._client.pipeline(transaction=False)
        for name, data in batch:
            pipe.publish(name, data)
        return [int(n) for n in await pipe.execute()]

    def _subscriber(self) -> Any:
        if self._pubsub is None:
            self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        return self._pubsub

    async def subscribe(self, channels: list[str]) -> None:
        if channels:
            async with asyncio.timeout(self.timeout):
                await self._subscriber().subscribe(*channels)

    async def unsubscribe(self, channels: list[str]) -> None:
        if channels and self._pubsub is not None:
            async with asyncio.timeout(self.timeout):
                await self._pubsub.unsubscribe(*channels)

    async def receive(self, timeout: float) -> tuple[str, bytes] | None:
        pubsub = self._subscriber()
        if not pubsub.subscribed:
            await asyncio.sleep(timeout)
            return None
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        if message is None or message.get("type") != "message":
            return None
        name = message["channel"]
        return (name.decode() if isinstance(name, bytes) else str(name)), bytes(message["data"])

    async def reset(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                async with asyncio.timeout(self.timeout):
                    await pubsub.aclose()
            except (*TRANSPORT_ERRORS, RuntimeError):
                pass  # the connection is broken anyway: that is why we reset it

    async def close(self) -> None:
        await self.reset()
        await self._client.aclose()


class MemoryBroker:
    """Pub/sub in one process, with the faults tests need: drop or duplicate chosen messages."""

    def __init__(self) -> None:
        self.transports: list[MemoryTransport] = []
        self.drop: Callable[[str, bytes], bool] = lambda channel, data: False
        self.duplicate: Callable[[str, bytes], bool] = lambda channel, data: False
        self.down = False
        """While True every call fails, as when Redis is unreachable."""

    def transport(self) -> MemoryTransport:
        transport = MemoryTransport(self)
        self.transports.append(transport)
        return transport


class MemoryTransport:
    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.channels: set[str] = set()
        self.inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.closed = False

    def _check(self) -> None:
        if self.broker.down or self.closed:
            raise ConnectionError("memory broker down")

    async def publish(self, batch: list[tuple[str, bytes]]) -> list[int]:
        self._check()
        counts = []
        for name, data in batch:
            receivers = [t for t in self.broker.transports if name in t.channels and not t.closed]
            counts.append(len(receivers))
            if self.broker.drop(name, data):
                continue
            for transport in receivers:
                transport.inbox.put_nowait((name, data))
                if self.broker.duplicate(name, data):
                    transport.inbox.put_nowait((name, data))
        return counts

    async def subscribe(self, channels: list[str]) -> None:
        self._check()
        self.channels.update(channels)

    async def unsubscribe(self, channels: list[str]) -> None:
        self.channels.difference_update(channels)

    async def receive(self, timeout: float) -> tuple[str, bytes] | None:
        self._check()
        try:
            async with asyncio.timeout(timeout):
                return await self.inbox.get()
        except TimeoutError:
            return None

    async def reset(self) -> None:
        self.channels.clear()
        self.inbox = asyncio.Queue()

    async def close(self) -> None:
        self.closed = True
