"""The DRF throttles: DRF's names and behaviour, counted by our limiter, with our headers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

pytest.importorskip("rest_framework")

from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.test import AsyncClient, Client, override_settings
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.test import APIRequestFactory
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from django_dratelimit import drf
from django_dratelimit.checks import check_settings
from django_dratelimit.limiter import Limiter, set_limiter
from django_dratelimit.local.store import CounterStore
from django_dratelimit.rates import InvalidRate
from tests.conftest import FakeClock
from tests.drf_urls import Base

RATES = {"anon": "2/min", "user": "3/minute", "uploads": "2/min", "apikey": "1/min"}
DRF = {"DEFAULT_THROTTLE_RATES": RATES}
ADDRESS = "127.0.0.1"  # the test client's REMOTE_ADDR


@contextmanager
def drf_site(
    clock: FakeClock, drf_settings: dict[str, Any] = DRF, **dratelimit: Any
) -> Iterator[Limiter]:
    """DRF's settings, the DRF URLconf, and a fake-clock limiter installed after them."""
    with override_settings(
        REST_FRAMEWORK=drf_settings, ROOT_URLCONF="tests.drf_urls", DRATELIMIT=dratelimit
    ):
        instance = Limiter(CounterStore(), clock=clock, sync=False)
        set_limiter(instance)
        yield instance


def codes(responses: list[Any]) -> list[int]:
    return [r.status_code for r in responses]


def drf_request(**extra: Any) -> Request:
    return Request(APIRequestFactory().get("/", **extra))


# -- APIView ----------------------------------------------------------------------------------


def test_anon_throttle_on_an_api_view(client: Client, clock: FakeClock) -> None:
    with drf_site(clock) as limiter:
        responses = [client.get("/anon/") for _ in range(3)]
        counted = limiter.get("anon", f"throttle_anon_{ADDRESS}", "2/m").count

    assert codes(responses) == [200, 200, 429]
    assert counted == 3  # in our limiter, under DRF's cache key
    assert responses[0].headers["RateLimit-Policy"] == '"anon";q=2;w=60'
    assert responses[0].headers["RateLimit"] == '"anon";r=1;t=50'
    refused = responses[2]
    assert refused.headers["Retry-After"] == "50"  # DRF's, from wait()
    assert refused.headers["RateLimit"] == '"anon";r=0;t=50'  # ours, from the middleware
    assert json.loads(refused.content) == {
        "detail": "Request was throttled. Expected available in 50 seconds."
    }


@pytest.mark.django_db
def test_anon_throttle_lets_logged_in_users_through(client: Client, clock: FakeClock) -> None:
    client.force_login(User.objects.create_user("ann"))
    with drf_site(clock):
        responses = [client.get("/anon/") for _ in range(3)]

    assert codes(responses) == [200, 200, 200]
    assert "RateLimit" not in responses[0].headers  # not throttled: nothing counted


@pytest.mark.django_db
def test_user_throttle_counts_by_pk_then_by_address(client: Client, clock: FakeClock) -> None:
    ann, bob = User.objects.create_user("ann"), User.objects.create_user("bob")
    with drf_site(clock) as limiter:
        client.force_login(ann)
        as_ann = [client.get("/user/") for _ in range(4)]
        client.force_login(bob)
        as_bob = client.get("/user/")
        client.logout()
        anonymous = client.get("/user/")
        assert limiter.get("user", f"throttle_user_{ann.pk}", "3/m").count == 4
        assert limiter.get("user", f"throttle_user_{ADDRESS}", "3/m").count == 1

    assert codes(as_ann) == [200, 200, 200, 429]
    assert as_bob.status_code == anonymous.status_code == 200


def test_scoped_throttle_reads_the_view_scope(client: Client, clock: FakeClock) -> None:
    with drf_site(clock):
        shared = [client.get(path) for path in ("/uploads/", "/uploads-too/", "/uploads/")]
        unscoped = [client.get("/unscoped/") for _ in range(3)]

    assert codes(shared) == [200, 200, 429]  # one scope, one counter, two views
    assert shared[0].headers["RateLimit-Policy"] == '"uploads";q=2;w=60'
    assert codes(unscoped) == [200, 200, 200]
    assert "RateLimit" not in unscoped[0].headers


