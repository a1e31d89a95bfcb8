"""The projects API against real replicas and AWS DynamoDB Local, authentication on:
every route and its refusals, imports and restores seen live by sockets on two replicas,
the registry's index, versions in chunks, deletes."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from canvas_sync.devtools.dynamodb_local import DynamoDBLocal
from canvas_sync.store import DynamoStore, make_client
from canvas_sync.store.registry import INDEX_REGISTRY, META, DynamoRegistry, Entry, page, plan
from canvas_sync.store.versions import DynamoVersions, Fenced, make, new_id, pack
from canvas_sync.tokens import mint
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.helpers import Replica, http_text, wait_until
from tests.unit.test_versions import check as check_versions

pytestmark = pytest.mark.dynamodb_local

SECRET = "a shared secret of at least 32 bytes, for tests"
FAST = {"autosave_interval": 0.3, "sync_interval": 0.2, "registry_interval": 0.5, "rate_limit": 200}


def token(sub: str, grants: dict[str, str]) -> str:
    return mint(sub, grants, 3600, secret=SECRET.encode())  # minted at import: outlive a slow suite


OWNER = token("ann", {"p": "owner", "q": "owner", "reuse": "owner"})
EDITOR = token("ed", {"p": "editor"})
VIEWER = token("vi", {"p": "viewer"})
STRANGER = token("st", {"other": "owner"})


def http(method: str, url: str, bearer: str | None, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    if bearer:
        request.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        text = error.read()
        return error.code, json.loads(text) if text else None


def secured(replicas: Any, name: str = "a", **settings: Any) -> Replica:
    replica: Replica = replicas(name, auth="jwt", auth_secret=SECRET, **{**FAST, **settings})
    return replica


def socket(replica: Replica, project: str, bearer: str = OWNER) -> ClientConnection:
    """Use it in ``with``; its snapshot is read by :func:`drain` like any message."""
    protocols = ["canvas-sync.v1", f"canvas-sync.bearer.{bearer}"]
    return connect(replica.ws_url(project), subprotocols=protocols)  # type: ignore[arg-type]


def drain(ws: ClientConnection, until: Any, timeout: float = 10) -> list[dict[str, Any]]:
    """Messages until ``until(seen)`` holds."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not until(seen):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; saw {seen}"
        try:
            seen.append(json.loads(ws.recv(left)))
        except TimeoutError:
            continue
    return seen


def objects_of(replica: Replica, project: str) -> list[dict[str, Any]]:
    status, answer = http("GET", f"{replica.url}/projects/{project}/objects", OWNER)
    assert status == 200, answer
    return list(answer["objects"])


