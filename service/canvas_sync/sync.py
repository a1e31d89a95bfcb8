"""Pulling other replicas' saved changes: the change feed, reconcile, and shutdown repair.

Every ``CANVAS_SYNC_INTERVAL`` this replica reads the ``#head`` items of all the projects
it holds (BatchGetItem, 100 a request). A replica writes its token into a project's head
after each save pass that wrote the project's objects, so a token from another replica
that changed since the last pass (or any such token, on the first read after a load)
means new items. Such a project then asks the ``by_saved_at`` index for items saved
after its watermark minus an overlap window, every pass for ``CANVAS_SYNC_OVERLAP``
seconds (the index is eventually consistent, clocks are skewed, so a window is re-read
rather than trusting an exact cursor). A project nobody else saves costs no query at all. Every
``CANVAS_RECONCILE_INTERVAL`` a project is re-read whole as a safety net, and if the
heads cannot be read, every held project is queried as before.

Items this replica saved itself come back through the feed too when the project is
being pulled: if one of our batches overwrote a newer item (BatchWriteItem takes no
conditions), the replica whose write was lost sees our token, merges our item, finds the
table behind its memory and marks the object dirty again (anti-entropy, in state.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from .metrics import Metrics
from .model import HybridClock, ObjectState
from .state import CanvasState, Project, RemoteMerge
from .store import DynamoStore, Saved

log = logging.getLogger(__name__)


class SyncWorker:
    def __init__(
        self,
        state: CanvasState,
        store: DynamoStore,
        clock: HybridClock,
        metrics: Metrics,
        interval: float,
        overlap: float,
        reconcile_interval: float,
        concurrency: int = 4,
        on_repair: Callable[[], None] = lambda: None,
    ) -> None:
        self.on_repair = on_repair
        self.state = state
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.interval = interval
        self.overlap_ms = int(overlap * 1000)
        self.reconcile_interval = reconcile_interval
        self.last_pull_at: float | None = None
        self.last_error: str | None = None
        self._limit = asyncio.Semaphore(concurrency)
        self._heads_ok = True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.pass_once()
            except Exception:  # a bug here must not stop pulling for good
                log.exception("sync pass failed")

    async def pass_once(self) -> None:
        projects = list(self.state.projects.values())
        now = time.monotonic()
        due = [p for p in projects if now - p.last_reconcile >= self.reconcile_interval]
        rest = [p for p in projects if now - p.last_reconcile < self.reconcile_interval]
        feed = await self._changed(rest, now)
        results = await asyncio.gather(*(self._pull(p, full=True) for p in due),
                                       *(self._pull(p, full=False) for p in feed), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            self.last_error = f"{type(errors[0]).__name__}: {errors[0]}"
            log.warning("sync pass failed", extra={"event": "sync_error", "projects": len(errors), "error": self.last_error})
        elif projects and self._heads_ok:
            self.last_error = None
        self.last_pull_at = time.time()

    async def _changed(self, projects: list[Project], now: float) -> list[Project]:
        """The projects whose change feed to query this pass, from their heads."""
        if not projects:
            return []
        try:
            heads = await asyncio.to_thread(self.store.heads, [p.id for p in projects])
        except Exception as error:  # cannot tell which changed: query them all
            self.metrics.sync_pulls.labels("heads", "error").inc()
            self._heads_ok = False
            self.last_error = f"{type(error).__name__}: {error}"
            log.warning("reading heads failed; querying every feed", extra={"event": "sync_error", "error": self.last_error})
            return projects
        self.metrics.sync_pulls.labels("heads", "success").inc()
        self._heads_ok = True
        me = self.clock.replica_id
        for project in projects:
            others = {writer: token for writer, token in heads.get(project.id, {}).items() if writer != me}
            # After a load (nothing read yet), any other replica's token counts as new:
            # it may stand for a save that landed between the load's read and this one.
            if others != project.other_heads:
                project.feed_until = now + self.overlap_ms / 1000
            project.other_heads = others
        return [p for p in projects if now < p.feed_until]

    async def _pull(self, project: Project, full: bool) -> None:
        async with self._limit:
            kind = "reconcile" if full else "feed"
            try:
                if full:
                    states = await asyncio.to_thread(self.store.load_project, project.id)
                    records: list[Saved] = []
                else:
                    since = project.sync_watermark_ms - self.overlap_ms
                    records = await asyncio.to_thread(self.store.changes_since, project.id, since)
                    states = [r.state for r in records]
            except Exception:
                self.metrics.sync_pulls.labels(kind, "error").inc()
                raise
            self.metrics.sync_pulls.labels(kind, "success").inc()
            if full:
                project.last_reconcile = time.monotonic()
            if records:
                project.sync_watermark_ms = max(project.sync_watermark_ms, max(r.saved_at for r in records))
            self.apply(project, states, records)

    def apply(self, project: Project, states: Iterable[ObjectState], records: Iterable[Saved] = ()) -> RemoteMerge:
        """Merge states into memory, tell this replica's clients, count and time it."""
        result = self.state.merge_remote(project, states)
        for message in result.messages:
            project.broadcast(message)
        if result.changed:
            self.metrics.sync_merged.inc(len(result.changed))
            changed = set(result.changed)
            now_ms = self.clock.wall_ms()
            for record in records:
                if record.state.id in changed and record.saved_by != self.clock.replica_id:
                    self.metrics.sync_lag.observe(max(0.0, (now_ms - record.saved_at) / 1000))
        if result.repaired:
            self.metrics.sync_repairs.inc(len(result.repaired))
            self.on_repair()  # write the union now rather than an interval later
            log.info("anti-entropy repair", extra={"event": "repair", "project": project.id, "objects": len(result.repaired)})
        return result

    def merge_from_table(self, keys: list[tuple[str, str]]) -> int:
        """Consistent reads of ``keys``, merged in; returns how many need writing again.

        Shutdown uses it twice (in a thread): before the final flush, so the last write
        carries what another replica saved moments ago instead of overwriting it; and
        after, to find a table left behind memory.
        """
        if not keys:
            return 0
        by_project: dict[str, list[ObjectState]] = {}
        for record in self.store.get_many(keys):
            by_project.setdefault(record.project, []).append(record.state)
        repairs = 0
        for pid, states in by_project.items():
            project = self.state.get(pid)
            if project is not None:
                repairs += len(self.apply(project, states).repaired)
        return repairs

    def status(self) -> dict[str, Any]:
        return {"interval_s": self.interval, "last_pull_at": self.last_pull_at, "last_error": self.last_error}
