"""Cluster sync benchmark: three processes on one Redis.

Scenarios, each on freshly started processes and an emptied redis-server:

A. Sync traffic: broker messages per 1,000 hits, batched (``SYNC_INTERVAL`` =
   0.05 s) vs one message per hit (``SYNC_INTERVAL = 0``). Measured twice:
   through HTTP (three demo servers under uvicorn, a paced keep-alive load of up
   to 1,000 hits/s per node; a 2-core machine does not reach that rate, so the
   achieved rate is reported and the numbers are normalised), and with an
   in-process driver (three Django processes calling ``Limiter.hit`` at exactly
   1,000 hits/s each, with their real sync threads): the only way to run the
   target's condition on a small machine. Messages are counted twice: by the
   nodes' own sync metrics and by Redis ``INFO commandstats``.
B. Convergence: bursts of hits to one random node, then every node is polled
   (every 5 ms, concurrently) until all report the new total; p50/p99/max of
   the time from the end of the burst to agreement.
C. Accuracy: a limit of 100 per minute shared by three servers, 1,000 requests
   as fast as possible round-robin; admitted vs the exact limit and the
   documented bound ``limit + R x (SYNC_INTERVAL + L)``.

Run from the repository root::

    python bench/bench_cluster.py             # full run, about 3 to 4 minutes
    python bench/bench_cluster.py --quick     # CI smoke run, under a minute
    python bench/bench_cluster.py --json PATH # default bench/results/cluster.json

It starts its own redis-server and servers on free 127.0.0.1 ports and always
stops them. It exits 0 even when a target fails: the target lines report.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import random
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from machine import cpu_model, load_average  # noqa: E402
from workers import Worker, emit, redis_info, setup_django  # noqa: E402

from django_dratelimit.local.scopes import window_offset  # noqa: E402
from tests.cluster import LOOPBACK, DemoServer, RedisServer, load, wait_for  # noqa: E402
from tests.helpers import fresh_window, server_env  # noqa: E402

NODES = 3
DEFAULT_INTERVAL = 0.05
INTERVALS = (DEFAULT_INTERVAL, 0.0)
ANTI_ENTROPY = 5.0  # the package default: its re-sends are part of the traffic
TARGET_HITS_PER_NODE = 1000.0
MESSAGES_TARGET = 25.0  # batched: at most this many messages/s per node at the rate above
FEWER_TARGET = 40.0  # batched: at least this many times fewer messages than one per hit
CONVERGENCE_TARGET_INTERVALS = 3  # convergence p99 under this many sync intervals
ACCURACY_LIMIT = 100
ACCURACY_RATE = f"{ACCURACY_LIMIT}/m"
LATENCY_ALLOWANCE = 0.1  # L in README's bound: broker latency plus scheduling on a busy host
# Scenarios A and B must never be limited, and their count must stay in one window.
TRAFFIC_RATE = "100000000/d"
TRAFFIC_PERIOD = 86400
GROUP = "cluster"  # testproject.cluster counts every hit here ...
KEY = "shared"  # ... under this one key
STATE_PATH = "/cluster/state/"
HIT_PATH = "/cluster/hit/"
POLL_EVERY = 0.005
DEFAULT_JSON = ROOT / "bench" / "results" / "cluster.json"


@dataclass(frozen=True)
class Mode:
    name: str
    traffic_s: float  # seconds of paced load per traffic run
    bursts: int  # convergence samples per sync interval
    burst_size: int
    accuracy_requests: int
    window_needed_s: float  # start an accuracy run with at least this much of the minute left
    inproc_layers: tuple[str, ...]
    accuracy_layers: tuple[str, ...]
    drain_timeout_s: float  # how long to wait for a backlog of sync messages to drain


FULL = Mode("full", 5.0, 30, 50, 1000, 20.0, ("core", "pubsub"), ("core", "pubsub"), 60.0)
QUICK = Mode("quick", 1.5, 8, 30, 300, 6.0, ("core",), ("core",), 8.0)


# -- small helpers ------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def interval_label(interval: float) -> str:
    return f"{interval:g} s" + (" (one message per hit)" if interval == 0 else " (batched)")


def command_calls(port: int) -> dict[str, int]:
    """Calls per command since the server started (commands run by scripts included)."""
    stats = redis_info(port, "commandstats")
    return {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}


# Our own measuring commands, left out of the deltas.
OWN_COMMANDS = {"info", "flushall", "ping", "command"}


def calls_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    names = (set(before) | set(after)) - OWN_COMMANDS
    delta = {n: after.get(n, 0) - before.get(n, 0) for n in names}
    return dict(sorted(((n, d) for n, d in delta.items() if d), key=lambda item: -item[1]))


def broker_stats(delta: dict[str, int], layer: str) -> dict[str, int]:
    """Sync messages as Redis saw them, derived from command counts.

    Pub/sub layer: one PUBLISH per group_send. Core layer (channels_redis 4.3):
    a group_send is ZRANGE + pipelined ZREMRANGEBYSCOREs + one EVAL whose script
    runs ZCOUNT (capacity check) and, below capacity, ZADD + EXPIRE per member;
    a receive is EVAL (backup clean-up) + BZPOPMIN (+ ZADD, ZPOPMIN when it got
    a message). So group_sends = EVAL - BZPOPMIN, delivery attempts = ZCOUNT,
    deliveries dropped over ``capacity`` ~ ZCOUNT - EXPIRE (group_add's EXPIRE
    makes that an underestimate by one per anti-entropy round).
    """
    if layer == "pubsub":
        return {"group_sends": delta.get("publish", 0)}
    evals = delta.get("eval", 0) + delta.get("evalsha", 0)
    attempts = delta.get("zcount", 0)
    return {
        "group_sends": evals - delta.get("bzpopmin", 0),
        "delivery_attempts": attempts,
        "dropped_over_capacity": max(0, attempts - delta.get("expire", 0)),
        "received": delta.get("zpopmin", 0),
    }


# -- HTTP -----------------------------------------------------------------------------


class Client:
    """One keep-alive connection to one server, reconnecting after an error."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection: http.client.HTTPConnection | None = None

    def get(self, path: str) -> tuple[int, bytes]:
        if self.connection is None:
            self.connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
        try:
            self.connection.request("GET", path)
            response = self.connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def count(self) -> int:
        status, body = self.get(STATE_PATH)
        if status != 200:
            raise RuntimeError(f"state: HTTP {status}")
        return int(json.loads(body)["count"])

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


