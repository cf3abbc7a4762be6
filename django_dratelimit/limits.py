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
from .conf import conf
from .costs import compile_cost, resolve_cost
from .decisions import count as count_decision
from .keys import KeyFunc, compile_key, resolve_key
from .local.algorithms import EVENTUAL, FIXED_WINDOW, SLIDING_WINDOW, window_start
from .local.scopes import DJANGO_RATELIMIT_ALL, method_scope, scoped_key, window_offset
from .process import get_limiter
from .rates import Rate, is_dynamic, parse_rate, resolve_rate
from .usage import Usage

Method = str | Sequence[str] | None


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
        "_rates",
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
        self.key, self.rate, self.cost = key, rate, cost
        self.algorithm, self.consistency, self.block = algorithm, consistency, block
        self.methods = method_set(method)
        # Counted apart per methods, as django-ratelimit does (scopes.py).
        self.scope = method_scope(method)
        self._key_func: KeyFunc | None = None if is_path(key) else compile_key(key)
        # None for a dynamic rate: resolved per request.
        self._rates: tuple[Rate, ...] | None = None
        if not is_dynamic(rate):
            self._rates = parse_rate(rate) or ()  # (): rate None, no limit
        # One static rate counted in a window: the request path finds the window
        # itself (the stored key's scope is the same for every request).
        self._window: tuple[Rate, str] | None = None
        if self._rates is not None and len(self._rates) == 1 and consistency == EVENTUAL:
            rate = self._rates[0]
            self._window = (rate, scoped_key("", rate.limit, rate.period, self.scope))

    def usage(self, request: HttpRequest, count: bool = True) -> Usage | None:
        """The usage on this request, counting the cost if ``count``; None if no limit applies.

        None means: limiting is disabled, the method does not match, the rate is
        None, or the key has no value for this request (see ``keys``). The cost
        is only resolved (a cost callable only called) once the limit applies.
        """
        if not conf.ENABLED:
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
        key_func = self._key_func
        if key_func is None:
            key_func = self._key_func = compile_key(self.key)
        value = resolve_key(key_func, self.group, request)
        if value is None:
            return None
        cost = self._cost(request) if count else 0
        limiter = get_limiter()
        algorithm = self.algorithm or limiter.algorithm
        window = self._window
        if window is not None and algorithm in _WINDOWS and limiter.sync_checked:
            # What check() -> bucket() does, with the scope's part of the key made once.
            rate, scope_suffix = window
            group, period = self.group, rate.period
            offset = window_offset(group, value, period) if conf.STAGGER_WINDOWS else 0
            now = limiter.clock()
            start = window_start(now, period, offset)
            stored = value + scope_suffix  # == scoped_key(value, limit, period, scope)
            usage = limiter.count_window(
                group, value, stored, start, rate, algorithm, cost, self.name, now
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
                stagger=conf.STAGGER_WINDOWS,
            )
        if cost:  # a peek (cost 0) decides nothing
            count_decision(self.name or self.group, usage.should_limit)
        return usage

    def _cost(self, request: HttpRequest) -> int:
        cost = self.cost
        if cost.__class__ is int:
            return cost
        if isinstance(cost, str):
            cost = self.cost = compile_cost(cost)  # a dotted path: imported once
        return resolve_cost(cost, self.group, request)


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
