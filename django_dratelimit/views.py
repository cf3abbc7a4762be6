"""The default response for a limited request: 429 with Retry-After and RateLimit headers."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse

from .exceptions import Ratelimited
from .headers import set_headers


def ratelimited(request: HttpRequest, exception: Ratelimited) -> HttpResponse:
    """429 Too Many Requests, as JSON when the client prefers JSON, else plain text."""
    usage = exception.usage
    wait = usage.retry_after if usage is not None else None
    message = "Too many requests." + (f" Retry in {wait} s." if wait is not None else "")
    response: HttpResponse
    if request.get_preferred_type(["text/html", "text/plain", "application/json"]) == (
        "application/json"
    ):
        body: dict[str, object] = {"error": "rate_limited", "detail": message}
        if usage is not None:
            body.update(
                policy=usage.policy,
                limit=usage.limit,
                period=usage.period,
                retry_after=usage.retry_after,
            )
        response = JsonResponse(body, status=429)
    else:
        response = HttpResponse(
            message + "\n", status=429, content_type="text/plain; charset=utf-8"
        )
    if usage is not None:
        set_headers(response, usage, retry_after=True)
    return response
