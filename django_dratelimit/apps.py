from __future__ import annotations

from django.apps import AppConfig
from django.core import checks
from django.core.signals import request_started


class DratelimitConfig(AppConfig):
    name = "django_dratelimit"
    verbose_name = "Distributed rate limiting"

    def ready(self) -> None:
        from .checks import check_settings
        from .checks_compat import check_compat

        checks.register(check_settings, "dratelimit")
        checks.register(check_compat, "dratelimit")

        from .limiter import start_sync_on_request

        # Servers only: management commands and scripts never start a sync thread
        # unless they use the limiter.
        request_started.connect(start_sync_on_request, dispatch_uid="django_dratelimit.sync")
