"""When each bucket of the store was created (eviction order) and when it ends (the sweep).

Both are per-bucket bookkeeping, so both are kept small: one pointer per bucket
in each (not an ``OrderedDict`` node and a heap tuple, about 120 bytes, a
quarter of a bucket; ``bench/bench_memory.py``). Deleting a bucket leaves its
entries behind, stale; they are skipped, and compacted away once they are a
fifth of the entries, so that they cost at most a quarter more (amortised O(1)).
"""

from __future__ import annotations

import heapq
from collections import deque

from .bucket import Bucket, BucketKey, expiry

PROTECTED_TRIES = 16  # buckets at their limit skipped by one eviction, at most
SWEEP_STEPS = 64  # a bucket is swept within 1/64 of its period after it ends


def swept_at(bucket_key: BucketKey) -> int:
    """When the sweep drops a bucket: its end, rounded up to a 64th of its period.

    Staggered windows (``STAGGER_WINDOWS``) end at any second of their period; the
    rounding keeps it to 64 lists a window, not one a second (86,400 for a day).
    """
    _group, _key, period, start = bucket_key
    step = period // SWEEP_STEPS or 1
    return -(-(start + 2 * period) // step) * step


class Lifetimes:
    """Which bucket of ``buckets`` to evict first, and which ones have ended."""

    def __init__(self, buckets: dict[BucketKey, Bucket]) -> None:
        self._buckets = buckets
        # Oldest first, the buckets themselves: a key deleted and created again is
        # another bucket, at the back, so an entry whose key now maps to another
        # bucket (or to none) is stale and skipped.
        # (Evicting the next to end instead would let a flood of long-period
        # buckets evict every short-period one as soon as it is created.)
        self._created: deque[Bucket] = deque()
        # Keys by the time they are swept: a window's buckets end together (or, staggered,
        # within their period), so the heap holds a few times, not a tuple a bucket.
        self._ending: dict[int, deque[BucketKey]] = {}
        self._ends: list[int] = []  # the heap of _ending's times
        self._ending_count = 0
        self.deleted = 0  # buckets swept or evicted (see CounterStore._shrink)

    def rebind(self, buckets: dict[BucketKey, Bucket]) -> None:
        """The store copied its dict of buckets: keep the copy, count deletions afresh."""
        self._buckets = buckets
        self.deleted = 0

    def created(self, bucket: Bucket) -> None:
        self._created.append(bucket)
        self._will_end(bucket.key)

    def _will_end(self, bucket_key: BucketKey) -> None:
        end = swept_at(bucket_key)
        keys = self._ending.get(end)
        if keys is None:
            keys = self._ending[end] = deque()
            heapq.heappush(self._ends, end)
        keys.append(bucket_key)
        self._ending_count += 1

    def sweep(self, now: float) -> None:
        """Drop the buckets that ended by ``now``; compact the bookkeeping now and then."""
        buckets = self._buckets
        ends = self._ends
        while ends and ends[0] <= now:
            keys = self._ending.pop(heapq.heappop(ends))
            self._ending_count -= len(keys)
            for bucket_key in keys:
                if buckets.pop(bucket_key, None) is not None:  # listed twice if re-created
                    self.deleted += 1
        created = self._created
        while created and buckets.get(created[0].key) is not created[0]:
            created.popleft()  # ended (most windows end in the order they began)
        self._compact()

    def _compact(self) -> None:
        # Evictions, resets and, behind a longer window, sweeps leave stale entries.
        buckets = self._buckets
        most = len(buckets) + len(buckets) // 4 + 1024
        if len(self._created) > most:
            self._created = deque(b for b in self._created if buckets.get(b.key) is b)
        if self._ending_count > most:
            ending: dict[int, deque[BucketKey]] = {}
            for bucket_key in buckets:
                end = swept_at(bucket_key)
                keys = ending.get(end)
                if keys is None:
                    keys = ending[end] = deque()
                keys.append(bucket_key)
            self._ending, self._ends, self._ending_count = ending, list(ending), len(buckets)
            heapq.heapify(self._ends)

    def evict_oldest(self, now: float) -> None:
        """Delete the oldest bucket, unless it is refusing someone right now.

        A bucket at its limit goes to the back of the line: a flood of fresh keys
        must not lift a limit that is holding. A few tries only, so a store full
        of limiting buckets still evicts in O(1).
        """
        buckets = self._buckets
        created = self._created
        tries = 0
        while created:
            bucket = created.popleft()
            if buckets.get(bucket.key) is not bucket:
                continue  # swept, reset or evicted since
            limiting = bucket.limit and bucket.total >= bucket.limit and expiry(bucket.key) > now
            if limiting and tries < PROTECTED_TRIES:
                created.append(bucket)
                tries += 1
                continue
            del buckets[bucket.key]
            self.deleted += 1
            # Its key leaves the front of its sweep list too (created in the same
            # order), or a flood's keys would pile up there until the next sweep;
            # one that is not at the front is stale until a compaction.
            keys = self._ending.get(swept_at(bucket.key))
            if keys and keys[0] is bucket.key:
                keys.popleft()
                self._ending_count -= 1
            else:
                self._compact()
            return
