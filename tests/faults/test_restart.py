"""Restarts mid-window: all processes at once (a deploy), and one at a time (a rolling restart).

Counts live in the processes' memory only. A restart of every process at once
forgets the window's counts: that is the documented cost. A rolling restart
keeps them, as long as each new process has joined (its first request, with
``STARTUP_SYNC_WAIT``) before the last process that holds them stops: the test
starts the new process, waits for its first answer, then stops an old one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from testproject.faults import FAULTS_GROUP
from tests.cluster import DemoServer, RedisServer
from tests.faults.conftest import SHARED_KEY, converge, counts, fresh_window, server_env
from tests.faults.load import Loader, tally

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

HITS = 300
PARAMS = {"group": FAULTS_GROUP, "key": SHARED_KEY}


def start_cluster(redis: RedisServer, servers: Callable[..., DemoServer]) -> list[DemoServer]:
    env = server_env(redis.url, DRATELIMIT_STARTUP_SYNC_WAIT="2")
    nodes = [servers("uvicorn", env) for _ in range(3)]
    fresh_window(FAULTS_GROUP, SHARED_KEY, 3600, needed=120)
    counted = tally(Loader(nodes, threads=3, total=HITS).run().replies)
    assert counted["admitted"] == HITS, counted
    converge(nodes, HITS, 10, **PARAMS)
    return nodes


def test_a_full_restart_forgets_the_window(
    redis_db: RedisServer, servers: Callable[..., DemoServer], record: Callable[..., None]
) -> None:
    old = start_cluster(redis_db, servers)
    for server in old:
        server.stop()
    env = server_env(redis_db.url, DRATELIMIT_STARTUP_SYNC_WAIT="2")
    new = [servers("uvicorn", env) for _ in range(3)]
    kept = counts(new, **PARAMS)
    # Nobody was left to tell them: in-memory counts do not survive a full restart.
    assert kept == [0, 0, 0]
    record("restart_all_at_once", hits=HITS, kept=max(kept))


def test_a_rolling_restart_keeps_the_count(
    redis_db: RedisServer, servers: Callable[..., DemoServer], record: Callable[..., None]
) -> None:
    old = start_cluster(redis_db, servers)
    env = server_env(redis_db.url, DRATELIMIT_STARTUP_SYNC_WAIT="2")
    steps: list[float] = []
    new: list[DemoServer] = []
    for server in old:
        began = time.monotonic()
        # start() returns after the first answer: the join (peers' counts, then the
        # departed origins from one of them) is complete by then.
        replacement = servers("uvicorn", env)
        steps.append(time.monotonic() - began)
        # Its very first look at the counter already holds the whole window.
        assert counts([replacement], **PARAMS) == [HITS]
        new.append(replacement)
        server.stop()
    assert counts(new, **PARAMS) == [HITS] * 3
    record(
        "restart_rolling",
        hits=HITS,
        kept=HITS,
        step_s=[round(s, 2) for s in steps],
        slowest_step_s=round(max(steps), 2),
    )