def test_every_route_and_its_refusals(replicas: Any) -> None:
    a = secured(replicas, max_request_bytes=200_000)
    p = f"{a.url}/projects/p"
    cases: list[tuple[str, int, int]] = []

    def case(name: str, expected: int, got: tuple[int, Any]) -> Any:
        cases.append((name, expected, got[0]))
        return got[1]

    create = {"op": "create", "object": {"id": "r1", "type": "rect", "x": 1}, "req": "c1"}
    body = case("ops, editor", 200, http("POST", f"{p}/ops", EDITOR, {"ops": [create, create]}))
    assert [r["op"] for r in body["results"]] == ["ack", "error"] and body["results"][1]["code"] == "conflict"
    case("ops, viewer", 403, http("POST", f"{p}/ops", VIEWER, {"ops": [create]}))
    case("ops, no token", 401, http("POST", f"{p}/ops", None, {"ops": [create]}))
    case("ops, no grant", 403, http("POST", f"{p}/ops", STRANGER, {"ops": [create]}))
    case("ops, bad JSON", 400, http("POST", f"{p}/ops", EDITOR, raw=b"{"))
    case("ops, not an array", 400, http("POST", f"{p}/ops", EDITOR, {"ops": 1}))
    case("ops, too many", 413, http("POST", f"{p}/ops", EDITOR, {"ops": [create] * 1001}))
    case("ops, a body too large", 413, http("POST", f"{p}/ops", EDITOR, raw=b" " * 300_000))
    case("ops, bad project id", 400, http("POST", f"{a.url}/projects/bad%20id/ops", EDITOR, {"ops": []}))
    many = [{"op": "update", "id": "r1", "props": {"x": i}} for i in range(450)]
    limited = case("ops, past the rate limit", 200, http("POST", f"{p}/ops", EDITOR, {"ops": many}))
    assert {r.get("code") for r in limited["results"]} == {None, "rate_limited"}

    objects = [{"id": "a", "type": "rect", "x": 1}, {"id": "b", "type": "ellipse", "big": 12345678901234567890123}]
    case("import, editor", 403, http("PUT", f"{p}/objects", EDITOR, {"objects": objects}))
    case("import, bad object", 400, http("PUT", f"{p}/objects", OWNER, {"objects": [{"id": "a"}]}))
    done = case("import, owner", 200, http("PUT", f"{p}/objects", OWNER, {"objects": objects}))
    assert (done["created"], done["deleted"]) == (2, 1)
    assert objects_of(a, "p") == objects

    made = case("version, editor", 201, http("POST", f"{p}/versions", EDITOR, {"name": "two objects"}))
    case("version, viewer", 403, http("POST", f"{p}/versions", VIEWER, {}))
    listed = case("versions, viewer", 200, http("GET", f"{p}/versions", VIEWER))
    assert [v["version"] for v in listed["versions"]] == [made["version"]] and made["objects"] == 2
    got = case("version, get", 200, http("GET", f"{p}/versions/{made['version']}", VIEWER))
    assert got["objects"] == objects and got["name"] == "two objects" and got["by"] == "ed"
    case("version, unknown", 404, http("GET", f"{p}/versions/0000000000000-000000", VIEWER))
    case("version, not an id", 404, http("GET", f"{p}/versions/nope", VIEWER))
    case("restore, unknown version", 404, http("POST", f"{p}/versions/0000000000000-000000/restore", OWNER))
    http("PUT", f"{p}/objects", OWNER, {"objects": [{"id": "c", "type": "text"}]})
    case("restore, editor", 403, http("POST", f"{p}/versions/{made['version']}/restore", EDITOR))
    restored = case("restore, owner", 200, http("POST", f"{p}/versions/{made['version']}/restore", OWNER))
    assert objects_of(a, "p") == objects and restored["undo"]
    case("restore, undo", 200, http("POST", f"{p}/versions/{restored['undo']}/restore", OWNER))
    assert objects_of(a, "p") == [{"id": "c", "type": "text"}]

    case("delete, editor", 403, http("DELETE", p, EDITOR))
    case("delete, viewer", 403, http("DELETE", p, VIEWER))
    case("delete, no grant", 403, http("DELETE", p, STRANGER))
    case("delete, owner", 204, http("DELETE", p, OWNER))
    assert objects_of(a, "p") == []
    case("versions after a delete", 200, http("GET", f"{p}/versions", OWNER))
    assert http("GET", f"{p}/versions", OWNER)[1]["versions"] == []

    case("list, no token", 401, http("GET", f"{a.url}/projects", None))
    case("list, bad limit", 400, http("GET", f"{a.url}/projects?limit=5000", OWNER))
    case("unknown route", 404, http("GET", f"{p}/nothing", OWNER))
    wrong = [(name, expected, got) for name, expected, got in cases if expected != got]
    assert not wrong, wrong
    metrics = http_text(f"{a.url}/metrics")
    for route, status in (("ops", "200"), ("ops", "403"), ("import", "200"), ("delete", "204"), ("restore", "404")):
        assert f'canvas_project_api_requests_total{{route="{route}",status="{status}"}}' in metrics
    assert "canvas_versions_created_total" in metrics and "canvas_registry_writes_total" in metrics
    log = a.log_path.read_text() if a.log_path else ""
    assert '"event": "api"' in log and '"route": "restore"' in log


