"""The GIL budget that paces the save threads' slices of Python work."""

from __future__ import annotations

import threading

import pytest
from canvas_sync.autosave import AutosaveWorker
from canvas_sync.dirty import DirtySet
from canvas_sync.model import HybridClock, ObjectState
from canvas_sync.pacing import GilBudget
from canvas_sync.store import MemoryStore


class FakeTime:
    """A clock that only moves when slept on or worked in; thread CPU time moves with work."""

    def __init__(self) -> None:
        self.now = 100.0
        self.cpu = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def work(self, seconds: float) -> None:
        self.now += seconds
        self.cpu += seconds


def budget(share: float, t: FakeTime, burst: float = 0.002) -> GilBudget:
    return GilBudget(share, burst=burst, clock=lambda: t.now, sleep=t.sleep, cpu=lambda: t.cpu)


def test_back_to_back_slices_hold_the_gil_at_most_their_share_of_the_time() -> None:
    t = FakeTime()
    b = budget(0.25, t)
    started = t.now
    for _ in range(200):
        with b.slice():
            t.work(0.001)
    elapsed = t.now - started
    assert 0.2 / elapsed == pytest.approx(0.25, rel=0.05)  # 0.2 s of work took about 0.8 s
    assert b.waited == pytest.approx(elapsed - 0.2, rel=0.01)


def test_a_short_burst_after_a_quiet_spell_starts_at_once() -> None:
    t = FakeTime()
    b = budget(0.25, t, burst=0.002)
    t.now += 60  # quiet: no credit is saved up beyond the burst
    for _ in range(3):  # one slice, then the burst's 2 ms of work ahead of the budget
        with b.slice():
            t.work(0.001)
    assert t.slept == []
    for _ in range(3):
        with b.slice():
            t.work(0.001)
    assert len(t.slept) == 3 and all(s > 0 for s in t.slept)


def test_slices_that_cost_more_than_estimated_push_the_next_ones_back() -> None:
    t = FakeTime()
    b = budget(0.5, t, burst=0.0)
    with b.slice():
        t.work(0.010)  # estimated 1 ms, cost 10
    before = t.now
    with b.slice():
        t.work(0.001)
    assert t.now - before == pytest.approx(0.010 + 0.001, rel=0.01)  # waited for the 10 ms at half share


def test_reservations_of_concurrent_threads_do_not_share_one_slot() -> None:
    t = FakeTime()
    b = budget(0.25, t, burst=0.0)
    waits = [b.reserve() for _ in range(4)]  # four threads ask at the same instant
    assert waits == sorted(waits) and len(set(waits)) == 4
    assert waits[-1] == pytest.approx(3 * 0.001 / 0.25)


def test_a_share_of_one_does_not_pace() -> None:
    t = FakeTime()
    b = budget(1.0, t)
    for _ in range(100):
        with b.slice():
            t.work(0.001)
    assert t.slept == [] and not b.paced


def test_a_share_must_be_positive() -> None:
    with pytest.raises(ValueError):
        GilBudget(0)


def test_a_slice_that_raises_is_charged_all_the_same() -> None:
    t = FakeTime()
    b = budget(0.5, t, burst=0.0)
    with pytest.raises(RuntimeError), b.slice():
        t.work(0.010)
        raise RuntimeError("boom")
    before = t.now
    with b.slice():
        pass
    assert t.now - before == pytest.approx(0.010, rel=0.05)


def test_real_threads_through_one_budget() -> None:
    b = GilBudget(0.5, burst=0.0)
    done: list[int] = []

    def run(n: int) -> None:
        for _ in range(5):
            with b.slice():
                pass
        done.append(n)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(done) == [0, 1, 2, 3]


def test_the_final_flush_is_not_paced() -> None:
    dirty = DirtySet()
    store = MemoryStore("a")
    store.budget = GilBudget(0.25)  # type: ignore[attr-defined]
    worker = AutosaveWorker(dirty, store, HybridClock("a"), interval=3600)
    dirty.mark("p", ObjectState.created("r1", "rect", {"x": 1}, (1000, 0, "a")))
    assert worker.stop(5.0)
    assert not store.budget.paced  # type: ignore[attr-defined]
    assert dirty.counts() == (0, 0)
