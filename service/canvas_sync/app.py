"""The Quart application: WebSocket and HTTP in, :class:`CanvasService` calls, replies out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from quart import Quart, Response, request, send_from_directory, websocket
from quart.asgi import ASGIWebsocketConnection

from . import protocol
from .auth import Identity, Role
from .connection import Connection
from .metrics import CONTENT_TYPE_LATEST
from .protocol import ProtocolError
from .service import CanvasService, NotReady, Refusal
from .state import Project
from .tokens import mint

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


def _json(body: Any, status: int = 200) -> Response:
    text = body if isinstance(body, str) else protocol.encode(body)
    return Response(text, status=status, content_type="application/json")


def _problem(status: int, code: str, message: str) -> Response:
    return _json({"error": code, "message": message}, status)


def _bad_project(project_id: str) -> Response:
    return _problem(400, "bad_project", f"project id {project_id!r} must match {protocol.ID_RE.pattern}")


def _refused(refusal: Refusal) -> Response:
    response = _problem(refusal.status, refusal.code, refusal.message)
    if refusal.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="canvas-sync"'
    return response


class DirectSocket(ASGIWebsocketConnection):
    """Quart's WebSocket connection without its receiving task, its queue and its yield
    before every send.

    Quart reads hypercorn's channel in a task of its own, hands each message on through a
    queue, and sleeps(0) and fires a signal around every send: about a fifth of the CPU a
    bare parse-and-ack socket costs. Here the handshake, refusals and the accept stay
    Quart's; the handler then reads and writes the ASGI channel itself, through this
    object (``websocket.scope[SOCKET]``). It leans on Quart 0.22's internals (hence the
    pin in pyproject.toml); tests/test_app.py goes through every path of it.
    """

    async def __call__(self, receive: Any, send: Any) -> None:
        self._channel_receive, self._channel_send = receive, send
        self._gone = False
        self.queue = SimpleNamespace(get=self.receive)  # type: ignore[assignment]  # what Quart's websocket reads
        self.scope[SOCKET] = self  # type: ignore[literal-required]
        await self.handle_websocket(self._create_websocket_from_scope(send), send)
        if self._accepted and not self._gone:
            # hypercorn hands messages over through a queue of 10 and waits while it is
            # full: keep taking them until the client is gone, or the close handshake of
            # a socket we closed never completes
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain(), CLOSE_TIMEOUT)

    async def _drain(self) -> None:
        while await self.receive() is not None:
            pass

    async def receive(self) -> str | bytes | None:
        """The next message; None once the client is gone."""
        while True:
            event = await self._channel_receive()
            if event["type"] == "websocket.receive":
                return event.get("bytes") or event["text"]
            if event["type"] == "websocket.disconnect":
                self._closed = self._gone = True  # nothing left to close
                return None

    async def send(self, text: str) -> None:
        await self._channel_send({"type": "websocket.send", "text": text})

    async def close(self, code: int, reason: str) -> None:
        if not self._closed:
            await self.close_connection(self._channel_send, code, reason)


SOCKET = "canvas_sync.socket"
CLOSE_TIMEOUT = 10.0
"""Seconds a closed socket's client has to answer the close before we stop listening."""


