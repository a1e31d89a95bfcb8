"""The table puller: other replicas' saved changes, through heads, the change feed,
reconciles and shutdown reads.

Every ``CANVAS_SYNC_INTERVAL`` this replica reads the ``#head`` items of all the projects
it holds (BatchGetItem, 100 a request). A replica writes its token into a project's head
after each save pass that wrote some of the project's objects; the token starts with the
lowest ``saved_at`` it announces. A token from another replica that changed since the
last read (the heads read just before a project's load count as read) means new items,
saved at or after that ``saved_at``: the project then asks the ``by_saved_at`` index for
items saved since then (or since its watermark minus ``CANVAS_SYNC_OVERLAP``, whichever
is earlier), every pass for ``CANVAS_SYNC_OVERLAP`` seconds (the index is eventually
consistent). A save slowed by retries is found however late it lands, because its token
is written after its items and names their ``saved_at``. A project nobody else saves
costs no query. Every ``CANVAS_RECONCILE_INTERVAL`` a project is re-read whole as a
safety net, at most twice the steady rate per pass, so reconciles never come in a burst.

When DynamoDB throttles or fails, reads back off (with jitter, up to
``CANVAS_SYNC_MAX_BACKOFF``): each project on its own, and whole passes when the heads
read or every read of a pass failed. A replica asks for less exactly when DynamoDB asks
it to. While the heads cannot be read, held projects rely on the reconcile.

The decisions (what to read, from where, when to retry) are plain functions over
:class:`Cursor` data below; :class:`Puller` does the I/O at the edges: reads in
threads, merges on the event loop in bounded chunks so a 10,000-object reconcile never
stalls the loop.

Every head read also judges the copy (``horizon.judge``): a head of a later generation
means the project was deleted (the copy is dropped); a horizon that moved is taken by a
copy that kept up, and makes one that did not (its reads failed for longer than
``Freshness.stale_after``) read the project again whole (:meth:`Puller.reload`); a copy that
did not keep up while nothing moved catches up from the feed and is read again before it
counts as fresh, and saves wait meanwhile. Items of another generation than the copy's
are never merged.

Items this replica saved itself come back through the feed too when the project is
being pulled: if one of our batches overwrote a newer item (BatchWriteItem takes no
conditions), the replica whose write was lost sees our token, merges our item, finds the
table behind its memory and marks the object dirty again (anti-entropy, in projects.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .horizon import Freshness, Judgement, judge
from .metrics import Metrics
from .model import HybridClock, ObjectState
from .projects import Merged, Project, Projects, gc_paused
from .store import Head, Loaded, Saved, Store
from .store.heads import token_ms

log = logging.getLogger(__name__)

MERGE_CHUNK = 500
"""States merged per turn of the event loop: a turn stays around a millisecond."""
REFRESH_TIMEOUT = 1.0
"""Seconds a snapshot waits for :meth:`Puller.refresh` before it is sent as memory holds it."""


# --- decisions over plain data -------------------------------------------------------


@dataclass
class Backoff:
    """Consecutive failures of one kind of read, and when to try again."""

    failures: int = 0
    retry_at: float = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.retry_at

    def failed(self, now: float, base: float, cap: float, rand: float) -> None:
        """Wait ``base * 2**(failures-1)``, at most ``cap``, times a jitter in [0.5, 1)."""
        self.failures += 1
        self.retry_at = now + min(cap, base * 2 ** min(self.failures - 1, 20)) * (0.5 + rand / 2)

    def succeeded(self) -> None:
        self.failures, self.retry_at = 0, 0.0


@dataclass
class Cursor:
    """Where the pulls of one held project stand. Owned by the puller's task."""

    watermark_ms: int
    """Largest ``saved_at`` pulled from the change feed (or the load's start)."""
    last_reconcile: float
    """Monotonic time of the last full re-read (or the load)."""
    other_heads: dict[str, str] | None = field(default_factory=dict)
    """Other replicas' tokens as last read; None when unknown (the load could not read them)."""
    feed_until: float = 0.0
    """Monotonic time until which the change feed is queried every pass."""
    feed_from_ms: int | None = None
    """Lowest ``saved_at`` announced by the tokens that opened the current feed window."""
    backoff: Backoff = field(default_factory=Backoff)
    heads_at: float = float("-inf")
    """Monotonic time of the last read of this project's head."""
    fast_until: float = 0.0
    """Until then its head is read every pass even while the relay is healthy (a catch-up)."""


