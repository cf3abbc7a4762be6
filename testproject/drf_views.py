"""DRF endpoints, routed only when djangorestframework is installed (the ``[drf]`` extra).

``/cluster/drf/`` is throttled by ``REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"]``
(the one-line switch, see settings); ``/cluster/drf-strict/`` by a strict throttle.
Every request comes from 127.0.0.1 in the tests, so all processes count one key.
"""

from __future__ import annotations

import os

from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from django_dratelimit.drf import ScopedRateThrottle

DRF_SCOPE = "cluster-drf"
DRF_STRICT_SCOPE = "cluster-drf-strict"


class StrictScopedThrottle(ScopedRateThrottle):
    """Exact across processes: counted in STRICT_CACHE."""

    consistency = "strict"


# DRF ships no type hints: APIView is Any to mypy.
class ClusterDrf(APIView):  # type: ignore[misc]
    renderer_classes = [JSONRenderer]
    throttle_scope = DRF_SCOPE

    def get(self, request: Request) -> Response:
        return Response({"admitted": True, "pid": os.getpid()})


class ClusterDrfStrict(ClusterDrf):
    throttle_classes = [StrictScopedThrottle]
    throttle_scope = DRF_STRICT_SCOPE
