"""The local counter store: G-counter buckets, expiry, eviction, dirty tracking, resets, fork."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from django_dratelimit.local.store import (
    EVICTION_WARNING_EVERY,
    BucketKey,
    BucketState,
    CounterStore,
    Entry,
    ResetState,
)

PERIOD = 60
S = 1_699_999_980  # a minute boundary
NOW = S + 10.0


def bk(key: str = "k", group: str = "g", period: int = PERIOD, start: int = S) -> BucketKey:
    return (group, key, period, start)


def state(
    counts: dict[str, int],
    key: str = "k",
    group: str = "g",
    period: int = PERIOD,
    start: int = S,
    generation: int = 0,
) -> BucketState:
    return BucketState(group, key, period, start, generation, counts)


def entry(amount: int, key: str = "k", start: int = S, generation: int = 0) -> Entry:
    """This process's own count of a bucket, as ``take_dirty`` hands it to the sync."""
    return Entry("g", key, PERIOD, start, generation, amount, 0)


def merge(store: CounterStore, states: list[BucketState], now: float) -> int:
    """Merge buckets as peers would send them (each origin its own); how many buckets grew."""
    grew = set()
    for s in states:
        for origin, amount in s.counts.items():
            bucket = Entry(s.group, s.key, s.period, s.window_start, s.generation, amount, 0)
            if store.merge(origin, [bucket], now):
                grew.add(bucket[:4])
    return len(grew)


def states(store: CounterStore, bucket_keys: list[BucketKey]) -> list[BucketState]:
    """The buckets with every origin's count, in the order asked for."""
    live = {s[:4]: s for s in store.live_states(NOW)}
    return [live[k] for k in bucket_keys if k in live]


@pytest.fixture
def store() -> CounterStore:
    return CounterStore(max_keys=1000, origin="me")


def snapshot(store: CounterStore, now: float = NOW) -> dict[BucketKey, tuple[int, dict[str, int]]]:
    return {
        (s.group, s.key, s.period, s.window_start): (s.generation, s.counts)
        for s in store.live_states(now)
    }


# -- add / total ----------------------------------------------------------------------


def test_add_returns_the_running_total(store: CounterStore) -> None:
    assert store.total(bk()) == 0
    assert store.add(bk(), 1, NOW) == 1
    assert store.add(bk(), 1, NOW) == 2
    assert store.add(bk(), 5, NOW) == 7
    assert store.total(bk()) == 7
    assert len(store) == 1


def test_buckets_are_separate(store: CounterStore) -> None:
    store.add(bk("a"), 1, NOW)
    store.add(bk("b"), 2, NOW)
    store.add(bk("a", group="h"), 3, NOW)
    store.add(bk("a", period=3600, start=S - S % 3600), 4, NOW)
    store.add(bk("a", start=S + PERIOD), 5, NOW)
    assert store.total(bk("a")) == 1
    assert store.total(bk("b")) == 2
    assert store.total(bk("a", group="h")) == 3
    assert store.total(bk("a", period=3600, start=S - S % 3600)) == 4
    assert store.total(bk("a", start=S + PERIOD)) == 5
    assert len(store) == 5


def test_a_fresh_store_has_its_own_origin() -> None:
    a, b = CounterStore(), CounterStore()
    assert a.origin != b.origin
    assert len(a.origin) == 32
    assert CounterStore(origin="named").origin == "named"


def test_on_hit_is_called_with_the_bucket_key(store: CounterStore) -> None:
    seen: list[BucketKey] = []
    store.track_dirty = True  # the sync thread sets both
    store.on_hit = seen.append
    store.add(bk("a"), 1, NOW)
    store.add(bk("b"), 1, NOW)
    assert seen == [bk("a"), bk("b")]


# -- merge --------------------------------------------------------------------------


def test_merge_adds_other_origins(store: CounterStore) -> None:
    store.add(bk(), 2, NOW)
    assert merge(store, [state({"A": 3, "B": 4})], NOW) == 1
    assert store.total(bk()) == 9
    assert states(store, [bk()]) == [state({"me": 2, "A": 3, "B": 4})]