def test_an_overridden_get_cache_key(client: Client, clock: FakeClock) -> None:
    with drf_site(clock) as limiter:
        first = [client.get("/apikey/", HTTP_X_API_KEY="k1") for _ in range(2)]
        other = client.get("/apikey/", HTTP_X_API_KEY="k2")
        keyless = [client.get("/apikey/") for _ in range(2)]
        assert limiter.get("apikey", "apikey:k1", "1/m").count == 2

    assert codes(first) == [200, 429]
    assert other.status_code == 200
    assert codes(keyless) == [200, 200]  # get_cache_key returned None: not throttled


def test_num_proxies_picks_the_address_drf_picks(client: Client, clock: FakeClock) -> None:
    with drf_site(clock, {**DRF, "NUM_PROXIES": 1}) as limiter:
        for client_address in ("203.0.113.7", "203.0.113.7", "203.0.113.7", "198.51.100.1"):
            client.get("/anon/", HTTP_X_FORWARDED_FOR=f"{client_address}, 10.0.0.1")
        # One proxy: the right-most address is the client, as DRF's get_ident says.
        assert limiter.get("anon", "throttle_anon_10.0.0.1", "2/m").count == 4

    with drf_site(clock, {**DRF, "NUM_PROXIES": 2}) as limiter:
        responses = [
            client.get("/anon/", HTTP_X_FORWARDED_FOR=f"{address}, 10.0.0.1")
            for address in ("203.0.113.7", "203.0.113.7", "203.0.113.7", "198.51.100.1")
        ]
        assert limiter.get("anon", "throttle_anon_203.0.113.7", "2/m").count == 3

    assert codes(responses) == [200, 200, 429, 200]


# -- ViewSet and @action ------------------------------------------------------------------------


def test_viewset_action_with_its_own_throttle_classes(client: Client, clock: FakeClock) -> None:
    with drf_site(clock):
        listed = [client.get("/things/") for _ in range(5)]
        exported = [client.get("/things/export/") for _ in range(4)]

    assert codes(listed) == [200] * 5  # the viewset itself has no throttles
    assert codes(exported) == [200, 200, 200, 429]
    assert exported[0].headers["RateLimit-Policy"] == '"user";q=3;w=60'


# -- the ASGI stack -----------------------------------------------------------------------------


async def test_through_asgi(async_client: AsyncClient, clock: FakeClock) -> None:
    # DRF 3.18 views are sync: Django runs them in a thread under the async middleware.
    with drf_site(clock):
        responses = [await async_client.get("/anon/") for _ in range(3)]

    assert codes(responses) == [200, 200, 429]
    assert responses[1].headers["RateLimit"] == '"anon";r=0;t=50'
    assert responses[2].headers["Retry-After"] == "50"


# -- DEFAULT_THROTTLE_CLASSES: the one-line switch -----------------------------------------------


def test_default_throttle_classes_by_dotted_path(client: Client, clock: FakeClock) -> None:
    switch = {
        **DRF,
        "DEFAULT_THROTTLE_CLASSES": [
            "django_dratelimit.drf.AnonRateThrottle",
            "django_dratelimit.drf.UserRateThrottle",
        ],
    }
    with drf_site(clock, switch, HEADER_POLICIES="all"):

        class Default(Base):
            # What APIView binds at import, bound here under the overridden settings.
            throttle_classes = api_settings.DEFAULT_THROTTLE_CLASSES

        request = APIRequestFactory().get("/")
        throttles = Default().get_throttles()
        view = Default.as_view()
        responses = [view(request) for _ in range(3)]

    assert [type(t) for t in throttles] == [drf.AnonRateThrottle, drf.UserRateThrottle]
    assert codes(responses) == [200, 200, 429]


@pytest.mark.parametrize(
    ("mode", "policy", "ratelimit"),
    [
        ("most_restrictive", '"burst";q=2;w=1', '"burst";r=0;t=1'),
        ("all", '"burst";q=2;w=1, "sustained";q=5;w=60', '"burst";r=0;t=1, "sustained";r=2;t=50'),
    ],
)
def test_two_throttles_in_the_headers(
    client: Client, clock: FakeClock, mode: str, policy: str, ratelimit: str
) -> None:
    with drf_site(clock, HEADER_POLICIES=mode):
        responses = [client.get("/burst/") for _ in range(3)]

    assert codes(responses) == [200, 200, 429]
    assert responses[2].headers["RateLimit-Policy"] == policy
    assert responses[2].headers["RateLimit"] == ratelimit
    assert responses[2].headers["Retry-After"] == "1"  # DRF takes the longest wait: burst's


