"""The relay on a real redis-server: the in-process tests of tests/unit/test_relay.py with
a Redis transport, and a password-protected Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from canvas_sync.devtools.redis_local import RedisServer
from canvas_sync.devtools.redis_local import Unavailable as RedisUnavailable
from canvas_sync.relay import RedisTransport, Transport

from tests.helpers import missing
from tests.unit.test_relay import (  # noqa: F401  # the same tests, with the backend below
    test_a_relayed_edit_is_saved_by_its_origin_alone,
    test_a_replica_that_stops_heartbeating_loses_its_presences,
    test_a_write_overwritten_in_the_table_is_repaired_with_the_relay_on,
    test_an_edit_reaches_the_other_replicas_clients_at_once,
    test_nobody_else_holding_a_project_costs_no_publish,
    test_presence_reaches_every_replica_coalesced_and_leaves,
)


@pytest.fixture
def backend(redis_server: RedisServer) -> Callable[[], Transport]:
    return lambda: RedisTransport(redis_server.url, timeout=1.0)


def test_a_password_protected_redis_needs_the_password(tmp_path: Any) -> None:
    """CANVAS_REDIS_PASSWORD reaches AUTH; without it the relay cannot publish."""
    try:
        server = RedisServer(log_path=tmp_path / "redis.log", password="s3cret-relay-password").start()
    except RedisUnavailable as error:
        missing(f"{error}; .ci/run installs it")

    async def run() -> tuple[list[int], str]:
        good = RedisTransport(server.url, timeout=1.0, password="s3cret-relay-password")
        bad = RedisTransport(server.url, timeout=1.0)
        try:
            counts = await good.publish([("canvas:{p}", b"x")])
            try:
                await bad.publish([("canvas:{p}", b"x")])
                refused = ""
            except Exception as error:  # the relay treats any transport error alike
                refused = type(error).__name__
            return counts, refused
        finally:
            await good.close()
            await bad.close()

    try:
        counts, refused = asyncio.run(run())
    finally:
        server.stop()
    assert counts == [0] and refused == "AuthenticationError"