def test_listing_covers_the_grants_pages_in_id_order_and_follows_saves(replicas: Any) -> None:
    a, b = secured(replicas, "a"), secured(replicas, "b")
    admin = token("admin", {"*": "owner"})
    ids = [f"team-1:board-{i:02d}" for i in range(12)] + ["team-2:x", "solo", "zeta"]
    for n, pid in enumerate(ids):
        replica = (a, b)[n % 2]
        status, _ = http("PUT", f"{replica.url}/projects/{pid}/objects", admin, {"objects": [{"id": "o", "type": "r"}]})
        assert status == 200

    def listed(bearer: str, **query: Any) -> tuple[list[str], str | None]:
        text = "&".join(f"{k}={v}" for k, v in query.items())
        status, answer = http("GET", f"{a.url}/projects?{text}", bearer)
        assert status == 200, answer
        return [e["project"] for e in answer["projects"]], answer["next"]

    wait_until(lambda: len(listed(admin)[0]) == len(ids), 10, "every project registered")
    assert listed(admin)[0] == sorted(ids)
    team = token("t", {"team-1:*": "viewer", "solo": "editor", "team-2:x": "viewer"})
    assert listed(team) == (sorted([*ids[:12], "team-2:x", "solo"]), None)
    first, cursor = listed(team, limit=5)
    assert first == sorted(ids)[:5] and cursor == first[-1]
    rest: list[str] = []
    while cursor is not None:
        more, cursor = listed(team, limit=5, cursor=cursor)
        rest += more
    assert first + rest == listed(team)[0]
    assert listed(team, prefix="team-1:board-1")[0] == [f"team-1:board-1{i}" for i in range(2)]
    assert listed(token("x", {"nothing": "owner"})) == ([], None)
    entry = http("GET", f"{a.url}/projects?prefix=solo", admin)[1]["projects"][0]
    assert entry["objects"] == 1 and entry["updated_at"] > time.time() - 60
    http("PUT", f"{b.url}/projects/solo/objects", admin, {"objects": [{"id": f"o{i}", "type": "r"} for i in range(3)]})
    wait_until(
        lambda: http("GET", f"{a.url}/projects?prefix=solo", admin)[1]["projects"][0]["objects"] == 3,
        10,
        "the registry follows the saves",
    )


@pytest.mark.parametrize("relay", [False, True], ids=["table", "relay"])
def test_imports_and_restores_are_live_for_sockets_on_both_replicas(
    replicas: Any, relay: bool, request: pytest.FixtureRequest
) -> None:
    extra = {"redis_url": request.getfixturevalue("redis_server").url} if relay else {}
    a, b = secured(replicas, "a", **extra), secured(replicas, "b", **extra)
    http("PUT", f"{a.url}/projects/q/objects", OWNER, {"objects": [{"id": "k", "type": "r", "v": 1}]})
    wait_until(lambda: objects_of(b, "q") == [{"id": "k", "type": "r", "v": 1}], 10, "b holds the first state")
    with socket(a, "q") as on_a, socket(b, "q", token("ed", {"q": "editor"})) as on_b:
        status, version = http("POST", f"{a.url}/projects/q/versions", OWNER, {"name": "one"})
        assert status == 201
        given = [{"id": f"n{i}", "type": "r", "i": i} for i in range(5)]
        status, done = http("PUT", f"{a.url}/projects/q/objects", OWNER, {"objects": given})
        assert status == 200 and (done["created"], done["deleted"]) == (5, 1)

        def complete(seen: list[dict[str, Any]]) -> bool:
            ids = {m["object"]["id"] for m in seen if m["op"] == "upsert"}
            return ids >= {o["id"] for o in given} and any(m["op"] == "delete" and m["id"] == "k" for m in seen)

        drain(on_a, complete)
        drain(on_b, complete)  # relayed, or through the table: within a save and a pull
        status, restored = http("POST", f"{b.url}/projects/q/versions/{version['version']}/restore", OWNER)
        assert status == 200 and restored["deleted"] == 5

        def back(seen: list[dict[str, Any]]) -> bool:
            return any(m["op"] == "upsert" and m["object"] == {"id": "k", "type": "r", "v": 1} for m in seen)

        drain(on_b, back)
        drain(on_a, back)
        wait_until(lambda: objects_of(a, "q") == [{"id": "k", "type": "r", "v": 1}], 10, "both replicas agree")
        on_b.send(json.dumps({"op": "update", "id": "k", "props": {"v": 2}, "req": "later"}))
        drain(on_b, lambda seen: any(m.get("req") == "later" for m in seen))
        wait_until(lambda: objects_of(a, "q")[0]["v"] == 2, 10, "a later edit wins over the restore")


