"""Who is here: each project's clients with their ephemeral state (cursor, selection, name).

Presence is never stored. Local clients' states come from their ``presence`` messages and
leave with their socket; other replicas' clients arrive through the relay and leave when
their replica says so, when it stops sending heartbeats, or when nothing refreshed them
for ``ttl`` seconds (a lost leave message). Plain data, no I/O: the service sends what
the methods return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_STATE_BYTES = 1024
"""A presence state's JSON may not be larger than this."""


@dataclass
class Entry:
    state: dict[str, Any]
    replica: str
    """The replica the client is connected to."""
    sub: str | None
    seen: float
    """Monotonic time of the last update or refresh (remote entries expire by it)."""


class Presence:
    """Every project's present clients, local and remote. Owned by the event loop."""

    def __init__(self, replica_id: str, ttl: float = 15.0) -> None:
        self.replica_id = replica_id
        self.ttl = ttl
        self._projects: dict[str, dict[str, Entry]] = {}

    def set(
        self,
        project: str,
        client: str,
        state: dict[str, Any],
        now: float,
        replica: str | None = None,
        sub: str | None = None,
    ) -> bool:
        """A client's new state (``replica`` None: one of ours); True when it changed."""
        clients = self._projects.setdefault(project, {})
        entry = clients.get(client)
        if entry is not None and entry.state == state:
            entry.seen = now
            return False
        clients[client] = Entry(state, replica or self.replica_id, sub, now)
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
        changed = [c for c, state in clients.items() if self.set(project, c, state, now, replica)]
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
        """This replica's clients on a project and their states (what a refresh carries)."""
        return {c: e.state for c, e in self._projects.get(project, {}).items() if e.replica == self.replica_id}

    def projects(self) -> list[str]:
        return list(self._projects)

    def snapshot(self, project: str, exclude: str | None = None) -> list[dict[str, Any]]:
        """The presences a connecting client is shown, sorted by client id."""
        return [view(client, e) for client, e in sorted(self._projects.get(project, {}).items()) if client != exclude]


def view(client: str, entry: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"client": client, "state": entry.state}
    if entry.sub is not None:
        out["sub"] = entry.sub
    return out