def test_merge_keeps_the_max_per_origin(store: CounterStore) -> None:
    merge(store, [state({"A": 5})], NOW)
    assert merge(store, [state({"A": 3})], NOW) == 0  # older news: ignored
    assert store.total(bk()) == 5
    assert merge(store, [state({"A": 5})], NOW) == 0  # a duplicate: ignored
    assert store.total(bk()) == 5
    assert merge(store, [state({"A": 8})], NOW) == 1
    assert store.total(bk()) == 8
    assert merge(store, [state({"A": 2, "B": 1})], NOW) == 1  # B grew, A did not
    assert store.total(bk()) == 9


def test_merge_of_the_own_origin_only_ever_raises_it(store: CounterStore) -> None:
    store.add(bk(), 2, NOW)
    # An echo of our own message, or a relay of an old count, changes nothing.
    assert merge(store, [state({"me": 1})], NOW) == 0
    assert merge(store, [state({"me": 2})], NOW) == 0
    assert store.total(bk()) == 2
    # A higher count means this process lost the bucket (evicted): take it back.
    assert merge(store, [state({"me": 100})], NOW) == 1
    assert store.total(bk()) == 100
    assert states(store, [bk()])[0].counts == {"me": 100}


def test_merge_counts_changed_buckets(store: CounterStore) -> None:
    changed = store.merge("A", [entry(1, key="a"), entry(1, key="b"), entry(1, key="a")], NOW)
    assert changed == 2
    assert store.total(bk("a")) == store.total(bk("b")) == 1


def test_merge_lands_in_the_window_it_was_counted_in(store: CounterStore) -> None:
    merge(store, [state({"A": 4}, start=S - PERIOD)], NOW)
    assert store.total(bk(start=S - PERIOD)) == 4
    assert store.total(bk()) == 0


def test_merge_drops_expired_windows(store: CounterStore) -> None:
    # A bucket lives two periods (the sliding window still reads the previous one).
    assert merge(store, [state({"A": 4}, start=S - 2 * PERIOD)], NOW) == 0
    assert store.total(bk(start=S - 2 * PERIOD)) == 0
    assert len(store) == 0
    assert merge(store, [state({"A": 4}, start=S - PERIOD)], S + PERIOD - 0.001) == 1


def test_merge_does_not_mark_dirty(store: CounterStore) -> None:
    store.track_dirty = True
    merge(store, [state({"A": 4})], NOW)
    assert store.take_dirty() == []


def test_bucket_state_total() -> None:
    assert state({"A": 2, "B": 3}).total == 5
    assert state({}).total == 0


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


# -- dirty tracking and states --------------------------------------------------------------


def test_nothing_is_dirty_unless_tracked(store: CounterStore) -> None:
    store.add(bk(), 1, NOW)
    assert store.take_dirty() == []


def test_take_dirty_returns_absolute_counts_once(store: CounterStore) -> None:
    store.track_dirty = True
    merge(store, [state({"A": 3}, key="a")], NOW)
    store.add(bk("a"), 1, NOW)
    store.add(bk("a"), 1, NOW)
    store.add(bk("b"), 4, NOW)
    dirty = sorted(store.take_dirty())
    # Only this process's own counts: peers send theirs themselves (protocol v2).
    assert dirty == [entry(2, key="a"), entry(4, key="b")]
    assert store.take_dirty() == []
    store.add(bk("a"), 1, NOW)
    assert store.take_dirty() == [entry(3, key="a")]


def test_mark_dirty_puts_keys_back(store: CounterStore) -> None:
    store.track_dirty = True
    store.add(bk("a"), 1, NOW)
    store.add(bk("b"), 1, NOW)
    sent = store.take_dirty()
    store.mark_dirty([(s.group, s.key, s.period, s.window_start) for s in sent] + [bk("gone")])
    assert sorted(store.take_dirty()) == sorted(sent)
    assert store.total(bk("gone")) == 0
    assert len(store) == 2


def test_a_bucket_is_queued_once_however_many_hits() -> None:
    store = CounterStore(origin="me")
    store.track_dirty = True
    for _ in range(100):
        store.add(bk("a"), 1, NOW)
    assert store._dirty == [bk("a")]
    assert store.take_dirty() == [entry(100, key="a")]


