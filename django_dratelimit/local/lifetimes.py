"""When each bucket of the store was created (eviction order) and when it ends (the sweep).

Both are per-bucket bookkeeping, so both are kept small: a pointer a bucket in
each (not an ``OrderedDict`` node and a heap tuple, about 120 bytes, a quarter
of a bucket; ``bench/bench_memory.py``).
"""

from __future__ import annotations

import heapq
from collections import deque

from .bucket import Bucket, BucketKey, expiry

PROTECTED_TRIES = 16  # buckets at their limit skipped by one eviction, at most


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
        # Keys by the time they end: a window's buckets all end together, so the
        # heap holds a few times, not a tuple a bucket.
        self._ending: dict[int, list[BucketKey]] = {}
        self._ends: list[int] = []  # the heap of _ending's times
        self._ending_count = 0

    def created(self, bucket: Bucket) -> None:
        self._created.append(bucket)
        self._will_end(bucket.key)

    def _will_end(self, bucket_key: BucketKey) -> None:
        end = expiry(bucket_key)
        keys = self._ending.get(end)
        if keys is None:
            keys = self._ending[end] = []
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
                buckets.pop(bucket_key, None)  # a key may be listed twice (re-created)
        # Evictions and resets leave stale entries behind; rebuild now and then.
        if len(self._created) > 2 * len(buckets) + 1024:
            self._created = deque(b for b in self._created if buckets.get(b.key) is b)
        if self._ending_count > 2 * len(buckets) + 1024:
            self._ending, self._ends, self._ending_count = {}, [], 0
            for bucket_key in buckets:
                self._will_end(bucket_key)

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
            return
