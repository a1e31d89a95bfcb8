"""The auto-save worker: a thread that saves dirty objects to DynamoDB in batches.

Edits never write to DynamoDB; they only mark objects dirty. Every interval this thread
takes the dirty set (one short lock), writes it outside the lock, and puts back what
failed. Passes never overlap: the final flush on shutdown runs on this same thread.
While DynamoDB fails, the pause between passes grows (with jitter) up to a bound, and
the unsaved objects simply stay dirty in memory.

The thread touches no project: it takes states from the dirty set and hands back what
failed. An object the store refuses outright (too large for an item) is quarantined:
kept in memory, logged, counted and listed in ``/health``, and its neighbours are saved.

BatchWriteItem takes no conditions, so a write can overwrite what another replica saved
a moment ago. For projects another replica saved lately (its token in the project's
``#head`` changed within the sync overlap window), a pass first reads the table's copy
of the objects it is about to write (consistent BatchGetItem) and writes the merge of
both: the union, not a clobber that the other replica would have to repair.

A copy not known fresh (``horizon.Freshness``: its reads failed for a while) is not saved
until the puller has judged it: it may hold live objects whose deletes others forgot.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .dirty import DirtyObject, DirtySet
from .metrics import Metrics
from .model import HybridClock, merge
from .pacing import GilBudget
from .store import Store, WriteReport

log = logging.getLogger(__name__)


class AutosaveWorker:
    def __init__(
        self,
        dirty: DirtySet,
        store: Store,
        clock: HybridClock,
        interval: float,
        max_backoff: float = 30.0,
        metrics: Metrics | None = None,
        contended: Callable[[], frozenset[str]] = frozenset,
        hold: Callable[[str], bool] | None = None,
    ) -> None:
        """``contended``: projects another replica saved lately (sync publishes them);
        ``hold``: projects not to save this pass (``horizon.Freshness.stale``)."""
        self.dirty = dirty
        self.contended = contended
        self.hold = hold
        self.store = store
        self.clock = clock
        self.interval = interval
        self.max_backoff = max(max_backoff, interval)
        self.metrics = metrics
        self.last_save_at: float | None = None
        self.last_error: str | None = None
        self.consecutive_failures = 0
        self.on_pass: Callable[[], None] = lambda: None
        """Called on this thread after every pass that took something (saved acks follow it)."""
        self.on_saved: Callable[[list[tuple[str, str]], dict[str, int]], None] = lambda tombstones, fenced: None
        """Called on this thread after every pass with the tombstones it wrote and the
        projects whose head refused it (deleted meanwhile), when there are any."""
        self._wake = threading.Event()
        self._deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name="canvas-autosave", daemon=True)

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._succeeded()  # nothing is unsaved yet: a fresh pod is not "not saved since 1970"
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wake(self) -> None:
        """Run a pass now instead of at the end of the interval."""
        self._wake.set()

    def stop(self, timeout: float) -> bool:
        """Final flush: save until nothing is dirty or ``timeout`` passes; True if all saved.

        The flush is not paced (``pacing.py``): the sockets are closed by then, so the
        loop has nobody to answer, and the whole backlog must land within ``timeout``.
        """
        budget = getattr(self.store, "budget", None)
        if isinstance(budget, GilBudget):
            budget.share = 1.0
        self._deadline = time.monotonic() + timeout
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout + 1.0)
        else:
            self._flush_until(self._deadline)
        return self.dirty.counts()[1] == 0

    def _run(self) -> None:
        delay = self.interval
        while self._deadline is None:
            self._wake.wait(delay)
            self._wake.clear()
            if self._deadline is not None:
                break
            try:
                report = self.run_pass()
            except Exception:  # a bug here must not stop saving for good
                log.exception("autosave pass failed")
                report = None
            delay = self._next_delay(report)
        self._flush_until(self._deadline)

    def _next_delay(self, report: WriteReport | None) -> float:
        if report is None or not report.failed:
            return self.interval
        backoff = min(self.max_backoff, self.interval * 2 ** min(self.consecutive_failures, 10))
        return backoff * random.uniform(0.5, 1.0)

    def _flush_until(self, deadline: float) -> None:
        while (self.dirty.counts()[1] or self.store.heads_owed) and time.monotonic() < deadline:
            report = self.run_pass()
            held = report is None and self.dirty.counts()[1]  # copies not known fresh wait to be judged
            if (report is not None and report.failed) or self.store.heads_owed or held:
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    # --- one pass -----------------------------------------------------------------------

    def run_pass(self) -> WriteReport | None:
        """Take the dirty objects and save them; None when there was nothing to save."""
        taken = self.dirty.take(self.hold)
        if not taken:
            if self.store.heads_owed:  # objects saved earlier, their head update failed
                self._count_heads(self.store.announce())
                self._report_saved([])
            self._succeeded()  # nothing to save is a success: the timestamp means "all saved then"
            return None
        start = time.perf_counter()
        try:
            report = self.store.write(self._merged_with_table(taken), saved_at_ms=self.clock.now()[0])
        except Exception as error:  # never let the thread die with objects taken
            log.exception("autosave pass crashed")
            report = WriteReport(failed=list(taken), errors=[f"{type(error).__name__}: {error}"])
        self.dirty.finish(report.failed, report.refused)
        self.on_pass()
        not_written = {o.key for o in report.failed} | {o.key for o, _ in report.refused}
        self._report_saved([o.key for o in taken if not o.state.is_alive and o.key not in not_written])
        self._count_heads(report.heads)
        for item, why in report.refused:
            log.error(
                "object refused by the store; kept in memory, not retried until it changes",
                extra={"event": "quarantined", "project": item.project, "object": item.state.id, "error": why},
            )
            if self.metrics:
                self.metrics.refused.inc()
        seconds = time.perf_counter() - start
        if report.failed:
            self.consecutive_failures += 1
            self.last_error = report.errors[0] if report.errors else "save failed"
        else:
            self.consecutive_failures = 0
            self.last_error = None
            self.last_save_at = time.time()
            if self.metrics:
                self.metrics.last_success.set(self.last_save_at)
        if self.metrics:
            self.metrics.pass_seconds.observe(seconds)
        log.log(
            logging.WARNING if report.failed else logging.INFO,
            "autosave pass",
            extra={
                "event": "autosave_pass",
                "projects": len({o.project for o in taken}),
                "objects": len(taken),
                "written": report.written,
                "batches": report.batches,
                "failed": len(report.failed),
                "refused": len(report.refused),
                "latency_ms": round(seconds * 1000, 2),
                "errors": report.errors[:3],
            },
        )
        return report

    def _report_saved(self, tombstones: list[tuple[str, str]]) -> None:
        fenced = self.store.take_fenced()
        if tombstones or fenced:
            self.on_saved(tombstones, fenced)

    def _merged_with_table(self, taken: list[DirtyObject]) -> list[DirtyObject]:
        """Objects of contended projects merged with the table's copy, the rest as taken.

        Memory catches up through the change feed, which is running for those projects.
        If the read fails, the objects are written as they are: anti-entropy still repairs.
        """
        contended = self.contended()
        keys = [(o.project, o.state.id) for o in taken if o.project in contended]
        if not keys:
            return taken
        gens = {o.key: o.gen for o in taken}
        try:  # an item of another generation than the copy's is not the project's any more
            records = self.store.get_many(keys)
            table = {(r.project, r.state.id): r.state for r in records if r.gen == gens[r.project, r.state.id]}
        except Exception as error:
            self._count_read("error")
            log.warning(
                "read before save failed; writing memory's copy",
                extra={"event": "read_before_save_error", "error": f"{type(error).__name__}: {error}"},
            )
            return taken
        self._count_read("success")
        return [
            replace(o, state=merge(o.state, table[(o.project, o.state.id)])) if (o.project, o.state.id) in table else o
            for o in taken
        ]

    def _succeeded(self) -> None:
        if self.metrics:
            self.metrics.last_success.set(time.time())

    def _count_read(self, outcome: str) -> None:
        if self.metrics:
            self.metrics.sync_pulls.labels("before_save", outcome).inc()

    def _count_heads(self, n: int) -> None:
        if self.metrics and n:
            self.metrics.heads_written.inc(n)

    def status(self) -> dict[str, Any]:
        projects, objects = self.dirty.counts()
        return {
            "interval_s": self.interval,
            "worker_alive": self.alive,
            "dirty_projects": projects,
            "dirty_objects": objects,
            "last_save_at": self.last_save_at,
            "last_error": self.last_error,
            "quarantined": self.dirty.quarantined(),
        }
