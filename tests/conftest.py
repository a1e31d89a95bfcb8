"""Shared fixtures: AWS DynamoDB Local (one per session) and real replica processes.

Tests that need DynamoDB Local skip with the reason when Java or npm is missing; with
``CANVAS_STRICT_TESTS=1`` (``.ci/run`` sets it) they fail instead.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from canvas_sync.dynamodb_local import DynamoDBLocal, Unavailable, free_port
from canvas_sync.redis_local import RedisServer
from canvas_sync.redis_local import Unavailable as RedisUnavailable
from canvas_sync.replicas import ReplicaProcess
from canvas_sync.store import DynamoStore, make_client

STRICT = os.environ.get("CANVAS_STRICT_TESTS") == "1"
OUTPUT = Path(__file__).resolve().parent.parent / "test-output"


def missing(reason: str) -> None:
    """Skip with a visible reason, or fail where the tool is required (CI)."""
    if STRICT:
        pytest.fail(f"required tool missing (CANVAS_STRICT_TESTS=1): {reason}")
    pytest.skip(reason)


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


def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition", step: float = 0.05) -> float:
    """Poll until ``predicate()`` is true; seconds it took. Fails after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - started


def http_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def http_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


class Replica(ReplicaProcess):
    """One ``canvas-sync serve`` process, with what the tests ask of it."""

    def objects(self, project: str) -> list[dict[str, Any]]:
        status, body = http_json(f"{self.url}/projects/{project}/objects")
        assert status == 200, body
        return body["objects"]


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
