"""New budgets once per wake-up of the sync thread: the peers' messages of a round, planned once."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer

from django_dratelimit import logutil
from django_dratelimit.local.store import BucketKey, CounterStore
from django_dratelimit.sync import protocol
from django_dratelimit.sync.node import SyncNode
from django_dratelimit.sync.replans import Replans
from tests.test_sync import GROUP, TEST_KEYS, bucket, entry

PEERS = ["p1", "p2", "p3"]


def test_outside_an_event_loop_buckets_are_planned_at_once() -> None:
    planned: list[set[BucketKey]] = []
    replans = Replans(planned.append)
    replans.add([bucket()])
    assert planned == [{bucket()}]


async def test_buckets_added_in_one_go_are_planned_once_when_the_loop_has_control() -> None:
    planned: list[set[BucketKey]] = []
    replans = Replans(planned.append)
    first, second = bucket(), ("g", "other", 60, bucket()[3])
    replans.add([first])
    replans.add([second, first])
    replans.add([])
    assert planned == []  # the loop has not had control yet
    await asyncio.sleep(0)
    assert planned == [{first, second}]
    await asyncio.sleep(0)
    assert len(planned) == 1  # nothing pending: nothing planned again


def peer_state(peer: str, key: BucketKey, count: int) -> dict[str, Any]:
    payload = {"node": peer, "ch": None, "ts": time.time(), "seq": 1, "e": [entry(key, count)]}
    return protocol.seal(protocol.STATE, payload, TEST_KEYS)


async def test_a_rounds_messages_from_every_peer_make_one_new_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = CounterStore(origin="me")
    node = SyncNode(store, InMemoryChannelLayer(), groups=[GROUP], interval=0.05, keys=TEST_KEYS)
    key = bucket()
    store.add(key, 1, time.time(), 100)  # checked here against 100 a minute
    calls: list[list[BucketKey]] = []
    rebudget = store.rebudget

    def counted(bucket_keys: Any, *args: Any) -> None:
        calls.append(list(bucket_keys))
        rebudget(calls[-1], *args)

    monkeypatch.setattr(store, "rebudget", counted)
    # The three peers' messages of one round, read in one wake-up: 97 of 100, near.
    for peer in PEERS:
        node.handlers.dispatch(peer_state(peer, key, 32))
    assert sorted(node.members) == PEERS
    assert store.total(key) == 97
    assert calls == []
    await asyncio.sleep(0)
    # One plan from the last picture, not one per message.
    assert calls == [[key]]
    assert node.metrics.replans == 1
    levels = store.planned(time.time())[key]
    assert sum(levels.values()) <= 100
    assert set(levels) == {"me", *PEERS}


def test_a_failing_plan_is_logged_and_the_next_one_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    planned: list[set[BucketKey]] = []

    def plan(bucket_keys: set[BucketKey]) -> None:
        planned.append(bucket_keys)
        if len(planned) == 1:
            raise RuntimeError("a bug")

    logutil.forget("replan")
    replans = Replans(plan)
    with caplog.at_level(logging.ERROR, logger="django_dratelimit"):
        replans.add([bucket()])
    assert "new budgets failed" in caplog.text
    replans.add([bucket()])
    assert len(planned) == 2
