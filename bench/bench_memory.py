"""Bytes per bucket: what 100,000 live buckets cost one process, by tracemalloc and by RSS.

Each variant runs in a fresh child process (RSS is only comparable from a clean
start): import Django and the app, warm up, then create the buckets and measure

- ``tracemalloc``: the Python objects allocated for them and still alive;
- RSS (``/proc/self/status``): what the operating system sees, allocator slack included.

Variants:

- ``store``: ``CounterStore.add`` on distinct keys, as a plain counter store;
- ``limiter``: ``Limiter.hit(group, ip, "100/m")``, the request path's fast path;
- ``ratelimit``: ``@ratelimit``'s scoped keys (``"ip [100/60s]"``) in staggered windows
  (``STAGGER_WINDOWS``, the default), as the decorator's ``limiter.check`` stores them;
- ``synced``: ``limiter`` with the sync thread's dirty tracking on, before a round drains it;
- ``merged``: buckets a peer's sync message created (one remote origin each), as every
  process of a cluster holds for the keys its peers counted;
- ``flood``: ``limiter`` with twice as many distinct keys as ``MAX_KEYS`` (issue 15's
  200,000 keys into 100,000 buckets), the clock standing still: per live bucket, with
  what the evicted ones left behind.

The key strings count as part of a bucket: the store keeps them. The target
(issue 15, a key flood) is under 400 bytes a bucket, by both measures, for every
variant; the script reports PASS or FAIL and always exits 0.

    python bench/bench_memory.py                  # 100,000 buckets, about 30 s
    python bench/bench_memory.py --quick          # 10,000, a few seconds (CI smoke run)
    python bench/bench_memory.py --json bench/results/memory.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from machine import cpu_model, load_average

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = ("store", "limiter", "ratelimit", "synced", "merged", "flood")
BUCKETS = 100_000
GROUP = "bench"
RATE = "100/m"
TARGET_BYTES = 400  # per bucket, every variant, both measures


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def keys(n: int) -> Iterator[str]:
    """Distinct IPv4 addresses, as ``key="ip"`` would see them, one at a time.

    One at a time as requests bring them: a list of them all would keep the flood's
    evicted ones alive to the end, and their freed memory would count as RSS.
    """
    return (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(n))


def measure(variant: str, n: int, traced: bool) -> float:
    """In this (child) process: create ``n`` buckets the variant's way; bytes per bucket.

    ``traced``: by tracemalloc; else by RSS (tracemalloc's own bookkeeping would count).
    """
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django_dratelimit.limiter import Limiter
    from django_dratelimit.local.algorithms import FIXED_WINDOW
    from django_dratelimit.local.store import CounterStore
    from django_dratelimit.rates import parse_rate_string

    store = CounterStore(max_keys=n)
    limiter = Limiter(store, sync=False)
    if variant == "synced":
        store.track_dirty = True  # what a running sync thread turns on
    now = time.time()
    start = int(now // 60 * 60)
    count = 2 * n if variant == "flood" else n
    rates = parse_rate_string(RATE)
    # Warm up on other keys (code paths, caches), then forget them.
    for key in keys(1000):
        limiter.hit("warm", key, RATE)
    store.reset("warm")
    # The key strings exist before the request (it brings them): count them as the
    # bucket's, since the store keeps them alive, by building them after the baseline.
    gc.collect()
    if traced:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0] if traced else rss_bytes()
    if variant == "store":
        for key in keys(count):
            store.add((GROUP, key, 60, start), 1, now)
    elif variant == "merged":
        peer = "0" * 32  # a node id, as new_node_id() makes them
        store.merge(peer, ((GROUP, key, 60, start, 0, 1, 0) for key in keys(count)), now)
    elif variant == "ratelimit":
        for key in keys(count):
            limiter.check(GROUP, key, rates, FIXED_WINDOW, 1, scope="", stagger=True)
    else:
        for key in keys(count):
            limiter.hit(GROUP, key, RATE)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if traced else rss_bytes()
    assert len(store) == n
    return (after - before) / n


def run_child(variant: str, n: int, traced: bool) -> float:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", variant]
    command += ["--buckets", str(n), *(["--traced"] if traced else [])]
    output = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    return float(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 buckets (a smoke run)")
    parser.add_argument("--buckets", type=int, default=None)
    parser.add_argument("--json", type=Path, help="write the results there")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.buckets or (10_000 if args.quick else BUCKETS)
    if args.child:
        print(measure(args.child, n, args.traced))
        return
    load = load_average()
    started = time.monotonic()
    results: list[dict[str, Any]] = [
        {
            "variant": variant,
            "tracemalloc_bytes_per_bucket": round(run_child(variant, n, traced=True)),
            "rss_bytes_per_bucket": round(run_child(variant, n, traced=False)),
        }
        for variant in VARIANTS
    ]
    print(f"{'variant':<10} {'tracemalloc B/bucket':>21} {'RSS B/bucket':>13}  ({n:,} buckets)")
    for r in results:
        print(
            f"{r['variant']:<10} {r['tracemalloc_bytes_per_bucket']:>21} "
            f"{r['rss_bytes_per_bucket']:>13}"
        )
    worst = max(max(r["tracemalloc_bytes_per_bucket"], r["rss_bytes_per_bucket"]) for r in results)
    verdict = "PASS" if worst < TARGET_BYTES else "FAIL"
    print(f"largest: {worst} B a bucket (target < {TARGET_BYTES} B): {verdict}")
    if args.json:
        report = {
            "machine": {
                "cpu": cpu_model(),
                "nproc": os.cpu_count(),
                "python": platform.python_version(),
            },
            "buckets": n,
            "elapsed_s": round(time.monotonic() - started, 1),
            "load_average_before": load,
            "results": results,
            "target": {
                "bytes_per_bucket": TARGET_BYTES,
                "largest": worst,
                "pass": worst < TARGET_BYTES,
            },
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
