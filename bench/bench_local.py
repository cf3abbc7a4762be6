"""Per-operation cost of the local request path, in one process and one run.

Compares, timeit-style (best and median of several repeats, GC off while timing):

1. the floor: a dict increment under a ``threading.Lock`` (``with lock:``, the
   idiomatic form, which the target is measured against; and, for reference, the
   same with ``lock.acquire()``/``release()``, the form the store uses);
2. ``limiter.hit`` on one key: the facade users import, as they call it;
3. ``Limiter.hit`` on one key, on a private instance, with and without the dirty
   tracking a running sync thread turns on;
4. ``Limiter.hit`` cycling over 100,000 distinct keys;
5. our ``is_ratelimited`` on a RequestFactory request, ``key="ip"``;
6. a ``@ratelimit(key="ip")`` view on the same request (the view itself returns at once):
   the decorator's per-request work;
7. django-ratelimit 4.1's ``is_ratelimited`` on the same request, on LocMemCache.

Run from the repository root::

    python bench/bench_local.py               # full run, about 20 s
    python bench/bench_local.py --quick       # smoke run for CI, a few seconds
    python bench/bench_local.py --json out.json
    python bench/bench_local.py --cpu         # CPU time, not wall time (a shared machine)

It always exits 0: the three target lines report PASS or FAIL, they do not gate.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import cycle, islice
from pathlib import Path
from typing import Any

from machine import cpu_model, load_average

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GROUP = "bench"
RATE = "1000000/m"
DISTINCT_KEYS = 100_000
REMOTE_ADDR = "203.0.113.7"
FLOOR_TARGET = 4.0  # limiter.hit (the facade, 1 key) at most this many times the floor
SPEEDUP_TARGET = 10.0  # our is_ratelimited at least this many times faster than django-ratelimit
DECORATOR_TARGET_NS = 1500.0  # a @ratelimit view's per-request work at most this (issue 12)

# A runner executes ``n`` operations back to back; every runner has the same loop shape
# (``for item in islice(items, n): call(item)``) so the loop overhead cancels out in ratios.
Runner = Callable[[int], None]


@dataclass
class Mode:
    repeats: int
    target_s: float  # calibrate each repeat to take at least this long


FULL = Mode(repeats=7, target_s=0.3)
QUICK = Mode(repeats=3, target_s=0.03)


@dataclass
class Result:
    name: str
    number: int  # operations per repeat
    repeat_ns: list[int] = field(default_factory=list)  # wall time of each repeat

    @property
    def best_ns(self) -> float:
        return min(self.repeat_ns) / self.number

    @property
    def median_ns(self) -> float:
        return statistics.median(self.repeat_ns) / self.number

    @property
    def ops_per_s(self) -> float:
        return 1e9 / self.best_ns


# -- Django ---------------------------------------------------------------------------


def setup_django() -> None:
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "channels",
            "django_dratelimit",
            "django_ratelimit",
        ],
        DATABASES={},
        CACHES={
            "default": {
                "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                "LOCATION": "bench",
            }
        },
        # Local-only limiting: no sync thread, nothing on the network.
        DRATELIMIT={"CHANNEL_LAYER": None},
        RATELIMIT_USE_CACHE="default",
        # django-ratelimit refuses LocMemCache in its checks (not shared between processes);
        # fine for a single-process benchmark of the per-call cost.
        SILENCED_SYSTEM_CHECKS=["django_ratelimit.E003", "django_ratelimit.W001"],
        USE_TZ=True,
    )
    django.setup()


# -- timing ---------------------------------------------------------------------------


# Wall time by default; ``--cpu`` switches to this process's CPU time, which other
# processes on a shared machine do not inflate (they still slow the caches down).
_clock_ns: Callable[[], int] = time.perf_counter_ns


def time_once(run: Runner, number: int) -> int:
    """Time of ``number`` operations in ns, with the GC off as timeit does."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = _clock_ns()
        run(number)
        return _clock_ns() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def calibrate(run: Runner, target_s: float, minimum: int = 1) -> int:
    """Like ``timeit.Timer.autorange``: the first ``minimum`` x 1-2-5 step taking ``target_s``."""
    target_ns = target_s * 1e9
    base = minimum
    while True:
        for factor in (1, 2, 5):
            number = base * factor
            if time_once(run, number) >= target_ns:
                return number
        base *= 10