def test_enabled_false_turns_the_throttles_off(client: Client, clock: FakeClock) -> None:
    with drf_site(clock, ENABLED=False):
        responses = [client.get("/anon/") for _ in range(3)]

    assert codes(responses) == [200, 200, 200]


def test_without_the_middleware_throttles_still_limit(client: Client, clock: FakeClock) -> None:
    with drf_site(clock), override_settings(MIDDLEWARE=[]):
        responses = [client.get("/anon/") for _ in range(3)]

    assert codes(responses) == [200, 200, 429]
    assert responses[2].headers["Retry-After"] == "50"
    assert "RateLimit" not in responses[0].headers


# -- wait() -------------------------------------------------------------------------------------


def test_wait_is_the_time_until_admitted(limiter: Limiter, clock: FakeClock) -> None:
    with override_settings(REST_FRAMEWORK=DRF):
        throttles = [drf.AnonRateThrottle() for _ in range(3)]
        allowed = [t.allow_request(drf_request(), None) for t in throttles]

    assert allowed == [True, True, False]
    assert throttles[0].wait() is None  # it admitted: no recommendation
    assert throttles[2].wait() == 50.0  # the window's end, 50 s away


def test_wait_is_exact_for_a_token_bucket(limiter: Limiter, clock: FakeClock) -> None:
    class Tokens(drf.AnonRateThrottle):
        scope = "tokens"
        rate = "2/min"
        algorithm = "token_bucket"

    assert [Tokens().allow_request(drf_request(), None) for _ in range(2)] == [True, True]
    clock.advance(10.5)
    refused = Tokens()
    assert refused.allow_request(drf_request(), None) is False
    wait = refused.wait()
    assert wait is not None
    assert wait == pytest.approx(19.5, abs=0.05)  # one token every 30 s, less the 10.5 s
    clock.advance(wait)
    assert Tokens().allow_request(drf_request(), None) is True  # admitted when wait() said


def test_wait_never_below_a_second_for_drfs_header(limiter: Limiter, clock: FakeClock) -> None:
    class PerSecond(drf.AnonRateThrottle):
        scope = "per-second"
        rate = "1/s"

    PerSecond().allow_request(drf_request(), None)
    clock.advance(0.75)
    refused = PerSecond()
    assert refused.allow_request(drf_request(), None) is False
    assert refused.wait() == pytest.approx(0.25)  # DRF rounds it up: Retry-After: 1


# -- rates, classes, settings ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        ("100/day", (100, 86400)),
        ("5/min", (5, 60)),
        ("10/sec", (10, 1)),
        ("1000/hour", (1000, 3600)),
        ("2/m", (2, 60)),
        ("3/10m", (3, 600)),  # DRF cannot say this one
        (None, (None, None)),
    ],
)
def test_drf_rate_strings(rate: str | None, expected: tuple[int | None, int | None]) -> None:
    with override_settings(REST_FRAMEWORK={"DEFAULT_THROTTLE_RATES": {"anon": rate}}):
        throttle = drf.AnonRateThrottle()
    assert (throttle.num_requests, throttle.duration) == expected


def test_a_rate_of_none_never_throttles(limiter: Limiter) -> None:
    with override_settings(REST_FRAMEWORK={"DEFAULT_THROTTLE_RATES": {"anon": None}}):
        throttles = [drf.AnonRateThrottle() for _ in range(5)]
    assert all(t.allow_request(drf_request(), None) for t in throttles)
    assert limiter.store.read(("anon", f"throttle_anon_{ADDRESS}", 60, 0)) == (0, 0)


@pytest.mark.parametrize(
    ("rates", "message"),
    [
        ({}, "No default throttle rate set for 'anon' scope"),
        ({"anon": "5/M"}, "unknown unit"),
        ({"anon": "1/s;5/m"}, "gives 2 limits"),
    ],
)
def test_bad_rates_are_errors(rates: dict[str, str], message: str) -> None:
    with (
        override_settings(REST_FRAMEWORK={"DEFAULT_THROTTLE_RATES": rates}),
        pytest.raises((ImproperlyConfigured, InvalidRate), match=message),
    ):
        drf.AnonRateThrottle()


def test_no_scope_and_no_rate_is_an_error() -> None:
    class Nameless(drf.SimpleRateThrottle):
        pass

    with pytest.raises(ImproperlyConfigured, match=r"set either `\.scope` or `\.rate`"):
        Nameless()


