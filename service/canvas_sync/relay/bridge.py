"""The relay's handler: what other replicas relay reaches this replica's memory and
clients, and what only this memory holds goes out to a replica that says hello.

Between subscribing to a project and installing its load, relayed states are kept (at
most ``EARLY_LIMIT``; beyond it the project is caught up from the table instead), so an
edit relayed while the load reads is never lost. States relayed from a copy of another
generation than the one held (a deleted project's) are not merged; a delete relayed by
the replica that made it drops the copy at once. Everything here runs on the loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

from ..dirty import DirtySet
from ..model import ObjectState
from ..presence import PresenceHub
from ..projects import Project, Projects
from .core import Kind, Message
from .worker import Relay

HELLO_EVERY = 1.0
"""Seconds between two answers to hellos on one project (gaps can come in bursts)."""
EARLY_LIMIT = 10_000
"""Relayed states kept for a project while it loads; beyond it, catch up from the table."""


class Puller(Protocol):
    """What the bridge asks of the table puller (``pull.Puller`` is one)."""

    def catch_up(self, project: str) -> None: ...


class RelayBridge:
    def __init__(
        self, relay: Relay, projects: Projects, dirty: DirtySet, presence: PresenceHub, puller: Puller
    ) -> None:
        self.relay = relay
        self.projects = projects
        self.dirty = dirty
        self.presence = presence
        self.puller = puller
        self.on_project_deleted: Callable[[str, int], None] = lambda project, gen: None
        """Drops a held copy older than the generation given (set by the service)."""
        self._early: dict[str, list[tuple[ObjectState, int]]] = {}
        """Projects loading -> states relayed meanwhile, with the generation they come from."""
        self._hellos: set[str] = set()
        """Projects whose hello waits for an answer (given by the next tick)."""
        self._hello_answered: dict[str, float] = {}

    # --- loads and evictions (called by the service) --------------------------------------

    async def before_load(self, project_id: str) -> None:
        """Subscribe before reading, and keep what is relayed meanwhile for after the load."""
        self._early[project_id] = []
        await self.relay.subscribe(project_id)

    def loaded(self, project: Project) -> None:
        early = self._early.pop(project.id, None)
        if early:
            self._merge(project, [state for state, gen in early if gen == project.gen])

    async def load_failed(self, project_id: str) -> None:
        self._early.pop(project_id, None)
        await self.relay.unsubscribe(project_id)

    async def evicted(self, project_id: str) -> None:
        self._hello_answered.pop(project_id, None)
        await self.relay.unsubscribe(project_id)

    async def dropped(self, project_id: str) -> None:
        """A deleted project's copy was let go: unsubscribe, unless it is being loaded
        again already (a client that came back at once)."""
        if self.projects.get(project_id) is None and project_id not in self._early:
            await self.evicted(project_id)

    def edited(self, project_id: str, state: ObjectState, gen: int = 0) -> None:
        """A client's edit was applied here (to a copy of ``gen``): other replicas' clients
        see it in milliseconds."""
        self.relay.publish_object(project_id, state, gen)

    def deleted(self, project_id: str, gen: int) -> None:
        """The project was deleted here: tell every holder."""
        self.relay.publish_deleted(project_id, gen)

    # --- the relay's handler ---------------------------------------------------------------

    def held(self) -> Iterable[str]:
        return list(self.projects.projects)

    def on_object(self, project_id: str, state: ObjectState, gen: int = 0) -> None:
        project = self.projects.get(project_id)
        if project is not None:
            if gen == project.gen:
                self._merge(project, [state])
            elif gen > project.gen:  # a copy made after a delete this replica has not heard of
                self.on_project_deleted(project_id, gen)
            return
        early = self._early.get(project_id)
        if early is None:
            return
        if len(early) >= EARLY_LIMIT:
            early.clear()
            self.puller.catch_up(project_id)
        early.append((state, gen))

    def on_deleted(self, project_id: str, gen: int) -> None:
        self.on_project_deleted(project_id, gen)

    def on_presence(self, message: Message) -> None:
        now = time.monotonic()
        if message.kind == Kind.PRESENCE_ALL:
            self.presence.relayed_all(message.project, message.replica, message.presence or {}, now)
        else:
            self.presence.relayed(message.project, message.replica, message.client, message.presence, message.sub, now)

    def on_hello(self, project_id: str) -> None:
        """Another replica joined or lost messages: it gets what only this memory holds, at
        the next tick, and at most once a second per project (a lossy link must not turn
        every gap into a resend of everything)."""
        self._hellos.add(project_id)

    def on_catch_up(self, project_id: str) -> None:
        self.puller.catch_up(project_id)

    def on_replica_gone(self, replica: str) -> None:
        self.presence.replica_gone(replica)

    def tick(self, now: float) -> None:
        """Answer the hellos that waited."""
        for project_id in list(self._hellos):
            if now - self._hello_answered.get(project_id, float("-inf")) < HELLO_EVERY:
                continue
            self._hellos.discard(project_id)
            self._hello_answered[project_id] = now
            project = self.projects.get(project_id)
            if project is None:
                continue
            for state in self.dirty.unsaved_states(project_id):
                self.relay.publish_object(project_id, state, project.gen)
            local = self.presence.roster.local(project_id)
            if local:
                self.relay.publish_presences(project_id, local)

    def _merge(self, project: Project, states: list[ObjectState]) -> None:
        for message in self.projects.merge(project, states, relayed=True).messages:
            project.broadcast(message)