@dataclass
class LoadResult:
    per_node: list[int]  # hits served (200 or 429) by each node
    admitted: int = 0
    limited: int = 0
    errors: int = 0
    elapsed: float = 0.0

    @property
    def served(self) -> int:
        return self.admitted + self.limited


class LoadRun:
    """Keep-alive GET load on ``/cluster/hit/``, with a live total the lag sampler reads."""

    def __init__(self, servers: Sequence[DemoServer]) -> None:
        self.servers = list(servers)
        self.result = LoadResult(per_node=[0] * len(servers))
        self.served = 0  # read without the lock by the sampler: an int read is atomic
        self._lock = threading.Lock()
        self._tickets = 0
        self._ends: list[float] = []

    def _record(self, node: int, status: int | None) -> None:
        with self._lock:
            if status == 200:
                self.result.admitted += 1
            elif status == 429:
                self.result.limited += 1
            else:
                self.result.errors += 1
                return
            self.result.per_node[node] += 1
            self.served += 1

    def _hit(self, client: Client, node: int) -> None:
        try:
            status: int | None = client.get(HIT_PATH)[0]
        except (OSError, http.client.HTTPException):
            status = None
        self._record(node, status)

    def _run(self, workers: list[Callable[[], None]], start: float) -> LoadResult:
        def wrapped(worker: Callable[[], None]) -> None:
            try:
                worker()
            finally:
                with self._lock:
                    self._ends.append(time.monotonic())

        with ThreadPoolExecutor(len(workers)) as pool:
            for future in [pool.submit(wrapped, w) for w in workers]:
                future.result()
        self.result.elapsed = max(self._ends) - start
        return self.result

    def paced(self, rate_per_node: float, duration: float, threads_per_node: int = 2) -> LoadResult:
        """Hold ``rate_per_node`` GETs/s on each server for ``duration`` s, if they can.

        Each thread keeps one connection and a schedule; a thread more than 0.1 s
        behind drops the backlog instead of bursting to catch up.
        """
        period = threads_per_node / rate_per_node
        start = time.monotonic() + 0.05
        deadline = start + duration

        def worker(node: int, index: int) -> Callable[[], None]:
            def run() -> None:
                client = Client(self.servers[node].port)
                next_at = start + period * index / threads_per_node
                try:
                    while (now := time.monotonic()) < deadline:
                        if next_at > now:
                            time.sleep(min(next_at - now, deadline - now))
                            continue
                        next_at = max(next_at, now - 0.1) + period
                        self._hit(client, node)
                finally:
                    client.close()

            return run

        nodes = range(len(self.servers))
        return self._run([worker(n, i) for n in nodes for i in range(threads_per_node)], start)

    def burst(self, total: int, threads: int) -> LoadResult:
        """``total`` GETs as fast as possible, round-robin over the servers."""
        start = time.monotonic()

        def run() -> None:
            clients = [Client(s.port) for s in self.servers]
            try:
                while True:
                    with self._lock:
                        ticket, self._tickets = self._tickets, self._tickets + 1
                    if ticket >= total:
                        return
                    node = ticket % len(clients)
                    self._hit(clients[node], node)
            finally:
                for client in clients:
                    client.close()

        return self._run([run] * threads, start)


@dataclass
class Lag:
    """How far behind the cluster total each node's count was, sampled during a load."""

    samples: list[int] = field(default_factory=list)  # hits served but unknown to a node

    def p(self, q: float) -> float:
        return percentile(self.samples, q) if self.samples else float("nan")

    def staleness_ms(self, hits: float, others_rate: float) -> float:
        """A lag in hits as time: those hits came from the other nodes."""
        return 1000 * hits / others_rate if others_rate > 0 else float("nan")


@contextlib.contextmanager
def lag_sampler(run: LoadRun, baseline: int = 0, every: float = 0.05) -> Iterator[Lag]:
    """Poll every node's count during a load; lag = hits answered - hits the node knows.

    A node knows its own hits at once, so the lag is the other nodes' hits it has
    not merged yet. "Answered" is read before the poll is sent, so a sample is a
    lower bound: every one of those hits was counted before the node read its count.
    """
    lag = Lag()
    stop = threading.Event()

    def sample() -> None:
        clients = [Client(s.port) for s in run.servers]
        try:
            while not stop.wait(every):
                for client in clients:
                    answered = baseline + run.served  # before the node reads its count
                    with contextlib.suppress(OSError, http.client.HTTPException, RuntimeError):
                        lag.samples.append(max(0, answered - client.count()))
        finally:
            for client in clients:
                client.close()

    thread = threading.Thread(target=sample, name="lag-sampler", daemon=True)
    thread.start()
    try:
        yield lag
    finally:
        stop.set()
        thread.join(15)


