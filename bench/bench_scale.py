"""Sync cost at scale: N processes calling ``limiter.hit`` with their real sync threads.

For each N (4, 8, 16, 32 by default), on one freshly emptied redis-server:

1. **No sync.** N Django processes with no shared channel layer call
   ``limiter.hit`` 50 times a second each (half on 5 keys every process shares,
   half on 50 keys of its own; 1-day windows). CPU per process (getrusage:
   every thread of the process) over the measured seconds.
2. **With sync.** The same N processes on the pub/sub layer (or ``--layer
   core``), same load: CPU per process, sync messages and buckets received per
   process per second, Redis CPU.
3. **Agreement.** After 1 s of quiet every process reports every key's count;
   they must all equal the exact number of hits sent.
4. **Idle.** Nothing is hit for 5 s (windows still live), then CPU per process
   over the next ``--idle`` seconds.

Run from the repository root::

    python bench/bench_scale.py                  # 4, 8, 16, 32 processes (~5 minutes)
    python bench/bench_scale.py --sizes 4 16     # some sizes only
    python bench/bench_scale.py --quick          # CI smoke run: 2 and 4 processes, short

Everything listens on 127.0.0.1 only and every process started is stopped.
The script exits 0 whatever the figures: the target lines report.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from machine import cpu_model, load_average  # noqa: E402
from workers import Worker, emit, redis_info, setup_django  # noqa: E402

from tests.cluster import RedisServer  # noqa: E402

GROUP = "scale"
RATE = "100000000/d"
SHARED_KEYS = 5
OWN_KEYS = 50
HITS_PER_SECOND = 50.0
DEFAULT_JSON = ROOT / "bench" / "results" / "scale.json"
TARGET_CPU = {16: 1.5, 32: 2.0}  # % of a core per process, with sync, hits included
TARGET_IDLE = {32: 0.1}  # % of a core per process, idle


@dataclass(frozen=True)
class Mode:
    sizes: tuple[int, ...]
    load_seconds: float
    idle_seconds: float


FULL = Mode((4, 8, 16, 32), 20.0, 20.0)
QUICK = Mode((2, 4), 3.0, 2.0)


@dataclass
class SizeResult:
    processes: int
    layer: str
    cpu_no_sync: float  # % of one core, mean per process
    cpu_sync: float
    cpu_sync_max: float
    cpu_idle: float
    cpu_idle_max: float
    wall_load: float
    messages_received_per_s: float  # per process
    buckets_received_per_s: float
    messages_sent_per_s: float
    redis_cpu: float  # % of one core during the sync load
    agree: bool
    agree_detail: str
    effective_interval: float | None


# -- the driven process (this file with --worker) ------------------------------------------


def own_keys(index: int) -> list[str]:
    return [f"p{index}-{j}" for j in range(OWN_KEYS)]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker_main() -> int:
    setup_django()
    from django_dratelimit.limiter import get_limiter

    limiter = get_limiter()
    limiter.get(GROUP, "warm", RATE)  # the first use starts the sync thread (if any)
    sync = limiter.sync

    def metrics() -> dict[str, Any]:
        node = sync.node if sync is not None else None
        return node.metrics.as_dict() if node is not None else {}

    def node_info() -> dict[str, Any]:
        node = sync.node if sync is not None else None
        return node.node_info() if node is not None else {}

    emit("ready", pid=os.getpid(), synced=sync is not None)
    for line in sys.stdin:
        command = json.loads(line)
        name = command["command"]
        if name == "load":
            index = command["index"]
            shared = [f"shared-{j}" for j in range(SHARED_KEYS)]
            own = own_keys(index)
            sent: dict[str, int] = {}
            time.sleep(max(0.0, command["start_at"] - time.time()))
            before, cpu0, wall0 = metrics(), cpu_seconds(), time.time()
            hits = int(command["seconds"] * command["rate"])
            for i in range(hits):
                delay = wall0 + i / command["rate"] - time.time()
                if delay > 0:
                    time.sleep(delay)
                key = shared[(i // 2) % SHARED_KEYS] if i % 2 == 0 else own[(i // 2) % OWN_KEYS]
                limiter.hit(GROUP, key, RATE)
                sent[key] = sent.get(key, 0) + 1
            cpu1, wall1, after = cpu_seconds(), time.time(), metrics()
            emit(
                "loaded",
                cpu=cpu1 - cpu0,
                wall=wall1 - wall0,
                sent=sent,
                metrics={k: after[k] - (before.get(k) or 0) for k in after if _number(after[k])},
            )
        elif name == "idle":
            cpu0, wall0 = cpu_seconds(), time.time()
            time.sleep(command["seconds"])
            emit("idled", cpu=cpu_seconds() - cpu0, wall=time.time() - wall0)
        elif name == "totals":
            keys = command["keys"]
            emit(
                "totals",
                counts={k: limiter.get(GROUP, k, RATE).count for k in keys},
                info=node_info(),
            )
    return 0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- the driver ------------------------------------------------------------------------------


def env_for(redis: RedisServer | None, layer: str) -> dict[str, str]:
    env = {
        "DJANGO_DEBUG": "0",
        "DRATELIMIT_LAYER": layer,
        "DRATELIMIT_STARTUP_SYNC_WAIT": "0",
        "REDIS_URL": redis.url if redis is not None else "",
    }
    return env


@contextlib.contextmanager
def started(count: int, env: dict[str, str]) -> Iterator[list[Worker]]:
    workers: list[Worker] = []
    try:
        for _ in range(count):
            workers.append(Worker(Path(__file__), env))
        for worker in workers:
            worker.expect("ready", 120)
        yield workers
    finally:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda w: w.stop(), workers))


def run_load(workers: Sequence[Worker], seconds: float) -> list[dict[str, Any]]:
    start_at = time.time() + 1.0
    for index, worker in enumerate(workers):
        worker.send(
            command="load", index=index, start_at=start_at, seconds=seconds, rate=HITS_PER_SECOND
        )
    return [w.expect("loaded", seconds + 60) for w in workers]


def percent(cpu: float, wall: float) -> float:
    return 100.0 * cpu / wall if wall > 0 else 0.0


def redis_cpu(redis: RedisServer) -> float:
    info = redis_info(redis.port, "cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def measure(size: int, mode: Mode, redis: RedisServer, layer: str) -> SizeResult:
    with started(size, env_for(None, layer)) as workers:
        local = run_load(workers, mode.load_seconds)
    cpu_no_sync = sum(percent(r["cpu"], r["wall"]) for r in local) / size

    redis.command("FLUSHALL")
    with started(size, env_for(redis, layer)) as workers:
        time.sleep(1.0)  # let every process join before the load
        redis_before = redis_cpu(redis)
        loaded = run_load(workers, mode.load_seconds)
        redis_after = redis_cpu(redis)
        wall = max(r["wall"] for r in loaded)
        sync_cpu = [percent(r["cpu"], r["wall"]) for r in loaded]

        def per_s(name: str) -> float:
            return float(sum(r["metrics"].get(name, 0) / r["wall"] for r in loaded)) / size

        expected: dict[str, int] = {}
        for r in loaded:
            for key, n in r["sent"].items():
                expected[key] = expected.get(key, 0) + n
        time.sleep(1.0)  # one second of quiet, then every process must agree
        keys = sorted(expected)
        for worker in workers:
            worker.send(command="totals", keys=keys)
        totals = [w.expect("totals", 60) for w in workers]
        wrong = [
            (i, k, t["counts"][k], expected[k])
            for i, t in enumerate(totals)
            for k in keys
            if t["counts"][k] != expected[k]
        ]
        detail = "all exact" if not wrong else f"{len(wrong)} wrong, e.g. {wrong[:3]}"
        interval = totals[0]["info"].get("effective_interval")
        time.sleep(4.0)  # 5 s without hits in all, then measure idle
        for worker in workers:
            worker.send(command="idle", seconds=mode.idle_seconds)
        idled = [w.expect("idled", mode.idle_seconds + 60) for w in workers]
    idle = [percent(r["cpu"], r["wall"]) for r in idled]
    return SizeResult(
        processes=size,
        layer=layer,
        cpu_no_sync=round(cpu_no_sync, 3),
        cpu_sync=round(sum(sync_cpu) / size, 3),
        cpu_sync_max=round(max(sync_cpu), 3),
        cpu_idle=round(sum(idle) / size, 3),
        cpu_idle_max=round(max(idle), 3),
        wall_load=round(wall, 2),
        messages_received_per_s=round(per_s("messages_received"), 1),
        buckets_received_per_s=round(per_s("buckets_received"), 1),
        messages_sent_per_s=round(per_s("messages_sent"), 1),
        redis_cpu=round(percent(redis_after - redis_before, wall), 2),
        agree=not wrong,
        agree_detail=detail,
        effective_interval=interval,
    )


def report(row: SizeResult) -> None:
    print(
        f"{row.processes:>3} processes: CPU/process no sync {row.cpu_no_sync:.2f}%, "
        f"sync {row.cpu_sync:.2f}% (max {row.cpu_sync_max:.2f}%), "
        f"idle {row.cpu_idle:.3f}% (max {row.cpu_idle_max:.3f}%); "
        f"received {row.messages_received_per_s:.0f} msg/s, "
        f"{row.buckets_received_per_s:.0f} buckets/s; sent {row.messages_sent_per_s:.1f} msg/s; "
        f"Redis {row.redis_cpu:.1f}%; interval {row.effective_interval}; {row.agree_detail}",
        flush=True,
    )
    for size, target in TARGET_CPU.items():
        if row.processes == size:
            ok = row.cpu_sync <= target
            print(f"    target: sync CPU <= {target}% per process: {'met' if ok else 'MISSED'}")
    for size, target in TARGET_IDLE.items():
        if row.processes == size:
            ok = row.cpu_idle <= target
            print(f"    target: idle CPU <= {target}% per process: {'met' if ok else 'MISSED'}")
    if row.processes == 32:
        print(f"    target: exact agreement after 1 s: {'met' if row.agree else 'MISSED'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="CI smoke run")
    parser.add_argument("--sizes", type=int, nargs="*", help="process counts to run")
    parser.add_argument("--layer", choices=("pubsub", "core"), default="pubsub")
    parser.add_argument("--json", type=Path, default=None, help=f"results (default {DEFAULT_JSON})")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main()
    mode = QUICK if args.quick else FULL
    if args.sizes:
        mode = Mode(tuple(args.sizes), mode.load_seconds, mode.idle_seconds)
    out = args.json or (None if args.quick else DEFAULT_JSON)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, load {load_average()}")
    rows = []
    redis = RedisServer()
    redis.start()
    try:
        for size in mode.sizes:
            rows.append(measure(size, mode, redis, args.layer))
            report(rows[-1])
    finally:
        redis.close()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        results = {
            "machine": {"cpu": cpu_model(), "nproc": os.cpu_count()},
            "load_seconds": mode.load_seconds,
            "idle_seconds": mode.idle_seconds,
            "hits_per_second": HITS_PER_SECOND,
            "rows": [asdict(r) for r in rows],
        }
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
