"""ASGI entry point: ``uvicorn testproject.asgi:application``.

A plain Django ASGI app: the sync thread talks to the channel layer by itself,
so no Channels routing is needed here.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

application = get_asgi_application()
