"""Who is here: each project's clients with their presence (cursor, selection, name).

Presence is never stored. Local clients' presence comes from their ``presence`` messages
and leaves with their socket; other replicas' clients arrive through the relay and leave
when their replica says so, when it stops sending heartbeats, or when nothing refreshed
them for ``ttl`` seconds (a lost leave message).

:class:`Roster` is the plain data (no I/O, no clock: callers pass ``now``).
:class:`PresenceHub` turns it into messages: it coalesces a fast client's updates (the
latest one goes out, at most every ``PRESENCE_FLUSH`` seconds), tells the project's other
clients, and hands the relay what other replicas should know. Both belong to the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import protocol
from .connection import Connection
from .metrics import Metrics
from .projects import Broadcast, Project

PRESENCE_FLUSH = 0.05
"""Presence updates go out at most this often per client (20 a second), the latest one only."""
PRESENCE_REFRESH = 5.0
"""Seconds between relaying every local client's presence (heals a lost update or leave)."""


@dataclass
class Entry:
    presence: dict[str, Any]
    replica: str
    """The replica the client is connected to."""
    sub: str | None
    seen: float
    """Monotonic time of the last update or refresh (remote entries expire by it)."""


class Roster:
    """Every project's present clients, local and remote."""

    def __init__(self, replica_id: str, ttl: float = 3 * PRESENCE_REFRESH) -> None:
        self.replica_id = replica_id
        self.ttl = ttl
        self._projects: dict[str, dict[str, Entry]] = {}

    def set(
        self,
        project: str,
        client: str,
        presence: dict[str, Any],
        now: float,
        replica: str | None = None,
        sub: str | None = None,
    ) -> bool:
        """A client's new presence (``replica`` None: one of ours); True when it changed."""
        clients = self._projects.setdefault(project, {})
        entry = clients.get(client)
        if entry is not None and entry.presence == presence:
            entry.seen = now
            return False
        clients[client] = Entry(presence, replica or self.replica_id, sub, now)
        return True

    def leave(self, project: str, client: str) -> bool:
        clients = self._projects.get(project)
        if clients is None or clients.pop(client, None) is None:
            return False
        if not clients:
            del self._projects[project]
        return True

    def refresh(
        self, project: str, replica: str, clients: dict[str, dict[str, Any]], now: float
    ) -> tuple[list[str], list[str]]:
        """A replica's full list of its clients on a project: (clients no longer listed, whose
        leave was lost; clients new or changed, whose update was lost)."""
        gone = [c for c, e in self._projects.get(project, {}).items() if e.replica == replica and c not in clients]
        for client in gone:
            self.leave(project, client)
        changed = [c for c, presence in clients.items() if self.set(project, c, presence, now, replica)]
        return gone, changed

    def entry(self, project: str, client: str) -> Entry | None:
        return self._projects.get(project, {}).get(client)

    def forget(self, project: str) -> None:
        """An evicted project: nobody here to tell."""
        self._projects.pop(project, None)

    def replica_gone(self, replica: str) -> list[tuple[str, str]]:
        """Every client of a replica that stopped answering: (project, client) to announce as left."""
        gone = [(p, c) for p, clients in self._projects.items() for c, e in clients.items() if e.replica == replica]
        for project, client in gone:
            self.leave(project, client)
        return gone

    def expire(self, now: float) -> list[tuple[str, str]]:
        """Remote clients nothing refreshed for ``ttl`` seconds."""
        old = [
            (p, c)
            for p, clients in self._projects.items()
            for c, e in clients.items()
            if e.replica != self.replica_id and now - e.seen > self.ttl
        ]
        for project, client in old:
            self.leave(project, client)
        return old

    def local(self, project: str) -> dict[str, dict[str, Any]]:
        """This replica's clients on a project and their presence (what a refresh carries)."""
        return {c: e.presence for c, e in self._projects.get(project, {}).items() if e.replica == self.replica_id}

    def projects(self) -> list[str]:
        return list(self._projects)

    def snapshot(self, project: str, exclude: str | None = None) -> list[dict[str, Any]]:
        """The presences a connecting client is shown, sorted by client id."""
        return [view(client, e) for client, e in sorted(self._projects.get(project, {}).items()) if client != exclude]


def view(client: str, entry: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"client": client, "state": entry.presence}
    if entry.sub is not None:
        out["sub"] = entry.sub
    return out


