"""Token and leaky buckets against an exact reference model, on one node and across nodes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from django_dratelimit.limiter import Limiter
from django_dratelimit.local.algorithms import epoch_length
from django_dratelimit.local.store import CounterStore
from tests.conftest import FakeClock

PERIOD = 10
CAPACITY = 20  # refills 2 tokens per second: whole numbers at whole seconds
EPOCH = epoch_length(PERIOD)
T0 = 1_700_000_000 - 1_700_000_000 % EPOCH  # an epoch boundary


class ReferenceBucket:
    """An exact continuous-time token bucket: the model the algorithm must follow."""

    def __init__(self, capacity: int, period: int, now: float) -> None:
        self.capacity = capacity
        self.rate = capacity / period
        self.level = float(capacity)
        self.last = now

    def hit(self, now: float, cost: int) -> bool:
        self.level = min(self.capacity, self.level + self.rate * (now - self.last))
        self.last = now
        if self.level >= cost:
            self.level -= cost
            return True
        return False


def limiter_at(clock: FakeClock) -> Limiter:
    return Limiter(CounterStore(), clock=clock, sync=False)


events = st.lists(
    st.tuples(st.integers(min_value=0, max_value=4), st.integers(min_value=1, max_value=3)),
    min_size=1,
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(events=events)
def test_token_bucket_matches_the_exact_model_at_whole_seconds(
    events: list[tuple[int, int]],
) -> None:
    clock = FakeClock(T0)
    limiter = limiter_at(clock)
    reference = ReferenceBucket(CAPACITY, PERIOD, clock.now)
    for gap, cost in events:
        clock.advance(gap)
        ours = limiter.hit("g", "k", f"{CAPACITY}/{PERIOD}s", algorithm="token_bucket", cost=cost)
        assert ours.allowed == reference.hit(clock.now, cost), (clock.now - T0, cost)


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.floats(min_value=0, max_value=3, allow_nan=False), st.just(1)),
        min_size=1,
        max_size=150,
    )
)
def test_token_bucket_never_admits_what_the_model_refuses(
    events: list[tuple[float, int]],
) -> None:
    """At arbitrary (sub-second) times the register is rounded up: never more, at most 1 less."""
    clock = FakeClock(T0)
    limiter = limiter_at(clock)
    reference = ReferenceBucket(CAPACITY, PERIOD, clock.now)
    for gap, cost in events:
        clock.advance(gap)
        level_before = min(
            reference.capacity,
            reference.level + reference.rate * (clock.now - reference.last),
        )
        ours = limiter.hit("g", "k", f"{CAPACITY}/{PERIOD}s", algorithm="token_bucket")
        exact = reference.hit(clock.now, cost)
        if ours.allowed:
            # Never more than the model, but for the register's rounding slack.
            assert exact or level_before >= cost - 0.003
        elif exact:
            assert level_before < cost + 1  # refused only within one token of the edge
            reference.level += cost  # keep the model on our path: it did not take it
        if not exact:
            assert not ours.allowed


def test_burst_then_refill_and_exact_retry_after(clock: FakeClock) -> None:
    clock.now = T0 + 0.25
    limiter = limiter_at(clock)
    results = [limiter.hit("g", "k", "5/10s", algorithm="token_bucket") for _ in range(6)]
    assert [u.allowed for u in results] == [True] * 5 + [False]
    assert [u.remaining for u in results[:5]] == [4, 3, 2, 1, 0]
    refused = results[-1]
    assert refused.time_left == pytest.approx(2.0)  # one token every 2 s
    clock.advance(refused.time_left - 0.01)
    assert not limiter.hit("g", "k", "5/10s", algorithm="token_bucket").allowed
    clock.advance(0.01)
    assert limiter.hit("g", "k", "5/10s", algorithm="token_bucket").allowed


def test_refused_requests_take_no_tokens(clock: FakeClock) -> None:
    clock.now = T0
    limiter = limiter_at(clock)
    for _ in range(5):
        limiter.hit("g", "k", "5/10s", algorithm="token_bucket")
    for _ in range(50):
        assert not limiter.hit("g", "k", "5/10s", algorithm="token_bucket").allowed
    clock.advance(2.0)
    assert limiter.hit("g", "k", "5/10s", algorithm="token_bucket").allowed


def test_cost_takes_several_tokens_and_too_big_a_cost_never_fits(clock: FakeClock) -> None:
    clock.now = T0
    limiter = limiter_at(clock)
    assert limiter.hit("g", "k", "5/10s", algorithm="token_bucket", cost=3).remaining == 2
    refused = limiter.hit("g", "k", "5/10s", algorithm="token_bucket", cost=3)
    assert not refused.allowed
    assert refused.time_left == pytest.approx(2.0)  # needs one more token
    never = limiter.hit("g", "other", "5/10s", algorithm="token_bucket", cost=6)
    assert not never.allowed
    assert never.time_left == 20.0


def test_get_reads_without_taking(clock: FakeClock) -> None:
    clock.now = T0
    limiter = limiter_at(clock)
    limiter.hit("g", "k", "2/10s", algorithm="token_bucket")
    for _ in range(3):
        usage = limiter.get("g", "k", "2/10s", algorithm="token_bucket")
        assert (usage.count, usage.remaining, usage.should_limit) == (1, 1, False)
    limiter.hit("g", "k", "2/10s", algorithm="token_bucket")
    assert limiter.get("g", "k", "2/10s", algorithm="token_bucket").should_limit


def test_leaky_bucket_reports_its_fill_level(clock: FakeClock) -> None:
    clock.now = T0
    limiter = limiter_at(clock)
    fills = [limiter.hit("g", "k", "4/8s", algorithm="leaky_bucket").count for _ in range(4)]
    assert fills == [1, 2, 3, 4]
    assert not limiter.hit("g", "k", "4/8s", algorithm="leaky_bucket").allowed
    clock.advance(4.0)  # drains two
    assert limiter.get("g", "k", "4/8s", algorithm="leaky_bucket").count == 2


def test_several_rates_take_only_when_all_have_tokens(clock: FakeClock) -> None:
    clock.now = T0
    limiter = limiter_at(clock)
    rate = "3/10s;4/h"
    assert [limiter.hit("g", "k", rate, algorithm="token_bucket").allowed for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    clock.advance(10.0)  # the 10 s bucket is full again; the hourly one has 1 token left
    assert limiter.hit("g", "k", rate, algorithm="token_bucket").allowed
    refused = limiter.hit("g", "k", rate, algorithm="token_bucket")
    assert not refused.allowed
    assert refused.period == 3600  # the hourly bucket is the one that refuses
    # The 10 s bucket did not pay for the refused request.
    assert limiter.get("g", "k", "3/10s", algorithm="token_bucket").remaining == 2


def test_a_bucket_emptied_across_an_epoch_boundary_stays_empty(clock: FakeClock) -> None:
    clock.now = T0 + EPOCH - 1.0
    limiter = limiter_at(clock)
    for _ in range(CAPACITY):
        limiter.hit("g", "k", f"{CAPACITY}/{PERIOD}s", algorithm="token_bucket")
    clock.advance(1.0)  # the next epoch: the level is carried over, not reset to full
    usage = limiter.get("g", "k", f"{CAPACITY}/{PERIOD}s", algorithm="token_bucket")
    assert usage.remaining == 2  # one second of refill


def exchange(stores: list[CounterStore], now: float) -> None:
    """Every node hears every other node's own counts (what sync protocol v2 sends)."""
    sent = [(s.origin, s.own_entries(now)) for s in stores]
    for store in stores:
        for origin, entries in sent:
            store.merge(origin, entries, now)