def test_a_bucket_reset_and_counted_again_is_sent_once() -> None:
    store = CounterStore(origin="me")
    store.track_dirty = True
    store.add(bk("a"), 1, NOW)
    store.reset("g", "a")
    store.add(bk("a"), 2, NOW)  # a new bucket: queued again
    generation = store._generation("g", "a")
    assert store.take_dirty() == [entry(2, key="a", generation=generation)]


def test_the_queue_stays_bounded_when_nobody_drains_it() -> None:
    # Broker down: the sync thread does not take the queue, buckets come and go.
    store = CounterStore(max_keys=100, origin="me")
    store.track_dirty = True
    for i in range(20_000):
        store.add(bk(f"k{i}"), 1, NOW + i / 1000)
    assert len(store) == 100
    assert len(store._dirty) <= 2 * 100 + 1024 + 1000  # plus at most a second's creations
    assert {s.key for s in store.take_dirty()} == {f"k{i}" for i in range(19_900, 20_000)}


def test_stop_tracking_forgets_the_queue() -> None:
    store = CounterStore(origin="me")
    store.track_dirty = True
    woken: list[BucketKey] = []
    store.on_hit = woken.append
    store.add(bk("a"), 1, NOW)
    store.reset("g", "b")
    store.stop_tracking()
    store.add(bk("a"), 0, NOW)
    assert woken == [bk("a")]  # not woken any more
    assert store.track_dirty is False
    assert store.take_pending_resets() == []
    store.track_dirty = True  # a new sync thread later: the bucket is queued afresh
    store.add(bk("a"), 1, NOW)
    assert store.take_dirty() == [entry(2, key="a")]


def test_mark_dirty_does_not_queue_twice(store: CounterStore) -> None:
    store.track_dirty = True
    store.add(bk("a"), 1, NOW)
    store.mark_dirty([bk("a"), bk("a")])
    assert store._dirty == [bk("a")]


def test_states(store: CounterStore) -> None:
    store.add(bk("a"), 2, NOW)
    merge(store, [state({"A": 1}, key="b")], NOW)
    assert states(store, [bk("a"), bk("b"), bk("missing")]) == [
        state({"me": 2}, key="a"),
        state({"A": 1}, key="b"),
    ]
    assert states(store, []) == []


def test_live_states_own_entries_and_relays(store: CounterStore) -> None:
    store.add(bk("mine"), 2, NOW)
    merge(store, [state({"A": 1}, key="theirs")], NOW)
    merge(store, [state({"A": 1, "B": 4}, key="both")], NOW)
    store.add(bk("both"), 1, NOW)
    assert {s.key for s in store.live_states(NOW)} == {"mine", "theirs", "both"}
    assert sorted(store.own_entries(NOW)) == [entry(1, key="both"), entry(2, key="mine")]
    relay = store.relay_entries(NOW, exclude=["B"])
    assert {o: sorted(e) for o, e in relay.items()} == {
        "A": [entry(1, key="both"), entry(1, key="theirs")]
    }
    assert store.origins(NOW) == {"me", "A", "B"}
    assert store.own_entries(S + 2 * PERIOD) == []  # windows that ended are not sent


# -- resets and generations -------------------------------------------------------------------


def test_reset_a_key(store: CounterStore) -> None:
    store.add(bk("a"), 3, NOW)
    store.add(bk("a", start=S - PERIOD), 3, NOW)
    store.add(bk("b"), 3, NOW)
    assert store.reset("g", "a", generation=100) == 2
    assert store.total(bk("a")) == 0
    assert store.total(bk("a", start=S - PERIOD)) == 0
    assert store.total(bk("b")) == 3
    assert store.add(bk("a"), 1, NOW) == 1
    assert states(store, [bk("a")]) == [state({"me": 1}, key="a", generation=100)]
    assert states(store, [bk("b")])[0].generation == 0


def test_reset_a_group(store: CounterStore) -> None:
    store.add(bk("a"), 3, NOW)
    store.add(bk("b"), 3, NOW)
    store.add(bk("a", group="h"), 3, NOW)
    assert store.reset("g", generation=100) == 2
    assert store.total(bk("a")) == store.total(bk("b")) == 0
    assert store.total(bk("a", group="h")) == 3
    store.add(bk("c"), 1, NOW)
    assert states(store, [bk("c")])[0].generation == 100


