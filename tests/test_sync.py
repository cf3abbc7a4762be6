"""SyncNode protocol tests: several nodes in one loop, sharing one in-memory layer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer

from django_dratelimit import protocol
from django_dratelimit.store import BucketState, CounterStore
from django_dratelimit.sync import SyncNode

GROUP = "dratelimit"
PERIOD = 60


class FlakyLayer:
    """Wraps a layer; drops group_send calls while ``dropping`` and can fail on demand."""

    def __init__(self, inner: InMemoryChannelLayer) -> None:
        self.inner = inner
        self.dropping = False
        self.failing = False
        self.group_sends = 0

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        if self.failing:
            raise ConnectionError("broker down")
        self.group_sends += 1
        if not self.dropping:
            await self.inner.group_send(group, message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Cluster:
    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.nodes: list[SyncNode] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def add(self, layer: Any = None, **options: Any) -> SyncNode:
        options.setdefault("interval", 0.005)
        options.setdefault("anti_entropy", 3600.0)
        node = SyncNode(CounterStore(), layer or self.layer, group=GROUP, **options)
        self.nodes.append(node)
        self.tasks.append(asyncio.ensure_future(node.run()))
        await asyncio.wait_for(node.joined.wait(), 2)
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


async def test_three_nodes_converge_on_the_exact_total(cluster: Cluster) -> None:
    nodes = [await cluster.add() for _ in range(3)]
    key = bucket()
    for round_ in range(50):
        for index, node in enumerate(nodes):
            node.store.add(key, index + 1, time.time())
        if round_ % 10 == 0:
            await asyncio.sleep(0)
    await eventually(lambda: totals(nodes, key) == [300, 300, 300])
    assert all(node.metrics.malformed == 0 for node in nodes)
    assert all(node.metrics.own_messages > 0 for node in nodes)  # a node hears itself, ignores


async def test_batching_sends_far_fewer_messages_than_hits(cluster: Cluster) -> None:
    flaky = FlakyLayer(cluster.layer)
    sender = await cluster.add(layer=flaky, interval=0.05)
    receiver = await cluster.add()
    key = bucket()
    start = flaky.group_sends
    for _ in range(20):
        for _ in range(50):
            sender.store.add(key, 1, time.time())
        await asyncio.sleep(0.01)
    await eventually(lambda: receiver.store.total(key) == 1000)
    assert flaky.group_sends - start <= 10  # 1,000 hits, one message per 50 ms round


async def test_interval_zero_sends_one_message_per_hit(cluster: Cluster) -> None:
    flaky = FlakyLayer(cluster.layer)
    sender = await cluster.add(layer=flaky, interval=0)
    receiver = await cluster.add()
    key = bucket()
    start = flaky.group_sends
    for _ in range(40):
        sender.store.add(key, 1, time.time())
    await eventually(lambda: receiver.store.total(key) == 40)
    await eventually(lambda: flaky.group_sends - start >= 40)


async def test_late_joiner_catches_up_through_sync_request(cluster: Cluster) -> None:
    first, second = await cluster.add(), await cluster.add()
    key = bucket()
    first.store.add(key, 7, time.time())
    second.store.add(key, 5, time.time())
    await eventually(lambda: totals([first, second], key) == [12, 12])
    late = await cluster.add()
    await eventually(lambda: late.store.total(key) == 12)
    assert late.first_peer.is_set()


async def test_anti_entropy_heals_dropped_messages(cluster: Cluster) -> None:
    flaky = FlakyLayer(cluster.layer)
    sender = await cluster.add(layer=flaky, anti_entropy=0.2)
    receiver = await cluster.add()
    key = bucket()
    flaky.dropping = True
    sender.store.add(key, 9, time.time())
    await asyncio.sleep(0.05)
    assert receiver.store.total(key) == 0  # the update was lost on the way
    flaky.dropping = False
    await eventually(lambda: receiver.store.total(key) == 9)


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
    old = first.store.states([key])  # an old message, still "in flight"
    first.store.reset("g", "k")
    await eventually(lambda: second.store.total(key) == 0)
    second.store.merge(old, time.time())  # the late old message must not bring it back
    assert second.store.total(key) == 0
    second.store.add(key, 1, time.time())
    await eventually(lambda: first.store.total(key) == 1)


async def test_malformed_and_foreign_messages_are_dropped_and_counted(cluster: Cluster) -> None:
    node = await cluster.add()
    key = bucket()
    bad: list[dict[str, Any]] = [
        {"type": protocol.STATE, "v": 99, "node": "x", "buckets": []},
        {"type": protocol.STATE, "v": 1, "node": "x", "buckets": "nope"},
        {
            "type": protocol.STATE,
            "v": 1,
            "node": "x",
            "buckets": [["g", "k", 60, key[3], 0, {"o": -5}]],
        },
        {
            "type": protocol.STATE,
            "v": 1,
            "node": "x",
            "buckets": [["g", "k", 60, key[3], 0, {"o": 10**16}]],
        },
        {
            "type": protocol.STATE,
            "v": 1,
            "node": "x",
            "buckets": [["g", "k", 60, key[3], 0, {"o": 1.5}]],
        },
        {"type": protocol.SYNC_REQUEST, "v": 1, "node": "x"},
        {"type": protocol.STATE, "v": 1},
    ]
    for message in bad:
        await cluster.layer.group_send(GROUP, message)
    await cluster.layer.group_send(GROUP, {"type": "chat.message", "text": "hi"})
    await eventually(lambda: node.metrics.malformed == len(bad))
    await eventually(lambda: node.metrics.unknown_types == 1)
    assert node.store.total(key) == 0
    # The node still works after all that.
    good = protocol.state_message("peer", [BucketState(*key, 0, {"peer": 3})])
    await cluster.layer.group_send(GROUP, good)
    await eventually(lambda: node.store.total(key) == 3)


async def test_handler_error_does_not_stop_the_node(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = await cluster.add()
    key = bucket()

    def explode(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(node.store, "merge", explode)
    message = protocol.state_message("peer", [BucketState(*key, 0, {"peer": 3})])
    await cluster.layer.group_send(GROUP, message)
    await eventually(lambda: node.metrics.handler_errors == 1)
    monkeypatch.undo()
    await cluster.layer.group_send(GROUP, message)
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
    await cluster.layer.group_send(
        GROUP, {"type": protocol.INSPECT, "v": 1, "node": "cmd", "reply": reply, "request": "r1"}
    )
    answer = await asyncio.wait_for(cluster.layer.receive(reply), 2)
    assert answer["request"] == "r1"
    assert answer["info"]["node"] == node.store.origin
    assert [b[:4] for b in answer["buckets"]] == [list(key)]
    await cluster.layer.group_send(
        GROUP,
        {
            "type": protocol.RESET,
            "v": 1,
            "node": "cmd",
            "reply": reply,
            "request": "r2",
            "group": "g",
            "key": "k",
            "generation": time.time_ns(),
        },
    )
    answer = await asyncio.wait_for(cluster.layer.receive(reply), 2)
    assert answer["removed"] == 1
    assert node.store.total(key) == 0


async def run_briefly(coro: Awaitable[Any]) -> None:
    await asyncio.wait_for(coro, 2)
