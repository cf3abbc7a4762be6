"""Per-process budgets: near-exact limits in eventual mode (flow-proportional share).

Deciding on the cluster total alone lets every other process admit what it
sees during one sync round before anyone hears of it. Near the limit a process
therefore admits only its *budget*: its share of what remains of the limit,
in proportion to the traffic each process has been seeing on that key. Every
process computes the shares from the same picture (the per-origin counts, one
round late), so the budgets add up to at most what remains.

- **When.** A bucket is in budget mode while what remains (``limit - total``)
  is at most ``BUDGET_HEADROOM`` x what the cluster admits in one round at its
  observed rate, plus one per process. A fresh bucket starts in budget mode
  with an equal share (``limit // processes``, at least 1): nobody's rate is
  known yet.
- **Weights.** An origin's weight is its count divided by the time its window
  has run, while it is active (its count grew within the last
  ``IDLE_ROUNDS`` rounds, and at least a second); an idle origin's share flows
  back to the others. Every live process also gets a floor weight
  (``FLOOR_SHARE`` of the mean), so one that has seen no traffic yet can admit.
- **Refusal.** A hit over the budget is refused and *not counted* (it asks
  for a share, it does not spend one); the bucket goes out with the next
  round, and the next picture brings a new budget.
- **Partition.** With no picture (the broker is down) a budget stays as it
  was: a cut-off process admits its last share, not the whole limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

BUDGET_HEADROOM = 2.0
FLOOR_SHARE = 0.1
IDLE_ROUNDS = 4
MIN_IDLE = 1.0  # seconds


def allocate(remaining: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``remaining`` hits by weight; the parts add up to ``remaining`` exactly.

    Largest remainder: everyone gets the floor of their exact share, and what
    is left goes one by one to the largest fractions (ties by origin id, so
    every process that computes it gets the same answer).
    """
    if remaining <= 0 or not weights:
        return dict.fromkeys(weights, 0)
    total = sum(weights.values())
    if total <= 0:
        weights = dict.fromkeys(weights, 1.0)
        total = float(len(weights))
    exact = {o: remaining * w / total for o, w in weights.items()}
    parts = {o: math.floor(x) for o, x in exact.items()}
    left = remaining - sum(parts.values())
    by_fraction = sorted(exact, key=lambda o: (-(exact[o] - parts[o]), o))
    for origin in by_fraction[:left]:
        parts[origin] += 1
    return parts


def initial_budget(limit: int, processes: int) -> int | None:
    """The budget of a fresh bucket: an equal share (None when alone: no budgets needed)."""
    if processes <= 1:
        return None
    return max(1, limit // processes)


def weights(
    counts: Mapping[str, int],
    last_grew: Mapping[str, float],
    live: Iterable[str],
    elapsed: float,
    now: float,
    idle_after: float,
) -> dict[str, float]:
    """Each live process's weight: its rate while active, plus the floor for everyone."""
    elapsed = max(elapsed, 1e-3)
    rates: dict[str, float] = {}
    for origin in live:
        grew = last_grew.get(origin)
        active = grew is None or now - grew <= idle_after
        rates[origin] = counts.get(origin, 0) / elapsed if active else 0.0
    if not rates:
        return rates
    floor = FLOOR_SHARE * sum(rates.values()) / len(rates)
    return {o: r + floor for o, r in rates.items()}


def in_budget_mode(
    remaining: int, rates_total: float, round_time: float, processes: int, headroom: float
) -> bool:
    """Whether what remains is small against what one round may admit cluster-wide."""
    return remaining <= headroom * rates_total * round_time + processes


def budget_shares(
    origin: str,
    limit: int,
    reserved: int,
    counts: Mapping[str, int],
    last_grew: Mapping[str, float],
    live: Iterable[str],
    elapsed: float,
    now: float,
    round_time: float,
    headroom: float = BUDGET_HEADROOM,
) -> dict[str, int] | None:
    """How to split what remains (``limit - reserved``) among the live processes.

    ``reserved`` is every count plus the promises not used up yet. None means
    the bucket is far enough from its limit to decide on totals, as without budgets.
    """
    members = sorted({*live, origin})
    if len(members) <= 1:
        return None
    remaining = limit - reserved
    if remaining <= 0:
        return dict.fromkeys(members, 0)
    # Is budget mode needed? Every origin with a count counts as active here.
    rate = sum(counts.values()) / max(elapsed, 1e-3)
    if not in_budget_mode(remaining, rate, round_time, len(members), headroom):
        return None
    idle_after = max(MIN_IDLE, IDLE_ROUNDS * round_time)
    return allocate(remaining, weights(counts, last_grew, members, elapsed, now, idle_after))


class Plan:
    """A bucket near its limit: how far each process's own count may go.

    ``levels`` are the promises of the last allocation, (level, when) per
    process, this one included: a process may count up to its level. A
    promise not yet used up still reserves its hits for ``promise_ttl`` after it
    was made, so a new picture cannot hand them out twice; then it lapses and
    what was left of it flows back.
    """

    __slots__ = ("allowed", "grew_at", "levels")

    def __init__(self, allowed: int, levels: dict[str, tuple[int, float]]) -> None:
        self.allowed = allowed  # this process's own level
        self.levels = levels
        self.grew_at: dict[str, float] = {}  # when each origin's count last grew


def reserve(
    prior: Mapping[str, tuple[int, float]],
    counts: Mapping[str, int],
    members: Iterable[str],
    now: float,
    ttl: float,
) -> dict[str, tuple[int, float]]:
    """Each process's level before a new allocation: its count, or its promise if not used up.

    A promise younger than ``ttl`` may still be in use: it stays reserved.
    """
    levels: dict[str, tuple[int, float]] = {}
    for o in {*counts, *members, *prior}:
        level, made = counts.get(o, 0), now
        promised = prior.get(o)
        if promised is not None and promised[0] > level and now - promised[1] <= ttl:
            level, made = promised  # not used up yet: still reserved
        levels[o] = (level, made)
    return levels
