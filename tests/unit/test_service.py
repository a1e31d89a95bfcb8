"""The service in-process, on the in-memory store: shutdown, housekeeping, limits, errors."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from canvas_sync.app import create_app
from canvas_sync.config import load_settings
from canvas_sync.connection import Connection
from canvas_sync.dirty import DirtyObject
from canvas_sync.model import HybridClock, ObjectState
from canvas_sync.service import CanvasService
from canvas_sync.store import MemoryStore
from canvas_sync.store.memory import InjectedFault
from canvas_sync.wiring import build
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.helpers import InProcessClient


def service(store: MemoryStore | None = None, **settings: Any) -> CanvasService:
    values: dict[str, Any] = {
        "replica_id": "a",
        "autosave_interval": 3600,
        "sync_interval": 3600,
        "auth": "off",
        **settings,
    }
    return build(load_settings(**values), store or MemoryStore("a"))


async def started(svc: CanvasService) -> CanvasService:
    await svc.start()
    for _ in range(100):
        if svc.ready:
            return svc
        await asyncio.sleep(0.01)
    raise AssertionError("not ready")


class Recorder:
    """A client of a project: what it was sent, and on which thread."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sent: list[str] = []
        self.threads: set[str] = set()

    def send(self, text: str, key: object = None, latest: bool = False) -> None:
        self.threads.add(threading.current_thread().name)
        if self.fail:
            raise RuntimeError("injected send failure")
        self.sent.append(text)


def newer_in_table(store: MemoryStore, project: str, object_id: str, **props: Any) -> None:
    """Another replica saved a newer copy of the object (with a property this replica lacks)."""
    other = MemoryStore("b", shared=store)
    stamp = HybridClock("b", offset_ms=10_000).now()
    state = ObjectState.created(object_id, "rect", props, stamp)
    assert not other.write([DirtyObject(project, state)], stamp[0]).failed


def test_shutdown_merges_and_sends_on_the_loop() -> None:
    store = MemoryStore("a")

    async def run() -> tuple[bool, Recorder]:
        svc = await started(service(store))
        project = await svc.project("p1")
        watcher = Recorder()
        project.subscribe(watcher)  # type: ignore[arg-type]
        client = await InProcessClient(svc, "p1").open()
        assert client.send({"op": "create", "object": {"id": "o", "type": "rect"}})["op"] == "ack"
        newer_in_table(store, "p1", "o", y=7)
        return await svc.shutdown(), watcher

    flushed, watcher = asyncio.run(run())
    assert flushed
    assert watcher.threads == {threading.current_thread().name}  # the loop's thread, never a worker's
    assert any('"y":7' in text for text in watcher.sent)
    (saved,) = store.load_project("p1")
    assert saved.view() == {"id": "o", "type": "rect", "y": 7}


def test_shutdown_writes_again_when_the_read_back_fails_half_way() -> None:
    """The read-back marks one project's object dirty, then fails on the next: write again anyway."""
    store = MemoryStore("a")

    async def run() -> tuple[bool, CanvasService]:
        svc = await started(service(store))
        for pid in ("p1", "p2"):
            (await InProcessClient(svc, pid).open()).send(
                {"op": "create", "object": {"id": "o", "type": "rect", "x": 1}}
            )
        (await svc.project("p2")).subscribe(Recorder(fail=True))  # type: ignore[arg-type]
        real_write = store.write

        def write_then_clobber(objects: list[DirtyObject], saved_at_ms: int) -> Any:
            store.write = real_write  # type: ignore[method-assign]  # once
            report = real_write(objects, saved_at_ms)
            other, stamp = MemoryStore("b", shared=store), HybridClock("b", offset_ms=10_000).now()
            for obj in objects:  # another replica's update lands right after ours, without our x
                theirs = ObjectState(obj.state.id, obj.state.alive, obj.state.type, {"z": (2, stamp)})
                other.write([DirtyObject(obj.project, theirs)], stamp[0])
            return report

        store.write = write_then_clobber  # type: ignore[method-assign]
        return await svc.shutdown(), svc

    flushed, svc = asyncio.run(run())
    assert flushed and svc.dirty.counts() == (0, 0)
    assert {s.id: s.view() for s in store.load_project("p1")}["o"] == {"id": "o", "type": "rect", "x": 1, "z": 2}


def test_housekeeping_keeps_running_after_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    svc = service(project_idle_timeout=0.02)
    calls: list[int] = []

    def evict(idle: float) -> list[str]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected")
        return []

    monkeypatch.setattr(svc.projects, "evict_idle", evict)

    async def run() -> None:
        task = asyncio.create_task(svc._housekeeping())
        await asyncio.sleep(0.2)
        task.cancel()

    asyncio.run(run())
    assert len(calls) > 3


