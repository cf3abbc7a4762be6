"""``RateLimitMiddleware``: applies RULES and turns Ratelimited into a 429.

``RatelimitMiddleware`` is the same class under django-ratelimit's name.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase
from django.utils.module_loading import import_string

from .conf import conf
from .decorators import USAGES_ATTR, record
from .exceptions import Ratelimited
from .headers import set_usage_headers
from .keys import aload_user, may_read_user
from .rules import Rule, get_rules
from .usage import Usage


@functools.lru_cache(maxsize=16)
def _load_view(path: str) -> Callable[..., HttpResponseBase]:
    return import_string(path)  # type: ignore[no-any-return]


def limited_response(request: HttpRequest, exception: Ratelimited) -> HttpResponseBase:
    """The configured VIEW's answer to a limited request."""
    view = conf.VIEW
    func = _load_view(view) if isinstance(view, str) else view
    return func(request, exception)


class RateLimitMiddleware:
    """One middleware for sync and async stacks; the logic lives in plain sync helpers."""

    sync_capable = True
    async_capable = True

    def __init__(
        self,
        get_response: Callable[[HttpRequest], HttpResponseBase]
        | Callable[[HttpRequest], Awaitable[HttpResponseBase]],
    ) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        response = self.apply_rules(request, self.matching_rules(request))
        if response is None:
            response = self.get_response(request)  # type: ignore[assignment]
        return self.add_headers(request, response)  # type: ignore[arg-type]

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        rules = self.matching_rules(request)
        if any(may_read_user(rule.key) for rule in rules):
            await aload_user(request)
        response = self.apply_rules(request, rules)
        if response is None:
            response = await self.get_response(request)  # type: ignore[misc]
        return self.add_headers(request, response)

    def process_exception(
        self, request: HttpRequest, exception: Exception
    ) -> HttpResponseBase | None:
        if isinstance(exception, Ratelimited):
            return limited_response(request, exception)
        return None

    @staticmethod
    def matching_rules(request: HttpRequest) -> list[Rule]:
        """The RULES that apply to this request, in order (matched once per request)."""
        if not conf.ENABLED:
            return []
        path, method = request.path_info, request.method
        return [rule for rule in get_rules() if rule.matches(path, method)]

    @staticmethod
    def apply_rules(request: HttpRequest, rules: list[Rule]) -> HttpResponseBase | None:
        """Count the request against every matching rule; a 429 if one blocks it."""
        if not rules:
            return None
        for rule in rules:
            usage = rule.limit.usage(request)
            if usage is None:
                continue
            record(request, usage)
            if usage.should_limit and rule.block:
                # Refused here: later rules must not charge it (a token bucket's
                # refused requests are free).
                return limited_response(request, Ratelimited(usage))
        return None

    @staticmethod
    def add_headers(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        usages: list[Usage] | None = getattr(request, USAGES_ATTR, None)
        if usages and conf.HEADERS and "RateLimit" not in response.headers:
            set_usage_headers(response, usages)
        return response


class RatelimitMiddleware(RateLimitMiddleware):
    """django-ratelimit's middleware, under its class name.

    Like django-ratelimit's, it turns ``Ratelimited`` into the response of
    ``VIEW`` (``RATELIMIT_VIEW``). Being ``RateLimitMiddleware``, it also
    applies ``RULES`` (none unless you add some) and sets the RateLimit headers.
    """
