"""Redis Sentinel fails the master over while three processes sync and count strictly through it.

A master, its replica and one Sentinel are started by the test. The demo's
channel layer and its strict cache (django-redis) both find the master through
Sentinel (see docs/sentinel.md). Mid-load, ``SENTINEL FAILOVER``: Sentinel
promotes the replica within a second, but turns the old master into a replica
only at its next look at it (Sentinel polls replicas every 10 s), and until
then clients connected to the old master go on using it.

Two Redis configurations:

- ``default``: the old master keeps accepting writes until it is turned into a
  replica, then drops them (it resyncs from the new master): strict counts
  written there in between are lost, silently;
- ``min-replicas-to-write 1``: a master without a replica refuses writes, so
  strict mode sees an error and follows ``STRICT_FAIL_OPEN`` instead.

Eventual mode converges after the failover either way; no request gets a 5xx.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from testproject.faults import FAULTS_GROUP
from tests.cluster import DemoServer
from tests.faults.conftest import (
    HEARTBEAT,
    SHARED_KEY,
    SYNC_INTERVAL,
    converge,
    fresh_key,
    fresh_window,
)
from tests.faults.load import Loader, Reply, tally
from tests.faults.sentinel import MASTER_NAME, MIN_REPLICAS_MAX_LAG, SentinelSet, binaries

pytestmark = [
    pytest.mark.faults,
    pytest.mark.timeout(240),
    pytest.mark.skipif(binaries() is None, reason="needs redis-sentinel (apt: redis-sentinel)"),
]

STRICT_GROUP = "bench-strict-acc"
# Strict requests that fail reach the fail policy only after the cache client gave
# up on them; the last connection to the old master is noticed at its next use.
SETTLE = 2.0


def sentinel_env(sentinels: SentinelSet, fail_open: bool) -> dict[str, str]:
    return {
        "REDIS_SENTINELS": sentinels.sentinels,
        "REDIS_MASTER_NAME": MASTER_NAME,
        "DEMO_STRICT_CACHE": "redis",
        "DEMO_CLUSTER_RATE": "1000000/h",
        "DEMO_BENCH_ACC_RATE": "1000000/m",  # strict: no request is over the limit
        "DRATELIMIT_STRICT_FAIL_OPEN": "1" if fail_open else "0",
        "DRATELIMIT_LAYER": "pubsub",
        "DRATELIMIT_SYNC_INTERVAL": str(SYNC_INTERVAL),
        "DRATELIMIT_ANTI_ENTROPY": str(HEARTBEAT),
    }


def strict_count(sentinels: SentinelSet, key: str) -> int:
    """The strict counters of ``key`` on the current master (one window)."""
    with sentinels.master().client() as client:
        names = list(client.scan_iter(match=f"*{STRICT_GROUP}:{key}*", count=1000))
        return sum(int(v) for v in client.mget(names) if v is not None) if names else 0


def limited_times(replies: list[Reply], since: float) -> list[float]:
    return [round(r.sent - since, 2) for r in replies if r.status == 429]


@pytest.mark.parametrize("min_replicas", [0, 1], ids=["default", "min-replicas-to-write"])
def test_sentinel_failover(
    min_replicas: int, servers: Callable[..., DemoServer], record: Callable[..., None]
) -> None:
    sentinels = SentinelSet(min_replicas=min_replicas)
    try:
        run_failover(sentinels, min_replicas, servers, record)
    finally:
        sentinels.close()


def run_failover(
    sentinels: SentinelSet,
    min_replicas: int,
    servers: Callable[..., DemoServer],
    record: Callable[..., None],
) -> None:
    closed = [servers("uvicorn", sentinel_env(sentinels, fail_open=False)) for _ in range(2)]
    opened = servers("uvicorn", sentinel_env(sentinels, fail_open=True))
    nodes = [*closed, opened]
    fresh_window(FAULTS_GROUP, SHARED_KEY, 3600, needed=120)
    closed_key = fresh_key(STRICT_GROUP, 60, needed=45)
    open_key = fresh_key(STRICT_GROUP, 60, needed=45)

    eventual = Loader(nodes, threads=3, pause=0.005)
    strict_closed = Loader(closed, path=f"/bench/strict/acc/?k={closed_key}", threads=2, pause=0.01)
    strict_open = Loader([opened], path=f"/bench/strict/acc/?k={open_key}", threads=1, pause=0.01)
    loaders = [eventual, strict_closed, strict_open]
    for loader in loaders:
        loader.start()
    try:
        time.sleep(2.0)  # load before the failover
        started, promoted, done = sentinels.failover()
        time.sleep(SETTLE + 2.0)  # load after the failover: strict works again
    finally:
        for loader in loaders:
            loader.stop()

    for loader in loaders:
        counted = tally(loader.replies)
        assert counted["server_errors"] == counted["no_answer"] == counted["other"] == 0, counted

    # Eventual mode: every process ends up with the exact total, through the new master.
    took = converge(nodes, len(eventual.replies), 30, group=FAULTS_GROUP, key=SHARED_KEY)

    # Strict mode follows STRICT_FAIL_OPEN: an open process never refuses (no request
    # is over its limit), a closed one refuses only during the failover.
    assert tally(strict_open.replies)["limited"] == 0
    refused = limited_times(strict_closed.replies, started)
    assert all(t <= done - started + SETTLE for t in refused), (refused, done - started)
    after = [r for r in strict_closed.replies if r.sent > done + SETTLE]
    assert after
    assert all(r.status == 200 for r in after)

    ok = tally(strict_closed.replies)["admitted"]
    stored = strict_count(sentinels, closed_key)
    lost = max(0, ok - stored)
    if min_replicas:
        # A master without a replica takes no write, so only what the old master took
        # in its last moments with a replica can be lost: Redis bounds that window by
        # min-replicas-max-lag plus one replica ack (sent every second).
        rate = len(strict_closed.replies) / (
            max(r.done for r in strict_closed.replies) - min(r.sent for r in strict_closed.replies)
        )
        assert lost <= rate * (MIN_REPLICAS_MAX_LAG + 1.0), (ok, stored, rate)
        assert refused, "the split between promotion and conversion refused nothing"
    figures: dict[str, Any] = {
        "promoted_after_s": round(promoted - started, 2),
        "old_master_converted_after_s": round(done - started, 2),
        "eventual_converged_in_s": round(took, 2),
        "eventual_requests": len(eventual.replies),
        "strict_closed_requests": len(strict_closed.replies),
        "strict_closed_refused": len(refused),
        "strict_closed_refused_span_s": [min(refused), max(refused)] if refused else None,
        "strict_open_requests": len(strict_open.replies),
        "strict_admitted": ok,
        "strict_stored_after": stored,
        "strict_lost": lost,
    }
    record(f"sentinel_{'min_replicas' if min_replicas else 'default'}", **figures)
