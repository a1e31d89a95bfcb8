"""What tests share besides fixtures: the repository's root, polling, HTTP in one line,
the replica launcher with what tests ask of it, and the rule for a missing tool."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from canvas_sync.admission import Admitted
from canvas_sync.auth import Identity, Role
from canvas_sync.devtools.replicas import ReplicaProcess
from canvas_sync.service import CanvasService, Fetch
from canvas_sync.store import DynamoStore, make_client

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output"
STRICT = os.environ.get("CANVAS_STRICT_TESTS") == "1"


def missing(reason: str) -> None:
    """Skip with a visible reason, or fail where the tool is required (CI)."""
    if STRICT:
        pytest.fail(f"required tool missing (CANVAS_STRICT_TESTS=1): {reason}")
    pytest.skip(reason)


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


def in_table(endpoint: str, table: str, project: str = "p1") -> dict[str, Any]:
    """The live objects of a project as DynamoDB holds them (consistent reads), by id: the
    one check of what is saved, beside what replicas hold in memory."""
    store = DynamoStore(make_client(endpoint), table)
    try:
        return {s.id: s.view() for s in store.load_project(project) if s.is_alive}
    finally:
        store.close()


def http_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


class Replica(ReplicaProcess):
    """One ``canvas-sync serve`` process, with what the tests ask of it."""

    def objects(self, project: str) -> list[dict[str, Any]]:
        status, body = http_json(f"{self.url}/projects/{project}/objects")
        assert status == 200, body
        return body["objects"]


async def eventually(predicate: Any, timeout: float = 5.0, what: str = "condition") -> float:
    """``wait_until`` on the event loop: poll without blocking it."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


class InProcessClient:
    """A client of a service in this process, without a socket: it opens, sends and closes
    through the service's own calls and reads what its connection was queued."""

    def __init__(self, svc: CanvasService, project_id: str, role: Role = Role.EDITOR, sub: str | None = None) -> None:
        self.svc, self.project_id = svc, project_id
        self.admitted = Admitted(project_id, Identity(sub, time.time() + 3600, {}) if sub else None, role, None)

    async def open(self, subprotocol: str | None = None) -> InProcessClient:
        self.conn = await self.svc.open(self.admitted, subprotocol)
        self.project = self.conn.project
        first, *self._early = self.conn.outbox.take()
        self.snapshot = json.loads(first)
        return self

    def send(self, message: dict[str, Any] | str) -> dict[str, Any] | None:
        text = message if isinstance(message, str) else json.dumps(message)
        reply = self.svc.receive(self.conn, text)
        if isinstance(reply, Fetch):  # no socket reader here: the test's store is the table, already read
            reply = self.svc.receive(self.conn, text, fetched=True)
        return None if not isinstance(reply, str) else dict(json.loads(reply))

    def received(self) -> list[dict[str, Any]]:
        texts, self._early = self._early + self.conn.outbox.take(), []
        return [json.loads(text) for text in texts]

    def close(self) -> None:
        self.svc.close(self.conn)
