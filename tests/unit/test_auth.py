"""Authentication's decisions and token verification, without a server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from canvas_sync import protocol
from canvas_sync.auth import (
    AuthError,
    ConnectionLimits,
    Keys,
    Role,
    origin_allowed,
    parse_grants,
    role_for,
    token_from,
)
from canvas_sync.tokens import generate_keys, mint, parse_grant, parse_ttl
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

SECRET = b"a shared secret of at least 32 bytes!"


def test_an_exact_grant_beats_a_prefix_and_a_longer_prefix_a_shorter() -> None:
    grants = parse_grants({"*": "viewer", "team-1:*": "editor", "team-1:secret*": "viewer", "team-1:board": "viewer"})
    assert role_for(grants, "team-1:board") == Role.VIEWER  # exact
    assert role_for(grants, "team-1:other") == Role.EDITOR  # the team prefix
    assert role_for(grants, "team-1:secret-plans") == Role.VIEWER  # the longer prefix
    assert role_for(grants, "elsewhere") == Role.VIEWER  # "*"
    assert role_for(parse_grants({"team-1:*": "editor"}), "team-2:x") is None
    assert role_for(parse_grants({"p": "owner"}), "p") == Role.OWNER
    assert Role.OWNER.can_edit and Role.OWNER.can_own and Role.EDITOR.can_edit and not Role.EDITOR.can_own
    assert not Role.VIEWER.can_edit and not Role.VIEWER.can_own
    for bad in ([], {"p": "admin"}, {"": "editor"}, "p=editor"):
        with pytest.raises(AuthError):
            parse_grants(bad)


def test_where_the_token_comes_from() -> None:
    proto = ["canvas-sync.v1", "canvas-sync.bearer.abc"]
    assert token_from({}, proto, {}, query_allowed=False) == "abc"
    assert token_from({"Authorization": "Bearer xyz"}, [], {}, query_allowed=False) == "xyz"
    assert token_from({"Authorization": "Basic xyz"}, [], {}, query_allowed=False) is None
    assert token_from({}, [], {"token": "q"}, query_allowed=False) is None  # access logs keep query strings
    assert token_from({}, [], {"token": "q"}, query_allowed=True) == "q"


def test_origins() -> None:
    assert origin_allowed(None, "canvas.example", [])  # not a browser: its token decides
    assert origin_allowed("https://canvas.example", "canvas.example", [])  # our own page
    assert origin_allowed("https://app.example/", "canvas.example", ["https://app.example"])
    assert not origin_allowed("https://evil.example", "canvas.example", ["https://app.example"])
    assert not origin_allowed("https://app.example.evil.example", "canvas.example", ["https://app.example"])


def test_connection_limits_per_subject_address_and_project() -> None:
    limits = ConnectionLimits(per_subject=2, per_address=3, per_project=4)
    for _ in range(2):
        assert limits.refusal("ann", "1.2.3.4", "p") is None
        limits.opened("ann", "1.2.3.4", "p")
    assert "subject" in (limits.refusal("ann", "1.2.3.4", "p") or "")
    limits.opened("bob", "1.2.3.4", "p")
    assert "address" in (limits.refusal("cy", "1.2.3.4", "p") or "")
    limits.opened("cy", "5.6.7.8", "p")
    assert "project" in (limits.refusal("dee", "9.9.9.9", "p") or "")
    limits.closed("ann", "1.2.3.4", "p")
    assert limits.refusal("ann", "9.9.9.9", "q") is None


def test_ttls_and_grants_on_the_command_line() -> None:
    assert [parse_ttl(t) for t in ("90", "90s", "15m", "1h", "7d")] == [90, 90, 900, 3600, 604800]
    assert parse_grant("team-1:*=viewer") == ("team-1:*", "viewer")
    for bad in ("0s", "1y", "soon"):
        with pytest.raises(ValueError):
            parse_ttl(bad)
    assert parse_grant("team-1:*=owner") == ("team-1:*", "owner")
    with pytest.raises(ValueError):
        parse_grant("p=admin")


# --- verification -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keys(tmp_path_factory.mktemp("keys"))


class Issuer:
    """A JWKS 'endpoint' that counts its fetches and can go down."""

    def __init__(self, jwks: Path) -> None:
        self.body = jwks.read_bytes()
        self.fetches = 0
        self.down = False

    def __call__(self, url: str) -> bytes:
        self.fetches += 1
        if self.down:
            raise OSError("issuer unreachable")
        return self.body


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_good_token_verifies_with_the_jwks(keypair: tuple[Path, Path]) -> None:
    private, jwks = keypair
    keys = Keys(jwks_url="https://issuer.example/jwks.json", fetch=Issuer(jwks))
    identity = keys.verify(mint("ann", {"p": "editor"}, private_key=private), "canvas-sync", None, 30)
    assert identity.sub == "ann" and identity.grants == {"p": Role.EDITOR} and identity.expires_at > time.time()


def attacks(private: Path, jwks: Path) -> dict[str, str]:
    """Tokens an attacker might try, by name; each must be refused."""
    kid = json.loads(jwks.read_text())["keys"][0]["kid"]
    now = int(time.time())
    claims = {"sub": "ann", "aud": "canvas-sync", "exp": now + 60, "projects": {"p": "editor"}}

    def signed(payload: dict[str, Any]) -> str:
        return jwt.encode(payload, private.read_bytes(), algorithm="ES256", headers={"kid": kid})

    header, _, signature = signed(claims).split(".")
    public_pem = jwt.PyJWK.from_dict(json.loads(jwks.read_text())["keys"][0]).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_header = b64({"alg": "HS256", "typ": "JWT", "kid": kid})
    hs_body = b64(claims)
    hs_mac = (
        base64.urlsafe_b64encode(hmac.new(public_pem, f"{hs_header}.{hs_body}".encode(), hashlib.sha256).digest())
        .rstrip(b"=")
        .decode()
    )
    return {
        "expired": signed({**claims, "exp": now - 120}),
        "wrong audience": signed({**claims, "aud": "someone-else"}),
        "tampered payload": ".".join([header, b64({**claims, "projects": {"*": "editor"}}), signature]),
        "alg none": ".".join([b64({"alg": "none", "typ": "JWT"}), b64(claims), ""]),
        "HS256 signed with the public key": f"{hs_header}.{hs_body}.{hs_mac}",
        "missing sub": signed({k: v for k, v in claims.items() if k != "sub"}),
        "missing exp": signed({k: v for k, v in claims.items() if k != "exp"}),
        "not a JWT": "hello",
    }


def test_every_attack_is_refused(keypair: tuple[Path, Path]) -> None:
    private, jwks = keypair
    keys = Keys(jwks_url="https://issuer.example/jwks.json", fetch=Issuer(jwks))
    for name, token in attacks(private, jwks).items():
        with pytest.raises(AuthError) as info:
            keys.verify(token, "canvas-sync", None, 30)
        assert token not in str(info.value), name  # the reason never repeats the token
    with pytest.raises(AuthError):  # the issuer is checked when configured
        keys.verify(
            mint("ann", {"p": "editor"}, private_key=private, issuer="https://evil/"),
            "canvas-sync",
            "https://issuer.example/",
            30,
        )


def test_a_secret_verifies_hs256_only(keypair: tuple[Path, Path]) -> None:
    keys = Keys(secret=SECRET)
    assert keys.verify(mint("bob", {"*": "viewer"}, secret=SECRET), "canvas-sync", None, 0).sub == "bob"
    with pytest.raises(AuthError, match="algorithm"):
        keys.verify(mint("bob", {"*": "viewer"}, private_key=keypair[0]), "canvas-sync", None, 0)
    with pytest.raises(ValueError):
        Keys(secret=b"short")


def test_a_kid_spray_fetches_the_jwks_at_most_once_per_cooldown(keypair: tuple[Path, Path]) -> None:
    private, jwks = keypair
    issuer = Issuer(jwks)
    keys = Keys(jwks_url="https://issuer.example/jwks.json", fetch=issuer, cooldown=30)
    keys.verify(mint("ann", {"p": "editor"}, private_key=private), "canvas-sync", None, 30)
    assert issuer.fetches == 1
    claims = {"sub": "x", "aud": "canvas-sync", "exp": int(time.time()) + 60}
    for _ in range(200):
        forged = jwt.encode(claims, private.read_bytes(), algorithm="ES256", headers={"kid": uuid.uuid4().hex})
        with pytest.raises(AuthError, match="key id"):
            keys.verify(forged, "canvas-sync", None, 30)
    assert issuer.fetches == 1  # not 201
    keys._fetched_at -= 31  # the cooldown passed: an unknown kid may fetch once more
    with pytest.raises(AuthError):
        keys.verify(forged, "canvas-sync", None, 30)
    assert issuer.fetches == 2


def test_the_last_good_keys_stay_while_the_issuer_is_down(keypair: tuple[Path, Path]) -> None:
    private, jwks = keypair
    issuer = Issuer(jwks)
    keys = Keys(jwks_url="https://issuer.example/jwks.json", fetch=issuer, cooldown=0, max_age=0)
    token = mint("ann", {"p": "editor"}, private_key=private)
    keys.verify(token, "canvas-sync", None, 30)
    issuer.down = True
    assert keys.verify(token, "canvas-sync", None, 30).sub == "ann"  # refetch failed, old keys kept
    assert issuer.fetches == 2 and keys.last_error is not None


# --- the parser never fails but with a code ----------------------------------------------

CODES = {"bad_json", "bad_message", "too_large"}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
messages = st.fixed_dictionaries(
    {"op": st.sampled_from(["create", "update", "delete", "ping", "presence", "auth", "nope", 1, None])},
    optional={
        "req": json_values,
        "id": json_values,
        "object": json_values,
        "props": json_values,
        "state": json_values,
        "token": json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        messages.map(json.dumps), st.text(max_size=200), st.binary(max_size=100).map(lambda b: b.decode("latin-1"))
    )
)
def test_the_parser_answers_every_frame_with_a_command_or_a_code(text: str) -> None:
    try:
        protocol.parse(text, 16384)
    except protocol.ProtocolError as error:
        assert error.code in CODES and error.message
