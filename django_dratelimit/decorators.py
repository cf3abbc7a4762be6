"""``@ratelimit``: the django-ratelimit 4.x decorator, for sync and async views."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from django.http import HttpRequest

from .algorithms import STRICT, validate_choice
from .core import ALL, Method, default_group, get_usage
from .costs import compile_cost, resolve_cost
from .exceptions import Ratelimited
from .keys import aload_user, compile_key, may_read_user
from .rates import validate_rate
from .registry import register
from .usage import Usage

F = TypeVar("F", bound=Callable[..., Any])
USAGES_ATTR = "_dratelimit_usages"


def record(request: HttpRequest, usage: Usage) -> None:
    """Remember a usage on the request: the response headers are built from it."""
    usages: list[Usage] | None = getattr(request, USAGES_ATTR, None)
    if usages is None:
        usages = []
        setattr(request, USAGES_ATTR, usages)
    usages.append(usage)
    request.limited = getattr(request, "limited", False) or usage.should_limit  # type: ignore[attr-defined]


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

    With ``block=True`` a limited request raises :class:`Ratelimited`, which
    ``RateLimitMiddleware`` turns into a 429. Either way ``request.limited``
    says whether any limit on the request was exceeded.
    """
    if key is None:
        raise TypeError("@ratelimit needs a key, e.g. key='ip'")
    compile_key(key)  # a bad key or rate is an error at import time, not on the first request
    validate_rate(rate)
    compiled_cost = compile_cost(cost)
    validate_choice(algorithm, consistency)

    loads_user = may_read_user(key)

    def decorator(fn: F) -> F:
        name = group if group is not None else default_group(fn)
        register(name, rate, strict=consistency == STRICT)

        def before(request: HttpRequest) -> None:
            usage = get_usage(
                request,
                name,
                key=key,
                rate=rate,
                method=method,
                increment=True,
                algorithm=algorithm,
                cost=resolve_cost(compiled_cost, name, request),
                consistency=consistency,
            )
            if usage is None:
                request.limited = getattr(request, "limited", False)  # type: ignore[attr-defined]
                return
            record(request, usage)
            if usage.should_limit and block:
                raise Ratelimited(usage)

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                if loads_user:
                    await aload_user(request)
                before(request)
                return await fn(request, *args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            before(request)
            return fn(request, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
