"""Twelve real processes on a test-owned redis-server: they converge, and a joiner catches up.

Sync protocol v2 at a size where v1's relays and full re-sends hurt: every
process must end with the exact total, and a thirteenth process that starts
afterwards must see it at its first request (``STARTUP_SYNC_WAIT``), from the
twelve answers of one round each.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.cluster import DemoServer, RedisServer, load, wait_for
from tests.test_cluster import servers  # noqa: F401 (the fixture)

pytestmark = pytest.mark.cluster

PROCESSES = 12
REQUESTS = 1200


def env(redis: RedisServer, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis.url,
        "DEMO_CLUSTER_RATE": "1000000/h",  # far from the limit: every request counts
        "DRATELIMIT_LAYER": "pubsub",
        **extra,
    }


def test_twelve_processes_converge_and_a_joiner_is_caught_up(
    redis_db: RedisServer,
    servers: Callable[..., DemoServer],  # noqa: F811
) -> None:
    with ThreadPoolExecutor(4) as pool:
        nodes = list(pool.map(lambda _: servers("uvicorn", env(redis_db)), range(PROCESSES)))
    result = load(nodes, REQUESTS)
    assert (result["admitted"], result["errors"]) == (REQUESTS, 0)
    wait_for(
        lambda: all(n.state()["count"] == REQUESTS for n in nodes),
        10,
        f"all {PROCESSES} processes to count {REQUESTS}",
    )
    infos = [n.state()["sync"] for n in nodes]
    assert all(info["peers"] == PROCESSES - 1 for info in infos)
    assert all(info["metrics"]["dropped_bad_signature"] == 0 for info in infos)

    late = servers("uvicorn", env(redis_db, DRATELIMIT_STARTUP_SYNC_WAIT="3"))
    # Its first request waited for the join: every peer's own counts, at once.
    assert late.state()["count"] == REQUESTS
