"""The local counter store: G-counter buckets, merges, dirty tracking, fork, threads.

Expiry and eviction: ``test_store_lifetimes``; resets: ``test_store_resets``.
"""

from __future__ import annotations

import threading

import pytest

from django_dratelimit.local.store import (
    BucketKey,
    BucketState,
    CounterStore,
    Entry,
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


def test_one_peers_count_needs_no_dict_until_a_second_origin_or_a_register(
    store: CounterStore,
) -> None:
    merge(store, [state({"A": 2})], NOW)
    bucket = store._buckets[bk()]
    assert (bucket.peer, bucket.peer_count, bucket.others) == ("A", 2, None)
    merge(store, [state({"A": 3})], NOW)
    assert (bucket.peer, bucket.peer_count, bucket.others) == ("A", 3, None)
    merge(store, [state({"B": 1})], NOW)
    assert (bucket.peer, bucket.others) == (None, {"A": 3, "B": 1})
    assert store.total(bk()) == 4
    assert states(store, [bk()]) == [state({"A": 3, "B": 1})]


def test_a_register_joins_a_peers_count(store: CounterStore) -> None:
    merge(store, [state({"A": 2})], NOW)
    merge(store, [state({"A": 2}, key="m")], NOW)
    store.merge("A", [Entry("g", "m", PERIOD, S, 0, 2, 9)], NOW)  # a register by merge
    assert store.take(bk(), NOW, lambda total, register: (1, 7, 0.0)) == (1, None)  # by take
    assert store.read(bk()) == (3, 7)
    assert store.read(bk("m")) == (2, 9)
    assert states(store, [bk(), bk("m")]) == [
        state({"A": 2, "me": 1, "~max": 7}),
        state({"A": 2, "~max": 9}, key="m"),
    ]
    assert store.relay_entries(NOW, exclude=[]) == {
        "A": [Entry("g", "k", PERIOD, S, 0, 2, 7), Entry("g", "m", PERIOD, S, 0, 2, 9)]
    }


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
    generation = store._generations.of("g", "a")
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