# -- processes ------------------------------------------------------------------------


def bench_env(redis: RedisServer, interval: float, layer: str, rate: str) -> dict[str, str]:
    """The tests' server environment, with the defaults a deployment runs: budgets on."""
    return server_env(
        redis.url,
        layer,  # "core" or "pubsub" (the demo default)
        rate,
        DRATELIMIT_SYNC_INTERVAL=repr(interval),
        DRATELIMIT_ANTI_ENTROPY=repr(ANTI_ENTROPY),
        DRATELIMIT_BUDGETS="1",
        DRATELIMIT_STARTUP_SYNC_WAIT="0",
        DJANGO_DEBUG="0",
    )


class Cluster:
    """Owns the redis-server and every process started; ``close`` stops them all."""

    def __init__(self) -> None:
        self.redis = RedisServer()
        self.servers: list[DemoServer] = []
        self.workers: list[Worker] = []

    def __enter__(self) -> Cluster:
        self.redis.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def fresh_redis(self) -> None:
        self.redis.command("FLUSHALL")

    def start_servers(self, interval: float, layer: str, rate: str) -> list[DemoServer]:
        """Three uvicorn servers (one worker each), started in parallel."""
        self.fresh_redis()
        env = bench_env(self.redis, interval, layer, rate)
        servers = [DemoServer("uvicorn", env) for _ in range(NODES)]
        self.servers.extend(servers)  # registered first: a failed start is still stopped
        with ThreadPoolExecutor(NODES) as pool:
            list(pool.map(lambda s: s.start(), servers))
        return servers

    def stop_servers(self, servers: Sequence[DemoServer]) -> None:
        for server in servers:
            server.stop()
            self.servers.remove(server)

    def start_workers(self, interval: float, layer: str) -> list[Worker]:
        self.fresh_redis()
        env = bench_env(self.redis, interval, layer, TRAFFIC_RATE)
        workers = []
        for _ in range(NODES):
            workers.append(Worker(Path(__file__), env))
            self.workers.append(workers[-1])
        for worker in workers:
            worker.expect("ready", 60)
        return workers

    def stop_workers(self, workers: Sequence[Worker]) -> None:
        for worker in workers:
            worker.stop()
            self.workers.remove(worker)

    def close(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
        for worker in self.workers:
            with contextlib.suppress(Exception):
                worker.stop()
        self.servers.clear()
        self.workers.clear()
        self.redis.close()


def node_state(server: DemoServer) -> dict[str, Any]:
    state = server.state()
    if state.get("sync") is None:
        raise RuntimeError(f"server on port {server.port} has no running sync thread")
    return state


def warm(servers: Sequence[DemoServer]) -> None:
    """Start every node's sync thread (first limiter use) and let them join the group."""
    for server in servers:
        server.state()
    wait_for(lambda: all(s.state().get("sync") is not None for s in servers), 10, "sync threads")
    time.sleep(0.5)


def wait_converged(servers: Sequence[DemoServer], expected: int, timeout: float) -> float | None:
    """Seconds until every server reports ``expected`` hits; None if they did not."""
    started = time.monotonic()
    clients = [Client(s.port) for s in servers]
    try:
        while time.monotonic() - started < timeout:
            with contextlib.suppress(OSError, http.client.HTTPException, RuntimeError):
                if all(c.count() == expected for c in clients):
                    return time.monotonic() - started
            time.sleep(0.01)
        return None
    finally:
        for client in clients:
            client.close()


def wait_agreement(servers: Sequence[DemoServer], timeout: float) -> int:
    """The count every server agrees on (after errors left the expected total unknown)."""
    counts: list[int] = []

    def agree() -> bool:
        counts[:] = [s.state()["count"] for s in servers]
        return len(set(counts)) == 1

    wait_for(agree, timeout, "the servers to agree on a count", interval=0.05)
    return counts[0]


def metric_deltas(
    before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]], name: str
) -> list[int]:
    return [
        int(a["sync"]["metrics"][name]) - int(b["sync"]["metrics"][name])
        for b, a in zip(before, after, strict=True)
    ]


# -- scenario A: sync traffic ------------------------------------------------------------


@dataclass
class Traffic:
    driver: str  # "http" or "in-process"
    layer: str
    interval: float
    hits: int
    seconds: float
    hits_per_node: list[int]
    messages_sent: list[int]  # per node, from the nodes' sync metrics
    buckets_sent: list[int]
    messages_received: list[int]
    redis_calls: dict[str, int]
    errors: int = 0
    converged_after_s: float | None = None  # end of load -> every node has the total
    drained_after_s: float | None = None  # end of load -> no node sends or receives
    lag: Lag | None = None

    @property
    def hits_per_node_per_s(self) -> float:
        return self.hits / NODES / self.seconds

    @property
    def messages_per_node_per_s(self) -> float:
        return statistics.mean(self.messages_sent) / self.seconds

    @property
    def max_messages_per_node_per_s(self) -> float:
        return max(self.messages_sent) / self.seconds

    def per_1000_hits(self, value: float) -> float:
        return 1000 * value / self.hits if self.hits else float("nan")

    @property
    def messages_per_1000_hits(self) -> float:
        return self.per_1000_hits(sum(self.messages_sent))

    @property
    def broker(self) -> dict[str, int]:
        return broker_stats(self.redis_calls, self.layer)

    @property
    def lag_p99_ms(self) -> float:
        if self.lag is None:
            return float("nan")
        others_rate = self.hits / self.seconds * (NODES - 1) / NODES
        return self.lag.staleness_ms(self.lag.p(99), others_rate)

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "hits_per_node_per_s": self.hits_per_node_per_s,
            "messages_per_node_per_s": self.messages_per_node_per_s,
            "max_messages_per_node_per_s": self.max_messages_per_node_per_s,
            "messages_per_1000_hits": self.messages_per_1000_hits,
            "broker": self.broker,
            "redis_commands": sum(self.redis_calls.values()),
            "lag_p99_ms": self.lag_p99_ms,
        }


