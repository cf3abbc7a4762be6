"""Endpoints for ``bench/bench_http.py``: one tiny JSON view per limiter, nothing else differs.

Every view is a plain sync view with the same body; only the decorator changes:

- ``noop/``: no limiter (the baseline);
- ``eventual/``: this app's ``@ratelimit`` (eventual mode, synced through the channel layer);
- ``strict/``: this app's ``@ratelimit(consistency="strict")``, when the demo was
  started with ``DEMO_STRICT_CACHE=redis`` (else it answers 501);
- ``dr/``: django-ratelimit 4.1's ``@ratelimit`` on the cache ``RATELIMIT_USE_CACHE`` names.

Each limiter has a throughput endpoint (rate ``DEMO_BENCH_RATE``, default
"1000000/m", one constant key) and an accuracy endpoint under ``acc/`` (rate
``DEMO_BENCH_ACC_RATE``, default "100/m", key from the ``k`` query parameter so
that every accuracy run counts on a fresh key). Rates are read once, at import,
so both libraries see a static rate string: their fast path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django_ratelimit.decorators import ratelimit as _dr_ratelimit

from django_dratelimit import ratelimit

# django-ratelimit ships no type hints.
ViewDecorator = Callable[[Callable[..., Any]], Callable[..., Any]]
dr_ratelimit: Callable[..., ViewDecorator] = _dr_ratelimit

BENCH_GROUP = "bench"
ACC_GROUP = "bench-acc"
BENCH_KEY = "bench"
BENCH_RATE = os.environ.get("DEMO_BENCH_RATE", "1000000/m")
ACC_RATE = os.environ.get("DEMO_BENCH_ACC_RATE", "100/m")


def constant_key(group: str, request: HttpRequest) -> str:
    """Every request counts against one key, whichever process serves it."""
    return BENCH_KEY


def query_key(group: str, request: HttpRequest) -> str:
    """A key per accuracy run, chosen by the benchmark (``?k=...``)."""
    return request.GET.get("k", BENCH_KEY)


def _answer(request: HttpRequest) -> JsonResponse:
    admitted = not getattr(request, "limited", False)
    return JsonResponse({"ok": admitted}, status=200 if admitted else 429)


def noop(request: HttpRequest) -> JsonResponse:
    return _answer(request)


@ratelimit(group=BENCH_GROUP, key=constant_key, rate=BENCH_RATE, block=False)
def eventual(request: HttpRequest) -> JsonResponse:
    return _answer(request)


@ratelimit(group=ACC_GROUP, key=query_key, rate=ACC_RATE, block=False)
def eventual_acc(request: HttpRequest) -> JsonResponse:
    return _answer(request)


@dr_ratelimit(group=BENCH_GROUP, key=constant_key, rate=BENCH_RATE, block=False)
def dr(request: HttpRequest) -> JsonResponse:
    return _answer(request)


@dr_ratelimit(group=ACC_GROUP, key=query_key, rate=ACC_RATE, block=False)
def dr_acc(request: HttpRequest) -> JsonResponse:
    return _answer(request)


def _strict_not_configured(request: HttpRequest) -> JsonResponse:
    detail = "strict mode is not configured: start the demo with DEMO_STRICT_CACHE=redis"
    return JsonResponse({"error": detail}, status=501)


# Only with a shared cache: strict rules on the demo's LocMemCache fail the system checks
# (dratelimit.E031), which would stop runserver.
strict: Callable[..., Any] = _strict_not_configured
strict_acc: Callable[..., Any] = _strict_not_configured
if settings.DRATELIMIT.get("STRICT_CACHE") == "strict":
    strict = ratelimit(
        group="bench-strict", key=constant_key, rate=BENCH_RATE, block=False, consistency="strict"
    )(_answer)
    strict_acc = ratelimit(
        group="bench-strict-acc", key=query_key, rate=ACC_RATE, block=False, consistency="strict"
    )(_answer)
