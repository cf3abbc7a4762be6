"""System checks of the operator settings (ids from 50 up: E050, W050, ...)."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

DOCS = "docs/prometheus.md"


def check_ops(**kwargs: Any) -> list[CheckMessage]:
    raw = getattr(settings, "DRATELIMIT", {})
    if not isinstance(raw, dict):
        return []  # dratelimit.E001 says so
    value = raw.get("PROMETHEUS")
    if value is not None and not isinstance(value, bool):
        return [
            Error(
                f"DRATELIMIT['PROMETHEUS'] is {value!r}; it must be None, True or False.",
                hint="Leave it out (metrics whenever prometheus_client is installed), "
                "or set True or False.",
                id="dratelimit.E050",
            )
        ]
    if value is False:
        return []
    installed = importlib.util.find_spec("prometheus_client") is not None
    if value is True and not installed:
        return [
            Warning(
                "DRATELIMIT['PROMETHEUS'] is True but prometheus_client is not installed: "
                "no rate-limit metrics are exported.",
                hint="pip install 'django-dratelimit[prometheus]'.",
                id="dratelimit.W050",
            )
        ]
    multiprocess = {"PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"} & set(os.environ)
    if installed and multiprocess:
        return [
            Warning(
                "PROMETHEUS_MULTIPROC_DIR is set: prometheus_client's multiprocess exposition "
                "leaves out custom collectors, so the dratelimit_* metrics are not in it.",
                hint=f"Serve them per worker with serve_worker_metrics() (see {DOCS}), "
                "then silence dratelimit.W051.",
                id="dratelimit.W051",
            )
        ]
    return []
