"""How the strict cache counts: a Lua script on Redis, or the cache API elsewhere.

- django-redis and Django's ``RedisCache``: one Lua script on the cache's own
  redis-py client adds the cost to every window counter of the request, sets
  each counter's expiry when it has none, and reads the previous windows (for
  the sliding window), all in one atomic round trip. Neither backend's
  ``incr()`` is used: Django's runs ``EXISTS`` then ``INCRBY``, so a counter
  that expires in between is re-created without an expiry and never ends.
- Anything else (memcached): ``incr()``, and ``add(key, cost, timeout)`` when
  the counter is missing. Both are atomic in memcached, the expiry is set by
  the ``add`` that creates the counter, and the common case is one round trip.

Both implement :class:`StrictBackend`; :func:`connect` picks one for a cache alias.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any, Protocol

from django.core.cache import InvalidCacheBackendError, caches
from django.core.cache.backends.base import BaseCache

from ..local.algorithms import window_start
from ..local.chunks import chunks
from ..local.scopes import scoped_key, window_offset
from ..local.store import BucketKey
from .cache_keys import (
    PREFIX,
    SCOPE_MARK,
    cache_key,
    component,
    escape,
    glob_escape,
    parse_cache_key,
)
from .kinds import DJANGO_BUILTIN_REDIS, DJANGO_REDIS, backend_kind

# Clocks of the app servers differ a little: a counter outlives its window by this much.
EXPIRY_GRACE = 1.0
# Keys per SCAN step, DEL and MGET.
CHUNK = 500

# KEYS: the current window counters, then the previous windows to read.
# ARGV: the cost, the number of current counters n, then one expiry (ms) per counter.
# A counter gets its expiry when it has none, so a later hit never extends it.
HIT_SCRIPT = """
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
HIT_SHA = hashlib.sha1(HIT_SCRIPT.encode()).hexdigest()

Scope = tuple[int, int, str]  # a decorator's limit, period and methods


class StrictUnsupported(NotImplementedError):
    """The strict cache's backend cannot do this (list or delete keys by pattern)."""


class StrictBackend(Protocol):
    """What the strict counter needs of a cache; every call may raise the client's errors."""

    can_enumerate: bool  # whether live() and a whole group's delete() work

    def hit(
        self,
        bucket_keys: Sequence[BucketKey],
        cost: int,
        expires_in: Sequence[float],
        previous_keys: Sequence[BucketKey],
    ) -> list[int]:
        """Add ``cost`` to each bucket, then read each previous one: the totals, in order."""

    def read(self, bucket_keys: Sequence[BucketKey]) -> list[int]:
        """The buckets' totals (0 for a missing one)."""

    def delete(
        self,
        group: str,
        key: str | None,
        periods: Sequence[int],
        scopes: Sequence[Scope],
        now: float,
    ) -> int:
        """Delete ``key``'s counters in ``group`` (every key's when None); return how many."""

    def live(self, group: str | None, key_substring: str | None) -> list[tuple[BucketKey, int]]:
        """Every counter of ``group`` (or all) whose key contains ``key_substring``, sorted.

        Empty when the cache cannot list its keys (``can_enumerate`` is False).
        """


def connect(alias: str) -> tuple[str, StrictBackend]:
    """The kind of cache ``alias`` and a backend counting in it."""
    # Our own instance, not the thread- or context-local caches[alias]:
    # under ASGI that would build a new pool (new connections) per request.
    if alias not in caches.settings:
        raise InvalidCacheBackendError(f"there is no {alias!r} in CACHES")
    cache = caches.create_connection(alias)
    kind = backend_kind(type(cache))
    if kind == DJANGO_REDIS:
        return kind, RedisBackend(cache, cache.client.get_client(write=True))  # type: ignore[attr-defined]
    if kind == DJANGO_BUILTIN_REDIS:
        # Django's RedisCache keeps its client in _cache; it has no public accessor.
        return kind, RedisBackend(cache, cache._cache.get_client(None, write=True))  # type: ignore[attr-defined]
    return kind, CacheBackend(alias)


def ttl_ms(expires_in: float) -> int:
    return max(1, math.ceil((expires_in + EXPIRY_GRACE) * 1000))


def ttl_seconds(expires_in: float) -> int:
    return max(1, math.ceil(expires_in + EXPIRY_GRACE))


