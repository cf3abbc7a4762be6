"""JSON endpoints for the fault tests (tests/faults/): what each process decided, and its memory.

- ``hit/``: one shared key, as ``/cluster/hit/``, but the answer also carries the
  count this process decided on and the number of the request in this process,
  so a test can tell which decision was a process's first one;
- ``keyed/``: keyed on the ``X-Client`` header, for the key flood;
- ``proc/``: this process's first decision, its store (buckets, evictions), RSS and
  the buckets in budget mode here (each process's level, as this process planned it).
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from django_dratelimit import ratelimit
from django_dratelimit.decorators import USAGES_ATTR
from django_dratelimit.limiter import get_limiter
from testproject.cluster import cluster_rate, shared_key

FAULTS_GROUP = "faults"
KEYED_GROUP = "faults-keyed"
CLIENT_HEADER = "X-Client"

_served = itertools.count(1)
_first_lock = threading.Lock()
_first: dict[str, Any] | None = None


def _decided(request: HttpRequest) -> JsonResponse:
    global _first
    usages = getattr(request, USAGES_ATTR, None) or []
    count = usages[-1].count if usages else None
    number = next(_served)
    with _first_lock:
        if _first is None:
            _first = {"count": count, "n": number}
    admitted = not getattr(request, "limited", False)
    return JsonResponse(
        {"admitted": admitted, "pid": os.getpid(), "count": count, "n": number},
        status=200 if admitted else 429,
    )


@csrf_exempt
@ratelimit(group=FAULTS_GROUP, key=shared_key, rate=cluster_rate, block=False)
def hit(request: HttpRequest) -> JsonResponse:
    return _decided(request)


@csrf_exempt
@ratelimit(group=KEYED_GROUP, key=f"header:{CLIENT_HEADER}", rate=cluster_rate, block=False)
def keyed(request: HttpRequest) -> JsonResponse:
    return _decided(request)


def rss_kib() -> int:
    """This process's resident set size, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def proc(request: HttpRequest) -> JsonResponse:
    """This process's first decision, its store and its memory; counts nothing."""
    limiter = get_limiter()
    sync = limiter.sync
    node = sync.node if sync is not None and sync.is_alive() else None
    return JsonResponse(
        {
            "pid": os.getpid(),
            "node": limiter.store.origin,
            "first": _first,
            "buckets": len(limiter.store),
            "max_keys": limiter.store.max_keys,
            "evictions": limiter.store.evictions,
            "rss_kib": rss_kib(),
            "sync": node.node_info() if node is not None else None,
            "plans": [
                {"group": g, "key": k, "period": p, "start": s, "levels": levels}
                for (g, k, p, s), levels in limiter.store.planned(limiter.clock()).items()
            ],
        }
    )
