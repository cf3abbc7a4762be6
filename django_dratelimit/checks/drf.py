"""System checks for the DRF throttles, read from REST_FRAMEWORK without importing DRF."""

from __future__ import annotations

import sys
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from ..rates import InvalidRate, parse_rate_string

DRF_MODULE = "django_dratelimit.drf"


def check_drf(middleware_path: str) -> list[CheckMessage]:
    """Only when our throttles are in use: named in settings, or imported by a view."""
    config: Any = getattr(settings, "REST_FRAMEWORK", None)
    if not isinstance(config, dict):
        return []
    classes = config.get("DEFAULT_THROTTLE_CLASSES") or ()
    named = [c for c in classes if isinstance(c, str) and c.startswith(DRF_MODULE + ".")]
    if not named and DRF_MODULE not in sys.modules:
        return []
    errors: list[CheckMessage] = []
    if named and middleware_path not in getattr(settings, "MIDDLEWARE", []):
        errors.append(
            Warning(
                "REST_FRAMEWORK['DEFAULT_THROTTLE_CLASSES'] names django_dratelimit.drf "
                "throttles, but RateLimitMiddleware is not in MIDDLEWARE: they limit, "
                "and responses carry no RateLimit headers.",
                hint=f"Add {middleware_path!r} to MIDDLEWARE.",
                id="dratelimit.W040",
            )
        )
    rates = config.get("DEFAULT_THROTTLE_RATES") or {}
    for scope, rate in rates.items() if isinstance(rates, dict) else ():
        if rate is None:
            continue  # DRF's way to leave a scope unthrottled
        try:
            if not isinstance(rate, str):
                raise InvalidRate(f"rate {rate!r} is not a string")
            if len(parse_rate_string(rate)) != 1:
                raise InvalidRate(f"rate {rate!r} gives several limits")
        except InvalidRate as exc:
            # Our throttles parse the rate once per request: every request would be a 500.
            errors.append(
                Error(
                    f"REST_FRAMEWORK['DEFAULT_THROTTLE_RATES'][{scope!r}]: {exc}.",
                    hint="One rate per scope, like '100/day', '5/min' or '10/5m'; give a "
                    "second limit its own scope and throttle class.",
                    id="dratelimit.E041",
                )
            )
    return errors
