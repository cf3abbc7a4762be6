"""Strict mode: exact counters in a shared cache, against a test-owned redis-server."""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from django_dratelimit import logutil
from django_dratelimit.limiter import Limiter
from django_dratelimit.local.algorithms import FIXED_WINDOW, SLIDING_WINDOW
from django_dratelimit.local.store import CounterStore
from django_dratelimit.rates import parse_rate_string
from django_dratelimit.strict.backends import CHUNK, EXPIRY_GRACE, RedisBackend
from django_dratelimit.strict.cache_keys import MAX_COMPONENT, cache_key, parse_cache_key
from django_dratelimit.strict.counter import StrictCounter, StrictUnavailable, StrictUnsupported
from tests.cluster import LOOPBACK, RedisServer, free_port
from tests.conftest import FakeClock
from tests.strict_caches import BUCKET, DJANGO_BUILTIN, DJANGO_REDIS, START, redis_cache


@pytest.fixture(autouse=True)
def _fresh_log_throttle() -> None:
    logutil.forget()


@pytest.fixture(params=[DJANGO_REDIS, DJANGO_BUILTIN], ids=["django-redis", "django"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def counter(backend: str, redis_db: RedisServer) -> Iterator[StrictCounter]:
    # Roomy timeouts: these tests are about counting, on a machine that may be busy.
    with override_settings(CACHES={"default": redis_cache(backend, redis_db.url, 5.0)}):
        yield StrictCounter()


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "django_dratelimit"]


def raw_client(counter: StrictCounter) -> Any:
    counter.total(BUCKET)  # connects
    return redis_backend(counter).client


def redis_backend(counter: StrictCounter) -> RedisBackend:
    backend = counter.backend
    assert isinstance(backend, RedisBackend)
    return backend


# -- counting ------------------------------------------------------------------------------


def test_hits_add_up_and_the_first_one_sets_the_expiry(counter: StrictCounter) -> None:
    assert counter.hit(BUCKET, 3, 100.0) == 3
    assert counter.hit(BUCKET, 2, 10.0) == 5
    assert counter.total(BUCKET) == 5

    ttl = raw_client(counter).pttl(redis_backend(counter).key(BUCKET))
    # Set by the first hit (100 s), not moved by the second (10 s).
    assert 10_000 + EXPIRY_GRACE * 1000 < ttl <= (100 + EXPIRY_GRACE) * 1000


def test_a_counter_without_expiry_gets_one(counter: StrictCounter) -> None:
    client = raw_client(counter)
    key = redis_backend(counter).key(BUCKET)
    client.set(key, 7)  # e.g. left by another tool with no TTL

    assert counter.hit(BUCKET, 1, 30.0) == 8
    assert 0 < client.pttl(key) <= (30 + EXPIRY_GRACE) * 1000


def test_total_reads_without_creating(counter: StrictCounter) -> None:
    assert counter.total(BUCKET) == 0
    assert counter.totals([]) == []
    assert counter.hit_many([BUCKET], 0, [60.0]) == ([0], [])
    assert counter.live() == []


def test_a_hit_and_the_previous_window_are_one_round_trip(counter: StrictCounter) -> None:
    previous = (*BUCKET[:3], START - 60)
    counter.hit(previous, 4, 60.0)
    counter.hit(BUCKET, 1, 60.0)  # the script is loaded on the server now
    client = raw_client(counter)
    calls: list[tuple[Any, ...]] = []
    original = client.execute_command

    def spy(*args: Any, **options: Any) -> Any:
        calls.append(args)
        return original(*args, **options)

    client.execute_command = spy
    try:
        assert counter.hit_many([BUCKET], 2, [60.0], [previous]) == ([3], [4])
    finally:
        del client.execute_command
    assert [call[0] for call in calls] == ["EVALSHA"]


def test_the_script_is_reloaded_after_a_script_flush(counter: StrictCounter) -> None:
    counter.hit(BUCKET, 1, 60.0)
    raw_client(counter).script_flush()

    assert counter.hit(BUCKET, 1, 60.0) == 2


def test_several_rates_count_in_one_call(counter: StrictCounter) -> None:
    other = ("login", "203.0.113.7", 3600, START - START % 3600)
    assert counter.hit_many([BUCKET, other], 2, [60.0, 3600.0]) == ([2, 2], [])
    assert counter.totals([BUCKET, other, ("login", "x", 60, START)]) == [2, 2, 0]


# -- keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bucket",
    [
        ("login", "203.0.113.7", 60, START),
        ("myapp.views.comment", "2001:db8::", 3600, START - START % 3600),
        ("a:b c*?[x]", "user\n\t é ☃ %41 \x00", 1, START),
        ("", "", 86400, 0),
        ("g", "=looks-hashed", 60, START),
        ("g", "\udcff surrogate", 60, START),
    ],
)
def test_cache_keys_are_safe_and_parse_back(bucket: tuple[str, str, int, int]) -> None:
    key = cache_key(bucket)

    assert all(33 <= ord(c) < 127 for c in key)  # memcached-safe
    assert not set("*?[]") & set(key)  # glob-safe for SCAN
    assert key.count(":") == 4
    assert parse_cache_key(key) == bucket
    assert parse_cache_key("prefix:with:colons:1:" + key) == bucket


