"""The attack table, against a real replica with authentication on: every case and its answer.

Raw sockets on purpose: each case is a handshake, a frame or a close code as the server
sends it (the client's handling of refusals and renewal: ``tests/system/test_client.py``)."""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import jwt
import pytest
from canvas_sync.tokens import generate_keys, mint
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.helpers import Replica, http_json
from tests.unit.test_auth import attacks

pytestmark = pytest.mark.dynamodb_local

ISSUER = "https://issuer.test/"
ORIGIN = "https://app.test"


class JwksServer:
    """The issuer's JWKS on loopback, counting its fetches."""

    def __init__(self, jwks: Path) -> None:
        body = jwks.read_bytes()
        self.fetches = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def issuer(keys: tuple[Path, Path]) -> Iterator[JwksServer]:
    server = JwksServer(keys[1])
    yield server
    server.httpd.shutdown()


@pytest.fixture
def secured(replicas: Any, issuer: JwksServer) -> Replica:
    return replicas(
        "secured",
        auth="jwt",
        auth_jwks_url=issuer.url,
        auth_issuer=ISSUER,
        auth_leeway=0,
        allowed_origins=ORIGIN,
        rate_limit=20,
        rate_limit_close_after=10,
        max_connections_per_subject=3,
        max_message_bytes=65536,
    )


def token(keys: tuple[Path, Path], sub: str = "ann", ttl: int = 3600, **grants: str) -> str:
    return mint(sub, grants or {"p": "editor"}, ttl, private_key=keys[0], issuer=ISSUER)


def open_socket(replica: Replica, bearer: str | None, project: str = "p", **kwargs: Any) -> ClientConnection:
    protocols = ["canvas-sync.v1", f"canvas-sync.bearer.{bearer}"] if bearer else None
    return connect(replica.ws_url(project), open_timeout=5, subprotocols=protocols, **kwargs)  # type: ignore[arg-type]


def upgrade_status(replica: Replica, bearer: str | None, project: str = "p", **kwargs: Any) -> int:
    try:
        with open_socket(replica, bearer, project, **kwargs) as ws:
            ws.recv(5)
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


def http_status(url: str, bearer: str | None = None) -> tuple[int, str]:
    """The status and the WWW-Authenticate header (empty when absent)."""
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
            return response.status, response.headers.get("WWW-Authenticate", "")
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("WWW-Authenticate", "")


def call(ws: ClientConnection, message: dict[str, Any]) -> dict[str, Any]:
    ws.send(json.dumps({**message, "req": "r"}))
    while True:
        reply = json.loads(ws.recv(5))
        if reply.get("req") == "r":
            return dict(reply)


def closed_with(ws: ClientConnection, timeout: float = 5) -> int | None:
    try:
        while True:
            ws.recv(timeout)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    except TimeoutError:
        return None


def test_the_attack_table(secured: Replica, keys: tuple[Path, Path], issuer: JwksServer) -> None:
    table: list[tuple[str, object, object]] = []

    def case(name: str, expected: object, got: object) -> None:
        table.append((name, expected, got))

    used = [token(keys)]
    case("no token (upgrade)", 401, upgrade_status(secured, None))
    status, challenge = http_status(f"{secured.url}/projects/p/objects")
    case(
        "no token (HTTP), WWW-Authenticate",
        (401, True),
        (status, challenge.startswith("Bearer")),
    )
    for name, bad in attacks(keys[0], keys[1]).items():
        used.append(bad)
        case(name, 401, upgrade_status(secured, bad))
    wrong_iss = mint("ann", {"p": "editor"}, private_key=keys[0], issuer="https://evil.test/")
    case("wrong issuer", 401, upgrade_status(secured, wrong_iss))
    case("valid token, no grant for this project (upgrade)", 403, upgrade_status(secured, token(keys, other="editor")))
    case(
        "valid token, no grant for this project (HTTP)",
        403,
        http_status(f"{secured.url}/projects/p/objects", token(keys, other="editor"))[0],
    )
    case("valid token, granted", 101, upgrade_status(secured, used[0]))
    case("valid token (HTTP)", 200, http_status(f"{secured.url}/projects/p/objects", used[0])[0])
    case("foreign Origin", 403, upgrade_status(secured, used[0], origin="https://evil.test"))
    case("allowed Origin", 101, upgrade_status(secured, used[0], origin=ORIGIN))
    case("token in the query string while that is off", 401, upgrade_status(secured, None, f"p?token={used[0]}"))
    fetched = issuer.fetches
    for _ in range(30):
        spray = jwt.encode(
            {"sub": "x", "aud": "canvas-sync", "exp": int(time.time()) + 60, "iss": ISSUER},
            keys[0].read_bytes(),
            algorithm="ES256",
            headers={"kid": uuid.uuid4().hex},
        )
        upgrade_status(secured, spray)
    case("30 random kids: JWKS fetches", "<= 1", "<= 1" if issuer.fetches - fetched <= 1 else issuer.fetches - fetched)
    case("health endpoints need no token", 200, http_json(f"{secured.url}/healthz")[0])

    width = max(len(n) for n, _, _ in table)
    print("\n" + "\n".join(f"{n:<{width}}  expected {e!s:<12} got {g}" for n, e, g in table))
    assert [(n, g) for n, e, g in table if e != g] == []
    logs = secured.logs()
    assert all(t not in logs for t in used)  # refusals are logged, tokens never
    refusals = secured.log_events("refused")
    assert refusals and {"status", "reason", "sub", "address", "origin"} <= set(refusals[0])


