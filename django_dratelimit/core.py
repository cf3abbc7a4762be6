"""django-ratelimit compatible functions: ``get_usage`` and ``is_ratelimited``.

A limit made here counts apart per group, rate, key value and methods, in
windows staggered per key (``scopes``), as django-ratelimit's do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.http import HttpRequest

from .choices import validate_choice
from .conf import conf
from .decisions import count as count_decision
from .exceptions import MissingArgument
from .keys import resolve_key
from .limiter import get_limiter
from .local.scopes import DJANGO_RATELIMIT_ALL, method_scope
from .rates import Rate, parse_rate_string, resolve_rate
from .usage import Usage, UsageDict

ALL = None
UNSAFE = ("DELETE", "PATCH", "POST", "PUT")

Method = str | Sequence[str] | None


def method_applies(method: Method, request_method: str | None) -> bool:
    if method is ALL or method == DJANGO_RATELIMIT_ALL:
        return True
    if isinstance(method, str):
        return request_method == method.upper()
    return request_method in {m.upper() for m in method}


def default_group(fn: Callable[..., Any]) -> str:
    """The view's dotted path, as django-ratelimit names groups."""
    return f"{fn.__module__}.{fn.__qualname__}"


def request_usage(
    request: HttpRequest,
    group: str,
    key: Any,
    rate: Any,
    method: Method,
    cost: int,
    algorithm: str | None,
    name: str,
    consistency: str,
    scope: str,
) -> Usage | None:
    """The usage of a limit on this request, counting ``cost`` hits; None if none applies.

    None means: limiting is disabled, the method does not match, the rate is
    None, or the key has no value for this request (see ``keys``). The
    arguments are checked by the caller.
    """
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
        cost,
        name,
        consistency,
        scope=scope,
        stagger=conf.STAGGER_WINDOWS,
    )
    if cost:  # a peek (cost 0) decides nothing
        count_decision(name or group, usage.should_limit)
    return usage


def _checked(
    caller: str,
    group: str | None,
    fn: Callable[..., Any] | None,
    key: Any,
    algorithm: str | None,
    consistency: str,
) -> str:
    """The group, once the arguments are known to be usable (ImproperlyConfigured if not)."""
    if key is None:
        raise MissingArgument(f"{caller}() needs a key, e.g. key='ip'")
    validate_choice(algorithm, consistency)
    if group is not None:
        return group
    if fn is None:
        raise MissingArgument(f"{caller}() needs a group or a fn to name the group after")
    return default_group(fn)


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
) -> UsageDict | None:
    """The usage for this request as a dict (with the Usage's attributes), or None.

    None when no limit applies to the request (see ``request_usage``).
    """
    usage = request_usage(
        request,
        _checked("get_usage", group, fn, key, algorithm, consistency),
        key,
        rate,
        method,
        cost if increment else 0,
        algorithm,
        name,
        consistency,
        method_scope(method),
    )
    return None if usage is None else UsageDict(usage)


def is_ratelimited(
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
) -> bool:
    """True when the request is over the limit (and counts it if ``increment``)."""
    usage = request_usage(
        request,
        _checked("is_ratelimited", group, fn, key, algorithm, consistency),
        key,
        rate,
        method,
        cost if increment else 0,
        algorithm,
        name,
        consistency,
        method_scope(method),
    )
    return usage is not None and usage.should_limit


# django-ratelimit's docs write get_usage.ALL, is_ratelimited.UNSAFE, ...
get_usage.ALL = ALL  # type: ignore[attr-defined]
get_usage.UNSAFE = UNSAFE  # type: ignore[attr-defined]
is_ratelimited.ALL = ALL  # type: ignore[attr-defined]
is_ratelimited.UNSAFE = UNSAFE  # type: ignore[attr-defined]
