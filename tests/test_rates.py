"""Rate specifications: parsing, errors, dynamic rates and their text forms."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.test import RequestFactory

from django_dratelimit.rates import (
    MAX_LIMIT,
    MAX_PERIOD,
    InvalidRate,
    Rate,
    describe,
    is_dynamic,
    load_rate_callable,
    parse_rate,
    parse_rate_string,
    resolve_rate,
    split_rate,
    validate_rate,
)

# -- helpers referenced by dotted path ("tests.test_rates.<name>") -------------------------

calls: list[tuple[str, HttpRequest | None]] = []


def my_rate(group: str, request: HttpRequest | None) -> str | None:
    """Five a minute, none for requests that carry ?vip=1."""
    calls.append((group, request))
    if request is not None and request.GET.get("vip"):
        return None
    return "5/m"


def tuple_rate(group: str, request: HttpRequest | None) -> tuple[int, int]:
    return (7, 30)


def multi_rate(group: str, request: HttpRequest | None) -> str:
    return "10/s;500/h"


def bad_rate(group: str, request: HttpRequest | None) -> str:
    return "5/M"


NOT_CALLABLE = "5/m"


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    calls.clear()


# -- parse_rate_string --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "limit", "period"),
    [
        ("5/s", 5, 1),
        ("100/m", 100, 60),
        ("10/5m", 10, 300),
        ("1000/h", 1000, 3600),
        ("50000/d", 50000, 86400),
        ("0/m", 0, 60),
        ("3/2h", 3, 7200),
        ("1/31d", 1, MAX_PERIOD),
        ("1/90s", 1, 90),
        (" 5 / m ", 5, 60),
        ("5/ 10 s", 5, 10),
        (f"{MAX_LIMIT}/s", MAX_LIMIT, 1),
        ("05/m", 5, 60),
    ],
)
def test_parse_single_rate(text: str, limit: int, period: int) -> None:
    assert parse_rate_string(text) == (Rate(limit, period),)
    assert parse_rate(text) == (Rate(limit, period),)


@pytest.mark.parametrize(
    ("text", "limit", "period"),
    [("100/10", 100, 10), ("100/300", 100, 300), ("1/1", 1, 1), ("5 / 60", 5, 60)],
)
def test_a_rate_without_a_unit_counts_seconds(text: str, limit: int, period: int) -> None:
    # django-ratelimit reads "100/10" as 100 per 10 seconds.
    assert parse_rate_string(text) == (Rate(limit, period),)
    assert parse_rate_string(f"{text};1000/d")[0] == Rate(limit, period)


def test_split_rate_gives_count_and_seconds_of_one_rate() -> None:
    assert split_rate("400/10m") == (400, 600)
    assert split_rate("100/10") == (100, 10)
    assert split_rate((100, 10)) == (100, 10)
    with pytest.raises(InvalidRate, match="not one rate"):
        split_rate("10/s;500/h")
    with pytest.raises(InvalidRate, match="not one rate"):
        split_rate(None)


def test_parse_several_rates_keeps_their_order() -> None:
    assert parse_rate_string("10/s;500/h") == (Rate(10, 1), Rate(500, 3600))
    assert parse_rate_string("500/h ; 10/s") == (Rate(500, 3600), Rate(10, 1))
    assert parse_rate("1/s;2/m;3/h;4/d") == (
        Rate(1, 1),
        Rate(2, 60),
        Rate(3, 3600),
        Rate(4, 86400),
    )


@pytest.mark.parametrize(
    "text", ["5/M", "5/H", "5/S", "5/D", "5/x", "5/5M", "5/Min", "5/mon", "5/minutely", "5/dy"]
)
def test_unknown_unit_is_an_error(text: str) -> None:
    with pytest.raises(InvalidRate, match="unknown unit"):
        parse_rate_string(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/day", Rate(100, 86400)),
        ("100/days", Rate(100, 86400)),
        ("5/min", Rate(5, 60)),
        ("5/minute", Rate(5, 60)),
        ("5/minutes", Rate(5, 60)),
        ("10/sec", Rate(10, 1)),
        ("10/second", Rate(10, 1)),
        ("1000/hour", Rate(1000, 3600)),
        ("10/5min", Rate(10, 300)),
        ("10/2 hours", Rate(10, 7200)),
    ],
)
def test_drf_unit_words_are_read(text: str, expected: Rate) -> None:
    # DEFAULT_THROTTLE_RATES are written this way; the same strings work everywhere.
    assert parse_rate_string(text) == (expected,)


def test_capital_m_is_not_read_as_seconds_or_minutes() -> None:
    with pytest.raises(InvalidRate) as info:
        parse_rate("5/M")
    assert "'M'" in str(info.value)


@pytest.mark.parametrize(
    "text",
    ["5", "5/", "/m", "m", "5m", "five/m", "5/m/m", "-5/m", "5.5/m", "5/1.5m", "5/-1m", "5//m"],
)
def test_malformed_rate_is_an_error(text: str) -> None:
    with pytest.raises(InvalidRate, match="malformed"):
        parse_rate_string(text)


@pytest.mark.parametrize("text", ["", "   ", ";", "5/m;", ";5/m", "5/m;;10/h", "5/m; "])
def test_empty_rate_is_an_error(text: str) -> None:
    with pytest.raises(InvalidRate, match="empty"):
        parse_rate_string(text)


@pytest.mark.parametrize("text", ["5/0m", "5/0s", "5/00h"])
def test_zero_period_is_an_error(text: str) -> None:
    with pytest.raises(InvalidRate, match="zero period"):
        parse_rate_string(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{MAX_LIMIT + 1}/s", "count must be between"),
        ("1/32d", "at most 31 days"),
        (f"1/{MAX_PERIOD + 1}s", "at most 31 days"),
        ("1/745h", "at most 31 days"),
        ("99999999999999999999/s", "count must be between"),
        ("1/99999999999999999999d", "at most 31 days"),
    ],
)
def test_out_of_bounds_rate_is_an_error(text: str, message: str) -> None:
    with pytest.raises(InvalidRate, match=message):
        parse_rate_string(text)


def test_absurdly_long_number_is_an_invalid_rate_not_a_bare_value_error() -> None:
    # Python refuses int() of more than 4300 digits with a plain ValueError; the system
    # check catches InvalidRate only, so this must be reported as InvalidRate.
    with pytest.raises(InvalidRate):
        parse_rate_string("1" * 5000 + "/s")


def test_error_names_the_bad_part() -> None:
    with pytest.raises(InvalidRate) as info:
        parse_rate_string("10/s;5/q")
    assert "'5/q'" in str(info.value)


# -- parse_rate: the other static forms ------------------------------------------------


def test_none_means_no_limit() -> None:
    assert parse_rate(None) is None


def test_rate_object_is_taken_as_is() -> None:
    rate = Rate(3, 60)
    assert parse_rate(rate) == (rate,)
    assert parse_rate(rate)[0] is rate  # type: ignore[index]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ((5, 60), Rate(5, 60)),
        ([5, 60], Rate(5, 60)),
        ((0, 1), Rate(0, 1)),
        ((MAX_LIMIT, MAX_PERIOD), Rate(MAX_LIMIT, MAX_PERIOD)),
    ],
)
def test_count_seconds_pair(value: Any, expected: Rate) -> None:
    assert parse_rate(value) == (expected,)


@pytest.mark.parametrize(
    "value",
    [
        (True, 60),
        (5, True),
        (False, 60),
        (5.0, 60),
        (5, 60.0),
        ("5", 60),
        (5, "60"),
        (None, 60),
    ],
)
def test_pair_items_must_be_real_integers(value: Any) -> None:
    with pytest.raises(InvalidRate, match="integers"):
        parse_rate(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ((-1, 60), "count must be between"),
        ((MAX_LIMIT + 1, 60), "count must be between"),
        ((5, 0), "at least one second"),
        ((5, -60), "at least one second"),
        ((5, MAX_PERIOD + 1), "at most 31 days"),
    ],
)
def test_pair_bounds(value: Any, message: str) -> None:
    with pytest.raises(InvalidRate, match=message):
        parse_rate(value)


@pytest.mark.parametrize("value", [(5,), (5, 60, 1), [], 5, 5.0, {"limit": 5}, b"5/m", object()])
def test_other_values_are_errors(value: Any) -> None:
    with pytest.raises(InvalidRate, match="is not a string"):
        parse_rate(value)


def test_invalid_rate_is_a_value_error() -> None:
    assert issubclass(InvalidRate, ValueError)


# -- dynamic rates ------------------------------------------------------------------


def test_is_dynamic() -> None:
    assert is_dynamic(my_rate)
    assert is_dynamic("tests.test_rates.my_rate")
    assert not is_dynamic("5/m")
    assert not is_dynamic("10/s;500/h")
    assert not is_dynamic((5, 60))
    assert not is_dynamic(None)
    assert not is_dynamic("nodots")


def test_resolve_static_rates() -> None:
    assert resolve_rate("5/m", "g", None) == (Rate(5, 60),)
    assert resolve_rate((5, 60), "g", None) == (Rate(5, 60),)
    assert resolve_rate(None, "g", None) is None


def test_resolve_rate_calls_a_callable_with_group_and_request(rf: RequestFactory) -> None:
    request = rf.get("/")
    assert resolve_rate(my_rate, "login", request) == (Rate(5, 60),)
    assert calls == [("login", request)]


def test_resolve_rate_callable_may_return_none(rf: RequestFactory) -> None:
    assert resolve_rate(my_rate, "login", rf.get("/", {"vip": "1"})) is None


def test_resolve_rate_with_a_lambda() -> None:
    assert resolve_rate(lambda group, request: (2, 10), "g", None) == (Rate(2, 10),)


def test_resolve_rate_with_a_dotted_path(rf: RequestFactory) -> None:
    request = rf.get("/")
    assert resolve_rate("tests.test_rates.my_rate", "api", request) == (Rate(5, 60),)
    assert calls == [("api", request)]
    assert resolve_rate("tests.test_rates.my_rate", "api", rf.get("/?vip=1")) is None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("tests.test_rates.tuple_rate", (Rate(7, 30),)),
        ("tests.test_rates.multi_rate", (Rate(10, 1), Rate(500, 3600))),
    ],
)
def test_dotted_path_results_are_parsed(path: str, expected: tuple[Rate, ...]) -> None:
    assert resolve_rate(path, "g", None) == expected


def test_a_callable_returning_a_bad_rate_is_logged_and_does_not_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("ERROR", logger="django_dratelimit"):
        assert resolve_rate("tests.test_rates.bad_rate", "bad-rate-group", None) is None
    assert "rate callable of group 'bad-rate-group' failed" in caplog.text
    assert "unknown unit" in caplog.text


def test_dotted_path_that_does_not_import_is_a_configuration_error() -> None:
    # Not "no limit": a path that does not import must never switch a limit off.
    with pytest.raises(ImproperlyConfigured, match="does not import"):
        resolve_rate("tests.test_rates.no_such_function", "g", None)
    with pytest.raises(InvalidRate, match="does not import"):
        validate_rate("no_such_module.rate")


def test_rate_errors_are_improperly_configured_and_value_errors() -> None:
    assert issubclass(InvalidRate, ImproperlyConfigured)
    assert issubclass(InvalidRate, ValueError)


def test_dotted_path_to_a_non_callable() -> None:
    with pytest.raises(InvalidRate, match="does not name a callable"):
        load_rate_callable("tests.test_rates.NOT_CALLABLE")


def test_load_rate_callable() -> None:
    assert load_rate_callable(my_rate) is my_rate
    assert load_rate_callable("tests.test_rates.my_rate") is my_rate
    with pytest.raises(InvalidRate, match="not callable"):
        load_rate_callable(42)


def test_validate_rate() -> None:
    validate_rate("5/m")
    validate_rate(None)
    validate_rate(my_rate)
    validate_rate("tests.test_rates.my_rate")
    assert calls == []  # validating does not call the rate function
    with pytest.raises(InvalidRate):
        validate_rate("5/M")
    with pytest.raises(InvalidRate):
        validate_rate((5, 0))


# -- text forms --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "text"),
    [
        (Rate(5, 1), "5/s"),
        (Rate(5, 60), "5/m"),
        (Rate(10, 300), "10/5m"),
        (Rate(1000, 3600), "1000/h"),
        (Rate(50000, 86400), "50000/d"),
        (Rate(3, 7200), "3/2h"),
        (Rate(1, 172800), "1/2d"),
        (Rate(1, 90), "1/90s"),
        (Rate(1, 5400), "1/90m"),
        (Rate(0, 60), "0/m"),
    ],
)
def test_str_of_rate(rate: Rate, text: str) -> None:
    assert str(rate) == text
    assert parse_rate_string(str(rate)) == (rate,)


@pytest.mark.parametrize(
    ("rate", "text"),
    [
        (Rate(5, 1), "5 per 1 second"),
        (Rate(5, 2), "5 per 2 seconds"),
        (Rate(5, 60), "5 per 1 minute"),
        (Rate(10, 300), "10 per 5 minutes"),
        (Rate(1000, 3600), "1000 per 1 hour"),
        (Rate(3, 7200), "3 per 2 hours"),
        (Rate(50000, 86400), "50000 per 1 day"),
        (Rate(1, 31 * 86400), "1 per 31 days"),
        (Rate(1, 90), "1 per 90 seconds"),
    ],
)
def test_describe(rate: Rate, text: str) -> None:
    assert describe(rate) == text


def test_rate_is_frozen_and_hashable() -> None:
    rate = Rate(5, 60)
    with pytest.raises(AttributeError):
        rate.limit = 6  # type: ignore[misc]
    assert {rate, Rate(5, 60)} == {Rate(5, 60)}
