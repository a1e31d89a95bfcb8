"""The WebSocket and HTTP interface of a real replica process (hypercorn + DynamoDB Local).

These tests keep raw sockets (``websockets``, and wsproto below it) instead of
``canvas_sync.client``: they observe the wire itself (frames, their order and batching,
close codes, refused input), which a client exists to hide."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.uri import parse_uri

from tests.helpers import Replica, http_json, http_text

pytestmark = pytest.mark.dynamodb_local


@contextmanager
def client(replica: Replica, project: str = "p1", **kwargs: Any) -> Iterator[ClientConnection]:
    with connect(replica.ws_url(project), open_timeout=5, close_timeout=2, max_size=None, **kwargs) as ws:
        yield ws


def recv(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    return json.loads(ws.recv(timeout))


def call(ws: ClientConnection, message: dict[str, Any] | str) -> dict[str, Any]:
    ws.send(message if isinstance(message, str) else json.dumps(message))
    return recv(ws)


@pytest.fixture
def replica(replicas: Any) -> Replica:
    return replicas("replica-a", rate_limit=0, max_objects_per_project=5, max_object_bytes=2048, max_message_bytes=8192)


def test_snapshot_ack_and_fanout(replica: Replica) -> None:
    with client(replica) as a, client(replica) as b, client(replica, "other") as c:
        for ws, project in ((a, "p1"), (b, "p1"), (c, "other")):
            assert recv(ws) == {
                "op": "snapshot",
                "project": project,
                "replica": "replica-a",
                "objects": [],
                "presence": [],
            }
        ack = call(a, {"op": "create", "req": "1", "object": {"id": "r1", "type": "rect", "x": 1, "y": 0.1}})
        assert ack == {"op": "ack", "req": "1", "seq": 1, "stamp": ack["stamp"]} and ack["stamp"].endswith(".replica-a")
        assert recv(b) == {"op": "upsert", "object": {"id": "r1", "type": "rect", "x": 1, "y": 0.1}}
        assert call(b, {"op": "update", "id": "r1", "props": {"x": 2, "y": None}}).keys() == {"op", "seq", "stamp"}
        assert recv(a) == {"op": "upsert", "object": {"id": "r1", "type": "rect", "x": 2}}
        assert call(a, {"op": "delete", "id": "r1", "req": "d"})["seq"] == 2  # this socket's second change
        assert recv(b) == {"op": "delete", "id": "r1"}
        assert call(a, {"op": "ping", "req": "p"}) == {"op": "pong", "req": "p"}
        with pytest.raises(TimeoutError):
            c.recv(0.3)  # another project hears nothing
    with client(replica) as late:
        assert recv(late)["objects"] == []


def test_snapshot_is_sorted_and_values_come_back_exactly(replica: Replica) -> None:
    with client(replica) as ws:
        recv(ws)
        for oid in ("b", "a", "c"):
            call(
                ws, {"op": "create", "object": {"id": oid, "type": "t", "n": 1, "f": 0.1, "big": 12345678901234567890}}
            )
    with client(replica) as ws:
        text = ws.recv(5)
    assert '"objects":[{"big":12345678901234567890,"f":0.1,"id":"a","n":1,"type":"t"},{' in text
    assert [o["id"] for o in json.loads(text)["objects"]] == ["a", "b", "c"]


BAD = [
    ("{nope", "bad_json"),
    ('{"op":"create","object":{"id":"n","type":"t","x":NaN}}', "bad_json"),
    ('{"op":"update","req":"q","id":"keep","props":{"s":"\\ud800"}}', "bad_json"),
    ({"op": "fly", "req": "q"}, "bad_message"),
    ({"op": "create", "req": "q", "object": {"id": "bad id", "type": "t"}}, "bad_message"),
    ({"op": "create", "req": "q", "object": {"id": "x1", "type": "t", "9lives": 1}}, "bad_message"),
    ({"op": "create", "req": "q", "object": {"id": "x1", "type": "t", "v": [[[[[0]]]]]}}, "bad_message"),
    ({"op": "create", "req": "q", "object": {"id": "keep", "type": "t"}}, "conflict"),
    ({"op": "create", "req": "q", "object": {"id": "x1", "type": "t", "s": "x" * 3000}}, "too_large"),
    ({"op": "update", "req": "q", "id": "keep", "props": {"s": "x" * 3000}}, "too_large"),
    ({"op": "update", "req": "q", "id": "ghost", "props": {"x": 1}}, "not_found"),
    ({"op": "update", "req": "q", "id": "keep", "props": {"id": "other"}}, "bad_message"),
    ({"op": "delete", "req": "q", "id": "ghost"}, "not_found"),
]


def test_every_bad_input_gets_its_code_changes_nothing_and_keeps_the_socket(replica: Replica) -> None:
    with client(replica) as ws, client(replica) as watcher:
        recv(ws), recv(watcher)
        call(ws, {"op": "create", "object": {"id": "keep", "type": "t", "x": 1}})
        recv(watcher)
        before = replica.objects("p1")
        for message, code in BAD:
            reply = call(ws, message)
            assert reply["op"] == "error" and reply["code"] == code, (message, reply)
            assert reply["message"]
            if isinstance(message, dict):
                assert reply["req"] == "q"
        ws.send(b"\x00binary")
        assert recv(ws)["code"] == "bad_message"
        assert replica.objects("p1") == before
        with pytest.raises(TimeoutError):
            watcher.recv(0.3)  # refused edits are never fanned out
        assert call(ws, {"op": "ping"}) == {"op": "pong"}  # still usable


def test_objects_per_project_limit(replica: Replica) -> None:
    with client(replica) as ws:
        recv(ws)
        for i in range(5):
            assert call(ws, {"op": "create", "object": {"id": f"o{i}", "type": "t"}})["op"] == "ack"
        assert call(ws, {"op": "create", "object": {"id": "o5", "type": "t"}})["code"] == "limit_exceeded"
        call(ws, {"op": "delete", "id": "o0"})
        assert call(ws, {"op": "create", "object": {"id": "o5", "type": "t"}})["op"] == "ack"


def test_oversized_frame_closes_with_1009(replica: Replica) -> None:
    with client(replica) as ws:
        recv(ws)
        ws.send(json.dumps({"op": "ping", "pad": "x" * 9000}))
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


def test_bad_project_id_refuses_the_upgrade_with_400(replica: Replica) -> None:
    with pytest.raises(InvalidStatus) as info:
        with connect(replica.ws_url("-bad"), open_timeout=5):
            pass
    assert info.value.response.status_code == 400
    assert http_json(f"{replica.url}/projects/-bad/objects")[0] == 400
    assert http_json(f"{replica.url}/projects/-bad/status")[0] == 400


def test_rate_limit(replicas: Any) -> None:
    replica = replicas("limited", rate_limit=5)
    with client(replica) as ws:
        recv(ws)
        call(ws, {"op": "create", "object": {"id": "r", "type": "t"}})
        started = time.monotonic()
        codes = [call(ws, {"op": "update", "id": "r", "props": {"x": i}}).get("code", "ok") for i in range(30)]
        elapsed = time.monotonic() - started
    assert "rate_limited" in codes
    assert codes.count("ok") <= 10 + 5 * elapsed + 1  # the burst, plus what refilled meanwhile


def open_raw(replica: Replica, project: str, subprotocol: str | None = None) -> tuple[socket.socket, ClientProtocol]:
    """A WebSocket that reads nothing after the handshake: a client that cannot keep up."""
    sock = socket.create_connection(("127.0.0.1", replica.port), timeout=10)
    offered: Any = [subprotocol] if subprotocol else None
    proto = ClientProtocol(parse_uri(replica.ws_url(project)), max_size=None, subprotocols=offered)
    proto.send_request(proto.connect())
    sock.sendall(b"".join(proto.data_to_send()))
    while proto.handshake_exc is None and not proto.events_received() and proto.state.name == "CONNECTING":
        proto.receive_data(sock.recv(1))  # byte by byte: stop right after the handshake
    return sock, proto


def test_slow_client_is_closed_with_1013(replicas: Any) -> None:
    replica = replicas("small-queue", send_queue_size=8, rate_limit=0)
    sock, proto = open_raw(replica, "p1")
    payload = "x" * 12000
    with client(replica) as writer:
        recv(writer)
        for i in range(1500):  # 18 MB of distinct objects: far beyond socket buffers + 8 queued messages
            assert call(writer, {"op": "create", "object": {"id": f"r{i}", "type": "t", "s": payload}})["op"] == "ack"
        assert "canvas_slow_client_disconnects_total 1.0" in http_text(f"{replica.url}/metrics")
    messages = 0
    while proto.close_rcvd is None:
        data = sock.recv(1 << 16)
        if not data:
            break
        proto.receive_data(data)
        messages += sum(1 for e in proto.events_received() if e.opcode.name == "TEXT")
    sock.close()
    assert proto.close_rcvd is not None and proto.close_rcvd.code == 1013
    assert messages < 1500  # it was cut off, not served everything


def test_a_slow_client_gets_the_newest_state_not_every_state(replicas: Any) -> None:
    """Upserts of one object still waiting are replaced by newer ones: a reader that falls
    behind a busy object is not closed, and ends with its newest state after fewer messages."""
    replica = replicas("small-queue", send_queue_size=8, rate_limit=0)
    sock, proto = open_raw(replica, "p1")
    payload = "x" * 12000
    with client(replica) as writer:
        recv(writer)
        call(writer, {"op": "create", "object": {"id": "r", "type": "t"}})
        for i in range(1500):  # the same 18 MB as above, all of it states of one object
            assert call(writer, {"op": "update", "id": "r", "props": {"s": payload, "i": i}})["op"] == "ack"
        call(writer, {"op": "delete", "id": "r"})  # a delete is never passed by a later state
        call(writer, {"op": "create", "object": {"id": "r", "type": "t", "i": -1}})
        assert "canvas_slow_client_disconnects_total 0.0" in http_text(f"{replica.url}/metrics")
    received: list[dict[str, Any]] = []
    sock.settimeout(10)
    while not (received and received[-1].get("object", {}).get("i") == -1):
        proto.receive_data(sock.recv(1 << 16))
        received += [json.loads(e.data) for e in proto.events_received() if e.opcode.name == "TEXT"]
    sock.close()
    about_r = [m for m in received if m["op"] in ("upsert", "delete")]
    assert about_r[-3]["object"]["i"] == 1499 and [m["op"] for m in about_r[-2:]] == ["delete", "upsert"]
    assert len(about_r) < 1500  # fewer, newer states
    states = [m["object"]["i"] for m in about_r if m["op"] == "upsert" and "i" in m["object"]][:-1]
    assert states == sorted(states)  # never an older state after a newer one


def test_a_v2_client_gets_several_messages_in_one_frame_and_a_v1_client_one_each(replicas: Any) -> None:
    replica = replicas("batching", rate_limit=0)
    readers = {name: open_raw(replica, "p1", f"canvas-sync.{name}") for name in ("v1", "v2")}
    with client(replica) as writer:
        recv(writer)
        for i in range(400):  # nobody reads meanwhile: 4.8 MB, more than socket buffers hold
            call(writer, {"op": "create", "object": {"id": f"r{i:03}", "type": "t", "s": "x" * 12000}})
    frames: dict[str, list[Any]] = {"v1": [], "v2": []}
    for name, (sock, proto) in readers.items():
        assert proto.subprotocol == f"canvas-sync.{name}"
        messages: list[Any] = []
        while len(messages) < 401:  # the snapshot and 400 upserts
            proto.receive_data(sock.recv(1 << 16))
            for event in proto.events_received():
                if event.opcode.name != "TEXT":
                    continue
                frames[name].append(json.loads(event.data))
                messages += frames[name][-1] if isinstance(frames[name][-1], list) else [frames[name][-1]]
        sock.close()
        assert [m["object"]["id"] for m in messages[1:]] == [f"r{i:03}" for i in range(400)]  # all, in order
    assert all(isinstance(f, dict) for f in frames["v1"])
    assert any(isinstance(f, list) for f in frames["v2"])  # a frame held several messages


def test_http_endpoints(replica: Replica) -> None:
    assert http_json(f"{replica.url}/healthz") == (200, {"status": "alive"})
    assert http_json(f"{replica.url}/readyz")[0] == 200
    assert http_json(f"{replica.url}/projects/p9/status") == (
        200,
        {
            "project": "p9",
            "loaded": False,
            "connections": 0,
            "objects": 0,
            "tombstones": 0,
            "dirty_objects": 0,
            "last_save_at": None,
        },
    )
    assert http_json(f"{replica.url}/projects/p9/objects") == (200, {"project": "p9", "objects": []})
    assert http_json(f"{replica.url}/projects/p9/status")[1]["loaded"] is True
    status, health = http_json(f"{replica.url}/health")
    assert status == 200 and health["replica"] == "replica-a" and health["status"] == "ok"
    assert set(health["autosave"]) == {
        "interval_s",
        "worker_alive",
        "dirty_projects",
        "dirty_objects",
        "last_save_at",
        "last_error",
        "quarantined",
    }
    assert health["autosave"]["worker_alive"] is True


def test_metrics_named_in_the_contract(replica: Replica) -> None:
    with client(replica) as ws:
        recv(ws)
        call(ws, {"op": "create", "object": {"id": "r", "type": "t"}})
        call(ws, {"op": "update", "id": "r", "props": {"x": 1}})
        text = http_text(f"{replica.url}/metrics")
        assert 'canvas_edits_total{op="create"} 1.0' in text
        assert 'canvas_edits_total{op="update"} 1.0' in text
        assert "canvas_websocket_connections 1.0" in text
        assert "canvas_projects_loaded 1.0" in text

    def value(name: str) -> float:
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        assert match, name
        return float(match.group(1))

    deadline = time.monotonic() + 5
    # a pass counts its batches as they return and sets the timestamp when it ends
    # (after the #head update), so wait for both
    while (
        value('canvas_autosave_batches_total{outcome="success"}') < 1
        or value("canvas_autosave_last_success_timestamp_seconds") == 0
    ) and time.monotonic() < deadline:
        time.sleep(0.1)
        text = http_text(f"{replica.url}/metrics")
    # the create and the update may land in one pass or in two
    assert 1 <= value('canvas_autosave_batches_total{outcome="success"}') <= 2
    assert 1 <= value("canvas_autosave_objects_written_total") <= 2
    assert value('canvas_autosave_batches_total{outcome="error"}') == 0
    assert value("canvas_autosave_last_success_timestamp_seconds") > 0
    assert "canvas_autosave_batch_duration_seconds_bucket" in text
    deadline = time.monotonic() + 5
    while value("canvas_dirty_objects") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
        text = http_text(f"{replica.url}/metrics")
    assert value("canvas_dirty_objects") == 0


def test_not_ready_until_the_table_answers(replicas: Any) -> None:
    replica = replicas("no-db", wait_ready=False, dynamodb_endpoint="http://127.0.0.1:9")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if http_json(f"{replica.url}/healthz", timeout=1)[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    assert http_json(f"{replica.url}/readyz")[0] == 503
    assert http_json(f"{replica.url}/projects/p1/objects")[0] == 503
    with pytest.raises(InvalidStatus) as info:
        with connect(replica.ws_url("p1"), open_timeout=5):
            pass
    assert info.value.response.status_code == 503
    assert http_json(f"{replica.url}/health")[1]["status"] == "starting"


def test_create_table_at_start(replicas: Any) -> None:
    replica = replicas("creator", table="fresh_table_at_start", create_table="true")
    assert http_json(f"{replica.url}/projects/p1/objects")[0] == 200


def test_concurrent_first_requests_share_one_load(replica: Replica) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def first_look(i: int) -> int:
        if i % 2:
            return len(replica.objects("fresh"))
        with client(replica, "fresh") as ws:
            return len(recv(ws)["objects"])

    with ThreadPoolExecutor(12) as pool:
        assert list(pool.map(first_look, range(12))) == [0] * 12
    assert 'canvas_project_loads_total{outcome="success"} 1.0' in http_text(f"{replica.url}/metrics")


def test_idle_project_leaves_memory(replicas: Any) -> None:
    replica = replicas("evicting", project_idle_timeout=1)
    with client(replica, "brief") as ws:
        recv(ws)
        call(ws, {"op": "create", "object": {"id": "r", "type": "t"}})
        time.sleep(1.5)
        assert http_json(f"{replica.url}/projects/brief/status")[1]["loaded"] is True  # watched: stays
    deadline = time.monotonic() + 10
    while http_json(f"{replica.url}/projects/brief/status")[1]["loaded"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert http_json(f"{replica.url}/projects/brief/status")[1]["loaded"] is False
    assert [o["id"] for o in replica.objects("brief")] == ["r"]  # reloaded from the table


def test_probe_command_pings_a_replica(replica: Replica) -> None:
    import subprocess
    import sys

    ok = subprocess.run(
        [sys.executable, "-m", "canvas_sync", "probe", replica.ws_url("helm-test")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0 and '"op": "pong"' in ok.stdout, ok.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "canvas_sync", "probe", replica.ws_url("-bad")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 1 and "HTTP 400" in bad.stderr


@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        ({}, "client_max_window_bits=11; server_max_window_bits=11"),  # a browser's offer names the client's
        ({"client_max_window_bits": None}, "server_max_window_bits=11"),  # a server may always name its own
        ({"server_max_window_bits": 9}, "client_max_window_bits=11; server_max_window_bits=9"),  # smaller: kept
    ],
)
def test_compression_windows_are_small_and_snapshots_still_compress(
    replicas: Any, offer: dict[str, Any], answer: str
) -> None:
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    replica = replicas("windows", rate_limit=0)
    factory = ClientPerMessageDeflateFactory(**{"client_max_window_bits": True, **offer})
    objects = [{"id": f"o{i:04}", "type": "rect", "x": i, "y": 2 * i, "fill": "#1e88e5"} for i in range(300)]
    with client(replica, "windows", extensions=[factory], compression=None) as ws:
        recv(ws)
        for obj in objects:
            call(ws, {"op": "create", "object": obj})
        negotiated = ws.response.headers["sec-websocket-extensions"]
        assert negotiated == f"permessage-deflate; client_no_context_takeover; server_no_context_takeover; {answer}"
    with client(replica, "windows", extensions=[factory], compression=None) as ws:
        assert recv(ws)["objects"] == objects  # a 15 KB snapshot through the small window


@pytest.mark.parametrize("enabled", [True, False])
def test_websocket_compression_can_be_turned_off(replicas: Any, enabled: bool) -> None:
    replica = replicas(f"deflate-{enabled}", websocket_compression=enabled)
    with client(replica, compression="deflate") as ws:  # the client offers permessage-deflate
        recv(ws)
        negotiated = ws.response.headers.get("sec-websocket-extensions") or ""
        assert ("permessage-deflate" in negotiated) is enabled
        big = {"op": "create", "object": {"id": "big", "type": "t", "text": "abc" * 1000}}
        assert call(ws, big)["op"] == "ack"  # works either way


def test_a_compressed_broadcast_is_one_frame_every_deflate_client_reads(replicas: Any) -> None:
    """No context takeover: a broadcast is compressed once and the same bytes go to every
    socket that took permessage-deflate, whatever each received before; a client that
    joins late reads them on its own window as well."""
    replica = replicas("shared-deflate", rate_limit=0, websocket_compress_min_bytes=1024, gather_lag=1)  # never "busy"

    def big(n: int) -> dict[str, Any]:
        return {"id": f"o{n}", "type": "t", "text": "".join(f"{n}:{i:04} " for i in range(600))}

    with (
        client(replica, "shared", compression="deflate") as early,
        client(replica, "shared", compression=None) as plain,
        client(replica, "shared", compression="deflate") as writer,
    ):
        for ws in (early, plain, writer):
            recv(ws)
        negotiated = [ws.response.headers.get("sec-websocket-extensions") or "" for ws in (early, plain, writer)]
        assert ["permessage-deflate" in e for e in negotiated] == [True, False, True]
        assert call(writer, {"op": "create", "object": big(0)})["op"] == "ack"
        for ws in (early, plain):
            assert recv(ws)["object"] == big(0)
        with client(replica, "shared", compression="deflate") as late:
            assert len(recv(late)["objects"]) == 1
            for n in (1, 2):
                assert call(writer, {"op": "create", "object": big(n)})["op"] == "ack"
                for ws in (early, plain, late):
                    assert recv(ws)["object"] == big(n)
