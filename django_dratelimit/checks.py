"""System checks: every bad setting is a startup error with an id and a hint."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.utils.module_loading import import_string

from .checks_drf import check_drf
from .conf import DEFAULTS, legacy_values
from .costs import InvalidCost, compile_cost
from .headers import HEADER_POLICY_CHOICES
from .keys import InvalidKey, compile_key
from .local.algorithms import ALGORITHMS, CONSISTENCIES, EVENTUAL, STRICT
from .rates import InvalidRate, validate_rate
from .registry import strict_groups
from .rules import REQUIRED_FIELDS, RULE_FIELDS
from .strict.checks import check_strict_algorithm, check_strict_cache

MIDDLEWARE_PATH = "django_dratelimit.middleware.RateLimitMiddleware"
# django-ratelimit's class name for it, kept for projects that moved over.
MIDDLEWARE_PATHS = (MIDDLEWARE_PATH, "django_dratelimit.middleware.RatelimitMiddleware")
REDIS_CORE = "channels_redis.core.RedisChannelLayer"
_GROUP_NAME_RE = re.compile(r"^[a-zA-Z\d\-_.]{1,99}$")


def _error(msg: str, hint: str, id: int) -> Error:
    return Error(msg, hint=hint, id=f"dratelimit.E{id:03d}")


def _warning(msg: str, hint: str, id: int) -> Warning:
    return Warning(msg, hint=hint, id=f"dratelimit.W{id:03d}")


def check_settings(**kwargs: Any) -> list[CheckMessage]:
    raw = getattr(settings, "DRATELIMIT", {})
    if not isinstance(raw, dict):
        return [_error("DRATELIMIT must be a dict.", "Set DRATELIMIT = {...} in settings.", 1)]
    errors: list[CheckMessage] = []
    for name in sorted(set(raw) - set(DEFAULTS)):
        errors.append(
            _warning(
                f"DRATELIMIT[{name!r}] is not a known setting and is ignored.",
                f"Known settings: {', '.join(DEFAULTS)}.",
                1,
            )
        )

    legacy = legacy_values()  # RATELIMIT_* under their old names: checked as ours

    def get(name: str) -> Any:
        return raw.get(name, legacy.get(name, DEFAULTS[name]))

    for name in ("ENABLED", "HEADERS", "STRICT_FAIL_OPEN", "STAGGER_WINDOWS"):
        if not isinstance(get(name), bool):
            errors.append(_error(f"DRATELIMIT[{name!r}] must be True or False.", "", 3))
    if get("ALGORITHM") not in ALGORITHMS:
        errors.append(
            _error(
                f"DRATELIMIT['ALGORITHM'] is {get('ALGORITHM')!r}, not a known algorithm.",
                f"Use one of: {', '.join(ALGORITHMS)}.",
                4,
            )
        )
    if get("HEADER_POLICIES") not in HEADER_POLICY_CHOICES:
        errors.append(
            _error(
                f"DRATELIMIT['HEADER_POLICIES'] is {get('HEADER_POLICIES')!r}, not a known choice.",
                "Use 'most_restrictive' (the default: the headers describe the policy "
                "closest to refusing) or 'all' (each policy on the request).",
                40,
            )
        )
    errors += _check_view(get("VIEW"))
    errors += _check_ip(get("IP_META_KEY"), get("IPV4_MASK"), get("IPV6_MASK"))
    errors += _check_int(get("MAX_KEYS"), "MAX_KEYS", 18, minimum=1)
    errors += _check_int(get("MAX_MESSAGE_BUCKETS"), "MAX_MESSAGE_BUCKETS", 22, minimum=1)
    errors += _check_sync(get, raw)
    errors += _check_rules(get("RULES"))
    errors += check_strict_cache(_any_strict(get("RULES")))
    errors += check_drf(MIDDLEWARE_PATH)
    return errors


def _any_strict(rules: Any) -> bool:
    """Strict rules in settings, or strict decorators seen while importing the URLconf."""
    in_rules = isinstance(rules, list | tuple) and any(
        isinstance(rule, dict) and rule.get("consistency") == STRICT for rule in rules
    )
    return in_rules or bool(strict_groups())


def _check_int(value: Any, name: str, id: int, minimum: int) -> list[CheckMessage]:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return [_error(f"DRATELIMIT[{name!r}] must be an integer >= {minimum}.", "", id)]
    return []


def _check_view(view: Any) -> list[CheckMessage]:
    if callable(view):
        return []
    try:
        loaded = import_string(view)
    except Exception as exc:
        return [
            _error(
                f"DRATELIMIT['VIEW'] = {view!r} does not import: {exc}.",
                "Give the dotted path of a view taking (request, exception).",
                14,
            )
        ]
    if not callable(loaded):
        return [_error(f"DRATELIMIT['VIEW'] = {view!r} is not callable.", "", 14)]
    return []


def _check_ip(meta_key: Any, v4: Any, v6: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if meta_key is not None and not callable(meta_key):
        if not isinstance(meta_key, str) or not meta_key:
            errors.append(
                _error(
                    "DRATELIMIT['IP_META_KEY'] must be None, a request.META name, a callable "
                    "or a dotted path.",
                    "For example 'HTTP_X_REAL_IP'.",
                    16,
                )
            )
        elif "." in meta_key:
            try:
                if not callable(import_string(meta_key)):
                    raise TypeError("it is not callable")
            except Exception as exc:
                errors.append(
                    _error(
                        f"DRATELIMIT['IP_META_KEY'] = {meta_key!r} does not import: {exc}.", "", 16
                    )
                )
    for name, value, top in (("IPV4_MASK", v4, 32), ("IPV6_MASK", v6, 128)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            errors.append(
                _error(f"DRATELIMIT[{name!r}] must be an integer from 0 to {top}.", "", 17)
            )
    return errors


def _check_sync(get: Callable[[str], Any], raw: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for name in ("SYNC_INTERVAL", "ANTI_ENTROPY_INTERVAL", "STARTUP_SYNC_WAIT"):
        value = get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            errors.append(_error(f"DRATELIMIT[{name!r}] must be a number of seconds >= 0.", "", 20))
    interval = get("SYNC_INTERVAL")
    if isinstance(interval, int | float) and not isinstance(interval, bool) and interval == 0:
        errors.append(
            _warning(
                "DRATELIMIT['SYNC_INTERVAL'] = 0 sends one sync message per hit. It is kept "
                "to compare against; under load the sync thread falls behind its own "
                "traffic, and the over-admission bound in README no longer holds.",
                "Leave SYNC_INTERVAL at its default (0.05) or set a small positive value.",
                3,
            )
        )
    budget = get("SYNC_RECEIVE_BUDGET")
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0:
        errors.append(
            _error(
                "DRATELIMIT['SYNC_RECEIVE_BUDGET'] must be a number of messages a second > 0.",
                "35 (the default) keeps the sync under 1.5% of a core per process at 16 "
                "processes and 2% at 32; more syncs faster and costs more.",
                60,
            )
        )
    if not isinstance(get("BUDGETS"), bool):
        errors.append(_error("DRATELIMIT['BUDGETS'] must be True or False.", "", 61))
    headroom = get("BUDGET_HEADROOM")
    if isinstance(headroom, bool) or not isinstance(headroom, int | float) or headroom < 0:
        errors.append(
            _error(
                "DRATELIMIT['BUDGET_HEADROOM'] must be a number >= 0.",
                "2 (the default): budget mode starts when what remains is at most twice "
                "what one sync round may admit.",
                62,
            )
        )
    anti = get("ANTI_ENTROPY_INTERVAL")
    if isinstance(anti, int | float) and not isinstance(anti, bool) and anti == 0:
        errors.append(
            _error(
                "DRATELIMIT['ANTI_ENTROPY_INTERVAL'] must be more than 0.",
                "5 seconds is a good default.",
                20,
            )
        )
    group = get("GROUP")
    if group is not None and (not isinstance(group, str) or not _GROUP_NAME_RE.match(group)):
        errors.append(
            _error(
                f"DRATELIMIT['GROUP'] = {group!r} is not a valid Channels group name.",
                "Use 1 to 99 ASCII letters, digits, '-', '_' or '.'.",
                21,
            )
        )
    alias = get("CHANNEL_LAYER")
    if alias is None:
        return errors
    layers = getattr(settings, "CHANNEL_LAYERS", {}) or {}
    if alias == DEFAULTS["CHANNEL_LAYER"] and "CHANNEL_LAYER" not in raw and alias not in layers:
        return errors  # no Channels configured and none asked for: local limiting, as documented
    if not isinstance(alias, str) or alias not in layers:
        errors.append(
            _error(
                f"DRATELIMIT['CHANNEL_LAYER'] = {alias!r} is not an alias in CHANNEL_LAYERS.",
                "Configure CHANNEL_LAYERS (see README, 'Running a cluster'), or set "
                "DRATELIMIT['CHANNEL_LAYER'] = None to limit with local counts only.",
                19,
            )
        )
        return errors
    errors += _check_layer_config(alias, layers[alias])
    return errors


def _check_layer_config(alias: str, config: Any) -> list[CheckMessage]:
    """The layer must load; warn about channels_redis settings that break a long receive."""
    backend = config.get("BACKEND") if isinstance(config, dict) else None
    try:
        if not isinstance(backend, str):
            raise ImportError("BACKEND is not a dotted path")
        import_string(backend)
    except Exception as exc:
        # At run time the sync thread would log once and limit every process alone.
        return [
            _error(
                f"CHANNEL_LAYERS[{alias!r}]['BACKEND'] = {backend!r} cannot be imported "
                f"({exc}); the cluster sync would not run.",
                "Install the package that provides it (channels-redis: pip install "
                "'django-dratelimit[redis]'), or set DRATELIMIT['CHANNEL_LAYER'] = None "
                "to limit with local counts only.",
                26,
            )
        ]
    if backend != REDIS_CORE:
        return []
    hosts = (config.get("CONFIG") or {}).get("hosts") or ["redis://localhost:6379"]
    for host in hosts:
        timeout: Any = None
        if isinstance(host, dict):
            if "socket_timeout" in host and host["socket_timeout"] is None:
                continue  # None: no timeout at all, which is fine
            timeout = host.get("socket_timeout")
            if timeout is None and "socket_timeout=" in str(host.get("address", "")):
                timeout = str(host["address"]).split("socket_timeout=", 1)[1].split("&")[0]
        elif isinstance(host, str) and "socket_timeout=" in host:
            timeout = host.split("socket_timeout=", 1)[1].split("&")[0]
        try:
            ok = timeout is not None and float(timeout) > 5
        except ValueError:
            ok = False
        if not ok:
            return [
                _warning(
                    f"CHANNEL_LAYERS[{alias!r}] uses RedisChannelLayer with a socket_timeout "
                    "of at most 5 s (redis-py's default); its 5 s blocking receive then "
                    "times out and reconnects every 5 seconds.",
                    'Use {"address": "redis://...", "socket_timeout": 10} as the host.',
                    2,
                )
            ]
    return []


def _check_rules(rules: Any) -> list[CheckMessage]:
    if not isinstance(rules, list | tuple):
        return [_error("DRATELIMIT['RULES'] must be a list of dicts.", "", 5)]
    errors: list[CheckMessage] = []
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        where = f"DRATELIMIT['RULES'][{index}]"
        if not isinstance(rule, dict):
            errors.append(_error(f"{where} must be a dict.", "", 5))
            continue
        if isinstance(rule.get("name"), str):
            where = f"Rule {rule['name']!r}"
        missing = [f for f in REQUIRED_FIELDS if f not in rule]
        if missing:
            errors.append(
                _error(
                    f"{where} has no {', '.join(missing)}.",
                    "Every rule needs a name, a key and a rate.",
                    6,
                )
            )
        unknown = sorted(set(rule) - RULE_FIELDS)
        if unknown:
            errors.append(
                _error(
                    f"{where} has unknown field(s) {', '.join(unknown)}.",
                    f"Rule fields are: {', '.join(sorted(RULE_FIELDS))}.",
                    13,
                )
            )
        name = rule.get("name")
        if "name" in rule and (not isinstance(name, str) or not name):
            errors.append(_error(f"{where}: name must be a non-empty string.", "", 6))
        elif isinstance(name, str):
            if name in seen:
                errors.append(
                    _error(
                        f"Rule name {name!r} is used twice.",
                        "Rule names identify counters: make them unique.",
                        7,
                    )
                )
            seen.add(name)
        errors += _check_rule_fields(where, rule)
    middleware = getattr(settings, "MIDDLEWARE", [])
    if rules and not any(path in middleware for path in MIDDLEWARE_PATHS):
        errors.append(
            _error(
                "DRATELIMIT['RULES'] is set but RateLimitMiddleware is not in MIDDLEWARE, so "
                "the rules are never applied and a limited request would become a 403.",
                f"Add {MIDDLEWARE_PATH!r} to MIDDLEWARE.",
                15,
            )
        )
    return errors


def _check_rule_fields(where: str, rule: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    path = rule.get("path")
    if path is not None:
        try:
            re.compile(path)
        except (re.error, TypeError) as exc:
            errors.append(_error(f"{where}: path {path!r} is not a valid regex: {exc}.", "", 8))
    if "rate" in rule:
        try:
            validate_rate(rule["rate"])
        except InvalidRate as exc:
            errors.append(
                _error(
                    f"{where}: {exc}.",
                    "Rates look like '5/m', '10/5m', '100/day' or '10/s;500/h'; units are s, "
                    "m, h, d (or sec, min, hour, day).",
                    9,
                )
            )
    if "key" in rule:
        try:
            compile_key(rule["key"])
        except InvalidKey as exc:
            errors.append(_error(f"{where}: {exc}.", "", 10))
    algorithm = rule.get("algorithm")
    if algorithm is not None and algorithm not in ALGORITHMS:
        errors.append(
            _error(
                f"{where}: algorithm {algorithm!r} is unknown.",
                f"Use one of: {', '.join(ALGORITHMS)}.",
                11,
            )
        )
    methods = rule.get("methods")
    if methods is not None and (
        isinstance(methods, str)
        or not isinstance(methods, list | tuple | set | frozenset)
        or not all(isinstance(m, str) and m.isalpha() for m in methods)
    ):
        errors.append(
            _error(f"{where}: methods must be a list of HTTP methods.", 'For example ["POST"].', 12)
        )
    consistency = rule.get("consistency", EVENTUAL)
    if consistency not in CONSISTENCIES:
        errors.append(
            _error(
                f"{where}: consistency {consistency!r} is unknown.",
                "Use 'eventual' (the default) or 'strict'.",
                25,
            )
        )
    elif consistency == STRICT and isinstance(algorithm, str):
        errors += check_strict_algorithm(where, algorithm)
    if "cost" in rule:
        try:
            compile_cost(rule["cost"])
        except InvalidCost as exc:
            errors.append(
                _error(
                    f"{where}: {exc}.",
                    "Give a positive integer or a callable (group, request) -> int.",
                    24,
                )
            )
    if "block" in rule and not isinstance(rule["block"], bool):
        errors.append(_error(f"{where}: block must be True or False.", "", 23))
    return errors