def test_viewers_read_and_are_present_but_cannot_edit(secured: Replica, keys: tuple[Path, Path]) -> None:
    with (
        open_socket(secured, token(keys, "ed", p="editor")) as editor,
        open_socket(secured, token(keys, "vi", p="viewer")) as viewer,
    ):
        assert editor.subprotocol == "canvas-sync.v1"
        editor.recv(5)
        viewer.recv(5)
        assert call(editor, {"op": "create", "object": {"id": "o", "type": "rect", "x": 1}})["op"] == "ack"
        assert json.loads(viewer.recv(5))["op"] == "upsert"  # pushes reach viewers
        for edit in (
            {"op": "create", "object": {"id": "v", "type": "rect"}},
            {"op": "update", "id": "o", "props": {"x": 9}},
            {"op": "delete", "id": "o"},
        ):
            reply = call(viewer, edit)
            assert (reply["op"], reply["code"]) == ("error", "forbidden")
        assert call(viewer, {"op": "ping"})["op"] == "pong"  # the socket stays usable
        viewer.send(json.dumps({"op": "presence", "state": {"name": "Vi"}}))
        seen = json.loads(editor.recv(5))
        assert seen["op"] == "presence" and seen["sub"] == "vi"
    assert http_json(f"{secured.url}/projects/p/status")[0] == 401  # status needs a token too
    with open_socket(secured, token(keys, "ed", p="editor")) as again:
        assert json.loads(again.recv(5))["objects"] == [{"id": "o", "type": "rect", "x": 1}]  # nothing landed


def test_expiry_closes_4401_and_renewal_moves_it(secured: Replica, keys: tuple[Path, Path]) -> None:
    with open_socket(secured, token(keys, ttl=2)) as ws:
        ws.recv(5)
        assert closed_with(ws, timeout=6) == 4401
    with open_socket(secured, token(keys, ttl=2)) as ws:
        ws.recv(5)
        assert call(ws, {"op": "auth", "token": token(keys, ttl=3600)})["op"] == "ack"
        time.sleep(3)
        assert call(ws, {"op": "ping"})["op"] == "pong"  # past the first token's expiry
    with open_socket(secured, token(keys)) as ws:
        ws.recv(5)
        ws.send(json.dumps({"op": "auth", "token": token(keys, "someone-else")}))
        assert closed_with(ws) == 4401
    with open_socket(secured, token(keys)) as ws:
        ws.recv(5)
        ws.send(json.dumps({"op": "auth", "token": token(keys, q="editor")}))
        assert closed_with(ws) == 4403


def test_flooding_past_rate_limited_closes_4429_and_connections_are_capped(
    secured: Replica, keys: tuple[Path, Path]
) -> None:
    with open_socket(secured, token(keys)) as ws:
        ws.recv(5)
        for _ in range(200):
            try:
                ws.send('{"op":"ping"}')
            except ConnectionClosed:
                break
        assert closed_with(ws) == 4429
    bearer = token(keys, "many")
    with ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(open_socket(secured, bearer))
        assert upgrade_status(secured, bearer) == 429
        assert upgrade_status(secured, token(keys, "other")) == 101  # another subject is not held back


def peak_rss(replica: Replica) -> int:
    status = Path(f"/proc/{replica.pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


def test_a_deflate_bomb_is_not_inflated(secured: Replica, keys: tuple[Path, Path]) -> None:
    """100 MiB of spaces compress to about 100 KiB: the server inflates at most the message limit."""
    before = peak_rss(secured)
    bomb = '{"op":"ping","pad":"' + " " * (100 * 2**20) + '"}'
    with open_socket(secured, token(keys), compression="deflate") as ws:
        ws.recv(5)
        ws.send(bomb)
        assert closed_with(ws) == 1009
    grew = peak_rss(secured) - before
    print(
        f"peak RSS grew {grew / 2**20:.1f} MiB for a frame of {len(zlib.compress(bomb.encode())) // 1024} KiB "
        "that inflates to 100 MiB"
    )
    assert grew < 20 * 2**20
