"""WSGI entry point: ``gunicorn testproject.wsgi:application``."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

application = get_wsgi_application()

if os.environ.get("DEMO_WARM_LIMITER_AT_IMPORT"):
    # Simulates an app that uses the limiter at import time: under
    # `gunicorn --preload` the master then starts a sync thread and has counts
    # before it forks, which the workers must not inherit as their own.
    from django_dratelimit.limiter import get_limiter

    get_limiter().hit("warmup", "preload", "1000/h")
