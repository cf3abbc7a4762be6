from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View

from django_dratelimit import UNSAFE, Ratelimited, ratelimit


def _limited_text(request: HttpRequest) -> HttpResponse:
    return HttpResponse("limited" if request.limited else "ok")  # type: ignore[attr-defined]


@ratelimit(key="ip", rate="2/m")
def sync_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@ratelimit(key="ip", rate="2/m")
async def async_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


@ratelimit(key="ip", rate="2/m", block=False)
def nonblocking_view(request: HttpRequest) -> HttpResponse:
    return _limited_text(request)


@ratelimit(key="ip", rate="2/m", block=False)
async def async_nonblocking_view(request: HttpRequest) -> HttpResponse:
    return _limited_text(request)


def open_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("open")


async def async_open_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("async open")


@method_decorator(ratelimit(key="ip", rate="2/m", method="POST"), name="post")
class LimitedView(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("get")

    def post(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("post")


@method_decorator(ratelimit(key="ip", rate="1/m"), name="get")
class AsyncLimitedView(View):
    async def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("async get")


# Stacked decorators: the outer one runs first.
@ratelimit(group="stack-outer", key="ip", rate="1/m", block=False)
@ratelimit(group="stack-inner", key="ip", rate="5/m", block=False)
def stacked_outer_limits_view(request: HttpRequest) -> HttpResponse:
    return _limited_text(request)


@ratelimit(group="stack-outer-2", key="ip", rate="5/m", block=False)
@ratelimit(group="stack-inner-2", key="ip", rate="1/m", block=False)
def stacked_inner_limits_view(request: HttpRequest) -> HttpResponse:
    return _limited_text(request)


# The inner decorator does not apply to GET (usage None): it must not clear request.limited.
@ratelimit(group="stack-outer-3", key="ip", rate="1/m", block=False)
@ratelimit(group="stack-inner-3", key="ip", rate="1/m", method="POST", block=False)
def stacked_inapplicable_view(request: HttpRequest) -> HttpResponse:
    return _limited_text(request)


@ratelimit(key="ip", rate="1/m")
def method_all_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@ratelimit(key="ip", rate="1/m", method=UNSAFE)
def method_unsafe_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@ratelimit(key="ip", rate="1/m", method="POST")
def method_post_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@ratelimit(key="ip", rate="1/m", method=["GET", "POST"])
def method_list_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@ratelimit(group="shared", key="ip", rate="2/m")
def shared_a_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("a")


@ratelimit(group="shared", key="ip", rate="2/m")
def shared_b_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("b")


@ratelimit(key="header:x-api-key", rate="1/m")
def header_key_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@ratelimit(key="user", rate="1/m")
def user_key_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@ratelimit(key="user", rate="1/m")
async def async_user_key_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def vip_rate(group: str, request: HttpRequest) -> str | None:
    """No limit for requests that carry X-Vip, one a minute for the others."""
    return None if request.headers.get("X-Vip") else "1/m"


@ratelimit(key="ip", rate=vip_rate)
def callable_rate_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@ratelimit(key="ip", rate="tests.views.vip_rate")
def dotted_rate_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@ratelimit(key="ip", rate="2/s;3/m")
def multi_rate_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@ratelimit(key="ip", rate="2/m", algorithm="sliding_window")
def sliding_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@ratelimit(key="ip", rate="2/m")
def fixed_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def broken_key(group: str, request: HttpRequest) -> str:
    raise RuntimeError("this key function is broken")


@ratelimit(key=broken_key, rate="1/m")
def broken_key_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def custom_limited(request: HttpRequest, exception: Ratelimited) -> HttpResponse:
    """A project's own answer to a limited request (DRATELIMIT['VIEW'])."""
    usage = exception.usage
    policy = usage.policy if usage is not None else "?"
    return HttpResponse(f"custom: slow down ({policy})", status=429)


NOT_CALLABLE = "not a view"


def user_pk_key(group: str, request: HttpRequest) -> str:
    """A callable key that reads request.user (under ASGI it must be loaded first)."""
    return str(request.user.pk)


@ratelimit(key=user_pk_key, rate="1/m")
async def async_callable_user_key_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


class CustomLimited(Exception):
    """A project's own exception for limited requests (EXCEPTION_CLASS)."""
