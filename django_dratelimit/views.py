"""The default response for a limited request: 429 with Retry-After and RateLimit headers.

JSON clients get a problem document (RFC 9457) of the type the IETF RateLimit
headers draft registers, ``quota-exceeded``; everybody else gets one line of text.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.cache import patch_vary_headers

from .decorators import USAGES_ATTR
from .exceptions import Ratelimited
from .headers import set_usage_headers, violated_policies
from .usage import Usage

PROBLEM_TYPE = "https://iana.org/assignments/http-problem-types#quota-exceeded"
PROBLEM_TITLE = "Request cannot be satisfied as assigned quota has been exceeded"
PROBLEM_JSON = "application/problem+json"
JSON = "application/json"
# Plain text first: a bare "*/*" (curl, most libraries) keeps getting text.
# problem+json before JSON: "application/*" gets the more precise type.
OFFERED = ("text/plain", "text/html", PROBLEM_JSON, JSON)


def ratelimited(request: HttpRequest, exception: Ratelimited) -> HttpResponse:
    """429 Too Many Requests: a problem document for JSON clients, else plain text."""
    usage = exception.usage
    wait = usage.retry_after if usage is not None else None
    message = "Too many requests." + (f" Retry in {wait} s." if wait is not None else "")
    usages = request_usages(request, usage)
    response: HttpResponse
    # Honours q-values: "application/json;q=0.5, text/plain" gets text.
    media_type = request.get_preferred_type(OFFERED)
    if media_type in (PROBLEM_JSON, JSON):
        body: dict[str, object] = {
            "type": PROBLEM_TYPE,
            "title": PROBLEM_TITLE,
            "status": 429,
            "detail": message,
            "violated-policies": [] if usage is None else violated_policies(usages, usage),
        }
        if wait is not None:
            body["retry-after"] = wait
        # A client whose Accept names JSON but not problem+json is answered in the
        # type it asked for; the body is the same document.
        response = JsonResponse(body, status=429, content_type=media_type)
    else:
        response = HttpResponse(
            message + "\n", status=429, content_type="text/plain; charset=utf-8"
        )
    patch_vary_headers(response, ("Accept",))  # a shared cache must not mix the two
    if usage is not None:
        set_usage_headers(response, usages, decisive=usage)
        response.headers["Retry-After"] = str(usage.retry_after)
    return response


def request_usages(request: HttpRequest, usage: Usage | None) -> list[Usage]:
    """Every usage counted on this request, the refusing one included."""
    usages: list[Usage] = list(getattr(request, USAGES_ATTR, None) or ())
    if usage is not None and not any(u is usage for u in usages):
        usages.append(usage)  # a Ratelimited raised by hand, never recorded
    return usages
