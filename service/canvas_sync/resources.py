"""Projects as resources: what the projects API does (list, ops, import, delete, versions,
restore), and the upkeep that keeps the registry and the automatic versions current.

Everything here runs on the event loop and hands every store call to a thread. Edits go
through the same path as a socket's: ops are parsed by ``protocol.parse`` and applied by
``Projects.edit`` then ``CanvasService.fan_out`` (counters, fan-out, relay); an import or
a restore is one ``Projects.replace``: fresh stamps, sent to the project's clients,
relayed, and saved by the auto-save like any edit. Who may do what is decided before:
``app.py`` admits the request, and each call here checks the role it needs.

The table is written here only for the registry and for versions, and one lock keeps
those writes and a delete on this replica apart, so a delete is never followed by an
entry or a version of the project it removed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import protocol
from .admission import Admitted
from .auth import Identity, Role
from .connection import Connection
from .projects import Project, Replaced, Unknown
from .protocol import Create, Delete, ProtocolError, Update
from .store import registry as reg
from .store import versions as ver
from .store.dynamodb import DynamoStore

if TYPE_CHECKING:
    from .service import CanvasService

log = logging.getLogger(__name__)

MAX_OPS = 1000
"""Ops in one ``POST /projects/{p}/ops``."""
DEFAULT_LIMIT = 100
PREFIX_RE = re.compile(r"^[A-Za-z0-9._:-]{0,128}$")
RELOAD = 4409
"""Close code for a socket whose project changed more at once (an import, a restore) than
its outbox holds: the client reconnects and gets the new state in its snapshot."""
UPKEEP_MAX_PERIOD = 10.0


class ApiError(Exception):
    """A request refused for what it carries (HTTP status, error code, a safe message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


_STATUS = {"too_large": 413, "rate_limited": 429}


def _api_error(error: ProtocolError, where: str = "") -> ApiError:
    return ApiError(_STATUS.get(error.code, 400), error.code, f"{where}{error.message}")


class Buckets:
    """Token buckets per caller (a token's subject, else its address): the socket's rate
    limit (``CANVAS_RATE_LIMIT``, bursts of twice that) for ops sent over HTTP. Bounded:
    full buckets are forgotten when there are many."""

    MAX_KEYS = 10_000

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = 2 * rate
        self._held: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def take(self, key: str, now: float | None = None) -> bool:
        if not self.rate:
            return True
        now = time.monotonic() if now is None else now
        tokens, then = self._held.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        allowed = tokens >= 1
        self._held[key] = (tokens - 1 if allowed else tokens, now)
        if len(self._held) > self.MAX_KEYS:
            full = self.burst / self.rate
            self._held = {k: v for k, v in self._held.items() if now - v[1] < full}
        return allowed


@dataclass
class _Seen:
    """What upkeep knows of one held project."""

    registered: tuple[float | None, int | None] | None = None
    """The change marks the registry entry was written at (see :meth:`Resources._marks`)."""
    written_at: float = -math.inf
    """Monotonic time of that write."""
    versioned: tuple[float | None, int | None] | None = None
    """The change marks of the newest version this replica took or read."""
    version_at: float | None = None
    """Unix time of the newest version (None: not read yet)."""


class Resources:
    def __init__(
        self, service: CanvasService, registry: reg.Registry, versions: ver.Versions, swept: bool = False
    ) -> None:
        """``swept``: deleting a project's partition (``CanvasService.delete_project``) removes
        its registry entry and versions too (DynamoDB); otherwise the delete route does."""
        self.service = service
        self.swept = swept
        self.settings = service.settings
        self.registry = registry
        self.versions = versions
        self.metrics = service.metrics
        self.buckets = Buckets(service.settings.rate_limit)
        self._seen: dict[str, _Seen] = {}
        self._writing = asyncio.Lock()
        """Held by registry and version writes, and by a delete (see the module's docstring)."""
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_service(cls, service: CanvasService) -> Resources:
        """The registry and versions beside the service's store: in its table on DynamoDB,
        in memory beside a memory store."""
        store = service.store
        if isinstance(store, DynamoStore):
            registry = reg.DynamoRegistry(store.client, store.table)
            return cls(service, registry, ver.DynamoVersions(store.client, store.table), swept=True)
        return cls(service, reg.MemoryRegistry(), ver.MemoryVersions())

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="canvas-upkeep")

    async def stop(self, timeout: float = 3.0) -> None:
        """After the service's final flush: the registry learns what changed since its last write."""
        if self._task is not None:
            self._task.cancel()
        try:
            await asyncio.wait_for(self.upkeep(final=True), timeout)
        except Exception:
            log.exception("final registry write failed")
        close = getattr(self.registry, "close", None)
        if close is not None:
            await asyncio.to_thread(close)

    @property
    def period(self) -> float:
        intervals = [self.settings.registry_interval, self.settings.version_interval or math.inf, UPKEEP_MAX_PERIOD]
        return max(0.05, min(intervals) / 2)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            if not self.service.ready:
                continue
            try:
                await self.upkeep()
            except Exception:  # one failure must not stop it for good
                log.exception("upkeep failed")

    # --- upkeep: the registry and automatic versions -------------------------------------

    def _marks(self, project_id: str) -> tuple[float | None, int | None]:
        """What moves when this replica saves a project: the time of its last save that left
        nothing unsaved, and, while something is unsaved, the oldest unsaved change's mark
        (it moves as saves go through, even on a board never quiet at the end of a pass)."""
        dirty = self.service.dirty
        return dirty.last_save(project_id), dirty.saved_below(project_id) if dirty.holds(project_id) else None

    async def upkeep(self, final: bool = False) -> None:
        """One pass: registry entries for projects changed here (at most every
        ``CANVAS_REGISTRY_INTERVAL`` each; ``final`` ignores it), then automatic versions."""
        held = self.service.projects.projects
        for gone in self._seen.keys() - held.keys():
            del self._seen[gone]
        async with self._writing:  # computed under the lock: a delete just done is seen
            now = time.monotonic()
            due: list[reg.Entry] = []
            marks: dict[str, tuple[float | None, int | None]] = {}
            for pid, project in held.items():
                mark = self._marks(pid)
                seen = self._seen.setdefault(pid, _Seen())
                if mark == (None, None) or mark == seen.registered:
                    continue
                if not final and now - seen.written_at < self.settings.registry_interval:
                    continue
                changed = time.time() if mark[1] is not None or mark[0] is None else mark[0]
                due.append(reg.Entry(pid, len(project.views), round(changed, 3), project.gen))
                marks[pid] = mark
            if due:
                written = set(await asyncio.to_thread(self.registry.put, due))
                for entry in due:
                    if entry.project in written and entry.project in self._seen:
                        self._seen[entry.project].registered = marks[entry.project]
                        self._seen[entry.project].written_at = now
                self.metrics.registry_writes.labels("success").inc(len(written))
                self.metrics.registry_writes.labels("error").inc(len(due) - len(written))
        if self.settings.version_interval and not final:
            await self._auto_versions()

    async def _auto_versions(self) -> None:
        interval = self.settings.version_interval
        for pid in list(self._seen):
            project = self.service.projects.get(pid)
            seen = self._seen.get(pid)
            if project is None or seen is None:
                continue
            mark = self._marks(pid)
            if mark == (None, None) or mark == seen.versioned:
                continue
            if seen.version_at is None or time.time() - seen.version_at >= interval:
                # another replica may have taken one meanwhile: the table says when the newest is
                latest = await asyncio.to_thread(self.versions.latest, pid)
                seen.version_at = latest.created_at if latest is not None else -math.inf
            if time.time() - seen.version_at < interval:
                continue
            try:
                await self._snapshot(project, "", auto=True, kind="auto", by=None)
            except Exception:
                log.exception("automatic version failed", extra={"event": "version_error", "project": pid})
                continue
            seen.versioned, seen.version_at = mark, time.time()

    # --- versions -----------------------------------------------------------------------

    async def _snapshot(self, project: Project, name: str, auto: bool, kind: str, by: str | None) -> ver.Version:
        """A version of what clients see now: compressed, chunked and written in a thread,
        then the oldest beyond ``CANVAS_VERSION_RETENTION`` deleted."""
        jsons = project.snapshot_jsons()
        text = f"[{','.join(jsons)}]"
        now = time.time()
        version_id = ver.new_id(int(now * 1000))
        keep = self.settings.version_retention

        def write() -> tuple[ver.Version, int]:
            chunks, raw = ver.pack(text)
            version = ver.make(version_id, name, now, len(jsons), chunks, raw, auto, by)
            self.versions.save(project.id, version, chunks, project.gen)
            victims = ver.to_prune(self.versions.listing(project.id), keep)
            if victims:
                self.versions.delete(project.id, victims)
            return version, len(victims)

        async with self._writing:
            if self.service.projects.get(project.id) is not project:
                raise ApiError(409, "conflict", "the project left this replica (deleted?) while being read; try again")
            started = time.perf_counter()
            try:
                version, pruned = await asyncio.to_thread(write)
            except ver.Fenced:
                raise ApiError(409, "conflict", "the project was deleted while its version was being written") from None
        self.metrics.versions_created.labels(kind).inc()
        self.metrics.version_bytes.inc(version.bytes)
        self.metrics.versions_pruned.inc(pruned)
        log.info(
            "version written",
            extra={
                "event": "version",
                "project": project.id,
                "version": version.version,
                "kind": kind,
                "objects": version.objects,
                "chunks": version.chunks,
                "bytes": version.bytes,
                "pruned": pruned,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        seen = self._seen.setdefault(project.id, _Seen())
        seen.version_at = now
        return version

    async def create_version(self, who: Admitted, body: bytes) -> dict[str, Any]:
        """``POST /projects/{p}/versions`` (editor)."""
        self._require(who, Role.EDITOR)
        message = _body(body, allow_empty=True)
        name = message.get("name", "")
        if not isinstance(name, str) or len(name) > ver.MAX_NAME_CHARS:
            raise ApiError(400, "bad_message", f"'name' must be a string of at most {ver.MAX_NAME_CHARS} characters")
        project = await self.service.project(who.project)
        version = await self._snapshot(project, name, auto=False, kind="named", by=who.sub)
        return {"project": who.project, **version.to_json()}

    async def list_versions(self, who: Admitted) -> dict[str, Any]:
        """``GET /projects/{p}/versions`` (viewer), newest first."""
        versions = await asyncio.to_thread(self.versions.listing, who.project)
        return {"project": who.project, "versions": [v.to_json() for v in versions]}

    async def _read_version(self, project_id: str, version_id: str, parse: bool = True) -> tuple[ver.Version, Any]:
        """A version and its objects (parsed, or their JSON text); 404 when there is none."""
        if not ver.is_version_id(version_id):
            raise ApiError(404, "not_found", f"no version {version_id!r} of this project")

        def read() -> tuple[ver.Version, Any] | None:
            got = self.versions.get(project_id, version_id)
            if got is None:
                return None
            return got[0], ver.unpack(got[1]) if parse else ver.unpack_text(got[1])

        found = await asyncio.to_thread(read)
        if found is None:
            raise ApiError(404, "not_found", f"no version {version_id!r} of this project")
        return found

    async def get_version(self, who: Admitted, version_id: str) -> str:
        """``GET /projects/{p}/versions/{v}`` (viewer): the description and the objects, the
        stored JSON spliced in as it is (no parse and encode of every object)."""
        version, text = await self._read_version(who.project, version_id, parse=False)
        described = protocol.encode({"project": who.project, **version.to_json()})
        return f'{described[:-1]},"objects":{text}}}'

    async def restore(self, who: Admitted, version_id: str) -> dict[str, Any]:
        """``POST /projects/{p}/versions/{v}/restore`` (owner): one new change. The state it
        replaces is kept first as a version (``undo``), so undoing is another restore."""
        self._require(who, Role.OWNER)
        version, objects = await self._read_version(who.project, version_id)
        creates = await asyncio.to_thread(_as_creates, objects, self.settings.max_object_bytes)
        project = await self.service.project(who.project)
        undo = await self._snapshot(
            project, f"before restoring {version_id}", auto=True, kind="before_restore", by=who.sub
        )
        project = await self.service.project(who.project)
        done = self._replace(project, creates)
        return {
            "project": who.project,
            "version": version.version,
            "objects": len(creates),
            "created": done.created,
            "updated": done.updated,
            "deleted": done.deleted,
            "undo": undo.version,
        }

    # --- edits --------------------------------------------------------------------------

    async def ops(self, who: Admitted, body: bytes) -> dict[str, Any]:
        """``POST /projects/{p}/ops`` (editor): each op answered as the socket answers it, in order."""
        self._require(who, Role.EDITOR)
        ops = _body(body).get("ops")
        if not isinstance(ops, list):
            raise ApiError(400, "bad_message", "'ops' must be a JSON array of create, update and delete messages")
        if len(ops) > MAX_OPS:
            raise ApiError(413, "too_large", f"at most {MAX_OPS} ops in one request (this one has {len(ops)})")
        project = await self.service.project(who.project)
        caller = who.sub or who.address or "anonymous"
        results: list[dict[str, Any]] = []
        seq = 0
        for op in ops:
            allowed = self.buckets.take(caller)
            req = op.get("req") if isinstance(op, dict) and isinstance(op.get("req"), str) else None
            try:
                if not isinstance(op, dict):
                    raise ProtocolError("bad_message", "an op must be a JSON object")
                text = protocol.encode(op)
                if len(text.encode()) > self.settings.max_message_bytes:
                    raise ProtocolError("too_large", f"an op is at most {self.settings.max_message_bytes} bytes", req)
                command = protocol.parse(text, self.settings.max_object_bytes)
                if not allowed:
                    raise ProtocolError(
                        "rate_limited", f"more than {self.settings.rate_limit:g} messages per second", command.req
                    )
                if not isinstance(command, Create | Update | Delete):
                    raise ProtocolError("bad_message", "over HTTP an op is create, update or delete", command.req)
                try:
                    edit = self.service.projects.edit(project, command, fetched=False)
                except Unknown as unknown:  # a replay to a replica behind the table: read it first
                    await self.service.fetch(project, unknown.object_id)
                    edit = self.service.projects.edit(project, command)
            except ProtocolError as error:
                if not allowed and error.code != "rate_limited":  # as the socket: every op spends
                    error = ProtocolError(
                        "rate_limited", f"more than {self.settings.rate_limit:g} messages per second", req
                    )
                self.metrics.edit_errors.labels(error.code).inc()
                results.append(_error(error))
                continue
            self.service.fan_out(project, command, edit, None)
            seq += 1
            ack: dict[str, Any] = {"op": "ack", "seq": seq, "stamp": protocol.stamp_text(edit.stamp)}
            if command.req is not None:
                ack["req"] = command.req
            results.append(ack)
        return {"project": who.project, "results": results}

    async def import_objects(self, who: Admitted, body: bytes) -> dict[str, Any]:
        """``PUT /projects/{p}/objects`` (owner): the project holds exactly these objects."""
        self._require(who, Role.OWNER)
        objects = (await asyncio.to_thread(_body, body)).get("objects")  # a whole project: off the loop
        if not isinstance(objects, list):
            raise ApiError(400, "bad_message", "'objects' must be a JSON array of objects")
        limit = self.settings.max_objects_per_project
        if len(objects) > limit:
            raise ApiError(400, "limit_exceeded", f"a project holds at most {limit} objects (this has {len(objects)})")
        creates = await asyncio.to_thread(_as_creates, objects, self.settings.max_object_bytes)
        project = await self.service.project(who.project)
        done = self._replace(project, creates)
        return {
            "project": who.project,
            "objects": len(creates),
            "created": done.created,
            "updated": done.updated,
            "deleted": done.deleted,
        }

    def _replace(self, project: Project, creates: list[Create]) -> Replaced:
        """One change: applied, sent to every client of the project, relayed, marked dirty."""
        try:
            done = self.service.projects.replace(project, creates)
        except ProtocolError as error:
            raise _api_error(error) from None
        for conn in list(project.connections):
            if isinstance(conn, Connection) and len(conn.outbox) + len(done.messages) > conn.outbox.limit:
                conn.close(RELOAD, "the project changed too much at once: reconnect for its new state")
                continue
            for message in done.messages:
                conn.send(*message)
        if self.service.bridge is not None:
            for state in done.states:
                self.service.bridge.edited(project.id, state, project.gen)
        edits = self.metrics.edits
        for op, n in (("create", done.created), ("update", done.updated), ("delete", done.deleted)):
            if n:
                edits.labels(op).inc(n)
        return done

    async def delete(self, who: Admitted) -> None:
        """``DELETE /projects/{p}`` (owner): every replica drops it, its items leave the table."""
        self._require(who, Role.OWNER)
        async with self._writing:  # no registry or version write of it in flight here
            await self.service.delete_project(who.project)
            self._seen.pop(who.project, None)
            if not self.swept:  # stores beside the table (memory): what the sweep would remove

                def forget() -> None:
                    self.registry.forget(who.project)
                    self.versions.drop(who.project)

                await asyncio.to_thread(forget)

    # --- listing ------------------------------------------------------------------------

    async def list_projects(self, identity: Identity | None, args: Mapping[str, str]) -> dict[str, Any]:
        """``GET /projects``: the projects the token's grants cover, in id order, a page at a time."""
        prefix = args.get("prefix", "")
        if not PREFIX_RE.fullmatch(prefix):
            raise ApiError(400, "bad_request", f"'prefix' must match {PREFIX_RE.pattern}")
        cursor = args.get("cursor") or None
        if cursor is not None and not protocol.is_valid_id(cursor):
            raise ApiError(400, "bad_request", "'cursor' must be the 'next' of an earlier page")
        try:
            limit = int(args.get("limit", DEFAULT_LIMIT))
        except ValueError:
            limit = 0
        if not 1 <= limit <= reg.MAX_LIMIT:
            raise ApiError(400, "bad_request", f"'limit' must be a whole number from 1 to {reg.MAX_LIMIT}")
        reads = reg.plan(identity.grants if identity is not None else None, prefix)
        entries, following = await asyncio.to_thread(reg.page, self.registry, reads, cursor, limit)
        return {"projects": [e.to_json() for e in entries], "next": following}

    # --- roles --------------------------------------------------------------------------

    def _require(self, who: Admitted, role: Role) -> None:
        allowed = who.role.can_own if role is Role.OWNER else who.role.can_edit
        if not allowed:
            raise self.service.admission.refuse(
                403,
                "forbidden",
                f"this needs the {role.value} role on this project; the token gives {who.role.value}",
                who.project,
                who.address,
                None,
                who.sub,
            )


def _body(body: bytes, allow_empty: bool = False) -> dict[str, Any]:
    """A request's JSON object (numbers exact, as on the socket)."""
    if allow_empty and not body.strip():
        return {}
    try:
        message = protocol.loads(body, exact=True)
    except (ValueError, RecursionError, UnicodeDecodeError) as error:
        raise ApiError(400, "bad_json", f"not valid JSON: {error}") from None
    if not isinstance(message, dict):
        raise ApiError(400, "bad_message", "the body must be a JSON object")
    return message


def _as_creates(objects: list[Any], max_object_bytes: int) -> list[Create]:
    """Every object of an import or a version, checked (pure: runs in a thread)."""
    return [_as_create(i, obj, max_object_bytes) for i, obj in enumerate(objects)]


def _as_create(index: int, obj: Any, max_object_bytes: int) -> Create:
    """One object of an import or a version, checked as a socket's create is."""
    try:
        command = protocol.parse(protocol.encode({"op": "create", "object": obj}), max_object_bytes)
    except ProtocolError as error:
        raise _api_error(error, f"objects[{index}]: ") from None
    assert isinstance(command, Create)
    return command


def _error(error: ProtocolError) -> dict[str, Any]:
    body: dict[str, Any] = {"op": "error", "code": error.code, "message": error.message}
    if error.req is not None:
        body["req"] = error.req
    return body
