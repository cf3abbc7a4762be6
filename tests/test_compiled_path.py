"""The decorator's compiled path: values read once per settings change, caches that stay bounded."""

from __future__ import annotations

import logging

import pytest
from django.test import RequestFactory, override_settings
from hypothesis import given
from hypothesis import strategies as st

from django_dratelimit import addresses, logutil
from django_dratelimit import conf as conf_module
from django_dratelimit.conf import conf
from django_dratelimit.keys import client_ip, key_value, resolve_key
from django_dratelimit.limiter import Limiter
from django_dratelimit.limits import MAX_STORED_KEYS, Limit
from django_dratelimit.local.algorithms import window_edges, window_start
from django_dratelimit.local.scopes import scoped_key, window_offset
from django_dratelimit.local.store import CounterStore
from django_dratelimit.process import set_limiter
from tests.conftest import FakeClock

factory = RequestFactory()


def test_conf_clear_calls_what_was_registered() -> None:
    calls: list[str] = []
    conf_module.on_clear(lambda: calls.append("cleared"))
    try:
        with override_settings(DRATELIMIT={"IPV4_MASK": 24}):
            assert calls == ["cleared"]
        assert calls == ["cleared", "cleared"]
        conf.clear()
        assert len(calls) == 3
    finally:
        conf_module._on_clear.pop()


def test_the_ip_key_follows_its_settings_at_once() -> None:
    request = factory.get("/", REMOTE_ADDR="198.51.100.9", HTTP_X_FORWARDED_FOR="a, 203.0.113.77")
    assert client_ip(request) == "198.51.100.9"  # compiled from the defaults
    with override_settings(DRATELIMIT={"IPV4_MASK": 24}):
        assert client_ip(request) == "198.51.100.0"
    with override_settings(DRATELIMIT={"IP_META_KEY": "HTTP_X_FORWARDED_FOR"}):
        assert client_ip(request) == "203.0.113.77"
    with override_settings(DRATELIMIT={"IP_META_KEY": lambda request: "192.0.2.1"}):
        assert client_ip(request) == "192.0.2.1"
    assert client_ip(request) == "198.51.100.9"


def test_a_used_limit_follows_enabled_and_stagger_at_once(
    limiter: Limiter, clock: FakeClock
) -> None:
    limit = Limit("g", "ip", "5/m")
    request = factory.get("/", REMOTE_ADDR="198.51.100.9")
    offset = window_offset("g", "198.51.100.9", 60)
    staggered = limit.usage(request)
    assert staggered is not None
    assert staggered.reset_at == window_start(clock(), 60, offset) + 60
    with override_settings(DRATELIMIT={"ENABLED": False}):
        assert limit.usage(request) is None
    with override_settings(DRATELIMIT={"STAGGER_WINDOWS": False}):
        set_limiter(Limiter(CounterStore(max_keys=1000), clock=clock, sync=False))
        aligned = limit.usage(request)
        assert aligned is not None
        assert aligned.reset_at == window_start(clock(), 60) + 60
    set_limiter(Limiter(CounterStore(max_keys=1000), clock=clock, sync=False))
    again = limit.usage(request)
    assert again is not None
    assert again.reset_at == staggered.reset_at


def test_the_stored_keys_kept_per_limit_stay_bounded_and_right(limiter: Limiter) -> None:
    limit = Limit("g", "get:who", "5/m", method="GET")
    for n in range(MAX_STORED_KEYS + 10):
        usage = limit.usage(factory.get("/", {"who": f"u{n}"}))
        assert usage is not None
        assert usage.key == f"u{n}"
    assert 0 < len(limit._stored) <= MAX_STORED_KEYS
    for value, (stored, offset, *_window) in limit._stored.items():
        assert stored == scoped_key(value, 5, 60, " GET")
        assert offset == window_offset("g", value, 60)
    last = f"u{MAX_STORED_KEYS + 9}"
    start = window_start(limiter.clock(), 60, window_offset("g", last, 60))
    assert limiter.store.total(("g", scoped_key(last, 5, 60, " GET"), 60, start)) == 1


