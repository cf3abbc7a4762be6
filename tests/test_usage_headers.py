"""Usage objects (read like django-ratelimit's dict) and the RateLimit / Retry-After headers."""

from __future__ import annotations

from typing import Any

import pytest
from django.http import HttpResponse

from django_dratelimit.headers import policy_header, ratelimit_header, set_headers
from django_dratelimit.usage import Usage, most_restrictive


def usage(**changes: Any) -> Usage:
    fields: dict[str, Any] = {
        "group": "login",
        "key": "203.0.113.7",
        "count": 3,
        "limit": 5,
        "period": 60,
        "should_limit": False,
        "time_left": 42.0,
        "reset_at": 1_700_000_042.0,
    }
    fields.update(changes)
    return Usage(**fields)


# -- Usage as a mapping ---------------------------------------------------------------


def test_mapping_access() -> None:
    u = usage(count=6, should_limit=True, time_left=12.5)
    assert u["count"] == 6
    assert u["limit"] == 5
    assert u["should_limit"] is True
    assert u["time_left"] == 12.5
    assert u["remaining"] == 0
    assert u["reset_at"] == 1_700_000_042.0


@pytest.mark.parametrize(
    "name", ["group", "key", "period", "algorithm", "name", "others", "allowed", "policy", "x", ""]
)
def test_other_names_raise_key_error(name: str) -> None:
    u = usage()
    with pytest.raises(KeyError):
        u[name]
    assert name not in u
    assert u.get(name) is None


def test_mapping_protocol() -> None:
    u = usage()
    assert list(u) == ["count", "limit", "should_limit", "time_left", "remaining", "reset_at"]
    assert len(u) == 6
    assert dict(u) == {
        "count": 3,
        "limit": 5,
        "should_limit": False,
        "time_left": 42.0,
        "remaining": 2,
        "reset_at": 1_700_000_042.0,
    }
    assert "count" in u
    assert u.get("count") == 3


def test_attributes_and_defaults() -> None:
    u = usage()
    assert (u.group, u.key, u.period) == ("login", "203.0.113.7", 60)
    assert u.algorithm == "fixed_window"
    assert u.name == ""
    assert u.others == ()
    assert u.allowed is True
    assert usage(should_limit=True).allowed is False


@pytest.mark.parametrize(
    ("count", "limit", "remaining"),
    [(0, 5, 5), (3, 5, 2), (5, 5, 0), (6, 5, 0), (100, 5, 0), (0, 0, 0), (1, 0, 0)],
)
def test_remaining(count: int, limit: int, remaining: int) -> None:
    assert usage(count=count, limit=limit).remaining == remaining


@pytest.mark.parametrize(
    ("time_left", "retry_after"),
    [
        (-5.0, 1),
        (0.0, 1),
        (0.001, 1),
        (0.5, 1),
        (1.0, 1),
        (1.0001, 2),
        (41.2, 42),
        (59.5, 60),
        (60.0, 60),
        (86399.01, 86400),
    ],
)
def test_retry_after_rounds_up_and_is_at_least_one(time_left: float, retry_after: int) -> None:
    u = usage(time_left=time_left)
    assert u.retry_after == retry_after
    assert isinstance(u.retry_after, int)


def test_policy_is_the_name_or_the_group() -> None:
    assert usage().policy == "login"
    assert usage(name="strict-login").policy == "strict-login"


def test_equality_and_hashing() -> None:
    assert usage() == usage()
    assert usage() != usage(count=4)
    assert usage() != usage(name="other")
    assert usage(others=(usage(),)) != usage()  # a Usage is a value: every field counts
    not_a_usage: object = {"count": 3}
    assert usage() != not_a_usage
    assert hash(usage()) == hash(usage())
    assert len({usage(), usage(), usage(count=4)}) == 2


def test_repr() -> None:
    assert repr(usage(time_left=1 / 3)) == (
        "Usage(group='login', key='203.0.113.7', count=3, limit=5, period=60, "
        "should_limit=False, time_left=0.333)"
    )


# -- most_restrictive ---------------------------------------------------------------------


