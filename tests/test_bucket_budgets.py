"""Budgets of the token and leaky buckets: shares in tokens, refill, the partition rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from django_dratelimit.limiter import Limiter
from django_dratelimit.local.algorithms import LEAKY_BUCKET, TOKEN_BUCKET, epoch_length
from django_dratelimit.local.bucket_budget import (
    BucketPlan,
    fresh_plan,
    replan_bucket,
    room,
)
from django_dratelimit.local.store import CounterStore, Entry
from tests.conftest import FakeClock

CAPACITY, PERIOD = 100, 60
RATE = f"{CAPACITY}/m"
NOW = 1_699_999_990.0
ROUND = 0.1
PEERS = ["b", "c", "d"]


def clustered(clock: FakeClock) -> tuple[Limiter, CounterStore]:
    store = CounterStore(origin="me")
    store.processes, store.members = 4, list(PEERS)
    return Limiter(store, clock=clock, sync=False), store


def epoch_key(now: float) -> tuple[str, str, int, int]:
    length = epoch_length(PERIOD)
    return ("g", "k", length, int(now // length) * length)


def admitted(limiter: Limiter, n: int, algorithm: str = TOKEN_BUCKET) -> int:
    return sum(limiter.hit("g", "k", RATE, algorithm=algorithm).allowed for _ in range(n))


# -- the request path ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [TOKEN_BUCKET, LEAKY_BUCKET])
def test_a_bucket_in_a_cluster_starts_with_an_equal_share_of_its_level(
    clock: FakeClock, algorithm: str
) -> None:
    limiter, store = clustered(clock)
    assert admitted(limiter, 40, algorithm) == 25  # 100 tokens, 4 processes
    total, _ = store.read(epoch_key(clock.now))
    assert total == 25  # refusals by the budget take nothing


def test_a_refusal_by_budget_answers_like_the_windows(clock: FakeClock) -> None:
    limiter, _ = clustered(clock)
    usages = [limiter.hit("g", "k", "8/m", algorithm=TOKEN_BUCKET) for _ in range(3)]
    # 8 // 4 = 2 for this process, and RateLimit's r says so (not the 6 the bucket has).
    assert [u.remaining for u in usages] == [1, 0, 0]
    refused = usages[-1]
    assert refused.should_limit
    assert refused.retry_after == 1


def test_the_share_refills_at_its_fraction_of_the_rate_and_no_further(clock: FakeClock) -> None:
    limiter, _ = clustered(clock)
    assert admitted(limiter, 30) == 25
    # A quarter of 100 tokens a minute: 5 tokens in 12 s, with no new picture.
    clock.advance(12.0)
    assert admitted(limiter, 30) == 5
    # However long it waits, its own bucket holds a quarter of the capacity at most.
    clock.advance(PERIOD * 5)
    assert admitted(limiter, 100) == 25


def test_a_cut_off_process_admits_its_fraction_of_the_refill_only(clock: FakeClock) -> None:
    limiter, store = clustered(clock)
    key = epoch_key(clock.now)
    limiter.hit("g", "k", RATE, algorithm=TOKEN_BUCKET)
    clock.advance(1.5)  # the first, equal promises lapse
    store.merge("b", [Entry(*key, 0, 70, 0)], clock.now)  # b is busy: 70 of the 100 tokens
    limiter.hit("g", "k", RATE, algorithm=TOKEN_BUCKET)
    store.rebudget([key], PEERS, clock.now, ROUND, headroom=50.0)
    plan = store._buckets[key].plan
    assert isinstance(plan, BucketPlan)
    share = plan.tokens
    assert share < 10  # b's rate gets most of the ~30 left
    # No more pictures (the broker is down): its share, then its fraction of the
    # refill, a minute long, never the whole bucket a process alone would have.
    got = 0
    for _ in range(60):
        got += admitted(limiter, 20)
        clock.advance(1.0)
    refill = plan.fraction * CAPACITY  # one period's refill at its fraction
    assert got <= share + refill + 1  # + 1: the register's rounding
    assert got < 30 + CAPACITY / 2  # alone it would take the ~30 left plus a full refill


def test_alone_the_bucket_decides_as_before(clock: FakeClock) -> None:
    limiter = Limiter(CounterStore(), clock=clock, sync=False)
    assert admitted(limiter, 150) == CAPACITY


# -- recomputation -----------------------------------------------------------------------------


def plan_at(now: float) -> BucketPlan:
    counts = dict.fromkeys(["me", *PEERS], 0)
    return fresh_plan("me", PEERS, counts, float(CAPACITY), CAPACITY, PERIOD, now)


def test_a_new_picture_shares_what_remains_by_rate() -> None:
    plan = plan_at(NOW)  # every count was 0 then
    counts = {"me": 5, "b": 60, "c": 0, "d": 0}
    later = NOW + 1.2  # the equal promises (younger than 1 s) have lapsed
    new = replan_bucket(plan, "me", counts, PEERS, 65, 35.0, later, ROUND)
    assert new is not None
    shares = {o: new.levels[o][0] - counts[o] for o in counts}
    assert sum(shares.values()) == room(65, 35.0) - 65 == 35
    assert shares["b"] > 5 * shares["me"] > 0
    assert 0 < shares["c"] == shares["d"] < shares["me"]  # the floor, for processes with none
    assert new.tokens == shares["me"]
    assert new.fraction == pytest.approx(shares["me"] / 35, abs=0.05)


def test_unused_promises_stay_reserved_until_they_lapse() -> None:
    plan = plan_at(NOW)
    counts = {"me": 5, "b": 20, "c": 0, "d": 0}  # b over its 25? no: under, like the rest
    soon = NOW + 0.3
    new = replan_bucket(plan, "me", counts, PEERS, 25, 75.0, soon, ROUND)
    assert new is not None
    # 4 x 25 promised, none used up: nothing new to hand out, my promise stands.
    assert sum(level for level, _ in new.levels.values()) == CAPACITY
    assert new.tokens == 20


def test_budget_mode_lasts_until_a_picture_finds_the_bucket_full() -> None:
    plan = plan_at(NOW)
    counts = {"me": 1, "b": 1, "c": 0, "d": 0}
    # Two tokens in use at a slow rate: still shared (a burst may come at any time).
    assert replan_bucket(plan, "me", counts, PEERS, 2, 98.0, NOW + 5.0, ROUND) is not None
    # Full again: no budgets until the next take, which starts with equal shares.
    assert replan_bucket(plan, "me", counts, PEERS, 2, 100.0, NOW + 9.0, ROUND) is None


def test_refill_reaches_the_shares_through_the_level() -> None:
    plan = plan_at(NOW)
    counts = {"me": 25, "b": 25, "c": 25, "d": 25}  # every promise used up
    at_zero = replan_bucket(plan, "me", counts, PEERS, 100, 0.0, NOW + 0.2, ROUND)
    assert at_zero is not None
    assert at_zero.tokens == 0
    # Six seconds later the bucket refilled 10 tokens and b took 4 of them: the
    # other 6 are what the next picture splits.
    counts["b"] = 29
    later = replan_bucket(at_zero, "me", counts, PEERS, 104, 6.0, NOW + 6.2, ROUND)
    assert later is not None
    assert sum(lv for lv, _ in later.levels.values()) - sum(counts.values()) == 6


# -- the budgets never add up to more than what remains ---------------------------------------

ORIGINS = ["me", *PEERS]


@given(
    counts=st.fixed_dictionaries({o: st.integers(0, 60) for o in ORIGINS}),
    prior=st.fixed_dictionaries({o: st.integers(0, 60) for o in ORIGINS}),
    level=st.floats(-20, CAPACITY - 1),  # in use: a full bucket has no budgets
    age=st.floats(0, 5),
    rates=st.fixed_dictionaries({o: st.floats(0, 1e4) for o in ORIGINS}),
)
def test_the_budgets_of_every_process_add_up_to_at_most_what_remains(
    counts: dict[str, int],
    prior: dict[str, int],
    level: float,
    age: float,
    rates: dict[str, float],
) -> None:
    taken = sum(counts.values())
    now = NOW + 10.0
    plans = []
    for origin in ORIGINS:  # every process, from the same picture
        old = BucketPlan(
            0, {o: (n, now - age) for o, n in prior.items()}, CAPACITY, PERIOD, 0.25, 0, now - 1
        )
        old.rates = dict(rates)
        peers = [o for o in ORIGINS if o != origin]
        plans.append(replan_bucket(old, origin, counts, peers, taken, level, now, ROUND))
    new = [p for p in plans if p is not None]
    assert len(new) == len(ORIGINS)  # in use: in budget mode
    lapsed = (
        now - (now - age) > 1.0
    )  # the promises live max(1 s, 4 rounds), computed as replan does
    live = {o: n for o, n in prior.items() if not lapsed and n > counts[o]}
    reserved = sum(max(counts[o], live.get(o, 0)) for o in ORIGINS)
    remaining = max(0, room(taken, level) - reserved)
    # What every process may still take: the unused promises plus the new shares.
    budgets = sum(p.tokens for p in new)
    assert budgets == sum(live.get(o, counts[o]) - counts[o] for o in ORIGINS) + remaining
    if not live:
        assert budgets <= max(0, room(taken, level) - taken)  # at most the level
    # Their refills add up to the bucket's, and their sizes to its capacity (+ rounding).
    assert sum(p.fraction for p in new) == pytest.approx(1.0)
    assert sum(p.cap for p in new) <= CAPACITY + budgets + 1e-9


def test_a_promise_parked_at_a_process_the_traffic_left_lapses_despite_refill() -> None:
    plan = plan_at(NOW)
    plan.levels = {"me": (10, NOW), "b": (60, NOW), "c": (5, NOW), "d": (5, NOW)}
    plan.seen = {"me": 0, "b": 10, "c": 5, "d": 5}  # the traffic left b for me
    counts = {"me": 10, "b": 10, "c": 5, "d": 5}
    # Each picture splits what refilled, b's floor share included...
    half = replan_bucket(plan, "me", counts, PEERS, 30, 80.0, NOW + 0.5, ROUND)
    assert half is not None
    assert half.levels["b"][0] > 60
    # ...but b's unused 50 still lapse a second after they were promised, and flow to me.
    counts["me"] = 30
    later = replan_bucket(half, "me", counts, PEERS, 50, 60.0, NOW + 1.2, ROUND)
    assert later is not None
    remaining = room(50, 60.0) - sum(max(counts[o], half.levels[o][0]) for o in "cd") - 10 - 30
    assert later.levels["b"][0] - counts["b"] <= 1  # its floor, at most
    assert later.levels["me"][0] - counts["me"] >= 0.8 * remaining


def test_weights_follow_the_recent_rate_not_the_epoch() -> None:
    plan = plan_at(NOW)
    plan.seen = {"me": 0, "b": 0, "c": 0, "d": 0}
    # b took 90 long ago in this epoch, but nothing since the last picture; me is busy now.
    plan.seen_at, plan.seen = NOW, {"me": 10, "b": 90, "c": 0, "d": 0}
    counts = {"me": 20, "b": 90, "c": 0, "d": 0}
    new = replan_bucket(plan, "me", counts, PEERS, 110, 30.0, NOW + 2.0, ROUND)
    assert new is not None
    assert new.fraction > 0.9
    assert new.rates["b"] == 0


def test_with_several_rates_a_budget_refusal_takes_nothing_from_the_others(
    clock: FakeClock,
) -> None:
    limiter, store = clustered(clock)
    rates = "8/m;1000/h"  # the first's share here is 2 tokens, the second's 250
    usages = [limiter.hit("g", "k", rates, algorithm=TOKEN_BUCKET) for _ in range(4)]
    assert [u.allowed for u in usages] == [True, True, False, False]
    hour = epoch_length(3600)
    taken, _ = store.read(("g", "k", hour, int(clock.now // hour) * hour))
    assert taken == 2  # the refused hits took nothing from the hourly bucket
