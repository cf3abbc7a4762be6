"""Strict mode on caches without Lua: the cache API's incr() and add() (LocMem here)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.test import override_settings

from django_dratelimit import logutil
from django_dratelimit.limiter import Limiter
from django_dratelimit.local.algorithms import SLIDING_WINDOW
from django_dratelimit.local.store import CounterStore
from django_dratelimit.rates import parse_rate_string
from django_dratelimit.strict.cache_keys import cache_key
from django_dratelimit.strict.counter import (
    StrictCounter,
    StrictUnavailable,
    StrictUnsupported,
    get_strict_counter,
)
from django_dratelimit.strict.kinds import NOT_SHARED
from tests.conftest import FakeClock
from tests.strict_caches import BUCKET, START


@pytest.fixture(autouse=True)
def _fresh_log_throttle() -> None:
    logutil.forget()


# -- other backends: incr() and add() --------------------------------------------------------


@pytest.fixture
def locmem() -> Iterator[StrictCounter]:
    config = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "strict"}
    with override_settings(CACHES={"default": config}):
        caches["default"].clear()
        yield StrictCounter()


def test_the_cache_api_counts_and_expires(locmem: StrictCounter) -> None:
    assert locmem.kind == NOT_SHARED
    assert not locmem.can_enumerate
    assert locmem.hit(BUCKET, 2, 0.5) == 2
    assert locmem.hit_many([BUCKET], 3, [60.0], [("login", "x", 60, START)]) == ([5], [0])
    assert locmem.totals([BUCKET, ("login", "y", 60, START)]) == [5, 0]
    cache = caches["default"]
    assert isinstance(cache, LocMemCache)
    # add() set the expiry: now + 0.5 s + the grace, rounded up to whole seconds.
    expiry = cache._expire_info[cache.make_key(cache_key(BUCKET))]  # type: ignore[attr-defined]
    assert time.time() + 1 < expiry <= time.time() + 2


def test_the_cache_api_usages_are_the_local_modes(locmem: StrictCounter) -> None:
    clock = FakeClock(START + 10.0)
    local = Limiter(CounterStore(max_keys=1000), clock=clock, sync=False)
    rates = parse_rate_string("3/10s;5/m")
    for _ in range(8):
        clock.advance(3)
        expected = local.check("api", "k", rates, SLIDING_WINDOW, 1)
        assert locmem.check("api", "k", rates, SLIDING_WINDOW, 1, clock()) == expected


def test_the_cache_api_resets_keys_with_their_periods(locmem: StrictCounter) -> None:
    now = START + 30.0
    for bucket in [
        ("g", "k", 60, START),
        ("g", "k", 60, START - 60),
        ("g", "k", 3600, START - START % 3600),
        ("g", "other", 60, START),
    ]:
        locmem.hit(bucket, 1, 60.0)

    assert locmem.live() == []
    with pytest.raises(StrictUnsupported, match="whole group"):
        locmem.reset("g")
    with pytest.raises(StrictUnsupported, match="periods"):
        locmem.reset("g", "k")
    assert locmem.reset("g", "k", periods=[60, 3600], now=now) == 3
    assert locmem.totals([("g", "k", 60, START), ("g", "other", 60, START)]) == [0, 1]
    assert locmem.reset("g", "other", periods=[60]) == 0  # now: long after START


class RacyCache(LocMemCache):
    """incr() finds nothing, then add() loses to another process: the race the loop handles."""

    misses = 0

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        if RacyCache.misses:
            RacyCache.misses -= 1
            raise ValueError("gone")
        return super().incr(key, delta, version)

    def add(self, key: Any, value: Any, timeout: Any = None, version: int | None = None) -> bool:
        super().add(key, value, timeout, version)
        return False


def test_the_cache_api_retries_a_lost_race() -> None:
    config = {"default": {"BACKEND": "tests.test_strict_cache_api.RacyCache", "LOCATION": "racy"}}
    with override_settings(CACHES=config):
        caches["default"].clear()
        counter = StrictCounter()
        RacyCache.misses = 1
        assert counter.hit(BUCKET, 2, 60.0) == 4  # add() stored 2, then incr() added 2
        assert counter.kind == NOT_SHARED
        RacyCache.misses = 3
        with pytest.raises(StrictUnavailable, match="keeps expiring"):
            counter.hit(("g", "k", 60, START), 1, 60.0)


# -- the process's counter -------------------------------------------------------------------


def test_the_process_counter_is_rebuilt_when_settings_change() -> None:
    first = get_strict_counter()
    assert get_strict_counter() is first
    assert get_strict_counter("default") is first
    with override_settings(DRATELIMIT={"STRICT_CACHE": "other"}):
        assert get_strict_counter().alias == "other"
    assert get_strict_counter() is not first