def wait_quiet(read: Callable[[], object], quiet: float, timeout: float) -> float | None:
    """Seconds until ``read()`` stops changing for ``quiet`` s; None after ``timeout``."""
    started = time.monotonic()
    last, since = read(), time.monotonic()
    while time.monotonic() - started < timeout:
        time.sleep(0.05)
        value = read()
        if value != last:
            last, since = value, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return since - started
    return None


def traffic_http(
    cluster: Cluster, servers: Sequence[DemoServer], interval: float, mode: Mode
) -> Traffic:
    before = [node_state(s) for s in servers]
    baseline = int(before[0]["count"])
    calls_before = command_calls(cluster.redis.port)
    run = LoadRun(servers)
    with lag_sampler(run, baseline) as lag:
        result = run.paced(TARGET_HITS_PER_NODE, mode.traffic_s)
    ended = time.monotonic()
    converged = wait_converged(servers, baseline + result.served, timeout=60)

    def activity() -> object:
        metrics = [node_state(s)["sync"]["metrics"] for s in servers]
        return [(m["messages_sent"], m["messages_received"]) for m in metrics]

    # Until every queued message is sent and received: they all count.
    quiet = wait_quiet(activity, max(0.3, 3 * interval), timeout=mode.drain_timeout_s)
    drained = None if quiet is None else time.monotonic() - ended - max(0.3, 3 * interval)
    after = [node_state(s) for s in servers]
    calls_after = command_calls(cluster.redis.port)
    return Traffic(
        driver="http",
        layer="core",
        interval=interval,
        hits=result.served,
        seconds=result.elapsed,
        hits_per_node=result.per_node,
        messages_sent=metric_deltas(before, after, "messages_sent"),
        buckets_sent=metric_deltas(before, after, "buckets_sent"),
        messages_received=metric_deltas(before, after, "messages_received"),
        redis_calls=calls_delta(calls_before, calls_after),
        errors=result.errors,
        converged_after_s=converged,
        drained_after_s=drained,
        lag=lag,
    )


def traffic_inproc(cluster: Cluster, layer: str, interval: float, mode: Mode) -> Traffic:
    workers = cluster.start_workers(interval, layer)
    try:
        time.sleep(0.5)  # every node has joined the group
        per_node = int(TARGET_HITS_PER_NODE * mode.traffic_s)
        calls_before = command_calls(cluster.redis.port)
        start_at = time.time() + 0.5
        for worker in workers:
            worker.send(
                command="go",
                start_at=start_at,
                rate=TARGET_HITS_PER_NODE,
                hits=per_node,
                expected=per_node * NODES,
                quiet=max(0.3, 3 * interval),
                drain_timeout=mode.drain_timeout_s,
            )
        done = [w.expect("done", mode.traffic_s + 150) for w in workers]
        # Snapshot once every node is quiet: a quiet node may still hear a busy one.
        for worker in workers:
            worker.send(command="report")
        reports = [w.expect("report", 30)["metrics"] for w in workers]
        calls_after = command_calls(cluster.redis.port)
    finally:
        cluster.stop_workers(workers)
    # The load's span: from the common start to the last node's last hit.
    seconds = max(d["end"] for d in done) - start_at
    convergence = [d["converged_after_s"] for d in done]
    drained = [d["drained_after_s"] for d in done]
    return Traffic(
        driver="in-process",
        layer=layer,
        interval=interval,
        hits=sum(d["hits"] for d in done),
        seconds=seconds,
        hits_per_node=[d["hits"] for d in done],
        messages_sent=[r["messages_sent"] for r in reports],
        buckets_sent=[r["buckets_sent"] for r in reports],
        messages_received=[r["messages_received"] for r in reports],
        redis_calls=calls_delta(calls_before, calls_after),
        converged_after_s=None if None in convergence else max(convergence),
        drained_after_s=None if None in drained else max(drained),
    )


# -- scenario B: convergence -----------------------------------------------------------


@dataclass
class Convergence:
    interval: float
    burst_size: int
    samples_s: list[float]  # upper bounds: the answer showing the total had arrived
    lower_s: list[float]  # lower bounds: the last poll that did not show it was sent
    timeouts: int
    discarded: int
    poll_rtt_s: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "lower_p99_ms": 1000 * percentile(self.lower_s, 99),
        }

    @property
    def p50_ms(self) -> float:
        return 1000 * percentile(self.samples_s, 50)

    @property
    def p99_ms(self) -> float:
        return 1000 * percentile(self.samples_s, 99)

    @property
    def max_ms(self) -> float:
        return 1000 * max(self.samples_s) if self.samples_s else float("nan")


