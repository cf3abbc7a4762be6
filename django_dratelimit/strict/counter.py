"""Strict consistency: exact counts in a shared Django cache, one atomic round trip per hit.

A rule with ``"consistency": "strict"`` counts in the cache named by
``DRATELIMIT["STRICT_CACHE"]`` instead of the process's own store. Buckets are
the local mode's ``(group, key, period, window start)``, with the same windows
and scoped keys (see ``scopes``), and :meth:`StrictCounter.check` answers with
the same ``Usage`` as ``Limiter.check``.

How each backend counts:

- django-redis and Django's ``RedisCache``: one Lua script on the cache's own
  redis-py client adds the cost to every window counter of the request, sets
  each counter's expiry when it has none, and reads the previous windows (for
  the sliding window), all in one atomic round trip. Neither backend's
  ``incr()`` is used: Django's runs ``EXISTS`` then ``INCRBY``, so a counter
  that expires in between is re-created without an expiry and never ends.
- Anything else (memcached): ``incr()``, and ``add(key, cost, timeout)`` when
  the counter is missing. Both are atomic in memcached, the expiry is set by
  the ``add`` that creates the counter, and the common case is one round trip.

Any error from the cache becomes :class:`StrictUnavailable` (logged once per
30 s per alias); the caller decides with ``STRICT_FAIL_OPEN``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, unquote

from django.core.cache import InvalidCacheBackendError, caches
from django.core.cache.backends.base import BaseCache
from django.core.signals import setting_changed
from django.dispatch import receiver

from ..conf import conf
from ..local.algorithms import FIXED_WINDOW, SLIDING_WINDOW
from ..local.scopes import bucket, scoped_key, window_offset
from ..local.store import BucketKey
from ..logutil import log_throttled
from ..rates import Rate
from ..usage import Usage, combine, window_usage

PREFIX = "dratelimit"
# Clocks of the app servers differ a little: a counter outlives its window by this much.
EXPIRY_GRACE = 1.0
# Longer components are hashed, so a whole key (with a short KEY_PREFIX and
# Django's ":1:" version) stays under memcached's 250 characters.
MAX_COMPONENT = 80
_HASH_LENGTH = 40  # hex digits of sha256 kept: 160 bits

# Backend kinds, from the cache class.
DJANGO_REDIS = "django-redis"
DJANGO_BUILTIN_REDIS = "redis"
MEMCACHED = "memcached"
NOT_SHARED = "not-shared"  # LocMem, Dummy, FileBased, Database: errors for strict mode
OTHER = "other"
REDIS_KINDS = (DJANGO_REDIS, DJANGO_BUILTIN_REDIS)
# Token and leaky buckets keep max-merged registers, not counters: local mode only.
STRICT_ALGORITHMS = (FIXED_WINDOW, SLIDING_WINDOW)

# KEYS: the current window counters, then the previous windows to read.
# ARGV: the cost, the number of current counters n, then one expiry (ms) per counter.
# A counter gets its expiry when it has none, so a later hit never extends it.
_HIT_SCRIPT = """
local cost = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local out = {}
for i = 1, n do
  out[i] = redis.call('INCRBY', KEYS[i], cost)
  if redis.call('PTTL', KEYS[i]) < 0 then
    redis.call('PEXPIRE', KEYS[i], ARGV[2 + i])
  end
end
for i = n + 1, #KEYS do
  out[i] = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
end
return out
"""
_HIT_SHA = hashlib.sha1(_HIT_SCRIPT.encode()).hexdigest()
_GLOB_SPECIAL = re.compile(r"([*?[])")
_CHUNK = 500

T = TypeVar("T")


class StrictUnavailable(Exception):
    """The strict cache did not answer (or is misconfigured); apply ``STRICT_FAIL_OPEN``."""

    def __init__(self, alias: str, cause: str) -> None:
        super().__init__(f"strict rate-limit cache {alias!r} is unavailable: {cause}")
        self.alias = alias
        self.cause = cause


class StrictUnsupported(NotImplementedError):
    """The strict cache's backend cannot do this (list or delete keys by pattern)."""


