"""The DRATELIMIT setting as a whole: known names, types, the view, the client IP.

The sync and layer settings are checked in ``layers``, the rules in ``rules``,
the DRF throttles in ``drf``, strict mode in ``strict.checks``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage
from django.utils.module_loading import import_string

from ..conf import DEFAULTS, legacy_values
from ..headers import HEADER_POLICY_CHOICES
from ..local.algorithms import ALGORITHMS, STRICT
from ..registry import strict_groups
from ..strict.checks import check_strict_cache
from .drf import check_drf
from .layers import check_sync
from .messages import MIDDLEWARE_PATH, error, warning
from .rules import check_rules


def check_settings(**kwargs: Any) -> list[CheckMessage]:
    raw = getattr(settings, "DRATELIMIT", {})
    if not isinstance(raw, dict):
        return [error("DRATELIMIT must be a dict.", "Set DRATELIMIT = {...} in settings.", 1)]
    errors: list[CheckMessage] = []
    for name in sorted(set(raw) - set(DEFAULTS)):
        errors.append(
            warning(
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
            errors.append(error(f"DRATELIMIT[{name!r}] must be True or False.", "", 3))
    if get("ALGORITHM") not in ALGORITHMS:
        errors.append(
            error(
                f"DRATELIMIT['ALGORITHM'] is {get('ALGORITHM')!r}, not a known algorithm.",
                f"Use one of: {', '.join(ALGORITHMS)}.",
                4,
            )
        )
    if get("HEADER_POLICIES") not in HEADER_POLICY_CHOICES:
        errors.append(
            error(
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
    errors += check_sync(get, raw)
    errors += check_rules(get("RULES"))
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
        return [error(f"DRATELIMIT[{name!r}] must be an integer >= {minimum}.", "", id)]
    return []


def _check_view(view: Any) -> list[CheckMessage]:
    if callable(view):
        return []
    try:
        loaded = import_string(view)
    except Exception as exc:
        return [
            error(
                f"DRATELIMIT['VIEW'] = {view!r} does not import: {exc}.",
                "Give the dotted path of a view taking (request, exception).",
                14,
            )
        ]
    if not callable(loaded):
        return [error(f"DRATELIMIT['VIEW'] = {view!r} is not callable.", "", 14)]
    return []


def _check_ip(meta_key: Any, v4: Any, v6: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if meta_key is not None and not callable(meta_key):
        if not isinstance(meta_key, str) or not meta_key:
            errors.append(
                error(
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
                    error(
                        f"DRATELIMIT['IP_META_KEY'] = {meta_key!r} does not import: {exc}.", "", 16
                    )
                )
    for name, value, top in (("IPV4_MASK", v4, 32), ("IPV6_MASK", v6, 128)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            errors.append(
                error(f"DRATELIMIT[{name!r}] must be an integer from 0 to {top}.", "", 17)
            )
    return errors
