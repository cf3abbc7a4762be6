"""What the strict-mode tests share: the Redis cache backends, a bucket, and a CACHES entry."""

from __future__ import annotations

from typing import Any

DJANGO_REDIS = "django_redis.cache.RedisCache"
DJANGO_BUILTIN = "django.core.cache.backends.redis.RedisCache"
START = 1_699_999_980  # a minute boundary
BUCKET = ("login", "203.0.113.7", 60, START)


def redis_cache(backend: str, url: str, timeout: float = 0.2, **extra: Any) -> dict[str, Any]:
    """The CACHES entry README recommends for strict mode: short socket timeouts."""
    if backend == DJANGO_REDIS:
        options = {"SOCKET_CONNECT_TIMEOUT": timeout, "SOCKET_TIMEOUT": timeout}
    else:
        options = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    return {"BACKEND": backend, "LOCATION": url, "OPTIONS": options, **extra}
