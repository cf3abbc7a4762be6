"""Window alignment, fixed and sliding windows, checked against an exact reference model."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import assume, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from django_dratelimit.local.algorithms import (
    ALGORITHMS,
    FIXED_WINDOW,
    SLIDING_WINDOW,
    Decision,
    fixed_window,
    sliding_window,
    window_start,
)
from django_dratelimit.rates import MAX_PERIOD

# Times are on a 1/1024 s grid near 1.7e9 s: exactly representable, and every product
# the algorithms form stays exact, so the float results can be compared with exact ones.
TICKS = 1024
BASE = 1_700_000_000

PERIODS = st.one_of(
    st.sampled_from([1, 2, 10, 60, 300, 3600, 86400, MAX_PERIOD]),
    st.integers(1, MAX_PERIOD),
)
COUNTS = st.integers(0, 5000)


@st.composite
def instants(draw: st.DrawFn) -> tuple[int, float]:
    """A period and an instant in one of its windows (elapsed from 0 to just before the end)."""
    period = draw(PERIODS)
    start = (BASE // period + draw(st.integers(0, 10))) * period
    ticks = draw(
        st.one_of(
            st.just(0),
            st.just(period * TICKS - 1),
            st.integers(0, period * TICKS - 1),
        )
    )
    return period, start + ticks / TICKS


# -- the reference model ------------------------------------------------------------


def reference_estimate(
    previous: int, current: int, period: int, now: Fraction, later: Fraction
) -> Fraction:
    """Exact sliding estimate at ``later`` if no hit arrives after ``now``."""
    first = math.floor(now / period)
    window = math.floor(later / period)
    elapsed = later - window * period
    if window == first:
        return previous * (period - elapsed) / period + current
    if window == first + 1:
        return current * (period - elapsed) / period
    return Fraction(0)


def reference_wait(previous: int, current: int, limit: int, period: int, now: Fraction) -> Fraction:
    """The least time after which the exact estimate is at most ``limit - 1``."""
    room = limit - 1
    assert room >= 0
    elapsed = now - math.floor(now / period) * period
    to_end = period - elapsed
    if reference_estimate(previous, current, period, now, now) <= room:
        return Fraction(0)
    if previous and current <= room:
        wait = to_end - Fraction((room - current) * period, previous)
        if wait <= to_end:
            return wait
    if current <= room:
        return to_end
    return to_end + period * (1 - Fraction(room, current))


# -- window_start -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "period", "start"),
    [
        (0.0, 60, 0),
        (59.999, 60, 0),
        (60.0, 60, 60),
        (119.5, 60, 60),
        (1_700_000_000.0, 60, 1_699_999_980),
        (1_700_000_000.0, 1, 1_700_000_000),
        (1_700_000_000.7, 1, 1_700_000_000),
        (1_700_000_000.0, 300, 1_699_999_800),
        (1_700_000_000.0, 3600, 1_699_999_200),
        (1_700_000_000.0, 86400, 1_699_920_000),  # midnight UTC
        (1_700_000_000.0, 7, 1_699_999_994),
    ],
)
def test_window_start(now: float, period: int, start: int) -> None:
    assert window_start(now, period) == start
    assert isinstance(window_start(now, period), int)


@given(now=st.floats(0, 4e9, allow_nan=False), period=PERIODS)
def test_window_start_is_aligned_and_contains_now(now: float, period: int) -> None:
    start = window_start(now, period)
    assert start % period == 0
    assert start <= now < start + period


@given(instant=instants())
def test_every_instant_of_a_window_has_the_same_start(instant: tuple[int, float]) -> None:
    period, now = instant
    start = window_start(now, period)
    assert window_start(float(start), period) == start
    assert window_start(start + period - 1 / TICKS, period) == start
    assert window_start(float(start + period), period) == start + period


def test_algorithm_names() -> None:
    assert ALGORITHMS == (
        "fixed_window",
        "sliding_window",
        "token_bucket",
        "leaky_bucket",
    )
    assert ALGORITHMS[:2] == (FIXED_WINDOW, SLIDING_WINDOW)


# -- fixed window -------------------------------------------------------------------

START = 1_699_999_980  # a minute boundary


def test_fixed_window_under_at_and_over_the_limit() -> None:
    assert fixed_window(4, 5, 60, START + 10.0) == Decision(4, False, 50.0)
    assert fixed_window(5, 5, 60, START + 10.0) == Decision(5, False, 50.0)
    assert fixed_window(6, 5, 60, START + 10.0) == Decision(6, True, 50.0)


def test_fixed_window_edges() -> None:
    assert fixed_window(1, 5, 60, float(START)) == Decision(1, False, 60.0)
    just_before_end = START + 60 - 1 / TICKS
    decision = fixed_window(9, 5, 60, just_before_end)
    assert decision.should_limit
    assert decision.time_left == 1 / TICKS
    # At the end a new window starts: the full period lies ahead again.
    assert fixed_window(0, 5, 60, float(START + 60)).time_left == 60.0


def test_fixed_window_zero_limit_limits_the_first_hit() -> None:
    assert fixed_window(0, 0, 60, START + 1.0).should_limit is False
    assert fixed_window(1, 0, 60, START + 1.0).should_limit is True


@given(instant=instants(), current=COUNTS, limit=COUNTS)
def test_fixed_window_matches_the_reference(
    instant: tuple[int, float], current: int, limit: int
) -> None:
    period, now = instant
    decision = fixed_window(current, limit, period, now)
    start = math.floor(Fraction(now) / period) * period
    assert decision.hits == current
    assert decision.should_limit == (current > limit)
    assert Fraction(decision.time_left) == start + period - Fraction(now)
    assert 0 < decision.time_left <= period


# -- sliding window: examples -------------------------------------------------------


def test_sliding_window_at_elapsed_zero_counts_all_of_the_previous_window() -> None:
    assert sliding_window(3, 1, 5, 60, float(START)) == Decision(4, False, 60.0)
    # 10 from the previous window, all of it still inside the last 60 s.
    decision = sliding_window(10, 0, 5, 60, float(START))
    assert decision.hits == 10
    assert decision.should_limit
    # 10 * (60 - t) / 60 <= 4  <=>  t >= 36
    assert decision.time_left == 36.0


def test_sliding_window_half_way() -> None:
    assert sliding_window(6, 2, 5, 60, START + 30.0) == Decision(5, False, 30.0)
    decision = sliding_window(6, 3, 5, 60, START + 30.0)
    assert decision == Decision(6, True, decision.time_left)
    # 6 * (30 - t) / 60 + 3 <= 4  <=>  t >= 20
    assert decision.time_left == 20.0


def test_sliding_window_just_before_the_end() -> None:
    now = START + 60 - 1 / TICKS
    decision = sliding_window(1024 * 60, 5, 5, 60, now)
    # The previous window still weighs 1/61440 of its 61440 hits: one hit.
    assert decision.hits == 6
    assert decision.should_limit
    # Room for one more only in the next window: 5 * (60 - t') / 60 <= 4 at t' = 12.
    assert decision.time_left == pytest.approx(1 / TICKS + 12.0, abs=1e-9)
    assert sliding_window(100, 4, 5, 60, now) == Decision(4, False, 1 / TICKS)


def test_sliding_window_full_current_window_waits_into_the_next() -> None:
    decision = sliding_window(0, 10, 5, 60, START + 45.0)
    assert decision.should_limit
    # 15 s to the end, then 10 * (60 - t') / 60 <= 4 at t' = 36.
    assert decision.time_left == 15.0 + 36.0


def test_sliding_window_current_at_room_waits_to_the_window_end() -> None:
    decision = sliding_window(10, 4, 5, 60, START + 6.0)
    assert decision.should_limit
    assert decision.time_left == 54.0


def test_sliding_window_zero_limit_never_admits() -> None:
    decision = sliding_window(0, 1, 0, 60, START + 20.0)
    assert decision.should_limit
    assert decision.time_left == 100.0  # the longest wait: 2 periods minus the elapsed time
    assert sliding_window(0, 0, 0, 60, START + 20.0) == Decision(0, False, 40.0)


def test_sliding_window_within_limit_reports_the_window_end() -> None:
    assert sliding_window(0, 0, 5, 60, START + 20.0) == Decision(0, False, 40.0)
    assert sliding_window(4, 3, 5, 60, START + 45.0) == Decision(4, False, 15.0)


# -- sliding window: properties -----------------------------------------------------


@hsettings(max_examples=500, deadline=None)
@given(instant=instants(), previous=COUNTS, current=COUNTS, limit=COUNTS)
@example(instant=(60, float(START)), previous=10, current=0, limit=5)
@example(instant=(60, START + 60 - 1 / TICKS), previous=61440, current=5, limit=5)
def test_sliding_window_matches_the_reference(
    instant: tuple[int, float], previous: int, current: int, limit: int
) -> None:
    period, now = instant
    exact_now = Fraction(now)
    estimate = reference_estimate(previous, current, period, exact_now, exact_now)
    decision = sliding_window(previous, current, limit, period, now)
    assert decision.hits == math.floor(estimate)
    assert decision.should_limit == (estimate > limit)
    if not decision.should_limit:
        start = math.floor(exact_now / period) * period
        assert Fraction(decision.time_left) == start + period - exact_now


TOLERANCE = Fraction(1, 10**9)  # estimate units; float rounding is far below this


@hsettings(max_examples=1000, deadline=None)
@given(
    instant=instants(),
    previous=COUNTS,
    current=COUNTS,
    limit=st.integers(1, 5000),
)
@example(instant=(60, float(START)), previous=10, current=0, limit=5)
@example(instant=(60, START + 6.0), previous=10, current=4, limit=5)
@example(instant=(60, START + 45.0), previous=0, current=10, limit=5)
@example(instant=(60, START + 60 - 1 / TICKS), previous=61440, current=5, limit=5)
@example(instant=(1, float(BASE)), previous=5000, current=5000, limit=1)
@example(
    instant=(MAX_PERIOD, float(BASE // MAX_PERIOD * MAX_PERIOD)), previous=1, current=0, limit=1
)
def test_sliding_window_time_left_is_exactly_when_a_hit_fits_again(
    instant: tuple[int, float], previous: int, current: int, limit: int
) -> None:
    period, now = instant
    decision = sliding_window(previous, current, limit, period, now)
    assume(decision.should_limit)
    room = limit - 1
    exact_now = Fraction(now)
    wait = Fraction(decision.time_left)
    assert wait > 0

    # After time_left, with no new hits, one more hit fits.
    after = reference_estimate(previous, current, period, exact_now, exact_now + wait)
    assert after <= room + TOLERANCE
    assert not sliding_window_at(previous, current, limit, period, now, wait).should_limit

    # Slightly less time does not leave that room.
    shorter = wait - min(wait, Fraction(period, 10**6))
    assert reference_estimate(previous, current, period, exact_now, exact_now + shorter) > room

    # And time_left is the exact answer, up to float rounding.
    expected = reference_wait(previous, current, limit, period, exact_now)
    assert abs(wait - expected) <= Fraction(period, 10**12)


def sliding_window_at(
    previous: int, current: int, limit: int, period: int, now: float, wait: Fraction
) -> Decision:
    """What the algorithm says for one more hit ``wait`` seconds after ``now`` (no hits between)."""
    # Round the later instant up onto the tick grid, so that the float is exact.
    later = math.ceil((Fraction(now) + wait) * TICKS) / TICKS
    moved = window_start(later, period) - window_start(now, period)
    if moved == 0:
        return sliding_window(previous, current + 1, limit, period, later)
    if moved == period:
        return sliding_window(current, 1, limit, period, later)
    return sliding_window(0, 1, limit, period, later)


@given(instant=instants(), previous=COUNTS, current=COUNTS)
def test_sliding_window_zero_limit_wait_ends_after_both_windows(
    instant: tuple[int, float], previous: int, current: int
) -> None:
    period, now = instant
    assume(previous or current)
    decision = sliding_window(previous, current, 0, period, now)
    if decision.should_limit:
        start = window_start(now, period)
        assert Fraction(now) + Fraction(decision.time_left) == start + 2 * period


@given(instant=instants(), previous=COUNTS, current=COUNTS, limit=COUNTS)
def test_sliding_window_is_never_looser_than_the_current_window_alone(
    instant: tuple[int, float], previous: int, current: int, limit: int
) -> None:
    period, now = instant
    sliding = sliding_window(previous, current, limit, period, now)
    fixed = fixed_window(current, limit, period, now)
    assert sliding.hits >= fixed.hits
    assert sliding.should_limit or not fixed.should_limit
