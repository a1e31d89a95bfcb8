"""The projects API in-process, on the memory stores: ops, import, versions and restore,
roles, refusals, the registry's upkeep and automatic versions."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from canvas_sync.admission import Admitted, Refusal
from canvas_sync.auth import Identity, Role
from canvas_sync.config import load_settings
from canvas_sync.resources import MAX_OPS, RELOAD, ApiError, Buckets, Resources
from canvas_sync.service import CanvasService
from canvas_sync.store import MemoryStore
from canvas_sync.store.registry import MemoryRegistry
from canvas_sync.store.versions import MemoryVersions
from canvas_sync.wiring import build

from tests.helpers import InProcessClient


def service(**settings: Any) -> CanvasService:
    values: dict[str, Any] = {
        "replica_id": "a",
        "autosave_interval": 3600,
        "sync_interval": 3600,
        "auth": "off",
        **settings,
    }
    return build(load_settings(**values), MemoryStore("a"))


def run(test: Callable[[CanvasService, Resources], Awaitable[None]], **settings: Any) -> None:
    async def main() -> None:
        svc = service(**settings)
        await svc.start()
        for _ in range(100):
            if svc.ready:
                break
            await asyncio.sleep(0.01)
        api = Resources(svc, MemoryRegistry(), MemoryVersions())
        try:
            await test(svc, api)
        finally:
            await svc.shutdown()

    asyncio.run(main())


def who(project: str = "p", role: Role = Role.OWNER, sub: str = "ann") -> Admitted:
    return Admitted(project, Identity(sub, time.time() + 3600, {project: role}), role, "10.0.0.1")


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def objects(svc: CanvasService, project: str = "p") -> list[dict[str, Any]]:
    held = svc.projects.get(project)
    return [json.loads(v) for v in held.snapshot_jsons()] if held else []


# --- ops --------------------------------------------------------------------------------------


def test_ops_are_answered_as_the_socket_answers_them_and_reach_the_clients() -> None:
    async def test(svc: CanvasService, api: Resources) -> None:
        watcher = await InProcessClient(svc, "p").open()
        ops = [
            {"op": "create", "object": {"id": "r1", "type": "rect", "x": 1}, "req": "a"},
            {"op": "create", "object": {"id": "r1", "type": "rect"}, "req": "b"},
            {"op": "update", "id": "r1", "props": {"x": 2, "fill": "#f00"}},
            {"op": "delete", "id": "nope", "req": "c"},
            {"op": "ping", "req": "d"},
            "not an object",
            {"op": "create", "object": {"id": "r2", "type": "ellipse"}},
            {"op": "delete", "id": "r2"},
        ]
        results = (await api.ops(who(role=Role.EDITOR), body({"ops": ops})))["results"]
        assert [r["op"] for r in results] == ["ack", "error", "ack", "error", "error", "error", "ack", "ack"]
        assert [r.get("code") for r in results if r["op"] == "error"] == [
            "conflict",
            "not_found",
            "bad_message",
            "bad_message",
        ]
        assert results[0]["req"] == "a" and results[1]["req"] == "b" and results[3]["req"] == "c"
        assert [r["seq"] for r in results if r["op"] == "ack"] == [1, 2, 3, 4]
        assert objects(svc) == [{"fill": "#f00", "id": "r1", "type": "rect", "x": 2}]
        seen = watcher.received()
        assert [m["op"] for m in seen] == ["upsert", "upsert", "delete"]  # r1's newer state replaced its first
        assert seen[0]["object"] == {"fill": "#f00", "id": "r1", "type": "rect", "x": 2}
        assert svc.dirty.project_count("p") == 2  # saved like a socket's edits (r1 and r2's tombstone)
        replay = {"op": "update", "id": "r1", "props": {"x": 0}, "stamp": results[0]["stamp"]}
        (older,) = (await api.ops(who(), body({"ops": [replay]})))["results"]
        assert older["op"] == "ack" and objects(svc)[0]["x"] == 2  # a replayed older change loses

    run(test)


def test_ops_refusals_viewer_bad_bodies_too_many_and_rate_limits() -> None:
    async def test(svc: CanvasService, api: Resources) -> None:
        with pytest.raises(Refusal) as refused:
            await api.ops(who(role=Role.VIEWER), body({"ops": []}))
        assert refused.value.status == 403
        for bad, code in ((b"{", "bad_json"), (b"[]", "bad_message"), (body({"ops": {}}), "bad_message")):
            with pytest.raises(ApiError) as error:
                await api.ops(who(), bad)
            assert (error.value.status, error.value.code) == (400, code)
        with pytest.raises(ApiError) as error:
            await api.ops(who(), body({"ops": [{"op": "delete", "id": "x"}] * (MAX_OPS + 1)}))
        assert error.value.status == 413
        creates = [{"op": "create", "object": {"id": f"o{i}", "type": "rect"}} for i in range(30)]
        results = (await api.ops(who(), body({"ops": creates})))["results"]
        assert [r["op"] for r in results].count("ack") == 20  # bursts of twice the rate (10/s)
        assert {r["code"] for r in results if r["op"] == "error"} == {"rate_limited"}
        assert len(objects(svc)) == 20

    run(test, rate_limit=10)


def test_buckets_refill_and_stay_bounded() -> None:
    buckets = Buckets(1.0)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [True, True, False]
    assert buckets.take("a", 1.0) and not buckets.take("a", 1.0)
    for i in range(Buckets.MAX_KEYS + 1):
        buckets.take(f"k{i}", 100.0)
    assert len(buckets._held) <= Buckets.MAX_KEYS + 1
    assert Buckets(0).take("anyone")


# --- import -----------------------------------------------------------------------------------


def test_an_import_makes_the_project_hold_exactly_the_objects_as_one_change() -> None:
    async def test(svc: CanvasService, api: Resources) -> None:
        first = [
            {"id": "a", "type": "rect", "x": 1, "keep": True},
            {"id": "b", "type": "rect", "x": 1},
            {"id": "c", "type": "rect"},
        ]
        assert (await api.import_objects(who(), body({"objects": first})))["created"] == 3
        watcher = await InProcessClient(svc, "p").open()
        second = [
            {"id": "a", "type": "rect", "x": 1, "keep": True},  # unchanged: no message
            {"id": "b", "type": "ellipse", "x": 1.0},  # 1.0 is not 1
            {"id": "d", "type": "text", "n": 12345678901234567890123},
        ]
        done = await api.import_objects(who(), body({"objects": second}))
        assert (done["created"], done["updated"], done["deleted"]) == (1, 1, 1)
        assert objects(svc) == sorted(second, key=lambda o: o["id"])
        assert objects(svc)[1]["x"] == 1.0 and isinstance(objects(svc)[1]["x"], float)
        assert objects(svc)[2]["n"] == 12345678901234567890123
        seen = watcher.received()
        assert sorted((m["op"], m.get("id") or m["object"]["id"]) for m in seen) == [
            ("delete", "c"),
            ("upsert", "b"),
            ("upsert", "d"),
        ]
        removed = await api.import_objects(who(), body({"objects": [{"id": "a", "type": "rect"}]}))
        assert removed["updated"] == 1 and objects(svc) == [{"id": "a", "type": "rect"}]  # properties removed
        assert (await api.import_objects(who(), body({"objects": []})))["deleted"] == 1
        assert objects(svc) == []

    run(test)


def test_import_refusals_change_nothing() -> None:
    async def test(svc: CanvasService, api: Resources) -> None:
        await api.import_objects(who(), body({"objects": [{"id": "a", "type": "rect"}]}))
        with pytest.raises(Refusal) as refused:
            await api.import_objects(who(role=Role.EDITOR), body({"objects": []}))
        assert refused.value.status == 403
        cases = [
            ({"objects": [{"id": "x", "type": "rect"}, {"id": "x", "type": "rect"}]}, 400, "bad_message"),
            ({"objects": [{"id": "x", "type": "rect"}, {"id": "bad id", "type": "rect"}]}, 400, "bad_message"),
            ({"objects": [{"id": "x"}]}, 400, "bad_message"),
            ({"objects": [{"id": "x", "type": "rect", "big": "y" * 5000}]}, 413, "too_large"),
            ({"objects": [{"id": f"o{i}", "type": "rect"} for i in range(6)]}, 400, "limit_exceeded"),
            ({"objects": "no"}, 400, "bad_message"),
        ]
        messages = []
        for value, status, code in cases:
            with pytest.raises(ApiError) as error:
                await api.import_objects(who(), body(value))
            assert (error.value.status, error.value.code) == (status, code), value
            messages.append(error.value.message)
        assert "'x' is given twice" in messages[0] and messages[1].startswith("objects[1]: ")
        assert objects(svc) == [{"id": "a", "type": "rect"}]

    run(test, max_objects_per_project=5, max_object_bytes=4096, max_stored_object_bytes=8192)


def test_a_change_too_big_for_a_clients_outbox_makes_it_reconnect() -> None:
    async def test(svc: CanvasService, api: Resources) -> None:
        small = await InProcessClient(svc, "p").open()
        await api.import_objects(who(), body({"objects": [{"id": f"o{i}", "type": "rect"} for i in range(20)]}))
        assert small.conn.close_code == RELOAD
        fits = await InProcessClient(svc, "p").open()
        await api.import_objects(who(), body({"objects": [{"id": "o1", "type": "rect"}]}))
        assert fits.conn.close_code is None and len(fits.received()) == 19

    run(test, send_queue_size=19)


# --- versions ---------------------------------------------------------------------------------


def test_versions_create_list_get_restore_and_undo() -> None:
    async def test(svc: CanvasService, api: Resources) -> None:
        await api.import_objects(who(), body({"objects": [{"id": "a", "type": "rect", "x": 1}]}))
        v1 = await api.create_version(who(role=Role.EDITOR, sub="ed"), body({"name": "first"}))
        assert (v1["name"], v1["objects"], v1["by"], v1["auto"]) == ("first", 1, "ed", False)
        await api.ops(who(), body({"ops": [{"op": "update", "id": "a", "props": {"x": 2}}]}))
        await api.ops(who(), body({"ops": [{"op": "create", "object": {"id": "b", "type": "rect"}}]}))
        v2 = await api.create_version(who(), b"")
        listed = (await api.list_versions(who(role=Role.VIEWER)))["versions"]
        assert [v["version"] for v in listed] == [v2["version"], v1["version"]]
        got = json.loads(await api.get_version(who(role=Role.VIEWER), v1["version"]))
        assert got["objects"] == [{"id": "a", "type": "rect", "x": 1}] and got["version"] == v1["version"]
        watcher = await InProcessClient(svc, "p").open()
        restored = await api.restore(who(), v1["version"])
        assert (restored["updated"], restored["deleted"]) == (1, 1)
        assert objects(svc) == [{"id": "a", "type": "rect", "x": 1}]
        assert sorted(m["op"] for m in watcher.received()) == ["delete", "upsert"]  # live, one change
        undo = json.loads(await api.get_version(who(), restored["undo"]))
        assert undo["auto"] and len(undo["objects"]) == 2
        await api.restore(who(), restored["undo"])
        assert objects(svc) == [{"id": "a", "type": "rect", "x": 2}, {"id": "b", "type": "rect"}]

    run(test)


def test_version_refusals() -> None:
    async def test(svc: CanvasService, api: Resources) -> None:
        v = await api.create_version(who(), body({"name": "x"}))
        for role, call in (
            (Role.VIEWER, lambda a: api.create_version(a, b"")),
            (Role.EDITOR, lambda a: api.restore(a, v["version"])),
            (Role.VIEWER, lambda a: api.restore(a, v["version"])),
        ):
            with pytest.raises(Refusal) as refused:
                await call(who(role=role))
            assert refused.value.status == 403
        for unknown in ("0000000000000-000000", "nope", "../x"):
            for call in (api.get_version, api.restore):
                with pytest.raises(ApiError) as error:
                    await call(who(), unknown)
                assert error.value.status == 404
        for bad in (body({"name": 3}), body({"name": "n" * 201}), b"[1]", b"{"):
            with pytest.raises(ApiError) as error:
                await api.create_version(who(), bad)
            assert error.value.status == 400
        assert (await api.list_versions(who(project="empty")))["versions"] == []

    run(test)


def test_retention_deletes_the_oldest_automatic_versions_first() -> None:
    async def test(svc: CanvasService, api: Resources) -> None:
        named = await api.create_version(who(), body({"name": "keep me"}))
        project = await svc.project("p")
        autos = [await api._snapshot(project, "", True, "auto", None) for _ in range(3)]
        kept = [v["version"] for v in (await api.list_versions(who()))["versions"]]
        assert kept == [autos[2].version, autos[1].version, named["version"]]
        assert svc.metrics.versions_pruned._value.get() == 1

    run(test, version_retention=3)


# --- upkeep: the registry and automatic versions ----------------------------------------------


def test_the_registry_is_written_after_a_change_and_at_most_once_an_interval() -> None:
    async def test(svc: CanvasService, api: Resources) -> None:
        registry = api.registry
        assert isinstance(registry, MemoryRegistry)
        await svc.project("untouched")
        await api.upkeep()
        puts = lambda: [c for c in registry.calls if c == "put"]  # noqa: E731
        assert puts() == []  # loaded, never changed here: nothing to register
        creates = [{"op": "create", "object": {"id": f"o{i}", "type": "rect"}} for i in range(3)]
        await api.ops(who(), body({"ops": creates}))
        await api.upkeep()
        assert puts() == ["put"]
        listed = await api.list_projects(None, {})
        assert [(p["project"], p["objects"]) for p in listed["projects"]] == [("p", 3)]
        for _ in range(5):  # edits keep coming: no write per edit, none within the interval
            await api.ops(who(), body({"ops": [{"op": "update", "id": "o1", "props": {"x": time.time()}}]}))
            svc.autosave.run_pass()
            await api.upkeep()
        assert puts() == ["put"]
        await asyncio.sleep(0.3)
        await api.upkeep()
        assert puts() == ["put", "put"]
        await api.ops(who(), body({"ops": [{"op": "delete", "id": "o0"}]}))
        svc.autosave.run_pass()
        await api.upkeep(final=True)  # shutdown ignores the interval
        assert puts() == ["put"] * 3
        assert (await api.list_projects(None, {}))["projects"][0]["objects"] == 2

    run(test, registry_interval=0.3)


def test_listing_by_grants_prefix_and_cursor() -> None:
    async def test(svc: CanvasService, api: Resources) -> None:
        from canvas_sync.store.registry import Entry

        ids = ["a:1", "a:2", "a:3", "b:1", "b:2", "c", "d"]
        api.registry.put([Entry(i, n, 1.0) for n, i in enumerate(ids)])

        def identity(**grants: str) -> Identity:
            return Identity(
                "ann", time.time() + 60, {k.replace("_", ":").replace("S", "*"): Role(v) for k, v in grants.items()}
            )

        async def listed(who: Identity | None, **args: str) -> tuple[list[str], str | None]:
            page = await api.list_projects(who, args)
            return [p["project"] for p in page["projects"]], page["next"]

        assert await listed(None) == (ids, None)
        assert await listed(None, prefix="a:") == (["a:1", "a:2", "a:3"], None)
        grants = identity(a_S="viewer", c="owner", x="editor")
        assert await listed(grants) == (["a:1", "a:2", "a:3", "c"], None)
        assert await listed(grants, limit="2") == (["a:1", "a:2"], "a:2")
        assert await listed(grants, limit="2", cursor="a:2") == (["a:3", "c"], None)
        assert await listed(grants, prefix="b") == ([], None)
        assert await listed(identity(S="viewer"), prefix="b", limit="1") == (["b:1"], "b:1")
        for bad in ({"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"prefix": "a b"}, {"cursor": "bad id"}):
            with pytest.raises(ApiError) as error:
                await api.list_projects(None, bad)
            assert error.value.status == 400

    run(test)


def test_automatic_versions_while_a_project_is_edited() -> None:
    async def test(svc: CanvasService, api: Resources) -> None:
        await svc.project("idle")

        async def count() -> int:
            await api.upkeep()
            return len((await api.list_versions(who()))["versions"])

        await api.ops(who(), body({"ops": [{"op": "create", "object": {"id": "a", "type": "rect"}}]}))
        assert await count() == 1
        await api.ops(who(), body({"ops": [{"op": "update", "id": "a", "props": {"x": 1}}]}))
        svc.autosave.run_pass()  # what upkeep follows: saves
        assert await count() == 1  # changed, but the newest version is younger than the interval
        await asyncio.sleep(0.25)
        assert await count() == 2
        await asyncio.sleep(0.25)
        assert await count() == 2  # nothing changed since: no new version
        versions = (await api.list_versions(who()))["versions"]
        assert all(v["auto"] for v in versions) and versions[0]["objects"] == 1
        assert (await api.list_versions(who(project="idle")))["versions"] == []

    run(test, version_interval=0.2)


def test_delete_needs_the_owner_role() -> None:
    async def test(svc: CanvasService, api: Resources) -> None:
        for role in (Role.EDITOR, Role.VIEWER):
            with pytest.raises(Refusal) as refused:
                await api.delete(who(role=role))
            assert refused.value.status == 403

    run(test)


def test_delete_drops_the_project_its_entry_and_its_versions() -> None:
    async def test(svc: CanvasService, api: Resources) -> None:
        if not hasattr(svc, "delete_project"):
            pytest.skip("CanvasService.delete_project is not there yet")
        await api.import_objects(who(), body({"objects": [{"id": "a", "type": "rect"}]}))
        await api.create_version(who(), b"")
        await api.upkeep()
        await api.delete(who())
        assert (await api.list_projects(None, {}))["projects"] == []
        assert (await api.list_versions(who()))["versions"] == []
        assert objects(svc) == []
        await api.upkeep()
        assert (await api.list_projects(None, {}))["projects"] == []

    run(test)
