"""The counter store's resets: generations per key and group, and how they travel."""

from __future__ import annotations

import time

import pytest

from django_dratelimit.local.store import CounterStore, ResetState
from tests.test_store import NOW, PERIOD, S, bk, merge, state, states


@pytest.fixture
def store() -> CounterStore:
    return CounterStore(max_keys=1000, origin="me")


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
