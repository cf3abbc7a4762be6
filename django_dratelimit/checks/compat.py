"""System checks for what a project brings from django-ratelimit.

Its ``RATELIMIT_*`` settings (read as fallbacks; say where each one moves),
``EXCEPTION_CLASS``, an ``IP_META_KEY`` no server sets, and ``@ratelimit``
arguments that are only used on a request (a missing key, dotted paths).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.utils.module_loading import import_string

from ..conf import IGNORED_LEGACY, LEGACY, conf, ratelimit_installed
from ..costs import InvalidCost, compile_cost
from ..decorators import NO_KEY, Declaration, declarations
from ..keys import InvalidKey, compile_key
from ..rates import InvalidRate, is_dynamic, load_rate_callable

_HEADER_META_RE = re.compile(r"^HTTP_[A-Z0-9_]+$")
# Strict-mode settings: what django-ratelimit's cache did, only strict limits do here.
_STRICT_ONLY = {"STRICT_CACHE", "STRICT_FAIL_OPEN"}


def check_compat(**kwargs: Any) -> list[CheckMessage]:
    return [
        *check_legacy_settings(),
        *check_ip_meta_key(),
        *check_exception_class(),
        *check_decorators(),
    ]


def check_legacy_settings() -> list[CheckMessage]:
    """W005 / E029 / W006: django-ratelimit's settings, while django_ratelimit is gone."""
    if ratelimit_installed():
        return []  # both apps side by side: RATELIMIT_* are its own settings
    raw = getattr(settings, "DRATELIMIT", {})
    own = raw if isinstance(raw, dict) else {}
    messages: list[CheckMessage] = []
    for old, new in LEGACY.items():
        if not hasattr(settings, old):
            continue
        if new in own:
            messages.append(
                Error(
                    f"{old} and DRATELIMIT[{new!r}] are both set; DRATELIMIT[{new!r}] is the "
                    f"one in force and {old} is ignored.",
                    hint=f"Remove {old}.",
                    id="dratelimit.E029",
                )
            )
            continue
        scope = (
            " It applies to strict-mode limits only: the others count in process memory."
            if new in _STRICT_ONLY
            else ""
        )
        messages.append(
            Warning(
                f"{old} (django-ratelimit's name) is read as DRATELIMIT[{new!r}].{scope}",
                hint=f"Move it: DRATELIMIT = {{..., {new!r}: {getattr(settings, old)!r}}}, "
                f"and remove {old}.",
                id="dratelimit.W005",
            )
        )
    for old, reason in IGNORED_LEGACY.items():
        if hasattr(settings, old):
            messages.append(
                Warning(
                    f"{old} has no meaning in django-dratelimit and is ignored: {reason}.",
                    hint=f"Remove {old}.",
                    id="dratelimit.W006",
                )
            )
    return messages


def check_ip_meta_key() -> list[CheckMessage]:
    """W004: a request.META name no server sets makes every ip limit raise on the request."""
    meta = conf.IP_META_KEY
    if not isinstance(meta, str) or not meta or "." in meta:
        return []  # None, callables and dotted paths; E016 reports the rest
    if meta == "REMOTE_ADDR" or _HEADER_META_RE.match(meta):
        return []
    name = meta.upper().replace("-", "_")
    suggestion = name if name.startswith("HTTP_") else f"HTTP_{name}"
    return [
        Warning(
            f"IP_META_KEY = {meta!r} is neither REMOTE_ADDR nor a request header's META name "
            "(HTTP_ and upper case). Unless your own middleware sets it, every ip and "
            "user_or_ip limit raises ImproperlyConfigured on each request.",
            hint=f"For a header, use its META name, e.g. {suggestion!r}.",
            id="dratelimit.W004",
        )
    ]


def check_exception_class() -> list[CheckMessage]:
    """E028: EXCEPTION_CLASS must be an exception class or its dotted path."""
    spec = conf.EXCEPTION_CLASS
    if spec is None:
        return []
    try:
        loaded = import_string(spec) if isinstance(spec, str) else spec
    except Exception as exc:
        loaded, problem = None, f"does not import: {exc}"
    else:
        problem = "is not an exception class"
    if isinstance(loaded, type) and issubclass(loaded, Exception):
        return []
    return [
        Error(
            f"EXCEPTION_CLASS = {spec!r} {problem}.",
            hint="Give an Exception subclass, or its dotted path; leave it out for Ratelimited.",
            id="dratelimit.E028",
        )
    ]


def check_decorators() -> list[CheckMessage]:
    """E027: what each ``@ratelimit`` would raise on its first request."""
    _import_urlconf()
    messages: list[CheckMessage] = []
    for declaration in sorted(declarations(), key=lambda d: d.where):
        for problem in decorator_problems(declaration):
            messages.append(
                Error(
                    f"{declaration.where}: {problem}; the view raises ImproperlyConfigured "
                    "on every request.",
                    hint="Fix the @ratelimit(...) arguments there.",
                    id="dratelimit.E027",
                )
            )
    return messages


def decorator_problems(declaration: Declaration) -> list[str]:
    problems = []
    if declaration.key is None:
        problems.append(NO_KEY)
    else:
        try:
            compile_key(declaration.key)
        except InvalidKey as exc:
            problems.append(str(exc))
    if isinstance(declaration.rate, str) and is_dynamic(declaration.rate):
        try:
            load_rate_callable(declaration.rate)
        except InvalidRate as exc:
            problems.append(str(exc))
    try:
        compile_cost(declaration.cost)
    except InvalidCost as exc:
        problems.append(str(exc))
    return problems


def _import_urlconf() -> None:
    """Import the views, so their decorators are declared before they are checked."""
    from django.urls import get_resolver

    # A URLconf that fails to import is reported by Django's own urls check.
    with contextlib.suppress(Exception):
        get_resolver().url_patterns  # noqa: B018 - the import is the point
