"""django-ratelimit compatible functions: ``get_usage`` and ``is_ratelimited``.

A limit made here counts apart per group, rate, key value and methods, in
windows staggered per key (``scopes``), as django-ratelimit's do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest

from .exceptions import MissingArgument
from .limits import Limit, Method, compiled_limit
from .usage import UsageDict

ALL = None
UNSAFE = ("DELETE", "PATCH", "POST", "PUT")


def default_group(fn: Callable[..., Any]) -> str:
    """The view's dotted path, as django-ratelimit names groups."""
    return f"{fn.__module__}.{fn.__qualname__}"


def _limit(
    caller: str,
    group: str | None,
    fn: Callable[..., Any] | None,
    key: Any,
    rate: Any,
    method: Method,
    cost: Any,
    algorithm: str | None,
    consistency: str,
    name: str,
) -> Limit:
    """The compiled limit of these arguments (ImproperlyConfigured if they are unusable)."""
    if key is None:
        raise MissingArgument(f"{caller}() needs a key, e.g. key='ip'")
    if group is None:
        if fn is None:
            raise MissingArgument(f"{caller}() needs a group or a fn to name the group after")
        group = default_group(fn)
    return compiled_limit(group, key, rate, method, cost, algorithm, consistency, name)


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

    None when no limit applies to the request (see ``Limit.usage``).
    """
    limit = _limit("get_usage", group, fn, key, rate, method, cost, algorithm, consistency, name)
    usage = limit.usage(request, increment)
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
    limit = _limit(
        "is_ratelimited", group, fn, key, rate, method, cost, algorithm, consistency, name
    )
    usage = limit.usage(request, increment)
    return usage is not None and usage.should_limit


# django-ratelimit's docs write get_usage.ALL, is_ratelimited.UNSAFE, ...
get_usage.ALL = ALL  # type: ignore[attr-defined]
get_usage.UNSAFE = UNSAFE  # type: ignore[attr-defined]
is_ratelimited.ALL = ALL  # type: ignore[attr-defined]
is_ratelimited.UNSAFE = UNSAFE  # type: ignore[attr-defined]
