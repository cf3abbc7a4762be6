"""django-ratelimit compatible functions: ``get_usage`` and ``is_ratelimited``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.http import HttpRequest

from .algorithms import validate_choice
from .conf import conf
from .decisions import count as count_decision
from .keys import resolve_key
from .limiter import get_limiter
from .rates import Rate, parse_rate_string, resolve_rate
from .usage import Usage

ALL = None
UNSAFE = ("DELETE", "PATCH", "POST", "PUT")

Method = str | Sequence[str] | None


def method_applies(method: Method, request_method: str | None) -> bool:
    if method is ALL:
        return True
    if isinstance(method, str):
        return request_method == method.upper()
    return request_method in {m.upper() for m in method}


def default_group(fn: Callable[..., Any]) -> str:
    """The view's dotted path, as django-ratelimit names groups."""
    return f"{fn.__module__}.{fn.__qualname__}"


def get_usage(
    request: HttpRequest,
    group: str | None = None,
    fn: Callable[..., Any] | None = None,
    key: Any = None,
    rate: Any = None,
    method: Method = ALL,
    increment: bool = False,
    *,
    algorithm: str | None = None,
    cost: int = 1,
    name: str = "",
    consistency: str = "eventual",
) -> Usage | None:
    """The usage for this request, or None when no limit applies to it.

    None means: limiting is disabled, the method does not match, the rate is
    None, or the key has no value for this request (see ``keys``).
    """
    if group is None:
        if fn is None:
            raise ImproperlyConfiguredGroup()
        group = default_group(fn)
    if key is None:
        raise TypeError("get_usage() needs a key, e.g. key='ip'")
    validate_choice(algorithm, consistency)
    if not conf.ENABLED or not method_applies(method, request.method):
        return None
    if rate.__class__ is str and "/" in rate:  # a static rate: skip the dynamic checks
        rates: tuple[Rate, ...] | None = parse_rate_string(rate)
    else:
        rates = resolve_rate(rate, group, request)
    if rates is None:
        return None
    value = resolve_key(key, group, request)
    if value is None:
        return None
    limiter = get_limiter()
    usage = limiter.check(
        group,
        value,
        rates,
        algorithm or limiter.algorithm,
        cost if increment else 0,
        name,
        consistency,
    )
    if increment:  # a peek (increment=False) decides nothing
        count_decision(name or group, usage.should_limit)
    return usage


def is_ratelimited(
    request: HttpRequest,
    group: str | None = None,
    fn: Callable[..., Any] | None = None,
    key: Any = None,
    rate: Any = None,
    method: Method = ALL,
    increment: bool = False,
    **kwargs: Any,
) -> bool:
    """True when the request is over the limit (and counts it if ``increment``)."""
    usage = get_usage(request, group, fn, key, rate, method, increment, **kwargs)
    return usage is not None and usage.should_limit


class ImproperlyConfiguredGroup(TypeError):
    def __init__(self) -> None:
        super().__init__("get_usage() needs a group or a fn to name the group after")
