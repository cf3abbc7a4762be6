"""``conf.Settings``: a default for every key, read at call time (django-cors-headers style)."""

from __future__ import annotations

import re
import warnings
from typing import Any

import pytest
from django.test import override_settings
from pytest_django import Settings as SettingsFixture

from django_dratelimit import conf as conf_module
from django_dratelimit import views
from django_dratelimit.conf import DEFAULTS, Settings, conf, site_group

RULES = [{"name": "api", "path": r"^/api/", "key": "ip", "rate": "5/m"}]


def key_func(request: Any) -> str:
    return "k"


# (property, its default, an overriding value)
CASES: list[tuple[str, Any, Any]] = [
    ("ENABLED", True, False),
    ("ALGORITHM", "fixed_window", "sliding_window"),
    ("RULES", [], RULES),
    ("VIEW", "django_dratelimit.views.ratelimited", "tests.views.custom_limited"),
    ("HEADERS", True, False),
    ("HEADER_POLICIES", "most_restrictive", "all"),
    ("IP_META_KEY", None, "HTTP_X_REAL_IP"),
    ("IPV4_MASK", 32, 24),
    ("IPV6_MASK", 64, 48),
    ("MAX_KEYS", 100_000, 10),
    ("EXCEPTION_CLASS", None, "tests.views.CustomLimited"),
    ("STAGGER_WINDOWS", True, False),
    ("CHANNEL_LAYER", "default", None),
    ("GROUP", None, "other-group"),  # None: site_group()
    ("SYNC_INTERVAL", 0.05, 0.0),
    ("SYNC_RECEIVE_BUDGET", 35.0, 100.0),
    ("ANTI_ENTROPY_INTERVAL", 5.0, 1.5),
    ("MAX_MESSAGE_BUCKETS", 500, 50),
    ("STARTUP_SYNC_WAIT", 0.0, 2.0),
    ("BUDGETS", True, False),
    ("BUDGET_HEADROOM", 2.0, 4.0),
    ("STRICT_CACHE", "default", "strict"),
    ("STRICT_FAIL_OPEN", False, True),
    ("PROMETHEUS", None, False),
]


def resolved(name: str) -> Any:
    """What ``conf`` answers when the setting is left out."""
    return site_group() if name == "GROUP" else DEFAULTS[name]


def test_the_default_group_is_one_per_secret_key() -> None:
    group = site_group()
    assert re.fullmatch(r"dratelimit-[0-9a-f]{10}", group)
    assert site_group() == group  # stable: every process of the site agrees
    assert "tests-only" not in group
    with override_settings(SECRET_KEY="another site"):
        other = site_group()
        assert other == conf.GROUP
    assert other != group
    with override_settings(SECRET_KEY=""):
        assert site_group() == "dratelimit"  # no key at all: Django's own checks say so
    assert group == conf.GROUP


def test_the_default_group_name_is_pinned_and_derived_without_warnings() -> None:
    # A new derivation would put upgraded and old processes in different groups
    # during a rolling deploy: change it only on purpose.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Django 6.1 warns (pending) on an implicit algorithm
        assert site_group() == "dratelimit-bd39b5dfca"  # SECRET_KEY "tests-only", HMAC-SHA256


def test_every_setting_has_a_property_and_a_case() -> None:
    properties = {name for name, value in vars(Settings).items() if isinstance(value, property)}

    assert properties - {"_user"} == set(DEFAULTS)
    assert {name for name, _, _ in CASES} == set(DEFAULTS)


@pytest.mark.parametrize(("name", "default", "override"), CASES)
def test_default(name: str, default: Any, override: Any) -> None:
    assert getattr(conf, name) == resolved(name)
    assert DEFAULTS[name] == default


@pytest.mark.parametrize(("name", "default", "override"), CASES)
def test_override_is_read_at_call_time(name: str, default: Any, override: Any) -> None:
    with override_settings(DRATELIMIT={name: override}):
        assert getattr(conf, name) == override
    assert getattr(conf, name) == resolved(name)


@pytest.mark.parametrize(("name", "default", "override"), CASES)
def test_settings_fixture_override(
    settings: SettingsFixture, name: str, default: Any, override: Any
) -> None:
    settings.DRATELIMIT = {name: override}

    assert getattr(conf, name) == override


@pytest.mark.parametrize(("name", "default", "override"), CASES)
def test_other_keys_keep_their_defaults(name: str, default: Any, override: Any) -> None:
    others = [n for n, _, _ in CASES if n != name]
    with override_settings(DRATELIMIT={name: override}):
        assert [getattr(conf, n) for n in others] == [resolved(n) for n in others]


