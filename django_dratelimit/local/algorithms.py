"""Rate-limit algorithms as pure functions of window counters and time.

Windows are aligned to the Unix epoch, so every process (on every host with a
synchronised clock) computes the same window start for the same instant.
"""

from __future__ import annotations

import math
from typing import NamedTuple

_floor = math.floor

FIXED_WINDOW = "fixed_window"
SLIDING_WINDOW = "sliding_window"
TOKEN_BUCKET = "token_bucket"
LEAKY_BUCKET = "leaky_bucket"
BUCKET_ALGORITHMS = (TOKEN_BUCKET, LEAKY_BUCKET)
ALGORITHMS = (FIXED_WINDOW, SLIDING_WINDOW, TOKEN_BUCKET, LEAKY_BUCKET)

EVENTUAL = "eventual"
STRICT = "strict"
CONSISTENCIES = (EVENTUAL, STRICT)


class Decision(NamedTuple):
    """What an algorithm concludes about one rate at one instant."""

    hits: int
    should_limit: bool
    time_left: float  # seconds until a request would be admitted (limited) or the window resets


def window_start(now: float, period: int, offset: int = 0) -> int:
    """Start of the window of ``period`` seconds containing ``now``, shifted by ``offset``.

    Windows are epoch-aligned; a staggered key's are shifted by its offset (see ``scopes``).
    """
    # In integers from the whole second: the same start as flooring (now - offset) / period
    # for whole-second periods and offsets, and ~50 ns less on every request.
    seconds = _floor(now) - offset
    return seconds - seconds % period + offset


# A window: its start, then its start and end as floats.
Edges = tuple[int, float, float]


def window_edges(now: float, period: int, offset: int = 0) -> Edges:
    """The window containing ``now``, for callers that keep it until ``now`` leaves it.

    Epoch seconds pass 2**30, so CPython computes ``window_start`` in multi-digit
    integers (~190 ns a call); the request path keeps a window instead and asks
    ``begins <= now < ends`` of it, two float comparisons.
    """
    start = window_start(now, period, offset)
    return start, float(start), float(start + period)


def fixed_window(current: int, limit: int, period: int, now: float) -> Decision:
    """Count the hits in the current window; limited once the count exceeds ``limit``."""
    start = window_start(now, period)
    return Decision(current, current > limit, start + period - now)


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


# -- token and leaky buckets ---------------------------------------------------------------
#
# A token bucket of capacity C refilling at r = C / period has, at time t, the level
#     L(t) = min over s <= t of [ C + r (t - s) - consumed(s, t] ]
# (the bucket was last full at the minimising s). Within an epoch starting at e,
# with consumed(e, t] = A and the running maximum M of r (s - e) - consumed(e, s)
# taken just before each consumption, this is
#     L(t) = r (t - e) - A + min(L(e), C - max(M, r (t - e) - A))
# Both A (per origin) and M are max-merged registers, so every process derives
# the same level from the same merged state. L(e) comes from the previous epoch
# (assumed full at its start): when the bucket was never full during that epoch,
# L(e) can be too high, by at most one burst of C per epoch (1/16 of the rate).

EPOCH_PERIODS = 16
# The register is kept in thousandths of a token, rounded up: the level is then
# never over-estimated, and under-estimated by at most 0.001 token.
REGISTER_SCALE = 1000


class BucketLevel(NamedTuple):
    level: float  # tokens available now (may be negative after cluster over-admission)
    register: float  # the epoch's running maximum M, including now (in tokens)


def epoch_length(period: int) -> int:
    return EPOCH_PERIODS * period


def epoch_level(
    consumed: int, register: int, start_level: float, elapsed: float, capacity: int, period: int
) -> BucketLevel:
    """The level ``elapsed`` seconds into an epoch; see the comment above."""
    refill = capacity * elapsed / period
    running_max = max(register / REGISTER_SCALE, refill - consumed)
    return BucketLevel(refill - consumed + min(start_level, capacity - running_max), running_max)


def carried_level(consumed: int, register: int, capacity: int, period: int) -> float:
    """The level at the start of an epoch, from the previous one (assumed full at its start)."""
    whole = epoch_length(period)
    return min(
        float(capacity), epoch_level(consumed, register, capacity, whole, capacity, period).level
    )


def _in_use(capacity: int, level: float, slack: float) -> int:
    """Whole tokens in use, ignoring the register's rounding.

    Above ``capacity`` when the cluster over-admitted (the level is a debt),
    as a fixed window's count goes above its limit.
    """
    return max(0, math.ceil(capacity - level - slack))


def bucket_decision(level: float, cost: int, capacity: int, period: int) -> tuple[bool, Decision]:
    """Whether ``cost`` tokens can be taken at ``level``, and the usage to report.

    ``cost = 0`` asks without taking: it reports whether one more token is there.
    ``hits`` is the tokens in use (capacity - level) after the decision.
    """
    if capacity <= 0:
        return False, Decision(0, True, float(2 * period))
    rate = capacity / period
    wanted = max(cost, 1)
    # The register is rounded up to 1/REGISTER_SCALE of a token: the level is low
    # by less than that. Allow for it, or the last token of a burst is refused.
    slack = 2 / REGISTER_SCALE  # one unit of rounding, one of float error
    if level + slack >= wanted:
        after = max(0.0, level - cost)
        return cost > 0, Decision(_in_use(capacity, after, slack), False, (capacity - after) / rate)
    in_use = _in_use(capacity, level, slack)
    if wanted > capacity:
        return False, Decision(in_use, True, float(2 * period))  # can never fit
    return False, Decision(in_use, True, (wanted - level) / rate)
