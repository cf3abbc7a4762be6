"""Convergence: lost, repeated and reordered sync messages cannot corrupt a total."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from typing import Any

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from django_dratelimit import protocol
from django_dratelimit.store import BucketKey, BucketState, CounterStore, ResetState

PERIOD = 60
ORIGINS = ("n0", "n1", "n2")
KEYS = ("a", "b", "c")
GROUPS = ("g", "h")

Snapshot = dict[BucketKey, tuple[int, dict[str, int]]]


def snapshot(store: CounterStore, now: float) -> Snapshot:
    return {
        (s.group, s.key, s.period, s.window_start): (s.generation, s.counts)
        for s in store.live_states(now)
    }


def totals(store: CounterStore, now: float) -> dict[BucketKey, int]:
    """What the limiter reads (``store.total``), checked against the per-origin counts."""
    result = {}
    for s in store.live_states(now):
        bucket = (s.group, s.key, s.period, s.window_start)
        assert store.total(bucket) == s.total
        if s.total:
            result[bucket] = s.total
    return result


def over_the_wire(message: dict[str, Any]) -> dict[str, Any]:
    """What a channel layer hands over: a serialised copy (tuples become lists)."""
    return json.loads(json.dumps(message))  # type: ignore[no-any-return]


def deliver(store: CounterStore, message: dict[str, Any], now: float) -> None:
    """Apply a state message as the consumer does: resets first, then the buckets."""
    message = over_the_wire(message)
    assert message["type"] == protocol.STATE
    assert protocol.check_envelope(message) in ORIGINS
    states, resets = protocol.decode_state(message, now)
    store.apply_resets(resets)
    store.merge(states, now)


class Cluster:
    """A few processes that count hits and send what changed; nobody receives yet."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.start = int(now // PERIOD) * PERIOD
        self.stores = {name: CounterStore(origin=name) for name in ORIGINS}
        for store in self.stores.values():
            store.track_dirty = True
        self.messages: list[dict[str, Any]] = []
        self.hits: Counter[BucketKey] = Counter()
        self.next_generation = time.time_ns() - 10**9

    def bucket(self, group: str, key: str, window: int) -> BucketKey:
        return (group, key, PERIOD, self.start - window * PERIOD)

    def hit(self, origin: str, bucket: BucketKey, amount: int) -> None:
        self.stores[origin].add(bucket, amount, self.now)
        self.hits[bucket] += amount

    def reset(self, origin: str, group: str, key: str | None) -> None:
        self.next_generation += 1
        self.stores[origin].reset(group, key, generation=self.next_generation)

    def send(self, origin: str) -> None:
        store = self.stores[origin]
        states, resets = store.take_dirty(), store.take_pending_resets()
        if states or resets:
            self.messages.append(protocol.state_message(origin, states, resets))

    def full_state(self, origin: str) -> dict[str, Any]:
        store = self.stores[origin]
        return protocol.state_message(origin, store.live_states(self.now), store.reset_states())


HIT = st.tuples(
    st.just("hit"),
    st.sampled_from(ORIGINS),
    st.sampled_from(GROUPS),
    st.sampled_from(KEYS),
    st.integers(0, 1),  # this window or the previous one
    st.integers(1, 5),
)
SEND = st.tuples(st.just("send"), st.sampled_from(ORIGINS))
RESET = st.tuples(
    st.just("reset"),
    st.sampled_from(ORIGINS),
    st.sampled_from(GROUPS),
    st.one_of(st.none(), st.sampled_from(KEYS)),
)


def run(events: list[tuple[Any, ...]]) -> Cluster:
    cluster = Cluster(time.time())
    for event in events:
        if event[0] == "hit":
            _, origin, group, key, window, amount = event
            cluster.hit(origin, cluster.bucket(group, key, window), amount)
        elif event[0] == "send":
            cluster.send(event[1])
        else:
            _, origin, group, key = event
            cluster.reset(origin, group, key)
    for origin in ORIGINS:
        cluster.send(origin)
    return cluster


def scrambled(data: st.DataObject, count: int) -> list[int]:
    """Any delivery plan: messages dropped, repeated and in any order."""
    if not count:
        return []
    return data.draw(st.lists(st.integers(0, count - 1), max_size=3 * count), label="plan")


