from __future__ import annotations

import importlib.util

from django.apps import AppConfig
from django.core import checks
from django.core.signals import request_started


class DratelimitConfig(AppConfig):
    name = "django_dratelimit"
    verbose_name = "Distributed rate limiting"
    # The admin page's model (models.LiveCounters) has no table; an explicit type keeps
    # models.W042 quiet in projects that leave DEFAULT_AUTO_FIELD unset.
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        from .checks import check_compat, check_settings
        from .ops.checks import check_ops

        checks.register(check_settings, "dratelimit")
        checks.register(check_compat, "dratelimit")
        checks.register(check_ops, "dratelimit")

        from .limiter import start_sync_on_request

        # Servers only: management commands and scripts never start a sync thread
        # unless they use the limiter.
        request_started.connect(start_sync_on_request, dispatch_uid="django_dratelimit.sync")

        from .conf import conf

        # Registered once, whatever the setting says later: collect() reads it per scrape.
        if conf.PROMETHEUS is not False and importlib.util.find_spec("prometheus_client"):
            from .ops.prometheus import register_default

            register_default()
