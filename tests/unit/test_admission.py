"""Admission (admission.py): who comes in, counted and logged once; expiry and renewal
on an open socket. Tokens are real HS256 JWTs; nothing touches the network."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from canvas_sync.admission import Admission, Admitted, Refusal
from canvas_sync.auth import ConnectionLimits, Keys, Role, Verifier
from canvas_sync.connection import FORBIDDEN, UNAUTHORIZED, Connection
from canvas_sync.metrics import Metrics
from canvas_sync.protocol import Auth
from canvas_sync.tokens import mint

SECRET = b"a shared secret of at least 32 bytes!"


def admission(per_subject: int = 0, per_project: int = 0, origins: list[str] | None = None) -> Admission:
    verifier = Verifier(Keys(secret=SECRET), "canvas-sync", None, leeway=0)
    return Admission(
        verifier,
        ConnectionLimits(per_subject, 0, per_project),
        Metrics(),
        origins=origins or [],
        query_token=False,
        leeway=0,
    )


def token(sub: str = "ann", ttl: int = 60, **grants: str) -> str:
    return mint(sub, grants or {"p": "editor"}, ttl, secret=SECRET)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def refusal(coro: Any) -> tuple[int, str]:
    with pytest.raises(Refusal) as info:
        asyncio.run(coro)
    return info.value.status, info.value.code


def refused(gate: Admission, status: str) -> float:
    return float(gate.metrics.refusals.labels(status)._value.get())


def test_a_valid_token_with_a_grant_comes_in_with_its_role() -> None:
    gate = admission()
    who = asyncio.run(gate.admit("p", bearer(token(p="viewer")), [], {}, "10.0.0.1"))
    assert (who.project, who.sub, who.role, who.address) == ("p", "ann", Role.VIEWER, "10.0.0.1")
    via_subprotocol = asyncio.run(gate.admit("p", {}, ["canvas-sync.v1", f"canvas-sync.bearer.{token()}"], {}, None))
    assert via_subprotocol.role == Role.EDITOR


def test_refusals_say_why_and_are_counted() -> None:
    gate = admission(origins=["https://app.example"])
    assert refusal(gate.admit("p", {}, [], {}, None)) == (401, "unauthorized")
    assert refusal(gate.admit("p", bearer("not-a-jwt"), [], {}, None)) == (401, "unauthorized")
    assert refusal(gate.admit("p", bearer(token(q="editor")), [], {}, None)) == (403, "forbidden")
    foreign = {"Origin": "https://evil.example", "Host": "canvas.example", **bearer(token())}
    assert refusal(gate.admit("p", foreign, [], {}, None)) == (403, "forbidden")
    assert asyncio.run(gate.admit("p", {**foreign, "Origin": "https://app.example"}, [], {}, None)).sub == "ann"
    assert (refused(gate, "401"), refused(gate, "403")) == (2, 2)
    assert refusal(gate.admit("p", {}, [], {"token": token()}, None)) == (401, "unauthorized")  # query tokens off


def test_without_a_verifier_everyone_is_an_owner() -> None:
    gate = Admission(None, ConnectionLimits(0, 0, 0), Metrics(), origins=[], query_token=False, leeway=0)
    who = asyncio.run(gate.admit("p", {}, [], {}, None))
    assert who.identity is None and who.sub is None and who.role == Role.OWNER
    assert asyncio.run(gate.identify({}, [], {}, None)) is None


def test_connection_limits_reserve_and_release() -> None:
    gate = admission(per_subject=2)
    who = asyncio.run(gate.admit("p", bearer(token()), [], {}, None))
    gate.reserve(who)
    gate.reserve(who)
    with pytest.raises(Refusal) as info:
        gate.reserve(who)
    assert info.value.status == 429 and refused(gate, "429") == 1
    gate.release(who)
    gate.reserve(who)  # a slot freed


def open_conn(gate: Admission, ttl: int) -> tuple[Connection, Admitted]:
    who = asyncio.run(gate.admit("p", bearer(token(ttl=ttl)), [], {}, None))
    conn = Connection(16)
    conn.sub, conn.editor = who.sub, who.role.can_edit
    return conn, who


def test_an_expired_token_closes_the_socket_and_watching_stops_with_none() -> None:
    gate = admission()
    _, who = open_conn(gate, ttl=1)

    async def run(watch_after: bool) -> int | None:
        c = Connection(16)
        gate.watch_expiry(c, who.identity)
        if not watch_after:
            gate.watch_expiry(c, None)
        await asyncio.sleep(max(0.0, who.identity.expires_at - time.time()) + 0.2)  # type: ignore[union-attr]
        return c.close_code

    assert asyncio.run(run(True)) == UNAUTHORIZED
    assert asyncio.run(run(False)) is None


def renew(gate: Admission, conn: Connection, new: str) -> list[dict[str, Any]]:
    async def run() -> None:
        await gate.renew("p", conn, Auth("r", new))
        gate.watch_expiry(conn, None)

    asyncio.run(run())
    return [json.loads(text) for text in conn.outbox.take()]


def test_renewal_for_the_same_subject_moves_the_expiry_and_may_change_the_role() -> None:
    gate = admission()
    conn, _ = open_conn(gate, ttl=60)
    assert renew(gate, conn, token(p="viewer")) == [{"op": "ack", "req": "r"}]
    assert conn.close_code is None and not conn.editor


@pytest.mark.parametrize(
    ("new", "code"),
    [
        (lambda: "garbage", UNAUTHORIZED),
        (lambda: token(sub="bob"), UNAUTHORIZED),  # another subject
        (lambda: token(q="editor"), FORBIDDEN),  # no grant on this project
    ],
)
def test_a_bad_renewal_closes_the_socket(new: Any, code: int) -> None:
    gate = admission()
    conn, _ = open_conn(gate, ttl=60)
    assert renew(gate, conn, new()) == []  # minted now: a token made at collection may have expired
    assert conn.close_code == code
