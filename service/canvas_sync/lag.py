"""How late the event loop runs: what decides whether sockets gather their messages.

Gathering (a socket that just sent a frame of several messages waits
``CANVAS_SEND_INTERVAL`` so that what arrives meanwhile goes out in one frame) pays when
the loop is behind: every frame it saves is CPU for everybody else, and a newer state of an
object replaces an older one still waiting. On a quiet pod it pays nothing and costs
latency: every second message of a quiet board waited 20 ms. So sockets gather only while
the loop's lag, measured by a ticker, is at least ``CANVAS_GATHER_LAG``: a Nagle-like rule
driven by the load of the whole pod rather than by one socket.
"""

from __future__ import annotations

import asyncio

PERIOD = 0.005
"""Seconds between the ticker's looks at the clock."""
DECAY = 0.8
"""Per tick, how much of the last lag is remembered: a spike fades within a few ticks."""


class LoopLag:
    """A ticker's lateness, as a decaying maximum (owned by the loop)."""

    def __init__(self, threshold: float, period: float = PERIOD) -> None:
        self.threshold = threshold
        self.period = period
        self.lag = 0.0
        """Seconds the ticker woke late, lately."""

    def busy(self) -> bool:
        """True while gathering pays (always, with a threshold of 0)."""
        return self.lag >= self.threshold

    def observe(self, late: float) -> None:
        self.lag = max(late, self.lag * DECAY)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.period)
            self.observe(max(0.0, loop.time() - start - self.period))
