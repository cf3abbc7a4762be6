"""A views module whose decorators name, by dotted path, functions defined further down."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from django_dratelimit import ratelimit


@ratelimit(key="tests.late_views.key_defined_below", rate="tests.late_views.rate_defined_below")
def early_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def key_defined_below(group: str, request: HttpRequest) -> str:
    return request.GET.get("who", "anyone")


def rate_defined_below(group: str, request: HttpRequest) -> str:
    return "1/m"
