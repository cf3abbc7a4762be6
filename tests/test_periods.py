"""The one period formatter: the rate strings, the command's columns and ``describe`` agree."""

from __future__ import annotations

import pytest

from django_dratelimit.rates import Rate, describe, format_period, parse_rate, split_period


@pytest.mark.parametrize(
    ("seconds", "parts", "text", "rate", "words"),
    [
        (1, (1, "s"), "1s", "5/s", "5 per 1 second"),
        (90, (90, "s"), "90s", "5/90s", "5 per 90 seconds"),
        (60, (1, "m"), "1m", "5/m", "5 per 1 minute"),
        (300, (5, "m"), "5m", "5/5m", "5 per 5 minutes"),
        (3600, (1, "h"), "1h", "5/h", "5 per 1 hour"),
        (5400, (90, "m"), "90m", "5/90m", "5 per 90 minutes"),
        (2 * 86400, (2, "d"), "2d", "5/2d", "5 per 2 days"),
    ],
)
def test_a_period_reads_the_same_everywhere(
    seconds: int, parts: tuple[int, str], text: str, rate: str, words: str
) -> None:
    assert split_period(seconds) == parts
    assert format_period(seconds) == text
    assert str(Rate(5, seconds)) == rate
    assert parse_rate(rate) == (Rate(5, seconds),)  # the string reads back
    assert describe(Rate(5, seconds)) == words
