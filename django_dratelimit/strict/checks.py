"""System checks for strict mode: the strict cache must be shared, atomic and quick to fail."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.utils.module_loading import import_string

from ..conf import DEFAULTS
from .counter import STRICT_ALGORITHMS
from .kinds import DJANGO_BUILTIN_REDIS, DJANGO_REDIS, NOT_SHARED, OTHER, backend_kind

# The longest a request under a strict rule should wait for an unreachable Redis.
MAX_TIMEOUT = 1.0
RECOMMENDED = (
    "Use django_redis.cache.RedisCache (recommended), "
    "django.core.cache.backends.redis.RedisCache or a memcached backend."
)
_NOT_SHARED_WHY = {
    "LocMemCache": "local to each process",
    "DummyCache": "a cache that stores nothing",
    "FileBasedCache": "not atomic (an increment is a read, then a write)",
    "DatabaseCache": "not atomic (an increment is a read, then a write)",
}


def _error(msg: str, hint: str, id: int) -> Error:
    return Error(msg, hint=hint, id=f"dratelimit.E{id:03d}")


def _warning(msg: str, hint: str, id: int) -> Warning:
    return Warning(msg, hint=hint, id=f"dratelimit.W{id:03d}")


def check_strict_cache(strict_rules_exist: bool) -> list[CheckMessage]:
    """Check DRATELIMIT['STRICT_CACHE'] when some rule or view counts strictly."""
    if not strict_rules_exist:
        return []
    raw = getattr(settings, "DRATELIMIT", {})
    alias = (raw if isinstance(raw, dict) else {}).get("STRICT_CACHE", DEFAULTS["STRICT_CACHE"])
    configured = getattr(settings, "CACHES", {}) or {}
    if not isinstance(alias, str) or alias not in configured:
        return [
            _error(
                f"DRATELIMIT['STRICT_CACHE'] = {alias!r} is not an alias in CACHES, so strict "
                "rules have nowhere to count.",
                "Add a django-redis cache to CACHES and name it in DRATELIMIT['STRICT_CACHE'].",
                30,
            )
        ]
    config = configured[alias] if isinstance(configured[alias], dict) else {}
    path: Any = config.get("BACKEND")
    try:
        backend = import_string(path)
        kind = backend_kind(backend)
    except Exception as exc:
        return [
            _error(
                f"CACHES[{alias!r}]['BACKEND'] = {path!r} does not import: {exc}.",
                "Strict rules count in DRATELIMIT['STRICT_CACHE']: make it a working cache.",
                33,
            )
        ]
    if kind == NOT_SHARED:
        why = next(
            (text for name, text in _NOT_SHARED_WHY.items() if _inherits(backend, name)),
            "not shared or not atomic",
        )
        return [
            _error(
                f"CACHES[{alias!r}] uses {backend.__name__}, which is {why}: strict rules "
                "would not count exactly across processes.",
                RECOMMENDED,
                31,
            )
        ]
    if kind == OTHER:
        return [
            _warning(
                f"CACHES[{alias!r}] uses {path}, which strict mode does not know: it counts "
                "with incr() and add(), exact only if both are atomic and every process "
                "shares the cache.",
                f"{RECOMMENDED} Or silence dratelimit.W031 if this backend is shared and atomic.",
                31,
            )
        ]
    options = config.get("OPTIONS") or {}
    location = config.get("LOCATION") or []
    urls = re.split("[;,]", location) if isinstance(location, str) else list(location)
    if kind == DJANGO_REDIS:
        errors: list[CheckMessage] = []
        client = options.get("CLIENT_CLASS", "django_redis.client.DefaultClient")
        if _is_shard_client(client):
            errors.append(
                _error(
                    f"CACHES[{alias!r}] uses django-redis's ShardClient, which strict mode "
                    "does not support: a request's counters may live on different servers "
                    "and it has no raw client to run the counting script on.",
                    "Use django_redis.client.DefaultClient (or SentinelClient) for "
                    "DRATELIMIT['STRICT_CACHE'].",
                    32,
                )
            )
        names = ("SOCKET_CONNECT_TIMEOUT", "SOCKET_TIMEOUT")
        return errors + _check_timeouts(alias, options, names, urls)
    if kind == DJANGO_BUILTIN_REDIS:
        names = ("socket_connect_timeout", "socket_timeout")
        return _check_timeouts(alias, options, names, urls)
    return []  # memcached: add() and incr() are atomic


def check_strict_algorithm(where: str, algorithm: str) -> list[CheckMessage]:
    """A strict rule (``where`` names it) must count windows: E034 otherwise."""
    if algorithm in STRICT_ALGORITHMS:
        return []
    return [
        _error(
            f"{where}: consistency 'strict' works with {' and '.join(STRICT_ALGORITHMS)} "
            f"only, not {algorithm!r}.",
            "Use a window algorithm for this rule, or the default consistency 'eventual'.",
            34,
        )
    ]


def _inherits(backend: type[Any], name: str) -> bool:
    return any(base.__name__ == name for base in backend.__mro__)


def _is_shard_client(client: Any) -> bool:
    try:
        from django_redis.client import ShardClient

        loaded = import_string(client) if isinstance(client, str) else client
        return isinstance(loaded, type) and issubclass(loaded, ShardClient)
    except Exception:
        return False  # django-redis reports a bad CLIENT_CLASS itself


def _check_timeouts(
    alias: str, options: dict[str, Any], names: tuple[str, str], urls: list[str]
) -> list[CheckMessage]:
    """Warn unless both socket timeouts are set and short (redis-py waits 5 s by default)."""
    for name in names:
        value: Any = options.get(name)
        if value is None:
            # Both backends also take them as URL parameters (redis-py's from_url).
            found = [parse_qs(urlsplit(url).query).get(name.lower()) for url in urls]
            values = [v[0] for v in found if v]
            value = values[0] if values and len(values) == len(urls) else None
        try:
            ok = value is not None and not isinstance(value, bool) and 0 < float(value) <= 1.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            example = ", ".join(f'"{n}": 0.2' for n in names)
            return [
                _warning(
                    f"CACHES[{alias!r}] has no short {name} (at most {MAX_TIMEOUT:g} s): when "
                    "Redis is unreachable or hangs, every request under a strict rule waits "
                    "for it, up to redis-py's default of 5 s.",
                    f'Set "OPTIONS": {{{example}}} in CACHES[{alias!r}].',
                    30,
                )
            ]
    return []
