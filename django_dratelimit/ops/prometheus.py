"""A Prometheus collector for this process: decisions, sync counters and the store.

Everything is read at scrape time, so a request pays only for
``decisions.count()``. Registered with prometheus_client's default REGISTRY in
``AppConfig.ready()`` (the registry django-prometheus and prometheus_client's
own exposition serve) unless ``DRATELIMIT["PROMETHEUS"]`` is False.

The sync counters are the fields of ``metrics.Metrics``, read generically so a
field added there shows up here without a change:

- an ``int`` is a counter ``dratelimit_sync_<field>_total``, a ``float`` a gauge
  ``dratelimit_sync_<field>``; ``None``, strings and booleans are skipped;
- a ``dict`` of numbers is a counter ``dratelimit_sync_<field>_total{reason}``;
- drops (``malformed``, ``unknown_types``, ``handler_errors``, any ``dropped_<reason>``
  field, and the entries of a ``dropped`` dict) share one counter,
  ``dratelimit_sync_dropped_total{reason}``;
- ``field(metadata={"prometheus": "gauge" | "counter" | "dropped" | "skip"})`` on a
  field overrides the rules (an int that can go down is a gauge).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from django.core.exceptions import ImproperlyConfigured
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from .. import decisions
from ..conf import conf
from ..limiter import get_limiter
from ..logutil import log_throttled
from ..sync.metrics import Metrics

# The families with a name of their own: (type, help).
FIXED = {
    "dratelimit_decisions": ("counter", "Requests counted against a policy, by outcome."),
    "dratelimit_buckets": ("gauge", "Live buckets in this process's store."),
    "dratelimit_evictions": ("counter", "Buckets evicted because the store reached MAX_KEYS."),
    "dratelimit_budget_mode_policies": (
        "gauge",
        "Policies deciding on per-process budgets (near their limit) right now.",
    ),
    "dratelimit_sync_dropped": (
        "counter",
        "Sync messages received and dropped, not applied, by reason.",
    ),
    "dratelimit_sync_interval_seconds": (
        "gauge",
        "Seconds between sync rounds, as the node runs them now.",
    ),
    "dratelimit_sync_node": ("info", "This process's sync node."),
    # Timestamps, named as Prometheus names them (``process_start_time_seconds``).
    "dratelimit_sync_start_time_seconds": ("gauge", "When the sync node started (Unix time)."),
    "dratelimit_sync_last_send_time_seconds": (
        "gauge",
        "When a send to the broker last succeeded (Unix time).",
    ),
}
_TIMESTAMPS = {
    "started_at": "dratelimit_sync_start_time_seconds",
    "last_send_ok": "dratelimit_sync_last_send_time_seconds",
}
# Drops that predate a drop-by-reason field, by the reason they are shown under.
_DROP_FIELDS = {
    "malformed": "malformed",
    "unknown_types": "unknown_type",
    "handler_errors": "handler_error",
}
# What the interval gauge prefers to the configured SYNC_INTERVAL: a Metrics field or a
# node attribute of that name.
EFFECTIVE_INTERVAL = "effective_interval"

logger = logging.getLogger("django_dratelimit")


def _counter(
    name: str, value: float | None = None, labels: list[str] | None = None
) -> CounterMetricFamily:
    return CounterMetricFamily(name, FIXED[name][1], value, labels)


def _gauge(name: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, FIXED[name][1], value)


class DratelimitCollector(Collector):
    """Yields this process's rate-limit metrics at each scrape."""

    def describe(self) -> Iterable[Metric]:
        # Without describe() the registry would call collect() at registration,
        # that is in AppConfig.ready(): it would build the limiter at startup.
        families = {f.name: f for f in _sync_families(Metrics(), None)}
        for name, (kind, help_text) in FIXED.items():
            if name not in families:
                families[name] = Metric(name, help_text, kind)
        return list(families.values())

    def collect(self) -> Iterable[Metric]:
        try:
            if conf.PROMETHEUS is False:
                return []
        except ImproperlyConfigured:
            return []  # a worker scraped before it loaded the site (serve_worker_metrics)
        families = [_decisions()]
        # A scrape must never fail: django-prometheus serves every metric of the
        # site from the same registry.
        try:
            limiter = get_limiter()
            store = limiter.store
            families.append(_gauge("dratelimit_buckets", len(store)))
            families.append(_counter("dratelimit_evictions", store.evictions))
            budget = budget_mode_policies(limiter)
            if budget is not None:
                families.append(_gauge("dratelimit_budget_mode_policies", budget))
            node = None if limiter.sync is None else limiter.sync.node
            if node is not None:
                families += _sync_families(node.metrics, node)
        except Exception:
            log_throttled(
                "prometheus", logging.ERROR, "dratelimit: metrics not collected", exc_info=True
            )
        return families


