"""What a project moving from django-ratelimit relies on, end to end."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client, RequestFactory, override_settings

from django_dratelimit import (
    ALL,
    UNSAFE,
    Ratelimited,
    UsageDict,
    get_usage,
    is_ratelimited,
    ratelimit,
)
from django_dratelimit.exceptions import ConfigurationError, MissingArgument
from django_dratelimit.keys import MissingClientAddress
from django_dratelimit.limiter import Limiter
from django_dratelimit.middleware import RateLimitMiddleware, RatelimitMiddleware
from tests import late_views, views

OLD_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_dratelimit.middleware.RatelimitMiddleware",
]


def limited_twice(rf: RequestFactory, view: Any, **meta: Any) -> list[bool]:
    out = []
    for _ in range(2):
        request = rf.get("/", **meta)
        view(request)
        out.append(request.limited)  # type: ignore[attr-defined]
    return out


@ratelimit(key="ip", rate="1/m", block=False)
def once_a_minute(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


# -- names -------------------------------------------------------------------------------


def test_all_and_unsafe_hang_off_the_functions_as_in_django_ratelimit() -> None:
    functions: list[Any] = [ratelimit, get_usage, is_ratelimited]
    for function in functions:
        assert function.ALL is ALL
        assert function.UNSAFE == UNSAFE


def test_django_ratelimit_s_own_all_sentinel_means_every_method(
    rf: RequestFactory, limiter: Limiter
) -> None:
    for method in ("get", "post", "delete"):
        usage = get_usage(getattr(rf, method)("/"), "g", key="ip", rate="5/m", method=(None,))  # type: ignore[arg-type]
        assert usage is not None
    # ... and counts with ALL, as the same limit.
    assert get_usage(rf.get("/"), "g", key="ip", rate="5/m", increment=True)["count"] == 1  # type: ignore[index]


def test_configuration_errors_are_improperly_configured(rf: RequestFactory) -> None:
    assert issubclass(ConfigurationError, ImproperlyConfigured)
    assert issubclass(MissingArgument, ImproperlyConfigured)
    with pytest.raises(ImproperlyConfigured, match="group or a fn"):
        get_usage(rf.get("/"), key="ip", rate="1/m")
    with pytest.raises(ImproperlyConfigured, match="needs a key"):
        is_ratelimited(rf.get("/"), "g", rate="1/m")
    with pytest.raises(ImproperlyConfigured, match="unknown"):
        ratelimit(key="ipaddr", rate="1/m")
    with pytest.raises(ImproperlyConfigured, match="unknown unit"):
        ratelimit(key="ip", rate="1/M")


# -- get_usage is a dict ------------------------------------------------------------------------


def test_get_usage_is_a_real_dict(rf: RequestFactory, limiter: Limiter) -> None:
    usage = get_usage(rf.get("/"), "g", key="ip", rate="5/m", increment=True)

    assert isinstance(usage, dict)
    assert usage == dict(usage)
    assert list(usage.items()) == list(usage.usage.items())  # the Usage's own mapping
    assert json.loads(json.dumps(usage)) == dict(usage)
    body = json.loads(JsonResponse(usage).content)
    assert (body["count"], body["limit"], body["should_limit"]) == (1, 5, False)
    # ... that still reads like the Usage it came from.
    assert (usage.group, usage.key, usage.remaining, usage.allowed) == ("g", "127.0.0.1", 4, True)
    assert usage.retry_after == max(1, int(-(-usage.time_left // 1)))
    assert copy.copy(usage) == usage
    assert pickle.loads(pickle.dumps(usage)).policy == "g"
    with pytest.raises(AttributeError):
        usage.no_such_field  # noqa: B018


# -- EXCEPTION_CLASS --------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["DRATELIMIT", "RATELIMIT_EXCEPTION_CLASS"])
@pytest.mark.parametrize("value", ["tests.views.CustomLimited", views.CustomLimited])
def test_exception_class(rf: RequestFactory, limiter: Limiter, setting: str, value: Any) -> None:
    view = ratelimit(key="ip", rate="1/m")(views.open_view)
    options = {setting: {"EXCEPTION_CLASS": value} if setting == "DRATELIMIT" else value}
    with override_settings(**options):
        view(rf.get("/"))
        with pytest.raises(views.CustomLimited) as info:
            view(rf.get("/"))

    assert info.value.usage.count == 2  # type: ignore[attr-defined]


def test_an_exception_class_path_to_a_non_exception_raises_on_the_request(
    rf: RequestFactory, limiter: Limiter
) -> None:
    view = ratelimit(key="ip", rate="0/m")(views.open_view)
    with (
        override_settings(DRATELIMIT={"EXCEPTION_CLASS": "tests.views.custom_limited"}),
        pytest.raises(ImproperlyConfigured, match="not an exception class"),
    ):
        view(rf.get("/"))


def test_a_usage_dict_being_copied_never_recurses() -> None:
    blank = UsageDict.__new__(UsageDict)  # as copy and pickle make it, before __init__
    with pytest.raises(AttributeError):
        blank.group  # noqa: B018


def test_a_custom_exception_is_not_turned_into_a_429(client: Client, settings: Any) -> None:
    settings.DRATELIMIT = {"EXCEPTION_CLASS": views.CustomLimited}
    assert client.get("/sync/").status_code == 200
    client.get("/sync/")
    with pytest.raises(views.CustomLimited):  # the project's own handler's job, as before
        client.get("/sync/")


# -- RatelimitMiddleware, RATELIMIT_VIEW ---------------------------------------------------------


def test_the_old_middleware_name_answers_with_ratelimit_view(client: Client, settings: Any) -> None:
    settings.MIDDLEWARE = OLD_MIDDLEWARE
    settings.RATELIMIT_VIEW = "tests.views.custom_limited"
    assert issubclass(RatelimitMiddleware, RateLimitMiddleware)

    codes = [client.get("/sync/").status_code for _ in range(3)]
    limited = client.get("/sync/")

    assert codes == [200, 200, 429]
    assert limited.content == b"custom: slow down (tests.views.sync_view)"


# -- RATELIMIT_* settings under their old names ---------------------------------------------------


def test_ratelimit_enable_false_turns_limiting_off(rf: RequestFactory) -> None:
    with override_settings(RATELIMIT_ENABLE=False):
        assert limited_twice(rf, once_a_minute) == [False, False]
    assert limited_twice(rf, once_a_minute) == [False, True]


def test_ratelimit_ip_meta_key_counts_each_client_behind_a_proxy(
    rf: RequestFactory, settings: Any
) -> None:
    settings.RATELIMIT_IP_META_KEY = "HTTP_X_REAL_IP"
    assert limited_twice(rf, once_a_minute, HTTP_X_REAL_IP="198.51.100.1") == [False, True]
    assert limited_twice(rf, once_a_minute, HTTP_X_REAL_IP="198.51.100.2") == [False, True]


# -- a missing client address never means "unlimited" ---------------------------------------------


def test_a_decorator_on_an_empty_remote_addr_raises(rf: RequestFactory) -> None:
    with pytest.raises(MissingClientAddress, match="REMOTE_ADDR is empty"):
        once_a_minute(rf.get("/", REMOTE_ADDR=""))


def test_a_rule_on_a_missing_proxy_header_raises(client: Client, settings: Any) -> None:
    settings.DRATELIMIT = {
        "RULES": [{"name": "api", "path": "^/api/", "key": "user_or_ip", "rate": "5/m"}],
        "IP_META_KEY": "HTTP_X_FORWARDED_FOR",
    }
    assert client.get("/api/thing/", HTTP_X_FORWARDED_FOR="198.51.100.1").status_code == 200
    with pytest.raises(MissingClientAddress, match="HTTP_X_FORWARDED_FOR"):
        client.get("/api/thing/")


# -- dotted paths are imported on the first request ---------------------------------------------


def test_a_dotted_path_may_name_a_function_defined_later_in_the_module(
    rf: RequestFactory, limiter: Limiter
) -> None:
    # Importing tests.late_views did not fail: its decorator's paths were not imported yet.
    assert late_views.early_view(rf.get("/", {"who": "a"})).status_code == 200
    with pytest.raises(Ratelimited):
        late_views.early_view(rf.get("/", {"who": "a"}))
    assert late_views.early_view(rf.get("/", {"who": "b"})).status_code == 200