def test_long_names_are_hashed_and_keys_stay_short() -> None:
    long_group, long_key = "g" * 500, "k" * 81
    key = cache_key((long_group, long_key, 60, START))

    assert len(key) < 200
    group, hashed, period, start = parse_cache_key(key)  # type: ignore[misc]
    assert group.startswith("=")
    assert hashed.startswith("=")
    assert len(hashed) == 41
    assert (period, start) == (60, START)
    assert cache_key(("g", "k" * 80, 60, START)).count("k") == MAX_COMPONENT  # at the limit
    assert cache_key(("g", "k" * 81 + "x", 60, START)) != key.replace(hashed, "")


@pytest.mark.parametrize(
    "raw",
    ["", "dratelimit:g:k:60", "other:g:k:60:0", "dratelimit:g:k:x:0", "xdratelimit:g:k:60:0"],
)
def test_foreign_keys_do_not_parse(raw: str) -> None:
    assert parse_cache_key(raw) is None


def test_the_cache_prefix_and_version_apply(backend: str, redis_db: RedisServer) -> None:
    config = redis_cache(backend, redis_db.url, 5.0, KEY_PREFIX="shop*[1]", VERSION=3)
    with override_settings(CACHES={"default": config}):
        counter = StrictCounter()
        counter.hit(BUCKET, 1, 60.0)
        counter.hit(("login", "other", 60, START), 1, 60.0)

        assert sorted(raw_client(counter).keys("*")) == [
            f"shop*[1]:3:{cache_key(BUCKET)}".encode(),
            f"shop*[1]:3:{cache_key(('login', 'other', 60, START))}".encode(),
        ]
        assert counter.live() == [
            (("login", "203.0.113.7", 60, START), 1),
            (
                ("login", "other", 60, START),
                1,
            ),
        ]
        assert counter.reset("login") == 2


# -- the local mode's answer -----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [FIXED_WINDOW, SLIDING_WINDOW])
@pytest.mark.parametrize("rate", ["5/m", "3/10s;10/m", "2/s"])
def test_usages_are_the_local_modes(counter: StrictCounter, algorithm: str, rate: str) -> None:
    clock = FakeClock(START + 50.0)
    local = Limiter(CounterStore(max_keys=1000), clock=clock, sync=False)
    rates = parse_rate_string(rate)
    # Steps across window boundaries, with reads (cost 0) and costs above 1.
    for step, cost in [(0, 1), (3, 1), (0, 2), (4, 0), (5, 1), (0.5, 3), (7, 1), (61, 1), (0, 0)]:
        clock.advance(step)
        for key in ("a", "b:c"):
            expected = local.check("api", key, rates, algorithm, cost, "rule")
            got = counter.check("api", key, rates, algorithm, cost, clock(), "rule")
            assert got == expected, (step, key)


def test_only_window_algorithms_count_strictly(counter: StrictCounter) -> None:
    with pytest.raises(StrictUnsupported, match="'token_bucket' is not one"):
        counter.check("g", "k", parse_rate_string("5/m"), "token_bucket", 1, START)
    assert counter.live() == []


