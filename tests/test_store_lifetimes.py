"""The counter store's bookkeeping of lifetimes: expiry, MAX_KEYS, eviction order and cost."""

from __future__ import annotations

import gc
import logging
import tracemalloc

import pytest

from django_dratelimit.local.store import EVICTION_WARNING_EVERY, CounterStore, Entry
from tests.test_store import NOW, PERIOD, S, bk, merge, state


@pytest.fixture
def store() -> CounterStore:
    return CounterStore(max_keys=1000, origin="me")


# -- expiry -----------------------------------------------------------------------------


def test_expired_buckets_are_swept_when_a_bucket_is_created(store: CounterStore) -> None:
    store.track_dirty = True
    store.add(bk("old"), 3, float(S))
    # Still inside its lifetime (start + 2 periods): kept.
    store.add(bk("a", start=S + PERIOD), 1, S + 2 * PERIOD - 0.5)
    assert store.total(bk("old")) == 3
    # After start + 2 periods it has expired (sweeps are a second apart).
    store.add(bk("b", start=S + 2 * PERIOD), 1, S + 2 * PERIOD + 0.5)
    assert store.total(bk("old")) == 0
    assert len(store) == 2
    assert {(s.key, s.window_start) for s in store.take_dirty()} == {
        ("a", S + PERIOD),
        ("b", S + 2 * PERIOD),
    }


def test_sweeping_runs_at_most_once_a_second(store: CounterStore) -> None:
    store.add(bk("old"), 1, float(S))
    store.add(bk("a", start=S + PERIOD), 1, S + 2 * PERIOD - 0.5)  # sweeps, keeps "old"
    store.add(bk("b", start=S + 2 * PERIOD), 1, S + 2 * PERIOD + 0.25)  # too soon to sweep
    assert store.total(bk("old")) == 1
    store.add(bk("c", start=S + 2 * PERIOD), 1, S + 2 * PERIOD + 0.5)  # a second later
    assert store.total(bk("old")) == 0


def test_live_states_skip_expired_buckets_even_before_a_sweep(store: CounterStore) -> None:
    store.add(bk(), 1, NOW)
    assert len(store.live_states(S + 2 * PERIOD - 0.001)) == 1
    assert store.live_states(float(S + 2 * PERIOD)) == []
    assert len(store) == 1  # not swept: nothing was created since


def test_longer_periods_live_longer(store: CounterStore) -> None:
    hour = S - S % 3600
    store.add(bk("h", period=3600, start=hour), 1, NOW)
    store.add(bk("m"), 1, NOW)
    store.add(bk("x", start=hour + 7200), 1, float(hour + 7199))
    assert store.total(bk("h", period=3600, start=hour)) == 1
    assert store.total(bk("m")) == 0


# -- MAX_KEYS -----------------------------------------------------------------------------


def _eviction_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "django_dratelimit" and r.levelno == logging.WARNING and "MAX_KEYS" in r.msg
    ]


def test_max_keys_evicts_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    store = CounterStore(max_keys=3, origin="me")
    hour = S - S % 3600
    keys = [bk(f"k{i}", period=3600, start=hour) for i in range(6)]
    with caplog.at_level(logging.WARNING, logger="django_dratelimit"):
        for key in keys[:3]:
            store.add(key, 1, NOW)
        store.add(keys[0], 1, NOW)  # touching a bucket does not make it younger
        assert _eviction_warnings(caplog) == []
        store.add(keys[3], 1, NOW)
        assert len(store) == 3
        assert store.evictions == 1
        assert store.total(keys[0]) == 0
        assert [store.total(k) for k in keys[1:4]] == [1, 1, 1]
        store.add(keys[4], 1, NOW + EVICTION_WARNING_EVERY - 1)
        assert store.evictions == 2
        assert store.total(keys[1]) == 0
        assert len(_eviction_warnings(caplog)) == 1  # one warning a minute
        store.add(keys[5], 1, NOW + EVICTION_WARNING_EVERY)
        assert store.evictions == 3
    warnings = _eviction_warnings(caplog)
    assert len(warnings) == 2
    assert "MAX_KEYS=3" in warnings[0].getMessage()
    assert "3 evicted so far" in warnings[1].getMessage()


