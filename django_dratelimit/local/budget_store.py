"""The counter store's side of budgets: a bucket's plan, kept under the store's lock.

``CounterStore`` inherits this: the request path asks ``_add_planned`` whether
a hit fits this process's budget, and the sync thread calls ``rebudget`` with
each new picture of the cluster (a peer's counts arrived, or this process sent
its own). The arithmetic is in ``budgets`` (and ``bucket_budget`` for the
token and leaky buckets, whose request path is ``_take_budgeted``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .bucket_budget import BucketPlan, fresh_plan, level_now, replan_bucket
from .budgets import (
    BUDGET_HEADROOM,
    IDLE_ROUNDS,
    MIN_IDLE,
    budget_shares,
    initial_budget,
    reserve,
)
from .budgets import (
    Plan as Plan,  # re-exported: the store and the tests import it from here
)

CUT_OFF_SLICE = 1000  # buckets planned per hold of the store's lock when cut off

if TYPE_CHECKING:
    from .store import Bucket, BucketKey


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

    def read(self, bucket_key: BucketKey) -> tuple[int, int]:
        raise NotImplementedError

    def _counts(self, bucket: Bucket) -> dict[str, int]:
        """Every origin's count of a bucket, this process's own included (no registers)."""
        counts = {o: c for o, c in bucket.counts().items() if o[0] != "~"}
        counts[self.origin] = bucket.local
        return counts

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

    def _take_budgeted(
        self,
        bucket_key: BucketKey,
        bucket: Bucket,
        amount: int,
        now: float,
        level: float,
        capacity: int,
        period: int,
    ) -> int:
        """A token or leaky bucket in a cluster: what this process may still take after
        ``amount``, or -1 when its budget does not hold ``amount`` (then nothing is taken).
        """
        plan = bucket.plan
        if not isinstance(plan, BucketPlan):
            counts = self._counts(bucket)
            plan = fresh_plan(self.origin, self.members, counts, level, capacity, period, now)
            bucket.plan = plan
        if not plan.take(amount, now):
            # Not taken; the bucket goes out with the next round, whose picture
            # brings a new budget.
            if self.track_dirty:
                self._queue(bucket_key, bucket)
            return -1
        return plan.room(now)

    def holds(self, bucket_key: BucketKey, cost: int, now: float) -> bool:
        """Whether this process's budget of a token or leaky bucket holds ``cost`` (a probe)."""
        bucket = self._buckets.get(bucket_key)  # a dict read is atomic
        plan = bucket.plan if bucket is not None else None
        return not isinstance(plan, BucketPlan) or plan.room(now) >= cost

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
                if bucket is None:
                    continue
                plan = bucket.plan
                if isinstance(plan, BucketPlan):
                    bucket.plan = self._replan_bucket(
                        bucket_key, bucket, plan, members, now, round_time
                    )
                    continue
                if not bucket.limit:
                    continue
                if plan is None:
                    # Far from the limit at the rate it fills (most buckets, most of the
                    # time): nothing to compute. budget_for() makes the same test.
                    elapsed = max(now - bucket_key[3], 1e-3)
                    rate = bucket.total / elapsed
                    remaining = bucket.limit - bucket.total
                    if remaining > headroom * rate * round_time + processes:
                        continue
                counts = self._counts(bucket)
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
                    levels = {o: (bucket.count_of(o) + share, lapsed) for o in everyone}
                    levels[self.origin] = (bucket.local + share, lapsed)
                    bucket.plan = Plan(bucket.local + share, levels)

    def _replan_bucket(
        self,
        bucket_key: BucketKey,
        bucket: Bucket,
        plan: BucketPlan,
        members: list[str],
        now: float,
        round_time: float,
    ) -> BucketPlan | None:
        group, key, length, start = bucket_key
        taken, register = self.read(bucket_key)
        previous = self.read((group, key, length, start - length))
        level = level_now(taken, register, previous, plan.capacity, plan.period, now - start)
        counts = self._counts(bucket)
        return replan_bucket(plan, self.origin, counts, members, taken, level, now, round_time)

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
    levels = reserve(prior, counts, members, now, ttl)
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
