"""Nobody without the site's secret can change a count: forged, replayed and unsigned messages.

A process that can publish on the Redis but does not know SECRET_KEY sees the
group's name (``PUBSUB CHANNELS``) and can send anything. Each message type is
tried forged, replayed, stale and unsigned; none of them is applied, and every
drop is counted under its reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer

from django_dratelimit.sync import protocol
from tests.test_sync import GROUP, TEST_KEYS, Cluster, bucket, entry, eventually, sealed

FORGED = (b"an attacker's guess",)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    instance = Cluster(InMemoryChannelLayer(capacity=10_000))
    yield instance
    await instance.stop()


def attacks(key: tuple[str, str, int, int], reply: str) -> dict[str, dict[str, Any]]:
    """One harmful payload per message type: what it would do if it were applied."""
    return {
        protocol.STATE: {"seq": 1, "e": [entry(key, 10**6)]},  # an innocent client limited
        protocol.HEARTBEAT: {"seq": 10**6},  # a pull storm
        protocol.SYNC_REQUEST: {"id": "r1", "ch": reply},  # make every node answer
        protocol.BYE: {},
        protocol.OWN: {"seq": 1, "e": [entry(key, 10**6)], "last": True},
        protocol.PULL: {"id": "r2", "ch": reply},
        protocol.RELAY_REQUEST: {"id": "r3", "ch": reply, "exclude": []},
        protocol.RELAY: {"rl": {"ghost": [entry(key, 10**6)]}, "last": True},
        protocol.INSPECT: {"id": "r4", "ch": reply},  # read everybody's counts
        protocol.RESET: {"id": "r5", "ch": reply, "group": "g", "key": "k", "generation": 10**18},
        protocol.REPLY: {"request": "x", "info": {}},
    }


async def send_everywhere(cluster: Cluster, node: Any, message: dict[str, Any]) -> None:
    # Broadcasts go to the group; answers and requests straight to the node's channel.
    await cluster.layer.group_send(GROUP, message)
    await cluster.layer.send(node.channel, message)


async def no_reply(layer: Any, reply: str) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(reply), 0.2)


@pytest.mark.parametrize("kind", sorted(protocol.TYPES))
async def test_a_forged_message_of_any_type_changes_nothing(cluster: Cluster, kind: str) -> None:
    node = await cluster.add()
    key = bucket()
    node.store.add(key, 3, time.time())  # a reset would wipe this
    reply = await cluster.layer.new_channel()
    message = sealed(kind, FORGED, **attacks(key, reply)[kind])
    await send_everywhere(cluster, node, message)
    await eventually(lambda: node.metrics.dropped_bad_signature == 2)
    await no_reply(cluster.layer, reply)
    assert node.store.total(key) == 3
    assert "peer" not in node.peers.table


@pytest.mark.parametrize("kind", sorted(protocol.TYPES))
async def test_an_unsigned_v1_message_is_dropped_and_logged_once(
    cluster: Cluster, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    from django_dratelimit import logutil

    logutil.forget("sync-v1")
    node = await cluster.add()
    key = bucket()
    node.store.add(key, 3, time.time())
    v1 = {"type": kind, "v": 1, "node": "old", "buckets": [[*key, 0, {"old": 10**6}]]}
    with caplog.at_level(logging.WARNING, logger="django_dratelimit"):
        for _ in range(3):
            await cluster.layer.group_send(GROUP, v1)
        await eventually(lambda: node.metrics.dropped_unsigned == 3)
    assert node.store.total(key) == 3
    lines = [r for r in caplog.records if "protocol v1" in r.message]
    assert len(lines) == 1


async def test_a_stale_message_is_dropped(cluster: Cluster) -> None:
    node = await cluster.add()
    key = bucket()
    message = protocol.seal(
        protocol.STATE,
        {"node": "peer", "ch": None, "ts": time.time() - 3600, "seq": 1, "e": [entry(key, 5)]},
        TEST_KEYS,
    )
    await cluster.layer.group_send(GROUP, message)
    await eventually(lambda: node.metrics.dropped_stale == 1)
    assert node.store.total(key) == 0


@pytest.mark.parametrize(
    "kind", [protocol.SYNC_REQUEST, protocol.PULL, protocol.RELAY_REQUEST, protocol.INSPECT]
)
async def test_a_replayed_request_is_answered_once(cluster: Cluster, kind: str) -> None:
    node = await cluster.add()
    reply = await cluster.layer.new_channel()
    message = sealed(kind, **attacks(bucket(), reply)[kind])
    await send_everywhere(cluster, node, message)
    await asyncio.wait_for(cluster.layer.receive(reply), 2)
    await eventually(lambda: node.metrics.dropped_replayed == 1)
    await no_reply(cluster.layer, reply)


async def test_a_replayed_reset_does_not_wipe_counts_made_since(cluster: Cluster) -> None:
    node = await cluster.add()
    key = bucket()
    node.store.add(key, 3, time.time())
    reset: dict[str, Any] = {"id": "r9", "group": "g", "key": "k", "generation": time.time_ns()}
    await cluster.layer.group_send(GROUP, sealed(protocol.RESET, **reset))
    await eventually(lambda: node.store.total(key) == 0)
    node.store.add(key, 2, time.time())
    await cluster.layer.group_send(GROUP, sealed(protocol.RESET, **reset))
    await eventually(lambda: node.metrics.dropped_replayed == 1)
    assert node.store.total(key) == 2


async def test_a_replayed_state_message_counts_once(cluster: Cluster) -> None:
    node = await cluster.add()
    key = bucket()
    message = sealed(protocol.STATE, seq=1, e=[entry(key, 4)])
    for _ in range(3):
        await cluster.layer.group_send(GROUP, message)
    await eventually(lambda: node.metrics.duplicates == 2)
    assert node.store.total(key) == 4


@pytest.mark.parametrize(
    "fields",
    [
        {"seq": "one", "e": []},
        {"seq": 1, "e": "nope"},
        {"seq": 1, "e": [[*bucket(), 0, -5, 0]]},
        {"seq": 1, "e": [[*bucket(), 0, 10**16, 0]]},
        {"seq": 1, "e": [[*bucket(), 0, 1.5, 0]]},
        {"seq": -1, "e": []},
    ],
)
async def test_malformed_payloads_are_dropped_whole(
    cluster: Cluster, fields: dict[str, Any]
) -> None:
    node = await cluster.add()
    await cluster.layer.group_send(GROUP, sealed(protocol.STATE, **fields))
    await eventually(lambda: node.metrics.dropped_malformed == 1)
    assert len(node.store) == 0
    # The node still works after that.
    await cluster.layer.group_send(GROUP, sealed(protocol.STATE, seq=1, e=[entry(bucket(), 3)]))
    await eventually(lambda: node.store.total(bucket()) == 3)


async def test_unknown_types_are_counted(cluster: Cluster) -> None:
    node = await cluster.add()
    await cluster.layer.group_send(GROUP, {"type": "chat.message", "text": "hi"})
    await eventually(lambda: node.metrics.dropped_unknown_type == 1)


async def test_processes_on_both_sides_of_a_key_rotation_still_sync(cluster: Cluster) -> None:
    old_key, new_key = b"old secret's key", b"new secret's key"
    before = await cluster.add(keys=[old_key])  # not deployed yet: only the old key
    after = await cluster.add(keys=[new_key, old_key])  # SECRET_KEY_FALLBACKS = [old]
    stranger = await cluster.add(keys=[b"another site"], wait_caught_up=False)
    key = bucket()
    before.store.add(key, 2, time.time())
    after.store.add(key, 3, time.time())
    await eventually(lambda: before.store.total(key) == after.store.total(key) == 5)
    assert stranger.store.total(key) == 0
    assert stranger.metrics.dropped_bad_signature > 0