def test_a_flood_of_long_windows_does_not_evict_a_new_short_one_first() -> None:
    # A login limited by username at 5/d and by IP at 10/m, an attacker trying a
    # new username each time: the IP's minute bucket must outlive the next creations.
    store = CounterStore(max_keys=10, origin="me")
    day = S - S % 86400
    ip = bk("203.0.113.7", group="ip")
    for i in range(10):
        store.add(bk(f"user{i}", group="user", period=86400, start=day), 1, NOW)
        store.add(ip, 1, NOW)
    assert store.total(ip) == 10


def test_a_unique_key_flood_evicts_in_creation_order() -> None:
    # Creation order, not key order: a bucket created last is never the next to go.
    store = CounterStore(max_keys=100, origin="me")
    keys = [bk(f"k{i:05d}"[::-1]) for i in range(5000)]  # names out of sorted order
    for key in keys:
        store.add(key, 1, NOW)
    assert store.evictions == 4900
    assert [store.total(k) for k in keys[-100:]] == [1] * 100


def test_eviction_after_resets_left_stale_entries() -> None:
    store = CounterStore(max_keys=3, origin="me")
    for name in "abc":
        store.add(bk(name), 1, NOW)
    store.reset("g", "a")  # its heap entry is now stale
    store.add(bk("a"), 1, NOW)  # re-created: the youngest
    store.add(bk("d"), 1, NOW)
    assert len(store) == 3
    assert store.total(bk("b")) == 0  # b, the oldest live bucket, went
    assert [store.total(bk(n)) for n in "cad"] == [1, 1, 1]


def test_eviction_by_merge_and_dirty_cleanup() -> None:
    store = CounterStore(max_keys=2, origin="me")
    store.track_dirty = True
    store.add(bk("a"), 1, NOW)
    merge(store, [state({"A": 1}, key="b"), state({"A": 1}, key="c")], NOW)
    assert len(store) == 2
    assert store.total(bk("a")) == 0
    assert store.take_dirty() == []  # the evicted bucket is not sent


def test_existing_buckets_are_never_evicted_by_their_own_hits() -> None:
    store = CounterStore(max_keys=2, origin="me")
    store.add(bk("a"), 1, NOW)
    store.add(bk("b"), 1, NOW)
    for _ in range(10):
        store.add(bk("a"), 1, NOW)
        store.add(bk("b"), 1, NOW)
    assert store.evictions == 0
    assert store.total(bk("a")) == store.total(bk("b")) == 11


def test_eviction_skips_a_bucket_that_is_limiting_someone() -> None:
    store = CounterStore(max_keys=3, origin="me")
    store.add(bk("victim"), 5, NOW, limit=5)  # at its limit: refusing this client
    for i in range(10):  # a flood of fresh keys
        store.add(bk(f"flood{i}"), 1, NOW, limit=5)
    assert store.total(bk("victim")) == 5
    assert len(store) == 3
    assert store.evictions == 8


def test_eviction_still_evicts_when_every_bucket_is_limiting() -> None:
    store = CounterStore(max_keys=2, origin="me")
    for i in range(4):
        store.add(bk(f"k{i}"), 5, NOW, limit=5)
    assert len(store) == 2


# -- the bookkeeping's size ----------------------------------------------------------------


def test_resets_and_re_creations_leave_bounded_bookkeeping() -> None:
    # A hot key reset again and again: each re-creation leaves a stale entry behind,
    # which the sweep (once a second of the store's clock) compacts.
    store = CounterStore(max_keys=10, origin="me")
    for i in range(5000):
        store.add(bk("hot"), 1, NOW + i / 1000)
        store.reset("g", "hot", generation=i + 1)
    store.add(bk("hot"), 1, NOW + 6.0)
    lifetimes = store._lifetimes
    bound = len(store) * 5 // 4 + 1024 + 1000  # compaction threshold + a second of creations
    assert len(lifetimes._created) <= bound
    assert lifetimes._ending_count == sum(map(len, lifetimes._ending.values())) <= bound
    # The live bucket is still swept when its window ends, and evicted in its turn.
    for i in range(10):
        store.add(bk(f"k{i}"), 1, NOW + 6.0)
    assert store.total(bk("hot")) == 0
    assert store.evictions == 1


