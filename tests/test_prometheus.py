"""The Prometheus collector, read as a scraper reads it: the exposition text, parsed."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from django.apps import apps
from django.test import Client, RequestFactory, override_settings
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from django_dratelimit import decisions, is_ratelimited, logutil
from django_dratelimit.limiter import Limiter
from django_dratelimit.ops import prometheus
from django_dratelimit.ops.checks import check_ops
from django_dratelimit.sync.metrics import Metrics
from django_dratelimit.sync.node import SyncNode
from tests.cluster import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
API_RULE = {"name": "api", "path": r"^/api/", "key": "ip", "rate": "2/m"}


def scrape(registry: CollectorRegistry = REGISTRY) -> Samples:
    """Every sample of the exposition, by (name, sorted labels)."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def decided(samples: Samples, policy: str, decision: str) -> float:
    labels = (("decision", decision), ("policy", policy))
    return samples.get(("dratelimit_decisions_total", labels), 0.0)


def dratelimit_names(samples: Samples) -> set[str]:
    return {name for name, _ in samples if name.startswith("dratelimit_")}


@pytest.fixture
def fresh_decisions(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    table: dict[str, list[int]] = {}
    monkeypatch.setattr(decisions, "_table", table)
    return table


# -- registration ---------------------------------------------------------------------


def test_ready_registers_the_collector_once_with_the_default_registry() -> None:
    collector = prometheus.register_default()
    apps.get_app_config("django_dratelimit").ready()  # a second ready() must not raise

    assert prometheus.register_default() is collector
    text = generate_latest(REGISTRY).decode()
    assert text.count("# TYPE dratelimit_decisions_total counter") == 1
    assert "dratelimit_decisions" in REGISTRY._names_to_collectors


def test_describe_names_every_family_without_building_the_limiter(
    limiter: Limiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_limiter() -> Limiter:
        raise AssertionError("describe() built the limiter")

    monkeypatch.setattr(prometheus, "get_limiter", no_limiter)
    described = {family.name for family in prometheus.DratelimitCollector().describe()}
    monkeypatch.undo()
    attach_node(limiter)
    monkeypatch.setattr(limiter, "budget_policies", lambda: {"api"})
    collected = {family.name for family in prometheus.DratelimitCollector().collect()}

    assert collected <= described
    assert set(prometheus.FIXED) <= described


# -- decisions ------------------------------------------------------------------------


@override_settings(DRATELIMIT={"RULES": [API_RULE]})
def test_a_rule_counts_allowed_and_limited_decisions(limiter: Limiter, client: Client) -> None:
    before = scrape()
    statuses = [client.get("/api/thing/").status_code for _ in range(3)]
    after = scrape()

    assert statuses == [200, 200, 429]
    assert decided(after, "api", "allowed") - decided(before, "api", "allowed") == 2
    assert decided(after, "api", "limited") - decided(before, "api", "limited") == 1


@pytest.mark.parametrize("path", ["/sync/", "/async/"])
async def test_the_decorator_counts_decisions_on_sync_and_async_views(
    limiter: Limiter, async_client: Any, path: str
) -> None:
    policy = f"tests.views.{path.strip('/')}_view"
    before = decisions.snapshot()
    statuses = [(await async_client.get(path)).status_code for _ in range(3)]
    after = decisions.snapshot()

    assert statuses == [200, 200, 429]
    assert after[policy, "allowed"] - before.get((policy, "allowed"), 0) == 2
    assert after[policy, "limited"] - before.get((policy, "limited"), 0) == 1


def test_is_ratelimited_counts_only_when_it_increments(
    limiter: Limiter, rf: RequestFactory, fresh_decisions: dict[str, list[int]]
) -> None:
    request = rf.get("/")
    is_ratelimited(request, group="peek", key="ip", rate="1/m")
    assert fresh_decisions == {}
    is_ratelimited(request, group="peek", key="ip", rate="1/m", increment=True)
    is_ratelimited(request, group="peek", key="ip", rate="1/m", increment=True)

    assert fresh_decisions == {"peek": [1, 1]}


def test_threads_lose_no_decision(fresh_decisions: dict[str, list[int]]) -> None:
    def decide() -> None:
        for n in range(20_000):
            decisions.count("api", n % 4 == 0)

    threads = [threading.Thread(target=decide) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert decisions.snapshot() == {("api", "allowed"): 60_000, ("api", "limited"): 20_000}


def test_policies_past_the_cap_are_counted_as_other(
    fresh_decisions: dict[str, list[int]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(decisions, "MAX_POLICIES", 2)
    for policy in ("a", "b", "user-1", "user-2"):
        decisions.count(policy, False)
    decisions.count("a", True)

    assert fresh_decisions == {"a": [1, 1], "b": [1, 0], decisions.OTHER: [2, 0]}
    assert caplog.text.count("more than 2 policies") == 1


# -- the store, the sync node, budgets ------------------------------------------------


def set_drops(metrics: Metrics, **counts: int) -> None:
    """Set drop counters by reason, as fields ``dropped_<reason>`` (sync v2) or by their
    older names."""
    older = {"unknown_type": "unknown_types", "handler_error": "handler_errors"}
    for reason, count in counts.items():
        name = f"dropped_{reason}"
        setattr(metrics, name if hasattr(metrics, name) else older.get(reason, reason), count)


def attach_node(limiter: Limiter, metrics: Any = None) -> SyncNode:
    """A real SyncNode (not running: the collector only reads it) as the limiter's."""
    node = SyncNode(limiter.store, None, interval=0.25, layer_name="t.Layer", keys=[b"k"])
    if metrics is not None:
        node.metrics = metrics
    limiter.sync = FakeThread(node)  # type: ignore[assignment]
    return node


class FakeThread:
    def __init__(self, node: SyncNode) -> None:
        self.node = node

    def stop(self, timeout: float = 5.0) -> None:
        pass


def test_store_metrics(limiter: Limiter) -> None:
    for key in ("a", "b", "c"):
        limiter.hit("g", key, "5/m")
    limiter.store.evictions = 7

    samples = scrape()
    assert samples["dratelimit_buckets", ()] == 3
    assert samples["dratelimit_evictions_total", ()] == 7
    # No sync configured: no sync families, and no policy in budget mode (one process).
    assert not {n for n in dratelimit_names(samples) if n.startswith("dratelimit_sync_")}
    assert samples["dratelimit_budget_mode_policies", ()] == 0


def test_sync_node_metrics(limiter: Limiter) -> None:
    node = attach_node(limiter)
    node.metrics.messages_sent = 11
    node.metrics.messages_received = 22
    set_drops(node.metrics, malformed=1, unknown_type=2, handler_error=3)
    node.metrics.broker_errors = 4
    node.metrics.merges = 5
    node.metrics.last_send_ok = 1_700_000_000.5

    samples = scrape()
    assert samples["dratelimit_sync_messages_sent_total", ()] == 11
    assert samples["dratelimit_sync_messages_received_total", ()] == 22
    assert samples["dratelimit_sync_broker_errors_total", ()] == 4
    assert samples["dratelimit_sync_merges_total", ()] == 5
    dropped = {
        dict(labels)["reason"]: value
        for (name, labels), value in samples.items()
        if name == "dratelimit_sync_dropped_total"
    }
    assert {
        reason: dropped.pop(reason) for reason in ("malformed", "unknown_type", "handler_error")
    } == {
        "malformed": 1,
        "unknown_type": 2,
        "handler_error": 3,
    }
    assert set(dropped.values()) <= {0}  # any other reason the sync counts
    assert samples["dratelimit_sync_interval_seconds", ()] == 0.25
    assert samples["dratelimit_sync_last_send_time_seconds", ()] == 1_700_000_000.5
    assert samples["dratelimit_sync_start_time_seconds", ()] == node.metrics.started_at
    info = (("group", node.group), ("layer", "t.Layer"), ("node", limiter.store.origin))
    assert samples["dratelimit_sync_node_info", info] == 1
    assert not [name for name in dratelimit_names(samples) if "last_error" in name]  # a string


@dataclasses.dataclass
class NewerMetrics:
    """Fields the sync may add: they must show up without a change to the collector."""

    messages_sent: int = 1
    peers_seen: int = dataclasses.field(default=3, metadata={"prometheus": "gauge"})
    rounds: int = 9
    round_seconds: float = 0.012
    dropped: dict[str, int] = dataclasses.field(default_factory=lambda: {"bad_signature": 6})
    dropped_replayed: int = 8
    unknown_types: int = 2
    effective_interval: float = 0.4
    debug_flag: bool = True
    last_error: str = "none"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def test_new_metrics_fields_show_up_by_the_generic_rules(limiter: Limiter) -> None:
    attach_node(limiter, NewerMetrics())

    text = generate_latest(REGISTRY).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["dratelimit_sync_peers_seen"].type == "gauge"
    assert families["dratelimit_sync_rounds"].type == "counter"
    assert families["dratelimit_sync_round_seconds"].type == "gauge"
    dropped = {s.labels["reason"]: s.value for s in families["dratelimit_sync_dropped"].samples}
    assert dropped == {"bad_signature": 6, "replayed": 8, "unknown_type": 2}
    assert families["dratelimit_sync_messages_sent"].type == "counter"
    # The effective interval replaces the configured one, in its own gauge only.
    assert families["dratelimit_sync_interval_seconds"].samples[0].value == 0.4
    assert "dratelimit_sync_effective_interval" not in families
    assert "dratelimit_sync_debug_flag" not in families


def test_the_interval_gauge_reads_the_nodes_effective_interval(limiter: Limiter) -> None:
    node = attach_node(limiter)
    node.__dict__["effective_interval"] = 0.8  # an attribute in sync v2

    assert scrape()["dratelimit_sync_interval_seconds", ()] == 0.8


def test_budget_mode_policies_are_the_groups_in_budget_mode(
    limiter: Limiter,
) -> None:
    limiter.store.processes, limiter.store.members = 4, ["b", "c", "d"]  # a cluster of 4
    for group in ("login", "api", "login"):
        limiter.hit(group, "k", "8/m")  # fresh buckets: an equal share each

    assert limiter.budget_policies() == {"login", "api"}
    assert scrape()["dratelimit_budget_mode_policies", ()] == 2


# -- failure, settings --------------------------------------------------------------------


def test_a_broken_part_leaves_the_rest_of_the_scrape(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> Limiter:
        raise RuntimeError("settings are broken")

    monkeypatch.setattr(prometheus, "get_limiter", broken)
    logutil.forget()
    decisions.count("still-here", False)
    with caplog.at_level(logging.ERROR, logger="django_dratelimit"):
        samples = scrape()

    assert decided(samples, "still-here", "allowed") >= 1
    assert "python_info" in {name for name, _ in samples}  # the other collectors too
    assert "dratelimit_buckets" not in dratelimit_names(samples)
    assert "metrics not collected" in caplog.text


@override_settings(DRATELIMIT={"PROMETHEUS": False})
def test_prometheus_false_exports_nothing(limiter: Limiter) -> None:
    decisions.count("api", False)

    assert dratelimit_names(scrape()) == set()


def test_the_django_view_of_prometheus_client_serves_the_metrics(
    limiter: Limiter, client: Client
) -> None:
    # prometheus_client.django.PrometheusDjangoView serves the default REGISTRY, as
    # django-prometheus' ExportToDjangoView does.
    decisions.count("via-view", True)
    response = client.get("/metrics/")

    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    samples = {
        tuple(sorted(s.labels.items())): s.value for s in families["dratelimit_decisions"].samples
    }
    assert response.status_code == 200
    assert samples[("decision", "limited"), ("policy", "via-view")] >= 1


@pytest.fixture
def worker_servers() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert not any(thread.is_alive() for _, thread in started)


def test_serve_worker_metrics_takes_the_next_free_port(
    limiter: Limiter, worker_servers: list[Any]
) -> None:
    first = free_port()
    decisions.count("worker", False)
    worker_servers.append(prometheus.serve_worker_metrics(first, 3))
    worker_servers.append(prometheus.serve_worker_metrics(first, 3))

    ports = [server.server_port for server, _ in worker_servers]
    with urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}/metrics", timeout=5) as response:
        text = response.read().decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert ports[0] == first
    assert ports[1] in (first + 1, first + 2)
    assert "dratelimit_decisions" in names
    assert "python_info" not in names  # only ours: the worker's own registry


def test_serve_worker_metrics_says_when_every_port_is_taken(
    worker_servers: list[Any],
) -> None:
    first = free_port()
    worker_servers.append(prometheus.serve_worker_metrics(first, 1))

    with pytest.raises(OSError, match="no free port"):
        prometheus.serve_worker_metrics(first, 1)


# -- system checks -------------------------------------------------------------------------


def ids(**dratelimit: Any) -> list[str]:
    with override_settings(DRATELIMIT=dratelimit):
        return [m.id or "" for m in check_ops()]


def test_checks_default_is_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)

    assert ids() == []
    assert ids(PROMETHEUS=True) == []
    assert ids(PROMETHEUS=False) == []


@pytest.mark.parametrize("value", ["yes", 1, 0, [], "False"])
def test_check_e050_prometheus_must_be_none_or_a_bool(value: Any) -> None:
    assert ids(PROMETHEUS=value) == ["dratelimit.E050"]


def test_check_w050_prometheus_true_without_prometheus_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "prometheus_client" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    assert ids(PROMETHEUS=True) == ["dratelimit.W050"]
    assert ids() == []  # not asked for: nothing to warn about


def test_check_w051_multiprocess_mode_leaves_the_collector_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/metrics")

    assert ids() == ["dratelimit.W051"]
    assert ids(PROMETHEUS=False) == []