def test_windows_are_epoch_aligned(counter: StrictCounter) -> None:
    rates = parse_rate_string("2/m")
    first = counter.check("g", "k", rates, FIXED_WINDOW, 1, START + 0.0)
    same = counter.check("g", "k", rates, FIXED_WINDOW, 1, START + 59.9)
    limited = counter.check("g", "k", rates, FIXED_WINDOW, 1, START + 59.99)
    fresh = counter.check("g", "k", rates, FIXED_WINDOW, 1, START + 60.0)

    assert [u.count for u in (first, same, limited, fresh)] == [1, 2, 3, 1]
    assert [u.should_limit for u in (first, same, limited, fresh)] == [False, False, True, False]
    assert limited.reset_at == START + 60
    assert counter.live("g") == [(("g", "k", 60, START), 3), (("g", "k", 60, START + 60), 1)]


def test_sliding_counters_outlive_the_next_window(counter: StrictCounter) -> None:
    rates = parse_rate_string("5/m")
    counter.check("g", "k", rates, SLIDING_WINDOW, 1, START + 10.0)

    ttl = raw_client(counter).pttl(redis_backend(counter).key(("g", "k", 60, START)))
    assert 100_000 < ttl <= (110 + EXPIRY_GRACE) * 1000


# -- reset and live ------------------------------------------------------------------------


def test_reset_a_key_then_a_group(counter: StrictCounter) -> None:
    for bucket in [
        ("login", "a", 60, START),
        ("login", "a", 3600, START - START % 3600),
        ("login", "a:b", 60, START),
        ("login", "ab", 60, START),
        ("login", "k" * 200, 60, START),
        ("api", "a", 60, START),
        ("login-2", "a", 60, START),
    ]:
        counter.hit(bucket, 1, 60.0)

    assert counter.reset("login", "a") == 2
    assert counter.reset("login", "k" * 200) == 1
    assert counter.reset("login", "nobody") == 0
    assert [b for b, _ in counter.live("login")] == [
        ("login", "a:b", 60, START),
        ("login", "ab", 60, START),
    ]
    assert counter.reset("login") == 2
    assert [b[0] for b, _ in counter.live()] == ["api", "login-2"]


def test_reset_deletes_in_batches(counter: StrictCounter) -> None:
    for index in range(CHUNK + 5):
        counter.hit(("g", f"k{index}", 60, START), 1, 60.0)

    assert counter.reset("g") == CHUNK + 5
    assert counter.live() == []


def test_live_filters_by_group_and_key(counter: StrictCounter) -> None:
    counter.hit(("login", "alice@example.com", 60, START), 2, 60.0)
    counter.hit(("login", "bob:3A", 60, START), 1, 60.0)
    counter.hit(("login", "carol:", 60, START), 1, 60.0)  # escapes to carol%3A
    counter.hit(("api", "alice@example.com", 3600, START), 5, 60.0)
    counter.hit(("api", "k" * 200, 60, START), 1, 60.0)

    assert counter.live("login", "alice") == [(("login", "alice@example.com", 60, START), 2)]
    assert [b[:2] for b, _ in counter.live(key_substring="alice")] == [
        ("api", "alice@example.com"),
        ("login", "alice@example.com"),
    ]
    # "3A" is in carol's escaped key but not in carol's key.
    assert [b[1] for b, _ in counter.live(key_substring="3A")] == ["bob:3A"]
    assert [b[1][:1] for b, _ in counter.live("api")] == ["=", "a"]
    assert counter.live("nobody") == []
    long_group = "g" * 200
    counter.hit((long_group, "k", 60, START), 1, 60.0)
    assert counter.live(long_group) == [((long_group, "k", 60, START), 1)]
    assert counter.can_enumerate


def test_live_skips_foreign_keys(counter: StrictCounter) -> None:
    counter.hit(BUCKET, 1, 60.0)
    client = raw_client(counter)
    prefix = redis_backend(counter).pattern("dratelimit")
    client.set(f"{prefix}:not:ours:x:y", 1)

    assert counter.live() == [(BUCKET, 1)]


# -- many processes ------------------------------------------------------------------------