def test_a_fresh_settings_object_sees_the_same_values() -> None:
    with override_settings(DRATELIMIT={"GROUP": "fresh"}):
        assert Settings().GROUP == "fresh"


def test_missing_dratelimit_setting_gives_defaults(settings: SettingsFixture) -> None:
    del settings.DRATELIMIT

    assert [getattr(conf, n) for n, _, _ in CASES] == [resolved(n) for n, _, _ in CASES]


@pytest.mark.parametrize("value", [None, ["ENABLED"], "ENABLED=False"])
def test_a_non_dict_dratelimit_setting_gives_defaults(value: Any) -> None:
    with override_settings(DRATELIMIT=value):
        assert conf.ENABLED is True
        assert conf.RULES == []


def test_values_are_coerced_to_their_types() -> None:
    with override_settings(
        DRATELIMIT={
            "ENABLED": 0,
            "HEADERS": "",
            "STRICT_FAIL_OPEN": 1,
            "IPV4_MASK": "24",
            "MAX_KEYS": 10.0,
            "SYNC_INTERVAL": 1,
            "GROUP": 5,
        }
    ):
        assert conf.ENABLED is False
        assert conf.HEADERS is False
        assert conf.STRICT_FAIL_OPEN is True
        assert conf.IPV4_MASK == 24
        assert conf.MAX_KEYS == 10
        assert isinstance(conf.SYNC_INTERVAL, float)
        assert conf.GROUP == "5"


def test_callables_are_returned_as_given() -> None:
    with override_settings(DRATELIMIT={"VIEW": views.ratelimited, "IP_META_KEY": key_func}):
        assert conf.VIEW is views.ratelimited
        assert conf.IP_META_KEY is key_func


def test_nested_overrides() -> None:
    with override_settings(DRATELIMIT={"ALGORITHM": "sliding_window"}):
        with override_settings(DRATELIMIT={"ENABLED": False}):
            assert (conf.ENABLED, conf.ALGORITHM) == (False, "fixed_window")
        assert (conf.ENABLED, conf.ALGORITHM) == (True, "sliding_window")


# -- django-ratelimit's settings, read under their old names ---------------------------------


@pytest.mark.parametrize(
    ("old", "value", "name", "read"),
    [
        ("RATELIMIT_ENABLE", False, "ENABLED", False),
        ("RATELIMIT_ENABLE", 0, "ENABLED", False),  # django-ratelimit reads it as truthy
        ("RATELIMIT_VIEW", "tests.views.custom_limited", "VIEW", "tests.views.custom_limited"),
        ("RATELIMIT_IP_META_KEY", "HTTP_X_REAL_IP", "IP_META_KEY", "HTTP_X_REAL_IP"),
        ("RATELIMIT_IP_META_KEY", "", "IP_META_KEY", None),  # empty: REMOTE_ADDR
        ("RATELIMIT_IPV4_MASK", 24, "IPV4_MASK", 24),
        ("RATELIMIT_IPV6_MASK", 48, "IPV6_MASK", 48),
        ("RATELIMIT_EXCEPTION_CLASS", "a.B", "EXCEPTION_CLASS", "a.B"),
        ("RATELIMIT_USE_CACHE", "redis", "STRICT_CACHE", "redis"),
        ("RATELIMIT_FAIL_OPEN", True, "STRICT_FAIL_OPEN", True),
    ],
)
def test_old_settings_are_read_as_fallbacks(old: str, value: Any, name: str, read: Any) -> None:
    assert getattr(conf, name) == resolved(name)
    with override_settings(**{old: value}):
        assert getattr(conf, name) == read
        # The DRATELIMIT key wins (checks_compat reports setting both as an error).
        with override_settings(DRATELIMIT={name: resolved(name)}):
            assert getattr(conf, name) == resolved(name)
    assert getattr(conf, name) == resolved(name)


def test_old_settings_belong_to_django_ratelimit_while_it_is_installed(
    settings: SettingsFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.RATELIMIT_ENABLE = False
    assert conf.ENABLED is False
    monkeypatch.setattr(conf_module, "ratelimit_installed", lambda: True)
    conf.clear()
    assert conf.ENABLED is True
    conf.clear()


def test_django_ratelimit_counts_as_installed_by_name_or_app_config() -> None:
    # Not through override_settings: installing it would register its own checks for good.
    assert not conf_module.ratelimit_installed()
    assert conf_module.ratelimit_installed(["django_ratelimit"])
    assert conf_module.ratelimit_installed(["django_ratelimit.apps.DjangoRatelimitConfig"])
    assert not conf_module.ratelimit_installed(["django_ratelimit_extra", "django_dratelimit"])
