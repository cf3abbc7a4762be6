"""The 429 as a problem document (RFC 9457, the RateLimit draft's quota-exceeded), and
RateLimit headers that list every policy when HEADER_POLICIES asks for it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.test import AsyncClient, Client, RequestFactory, override_settings

from django_dratelimit.checks import check_settings
from django_dratelimit.exceptions import Ratelimited
from django_dratelimit.headers import named_policies
from django_dratelimit.limiter import Limiter, set_limiter
from django_dratelimit.local.store import CounterStore
from django_dratelimit.usage import Usage
from django_dratelimit.views import ratelimited
from tests.conftest import FakeClock

PROBLEM = {
    "type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
    "title": "Request cannot be satisfied as assigned quota has been exceeded",
    "status": 429,
}
API = {"name": "api", "path": r"^/api/", "key": "ip", "rate": "2/m"}
WIDE = {"name": "wide", "path": r"^/api/", "key": "ip", "rate": "10/m"}
NARROW = {"name": "narrow", "path": r"^/api/thing/$", "key": "ip", "rate": "2/m"}


@contextmanager
def dratelimit(clock: FakeClock, **options: Any) -> Iterator[Limiter]:
    # Epoch-aligned windows, so the figures below do not depend on the key's stagger.
    options.setdefault("STAGGER_WINDOWS", False)
    with override_settings(DRATELIMIT=options):
        instance = Limiter(CounterStore(), clock=clock, sync=False)
        set_limiter(instance)
        yield instance


def limited(client: Client, accept: str | None, path: str = "/api/thing/") -> Any:
    extra: dict[str, Any] = {} if accept is None else {"HTTP_ACCEPT": accept}
    for _ in range(2):
        assert client.get(path).status_code == 200
    response = client.get(path, **extra)
    assert response.status_code == 429
    return response


# -- content negotiation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        ("application/problem+json", "application/problem+json"),
        ("application/*", "application/problem+json"),
        ("text/html;q=0.9, application/problem+json", "application/problem+json"),
        ("application/json", "application/json"),  # asked for JSON only: answered in JSON
        ("application/json, application/problem+json;q=0", "application/json"),
        ("application/problem+json;q=0.8, application/json", "application/json"),
        ("text/plain;q=0.1, application/json;q=0.2", "application/json"),
    ],
)
def test_json_clients_get_the_problem_document(
    client: Client, clock: FakeClock, accept: str, content_type: str
) -> None:
    with dratelimit(clock, RULES=[API]):
        response = limited(client, accept)

    assert response.headers["Content-Type"] == content_type
    assert json.loads(response.content) == {
        **PROBLEM,
        "detail": "Too many requests. Retry in 50 s.",
        "violated-policies": ["api"],
        "retry-after": 50,
    }
    assert response.headers["Retry-After"] == "50"
    assert response.headers["RateLimit-Policy"] == '"api";q=2;w=60'
    assert response.headers["Vary"] == "Accept"


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "*/*",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",  # a browser
        "application/json;q=0.5, text/plain",
        "application/json;q=0, application/problem+json;q=0",
        "image/png",  # nothing we offer: text rather than a 406 on top of a 429
    ],
)
def test_other_clients_keep_plain_text(
    client: Client, clock: FakeClock, accept: str | None
) -> None:
    with dratelimit(clock, RULES=[API]):
        response = limited(client, accept)

    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content == b"Too many requests. Retry in 50 s.\n"
    assert response.headers["Vary"] == "Accept"


async def test_problem_document_on_the_async_stack(
    async_client: AsyncClient, clock: FakeClock
) -> None:
    with dratelimit(clock, RULES=[API]):
        for _ in range(2):
            await async_client.get("/api/async/")
        response = await async_client.get(
            "/api/async/", headers={"Accept": "application/problem+json"}
        )

    assert response.status_code == 429
    assert response.headers["Content-Type"] == "application/problem+json"
    assert json.loads(response.content)["violated-policies"] == ["api"]


def test_a_ratelimited_raised_without_usage(rf: RequestFactory) -> None:
    request = rf.get("/", HTTP_ACCEPT="application/problem+json")
    response = ratelimited(request, Ratelimited())

    assert json.loads(response.content) == {
        **PROBLEM,
        "detail": "Too many requests.",
        "violated-policies": [],
    }
    assert not {"Retry-After", "RateLimit", "RateLimit-Policy"} & set(response.headers)


# -- every policy in the headers -----------------------------------------------------------


def test_default_headers_describe_the_most_restrictive_policy(
    client: Client, clock: FakeClock
) -> None:
    with dratelimit(clock, RULES=[WIDE, NARROW]):
        response = client.get("/api/thing/")

    assert response.headers["RateLimit-Policy"] == '"narrow";q=2;w=60'
    assert response.headers["RateLimit"] == '"narrow";r=1;t=50'


def test_all_lists_each_policy_in_the_order_counted(client: Client, clock: FakeClock) -> None:
    with dratelimit(clock, RULES=[WIDE, NARROW], HEADER_POLICIES="all"):
        first = client.get("/api/thing/")
        client.get("/api/thing/")
        response = client.get("/api/thing/", HTTP_ACCEPT="application/problem+json")

    assert first.headers["RateLimit-Policy"] == '"wide";q=10;w=60, "narrow";q=2;w=60'
    assert first.headers["RateLimit"] == '"wide";r=9;t=50, "narrow";r=1;t=50'
    assert response.headers["RateLimit-Policy"] == '"wide";q=10;w=60, "narrow";q=2;w=60'
    assert response.status_code == 429
    assert response.headers["RateLimit"] == '"wide";r=7;t=50, "narrow";r=0;t=50'
    assert response.headers["Retry-After"] == "50"
    # Only the policy over its limit is named: "wide" still had room.
    assert json.loads(response.content)["violated-policies"] == ["narrow"]


def test_all_names_each_rate_of_a_multi_rate_group(client: Client, clock: FakeClock) -> None:
    group = "tests.views.multi_rate_view"  # "2/s;3/m"
    with dratelimit(clock, HEADER_POLICIES="all"):
        allowed = client.get("/rate/multi/")
        client.get("/rate/multi/")
        refused = client.get("/rate/multi/", HTTP_ACCEPT="application/json")

    assert allowed.headers["RateLimit-Policy"] == (f'"{group}-1s";q=2;w=1, "{group}-60s";q=3;w=60')
    assert allowed.headers["RateLimit"] == f'"{group}-1s";r=1;t=1, "{group}-60s";r=2;t=50'
    assert refused.status_code == 429
    # The clock stands still: the 3rd request is over the per-second rate only.
    assert json.loads(refused.content)["violated-policies"] == [f"{group}-1s"]
    assert refused.headers["RateLimit"] == f'"{group}-1s";r=0;t=1, "{group}-60s";r=0;t=50'


def make_usage(policy: str, period: int, count: int, limit: int = 5) -> Usage:
    return Usage(policy, "k", count, limit, period, count > limit, 10.0, 0.0)


def test_one_bucket_counted_twice_is_listed_once_as_the_more_restrictive() -> None:
    first, second = make_usage("g", 60, 1), make_usage("g", 60, 2)
    other = make_usage("h", 60, 1)

    assert named_policies([first, other, second]) == [("g", second), ("h", other)]


# -- the check ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["every", "", None, True, ["all"]])
def test_e040_header_policies_must_be_a_known_choice(value: Any) -> None:
    with override_settings(DRATELIMIT={"HEADER_POLICIES": value}):
        assert [m.id for m in check_settings()] == ["dratelimit.E040"]


@pytest.mark.parametrize("value", ["most_restrictive", "all"])
def test_header_policies_choices_are_clean(value: str) -> None:
    with override_settings(DRATELIMIT={"HEADER_POLICIES": value}):
        assert check_settings() == []


def test_a_ratelimited_raised_by_hand_with_a_usage(rf: RequestFactory) -> None:
    # Never recorded on the request: the view still describes it.
    refused = make_usage("export", 3600, 6)
    with override_settings(DRATELIMIT={"HEADER_POLICIES": "all"}):
        response = ratelimited(rf.get("/", HTTP_ACCEPT="application/json"), Ratelimited(refused))

    assert response.headers["RateLimit-Policy"] == '"export";q=5;w=3600'
    assert response.headers["Retry-After"] == "10"
    assert json.loads(response.content)["violated-policies"] == ["export"]
