"""Head announcements, the same for every store: which projects a replica still owes a
``#head`` update, and the tokens it writes there.

After a save pass has written some of a project's items, the replica sets its own token
in the project's head, new for every pass: ``<lowest saved_at not announced before>.<seq>``.
A reader that sees a new token knows the items are there (the head is written after them)
and where in the change feed to find them, however late the batch landed. An announcement
that fails stays owed, still naming the lowest ``saved_at``, and is retried with the next
pass. A store only says how to write one head (``touch``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator

Touch = Callable[[str, str], bool]
"""Write one project's head with a token; False when it failed (it stays owed)."""


def token_ms(token: str) -> int:
    """The lowest ``saved_at`` a head token announces (0 if it cannot be read)."""
    try:
        return int(token.split(".", 1)[0])
    except ValueError:
        return 0


class Announcements:
    """Projects whose written items wait for their head update. Used by the save thread
    and its pool."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _owed and _seq
        self._owed: dict[str, int] = {}
        """Project -> lowest saved_at written and not yet announced."""
        self._seq = 0

    def owe(self, projects: Iterable[str], saved_at_ms: int) -> None:
        """These projects' items were written at ``saved_at_ms``: announce them."""
        with self._lock:
            for project in projects:
                self._owed[project] = min(saved_at_ms, self._owed.get(project, saved_at_ms))

    @property
    def owed(self) -> bool:
        with self._lock:
            return bool(self._owed)

    def announce(
        self,
        touch: Touch,
        run: Callable[[Callable[[tuple[str, int]], bool], list[tuple[str, int]]], Iterator[bool]] = map,
    ) -> int:
        """Write every owed head (``run`` may spread the touches over a pool); how many
        projects were announced. Failures stay owed."""
        with self._lock:
            todo, self._owed = self._owed, {}
            self._seq += 1
            seq = self._seq
        jobs = sorted(todo.items())
        done = 0
        for (project, since), ok in zip(jobs, run(lambda job: touch(job[0], f"{job[1]}.{seq}"), jobs), strict=True):
            if ok:
                done += 1
            else:
                self.owe([project], since)
        return done
