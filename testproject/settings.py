"""Settings of the demo project, tuned by environment variables.

Newcomers run it as is (``python manage.py runserver``: one process, in-memory
channel layer). The cluster tests and benchmarks start several processes with
``REDIS_URL`` set, so that they share counts through Redis.

Environment variables:

- ``DJANGO_DEBUG``: "0"/"false"/"no"/"off" turns DEBUG off (on by default).
- ``DJANGO_SECRET_KEY``: the secret key (a fixed, insecure demo key by default).
- ``REDIS_URL``: e.g. ``redis://127.0.0.1:6379/15``; enables the Redis channel
  layer and the ``redis`` cache alias.
- ``DRATELIMIT_LAYER``: with REDIS_URL, "pubsub" (the default) picks
  RedisPubSubChannelLayer and "core" channels_redis' RedisChannelLayer.
- ``DEMO_API_RATE``: the rate of the "api" rule on ``/api/`` (default "30/m").
- ``DEMO_CLUSTER_RATE``: the rate of the ``/cluster/`` endpoints (default
  "100/m"), read per request in ``testproject.cluster``, and of the DRF
  throttles' scopes on ``/cluster/drf/`` and ``/cluster/drf-strict/``.
- ``DEMO_DATABASE``: the SQLite file (default ``testproject/db.sqlite3``); the
  admin page's browser test gives its servers a database of their own.
- ``REDIS_SENTINELS`` (``host:port,host:port``) and ``REDIS_MASTER_NAME``: instead
  of REDIS_URL, find the Redis master through Sentinel, for the channel layer
  and the caches (see docs/sentinel.md).
- ``DRATELIMIT_SYNC_INTERVAL``, ``DRATELIMIT_ANTI_ENTROPY``,
  ``DRATELIMIT_STARTUP_SYNC_WAIT``: seconds, see the DRATELIMIT settings.
- ``DRATELIMIT_BUDGETS``, ``DRATELIMIT_STAGGER_WINDOWS``: "0" turns them off.
- ``DRATELIMIT_MAX_KEYS``, ``DRATELIMIT_STRICT_FAIL_OPEN``: the settings of those names
  (the fault tests flood a small store, and fail strict mode open or closed).

For ``bench/bench_http.py`` (see ``testproject.bench_views``):

- ``DEMO_BENCH_RATE``, ``DEMO_BENCH_ACC_RATE``: the rates of the ``/bench/``
  endpoints (default "1000000/m" and "100/m").
- ``DEMO_RATELIMIT_CACHE``: "redis" (needs REDIS_URL) or "locmem" installs
  django-ratelimit and points its ``RATELIMIT_USE_CACHE`` at that cache.
- ``DEMO_STRICT_CACHE``: "redis" (needs REDIS_URL) adds a django-redis cache
  ``strict`` for strict mode's ``STRICT_CACHE`` and enables ``/bench/strict/``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return float(value)


SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "django-insecure-demo-only-never-use-this-key-in-production"
)
DEBUG = env_bool("DJANGO_DEBUG", True)
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",  # /admin/django_dratelimit/livecounters/: the live counters
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_dratelimit",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # After auth, so that the "user" and "user_or_ip" keys see request.user.
    "django_dratelimit.middleware.RateLimitMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "testproject.urls"
WSGI_APPLICATION = "testproject.wsgi.application"
ASGI_APPLICATION = "testproject.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# A file database: the login page (for the "user_or_ip" key example) needs users.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DEMO_DATABASE") or BASE_DIR / "db.sqlite3",
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

REDIS_URL = os.environ.get("REDIS_URL", "")
REDIS_MASTER_NAME = os.environ.get("REDIS_MASTER_NAME", "")
REDIS_SENTINELS = [
    (host, int(port))
    for host, _, port in (
        item.strip().rpartition(":") for item in os.environ.get("REDIS_SENTINELS", "").split(",")
    )
    if host
]
if REDIS_SENTINELS and not REDIS_MASTER_NAME:
    raise ValueError("REDIS_SENTINELS needs REDIS_MASTER_NAME (the name Sentinel monitors)")

CHANNEL_LAYERS: dict[str, dict[str, Any]]
if REDIS_URL or REDIS_SENTINELS:
    # redis-py's default 5 s socket timeout equals RedisChannelLayer's blocking
    # pop: an idle receive would time out every 5 s.
    _redis_host: dict[str, Any] = {"address": REDIS_URL, "socket_timeout": 10}
    if REDIS_SENTINELS:
        # channels_redis asks the sentinels for the master at every (re)connect.
        _redis_host = {
            "master_name": REDIS_MASTER_NAME,
            "sentinels": REDIS_SENTINELS,
            "socket_timeout": 10,
        }
    # The pub/sub layer is the cheaper one (one PUBLISH per sync message; see
    # README, Benchmarks), in django_dratelimit's subclass that does not poll while
    # idle; "stock" picks channels_redis' own, "core" picks RedisChannelLayer.
    _layer = os.environ.get("DRATELIMIT_LAYER", "pubsub")
    if _layer != "core":
        _backend = (
            "channels_redis.pubsub.RedisPubSubChannelLayer"
            if _layer == "stock"
            else "django_dratelimit.layers.RedisPubSubChannelLayer"
        )
        CHANNEL_LAYERS = {"default": {"BACKEND": _backend, "CONFIG": {"hosts": [_redis_host]}}}
    else:
        CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                # capacity: the default 100 silently drops sync messages under load;
                # group_expiry: stale members of killed test processes go away quickly
                # (live ones re-join on every anti-entropy round).
                "CONFIG": {"hosts": [_redis_host], "capacity": 1000, "group_expiry": 30},
            }
        }
else:
    # One process: limiting works, nothing is shared (the sync thread is not started).
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CACHES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}
# django-redis through Sentinel: LOCATION names the master, as Sentinel knows it.
_cache_location = f"redis://{REDIS_MASTER_NAME}/0" if REDIS_SENTINELS else REDIS_URL
_sentinel_options: dict[str, Any] = (
    {
        "CLIENT_CLASS": "django_redis.client.SentinelClient",
        "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
        "SENTINELS": REDIS_SENTINELS,
    }
    if REDIS_SENTINELS
    else {}
)
if _cache_location:
    # Not used by the demo pages: the benchmarks compare against a Redis cache.
    CACHES["redis"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": _cache_location,
        "OPTIONS": dict(_sentinel_options),
    }

DRATELIMIT = {
    "RULES": [
        {
            "name": "api",
            "path": r"^/api/",
            "key": "ip",
            "rate": os.environ.get("DEMO_API_RATE", "30/m"),
        },
    ],
    "SYNC_INTERVAL": env_float("DRATELIMIT_SYNC_INTERVAL", 0.05),
    "ANTI_ENTROPY_INTERVAL": env_float("DRATELIMIT_ANTI_ENTROPY", 5.0),
    "STARTUP_SYNC_WAIT": env_float("DRATELIMIT_STARTUP_SYNC_WAIT", 0.0),
    "BUDGETS": env_bool("DRATELIMIT_BUDGETS", True),
    "STAGGER_WINDOWS": env_bool("DRATELIMIT_STAGGER_WINDOWS", True),
    "MAX_KEYS": int(env_float("DRATELIMIT_MAX_KEYS", 100_000)),
    "STRICT_FAIL_OPEN": env_bool("DRATELIMIT_STRICT_FAIL_OPEN", False),
}

# DRF (testproject.drf_views, when installed): our throttles, by the one-line switch.
REST_FRAMEWORK = {
    "DEFAULT_THROTTLE_CLASSES": ["django_dratelimit.drf.ScopedRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "cluster-drf": os.environ.get("DEMO_CLUSTER_RATE", "100/m"),
        "cluster-drf-strict": os.environ.get("DEMO_CLUSTER_RATE", "100/m"),
    },
}

# The benchmark's django-ratelimit variants. LocMemCache is what the benchmark
# shows going wrong (per-process counts), so its system check is silenced there.
_ratelimit_cache = os.environ.get("DEMO_RATELIMIT_CACHE", "")
if _ratelimit_cache:
    INSTALLED_APPS.append("django_ratelimit")
    if _ratelimit_cache == "redis":
        RATELIMIT_USE_CACHE = "redis"
    elif _ratelimit_cache == "locmem":
        RATELIMIT_USE_CACHE = "default"
        SILENCED_SYSTEM_CHECKS = ["django_ratelimit.E003", "django_ratelimit.W001"]
    else:
        raise ValueError(f"DEMO_RATELIMIT_CACHE: 'redis' or 'locmem', not {_ratelimit_cache!r}")
if os.environ.get("DEMO_STRICT_CACHE") == "redis" and _cache_location:
    # Short timeouts: a hung Redis must not hold every strict request (dratelimit.W030).
    CACHES["strict"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": _cache_location,
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2, **_sentinel_options},
    }
    DRATELIMIT["STRICT_CACHE"] = "strict"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "loggers": {
        "django_dratelimit": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
