"""The counter store's side of budgets: a bucket's plan, kept under the store's lock.

``CounterStore`` inherits this: the request path asks ``_add_planned`` whether
a hit fits this process's budget, and the sync thread calls ``rebudget`` with
each new picture of the cluster (a peer's counts arrived, or this process sent
its own). The arithmetic is in ``budgets``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .budgets import BUDGET_HEADROOM, IDLE_ROUNDS, MIN_IDLE, budget_shares, initial_budget

CUT_OFF_SLICE = 1000  # buckets planned per hold of the store's lock when cut off

if TYPE_CHECKING:
    from .store import Bucket, BucketKey


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


class BudgetedStore:
    # Provided by CounterStore.
    origin: str
    processes: int
    members: list[str]
    track_dirty: bool
    _lock: threading.Lock
    _buckets: Any

    def _queue(self, bucket_key: BucketKey, bucket: Bucket) -> None:
        raise NotImplementedError

    # -- the request path (the caller holds the lock) --------------------------------

    def _new_limit(self, bucket: Bucket, limit: int, now: float) -> None:
        """The first check of a bucket against ``limit`` here (or against another one).

        In a cluster it starts with an equal share each until the first picture
        (the bucket may have come with a peer's counts: they count as used).
        """
        first = not bucket.limit
        bucket.limit = limit
        if not limit:
            bucket.plan = None  # "0/m", or a caller that names no limit: no budgets
            return
        share = initial_budget(limit, self.processes) if first else None
        if share is not None:
            everyone = {*self.members, self.origin}
            bucket.plan = Plan(share, {o: (share, now) for o in everyone})

    def _add_planned(
        self, bucket_key: BucketKey, bucket: Bucket, amount: int, now: float, limit: int
    ) -> int:
        plan = bucket.plan
        assert plan is not None
        local = bucket.local + amount
        if local > plan.allowed:
            # Not counted: the hit asked for a share it did not get. The bucket goes
            # out with the next round, whose picture brings a new budget.
            if self.track_dirty:
                self._queue(bucket_key, bucket)
            return -1 - bucket.total
        plan.grew_at[self.origin] = now
        bucket.local = local
        total = bucket.total = bucket.total + amount
        if self.track_dirty:
            self._queue(bucket_key, bucket)
        # What remains for this process, as the count a limit of ``limit`` leaves.
        return max(total, limit - (plan.allowed - local))

    # -- the sync thread -------------------------------------------------------------

    def rebudget(
        self,
        bucket_keys: Iterable[BucketKey],
        live: Iterable[str],
        now: float,
        round_time: float,
        headroom: float = BUDGET_HEADROOM,
    ) -> None:
        """Recompute the budgets of these buckets from the picture this process has now."""
        members = [*live, self.origin]
        processes = len(members)
        with self._lock:
            for bucket_key in bucket_keys:
                bucket = self._buckets.get(bucket_key)
                if bucket is None or not bucket.limit:
                    continue
                plan = bucket.plan
                if plan is None:
                    # Far from the limit at the rate it fills (most buckets, most of the
                    # time): nothing to compute. budget_for() makes the same test.
                    elapsed = max(now - bucket_key[3], 1e-3)
                    rate = bucket.total / elapsed
                    remaining = bucket.limit - bucket.total
                    if remaining > headroom * rate * round_time + processes:
                        continue
                counts = {o: c for o, c in bucket.remote.items() if o[0] != "~"}
                counts[self.origin] = bucket.local
                bucket.plan = replan(
                    plan,
                    self.origin,
                    bucket.limit,
                    counts,
                    members,
                    now - bucket_key[3],
                    now,
                    round_time,
                    headroom,
                )

    def cut_off(self) -> None:
        """The broker is gone: no new picture will come until it is back.

        A bucket deciding on totals would let this process alone take all that
        remains, so each gets a plan: an equal share of what remains for every
        process of the last known cluster, as a fresh bucket starts with. Buckets
        in budget mode keep theirs. The shares are stand-ins, not promises (made
        "long ago"): the first picture after the outage replans from the counts,
        so a broker's blip costs no false 429s once it is over.
        """
        everyone = {*self.members, self.origin}
        if len(everyone) <= 1:
            return
        lapsed = float("-inf")
        with self._lock:
            bucket_keys = list(self._buckets)
        # In slices: 100,000 buckets take a few hundred ms, too long to hold the
        # request path's lock. Buckets made meanwhile start with an equal share anyway.
        for at in range(0, len(bucket_keys), CUT_OFF_SLICE):
            with self._lock:
                for bucket_key in bucket_keys[at : at + CUT_OFF_SLICE]:
                    bucket = self._buckets.get(bucket_key)
                    if bucket is None or bucket.plan is not None or not bucket.limit:
                        continue
                    share = max(0, bucket.limit - bucket.total) // len(everyone)
                    levels = {o: (bucket.remote.get(o, 0) + share, lapsed) for o in everyone}
                    levels[self.origin] = (bucket.local + share, lapsed)
                    bucket.plan = Plan(bucket.local + share, levels)

    def planned(self, now: float) -> dict[BucketKey, dict[str, int]]:
        """Buckets in budget mode here, with the level each process may count up to."""
        with self._lock:
            return {
                k: {o: level for o, (level, _) in b.plan.levels.items()}
                for k, b in self._buckets.items()
                if b.plan is not None and b.expires_at > now
            }


def replan(
    plan: Plan | None,
    origin: str,
    limit: int,
    counts: dict[str, int],
    members: list[str],
    elapsed: float,
    now: float,
    round_time: float,
    headroom: float,
) -> Plan | None:
    """The next plan of a bucket from this picture (None: far from its limit, no budgets)."""
    prior = plan.levels if plan is not None else {}
    grew_at = plan.grew_at if plan is not None else {}
    ttl = max(MIN_IDLE, IDLE_ROUNDS * round_time)
    levels: dict[str, tuple[int, float]] = {}
    for o in {*counts, *members, *prior}:
        level, made = counts.get(o, 0), now
        promised = prior.get(o)
        if promised is not None and promised[0] > level and now - promised[1] <= ttl:
            level, made = promised  # not used up yet: still reserved
        levels[o] = (level, made)
    reserved = sum(level for level, _ in levels.values())
    shares = budget_shares(
        origin, limit, reserved, counts, grew_at, members, elapsed, now, round_time, headroom
    )
    if shares is None:
        return None
    for o, share in shares.items():
        if share:
            levels[o] = (levels[o][0] + share, now)
    new = Plan(levels[origin][0], levels)
    new.grew_at = grew_at
    return new
