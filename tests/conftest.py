"""Shared fixtures: an injectable clock, a fresh limiter per test, leak checks."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from hypothesis import settings as hypothesis_settings

from django_dratelimit import registry
from django_dratelimit.limiter import Limiter, set_limiter
from django_dratelimit.local.store import CounterStore
from tests.cluster import RedisServer


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# The fixtures that start a redis-server; cluster and fault tests start their own too.
REDIS_FIXTURES = {"redis_server", "redis_db", "own_redis"}
REDIS_MARKERS = {"cluster", "faults"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a redis-server ``redis``: ``-m "not redis"`` runs without."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        markers = {marker.name for marker in item.iter_markers()}
        if fixtures & REDIS_FIXTURES or markers & REDIS_MARKERS:
            item.add_marker(pytest.mark.redis)


@pytest.fixture
def clock() -> FakeClock:
    # Starts 10 s into a minute (1_700_000_000 is 20 s past a minute boundary: align it).
    return FakeClock(1_699_999_980.0 + 10.0)


@pytest.fixture
def limiter(clock: FakeClock) -> Iterator[Limiter]:
    """The process limiter, with a fake clock and no sync thread."""
    instance = Limiter(CounterStore(max_keys=1000), clock=clock, sync=False)
    set_limiter(instance)
    yield instance
    set_limiter(None)


@pytest.fixture(autouse=True)
def _restore_registry() -> Iterator[None]:
    """Rates and strict groups registered by one test must not leak into another's checks."""
    known, strict = dict(registry._known), set(registry._strict)
    yield
    registry._known.clear()
    registry._known.update(known)
    registry._strict.clear()
    registry._strict.update(strict)


@pytest.fixture(autouse=True)
def _fresh_limiter() -> Iterator[None]:
    """Every test starts with an empty process limiter and leaves no thread behind."""
    before = {t.ident for t in threading.enumerate()}
    set_limiter(None)
    yield
    set_limiter(None)
    leaked = [
        t for t in threading.enumerate() if t.ident not in before and t.name == "dratelimit-sync"
    ]
    for thread in leaked:
        thread.join(5)
    assert not [t for t in leaked if t.is_alive()], "a dratelimit-sync thread outlived its test"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server owned by the test session, on a free loopback port."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_db(redis_server: RedisServer) -> RedisServer:
    """The session redis-server, emptied for this test."""
    if not redis_server.ping():  # a fault test may have stopped it
        redis_server.start()
    redis_server.command("FLUSHALL")
    return redis_server


def layer_config(kind: str, url: str) -> dict[str, object]:
    """The CHANNEL_LAYERS entry README recommends, for the core or the pub/sub layer."""
    host = {"address": url, "socket_timeout": 10}
    if kind in ("pubsub", "stock"):
        backend = "django_dratelimit.layers.RedisPubSubChannelLayer"
        if kind == "stock":  # channels_redis' own, which polls while idle
            backend = "channels_redis.pubsub.RedisPubSubChannelLayer"
        return {"BACKEND": backend, "CONFIG": {"hosts": [host]}}
    return {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [host], "capacity": 1000, "group_expiry": 30},
    }


# Machines are noisy (CI shares 2 cores with server processes): no per-example deadline.
hypothesis_settings.register_profile("dratelimit", deadline=None)
hypothesis_settings.load_profile("dratelimit")
