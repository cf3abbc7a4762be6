"""System checks: one test per id, asserting the exact list of ids under override_settings."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import Error, Warning
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings
from pytest_django import Settings

from django_dratelimit.checks import check_settings

RULE = {"name": "api", "path": r"^/api/", "key": "ip", "rate": "5/m"}
NO_RATELIMIT_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
REDIS = "channels_redis.core.RedisChannelLayer"


def ids(**dratelimit: Any) -> list[str]:
    with override_settings(DRATELIMIT=dratelimit):
        return [m.id or "" for m in check_settings()]


def rule_ids(**fields: Any) -> list[str]:
    return ids(RULES=[{**RULE, **fields}])


def redis_layer(*hosts: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"BACKEND": REDIS}
    if hosts:
        config["CONFIG"] = {"hosts": list(hosts)}
    return {"default": config}


# -- clean --------------------------------------------------------------------------------


def test_default_settings_are_clean() -> None:
    assert check_settings() == []


def test_missing_dratelimit_setting_is_clean(settings: Settings) -> None:
    del settings.DRATELIMIT

    assert check_settings() == []


def test_a_full_valid_configuration_is_clean() -> None:
    assert (
        ids(
            ENABLED=True,
            ALGORITHM="sliding_window",
            RULES=[
                RULE,
                {
                    "name": "login",
                    "path": r"^/accounts/login/$",
                    "methods": ["POST"],
                    "key": "user_or_ip",
                    "rate": "5/m;20/h",
                    "algorithm": "fixed_window",
                    "block": False,
                },
                {"name": "dyn", "key": "tests.views.broken_key", "rate": "tests.views.vip_rate"},
                {"name": "fn", "key": lambda group, request: "k", "rate": (10, 60)},
            ],
            VIEW="tests.views.custom_limited",
            HEADERS=False,
            IP_META_KEY="HTTP_X_REAL_IP",
            IPV4_MASK=24,
            IPV6_MASK=128,
            MAX_KEYS=10,
            CHANNEL_LAYER=None,
            GROUP="my-group_1.x",
            SYNC_INTERVAL=0.02,
            ANTI_ENTROPY_INTERVAL=2.5,
            MAX_MESSAGE_BUCKETS=1,
            STARTUP_SYNC_WAIT=0.5,
            STRICT_CACHE="default",
            STRICT_FAIL_OPEN=True,
        )
        == []
    )


def test_messages_carry_a_level_and_a_hint() -> None:
    with override_settings(DRATELIMIT={"ALGORITHM": "nope", "NOPE": 1}):
        messages = check_settings()

    assert [type(m) for m in messages] == [Warning, Error]
    assert all(m.hint for m in messages)


# -- one test per id ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [["RULES"], "ENABLED", None])
def test_e001_dratelimit_must_be_a_dict(value: Any) -> None:
    with override_settings(DRATELIMIT=value):
        assert [m.id for m in check_settings()] == ["dratelimit.E001"]


def test_w001_unknown_setting() -> None:
    assert ids(RULE=[RULE], ENABLED=True) == ["dratelimit.W001"]


@pytest.mark.parametrize("name", ["ENABLED", "HEADERS", "STRICT_FAIL_OPEN"])
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_e003_flags_must_be_bool(name: str, value: Any) -> None:
    assert ids(**{name: value}) == ["dratelimit.E003"]


@pytest.mark.parametrize("value", ["gcra", "FIXED_WINDOW", None])
def test_e004_unknown_algorithm(value: Any) -> None:
    assert ids(ALGORITHM=value) == ["dratelimit.E004"]


@pytest.mark.parametrize("rules", ["^/api/", {"name": "api"}, [["api", "ip", "5/m"]], None])
def test_e005_rules_must_be_a_list_of_dicts(rules: Any) -> None:
    assert ids(RULES=rules) == ["dratelimit.E005"]


@pytest.mark.parametrize("missing", ["name", "key", "rate"])
def test_e006_rule_missing_required_field(missing: str) -> None:
    rule = {k: v for k, v in RULE.items() if k != missing}

    assert ids(RULES=[rule]) == ["dratelimit.E006"]


@pytest.mark.parametrize("name", ["", 5])
def test_e006_rule_name_must_be_a_non_empty_string(name: Any) -> None:
    assert rule_ids(name=name) == ["dratelimit.E006"]


def test_e007_duplicate_rule_name() -> None:
    assert ids(RULES=[RULE, {**RULE, "path": "^/other/"}]) == ["dratelimit.E007"]


@pytest.mark.parametrize("path", ["^/api/(", "[", 5])
def test_e008_bad_path_regex(path: Any) -> None:
    assert rule_ids(path=path) == ["dratelimit.E008"]


@pytest.mark.parametrize(
    "rate",
    [
        "5/M",
        "5",
        "",
        "5/m;",
        "0/0m",
        "1/32d",
        (1, 0),
        "tests.views.does_not_exist",
        "tests.views.NOT_CALLABLE",
        5,
    ],
)
def test_e009_bad_rate(rate: Any) -> None:
    assert rule_ids(rate=rate) == ["dratelimit.E009"]


@pytest.mark.parametrize(
    "key", ["nope", "cookie:x", "header:", "", 5, "tests.views.missing", "tests.views.NOT_CALLABLE"]
)
def test_e010_bad_key(key: Any) -> None:
    assert rule_ids(key=key) == ["dratelimit.E010"]


@pytest.mark.parametrize("algorithm", ["token_bucket_9000", "", 1])
def test_e011_bad_rule_algorithm(algorithm: Any) -> None:
    assert rule_ids(algorithm=algorithm) == ["dratelimit.E011"]


@pytest.mark.parametrize("methods", ["POST", ["P OST"], [1], 5, {"POST": True}])
def test_e012_bad_methods(methods: Any) -> None:
    assert rule_ids(methods=methods) == ["dratelimit.E012"]


def test_e013_unknown_rule_field() -> None:
    assert rule_ids(burst=10, methds=["POST"]) == ["dratelimit.E013"]


@pytest.mark.parametrize(
    "view", ["tests.views.does_not_exist", "tests.views.NOT_CALLABLE", "nodots", 42]
)
def test_e014_bad_view(view: Any) -> None:
    assert ids(VIEW=view) == ["dratelimit.E014"]


def test_e015_rules_without_the_middleware() -> None:
    with override_settings(MIDDLEWARE=NO_RATELIMIT_MIDDLEWARE):
        assert ids(RULES=[RULE]) == ["dratelimit.E015"]
        assert ids(RULES=[]) == []


@pytest.mark.parametrize(
    "value", [5, "", "tests.views.does_not_exist", "tests.views.NOT_CALLABLE", ["HTTP_X_REAL_IP"]]
)
def test_e016_bad_ip_meta_key(value: Any) -> None:
    assert ids(IP_META_KEY=value) == ["dratelimit.E016"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IPV4_MASK", 33),
        ("IPV4_MASK", -1),
        ("IPV4_MASK", "24"),
        ("IPV4_MASK", True),
        ("IPV6_MASK", 129),
        ("IPV6_MASK", 64.0),
    ],
)
def test_e017_bad_ip_mask(name: str, value: Any) -> None:
    assert ids(**{name: value}) == ["dratelimit.E017"]


@pytest.mark.parametrize("value", [0, -5, "100", True, 1.5])
def test_e018_bad_max_keys(value: Any) -> None:
    assert ids(MAX_KEYS=value) == ["dratelimit.E018"]


@pytest.mark.parametrize("alias", ["other", 5, ""])
def test_e019_unknown_channel_layer(alias: Any) -> None:
    assert ids(CHANNEL_LAYER=alias) == ["dratelimit.E019"]


def test_no_channel_layers_at_all_means_local_limiting() -> None:
    # A project without Channels limits per process; only an explicit alias must exist.
    with override_settings(CHANNEL_LAYERS={}):
        assert ids() == []
        assert ids(CHANNEL_LAYER=None) == []
        assert ids(CHANNEL_LAYER="default") == ["dratelimit.E019"]


@pytest.mark.parametrize(
    "config",
    [
        {"BACKEND": "channels_redisx.pubsub.RedisPubSubChannelLayer"},
        {"BACKEND": "channels_redis.pubsub.NoSuchLayer"},
        {"CONFIG": {}},
        "channels_redis.pubsub.RedisPubSubChannelLayer",
    ],
)
def test_e026_channel_layer_backend_that_does_not_import(config: Any) -> None:
    with override_settings(CHANNEL_LAYERS={"default": config}):
        messages = check_settings()
    assert [m.id for m in messages] == ["dratelimit.E026"]
    assert "cannot be imported" in messages[0].msg


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SYNC_INTERVAL", -0.01),
        ("SYNC_INTERVAL", "0.05"),
        ("ANTI_ENTROPY_INTERVAL", 0),
        ("ANTI_ENTROPY_INTERVAL", -1),
        ("ANTI_ENTROPY_INTERVAL", None),
        ("STARTUP_SYNC_WAIT", True),
    ],
)
def test_e020_bad_interval(name: str, value: Any) -> None:
    assert ids(**{name: value}) == ["dratelimit.E020"]


@pytest.mark.parametrize("group", ["", "has space", "a" * 100, "é", 5])
def test_e021_bad_group_name(group: Any) -> None:
    assert ids(GROUP=group) == ["dratelimit.E021"]


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("SYNC_RECEIVE_BUDGET", 0, "dratelimit.E060"),
        ("SYNC_RECEIVE_BUDGET", -5, "dratelimit.E060"),
        ("SYNC_RECEIVE_BUDGET", "40", "dratelimit.E060"),
        ("SYNC_RECEIVE_BUDGET", True, "dratelimit.E060"),
        ("BUDGETS", "yes", "dratelimit.E061"),
        ("BUDGETS", 1, "dratelimit.E061"),
        ("BUDGET_HEADROOM", -1, "dratelimit.E062"),
        ("BUDGET_HEADROOM", "2", "dratelimit.E062"),
    ],
)
def test_bad_budget_settings(setting: str, value: Any, expected: str) -> None:
    assert ids(**{setting: value}) == [expected]


def test_good_budget_settings() -> None:
    assert ids(SYNC_RECEIVE_BUDGET=100, BUDGETS=False, BUDGET_HEADROOM=0) == []


@pytest.mark.parametrize("value", [0, "500", None])
def test_e022_bad_max_message_buckets(value: Any) -> None:
    assert ids(MAX_MESSAGE_BUCKETS=value) == ["dratelimit.E022"]


@pytest.mark.parametrize("block", ["no", 0, None])
def test_e023_block_must_be_bool(block: Any) -> None:
    assert rule_ids(block=block) == ["dratelimit.E023"]


# -- W002: channels_redis socket_timeout ------------------------------------------------------


@pytest.mark.parametrize(
    "hosts",
    [
        ("redis://127.0.0.1:6379/0",),
        ("redis://127.0.0.1:6379/0?socket_timeout=5",),
        ({"address": "redis://127.0.0.1:6379/0"},),
        ({"address": "redis://127.0.0.1:6379/0", "socket_timeout": 5},),
        ({"address": "redis://127.0.0.1:6379/0?socket_timeout=abc"},),
        (("127.0.0.1", 6379),),
        ("redis://a:6379/0?socket_timeout=10", "redis://b:6379/0"),
        (),  # no hosts: channels_redis uses localhost with redis-py's defaults
    ],
)
def test_w002_redis_layer_without_a_long_socket_timeout(hosts: tuple[Any, ...]) -> None:
    with override_settings(CHANNEL_LAYERS=redis_layer(*hosts)):
        assert ids() == ["dratelimit.W002"]


@pytest.mark.parametrize(
    "hosts",
    [
        ("redis://127.0.0.1:6379/0?socket_timeout=10",),
        ("redis://127.0.0.1:6379/0?db=1&socket_timeout=10&health_check_interval=2",),
        ({"address": "redis://127.0.0.1:6379/0", "socket_timeout": 10},),
        ({"address": "redis://127.0.0.1:6379/0?socket_timeout=10"},),
        ("redis://a:6379/0?socket_timeout=10", {"address": "redis://b", "socket_timeout": 6}),
        ({"address": "redis://127.0.0.1:6379/0", "socket_timeout": None},),  # no timeout at all
    ],
)
def test_w002_not_raised_with_a_long_socket_timeout(hosts: tuple[Any, ...]) -> None:
    with override_settings(CHANNEL_LAYERS=redis_layer(*hosts)):
        assert ids() == []


def test_w002_only_for_the_configured_alias_and_the_core_layer() -> None:
    layers = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
        "redis": redis_layer("redis://127.0.0.1:6379/0")["default"],
        "pubsub": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:6379/0"]},
        },
    }
    with override_settings(CHANNEL_LAYERS=layers):
        assert ids() == []
        assert ids(CHANNEL_LAYER="pubsub") == []
        assert ids(CHANNEL_LAYER="redis") == ["dratelimit.W002"]
        assert ids(CHANNEL_LAYER=None) == []


# -- several problems at once, and the check command --------------------------------------------


def test_every_problem_is_reported_in_order() -> None:
    rules = [
        {**RULE, "rate": "5/M", "key": "nope", "extra": 1},
        {**RULE, "path": "("},
    ]
    assert ids(RULES=rules, ALGORITHM="x", MAX_KEYS=0) == [
        "dratelimit.E004",
        "dratelimit.E018",
        "dratelimit.E013",
        "dratelimit.E009",
        "dratelimit.E010",
        "dratelimit.E007",
        "dratelimit.E008",
    ]


def test_check_command_fails_on_a_bad_rate() -> None:
    with (
        override_settings(DRATELIMIT={"RULES": [{**RULE, "rate": "5/M"}]}),
        pytest.raises(SystemCheckError, match=r"dratelimit\.E009"),
    ):
        call_command("check")


def test_check_command_passes_on_clean_settings() -> None:
    with override_settings(DRATELIMIT={"RULES": [RULE]}):
        call_command("check")


def test_w003_sync_interval_zero() -> None:
    assert ids(SYNC_INTERVAL=0) == ["dratelimit.W003"]
    assert ids(SYNC_INTERVAL=0.01) == []
