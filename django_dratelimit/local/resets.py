"""Resets as generations: which reset each key and group is at, and the ones made here.

A reset is a *generation*: the wall-clock time (ns) of the reset, kept per key
or per group. Buckets of an older generation are dropped and can never come
back through a merge, so a reset wins over the max-merge cluster-wide. A key
reset also covers that key's scoped variants (``scopes.base_key``), which
``@ratelimit`` counts in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple

from .scopes import base_key

if TYPE_CHECKING:
    from .bucket import Bucket, BucketKey

# Resets are remembered long enough to outlive any bucket they cancel (2 x the longest period).
RESET_TTL = 2 * 31 * 86400


class ResetState(NamedTuple):
    """A reset of one key (or of a whole group when ``key`` is None)."""

    group: str
    key: str | None
    generation: int


def _horizon() -> int:
    return time.time_ns() - RESET_TTL * 1_000_000_000


class Generations:
    """The generations of the resets this process knows of (not thread-safe: the store locks)."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, str], int] = {}
        self._groups: dict[str, int] = {}
        self._own: dict[tuple[str, str | None], int] = {}  # the resets made in this process

    def of(self, group: str, key: str) -> int:
        """The generation a bucket of this key is created in."""
        generation = max(self._keys.get((group, key), 0), self._groups.get(group, 0))
        if key[-1:] == "]" and self._keys:
            # A scoped key ("k [5/60s GET]") is reset by a reset of "k".
            generation = max(generation, self._keys.get((group, base_key(key)), 0))
        return generation

    def highest(self, group: str, key: str | None) -> int:
        """The highest generation a reset of this key (or of this group) must pass."""
        if key is not None:
            return self.of(group, key)
        in_group = [g for (grp, _), g in self._keys.items() if grp == group]
        return max([self._groups.get(group, 0), *in_group])

    def adopt(self, reset: ResetState) -> bool:
        """Remember a reset; False if this process already knew of it (or of a later one)."""
        group, key, generation = reset
        if key is None:
            if self._groups.get(group, 0) >= generation:
                return False
            self._groups[group] = generation
        else:
            if self.of(group, key) >= generation:
                return False
            self._keys[(group, key)] = generation
        return True

    def made_here(self, reset: ResetState) -> None:
        self._own[(reset.group, reset.key)] = reset.generation

    def forget_old(self, max_keys: int) -> None:
        """Past ``max_keys`` of them, forget the resets older than ``RESET_TTL``."""
        horizon = _horizon()
        if self._keys and len(self._keys) > max_keys:
            self._keys = {k: g for k, g in self._keys.items() if g > horizon}
        if len(self._own) > max_keys:
            self._own = {k: g for k, g in self._own.items() if g > horizon}

    def states(self) -> list[ResetState]:
        """Every reset still remembered, for late joiners."""
        horizon = _horizon()
        groups = [ResetState(g, None, gen) for g, gen in self._groups.items()]
        keys = [ResetState(g, k, gen) for (g, k), gen in self._keys.items()]
        return [r for r in groups + keys if r.generation > horizon]

    def own_states(self) -> list[ResetState]:
        """The resets made in this process and still remembered (a peer may have missed one)."""
        horizon = _horizon()
        return [ResetState(g, k, n) for (g, k), n in self._own.items() if n > horizon]


class ResettingStore:
    """The counter store's side of resets: dropping the buckets a reset cancels.

    ``CounterStore`` inherits this; the caller of an underscored method holds the lock.
    """

    # Provided by CounterStore.
    track_dirty: bool
    on_dirty: Callable[[], None] | None
    _lock: threading.Lock
    _buckets: dict[BucketKey, Bucket]
    _generations: Generations
    _pending_resets: list[ResetState]

    def reset(self, group: str, key: str | None = None, generation: int | None = None) -> int:
        """Forget a key (or a whole group) from now on; return how many buckets went."""
        with self._lock:
            if generation is None:
                # Wall-clock time, but past any generation adopted from a peer
                # whose clock runs ahead: a local reset must always take effect.
                generation = max(time.time_ns(), self._generations.highest(group, key) + 1)
            reset = ResetState(group, key, generation)
            removed = self._apply_reset(reset)
            self._generations.made_here(reset)
            if self.track_dirty:
                if not self._pending_resets and self.on_dirty is not None:
                    self.on_dirty()
                self._pending_resets.append(reset)
        return removed

    def apply_resets(self, resets: Iterable[ResetState]) -> int:
        """Apply resets heard from other processes (idempotent)."""
        with self._lock:
            return sum(self._apply_reset(reset) for reset in resets)

    def _apply_reset(self, reset: ResetState) -> int:
        if not self._generations.adopt(reset):
            return 0
        group, key, generation = reset
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
            return self._generations.states()

    def own_resets(self) -> list[ResetState]:
        """The resets made in this process and still remembered (a peer may have missed one)."""
        with self._lock:
            return self._generations.own_states()
