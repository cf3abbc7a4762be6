"""``manage.py ratelimit`` sees and resets strict counters too (they live in the strict cache)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.test import override_settings

from django_dratelimit.limiter import Limiter, limiter, set_limiter
from django_dratelimit.local.store import CounterStore
from tests.cluster import RedisServer

RULE = {"name": "login", "key": "ip", "rate": "5/m", "consistency": "strict"}


@pytest.fixture
def strict_site(redis_db: RedisServer) -> Iterator[RedisServer]:
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "strict": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_db.url},
    }
    with override_settings(
        CACHES=caches,
        DRATELIMIT={"STRICT_CACHE": "strict", "RULES": [RULE], "CHANNEL_LAYER": None},
    ):
        set_limiter(Limiter(CounterStore(), sync=False))
        yield redis_db


def run(*args: str) -> str:
    out = StringIO()
    call_command("ratelimit", *args, stdout=out)
    return out.getvalue()


def test_inspect_shows_strict_counters_without_any_node(strict_site: RedisServer) -> None:
    for _ in range(3):
        limiter.hit("login", "203.0.113.7", "5/m", consistency="strict")
    data: dict[str, Any] = json.loads(run("inspect", "--json", "--timeout", "0.3"))
    (bucket,) = data["buckets"]
    assert (bucket["group"], bucket["key"], bucket["total"], bucket["limit"]) == (
        "login",
        "203.0.113.7",
        3,
        5,
    )
    assert bucket["strict"] is True
    assert "strict counters only" in data["strict_note"]
    table = run("inspect", "--timeout", "0.3")
    assert "203.0.113.7" in table
    assert "strict cache" in table


def test_reset_deletes_strict_counters(strict_site: RedisServer) -> None:
    for _ in range(5):
        limiter.hit("login", "203.0.113.7", "5/m", consistency="strict")
    assert not limiter.hit("login", "203.0.113.7", "5/m", consistency="strict").allowed
    output = run("reset", "login", "203.0.113.7", "--timeout", "0.3")
    assert "1 strict counter deleted" in output
    assert limiter.hit("login", "203.0.113.7", "5/m", consistency="strict").allowed
