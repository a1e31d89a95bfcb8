"""Who may read and edit which project: JWT verification, grants, and the checks made
before a socket or an HTTP request costs anything.

The decisions are plain functions over plain data: which token a request carries
(:func:`token_from`), which role its grants give on a project (:func:`role_for`), whether
its Origin may open a socket (:func:`origin_allowed`), whether one more connection fits
(:class:`ConnectionLimits`). The I/O sits at the edges: :class:`Keys` fetches a JWKS in a
thread, caches it, refreshes it on an unknown ``kid`` at most every ``cooldown`` seconds
(a spray of random ``kid`` values must not become a flood of fetches) and keeps the last
good keys while the issuer is unreachable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import jwt

log = logging.getLogger(__name__)

BEARER_PREFIX = "canvas-sync.bearer."
"""Browsers cannot set headers on a WebSocket: the token travels as a subprotocol."""
REQUIRED_CLAIMS = ("sub", "exp", "aud")
ASYMMETRIC = ("ES256", "RS256")
"""What a JWKS may verify."""
SYMMETRIC = ("HS256",)
"""What a shared secret may verify."""
MIN_SECRET_BYTES = 32
MAX_TOKEN_BYTES = 8192


class Role(StrEnum):
    OWNER = "owner"
    """Everything an editor may do, plus delete, import (PUT objects) and restore."""
    EDITOR = "editor"
    VIEWER = "viewer"

    @property
    def can_edit(self) -> bool:
        """Editors and owners edit; viewers only read."""
        return self is not Role.VIEWER

    @property
    def can_own(self) -> bool:
        """Owners alone delete, import and restore."""
        return self is Role.OWNER


class AuthError(Exception):
    """The token is missing or invalid (HTTP 401, close 4401). The message is safe to log
    and to show: it never contains the token."""


@dataclass(frozen=True, slots=True)
class Identity:
    """What a verified token says."""

    sub: str
    expires_at: float
    grants: Mapping[str, Role]


# --- decisions ---------------------------------------------------------------------------


def algorithms_for(listed: str | Iterable[str], secret: bool) -> tuple[str, ...]:
    """The algorithms a replica accepts: those listed (a comma-separated string or names),
    or every one its key source allows when none are; ValueError for one it cannot.
    ``alg: none`` is never among them."""
    possible = SYMMETRIC if secret else ASYMMETRIC
    names = listed.split(",") if isinstance(listed, str) else listed
    wanted = tuple(name.strip() for name in names if name.strip())
    if any(name not in possible for name in wanted):
        raise ValueError(f"with {'a shared secret' if secret else 'a JWKS'} only {', '.join(possible)}")
    return wanted or possible


def check_secret(secret: bytes) -> bytes:
    """An HS256 secret long enough to resist guessing (RFC 7518: at least the hash size)."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"an HS256 secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret


def role_for(grants: Mapping[str, Role], project: str) -> Role | None:
    """The role the grants give on a project: an exact id beats a prefix (``team-1:*``), a
    longer prefix beats a shorter one, and ``*`` is the shortest prefix of all."""
    exact = grants.get(project)
    if exact is not None:
        return exact
    best: tuple[int, Role] | None = None
    for pattern, role in grants.items():
        if pattern.endswith("*") and project.startswith(pattern[:-1]):
            if best is None or len(pattern) > best[0]:
                best = (len(pattern), role)
    return best[1] if best else None


def parse_grants(claim: Any) -> dict[str, Role]:
    """The ``projects`` claim: {project id, prefix ending in ``*``, or ``*``: owner|editor|viewer}."""
    if not isinstance(claim, dict):
        raise AuthError("the token's 'projects' claim must be an object of project -> owner|editor|viewer")
    grants = {}
    for pattern, role in claim.items():
        if not isinstance(pattern, str) or not pattern or len(pattern) > 129:
            raise AuthError("the token's 'projects' claim has a bad project pattern")
        try:
            grants[pattern] = Role(role)
        except ValueError:
            raise AuthError(f"the token's grant for {pattern!r} must be 'owner', 'editor' or 'viewer'") from None
    return grants


def token_from(
    headers: Mapping[str, str], subprotocols: Iterable[str], query: Mapping[str, str], query_allowed: bool
) -> str | None:
    """The bearer token of a request: the ``canvas-sync.bearer.`` subprotocol, else
    ``Authorization: Bearer``, else ``?token=`` where allowed."""
    for offered in subprotocols:
        if offered.startswith(BEARER_PREFIX):
            return offered[len(BEARER_PREFIX) :] or None
    header = headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if query_allowed:
        return query.get("token") or None
    return None


def origin_allowed(origin: str | None, host: str | None, allowed: Iterable[str], scheme: str = "http") -> bool:
    """Cross-site WebSocket hijacking: a browser's Origin must be the service's own or one
    listed exactly. A request without Origin is not a browser's: its token decides."""
    if origin is None:
        return True
    origin = origin.rstrip("/").lower()
    if host and origin in (f"http://{host.lower()}", f"https://{host.lower()}"):
        return True
    return origin in {o.rstrip("/").lower() for o in allowed}


