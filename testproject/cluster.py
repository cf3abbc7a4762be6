"""JSON endpoints for the multi-process cluster tests and benchmarks.

Every process counts hits of one shared key; ``state/`` reads what a process
knows of the cluster-wide total without counting anything.
"""

from __future__ import annotations

import os
import time
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from django_dratelimit import get_usage, ratelimit
from django_dratelimit.limiter import get_limiter
from django_dratelimit.local.algorithms import ALGORITHMS, FIXED_WINDOW

CLUSTER_GROUP = "cluster"
SHARED_KEY = "shared"
DEFAULT_CLUSTER_RATE = "100/m"


def shared_key(group: str, request: HttpRequest) -> str:
    """Every request counts against one key, whichever process serves it."""
    return SHARED_KEY


def cluster_rate(group: str | None = None, request: HttpRequest | None = None) -> str:
    # Read per request, not at import: tests start each process with its own rate.
    return os.environ.get("DEMO_CLUSTER_RATE", DEFAULT_CLUSTER_RATE)


def _hit_response(request: HttpRequest) -> JsonResponse:
    admitted = not getattr(request, "limited", False)
    return JsonResponse({"admitted": admitted, "pid": os.getpid()}, status=200 if admitted else 429)


# block=False: the view answers itself, so a limited hit costs the same as an
# admitted one and the JSON says which process decided.
@csrf_exempt
@ratelimit(group=CLUSTER_GROUP, key=shared_key, rate=cluster_rate, block=False)
def hit(request: HttpRequest) -> JsonResponse:
    return _hit_response(request)


@csrf_exempt
@ratelimit(group=CLUSTER_GROUP, key=shared_key, rate=cluster_rate, block=False)
async def ahit(request: HttpRequest) -> JsonResponse:
    return _hit_response(request)


@csrf_exempt
@ratelimit(
    group="cluster-tokens",
    key=shared_key,
    rate=cluster_rate,
    block=False,
    algorithm="token_bucket",
)
def token_hit(request: HttpRequest) -> JsonResponse:
    """The same shared key, limited by a token bucket that syncs across processes."""
    return _hit_response(request)


@csrf_exempt
@ratelimit(
    group="cluster-leaky",
    key=shared_key,
    rate=cluster_rate,
    block=False,
    algorithm="leaky_bucket",
)
def leaky_hit(request: HttpRequest) -> JsonResponse:
    """The same shared key, limited by a leaky bucket (bench_accuracy --algorithm)."""
    return _hit_response(request)


def _bad_request(detail: str) -> JsonResponse:
    return JsonResponse({"error": "bad_request", "detail": detail}, status=400)


def state(request: HttpRequest) -> JsonResponse:
    """What this process knows of a counter, and of its sync node; counts nothing."""
    group = request.GET.get("group", CLUSTER_GROUP)
    key = request.GET.get("key", SHARED_KEY)
    rate = request.GET.get("rate") or cluster_rate()
    algorithm = request.GET.get("algorithm", FIXED_WINDOW)
    # Tests hold a worker busy for a moment so that concurrent requests reach
    # every gunicorn worker (an idle sync worker would take them all).
    try:
        time.sleep(min(max(float(request.GET.get("delay", 0)), 0.0), 1.0))
    except ValueError:
        return _bad_request("delay must be a number of seconds")
    if algorithm not in ALGORITHMS:
        return _bad_request(f"unknown algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
    usage: Any
    try:
        if request.GET.get("raw"):
            # Where limiter.hit() and the DRF throttles count: the key as given.
            usage = get_limiter().get(group, key, rate, algorithm=algorithm)
        else:
            # Where @ratelimit counts (per rate, in the key's staggered window): with
            # get_usage and a key that names the counter, not with limiter.get().
            usage = get_usage(request, group, key=lambda g, r: key, rate=rate, algorithm=algorithm)
    except ValueError as exc:  # InvalidRate is one
        return _bad_request(str(exc))
    if usage is None:
        return _bad_request(f"rate {rate!r} is no limit")
    limiter = get_limiter()
    # Read after get(): the first use of the limiter is what starts the sync thread.
    sync = limiter.sync
    node = sync.node if sync is not None and sync.is_alive() else None
    info: dict[str, Any] | None = node.node_info() if node is not None else None
    return JsonResponse(
        {
            "pid": os.getpid(),
            "node": limiter.store.origin,
            "count": usage.count,
            "limit": usage.limit,
            "should_limit": usage.should_limit,
            "time_left": usage.time_left,
            "sync": info,
        }
    )


def noop(request: HttpRequest) -> JsonResponse:
    """No limiter at all: the benchmarks' baseline."""
    return JsonResponse({"ok": True})
