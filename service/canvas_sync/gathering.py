"""One project's broadcasts, kept once for the sockets that gather (owned by the loop).

On a big board every edit went into every socket's outbox, one append per socket: N
clients editing cost N² appends per interval, half the server's CPU at 192 clients on one
core. A socket whose frames gather (``Connection.gathers``) joins its project's gathering
instead: a broadcast is appended here once, and when the interval is over (or an answer
cuts a member's hold short) each member gets what came since it last read, less its own
changes and with what was sent to it alone (its acks) in its place, as one frame. Members
with nothing of their own that read from the same place share one text, so the frame is
also encoded once (``DirectSocket.write``).

A member leaves, what it has not read going to its outbox in order, when it cannot take a
frame at once (its writer then waits for the client: the outbox limit and 1013 hold as
before), when too much waits for it here, and when its frame no longer gathers. What a
member reads is what its outbox would have sent, in the same order.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Hashable
from typing import Any, NamedTuple, Protocol

from .outbox import batch

KEPT = 64
"""Messages sent to one member alone that wait here at most; past that it leaves (its
outbox then takes them, newer states in older ones' places as usual)."""


class Unread(NamedTuple):
    """What a member had not read, in order: the texts and their (key, latest)."""

    texts: list[str]
    keys: list[tuple[Hashable | None, bool]]


class Member(Protocol):
    """A socket that can read from a gathering (``Connection``)."""

    @property
    def held_until(self) -> float:
        """When its hold is over: the gathering reads no later than its members' earliest."""
        ...

    def deliver(self, text: str, messages: int) -> bool:
        """Write this frame of ``messages`` now, if the socket can take it at once."""
        ...

    def gathers(self, messages: int) -> bool: ...

    def left(self, unread: Unread) -> None:
        """It is out of the gathering; ``unread`` goes to its outbox, ahead of anything else."""
        ...


Mark = tuple[int, str | None, Hashable | None]
"""Where a member's stream differs from everyone's: (position, None, None) skips the
broadcast there (its own change); (position, text, key) puts a message sent to it alone
before it."""


class Gathering:
    """The broadcasts a project's gathering sockets have still to read, once for all."""

    def __init__(self, direct: set[Any]) -> None:
        self.direct = direct
        """The project's other connections, which get each broadcast one by one: a member
        is taken out of it while it reads here, and put back when it leaves."""
        self.members: dict[Member, int] = {}
        """Each member and where it reads from (a position in the stream of broadcasts)."""
        self._texts: list[str] = []  # the broadcasts from position _base on
        self._keys: list[tuple[Hashable | None, bool]] = []  # and their keys
        self._base = 0
        self._marks: dict[Member, list[Mark]] = {}  # in order, at or after the member's position
        self._frames: dict[int, str] = {}  # from a position to the end, as one frame (until the next put)
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = math.inf  # the earliest hold among the members: the next read is then

    @property
    def end(self) -> int:
        return self._base + len(self._texts)

    def join(self, member: Member) -> None:
        """``member`` just sent a frame that gathers: it reads here from now on."""
        self.members[member] = self.end
        self.direct.discard(member)
        self._deadline = min(self._deadline, member.held_until)

    def leave(self, member: Member) -> Unread:
        """``member`` gets its messages one by one again; returns what it had not read."""
        unread = self._unread(self.members.pop(member), self._marks.pop(member, None))
        self.direct.add(member)
        if not self.members:
            self._trim()
        return unread

    def drop(self, conn: object) -> None:
        """The socket is gone (whether or not it was a member)."""
        if conn in self.members:
            del self.members[conn]
            self._marks.pop(conn, None)
            if not self.members:
                self._trim()

    def put(self, text: str, key: Hashable | None = None, latest: bool = False, exclude: object = None) -> None:
        """A broadcast for every member but ``exclude`` (the sender, when it is one);
        ``key`` and ``latest`` as in ``Outbox.put``, for a member that leaves with much unread."""
        if exclude is not None and exclude in self.members:
            self._marks.setdefault(exclude, []).append((self.end, None, None))
        self._texts.append(text)
        self._keys.append((key, latest))
        if self._frames:
            self._frames.clear()
        if self._timer is None:
            loop = asyncio.get_running_loop()
            if self._deadline == math.inf:
                self._deadline = loop.time()
            self._timer = loop.call_at(self._deadline, self._read_all)

    def keep(self, member: Member, text: str, key: Hashable | None) -> bool:
        """A message for ``member`` alone, in its place among the broadcasts; False when
        too many wait already (then nothing was kept: it must leave)."""
        marks = self._marks.setdefault(member, [])
        if len(marks) >= KEPT:
            return False
        marks.append((self.end, text, key))
        return True

    def read(self, member: Member) -> None:
        """``member`` gets what waits for it now (its hold was cut short: an answer)."""
        self._read(member, self.members[member], self.end)

    def _read_all(self) -> None:
        """The earliest hold is over: every member gets what came for it, as one frame."""
        self._timer = None
        self._deadline = math.inf
        end = self.end
        for member, cursor in list(self.members.items()):
            if member in self.members:  # not closed meanwhile by another's read (on_slow)
                self._read(member, cursor, end)
        self._trim()

    def _read(self, member: Member, cursor: int, end: int) -> None:
        marks = self._marks.pop(member, None)
        if marks:
            unread: Unread | None = self._unread(cursor, marks)
            assert unread is not None
            text, messages = batch(unread.texts) if unread.texts else "", len(unread.texts)
        else:
            unread, messages = None, end - cursor
            text = (self._frames.get(cursor) or self._frame(cursor)) if messages else ""
        if not messages:  # nothing new (or only its own changes): it waits on
            self.members[member] = end
            self._deadline = min(self._deadline, member.held_until)
        elif not member.deliver(text, messages):  # it cannot take the frame now: its writer sends it
            del self.members[member]
            self.direct.add(member)
            member.left(unread or self._unread(cursor, None))
        elif member.gathers(messages):
            self.members[member] = end
            self._deadline = min(self._deadline, member.held_until)
        else:  # the board went quiet: one by one again
            del self.members[member]
            self.direct.add(member)
            member.left(Unread([], []))

    def _frame(self, cursor: int) -> str:
        text = self._frames[cursor] = batch(self._texts[cursor - self._base :])
        return text

    def _unread(self, cursor: int, marks: list[Mark] | None) -> Unread:
        """From ``cursor`` to the end, with the member's marks applied."""
        start = cursor - self._base
        if not marks:
            return Unread(self._texts[start:], self._keys[start:])
        texts: list[str] = []
        keys: list[tuple[Hashable | None, bool]] = []
        for position, text, key in marks:
            at = position - self._base
            texts += self._texts[start:at]
            keys += self._keys[start:at]
            if text is None:  # its own change: skipped
                start = at + 1
            else:
                texts.append(text)
                keys.append((key, False))
                start = at
        texts += self._texts[start:]
        keys += self._keys[start:]
        return Unread(texts, keys)

    def _trim(self) -> None:
        """Forget what every member has read (once an interval: it looks at them all)."""
        low = min(self.members.values(), default=self.end)
        if low > self._base:
            del self._texts[: low - self._base]
            del self._keys[: low - self._base]
            self._base = low
            self._frames.clear()