@dataclass
class ConnectionLimits:
    """Open connections per subject, per client address and per project. Owned by the loop."""

    per_subject: int
    per_address: int
    per_project: int
    _open: dict[tuple[str, str], int] = field(default_factory=dict)

    def refusal(self, sub: str | None, address: str | None, project: str) -> str | None:
        """Why one more connection does not fit, or None."""
        for kind, key, limit in (
            ("subject", sub, self.per_subject),
            ("address", address, self.per_address),
            ("project", project, self.per_project),
        ):
            if key is not None and limit and self._open.get((kind, key), 0) >= limit:
                return f"too many connections for this {kind} (at most {limit})"
        return None

    def opened(self, sub: str | None, address: str | None, project: str) -> None:
        for key in self._keys(sub, address, project):
            self._open[key] = self._open.get(key, 0) + 1

    def closed(self, sub: str | None, address: str | None, project: str) -> None:
        for key in self._keys(sub, address, project):
            left = self._open.get(key, 0) - 1
            if left > 0:
                self._open[key] = left
            else:
                self._open.pop(key, None)

    @staticmethod
    def _keys(sub: str | None, address: str | None, project: str) -> list[tuple[str, str]]:
        keys = [("project", project)]
        if sub is not None:
            keys.append(("subject", sub))
        if address is not None:
            keys.append(("address", address))
        return keys


# --- keys and verification -------------------------------------------------------------


class Keys:
    """Verification keys: an HS256 secret, or a JWKS (URL or file) with a refresh cooldown.

    ``key_for`` runs in a worker thread (it may fetch); the lock guards the cached keys and
    the time of the last fetch.
    """

    def __init__(
        self,
        jwks_url: str | None = None,
        secret: bytes | None = None,
        cooldown: float = 30.0,
        max_age: float = 600.0,
        fetch: Callable[[str], bytes] | None = None,
        algorithms: Iterable[str] = (),
    ) -> None:
        if (jwks_url is None) == (secret is None):
            raise ValueError("exactly one of a JWKS URL and a shared secret")
        self.jwks_url = jwks_url
        self.secret = check_secret(secret) if secret is not None else None
        self.algorithms = algorithms_for(algorithms, secret is not None)
        self.cooldown = cooldown
        self.max_age = max_age
        self._fetch = fetch or _http_get
        self._lock = threading.Lock()  # guards _keys, _fetched_at, fetches
        self._keys: dict[str, Any] = {}
        self._fetched_at = float("-inf")
        self.fetches = 0
        self.last_error: str | None = None

    def key_for(self, kid: str | None) -> Any:
        """The key a token's header names (blocking: call it off the event loop)."""
        if self.secret is not None:
            return self.secret
        with self._lock:
            now = time.monotonic()
            stale = now - self._fetched_at >= self.max_age
            unknown = kid not in self._keys
            if (stale or unknown) and now - self._fetched_at >= self.cooldown:
                self._refresh(now)
            if kid is not None:
                key = self._keys.get(kid)
            else:  # a token without kid is fine only when the issuer has one key
                key = next(iter(self._keys.values())) if len(self._keys) == 1 else None
        if key is None:
            raise AuthError("the token's key id is not one of the issuer's keys")
        return key

    def _refresh(self, now: float) -> None:
        """Fetch the JWKS (lock held). On failure the last good keys stay."""
        self._fetched_at = now
        self.fetches += 1
        assert self.jwks_url is not None
        try:
            jwks = json.loads(self._fetch(self.jwks_url))
            keys = {}
            for entry in jwks.get("keys", []):
                if entry.get("use", "sig") != "sig" or "kid" not in entry:
                    continue
                keys[entry["kid"]] = jwt.PyJWK.from_dict(entry).key
        except Exception as error:  # the issuer is down or answered garbage: keep what we had
            self.last_error = f"{type(error).__name__}: {error}"
            log.warning(
                "JWKS fetch failed; keeping the last good keys",
                extra={"event": "jwks_error", "url": self.jwks_url, "error": self.last_error},
            )
            return
        self._keys = keys
        self.last_error = None

    def verify(self, token: str, audience: str, issuer: str | None, leeway: float) -> Identity:
        """A verified identity, or :class:`AuthError` saying why not (blocking)."""
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("the token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("the token is not a JWT") from None
        alg = header.get("alg")
        if alg not in self.algorithms:  # "none", and HS256 signed with a public key, end here
            raise AuthError(f"the token's algorithm {alg!r} is not accepted")
        key = self.key_for(header.get("kid"))
        required = [*REQUIRED_CLAIMS, "iss"] if issuer else list(REQUIRED_CLAIMS)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=audience,
                issuer=issuer,
                leeway=leeway,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired") from None
        except jwt.PyJWTError as error:
            raise AuthError(f"the token is not valid: {error}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthError("the token has no subject")
        return Identity(sub, float(claims["exp"]), parse_grants(claims.get("projects", {})))


class Verifier:
    """Verification on the event loop's behalf: each check runs in a thread."""

    def __init__(self, keys: Keys, audience: str, issuer: str | None, leeway: float) -> None:
        self.keys = keys
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway

    async def verify(self, token: str) -> Identity:
        return await asyncio.to_thread(self.keys.verify, token, self.audience, self.issuer, self.leeway)


def _http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:  # http(s)://, or file:// for dev keys
        return bytes(response.read())
