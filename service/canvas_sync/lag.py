"""How late the event loop runs: what decides whether sockets gather their messages.

Gathering (a socket that just sent a frame of several messages waits
``CANVAS_SEND_INTERVAL`` so that what arrives meanwhile goes out in one frame) pays when
the loop is behind: every frame it saves is CPU for everybody else, and a newer state of an
object replaces an older one still waiting. On a quiet pod it pays nothing and costs
latency: every second message of a quiet board waited 20 ms. So sockets gather only while
the loop's lag is at least ``CANVAS_GATHER_LAG``: a Nagle-like rule driven by the load of
the whole pod rather than by one socket. The lag is how late the service's presence tick
(every 50 ms) wakes: a ticker of its own, 200 times a second, cost a pod holding 32 idle
projects three times its idle CPU.
"""

from __future__ import annotations

DECAY = 0.7
"""Per tick, how much of the last lag is remembered: a spike fades within half a second."""


class LoopLag:
    """A periodic task's lateness, as a decaying maximum (owned by the loop)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.lag = 0.0
        """Seconds the tick woke late, lately."""

    def busy(self) -> bool:
        """True while gathering pays (always, with a threshold of 0)."""
        return self.lag >= self.threshold

    def observe(self, late: float) -> None:
        self.lag = max(late, self.lag * DECAY)
