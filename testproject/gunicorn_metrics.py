"""gunicorn settings that serve each worker's rate-limit metrics on a port of its own.

docs/prometheus.md, "Several processes behind one port"::

    DEMO_METRICS_PORT=9200 gunicorn -w 2 -c python:testproject.gunicorn_metrics \
        testproject.wsgi:application
    curl localhost:9200/metrics; curl localhost:9201/metrics
"""

from __future__ import annotations

import os
from typing import Any


def post_fork(server: Any, worker: Any) -> None:
    from django_dratelimit.ops.prometheus import serve_worker_metrics

    first = int(os.environ.get("DEMO_METRICS_PORT", "9200"))
    serve_worker_metrics(first, int(server.cfg.workers))