class Publisher(Protocol):
    """What the hub asks of the relay (``relay.Relay`` is one)."""

    def publish_presence(
        self, project: str, client: str, presence: dict[str, Any] | None, sub: str | None = None
    ) -> None: ...

    def publish_presences(self, project: str, clients: dict[str, dict[str, Any]]) -> None: ...


class PresenceHub:
    """Presence messages in and out: local clients, other replicas' clients, the relay."""

    def __init__(
        self,
        roster: Roster,
        project: Callable[[str], Project | None],
        metrics: Metrics,
        relay: Publisher | None = None,
    ) -> None:
        self.roster = roster
        self._project = project  # a held project by id, None when not held
        self.metrics = metrics
        self.relay = relay
        self._pending: dict[tuple[str, str], Connection] = {}
        """Local clients whose presence changed since the last flush."""

    # --- local clients ------------------------------------------------------------------

    def set(self, project: Project, conn: Connection, presence: dict[str, Any], now: float) -> None:
        """Keep the latest presence; it goes out with the next flush."""
        if self.roster.set(project.id, conn.client_id, presence, now, sub=conn.sub):
            self._pending[(project.id, conn.client_id)] = conn

    def left(self, project: Project, conn: Connection) -> None:
        """A connection closed: its presence leaves, here and on every replica."""
        self._pending.pop((project.id, conn.client_id), None)
        if self.roster.leave(project.id, conn.client_id):
            project.broadcast(_leave(conn.client_id))
            if self.relay is not None:
                self.relay.publish_presence(project.id, conn.client_id, None)

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for (pid, client), conn in pending.items():
            project, entry = self._project(pid), self.roster.entry(pid, client)
            if project is None or entry is None:
                continue
            project.broadcast(_update(client, entry), exclude=conn)
            self.metrics.presence_updates.inc()
            if self.relay is not None:
                self.relay.publish_presence(pid, client, entry.presence, entry.sub)

    def refresh(self, now: float) -> None:
        """Forget remote clients nothing refreshed; relay every local client's presence."""
        for pid, client in self.roster.expire(now):
            self._announce_leave(pid, client)
        if self.relay is not None:
            for pid in self.roster.projects():
                local = self.roster.local(pid)
                if local and self._project(pid) is not None:
                    self.relay.publish_presences(pid, local)

    def snapshot(self, project_id: str) -> list[dict[str, Any]]:
        return self.roster.snapshot(project_id)

    def forget(self, project_id: str) -> None:
        self.roster.forget(project_id)

    # --- other replicas' clients (from the relay) ---------------------------------------

    def relayed(
        self, project_id: str, replica: str, client: str, presence: dict[str, Any] | None, sub: str | None, now: float
    ) -> None:
        """One remote client's presence (None: it left)."""
        project = self._project(project_id)
        if project is None:
            return
        if presence is None:
            gone = [client] if self.roster.leave(project_id, client) else []
            changed = []
        else:
            gone = []
            changed = [client] if self.roster.set(project_id, client, presence, now, replica, sub) else []
        self._tell(project, gone, changed)

    def relayed_all(self, project_id: str, replica: str, clients: dict[str, dict[str, Any]], now: float) -> None:
        """Every client a replica has on a project: heals lost updates and leaves."""
        project = self._project(project_id)
        if project is None:
            return
        gone, changed = self.roster.refresh(project_id, replica, clients, now)
        self._tell(project, gone, changed)

    def replica_gone(self, replica: str) -> None:
        for pid, client in self.roster.replica_gone(replica):
            self._announce_leave(pid, client)

    def _tell(self, project: Project, gone: list[str], changed: list[str]) -> None:
        for client in gone:
            project.broadcast(_leave(client))
        for client in changed:
            entry = self.roster.entry(project.id, client)
            if entry is not None:
                project.broadcast(_update(client, entry))
                self.metrics.presence_updates.inc()

    def _announce_leave(self, pid: str, client: str) -> None:
        project = self._project(pid)
        if project is not None:
            project.broadcast(_leave(client))


def _update(client: str, entry: Entry) -> Broadcast:
    """A client's newest presence replaces one still waiting in an outbox (cursors move fast)."""
    return Broadcast(protocol.presence(client, protocol.encode(entry.presence), entry.sub), ("presence", client), True)


def _leave(client: str) -> Broadcast:
    return Broadcast(protocol.presence_leave(client), ("presence", client), False)
