"""What a forked child does with the stores it inherits (gunicorn ``--preload``).

The child is another process: it gets a new origin id, and the hits counted
before the fork stay the parent's, so two children cannot both claim (and
double) them. Its sync thread does not exist yet, so nothing is queued.
"""

from __future__ import annotations

import os
import threading
import uuid
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .bucket import Bucket, BucketKey
    from .resets import ResetState


def new_node_id() -> str:
    return uuid.uuid4().hex


class ForkingStore:
    """The store's fork handling; the attributes are the store's (see ``store``)."""

    _lock: threading.Lock
    origin: str
    _buckets: dict[BucketKey, Bucket]
    _dirty: list[BucketKey]
    _pending_resets: list[ResetState]
    track_dirty: bool
    on_hit: object
    on_dirty: object

    def _after_fork_in_child(self) -> None:
        """In a forked child: a new origin, the parent's hits filed under the parent's."""
        # The lock may have been held by a thread that does not exist in the child.
        self._lock = threading.Lock()
        parent = self.origin
        self.origin = new_node_id()
        # Hits counted before the fork are the parent's: keep them under its origin,
        # so two children cannot both claim (and double) them.
        for bucket in self._buckets.values():
            if bucket.local:
                bucket.set_count(parent, max(bucket.count_of(parent), bucket.local))
                bucket.local = 0
            bucket.dirty = False
            # The plan's levels name the parent: start again as a fresh bucket does.
            bucket.plan = None
            bucket.limit = 0
        self._dirty = []
        self._pending_resets = []
        self.track_dirty = False
        self.on_hit = None
        self.on_dirty = None


_STORES: weakref.WeakSet[ForkingStore] = weakref.WeakSet()


def track(store: ForkingStore) -> None:
    _STORES.add(store)


def _reinit_stores_after_fork() -> None:
    for store in list(_STORES):
        store._after_fork_in_child()


os.register_at_fork(after_in_child=_reinit_stores_after_fork)