@hsettings(max_examples=300, deadline=None)
@given(events=st.lists(st.one_of(HIT, HIT, SEND), max_size=60), data=st.data())
def test_any_delivery_then_a_full_state_equals_in_order_delivery(
    events: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    cluster = run(events)
    now = cluster.now

    in_order = CounterStore(origin="receiver")
    for message in cluster.messages:
        deliver(in_order, message, now)
    # With every message delivered in order the receiver knows every hit.
    assert totals(in_order, now) == {b: n for b, n in cluster.hits.items() if n}

    messy = CounterStore(origin="receiver")
    for index in scrambled(data, len(cluster.messages)):
        deliver(messy, cluster.messages[index], now)
    # No delivery can make a total larger than the truth.
    for bucket, total in totals(messy, now).items():
        assert total <= cluster.hits[bucket]
    for origin in ORIGINS:
        deliver(messy, cluster.full_state(origin), now)
    assert snapshot(messy, now) == snapshot(in_order, now)
    assert totals(messy, now) == totals(in_order, now)


@hsettings(max_examples=300, deadline=None)
@given(events=st.lists(st.one_of(HIT, HIT, SEND, RESET), max_size=60), data=st.data())
def test_resets_converge_under_any_delivery(
    events: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    cluster = run(events)
    now = cluster.now

    in_order = CounterStore(origin="receiver")
    for message in cluster.messages:
        deliver(in_order, message, now)

    messy = CounterStore(origin="receiver")
    for index in scrambled(data, len(cluster.messages)):
        deliver(messy, cluster.messages[index], now)
    for origin in data.draw(st.permutations(ORIGINS), label="final order"):
        deliver(messy, cluster.full_state(origin), now)
    assert snapshot(messy, now) == snapshot(in_order, now)
    assert totals(messy, now) == totals(in_order, now)
    # Both know the same reset for every key (a merge may record a group's reset per key).
    for group in GROUPS:
        for key in KEYS:
            assert messy._generation(group, key) == in_order._generation(group, key)


@hsettings(max_examples=100, deadline=None)
@given(events=st.lists(st.one_of(HIT, SEND), max_size=40))
def test_every_process_converges_to_the_same_totals(events: list[tuple[Any, ...]]) -> None:
    cluster = run(events)
    now = cluster.now
    # Each process hears everybody else's messages (and its own, which it ignores).
    for store in cluster.stores.values():
        for message in cluster.messages:
            deliver(store, message, now)
    expected = {b: n for b, n in cluster.hits.items() if n}
    for store in cluster.stores.values():
        assert totals(store, now) == expected


# -- merge algebra on arbitrary states ---------------------------------------------------

NOW = 1_700_000_010.0
START = int(NOW // PERIOD) * PERIOD

STATES = st.builds(
    BucketState,
    group=st.sampled_from(GROUPS),
    key=st.sampled_from(KEYS),
    period=st.just(PERIOD),
    window_start=st.sampled_from([START, START - PERIOD]),
    generation=st.sampled_from([0, 100, 200]),
    counts=st.dictionaries(st.sampled_from(("x", "y", "z", "me")), st.integers(0, 50), max_size=4),
)
STATE_LISTS = st.lists(STATES, max_size=12)


def merged(*batches: list[BucketState]) -> Snapshot:
    store = CounterStore(origin="me")
    for batch in batches:
        store.merge(batch, NOW)
    totals(store, NOW)  # the running totals agree with the counts
    return snapshot(store, NOW)


@given(states=STATE_LISTS)
def test_merge_is_idempotent(states: list[BucketState]) -> None:
    once = merged(states)
    assert merged(states, states) == once
    assert merged(states + states) == once
    assert merged(states, list(reversed(states)), states) == once


@given(a=STATE_LISTS, b=STATE_LISTS)
def test_merge_is_commutative(a: list[BucketState], b: list[BucketState]) -> None:
    assert merged(a, b) == merged(b, a)


@given(states=STATE_LISTS, data=st.data())
def test_merge_ignores_order_within_a_message(
    states: list[BucketState], data: st.DataObject
) -> None:
    assert merged(data.draw(st.permutations(states))) == merged(states)


@given(a=STATE_LISTS, b=STATE_LISTS, c=STATE_LISTS)
def test_merge_is_associative(
    a: list[BucketState], b: list[BucketState], c: list[BucketState]
) -> None:
    assert merged(a, b, c) == merged(a + b, c) == merged(a, b + c)


@given(states=STATE_LISTS)
def test_merged_counts_are_the_max_per_origin_of_the_newest_generation(
    states: list[BucketState],
) -> None:
    result = merged(states)
    newest: dict[tuple[str, str], int] = {}
    for s in states:
        newest[s.group, s.key] = max(newest.get((s.group, s.key), 0), s.generation)
    expected: dict[BucketKey, tuple[int, dict[str, int]]] = {}
    for s in states:
        if s.generation < newest[s.group, s.key]:
            continue
        bucket = (s.group, s.key, s.period, s.window_start)
        _, counts = expected.setdefault(bucket, (s.generation, {}))
        for origin, count in s.counts.items():
            # Our own origin too: a peer can only hold a higher count for it if
            # this process lost its bucket (evicted), and then it is adopted.
            if count:
                counts[origin] = max(counts.get(origin, 0), count)
    assert result == expected


@given(
    states=STATE_LISTS,
    resets=st.lists(
        st.builds(
            ResetState,
            st.sampled_from(GROUPS),
            st.one_of(st.none(), st.sampled_from(KEYS)),
            st.sampled_from([1, 100, 150, 200]),
        )
    ),
)
def test_state_messages_round_trip(states: list[BucketState], resets: list[ResetState]) -> None:
    message = over_the_wire(protocol.state_message("n0", states, resets))
    assert protocol.check_envelope(message) == "n0"
    assert protocol.decode_state(message, NOW) == (states, resets)


@given(states=STATE_LISTS)
def test_a_message_split_into_chunks_merges_like_the_whole(states: list[BucketState]) -> None:
    whole = merged(states)
    store = CounterStore(origin="me")
    for chunk in protocol.chunks(states, 3):
        store.merge(protocol.decode_buckets(protocol.encode_buckets(chunk), NOW), NOW)
    assert snapshot(store, NOW) == whole
    assert math.ceil(len(states) / 3) == len(list(protocol.chunks(states, 3)))
