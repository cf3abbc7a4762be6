"""End to end: what a rate limiter costs per request, and how exact it is across processes.

The demo project runs as 3 server processes (3 x ``uvicorn --workers 1``, then
3 x ``gunicorn -w 1`` sync workers) on a redis-server the benchmark starts
itself. A load generator in a separate process (``wrk`` when installed, else a
keep-alive Python client) drives the same tiny JSON view behind each limiter
(``testproject/bench_views.py``):

1. no limiter (the baseline);
2. ``@ratelimit`` eventual mode, batched sync (``SYNC_INTERVAL`` = 0.05 s, the
   default), on channels_redis' ``RedisChannelLayer``; 2b. the same on
   ``RedisPubSubChannelLayer``;
3. the same with ``SYNC_INTERVAL = 0`` (one broker message per hit);
4. strict mode on django-redis (skipped while ``@ratelimit`` has no ``consistency``);
5. django-ratelimit 4.1 on django-redis (the same Redis);
6. django-ratelimit 4.1 on LocMemCache (per-process counts).

For each: requests per second, latency p50/p99, the ratio to the baseline,
server and Redis CPU per request, Redis commands per request (``INFO
commandstats`` deltas) and broker messages per request (the sync threads' own
counters). Each set of servers measures the baseline too, and the variants take
turns in rounds, so that the ratios hold up on a machine shared with other work.
An accuracy pass sends 1,000 requests round-robin to a limit of 100 per minute
and counts what got through.

Run from the repository root::

    python bench/bench_http.py              # full run, about 4 minutes on 2 cores
    python bench/bench_http.py --quick      # smoke run for CI (about a minute), no thresholds

The full run writes ``bench/results/http.json`` and ``docs/bench_*.png``; the
quick run writes to a temporary directory unless ``--out`` is given. It always
exits 0: the target lines report PASS or FAIL, they do not gate. Re-render the
charts from a results file with ``python bench/render.py``.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from machine import cpu_model  # noqa: E402

from django_dratelimit.local.scopes import window_offset  # noqa: E402

LOOPBACK = "127.0.0.1"
SERVERS = 3
SYNC_INTERVAL = 0.05  # the default, used by the batched variant
LATENCY_ALLOWANCE = 0.1  # README's L for a saturated host
ACC_LIMIT = 100
ACC_RATE = f"{ACC_LIMIT}/m"
ACC_PERIOD = 60
THROUGHPUT_RATE = "1000000/m"
DEFAULT_JSON = ROOT / "bench" / "results" / "http.json"
DEFAULT_CHARTS = ROOT / "docs"

# Targets from the issue.
MAX_COST = 0.10  # eventual loses at most 10% of the baseline's throughput
MIN_SPEEDUP = 2.0  # eventual at least 2x django-ratelimit on django-redis
MIN_MESSAGE_RATIO = 40.0  # batched sends at least 40x fewer broker messages than interval 0
LOCMEM_TOLERANCE = 0.1  # "about N x limit"


@dataclass(frozen=True)
class Mode:
    name: str
    warmup_s: float
    round_s: int  # whole seconds: wrk's -d
    rounds: int  # the variants of a server set take turns, round after round
    connections: int  # per server
    acc_requests: int
    acc_margin_s: float  # an accuracy run needs this long before its window ends
    drain_s: float  # after a run, wait at most this long for queued sync messages to go out
    paired: bool  # measure the baseline again on every set of servers


FULL = Mode(
    "full",
    warmup_s=1.0,
    round_s=2,
    rounds=3,
    connections=8,
    acc_requests=1000,
    acc_margin_s=8,
    drain_s=15,
    paired=True,
)
QUICK = Mode(
    "quick",
    warmup_s=0.2,
    round_s=1,
    rounds=1,
    connections=4,
    acc_requests=300,
    acc_margin_s=2,
    drain_s=2,
    paired=False,  # a smoke run: compare with the first set's baseline only
)


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    path: str  # throughput endpoint; the accuracy endpoint is path + "acc/"
    cluster: bool  # uses this app's sync (report broker messages)
    sync_interval: float | None = None
    # "stagger": this app's windows, shifted by crc32(group NUL key) % period (scopes.py);
    # "crc": django-ratelimit's, shifted by crc32(key) % period.
    windows: str = "stagger"
    acc_group: str = "bench-acc"  # the accuracy view's group (testproject/bench_views.py)


@dataclass(frozen=True)
class ServerSet:
    """Variants that share one set of server processes (the same settings)."""

    name: str
    env: dict[str, str]
    variants: tuple[Variant, ...]


BASELINE = Variant("baseline", "no limiter (baseline)", "/bench/noop/", cluster=False)
EVENTUAL = Variant(
    "eventual",
    "dratelimit eventual, batched (SYNC_INTERVAL=0.05)",
    "/bench/eventual/",
    cluster=True,
    sync_interval=SYNC_INTERVAL,
)
EVENTUAL_0 = Variant(
    "eventual_0",
    "dratelimit eventual, SYNC_INTERVAL=0",
    "/bench/eventual/",
    cluster=True,
    sync_interval=0.0,
)
EVENTUAL_PUBSUB = Variant(
    "eventual_pubsub",
    "dratelimit eventual, batched, RedisPubSubChannelLayer",
    "/bench/eventual/",
    cluster=True,
    sync_interval=SYNC_INTERVAL,
)
# The baseline again on every other set of servers: each limiter is compared with the
# baseline measured on its own servers, in the same minutes.
PAIRED_BASELINE = Variant(
    "paired_baseline", "no limiter (on this set's servers)", "/bench/noop/", cluster=False
)
STRICT = Variant(
    "strict",
    "dratelimit strict, django-redis",
    "/bench/strict/",
    cluster=False,
    acc_group="bench-strict-acc",
)
DR_REDIS = Variant(
    "dr_redis", "django-ratelimit 4.1, django-redis", "/bench/dr/", cluster=False, windows="crc"
)
DR_LOCMEM = Variant(
    "dr_locmem", "django-ratelimit 4.1, LocMemCache", "/bench/dr/", cluster=False, windows="crc"
)
VARIANTS = (
    BASELINE,
    EVENTUAL,
    EVENTUAL_PUBSUB,
    EVENTUAL_0,
    STRICT,
    DR_REDIS,
    DR_LOCMEM,
)

SERVER_SETS = (
    ServerSet(
        "eventual",
        {
            "DRATELIMIT_SYNC_INTERVAL": str(SYNC_INTERVAL),
            "DEMO_STRICT_CACHE": "redis",
            "DRATELIMIT_LAYER": "core",
        },
        (BASELINE, EVENTUAL, STRICT),
    ),
    # The variants above use channels_redis' RedisChannelLayer; the next one the
    # pub/sub layer (the demo's default, and what README recommends).
    ServerSet(
        "eventual_pubsub",
        {"DRATELIMIT_SYNC_INTERVAL": str(SYNC_INTERVAL), "DRATELIMIT_LAYER": "pubsub"},
        (EVENTUAL_PUBSUB,),
    ),
    ServerSet(
        "eventual_0", {"DRATELIMIT_SYNC_INTERVAL": "0", "DRATELIMIT_LAYER": "core"}, (EVENTUAL_0,)
    ),
    ServerSet("dr_redis", {"DEMO_RATELIMIT_CACHE": "redis"}, (DR_REDIS,)),
    ServerSet("dr_locmem", {"DEMO_RATELIMIT_CACHE": "locmem"}, (DR_LOCMEM,)),
)


# -- the load generator (runs in its own process; imports nothing from Django) ---------


@dataclass
class LoadSpec:
    ports: list[int]
    path: str
    connections: int  # per server
    duration_s: float = 0.0  # duration mode: send until then
    count: int = 0  # count mode: exactly this many requests, round-robin over the servers
    max_requests: int = 2_000_000
    timeout_s: float = 10.0


@dataclass
class LoadResult:
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    elapsed_s: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    per_server: list[int] = field(default_factory=list)
    loader: str = "python"


class _Target:
    def __init__(self, index: int, port: int, path: str, quota: int) -> None:
        self.index = index
        self.port = port
        self.request = f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n\r\n".encode()
        self.remaining = quota  # count mode only
        self.done = 0


class _LoadGen:
    """Keep-alive HTTP/1.1 clients on asyncio protocols: one request in flight per connection."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        count_mode = spec.count > 0
        shares = [spec.count // len(spec.ports)] * len(spec.ports)
        for i in range(spec.count % len(spec.ports)):
            shares[i] += 1
        self.targets = [
            _Target(i, port, spec.path, shares[i] if count_mode else 0)
            for i, port in enumerate(spec.ports)
        ]
        self.count_mode = count_mode
        self.latencies = array.array("d")
        self.statuses: dict[int, int] = {}
        self.errors = 0
        self.sent = 0
        self.in_flight = 0
        self.deadline = 0.0
        self.loop = asyncio.get_running_loop()
        self.finished = self.loop.create_future()
        self.stopping = False

    def may_send(self, target: _Target) -> bool:
        if self.stopping or self.sent >= self.spec.max_requests:
            return False
        if self.count_mode:
            if target.remaining <= 0:
                return False
            target.remaining -= 1
            return True
        return time.perf_counter() < self.deadline

    def completed(self, target: _Target, status: int | None, latency: float) -> None:
        self.in_flight -= 1
        target.done += 1
        if status is None:
            self.errors += 1
        else:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.latencies.append(latency)

    def check_finished(self) -> None:
        if self.in_flight == 0 and not self.finished.done():
            idle = all(not self._more_for(t) for t in self.targets)
            if idle:
                self.finished.set_result(None)

    def _more_for(self, target: _Target) -> bool:
        if self.stopping or self.sent >= self.spec.max_requests:
            return False
        if self.count_mode:
            return target.remaining > 0
        return time.perf_counter() < self.deadline

    async def connect(self, target: _Target) -> None:
        while self._more_for(target):
            try:
                await self.loop.create_connection(
                    lambda: _Client(self, target), LOOPBACK, target.port
                )
                return
            except OSError:
                self.errors += 1
                await asyncio.sleep(0.05)
        self.check_finished()

    async def run(self) -> LoadResult:
        start = time.perf_counter()
        self.deadline = start + self.spec.duration_s
        for target in self.targets:
            for _ in range(self.spec.connections):
                self.loop.create_task(self.connect(target))
        limit = (self.spec.duration_s or 60.0) + self.spec.timeout_s
        try:
            await asyncio.wait_for(asyncio.shield(self.finished), limit)
        except TimeoutError:
            self.stopping = True
        elapsed = time.perf_counter() - start
        latencies = sorted(self.latencies)

        def pct(q: float) -> float:
            if not latencies:
                return 0.0
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

        served = sum(self.statuses.values())
        return LoadResult(
            requests=served,
            statuses={str(k): v for k, v in sorted(self.statuses.items())},
            errors=self.errors,
            elapsed_s=elapsed,
            rps=served / elapsed if elapsed > 0 else 0.0,
            p50_ms=pct(0.50),
            p90_ms=pct(0.90),
            p99_ms=pct(0.99),
            max_ms=latencies[-1] * 1000 if latencies else 0.0,
            per_server=[t.done for t in self.targets],
        )


class _Client(asyncio.Protocol):
    def __init__(self, gen: _LoadGen, target: _Target) -> None:
        self.gen = gen
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.need = -1  # bytes of the current response, once its head is in
        self.status = 0
        self.close_after = False
        self.t0 = 0.0
        self.pending = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.send_next()

    def send_next(self) -> None:
        assert self.transport is not None
        if not self.gen.may_send(self.target):
            self.transport.close()
            self.gen.check_finished()
            return
        self.gen.sent += 1
        self.gen.in_flight += 1
        self.pending = True
        self.t0 = time.perf_counter()
        self.transport.write(self.target.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.need < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            self.status = int(head[9:12])
            start = head.find(b"\r\ncontent-length:")
            length = 0
            if start >= 0:
                stop = head.find(b"\r\n", start + 2)
                length = int(head[start + 17 : stop if stop >= 0 else None])
            self.close_after = b"\r\nconnection: close" in head
            self.need = end + 4 + length
        if len(self.buffer) < self.need:
            return
        latency = time.perf_counter() - self.t0
        self.buffer = b""
        self.need = -1
        self.pending = False
        self.gen.completed(self.target, self.status, latency)
        if self.close_after:
            assert self.transport is not None
            self.transport.close()
            self.gen.loop.create_task(self.gen.connect(self.target))
        else:
            self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pending:
            self.pending = False
            self.gen.completed(self.target, None, 0.0)
            self.gen.loop.create_task(self.gen.connect(self.target))
        self.gen.check_finished()


def loadgen_main(spec_json: str) -> None:
    spec = LoadSpec(**json.loads(spec_json))

    async def main() -> LoadResult:
        return await _LoadGen(spec).run()

    result = asyncio.run(main())
    print(json.dumps(asdict(result)))


# -- wrk -----------------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def parse_wrk(output: str) -> LoadResult:
    """The parts of ``wrk --latency`` output the tables need."""
    percentiles = {
        m[1]: _wrk_ms(m[2]) for m in re.finditer(r"^\s+(50|90|99)%\s+(\S+)$", output, re.M)
    }
    total = re.search(r"^\s+(\d+) requests in ([\d.]+)(\w+)", output, re.M)
    if total is None:
        raise ValueError(f"unexpected wrk output:\n{output}")
    requests = int(total[1])
    elapsed = _wrk_ms(total[2] + total[3]) / 1000
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    limited = int(non_2xx[1]) if non_2xx else 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = sum(int(g) for g in socket_errors.groups()) if socket_errors else 0
    return LoadResult(
        requests=requests,
        statuses={"2xx": requests - limited, "non-2xx": limited},
        errors=errors,
        elapsed_s=elapsed,
        rps=requests / elapsed if elapsed else 0.0,
        p50_ms=percentiles.get("50", 0.0),
        p90_ms=percentiles.get("90", 0.0),
        p99_ms=percentiles.get("99", 0.0),
        per_server=[requests],
        loader="wrk",
    )


# -- running things -----------------------------------------------------------------


class Children:
    """Every process this benchmark started, so that teardown can always reach them."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self.lock = threading.Lock()

    def popen(self, command: list[str]) -> subprocess.Popen[bytes]:
        with self.lock:
            process = subprocess.Popen(
                command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            self.processes.append(process)
        return process

    def wait(self, process: subprocess.Popen[bytes], timeout: float) -> str:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            raise RuntimeError(f"load generator timed out after {timeout} s") from None
        finally:
            with self.lock:
                self.processes.remove(process)
        if process.returncode != 0:
            raise RuntimeError(f"load generator failed ({process.returncode}):\n{err.decode()}")
        return out.decode()

    def kill_all(self) -> None:
        with self.lock:
            for process in self.processes:
                if process.poll() is None:
                    process.kill()
                    process.wait(10)
            self.processes.clear()


def run_python_load(children: Children, spec: LoadSpec) -> LoadResult:
    command = [sys.executable, str(Path(__file__).resolve()), "--loadgen", json.dumps(asdict(spec))]
    budget = (spec.duration_s or 60.0) + spec.timeout_s + 15
    out = children.wait(children.popen(command), budget)
    return LoadResult(**json.loads(out))


def run_wrk(children: Children, wrk: str, spec: LoadSpec) -> LoadResult:
    """One wrk per server, all at once; totals summed, percentiles averaged by requests."""
    seconds = max(1, round(spec.duration_s))
    processes = [
        children.popen(
            [
                wrk,
                "-t1",
                f"-c{spec.connections}",
                f"-d{seconds}s",
                "--latency",
                f"http://{LOOPBACK}:{port}{spec.path}",
            ]
        )
        for port in spec.ports
    ]
    results = [parse_wrk(children.wait(p, seconds + 30)) for p in processes]
    total = sum(r.requests for r in results)

    def mean(attr: str) -> float:
        return sum(getattr(r, attr) * r.requests for r in results) / total if total else 0.0

    statuses: dict[str, int] = {}
    for r in results:
        for k, v in r.statuses.items():
            statuses[k] = statuses.get(k, 0) + v
    return LoadResult(
        requests=total,
        statuses=statuses,
        errors=sum(r.errors for r in results),
        elapsed_s=max(r.elapsed_s for r in results),
        rps=sum(r.rps for r in results),
        p50_ms=mean("p50_ms"),
        p90_ms=mean("p90_ms"),
        p99_ms=mean("p99_ms"),
        per_server=[r.requests for r in results],
        loader="wrk",
    )


class Redis:
    """A redis-py client for the benchmark's own redis-server: stats and flushes."""

    def __init__(self, port: int) -> None:
        import redis

        self.client = redis.Redis(host=LOOPBACK, port=port)

    def commandstats(self) -> dict[str, int]:
        stats: dict[str, Any] = self.client.info("commandstats")
        return {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if name.startswith("cmdstat_")
        }

    def version(self) -> str:
        info: dict[str, Any] = self.client.info("server")
        return str(info["redis_version"])

    def flushall(self) -> None:
        self.client.flushall()

    def close(self) -> None:
        self.client.close()


def command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Calls per command between two snapshots, leaving out the benchmark's own."""
    own = {"info", "flushall", "hello", "client|setinfo", "ping"}
    delta = {
        name: after[name] - before.get(name, 0)
        for name in after
        if name not in own and after[name] > before.get(name, 0)
    }
    return dict(sorted(delta.items(), key=lambda kv: -kv[1]))


def start_servers(kind: str, env: dict[str, str]) -> list[Any]:
    from tests.cluster import DemoServer

    servers = [DemoServer(kind, env) for _ in range(SERVERS)]
    errors: list[BaseException] = []

    def start(server: Any) -> None:
        try:
            server.start()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for s in servers:
            s.stop()
        raise errors[0]
    return servers


def cpu_seconds(groups: set[int], pids: set[int]) -> tuple[float, float]:
    """CPU time (user + system) of every process in ``groups``, and of ``pids``."""
    tick = os.sysconf("SC_CLK_TCK")
    in_groups = in_pids = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        used = (int(fields[11]) + int(fields[12])) / tick
        if int(fields[2]) in groups:
            in_groups += used
        if int(entry.name) in pids:
            in_pids += used
    return in_groups, in_pids


def sync_messages(servers: list[Any]) -> int:
    """Broker messages sent so far by the servers' sync threads."""
    total = 0
    for server in servers:
        info = server.state().get("sync") or {}
        total += int(info.get("metrics", {}).get("messages_sent", 0))
    return total


# -- the benchmark ------------------------------------------------------------------


@dataclass
class Throughput:
    variant: str
    label: str
    server: str
    skipped: str = ""
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    vs_baseline: float = 0.0
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    redis_cmds_per_req: float = 0.0
    redis_top: dict[str, int] = field(default_factory=dict)
    broker_msgs_per_req: float | None = None
    broker_msgs: int | None = None
    drain_s: float | None = None  # how long the sync threads kept sending after the run
    server_cpu_us_per_req: float = 0.0  # CPU time of all server processes per request
    redis_cpu_us_per_req: float = 0.0
    paired_baseline_rps: float = 0.0  # the baseline on the same servers, just before
    paired_baseline_cpu_us: float = 0.0  # and its server CPU per request
    rps_rounds: list[float] = field(default_factory=list)
    per_server: list[int] = field(default_factory=list)


@dataclass
class Accuracy:
    variant: str
    label: str
    server: str
    skipped: str = ""
    requests: int = 0
    admitted: int = 0
    limited: int = 0
    errors: int = 0
    exact: int = ACC_LIMIT
    rate_rps: float = 0.0
    elapsed_s: float = 0.0
    bound: float | None = None  # README's bound, eventual mode only
    per_process_limit: int = SERVERS * ACC_LIMIT  # what per-process counting lets through


@dataclass
class Round:
    """One turn of one variant: a fixed-duration run and what it cost."""

    result: LoadResult
    server_cpu_s: float
    redis_cpu_s: float
    commands: dict[str, int]
    broker_msgs: int | None
    drain_s: float | None


def aggregate(
    kind: str, variant: Variant, rounds: list[Round], noop: list[Round] | None
) -> Throughput:
    """Medians of the rounds for rates and latencies; totals for the per-request costs."""
    served = max(sum(r.result.requests for r in rounds), 1)
    commands: dict[str, int] = {}
    for r in rounds:
        for name, calls in r.commands.items():
            commands[name] = commands.get(name, 0) + calls
    commands = dict(sorted(commands.items(), key=lambda kv: -kv[1]))
    statuses: dict[str, int] = {}
    for r in rounds:
        for status, n in r.result.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    # Each round against the baseline's round just before it, on the same servers.
    ratios = [
        r.result.rps / n.result.rps
        for r, n in zip(rounds, noop or [], strict=False)
        if n.result.rps
    ]
    row = Throughput(
        variant=variant.name,
        label=variant.label,
        server=kind,
        rps=statistics.median(r.result.rps for r in rounds),
        p50_ms=statistics.median(r.result.p50_ms for r in rounds),
        p90_ms=statistics.median(r.result.p90_ms for r in rounds),
        p99_ms=statistics.median(r.result.p99_ms for r in rounds),
        vs_baseline=statistics.median(ratios) if ratios else 0.0,
        requests=served,
        statuses=statuses,
        errors=sum(r.result.errors for r in rounds),
        redis_cmds_per_req=sum(commands.values()) / served,
        redis_top=dict(list(commands.items())[:6]),
        per_server=[sum(x) for x in zip(*(r.result.per_server for r in rounds), strict=True)],
        server_cpu_us_per_req=sum(r.server_cpu_s for r in rounds) * 1e6 / served,
        redis_cpu_us_per_req=sum(r.redis_cpu_s for r in rounds) * 1e6 / served,
        rps_rounds=[round(r.result.rps, 1) for r in rounds],
    )
    if variant.cluster:
        row.broker_msgs = sum(r.broker_msgs or 0 for r in rounds)
        row.broker_msgs_per_req = row.broker_msgs / served
        drains = [r.drain_s for r in rounds]
        row.drain_s = None if None in drains else max(d for d in drains if d is not None)
    return row


class Bench:
    def __init__(self, mode: Mode, loader: str, wrk: str | None, kinds: list[str]) -> None:
        self.mode = mode
        self.loader = loader
        self.wrk = wrk
        self.kinds = kinds
        self.children = Children()
        self.redis_server: Any = None
        self.redis: Redis | None = None
        self.servers: list[Any] = []
        self.throughput: dict[str, list[Throughput]] = {}
        self.accuracy: dict[str, list[Accuracy]] = {}
        self.pairs: dict[str, list[Throughput]] = {}
        self.strict_available = strict_available()
        self.acc_run = 0

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def load(
        self, path: str, duration: float = 0.0, count: int = 0, python: bool = False
    ) -> LoadResult:
        spec = LoadSpec(
            ports=[s.port for s in self.servers],
            path=path,
            connections=self.mode.connections,
            duration_s=duration,
            count=count,
        )
        if self.loader == "wrk" and count == 0 and not python:
            assert self.wrk is not None
            return run_wrk(self.children, self.wrk, spec)
        return run_python_load(self.children, spec)

    def run(self) -> None:
        from tests.cluster import RedisServer

        self.redis_server = RedisServer()
        self.redis_server.start()
        self.redis = Redis(self.redis_server.port)
        for kind in self.kinds:
            self.throughput[kind] = []
            self.accuracy[kind] = []
            self.pairs[kind] = []
            for server_set in SERVER_SETS:
                self.run_set(kind, server_set)

    def run_set(self, kind: str, server_set: ServerSet) -> None:
        assert self.redis is not None
        wanted = [v for v in server_set.variants if v is not STRICT or self.strict_available]
        for variant in server_set.variants:
            if variant is STRICT and not self.strict_available:
                note = "strict mode not available yet"
                print(f"{kind}: {variant.label}: skipped: {note}", file=sys.stderr)
                self.throughput[kind].append(Throughput(variant.name, variant.label, kind, note))
                self.accuracy[kind].append(Accuracy(variant.name, variant.label, kind, note))
        limiters = [v for v in wanted if v is not BASELINE]
        if not limiters and BASELINE not in wanted:
            return
        self.redis.flushall()  # no channel-layer groups or counters left from the last set
        env = {
            "REDIS_URL": self.redis_server.url,
            "DEMO_BENCH_RATE": THROUGHPUT_RATE,
            "DEMO_BENCH_ACC_RATE": ACC_RATE,
            **server_set.env,
        }
        self.log(f"{kind}: starting {SERVERS} servers for {server_set.name}")
        self.servers = start_servers(kind, env)
        try:
            # Accuracy first: on a quiet cluster, not behind a sync backlog that a
            # throughput run can leave (SYNC_INTERVAL=0 queues one message per hit).
            for variant in limiters:
                self.measure_accuracy(kind, variant)
            # Throughput: every set measures the baseline too, and the variants take
            # turns round after round, so that a burst of other work on a shared machine
            # hits one round (the median drops it) and each limiter is compared with the
            # baseline measured on the same servers a few seconds earlier.
            noop = BASELINE if BASELINE in wanted else PAIRED_BASELINE
            turns = [noop, *limiters] if noop is BASELINE or self.mode.paired else limiters
            for variant in turns:
                self.log(f"{kind}: {variant.label}: warm-up {self.mode.warmup_s} s")
                # Python's client even with wrk: wrk runs whole seconds, a warm-up needs less.
                self.load(variant.path, duration=self.mode.warmup_s, python=True)
                if variant.cluster:
                    self.drain()  # the warm-up's sync messages are not the runs'
            rounds: dict[str, list[Round]] = {v.name: [] for v in turns}
            for number in range(1, self.mode.rounds + 1):
                for variant in turns:
                    rounds[variant.name].append(self.measure_round(kind, variant, number))
            baseline: Throughput | None = None
            if noop in turns:
                baseline = aggregate(kind, noop, rounds[noop.name], rounds[noop.name])
                (self.throughput if noop is BASELINE else self.pairs)[kind].append(baseline)
            for variant in limiters:
                if baseline is not None:
                    row = aggregate(kind, variant, rounds[variant.name], rounds[noop.name])
                    row.paired_baseline_rps = baseline.rps
                    row.paired_baseline_cpu_us = baseline.server_cpu_us_per_req
                else:
                    row = aggregate(kind, variant, rounds[variant.name], None)
                self.throughput[kind].append(row)
                self.log(
                    f"{kind}: {variant.label}: median {row.rps:.0f} req/s, "
                    f"{row.vs_baseline:.2f} x baseline, {row.server_cpu_us_per_req:.0f} us "
                    f"server CPU/req, {row.redis_cmds_per_req:.3f} Redis cmds/req"
                )
        finally:
            for server in self.servers:
                server.stop()
            self.servers = []

    def measure_round(self, kind: str, variant: Variant, number: int) -> Round:
        assert self.redis is not None
        messages_before = sync_messages(self.servers) if variant.cluster else 0
        commands_before = self.redis.commandstats()
        # Each server runs in its own process group (gunicorn's worker included).
        groups = {s.process.pid for s in self.servers}
        redis_pid = {self.redis_server.process.pid}
        cpu_before = cpu_seconds(groups, redis_pid)
        result = self.load(variant.path, duration=self.mode.round_s)
        drained: float | None = None
        if variant.cluster:
            # SYNC_INTERVAL=0 queues one message per hit and may still be sending them:
            # count what these requests caused (messages, CPU), not only what went out
            # during the run; it also keeps the backlog out of the next variant's turn.
            drained = self.drain()
        cpu_after = cpu_seconds(groups, redis_pid)
        this = Round(
            result=result,
            server_cpu_s=cpu_after[0] - cpu_before[0],
            redis_cpu_s=cpu_after[1] - cpu_before[1],
            commands=command_delta(commands_before, self.redis.commandstats()),
            broker_msgs=sync_messages(self.servers) - messages_before if variant.cluster else None,
            drain_s=drained,
        )
        self.log(
            f"{kind}: round {number}: {variant.label}: {result.rps:.0f} req/s, "
            f"p99 {result.p99_ms:.1f} ms"
        )
        return this

    def drain(self) -> float | None:
        """Wait until the sync threads stop sending; the seconds it took, None past the cap."""
        start = time.monotonic()
        last = sync_messages(self.servers)
        steady = 0
        while time.monotonic() - start < self.mode.drain_s:
            time.sleep(0.2)
            now = sync_messages(self.servers)
            steady = steady + 1 if now == last else 0
            last = now
            if steady >= 2:
                return round(time.monotonic() - start, 2)
        return None

    def measure_accuracy(self, kind: str, variant: Variant) -> None:
        self.acc_run += 1
        key = self.accuracy_key(f"acc-{kind}-{variant.name}-{self.acc_run}", variant)
        # Start every process's sync thread (first limiter use) on a key of its own.
        self.load(f"{variant.path}acc/?k=warm-up-{self.acc_run}", count=SERVERS * 10)
        time.sleep(0.3)
        self.log(f"{kind}: {variant.label}: accuracy, {self.mode.acc_requests} requests")
        result = self.load(f"{variant.path}acc/?k={key}", count=self.mode.acc_requests)
        row = Accuracy(
            variant=variant.name,
            label=variant.label,
            server=kind,
            requests=result.requests + result.errors,
            admitted=result.statuses.get("200", 0),
            limited=result.statuses.get("429", 0),
            errors=result.errors
            + sum(v for k, v in result.statuses.items() if k not in {"200", "429"}),
            rate_rps=result.rps,
            elapsed_s=result.elapsed_s,
        )
        if variant.sync_interval is not None:
            row.bound = ACC_LIMIT + result.rps * (variant.sync_interval + LATENCY_ALLOWANCE)
        self.accuracy[kind].append(row)
        self.log(f"{kind}: {variant.label}: admitted {row.admitted} of {row.requests}")

    def accuracy_key(self, base: str, variant: Variant) -> str:
        """A fresh key whose whole run fits in one rate window."""
        margin = self.mode.acc_margin_s
        # Both libraries offset each key's window: pick a key whose window has the most
        # time left instead of waiting.
        now = int(time.time())
        for i in range(1000):
            key = f"{base}-{i}"
            if variant.windows == "crc":
                offset = zlib.crc32(key.encode()) % ACC_PERIOD
            else:
                offset = window_offset(variant.acc_group, key, ACC_PERIOD)
            left = (offset - now % ACC_PERIOD) % ACC_PERIOD
            if left >= max(margin, ACC_PERIOD / 2):
                return key
        return base

    def baseline_rps(self, kind: str) -> float:
        row = self.row(kind, BASELINE.name)
        return row.rps if row is not None else 0.0

    def finish(self) -> None:
        order = {v.name: i for i, v in enumerate(VARIANTS)}
        for table in (self.throughput, self.accuracy):
            for rows in table.values():
                rows.sort(key=lambda r: order[r.variant])
        for kind, rows in self.throughput.items():
            baseline = self.row(kind, BASELINE.name)
            for row in rows:  # without a paired baseline (quick mode): the first set's
                if not row.skipped and not row.vs_baseline and baseline and baseline.rps:
                    row.vs_baseline = row.rps / baseline.rps
                    row.paired_baseline_rps = baseline.rps
                    row.paired_baseline_cpu_us = baseline.server_cpu_us_per_req

    def row(self, kind: str, variant: str) -> Throughput | None:
        for row in self.throughput.get(kind, []):
            if row.variant == variant and not row.skipped:
                return row
        return None

    def acc_row(self, kind: str, variant: str) -> Accuracy | None:
        for row in self.accuracy.get(kind, []):
            if row.variant == variant and not row.skipped:
                return row
        return None

    def close(self) -> None:
        self.children.kill_all()
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
        self.servers = []
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.close()
        if self.redis_server is not None:
            self.redis_server.close()


def strict_available() -> bool:
    """Whether ``@ratelimit`` takes ``consistency`` yet (read without configuring Django)."""
    import inspect

    from django_dratelimit import ratelimit

    return "consistency" in inspect.signature(ratelimit).parameters


# -- targets, report ----------------------------------------------------------------


@dataclass
class Target:
    name: str
    server: str
    passed: bool | None  # None: could not be checked
    detail: str


def check_targets(bench: Bench) -> list[Target]:
    targets: list[Target] = []
    for kind in bench.kinds:
        base_rps = bench.baseline_rps(kind)
        ev = bench.row(kind, EVENTUAL.name)
        ev0 = bench.row(kind, EVENTUAL_0.name)
        drr = bench.row(kind, DR_REDIS.name)
        for variant in (EVENTUAL, EVENTUAL_PUBSUB):
            row = bench.row(kind, variant.name)
            if row and row.vs_baseline:
                reference = row.paired_baseline_rps or base_rps
                cost = 1 - row.vs_baseline
                cpu = ""
                base_row = bench.row(kind, BASELINE.name)
                base_cpu = row.paired_baseline_cpu_us or (
                    base_row.server_cpu_us_per_req if base_row else 0.0
                )
                if base_cpu:
                    cpu_cost = row.server_cpu_us_per_req / base_cpu - 1
                    cpu = (
                        f"; server CPU {row.server_cpu_us_per_req:.0f} vs "
                        f"{base_cpu:.0f} us/req ({cpu_cost:+.0%})"
                    )
                targets.append(
                    Target(
                        f"{variant.label} costs at most {MAX_COST:.0%} of the baseline's "
                        "throughput",
                        kind,
                        cost <= MAX_COST,
                        f"{row.rps:.0f} vs {reference:.0f} req/s (the baseline on the same "
                        f"servers): costs {cost:.1%}{cpu}",
                    )
                )
        for variant in (EVENTUAL, EVENTUAL_PUBSUB):
            row = bench.row(kind, variant.name)
            if row and drr and drr.rps:
                ratio = row.rps / drr.rps
                detail = f"{row.rps:.0f} vs {drr.rps:.0f} req/s: {ratio:.2f}x"
                if row.vs_baseline and drr.vs_baseline:
                    detail += (
                        f" ({row.vs_baseline / drr.vs_baseline:.2f}x after correcting each for "
                        f"its own baseline run; no limiter at all is "
                        f"{1 / drr.vs_baseline:.2f}x django-ratelimit)"
                    )
                targets.append(
                    Target(
                        f"{variant.label} at least {MIN_SPEEDUP:g}x django-ratelimit on "
                        "django-redis",
                        kind,
                        ratio >= MIN_SPEEDUP,
                        detail,
                    )
                )
        if ev and ev0 and ev.broker_msgs_per_req and ev0.broker_msgs_per_req:
            batched = ev.broker_msgs_per_req
            ratio = ev0.broker_msgs_per_req / batched
            per_process = ev.rps / SERVERS
            if ev0.drain_s is not None:
                drained = f"SYNC_INTERVAL=0 kept sending for {ev0.drain_s:.1f} s after the run"
            else:
                drained = "SYNC_INTERVAL=0 was still sending its backlog when counting stopped"
            targets.append(
                Target(
                    f"batched sync sends at least {MIN_MESSAGE_RATIO:g}x fewer broker messages "
                    "than SYNC_INTERVAL=0",
                    kind,
                    ratio >= MIN_MESSAGE_RATIO,
                    f"{batched:.4f} vs {ev0.broker_msgs_per_req:.3f} msgs/req: {ratio:.1f}x fewer; "
                    f"{drained}; batching can at best divide by the hits per process per round: "
                    f"{per_process:.0f} req/s per process x {SYNC_INTERVAL} s = "
                    f"{per_process * SYNC_INTERVAL:.1f} at this load",
                )
            )
        for variant in (EVENTUAL, EVENTUAL_PUBSUB):
            acc = bench.acc_row(kind, variant.name)
            if acc and acc.bound is not None:
                targets.append(
                    Target(
                        f"{variant.label} admits no more than README's bound",
                        kind,
                        acc.admitted <= acc.bound,
                        f"{acc.admitted} admitted, bound {acc.bound:.0f} "
                        f"(= {ACC_LIMIT} + {acc.rate_rps:.0f} req/s x "
                        f"({SYNC_INTERVAL} + {LATENCY_ALLOWANCE}) s)",
                    )
                )
        loc = bench.acc_row(kind, DR_LOCMEM.name)
        if loc:
            expected = SERVERS * ACC_LIMIT
            near = abs(loc.admitted - expected) <= LOCMEM_TOLERANCE * expected
            targets.append(
                Target(
                    f"django-ratelimit on LocMemCache admits about {SERVERS} x limit",
                    kind,
                    near,
                    f"{loc.admitted} admitted, {SERVERS} x {ACC_LIMIT} = {expected}",
                )
            )
    return targets


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def throughput_table(rows: list[Throughput]) -> str:
    lines = [
        "| variant | req/s | p50 ms | p99 ms | vs baseline | server CPU µs/req "
        "| Redis CPU µs/req | Redis cmds/req | broker msgs/req |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r.skipped:
            lines.append(f"| {r.label} | {r.skipped} | | | | | | | |")
            continue
        broker = "" if r.broker_msgs_per_req is None else _fmt(r.broker_msgs_per_req, 4)
        lines.append(
            f"| {r.label} | {r.rps:,.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | "
            f"{r.vs_baseline:.2f} | {r.server_cpu_us_per_req:,.0f} | "
            f"{r.redis_cpu_us_per_req:.0f} | {r.redis_cmds_per_req:.2f} | {broker} |"
        )
    return "\n".join(lines)


def accuracy_table(rows: list[Accuracy], requests: int) -> str:
    lines = [
        f"| variant | admitted of {requests:,} | exact | bound (README) | request rate |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r.skipped:
            lines.append(f"| {r.label} | {r.skipped} | | | |")
            continue
        bound = f"{r.bound:.0f}" if r.bound is not None else ""
        if r.variant == DR_LOCMEM.name:
            bound = f"({SERVERS} x {ACC_LIMIT} = {r.per_process_limit} with per-process counts)"
        lines.append(
            f"| {r.label} | {r.admitted:,} | {r.exact} | {bound} | {r.rate_rps:,.0f} req/s |"
        )
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    cpu = cpu_model()
    versions = {}
    for dist in (
        "Django",
        "uvicorn",
        "gunicorn",
        "channels",
        "channels-redis",
        "django-redis",
        "django-ratelimit",
        "redis",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return {
        "cpu": cpu,
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def report(bench: Bench, results: dict[str, Any], targets: list[Target]) -> str:
    machine = results["machine"]
    out = [
        f"## HTTP benchmark ({results['mode']} mode)",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {machine['cpu']}, {machine['nproc']} cores, Python {machine['python']}, "
        f"Redis {machine.get('redis', '?')}; load average before "
        f"{results['loadavg_before']}, after {results['loadavg_after']}.",
        f"Servers: {SERVERS} processes ({results['layout']}); load: {results['loader_note']}.",
        "",
    ]
    for kind in bench.kinds:
        out += [f"### Throughput, {kind}", "", throughput_table(bench.throughput[kind]), ""]
    out += [
        f"Each set of servers runs its variants and the baseline in turns, "
        f"{bench.mode.rounds} round(s) of {bench.mode.round_s} s each: req/s and latencies "
        'are medians over the rounds; "vs baseline" is the median of each round\'s req/s '
        + (
            "over the baseline's round just before it, on the same servers. "
            if bench.mode.paired
            else "over the first set's baseline. "
        )
        + "CPU is the user + "
        "system time of the server processes (and of redis-server) per request served, "
        "including any sync backlog sent after the run: it moves less than req/s when other "
        "jobs share the machine.",
        "",
    ]
    for kind in bench.kinds:
        out += [
            f"### Accuracy, {kind}: limit {ACC_RATE}, {SERVERS} processes, "
            f"{bench.mode.acc_requests:,} requests round-robin",
            "",
            accuracy_table(bench.accuracy[kind], bench.mode.acc_requests),
            "",
        ]
    out.append("### Targets")
    out.append("")
    for t in targets:
        verdict = "n/a" if t.passed is None else ("PASS" if t.passed else "FAIL")
        out.append(f"- {verdict} [{t.server}] {t.name}: {t.detail}")
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: seconds per variant")
    parser.add_argument("--json", type=Path, help=f"results file (default {DEFAULT_JSON})")
    parser.add_argument("--out", type=Path, help=f"chart directory (default {DEFAULT_CHARTS})")
    parser.add_argument(
        "--loader",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="load generator: wrk when installed (auto), or the bundled Python one",
    )
    parser.add_argument(
        "--servers",
        default="uvicorn,gunicorn",
        help="comma-separated server kinds to run (default: uvicorn,gunicorn)",
    )
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so that ``finally`` tears everything down."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loadgen:
        loadgen_main(args.loadgen)
        return 0
    mode = QUICK if args.quick else FULL
    wrk = shutil.which("wrk")
    loader = args.loader
    if loader == "auto":
        loader = "wrk" if wrk else "python"
    if loader == "wrk" and wrk is None:
        print("wrk is not installed; use --loader python", file=sys.stderr)
        return 0
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    if args.quick and args.out is None:
        out_dir = Path(tempfile.mkdtemp(prefix="dratelimit-bench-"))
        json_path = args.json or out_dir / "http.json"
    else:
        out_dir = args.out or DEFAULT_CHARTS
        json_path = args.json or DEFAULT_JSON

    command = "python bench/bench_http.py" + "".join(f" {a}" for a in sys.argv[1:])
    started = time.time()
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    bench = Bench(mode, loader, wrk, kinds)
    machine = machine_info()
    targets: list[Target] = []
    try:
        with terminate_on_signals():
            bench.run()
            assert bench.redis is not None
            machine["redis"] = bench.redis.version()
    except KeyboardInterrupt:
        print("interrupted: tearing down", file=sys.stderr)
        bench.close()
        return 0
    except Exception as exc:  # exit 0 always: say what broke and report what we have
        print(f"benchmark error: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        bench.close()

    loader_note = (
        f"wrk -t1 -c{mode.connections} per server (accuracy: the Python client)"
        if loader == "wrk"
        else f"a keep-alive Python asyncio client in its own process, "
        f"{mode.connections} connections per server"
    )
    bench.finish()
    results: dict[str, Any] = {
        "command": command,
        "mode": mode.name,
        "mode_settings": asdict(mode),
        "started_at": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(),
        "duration_s": round(time.time() - started, 1),
        "machine": machine,
        "loadavg_before": loadavg_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "layout": "uvicorn: 3 x `uvicorn --workers 1`; gunicorn: 3 x `gunicorn -w 1` sync workers",
        "loader": loader,
        "loader_note": loader_note,
        "strict_available": bench.strict_available,
        "accuracy_limit": ACC_LIMIT,
        "accuracy_requests": mode.acc_requests,
        "servers": SERVERS,
        "throughput": {k: [asdict(r) for r in v] for k, v in bench.throughput.items()},
        "paired_baselines": {k: [asdict(r) for r in v] for k, v in bench.pairs.items()},
        "accuracy": {k: [asdict(r) for r in v] for k, v in bench.accuracy.items()},
    }
    targets = check_targets(bench)
    results["targets"] = [asdict(t) for t in targets]

    print(report(bench, results, targets))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {json_path}")
    try:
        from render import render_charts

        for chart in render_charts(results, out_dir):
            print(f"chart: {chart}")
    except Exception as exc:
        print(f"charts not rendered: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(f"took {results['duration_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
