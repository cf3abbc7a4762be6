"""Parse rate specifications such as ``"5/m"``, ``"10/5m"``, ``"100/10"`` or ``"10/s;500/h"``."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from .exceptions import ConfigurationError
from .loading import import_callable
from .logutil import log_throttled

if TYPE_CHECKING:
    from django.http import HttpRequest

UNITS: dict[str, int] = {"s": 1, "m": 60, "h": 3600, "d": 86400}
LARGEST_UNIT_FIRST = sorted(UNITS.items(), key=lambda item: -item[1])
UNIT_NAMES: dict[str, str] = {"s": "second", "m": "minute", "h": "hour", "d": "day"}
# The words DRF's rates use ("100/day", "5/min"): an exact list, not DRF's
# first-letter reading, so that a typo such as "5/mon" is an error, not minutes.
UNIT_WORDS: dict[str, str] = {
    word: unit
    for unit, words in {
        "s": ("sec", "secs", "second", "seconds"),
        "m": ("min", "mins", "minute", "minutes"),
        "h": ("hour", "hours"),
        "d": ("day", "days"),
    }.items()
    for word in words
}
# A rate period longer than this is almost certainly a typo (and would keep
# buckets in memory for months).
MAX_PERIOD = 31 * 86400
MAX_LIMIT = 10**9

# COUNT/[MULTIPLE]UNIT, or COUNT/SECONDS without a unit (django-ratelimit's "100/10").
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-zA-Z]*)\s*$")


class InvalidRate(ConfigurationError):
    """A rate specification that cannot be understood."""


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` hits per ``period`` seconds."""

    limit: int
    period: int

    def __str__(self) -> str:
        multiple, unit = split_period(self.period)
        return f"{self.limit}/{multiple if multiple != 1 else ''}{unit}"


RateSpec: TypeAlias = "str | tuple[int, int] | Callable[[str, HttpRequest], Any] | None"


def _check_bounds(limit: int, period: int, text: object) -> Rate:
    if limit < 0 or limit > MAX_LIMIT:
        raise InvalidRate(f"rate {text!r}: the count must be between 0 and {MAX_LIMIT}")
    if period < 1:
        raise InvalidRate(f"rate {text!r}: the period must be at least one second")
    if period > MAX_PERIOD:
        raise InvalidRate(f"rate {text!r}: the period must be at most 31 days")
    return Rate(limit, period)


@functools.lru_cache(maxsize=1024)
def parse_rate_string(text: str) -> tuple[Rate, ...]:
    """Parse ``"5/m"``, ``"100/day"`` or ``"10/s;500/h"``; raise InvalidRate on a bad one."""
    parts = [part for part in text.split(";")]
    if not text.strip() or any(not part.strip() for part in parts):
        raise InvalidRate(f"rate {text!r} is empty; expected something like '5/m'")
    rates = []
    for part in parts:
        match = _RATE_RE.match(part)
        if match is None or not (match[2] or match[3]):
            raise InvalidRate(
                f"rate {part.strip()!r} is malformed; expected COUNT/[MULTIPLE]UNIT or "
                "COUNT/SECONDS, e.g. '5/m', '10/5m' or '100/10'"
            )
        count, multiple, unit = match.groups()
        # Cap the digits before int(): Python refuses to parse over 4,300 of them.
        count = count if len(count) <= 12 else "9" * 12
        multiple = multiple if len(multiple) <= 12 else "9" * 12
        unit = UNIT_WORDS.get(unit, unit) or "s"  # "100/10": seconds, as django-ratelimit
        if unit not in UNITS:
            raise InvalidRate(
                f"rate {part.strip()!r} has an unknown unit {unit!r}; use s, m, h or d, or "
                "sec, min, hour or day (lower case: 'M' is not read as minutes)"
            )
        factor = int(multiple) if multiple else 1
        if factor == 0:
            raise InvalidRate(f"rate {part.strip()!r} has a zero period")
        rates.append(_check_bounds(int(count), factor * UNITS[unit], part.strip()))
    periods = [rate.period for rate in rates]
    if len(set(periods)) != len(periods):
        # Limits share a group's bucket per period: two would count every hit twice.
        raise InvalidRate(f"rate {text!r} gives two limits for the same period; keep one")
    return tuple(rates)