# -- cache keys ---------------------------------------------------------------------------


def _component(value: str) -> str:
    # Percent-encoding leaves only [A-Za-z0-9_.~%-]: no ':' (the separator), no
    # whitespace or control characters (memcached), no glob characters (SCAN).
    escaped = quote(value, safe="", errors="surrogatepass")
    if len(escaped) <= MAX_COMPONENT:
        return escaped
    # '=' never comes out of quote(), so a hashed component cannot be mistaken for a key.
    return "=" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LENGTH]


def _uncomponent(component: str) -> str:
    if component.startswith("="):
        return component  # a hashed long value: the original is not recoverable
    return unquote(component, errors="surrogatepass")


_SCOPE_MARK = quote(" [", safe="") + "*"


def cache_key(bucket_key: BucketKey) -> str:
    """``dratelimit:{group}:{key}:{period}:{window start}``, each name escaped or hashed."""
    group, key, period, start = bucket_key
    return f"{PREFIX}:{_component(group)}:{_component(key)}:{period}:{start}"


def parse_cache_key(raw: str) -> BucketKey | None:
    """The bucket of a cache key (with or without the cache's prefix), or None if not ours."""
    parts = raw.rsplit(":", 4)
    if len(parts) != 5:
        return None
    head, group, key, period, start = parts
    if head != PREFIX and not head.endswith(":" + PREFIX):
        return None
    try:
        return (_uncomponent(group), _uncomponent(key), int(period), int(start))
    except ValueError:
        return None


def backend_kind(backend: type[Any]) -> str:
    """Classify a cache backend class for strict mode."""
    from django.core.cache.backends.db import DatabaseCache
    from django.core.cache.backends.dummy import DummyCache
    from django.core.cache.backends.filebased import FileBasedCache
    from django.core.cache.backends.locmem import LocMemCache
    from django.core.cache.backends.memcached import BaseMemcachedCache
    from django.core.cache.backends.redis import RedisCache

    try:
        from django_redis.cache import RedisCache as DjangoRedisCache
    except ImportError:  # pragma: no cover - django-redis is an optional dependency
        DjangoRedisCache = None
    if DjangoRedisCache is not None and issubclass(backend, DjangoRedisCache):
        return DJANGO_REDIS
    if issubclass(backend, RedisCache):
        return DJANGO_BUILTIN_REDIS
    if issubclass(backend, BaseMemcachedCache):
        return MEMCACHED
    if issubclass(backend, LocMemCache | DummyCache | FileBasedCache | DatabaseCache):
        return NOT_SHARED
    return OTHER


# -- backends -------------------------------------------------------------------------------


def _ttl_ms(expires_in: float) -> int:
    return max(1, math.ceil((expires_in + EXPIRY_GRACE) * 1000))


def _ttl_seconds(expires_in: float) -> int:
    return max(1, math.ceil(expires_in + EXPIRY_GRACE))


