"""Which kind of cache a backend class is, for strict mode and its system checks."""

from __future__ import annotations

from typing import Any

# Backend kinds, from the cache class.
DJANGO_REDIS = "django-redis"
DJANGO_BUILTIN_REDIS = "redis"
MEMCACHED = "memcached"
NOT_SHARED = "not-shared"  # LocMem, Dummy, FileBased, Database: errors for strict mode
OTHER = "other"


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
