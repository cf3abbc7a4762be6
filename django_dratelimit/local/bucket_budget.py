"""Budgets for the token and leaky buckets: each process's share is a small bucket of its own.

A token bucket stores, per origin, the tokens it took in the epoch, and a
max-merged register; from them every process derives the same level, one
round late. The budget rule is the windows' rule (``budgets``), in tokens:

- **What remains** is the level the cluster knows, less the promises not used
  up yet: ``room - reserved``, where ``room = taken + level`` is how far the
  cluster's taken count may go right now. Refill raises ``room`` with time.
- **When.** From the first take until a picture finds the bucket full
  again. A bucket exists to let a burst take its whole level within one
  round, so the windows' test (what remains against what a round takes at the
  observed rate) cannot tell when a bucket is safe: measured over the epoch the
  rate is too old, and measured per round it only counts what budgets admitted
  (refusals take nothing), so a bucket held at its budgets would look idle,
  leave budget mode, and hand out equal shares again. The first take starts
  with an equal share of the level: until the next picture nobody knows the
  rate, and the shares add up to the level.
- **A share is a bucket.** Process ``p`` gets ``s_p`` tokens of what remains,
  by weight (its rate over the last couple of rounds, plus the windows'
  floor), and the fraction ``f_p = w_p / sum(w)`` of the refill: its budget
  is a token bucket of capacity ``max(s_p, f_p x C)`` refilling at
  ``f_p x C / period``, holding ``s_p`` at the picture. From one picture the
  budgets add up to what remains, their refills to the bucket's and their
  capacities to ``C`` (plus rounding): the cluster takes no more than one
  bucket would, plus ``n``, and what pictures a round apart disagree on.
- **Partition.** With no picture a budget stays as it was and keeps
  refilling at its fraction: a cut-off process admits its share, then its
  fraction of the refill, not the whole bucket.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from .algorithms import REGISTER_SCALE, carried_level, epoch_level
from .budgets import FLOOR_SHARE, IDLE_ROUNDS, MIN_IDLE, Plan, allocate, reserve

SLACK = 2 / REGISTER_SCALE  # the register's rounding, as in algorithms.bucket_decision


class BucketPlan(Plan):
    """A token or leaky bucket in budget mode: the promises, and this process's own bucket."""

    __slots__ = (
        "at",
        "cap",
        "capacity",
        "fraction",
        "period",
        "rates",
        "seen",
        "seen_at",
        "tokens",
    )

    def __init__(
        self,
        allowed: int,
        levels: dict[str, tuple[int, float]],
        capacity: int,
        period: int,
        fraction: float,
        tokens: float,
        now: float,
    ) -> None:
        super().__init__(allowed, levels)
        self.capacity, self.period, self.fraction = capacity, period, fraction
        self.cap = max(tokens, fraction * capacity)  # this process's bucket size
        self.tokens, self.at = tokens, now  # what it holds, and when that was true
        # Each origin's count at this picture, and its recent rate (tokens a second).
        self.seen: dict[str, int] = {}
        self.seen_at = now
        self.rates: dict[str, float] = {}

    def _refilled(self, now: float) -> float:
        if now <= self.at:
            return self.tokens
        gain = self.fraction * self.capacity * (now - self.at) / self.period
        return min(self.cap, self.tokens + gain)

    def take(self, cost: int, now: float) -> bool:
        """Take ``cost`` tokens from this process's budget, if it holds them."""
        tokens = self._refilled(now)
        self.tokens, self.at = tokens, max(now, self.at)
        if tokens + SLACK < cost:
            return False
        self.tokens = tokens - cost
        return True

    def room(self, now: float) -> int:
        """Whole tokens this process may still take before a new picture."""
        return max(0, math.floor(self._refilled(now) + SLACK))


def room(taken: int, level: float) -> int:
    """How far the cluster's taken count may go now: what it took plus the level."""
    return math.floor(taken + level + SLACK)


def level_now(
    taken: int,
    register: int,
    previous: tuple[int, int],
    capacity: int,
    period: int,
    elapsed: float,
) -> float:
    """The bucket's level ``elapsed`` seconds into its epoch, as the limiter computes it."""
    start_level = carried_level(*previous, capacity, period)
    return epoch_level(taken, register, start_level, elapsed, capacity, period).level


def fresh_plan(
    origin: str,
    members: Iterable[str],
    counts: Mapping[str, int],
    level: float,
    capacity: int,
    period: int,
    now: float,
) -> BucketPlan:
    """A take with no plan: an equal share of the level for every live process."""
    everyone = {*members, origin}
    share = max(1, math.floor(level + SLACK) // len(everyone))
    levels = {o: (counts.get(o, 0) + share, now) for o in everyone}
    plan = BucketPlan(levels[origin][0], levels, capacity, period, 1 / len(everyone), share, now)
    plan.seen = dict(counts)
    return plan


def recent_rates(
    plan: BucketPlan,
    counts: Mapping[str, int],
    everyone: Iterable[str],
    now: float,
    round_time: float,
) -> dict[str, float]:
    """Each origin's rate over the last couple of rounds (an average decaying that fast).

    Not over the epoch, as the windows do over theirs: 16 periods of history
    would keep a process the traffic left looking busy, its share parked there.
    An origin not seen at the last picture took all of its count since.
    """
    elapsed = max(now - plan.seen_at, round_time)
    keep = max(0.0, 1.0 - elapsed / (2 * round_time))
    rates = {}
    for o in everyone:
        count = counts.get(o, 0)
        rate = max(0, count - plan.seen.get(o, 0)) / elapsed
        rates[o] = keep * plan.rates.get(o, rate) + (1 - keep) * rate
    return rates


def rate_weights(rates: Mapping[str, float]) -> dict[str, float]:
    """A process's weight is its rate, plus the floor for everyone (as ``budgets.weights``)."""
    floor = FLOOR_SHARE * sum(rates.values()) / max(1, len(rates))
    return {o: r + floor for o, r in rates.items()}


def replan_bucket(
    plan: BucketPlan,
    origin: str,
    counts: Mapping[str, int],
    members: Iterable[str],
    taken: int,
    level: float,
    now: float,
    round_time: float,
) -> BucketPlan | None:
    """The next plan of a bucket from this picture (None: it is full, no budgets)."""
    if level + SLACK >= plan.capacity:
        return None  # nothing in use: the next take starts again with equal shares
    everyone = sorted({*members, origin})
    ttl = max(MIN_IDLE, IDLE_ROUNDS * round_time)
    levels = reserve(plan.levels, counts, everyone, now, ttl)
    remaining = room(taken, level) - sum(lv for lv, _ in levels.values())
    rates = recent_rates(plan, counts, everyone, now, round_time)
    shares_by = rate_weights(rates)
    shares = allocate(max(0, remaining), shares_by)
    total_weight = sum(shares_by.values())
    fraction = shares_by[origin] / total_weight if total_weight > 0 else 1 / len(everyone)
    for o, share in shares.items():
        if share:
            level_o, made = levels[o]
            # A share added to an unused promise does not make it young again: the
            # refill hands out a little every picture, and a process the traffic
            # left would keep what it parked for ever.
            levels[o] = (level_o + share, made if level_o > counts.get(o, 0) else now)
    own = levels[origin][0]
    tokens = max(0, own - counts.get(origin, 0))  # an unused promise, plus the new share
    new = BucketPlan(own, levels, plan.capacity, plan.period, fraction, tokens, now)
    new.seen, new.rates = dict(counts), rates
    return new
