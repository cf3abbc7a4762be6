"""How many hits a request counts for: ``cost=N`` or a callable ``(group, request) -> int``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest

from .exceptions import ConfigurationError
from .loading import import_callable
from .logutil import log_throttled

MAX_COST = 10**6


class InvalidCost(ConfigurationError):
    """A cost that is not a positive integer, a callable or a dotted path to one."""


def _check_int(value: Any, where: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COST:
        raise InvalidCost(f"cost {where!r} must be an integer from 1 to {MAX_COST}")
    return value


def compile_cost(spec: object) -> int | Callable[[str, HttpRequest], Any]:
    """Validate a cost at decoration or startup; return the int or the callable."""
    if callable(spec):
        return spec
    if isinstance(spec, str):
        return import_callable(spec, "cost", InvalidCost)
    return _check_int(spec, spec)


def resolve_cost(
    cost: int | Callable[[str, HttpRequest], Any], group: str, request: HttpRequest
) -> int:
    """The cost of this request; a cost callable that fails counts the request once."""
    if isinstance(cost, int):
        return cost
    try:
        return _check_int(cost(group, request), getattr(cost, "__qualname__", cost))
    except Exception:
        log_throttled(
            f"cost:{group}",
            logging.ERROR,
            "dratelimit: the cost callable of group %r failed; counting the request once",
            group,
            every=60.0,
            exc_info=True,
        )
        return 1
