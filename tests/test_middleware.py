"""``RateLimitMiddleware``: RULES, the 429 response and its headers, on sync and async stacks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.test import AsyncClient, Client, override_settings

from django_dratelimit.limiter import Limiter, set_limiter
from django_dratelimit.local.store import CounterStore
from django_dratelimit.rates import Rate
from tests import views
from tests.scoped import counted, seconds_left

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedWSGIResponse as Response

    from tests.conftest import FakeClock

RATELIMIT_HEADERS = ("RateLimit", "RateLimit-Policy", "Retry-After")
API = {"name": "api", "path": r"^/api/", "key": "ip", "rate": "2/m"}


@contextmanager
def dratelimit(clock: FakeClock, **options: Any) -> Iterator[Limiter]:
    """Override DRATELIMIT, then install a fake-clock limiter (the override drops the old one).

    Windows are epoch-aligned here unless a test asks otherwise: the header tests
    read their times off the clock. Staggered windows have tests of their own.
    """
    options.setdefault("STAGGER_WINDOWS", False)
    with override_settings(DRATELIMIT=options):
        instance = Limiter(CounterStore(), clock=clock, sync=False)
        set_limiter(instance)
        yield instance


def get_many(client: Client, path: str, n: int, **extra: Any) -> list[Response]:
    return [client.get(path, **extra) for _ in range(n)]


def codes(responses: list[Any]) -> list[int]:
    return [r.status_code for r in responses]


def has_no_ratelimit_headers(response: Any) -> bool:
    return not any(name in response.headers for name in RATELIMIT_HEADERS)


# -- matching ---------------------------------------------------------------------------


def test_rule_path_is_a_regex(client: Client, clock: FakeClock) -> None:
    with dratelimit(clock, RULES=[API]):
        assert codes(get_many(client, "/api/thing/", 2)) == [200, 200]
        assert client.get("/api/other/").status_code == 429  # same rule, same counter


def test_rule_path_is_searched_not_anchored(client: Client, clock: FakeClock) -> None:
    rule = {"name": "things", "path": "thing/$", "key": "ip", "rate": "1/m"}
    with dratelimit(clock, RULES=[rule]):
        assert codes(get_many(client, "/api/thing/", 2)) == [200, 429]
        assert client.get("/api/other/").status_code == 200


def test_rule_without_path_applies_to_every_path(client: Client, clock: FakeClock) -> None:
    with dratelimit(clock, RULES=[{"name": "all", "key": "ip", "rate": "2/m"}]):
        assert client.get("/open/").status_code == 200
        assert client.get("/api/thing/").status_code == 200
        assert client.get("/async-open/").status_code == 429


def test_non_matching_path_is_untouched(client: Client, clock: FakeClock) -> None:
    with dratelimit(clock, RULES=[API]):
        responses = get_many(client, "/open/", 5)

    assert codes(responses) == [200] * 5
    assert all(has_no_ratelimit_headers(r) for r in responses)
    assert responses[-1].content == b"open"


def test_rule_methods(client: Client, clock: FakeClock) -> None:
    rule = {**API, "methods": ["post", "PUT"], "rate": "1/m"}
    with dratelimit(clock, RULES=[rule]):
        gets = get_many(client, "/api/thing/", 3)
        posts = [client.post("/api/thing/") for _ in range(2)]
        put = client.put("/api/thing/")

    assert codes(gets) == [200, 200, 200]
    assert all(has_no_ratelimit_headers(r) for r in gets)
    assert codes(posts) == [200, 429]
    assert put.status_code == 429  # POST and PUT share the rule's counter


def test_rule_key_header(client: Client, clock: FakeClock) -> None:
    rule = {**API, "key": "header:X-Api-Key", "rate": "1/m"}
    with dratelimit(clock, RULES=[rule]):
        assert codes(get_many(client, "/api/thing/", 2, HTTP_X_API_KEY="a")) == [200, 429]
        assert codes(get_many(client, "/api/thing/", 1, HTTP_X_API_KEY="b")) == [200]
        anonymous = get_many(client, "/api/thing/", 3)

    assert codes(anonymous) == [200, 200, 200]
    assert all(has_no_ratelimit_headers(r) for r in anonymous)


def test_rule_key_ip_counts_each_client(client: Client, clock: FakeClock) -> None:
    with dratelimit(clock, RULES=[{**API, "rate": "1/m"}]) as limiter:
        assert codes(get_many(client, "/api/thing/", 2, REMOTE_ADDR="198.51.100.1")) == [200, 429]
        assert codes(get_many(client, "/api/thing/", 1, REMOTE_ADDR="198.51.100.2")) == [200]

        assert counted(limiter, "api", "198.51.100.1", "1/m", stagger=False) == 2


@pytest.mark.django_db
def test_rule_key_user_or_ip(client: Client, clock: FakeClock) -> None:
    alice = User.objects.create_user("alice", password="pw")
    with dratelimit(clock, RULES=[{**API, "key": "user_or_ip", "rate": "1/m"}]) as limiter:
        assert codes(get_many(client, "/api/thing/", 2)) == [200, 429]
        client.force_login(alice)
        assert codes(get_many(client, "/api/thing/", 2)) == [200, 429]

        assert counted(limiter, "api", f"user:{alice.pk}", "1/m", stagger=False) == 2
        assert counted(limiter, "api", "ip:127.0.0.1", "1/m", stagger=False) == 2


def test_rule_rate_with_a_multiple(client: Client, clock: FakeClock) -> None:
    with dratelimit(clock, RULES=[{**API, "rate": "1/5m"}]):
        response = client.get("/api/thing/")

    # 1_699_999_990 is 190 s into its 5-minute window.
    assert response.headers["RateLimit-Policy"] == '"api";q=1;w=300'
    assert response.headers["RateLimit"] == '"api";r=0;t=110'


def test_rule_callable_rate_returning_none_disables_it(client: Client, clock: FakeClock) -> None:
    with dratelimit(clock, RULES=[{**API, "rate": views.vip_rate}]):
        vip = get_many(client, "/api/thing/", 3, HTTP_X_VIP="1")
        assert codes(get_many(client, "/api/thing/", 2)) == [200, 429]

    assert codes(vip) == [200, 200, 200]
    assert all(has_no_ratelimit_headers(r) for r in vip)


def test_rule_algorithm_sliding_window(client: Client, clock: FakeClock) -> None:
    sliding = {**API, "algorithm": "sliding_window"}
    fixed = {**API, "name": "fixed", "path": r"^/open/$"}
    with dratelimit(clock, RULES=[sliding, fixed]):
        get_many(client, "/api/thing/", 2)
        get_many(client, "/open/", 2)
        clock.advance(80)  # half-way into the next minute: half the old count still weighs

        assert codes(get_many(client, "/api/thing/", 2)) == [200, 429]
        assert codes(get_many(client, "/open/", 2)) == [200, 200]


def test_global_algorithm_setting_applies_to_rules(client: Client, clock: FakeClock) -> None:
    with dratelimit(clock, RULES=[API], ALGORITHM="sliding_window"):
        get_many(client, "/api/thing/", 2)
        clock.advance(80)

        assert codes(get_many(client, "/api/thing/", 2)) == [200, 429]


def test_invalid_rule_is_skipped_and_the_others_still_apply(
    client: Client, clock: FakeClock
) -> None:
    bad = {"name": "bad", "path": r"^/api/", "key": "ip", "rate": "5/M"}
    with dratelimit(clock, RULES=[bad, {**API, "rate": "1/m"}]):
        assert codes(get_many(client, "/api/thing/", 2)) == [200, 429]


def test_disabled_setting_turns_rules_off(client: Client, clock: FakeClock) -> None:
    with dratelimit(clock, RULES=[{**API, "rate": "1/m"}], ENABLED=False):
        responses = get_many(client, "/api/thing/", 3)

    assert codes(responses) == [200, 200, 200]
    assert all(has_no_ratelimit_headers(r) for r in responses)


# -- block=False, several rules ------------------------------------------------------------


def test_rule_block_false_lets_the_request_through_with_headers(
    client: Client, clock: FakeClock
) -> None:
    with dratelimit(clock, RULES=[{**API, "block": False}]):
        responses = get_many(client, "/api/thing/", 3)

    assert codes(responses) == [200, 200, 200]
    assert responses[2].content == b"open"
    assert responses[2].headers["RateLimit-Policy"] == '"api";q=2;w=60'
    assert responses[2].headers["RateLimit"] == '"api";r=0;t=50'
    assert "Retry-After" not in responses[2].headers


def test_rule_block_false_sets_request_limited(client: Client, clock: FakeClock) -> None:
    # The view's own decorator (2/m, block=False) is not over its limit on the 2nd request;
    # the rule (1/m) is, and request.limited must stay True.
    rule = {"name": "nb", "path": r"^/nonblock/$", "key": "ip", "rate": "1/m", "block": False}
    with dratelimit(clock, RULES=[rule]):
        assert [client.get("/nonblock/").content for _ in range(2)] == [b"ok", b"limited"]


def test_two_matching_rules_report_the_most_restrictive(client: Client, clock: FakeClock) -> None:
    wide = {"name": "wide", "path": r"^/api/", "key": "ip", "rate": "10/m"}
    narrow = {"name": "narrow", "path": r"^/api/thing/$", "key": "ip", "rate": "2/m"}
    with dratelimit(clock, RULES=[wide, narrow]) as limiter:
        first, second, third = get_many(client, "/api/thing/", 3)
        other = client.get("/api/other/")

        assert counted(limiter, "wide", "127.0.0.1", "10/m", stagger=False) == 4
        assert counted(limiter, "narrow", "127.0.0.1", "2/m", stagger=False) == 3

    assert first.headers["RateLimit-Policy"] == '"narrow";q=2;w=60'
    assert first.headers["RateLimit"] == '"narrow";r=1;t=50'
    assert second.headers["RateLimit"] == '"narrow";r=0;t=50'
    assert third.status_code == 429
    assert third.headers["RateLimit-Policy"] == '"narrow";q=2;w=60'
    # Only the wide rule matches the other path.
    assert other.status_code == 200
    assert other.headers["RateLimit"] == '"wide";r=6;t=50'


def test_a_non_blocking_rule_does_not_block_when_a_blocking_one_allows(
    client: Client, clock: FakeClock
) -> None:
    watch = {"name": "watch", "path": r"^/api/", "key": "ip", "rate": "1/m", "block": False}
    enforce = {"name": "enforce", "path": r"^/api/", "key": "ip", "rate": "3/m"}
    with dratelimit(clock, RULES=[watch, enforce]):
        responses = get_many(client, "/api/thing/", 4)

    assert codes(responses) == [200, 200, 200, 429]
    assert responses[3].headers["RateLimit-Policy"] == '"enforce";q=3;w=60'


def test_rule_and_decorator_on_one_request_report_the_most_restrictive(
    client: Client, clock: FakeClock
) -> None:
    # /sync/ is decorated with 2/m; the rule allows 10/m.
    rule = {"name": "site", "key": "ip", "rate": "10/m"}
    with dratelimit(clock, RULES=[rule]):
        first = client.get("/sync/")
        get_many(client, "/sync/", 1)
        limited = client.get("/sync/")

    assert first.headers["RateLimit"] == '"tests.views.sync_view";r=1;t=50'
    assert limited.status_code == 429
    assert limited.headers["RateLimit-Policy"] == '"tests.views.sync_view";q=2;w=60'


# -- the 429 response -----------------------------------------------------------------------


def test_limited_response_headers_exactly(client: Client, clock: FakeClock) -> None:
    rule = {"name": "login", "path": r"^/api/", "key": "ip", "rate": "5/m"}
    with dratelimit(clock, RULES=[rule]):
        allowed = get_many(client, "/api/thing/", 5)
        limited = client.get("/api/thing/")

    assert allowed[0].headers["RateLimit-Policy"] == '"login";q=5;w=60'
    assert allowed[0].headers["RateLimit"] == '"login";r=4;t=50'
    assert "Retry-After" not in allowed[0].headers
    assert limited.status_code == 429
    assert limited.headers["RateLimit-Policy"] == '"login";q=5;w=60'
    assert limited.headers["RateLimit"] == '"login";r=0;t=50'
    assert limited.headers["Retry-After"] == "50"


def test_limited_response_is_json_when_asked(client: Client, clock: FakeClock) -> None:
    with dratelimit(clock, RULES=[API]):
        get_many(client, "/api/thing/", 2)
        response = client.get("/api/thing/", HTTP_ACCEPT="application/json")

    assert response.status_code == 429
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.content) == {
        "type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
        "title": "Request cannot be satisfied as assigned quota has been exceeded",
        "status": 429,
        "detail": "Too many requests. Retry in 50 s.",
        "violated-policies": ["api"],
        "retry-after": 50,
    }


@pytest.mark.parametrize("accept", [None, "text/html", "text/plain", "*/*"])
def test_limited_response_is_plain_text_otherwise(
    client: Client, clock: FakeClock, accept: str | None
) -> None:
    extra: dict[str, Any] = {"HTTP_ACCEPT": accept} if accept else {}
    with dratelimit(clock, RULES=[API]):
        get_many(client, "/api/thing/", 2)
        response = client.get("/api/thing/", **extra)

    assert response.status_code == 429
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content == b"Too many requests. Retry in 50 s.\n"


def test_limited_view_is_not_called(client: Client, clock: FakeClock) -> None:
    with dratelimit(clock, RULES=[{**API, "rate": "1/m"}]):
        _, limited = get_many(client, "/api/thing/", 2)

    assert b"open" not in limited.content


def test_retry_after_is_at_least_one_second(client: Client, clock: FakeClock) -> None:
    with dratelimit(clock, RULES=[{**API, "rate": "1/m"}]):
        client.get("/api/thing/")
        clock.advance(49.5)  # half a second before the window ends
        response = client.get("/api/thing/")

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.headers["RateLimit"] == '"api";r=0;t=1'


def test_headers_follow_the_clock_and_the_window_resets(client: Client, clock: FakeClock) -> None:
    with dratelimit(clock, RULES=[API]):
        first = client.get("/api/thing/")
        clock.advance(20)
        second = client.get("/api/thing/")
        clock.advance(7.25)
        limited = client.get("/api/thing/")
        clock.advance(22.75)  # the next minute starts
        fresh = client.get("/api/thing/")

    assert first.headers["RateLimit"] == '"api";r=1;t=50'
    assert second.headers["RateLimit"] == '"api";r=0;t=30'
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "23"
    assert limited.headers["RateLimit"] == '"api";r=0;t=23'
    assert fresh.status_code == 200
    assert fresh.headers["RateLimit"] == '"api";r=1;t=60'


def test_headers_false_removes_them_from_allowed_responses(
    client: Client, clock: FakeClock
) -> None:
    with dratelimit(clock, RULES=[API], HEADERS=False):
        allowed = get_many(client, "/api/thing/", 2)
        decorated = client.get("/sync/")
        limited = client.get("/api/thing/")

    assert codes(allowed) == [200, 200]
    assert all(has_no_ratelimit_headers(r) for r in [*allowed, decorated])
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "50"


@pytest.mark.parametrize("view", ["tests.views.custom_limited", views.custom_limited])
def test_custom_view_answers_limited_requests(client: Client, clock: FakeClock, view: Any) -> None:
    with dratelimit(clock, RULES=[{**API, "rate": "1/m"}], VIEW=view):
        client.get("/api/thing/")
        by_rule = client.get("/api/thing/")
        client.get("/sync/")
        client.get("/sync/")
        by_decorator = client.get("/sync/")

    assert by_rule.status_code == 429
    assert by_rule.content == b"custom: slow down (api)"
    assert by_rule.headers["RateLimit"] == '"api";r=0;t=50'  # added by the middleware
    assert by_decorator.status_code == 429
    assert by_decorator.content == b"custom: slow down (tests.views.sync_view)"


def test_decorator_429_goes_through_the_middleware(client: Client, clock: FakeClock) -> None:
    with dratelimit(clock):
        responses = get_many(client, "/sync/", 3, HTTP_ACCEPT="application/json")

    assert codes(responses) == [200, 200, 429]
    assert json.loads(responses[2].content)["violated-policies"] == ["tests.views.sync_view"]
    assert responses[2].headers["Retry-After"] == "50"


# -- key functions that raise ----------------------------------------------------------------


@pytest.mark.parametrize("key", [views.broken_key, "tests.views.broken_key"])
def test_a_key_function_that_raises_never_gives_a_500(
    client: Client, clock: FakeClock, key: Any
) -> None:
    with dratelimit(clock, RULES=[{**API, "key": key, "rate": "1/m"}]):
        responses = get_many(client, "/api/thing/", 3)

    assert codes(responses) == [200, 200, 200]
    assert all(has_no_ratelimit_headers(r) for r in responses)


def test_a_decorator_key_function_that_raises_never_gives_a_500(
    client: Client, clock: FakeClock
) -> None:
    with dratelimit(clock):
        assert codes(get_many(client, "/key/broken/", 3)) == [200, 200, 200]


async def test_a_key_function_that_raises_on_the_async_stack(
    async_client: AsyncClient, clock: FakeClock
) -> None:
    with dratelimit(clock, RULES=[{**API, "key": views.broken_key, "rate": "1/m"}]):
        responses = [await async_client.get("/api/async/") for _ in range(3)]

    assert codes(responses) == [200, 200, 200]


# -- the async stack ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/thing/", "/api/async/"])
async def test_rules_on_the_async_stack(
    async_client: AsyncClient, clock: FakeClock, path: str
) -> None:
    with dratelimit(clock, RULES=[API]):
        responses = [await async_client.get(path) for _ in range(3)]

    assert codes(responses) == [200, 200, 429]
    assert responses[0].headers["RateLimit-Policy"] == '"api";q=2;w=60'
    assert responses[0].headers["RateLimit"] == '"api";r=1;t=50'
    assert responses[2].headers["RateLimit"] == '"api";r=0;t=50'
    assert responses[2].headers["Retry-After"] == "50"


async def test_async_stack_json_429(async_client: AsyncClient, clock: FakeClock) -> None:
    with dratelimit(clock, RULES=[{**API, "rate": "1/m"}]):
        await async_client.get("/api/async/")
        response = await async_client.get("/api/async/", headers={"Accept": "application/json"})

    assert response.status_code == 429
    assert json.loads(response.content)["retry-after"] == 50


async def test_async_stack_untouched_path(async_client: AsyncClient, clock: FakeClock) -> None:
    with dratelimit(clock, RULES=[API]):
        responses = [await async_client.get("/async-open/") for _ in range(4)]

    assert codes(responses) == [200] * 4
    assert all(has_no_ratelimit_headers(r) for r in responses)


async def test_async_stack_block_false_and_headers_off(
    async_client: AsyncClient, clock: FakeClock
) -> None:
    with dratelimit(clock, RULES=[{**API, "block": False}], HEADERS=False):
        responses = [await async_client.get("/api/async/") for _ in range(3)]

    assert codes(responses) == [200, 200, 200]
    assert all(has_no_ratelimit_headers(r) for r in responses)


async def test_async_stack_custom_view(async_client: AsyncClient, clock: FakeClock) -> None:
    with dratelimit(clock, RULES=[{**API, "rate": "1/m"}], VIEW="tests.views.custom_limited"):
        await async_client.get("/api/async/")
        response = await async_client.get("/api/async/")

    assert (response.status_code, response.content) == (429, b"custom: slow down (api)")


async def test_async_stack_decorator_429_has_headers(
    async_client: AsyncClient, clock: FakeClock
) -> None:
    with dratelimit(clock):
        responses = [await async_client.get("/async/") for _ in range(3)]

    assert codes(responses) == [200, 200, 429]
    assert responses[0].headers["RateLimit"] == '"tests.views.async_view";r=1;t=50'
    assert responses[2].headers["Retry-After"] == "50"


@pytest.mark.django_db(transaction=True)
async def test_user_or_ip_rule_on_the_async_stack_limits_a_logged_in_user(
    async_client: AsyncClient, clock: FakeClock
) -> None:
    alice = await sync_to_async(User.objects.create_user)("alice", password="pw")
    await async_client.aforce_login(alice)
    with dratelimit(clock, RULES=[{**API, "key": "user_or_ip", "rate": "1/m"}]):
        responses = [await async_client.get("/api/async/") for _ in range(2)]

    assert codes(responses) == [200, 429]


@pytest.mark.django_db(transaction=True)
async def test_user_or_ip_rule_on_the_async_stack_falls_back_to_ip_for_anonymous(
    async_client: AsyncClient, clock: FakeClock
) -> None:
    with dratelimit(clock, RULES=[{**API, "key": "user_or_ip", "rate": "1/m"}]) as limiter:
        responses = [await async_client.get("/api/thing/") for _ in range(2)]

        assert counted(limiter, "api", "ip:127.0.0.1", "1/m", stagger=False) == 2
    assert codes(responses) == [200, 429]


# -- user code that fails --------------------------------------------------------------------


def failing_rate(group: str, request: Any) -> str:
    raise RuntimeError("the rate service is down")


def test_a_rate_callable_that_raises_never_gives_a_500(
    client: Client, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    rule = {**API, "rate": "tests.test_middleware.failing_rate"}
    with dratelimit(clock, RULES=[rule]), caplog.at_level("ERROR", logger="django_dratelimit"):
        responses = get_many(client, "/api/thing/", 3)
    assert codes(responses) == [200, 200, 200]
    assert all(has_no_ratelimit_headers(r) for r in responses)
    assert "rate callable of group 'api' failed" in caplog.text


def test_rule_rates_are_registered_for_inspect(client: Client, clock: FakeClock) -> None:
    from django_dratelimit.registry import known_rates

    with dratelimit(clock, RULES=[{**API, "rate": "2/m;30/h"}]):
        client.get("/api/thing/")
    assert known_rates()["api"] == [[2, 60], [30, 3600]]


def test_a_refused_request_is_not_charged_by_later_rules(client: Client, clock: FakeClock) -> None:
    first = {"name": "hard", "path": r"^/api/", "key": "ip", "rate": "1/m"}
    second = {
        "name": "tokens",
        "path": r"^/api/",
        "key": "ip",
        "rate": "5/m",
        "algorithm": "token_bucket",
    }
    with dratelimit(clock, RULES=[first, second]) as limiter:
        assert codes(get_many(client, "/api/thing/", 3)) == [200, 429, 429]
        tokens = limiter.check("tokens", "127.0.0.1", (Rate(5, 60),), "token_bucket", 0, scope="")
    assert tokens.remaining == 4  # only the admitted request took a token


# -- rules count like decorators: per limit and methods, in staggered windows ------------------


def test_rules_stagger_their_windows_by_default(client: Client, clock: FakeClock) -> None:
    with dratelimit(clock, RULES=[API], STAGGER_WINDOWS=True):
        first = client.get("/api/thing/", REMOTE_ADDR="198.51.100.1")
        other = client.get("/api/thing/", REMOTE_ADDR="198.51.100.2")

    # Each key's window ends at its own offset, the same in every process.
    for response, key in ((first, "198.51.100.1"), (other, "198.51.100.2")):
        left = round(seconds_left("api", key, 60, clock.now))
        assert response.headers["RateLimit"] == f'"api";r=1;t={left}'
    assert seconds_left("api", "198.51.100.1", 60, clock.now) != seconds_left(
        "api", "198.51.100.2", 60, clock.now
    )


def test_a_rule_is_read_by_get_usage_with_its_methods(client: Client, clock: FakeClock) -> None:
    from django.test import RequestFactory

    from django_dratelimit import get_usage

    rule = {**API, "methods": ["POST", "put"], "rate": "3/m"}
    with dratelimit(clock, RULES=[rule], STAGGER_WINDOWS=True):
        client.post("/api/thing/")
        client.put("/api/thing/")
        usage = get_usage(
            RequestFactory().post("/"), "api", key="ip", rate="3/m", method=["PUT", "POST"]
        )

    assert usage is not None
    assert (usage["count"], usage["limit"]) == (2, 3)
