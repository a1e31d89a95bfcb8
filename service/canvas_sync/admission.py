"""Who comes in, and for how long: the checks a request passes before it costs anything,
and the token's life on an open socket.

Before an upgrade or a project route loads anything: the browser's Origin, the token, the
grant on the project, and for sockets the connection limits. Refusals are counted and
logged once, here. On an open socket: the token's expiry closes it (4401), and
``{"op":"auth"}`` renews it for the same subject (4401 when invalid, 4403 without the
grant). The decisions themselves are plain functions in ``auth.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from . import protocol
from .auth import AuthError, ConnectionLimits, Identity, Role, Verifier, origin_allowed, role_for, token_from
from .connection import FORBIDDEN, UNAUTHORIZED, Connection
from .metrics import Metrics
from .protocol import Auth

log = logging.getLogger(__name__)


class Refusal(Exception):
    """A request refused before it costs anything: HTTP status, error code, a safe message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request that passed: on which project, as whom (None without authentication), with which role."""

    project: str
    identity: Identity | None
    role: Role
    address: str | None

    @property
    def sub(self) -> str | None:
        return self.identity.sub if self.identity else None


class Admission:
    """Owned by the event loop (the connection counts are plain dicts)."""

    def __init__(
        self,
        verifier: Verifier | None,
        limits: ConnectionLimits,
        metrics: Metrics,
        *,
        origins: list[str],
        query_token: bool,
        leeway: float,
    ) -> None:
        self.verifier = verifier
        """None: authentication is off, everyone is an editor."""
        self.limits = limits
        self.metrics = metrics
        self.origins = origins
        self.query_token = query_token
        self.leeway = leeway

    async def admit(
        self,
        project_id: str,
        headers: Any,
        subprotocols: list[str],
        query: Any,
        address: str | None,
    ) -> Admitted:
        """The identity and role of a request on a project, or :class:`Refusal`.

        ``headers`` and ``query`` are the request's (Quart's or any mapping of str to str).
        Without authentication everyone is an owner (``CANVAS_AUTH=off`` allows everything)."""
        identity = await self.identify(headers, subprotocols, query, address, project_id)
        if identity is None:
            return Admitted(project_id, None, Role.OWNER, address)
        role = role_for(identity.grants, project_id)
        if role is None:
            raise self.refuse(
                403,
                "forbidden",
                "the token grants nothing on this project",
                project_id,
                address,
                headers.get("Origin"),
                identity.sub,
            )
        return Admitted(project_id, identity, role, address)

    async def identify(
        self, headers: Any, subprotocols: list[str], query: Any, address: str | None, project: str = ""
    ) -> Identity | None:
        """Origin and token, for any project (a listing has none): the verified identity,
        None without authentication, or :class:`Refusal` (401, or 403 for a foreign origin)."""
        origin = headers.get("Origin")
        if not origin_allowed(origin, headers.get("Host"), self.origins):
            raise self.refuse(
                403, "forbidden", "this browser origin may not open sockets here", project, address, origin
            )
        if self.verifier is None:
            return None
        token = token_from(headers, subprotocols, query, self.query_token)
        if token is None:
            raise self.refuse(401, "unauthorized", "a token is required", project, address, origin)
        try:
            return await self.verifier.verify(token)
        except AuthError as error:
            raise self.refuse(401, "unauthorized", str(error), project, address, origin) from None

    def refuse(
        self,
        status: int,
        code: str,
        reason: str,
        project: str,
        address: str | None = None,
        origin: str | None = None,
        sub: str | None = None,
    ) -> Refusal:
        """Count and log a refusal; the caller raises it (or closes the socket)."""
        self.metrics.refusals.labels(str(status)).inc()
        log.info(
            "refused",
            extra={
                "event": "refused",
                "status": status,
                "reason": reason,
                "project": project,
                "sub": sub,
                "address": address,
                "origin": origin,
            },
        )
        return Refusal(status, code, reason)

    # --- connections --------------------------------------------------------------------

    def reserve(self, admitted: Admitted) -> None:
        """Count one more connection, or :class:`Refusal` (429) when it does not fit."""
        why = self.limits.refusal(admitted.sub, admitted.address, admitted.project)
        if why is not None:
            raise self.refuse(429, "too_many_connections", why, admitted.project, admitted.address, None, admitted.sub)
        self.limits.opened(admitted.sub, admitted.address, admitted.project)

    def release(self, admitted: Admitted) -> None:
        self.limits.closed(admitted.sub, admitted.address, admitted.project)

    def watch_expiry(self, conn: Connection, identity: Identity | None) -> None:
        """Close the socket (4401) when its token expires, leeway included; None stops watching."""
        if conn.expiry is not None:
            conn.expiry.cancel()
            conn.expiry = None
        if identity is None:
            return
        delay = identity.expires_at + self.leeway - time.time()
        conn.expiry = asyncio.get_running_loop().call_later(max(0.0, delay), conn.close, UNAUTHORIZED, "token expired")

    async def renew(self, project_id: str, conn: Connection, command: Auth) -> None:
        """``{"op":"auth"}``: a new token for the same subject moves the expiry; an invalid one
        closes the socket with 4401, one without this project's grant with 4403."""
        assert self.verifier is not None
        try:
            identity = await self.verifier.verify(command.token)
        except AuthError as error:
            self.refuse(401, "unauthorized", str(error), project_id, sub=conn.sub)
            conn.close(UNAUTHORIZED, "invalid token")
            return
        if identity.sub != conn.sub:
            self.refuse(401, "unauthorized", "a renewal must be for the same subject", project_id, sub=identity.sub)
            conn.close(UNAUTHORIZED, "a renewal must be for the same subject")
            return
        role = role_for(identity.grants, project_id)
        if role is None:
            self.refuse(
                403, "forbidden", "the renewed token grants nothing on this project", project_id, sub=identity.sub
            )
            conn.close(FORBIDDEN, "no grant for this project")
            return
        conn.editor = role.can_edit
        self.watch_expiry(conn, identity)
        conn.send(protocol.ack(command.req))
