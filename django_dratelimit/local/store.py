"""The in-process counter store: one G-counter bucket per (group, key, period, window).

Each bucket holds, per origin process, how many hits that origin counted in the
window (``bucket``). This process only ever increments its own origin
(``local``); counts of other origins arrive through :meth:`CounterStore.merge`
and are max-merged, which makes lost, repeated and reordered sync messages
harmless. Resets are generations (``resets``); which bucket ends or is evicted
when is kept in ``lifetimes``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from . import forking
from .bucket import REGISTER, Bucket, BucketKey, BucketState, Entry
from .budget_store import BudgetedStore
from .forking import new_node_id
from .lifetimes import PROTECTED_TRIES, Lifetimes
from .resets import RESET_TTL, Generations, ResetState, ResettingStore
from .snapshots import SnapshotStore

__all__ = [
    "PROTECTED_TRIES",
    "REGISTER",
    "RESET_TTL",
    "Bucket",
    "BucketKey",
    "BucketState",
    "CounterStore",
    "Entry",
    "ResetState",
    "new_node_id",
]

logger = logging.getLogger("django_dratelimit")

EVICTION_WARNING_EVERY = 60.0


class CounterStore(BudgetedStore, SnapshotStore, ResettingStore, forking.ForkingStore):
    """Thread-safe, bounded, in-memory counters for this process."""

    def __init__(self, max_keys: int = 100_000, origin: str | None = None) -> None:
        self.origin = origin or new_node_id()
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._buckets: dict[BucketKey, Bucket] = {}
        self._lifetimes = Lifetimes(self._buckets)
        self._next_sweep = 0.0
        self._starts: dict[int, int] = {}  # this second's window starts (see _create)
        self._generations = Generations()
        # Buckets changed by local hits since the last round, in the order they changed;
        # a key can appear twice (deleted, then re-created), take_dirty() sends it once.
        self._dirty: list[BucketKey] = []
        self._pending_resets: list[ResetState] = []
        self._last_eviction_warning = float("-inf")
        self.evictions = 0
        # Set by the sync thread: track what changed, and (SYNC_INTERVAL = 0) wake it per hit.
        self.track_dirty = False
        self.on_hit: Callable[[BucketKey], None] | None = None
        self.on_dirty: Callable[[], None] | None = None
        # Set by the sync thread: how many processes share the counts (budgets need > 1).
        self.processes = 1
        self.members: list[str] = []  # the other live processes' ids
        forking.track(self)

    def __len__(self) -> int:
        return len(self._buckets)

    # -- the request path -------------------------------------------------

    def add(self, bucket_key: BucketKey, amount: int, now: float, limit: int = 0) -> int:
        """Count ``amount`` hits of this process in a bucket; return the bucket's total.

        Checked against ``limit`` in a cluster, a bucket near its limit is in
        budget mode (see ``budgets``): then the answer is the count that leaves
        this process's budget as what remains, or, over the budget, a negative
        number (``-1 - total``) and the hit is not counted.
        """
        # acquire/release, not ``with``: on CPython 3.11 the with-statement's special
        # method lookups cost ~80 ns, a third of this method (bench/bench_local.py).
        lock = self._lock
        lock.acquire()
        try:
            bucket = self._buckets.get(bucket_key)
            if bucket is None:
                bucket = self._create(bucket_key, now)
                bucket_key = bucket.key  # the store's own (see _create)
            if bucket.limit != limit:
                self._new_limit(bucket, limit, now)
            if bucket.plan is not None:
                return self._add_planned(bucket_key, bucket, amount, now, limit)
            bucket.local += amount
            total = bucket.total = bucket.total + amount
            if self.track_dirty:
                self._queue(bucket_key, bucket)
        finally:
            lock.release()
        return total

    def total(self, bucket_key: BucketKey) -> int:
        """The cluster-wide total this process knows of (a dict read is atomic)."""
        bucket = self._buckets.get(bucket_key)
        return bucket.total if bucket is not None else 0

    def read(self, bucket_key: BucketKey) -> tuple[int, int]:
        """A bucket's total and its register (0 and 0 when there is no bucket)."""
        bucket = self._buckets.get(bucket_key)
        if bucket is None:
            return 0, 0
        return bucket.total, bucket.register

    def take(
        self,
        bucket_key: BucketKey,
        now: float,
        decide: Callable[[int, int], tuple[int, int, float]],
        capacity: int = 0,
        period: int = 0,
    ) -> tuple[int, int | None]:
        """Atomically: ``decide(total, register)`` says how much to add, the new register
        and the bucket's level.

        Used by the token and leaky buckets, whose decision depends on the
        current state. Returns the amount added and, in a cluster (given the
        bucket's ``capacity`` and ``period``), what this process's budget still
        holds (see ``bucket_budget``); an amount of -1 is a refusal by that budget.
        """
        with self._lock:
            bucket = self._buckets.get(bucket_key)
            total, register = (bucket.total, bucket.register) if bucket else (0, 0)
            amount, new_register, level = decide(total, register)
            if amount <= 0:
                return 0, None
            if bucket is None:
                bucket = self._create(bucket_key, now)
            room = None
            if capacity and self.processes > 1:
                room = self._take_budgeted(bucket_key, bucket, amount, now, level, capacity, period)
                if room < 0:
                    return -1, 0
            bucket.local += amount
            bucket.total += amount
            if new_register > register:
                bucket.remote[REGISTER] = new_register
            if self.track_dirty:
                self._queue(bucket_key, bucket)
            return amount, room

    def _queue(self, bucket_key: BucketKey, bucket: Bucket) -> None:
        # Caller holds the lock. Queued once per round, however many hits it takes.
        if not bucket.dirty:
            bucket.dirty = True
            if not self._dirty and self.on_dirty is not None:
                self.on_dirty()  # the first change of a round wakes the idle sync loop
            self._dirty.append(bucket_key)
        if self.on_hit is not None:
            self.on_hit(bucket_key)  # non-blocking: wakes the sync loop

    def _create(self, bucket_key: BucketKey, now: float, generation: int | None = None) -> Bucket:
        # Caller holds the lock.
        if now >= self._next_sweep:
            self._sweep(now)
        if len(self._buckets) >= self.max_keys:
            self._evict_oldest(now)
        group, key, period, start = bucket_key
        if generation is None:
            generation = self._generations.of(group, key)
        # One int a window start, not one a bucket (32 bytes): the request path
        # computes it afresh for every key, a peer's message decodes one per entry.
        bucket_key = (group, key, period, self._starts.setdefault(start, start))
        bucket = self._buckets[bucket_key] = Bucket(bucket_key, generation)
        self._lifetimes.created(bucket)
        return bucket

    def _sweep(self, now: float) -> None:
        """Drop the buckets that ended, at most once a second."""
        self._next_sweep = now + 1.0
        self._starts = {}
        self._lifetimes.sweep(now)
        self._shrink()
        if len(self._dirty) > 2 * len(self._buckets) + 1024:
            # Not drained for a while (broker down): drop the keys of buckets gone since.
            self._dirty = [k for k, b in self._buckets.items() if b.dirty]
        self._generations.forget_old(self.max_keys)

    def _shrink(self) -> None:
        # A dict whose keys come and go grows its table to three times its keys at its
        # next resize (CPython's policy; 104 bytes a bucket at 100,000, not 52). A copy
        # is sized for the keys it has: make one before that, after half of them went.
        # (So no caller may keep ``self._buckets`` in a local across a ``_create``.)
        if self._lifetimes.deleted > len(self._buckets) // 2 + 1024:
            self._buckets = dict(self._buckets)
            self._lifetimes.rebind(self._buckets)

    def _evict_oldest(self, now: float) -> None:
        self._lifetimes.evict_oldest(now)
        self._shrink()
        self.evictions += 1
        if now - self._last_eviction_warning >= EVICTION_WARNING_EVERY:
            self._last_eviction_warning = now
            logger.warning(
                "dratelimit: more than MAX_KEYS=%d buckets in this process; evicting the "
                "oldest (%d evicted so far). Raise DRATELIMIT['MAX_KEYS'] if this is "
                "legitimate traffic.",
                self.max_keys,
                self.evictions,
            )

    # -- the sync thread ----------------------------------------------------

    def stop_tracking(self) -> None:
        """No sync thread any more: stop queueing changes and forget the queue."""
        with self._lock:
            self.track_dirty = False
            self.on_hit = None
            self.on_dirty = None
            for bucket_key in self._dirty:
                bucket = self._buckets.get(bucket_key)
                if bucket is not None:
                    bucket.dirty = False
            self._dirty = []
            self._pending_resets = []

    def merge(self, origin: str, entries: Iterable[Sequence[Any]], now: float) -> int:
        """Max-merge ``origin``'s absolute counts (``Entry`` fields); return how many grew."""
        changed = 0
        own = origin == self.origin
        generations = self._generations
        with self._lock:
            for group, key, period, start, generation, count, register in entries:
                if start + 2 * period <= now:
                    continue
                bucket_key = (group, key, period, start)
                bucket = self._buckets.get(bucket_key)  # not kept in a local: see _shrink
                # A live bucket is of its key's current generation (a reset drops the
                # older ones): the same generation needs no reset bookkeeping.
                if bucket is None or generation != bucket.generation:
                    current = generations.of(group, key)
                    if generation < current:
                        continue  # counted before a reset this process already knows of
                    if generation > current:
                        self._apply_reset(ResetState(group, key, generation))
                    bucket = self._buckets.get(bucket_key)
                    if bucket is None:
                        bucket = self._create(bucket_key, now, generation)
                grew = False
                if own:
                    # We are the authority on our own count, unless we lost it
                    # (the bucket was evicted, then re-created by a peer's relay).
                    if count > bucket.local:
                        bucket.total += count - bucket.local
                        bucket.local = count
                        grew = True
                else:
                    known = bucket.count_of(origin)
                    if count > known:
                        bucket.set_count(origin, count)
                        bucket.total += count - known
                        grew = True
                        if bucket.plan is not None:
                            bucket.plan.grew_at[origin] = now
                if register and register > bucket.register:
                    bucket.remote[REGISTER] = register
                    grew = True
                changed += grew
        return changed
