"""DRF views for tests/test_drf.py (imported only where rest_framework is installed)."""

from __future__ import annotations

from typing import Any

from django.urls import path
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.views import APIView

from django_dratelimit import drf


class ApiKeyThrottle(drf.SimpleRateThrottle):
    """Counts by the X-Api-Key header; requests without one are not throttled."""

    scope = "apikey"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        key = request.headers.get("X-Api-Key")
        return None if key is None else f"apikey:{key}"


class Burst(drf.AnonRateThrottle):
    scope = "burst"
    rate = "2/s"


class Sustained(drf.AnonRateThrottle):
    scope = "sustained"
    rate = "5/min"


# DRF ships no type hints: its classes are Any to mypy.
class Base(APIView):  # type: ignore[misc]
    renderer_classes = [JSONRenderer]  # the browsable API needs DRF's templates

    def get(self, request: Request) -> Response:
        return Response({"ok": True})


class AnonView(Base):
    throttle_classes = [drf.AnonRateThrottle]


class UserView(Base):
    throttle_classes = [drf.UserRateThrottle]


class UploadsView(Base):
    throttle_classes = [drf.ScopedRateThrottle]
    throttle_scope = "uploads"


class UploadsToo(UploadsView):
    """Another view in the same scope: one counter for both."""


class UnscopedView(Base):
    throttle_classes = [drf.ScopedRateThrottle]


class ApiKeyView(Base):
    throttle_classes = [ApiKeyThrottle]


class BurstView(Base):
    throttle_classes = [Burst, Sustained]


class ThingViewSet(viewsets.ViewSet):  # type: ignore[misc]
    renderer_classes = [JSONRenderer]
    throttle_classes: list[type] = []

    def list(self, request: Request) -> Response:
        return Response([])

    @action(detail=False, throttle_classes=[drf.UserRateThrottle])  # type: ignore[untyped-decorator]
    def export(self, request: Request) -> Response:
        return Response({"exported": True})


router = SimpleRouter()
router.register("things", ThingViewSet, basename="thing")

urlpatterns = [
    path("anon/", AnonView.as_view()),
    path("user/", UserView.as_view()),
    path("uploads/", UploadsView.as_view()),
    path("uploads-too/", UploadsToo.as_view()),
    path("unscoped/", UnscopedView.as_view()),
    path("apikey/", ApiKeyView.as_view()),
    path("burst/", BurstView.as_view()),
    *router.urls,
]
