"""What one socket has still to receive, in order, without I/O.

A reader that falls behind on a busy board would otherwise get every intermediate state
of every object it missed. An ``upsert`` carries the whole object, so a newer one makes
an older one still waiting useless: the newer one takes its place in the line, and the
client ends in the same state after fewer, newer messages. The same holds for a client's
presence. A message that ends such a line (a ``delete``, a ``presence_leave``) is kept
in order: nothing sent after it may take a place before it.
"""

from __future__ import annotations

from collections.abc import Hashable


class Outbox:
    """Messages waiting for one socket, oldest first; at most ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._texts: list[str] = []
        self._latest: dict[Hashable, int] = {}  # key -> where its newest state waits in _texts
        self.replaced = 0
        """Messages dropped because a newer one of the same key took their place."""

    def __len__(self) -> int:
        return len(self._texts)

    def put(self, text: str, key: Hashable | None = None, latest: bool = False) -> bool:
        """Queue ``text``; False when the line is full (nothing queued then).

        ``latest``: ``text`` is the whole newest state of ``key``, and replaces the one of
        that key still waiting. Without it, a ``key`` marks the end of that key's line
        (a delete): later states of it queue behind this message.
        """
        if key is not None:
            if latest:
                at = self._latest.get(key)
                if at is not None:
                    self._texts[at] = text
                    self.replaced += 1
                    return True
            else:
                self._latest.pop(key, None)
        if len(self._texts) >= self.limit:
            return False
        if latest:
            self._latest[key] = len(self._texts)
        self._texts.append(text)
        return True

    def extend(self, texts: list[str]) -> bool:
        """Queue ``texts`` behind what waits, none of them replaceable (what a socket had
        not read of its project's gathering); False when the line would be too long."""
        if len(self._texts) + len(texts) > self.limit:
            return False
        self._texts.extend(texts)
        return True

    def peek(self) -> list[str]:
        """Everything waiting, in order, left waiting (not a copy: read it, do not keep it)."""
        return self._texts

    def take(self) -> list[str]:
        """Everything waiting, in order; the line is empty afterwards."""
        texts, self._texts = self._texts, []
        if self._latest:
            self._latest = {}
        return texts

    def clear(self) -> None:
        self.take()


def batch(texts: list[str]) -> str:
    """Several server messages in one frame (subprotocol ``canvas-sync.v2``): a JSON array."""
    return texts[0] if len(texts) == 1 else f"[{','.join(texts)}]"