class RedisBackend:
    """Counts with a Lua script on the cache's redis-py client (django-redis or Django's)."""

    can_enumerate = True

    def __init__(self, cache: BaseCache, client: Any) -> None:
        from redis.exceptions import NoScriptError

        self.cache = cache
        self.client = client
        self.no_script = NoScriptError

    def key(self, bucket_key: BucketKey) -> str:
        # The cache's KEY_PREFIX, VERSION and KEY_FUNCTION apply, as for any cache key.
        return str(self.cache.make_key(cache_key(bucket_key)))

    def pattern(self, pattern: str) -> str:
        prefix = glob_escape(self.cache.key_prefix)
        version = glob_escape(str(self.cache.version))
        return str(self.cache.key_func(pattern, prefix, version))

    def hit(
        self,
        bucket_keys: Sequence[BucketKey],
        cost: int,
        expires_in: Sequence[float],
        previous_keys: Sequence[BucketKey],
    ) -> list[int]:
        keys = [self.key(b) for b in bucket_keys] + [self.key(b) for b in previous_keys]
        args = [cost, len(bucket_keys), *(ttl_ms(e) for e in expires_in)]
        try:
            result = self.client.evalsha(HIT_SHA, len(keys), *keys, *args)
        except self.no_script:
            # First use on this server (or after a restart): EVAL also caches the script.
            result = self.client.eval(HIT_SCRIPT, len(keys), *keys, *args)
        return [int(value) for value in result]

    def read(self, bucket_keys: Sequence[BucketKey]) -> list[int]:
        values = self.client.mget([self.key(b) for b in bucket_keys])
        return [int(value) if value is not None else 0 for value in values]

    def delete(
        self,
        group: str,
        key: str | None,
        periods: Sequence[int],
        scopes: Sequence[Scope],
        now: float,
    ) -> int:
        # SCAN finds every window and scope, so periods, scopes and now are not needed.
        # A key's scoped variants ("k [5/60s GET]") escape to the key, then "%20%5B".
        middles = ["*"] if key is None else [component(key), component(key) + SCOPE_MARK]
        deleted = 0
        for middle in middles:
            pattern = self.pattern(f"{PREFIX}:{component(group)}:{middle}:*")
            for batch in chunks(self.client.scan_iter(match=pattern, count=CHUNK), CHUNK):
                if batch:
                    deleted += int(self.client.delete(*batch))
        return deleted

    def live(self, group: str | None, key_substring: str | None) -> list[tuple[BucketKey, int]]:
        # A superset: the escaped substring may also match across an escape.
        middle = f"*{escape(key_substring)}*" if key_substring else "*"
        first = "*" if group is None else component(group)
        pattern = self.pattern(f"{PREFIX}:{first}:{middle}:*")
        found: list[tuple[BucketKey, int]] = []
        for batch in chunks(self.client.scan_iter(match=pattern, count=CHUNK), CHUNK):
            if not batch:
                continue  # nothing matched
            for raw, value in zip(batch, self.client.mget(batch), strict=True):
                bucket = parse_cache_key(raw.decode("utf-8", "replace"))
                if value is None or bucket is None:
                    continue  # expired since the scan, or not one of ours
                if group is not None:
                    bucket = (group, *bucket[1:])  # the pattern matched it; un-hash it
                if key_substring and key_substring not in bucket[1]:
                    continue
                found.append((bucket, int(value)))
        return sorted(found)


class CacheBackend:
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
            self.add(cache, cache_key(b), cost, ttl_seconds(e))
            for b, e in zip(bucket_keys, expires_in, strict=True)
        ]
        return totals + self.read(previous_keys) if previous_keys else totals

    @staticmethod
    def add(cache: BaseCache, key: str, cost: int, timeout: int) -> int:
        """``incr``, or ``add`` when there is no counter yet: the new total."""
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

    def delete(
        self,
        group: str,
        key: str | None,
        periods: Sequence[int],
        scopes: Sequence[Scope],
        now: float,
    ) -> int:
        # No listing: delete the windows around now of each period and scope,
        # epoch-aligned and staggered.
        if key is None:
            raise StrictUnsupported(
                f"cache {self.alias!r} cannot list its keys, so a whole group cannot be "
                "reset: reset each key, or use django-redis for STRICT_CACHE"
            )
        if not periods and not scopes:
            raise StrictUnsupported(
                f"cache {self.alias!r} cannot list its keys: give the rule's periods"
            )
        stored = [(key, period) for period in periods]
        stored += [(scoped_key(key, lim, period, sc), period) for lim, period, sc in scopes]
        keys = [
            cache_key((group, name, period, window_start(now, period, offset) + shift))
            for name, period in stored
            for offset in {0, window_offset(group, key, period)}
            for shift in (-period, 0, period)  # the previous window, a peer's clock ahead
        ]
        cache = self.cache
        existing = cache.get_many(keys)
        cache.delete_many(keys)
        return len(existing)

    def live(self, group: str | None, key_substring: str | None) -> list[tuple[BucketKey, int]]:
        return []  # memcached cannot list its keys
