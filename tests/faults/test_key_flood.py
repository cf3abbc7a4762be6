"""A key flood: one client sends requests with a new key each, while a legitimate client is limited.

Two uvicorn servers with ``MAX_KEYS = 1000`` (small, so that the flood is fast):
the flood sends 6 x MAX_KEYS distinct ``X-Client`` values, spread over both.
Each process's store stays at MAX_KEYS buckets (evicting), its RSS stops
growing once the store is full, and no request fails. Meanwhile a legitimate
client, limited at 20 a minute, keeps asking; its limit should hold.

The scenario runs once (a module fixture); each test asserts one promise on it.
``bench/bench_memory.py`` measures bytes per bucket at 100,000 buckets.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from testproject.faults import CLIENT_HEADER, KEYED_GROUP
from tests.cluster import RedisServer
from tests.faults.conftest import (
    LATENCY_ALLOWANCE,
    SYNC_INTERVAL,
    Fleet,
    fresh_key,
    keep,
    proc,
    server_env,
)
from tests.faults.load import Loader, tally

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

MAX_KEYS = 1000
LIMIT = 20
FLOOD = 6 * MAX_KEYS
# RSS may still grow this much once the store is full: the allocator's free lists,
# the request path's own garbage and, in CI, coverage's tracer in the servers (5.5 MiB
# measured there; 0.9 to 1.2 MiB without it). The bound on buckets is the store size,
# asserted exactly below; this catches a per-request leak (4,000 requests x 4 KiB).
RSS_SLACK_KIB = 16384


@pytest.fixture(scope="module")
def flood() -> Iterator[dict[str, Any]]:
    redis = RedisServer()
    redis.start()
    fleet = Fleet()
    try:
        env = server_env(redis.url, rate=f"{LIMIT}/m", DRATELIMIT_MAX_KEYS=str(MAX_KEYS))
        nodes = [fleet("uvicorn", env) for _ in range(2)]
        legit_key = fresh_key(KEYED_GROUP, 60, needed=55, prefix="legit")
        start = {n.port: proc(n)["rss_kib"] for n in nodes}

        def flood_headers(thread: int, number: int) -> dict[str, str]:
            return {CLIENT_HEADER: uuid.uuid4().hex}

        # Fill the stores first (one MAX_KEYS of keys each), then the rest of the flood.
        Loader(
            nodes, path="/faults/keyed/", threads=4, total=2 * MAX_KEYS, headers=flood_headers
        ).run()
        full = {n.port: proc(n) for n in nodes}
        legit = Loader(
            nodes,
            path="/faults/keyed/",
            threads=1,
            pause=0.05,
            headers=lambda t, n: {CLIENT_HEADER: legit_key},
        ).start()
        try:
            rest = Loader(
                nodes,
                path="/faults/keyed/",
                threads=4,
                total=FLOOD - 2 * MAX_KEYS,
                headers=flood_headers,
            ).run()
        finally:
            legit.stop()
        after = {n.port: proc(n) for n in nodes}
        yield {
            "nodes": [n.port for n in nodes],
            "start_rss": start,
            "full": full,
            "after": after,
            "flood": tally(rest.replies),
            "legit": legit.replies,
            "flood_rate": len(rest.replies)
            / (max(r.done for r in rest.replies) - min(r.sent for r in rest.replies)),
        }
    finally:
        fleet.close()
        redis.close()


def test_memory_stays_bounded_under_a_key_flood(flood: dict[str, Any]) -> None:
    assert flood["flood"]["server_errors"] == flood["flood"]["no_answer"] == 0, flood["flood"]
    growth: dict[int, int] = {}
    for port in flood["nodes"]:
        full, after = flood["full"][port], flood["after"][port]
        assert full["buckets"] <= MAX_KEYS
        assert after["buckets"] <= MAX_KEYS
        assert after["evictions"] > 0
        growth[port] = after["rss_kib"] - full["rss_kib"]
        assert growth[port] <= RSS_SLACK_KIB, (port, full["rss_kib"], after["rss_kib"])
    port = flood["nodes"][0]
    full, after = flood["full"][port], flood["after"][port]
    sync = after["sync"]["metrics"] if after["sync"] else {}
    keep(
        "key_flood",
        max_keys=MAX_KEYS,
        flood_keys=FLOOD,
        buckets_after=after["buckets"],
        evictions=after["evictions"],
        rss_kib_start=flood["start_rss"][port],
        rss_kib_store_full=full["rss_kib"],
        rss_kib_after_flood=after["rss_kib"],
        rss_growth_after_full_kib=growth,
        rss_per_bucket_bytes=round(
            (full["rss_kib"] - flood["start_rss"][port]) * 1024 / max(1, full["buckets"])
        ),
        flood_rate_per_s=round(flood["flood_rate"]),
        sync_messages_sent=sync.get("messages_sent"),
        sync_buckets_sent=sync.get("buckets_sent"),
    )


def test_a_legitimate_clients_limit_holds_during_a_key_flood(flood: dict[str, Any]) -> None:
    replies = flood["legit"]
    counted = tally(replies)
    assert counted["server_errors"] == counted["no_answer"] == 0, counted
    rate = len(replies) / (max(r.done for r in replies) - min(r.sent for r in replies))
    keep("key_flood", legit_requests=len(replies), legit_admitted=counted["admitted"])
    assert counted["admitted"] <= LIMIT + rate * (SYNC_INTERVAL + LATENCY_ALLOWANCE) + 1
