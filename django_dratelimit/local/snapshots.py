"""What the sync thread reads out of the counter store: entries to send, states to show.

``CounterStore`` inherits this; every method takes the store's lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from .bucket import Bucket, BucketKey, BucketState, Entry, expiry
from .resets import ResetState


class SnapshotStore:
    # Provided by CounterStore.
    origin: str
    _lock: threading.Lock
    _buckets: dict[BucketKey, Bucket]
    _dirty: list[BucketKey]
    _pending_resets: list[ResetState]

    def _entry(self, bucket_key: BucketKey, bucket: Bucket) -> Entry:
        return Entry(*bucket_key, bucket.generation, bucket.local, bucket.register)

    def _state(self, bucket_key: BucketKey, bucket: Bucket) -> BucketState:
        counts = bucket.counts()
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

    def has_changes(self) -> bool:
        """Whether hits or resets wait for the next round (queued before anything woke it)."""
        return bool(self._dirty or self._pending_resets)

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
                self._entry(k, b) for k, b in self._buckets.items() if b.local and expiry(k) > now
            ]

    def relay_entries(self, now: float, exclude: Iterable[str]) -> dict[str, list[Entry]]:
        """Other origins' counts of the live buckets, by origin, except ``exclude``'s."""
        skip = {*exclude, self.origin}
        relay: dict[str, list[Entry]] = {}
        with self._lock:
            for bucket_key, bucket in self._buckets.items():
                if (bucket.peer is None and not bucket.others) or expiry(bucket_key) <= now:
                    continue
                register = bucket.register
                for origin, count in bucket.counts().items():
                    if origin not in skip and origin[0] != "~":
                        entry = Entry(*bucket_key, bucket.generation, count, register)
                        relay.setdefault(origin, []).append(entry)
        return relay

    def live_states(self, now: float) -> list[BucketState]:
        """Every live bucket with every origin's count (for inspection)."""
        with self._lock:
            return [self._state(k, b) for k, b in self._buckets.items() if expiry(k) > now]

    def origins(self, now: float) -> set[str]:
        """Every origin with a count in a live bucket, this one included if it has any."""
        with self._lock:
            items = self._buckets.items()
            found = {o for k, b in items if expiry(k) > now for o in b.counts()}
            if any(b.local for b in self._buckets.values()):
                found.add(self.origin)
        return {o for o in found if o[0] != "~"}