def create_app(service: CanvasService) -> Quart:
    app = Quart("canvas_sync", static_folder="static", static_url_path="/static")
    app.asgi_websocket_class = DirectSocket
    app.extensions["canvas"] = service

    @app.before_serving
    async def _start() -> None:
        await service.start()

    @app.after_serving
    async def _stop() -> None:
        await service.shutdown()

    async def load(project_id: str) -> Project | Response:
        if not protocol.is_valid_id(project_id):
            return _bad_project(project_id)
        try:
            return await service.project(project_id)
        except NotReady:
            return _problem(503, "not_ready", "this replica is not serving (starting or shutting down)")
        except Exception:  # logged by the load with the detail; the client learns only that it failed
            return _problem(503, "store_unavailable", "could not load the project from the database; try again")

    async def admitted(
        project_id: str, subprotocols: list[str] | None = None
    ) -> tuple[Identity | None, Role] | Response:
        """Origin, token and grant, before anything is loaded (HTTP routes and upgrades alike)."""
        if not protocol.is_valid_id(project_id):
            return _bad_project(project_id)
        ctx = websocket if subprotocols is not None else request
        try:
            return await service.admit(project_id, ctx.headers, subprotocols or [], ctx.args, ctx.remote_addr)
        except Refusal as refusal:
            return _refused(refusal)

    @app.websocket("/ws/<project_id>")
    async def ws(project_id: str) -> Response | None:
        offered = list(websocket.requested_subprotocols)
        admission = await admitted(project_id, offered)
        if isinstance(admission, Response):
            return admission  # refuses the upgrade with this status
        identity, role = admission
        address = websocket.remote_addr
        try:
            service.reserve(identity, address, project_id)
        except Refusal as refusal:
            return _refused(refusal)
        try:
            return await serve_socket(project_id, identity, role, protocol.subprotocol(offered))
        finally:
            service.release(identity, address, project_id)

    async def serve_socket(
        project_id: str, identity: Identity | None, role: Role, subprotocol: str | None
    ) -> Response | None:
        project = await load(project_id)
        if isinstance(project, Response):
            return project
        await websocket.accept(subprotocol=subprotocol)
        ws_obj: DirectSocket = websocket.scope[SOCKET]  # type: ignore[literal-required]
        conn = Connection(
            service.settings.send_queue_size,
            service.settings.rate_limit,
            service.metrics.slow_clients.inc,
            batched=subprotocol == protocol.V2,
            send_interval=service.settings.send_interval,
        )
        conn.sub, conn.editor = (identity.sub if identity else None), role == Role.EDITOR
        service.watch_expiry(conn, identity)
        service.connections.add(conn)
        project.connections.add(conn)
        conn.send(service.snapshot(project))
        writer = asyncio.create_task(conn.pump(ws_obj))
        service.writers.add(writer)

        async def read() -> None:
            while True:
                data = await ws_obj.receive()
                reply: str | None
                if data is None:
                    return
                if isinstance(data, bytes):
                    reply = protocol.error(
                        ProtocolError("bad_message", "binary frames are not accepted; send JSON text")
                    )
                else:
                    reply = service.handle(project, conn, data)
                    if conn.woke_peers:  # their writers send this edit before the sender hears its ack,
                        conn.woke_peers = False  # so a client editing as fast as acks come is paced
                        await asyncio.sleep(0)  # by its fan-out, as behind a relay
                if reply is not None:
                    await conn.reply(ws_obj, reply)

        reader = asyncio.create_task(read())
        try:
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            if not writer.done() and conn.close_code is None:
                writer.cancel()
            service.writers.discard(writer)
            service.connections.discard(conn)
            project.connections.discard(conn)
            project.last_active = time.monotonic()
            service.left(project, conn)
            service.watch_expiry(conn, None)
        return None

    @app.get("/projects/<project_id>/objects")
    async def objects(project_id: str) -> Response:
        admission = await admitted(project_id)
        if isinstance(admission, Response):
            return admission
        project = await load(project_id)
        if isinstance(project, Response):
            return project
        body = f'{{"objects":[{",".join(project.snapshot_jsons())}],"project":{protocol.encode(project.id)}}}'
        return _json(body)

    @app.get("/projects/<project_id>/status")
    async def status(project_id: str) -> Response:
        admission = await admitted(project_id)
        if isinstance(admission, Response):
            return admission
        project = service.state.get(project_id)
        return _json(
            {
                "project": project_id,
                "loaded": project is not None,
                "connections": len(project.connections) if project else 0,
                "objects": len(project.views) if project else 0,
                "tombstones": len(project.tombstones) if project else 0,
                "dirty_objects": service.dirty.project_count(project_id),
                "last_save_at": service.dirty.last_save(project_id) if project else None,
            }
        )

    if service.settings.dev_token_key:
        key = Path(service.settings.dev_token_key)

        @app.get("/dev/token")
        async def dev_token() -> Response:
            """Development only (`canvas-sync dev`): an editor token for the demo page."""
            project_id = request.args.get("project", "demo")
            if not protocol.is_valid_id(project_id):
                return _bad_project(project_id)
            name = re.sub(r"[^A-Za-z0-9_.-]", "", request.args.get("name", ""))[:32] or "guest"
            token = mint(
                f"dev-{name}",
                {project_id: "editor"},
                3600,
                private_key=key,
                audience=service.settings.auth_audience,
                issuer=service.settings.auth_issuer,
            )
            return _json({"token": token, "expires_in": 3600})

    @app.get("/")
    async def page() -> Response:
        """The demo canvas (static/index.html); the project comes from ?project=."""
        return await send_from_directory(STATIC, "index.html")

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "alive"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if service.ready and not service.shutting_down:
            return _json({"status": "ready"})
        return _json({"status": "shutting_down" if service.shutting_down else "starting"}, 503)

    @app.get("/health")
    async def health() -> Response:
        return _json(service.health())

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), content_type=CONTENT_TYPE_LATEST)

    @app.errorhandler(404)
    async def not_found(_: Exception) -> Response:
        return _problem(404, "not_found", "no such endpoint")

    return app