def run_three_nodes(sync_every: int) -> tuple[set[float], float]:
    """30 hits spread over 3 nodes; returns the nodes' levels and one node's exact level."""
    clock = FakeClock(T0 + 3.0)
    nodes = [limiter_at(clock) for _ in range(3)]
    single = limiter_at(FakeClock(T0 + 3.0))
    rate = f"{CAPACITY}/{PERIOD}s"
    for step in range(30):
        nodes[step % 3].hit("g", "k", rate, algorithm="token_bucket")
        single.hit("g", "k", rate, algorithm="token_bucket")
        if step % sync_every == 0:
            exchange([n.store for n in nodes], clock.now)
        clock.advance(0.3)
        assert isinstance(single.clock, FakeClock)
        single.clock.advance(0.3)
    exchange([n.store for n in nodes], clock.now)
    levels = {_level(n, rate) for n in nodes}
    return levels, _level(single, rate)


def _level(limiter: Limiter, rate: str) -> float:
    usage = limiter.get("g", "k", rate, algorithm="token_bucket")
    return usage.limit - usage.count


def test_nodes_in_sync_derive_exactly_the_single_node_level() -> None:
    levels, exact = run_three_nodes(sync_every=1)
    assert levels == {exact}


def test_nodes_out_of_sync_converge_on_a_level_no_higher_than_exact() -> None:
    # Hits a node did not know of when it took a token make its register too high:
    # the cluster then under-admits (by at most the hits unseen at one instant)
    # until the bucket has refilled; it never over-admits because of it.
    levels, exact = run_three_nodes(sync_every=10)
    assert len(levels) == 1
    assert levels.pop() <= exact


