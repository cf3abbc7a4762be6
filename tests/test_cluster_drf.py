"""Real processes: a DRF throttle of ours is one limit for the whole cluster.

DRF's own throttles on LocMemCache would admit the limit once per process
(300 of 1,000 here); a shared cache makes them exact but racy. Ours count in
memory and sync: the overshoot is bounded by what the other processes admit
during one sync round, as for the decorator (see test_cluster.py and README).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.cluster import DemoServer, RedisServer, load, wait_for
from tests.test_cluster import (
    LATENCY_ALLOWANCE,
    LIMIT,
    SYNC_INTERVAL,
    fresh_window,
    server_env,
    servers,  # noqa: F401 (the fixture that starts and always stops the servers)
    warm,
)

pytest.importorskip("rest_framework")
pytestmark = pytest.mark.cluster

REQUESTS = 1000
ADDRESS = "127.0.0.1"  # every request comes from loopback: one key for all processes


def burst(nodes: list[DemoServer], path: str) -> tuple[dict[str, int], float]:
    """Send REQUESTS round-robin to the servers; the result and the request rate."""
    warm(nodes)
    fresh_window()
    started = time.monotonic()
    result = load(nodes, REQUESTS, path=path)
    rate = REQUESTS / (time.monotonic() - started)
    assert result["errors"] == 0
    assert result["admitted"] + result["limited"] == REQUESTS
    return result, rate


@pytest.mark.parametrize("kind", ["gunicorn", "uvicorn"])
def test_a_drf_throttle_is_shared_by_three_processes(
    kind: str,
    redis_db: RedisServer,
    servers: Callable[..., DemoServer],  # noqa: F811 (the fixture imported above)
) -> None:
    nodes = [servers(kind, server_env(redis_db, "pubsub")) for _ in range(3)]
    result, rate = burst(nodes, "/cluster/drf/")
    bound = LIMIT + rate * (SYNC_INTERVAL + LATENCY_ALLOWANCE)
    print(f"\n{kind}: admitted {result['admitted']} of {REQUESTS}, limit {LIMIT}, {rate:.0f} req/s")
    # The README bound: the limit plus what one sync round (and the broker's
    # latency) lets through at this request rate. Per-process counting (DRF's
    # throttles on LocMemCache) would admit 3 x LIMIT.
    assert LIMIT <= result["admitted"] <= bound, (result, rate)
    # Every process ends up knowing every request, refused ones included.
    key = f"throttle_cluster-drf_{ADDRESS}"
    wait_for(
        lambda: all(
            n.state(group="cluster-drf", key=key, raw="1")["count"] == REQUESTS for n in nodes
        ),
        5,
        "every process to count every request",
    )


def test_a_strict_drf_throttle_is_exact_across_three_processes(
    redis_db: RedisServer,
    servers: Callable[..., DemoServer],  # noqa: F811 (the fixture imported above)
) -> None:
    env = server_env(redis_db, "pubsub", DEMO_STRICT_CACHE="redis")
    nodes = [servers("gunicorn", env) for _ in range(3)]
    result, rate = burst(nodes, "/cluster/drf-strict/")
    print(f"\nstrict: admitted {result['admitted']} of {REQUESTS}, limit {LIMIT}, {rate:.0f} req/s")
    assert result["admitted"] == LIMIT