@given(
    now=st.floats(0, 4e9, allow_nan=False),
    period=st.integers(1, 10**7),
    offset=st.integers(0, 10**7),
)
def test_window_start_is_the_float_formula_it_replaced(
    now: float, period: int, offset: int
) -> None:
    offset %= period
    before = int((now - offset) // period) * period + offset
    assert window_start(now, period, offset) == before


def test_key_value_normalizes_what_resolve_key_does() -> None:
    request = factory.get("/")
    for value in ("short", "x" * 64, "x" * 65, "é" * 200, 42, ""):

        def func(group: str, request: object, value: object = value) -> object:
            return value

        assert key_value(func, "g", request) == resolve_key(func, "g", request)  # type: ignore[arg-type]
    assert key_value(lambda g, r: "é" * 200, "g", request).startswith("sha256:")  # type: ignore[union-attr]
    assert key_value(lambda g, r: "", "g", request) is None


# -- the windows kept per key, and per period in limiter.hit ------------------------


def test_a_kept_window_follows_the_clock_forward_and_back(
    limiter: Limiter, clock: FakeClock
) -> None:
    limit = Limit("g", "ip", "5/m")  # windows staggered, the default
    request = factory.get("/", REMOTE_ADDR="198.51.100.9")
    offset = window_offset("g", "198.51.100.9", 60)

    def counted() -> tuple[int, float]:
        usage = limit.usage(request)
        assert usage is not None
        return usage.count, usage.reset_at

    first_end = window_start(clock(), 60, offset) + 60
    assert counted() == (1, first_end)
    assert counted() == (2, first_end)
    clock.now = first_end - 0.001  # the last instant of the window
    assert counted() == (3, first_end)
    clock.now = first_end  # the next window's first instant
    assert counted() == (1, first_end + 60)
    clock.now = first_end - 30  # a clock set back: the earlier window again
    assert counted() == (4, first_end)
    clock.advance(3600)
    assert counted() == (1, window_start(clock(), 60, offset) + 60)


def test_limiter_hit_keeps_its_windows_right_across_edges(
    limiter: Limiter, clock: FakeClock
) -> None:
    end = window_start(clock(), 60) + 60
    assert [limiter.hit("g", "k", "5/m").count for _ in range(2)] == [1, 2]
    clock.now = end - 0.5
    usage = limiter.hit("g", "k", "5/m")
    assert (usage.count, usage.reset_at, usage.time_left) == (3, end, 0.5)
    clock.now = end
    usage = limiter.hit("g", "k", "5/m")
    assert (usage.count, usage.reset_at) == (1, end + 60)
    assert limiter.hit("g", "k", "5/h").reset_at == window_start(end, 3600) + 3600  # its own
    clock.now = end - 1
    assert limiter.hit("g", "k", "5/m").count == 4


@given(now=st.floats(1e9, 4e9, allow_nan=False), period=st.integers(1, 10**6))
def test_window_edges_hold_exactly_the_instants_of_their_window(now: float, period: int) -> None:
    start, begins, ends = window_edges(now, period)
    assert start == window_start(now, period)
    assert begins == start
    assert ends == start + period
    assert begins <= now < ends


# -- the ip key, called without key_value -------------------------------------------


def test_a_raising_ip_meta_key_callable_is_logged_and_the_request_not_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(request: object) -> str:
        raise RuntimeError("the proxy header parser broke")

    request = factory.get("/", REMOTE_ADDR="198.51.100.9")
    logutil.forget()
    with override_settings(DRATELIMIT={"IP_META_KEY": broken}):
        with caplog.at_level(logging.ERROR, logger="django_dratelimit"):
            assert Limit("g", "ip", "5/m").usage(request) is None
        with pytest.raises(RuntimeError):  # client_ip() says what went wrong
            client_ip(request)
    assert "IP_META_KEY callable" in caplog.text
    assert "not counted" in caplog.text
    assert "the proxy header parser broke" in caplog.text  # the traceback


@pytest.mark.parametrize("zone", ["eth0", "x" * 1000])
def test_a_zone_id_is_dropped_from_the_address(zone: str) -> None:
    request = factory.get("/", REMOTE_ADDR=f"fe80::1%{zone}")
    with override_settings(DRATELIMIT={"IPV6_MASK": 128}):
        assert client_ip(request) == "fe80::1"
    assert client_ip(request) == "fe80::"  # /64 by default


def test_masked_addresses_stay_right_past_the_cache_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(addresses, "MAX_MASKED", 3)
    with override_settings(DRATELIMIT={"IPV4_MASK": 24}):
        for n in range(10):
            for host in (1, 2):
                request = factory.get("/", REMOTE_ADDR=f"198.51.{n}.{host}")
                assert client_ip(request) == f"198.51.{n}.0"
