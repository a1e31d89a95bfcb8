"""The horizon's decisions (horizon.py): which tombstones may go, and what a copy does
about a head just read."""

from __future__ import annotations

from canvas_sync.horizon import Freshness, Judgement, forgettable, judge
from canvas_sync.store import Head
from hypothesis import given
from hypothesis import strategies as st


def test_a_copy_judges_its_head() -> None:
    assert judge(0, 100, Head(gen=1), stale=False) is Judgement.DELETED
    assert judge(1, 100, Head(gen=1, horizon_ms=100), stale=False) is Judgement.CURRENT
    assert judge(1, 100, Head(gen=1, horizon_ms=200), stale=False) is Judgement.ADOPT  # it kept up
    assert judge(1, 100, Head(gen=1, horizon_ms=200), stale=True) is Judgement.RELOAD  # it did not
    assert judge(1, 100, Head(gen=1, horizon_ms=100), stale=True) is Judgement.VERIFY  # nothing was forgotten
    assert judge(1, 100, Head(gen=1, horizon_ms=100), stale=True, cut_off=True) is Judgement.RELOAD  # expiry may have
    assert judge(2, 100, Head(gen=1, horizon_ms=900), stale=False) is Judgement.ADOPT  # an old head read: no drop


def test_freshness_judges_only_the_copies_it_was_told_of() -> None:
    fresh = Freshness(stale_after=10)
    assert not fresh.stale("p", now=1_000)  # never confirmed: not tracked
    fresh.confirm("p", at=100)
    assert not fresh.stale("p", now=110) and fresh.stale("p", now=110.5)
    fresh.forget("p")
    assert fresh.confirmed_at("p") is None


settled = st.lists(st.integers(0, 1_000), max_size=60).map(sorted)


@given(settled, st.sets(st.integers(0, 59)), st.integers(0, 30), st.integers(0, 1_500), st.integers(1, 2_000))
def test_only_settled_saved_tombstones_go_and_the_budget_stays(
    times: list[int], unsaved_at: set[int], budget: int, grace: int, ttl: int
) -> None:
    tombstones = {f"o{i}": at for i, at in enumerate(times)}
    unsaved = {f"o{i}" for i in unsaved_at}
    now = 1_000
    expired, over = forgettable(tombstones, unsaved, now, budget=budget, grace_ms=grace, ttl_ms=ttl)
    gone = expired + over
    assert len(set(gone)) == len(gone)
    assert all(tombstones[o] <= now - grace and o not in unsaved for o in gone)
    assert all(tombstones[o] < now - ttl for o in expired)
    assert len(tombstones) - len(gone) >= budget or not over  # the budget is never cut into
    if over:  # the oldest go first: nothing older than a forgotten one is kept, but what must stay
        newest = max(tombstones[o] for o in over)
        assert all(o in gone or o in unsaved for o, at in tombstones.items() if at < newest)
