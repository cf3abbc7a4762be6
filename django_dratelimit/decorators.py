"""``@ratelimit``: the django-ratelimit 4.x decorator, for sync and async views.

Arguments that are wrong whatever the request (``rate="5/M"``,
``key="ipaddr"``, an unknown algorithm) raise ImproperlyConfigured when the
decorator runs. Dotted paths are imported on the first request, so a views
module may name a function it defines further down; a missing ``key`` is
raised on the request, as django-ratelimit does. ``manage.py check`` reports
both at startup (``dratelimit.E027``), from ``declarations()``.
"""

from __future__ import annotations

import functools
import inspect
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.http import HttpRequest

from .choices import validate_choice
from .core import ALL, UNSAFE, default_group
from .costs import compile_cost
from .exceptions import MissingArgument, limited_exception
from .keys import aload_user, compile_key, may_read_user
from .limits import Limit, Method, is_path
from .local.algorithms import STRICT
from .local.scopes import method_scope
from .rates import is_dynamic, validate_rate
from .registry import register
from .usage import Usage

F = TypeVar("F", bound=Callable[..., Any])
USAGES_ATTR = "_dratelimit_usages"
NO_KEY = "@ratelimit needs a key, e.g. key='ip'"


@dataclass(eq=False)
class Declaration:
    """The arguments of one ``@ratelimit(...)``, kept for the system checks."""

    where: str
    group: str | None
    key: Any
    rate: Any
    cost: Any


# Weak: a decorator that goes away (a view made inside a test) leaves no check behind.
_declarations: weakref.WeakSet[Declaration] = weakref.WeakSet()


def declarations() -> list[Declaration]:
    """Every ``@ratelimit`` declared so far in this process, in no particular order."""
    return list(_declarations)


def record(request: HttpRequest, usage: Usage) -> None:
    """Remember a usage on the request: the response headers are built from it."""
    usages: list[Usage] | None = getattr(request, USAGES_ATTR, None)
    if usages is None:
        setattr(request, USAGES_ATTR, [usage])
    else:
        usages.append(usage)
    request.limited = getattr(request, "limited", False) or usage.should_limit  # type: ignore[attr-defined]


def _caller() -> str:
    frame = sys._getframe(2)  # ratelimit()'s caller
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def ratelimit(
    group: str | None = None,
    key: Any = None,
    rate: Any = None,
    method: Method = ALL,
    block: bool = True,
    algorithm: str | None = None,
    cost: Any = 1,
    consistency: str = "eventual",
) -> Callable[[F], F]:
    """Limit a view; the arguments mean what they mean in django-ratelimit 4.x.

    With ``block=True`` a limited request raises :class:`Ratelimited` (or
    ``EXCEPTION_CLASS``), which ``RateLimitMiddleware`` turns into a 429.
    Either way ``request.limited`` says whether any limit on the request was
    exceeded.
    """
    if key is not None and not is_path(key):
        compile_key(key)
    if not is_dynamic(rate):
        validate_rate(rate)
    if not isinstance(cost, str):
        compile_cost(cost)
    validate_choice(algorithm, consistency)
    scope = method_scope(method)
    declaration = Declaration(_caller(), group, key, rate, cost)
    _declarations.add(declaration)

    loads_user = may_read_user(key)

    def decorator(fn: F) -> F:
        name = group if group is not None else default_group(fn)
        register(name, rate, strict=consistency == STRICT, scope=scope)
        # None without a key: raised on the request, as django-ratelimit does.
        limit = None
        if key is not None:
            limit = Limit(
                name,
                key,
                rate,
                method=method,
                cost=cost,
                algorithm=algorithm,
                consistency=consistency,
                block=block,
            )

        def before(request: HttpRequest) -> None:
            if limit is None:
                raise MissingArgument(NO_KEY)
            usage = limit.usage(request)
            if usage is None:
                request.limited = getattr(request, "limited", False)  # type: ignore[attr-defined]
                return
            record(request, usage)
            if usage.should_limit and block:
                raise limited_exception(usage)

        # The wrappers hold the declaration: it lives as long as the view.
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                if loads_user:
                    await aload_user(request)
                before(request)
                return await fn(request, *args, **kwargs)

            async_wrapper._dratelimit = declaration  # type: ignore[attr-defined]
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            # before(), inlined: a call less on every request of a sync view.
            if limit is None:
                raise MissingArgument(NO_KEY)
            usage = limit.usage(request)
            if usage is None:
                request.limited = getattr(request, "limited", False)  # type: ignore[attr-defined]
            else:
                record(request, usage)
                if usage.should_limit and block:
                    raise limited_exception(usage)
            return fn(request, *args, **kwargs)

        wrapper._dratelimit = declaration  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    decorator._dratelimit = declaration  # type: ignore[attr-defined]
    return decorator


# django-ratelimit's docs write ratelimit.ALL and ratelimit.UNSAFE.
ratelimit.ALL = ALL  # type: ignore[attr-defined]
ratelimit.UNSAFE = UNSAFE  # type: ignore[attr-defined]
