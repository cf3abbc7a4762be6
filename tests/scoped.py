"""Reading counts where ``@ratelimit``, ``get_usage`` and RULES keep them (see scopes.py)."""

from __future__ import annotations

from collections.abc import Sequence

from django_dratelimit.limiter import Limiter
from django_dratelimit.local.algorithms import window_start
from django_dratelimit.local.scopes import method_scope, window_offset
from django_dratelimit.rates import parse_rate


def counted(
    limiter: Limiter,
    group: str,
    key: str,
    rate: str,
    method: str | Sequence[str] | None = None,
    *,
    stagger: bool = True,
) -> int:
    """The count of a decorator-style limit, read without counting."""
    rates = parse_rate(rate)
    assert rates is not None
    usage = limiter.check(
        group, key, rates, limiter.algorithm, 0, scope=method_scope(method), stagger=stagger
    )
    return usage.count


def seconds_left(group: str, key: str, period: int, now: float) -> float:
    """Until the end of ``key``'s staggered window of ``period`` seconds containing ``now``."""
    start = window_start(now, period, window_offset(group, key, period))
    return start + period - now


def into_window(group: str, key: str, period: int, now: float, seconds: float) -> float:
    """The instant ``seconds`` into the staggered window of ``key`` that contains ``now``."""
    return window_start(now, period, window_offset(group, key, period)) + seconds
