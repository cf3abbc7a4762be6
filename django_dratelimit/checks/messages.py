"""How the checks word their findings: ids ``dratelimit.E<nnn>`` and ``dratelimit.W<nnn>``."""

from __future__ import annotations

from django.core.checks import Error, Warning

MIDDLEWARE_PATH = "django_dratelimit.middleware.RateLimitMiddleware"
# django-ratelimit's class name for it, kept for projects that moved over.
MIDDLEWARE_PATHS = (MIDDLEWARE_PATH, "django_dratelimit.middleware.RatelimitMiddleware")


def error(msg: str, hint: str, id: int) -> Error:
    return Error(msg, hint=hint, id=f"dratelimit.E{id:03d}")


def warning(msg: str, hint: str, id: int) -> Warning:
    return Warning(msg, hint=hint, id=f"dratelimit.W{id:03d}")