def _decisions() -> Metric:
    family = _counter("dratelimit_decisions", labels=["policy", "decision"])
    for (policy, decision), value in sorted(decisions.snapshot().items()):
        family.add_metric([policy, decision], value)
    return family


def budget_mode_policies(limiter: Any) -> int | None:
    """How many policies are in budget mode (issue 11); None until the limiter says."""
    policies = getattr(limiter, "budget_policies", None)
    if policies is None:
        return None
    return len(policies() if callable(policies) else policies)


def _fields(metrics: Any) -> Iterator[tuple[str, Any, str | None]]:
    """(name, value, the metadata's kind) for every field of the metrics object."""
    values = metrics.as_dict() if hasattr(metrics, "as_dict") else vars(metrics)
    meta = {}
    if dataclasses.is_dataclass(metrics):
        meta = {f.name: f.metadata.get("prometheus") for f in dataclasses.fields(metrics)}
    for name, value in values.items():
        yield name, value, meta.get(name)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _sync_families(metrics: Any, node: Any) -> list[Metric]:
    """The Metrics fields by the rules in the module docstring, and the node's own."""
    dropped = _counter("dratelimit_sync_dropped", labels=["reason"])
    families: list[Metric] = [dropped]
    for name, value, kind in _fields(metrics):
        if kind == "skip" or name == EFFECTIVE_INTERVAL:
            continue
        if name in _TIMESTAMPS and kind is None:
            if _number(value):
                families.append(_gauge(_TIMESTAMPS[name], value))
            continue
        if kind == "dropped" or name in _DROP_FIELDS or name.startswith("dropped"):
            reason = _DROP_FIELDS.get(name) or name.removeprefix("dropped_")
            entries = value.items() if isinstance(value, dict) else [(reason, value)]
            for label, number in entries:
                if _number(number):
                    dropped.add_metric([str(label)], number)
            continue
        metric = f"dratelimit_sync_{name}"
        help_text = f"Sync node: {name.replace('_', ' ')} (metrics.Metrics.{name})."
        if isinstance(value, dict):
            family = CounterMetricFamily(metric, help_text, labels=["reason"])
            for label, number in value.items():
                if _number(number):
                    family.add_metric([str(label)], number)
            families.append(family)
        elif _number(value):
            gauge = kind == "gauge" or (kind is None and isinstance(value, float))
            cls = GaugeMetricFamily if gauge else CounterMetricFamily
            families.append(cls(metric, help_text, value))
    if node is not None:
        # The sync v2 node keeps it as an attribute; a Metrics field would do too.
        interval: Any = getattr(metrics, EFFECTIVE_INTERVAL, None)
        if not _number(interval):
            interval = getattr(node, EFFECTIVE_INTERVAL, None)
        if not _number(interval):
            interval = node.interval
        families.append(_gauge("dratelimit_sync_interval_seconds", float(interval)))
        labels = {"node": node.store.origin, "group": node.group, "layer": node.layer_name}
        families.append(
            InfoMetricFamily(
                "dratelimit_sync_node",
                FIXED["dratelimit_sync_node"][1],
                {k: str(v) for k, v in labels.items()},
            )
        )
    return families


# -- registration --------------------------------------------------------------------

_registered: DratelimitCollector | None = None
_register_lock = threading.Lock()


def register_default() -> DratelimitCollector:
    """Register the collector with the default REGISTRY, once per process."""
    global _registered
    with _register_lock:
        if _registered is None:
            collector = DratelimitCollector()
            REGISTRY.register(collector)
            _registered = collector
        return _registered


def serve_worker_metrics(
    first_port: int, ports: int, addr: str = "127.0.0.1"
) -> tuple[WSGIServer, threading.Thread]:
    """Serve this process's metrics on the first free port of ``first_port`` and the
    ``ports - 1`` after it, in a daemon thread; return the server and its thread.

    For servers whose workers share one port (gunicorn, uvicorn ``--workers``), where
    a scrape of the site's port reaches one worker at random: call it in gunicorn's
    ``post_fork`` hook and scrape every port of the range (``docs/prometheus.md``).
    """
    registry = CollectorRegistry()
    registry.register(DratelimitCollector())
    for port in range(first_port, first_port + ports):
        try:
            server, thread = start_http_server(port, addr, registry)
        except OSError:
            continue  # another worker's
        logger.info("dratelimit: metrics of pid %d on %s:%d", os.getpid(), addr, port)
        return server, thread
    raise OSError(f"no free port for the metrics from {first_port} to {first_port + ports - 1}")