class _RedisBackend:
    """Counts with a Lua script on the cache's redis-py client (django-redis or Django's)."""

    can_enumerate = True

    def __init__(self, cache: BaseCache, client: Any) -> None:
        from redis.exceptions import NoScriptError

        self.cache = cache
        self.client = client
        self._no_script = NoScriptError

    def key(self, bucket_key: BucketKey) -> str:
        # The cache's KEY_PREFIX, VERSION and KEY_FUNCTION apply, as for any cache key.
        return str(self.cache.make_key(cache_key(bucket_key)))

    def pattern(self, pattern: str) -> str:
        prefix = _GLOB_SPECIAL.sub(r"[\1]", self.cache.key_prefix)
        version = _GLOB_SPECIAL.sub(r"[\1]", str(self.cache.version))
        return str(self.cache.key_func(pattern, prefix, version))

    def hit(
        self,
        bucket_keys: Sequence[BucketKey],
        cost: int,
        expires_in: Sequence[float],
        previous_keys: Sequence[BucketKey],
    ) -> list[int]:
        keys = [self.key(b) for b in bucket_keys] + [self.key(b) for b in previous_keys]
        args = [cost, len(bucket_keys), *(_ttl_ms(e) for e in expires_in)]
        try:
            result = self.client.evalsha(_HIT_SHA, len(keys), *keys, *args)
        except self._no_script:
            # First use on this server (or after a restart): EVAL also caches the script.
            result = self.client.eval(_HIT_SCRIPT, len(keys), *keys, *args)
        return [int(value) for value in result]

    def read(self, bucket_keys: Sequence[BucketKey]) -> list[int]:
        values = self.client.mget([self.key(b) for b in bucket_keys])
        return [int(value) if value is not None else 0 for value in values]

    def delete(self, group: str, key: str | None) -> int:
        # A key's scoped variants ("k [5/60s GET]") escape to the key, then "%20%5B".
        middles = ["*"] if key is None else [_component(key), _component(key) + _SCOPE_MARK]
        deleted = 0
        for middle in middles:
            pattern = self.pattern(f"{PREFIX}:{_component(group)}:{middle}:*")
            batch: list[bytes] = []
            for raw in self.client.scan_iter(match=pattern, count=_CHUNK):
                batch.append(raw)
                if len(batch) == _CHUNK:
                    deleted += int(self.client.delete(*batch))
                    batch = []
            if batch:
                deleted += int(self.client.delete(*batch))
        return deleted

    def live(self, group: str | None, key_substring: str | None) -> list[tuple[BucketKey, int]]:
        # A superset: the escaped substring may also match across an escape.
        middle = (
            f"*{quote(key_substring, safe='', errors='surrogatepass')}*" if key_substring else "*"
        )
        first = "*" if group is None else _component(group)
        pattern = self.pattern(f"{PREFIX}:{first}:{middle}:*")
        found: list[tuple[BucketKey, int]] = []
        raws = list(self.client.scan_iter(match=pattern, count=_CHUNK))
        for chunk in _iter_chunks(raws, _CHUNK):
            for raw, value in zip(chunk, self.client.mget(chunk), strict=True):
                bucket = parse_cache_key(raw.decode("utf-8", "replace"))
                if value is None or bucket is None:
                    continue  # expired since the scan, or not one of ours
                if group is not None:
                    bucket = (group, *bucket[1:])  # the pattern matched it; un-hash it
                if key_substring and key_substring not in bucket[1]:
                    continue
                found.append((bucket, int(value)))
        return found


class _CacheBackend:
    """Counts with the cache API: ``incr``, and an atomic ``add`` to create a counter."""

    can_enumerate = False

    def __init__(self, alias: str) -> None:
        self.alias = alias

    @property
    def cache(self) -> BaseCache:
        # Memcached clients are not thread-safe: use Django's per-thread instance.
        return caches[self.alias]

    def hit(
        self,
        bucket_keys: Sequence[BucketKey],
        cost: int,
        expires_in: Sequence[float],
        previous_keys: Sequence[BucketKey],
    ) -> list[int]:
        cache = self.cache
        totals = [
            self._add(cache, cache_key(b), cost, _ttl_seconds(e))
            for b, e in zip(bucket_keys, expires_in, strict=True)
        ]
        return totals + self.read(previous_keys) if previous_keys else totals

    @staticmethod
    def _add(cache: BaseCache, key: str, cost: int, timeout: int) -> int:
        for _ in range(3):
            try:
                return int(cache.incr(key, cost))
            except ValueError:
                pass  # no counter yet
            if cache.add(key, cost, timeout):
                return cost
            # Another process created it between our incr and add: incr it.
        raise RuntimeError(f"counter {key!r} keeps expiring between incr and add")

    def read(self, bucket_keys: Sequence[BucketKey]) -> list[int]:
        keys = [cache_key(b) for b in bucket_keys]
        values = self.cache.get_many(keys)
        return [int(values.get(k, 0)) for k in keys]

    def delete_buckets(self, bucket_keys: Sequence[BucketKey]) -> int:
        keys = [cache_key(b) for b in bucket_keys]
        cache = self.cache
        existing = cache.get_many(keys)
        cache.delete_many(keys)
        return len(existing)


_Backend = _RedisBackend | _CacheBackend


