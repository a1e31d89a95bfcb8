"""Head announcements, the same for every store: which projects a replica still owes a
``#head`` update, and the tokens it writes there.

After a save pass has written some of a project's items, the replica sets its own token
in the project's head, new for every pass: ``<lowest saved_at not announced before>.<seq>``.
A reader that sees a new token knows the items are there (the head is written after them)
and where in the change feed to find them, however late the batch landed. An announcement
that fails stays owed, still naming the lowest ``saved_at``, and is retried with the next
pass. A store only says how to write one head (``touch``).

The head is written on condition that it is still of the generation of the copy that
saved: a project deleted meanwhile refuses it, and the project is reported *fenced*
instead of owed (its items are invisible; the writer drops its copy and sweeps them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator

Touch = Callable[[str, str, int], bool | None]
"""Write one project's head with a token, if the head is of that generation: True when
written, False when it failed (it stays owed), None when the head is of another
generation (fenced: never retried)."""


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
        self._lock = threading.Lock()  # guards _owed, _gens, _fenced and _seq
        self._owed: dict[str, int] = {}
        """Project -> lowest saved_at written and not yet announced."""
        self._gens: dict[str, int] = {}
        """Project -> generation of the copy that wrote what is owed (the newest wins)."""
        self._fenced: dict[str, int] = {}
        """Project -> generation its head refused since the last :meth:`take_fenced`."""
        self._seq = 0

    def owe(self, projects: Iterable[str], saved_at_ms: int, gen: int = 0) -> None:
        """These projects' items were written at ``saved_at_ms`` by copies of ``gen``: announce them."""
        with self._lock:
            for project in projects:
                self._owed[project] = min(saved_at_ms, self._owed.get(project, saved_at_ms))
                self._gens[project] = max(gen, self._gens.get(project, gen))

    def take_fenced(self) -> dict[str, int]:
        with self._lock:
            fenced, self._fenced = self._fenced, {}
            return fenced

    @property
    def owed(self) -> bool:
        with self._lock:
            return bool(self._owed)

    def announce(
        self,
        touch: Touch,
        run: Callable[
            [Callable[[tuple[str, int, int]], bool | None], list[tuple[str, int, int]]], Iterator[bool | None]
        ] = map,
    ) -> int:
        """Write every owed head (``run`` may spread the touches over a pool); how many
        projects were announced. Failures stay owed."""
        with self._lock:
            todo, self._owed = self._owed, {}
            gens, self._gens = self._gens, {}
            self._seq += 1
            seq = self._seq
        jobs = sorted((project, since, gens.get(project, 0)) for project, since in todo.items())
        done = 0
        outcomes = run(lambda job: touch(job[0], f"{job[1]}.{seq}", job[2]), jobs)
        for (project, since, gen), ok in zip(jobs, outcomes, strict=True):
            if ok:
                done += 1
            elif ok is None:
                with self._lock:
                    self._fenced[project] = max(gen, self._fenced.get(project, gen))
            else:
                self.owe([project], since, gen)
        return done