@dataclass(frozen=True)
class Plan:
    """One pass's reads: projects to re-read whole, and (project, since ms) feed queries."""

    reconcile: list[str]
    feed: list[tuple[str, int]]


def note_heads(cursor: Cursor, tokens: Mapping[str, str], now: float, overlap_s: float) -> bool:
    """Take a new read of other replicas' tokens: a changed token opens a feed window.
    True when one changed (another replica saved since the last read)."""
    if now >= cursor.feed_until:
        cursor.feed_from_ms = None
    known, cursor.other_heads = cursor.other_heads, dict(tokens)
    changed = [token for writer, token in tokens.items() if known is None or known.get(writer) != token]
    if not changed:
        return False
    if known is not None:  # unknown before: the watermark's overlap is all we can go by
        lowest = min(token_ms(token) for token in changed)
        cursor.feed_from_ms = lowest if cursor.feed_from_ms is None else min(cursor.feed_from_ms, lowest)
    cursor.feed_until = now + overlap_s
    return True


def heads_due(cursors: Mapping[str, Cursor], now: float, slow_interval: float | None) -> list[str]:
    """Projects whose head to read this pass: all of them, unless the relay is healthy
    (``slow_interval`` set); then those not read for that long and those catching up, and
    with them any read more than half that long ago: heads are read 100 to a request, so
    projects loaded at different times fall into the same requests instead of one each."""
    if slow_interval is None:
        return list(cursors)
    due = [pid for pid, c in cursors.items() if now < c.fast_until or now - c.heads_at >= slow_interval]
    if not due:
        return []
    chosen = set(due)
    return due + [pid for pid, c in cursors.items() if pid not in chosen and now - c.heads_at >= slow_interval / 2]


def catch_up(cursor: Cursor, now: float, overlap_s: float, window_s: float) -> None:
    """Something may have been missed (a relay gap, a rebuilt subscription, a fresh load):
    query the feed now, for the overlap window, and read the head every pass for
    ``window_s``, long enough for the other replicas' next save to land."""
    if now >= cursor.feed_until:
        cursor.feed_from_ms = None
    cursor.feed_until = max(cursor.feed_until, now + overlap_s)
    cursor.fast_until = max(cursor.fast_until, now + window_s)


def feed_since(cursor: Cursor, overlap_ms: int) -> int:
    """The feed query's lower bound (exclusive): the overlap, or the tokens' saves if earlier."""
    since = cursor.watermark_ms - overlap_ms
    if cursor.feed_from_ms is not None:
        since = min(since, cursor.feed_from_ms - 1)
    return since


def reconcile_budget(projects: int, interval: float, reconcile_interval: float) -> int:
    """Full re-reads allowed per pass: twice the steady rate, so a backlog drains, not bursts."""
    return max(1, math.ceil(2 * projects * interval / reconcile_interval))


def plan(
    cursors: Mapping[str, Cursor], now: float, *, overlap_ms: int, reconcile_interval: float, max_reconciles: int
) -> Plan:
    """What to read this pass. Projects backing off are left alone; the oldest reconcile first."""
    ready = {pid: c for pid, c in cursors.items() if c.backoff.ready(now)}
    due = sorted(
        (pid for pid, c in ready.items() if now - c.last_reconcile >= reconcile_interval),
        key=lambda pid: ready[pid].last_reconcile,
    )[:max_reconciles]
    chosen = set(due)
    feed = [(pid, feed_since(c, overlap_ms)) for pid, c in ready.items() if pid not in chosen and now < c.feed_until]
    return Plan(due, feed)


