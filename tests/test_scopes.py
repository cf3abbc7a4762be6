"""Scoped buckets and staggered windows (scopes.py), in the limiter, the store and strict mode."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from django.core.cache import caches
from django.test import override_settings
from hypothesis import given
from hypothesis import strategies as st

from django_dratelimit.limiter import Limiter
from django_dratelimit.local.algorithms import SLIDING_WINDOW, window_start
from django_dratelimit.local.scopes import (
    base_key,
    method_scope,
    scoped_key,
    window_offset,
)
from django_dratelimit.local.store import CounterStore, Entry
from django_dratelimit.rates import Rate
from django_dratelimit.strict.counter import StrictCounter
from django_dratelimit.usage import Usage
from tests.conftest import FakeClock

MINUTE = (Rate(1, 60),)


def check(
    limiter: Limiter, rate: Rate, scope: str | None, stagger: bool = False, key: str = "k"
) -> Usage:
    return limiter.check("g", key, (rate,), "fixed_window", 1, scope=scope, stagger=stagger)


# -- the scope ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "scope"),
    [
        (None, ""),
        ((None,), ""),  # django-ratelimit's ALL
        ("post", " POST"),
        (["POST", "GET"], " GET,POST"),
        (("get", "POST", "GET"), " GET,POST"),
        ([], " "),  # no method at all: never applies, counted apart from ALL
    ],
)
def test_method_scope_is_sorted_and_upper_case(method: object, scope: str) -> None:
    assert method_scope(method) == scope  # type: ignore[arg-type]


@given(
    key=st.text(min_size=1, max_size=40),
    limit=st.integers(0, 10**9),
    period=st.integers(1, 10**7),
    method=st.sampled_from([None, "GET", ["POST", "PUT"], ["M-SEARCH"]]),
)
def test_base_key_undoes_scoped_key(key: str, limit: int, period: int, method: object) -> None:
    scope = method_scope(method)  # type: ignore[arg-type]
    assert base_key(scoped_key(key, limit, period, scope)) == key


@pytest.mark.parametrize("key", ["k", "a [b]", "k [5/60s", "k [x/60s]", "[2001:db8::1]", "k]"])
def test_base_key_leaves_unscoped_keys_alone(key: str) -> None:
    assert base_key(key) == key


def test_counts_are_apart_per_limit_and_methods(limiter: Limiter) -> None:
    assert check(limiter, Rate(0, 60), "").count == 1
    assert check(limiter, Rate(1, 60), "").count == 1  # "0/m" hits do not count against "1/m"
    assert check(limiter, Rate(1, 60), " GET").count == 1
    assert check(limiter, Rate(1, 60), " POST").count == 1
    assert check(limiter, Rate(1, 60), " GET").count == 2
    # limiter.hit keeps one bucket per (group, key, period): none of the above.
    assert limiter.hit("g", "k", "1/m").count == 1
    assert limiter.hit("g", "k", "5/m").count == 2


# -- staggered windows -------------------------------------------------------------------


def test_window_offset_is_the_same_in_every_process() -> None:
    # Not Python's hash(): that differs per process (PYTHONHASHSEED).
    code = "from django_dratelimit.local.scopes import window_offset as o; print(o('g', 'k', 3600))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert int(other.stdout) == window_offset("g", "k", 3600)


def test_offsets_spread_keys_over_the_period() -> None:
    offsets = {window_offset("g", f"203.0.113.{i}", 3600) for i in range(200)}
    assert len(offsets) > 150
    assert all(0 <= offset < 3600 for offset in offsets)
    assert window_offset("g", "k", 1) == 0


@given(now=st.floats(1e9, 2e9), period=st.integers(1, 86400), offset=st.integers(0, 86399))
def test_a_staggered_window_contains_now(now: float, period: int, offset: int) -> None:
    offset %= period
    start = window_start(now, period, offset)
    assert start <= now < start + period
    assert start % period == offset


def test_staggered_windows_end_at_each_keys_offset(limiter: Limiter, clock: FakeClock) -> None:
    for key in ("a", "b", "c"):
        usage = check(limiter, Rate(5, 60), "", stagger=True, key=key)
        end = window_start(clock.now, 60, window_offset("g", key, 60)) + 60
        assert usage.reset_at == end
        assert usage.time_left == end - clock.now


def test_a_staggered_window_starts_over_at_its_own_boundary(
    limiter: Limiter, clock: FakeClock
) -> None:
    clock.now = window_start(clock.now, 60, window_offset("g", "k", 60)) + 59
    assert check(limiter, Rate(1, 60), "", stagger=True).count == 1
    clock.advance(1)
    assert check(limiter, Rate(1, 60), "", stagger=True).count == 1


def test_a_sliding_window_weighs_the_staggered_previous_window(
    limiter: Limiter, clock: FakeClock
) -> None:
    start = window_start(clock.now, 60, window_offset("g", "k", 60))
    clock.now = start + 10
    for _ in range(4):
        limiter.check("g", "k", (Rate(4, 60),), SLIDING_WINDOW, 1, scope="", stagger=True)
    clock.now = start + 60 + 45  # a quarter of the previous window still weighs
    usage = limiter.check("g", "k", (Rate(4, 60),), SLIDING_WINDOW, 0, scope="", stagger=True)
    assert usage.count == 1


# -- resets reach every scope of a key ---------------------------------------------------------


def test_a_key_reset_covers_its_scoped_variants(limiter: Limiter) -> None:
    for scope in ("", " GET", " POST"):
        check(limiter, Rate(5, 60), scope, key="alice")
    check(limiter, Rate(5, 60), "", key="bob")
    limiter.hit("g", "alice", "5/m")

    assert limiter.reset("g", "alice") == 4
    assert [check(limiter, Rate(5, 60), s, key="alice").count for s in ("", " GET")] == [1, 1]
    assert check(limiter, Rate(5, 60), "", key="bob").count == 2


def test_a_peer_cannot_bring_back_a_scoped_count_after_a_key_reset(clock: FakeClock) -> None:
    store = CounterStore()
    start = int(clock.now // 60) * 60
    entry = Entry("g", scoped_key("alice", 5, 60, ""), 60, start, 0, 3, 0)
    store.merge("peer", [entry], clock.now)
    store.reset("g", "alice")

    assert store.merge("peer", [entry], clock.now) == 0  # counted before the reset: refused
    assert store.total(("g", entry.key, 60, start)) == 0


@pytest.fixture
def locmem() -> Iterator[StrictCounter]:
    config = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "scopes"}
    with override_settings(CACHES={"default": config}):
        caches["default"].clear()
        yield StrictCounter()


def test_strict_counts_apart_per_scope_in_staggered_windows(
    locmem: StrictCounter, clock: FakeClock
) -> None:
    local = Limiter(CounterStore(), clock=clock, sync=False)
    for scope in ("", " POST", ""):
        strict = locmem.check(
            "g", "k", MINUTE, "fixed_window", 1, clock(), scope=scope, stagger=True
        )
        assert strict == local.check("g", "k", MINUTE, "fixed_window", 1, scope=scope, stagger=True)


def test_strict_reset_without_listing_keys_covers_scopes_and_staggered_windows(
    locmem: StrictCounter, clock: FakeClock
) -> None:
    for scope in ("", " POST"):
        locmem.check("g", "k", MINUTE, "fixed_window", 1, clock(), scope=scope, stagger=True)
    locmem.check("g", "k", MINUTE, "fixed_window", 1, clock())  # unscoped, aligned

    removed = locmem.reset(
        "g", "k", periods=[60], scopes=[(1, 60, ""), (1, 60, " POST")], now=clock()
    )
    assert removed == 3
    assert (
        locmem.check("g", "k", MINUTE, "fixed_window", 0, clock(), scope="", stagger=True).count
        == 0
    )