def convergence(
    servers: Sequence[DemoServer], interval: float, mode: Mode, rng: random.Random
) -> Convergence:
    clients = [Client(s.port) for s in servers]
    samples: list[float] = []
    lower: list[float] = []
    rtts: list[float] = []
    timeouts = discarded = 0
    baseline = wait_agreement(servers, 30)
    # @ratelimit staggers the shared key's window: it ends at this offset, not at midnight.
    traffic_offset = window_offset(GROUP, KEY, TRAFFIC_PERIOD)

    def poll(
        client: Client, expected: int, since: float, deadline: float
    ) -> tuple[float, float] | None:
        """When this node first showed ``expected``, after ``since``: (lower, upper) bounds.

        The node read its count between a poll's send and its answer: the total was
        there by the answer of the first poll showing it, and not yet when the poll
        before it was sent.
        """
        not_before = 0.0
        while True:
            sent = time.monotonic()
            if sent > deadline:
                return None
            try:
                count = client.count()
            except (OSError, http.client.HTTPException, RuntimeError):
                time.sleep(POLL_EVERY)
                continue
            received = time.monotonic()
            rtts.append(received - sent)
            if count >= expected:
                return (not_before, received - since) if count == expected else None
            not_before = sent - since
            time.sleep(max(0.0, sent + POLL_EVERY - time.monotonic()))

    try:
        with ThreadPoolExecutor(NODES) as pool:
            for _ in range(mode.bursts):
                time.sleep(rng.uniform(0.05, 0.25))  # a random phase against the flush tick
                window = (time.time() - traffic_offset) // TRAFFIC_PERIOD
                target = servers[rng.randrange(NODES)]
                result = load([target], mode.burst_size, threads=5)
                ended = time.monotonic()
                expected = baseline + result["admitted"] + result["limited"]
                deadline = ended + 5.0
                futures = [pool.submit(poll, c, expected, ended, deadline) for c in clients]
                bounds = [f.result() for f in futures]
                if result["errors"] or (time.time() - traffic_offset) // TRAFFIC_PERIOD != window:
                    discarded += 1  # the expected total is unknown: start again from agreement
                    baseline = wait_agreement(servers, 30)
                    continue
                known = [b for b in bounds if b is not None]
                if len(known) < len(bounds):
                    timeouts += 1
                    baseline = wait_agreement(servers, 30)
                    continue
                lower.append(max(b[0] for b in known))
                samples.append(max(b[1] for b in known))
                baseline = expected
    finally:
        for client in clients:
            client.close()
    return Convergence(interval, mode.burst_size, samples, lower, timeouts, discarded, rtts)


# -- scenario C: accuracy ------------------------------------------------------------------


@dataclass
class Accuracy:
    layer: str
    interval: float
    requests: int
    admitted: int
    limited: int
    errors: int
    seconds: float
    waited_for_window_s: float
    staleness_s: float | None  # measured: max(convergence p99, interval)
    converged_after_s: float | None
    lag: Lag

    @property
    def rate(self) -> float:
        return (self.admitted + self.limited) / self.seconds

    @property
    def effective_staleness_s(self) -> float:
        """The staleness window that explains the over-admission: (admitted - limit) / R."""
        return max(0, self.admitted - ACCURACY_LIMIT) / self.rate

    @property
    def lag_p99_ms(self) -> float:
        return self.lag.staleness_ms(self.lag.p(99), self.rate * (NODES - 1) / NODES)

    @property
    def readme_bound(self) -> float:
        return ACCURACY_LIMIT + self.rate * (self.interval + LATENCY_ALLOWANCE)

    @property
    def measured_bound(self) -> float | None:
        if self.staleness_s is None:
            return None
        return ACCURACY_LIMIT + self.rate * self.staleness_s

    @property
    def ok(self) -> bool:
        return ACCURACY_LIMIT <= self.admitted <= self.readme_bound and self.errors == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "exact_limit": ACCURACY_LIMIT,
            "rate_per_s": self.rate,
            "readme_bound": self.readme_bound,
            "measured_bound": self.measured_bound,
            "over_admitted": self.admitted - ACCURACY_LIMIT,
            "effective_staleness_s": self.effective_staleness_s,
            "lag_p99_ms": self.lag_p99_ms,
            "pass": self.ok,
        }


def accuracy(
    cluster: Cluster, layer: str, interval: float, mode: Mode, staleness: float | None
) -> Accuracy:
    servers = cluster.start_servers(interval, layer, ACCURACY_RATE)
    try:
        warm(servers)
        # The window of the shared key that @ratelimit counts: staggered by its offset.
        waited = fresh_window(GROUP, KEY, 60, mode.window_needed_s)
        run = LoadRun(servers)
        with lag_sampler(run) as lag:
            result = run.burst(mode.accuracy_requests, threads=6)
        converged = wait_converged(servers, result.served, timeout=10)
    finally:
        cluster.stop_servers(servers)
    return Accuracy(
        layer=layer,
        interval=interval,
        requests=mode.accuracy_requests,
        admitted=result.admitted,
        limited=result.limited,
        errors=result.errors,
        seconds=result.elapsed,
        waited_for_window_s=waited,
        staleness_s=None if staleness is None else max(staleness, interval),
        converged_after_s=converged,
        lag=lag,
    )


# -- report -----------------------------------------------------------------------------


def fmt_s_as_ms(seconds: float | None, never: str = "not converged") -> str:
    return never if seconds is None else f"{1000 * seconds:,.0f}"