def measure(cases: list[tuple[str, Runner, int]], mode: Mode) -> list[Result]:
    """Calibrate every case, then time them round-robin, one repeat of each per round.

    Interleaving spreads a burst of load from other processes over all the cases
    instead of spoiling one of them, which keeps the ratios honest on a busy machine.
    """
    # Whole passes only (multiple_of), so every repeat touches every key equally often.
    plan = [
        (Result(name, calibrate(run, mode.target_s, minimum=multiple_of)), run)
        for name, run, multiple_of in cases
    ]
    for _ in range(mode.repeats):
        for result, run in plan:
            result.repeat_ns.append(time_once(run, result.number))
    return [result for result, _run in plan]


# -- the operations -----------------------------------------------------------------


def floor_runner(acquire_release: bool = False) -> Runner:
    """A dict increment under a lock: ``with lock:``, or acquire()/release() as the store does."""
    lock = threading.Lock()
    d: dict[str, int] = {}

    def with_block(key: str) -> None:
        with lock:
            d[key] = d.get(key, 0) + 1

    def explicit(key: str) -> None:
        lock.acquire()
        try:
            d[key] = d.get(key, 0) + 1
        finally:
            lock.release()

    floor = explicit if acquire_release else with_block
    items = cycle(["k"])

    def run(n: int) -> None:
        for key in islice(items, n):
            floor(key)

    return run


def facade_runner() -> Runner:
    """``limiter.hit`` exactly as README shows it: the process limiter, from settings."""
    from django_dratelimit.limiter import limiter

    limiter.hit(GROUP, "k", RATE)
    items = cycle(["k"])

    def run(n: int) -> None:
        for key in islice(items, n):
            limiter.hit(GROUP, key, RATE)

    return run


def hit_runner(keys: list[str], algorithm: str | None = None, track_dirty: bool = False) -> Runner:
    from django_dratelimit.limiter import Limiter
    from django_dratelimit.local.store import CounterStore

    store = CounterStore(max_keys=200_000)
    # What a running sync thread turns on: changed buckets are queued for its next
    # round (here nobody drains the queue, as between two rounds).
    store.track_dirty = track_dirty
    limiter = Limiter(store, sync=False)
    hit = limiter.hit
    for key in keys:  # warm up: every bucket exists before timing
        hit(GROUP, key, RATE, algorithm=algorithm)
    items: Iterator[str] = cycle(keys)

    if algorithm is None:

        def run(n: int) -> None:
            for key in islice(items, n):
                hit(GROUP, key, RATE)

    else:

        def run(n: int) -> None:
            for key in islice(items, n):
                hit(GROUP, key, RATE, algorithm=algorithm)

    return run


def make_request() -> Any:
    from django.test import RequestFactory

    return RequestFactory().get("/", REMOTE_ADDR=REMOTE_ADDR)


def is_ratelimited_runner(is_ratelimited: Callable[..., bool], request: Any) -> Runner:
    """Ours or django-ratelimit's: the same function signature, the same request."""
    is_ratelimited(request, group=GROUP, key="ip", rate=RATE, increment=True)
    items = cycle([request])

    def run(n: int) -> None:
        for req in islice(items, n):
            is_ratelimited(req, group=GROUP, key="ip", rate=RATE, increment=True)

    return run


def decorated_view_runner(request: Any) -> Runner:
    """A ``@ratelimit`` view whose body does nothing: what the decorator adds to a request.

    Each call sees the request as a new one is: without the usages list and the
    ``limited`` flag the decorator leaves on it (deleting them is timed too, ~25
    ns). Kept, the list would grow by a Usage a call, millions of them a run.
    """
    from django_dratelimit import ratelimit
    from django_dratelimit.decorators import USAGES_ATTR

    @ratelimit(group=GROUP, key="ip", rate=RATE, block=False)
    def view(request: Any) -> None:
        return None

    left_on_request = request.__dict__
    view(request)
    del left_on_request[USAGES_ATTR], left_on_request["limited"]
    items = cycle([request])

    def run(n: int) -> None:
        for req in islice(items, n):
            view(req)
            del left_on_request[USAGES_ATTR], left_on_request["limited"]

    return run


# -- report ---------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import django

    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        nproc = os.cpu_count() or 0
    return {
        "processor": platform.processor(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "nproc": nproc,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "django": django.get_version(),
    }


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"machine: {info['processor'] or 'unknown'} / {info['machine']}; CPU: {info['cpu']}; "
        f"nproc: {info['nproc']}; {info['implementation']} {info['python']}; "
        f"Django {info['django']}"
    )


