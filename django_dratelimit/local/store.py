"""The in-process counter store: one G-counter per (group, key, period, window).

Each bucket holds, per origin process, how many hits that origin counted in the
window. This process only ever increments its own origin (``local``); counts
of other origins arrive through :meth:`CounterStore.merge` and are max-merged,
which makes lost, repeated and reordered sync messages harmless.

A reset is a *generation*: the wall-clock time (ns) of the reset, kept per key
or per group. Buckets of an older generation are dropped and can never come
back through a merge, so a reset wins over the max-merge cluster-wide. A key
reset also covers that key's scoped variants (``scopes.base_key``), which
``@ratelimit`` counts in.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from .budget_store import BudgetedStore, Plan
from .scopes import base_key

logger = logging.getLogger("django_dratelimit")

BucketKey = tuple[str, str, int, int]  # group, key, period, window start
# Origins that start with "~" are registers (max-merged like any origin, but not
# hits and not part of the total): the token bucket keeps its running maximum there.
REGISTER = "~max"
EVICTION_WARNING_EVERY = 60.0
PROTECTED_TRIES = 16  # buckets at their limit skipped by one eviction, at most
# Resets are remembered long enough to outlive any bucket they cancel (2 x the longest period).
RESET_TTL = 2 * 31 * 86400


class BucketState(NamedTuple):
    """What travels between processes for one bucket: absolute counts per origin."""

    group: str
    key: str
    period: int
    window_start: int
    generation: int
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(c for origin, c in self.counts.items() if not origin.startswith("~"))


class Entry(NamedTuple):
    """One origin's absolute count in one bucket: what sync protocol v2 sends."""

    group: str
    key: str
    period: int
    window_start: int
    generation: int
    amount: int  # this origin's count: hits (or, for the token buckets, thousandths of tokens)
    register: int  # the token buckets' max-merged register (0 for other algorithms)


class ResetState(NamedTuple):
    """A reset of one key (or of a whole group when ``key`` is None)."""

    group: str
    key: str | None
    generation: int


class Bucket:
    __slots__ = ("dirty", "expires_at", "generation", "limit", "local", "plan", "remote", "total")

    def __init__(self, generation: int, expires_at: float) -> None:
        self.local = 0
        self.remote: dict[str, int] = {}
        self.total = 0
        self.generation = generation
        self.expires_at = expires_at
        # Already queued for the next sync round: later hits need not queue it again.
        self.dirty = False
        self.limit = 0  # the limit it is checked against (0: not known, no budgets)
        self.plan: Plan | None = None  # its budget, while in budget mode (see budgets)


def new_node_id() -> str:
    return uuid.uuid4().hex


