"""What a new budget costs the sync thread, per changed bucket (``CounterStore.rebudget``).

Every sync message a process receives or sends is a new picture: the sync
thread calls ``rebudget`` for each bucket it changed. A window far from its
limit is skipped after one test; a window near its limit, and every token or
leaky bucket that has been taken from, is planned again. This times each of
the three on one store of a 4-process cluster, ``--buckets`` of them at a time
(best of several repeats, CPU time), and says what that costs a sync thread at
a given rate of changed buckets a second.

    python bench/bench_replan.py                 # 10,000 buckets of each kind, ~10 s
    python bench/bench_replan.py --quick         # 1,000, a second (CI smoke run)
    python bench/bench_replan.py --json out.json

It always exits 0: there is no target, only figures (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

from machine import cpu_model, load_average

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from django.conf import settings  # noqa: E402

from django_dratelimit.limiter import Limiter  # noqa: E402
from django_dratelimit.local.store import BucketKey, CounterStore  # noqa: E402

PEERS = ["b", "c", "d"]
ROUND = 0.1  # one round: the default interval plus the latency allowance
START = 1_700_000_040.0  # a minute's first second: every bucket's window starts here
# Changed buckets a second a sync thread might replan (a busy process's keys near
# their limits): the cost is reported for this rate too.
CHANGED_PER_S = 10_000


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def clustered() -> tuple[CounterStore, Limiter, Clock]:
    store = CounterStore(max_keys=1_000_000, origin="me")
    store.processes, store.members = len(PEERS) + 1, list(PEERS)
    clock = Clock()
    return store, Limiter(store, clock=clock, sync=False), clock


def filled(kind: str, buckets: int) -> tuple[CounterStore, list[BucketKey], Clock]:
    """A store with ``buckets`` of one kind, past their fresh equal shares."""
    store, limiter, clock = clustered()
    algorithm = "token_bucket" if kind == "token bucket" else "fixed_window"
    for n in range(buckets):
        for _ in range(10 if algorithm == "fixed_window" else 5):
            limiter.hit("g", f"k{n}", "100/m", algorithm=algorithm)
    clock.now += 2.0  # the fresh buckets' equal promises have lapsed
    keys: list[BucketKey] = [tuple(e[:4]) for e in store.own_entries(clock.now)]  # type: ignore[misc]
    if kind == "window, near its limit":
        # A peer's 80 on top of our 10: 90 of 100, near at the rate they came.
        store.merge("b", [(*key, 0, 80, 0) for key in keys], clock.now)
    store.rebudget(keys, PEERS, clock.now, ROUND)  # the first picture after the shares
    planned = len(store.planned(clock.now))
    expected = 0 if kind == "window, far" else len(keys)
    assert planned == expected, (kind, planned, expected)
    return store, keys, clock


def time_per_bucket(kind: str, buckets: int, repeats: int) -> float:
    store, keys, clock = filled(kind, buckets)
    best = float("inf")
    gc.disable()
    try:
        for _ in range(repeats):
            clock.now += ROUND
            began = time.process_time_ns()
            store.rebudget(keys, PEERS, clock.now, ROUND)
            best = min(best, (time.process_time_ns() - began) / len(keys))
    finally:
        gc.enable()
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 buckets, 3 repeats")
    parser.add_argument("--buckets", type=int, default=10_000)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    settings.configure(DRATELIMIT={"CHANNEL_LAYER": None})  # the limiter reads its defaults
    buckets, repeats = (1_000, 3) if args.quick else (args.buckets, 9)
    print(f"machine: {cpu_model()}; CPython {sys.version.split()[0]}")
    print(f"{buckets:,} buckets of each kind, best of {repeats}, CPU time; load {load_average()}")
    print()
    print("| changed bucket | ns per rebudget | CPU at 10,000 a second |")
    print("| --- | ---: | ---: |")
    results: list[dict[str, Any]] = []
    for kind in ("window, far", "window, near its limit", "token bucket"):
        ns = time_per_bucket(kind, buckets, repeats)
        share = ns * CHANGED_PER_S / 1e9
        print(f"| {kind} | {ns:,.0f} | {share:.1%} of a core |")
        results.append({"kind": kind, "ns_per_bucket": round(ns), "core_share_at_10k": share})
    if args.json:
        info = {"cpu": cpu_model(), "python": sys.version.split()[0], "buckets": buckets}
        Path(args.json).write_text(json.dumps({"machine": info, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