def _hammer(backend: str, url: str, ready: Any, go: Any, results: Any) -> None:
    """One process: 100 strict hits on one bucket, as fast as it can."""
    import django

    django.setup()
    with override_settings(CACHES={"default": redis_cache(backend, url, 5.0)}):
        counter = StrictCounter()
        counter.total(BUCKET)  # connect before the start line
        ready.put(os.getpid())
        go.wait(30)
        admitted = sum(1 for _ in range(100) if counter.hit(BUCKET, 1, 60.0) <= 50)
        results.put(admitted)


@pytest.mark.cluster
def test_concurrent_processes_admit_exactly_the_limit(backend: str, redis_db: RedisServer) -> None:
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    processes = [
        context.Process(target=_hammer, args=(backend, redis_db.url, ready, go, results))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    try:
        for _ in processes:
            ready.get(timeout=60)
        go.set()
        admitted = [results.get(timeout=60) for _ in processes]
        for process in processes:
            process.join(10)
            assert process.exitcode == 0
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(5)

    with override_settings(CACHES={"default": redis_cache(backend, redis_db.url, 5.0)}):
        assert StrictCounter().total(BUCKET) == 400
    assert sum(admitted) == 50


# -- the cache is down ---------------------------------------------------------------------


@pytest.mark.parametrize("fail_open", [False, True])
def test_redis_stopped_raises_quickly_and_logs_once(
    backend: str, redis_db: RedisServer, caplog: pytest.LogCaptureFixture, fail_open: bool
) -> None:
    caches_setting = {"default": redis_cache(backend, redis_db.url, 0.2)}
    with override_settings(CACHES=caches_setting, DRATELIMIT={"STRICT_FAIL_OPEN": fail_open}):
        counter = StrictCounter()
        counter.hit(BUCKET, 1, 60.0)  # a pooled connection, which goes stale
        redis_db.stop()
        caplog.set_level(logging.INFO, "django_dratelimit")

        for call in (
            lambda: counter.hit(BUCKET, 1, 60.0),
            lambda: counter.hit_many([BUCKET], 1, [60.0], [BUCKET]),
            lambda: counter.total(BUCKET),
            lambda: counter.live(),
            lambda: counter.reset("login"),
        ):
            started = time.monotonic()
            with pytest.raises(StrictUnavailable) as raised:
                call()
            assert time.monotonic() - started < 1.0
            assert raised.value.alias == "default"
            assert "ConnectionError" in raised.value.cause

        [record] = ours(caplog)
        assert record.levelno == logging.ERROR
        assert "cache 'default' is unavailable" in record.getMessage()
        choice = "let through (STRICT_FAIL_OPEN = True)" if fail_open else "limited"
        assert f"strict rules are {choice}" in record.getMessage()

        redis_db.start()
        assert counter.hit(BUCKET, 1, 60.0) == 1  # a restarted Redis is empty
        assert "answers again" in ours(caplog)[-1].getMessage()


def test_the_fail_open_choice_can_be_given(caplog: pytest.LogCaptureFixture) -> None:
    config = redis_cache(DJANGO_REDIS, f"redis://{LOOPBACK}:{free_port()}/0")
    with override_settings(CACHES={"default": config}), pytest.raises(StrictUnavailable):
        StrictCounter(fail_open=True).hit(BUCKET, 1, 60.0)
    assert "STRICT_FAIL_OPEN = True" in ours(caplog)[-1].getMessage()


def test_a_hung_redis_times_out(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    # Accepts connections (the kernel's backlog) and never answers.
    with socket.socket() as hung:
        hung.bind((LOOPBACK, 0))
        hung.listen(16)
        url = f"redis://{LOOPBACK}:{hung.getsockname()[1]}/0"
        with override_settings(CACHES={"default": redis_cache(backend, url)}):
            started = time.monotonic()
            with pytest.raises(StrictUnavailable, match="Timeout"):
                StrictCounter().hit(BUCKET, 1, 60.0)
            assert time.monotonic() - started < 1.0


def test_a_missing_alias_is_unavailable_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(StrictUnavailable, match="InvalidCacheBackendError"):
        StrictCounter("nowhere").hit(BUCKET, 1, 60.0)
    with pytest.raises(StrictUnavailable):
        StrictCounter("nowhere").kind  # noqa: B018
    assert "'nowhere' is unavailable" in ours(caplog)[-1].getMessage()