def test_every_frame_spends_the_rate_limit_malformed_ones_too() -> None:
    async def run() -> list[dict[str, Any]]:
        svc = await started(service(rate_limit=2))  # bursts of 4
        client = await InProcessClient(svc, "p1").open()
        replies = [client.send("{not json") for _ in range(4)]
        replies.append(client.send({"op": "create", "req": "r", "object": {"id": "o", "type": "rect"}}))
        replies.append(client.send("{not json"))
        await svc.shutdown()
        return replies

    replies = asyncio.run(run())
    assert [r["code"] for r in replies] == ["bad_json"] * 4 + ["rate_limited", "rate_limited"]
    assert replies[4]["req"] == "r"


def test_database_errors_reach_the_log_not_the_client(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore("a")

    async def run() -> tuple[int, str]:
        svc = await started(service(store))
        store.fault = lambda op: (
            (_ for _ in ()).throw(InjectedFault("arn:aws:dynamodb:secret-table detail")) if op == "load" else None
        )
        client = create_app(svc).test_client()
        response = await client.get("/projects/p1/objects")
        body = await response.get_data(as_text=True)
        await svc.shutdown()
        return response.status_code, body

    status, body = asyncio.run(run())
    assert status == 503 and "secret" not in body and json.loads(body)["error"] == "store_unavailable"
    assert any("secret" in (r.exc_text or "") for r in caplog.records)  # the detail is logged


# --- editors and viewers against a reference model ----------------------------------------

IDS = st.sampled_from(["a", "b", "c"])
PROPS = st.dictionaries(st.sampled_from(["x", "y", "fill"]), st.integers(0, 9) | st.none(), min_size=1, max_size=3)
KNOWN = {"bad_json", "bad_message", "conflict", "not_found", "too_large", "limit_exceeded", "rate_limited", "forbidden"}


class EditorsAndViewers(RuleBasedStateMachine):
    """Whatever editors and viewers send, the server's state is the model's: nothing from a
    viewer lands, every refusal carries a known code, and every socket stays usable."""

    def __init__(self) -> None:
        super().__init__()
        self.svc = service(rate_limit=0)
        self.project = self.svc.projects.install(self.svc.projects.build("p", []))
        self.editor, self.viewer = Connection(100_000), Connection(100_000)
        self.editor.project = self.viewer.project = self.project  # open() would load; this holds it already
        self.viewer.editor = False
        self.model: dict[str, dict[str, Any]] = {}

    def send(self, conn: Connection, message: dict[str, Any]) -> dict[str, Any]:
        reply = self.svc.receive(conn, json.dumps({**message, "req": "r"}))
        assert reply is not None
        answer = json.loads(reply)
        assert answer["op"] in ("ack", "pong") or answer["code"] in KNOWN, answer
        return dict(answer)

    @rule(oid=IDS, props=PROPS)
    def editor_creates(self, oid: str, props: dict[str, Any]) -> None:
        values = {k: v for k, v in props.items() if v is not None}
        answer = self.send(self.editor, {"op": "create", "object": {"id": oid, "type": "rect", **values}})
        if oid in self.model:
            assert answer["code"] == "conflict"
        else:
            assert answer["op"] == "ack"
            self.model[oid] = {"id": oid, "type": "rect", **values}

    @rule(oid=IDS, props=PROPS)
    def editor_updates(self, oid: str, props: dict[str, Any]) -> None:
        answer = self.send(self.editor, {"op": "update", "id": oid, "props": props})
        if oid not in self.model:
            assert answer["code"] == "not_found"
            return
        assert answer["op"] == "ack"
        for key, value in props.items():
            if value is None:
                self.model[oid].pop(key, None)
            else:
                self.model[oid][key] = value

    @rule(oid=IDS)
    def editor_deletes(self, oid: str) -> None:
        answer = self.send(self.editor, {"op": "delete", "id": oid})
        assert answer["op"] == ("ack" if self.model.pop(oid, None) is not None else "error")

    @rule(oid=IDS, props=PROPS, op=st.sampled_from(["create", "update", "delete"]))
    def viewer_tries_to_edit(self, oid: str, props: dict[str, Any], op: str) -> None:
        message = {
            "create": {"op": "create", "object": {"id": oid, "type": "rect"}},
            "update": {"op": "update", "id": oid, "props": props},
            "delete": {"op": "delete", "id": oid},
        }[op]
        assert self.send(self.viewer, message)["code"] == "forbidden"

    @rule(text=st.text(max_size=30))
    def anyone_sends_garbage(self, text: str) -> None:
        reply = self.svc.receive(self.viewer, text)
        assert reply is None or json.loads(reply)["op"] in ("error", "pong", "ack")

    @invariant()
    def state_is_the_model(self) -> None:
        assert [json.loads(v) for v in self.project.snapshot_jsons()] == [self.model[k] for k in sorted(self.model)]
        assert self.send(self.viewer, {"op": "ping"})["op"] == "pong"  # the sockets stay usable
        assert self.send(self.editor, {"op": "ping"})["op"] == "pong"


TestEditorsAndViewers = EditorsAndViewers.TestCase
TestEditorsAndViewers.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