def parse_rate(value: object) -> tuple[Rate, ...] | None:
    """Turn a static rate (string, ``(count, seconds)`` tuple, Rate or None) into Rates."""
    if value is None:
        return None
    if isinstance(value, Rate):
        return (value,)
    if isinstance(value, str):
        return parse_rate_string(value)
    if isinstance(value, tuple | list) and len(value) == 2:
        count, seconds = value
        if isinstance(count, bool) or isinstance(seconds, bool):
            raise InvalidRate(f"rate {value!r}: count and seconds must be integers")
        if not isinstance(count, int) or not isinstance(seconds, int):
            raise InvalidRate(f"rate {value!r}: count and seconds must be integers")
        return (_check_bounds(count, seconds, value),)
    raise InvalidRate(
        f"rate {value!r} is not a string like '5/m', a (count, seconds) tuple, a callable or None"
    )


def split_rate(value: object) -> tuple[int, int]:
    """``(count, seconds)`` of one static rate, as django-ratelimit's ``_split_rate`` gives."""
    rates = parse_rate(value)
    if rates is None or len(rates) != 1:
        raise InvalidRate(f"rate {value!r} is not one rate")
    return rates[0].limit, rates[0].period


def is_dynamic(value: object) -> bool:
    """True for a callable or a dotted path: rates that depend on the request."""
    if callable(value):
        return True
    return isinstance(value, str) and "/" not in value and "." in value


def load_rate_callable(value: object) -> Callable[[str, HttpRequest], Any]:
    """Resolve a callable or a dotted path to one (imported once, on first use)."""
    if callable(value):
        return value
    if isinstance(value, str):
        return _import_rate(value)
    raise InvalidRate(f"rate {value!r} is not callable")


@functools.lru_cache(maxsize=1024)
def _import_rate(path: str) -> Callable[[str, HttpRequest], Any]:
    # A failed import is not cached: the next request tries again.
    return import_callable(path, "rate", InvalidRate)


def validate_rate(value: object) -> None:
    """Raise InvalidRate if the static or dotted-path rate is unusable (for system checks)."""
    if is_dynamic(value):
        load_rate_callable(value)
    else:
        parse_rate(value)


def resolve_rate(value: object, group: str, request: HttpRequest | None) -> tuple[Rate, ...] | None:
    """The rates that apply to this request; a callable is called with (group, request).

    A rate callable that raises, or returns something that is not a rate, is
    logged and the request is not limited by it (as for a key function that
    raises): a bug in user code must not turn every request into a 500. A
    dotted path that does not import is a configuration error, raised as
    ``InvalidRate`` (ImproperlyConfigured): a limit must not vanish silently.
    """
    if not is_dynamic(value):
        return parse_rate(value)
    func = load_rate_callable(value)
    try:
        return parse_rate(func(group, request))  # type: ignore[arg-type]
    except Exception:
        log_throttled(
            f"rate:{group}",
            logging.ERROR,
            "dratelimit: the rate callable of group %r failed; the request is not limited by it",
            group,
            every=60.0,
            exc_info=True,
        )
        return None


def describe(rate: Rate) -> str:
    """Human text for a rate, e.g. ``5 per 1 minute``."""
    multiple, unit = split_period(rate.period)
    name = UNIT_NAMES[unit] + ("s" if multiple != 1 else "")
    return f"{rate.limit} per {multiple} {name}"


def split_period(seconds: int) -> tuple[int, str]:
    """The largest unit dividing ``seconds``: ``3600`` -> ``(1, "h")``, ``90`` -> ``(90, "s")``."""
    for unit, size in LARGEST_UNIT_FIRST:
        if seconds % size == 0:
            return seconds // size, unit
    return seconds, "s"  # pragma: no cover - every int divides by 1


def format_period(seconds: int) -> str:
    """A period as the command and the admin show it: ``60`` -> ``1m``, ``90`` -> ``90s``."""
    multiple, unit = split_period(seconds)
    return f"{multiple}{unit}"
