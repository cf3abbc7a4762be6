"""The rules in DRATELIMIT['RULES']: their fields, names, rates, keys and costs."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage

from ..costs import InvalidCost, compile_cost
from ..keys import InvalidKey, compile_key
from ..local.algorithms import ALGORITHMS, CONSISTENCIES, EVENTUAL, STRICT
from ..rates import InvalidRate, validate_rate
from ..rules import REQUIRED_FIELDS, RULE_FIELDS
from ..strict.checks import check_strict_algorithm
from .messages import MIDDLEWARE_PATH, MIDDLEWARE_PATHS, error


def check_rules(rules: Any) -> list[CheckMessage]:
    if not isinstance(rules, list | tuple):
        return [error("DRATELIMIT['RULES'] must be a list of dicts.", "", 5)]
    errors: list[CheckMessage] = []
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        where = f"DRATELIMIT['RULES'][{index}]"
        if not isinstance(rule, dict):
            errors.append(error(f"{where} must be a dict.", "", 5))
            continue
        if isinstance(rule.get("name"), str):
            where = f"Rule {rule['name']!r}"
        missing = [f for f in REQUIRED_FIELDS if f not in rule]
        if missing:
            errors.append(
                error(
                    f"{where} has no {', '.join(missing)}.",
                    "Every rule needs a name, a key and a rate.",
                    6,
                )
            )
        unknown = sorted(set(rule) - RULE_FIELDS)
        if unknown:
            errors.append(
                error(
                    f"{where} has unknown field(s) {', '.join(unknown)}.",
                    f"Rule fields are: {', '.join(sorted(RULE_FIELDS))}.",
                    13,
                )
            )
        name = rule.get("name")
        if "name" in rule and (not isinstance(name, str) or not name):
            errors.append(error(f"{where}: name must be a non-empty string.", "", 6))
        elif isinstance(name, str):
            if name in seen:
                errors.append(
                    error(
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
            error(
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
            errors.append(error(f"{where}: path {path!r} is not a valid regex: {exc}.", "", 8))
    if "rate" in rule:
        try:
            validate_rate(rule["rate"])
        except InvalidRate as exc:
            errors.append(
                error(
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
            errors.append(error(f"{where}: {exc}.", "", 10))
    algorithm = rule.get("algorithm")
    if algorithm is not None and algorithm not in ALGORITHMS:
        errors.append(
            error(
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
            error(f"{where}: methods must be a list of HTTP methods.", 'For example ["POST"].', 12)
        )
    consistency = rule.get("consistency", EVENTUAL)
    if consistency not in CONSISTENCIES:
        errors.append(
            error(
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
                error(
                    f"{where}: {exc}.",
                    "Give a positive integer or a callable (group, request) -> int.",
                    24,
                )
            )
    if "block" in rule and not isinstance(rule["block"], bool):
        errors.append(error(f"{where}: block must be True or False.", "", 23))
    return errors
