"""Budgets across real processes: four uvicorn servers on a test-owned redis-server.

A limit of 100 a minute on one shared key, 1,000 requests as fast as this
machine sends them. The margins are the issue's targets: at most 103 plus one
per process admitted, and at least 97 when the load sits on one or two
processes (no starvation).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pytest

from tests.cluster import DemoServer, RedisServer, load, meet, wait_for
from tests.test_cluster import servers  # noqa: F401 (the fixture)

pytestmark = pytest.mark.cluster

LIMIT = 100
REQUESTS = 1000
PROCESSES = 4
MOST = LIMIT + 3 + PROCESSES  # the target: 103, plus one per process
LEAST = LIMIT - 3  # no starvation: at least 97
TOKENS = "/cluster/tokens/"  # the same key, limited by a token bucket of 100 a minute


def refilled(seconds: float) -> int:
    """Tokens a bucket of 100 a minute gains back during a burst: they may be admitted too."""
    return math.ceil(LIMIT * seconds / 60)


def budget_env(redis: RedisServer) -> dict[str, str]:
    return {
        "REDIS_URL": redis.url,
        "DEMO_CLUSTER_RATE": f"{LIMIT}/m",
        "DRATELIMIT_LAYER": "pubsub",
        "DRATELIMIT_SYNC_INTERVAL": "0.05",
        "DRATELIMIT_STAGGER_WINDOWS": "0",  # the minute below is the key's window
    }


def started(redis: RedisServer, servers: Callable[..., DemoServer]) -> list[DemoServer]:  # noqa: F811
    nodes = [servers("uvicorn", budget_env(redis)) for _ in range(PROCESSES)]
    meet(nodes)
    left = 60 - time.time() % 60  # the burst in one window
    if left < 15:
        time.sleep(left + 0.1)
    return nodes


def agree(nodes: list[DemoServer]) -> int:
    counts: list[int] = []

    def same() -> bool:
        counts[:] = [n.state()["count"] for n in nodes]
        return len(set(counts)) == 1

    wait_for(same, 10, "every process to agree on the count")
    return counts[0]


def test_round_robin_admits_at_most_the_limit_plus_one_per_process(
    redis_db: RedisServer,
    servers: Callable[..., DemoServer],  # noqa: F811
) -> None:
    nodes = started(redis_db, servers)
    result = load(nodes, REQUESTS)
    assert result["errors"] == 0
    assert result["admitted"] <= MOST, result
    # Refusals by a budget are not counted; the admitted ones all are.
    assert agree(nodes) >= result["admitted"]


@pytest.mark.parametrize("split", [0, 300])
def test_a_load_on_one_process_or_moving_to_another_is_not_starved(
    split: int,
    redis_db: RedisServer,
    servers: Callable[..., DemoServer],  # noqa: F811
) -> None:
    nodes = started(redis_db, servers)
    if split:
        first, rest = load(nodes[:1], split), load(nodes[1:2], REQUESTS - split)
        admitted = first["admitted"] + rest["admitted"]
    else:
        admitted = load(nodes[:1], REQUESTS)["admitted"]
    assert LEAST <= admitted <= MOST


def test_with_the_broker_gone_each_process_admits_its_share_only(
    redis_db: RedisServer,
    servers: Callable[..., DemoServer],  # noqa: F811
) -> None:
    nodes = started(redis_db, servers)
    redis_db.stop()
    try:
        result = load(nodes, REQUESTS)
    finally:
        redis_db.start()
    assert result["errors"] == 0
    # Each process knows the others and admits its share of a fresh bucket: 100 // 4.
    assert result["admitted"] <= LIMIT + PROCESSES, result


def test_a_token_bucket_under_round_robin_admits_its_capacity_plus_the_refill(
    redis_db: RedisServer,
    servers: Callable[..., DemoServer],  # noqa: F811
) -> None:
    nodes = started(redis_db, servers)
    began = time.monotonic()
    result = load(nodes, REQUESTS, path=TOKENS)
    burst = time.monotonic() - began
    assert result["errors"] == 0
    # The bucket itself admits its 100 tokens plus what refills during the burst;
    # the margin on top is the windows' (3, plus one per process for rounding).
    assert result["admitted"] <= MOST + refilled(burst), (result, burst)
    assert result["admitted"] >= LEAST, result  # round-robin: nobody's share is parked


def test_a_token_bucket_with_the_broker_gone_admits_a_share_per_process(
    redis_db: RedisServer,
    servers: Callable[..., DemoServer],  # noqa: F811
) -> None:
    nodes = started(redis_db, servers)
    redis_db.stop()
    try:
        began = time.monotonic()
        result = load(nodes, REQUESTS, path=TOKENS)
        burst = time.monotonic() - began
    finally:
        redis_db.start()
    assert result["errors"] == 0
    # Each process knows the others and takes an equal share, 100 // 4, then a
    # quarter of the refill: the bucket's own bound, plus one per process.
    assert result["admitted"] <= LIMIT + PROCESSES + refilled(burst), (result, burst)


@pytest.mark.parametrize("split", [0, 300])
def test_a_token_bucket_load_on_one_process_or_moving_is_not_starved(
    split: int,
    redis_db: RedisServer,
    servers: Callable[..., DemoServer],  # noqa: F811
) -> None:
    nodes = started(redis_db, servers)
    began = time.monotonic()
    if split:
        first = load(nodes[:1], split, path=TOKENS)
        rest = load(nodes[1:2], REQUESTS - split, path=TOKENS)
        admitted = first["admitted"] + rest["admitted"]
    else:
        admitted = load(nodes[:1], REQUESTS, path=TOKENS)["admitted"]
    burst = time.monotonic() - began
    # The shares follow the recent rate: what another process was promised and
    # does not use lapses within a second, so the busy one gets the bucket.
    assert LEAST <= admitted <= MOST + refilled(burst), (admitted, burst)
