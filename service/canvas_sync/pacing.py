"""How much of the interpreter the save threads may take: a budget of GIL time.

The event loop is I/O-bound: uvloop lets go of the GIL around every poll and takes it back
for every callback. When a save thread holds it then (encoding items, botocore building,
signing and parsing a BatchWriteItem: about 1 to 1.5 ms of Python per batch of 25), the
loop waits until that thread's next system call, or for ``sys.getswitchinterval()``
(5 ms). Four save threads that have batches ready take the GIL at many of the loop's
callbacks, one after another, so one iteration of a busy loop can wait for several.

:class:`GilBudget` spaces the save threads' slices of Python work so that together they
hold the GIL at most ``share`` of the time (a quarter by default): each slice reserves a
start time after the ones before it, and what it cost (thread CPU time, measured) sets
when the next may start. Between slices the threads wait in ``time.sleep`` (which
releases the GIL), so the loop finds it free nearly every time it asks. Batches still
overlap their network waits, as before. Measured (``loadtest/bench/stall.py``: 128
clients on one board, 10,000 objects saved every pass, 2 cores): the loop's lag p99
during passes went from 5.6 to 3.6 ms with the replica on a core of its own, and from 20
to 10.5 ms sharing both cores with DynamoDB Local; a pass saved 5,900 items a second
instead of 6,400.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class GilBudget:
    """Paces slices of GIL-bound work from any number of threads to ``share`` of the time.

    ``share`` 1 (or more) turns pacing off. ``burst``: seconds of work allowed back to back
    after a quiet spell. Thread-safe; the lock is held for arithmetic only.
    """

    def __init__(
        self,
        share: float,
        burst: float = 0.002,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        cpu: Callable[[], float] = time.thread_time,
    ) -> None:
        if share <= 0:
            raise ValueError("share must be positive")
        self.share = share
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._cpu = cpu
        self._lock = threading.Lock()
        self._free_at = 0.0
        """When the budget has room again (work reserved or done so far, spread at ``share``)."""
        self._estimate = 0.001
        """What a slice costs, lately: what a new reservation holds until it is charged."""
        self.waited = 0.0
        """Seconds slices were held back in all (for tests and logs)."""

    @property
    def paced(self) -> bool:
        return self.share < 1

    def reserve(self) -> float:
        """Reserve a slice; the seconds to wait before it may start (0: at once)."""
        with self._lock:
            now = self._clock()
            start = max(now, self._free_at - self.burst / self.share)  # at most ``burst`` of work ahead
            self._free_at = max(self._free_at, now) + self._estimate / self.share  # no credit for idle time
            return start - now

    def charge(self, seconds: float) -> None:
        """A slice reserved with :meth:`reserve` cost ``seconds``: correct the reservation."""
        with self._lock:
            self._free_at += (seconds - self._estimate) / self.share
            self._estimate = 0.8 * self._estimate + 0.2 * seconds

    @contextmanager
    def slice(self) -> Iterator[None]:
        """Wait for room in the budget, run the block, charge its thread CPU time."""
        if not self.paced:
            yield
            return
        delay = self.reserve()
        if delay > 0:
            self.waited += delay
            self._sleep(delay)
        started = self._cpu()
        try:
            yield
        finally:
            self.charge(self._cpu() - started)