def pulled(cursor: Cursor, now: float, full: bool, saved_at: Sequence[int] = ()) -> None:
    cursor.backoff.succeeded()
    if full:
        cursor.last_reconcile = now
    if saved_at:
        cursor.watermark_ms = max(cursor.watermark_ms, max(saved_at))


# --- the task that does the reads -----------------------------------------------------


@dataclass(frozen=True)
class RelayPace:
    """How the puller slows down while the live relay is healthy (it carries the edits then)."""

    healthy: Callable[[], bool]
    heads_interval: float
    """Seconds between reads of a project's head while the relay is healthy."""
    reconcile_interval: float
    catch_up_window: float
    """After a catch-up (or a load), read the head every pass for this long."""


class Puller:
    def __init__(
        self,
        projects: Projects,
        store: Store,
        clock: HybridClock,
        metrics: Metrics,
        interval: float,
        overlap: float,
        reconcile_interval: float,
        concurrency: int = 4,
        max_backoff: float = 30.0,
        on_repair: Callable[[], None] = lambda: None,
        rand: Callable[[], float] = random.random,
        relay: RelayPace | None = None,
        freshness: Freshness | None = None,
        cut_off_after: float = float("inf"),
    ) -> None:
        """``freshness``: when each copy was last confirmed (None: never judged stale);
        ``cut_off_after``: seconds unconfirmed after which tombstones may have expired
        meanwhile (about ``CANVAS_TOMBSTONE_TTL``): the copy is read again whole."""
        self.relay = relay
        self.freshness = freshness
        self.cut_off_after = cut_off_after
        self.on_deleted: Callable[[str, int, str], None] = lambda project, gen, reason: None
        """Drops a held copy older than the generation given (set by the service), saying how it was learned."""
        self.on_repair = on_repair
        self.projects = projects
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.interval = interval
        self.overlap = overlap
        self.reconcile_interval = reconcile_interval
        self.max_backoff = max_backoff
        self.rand = rand
        self.cursors: dict[str, Cursor] = {}
        self.backoff = Backoff()
        """Of whole passes: set when the heads read (or every read) of a pass failed."""
        self.contended: frozenset[str] = frozenset()
        """Projects another replica saved lately: replaced whole each pass, read by the auto-save thread."""
        self.last_pull_at: float | None = None
        self.last_error: str | None = None
        self._held: dict[str, Project] = {}
        self._limit = asyncio.Semaphore(concurrency)
        self._catch_ups: set[str] = set()
        self._wake = asyncio.Event()
        self._refresh_waiters: dict[str, list[asyncio.Future[bool]]] = {}
        """Project -> callers of :meth:`refresh` waiting for a read that began after they asked."""
        self._refreshers: dict[str, asyncio.Task[None]] = {}
        """Project -> the task serving its waiters (one at a time per project)."""

    def catch_up(self, project: str) -> None:
        """Pull a project now and watch its head closely for a while (the relay asks)."""
        self._catch_ups.add(project)
        self._wake.set()

    async def refresh(self, project: str, timeout: float = REFRESH_TIMEOUT) -> bool:
        """Bring a held copy up to what other replicas saved before this call: read its head
        and, if another replica's token changed since the last read (or a feed window is
        open), its feed.

        A socket opening here asks before its snapshot: a client that moved from a replica
        after ``saved`` then finds its changes in the snapshot, instead of missing them (or
        seeing an object it deleted alive) until the next pass, up to ``CANVAS_SYNC_INTERVAL``
        later. One head read serves every caller that asked before it began. Not while the
        relay is healthy: it brought other replicas' changes before their saves. False when
        the read failed or took longer than ``timeout``: the copy is served as it is.
        """
        if self._slow():
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._refresh_waiters.setdefault(project, []).append(waiter)
        if project not in self._refreshers:
            self._refreshers[project] = asyncio.create_task(self._refreshing(project), name="canvas-refresh")
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waiter)
        except TimeoutError:
            return False

    async def _refreshing(self, project: str) -> None:
        """Serve the waiting callers of :meth:`refresh`, one read for each group that asked."""
        try:
            while waiters := self._refresh_waiters.pop(project, None):
                try:
                    await self._refresh_once(project)
                    fresh = True
                except Exception as error:  # served as it is; the passes keep trying
                    fresh, why = False, f"{type(error).__name__}: {error}"
                    log.warning(
                        "refresh before a snapshot failed",
                        extra={"event": "refresh_error", "project": project, "error": why},
                    )
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(fresh)
        finally:
            del self._refreshers[project]

    async def _refresh_once(self, pid: str) -> None:
        now = time.monotonic()
        self._track_projects(now)  # a copy loaded since the last pass gets its cursor (its load's heads)
        if pid not in self.cursors:
            return
        head = (await self._heads([pid], kind="refresh")).get(pid, Head())
        self.metrics.heads_read.inc()
        cursor = self.cursors.get(pid)
        if cursor is None:  # evicted or dropped meanwhile
            return
        tokens = {writer: token for writer, token in head.tokens.items() if writer != self.clock.replica_id}
        changed = note_heads(cursor, tokens, now, self.overlap)
        # Within a feed window a pass may have noted the token and not merged its feed yet.
        if (changed or now < cursor.feed_until) and cursor.backoff.ready(now):
            await self._pull(pid, feed_since(cursor, int(self.overlap * 1000)))

    def _slow(self) -> bool:
        return self.relay is not None and self.relay.healthy()

    async def run(self) -> None:
        while True:
            try:  # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.pass_once()
            except Exception:  # a bug here must not stop pulling for good
                log.exception("pull pass failed")

    async def pass_once(self) -> None:
        """Read heads, then the planned feeds and reconciles, and merge what came back.

        A pass whose heads read failed, or whose every read failed, makes the next passes
        wait (doubling, with jitter): while DynamoDB throttles, the replica's whole read
        rate falls, not just each project's.
        """
        now = time.monotonic()
        self._track_projects(now)
        if not self.cursors:  # nothing held, nothing failing
            self.backoff.succeeded()
            self.last_error = None
            return
        if not self.backoff.ready(now):
            return
        errors: list[BaseException] = []
        heads_failed = False
        judged: dict[str, Judgement] = {}
        try:
            judged = await self._read_heads(now)
        except Exception as error:
            heads_failed = True
            errors.append(error)
        reconcile_interval = self.relay.reconcile_interval if self._slow() and self.relay else self.reconcile_interval
        todo = plan(
            self.cursors,
            now,
            overlap_ms=int(self.overlap * 1000),
            reconcile_interval=reconcile_interval,
            max_reconciles=reconcile_budget(len(self.cursors), self.interval, reconcile_interval),
        )
        results = await asyncio.gather(
            *(self._pull(pid, None) for pid in todo.reconcile),
            *(self._pull(pid, since) for pid, since in todo.feed),
            return_exceptions=True,
        )
        failed_pulls = [r for r in results if isinstance(r, BaseException)]
        errors += failed_pulls
        behind = [pid for pid, verdict in judged.items() if verdict in (Judgement.VERIFY, Judgement.RELOAD)]
        if behind:
            errors += [
                r
                for r in await asyncio.gather(
                    *(self.catch_up_stale(pid, judged[pid]) for pid in behind), return_exceptions=True
                )
                if isinstance(r, BaseException)
            ]
        if heads_failed or (results and len(failed_pulls) == len(results)):
            self.backoff.failed(now, self.interval, self.max_backoff, self.rand())
        else:
            self.backoff.succeeded()
        self.contended = frozenset(pid for pid, c in self.cursors.items() if now < c.feed_until)
        if errors:
            self.last_error = f"{type(errors[0]).__name__}: {errors[0]}"
            log.warning(
                "pull pass failed",
                extra={
                    "event": "sync_error",
                    "failures": len(errors),
                    "error": self.last_error,
                    "retry_in_s": round(max(0.0, self.backoff.retry_at - now), 2),
                },
            )
        else:
            self.last_error = None
        self.last_pull_at = time.time()

    def _track_projects(self, now: float) -> None:
        """A cursor for each newly held project; none for evicted ones; catch-ups noted."""
        for pid in [pid for pid in self._held if self.projects.get(pid) is not self._held[pid]]:
            del self._held[pid], self.cursors[pid]
        window = self.relay.catch_up_window if self.relay else 0.0
        for pid, project in self.projects.projects.items():
            if pid not in self._held:
                self._held[pid] = project
                heads = (
                    None
                    if project.loaded_heads is None
                    else {w: t for w, t in project.loaded_heads.items() if w != self.clock.replica_id}
                )
                # what was relayed before this replica subscribed is in the table by the next saves
                self.cursors[pid] = Cursor(project.loaded_at_ms, now, heads, fast_until=now + window)
                if self.freshness is not None and self.freshness.confirmed_at(pid) is None:
                    self.freshness.confirm(pid, now)
        for pid in self._catch_ups & self.cursors.keys():
            catch_up(self.cursors[pid], now, self.overlap, window)
        self._catch_ups.clear()

    async def _read_heads(self, now: float) -> dict[str, Judgement]:
        """Read the heads due, note other replicas' tokens, and judge each copy by its head."""
        slow = self.relay.heads_interval if self._slow() and self.relay else None
        due = heads_due(self.cursors, now, slow)
        if not due:
            return {}
        heads = await self._heads(due)
        self.metrics.heads_read.inc(len(due))
        me = self.clock.replica_id
        judged: dict[str, Judgement] = {}
        for pid in due:
            cursor = self.cursors.get(pid)
            if cursor is None:  # evicted while the read was in flight
                continue
            cursor.heads_at = now
            head = heads.get(pid, Head())
            verdict = self._judge(pid, head, now)
            if verdict is Judgement.DELETED:
                continue
            judged[pid] = verdict
            tokens = {writer: token for writer, token in head.tokens.items() if writer != me}
            note_heads(cursor, tokens, now, self.overlap)
        return judged

    async def _heads(self, pids: list[str], kind: str = "heads") -> dict[str, Head]:
        try:
            heads = await asyncio.to_thread(self.store.read_heads, pids)
        except Exception:
            self.metrics.sync_pulls.labels(kind, "error").inc()
            raise
        self.metrics.sync_pulls.labels(kind, "success").inc()
        return heads

    def _judge(self, pid: str, head: Head, now: float) -> Judgement:
        """What the copy does about its head: dropped, confirmed (taking the horizon), or
        left unconfirmed for :meth:`catch_up_stale`."""
        project = self._held.get(pid)
        if project is None:
            return Judgement.CURRENT
        confirmed = self.freshness.confirmed_at(pid) if self.freshness is not None else None
        unconfirmed = float("inf") if confirmed is None else now - confirmed
        stale = self.freshness is not None and unconfirmed > self.freshness.stale_after
        verdict = judge(project.gen, project.horizon_ms, head, stale, cut_off=unconfirmed > self.cut_off_after)
        if verdict is Judgement.DELETED:
            self._deleted(pid, head.gen)
        elif verdict in (Judgement.CURRENT, Judgement.ADOPT):
            project.horizon_ms = max(project.horizon_ms, head.horizon_ms)
            if self.freshness is not None and not self.cursors[pid].backoff.failures:
                self.freshness.confirm(pid, now)
        return verdict

    def _deleted(self, pid: str, gen: int) -> None:
        """The table says the project was deleted: drop the copy, stop pulling it."""
        self._held.pop(pid, None)
        self.cursors.pop(pid, None)
        self.on_deleted(pid, gen, "head")

    async def catch_up_stale(self, pid: str, verdict: Judgement) -> None:
        """A copy that did not keep up: read again whole if deletes may have been forgotten
        meanwhile (``RELOAD``); else pull the feed from before it fell behind and read its
        head once more, and only if nothing moved meanwhile is it fresh again (``VERIFY``)."""
        if verdict is Judgement.VERIFY:
            cursor, project = self.cursors.get(pid), self._held.get(pid)
            if cursor is None or project is None:
                return
            started = time.monotonic()
            await self._pull(pid, feed_since(cursor, int(self.overlap * 1000)))
            head = (await self._heads([pid])).get(pid, Head())
            if self._held.get(pid) is not project:
                return  # dropped meanwhile
            verdict = judge(project.gen, project.horizon_ms, head, stale=True)
            if verdict is Judgement.DELETED:
                self._deleted(pid, head.gen)
                return
            if verdict is Judgement.VERIFY:  # nothing was forgotten while it caught up: it holds every delete
                if self.freshness is not None:
                    self.freshness.confirm(pid, started)
                return
        await self.reload(pid)

    async def judge_stale(self) -> None:
        """Judge every held copy that is not known fresh now, as a pass would (shutdown
        asks before its final flush, since those copies' saves wait for it)."""
        if self.freshness is None:
            return
        now = time.monotonic()
        self._track_projects(now)
        stale = [pid for pid in self.cursors if self.freshness.stale(pid, now)]
        if not stale:
            return
        heads = await self._heads(stale)
        judged = {pid: self._judge(pid, heads.get(pid, Head()), now) for pid in stale if pid in self.cursors}
        await asyncio.gather(
            *(self.catch_up_stale(pid, v) for pid, v in judged.items() if v in (Judgement.VERIFY, Judgement.RELOAD))
        )

    async def reload(self, pid: str) -> None:
        """Read a copy that fell behind again whole and replace it in place (its sockets
        stay; they hear what changed). What only memory holds is kept unless it may be
        stale (``Projects.refresh``)."""
        project = self._held.get(pid)
        if project is None:
            return
        started, loaded_at = time.monotonic(), self.clock.wall_ms()
        heads = await self._heads([pid])
        loaded = await asyncio.to_thread(self._read_loaded, pid)
        if self._held.get(pid) is not project or self.projects.get(pid) is not project:
            return  # dropped or evicted meanwhile
        if loaded.gen > project.gen:
            self._deleted(pid, loaded.gen)
            return
        fresh = await asyncio.to_thread(
            self.projects.build, pid, loaded.states, loaded_at, loaded.gen, loaded.horizon_ms
        )
        me = self.clock.replica_id
        fresh.loaded_heads = {w: t for w, t in heads.get(pid, Head()).tokens.items() if w != me}
        for message in self.projects.refresh(project, fresh):
            project.broadcast(message)
        self.cursors[pid] = Cursor(loaded_at, started, dict(fresh.loaded_heads))
        if self.freshness is not None:
            self.freshness.confirm(pid, started)
        self.metrics.project_reloads.inc()
        log.info(
            "copy read again: it fell behind while deletes were forgotten",
            extra={"event": "reloaded", "project": pid, "objects": len(project.views), "gen": project.gen},
        )

    async def _pull(self, pid: str, since: int | None) -> None:
        """Read one project whole (``since`` None) or its feed, and merge what came back."""
        project, cursor = self._held.get(pid), self.cursors.get(pid)
        if project is None or cursor is None:
            return  # dropped meanwhile
        full = since is None
        kind = "reconcile" if full else "feed"
        async with self._limit:
            try:
                if since is None:
                    loaded = await asyncio.to_thread(self._read_loaded, pid)
                    records: list[Saved] = []
                    gens = {loaded.gen}
                    states = loaded.states if loaded.gen == project.gen else []
                else:
                    records = await asyncio.to_thread(self.store.changes_since, pid, since)
                    gens = {r.gen for r in records}
                    records = [r for r in records if r.gen == project.gen]
                    states = [r.state for r in records]
            except Exception:
                self.metrics.sync_pulls.labels(kind, "error").inc()
                cursor.backoff.failed(time.monotonic(), self.interval, self.max_backoff, self.rand())
                raise
        self.metrics.sync_pulls.labels(kind, "success").inc()
        if max(gens, default=0) > project.gen:  # a copy of a later generation saved: the project was deleted
            self._deleted(pid, max(gens))
            return
        fresh_after_ms = cursor.watermark_ms
        pulled(cursor, time.monotonic(), full, [r.saved_at for r in records])
        await self.merge(project, states, records, fresh_after_ms)

    def _read_loaded(self, pid: str) -> Loaded:
        """A reconcile's or a reload's read (in a thread). The cyclic GC is paused as for a
        load: a full collection over a big project's new objects holds the GIL, and so the
        loop, for tens of milliseconds."""
        with gc_paused():
            return self.store.load(pid)

    async def merge(
        self,
        project: Project,
        states: Sequence[ObjectState],
        records: Sequence[Saved] = (),
        fresh_after_ms: int | None = None,
    ) -> Merged:
        """Merge states read from the table into memory in chunks, tell this replica's
        clients, count and time it.

        Sync lag is observed for each record that changed memory, and as 0 for each record
        saved after ``fresh_after_ms`` (newer than any the feed brought before) that memory
        already held: the relay brought it before the table did. Without that, a healthy
        relay would leave the lag unobserved, and an operator with no figure at all.
        """
        result = Merged()
        for start in range(0, len(states), MERGE_CHUNK):
            if start:
                await asyncio.sleep(0)  # let edits and other sockets in between chunks
            chunk = self.projects.merge(project, states[start : start + MERGE_CHUNK], trusted=True)
            for message in chunk.messages:
                project.broadcast(message)
            result.changed += chunk.changed
            result.messages += chunk.messages
            result.repaired += chunk.repaired
        if result.changed:
            self.metrics.sync_merged.inc(len(result.changed))
        changed = set(result.changed)
        now_ms = self.clock.wall_ms()
        for record in records:
            if record.saved_by == self.clock.replica_id:
                continue
            if record.state.id in changed:
                self.metrics.sync_lag.observe(max(0.0, (now_ms - record.saved_at) / 1000))
            elif fresh_after_ms is not None and record.saved_at > fresh_after_ms:
                self.metrics.sync_lag.observe(0.0)
        if result.repaired:
            self.metrics.sync_repairs.inc(len(result.repaired))
            self.on_repair()  # write the union now rather than an interval later
            log.info(
                "anti-entropy repair", extra={"event": "repair", "project": project.id, "objects": len(result.repaired)}
            )
        return result

    async def merge_from_table(self, keys: list[tuple[str, str]]) -> int:
        """Consistent reads of ``keys`` (in a thread), merged in on the loop; repairs marked.

        Shutdown uses it twice: before the final flush, so the last write carries what
        another replica saved moments ago instead of overwriting it; and after, to find a
        table left behind memory. One project's failure does not stop the others.
        """
        if not keys:
            return 0
        records = await asyncio.to_thread(self.store.get_many, keys)
        by_project: dict[str, list[Saved]] = {}
        for record in records:
            by_project.setdefault(record.project, []).append(record)
        repairs = 0
        for pid, saved in by_project.items():
            project = self.projects.get(pid)
            if project is None:
                continue
            states = [r.state for r in saved if r.gen == project.gen]
            try:
                repairs += len((await self.merge(project, states)).repaired)
            except Exception:
                log.exception("merging the table's copy failed", extra={"event": "merge_error", "project": pid})
        return repairs

    def status(self) -> dict[str, Any]:
        backing_off = sum(1 for c in self.cursors.values() if c.backoff.failures)
        return {
            "interval_s": self.interval,
            "last_pull_at": self.last_pull_at,
            "last_error": self.last_error,
            "projects_backing_off": backing_off,
        }
