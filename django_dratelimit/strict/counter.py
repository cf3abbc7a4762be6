"""Strict consistency: exact counts in a shared Django cache, one atomic round trip per hit.

A rule with ``"consistency": "strict"`` counts in the cache named by
``DRATELIMIT["STRICT_CACHE"]`` instead of the process's own store. Buckets are
the local mode's ``(group, key, period, window start)``, with the same windows
and scoped keys (see ``scopes``), and :meth:`StrictCounter.check` answers with
the same ``Usage`` as ``Limiter.check``. How each cache counts is in
``backends``; the keys it counts under are in ``cache_keys``.

Any error from the cache becomes :class:`StrictUnavailable` (logged once per
30 s per alias); the caller decides with ``STRICT_FAIL_OPEN``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from django.core.signals import setting_changed
from django.dispatch import receiver

from ..conf import conf
from ..local.algorithms import FIXED_WINDOW, SLIDING_WINDOW
from ..local.scopes import bucket
from ..local.store import BucketKey
from ..logutil import log_throttled
from ..rates import Rate
from ..usage import Usage, combine, window_usage
from .backends import StrictBackend, StrictUnsupported, connect

# Token and leaky buckets keep max-merged registers, not counters: local mode only.
STRICT_ALGORITHMS = (FIXED_WINDOW, SLIDING_WINDOW)

T = TypeVar("T")

__all__ = [
    "STRICT_ALGORITHMS",
    "StrictCounter",
    "StrictUnavailable",
    "StrictUnsupported",
    "get_strict_counter",
]


class StrictUnavailable(Exception):
    """The strict cache did not answer (or is misconfigured); apply ``STRICT_FAIL_OPEN``."""

    def __init__(self, alias: str, cause: str) -> None:
        super().__init__(f"strict rate-limit cache {alias!r} is unavailable: {cause}")
        self.alias = alias
        self.cause = cause


class StrictCounter:
    """Exact counters in the strict cache; raises StrictUnavailable when it does not answer."""

    def __init__(self, alias: str | None = None, *, fail_open: bool | None = None) -> None:
        self.alias = alias if alias is not None else conf.STRICT_CACHE
        # None: read STRICT_FAIL_OPEN when logging. Only the log line uses it;
        # the caller applies the choice.
        self.fail_open = fail_open
        self._backend: StrictBackend | None = None
        self._kind = ""
        self._lock = threading.Lock()
        self._down = False

    # -- counting -------------------------------------------------------------------

    def hit(self, bucket_key: BucketKey, cost: int, expires_in: float) -> int:
        """Add ``cost`` to the bucket (expiring in ``expires_in`` s if new); return its total."""
        return self.hit_many((bucket_key,), cost, (expires_in,))[0][0]

    def hit_many(
        self,
        bucket_keys: Sequence[BucketKey],
        cost: int,
        expires_in: Sequence[float],
        previous_keys: Sequence[BucketKey] = (),
    ) -> tuple[list[int], list[int]]:
        """Add ``cost`` to every bucket and read every previous bucket, atomically on Redis.

        Returns the new totals and the previous totals. ``cost`` 0 only reads.
        """
        n = len(bucket_keys)
        if cost <= 0:
            values = self.totals([*bucket_keys, *previous_keys])
        else:
            values = self._call(lambda b: b.hit(bucket_keys, cost, expires_in, previous_keys))
        return values[:n], values[n:]

    def total(self, bucket_key: BucketKey) -> int:
        """The bucket's total (0 if it does not exist), without counting."""
        return self.totals((bucket_key,))[0]

    def totals(self, bucket_keys: Sequence[BucketKey]) -> list[int]:
        """Several totals in one round trip (MGET on Redis)."""
        if not bucket_keys:
            return []
        return self._call(lambda b: b.read(bucket_keys))

    # -- the local mode's answer --------------------------------------------------------

    def check(
        self,
        group: str,
        key: str,
        rates: Sequence[Rate],
        algorithm: str,
        cost: int,
        now: float,
        name: str = "",
        *,
        scope: str | None = None,
        stagger: bool = False,
    ) -> Usage:
        """``Limiter.check`` with the counts in the strict cache: one round trip per request."""
        if algorithm not in STRICT_ALGORITHMS:
            raise StrictUnsupported(f"strict mode counts windows; {algorithm!r} is not one")
        sliding = algorithm == SLIDING_WINDOW
        placed = [bucket(group, key, r.limit, r.period, now, scope, stagger) for r in rates]
        starts = [start for _, start in placed]
        buckets = [
            (group, stored, rate.period, start)
            for rate, (stored, start) in zip(rates, placed, strict=True)
        ]
        previous = (
            [(g, k, period, start - period) for g, k, period, start in buckets] if sliding else []
        )
        # A sliding window's counter is read as the previous one during the next window.
        expires_in = [
            start + rate.period - now + (rate.period if sliding else 0)
            for rate, start in zip(rates, starts, strict=True)
        ]
        currents, previouses = self.hit_many(buckets, cost, expires_in, previous)
        usages = [
            window_usage(
                group,
                key,
                rate,
                algorithm,
                name,
                now,
                starts[index],
                currents[index],
                previouses[index] if sliding else 0,
            )
            for index, rate in enumerate(rates)
        ]
        return combine(usages, algorithm, name)

    # -- administration ------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """The strict cache's backend kind: ``django-redis``, ``redis``, ``memcached``..."""
        return self._call(lambda backend: self._kind)

    @property
    def backend(self) -> StrictBackend:
        """The backend counting in the cache (connecting first if need be)."""
        return self._call(lambda backend: backend)

    @property
    def can_enumerate(self) -> bool:
        """Whether ``live()`` and ``reset(group)`` work: only on the Redis backends."""
        return self._call(lambda backend: backend.can_enumerate)

    def reset(
        self,
        group: str,
        key: str | None = None,
        *,
        periods: Iterable[int] = (),
        scopes: Iterable[tuple[int, int, str]] = (),
        now: float | None = None,
    ) -> int:
        """Delete the counters of ``key`` in ``group`` (or of the whole group); return how many.

        On Redis the counters are found with SCAN. Other backends cannot list
        keys: they need ``key`` and the rule's ``periods`` (and the decorators'
        ``scopes``: limit, period, methods), and delete the windows around
        ``now``, epoch-aligned and staggered; a whole group raises StrictUnsupported.
        """
        at = time.time() if now is None else now
        return self._call(lambda b: b.delete(group, key, tuple(periods), tuple(scopes), at))

    def live(
        self, group: str | None = None, key_substring: str | None = None
    ) -> list[tuple[BucketKey, int]]:
        """Every counter in the cache (of ``group``, with keys containing ``key_substring``).

        Sorted by bucket. Keys longer than MAX_COMPONENT escaped characters are
        stored hashed and listed as ``=`` and 40 hex digits. Empty when the
        backend cannot list keys (see ``can_enumerate``).
        """
        return self._call(lambda b: b.live(group, key_substring))

    # -- plumbing ----------------------------------------------------------------------

    def _call(self, operation: Callable[[StrictBackend], T]) -> T:
        try:
            result = operation(self._backend or self._connect())
        except StrictUnsupported:
            raise
        except Exception as exc:
            # Whatever the client raised (redis.exceptions.*, OSError, a bad
            # alias...), the caller sees one exception and never a 500.
            raise self._unavailable(exc) from exc
        if self._down:
            self._down = False
            log_throttled(
                f"strict-recovered:{self.alias}",
                logging.WARNING,
                "Strict rate limiting: cache %r answers again.",
                self.alias,
            )
        return result

    def _connect(self) -> StrictBackend:
        with self._lock:
            if self._backend is None:
                self._kind, self._backend = connect(self.alias)
            return self._backend

    def _unavailable(self, exc: Exception) -> StrictUnavailable:
        self._down = True
        fail_open = conf.STRICT_FAIL_OPEN if self.fail_open is None else self.fail_open
        cause = f"{type(exc).__name__}: {exc}"
        log_throttled(
            f"strict-unavailable:{self.alias}",
            logging.ERROR,
            "Strict rate limiting: cache %r is unavailable (%s); requests under strict rules "
            "are %s until it answers again.",
            self.alias,
            cause,
            "let through (STRICT_FAIL_OPEN = True)"
            if fail_open
            else "limited (STRICT_FAIL_OPEN = False)",
        )
        return StrictUnavailable(self.alias, cause)


_counters: dict[str, StrictCounter] = {}
_counters_lock = threading.Lock()


def get_strict_counter(alias: str | None = None) -> StrictCounter:
    """This process's counter for ``alias`` (default STRICT_CACHE); dropped when settings change."""
    name = alias if alias is not None else conf.STRICT_CACHE
    counter = _counters.get(name)
    if counter is None:
        with _counters_lock:
            counter = _counters.setdefault(name, StrictCounter(name))
    return counter


@receiver(setting_changed)
def _drop_counters(setting: str, **kwargs: Any) -> None:
    if setting in ("CACHES", "DRATELIMIT"):
        with _counters_lock:
            _counters.clear()
