"""``@ratelimit`` end to end (client / async_client) and ``get_usage`` / ``is_ratelimited``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client, RequestFactory, override_settings

from django_dratelimit import UNSAFE, Ratelimited, get_usage, is_ratelimited, ratelimit
from django_dratelimit.keys import InvalidKey
from django_dratelimit.limiter import Limiter
from django_dratelimit.rates import InvalidRate
from tests import views
from tests.scoped import counted, into_window

if TYPE_CHECKING:
    from pytest_django import Settings

    from tests.conftest import FakeClock

NO_RATELIMIT_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]


def statuses(client: Client, path: str, n: int, **extra: Any) -> list[int]:
    return [client.get(path, **extra).status_code for _ in range(n)]


def bodies(client: Client, path: str, n: int) -> list[str]:
    return [client.get(path).content.decode() for _ in range(n)]


async def astatuses(client: AsyncClient, path: str, n: int, **extra: Any) -> list[int]:
    return [(await client.get(path, **extra)).status_code for _ in range(n)]


# -- blocking ---------------------------------------------------------------------------


def test_sync_view_admits_limit_then_429(client: Client, limiter: Limiter) -> None:
    assert statuses(client, "/sync/", 4) == [200, 200, 429, 429]


def test_limited_response_carries_retry_after_from_the_clock(
    client: Client, limiter: Limiter, clock: FakeClock
) -> None:
    # 10 s into this key's (staggered) minute: the window ends in 50 s.
    clock.now = into_window("tests.views.sync_view", "127.0.0.1", 60, clock.now, 10)
    client.get("/sync/")
    client.get("/sync/")
    response = client.get("/sync/")

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "50"
    assert response.headers["RateLimit"] == '"tests.views.sync_view";r=0;t=50'


async def test_async_view_admits_limit_then_429(
    async_client: AsyncClient, limiter: Limiter
) -> None:
    assert await astatuses(async_client, "/async/", 3) == [200, 200, 429]


def test_async_view_through_the_sync_stack(client: Client, limiter: Limiter) -> None:
    assert statuses(client, "/async/", 3) == [200, 200, 429]


def test_class_based_view_limits_only_the_decorated_method(
    client: Client, limiter: Limiter
) -> None:
    assert statuses(client, "/cbv/", 4) == [200, 200, 200, 200]
    posts = [client.post("/cbv/") for _ in range(3)]

    assert [r.status_code for r in posts] == [200, 200, 429]
    assert posts[0].content == b"post"


async def test_async_class_based_view(async_client: AsyncClient, limiter: Limiter) -> None:
    first = await async_client.get("/async-cbv/")
    second = await async_client.get("/async-cbv/")

    assert (first.status_code, first.content) == (200, b"async get")
    assert second.status_code == 429


def test_decorated_view_called_directly_raises_ratelimited(
    rf: RequestFactory, limiter: Limiter
) -> None:
    views.sync_view(rf.get("/"))
    views.sync_view(rf.get("/"))

    with pytest.raises(Ratelimited) as info:
        views.sync_view(rf.get("/"))

    assert isinstance(info.value, PermissionDenied)
    assert info.value.usage is not None
    assert (info.value.usage.count, info.value.usage.limit) == (3, 2)


# -- block=False and request.limited ----------------------------------------------------


def test_block_false_sets_request_limited_without_raising(client: Client, limiter: Limiter) -> None:
    responses = [client.get("/nonblock/") for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 200]
    assert [r.content for r in responses] == [b"ok", b"ok", b"limited"]


async def test_block_false_on_async_view(async_client: AsyncClient, limiter: Limiter) -> None:
    responses = [await async_client.get("/async-nonblock/") for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 200]
    assert [r.content for r in responses] == [b"ok", b"ok", b"limited"]


@pytest.mark.parametrize("path", ["/stacked/outer/", "/stacked/inner/", "/stacked/inapplicable/"])
def test_request_limited_is_sticky_across_stacked_decorators(
    client: Client, limiter: Limiter, path: str
) -> None:
    # One decorator allows 1/m, the other (or none) more: the second request is limited
    # whichever decorator runs last.
    assert bodies(client, path, 2) == ["ok", "limited"]


# -- method -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "method", "applies"),
    [
        ("/method/all/", "GET", True),
        ("/method/all/", "POST", True),
        ("/method/all/", "DELETE", True),
        ("/method/unsafe/", "POST", True),
        ("/method/unsafe/", "PUT", True),
        ("/method/unsafe/", "PATCH", True),
        ("/method/unsafe/", "DELETE", True),
        ("/method/unsafe/", "GET", False),
        ("/method/unsafe/", "OPTIONS", False),
        ("/method/post/", "POST", True),
        ("/method/post/", "GET", False),
        ("/method/post/", "PUT", False),
        ("/method/list/", "GET", True),
        ("/method/list/", "POST", True),
        ("/method/list/", "PUT", False),
        ("/method/list/", "DELETE", False),
    ],
)
def test_method_selects_which_requests_are_limited(
    client: Client, limiter: Limiter, path: str, method: str, applies: bool
) -> None:
    codes = [client.generic(method, path).status_code for _ in range(3)]

    assert codes == ([200, 429, 429] if applies else [200, 200, 200])


def test_unsafe_is_the_django_ratelimit_tuple() -> None:
    assert set(UNSAFE) == {"DELETE", "PATCH", "POST", "PUT"}


# -- groups -----------------------------------------------------------------------------


def test_default_group_is_the_views_dotted_path(client: Client, limiter: Limiter) -> None:
    response = client.get("/sync/")

    assert response.headers["RateLimit-Policy"] == '"tests.views.sync_view";q=2;w=60'
    assert counted(limiter, "tests.views.sync_view", "127.0.0.1", "2/m") == 1


def test_default_group_of_a_class_based_view_method(client: Client, limiter: Limiter) -> None:
    client.post("/cbv/")

    assert counted(limiter, "tests.views.LimitedView.post", "127.0.0.1", "2/m", "POST") == 1


def test_explicit_group_shares_counters_between_views(client: Client, limiter: Limiter) -> None:
    assert client.get("/shared/a/").status_code == 200
    assert client.get("/shared/b/").status_code == 200
    assert client.get("/shared/a/").status_code == 429
    assert client.get("/shared/b/").status_code == 429
    assert counted(limiter, "shared", "127.0.0.1", "2/m") == 4


def test_different_default_groups_do_not_share(client: Client, limiter: Limiter) -> None:
    assert statuses(client, "/sync/", 2) == [200, 200]
    assert statuses(client, "/algo/fixed/", 2) == [200, 200]


# -- keys -------------------------------------------------------------------------------


def test_ip_key_counts_each_remote_addr_separately(client: Client, limiter: Limiter) -> None:
    assert statuses(client, "/sync/", 3, REMOTE_ADDR="203.0.113.7") == [200, 200, 429]
    assert statuses(client, "/sync/", 2, REMOTE_ADDR="203.0.113.8") == [200, 200]
    assert counted(limiter, "tests.views.sync_view", "203.0.113.7", "2/m") == 3


def test_header_key(client: Client, limiter: Limiter) -> None:
    assert statuses(client, "/key/header/", 2, HTTP_X_API_KEY="k1") == [200, 429]
    assert statuses(client, "/key/header/", 1, HTTP_X_API_KEY="k2") == [200]
    # No header: nothing to count the request by, so the limit does not apply.
    assert statuses(client, "/key/header/", 3) == [200, 200, 200]


@pytest.mark.django_db
def test_user_key_limits_logged_in_users_each_on_their_own(
    client: Client, limiter: Limiter, django_user_model: type[User]
) -> None:
    alice = django_user_model.objects.create_user("alice", password="pw")
    bob = django_user_model.objects.create_user("bob", password="pw")

    client.force_login(alice)
    assert statuses(client, "/key/user/", 2) == [200, 429]
    client.force_login(bob)
    assert statuses(client, "/key/user/", 2) == [200, 429]
    assert counted(limiter, "tests.views.user_key_view", str(alice.pk), "1/m") == 2


@pytest.mark.django_db
def test_user_key_does_not_limit_anonymous_requests(client: Client, limiter: Limiter) -> None:
    assert statuses(client, "/key/user/", 3) == [200, 200, 200]


@pytest.mark.django_db(transaction=True)
async def test_user_key_on_async_view_limits_logged_in_user(
    async_client: AsyncClient, limiter: Limiter, django_user_model: type[User]
) -> None:
    alice = await sync_to_async(django_user_model.objects.create_user)("alice", password="pw")
    await async_client.aforce_login(alice)

    assert await astatuses(async_client, "/key/async-user/", 2) == [200, 429]


@pytest.mark.django_db(transaction=True)
async def test_callable_key_reading_the_user_on_an_async_view(
    async_client: AsyncClient, limiter: Limiter, django_user_model: type[User]
) -> None:
    bob = await sync_to_async(django_user_model.objects.create_user)("bob", password="pw")
    await async_client.aforce_login(bob)
    assert await astatuses(async_client, "/key/async-callable-user/", 2) == [200, 429]


@pytest.mark.django_db(transaction=True)
async def test_user_key_on_async_view_does_not_limit_anonymous_requests(
    async_client: AsyncClient, limiter: Limiter
) -> None:
    assert await astatuses(async_client, "/key/async-user/", 3) == [200, 200, 200]


# -- rates and algorithms -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/rate/callable/", "/rate/dotted/"])
def test_callable_rate_returning_none_disables_the_limit(
    client: Client, limiter: Limiter, path: str
) -> None:
    assert statuses(client, path, 3, HTTP_X_VIP="1") == [200, 200, 200]
    assert statuses(client, path, 2) == [200, 429]


def test_multi_rate_each_rate_applies(client: Client, limiter: Limiter, clock: FakeClock) -> None:
    clock.now = into_window("tests.views.multi_rate_view", "127.0.0.1", 60, clock.now, 10)
    assert statuses(client, "/rate/multi/", 3) == [200, 200, 429]  # 2/s
    clock.advance(1)
    limited = client.get("/rate/multi/")  # the 4th hit this minute: 3/m

    assert limited.status_code == 429
    assert limited.headers["RateLimit-Policy"] == '"tests.views.multi_rate_view";q=3;w=60'
    assert limited.headers["Retry-After"] == "49"


def test_sliding_window_weighs_the_previous_window(
    client: Client, limiter: Limiter, clock: FakeClock
) -> None:
    clock.now = into_window("tests.views.sliding_view", "127.0.0.1", 60, clock.now, 10)
    assert statuses(client, "/algo/sliding/", 2) == [200, 200]
    assert statuses(client, "/algo/fixed/", 2) == [200, 200]
    clock.advance(80)  # half-way through the next minute: half the previous count remains

    assert statuses(client, "/algo/sliding/", 2) == [200, 429]
    assert statuses(client, "/algo/fixed/", 2) == [200, 200]


def test_fixed_window_resets_at_the_boundary(
    client: Client, limiter: Limiter, clock: FakeClock
) -> None:
    clock.now = into_window("tests.views.sync_view", "127.0.0.1", 60, clock.now, 10)
    assert statuses(client, "/sync/", 3) == [200, 200, 429]
    clock.advance(49.5)
    assert statuses(client, "/sync/", 1) == [429]
    clock.advance(0.5)  # exactly the start of the next minute
    assert statuses(client, "/sync/", 3) == [200, 200, 429]


# -- decoration-time errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"key": "nope", "rate": "1/m"}, InvalidKey),
        ({"key": "cookie:session", "rate": "1/m"}, InvalidKey),
        ({"key": 42, "rate": "1/m"}, InvalidKey),
        ({"key": "ip", "rate": "5/M"}, InvalidRate),
        ({"key": "ip", "rate": "five per minute"}, InvalidRate),
        ({"key": "ip", "rate": "5/0m"}, InvalidRate),
        ({"key": "ip", "rate": (5, 0)}, InvalidRate),
        ({"key": "ip", "rate": "1/m", "algorithm": "token_bucket_2000"}, ValueError),
        ({"key": "ip", "rate": "1/m", "cost": 0}, ValueError),
    ],
)
def test_bad_arguments_raise_at_decoration_time(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        ratelimit(**kwargs)
    assert isinstance(info.value, ImproperlyConfigured)  # as django-ratelimit raises


def test_rate_none_means_no_limit(rf: RequestFactory, limiter: Limiter) -> None:
    @ratelimit(key="ip", rate=None)
    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    for _ in range(5):
        request = rf.get("/")
        assert view(request).status_code == 200
        assert request.limited is False  # type: ignore[attr-defined]


# -- settings -----------------------------------------------------------------------------------


def test_disabled_setting_turns_the_decorator_off(client: Client) -> None:
    with override_settings(DRATELIMIT={"ENABLED": False}):
        assert statuses(client, "/sync/", 4) == [200, 200, 200, 200]
        assert bodies(client, "/nonblock/", 3) == ["ok", "ok", "ok"]


def test_without_the_middleware_a_limited_request_is_a_403(
    client: Client, limiter: Limiter, settings: Settings
) -> None:
    settings.MIDDLEWARE = NO_RATELIMIT_MIDDLEWARE

    assert statuses(client, "/sync/", 3) == [200, 200, 403]


async def test_without_the_middleware_an_async_limited_request_is_a_403(
    async_client: AsyncClient, limiter: Limiter, settings: Settings
) -> None:
    settings.MIDDLEWARE = NO_RATELIMIT_MIDDLEWARE

    assert await astatuses(async_client, "/async/", 3) == [200, 200, 403]


# -- get_usage / is_ratelimited -----------------------------------------------------------------


def module_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def test_get_usage_counts_and_reports(rf: RequestFactory, limiter: Limiter) -> None:
    request = rf.get("/")
    usages = [get_usage(request, "g", key="ip", rate="2/m", increment=True) for _ in range(3)]

    assert [u["count"] if u else None for u in usages] == [1, 2, 3]
    assert [u["should_limit"] if u else None for u in usages] == [False, False, True]
    last = usages[-1]
    assert last is not None
    assert (last.group, last.key, last.limit, last.period) == ("g", "127.0.0.1", 2, 60)


def test_get_usage_is_a_mapping_with_the_django_ratelimit_keys(
    rf: RequestFactory, limiter: Limiter, clock: FakeClock
) -> None:
    clock.now = into_window("g", "127.0.0.1", 60, clock.now, 10)
    usage = get_usage(rf.get("/"), "g", key="ip", rate="5/m", increment=True)

    assert usage is not None
    assert set(usage) == {"count", "limit", "should_limit", "time_left", "remaining", "reset_at"}
    assert dict(usage) == {
        "count": 1,
        "limit": 5,
        "should_limit": False,
        "time_left": 50.0,
        "remaining": 4,
        "reset_at": clock.now + 50.0,
    }
    with pytest.raises(KeyError):
        usage["group"]


def test_get_usage_without_increment_does_not_count(rf: RequestFactory, limiter: Limiter) -> None:
    request = rf.get("/")
    for _ in range(5):
        usage = get_usage(request, "g", key="ip", rate="1/m")
        assert usage is not None
        assert (usage.count, usage.should_limit) == (0, False)
        assert not is_ratelimited(request, "g", key="ip", rate="1/m", increment=False)

    assert limiter.get("g", "127.0.0.1", "1/m").count == 0


def test_is_ratelimited_with_increment(rf: RequestFactory, limiter: Limiter) -> None:
    request = rf.post("/")
    results = [
        is_ratelimited(request, "g", key="ip", rate="2/m", method="POST", increment=True)
        for _ in range(3)
    ]

    assert results == [False, False, True]


def test_get_usage_with_cost(rf: RequestFactory, limiter: Limiter) -> None:
    request = rf.get("/")
    first = get_usage(request, "g", key="ip", rate="5/m", increment=True, cost=3)
    second = get_usage(request, "g", key="ip", rate="5/m", increment=True, cost=3)

    assert first is not None
    assert second is not None
    assert (first.count, first.remaining, first.should_limit) == (3, 2, False)
    assert (second.count, second.remaining, second.should_limit) == (6, 0, True)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "POST"},
        {"method": ["PUT", "DELETE"]},
        {"method": UNSAFE},
        {"rate": None},
        {"rate": views.vip_rate, "HTTP_X_VIP": "yes"},
        {"key": "header:x-missing"},
        {"key": "user"},
    ],
)
def test_get_usage_returns_none_when_no_limit_applies(
    rf: RequestFactory, limiter: Limiter, kwargs: dict[str, Any]
) -> None:
    extra = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("HTTP_")}
    request = rf.get("/", **extra)
    args: dict[str, Any] = {"key": "ip", "rate": "1/m", **kwargs}

    assert get_usage(request, "g", increment=True, **args) is None
    assert is_ratelimited(request, "g", increment=True, **args) is False
    assert limiter.get("g", "127.0.0.1", "1/m").count == 0


def test_get_usage_returns_none_when_disabled(rf: RequestFactory) -> None:
    with override_settings(DRATELIMIT={"ENABLED": False}):
        assert get_usage(rf.get("/"), "g", key="ip", rate="1/m", increment=True) is None


def test_get_usage_names_the_group_after_fn(rf: RequestFactory, limiter: Limiter) -> None:
    usage = get_usage(rf.get("/"), fn=module_view, key="ip", rate="1/m", increment=True)

    assert usage is not None
    assert usage.group == "tests.test_decorators.module_view"


def test_get_usage_algorithm(rf: RequestFactory, limiter: Limiter, clock: FakeClock) -> None:
    clock.now = into_window("g", "127.0.0.1", 60, clock.now, 10)
    request = rf.get("/")
    for _ in range(2):
        get_usage(request, "g", key="ip", rate="2/m", increment=True, algorithm="sliding_window")
    clock.advance(80)
    usage = get_usage(request, "g", key="ip", rate="2/m", algorithm="sliding_window")

    assert usage is not None
    assert (usage.count, usage.algorithm) == (1, "sliding_window")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"key": "ip", "rate": "1/m"}, TypeError),  # neither group nor fn
        ({"group": "g", "rate": "1/m"}, TypeError),  # no key
        ({"group": "g", "key": "ip", "rate": "1/m", "algorithm": "nope"}, ValueError),
    ],
)
def test_get_usage_argument_errors(
    rf: RequestFactory, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        get_usage(rf.get("/"), **kwargs)


def test_a_dotted_path_rate_that_does_not_import_fails_on_the_request(
    rf: RequestFactory, limiter: Limiter
) -> None:
    # Imported on the first request (a views module may name what it defines later);
    # ImproperlyConfigured then, never "no limit". manage.py check reports it (E027).
    view = ratelimit(key="ip", rate="tests.no_such_module.rate")(views.open_view)
    with pytest.raises(InvalidRate, match="does not import"):
        view(rf.get("/"))


def test_a_dotted_path_key_that_does_not_import_fails_on_the_request(
    rf: RequestFactory, limiter: Limiter
) -> None:
    view = ratelimit(key="tests.views.does_not_exist", rate="1/m")(views.open_view)
    with pytest.raises(InvalidKey, match="does not import"):
        view(rf.get("/"))


def test_a_missing_key_fails_on_the_request_as_in_django_ratelimit(
    rf: RequestFactory, limiter: Limiter
) -> None:
    view = ratelimit(rate="1/m")(views.open_view)
    with pytest.raises(ImproperlyConfigured, match="needs a key"):
        view(rf.get("/"))


def test_decorated_groups_register_their_static_rates() -> None:
    from django_dratelimit.registry import known_rates

    @ratelimit(group="registered-group", key="ip", rate="7/m")
    def view(request: Any) -> None: ...

    @ratelimit(group="dynamic-group", key="ip", rate=lambda g, r: "1/s")
    def other(request: Any) -> None: ...

    rates = known_rates()
    assert rates["registered-group"] == [[7, 60]]
    assert "dynamic-group" not in rates


# -- the cost is resolved last ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "key", "enabled"),
    [("POST", "ip", True), (None, "header:x-api-key", True), (None, "ip", False)],
    ids=["method does not match", "no key value", "disabled"],
)
def test_a_cost_callable_is_not_called_when_the_limit_does_not_apply(
    rf: RequestFactory, limiter: Limiter, method: str | None, key: str, enabled: bool
) -> None:
    calls: list[str] = []

    def cost(group: str, request: HttpRequest) -> int:
        calls.append(group)
        return 2

    @ratelimit(group="cost-last", key=key, rate="5/m", method=method, cost=cost)
    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    with override_settings(DRATELIMIT={"ENABLED": enabled, "CHANNEL_LAYER": None}):
        request = rf.get("/")
        assert view(request).status_code == 200
        assert request.limited is False  # type: ignore[attr-defined]
    assert calls == []


def test_a_cost_callable_is_called_once_when_the_limit_applies(
    rf: RequestFactory, limiter: Limiter
) -> None:
    calls: list[str] = []

    def cost(group: str, request: HttpRequest) -> int:
        calls.append(group)
        return 2

    @ratelimit(group="cost-last", key="ip", rate="5/m", method="GET", cost=cost)
    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    view(rf.get("/"))
    assert calls == ["cost-last"]
    usage = get_usage(rf.get("/"), group="cost-last", key="ip", rate="5/m", method="GET")
    assert usage is not None
    assert usage["count"] == 2