def traffic_table(rows: Sequence[Traffic], drain_timeout: float) -> str:
    lines = [
        "| driver | layer | SYNC_INTERVAL | hits | hits/s per node | msgs/s per node "
        "(mean / max) | msgs per 1,000 hits | Redis group_sends per 1,000 hits | Redis "
        "commands per 1,000 hits | deliveries dropped (over capacity) | node lag p99 during "
        "load (ms) | all agree after load (ms) | queues drained after load (ms) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        broker = r.broker
        dropped = broker.get("dropped_over_capacity")
        lag = "n/a" if r.lag is None else f"{r.lag_p99_ms:,.0f}"
        drain = f"> {drain_timeout:g} s (cut off)"
        at_least = ">= " if r.drained_after_s is None else ""  # counted until the cut-off
        lines.append(
            f"| {r.driver} | {r.layer} | {interval_label(r.interval)} | {r.hits:,} "
            f"| {r.hits_per_node_per_s:,.0f} | {r.messages_per_node_per_s:,.1f} / "
            f"{r.max_messages_per_node_per_s:,.1f} | {at_least}{r.messages_per_1000_hits:,.1f} "
            f"| {at_least}{r.per_1000_hits(broker['group_sends']):,.1f} "
            f"| {r.per_1000_hits(sum(r.redis_calls.values())):,.0f} "
            f"| {'n/a' if dropped is None else f'{dropped:,}'} | {lag} "
            f"| {fmt_s_as_ms(r.converged_after_s)} | {fmt_s_as_ms(r.drained_after_s, drain)} |"
        )
    return "\n".join(lines)


def redis_table(rows: Sequence[Traffic], top: int = 8) -> str:
    names: list[str] = []
    for r in rows:
        names.extend(n for n in list(r.redis_calls)[:top] if n not in names)
    head = " | ".join(f"{r.driver} {r.layer} {r.interval:g} s" for r in rows)
    lines = [
        f"| Redis command (calls per 1,000 hits) | {head} |",
        "| --- |" + " ---: |" * len(rows),
    ]
    for name in names:
        cells = " | ".join(f"{1000 * r.redis_calls.get(name, 0) / r.hits:,.1f}" for r in rows)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def convergence_table(rows: Sequence[Convergence]) -> str:
    lines = [
        "| SYNC_INTERVAL | bursts | hits per burst | p50 (ms) | p99 (ms) | max (ms) "
        "| p99 lower bound (ms) | timeouts (> 5 s) | poll round trip p50 / p99 (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        rtt50 = 1000 * percentile(r.poll_rtt_s, 50)
        rtt99 = 1000 * percentile(r.poll_rtt_s, 99)
        lines.append(
            f"| {interval_label(r.interval)} | {len(r.samples_s)} | {r.burst_size} "
            f"| {r.p50_ms:.0f} | {r.p99_ms:.0f} | {r.max_ms:.0f} "
            f"| {1000 * percentile(r.lower_s, 99):.0f} | {r.timeouts} "
            f"| {rtt50:.1f} / {rtt99:.1f} |"
        )
    return "\n".join(lines)


def accuracy_table(rows: Sequence[Accuracy]) -> str:
    lines = [
        "| layer | SYNC_INTERVAL | requests | R (req/s) | admitted | exact | over | limited "
        "| errors | bound, L = 0.1 s (README) | bound, measured T | over / R (ms) | node lag "
        "p99 during load (ms) | verdict |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | --- |",
    ]
    for r in rows:
        measured = r.measured_bound
        measured_text = (
            "n/a"
            if measured is None or r.staleness_s is None
            else f"{measured:.0f} (T = {1000 * r.staleness_s:.0f} ms)"
        )
        lines.append(
            f"| {r.layer} | {interval_label(r.interval)} | {r.requests:,} | {r.rate:,.0f} "
            f"| {r.admitted} | {ACCURACY_LIMIT} | {r.admitted - ACCURACY_LIMIT:+d} | {r.limited} "
            f"| {r.errors} | {r.readme_bound:.0f} | {measured_text} "
            f"| {1000 * r.effective_staleness_s:.0f} | {r.lag_p99_ms:,.0f} | {verdict(r.ok)} |"
        )
    return "\n".join(lines)


def traffic_targets(rows: Sequence[Traffic], driver: str) -> tuple[list[str], dict[str, Any]]:
    """The two sync-traffic target lines for one driver, and their values."""
    batched = next(
        (r for r in rows if r.driver == driver and r.layer == "core" and r.interval > 0), None
    )
    per_hit = next(
        (r for r in rows if r.driver == driver and r.layer == "core" and r.interval == 0), None
    )
    if batched is None:
        return [], {}
    rate = batched.hits_per_node_per_s
    reached = rate >= 0.9 * TARGET_HITS_PER_NODE
    per_node = batched.max_messages_per_node_per_s
    fewer = batched.hits / sum(batched.messages_sent) if sum(batched.messages_sent) else 0.0
    messages_ok = per_node <= MESSAGES_TARGET
    fewer_ok = fewer >= FEWER_TARGET
    values: dict[str, Any] = {
        "hits_per_node_per_s": rate,
        "condition_reached": reached,
        "messages_per_node_per_s": per_node,
        "messages_pass": messages_ok if reached else None,
        "fewer_than_one_per_hit": fewer,
        "fewer_pass": fewer_ok if reached else None,
    }
    if reached:
        lines = [
            f"{driver}, batched: {per_node:.1f} msgs/s per node (busiest node) at {rate:,.0f} "
            f"hits/s per node (target <= {MESSAGES_TARGET:g}): {verdict(messages_ok)}",
            f"{driver}: batching sends {fewer:.1f}x fewer messages than one per hit "
            f"(target >= {FEWER_TARGET:g}x): {verdict(fewer_ok)}",
        ]
    else:
        lines = [
            f"{driver}, batched: {per_node:.1f} msgs/s per node (busiest node) at {rate:,.0f} "
            f"hits/s per node: the targets' condition ({TARGET_HITS_PER_NODE:,.0f} hits/s per "
            "node) is out of reach over HTTP on this machine: no verdict (see in-process)",
            f"{driver}: batching sends {fewer:.1f}x fewer messages than one per hit at this "
            f"rate; batched messages/s do not grow with hits (one per busy interval), so "
            f"{per_node:.1f} msgs/s at {TARGET_HITS_PER_NODE:,.0f} hits/s would be "
            f"{TARGET_HITS_PER_NODE / per_node if per_node else 0:.0f}x",
        ]
    if per_hit is not None and batched.messages_per_1000_hits:
        ratio = per_hit.messages_per_1000_hits / batched.messages_per_1000_hits
        lines.append(
            f"{driver}: SYNC_INTERVAL = 0 sends {per_hit.messages_per_1000_hits:,.0f} msgs per "
            f"1,000 hits, batched {batched.messages_per_1000_hits:,.1f}: {ratio:.1f}x (measured)"
        )
        values["interval0_vs_batched"] = ratio
    return lines, values


def machine_info(redis_port: int) -> dict[str, Any]:
    import channels
    import channels_redis
    import django

    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        nproc = os.cpu_count() or 0
    return {
        "cpu": cpu_model(),
        "nproc": nproc,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "django": django.get_version(),
        "channels": getattr(channels, "__version__", "?"),
        "channels_redis": getattr(channels_redis, "__version__", "?"),
        "redis": redis_info(redis_port, "server").get("redis_version", "?"),
        "platform": platform.platform(),
    }


# -- the in-process driver (this file run with --worker) --------------------------------


def worker_main() -> int:
    """A Django process hitting one key at a paced rate; the parent steers it over stdin."""
    setup_django()
    from django_dratelimit.limiter import get_limiter

    limiter = get_limiter()
    limiter.get(GROUP, KEY, TRAFFIC_RATE)  # the first use starts the sync thread
    sync = limiter.sync
    node = sync.node if sync is not None else None
    if node is None:
        emit("error", detail="no sync thread (is REDIS_URL set?)")
        return 1
    emit("ready", pid=os.getpid(), node=limiter.store.origin)
    before: dict[str, Any] = {}
    for line in sys.stdin:
        command = json.loads(line)
        if command["command"] == "go":
            before = node.metrics.as_dict()
            start_at, rate, hits = command["start_at"], command["rate"], command["hits"]
            time.sleep(max(0.0, start_at - time.time()))
            begin = time.time()
            for i in range(hits):
                delay = begin + i / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                limiter.hit(GROUP, KEY, TRAFFIC_RATE)
            end = time.time()
            converged_after: float | None = None
            while time.time() - end < 60:
                if limiter.get(GROUP, KEY, TRAFFIC_RATE).count >= command["expected"]:
                    converged_after = time.time() - end
                    break
                time.sleep(0.002)

            def activity() -> object:
                return (node.metrics.messages_sent, node.metrics.messages_received)

            quiet = command["quiet"]
            drained = wait_quiet(activity, quiet, timeout=command["drain_timeout"])
            emit(
                "done",
                hits=hits,
                end=end,
                rate=hits / (end - begin) if end > begin else 0.0,
                converged_after_s=converged_after,
                drained_after_s=None if drained is None else time.time() - end - quiet,
            )
        elif command["command"] == "report":
            after = node.metrics.as_dict()
            numbers = {k: v for k, v in after.items() if isinstance(v, int)}
            emit("report", metrics={k: v - before.get(k, 0) for k, v in numbers.items()})
        else:
            break
    limiter.close()
    return 0


# -- main ---------------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM tears down like Ctrl-C


def run(mode: Mode, json_path: Path, seed: int) -> int:
    rng = random.Random(seed)
    load_before = load_average()
    started = time.monotonic()
    traffic: list[Traffic] = []
    bursts: list[Convergence] = []
    accuracies: list[Accuracy] = []

    def step(what: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {what}", file=sys.stderr, flush=True)

    with Cluster() as cluster:
        info = machine_info(cluster.redis.port)
        # A (HTTP) and B share servers: the traffic rate is never reached, one window a day.
        for interval in INTERVALS:
            step(f"A/B: 3 uvicorn servers, core layer, SYNC_INTERVAL={interval:g}")
            servers = cluster.start_servers(interval, "core", TRAFFIC_RATE)
            try:
                warm(servers)
                traffic.append(traffic_http(cluster, servers, interval, mode))
                step(f"B: {mode.bursts} bursts of {mode.burst_size} hits")
                bursts.append(convergence(servers, interval, mode, rng))
            finally:
                cluster.stop_servers(servers)
        for layer in mode.inproc_layers:
            for interval in INTERVALS:
                step(f"A: in-process driver, {layer} layer, SYNC_INTERVAL={interval:g}")
                traffic.append(traffic_inproc(cluster, layer, interval, mode))
        p99 = {b.interval: percentile(b.samples_s, 99) for b in bursts if b.samples_s}
        for layer in mode.accuracy_layers:
            for interval in INTERVALS:
                step(f"C: accuracy, {layer} layer, SYNC_INTERVAL={interval:g}")
                accuracies.append(accuracy(cluster, layer, interval, mode, p99.get(interval)))
    elapsed = time.monotonic() - started
    load_after = load_average()

    out: list[str] = []
    out.append(
        f"machine: CPU {info['cpu']}; nproc {info['nproc']}; {info['python']}; "
        f"Django {info['django']}; channels {info['channels']}; channels_redis "
        f"{info['channels_redis']}; Redis {info['redis']}"
    )
    out.append(
        f"mode: {mode.name}; {NODES} nodes on one redis-server, uvicorn 1 worker each, "
        f"DEBUG off; ANTI_ENTROPY_INTERVAL {ANTI_ENTROPY:g} s; {elapsed:.0f} s; load average "
        f"before: {load_before}, after: {load_after}"
    )
    out.append("")
    out.append(
        f"## A. Sync traffic (one key; target {TARGET_HITS_PER_NODE:,.0f} hits/s per node, "
        f"{mode.traffic_s:g} s)"
    )
    out.append("")
    out.append(traffic_table(traffic, mode.drain_timeout_s))
    out.append("")
    out.append(
        "msgs: group_sends counted by the nodes' own sync metrics (messages_sent), over the "
        "load's duration; Redis group_sends: from INFO commandstats (core layer: EVAL - "
        "BZPOPMIN, pub/sub: PUBLISH); deliveries dropped: a member's queue was at the core "
        "layer's capacity (ZCOUNT - EXPIRE); node lag: hits answered before a poll minus "
        "the count the node then reports (a lower bound), polled every 50 ms, as time at "
        "the other nodes' rate; "
        "drained: no node sent or received for 0.3 s (or 3 intervals)."
    )
    out.append("")
    out.append(redis_table([t for t in traffic if t.layer == "core"]))
    out.append("")
    target_values: dict[str, Any] = {}
    for driver in ("in-process", "http"):
        lines, values = traffic_targets(traffic, driver)
        out.extend(lines)
        target_values[driver] = values
    out.append("")
    out.append("## B. Convergence after a burst (core layer; end of burst -> every node agrees)")
    out.append("")
    out.append(convergence_table(bursts))
    out.append("")
    out.append(
        f"poll every {1000 * POLL_EVERY:g} ms per node, concurrently; a sample is the time "
        "the last node's answer with the new total arrived (an upper bound); the lower bound "
        "is when that node's previous poll, still without it, was sent. Slow polls (a busy "
        "host) widen the gap."
    )
    convergence_values: dict[str, Any] = {}
    for b in bursts:
        if b.interval > 0:
            limit_ms = CONVERGENCE_TARGET_INTERVALS * b.interval * 1000
            ok = bool(b.samples_s) and b.timeouts == 0 and b.p99_ms < limit_ms
            out.append(
                f"convergence p99 = {b.p99_ms:.0f} ms (target < {CONVERGENCE_TARGET_INTERVALS} "
                f"sync intervals = {limit_ms:.0f} ms): {verdict(ok)}"
            )
            convergence_values = {"p99_ms": b.p99_ms, "target_ms": limit_ms, "pass": ok}
    out.append("")
    out.append(
        f"## C. Accuracy ({ACCURACY_RATE} shared by {NODES} servers, "
        f"{mode.accuracy_requests:,} requests, 6 threads round-robin)"
    )
    out.append("")
    out.append(accuracy_table(accuracies))
    out.append("")
    out.append(
        f"bound: admitted <= limit + R x (SYNC_INTERVAL + L), README's L = "
        f"{LATENCY_ALLOWANCE:g} s; 'measured T' uses T = max(B's p99 convergence, "
        "SYNC_INTERVAL) for SYNC_INTERVAL + L; over / R: the staleness window that "
        "explains the over-admission; node lag: as in A, sampled during this load."
    )
    for a in accuracies:
        waited = (
            f"; waited {a.waited_for_window_s:.1f} s for a fresh minute window"
            if a.waited_for_window_s > 0
            else ""
        )
        out.append(
            f"accuracy {a.layer} {a.interval:g} s: admitted {a.admitted} vs exact "
            f"{ACCURACY_LIMIT}, bound {a.readme_bound:.0f} at R = {a.rate:,.0f} req/s "
            f"(target: within the README bound): {verdict(a.ok)}{waited}; all agree "
            f"{fmt_s_as_ms(a.converged_after_s)} ms after the load"
        )
    print("\n".join(out))

    json_path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": info,
        "mode": asdict(mode),
        "seed": seed,
        "elapsed_s": elapsed,
        "load_average": {"before": load_before, "after": load_after},
        "traffic": [t.as_dict() for t in traffic],
        "convergence": [b.as_dict() for b in bursts],
        "accuracy": [a.as_dict() for a in accuracies],
        "targets": {
            "traffic": target_values,
            "convergence": convergence_values,
            "accuracy": [a.ok for a in accuracies],
        },
    }
    json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"\nresults: {json_path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few seconds per scenario (CI)")
    parser.add_argument(
        "--json", metavar="PATH", type=Path, default=DEFAULT_JSON, help="JSON results file"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed for burst targets and pauses")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main()
    # Ctrl-C and SIGTERM both tear everything down (SIGINT may arrive ignored, e.g. from `&`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(QUICK if args.quick else FULL, args.json, args.seed)
    except KeyboardInterrupt:
        print("interrupted; every process was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
