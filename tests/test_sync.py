"""SyncNode protocol tests: several nodes in one loop, sharing one in-memory layer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer

from django_dratelimit.local.store import CounterStore, Entry
from django_dratelimit.sync import protocol
from django_dratelimit.sync.node import SyncNode

GROUP = "dratelimit"
TEST_KEYS = (b"django-dratelimit tests only",)  # processes derive theirs from SECRET_KEY
PERIOD = 60


class FlakyLayer:
    """Wraps a layer; drops group_send calls while ``dropping`` and can fail on demand."""

    def __init__(self, inner: InMemoryChannelLayer) -> None:
        self.inner = inner
        self.dropping = False
        self.failing = False
        self.group_sends = 0
        self.sent_types: list[str] = []

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        if self.failing:
            raise ConnectionError("broker down")
        self.group_sends += 1
        self.sent_types.append(message["type"])
        if not self.dropping:
            await self.inner.group_send(group, message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Cluster:
    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.nodes: list[SyncNode] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def add(self, layer: Any = None, wait_caught_up: bool = True, **options: Any) -> SyncNode:
        options.setdefault("interval", 0.005)
        options.setdefault("anti_entropy", 3600.0)
        options.setdefault("groups", [GROUP])
        options.setdefault("keys", TEST_KEYS)
        node = SyncNode(CounterStore(), layer or self.layer, **options)
        self.nodes.append(node)
        self.tasks.append(asyncio.ensure_future(node.run()))
        await asyncio.wait_for(node.joined.wait(), 2)
        if wait_caught_up and len(self.nodes) > 1:  # alone, nobody answers: not caught up
            await eventually(node.caught_up.is_set)
        return node

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for node in self.nodes:
            await node.close()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    instance = Cluster(InMemoryChannelLayer(capacity=10_000))
    yield instance
    await instance.stop()


def bucket(now: float | None = None) -> tuple[str, str, int, int]:
    now = time.time() if now is None else now
    return ("g", "k", PERIOD, int(now // PERIOD) * PERIOD)


async def eventually(condition: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def totals(nodes: list[SyncNode], key: tuple[str, str, int, int]) -> list[int]:
    return [node.store.total(key) for node in nodes]


def sealed(kind: str, keys: tuple[bytes, ...] = TEST_KEYS, **fields: Any) -> dict[str, Any]:
    """A message as a peer (or an attacker, with other keys) would put it on the layer."""
    payload = {"node": "peer", "ch": None, "ts": time.time(), **fields}
    return protocol.seal(kind, payload, keys)


def entry(key: tuple[str, str, int, int], amount: int) -> list[Any]:
    return list(Entry(*key, 0, amount, 0))


async def test_three_nodes_converge_on_the_exact_total(cluster: Cluster) -> None:
    nodes = [await cluster.add() for _ in range(3)]
    key = bucket()
    for round_ in range(50):
        for index, node in enumerate(nodes):
            node.store.add(key, index + 1, time.time())
        if round_ % 10 == 0:
            await asyncio.sleep(0)
    await eventually(lambda: totals(nodes, key) == [300, 300, 300])
    assert all(node.metrics.dropped == 0 for node in nodes)
    assert all(node.metrics.own_messages > 0 for node in nodes)  # a node hears itself, ignores


async def test_a_state_message_carries_only_the_senders_own_counts(cluster: Cluster) -> None:
    flaky = FlakyLayer(cluster.layer)
    nodes = [await cluster.add(), await cluster.add(), await cluster.add(layer=flaky)]
    key = bucket()
    for node in nodes[:2]:
        node.store.add(key, 5, time.time())
    await eventually(lambda: nodes[2].store.total(key) == 10)
    sent: list[dict[str, Any]] = []
    original = flaky.inner.group_send

    async def spy(group: str, message: dict[str, Any]) -> None:
        sent.append(message)
        await original(group, message)

    flaky.inner = type("Spy", (), {"group_send": staticmethod(spy)})()
    nodes[2].store.add(key, 1, time.time())
    await eventually(lambda: totals(nodes, key) == [11, 11, 11])
    states = [protocol.open_message(m, TEST_KEYS, time.time())[1] for m in sent]
    entries = [e for p in states if "e" in p for e in p["e"]]
    assert entries == [[*key, 0, 1, 0]]  # one entry: its own count, not the peers' 5 and 5


async def test_batching_sends_far_fewer_messages_than_hits(cluster: Cluster) -> None:
    flaky = FlakyLayer(cluster.layer)
    sender = await cluster.add(layer=flaky, interval=0.05)
    receiver = await cluster.add()
    key = bucket()
    start = flaky.sent_types.count(protocol.STATE)
    for _ in range(20):
        for _ in range(50):
            sender.store.add(key, 1, time.time())
        await asyncio.sleep(0.01)
    await eventually(lambda: receiver.store.total(key) == 1000)
    assert flaky.sent_types.count(protocol.STATE) - start <= 10  # 1,000 hits, 50 ms rounds


async def test_interval_zero_sends_one_message_per_hit(cluster: Cluster) -> None:
    flaky = FlakyLayer(cluster.layer)
    sender = await cluster.add(layer=flaky, interval=0)
    receiver = await cluster.add()
    key = bucket()
    start = flaky.sent_types.count(protocol.STATE)
    for _ in range(40):
        sender.store.add(key, 1, time.time())
    await eventually(lambda: receiver.store.total(key) == 40)
    await eventually(lambda: flaky.sent_types.count(protocol.STATE) - start >= 40)


async def test_an_idle_node_sends_nothing_but_heartbeats(cluster: Cluster) -> None:
    flaky = FlakyLayer(cluster.layer)
    node = await cluster.add(layer=flaky, anti_entropy=0.1)
    node.store.add(bucket(), 1, time.time())
    await eventually(lambda: protocol.STATE in flaky.sent_types)
    flaky.sent_types.clear()
    await asyncio.sleep(0.35)
    # About three heartbeats in 0.35 s, and no state message: nothing changed.
    assert set(flaky.sent_types) == {protocol.HEARTBEAT}
    assert 2 <= len(flaky.sent_types) <= 5


async def test_late_joiner_gets_each_origin_once(cluster: Cluster) -> None:
    first, second = await cluster.add(), await cluster.add()
    key = bucket()
    first.store.add(key, 7, time.time())
    second.store.add(key, 5, time.time())
    await eventually(lambda: totals([first, second], key) == [12, 12])
    answers_before = first.metrics.answers_sent + second.metrics.answers_sent
    late = await cluster.add()
    assert late.store.total(key) == 12
    assert late.caught_up.is_set()
    # Each peer answered once with its own counts only: two entries in all, and the
    # relay that followed had nothing to add (both origins answered themselves).
    assert first.metrics.answers_sent + second.metrics.answers_sent == answers_before + 2
    assert late.metrics.buckets_received == 2


async def test_what_a_joiner_counted_before_its_loop_ran_goes_out_in_its_first_round(
    cluster: Cluster,
) -> None:
    peer = await cluster.add()
    store = CounterStore()
    # start_sync() turns tracking on before the thread's loop runs, and the request
    # that started it counts at once: nothing is there yet to wake for that hit.
    store.track_dirty = True
    key = bucket()
    store.add(key, 3, time.time())
    node = SyncNode(store, cluster.layer, groups=[GROUP], keys=TEST_KEYS, interval=0.005)
    cluster.nodes.append(node)
    cluster.tasks.append(asyncio.ensure_future(node.run()))
    # The next heartbeat is ANTI_ENTROPY_INTERVAL (5 s) away; a round is 5 ms.
    await eventually(lambda: peer.store.total(key) == 3, within=2.0)


async def test_a_departed_origin_reaches_a_joiner_through_one_relay(cluster: Cluster) -> None:
    first, second, third = await cluster.add(), await cluster.add(), await cluster.add()
    key = bucket()
    third.store.add(key, 9, time.time())
    first.store.add(key, 1, time.time())
    await eventually(lambda: totals([first, second], key) == [10, 10])
    # The third process dies without a word: its counts live on in the others.
    index = cluster.nodes.index(third)
    cluster.tasks[index].cancel()
    await asyncio.gather(cluster.tasks[index], return_exceptions=True)
    before = {n: n.metrics.relays_sent for n in (first, second)}
    late = await cluster.add()
    assert late.store.total(key) == 10
    relayed = {n: n.metrics.relays_sent - before[n] for n in (first, second)}
    # One peer (the lowest id of those that answered) relayed the departed origin, not both.
    steward = min(first, second, key=lambda n: n.store.origin)
    assert relayed[steward] == 1
    assert sum(relayed.values()) == 1


async def test_a_missed_message_is_found_by_its_number_and_pulled(cluster: Cluster) -> None:
    flaky = FlakyLayer(cluster.layer)
    sender = await cluster.add(layer=flaky)
    receiver = await cluster.add()
    key = bucket()
    flaky.dropping = True
    sender.store.add(key, 9, time.time())
    await eventually(lambda: protocol.STATE in flaky.sent_types)
    flaky.dropping = False
    other = ("g", "other", PERIOD, key[3])
    sender.store.add(other, 1, time.time())  # the next message shows the gap
    await eventually(lambda: receiver.store.total(key) == 9)
    assert receiver.metrics.gaps == 1
    assert receiver.metrics.pulls_sent == 1
    assert sender.metrics.answers_sent >= 1


async def test_a_heartbeat_finds_a_loss_at_the_end_of_a_burst(cluster: Cluster) -> None:
    flaky = FlakyLayer(cluster.layer)
    sender = await cluster.add(layer=flaky, anti_entropy=0.1)
    receiver = await cluster.add(anti_entropy=0.1)
    key = bucket()
    flaky.dropping = True
    sender.store.add(key, 4, time.time())
    await eventually(lambda: protocol.STATE in flaky.sent_types)  # sent, and dropped
    flaky.dropping = False  # nothing else is hit: only the heartbeat can tell
    await eventually(lambda: receiver.store.total(key) == 4)
    assert receiver.metrics.gaps >= 1


async def test_broker_outage_keeps_counting_and_resends_on_recovery(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = FlakyLayer(cluster.layer)
    sender = await cluster.add(layer=flaky)
    receiver = await cluster.add()
    key = bucket()
    flaky.failing = True
    with caplog.at_level(logging.WARNING, logger="django_dratelimit"):
        for _ in range(30):
            sender.store.add(key, 1, time.time())
            await asyncio.sleep(0.002)
        await eventually(lambda: sender.metrics.broker_errors >= 3)
    assert sender.store.total(key) == 30  # local limiting goes on
    assert receiver.store.total(key) == 0
    # Logged, but throttled: far fewer lines than failures.
    assert 1 <= sum("failed" in r.message for r in caplog.records) < sender.metrics.broker_errors
    flaky.failing = False
    await eventually(lambda: receiver.store.total(key) == 30)


async def test_reset_wins_over_max_merge(cluster: Cluster) -> None:
    first, second = await cluster.add(), await cluster.add()
    key = bucket()
    first.store.add(key, 10, time.time())
    await eventually(lambda: second.store.total(key) == 10)
    old = first.store.entries([key])  # an old message, still "in flight"
    first.store.reset("g", "k")
    await eventually(lambda: second.store.total(key) == 0)
    second.store.merge(first.store.origin, old, time.time())  # must not bring it back
    assert second.store.total(key) == 0
    second.store.add(key, 1, time.time())
    await eventually(lambda: first.store.total(key) == 1)


async def test_a_joiner_learns_the_resets_and_ignores_counts_from_before_them(
    cluster: Cluster,
) -> None:
    first, second = await cluster.add(), await cluster.add()
    key = bucket()
    first.store.add(key, 3, time.time())
    await eventually(lambda: second.store.total(key) == 3)
    second.store.reset("g", "k")
    await eventually(lambda: first.store.total(key) == 0)
    late = await cluster.add()
    assert late.store.reset_states() == second.store.reset_states()
    stale = [Entry(*key, 0, 3, 0)]  # generation 0: counted before the reset
    late.store.merge(first.store.origin, stale, time.time())
    assert late.store.total(key) == 0


async def test_the_interval_stretches_with_the_number_of_peers(cluster: Cluster) -> None:
    nodes = [await cluster.add(receive_budget=40, interval=0.01) for _ in range(5)]
    await eventually(lambda: all(len(n.peers.table) == 4 for n in nodes))
    # Four peers, a budget of 40 messages a second: 0.1 s rounds instead of 0.01 s.
    assert all(n.effective_interval == pytest.approx(0.1) for n in nodes)
    assert nodes[0].node_info()["effective_interval"] == pytest.approx(0.1)


async def test_a_clean_stop_says_goodbye(cluster: Cluster) -> None:
    first, second = await cluster.add(), await cluster.add()
    await eventually(lambda: second.store.origin in first.peers.table)
    index = cluster.nodes.index(second)
    cluster.tasks[index].cancel()
    await asyncio.gather(cluster.tasks[index], return_exceptions=True)
    await second.close()
    await eventually(lambda: second.store.origin not in first.peers.table)


async def test_handler_error_does_not_stop_the_node(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = await cluster.add()
    key = bucket()

    def explode(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(node.store, "merge", explode)
    await cluster.layer.group_send(GROUP, sealed(protocol.STATE, seq=1, e=[entry(key, 3)]))
    await eventually(lambda: node.metrics.dropped_handler_error == 1)
    monkeypatch.undo()
    await cluster.layer.group_send(GROUP, sealed(protocol.STATE, seq=2, e=[entry(key, 3)]))
    await eventually(lambda: node.store.total(key) == 3)


async def test_receive_errors_back_off_and_recover(cluster: Cluster) -> None:
    calls = {"n": 0}
    inner = cluster.layer

    class BrokenReceive(FlakyLayer):
        async def receive(self, channel: str) -> dict[str, Any]:
            calls["n"] += 1
            if calls["n"] <= 2:
                raise ConnectionError("receive failed")
            message: dict[str, Any] = await inner.receive(channel)
            return message

    node = await cluster.add(layer=BrokenReceive(inner))
    peer = await cluster.add()
    key = bucket()
    peer.store.add(key, 4, time.time())
    await eventually(lambda: node.store.total(key) == 4, within=5)
    assert node.metrics.broker_errors >= 2


async def test_idle_receive_timeout_is_not_a_broker_error(cluster: Cluster) -> None:
    import redis.exceptions

    inner = cluster.layer
    calls = {"n": 0}

    class TimingOut(FlakyLayer):
        async def receive(self, channel: str) -> dict[str, Any]:
            calls["n"] += 1
            if calls["n"] <= 3:
                raise redis.exceptions.TimeoutError("Timeout reading from socket")
            message: dict[str, Any] = await inner.receive(channel)
            return message

    node = await cluster.add(layer=TimingOut(inner))
    await eventually(lambda: node.metrics.receive_timeouts == 3)
    assert node.metrics.broker_errors == 0


async def test_inspect_and_reset_requests_are_answered(cluster: Cluster) -> None:
    node = await cluster.add()
    key = bucket()
    node.store.add(key, 6, time.time())
    reply = await cluster.layer.new_channel()
    await cluster.layer.group_send(GROUP, sealed(protocol.INSPECT, ch=reply, id="r1"))
    kind, answer = protocol.open_message(
        await asyncio.wait_for(cluster.layer.receive(reply), 2), TEST_KEYS, time.time()
    )
    assert kind == protocol.REPLY
    assert answer["request"] == "r1"
    assert answer["info"]["node"] == node.store.origin
    assert [b[:4] for b in answer["buckets"]] == [list(key)]
    reset = sealed(protocol.RESET, ch=reply, id="r2", group="g", key="k", generation=time.time_ns())
    await cluster.layer.group_send(GROUP, reset)
    kind, answer = protocol.open_message(
        await asyncio.wait_for(cluster.layer.receive(reply), 2), TEST_KEYS, time.time()
    )
    assert answer["removed"] == 1
    assert node.store.total(key) == 0


async def test_undecodable_bytes_are_a_drop_not_a_broker_outage(cluster: Cluster) -> None:
    import msgpack

    inner = cluster.layer
    calls = {"n": 0}

    class Garbage(FlakyLayer):
        async def receive(self, channel: str) -> dict[str, Any]:
            calls["n"] += 1
            if calls["n"] <= 3:  # what channels_redis raises on bytes that are no message
                raise msgpack.exceptions.ExtraData(1, b"junk")
            message: dict[str, Any] = await inner.receive(channel)
            return message

    node = await cluster.add(layer=Garbage(inner))
    await eventually(lambda: node.metrics.dropped_malformed == 3)
    assert node.metrics.broker_errors == 0
    peer = await cluster.add()
    peer.store.add(bucket(), 2, time.time())
    await eventually(lambda: node.store.total(bucket()) == 2)
