"""The command's fixtures: sync nodes in this process on the test-owned redis-server.

The in-process tests run several ``Limiter`` instances (each one a sync node
with its own thread, layer and node id) and ask them with ``call_command``;
tests/command/test_processes.py starts the demo project under uvicorn and
gunicorn and runs ``manage.py ratelimit`` as a subprocess.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.management import call_command
from django.test import override_settings

from django_dratelimit import registry
from django_dratelimit.limiter import Limiter
from django_dratelimit.local.algorithms import window_start
from django_dratelimit.rates import Rate
from django_dratelimit.sync import protocol
from django_dratelimit.sync.keys import signing_keys
from tests.cluster import RedisServer, wait_for
from tests.conftest import layer_config
from tests.helpers import wait_for_window

FAST = "0.5"  # seconds to wait for answers: every node here is on loopback
HOUR = 3600


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("ratelimit", *args, stdout=out)
    return out.getvalue()


def run_json(*args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run(*args, "--json"))
    return data


def fresh_hour(needed: float = 30.0) -> None:
    """Keep a test's hits in one hourly window (waits only in the last seconds of an hour)."""
    wait_for_window(HOUR, needed)


def bucket_key(group: str, key: str, period: int = HOUR) -> tuple[str, str, int, int]:
    return (group, key, period, window_start(time.time(), period))


def opened(message: Any) -> dict[str, Any]:
    """The payload of a message the command sent (checked with the site's keys)."""
    return protocol.open_message(message, signing_keys(), time.time())[1]


def sealed(payload: dict[str, Any]) -> dict[str, Any]:
    """A payload as a node would send it; ``_kind`` and ``_keys`` fake other messages."""
    fields = {k: v for k, v in payload.items() if not k.startswith("_")}
    keys = payload.get("_keys") or signing_keys()
    return protocol.seal(payload.get("_kind", protocol.REPLY), fields, keys)


@pytest.fixture(autouse=True)
def terminal_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # tables fit the terminal: make it the usual one


@pytest.fixture(params=["core", "pubsub"])
def layer(request: pytest.FixtureRequest, redis_db: RedisServer) -> Iterator[str]:
    with override_settings(
        CHANNEL_LAYERS={"default": layer_config(request.param, redis_db.url)},
        # Exact counts per node to inspect and reset: budgets (tested apart) would hold
        # back the rapid hits these fixtures make on a fresh bucket.
        DRATELIMIT={"SYNC_INTERVAL": 0.01, "ANTI_ENTROPY_INTERVAL": 0.5, "BUDGETS": False},
    ):
        yield request.param


@pytest.fixture
def core(redis_db: RedisServer) -> Iterator[str]:
    with override_settings(
        CHANNEL_LAYERS={"default": layer_config("core", redis_db.url)},
        DRATELIMIT={"SYNC_INTERVAL": 0.01, "ANTI_ENTROPY_INTERVAL": 0.5, "BUDGETS": False},
    ):
        yield "core"


@pytest.fixture
def nodes() -> Iterator[Callable[[int], list[Limiter]]]:
    """Start limiters whose sync nodes have joined the group; all are closed at the end."""
    made: list[Limiter] = []

    def start(count: int) -> list[Limiter]:
        limiters = [Limiter() for _ in range(count)]
        made.extend(limiters)
        for limiter in limiters:
            limiter.get("warm-up", "-", "1/m")  # the first use starts the sync thread
            sync = limiter.sync
            assert sync is not None
            node = sync.node
            assert node is not None
            wait_for(lambda n=node: n.joined.is_set() and n.channel, 5, "the node to join")
        return limiters

    yield start
    for limiter in made:
        limiter.close()


def converge(limiters: list[Limiter], group: str, key: str, rate: str, count: int) -> None:
    wait_for(
        lambda: all(lim.get(group, key, rate).count == count for lim in limiters),
        5,
        f"every node to count {count} for {group}/{key}",
    )


@pytest.fixture
def known_rates(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rates a decorator or rule would have registered, without leaking them."""
    monkeypatch.setitem(registry._known, "login", (Rate(5, HOUR),))


@pytest.fixture
def loaded(nodes: Callable[[int], list[Limiter]], known_rates: None) -> list[Limiter]:
    """Three nodes: login/1.2.3.4 at 5 (3 + 2 + 0), login/5.6.7.8 at 1, api/alice at 7."""
    fresh_hour()
    first, second, third = limiters = nodes(3)
    for _ in range(3):
        first.hit("login", "1.2.3.4", "5/h")
    for _ in range(2):
        second.hit("login", "1.2.3.4", "5/h")
    third.hit("login", "5.6.7.8", "5/h")
    for _ in range(7):
        third.hit("api", "alice", "100/h")
    converge(limiters, "login", "1.2.3.4", "5/h", 5)
    converge(limiters, "login", "5.6.7.8", "5/h", 1)
    converge(limiters, "api", "alice", "100/h", 7)
    return limiters
