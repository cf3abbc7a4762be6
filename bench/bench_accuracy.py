"""Accuracy of eventual mode with budgets: admitted requests against an exact limit.

Four demo processes (uvicorn, or gunicorn with four workers) on one freshly
emptied redis-server and the pub/sub layer, a limit of 100 per minute on one
shared key, 1,000 requests sent as fast as the load can:

- ``round_robin``: spread over every process;
- ``one_process``: every request to one process;
- ``moving``: the first 300 to one process, the rest to another;
- ``broker_down``: Redis is stopped before the burst (round-robin).

Each scenario runs with budgets on (the default) and off (``BUDGETS=False``, the
documented worst case). ``--algorithm token_bucket`` (or ``leaky_bucket``) sends
the same load to the same key limited by a token (or leaky) bucket of 100 a
minute (``/cluster/tokens/``, ``/cluster/leaky/``); a bucket also admits what
refills during the burst, reported as ``refill``.
Run from the repository root::

    python bench/bench_accuracy.py            # both servers, 3 runs each (~4 minutes)
    python bench/bench_accuracy.py --quick    # CI smoke run: uvicorn, 1 run
    python bench/bench_accuracy.py --algorithm token_bucket --runs 1

Everything listens on 127.0.0.1 only; every process started is stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402

from tests.cluster import DemoServer, RedisServer, load, wait_for  # noqa: E402

LIMIT = 100
REQUESTS = 1000
PROCESSES = 4
DEFAULT_JSON = ROOT / "bench" / "results" / "accuracy.json"
# Where each algorithm's load goes, and the state that reads its counter.
PATHS = {
    "fixed_window": "/cluster/hit/",
    "token_bucket": "/cluster/tokens/",
    "leaky_bucket": "/cluster/leaky/",
}
STATE = {
    "fixed_window": {},
    "token_bucket": {"group": "cluster-tokens", "algorithm": "token_bucket"},
    "leaky_bucket": {"group": "cluster-leaky", "algorithm": "leaky_bucket"},
}


def fresh_minute(needed: float = 15.0) -> None:
    """The burst must fall in one window of the key (windows are staggered per key)."""
    left = 60 - time.time() % 60
    if left < needed:
        time.sleep(left + 0.1)


def env(redis: RedisServer, budgets: bool) -> dict[str, str]:
    return {
        "REDIS_URL": redis.url,
        "DEMO_CLUSTER_RATE": f"{LIMIT}/m",
        "DRATELIMIT_LAYER": "pubsub",
        "DRATELIMIT_BUDGETS": "1" if budgets else "0",
        "DRATELIMIT_STAGGER_WINDOWS": "0",
    }


def start(kind: str, environment: dict[str, str]) -> list[DemoServer]:
    if kind == "gunicorn":
        # One address, four workers: the kernel spreads the connections.
        servers = [DemoServer("gunicorn", environment, workers=PROCESSES)]
    else:
        servers = [DemoServer("uvicorn", environment) for _ in range(PROCESSES)]
    for server in servers:
        server.start()
    return servers


def scenario(
    name: str, servers: list[DemoServer], redis: RedisServer, path: str
) -> Callable[[], dict[str, int]]:
    def run() -> dict[str, int]:
        if name == "one_process":
            return load(servers[:1], REQUESTS, path)
        if name == "moving":
            first = load(servers[:1], 300, path)
            rest = load(servers[1:2] if len(servers) > 1 else servers, REQUESTS - 300, path)
            return {k: first[k] + rest[k] for k in first}
        if name == "broker_down":
            redis.stop()
        return load(servers, REQUESTS, path)

    return run


def measure(
    kind: str, name: str, budgets: bool, redis: RedisServer, algorithm: str = "fixed_window"
) -> dict[str, Any]:
    redis.start() if not redis.ping() else redis.command("FLUSHALL")
    servers = start(kind, env(redis, budgets))
    try:
        # Warm every process (the first request joins the cluster) until each one
        # knows the others: gunicorn's kernel-balanced workers need several tries.
        joined: dict[int, int] = {}

        def all_joined() -> bool:
            for server in servers:
                state = server.state()
                joined[state["pid"]] = (state["sync"] or {}).get("peers", 0)
            return len(joined) == PROCESSES and min(joined.values()) == PROCESSES - 1

        wait_for(all_joined, 30, "every process to know the others")
        if kind == "gunicorn" and name in ("one_process", "moving"):
            return {"kind": kind, "scenario": name, "budgets": budgets, "skipped": True}
        fresh_minute()
        started = time.monotonic()
        result = scenario(name, servers, redis, PATHS[algorithm])()
        elapsed = time.monotonic() - started
        if name != "broker_down":
            # Every process ends up agreeing on the count (a bucket's tokens in use
            # fall as it refills: read a moment apart, they may differ by one).
            def agreed() -> bool:
                counts = [int(s.state(**STATE[algorithm])["count"]) for s in servers]
                return max(counts) - min(counts) <= (algorithm != "fixed_window")

            wait_for(agreed, 10, "agreement")
        row: dict[str, Any] = {
            "kind": kind,
            "scenario": name,
            "algorithm": algorithm,
            "budgets": budgets,
            "admitted": result["admitted"],
            "limited": result["limited"],
            "errors": result["errors"],
            "rate": round(REQUESTS / elapsed),
        }
        if algorithm != "fixed_window":
            row["refill"] = math.ceil(LIMIT * elapsed / 60)  # tokens back during the burst
        return row
    finally:
        for server in servers:
            server.stop()
        if not redis.ping():
            redis.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--algorithm", choices=sorted(PATHS), default="fixed_window")
    parser.add_argument("--servers", choices=("uvicorn", "gunicorn"), nargs="+", default=None)
    parser.add_argument("--scenarios", nargs="+", default=None)
    parser.add_argument("--budgets", choices=("on", "off", "both"), default="both")
    args = parser.parse_args(argv)
    kinds = tuple(args.servers or (("uvicorn",) if args.quick else ("uvicorn", "gunicorn")))
    runs = args.runs or (1 if args.quick else 3)
    names: tuple[str, ...] = ("round_robin", "one_process", "moving", "broker_down")
    if args.quick:
        names = ("round_robin", "broker_down")
    names = tuple(args.scenarios or names)
    modes = {"on": (True,), "off": (False,), "both": (True, False)}[args.budgets]
    default_json = DEFAULT_JSON
    if args.algorithm != "fixed_window":
        default_json = DEFAULT_JSON.with_name(f"accuracy_{args.algorithm}.json")
    redis = RedisServer()
    redis.start()
    rows = []
    try:
        for kind in kinds:
            for name in names:
                for budgets in modes:
                    for _ in range(runs):
                        row = measure(kind, name, budgets, redis, args.algorithm)
                        rows.append(row)
                        if not row.get("skipped"):
                            print(
                                f"{kind:8} {name:12} budgets={'on ' if budgets else 'off'} "
                                f"admitted {row['admitted']:4} (limit {LIMIT}"
                                f"{', refill ' + str(row['refill']) if 'refill' in row else ''}), "
                                f"{row['rate']} req/s, errors {row['errors']}",
                                flush=True,
                            )
    finally:
        redis.close()
    out = args.json or (None if args.quick else default_json)
    if out is not None:
        out.write_text(
            json.dumps(
                {
                    "machine": cpu_model(),
                    "algorithm": args.algorithm,
                    "limit": LIMIT,
                    "processes": PROCESSES,
                    "rows": rows,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
