"""Saved acknowledgements: telling a ``canvas-sync.v3`` client which of its changes are in
the table, so it can drop them, and replay the rest after a replica dies.

Each accepted change of a socket takes a ``seq`` (1, 2, 3, ...) and carries the version
its mark took in the dirty set. The dirty set answers one question per project: below
which version is every change in the table (:meth:`DirtySet.saved_below`). After each save
pass the loop asks it once per project and tells each socket the highest ``seq`` whose
version is below: no record per object, no extra write.

A socket's ledger keeps at most :data:`MAX_WAITING` (seq, version) pairs however many
changes wait (DynamoDB down, a long drag): past that, the newest pair is replaced by the
next, so ``saved`` then moves in coarser steps (the changes in between are saved when the
newer one is) but is never early.

``Ledger`` is pure; ``SavedAcks`` is the loop's edge (the auto-save thread only wakes it).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from . import protocol

if TYPE_CHECKING:
    from .connection import Connection
    from .dirty import DirtySet

MAX_WAITING = 64
"""(seq, version) pairs a socket's ledger holds at most: 1 KiB or so, whatever waits."""


class Ledger:
    """One socket's changes in order: which ``seq`` each took, and which are known saved."""

    __slots__ = ("_waiting", "saved", "seq", "tracked")

    def __init__(self, tracked: bool) -> None:
        self.seq = 0
        """The last ``seq`` handed out."""
        self.saved = 0
        """The last ``seq`` the socket was told is saved."""
        self.tracked = tracked
        """The socket speaks v3: its changes wait for ``saved``. Otherwise only ``seq`` counts."""
        self._waiting: deque[tuple[int, int]] = deque()

    def record(self, version: int) -> int:
        """An accepted change, marked with ``version``; its ``seq``."""
        self.seq += 1
        if self.tracked:
            if len(self._waiting) >= MAX_WAITING:
                self._waiting.pop()  # the newer pair covers it: saved later, never early
            self._waiting.append((self.seq, version))
        return self.seq

    def advance(self, saved_below: int) -> int | None:
        """The new ``saved`` seq once every version below ``saved_below`` is in the table;
        None when it did not move."""
        moved = None
        while self._waiting and self._waiting[0][1] < saved_below:
            moved = self._waiting.popleft()[0]
        if moved is not None:
            self.saved = moved
        return moved

    @property
    def waiting(self) -> bool:
        return bool(self._waiting)


class SavedAcks:
    """After each save pass, sends ``saved`` to every v3 socket whose changes it covered."""

    def __init__(
        self,
        dirty: DirtySet,
        connections: Callable[[], Iterable[Connection]],
        on_sent: Callable[[], None] = lambda: None,
    ) -> None:
        self.dirty = dirty
        self.connections = connections
        self.on_sent = on_sent
        self.loop: asyncio.AbstractEventLoop | None = None
        """The service's loop, set when it starts: where :meth:`send` runs."""

    def after_pass(self) -> None:
        """Called by the auto-save thread: the loop does the rest."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self.send)
            except RuntimeError:  # the loop closed meanwhile: nobody to tell
                pass

    def send(self) -> None:
        """On the loop: one watermark per project, one message per socket that moved."""
        below: dict[str, int] = {}
        for conn in self.connections():
            if not conn.ledger.waiting:
                continue
            project = conn.project.id
            if project not in below:
                below[project] = self.dirty.saved_below(project)
            seq = conn.ledger.advance(below[project])
            if seq is not None:
                conn.send(protocol.saved(seq))
                self.on_sent()