def test_a_flood_between_two_sweeps_leaves_bounded_bookkeeping() -> None:
    # Every eviction leaves the evicted key listed under its window's end; with the
    # clock standing still no sweep runs, so the evictions must compact it themselves.
    store = CounterStore(max_keys=100, origin="me")
    for i in range(5000):
        store.add(bk(f"flood{i}"), 1, NOW)
    assert store.evictions == 4900
    assert store._lifetimes._ending_count == len(store._lifetimes._created) == 100


def test_staggered_windows_share_a_few_sweep_lists() -> None:
    # STAGGER_WINDOWS: each key's day starts at its own second, so its bucket ends at
    # its own second; the sweep lists them by a 64th of the day (1,350 s), not by second.
    store = CounterStore(max_keys=1000, origin="me")
    day = 86400
    base = S - S % day
    for i in range(1000):
        store.add(bk(f"k{i}", period=day, start=base - 7 * i), 1, NOW)
    assert len(store._lifetimes._ending) <= 7000 // 1350 + 2  # the ends span 7,000 s
    # Never swept before its end; swept within 1,350 s after it.
    last = bk("k999", period=day, start=base - 7 * 999)
    end = base - 7 * 999 + 2 * day
    store.add(bk("a", period=day, start=end - day), 1, end - 0.5)
    assert store.total(last) == 1
    store.add(bk("b", period=day, start=end - day), 1, end + day // 64)
    assert store.total(last) == 0


def test_the_dict_of_buckets_is_copied_smaller_under_churn_and_nothing_is_lost() -> None:
    # 5,000 keys through a store of 100: the dict is copied every 1,074 deletions,
    # in the middle of one merge; a key sent twice must find its bucket in the copy.
    store = CounterStore(max_keys=100, origin="me")
    first = store._buckets
    names = [f"k{i}" for i in range(5000)]
    entries = [Entry(*bk(n), 0, count, 0) for n in names for count in (1, 2)]
    assert store.merge("A", entries, NOW) == 10_000
    assert store._buckets is not first
    assert store._lifetimes._buckets is store._buckets
    assert store.evictions == 4900  # one bucket a key, not one an entry
    assert [store.total(bk(n)) for n in names[-100:]] == [2] * 100
    store.add(bk("new"), 1, NOW)
    assert store.total(bk("new")) == 1
    assert len(store) == 100


def test_buckets_that_ended_are_not_kept_alive_by_the_bookkeeping(store: CounterStore) -> None:
    for i in range(500):
        store.add(bk(f"k{i}"), 1, NOW)
    later = bk("next", start=S + 2 * PERIOD)
    store.add(later, 1, S + 2 * PERIOD + 0.5)  # sweeps the first window's buckets
    assert len(store) == 1
    assert list(store._lifetimes._created) == [store._buckets[later]]
    assert store._lifetimes._ending_count == 1


@pytest.mark.parametrize("made_by", ["add", "merge"])
def test_a_bucket_costs_the_store_under_280_bytes(made_by: str) -> None:
    # Beyond the key's string, which the request brings: the key tuple, the bucket,
    # its dict entry and its two bookkeeping pointers (~230 bytes). A per-bucket dict
    # (64 bytes empty, 184 with one peer's count) or a heap tuple (56) would fail.
    n = 10_000
    names = [f"10.0.{i >> 8}.{i & 255}" for i in range(n)]
    warm = CounterStore(max_keys=10, origin="me")  # the code paths' own first allocations
    warm.add(bk("w"), 1, NOW)
    warm.merge("0" * 32, [Entry(*bk("v"), 0, 1, 0)], NOW)
    store = CounterStore(max_keys=n, origin="me")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        if made_by == "add":
            for name in names:
                store.add(("g", name, PERIOD, S), 1, NOW)
        else:  # as a peer's message brings them: one origin's count each
            store.merge("0" * 32, (("g", name, PERIOD, S, 0, 1, 0) for name in names), NOW)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(store) == n
    assert used / n < 280, used / n
