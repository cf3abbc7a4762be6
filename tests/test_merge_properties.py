"""Convergence: lost, repeated and reordered sync messages cannot corrupt a total.

Protocol v2 sends each process's own counts only; these properties show that
own counts plus one relay of departed origins end in the same totals as
in-order delivery of everything, whatever was lost, repeated or reordered.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from django_dratelimit.local.chunks import chunks
from django_dratelimit.local.store import BucketKey, CounterStore, Entry, ResetState
from django_dratelimit.sync import protocol

KEYS_ = [b"property-test key"]

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


def seal(origin: str, kind: str, entries: list[Entry], resets: list[ResetState]) -> Any:
    payload: dict[str, Any] = {"node": origin, "ch": None, "ts": time.time()}
    payload["e"] = protocol.encode_entries(entries)
    payload["r"] = protocol.encode_resets(resets)
    return protocol.seal(kind, payload, KEYS_)


def deliver(store: CounterStore, message: Any, now: float) -> None:
    """Apply a state (or own) message as the handlers do: resets first, then the counts."""
    kind, payload = protocol.open_message(message, KEYS_, time.time())
    assert kind in (protocol.STATE, protocol.OWN)
    assert payload["node"] in ORIGINS
    store.apply_resets(protocol.decode_resets(payload["r"], now))
    store.merge(payload["node"], protocol.decode_entries(payload["e"], now), now)


def deliver_relay(store: CounterStore, relay: dict[str, list[Entry]], now: float) -> None:
    wire = protocol.decode_relay(protocol.encode_relay(relay), now)
    for origin, entries in wire.items():
        store.merge(origin, entries, now)


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
        entries, resets = store.take_dirty(), store.take_pending_resets()
        if entries or resets:
            self.messages.append(seal(origin, protocol.STATE, entries, resets))

    def own_counts(self, origin: str) -> Any:
        """What ``origin`` answers a joiner or a pull with: its own counts and resets."""
        store = self.stores[origin]
        return seal(origin, protocol.OWN, store.own_entries(self.now), store.own_resets())


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
        deliver(messy, cluster.own_counts(origin), now)
    assert snapshot(messy, now) == snapshot(in_order, now)
    assert totals(messy, now) == totals(in_order, now)


@hsettings(max_examples=300, deadline=None)
@given(
    events=st.lists(st.one_of(HIT, HIT, SEND, RESET), max_size=60),
    data=st.data(),
)
def test_a_departed_origin_reaches_a_joiner_through_one_relay(
    events: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    """n2 dies; a joiner that heard only part of it gets the rest from one live peer."""
    cluster = run(events)
    now = cluster.now
    live = ("n0", "n1")
    for origin in live:  # the live peers heard every message, in order
        for message in cluster.messages:
            deliver(cluster.stores[origin], message, now)
    in_order = CounterStore(origin="receiver")
    for message in cluster.messages:
        deliver(in_order, message, now)

    joiner = CounterStore(origin="receiver")
    for index in scrambled(data, len(cluster.messages)):
        deliver(joiner, cluster.messages[index], now)
    for origin in live:
        deliver(joiner, cluster.own_counts(origin), now)
    steward = cluster.stores[min(live)]
    deliver_relay(joiner, steward.relay_entries(now, exclude=live), now)
    joiner.apply_resets(steward.reset_states())
    assert totals(joiner, now) == totals(in_order, now)
    # The relay carried only the departed origin: nobody repeated a live one's counts.
    assert set(steward.relay_entries(now, exclude=live)) <= {"n2"}


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
        deliver(messy, cluster.own_counts(origin), now)
    # Resets made by a process travel with its own counts; the joiner's relay brings
    # the rest (here every process answers, so own resets are all there are).
    assert snapshot(messy, now) == snapshot(in_order, now)
    assert totals(messy, now) == totals(in_order, now)
    # Both know the same reset for every key (a merge may record a group's reset per key).
    for group in GROUPS:
        for key in KEYS:
            assert messy._generations.of(group, key) == in_order._generations.of(group, key)


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

ENTRIES = st.tuples(
    st.sampled_from(("x", "y", "z", "me")),
    st.builds(
        Entry,
        group=st.sampled_from(GROUPS),
        key=st.sampled_from(KEYS),
        period=st.just(PERIOD),
        window_start=st.sampled_from([START, START - PERIOD]),
        generation=st.sampled_from([0, 100, 200]),
        amount=st.integers(0, 50),
        register=st.sampled_from([0, 0, 7, 9000]),
    ),
)
BATCHES = st.lists(ENTRIES, max_size=12)
Batch = list[tuple[str, Entry]]


def merged(*batches: Batch) -> Snapshot:
    store = CounterStore(origin="me")
    for batch in batches:
        for origin, entry in batch:
            store.merge(origin, [entry], NOW)
    totals(store, NOW)  # the running totals agree with the counts
    return snapshot(store, NOW)


@given(batch=BATCHES)
def test_merge_is_idempotent(batch: Batch) -> None:
    once = merged(batch)
    assert merged(batch, batch) == once
    assert merged(batch + batch) == once
    assert merged(batch, list(reversed(batch)), batch) == once


@given(a=BATCHES, b=BATCHES)
def test_merge_is_commutative(a: Batch, b: Batch) -> None:
    assert merged(a, b) == merged(b, a)


@given(batch=BATCHES, data=st.data())
def test_merge_ignores_order_within_a_message(batch: Batch, data: st.DataObject) -> None:
    assert merged(data.draw(st.permutations(batch))) == merged(batch)


@given(a=BATCHES, b=BATCHES, c=BATCHES)
def test_merge_is_associative(a: Batch, b: Batch, c: Batch) -> None:
    assert merged(a, b, c) == merged(a + b, c) == merged(a, b + c)


@given(batch=BATCHES)
def test_merged_counts_are_the_max_per_origin_of_the_newest_generation(batch: Batch) -> None:
    result = merged(batch)
    newest: dict[tuple[str, str], int] = {}
    for _, e in batch:
        newest[e.group, e.key] = max(newest.get((e.group, e.key), 0), e.generation)
    expected: dict[BucketKey, tuple[int, dict[str, int]]] = {}
    for origin, e in batch:
        if e.generation < newest[e.group, e.key]:
            continue
        bucket = (e.group, e.key, e.period, e.window_start)
        _, counts = expected.setdefault(bucket, (e.generation, {}))
        # Our own origin too: a peer can only hold a higher count for it if
        # this process lost its bucket (evicted), and then it is adopted.
        if e.amount:
            counts[origin] = max(counts.get(origin, 0), e.amount)
        if e.register:
            counts["~max"] = max(counts.get("~max", 0), e.register)
    assert result == expected


@given(batch=BATCHES)
def test_a_message_split_into_chunks_merges_like_the_whole(batch: Batch) -> None:
    whole = merged(batch)
    store = CounterStore(origin="me")
    for chunk in chunks(batch, 3):
        for origin, e in chunk:
            wire = protocol.decode_entries(protocol.encode_entries([e]), NOW)
            store.merge(origin, wire, NOW)
    assert snapshot(store, NOW) == whole
    assert max(1, math.ceil(len(batch) / 3)) == len(list(chunks(batch, 3)))
