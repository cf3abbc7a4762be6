"""The demo pages: one example of each way to limit a view."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils.decorators import method_decorator
from django.views.decorators.http import require_GET, require_http_methods
from django.views.generic import TemplateView

from django_dratelimit import UsageDict, get_usage, ratelimit
from django_dratelimit.conf import conf
from django_dratelimit.limiter import get_limiter
from django_dratelimit.rates import InvalidRate, parse_rate

LIMITED_RATE = "5/m"
COMMENT_RATE = "3/m"
API_HELLO_RATE = "100/h"
CBV_RATE = "10/m"
# method_decorator hands @ratelimit a wrapper named after View.dispatch, so the
# default group would be "django.views.generic.base.View.dispatch", shared by
# every class-based view limited that way: name the group explicitly.
CBV_GROUP = "testproject.views.CbvDemo"
API_RULE = "api"


@dataclass(frozen=True)
class UsageRow:
    """One line of the home page's usage table."""

    label: str
    url: str
    limited_by: str
    key: str
    rate: str
    usage: UsageDict | None


def post_usage(request: HttpRequest, **kwargs: Any) -> UsageDict | None:
    """The usage of a POST-only limit, read on this (GET) request without counting.

    A limit counts apart per method, as in django-ratelimit, and ``get_usage``
    with ``method="POST"`` gives None for a GET: ask on a POST copy instead.
    """
    as_post = copy.copy(request)
    as_post.method = "POST"
    return get_usage(as_post, method="POST", **kwargs)


def api_rule_rate() -> str | None:
    """The rate of the "api" rule, as configured in settings.DRATELIMIT."""
    for rule in conf.RULES:
        if rule.get("name") == API_RULE:
            rate = rule.get("rate")
            return rate if isinstance(rate, str) else None
    return None


def curl_count(rate: str | None) -> int:
    """Enough requests for the curl loop to cross the rate's smallest limit."""
    try:
        parsed = parse_rate(rate)
    except InvalidRate:
        parsed = None
    return min(r.limit for r in parsed) + 2 if parsed else 12


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    api_rate = api_rule_rate()
    # increment=False: looking at the counters must not count as a visit.
    rows = [
        UsageRow(
            "Decorated view",
            "/limited/",
            "@ratelimit",
            "ip",
            LIMITED_RATE,
            get_usage(request, fn=limited, key="ip", rate=LIMITED_RATE),
        ),
        UsageRow(
            "Form (POSTs only)",
            "/comment/",
            '@ratelimit(method="POST")',
            "ip",
            COMMENT_RATE,
            post_usage(request, fn=comment, key="ip", rate=COMMENT_RATE),
        ),
        UsageRow(
            "API, settings rule",
            "/api/hello/",
            f'RULES["{API_RULE}"]',
            "ip",
            api_rate or "none",
            get_usage(request, group=API_RULE, key="ip", rate=api_rate),
        ),
        UsageRow(
            "API, async view",
            "/api/hello/",
            "@ratelimit",
            "ip",
            API_HELLO_RATE,
            get_usage(request, fn=api_hello, key="ip", rate=API_HELLO_RATE),
        ),
        UsageRow(
            "Class-based view",
            "/cbv/",
            "method_decorator(ratelimit)",
            "user_or_ip",
            CBV_RATE,
            get_usage(request, group=CBV_GROUP, key="user_or_ip", rate=CBV_RATE),
        ),
    ]
    layer = (settings.CHANNEL_LAYERS.get(conf.CHANNEL_LAYER or "") or {}).get("BACKEND", "none")
    context = {
        "rows": rows,
        "pid": os.getpid(),
        "layer": layer,
        "syncing": get_limiter().sync is not None,
        "api_rate": api_rate,
        "curl_count": curl_count(api_rate),
        "host": request.get_host(),
    }
    return render(request, "testproject/home.html", context)


@ratelimit(key="ip", rate=LIMITED_RATE)
def limited(request: HttpRequest) -> HttpResponse:
    usage = get_usage(request, fn=limited, key="ip", rate=LIMITED_RATE)
    return render(request, "testproject/limited.html", {"usage": usage, "rate": LIMITED_RATE})


class CommentForm(forms.Form):
    name = forms.CharField(max_length=50)
    text = forms.CharField(
        label="Comment", max_length=500, widget=forms.Textarea(attrs={"rows": 3})
    )


@require_http_methods(["GET", "POST"])
@ratelimit(key="ip", rate=COMMENT_RATE, method="POST")
def comment(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = CommentForm(request.POST)
        if form.is_valid():
            messages.success(
                request, f"Thanks, {form.cleaned_data['name']}! (The demo keeps no comments.)"
            )
            # Post/redirect/get: a browser refresh must not re-send (and re-count) the POST.
            return redirect("comment")
    else:
        form = CommentForm()
    usage = post_usage(request, fn=comment, key="ip", rate=COMMENT_RATE)
    return render(
        request, "testproject/comment.html", {"form": form, "usage": usage, "rate": COMMENT_RATE}
    )


@ratelimit(key="ip", rate=API_HELLO_RATE)
async def api_hello(request: HttpRequest) -> JsonResponse:
    # Also limited by the "api" rule in settings.DRATELIMIT, through the middleware.
    return JsonResponse({"message": "Hello from an async view!", "pid": os.getpid()})


@method_decorator(ratelimit(group=CBV_GROUP, key="user_or_ip", rate=CBV_RATE), name="dispatch")
class CbvDemo(TemplateView):
    template_name = "testproject/cbv.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["rate"] = CBV_RATE
        context["usage"] = get_usage(self.request, group=CBV_GROUP, key="user_or_ip", rate=CBV_RATE)
        return context
