"""System fixtures: AWS DynamoDB Local (one per session), fresh tables, real replica
processes and redis-server.

Tests that need a tool skip with the reason when it is missing; with
``CANVAS_STRICT_TESTS=1`` (``.ci/run`` sets it) they fail instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from canvas_sync.devtools.dynamodb_local import DynamoDBLocal, Unavailable
from canvas_sync.devtools.process import free_port
from canvas_sync.devtools.redis_local import RedisServer
from canvas_sync.devtools.redis_local import Unavailable as RedisUnavailable
from canvas_sync.store import DynamoStore, make_client

from tests.helpers import OUTPUT, Replica, missing


@pytest.fixture(scope="session")
def dynamodb_local() -> Iterator[DynamoDBLocal]:
    OUTPUT.mkdir(exist_ok=True)
    try:
        local = DynamoDBLocal(log_path=OUTPUT / "dynamodb-local.log").start()
    except Unavailable as error:
        missing(f"DynamoDB Local unavailable: {error}")
    yield local
    local.stop()


@pytest.fixture
def table(dynamodb_local: DynamoDBLocal) -> Iterator[str]:
    """A fresh table (with index and TTL) for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    store = DynamoStore(make_client(dynamodb_local.endpoint), name)
    store.create_table()
    yield name
    store.client.delete_table(TableName=name)
    store.close()


@pytest.fixture
def ddb_store(dynamodb_local: DynamoDBLocal, table: str) -> Iterator[DynamoStore]:
    store = DynamoStore(make_client(dynamodb_local.endpoint), table, replica_id="test")
    yield store
    store.close()


@pytest.fixture
def replicas(dynamodb_local: DynamoDBLocal, table: str, tmp_path: Path) -> Iterator[Any]:
    """Factory: ``replicas(name, **CANVAS_settings)`` starts a replica process."""
    started: list[Replica] = []

    def start(name: str = "replica-a", wait_ready: bool = True, **settings: Any) -> Replica:
        settings = {
            "dynamodb_endpoint": dynamodb_local.endpoint,
            "table": table,
            "autosave_interval": 0.5,
            "shutdown_timeout": 10,
            "auth": "off",  # the tests of authentication switch it on with keys of their own
            **settings,
        }
        replica = Replica.configure(name, free_port(), log_path=tmp_path / f"{name}.log", **settings)
        started.append(replica)
        replica.start(wait=wait_ready)
        return replica

    yield start
    for replica in started:
        replica.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test (they start in milliseconds)."""
    try:
        server = RedisServer(log_path=tmp_path / "redis.log").start()
    except RedisUnavailable as error:
        missing(f"{error}; .ci/run installs it")
    yield server
    server.stop()