class CounterStore(BudgetedStore):
    """Thread-safe, bounded, in-memory counters for this process."""

    def __init__(self, max_keys: int = 100_000, origin: str | None = None) -> None:
        self.origin = origin or new_node_id()
        self.max_keys = max_keys
        self._lock = threading.Lock()
        # Ordered by creation: evicting the oldest is popitem(last=False), O(1);
        # next(iter(dict)) slows down quadratically after many deletes at the front.
        # (Evicting the next to expire instead would let a flood of long-period
        # buckets evict every short-period one as soon as it is created.)
        self._buckets: OrderedDict[BucketKey, Bucket] = OrderedDict()
        self._expiry: list[tuple[float, BucketKey]] = []
        self._next_sweep = 0.0
        self._key_gens: dict[tuple[str, str], int] = {}
        self._group_gens: dict[str, int] = {}
        self._own_resets: dict[tuple[str, str | None], int] = {}
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
        _STORES.add(self)

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
        return bucket.total, bucket.remote.get(REGISTER, 0)

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
            total, register = (bucket.total, bucket.remote.get(REGISTER, 0)) if bucket else (0, 0)
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
            generation = self._generation(group, key)
        bucket = Bucket(generation, start + 2 * period)
        self._buckets[bucket_key] = bucket
        heapq.heappush(self._expiry, (bucket.expires_at, bucket_key))
        return bucket

    def _generation(self, group: str, key: str) -> int:
        generation = max(self._key_gens.get((group, key), 0), self._group_gens.get(group, 0))
        if key[-1:] == "]" and self._key_gens:
            # A scoped key ("k [5/60s GET]") is reset by a reset of "k".
            generation = max(generation, self._key_gens.get((group, base_key(key)), 0))
        return generation

    def _sweep(self, now: float) -> None:
        """Drop buckets whose window (kept one extra period for sliding windows) ended."""
        self._next_sweep = now + 1.0
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            _expires_at, bucket_key = heapq.heappop(expiry)
            bucket = self._buckets.get(bucket_key)
            if bucket is not None and bucket.expires_at <= now:
                del self._buckets[bucket_key]
        if len(self._expiry) > 2 * len(self._buckets) + 1024:
            # Evictions and resets leave stale heap entries; rebuild now and then.
            self._expiry = [(b.expires_at, k) for k, b in self._buckets.items()]
            heapq.heapify(self._expiry)
        if len(self._dirty) > 2 * len(self._buckets) + 1024:
            # Not drained for a while (broker down): drop the keys of buckets gone since.
            self._dirty = [k for k, b in self._buckets.items() if b.dirty]
        horizon = time.time_ns() - RESET_TTL * 1_000_000_000
        if self._key_gens and len(self._key_gens) > self.max_keys:
            self._key_gens = {k: g for k, g in self._key_gens.items() if g > horizon}
        if len(self._own_resets) > self.max_keys:
            self._own_resets = {k: g for k, g in self._own_resets.items() if g > horizon}

    def _evict_oldest(self, now: float) -> None:
        buckets = self._buckets
        # A bucket that is refusing someone right now (at its limit) goes to the back of
        # the line: a flood of fresh keys must not lift a limit that is holding. A few
        # tries only, so a store full of limiting buckets still evicts in O(1).
        for _ in range(PROTECTED_TRIES):
            bucket_key, bucket = buckets.popitem(last=False)
            if not (bucket.limit and bucket.total >= bucket.limit and bucket.expires_at > now):
                break
            buckets[bucket_key] = bucket
        else:
            buckets.popitem(last=False)
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

    def _entry(self, bucket_key: BucketKey, bucket: Bucket) -> Entry:
        return Entry(*bucket_key, bucket.generation, bucket.local, bucket.remote.get(REGISTER, 0))

    def _state(self, bucket_key: BucketKey, bucket: Bucket) -> BucketState:
        counts = dict(bucket.remote)
        if bucket.local:
            counts[self.origin] = bucket.local
        return BucketState(*bucket_key, bucket.generation, counts)

    def take_dirty(self) -> list[Entry]:
        """This process's own counts of the buckets its hits changed since the last call."""
        with self._lock:
            dirty, self._dirty = self._dirty, []
            entries = []
            for bucket_key in dirty:
                bucket = self._buckets.get(bucket_key)
                # None: swept, evicted or reset since; not dirty: taken from an earlier entry.
                if bucket is not None and bucket.dirty:
                    bucket.dirty = False
                    entries.append(self._entry(bucket_key, bucket))
            return entries

    def has_dirty(self) -> bool:
        return bool(self._dirty or self._pending_resets)

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

    def mark_dirty(self, bucket_keys: Iterable[BucketKey]) -> None:
        """Put keys back (a send failed), so the next round retries them."""
        with self._lock:
            for bucket_key in bucket_keys:
                bucket = self._buckets.get(bucket_key)
                if bucket is not None and not bucket.dirty:
                    bucket.dirty = True
                    self._dirty.append(bucket_key)

    def entries(self, bucket_keys: Iterable[BucketKey]) -> list[Entry]:
        """This process's own counts of some buckets."""
        with self._lock:
            buckets = self._buckets
            return [self._entry(k, buckets[k]) for k in bucket_keys if k in buckets]

    def own_entries(self, now: float) -> list[Entry]:
        """This process's own counts of every live bucket it has hits in."""
        with self._lock:
            return [
                self._entry(k, b)
                for k, b in self._buckets.items()
                if b.local and b.expires_at > now
            ]

    def relay_entries(self, now: float, exclude: Iterable[str]) -> dict[str, list[Entry]]:
        """Other origins' counts of the live buckets, by origin, except ``exclude``'s."""
        skip = {*exclude, self.origin}
        relay: dict[str, list[Entry]] = {}
        with self._lock:
            for bucket_key, bucket in self._buckets.items():
                if bucket.expires_at <= now:
                    continue
                register = bucket.remote.get(REGISTER, 0)
                for origin, count in bucket.remote.items():
                    if origin not in skip and origin[0] != "~":
                        entry = Entry(*bucket_key, bucket.generation, count, register)
                        relay.setdefault(origin, []).append(entry)
        return relay

    def live_states(self, now: float) -> list[BucketState]:
        """Every live bucket with every origin's count (for inspection)."""
        with self._lock:
            return [self._state(k, b) for k, b in self._buckets.items() if b.expires_at > now]

    def origins(self, now: float) -> set[str]:
        """Every origin with a count in a live bucket, this one included if it has any."""
        with self._lock:
            found = {o for b in self._buckets.values() if b.expires_at > now for o in b.remote}
            if any(b.local for b in self._buckets.values()):
                found.add(self.origin)
        return {o for o in found if o[0] != "~"}

    def merge(self, origin: str, entries: Iterable[Sequence[Any]], now: float) -> int:
        """Max-merge ``origin``'s absolute counts (``Entry`` fields); return how many grew."""
        changed = 0
        own = origin == self.origin
        buckets = self._buckets
        with self._lock:
            for group, key, period, start, generation, count, register in entries:
                if start + 2 * period <= now:
                    continue
                bucket_key = (group, key, period, start)
                bucket = buckets.get(bucket_key)
                # A live bucket is of its key's current generation (a reset drops the
                # older ones): the same generation needs no reset bookkeeping.
                if bucket is None or generation != bucket.generation:
                    current = self._generation(group, key)
                    if generation < current:
                        continue  # counted before a reset this process already knows of
                    if generation > current:
                        self._apply_reset(ResetState(group, key, generation))
                    bucket = buckets.get(bucket_key)
                    if bucket is None:
                        bucket = self._create(bucket_key, now, generation)
                grew = False
                remote = bucket.remote
                if own:
                    # We are the authority on our own count, unless we lost it
                    # (the bucket was evicted, then re-created by a peer's relay).
                    if count > bucket.local:
                        bucket.total += count - bucket.local
                        bucket.local = count
                        grew = True
                else:
                    known = remote.get(origin, 0)
                    if count > known:
                        remote[origin] = count
                        bucket.total += count - known
                        grew = True
                        if bucket.plan is not None:
                            bucket.plan.grew_at[origin] = now
                if register and register > remote.get(REGISTER, 0):
                    remote[REGISTER] = register
                    grew = True
                changed += grew
        return changed

    # -- resets ----------------------------------------------------------------

    def reset(self, group: str, key: str | None = None, generation: int | None = None) -> int:
        """Forget a key (or a whole group) from now on; return how many buckets went."""
        with self._lock:
            if generation is None:
                # Wall-clock time, but past any generation adopted from a peer
                # whose clock runs ahead: a local reset must always take effect.
                generation = max(time.time_ns(), self._highest_generation(group, key) + 1)
            reset = ResetState(group, key, generation)
            removed = self._apply_reset(reset)
            self._own_resets[(group, key)] = generation
            if self.track_dirty:
                if not self._pending_resets and self.on_dirty is not None:
                    self.on_dirty()
                self._pending_resets.append(reset)
        return removed

    def _highest_generation(self, group: str, key: str | None) -> int:
        if key is not None:
            return self._generation(group, key)
        in_group = [g for (grp, _), g in self._key_gens.items() if grp == group]
        return max([self._group_gens.get(group, 0), *in_group])

    def apply_resets(self, resets: Iterable[ResetState]) -> int:
        """Apply resets heard from other processes (idempotent)."""
        with self._lock:
            return sum(self._apply_reset(reset) for reset in resets)

    def _apply_reset(self, reset: ResetState) -> int:
        group, key, generation = reset
        if key is None:
            if self._group_gens.get(group, 0) >= generation:
                return 0
            self._group_gens[group] = generation
        else:
            if self._generation(group, key) >= generation:
                return 0
            self._key_gens[(group, key)] = generation
        doomed = [
            k
            for k, b in self._buckets.items()
            if k[0] == group
            and (key is None or k[1] == key or base_key(k[1]) == key)
            and b.generation < generation
        ]
        for bucket_key in doomed:
            del self._buckets[bucket_key]
        return len(doomed)

    def requeue_resets(self, resets: list[ResetState]) -> None:
        """Resets whose send failed go out with the next round."""
        if resets:
            with self._lock:
                if self.track_dirty:
                    self._pending_resets[:0] = resets

    def take_pending_resets(self) -> list[ResetState]:
        with self._lock:
            pending, self._pending_resets = self._pending_resets, []
            return pending

    def reset_states(self) -> list[ResetState]:
        """Every reset still remembered, for late joiners."""
        with self._lock:
            horizon = time.time_ns() - RESET_TTL * 1_000_000_000
            groups = [ResetState(g, None, gen) for g, gen in self._group_gens.items()]
            keys = [ResetState(g, k, gen) for (g, k), gen in self._key_gens.items()]
            return [r for r in groups + keys if r.generation > horizon]

    def own_resets(self) -> list[ResetState]:
        """The resets made in this process and still remembered (a peer may have missed one)."""
        with self._lock:
            horizon = time.time_ns() - RESET_TTL * 1_000_000_000
            return [ResetState(g, k, n) for (g, k), n in self._own_resets.items() if n > horizon]

    # -- fork ------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        # The lock may have been held by a thread that does not exist in the child.
        self._lock = threading.Lock()
        parent = self.origin
        self.origin = new_node_id()
        # Hits counted before the fork are the parent's: keep them under its origin,
        # so two children cannot both claim (and double) them.
        for bucket in self._buckets.values():
            if bucket.local:
                bucket.remote[parent] = max(bucket.remote.get(parent, 0), bucket.local)
                bucket.local = 0
            bucket.dirty = False
        self._dirty = []
        self._pending_resets = []
        self.track_dirty = False
        self.on_hit = None
        self.on_dirty = None


_STORES: weakref.WeakSet[CounterStore] = weakref.WeakSet()


def _reinit_stores_after_fork() -> None:
    for store in list(_STORES):
        store._after_fork_in_child()


os.register_at_fork(after_in_child=_reinit_stores_after_fork)