def test_a_delete_closes_sockets_everywhere_and_the_id_starts_empty(replicas: Any) -> None:
    a, b = secured(replicas, "a"), secured(replicas, "b")
    http("PUT", f"{a.url}/projects/reuse/objects", OWNER, {"objects": [{"id": "o", "type": "r"}]})
    http("POST", f"{a.url}/projects/reuse/versions", OWNER, {})
    wait_until(lambda: "reuse" in [e["project"] for e in http("GET", f"{b.url}/projects", OWNER)[1]["projects"]])
    with socket(b, "reuse") as on_b:
        assert json.loads(on_b.recv(5))["op"] == "snapshot"
        assert http("DELETE", f"{a.url}/projects/reuse", OWNER)[0] == 204
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                on_b.recv(10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404
    wait_until(lambda: objects_of(b, "reuse") == [], 10, "gone on the other replica")
    assert http("GET", f"{b.url}/projects/reuse/versions", OWNER)[1]["versions"] == []
    assert "reuse" not in [e["project"] for e in http("GET", f"{a.url}/projects", OWNER)[1]["projects"]]
    http("PUT", f"{b.url}/projects/reuse/objects", OWNER, {"objects": [{"id": "new", "type": "r"}]})
    assert objects_of(a, "reuse") == [] or objects_of(a, "reuse") == [{"id": "new", "type": "r"}]
    wait_until(lambda: objects_of(a, "reuse") == [{"id": "new", "type": "r"}], 10, "the id is used again")
    wait_until(
        lambda: (
            [(e["project"], e["objects"]) for e in http("GET", f"{a.url}/projects", OWNER)[1]["projects"]]
            == [("reuse", 1)]
        ),
        10,
        "registered again",
    )


def test_the_registry_on_dynamodb_local_lists_through_its_index_never_a_scan(
    dynamodb_local: DynamoDBLocal, table: str
) -> None:
    client = make_client(dynamodb_local.endpoint)
    described = client.describe_table(TableName=table)["Table"]
    assert INDEX_REGISTRY in [i["IndexName"] for i in described["GlobalSecondaryIndexes"]]
    registry = DynamoRegistry(client, table)
    ids = [f"p{i:04d}" for i in range(300)]
    assert len(registry.put([Entry(p, i, 1.5) for i, p in enumerate(ids)])) == 300
    calls: list[str] = []
    client.meta.events.register("before-call.dynamodb.*", lambda model, **_: calls.append(model.name))
    listed: list[str] = []
    cursor = None
    while True:
        entries, cursor = page(registry, plan(None), cursor, 100)
        listed += [e.project for e in entries]
        if cursor is None:
            break
    assert listed == ids and set(calls) == {"Query"}
    assert len(calls) <= 3 * 16 + 16  # a page is about 16 small queries
    item = client.get_item(TableName=table, Key={"project_id": {"S": "p0001"}, "object_id": {"S": META}})["Item"]
    assert 0 <= int(item["shard"]["N"]) < 16 and item["gen"]["N"] == "0"
    registry.close()


def test_versions_on_dynamodb_local_chunked_and_fenced_by_generation(dynamodb_local: DynamoDBLocal, table: str) -> None:
    client = make_client(dynamodb_local.endpoint)
    versions = DynamoVersions(client, table)
    check_versions(versions, chunk_bytes=2000)
    store = DynamoStore(client, table)
    chunks, raw = pack("[]")
    old = make(new_id(int(time.time() * 1000)), "", time.time(), 0, chunks, raw, False, None)
    versions.save("gone", old, chunks, gen=0)
    store.bump_generation("gone")  # a delete: the version of generation 0 is no longer shown
    assert versions.listing("gone") == [] and versions.get("gone", old.version) is None
    late = make(new_id(int(time.time() * 1000)), "", time.time(), 0, chunks, raw, False, None)
    with pytest.raises(Fenced):
        versions.save("gone", late, chunks, gen=0)  # a copy of the deleted generation
    keys = client.query(
        TableName=table,
        KeyConditionExpression="project_id = :p",
        ExpressionAttributeValues={":p": {"S": "gone"}},
    )["Items"]
    assert not any(late.version in k["object_id"]["S"] for k in keys)  # nothing left behind
    fresh = make(new_id(int(time.time() * 1000)), "", time.time(), 0, chunks, raw, False, None)
    versions.save("gone", fresh, chunks, gen=1)
    assert versions.listing("gone") == [fresh]


def test_a_stopping_replica_writes_what_changed_since_its_last_registry_write(replicas: Any) -> None:
    a = secured(replicas, "a", registry_interval=600)
    b = secured(replicas, "b")
    admin = token("admin", {"*": "owner"})

    def count() -> int | None:
        listed = http("GET", f"{b.url}/projects?prefix=board", admin)[1]["projects"]
        return listed[0]["objects"] if listed else None

    http("PUT", f"{a.url}/projects/board/objects", admin, {"objects": [{"id": "o", "type": "r"}]})
    wait_until(lambda: count() == 1, 15, "registered soon after its first change")
    many = [{"id": f"o{i}", "type": "r"} for i in range(4)]
    http("PUT", f"{a.url}/projects/board/objects", admin, {"objects": many})
    time.sleep(1.5)
    assert count() == 1  # within CANVAS_REGISTRY_INTERVAL: no second write
    assert a.terminate() == 0
    assert count() == 4
