"""Fixtures of the fault suite: servers that are always stopped, a per-test Redis, the figures.

Every scenario records what it measured with ``record(name, **figures)``. With
``DRATELIMIT_FAULTS_RESULTS=path`` set (``bench/bench_faults.py`` sets it) the
figures of the session are written there as JSON, after each scenario.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import DemoServer, RedisServer, wait_for

# One copy of each for every test file; the fault tests import them from here too.
from tests.helpers import fresh_key as fresh_key
from tests.helpers import fresh_window as fresh_window
from tests.helpers import server_env as server_env

SYNC_INTERVAL = 0.05
HEARTBEAT = 1.0  # ANTI_ENTROPY_INTERVAL: heartbeats, and pulls of what a heartbeat shows missing
# Loopback broker latency plus the receiving thread's turn at the GIL on a busy
# 2-core machine (as in tests/test_cluster.py; README states the bound with it).
LATENCY_ALLOWANCE = 0.1
SHARED_KEY = "shared"

_results: dict[str, Any] = {}


def keep(name: str, **figures: Any) -> None:
    """Keep a scenario's figures (and write them out, if asked to)."""
    _results.setdefault(name, {}).update(figures)
    target = os.environ.get("DRATELIMIT_FAULTS_RESULTS")
    if target:
        Path(target).write_text(json.dumps(_results, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def record() -> Callable[..., None]:
    """``record("crash", lost=3)``: keep a scenario's figures."""
    return keep


class Fleet:
    """Demo servers started on demand; ``close()`` stops every one and its process group."""

    def __init__(self) -> None:
        self.started: list[DemoServer] = []

    def __call__(self, kind: str, env: dict[str, str], **options: Any) -> DemoServer:
        server = DemoServer(kind, env, **options)
        self.started.append(server)
        return server.start()

    def close(self) -> None:
        pids = [s.process.pid for s in self.started if s.process is not None]
        for server in self.started:
            server.stop()
        for pid in pids:  # gunicorn's workers too
            with pytest.raises(ProcessLookupError):
                os.killpg(pid, 0)


@pytest.fixture
def servers() -> Iterator[Fleet]:
    """Start demo servers on demand; every one of them (and its process group) is gone after."""
    fleet = Fleet()
    yield fleet
    fleet.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own (fault tests break things)."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


def counts(servers: list[DemoServer], **params: str) -> list[int]:
    return [int(s.state(**params)["count"]) for s in servers]


def converge(servers: list[DemoServer], expected: int, timeout: float, **params: str) -> float:
    """Wait until every server reports ``expected``; return how long that took."""
    started = time.monotonic()
    seen: list[int] = []

    def agreed() -> bool:
        seen[:] = counts(servers, **params)
        return all(c == expected for c in seen)

    try:
        wait_for(agreed, timeout, f"every server to report {expected}", interval=0.02)
    except TimeoutError:
        raise AssertionError(f"expected {expected} everywhere, last seen {seen}") from None
    return time.monotonic() - started


def proc(server: DemoServer) -> dict[str, Any]:
    status, body = server.get("/faults/proc/")
    assert status == 200, body
    return body