def test_reset_without_generation_uses_the_wall_clock(store: CounterStore) -> None:
    before = time.time_ns()
    store.add(bk(), 1, NOW)
    assert store.reset("g", "k") == 1
    store.add(bk(), 1, NOW)
    generation = states(store, [bk()])[0].generation
    assert before <= generation <= time.time_ns()


def test_a_merge_from_an_older_generation_is_dropped(store: CounterStore) -> None:
    store.reset("g", "k", generation=100)
    assert merge(store, [state({"A": 7}, generation=50)], NOW) == 0
    assert merge(store, [state({"A": 7}, generation=0)], NOW) == 0
    assert store.total(bk()) == 0
    assert len(store) == 0
    assert merge(store, [state({"A": 7}, generation=100)], NOW) == 1
    assert store.total(bk()) == 7


def test_a_merge_from_an_older_group_generation_is_dropped(store: CounterStore) -> None:
    store.reset("g", generation=100)
    assert merge(store, [state({"A": 7}, key="any", generation=99)], NOW) == 0
    assert store.total(bk("any")) == 0


def test_a_merge_from_a_newer_generation_adopts_it(store: CounterStore) -> None:
    store.add(bk(), 5, NOW)
    store.add(bk(start=S - PERIOD), 5, NOW)
    merge(store, [state({"A": 9})], NOW)
    store.add(bk("other"), 1, NOW)
    # Another process reset the key and has counted 2 hits since.
    assert merge(store, [state({"B": 2}, generation=200)], NOW) == 1
    assert store.total(bk()) == 2  # our 5 and A's 9 were before the reset
    assert store.total(bk(start=S - PERIOD)) == 0
    assert store.total(bk("other")) == 1
    assert states(store, [bk()]) == [state({"B": 2}, generation=200)]
    # The adopted generation now rules: older counts cannot come back.
    assert merge(store, [state({"A": 9})], NOW) == 0
    assert store.total(bk()) == 2
    # New local hits carry it.
    store.add(bk(), 1, NOW)
    assert states(store, [bk()]) == [state({"B": 2, "me": 1}, generation=200)]


def test_apply_resets_is_idempotent(store: CounterStore) -> None:
    store.add(bk("a"), 1, NOW)
    store.add(bk("b"), 1, NOW)
    resets = [ResetState("g", "a", 100), ResetState("g", None, 50)]
    assert store.apply_resets(resets) == 2
    store.add(bk("a"), 1, NOW)
    store.add(bk("b"), 1, NOW)
    assert store.apply_resets(resets) == 0
    assert store.apply_resets(resets + resets) == 0
    assert store.total(bk("a")) == store.total(bk("b")) == 1
    # An older reset arriving late changes nothing either.
    assert store.apply_resets([ResetState("g", "a", 10), ResetState("g", None, 10)]) == 0
    assert store.total(bk("a")) == 1
    assert states(store, [bk("a")])[0].generation == 100
    assert states(store, [bk("b")])[0].generation == 50


def test_a_key_reset_older_than_the_group_reset_does_nothing(store: CounterStore) -> None:
    store.reset("g", generation=100)
    store.add(bk("a"), 1, NOW)
    assert store.apply_resets([ResetState("g", "a", 90)]) == 0
    assert store.total(bk("a")) == 1


def test_resets_travel_when_tracked(store: CounterStore) -> None:
    store.reset("g", "untracked", generation=5)
    assert store.take_pending_resets() == []
    store.track_dirty = True
    store.reset("g", "a", generation=100)
    store.reset("g", generation=200)
    store.apply_resets([ResetState("h", None, 300)])  # heard from others: not re-sent
    assert store.take_pending_resets() == [ResetState("g", "a", 100), ResetState("g", None, 200)]
    assert store.take_pending_resets() == []


def test_reset_drops_dirty_entries(store: CounterStore) -> None:
    store.track_dirty = True
    store.add(bk("a"), 1, NOW)
    store.reset("g", "a", generation=100)
    assert store.take_dirty() == []


