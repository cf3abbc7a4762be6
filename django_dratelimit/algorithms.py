"""Rate-limit algorithms as pure functions of window counters and time.

Windows are aligned to the Unix epoch, so every process (on every host with a
synchronised clock) computes the same window start for the same instant.
"""

from __future__ import annotations

import math
from typing import NamedTuple

FIXED_WINDOW = "fixed_window"
SLIDING_WINDOW = "sliding_window"
ALGORITHMS = (FIXED_WINDOW, SLIDING_WINDOW)


class Decision(NamedTuple):
    """What an algorithm concludes about one rate at one instant."""

    hits: int
    should_limit: bool
    time_left: float  # seconds until a request would be admitted (limited) or the window resets


def window_start(now: float, period: int) -> int:
    """Start of the epoch-aligned window of ``period`` seconds that contains ``now``."""
    return int(now // period) * period


def fixed_window(current: int, limit: int, period: int, now: float) -> Decision:
    """Count the hits in the current window; limited once the count exceeds ``limit``."""
    start = window_start(now, period)
    return Decision(current, current > limit, start + period - now)


def sliding_weight(now: float, period: int) -> float:
    """The share of the previous window that still lies inside the sliding period."""
    elapsed = now - window_start(now, period)
    return (period - elapsed) / period


def sliding_window(previous: int, current: int, limit: int, period: int, now: float) -> Decision:
    """Weight the previous window by its overlap with the last ``period`` seconds.

    This is the approximation used by Cloudflare and Hammer: it assumes hits in
    the previous window were spread evenly over it.
    """
    start = window_start(now, period)
    elapsed = now - start
    estimate = previous * (period - elapsed) / period + current
    limited = estimate > limit
    to_window_end = period - elapsed
    if not limited:
        return Decision(math.floor(estimate), False, to_window_end)
    return Decision(
        math.floor(estimate), True, _sliding_wait(previous, current, limit, period, elapsed)
    )


def _sliding_wait(previous: int, current: int, limit: int, period: int, elapsed: float) -> float:
    """Seconds until the estimate leaves room for one more hit, with no new hits."""
    room = limit - 1  # the estimate must drop to this so that one more hit fits
    if room < 0:
        return 2 * period - elapsed  # a zero limit never admits; report the longest wait
    to_window_end = period - elapsed
    if current <= room and previous > 0:
        # Still in this window: previous * (period - elapsed - t) / period + current <= room
        wait = to_window_end - (room - current) * period / previous
        if wait < to_window_end:
            return max(0.0, wait)
    # In the next window the current count becomes the previous one.
    if current == 0:
        return to_window_end
    into_next = period * (current - room) / current
    return to_window_end + max(0.0, into_next)