@pytest.mark.parametrize(("tick", "sync"), [(0.02, 0.05), (0.005, 0.05), (0.005, 0.2)])
def test_cluster_over_admission_is_bounded_and_paid_back(tick: float, sync: float) -> None:
    """3 nodes hit in turn, syncing every ``sync`` s: a momentary excess of at most
    R x sync over the exact bucket, which the shared debt pays back."""
    clock = FakeClock(T0)
    nodes = [limiter_at(clock) for _ in range(3)]
    reference = ReferenceBucket(100, 60, clock.now)
    rate, admitted, exact, peak_excess = "100/m", 0, 0, 0
    every = max(1, round(sync / tick))
    for step in range(int(30 / tick)):
        for node in nodes:
            admitted += node.hit("g", "k", rate, algorithm="token_bucket").allowed
            exact += reference.hit(clock.now, 1)
        peak_excess = max(peak_excess, admitted - exact)
        clock.advance(tick)
        if step % every == 0:
            exchange([n.store for n in nodes], clock.now)
    request_rate = 3 / tick
    assert peak_excess <= request_rate * sync
    assert 149 <= exact <= 150  # the burst of 100, then 100/60 per second for 30 s
    assert abs(admitted - exact) <= 1


@pytest.mark.parametrize(
    ("rate", "limit"), [("10/m", 10), ("2/m", 2), ("100/h", 100), ("7/13s", 7)]
)
@settings(max_examples=100, deadline=None)
@given(start=st.integers(min_value=0, max_value=10**6))
def test_a_full_bucket_admits_the_whole_burst(rate: str, limit: int, start: int) -> None:
    """Refill rates that are not whole tokens per second must not lose the last token."""
    limiter = limiter_at(FakeClock(T0 + start))
    admitted = [
        limiter.hit("g", "k", rate, algorithm="token_bucket").allowed for _ in range(limit + 2)
    ]
    assert admitted == [True] * limit + [False, False]


def test_a_debt_shows_as_more_tokens_in_use_than_the_capacity() -> None:
    from django_dratelimit.local.algorithms import bucket_decision

    # The cluster took 3 tokens more than the bucket had (a burst before the sync).
    admitted, decision = bucket_decision(-3.0, 1, 5, 10)
    assert not admitted
    assert decision.hits == 8
    assert decision.time_left == pytest.approx(8.0)  # 4 tokens of refill at 0.5/s
