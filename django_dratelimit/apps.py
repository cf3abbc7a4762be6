from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class DratelimitConfig(AppConfig):
    name = "django_dratelimit"
    verbose_name = "Distributed rate limiting"

    def ready(self) -> None:
        from .checks import check_settings

        checks.register(check_settings, "dratelimit")
