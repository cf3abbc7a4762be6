"""Compile ``DRATELIMIT["RULES"]`` once, and again when settings change."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from .choices import validate_choice
from .conf import conf
from .costs import compile_cost
from .keys import compile_key
from .limits import Limit
from .local.algorithms import EVENTUAL, STRICT
from .local.scopes import method_scope
from .rates import is_dynamic, parse_rate
from .registry import register

RULE_FIELDS = {
    "name",
    "path",
    "methods",
    "key",
    "rate",
    "algorithm",
    "block",
    "cost",
    "consistency",
}
REQUIRED_FIELDS = ("name", "key", "rate")


@dataclass(frozen=True)
class Rule:
    name: str
    path: re.Pattern[str] | None
    methods: frozenset[str] | None
    key: Any
    rate: Any
    algorithm: str | None
    block: bool
    cost: Any = 1
    consistency: str = EVENTUAL
    # Counted like a decorator with these methods (scopes.py), so get_usage() reads it.
    scope: str = ""
    # The fields above, compiled: what the middleware runs on each matching request.
    limit: Limit = field(kw_only=True)

    def matches(self, path: str, method: str | None) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.path is None or self.path.search(path) is not None


def compile_rule(raw: dict[str, Any]) -> Rule:
    """Build a Rule, raising ValueError on anything the system checks would report."""
    methods = raw.get("methods")
    algorithm = raw.get("algorithm")
    consistency = raw.get("consistency", EVENTUAL)
    validate_choice(algorithm, consistency)
    compile_key(raw["key"])
    if not is_dynamic(raw["rate"]):
        parse_rate(raw["rate"])
    scope = method_scope(sorted(methods)) if methods is not None else ""
    name = str(raw["name"])
    register(name, raw["rate"], strict=consistency == STRICT, scope=scope)
    block = bool(raw.get("block", True))
    cost = compile_cost(raw.get("cost", 1))
    limit = Limit(
        name,
        raw["key"],
        raw["rate"],
        method=methods,
        cost=cost,
        algorithm=algorithm,
        consistency=consistency,
        block=block,
        name=name,
    )
    return Rule(
        name=name,
        path=re.compile(raw["path"]) if raw.get("path") is not None else None,
        methods=frozenset(m.upper() for m in methods) if methods is not None else None,
        key=raw["key"],
        rate=raw["rate"],
        algorithm=algorithm,
        block=block,
        cost=cost,
        consistency=consistency,
        scope=scope,
        limit=limit,
    )


_rules: tuple[Rule, ...] | None = None
_lock = threading.Lock()


def get_rules() -> tuple[Rule, ...]:
    """The compiled rules; invalid ones are skipped (the system checks report them)."""
    global _rules
    rules = _rules
    if rules is None:
        with _lock:
            compiled = []
            for raw in conf.RULES if isinstance(conf.RULES, list | tuple) else ():
                try:
                    compiled.append(compile_rule(raw))
                except Exception:  # reported by checks.py at startup
                    continue
            rules = _rules = tuple(compiled)
    return rules


@receiver(setting_changed)
def _drop_rules(setting: str, **kwargs: Any) -> None:
    global _rules
    if setting == "DRATELIMIT":
        _rules = None
