"""System checks for projects moving from django-ratelimit: one test per id, exact id lists."""

from __future__ import annotations

import weakref
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_dratelimit import decorators, ratelimit
from django_dratelimit.checks import check_settings
from django_dratelimit.checks.compat import check_compat
from tests import views

RULE = {"name": "api", "path": r"^/api/", "key": "ip", "rate": "5/m"}


@pytest.fixture(autouse=True)
def _own_declarations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the decorators made in the test are checked (views made elsewhere come and go)."""
    monkeypatch.setattr(decorators, "_declarations", weakref.WeakSet())


def ids(**options: Any) -> list[str]:
    with override_settings(**options):
        return [m.id or "" for m in check_compat()]


def test_default_settings_are_clean() -> None:
    assert check_compat() == []


# -- RATELIMIT_* settings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "value", "new"),
    [
        ("RATELIMIT_ENABLE", False, "ENABLED"),
        ("RATELIMIT_IP_META_KEY", "HTTP_X_REAL_IP", "IP_META_KEY"),
        ("RATELIMIT_VIEW", "tests.views.custom_limited", "VIEW"),
        ("RATELIMIT_USE_CACHE", "default", "STRICT_CACHE"),
    ],
)
def test_w005_an_old_setting_says_where_it_moves(old: str, value: Any, new: str) -> None:
    with override_settings(**{old: value}):
        [message] = check_compat()

    assert message.id == "dratelimit.W005"
    assert f"{old} (django-ratelimit's name) is read as DRATELIMIT[{new!r}]" in message.msg
    assert f"{new!r}: {value!r}" in (message.hint or "")
    assert ("strict-mode limits only" in message.msg) == (new == "STRICT_CACHE")


def test_e029_an_old_and_a_new_setting_for_the_same_thing() -> None:
    options = {"RATELIMIT_ENABLE": False, "DRATELIMIT": {"ENABLED": True}}
    with override_settings(**options):
        [message] = check_compat()

    assert message.id == "dratelimit.E029"
    assert "RATELIMIT_ENABLE and DRATELIMIT['ENABLED'] are both set" in message.msg


@pytest.mark.parametrize("old", ["RATELIMIT_HASH_ALGORITHM", "RATELIMIT_CACHE_PREFIX"])
def test_w006_an_old_setting_with_no_meaning_here(old: str) -> None:
    assert ids(**{old: "x"}) == ["dratelimit.W006"]


def test_old_settings_are_django_ratelimit_s_while_it_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("django_dratelimit.checks.compat.ratelimit_installed", lambda: True)
    assert ids(RATELIMIT_ENABLE=False, RATELIMIT_HASH_ALGORITHM="x") == []


def test_old_settings_are_validated_as_the_new_ones() -> None:
    with override_settings(RATELIMIT_IPV4_MASK=99):
        assert [m.id for m in check_settings()] == ["dratelimit.E017"]


def test_e015_is_satisfied_by_the_old_middleware_name(settings: Any) -> None:
    settings.MIDDLEWARE = ["django_dratelimit.middleware.RatelimitMiddleware"]
    settings.DRATELIMIT = {"RULES": [RULE]}
    assert check_settings() == []


# -- IP_META_KEY, EXCEPTION_CLASS ------------------------------------------------------------


@pytest.mark.parametrize(
    ("meta_key", "suggestion"),
    [
        ("X-Forwarded-For", "'HTTP_X_FORWARDED_FOR'"),
        ("HTTP_X-Real-IP", "'HTTP_X_REAL_IP'"),
        ("fake", "'HTTP_FAKE'"),
    ],
)
def test_w004_an_ip_meta_key_no_server_sets(meta_key: str, suggestion: str) -> None:
    with override_settings(DRATELIMIT={"IP_META_KEY": meta_key}):
        [message] = check_compat()

    assert message.id == "dratelimit.W004"
    assert suggestion in (message.hint or "")


@pytest.mark.parametrize(
    "meta_key", [None, "REMOTE_ADDR", "HTTP_X_FORWARDED_FOR", "tests.test_keys.ip_from_header"]
)
def test_w004_not_for_addresses_a_server_gives(meta_key: Any) -> None:
    assert ids(DRATELIMIT={"IP_META_KEY": meta_key}) == []
    assert ids(RATELIMIT_IP_META_KEY=meta_key) == ["dratelimit.W005"]  # only: move it


@pytest.mark.parametrize(
    "value", ["tests.views.does_not_exist", "tests.views.custom_limited", 42, views.open_view]
)
def test_e028_exception_class_must_be_an_exception_class(value: Any) -> None:
    assert ids(DRATELIMIT={"EXCEPTION_CLASS": value}) == ["dratelimit.E028"]


@pytest.mark.parametrize("value", ["tests.views.CustomLimited", views.CustomLimited, None])
def test_e028_not_for_exception_classes(value: Any) -> None:
    assert ids(DRATELIMIT={"EXCEPTION_CLASS": value}) == []


# -- @ratelimit arguments used only on a request --------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"rate": "1/m"}, "needs a key"),
        ({"key": "tests.views.no_such_key", "rate": "1/m"}, "does not import"),
        ({"key": "ip", "rate": "tests.views.no_such_rate"}, "does not import"),
        ({"key": "ip", "rate": "1/m", "cost": "tests.views.NOT_CALLABLE"}, "does not name"),
    ],
)
def test_e027_a_decorator_that_would_raise_on_its_requests(
    kwargs: dict[str, Any], problem: str
) -> None:
    view = ratelimit(**kwargs)(views.open_view)
    [message] = check_compat()

    assert message.id == "dratelimit.E027"
    assert problem in message.msg
    assert message.msg.startswith(f"{__file__}:")  # where the decorator is
    del view


def test_e027_not_for_paths_that_import_by_the_time_checks_run() -> None:
    view = ratelimit(key="tests.late_views.key_defined_below", rate="tests.views.vip_rate")(
        views.open_view
    )
    assert check_compat() == []
    del view


def test_a_decorator_that_is_gone_is_not_checked() -> None:
    ratelimit(rate="1/m")(views.open_view)  # never kept

    assert check_compat() == []


# -- the check command ---------------------------------------------------------------------------


def test_check_command_warns_about_an_old_setting_and_fails_on_a_conflict(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with override_settings(RATELIMIT_ENABLE=False):
        call_command("check")
    assert "dratelimit.W005" in capsys.readouterr().err
    with (
        override_settings(RATELIMIT_ENABLE=False, DRATELIMIT={"ENABLED": False}),
        pytest.raises(SystemCheckError, match=r"dratelimit\.E029"),
    ):
        call_command("check")
