"""The Quart application: WebSocket and HTTP in, :class:`CanvasService` calls, replies out."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from quart import Quart, Response, request, send_from_directory, websocket
from werkzeug.exceptions import RequestEntityTooLarge

from . import protocol
from .admission import Admitted, Refusal
from .metrics import CONTENT_TYPE_LATEST
from .patches import SOCKET, DirectSocket
from .projects import Project
from .resources import ApiError, Resources
from .service import CanvasService, NotReady
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


def create_app(service: CanvasService, resources: Resources | None = None) -> Quart:
    """``resources``: the projects API's stores (default: beside the service's store)."""
    app = Quart("canvas_sync", static_folder="static", static_url_path="/static")
    app.asgi_websocket_class = DirectSocket
    app.config["MAX_CONTENT_LENGTH"] = service.settings.max_request_bytes
    app.extensions["canvas"] = service
    api = resources or Resources.for_service(service)
    app.extensions["canvas_resources"] = api

    @app.before_serving
    async def _start() -> None:
        await service.start()
        api.start()

    @app.after_serving
    async def _stop() -> None:
        await service.shutdown()
        await api.stop()

    def unavailable(error: Exception) -> Response:
        if isinstance(error, NotReady):
            return _problem(503, "not_ready", "this replica is not serving (starting or shutting down)")
        # logged by the load with the detail; the client learns only that it failed
        return _problem(503, "store_unavailable", "could not load the project from the database; try again")

    async def load(project_id: str) -> Project | Response:
        try:
            return await service.project(project_id)
        except Exception as error:
            return unavailable(error)

    async def admitted(project_id: str, subprotocols: list[str] | None = None) -> Admitted | Response:
        """Origin, token and grant, before anything is loaded (HTTP routes and upgrades alike)."""
        if not protocol.is_valid_id(project_id):
            return _bad_project(project_id)
        ctx = websocket if subprotocols is not None else request
        try:
            return await service.admission.admit(project_id, ctx.headers, subprotocols or [], ctx.args, ctx.remote_addr)
        except Refusal as refusal:
            return _refused(refusal)

    @app.websocket("/ws/<project_id>")
    async def ws(project_id: str) -> Response | None:
        offered = list(websocket.requested_subprotocols)
        admission = await admitted(project_id, offered)
        if isinstance(admission, Response):
            return admission  # refuses the upgrade with this status
        subprotocol = protocol.subprotocol(offered)
        try:
            conn = await service.open(admission, subprotocol)
        except Refusal as refusal:
            return _refused(refusal)
        except Exception as error:
            return unavailable(error)
        try:
            await websocket.accept(subprotocol=subprotocol)
            socket: DirectSocket = websocket.scope[SOCKET]  # type: ignore[literal-required]
            await service.serve(conn, socket)
        finally:
            service.close(conn)
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
        project = service.projects.get(project_id)
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

    # --- the projects API (docs/projects.md): what each route does is in resources.py ----------

    async def admit(project_id: str) -> Admitted:
        """Origin, token and grant on one project, or a refusal raised."""
        if not protocol.is_valid_id(project_id):
            raise ApiError(400, "bad_project", f"project id {project_id!r} must match {protocol.ID_RE.pattern}")
        return await service.admission.admit(project_id, request.headers, [], request.args, request.remote_addr)

    async def answer(
        route: str, project_id: str, work: Callable[[Admitted], Awaitable[Any]], status: int = 200
    ) -> Response:
        """One API call: admitted, run, its refusals as JSON problems; a metric and a log line."""
        started = time.perf_counter()
        who: Admitted | None = None
        try:
            if not service.ready or service.shutting_down:
                raise NotReady()
            who = await admit(project_id)
            result = await work(who)
            response = Response("", status=204) if result is None else _json(result, status)
        except Refusal as refusal:
            response = _refused(refusal)
        except ApiError as error:
            response = _problem(error.status, error.code, error.message)
        except RequestEntityTooLarge:
            limit = service.settings.max_request_bytes
            response = _problem(413, "too_large", f"a request body is at most {limit} bytes")
        except NotReady as error:
            response = unavailable(error)
        except Exception as error:
            log.exception(
                "projects API call failed", extra={"event": "api_error", "route": route, "project": project_id}
            )
            response = unavailable(error)
        seconds = time.perf_counter() - started
        service.metrics.api_requests.labels(route, str(response.status_code)).inc()
        service.metrics.api_seconds.labels(route).observe(seconds)
        log.info(
            "projects API",
            extra={
                "event": "api",
                "route": route,
                "status": response.status_code,
                "project": project_id or None,
                "sub": who.sub if who is not None else None,
                "ms": round(seconds * 1000, 1),
            },
        )
        return response

    async def with_body(work: Callable[[Admitted, bytes], Awaitable[Any]], who: Admitted) -> Any:
        """The body is read once the request is admitted: a refused one costs no upload."""
        return await work(who, await request.get_data(cache=True, as_text=False, parse_form_data=False))

    @app.get("/projects")
    async def list_projects() -> Response:
        started = time.perf_counter()
        try:
            if not service.ready or service.shutting_down:
                raise NotReady()
            identity = await service.admission.identify(request.headers, [], request.args, request.remote_addr)
            response = _json(await api.list_projects(identity, request.args))
        except Refusal as refusal:
            response = _refused(refusal)
        except ApiError as error:
            response = _problem(error.status, error.code, error.message)
        except Exception as error:
            if not isinstance(error, NotReady):
                log.exception("projects API call failed", extra={"event": "api_error", "route": "list"})
            response = unavailable(error)
        seconds = time.perf_counter() - started
        service.metrics.api_requests.labels("list", str(response.status_code)).inc()
        service.metrics.api_seconds.labels("list").observe(seconds)
        log.info(
            "projects API",
            extra={"event": "api", "route": "list", "status": response.status_code, "ms": round(seconds * 1000, 1)},
        )
        return response

    @app.post("/projects/<project_id>/ops")
    async def ops(project_id: str) -> Response:
        return await answer("ops", project_id, lambda who: with_body(api.ops, who))

    @app.put("/projects/<project_id>/objects")
    async def import_objects(project_id: str) -> Response:
        return await answer("import", project_id, lambda who: with_body(api.import_objects, who))

    @app.delete("/projects/<project_id>")
    async def delete_project(project_id: str) -> Response:
        return await answer("delete", project_id, api.delete)

    @app.post("/projects/<project_id>/versions")
    async def create_version(project_id: str) -> Response:
        return await answer("version_create", project_id, lambda who: with_body(api.create_version, who), 201)

    @app.get("/projects/<project_id>/versions")
    async def list_versions(project_id: str) -> Response:
        return await answer("versions", project_id, api.list_versions)

    @app.get("/projects/<project_id>/versions/<version_id>")
    async def get_version(project_id: str, version_id: str) -> Response:
        return await answer("version", project_id, lambda who: api.get_version(who, version_id))

    @app.post("/projects/<project_id>/versions/<version_id>/restore")
    async def restore(project_id: str, version_id: str) -> Response:
        return await answer("restore", project_id, lambda who: api.restore(who, version_id))

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
