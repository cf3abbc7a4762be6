"""Django REST framework throttles that count through this app's limiter.

Named like DRF's own, so switching is one line::

    REST_FRAMEWORK = {
        "DEFAULT_THROTTLE_CLASSES": [
            "django_dratelimit.drf.AnonRateThrottle",
            "django_dratelimit.drf.UserRateThrottle",
        ],
        "DEFAULT_THROTTLE_RATES": {"anon": "100/day", "user": "1000/day"},
    }

DRF's own throttles keep a request history per client in a cache: per process
on LocMemCache, and racy on a shared one. These count in the process's memory,
synced across the cluster (``consistency = "strict"`` counts exactly in
``STRICT_CACHE``). Only this module imports ``rest_framework``: install the
``[drf]`` extra to use it.
"""

from __future__ import annotations

import functools
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

from .choices import validate_choice
from .conf import conf
from .decisions import count as count_decision
from .decorators import record
from .keys import normalize
from .local.algorithms import EVENTUAL, STRICT
from .process import get_limiter
from .rates import Rate, parse_rate, parse_rate_string
from .registry import register
from .usage import Usage

__all__ = ["AnonRateThrottle", "ScopedRateThrottle", "SimpleRateThrottle", "UserRateThrottle"]


# DRF ships no type hints: BaseThrottle is Any to mypy. Subclassing it keeps
# get_ident() exactly DRF's (NUM_PROXIES, X-Forwarded-For) and isinstance() true.
class SimpleRateThrottle(BaseThrottle):  # type: ignore[misc]
    """DRF's ``SimpleRateThrottle``: override ``get_cache_key`` to say whom to count.

    ``rate`` (or ``scope``, looked up in ``DEFAULT_THROTTLE_RATES``) says how
    many; the counters are this app's, grouped under the scope (the policy
    name in the RateLimit headers), keyed by what ``get_cache_key`` returns.
    """

    scope: str | None = None
    rate: str | None = None
    # None: REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], read when the throttle is
    # made (DRF binds it at import, which override_settings cannot reach).
    THROTTLE_RATES: dict[str, str | None] | None = None
    cache_format = "throttle_%(scope)s_%(ident)s"
    consistency: str = EVENTUAL
    algorithm: str | None = None  # None: DRATELIMIT["ALGORITHM"]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # DRF makes a throttle per request: a typo here would be a 500 on every one.
        validate_choice(cls.algorithm, cls.consistency)
        rate = cls.__dict__.get("rate")
        if isinstance(rate, str) and cls.parse_rate is SimpleRateThrottle.parse_rate:
            _parse(rate)

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.key: str | None = None
        if not getattr(self, "rate", None):
            self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        """Whom to count this request for; None: do not throttle it."""
        raise NotImplementedError(".get_cache_key() must be overridden")

    def get_rate(self) -> str | None:
        if not getattr(self, "scope", None):
            raise ImproperlyConfigured(
                f"You must set either `.scope` or `.rate` for '{type(self).__name__}' throttle"
            )
        rates = self.THROTTLE_RATES
        if rates is None:
            rates = api_settings.DEFAULT_THROTTLE_RATES
        try:
            return rates[self.scope]  # type: ignore[index]
        except KeyError:
            raise ImproperlyConfigured(
                f"No default throttle rate set for '{self.scope}' scope"
            ) from None

    def parse_rate(self, rate: str | None) -> tuple[int | None, int | None]:
        """``(requests, seconds)``, as DRF returns it; DRF's words and ours both parse.

        An override that returns another pair (DRF's docs show one for
        ``"5/10m"``) is what gets counted.
        """
        if rate is None:
            return (None, None)
        parsed = _parse(rate)
        return (parsed.limit, parsed.period)

    def get_group(self) -> str:
        """The counters' group and the policy name: the scope, else the class's path."""
        if self.scope:
            return str(self.scope)
        return f"{type(self).__module__}.{type(self).__qualname__}"

    def allow_request(self, request: Request, view: Any) -> bool:
        if not conf.ENABLED or self.rate is None or self.num_requests is None:
            return True
        key = normalize(self.get_cache_key(request, view))
        if key is None:
            return True
        self.key = key
        group = self.get_group()
        rates = _rates(self.num_requests, self.duration or 0)  # 0: an error, as for any rate
        register(group, rates[0], strict=self.consistency == STRICT)  # inspect, reset
        limiter = get_limiter()
        usage = limiter.check(
            group, key, rates, self.algorithm or limiter.algorithm, 1, "", self.consistency
        )
        self.usage = usage
        count_decision(group, usage.should_limit)  # dratelimit_decisions_total
        # On the Django request: RateLimitMiddleware adds the headers from it.
        record(getattr(request, "_request", request), usage)
        return not usage.should_limit

    def wait(self) -> float | None:
        """Seconds until this throttle admits again (DRF's Retry-After); None if it admitted."""
        usage = self.usage
        if usage is None or not usage.should_limit:
            return None
        return usage.time_left if usage.time_left > 0 else float(usage.retry_after)

    def _ident(self, request: Request) -> Any:
        """The user's pk when logged in, else the client address (as DRF's throttles do)."""
        user = getattr(request, "user", None)
        if user and user.is_authenticated:
            return user.pk
        return self.get_ident(request)


class AnonRateThrottle(SimpleRateThrottle):
    """Anonymous requests, by client address; logged-in users are not throttled."""

    scope = "anon"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        user = getattr(request, "user", None)
        if user and user.is_authenticated:
            return None
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class UserRateThrottle(SimpleRateThrottle):
    """Every request: by user pk when logged in, else by client address."""

    scope = "user"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": self._ident(request)}


class ScopedRateThrottle(SimpleRateThrottle):
    """Views with a ``throttle_scope``, each scope with its own rate; others are not throttled."""

    scope_attr = "throttle_scope"

    def __init__(self) -> None:
        # The scope, and so the rate, is only known once a view asks.
        self.usage = None
        self.key = None

    def allow_request(self, request: Request, view: Any) -> bool:
        self.scope = getattr(view, self.scope_attr, None)
        if not self.scope:
            return True
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": self._ident(request)}


def _parse(rate: str) -> Rate:
    rates = parse_rate_string(rate)
    if len(rates) != 1:
        # Several throttle classes are DRF's way (burst and sustained).
        raise ImproperlyConfigured(
            f"throttle rate {rate!r} gives {len(rates)} limits; give each its own class"
        )
    return rates[0]


@functools.lru_cache(maxsize=256)
def _rates(limit: int, period: int) -> tuple[Rate, ...]:
    # parse_rate() checks the bounds, of an overridden parse_rate's pair too.
    return parse_rate((limit, period)) or ()
