"""The system checks of strict mode: STRICT_CACHE must be shared, atomic and quick to fail."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache.backends.base import BaseCache
from django.test import override_settings

from django_dratelimit.local.algorithms import FIXED_WINDOW, SLIDING_WINDOW
from django_dratelimit.strict.checks import check_strict_algorithm, check_strict_cache
from tests.strict_caches import DJANGO_BUILTIN, DJANGO_REDIS, redis_cache

# -- checks --------------------------------------------------------------------------------


def strict_ids(cache: dict[str, Any] | None, **dratelimit: Any) -> list[str]:
    caches_setting = {"default": cache} if cache is not None else {}
    with override_settings(CACHES=caches_setting, DRATELIMIT=dratelimit):
        return [m.id or "" for m in check_strict_cache(True)]


def test_checks_pass_without_strict_rules() -> None:
    with override_settings(DRATELIMIT={"STRICT_CACHE": "nowhere"}):
        assert check_strict_cache(False) == []


@pytest.mark.parametrize(
    ("cache", "expected"),
    [
        (redis_cache(DJANGO_REDIS, "redis://localhost:6379/0"), []),
        (redis_cache(DJANGO_BUILTIN, "redis://localhost:6379/0"), []),
        ({"BACKEND": DJANGO_BUILTIN, "LOCATION": "redis://h/0?socket_timeout=0.2"}, ["W030"]),
        (
            {
                "BACKEND": DJANGO_BUILTIN,
                "LOCATION": "redis://h/0?socket_timeout=0.2&socket_connect_timeout=0.1",
            },
            [],
        ),
        (
            {
                "BACKEND": DJANGO_REDIS,
                "LOCATION": [
                    "redis://h/0?socket_timeout=1&socket_connect_timeout=1",
                    "redis://r/0",
                ],
            },
            ["W030"],
        ),
        ({"BACKEND": DJANGO_REDIS, "LOCATION": "redis://h/0"}, ["W030"]),
        (
            {"BACKEND": DJANGO_REDIS, "LOCATION": "redis://h/0", "OPTIONS": {"SOCKET_TIMEOUT": 5}},
            ["W030"],
        ),
        (
            {
                "BACKEND": DJANGO_REDIS,
                "LOCATION": "redis://h/0",
                "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": "soon", "SOCKET_TIMEOUT": 0.2},
            },
            ["W030"],
        ),
        (
            redis_cache(
                DJANGO_REDIS,
                "redis://a/0,redis://b/0",
                OPTIONS={
                    "CLIENT_CLASS": "django_redis.client.ShardClient",
                    "SOCKET_CONNECT_TIMEOUT": 0.2,
                    "SOCKET_TIMEOUT": 0.2,
                },
            ),
            ["E032"],
        ),
        (
            redis_cache(
                DJANGO_REDIS,
                "redis://a/0",
                OPTIONS={"CLIENT_CLASS": "no.such.Client", "SOCKET_CONNECT_TIMEOUT": 0.2},
            ),
            ["W030"],
        ),
        ({"BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache"}, []),
        ({"BACKEND": "django.core.cache.backends.memcached.PyLibMCCache"}, []),
        ({"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}, ["E031"]),
        ({"BACKEND": "django.core.cache.backends.dummy.DummyCache"}, ["E031"]),
        ({"BACKEND": "django.core.cache.backends.filebased.FileBasedCache"}, ["E031"]),
        ({"BACKEND": "django.core.cache.backends.db.DatabaseCache"}, ["E031"]),
        ({"BACKEND": "tests.test_strict_cache_api.RacyCache"}, ["E031"]),
        ({"BACKEND": "tests.test_strict_checks.ForeignCache"}, ["W031"]),
        ({"BACKEND": "no.such.Cache"}, ["E033"]),
        ({}, ["E033"]),
        (None, ["E030"]),
    ],
)
def test_strict_cache_checks(cache: dict[str, Any] | None, expected: list[str]) -> None:
    assert strict_ids(cache) == [f"dratelimit.{id}" for id in expected]


class ForeignCache(BaseCache):
    """A backend strict mode does not know."""


def test_strict_cache_alias_checks() -> None:
    ok = redis_cache(DJANGO_REDIS, "redis://h/0")
    assert strict_ids(ok, STRICT_CACHE="default") == []
    assert strict_ids(ok, STRICT_CACHE="strict") == ["dratelimit.E030"]
    assert strict_ids(ok, STRICT_CACHE=None) == ["dratelimit.E030"]
    with override_settings(CACHES={"default": ok}, DRATELIMIT=[]):  # E001's business
        assert check_strict_cache(True) == []


def test_check_messages_say_what_to_do() -> None:
    with override_settings(CACHES={"default": {"BACKEND": DJANGO_REDIS, "LOCATION": "redis://h"}}):
        [warning] = check_strict_cache(True)
    assert "SOCKET_CONNECT_TIMEOUT" in warning.msg
    assert '"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2' in (warning.hint or "")
    with override_settings(
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    ):
        [error] = check_strict_cache(True)
    assert "LocMemCache, which is local to each process" in error.msg
    assert "django_redis.cache.RedisCache" in (error.hint or "")


def test_strict_rules_must_count_windows() -> None:
    assert check_strict_algorithm("Rule 'login'", FIXED_WINDOW) == []
    assert check_strict_algorithm("Rule 'login'", SLIDING_WINDOW) == []
    [error] = check_strict_algorithm("Rule 'login'", "leaky_bucket")
    assert error.id == "dratelimit.E034"
    assert error.msg.startswith("Rule 'login': consistency 'strict' works with fixed_window")