# -- the counter --------------------------------------------------------------------------


class StrictCounter:
    """Exact counters in the strict cache; raises StrictUnavailable when it does not answer."""

    def __init__(self, alias: str | None = None, *, fail_open: bool | None = None) -> None:
        self.alias = alias if alias is not None else conf.STRICT_CACHE
        # None: read STRICT_FAIL_OPEN when logging. Only the log line uses it;
        # the caller applies the choice.
        self.fail_open = fail_open
        self._backend: _Backend | None = None
        self._kind = ""
        self._lock = threading.Lock()
        self._down = False

    # -- counting -------------------------------------------------------------------

    def hit(self, bucket_key: BucketKey, cost: int, expires_in: float) -> int:
        """Add ``cost`` to the bucket (expiring in ``expires_in`` s if new); return its total."""
        return self.hit_many((bucket_key,), cost, (expires_in,))[0][0]

    def hit_and_previous(
        self, bucket_key: BucketKey, previous_key: BucketKey, cost: int, expires_in: float
    ) -> tuple[int, int]:
        """``hit`` and the previous window's total, in one round trip on Redis."""
        current, previous = self.hit_many((bucket_key,), cost, (expires_in,), (previous_key,))
        return current[0], previous[0]

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
        periods = tuple(periods)
        scopes = tuple(scopes)

        def delete(backend: _Backend) -> int:
            if isinstance(backend, _RedisBackend):
                return backend.delete(group, key)
            if key is None:
                raise StrictUnsupported(
                    f"cache {self.alias!r} cannot list its keys, so a whole group cannot be "
                    "reset: reset each key, or use django-redis for STRICT_CACHE"
                )
            if not periods and not scopes:
                raise StrictUnsupported(
                    f"cache {self.alias!r} cannot list its keys: give the rule's periods"
                )
            at = time.time() if now is None else now
            stored = [(key, period) for period in periods]
            stored += [(scoped_key(key, lim, period, sc), period) for lim, period, sc in scopes]
            buckets = [
                (group, name, period, int((at - offset) // period) * period + offset + shift)
                for name, period in stored
                for offset in {0, window_offset(group, key, period)}
                for shift in (-period, 0, period)  # the previous window, a peer's clock ahead
            ]
            return backend.delete_buckets(buckets)

        return self._call(delete)

    def live(
        self, group: str | None = None, key_substring: str | None = None
    ) -> list[tuple[BucketKey, int]]:
        """Every counter in the cache (of ``group``, with keys containing ``key_substring``).

        Sorted by bucket. Keys longer than MAX_COMPONENT escaped characters are
        stored hashed and listed as ``=`` and 40 hex digits. Empty when the
        backend cannot list keys (see ``can_enumerate``).
        """

        def scan(backend: _Backend) -> list[tuple[BucketKey, int]]:
            if isinstance(backend, _RedisBackend):
                return sorted(backend.live(group, key_substring))
            return []

        return self._call(scan)

    # -- plumbing ----------------------------------------------------------------------

    def _call(self, operation: Callable[[_Backend], T]) -> T:
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

    def _connect(self) -> _Backend:
        with self._lock:
            if self._backend is not None:
                return self._backend
            # Our own instance, not the thread- or context-local caches[alias]:
            # under ASGI that would build a new pool (new connections) per request.
            if self.alias not in caches.settings:
                raise InvalidCacheBackendError(f"there is no {self.alias!r} in CACHES")
            cache = caches.create_connection(self.alias)
            kind = backend_kind(type(cache))
            backend: _Backend
            if kind == DJANGO_REDIS:
                backend = _RedisBackend(cache, cache.client.get_client(write=True))  # type: ignore[attr-defined]
            elif kind == DJANGO_BUILTIN_REDIS:
                backend = _RedisBackend(cache, cache._cache.get_client(None, write=True))  # type: ignore[attr-defined]
            else:
                backend = _CacheBackend(self.alias)
            self._kind = kind
            self._backend = backend
            return backend

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


def _iter_chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for offset in range(0, len(items), size):
        yield items[offset : offset + size]
