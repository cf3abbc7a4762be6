"""One limit, compiled once: a decorator's, a rule's or an ``is_ratelimited`` call's arguments.

``@ratelimit``, ``get_usage``/``is_ratelimited`` and each of ``RULES`` build a
:class:`Limit` when they are declared (``is_ratelimited`` once per distinct set
of arguments), and every request then runs the same steps: enabled? the
method? the rate, the key, only then the cost, and the limiter's decision.
Nothing is validated or parsed again per request.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from django.http import HttpRequest

from .choices import validate_choice
from .conf import conf, on_clear
from .costs import compile_cost, resolve_cost
from .decisions import count as count_decision
from .keys import KeyFunc, request_key
from .local.algorithms import EVENTUAL, FIXED_WINDOW, SLIDING_WINDOW, window_edges
from .local.scopes import DJANGO_RATELIMIT_ALL, method_scope, scoped_key, window_offset
from .process import get_limiter
from .rates import Rate, is_dynamic, parse_rate, resolve_rate
from .usage import Usage

Method = str | Sequence[str] | None
# What a window limit knows of a key: (the key as stored, its window offset, and its
# window: the start, then the start and end as floats; see window_edges).
KnownWindow = tuple[str, int, int, float, float]


def is_path(spec: object) -> bool:
    """A dotted path (imported on the first request), not a key type such as ``get:q``."""
    return isinstance(spec, str) and ":" not in spec and "." in spec


def method_set(method: Method) -> frozenset[str] | None:
    """The upper-cased methods a limit applies to; None for all of them."""
    if method is None or method == DJANGO_RATELIMIT_ALL:
        return None
    names = [method] if isinstance(method, str) else list(method)
    return frozenset(str(name).upper() for name in names)


_WINDOWS = frozenset((FIXED_WINDOW, SLIDING_WINDOW))


class Limit:
    """A rate -> key -> cost -> decision pipeline with its arguments already checked.

    Raises ConfigurationError (ImproperlyConfigured) for arguments that are wrong
    whatever the request. Dotted paths for the key and the cost are imported on
    the first request, so a views module may name a function it defines below.
    """

    __slots__ = (
        "_key_func",
        "_policy",
        "_rates",
        "_stored",
        "_stored_under",
        "_window",
        "algorithm",
        "block",
        "consistency",
        "cost",
        "group",
        "key",
        "methods",
        "name",
        "rate",
        "scope",
    )

    def __init__(
        self,
        group: str,
        key: Any,
        rate: Any,
        *,
        method: Method = None,
        cost: Any = 1,
        algorithm: str | None = None,
        consistency: str = EVENTUAL,
        block: bool = True,
        name: str = "",
    ) -> None:
        validate_choice(algorithm, consistency)
        self.group, self.name = group, name
        self._policy = name or group  # what the decision metrics count under
        self.key, self.rate, self.cost = key, rate, cost
        self.algorithm, self.consistency, self.block = algorithm, consistency, block
        self.methods = method_set(method)
        # Counted apart per methods, as django-ratelimit does (scopes.py).
        self.scope = method_scope(method)
        self._key_func: KeyFunc | None = None if is_path(key) else request_key(key)
        # None for a dynamic rate: resolved per request.
        self._rates: tuple[Rate, ...] | None = None
        if not is_dynamic(rate):
            self._rates = parse_rate(rate) or ()  # (): rate None, no limit
        # One static rate counted in a window: the request path finds the window
        # itself (the stored key's scope is the same for every request).
        self._window: tuple[Rate, int, str] | None = None
        if self._rates is not None and len(self._rates) == 1 and consistency == EVENTUAL:
            rate = self._rates[0]
            suffix = scoped_key("", rate.limit, rate.period, self.scope)
            self._window = (rate, rate.period, suffix)
        # key value -> what a window limit knows of it (KnownWindow): a lookup and two
        # float comparisons cost less than a CRC-32, a new string and a window_start()
        # per request.
        self._stored: dict[str, KnownWindow] = {}
        self._stored_under: tuple[bool, bool] | None = None  # the settings they were made with

    def usage(self, request: HttpRequest, count: bool = True) -> Usage | None:
        """The usage on this request, counting the cost if ``count``; None if no limit applies.

        None means: limiting is disabled, the method does not match, the rate is
        None, or the key has no value for this request (see ``keys``). The cost
        is only resolved (a cost callable only called) once the limit applies.
        """
        # Every request of every limited view runs this: each step is measured
        # (bench/bench_local.py), locals over attribute chains, positional calls.
        settings = _settings or _read_settings()
        enabled, stagger = settings
        if not enabled:
            return None
        methods = self.methods
        if methods is not None and request.method not in methods:
            return None
        rates = self._rates
        if rates is None:
            rates = resolve_rate(self.rate, self.group, request)
            if rates is None:
                return None
        elif not rates:
            return None
        value = (self._key_func or self._compile_key())(self.group, request)
        if value is None:
            return None
        if not count:
            cost = 0
        else:
            cost = self.cost
            if cost.__class__ is not int:
                cost = self._resolve_cost(request)
        limiter = get_limiter()
        algorithm = self.algorithm or limiter.algorithm
        window = self._window
        if window is not None and algorithm in _WINDOWS and limiter.sync_checked:
            # What check() -> bucket() does, from what this limit knows of the key.
            now = limiter.clock()
            # None after a settings change too: STAGGER_WINDOWS may have changed.
            known = self._stored.get(value) if self._stored_under is settings else None
            if known is None or not known[3] <= now < known[4]:
                known = self._know(value, now, settings)
            usage = limiter.count_window(
                self.group,
                value,
                known[0],
                known[2],
                known[4],
                window[0],
                algorithm,
                cost,
                self.name,
                now,
            )
        else:
            usage = limiter.check(
                self.group,
                value,
                rates,
                algorithm,
                cost,
                self.name,
                self.consistency,
                scope=self.scope,
                stagger=stagger,
            )
        if cost:  # a peek (cost 0) decides nothing
            count_decision(self._policy, usage.should_limit)
        return usage

    def _compile_key(self) -> KeyFunc:
        key_func = self._key_func = request_key(self.key)  # a dotted path: imported once
        return key_func

    def _know(self, value: str, now: float, settings: tuple[bool, bool]) -> KnownWindow:
        """What a window limit keeps of a key: its stored key, offset and current window."""
        stored = self._stored
        if self._stored_under is not settings:
            stored.clear()
            self._stored_under = settings
        _rate, period, suffix = self._window  # type: ignore[misc]  # a window limit's
        known = stored.get(value)
        if known is not None:
            key, offset = known[0], known[1]
        else:
            if len(stored) >= MAX_STORED_KEYS:
                stored.clear()  # bounded: a crawler's many addresses would grow it without end
            # scoped_key(value, limit, period, scope), and the offset for STAGGER_WINDOWS.
            key, offset = value + suffix, window_offset(self.group, value, period)
        window = window_edges(now, period, offset if settings[1] else 0)
        known = stored[value] = (key, offset, *window)
        return known

    def _resolve_cost(self, request: HttpRequest) -> int:
        cost = self.cost
        if isinstance(cost, str):
            cost = self.cost = compile_cost(cost)  # a dotted path: imported once
        return resolve_cost(cost, self.group, request)


MAX_STORED_KEYS = 1024  # per limit: ~300 kB at most
# (ENABLED, STAGGER_WINDOWS), read once per settings change rather than per request.
_settings: tuple[bool, bool] | None = None


def _read_settings() -> tuple[bool, bool]:
    global _settings
    _settings = (conf.ENABLED, conf.STAGGER_WINDOWS)
    return _settings


def _forget_settings() -> None:
    global _settings
    _settings = None


on_clear(_forget_settings)


def compiled_limit(*args: Any) -> Limit:
    """The Limit of one ``is_ratelimited``/``get_usage`` call, compiled once per arguments.

    ``args``: group, key, rate, method, cost, algorithm, consistency, name.
    """
    try:
        return _cached_limit(*args)
    except TypeError:  # unhashable arguments (a list of methods): compile for this call
        return _limit_of(*args)


def _limit_of(
    group: str,
    key: Any,
    rate: Any,
    method: Method,
    cost: Any,
    algorithm: str | None,
    consistency: str,
    name: str,
) -> Limit:
    return Limit(
        group,
        key,
        rate,
        method=method,
        cost=cost,
        algorithm=algorithm,
        consistency=consistency,
        name=name,
    )


# Bounded: a group or a key callable made per call (a lambda) would grow it without end.
_cached_limit = functools.lru_cache(maxsize=1024)(_limit_of)
