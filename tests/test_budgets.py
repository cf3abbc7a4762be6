"""Budgets: the arithmetic of shares, and a store's plan under an injected clock."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from django_dratelimit.limiter import Limiter
from django_dratelimit.local.budget_store import replan
from django_dratelimit.local.budgets import (
    allocate,
    budget_shares,
    in_budget_mode,
    initial_budget,
    weights,
)
from django_dratelimit.local.store import CounterStore, Entry
from tests.conftest import FakeClock

PERIOD = 60
START = 1_699_999_980
NOW = START + 10.0
ROUND = 0.1


# -- allocate ------------------------------------------------------------------------------


def test_allocate_splits_by_weight_and_adds_up() -> None:
    assert allocate(10, {"a": 3.0, "b": 1.0}) == {"a": 8, "b": 2}  # 7.5 + 2.5: a tie, by id
    assert allocate(100, {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}) == dict.fromkeys("abcd", 25)
    assert allocate(3, {"b": 1.0, "a": 1.0, "c": 1.0, "d": 1.0}) == {"a": 1, "b": 1, "c": 1, "d": 0}


def test_allocate_with_nothing_left_or_no_weights() -> None:
    assert allocate(0, {"a": 1.0}) == {"a": 0}
    assert allocate(-5, {"a": 1.0, "b": 2.0}) == {"a": 0, "b": 0}
    assert allocate(4, {"a": 0.0, "b": 0.0}) == {"a": 2, "b": 2}  # no rates yet: equal
    assert allocate(4, {}) == {}


@given(
    remaining=st.integers(-10, 10_000),
    weights_=st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3), st.floats(0, 1e6)),
)
def test_allocations_add_up_to_what_remains(remaining: int, weights_: dict[str, float]) -> None:
    parts = allocate(remaining, weights_)
    assert set(parts) == set(weights_)
    assert all(p >= 0 for p in parts.values())
    if weights_:
        assert sum(parts.values()) == max(0, remaining)
        # Every process computing it gets the same answer, whatever the dict order.
        assert allocate(remaining, dict(reversed(list(weights_.items())))) == parts


# -- weights and the mode ------------------------------------------------------------------


def test_weights_follow_rates_with_a_floor_and_idle_origins_drop_out() -> None:
    counts = {"busy": 90, "slow": 10}
    grew = {"busy": NOW - 0.1, "slow": NOW - 0.1, "idle": NOW - 60}
    w = weights({**counts, "idle": 50}, grew, ["busy", "slow", "idle", "new"], 10.0, NOW, 1.0)
    assert w["busy"] > w["slow"] > w["idle"] == w["new"] > 0  # idle: only the floor
    assert w["busy"] == pytest.approx(9.0 + 0.25)  # 90 hits in 10 s, plus 10% of the mean


def test_budget_mode_starts_when_one_round_could_take_what_remains() -> None:
    # 100 hits/s, 0.1 s rounds, headroom 2: 20 a round plus one per process (4).
    assert in_budget_mode(24, 100.0, ROUND, 4, 2.0)
    assert not in_budget_mode(25, 100.0, ROUND, 4, 2.0)


def test_shares_far_from_the_limit_are_none() -> None:
    # 200 hits in 1 s: one 0.1 s round takes 20, twice that plus one per process is 42.
    args: tuple[Any, ...] = ({"a": 100, "b": 100}, {}, ["b"], 1.0, NOW, ROUND)
    assert budget_shares("a", 1000, 200, *args) is None  # 800 left is plenty
    assert budget_shares("a", 210, 200, *args) == {"a": 5, "b": 5}
    assert budget_shares("a", 200, 200, *args) == {"a": 0, "b": 0}
    assert budget_shares("a", 210, 200, {"a": 200}, {}, [], 1.0, NOW, ROUND) is None  # alone


def test_initial_budget_is_an_equal_share_of_at_least_one() -> None:
    assert initial_budget(100, 4) == 25
    assert initial_budget(5, 16) == 1
    assert initial_budget(100, 1) is None


# -- plans ---------------------------------------------------------------------------------


def plan_of(levels: dict[str, int], at: float = NOW) -> Any:
    from django_dratelimit.local.budget_store import Plan

    return Plan(levels["me"], {o: (n, at) for o, n in levels.items()})


def test_a_promise_not_used_up_is_reserved_then_lapses() -> None:
    prior = plan_of({"me": 250, "b": 250, "c": 250, "d": 250})
    counts = {"me": 250, "b": 100, "c": 0, "d": 0}
    members = ["b", "c", "d"]
    # b, c and d may still be using their shares: nothing is left to hand out.
    again = replan(prior, "me", 1000, counts, members, 1.0, NOW + 0.2, ROUND, 2.0)
    assert again is not None
    assert again.allowed == 250
    assert sum(level for level, _ in again.levels.values()) == 1000
    # A second later the unused promises have lapsed: 650 are free again, far more
    # than a round takes at 350 hits/s, so the bucket leaves budget mode.
    assert replan(again, "me", 1000, counts, members, 1.0, NOW + 1.5, ROUND, 2.0) is None


@given(
    counts=st.dictionaries(st.sampled_from("abcd"), st.integers(0, 60), min_size=1),
    prior=st.dictionaries(st.sampled_from("abcd"), st.integers(0, 60)),
    limit=st.integers(1, 200),
    age=st.floats(0, 5),
)
def test_the_levels_never_promise_more_than_the_limit_and_the_counts(
    counts: dict[str, int], prior: dict[str, int], limit: int, age: float
) -> None:
    from django_dratelimit.local.budget_store import Plan

    counts = {**counts, "a": counts.get("a", 0)}
    members = ["b", "c", "d"]
    old = Plan(prior.get("a", 0), {o: (n, NOW - age) for o, n in prior.items()})
    plan = replan(old, "a", limit, counts, members, 10.0, NOW, ROUND, 2.0)
    if plan is None:
        return  # far from the limit: decided on totals
    total_levels = sum(level for level, _ in plan.levels.values())
    # Hits counted plus hits promised: never over the limit, unless already counted.
    assert total_levels <= max(limit, sum(counts.values()) + sum(prior.values()))
    assert all(plan.levels[o][0] >= counts.get(o, 0) for o in plan.levels)


# -- the store and the limiter --------------------------------------------------------------


def clustered(clock: FakeClock, origin: str = "me") -> tuple[Limiter, CounterStore]:
    store = CounterStore(origin=origin)
    store.processes, store.members = 4, ["b", "c", "d"]
    return Limiter(store, clock=clock, sync=False), store


def test_a_fresh_bucket_in_a_cluster_admits_an_equal_share(clock: FakeClock) -> None:
    limiter, store = clustered(clock)
    admitted = [limiter.hit("g", "k", "100/m").allowed for _ in range(40)]
    assert admitted == [True] * 25 + [False] * 15
    assert store.total(("g", "k", 60, int(clock.now // 60) * 60)) == 25  # refusals not counted


def test_a_refusal_by_budget_is_honest_in_its_headers(clock: FakeClock) -> None:
    limiter, _ = clustered(clock)
    usages = [limiter.hit("g", "k", "8/m") for _ in range(3)]
    assert [u.remaining for u in usages] == [1, 0, 0]  # 8 // 4 = 2 for this process
    refused = usages[-1]
    assert refused.should_limit
    assert refused.retry_after == 1  # a new budget comes with the next round


def test_a_new_picture_gives_an_idle_cluster_share_to_the_busy_process(clock: FakeClock) -> None:
    limiter, store = clustered(clock)
    start = int(clock.now // 60) * 60
    for _ in range(30):
        limiter.hit("g", "k", "100/m")
    clock.advance(2.0)  # the equal promises to b, c and d have lapsed; they saw nothing
    store.rebudget([("g", "k", 60, start)], ["b", "c", "d"], clock.now, ROUND)
    admitted = sum(limiter.hit("g", "k", "100/m").allowed for _ in range(100))
    assert 60 <= admitted <= 75  # most of the 75 left; the floor keeps some for the others


def test_a_cut_off_process_keeps_its_last_share(clock: FakeClock) -> None:
    limiter, store = clustered(clock)
    start = int(clock.now // 60) * 60
    bucket = ("g", "k", 60, start)
    limiter.hit("g", "k", "100/m")
    store.merge("b", [Entry(*bucket, 0, 80, 0)], clock.now)  # b is busy: 80 of 100
    store.rebudget([bucket], ["b", "c", "d"], clock.now, ROUND)
    plan = store._buckets[bucket].plan
    assert plan is not None
    # No more pictures (the broker is down): however long, no more than that share.
    clock.advance(30)
    admitted = 1 + sum(limiter.hit("g", "k", "100/m").allowed for _ in range(200))
    assert admitted <= plan.allowed  # its own share, not the whole limit (it saw 20 left)
    assert 80 + admitted <= 100


def test_alone_or_with_budgets_off_nothing_changes(clock: FakeClock) -> None:
    limiter = Limiter(CounterStore(), clock=clock, sync=False)  # processes = 1
    assert sum(limiter.hit("g", "k", "10/m").allowed for _ in range(20)) == 10
    assert limiter.get("g", "k", "10/m").count == 20  # every hit counted, as always


def test_a_bucket_first_heard_from_a_peer_still_starts_with_a_share(clock: FakeClock) -> None:
    limiter, store = clustered(clock)
    start = int(clock.now // 60) * 60
    store.merge("b", [Entry("g", "k", 60, start, 0, 10, 0)], clock.now)  # before any hit here
    admitted = sum(limiter.hit("g", "k", "100/m").allowed for _ in range(60))
    assert admitted == 25  # the equal share, not the 90 the total would allow


def test_a_forked_child_forgets_the_parents_plans(clock: FakeClock) -> None:
    # The plan's levels are keyed by the parent's origin: kept, the child would
    # find no level of its own in them. It starts again as a fresh bucket does.
    limiter, store = clustered(clock)
    for _ in range(30):
        limiter.hit("g", "k", "100/m")  # the parent has used up its share of 25
    parent = store.origin
    store._after_fork_in_child()
    assert store.origin != parent
    assert store.planned(clock.now) == {}
    # The parent's 25 stay the parent's; the child, a new process with no count of
    # its own, starts with the equal share every process starts with (100 // 4),
    # until its first picture replans from the counts.
    admitted = sum(limiter.hit("g", "k", "100/m").allowed for _ in range(40))
    assert admitted == 25
    assert store.total(("g", "k", 60, int(clock.now // 60) * 60)) == 50
