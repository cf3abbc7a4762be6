"""Per-worker metrics under gunicorn: each worker on a port of its own (cluster)."""

from __future__ import annotations

import contextlib
import socket
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import DemoServer, RedisServer, free_port, load, wait_for

pytestmark = pytest.mark.cluster

WORKERS = 2
HITS = 40


def worker_metrics(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The worker's samples by name, as (labels, value)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports that are free now."""
    while True:
        first = free_port()
        try:
            with contextlib.ExitStack() as stack:
                for port in range(first, first + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue


@pytest.fixture
def gunicorn(redis_db: RedisServer) -> Iterator[tuple[DemoServer, int]]:
    first = free_ports(WORKERS)
    server = DemoServer(
        "gunicorn",
        {
            "REDIS_URL": redis_db.url,
            "DEMO_CLUSTER_RATE": "1000/h",
            "DEMO_METRICS_PORT": str(first),
            "GUNICORN_CMD_ARGS": "-c python:testproject.gunicorn_metrics",
        },
        workers=WORKERS,
    )
    try:
        yield server.start(), first
    finally:
        server.stop()


def test_each_worker_serves_its_own_metrics(gunicorn: tuple[DemoServer, int]) -> None:
    server, first = gunicorn
    result = load([server], HITS)
    assert result["errors"] == 0, server.output()

    def decided() -> float:
        return sum(
            value
            for port in range(first, first + WORKERS)
            for labels, value in worker_metrics(port).get("dratelimit_decisions_total", [])
            if labels["policy"] == "cluster"
        )

    # Every decision counted once, by the worker that made it, whichever that was.
    wait_for(lambda: decided() == HITS, 15, f"the workers' decisions to add up to {HITS}")
    ports = range(first, first + WORKERS)
    nodes = [worker_metrics(port).get("dratelimit_sync_node_info", []) for port in ports]
    ids = [labels["node"] for info in nodes for labels, _ in info]
    assert ids  # the workers that served requests joined the cluster...
    assert len(set(ids)) == len(ids)  # ...each as a node of its own
