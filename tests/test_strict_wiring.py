"""Strict mode end to end: decorator, rules, reset, failure policy, checks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory, override_settings

from django_dratelimit import ratelimit
from django_dratelimit.checks import check_settings
from django_dratelimit.exceptions import Ratelimited
from django_dratelimit.limiter import Limiter, set_limiter
from django_dratelimit.local.store import CounterStore
from tests.cluster import RedisServer


def redis_cache(url: str) -> dict[str, Any]:
    return {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "strict": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": url,
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        },
    }


@pytest.fixture
def strict_cache(redis_db: RedisServer) -> Iterator[RedisServer]:
    with override_settings(CACHES=redis_cache(redis_db.url), DRATELIMIT={"STRICT_CACHE": "strict"}):
        set_limiter(Limiter(CounterStore(), sync=False))
        yield redis_db


def make_view(**options: Any) -> Any:
    @ratelimit(key="ip", rate="3/m", consistency="strict", **options)
    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    return view


def statuses(view: Any, n: int) -> list[int]:
    out = []
    for _ in range(n):
        try:
            out.append(view(RequestFactory().get("/")).status_code)
        except Ratelimited:
            out.append(429)
    return out


def test_strict_decorator_counts_in_redis(strict_cache: RedisServer) -> None:
    view = make_view(group="strict-view")
    assert statuses(view, 5) == [200, 200, 200, 429, 429]
    # The count lives in Redis, not in this process: a fresh limiter sees it.
    set_limiter(Limiter(CounterStore(), sync=False))
    assert statuses(view, 1) == [429]
    assert any(b"strict-view" in key for key in strict_cache.command("KEYS", "*"))


def test_strict_sliding_window_and_reset(strict_cache: RedisServer) -> None:
    view = make_view(group="strict-sliding", algorithm="sliding_window")
    assert statuses(view, 4) == [200, 200, 200, 429]
    from django_dratelimit.limiter import limiter

    assert limiter.reset("strict-sliding", "127.0.0.1") >= 1
    assert statuses(view, 1) == [200]


@pytest.mark.parametrize(("fail_open", "expected"), [(False, 429), (True, 200)])
def test_redis_down_follows_strict_fail_open(
    redis_db: RedisServer, fail_open: bool, expected: int, caplog: pytest.LogCaptureFixture
) -> None:
    from django_dratelimit import logutil

    logutil.forget()  # the outage is logged once per 30 s: start afresh
    with override_settings(
        CACHES=redis_cache(redis_db.url),
        DRATELIMIT={"STRICT_CACHE": "strict", "STRICT_FAIL_OPEN": fail_open},
    ):
        set_limiter(Limiter(CounterStore(), sync=False))
        view = make_view(group=f"strict-down-{fail_open}")
        redis_db.stop()
        assert statuses(view, 3) == [expected] * 3  # never a 500
    assert "unavailable" in caplog.text


def test_strict_rule_through_the_middleware(strict_cache: RedisServer, client: Client) -> None:
    rule = {
        "name": "strict-api",
        "path": r"^/api/",
        "key": "ip",
        "rate": "2/m",
        "consistency": "strict",
    }
    with override_settings(DRATELIMIT={"STRICT_CACHE": "strict", "RULES": [rule]}):
        set_limiter(Limiter(CounterStore(), sync=False))
        codes = [client.get("/api/thing/").status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_strict_limiter_facade(strict_cache: RedisServer) -> None:
    from django_dratelimit.limiter import limiter

    results = [limiter.hit("facade", "k", "2/m", consistency="strict").allowed for _ in range(3)]
    assert results == [True, True, False]
    assert limiter.get("facade", "k", "2/m", consistency="strict").count == 3


def test_invalid_strict_combinations_fail_at_decoration() -> None:
    with pytest.raises(ValueError, match="consistency"):
        ratelimit(key="ip", rate="1/m", consistency="exact")
    with pytest.raises(ValueError, match="fixed_window and sliding_window only"):
        ratelimit(key="ip", rate="1/m", consistency="strict", algorithm="token_bucket")


def test_strict_checks() -> None:
    strict_rule = {"name": "s", "key": "ip", "rate": "1/m", "consistency": "strict"}
    with override_settings(DRATELIMIT={"RULES": [{**strict_rule, "consistency": "exact"}]}):
        assert [m.id for m in check_settings()] == ["dratelimit.E025"]
    with override_settings(DRATELIMIT={"RULES": [{**strict_rule, "algorithm": "leaky_bucket"}]}):
        assert "dratelimit.E034" in [m.id for m in check_settings()]
    # The test settings' default cache is LocMem: not shared, so strict rules are an error.
    with override_settings(DRATELIMIT={"RULES": [strict_rule]}):
        assert "dratelimit.E031" in [m.id for m in check_settings()]
