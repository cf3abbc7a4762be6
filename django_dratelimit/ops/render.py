"""How counts and durations read, the same in ``manage.py ratelimit`` and the admin.

Periods read as ``rates.format_period`` has them, like the rates themselves.
"""

from __future__ import annotations

import datetime

from ..local.algorithms import window_start
from ..rates import Rate, describe, format_period


def plural(count: int, word: str) -> str:
    """``1 node``, ``2 nodes``, ``3 replies``, ``4 processes``."""
    if count == 1:
        return f"1 {word}"
    if word.endswith("y"):
        return f"{count} {word[:-1]}ies"
    return f"{count} {word}{'es' if word.endswith('s') else 's'}"


def duration(seconds: float) -> str:
    """Compact and coarse: ``0.4s``, ``42s``, ``4m12s``, ``2h05m``, ``3d04h``."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


def clock(start: int, window: int) -> str:
    """When a window started: a window of a day or more starts at midnight, so its date."""
    return utc(start).strftime("%m-%d" if window >= 86400 else "%H:%M:%S")


def stamp(timestamp: float) -> str:
    return utc(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def short_layer(backend: str) -> str:
    """``channels_redis.pubsub.RedisPubSubChannelLayer`` -> ``RedisPubSub``."""
    return backend.rsplit(".", 1)[-1].removesuffix("ChannelLayer") or backend


def explain(rate: Rate, now: float) -> list[str]:
    """What a rate means, for ``check``: limit, period, and the window we are in."""
    start = window_start(now, rate.period)
    end = start + rate.period
    if rate.limit == 0:
        limit = "0: every request is limited"
    else:
        limit = f"{rate.limit} {'request' if rate.limit == 1 else 'requests'} per window"
    return [
        f"{rate}: {describe(rate)}",
        f"  limit    {limit}",
        f"  period   {plural(rate.period, 'second')}",
        f"  windows  fixed, each starts at a multiple of {format_period(rate.period)} "
        "since the Unix epoch (UTC)",
        f"  now      {stamp(start)} to {stamp(end)} UTC, {duration(end - now)} left",
    ]