def test_reset_states_remember_recent_resets(store: CounterStore) -> None:
    recent = time.time_ns()
    store.reset("g", "a", generation=recent)
    store.reset("h", generation=recent + 1)
    store.reset("g", "ancient", generation=1)  # older than any live bucket: forgotten
    assert sorted(store.reset_states(), key=lambda r: r.generation) == [
        ResetState("g", "a", recent),
        ResetState("h", None, recent + 1),
    ]


def test_a_local_reset_wins_after_adopting_a_generation_from_a_clock_ahead(
    store: CounterStore,
) -> None:
    # A peer whose clock runs 30 s ahead (the protocol accepts up to 60 s) reset the key;
    # this process adopted that generation with the peer's hits.
    ahead = time.time_ns() + 30 * 10**9
    merge(store, [state({"B": 1}, generation=ahead)], NOW)
    store.add(bk(), 4, NOW)
    assert store.total(bk()) == 5
    # An operator now resets the key here: it must take effect.
    assert store.reset("g", "k") == 1
    assert store.total(bk()) == 0


# -- fork ---------------------------------------------------------------------------------


def test_after_fork_the_parents_hits_move_under_its_old_origin(store: CounterStore) -> None:
    store.track_dirty = True
    store.on_hit = lambda key: None
    store.add(bk("a"), 3, NOW)
    store.add(bk("b"), 1, NOW)
    merge(store, [state({"A": 2}, key="a"), state({"A": 5}, key="c")], NOW)
    store.reset("g", "z", generation=1)
    parent = store.origin
    before = {s.key: s.total for s in store.live_states(NOW)}

    store._after_fork_in_child()

    assert store.origin != parent
    assert len(store.origin) == 32
    assert {s.key: s.total for s in store.live_states(NOW)} == before
    assert sorted(store.live_states(NOW)) == [
        state({"A": 2, parent: 3}, key="a"),
        state({parent: 1}, key="b"),
        state({"A": 5}, key="c"),
    ]
    assert store.own_entries(NOW) == []
    assert store.take_dirty() == []
    assert store.take_pending_resets() == []
    assert store.track_dirty is False
    assert store.on_hit is None
    # The child counts under its own origin from now on.
    store.track_dirty = True
    assert store.add(bk("a"), 1, NOW) == 6
    assert store.take_dirty() == [entry(1, key="a")]
    # And the parent's later, higher counts merge in as any other origin's.
    merge(store, [state({parent: 10}, key="a")], NOW)
    assert store.total(bk("a")) == 13


def test_after_fork_the_lock_is_fresh(store: CounterStore) -> None:
    store._lock.acquire()  # as if a thread of the parent held it at fork time
    store._after_fork_in_child()
    assert store.add(bk(), 1, NOW) == 1


# -- threads --------------------------------------------------------------------------------


def test_concurrent_adds_are_exact() -> None:
    store = CounterStore(max_keys=1000, origin="me")
    store.track_dirty = True
    threads_count, hits = 8, 10_000
    barrier = threading.Barrier(threads_count)

    def worker() -> None:
        barrier.wait()
        for _ in range(hits):
            store.add(bk(), 1, NOW)

    threads = [threading.Thread(target=worker) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.total(bk()) == threads_count * hits
    assert store.take_dirty() == [entry(threads_count * hits)]


def test_concurrent_adds_and_merges_are_exact() -> None:
    store = CounterStore(max_keys=1000, origin="me")
    rounds = 2_000
    barrier = threading.Barrier(4)

    def adder() -> None:
        barrier.wait()
        for _ in range(rounds):
            store.add(bk(), 1, NOW)

    def merger(origin: str) -> None:
        barrier.wait()
        for count in range(1, rounds + 1):
            merge(store, [state({origin: count})], NOW)

    threads = [
        threading.Thread(target=adder),
        threading.Thread(target=adder),
        threading.Thread(target=merger, args=("A",)),
        threading.Thread(target=merger, args=("B",)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.total(bk()) == 4 * rounds
    assert states(store, [bk()]) == [state({"me": 2 * rounds, "A": rounds, "B": rounds})]


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
