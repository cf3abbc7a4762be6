"""Budgets when the broker goes: every bucket decides on its last share, not on what remains.

A bucket far from its limit has no plan (it decides on totals). Cut off, a
process deciding on totals could take all that remains alone, and each side of
a partition would admit up to the limit (tests/faults/test_partition_budgets.py,
the "far" cut, measured 167 of a limit of 100 before ``cut_off`` existed).
"""

from __future__ import annotations

from django_dratelimit.limiter import Limiter
from django_dratelimit.local.store import BucketKey, CounterStore, Entry
from django_dratelimit.sync.node import SyncNode
from tests.conftest import FakeClock

ROUND = 0.1


def clustered(clock: FakeClock) -> tuple[Limiter, CounterStore]:
    store = CounterStore(origin="me")
    store.processes, store.members = 4, ["b", "c", "d"]
    return Limiter(store, clock=clock, sync=False), store


def far_from_its_limit(limiter: Limiter, store: CounterStore, clock: FakeClock) -> BucketKey:
    """10 hits here and 20 from b, equal promises lapsed: 30 of 100, no plan."""
    bucket = ("g", "k", 60, int(clock.now // 60) * 60)
    for _ in range(10):
        limiter.hit("g", "k", "100/m")
    store.merge("b", [Entry(*bucket, 0, 20, 0)], clock.now)
    clock.advance(2.0)
    store.rebudget([bucket], ["b", "c", "d"], clock.now, ROUND)
    assert store._buckets[bucket].plan is None
    return bucket


def test_cut_off_far_from_the_limit_admits_an_equal_share_of_what_remains(
    clock: FakeClock,
) -> None:
    limiter, store = clustered(clock)
    far_from_its_limit(limiter, store, clock)
    store.cut_off()
    clock.advance(30)  # no more pictures, however long
    admitted = sum(limiter.hit("g", "k", "100/m").allowed for _ in range(200))
    assert admitted == (100 - 30) // 4  # not the 70 that remain


def test_the_first_picture_after_the_outage_decides_on_totals_again(clock: FakeClock) -> None:
    limiter, store = clustered(clock)
    bucket = far_from_its_limit(limiter, store, clock)
    store.cut_off()
    for _ in range(5):
        limiter.hit("g", "k", "100/m")
    clock.advance(0.1)  # the broker is back at once: a blip
    store.rebudget([bucket], ["b", "c", "d"], clock.now, ROUND)
    assert store._buckets[bucket].plan is None  # far from the limit: no false 429s
    assert sum(limiter.hit("g", "k", "100/m").allowed for _ in range(100)) == 100 - 35


def test_cut_off_keeps_the_plan_of_a_bucket_in_budget_mode(clock: FakeClock) -> None:
    limiter, store = clustered(clock)
    bucket = ("g", "k", 60, int(clock.now // 60) * 60)
    limiter.hit("g", "k", "100/m")
    store.merge("b", [Entry(*bucket, 0, 80, 0)], clock.now)
    store.rebudget([bucket], ["b", "c", "d"], clock.now, ROUND)
    plan = store._buckets[bucket].plan
    assert plan is not None
    store.cut_off()
    assert store._buckets[bucket].plan is plan


def test_alone_cut_off_changes_nothing(clock: FakeClock) -> None:
    store = CounterStore(origin="me")
    limiter = Limiter(store, clock=clock, sync=False)
    limiter.hit("g", "k", "10/m")
    store.cut_off()
    assert store.planned(clock.now) == {}
    assert sum(limiter.hit("g", "k", "10/m").allowed for _ in range(20)) == 9


def test_the_node_cuts_its_buckets_off_at_its_first_broker_error(clock: FakeClock) -> None:
    limiter, store = clustered(clock)
    bucket = far_from_its_limit(limiter, store, clock)
    node = SyncNode(store, None, clock=clock, keys=[b"k" * 32])
    node._broker_error("send", ConnectionError("gone"))
    plan = store._buckets[bucket].plan
    assert plan is not None
    assert plan.allowed == 10 + 70 // 4
    node._broker_error("send", ConnectionError("still gone"))  # degraded already: kept
    assert store._buckets[bucket].plan is plan