def table(results: list[Result], floor: Result) -> str:
    lines = [
        "| operation | ns/op (best) | ns/op (median) | ops/s | ratio vs floor |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.best_ns:,.0f} | {r.median_ns:,.0f} | {r.ops_per_s:,.0f} "
            f"| {r.best_ns / floor.best_ns:.1f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, shorter (CI smoke)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--cpu", action="store_true", help="time with CPU time, not wall time")
    args = parser.parse_args(argv)
    global _clock_ns
    _clock_ns = time.process_time_ns if args.cpu else time.perf_counter_ns
    mode = QUICK if args.quick else FULL

    setup_django()
    load_before = load_average()
    started = time.perf_counter()
    keys = [f"key-{i:06d}" for i in range(DISTINCT_KEYS)]
    request = make_request()
    from django_ratelimit.core import is_ratelimited as their_check

    from django_dratelimit import is_ratelimited as our_check

    cases = [
        ("floor: dict += 1 under a Lock", floor_runner(), 1),
        ("floor, lock.acquire()/release()", floor_runner(acquire_release=True), 1),
        ("limiter.hit (the facade), 1 key", facade_runner(), 1),
        ("Limiter.hit, 1 key", hit_runner(["k"]), 1),
        ("Limiter.hit, 1 key, dirty tracking on", hit_runner(["k"], track_dirty=True), 1),
        (f"Limiter.hit, {DISTINCT_KEYS:,} keys", hit_runner(keys), DISTINCT_KEYS),
        ("django_dratelimit.is_ratelimited", is_ratelimited_runner(our_check, request), 1),
        ("a @ratelimit view (key='ip')", decorated_view_runner(request), 1),
        (
            "django_ratelimit.is_ratelimited (LocMemCache)",
            is_ratelimited_runner(their_check, request),
            1,
        ),
        # The algorithms against fixed window (the Limiter.hit rows above).
        ("Limiter.hit, 1 key, sliding_window", hit_runner(["k"], "sliding_window"), 1),
        ("Limiter.hit, 1 key, token_bucket", hit_runner(["k"], "token_bucket"), 1),
        ("Limiter.hit, 1 key, leaky_bucket", hit_runner(["k"], "leaky_bucket"), 1),
    ]
    results = measure(cases, mode)
    floor, floor_acquire, facade, *_hits = results[:6]
    ours, decorated, theirs = results[6:9]
    elapsed = time.perf_counter() - started

    info = machine_info()
    floor_ratio = facade.best_ns / floor.best_ns
    speedup = theirs.best_ns / ours.best_ns
    floor_ok = floor_ratio <= FLOOR_TARGET
    speedup_ok = speedup >= SPEEDUP_TARGET
    decorator_ok = decorated.best_ns <= DECORATOR_TARGET_NS

    print(machine_line(info))
    print(
        f"mode: {'quick' if args.quick else 'full'}, {mode.repeats} repeats of >= "
        f"{mode.target_s:g} s per operation, interleaved, GC off while timing, "
        f"{'CPU' if args.cpu else 'wall'} time; "
        f"{elapsed:.1f} s; load average before: {load_before}"
    )
    print()
    print(table(results, floor))
    print()
    print(
        f"limiter.hit (the facade, 1 key) is {floor_ratio:.1f}x the floor "
        f"(target <= {FLOOR_TARGET:g}x): "
        f"{'PASS' if floor_ok else 'FAIL'}; "
        f"{facade.best_ns / floor_acquire.best_ns:.1f}x the acquire/release floor (no target)"
    )
    print(
        f"our is_ratelimited is {speedup:.1f}x faster than django-ratelimit on LocMemCache "
        f"(target >= {SPEEDUP_TARGET:g}x): {'PASS' if speedup_ok else 'FAIL'}"
    )
    print(
        f"a @ratelimit view's per-request work is {decorated.best_ns:,.0f} ns (median "
        f"{decorated.median_ns:,.0f}; target <= {DECORATOR_TARGET_NS:,.0f} ns): "
        f"{'PASS' if decorator_ok else 'FAIL'}"
    )

    if args.json:
        payload = {
            "machine": info,
            "mode": {"quick": args.quick, "cpu_time": args.cpu, **asdict(mode)},
            "elapsed_s": elapsed,
            "load_average_before": load_before,
            "results": [
                {
                    "operation": r.name,
                    "number": r.number,
                    "repeat_ns": r.repeat_ns,
                    "best_ns_per_op": r.best_ns,
                    "median_ns_per_op": r.median_ns,
                    "ops_per_s": r.ops_per_s,
                    "ratio_vs_floor": r.best_ns / floor.best_ns,
                }
                for r in results
            ],
            "targets": {
                "hit_vs_floor": {"value": floor_ratio, "target": FLOOR_TARGET, "pass": floor_ok},
                "speedup_vs_django_ratelimit": {
                    "value": speedup,
                    "target": SPEEDUP_TARGET,
                    "pass": speedup_ok,
                },
                "decorator_ns": {
                    "value": decorated.best_ns,
                    "target": DECORATOR_TARGET_NS,
                    "pass": decorator_ok,
                },
            },
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