def test_a_limiting_usage_wins_over_any_other() -> None:
    allowed = usage(count=0, limit=1000, time_left=3000.0)
    limited = usage(count=6, limit=5, should_limit=True, time_left=1.0)
    assert most_restrictive([allowed, limited]) is limited
    assert most_restrictive([limited, allowed]) is limited


def test_among_limiting_usages_the_longest_wait_wins() -> None:
    short = usage(should_limit=True, time_left=5.0, name="short")
    long = usage(should_limit=True, time_left=500.0, name="long")
    assert most_restrictive([short, long]) is long
    assert most_restrictive([long, short]) is long


def test_among_allowed_usages_the_least_room_wins() -> None:
    per_second = usage(count=5, limit=10, period=1, time_left=0.5)  # half left
    per_hour = usage(count=900, limit=1000, period=3600, time_left=100.0)  # a tenth left
    assert most_restrictive([per_second, per_hour]) is per_hour
    assert most_restrictive([per_hour, per_second]) is per_hour


def test_equal_room_prefers_the_longer_wait() -> None:
    soon = usage(count=1, limit=2, time_left=1.0)
    later = usage(count=50, limit=100, time_left=30.0)
    assert most_restrictive([soon, later]) is later
    assert most_restrictive([later, soon]) is later


def test_zero_limit_counts_as_no_room() -> None:
    zero = usage(count=0, limit=0, time_left=10.0)
    roomy = usage(count=0, limit=10, time_left=10.0)
    assert most_restrictive([roomy, zero]) is zero


def test_a_single_usage_is_its_own_most_restrictive() -> None:
    only = usage()
    assert most_restrictive([only]) is only


# -- headers --------------------------------------------------------------------------------


def test_policy_header_format() -> None:
    assert policy_header(usage(limit=5, period=60)) == '"login";q=5;w=60'
    assert policy_header(usage(limit=1000, period=3600, name="api")) == '"api";q=1000;w=3600'


def test_ratelimit_header_format() -> None:
    assert ratelimit_header(usage(count=6, limit=5, time_left=42.0)) == '"login";r=0;t=42'
    assert ratelimit_header(usage(count=2, limit=5, time_left=41.2)) == '"login";r=3;t=42'


@pytest.mark.parametrize(("time_left", "t"), [(-3.0, 0), (0.0, 0), (0.2, 1), (1.0, 1), (59.9, 60)])
def test_ratelimit_header_rounds_time_up_and_never_below_zero(time_left: float, t: int) -> None:
    assert ratelimit_header(usage(count=5, limit=5, time_left=time_left)) == f'"login";r=0;t={t}'


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("plain", '"plain"'),
        ('say "hi"', r'"say \"hi\""'),
        ("back\\slash", r'"back\\slash"'),
        ('\\"', r'"\\\""'),
        ("café", '"caf?"'),
        ("日本", '"??"'),
        ("tab\there", '"tab?here"'),
        ("new\nline", '"new?line"'),
        ("del\x7f", '"del?"'),
        ("~ !#$%&'()*+,-./:;<=>?@[]^_`{|}", '"~ !#$%&\'()*+,-./:;<=>?@[]^_`{|}"'),
    ],
)
def test_policy_names_are_structured_field_strings(name: str, quoted: str) -> None:
    u = usage(name=name)
    assert policy_header(u) == f"{quoted};q=5;w=60"
    assert ratelimit_header(u) == f"{quoted};r=2;t=42"


def test_headers_are_latin1_encodable_for_any_name() -> None:
    value = policy_header(usage(name="\u2028\U0001f600é\x00"))
    assert value.isascii()
    assert value == '"????";q=5;w=60'


def test_set_headers() -> None:
    response = HttpResponse()
    set_headers(response, usage(count=6, should_limit=True, time_left=41.2))
    assert response.headers["RateLimit-Policy"] == '"login";q=5;w=60'
    assert response.headers["RateLimit"] == '"login";r=0;t=42'
    assert "Retry-After" not in response.headers


def test_set_headers_with_retry_after() -> None:
    response = HttpResponse(status=429)
    set_headers(response, usage(count=6, should_limit=True, time_left=0.2), retry_after=True)
    assert response.headers["Retry-After"] == "1"
    assert response.headers["RateLimit"] == '"login";r=0;t=1'
