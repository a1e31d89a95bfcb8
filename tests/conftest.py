"""Shared fixtures: AWS DynamoDB Local (one per session) and real replica processes.

Tests that need DynamoDB Local skip with the reason when Java or npm is missing; with
``CANVAS_STRICT_TESTS=1`` (``.ci/run`` sets it) they fail instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from canvas_sync.dynamodb_local import DynamoDBLocal, Unavailable, free_port
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


@dataclass
class Replica:
    """One ``canvas-sync serve`` process."""

    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    _log: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, project: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/{project}"

    def start(self, wait_ready: bool = True) -> Replica:
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "canvas_sync", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, f"{self.name} exited:\n{self.logs()}"
            try:
                if http_json(f"{self.url}/readyz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready in {timeout}s:\n{self.logs()}")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.exit_code = self.process.wait(timeout)
        return self.exit_code

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self, event: str) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                out.append(record)
        return out

    def objects(self, project: str) -> list[dict[str, Any]]:
        status, body = http_json(f"{self.url}/projects/{project}/objects")
        assert status == 200, body
        return body["objects"]


@pytest.fixture
def replicas(dynamodb_local: DynamoDBLocal, table: str, tmp_path: Path) -> Iterator[Any]:
    """Factory: ``replicas(name, **CANVAS_settings)`` starts a replica process."""
    started: list[Replica] = []

    def start(name: str = "replica-a", wait_ready: bool = True, **settings: Any) -> Replica:
        env = dict(os.environ)
        env.update(
            CANVAS_DYNAMODB_ENDPOINT=dynamodb_local.endpoint,
            CANVAS_TABLE=table,
            CANVAS_REPLICA_ID=name,
            CANVAS_AUTOSAVE_INTERVAL="0.5",
            CANVAS_SHUTDOWN_TIMEOUT="10",
            PYTHONUNBUFFERED="1",
        )
        env.update({f"CANVAS_{k.upper()}": str(v) for k, v in settings.items()})
        replica = Replica(name, free_port(), env, tmp_path / f"{name}.log")
        started.append(replica)
        return replica.start(wait_ready=wait_ready)

    yield start
    for replica in started:
        replica.kill()