def test_bad_class_attributes_fail_when_the_class_is_made() -> None:
    with pytest.raises(ValueError, match="consistency"):
        type("Exact", (drf.AnonRateThrottle,), {"consistency": "exact"})
    with pytest.raises(ValueError, match="fixed_window and sliding_window only"):
        type("T", (drf.AnonRateThrottle,), {"consistency": "strict", "algorithm": "token_bucket"})
    with pytest.raises(InvalidRate, match="unknown unit"):
        type("Typo", (drf.AnonRateThrottle,), {"rate": "5/M"})


def test_a_class_rate_needs_no_scope_and_groups_by_class(limiter: Limiter) -> None:
    class Classy(drf.SimpleRateThrottle):
        rate = "1/min"

        def get_cache_key(self, request: Request, view: Any) -> str:
            return "everyone"

    assert [Classy().allow_request(drf_request(), None) for _ in range(2)] == [True, False]
    group = f"{__name__}.{Classy.__qualname__}"
    assert limiter.get(group, "everyone", "1/m").count == 2


def test_an_overridden_parse_rate_is_what_counts(limiter: Limiter) -> None:
    class Custom(drf.AnonRateThrottle):
        rate = "custom"

        def parse_rate(self, rate: str | None) -> tuple[int | None, int | None]:
            return (1, 3600)

    throttles = [Custom() for _ in range(2)]
    assert [t.allow_request(drf_request(), None) for t in throttles] == [True, False]
    assert throttles[1].usage is not None
    assert (throttles[1].usage.limit, throttles[1].usage.period) == (1, 3600)


def test_drfs_base_class_and_get_ident() -> None:
    throttle = drf.UserRateThrottle
    assert issubclass(throttle, BaseThrottle)
    assert throttle.get_ident is BaseThrottle.get_ident  # identified exactly as DRF does
    assert issubclass(drf.ScopedRateThrottle, drf.SimpleRateThrottle)
    assert APIView.throttled  # DRF turns wait() into Retry-After itself


# -- strict consistency --------------------------------------------------------------------------


def test_strict_throttle_counts_in_the_shared_cache(redis_db: Any) -> None:
    from tests.test_strict_wiring import redis_cache

    class StrictAnon(drf.AnonRateThrottle):
        scope = "strict-anon"
        rate = "2/min"
        consistency = "strict"

    with override_settings(CACHES=redis_cache(redis_db.url), DRATELIMIT={"STRICT_CACHE": "strict"}):
        set_limiter(Limiter(CounterStore(), sync=False))
        assert [StrictAnon().allow_request(drf_request(), None) for _ in range(3)] == [
            True,
            True,
            False,
        ]
        # The count lives in Redis, not in this process: a fresh limiter sees it.
        set_limiter(Limiter(CounterStore(), sync=False))
        refused = StrictAnon()
        assert refused.allow_request(drf_request(), None) is False
        assert refused.wait() is not None
    assert any(b"strict-anon" in key for key in redis_db.command("KEYS", "*"))


# -- system checks --------------------------------------------------------------------------------


OURS = ["django_dratelimit.drf.AnonRateThrottle"]


@pytest.mark.parametrize(
    ("rest_framework", "middleware", "expected"),
    [
        ({"DEFAULT_THROTTLE_CLASSES": OURS, **DRF}, True, []),
        ({"DEFAULT_THROTTLE_CLASSES": OURS, **DRF}, False, ["dratelimit.W040"]),
        (
            {"DEFAULT_THROTTLE_CLASSES": OURS, "DEFAULT_THROTTLE_RATES": {"anon": "5/mo"}},
            True,
            ["dratelimit.E041"],
        ),
        (
            {"DEFAULT_THROTTLE_RATES": {"a": "1/s;2/m", "b": 5, "c": None}},
            True,
            ["dratelimit.E041"] * 2,
        ),
        ({"DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.AnonRateThrottle"]}, False, []),
    ],
)
def test_drf_checks(rest_framework: dict[str, Any], middleware: bool, expected: list[str]) -> None:
    stack = ["django_dratelimit.middleware.RateLimitMiddleware"] if middleware else []
    with override_settings(REST_FRAMEWORK=rest_framework, MIDDLEWARE=stack):
        assert [m.id for m in check_settings()] == expected
