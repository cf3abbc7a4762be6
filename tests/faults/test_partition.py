"""One process loses Redis for 10 s while the others keep it, then gets it back.

Three uvicorn servers; P reaches Redis through a proxy that, for 10 s, resets
every connection and refuses new ones. A key with a limit of 100 is loaded
before (30 hits, seen everywhere) and during the partition. P keeps serving on
what it knows: its own hits and the counts from before. Once the link is back,
every process converges on the exact totals.

The scenario runs once (a module fixture); each test asserts one promise on it.
Budgets are off here (the suite's ``server_env``), so this is the worst case:
each side of the partition admits up to the limit on its own counts. With
budgets on (the default) the cut-off process admits only its last share:
``tests/faults/test_partition_budgets.py``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from testproject.faults import FAULTS_GROUP
from tests.cluster import RedisServer
from tests.faults.conftest import (
    LATENCY_ALLOWANCE,
    SHARED_KEY,
    SYNC_INTERVAL,
    Fleet,
    converge,
    counts,
    fresh_key,
    fresh_window,
    keep,
    proc,
    server_env,
)
from tests.faults.load import Loader, tally
from tests.faults.proxy import Proxy

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

ACC_GROUP, LIMIT, BEFORE = "bench-acc", 100, 30
RATE = f"{LIMIT}/m"
CUT_FOR = 10.0


@pytest.fixture(scope="module")
def partition() -> Iterator[dict[str, Any]]:
    redis = RedisServer()
    redis.start()
    proxy = Proxy(redis.port).start()
    fleet = Fleet()
    try:
        env = {"DEMO_BENCH_ACC_RATE": RATE}
        cut_off = fleet("uvicorn", server_env(proxy.url, **env))
        others = [fleet("uvicorn", server_env(redis.url, **env)) for _ in range(2)]
        nodes = [cut_off, *others]
        fresh_window(FAULTS_GROUP, SHARED_KEY, 3600, needed=120)
        key = fresh_key(ACC_GROUP, 60, needed=45)
        path = f"/bench/eventual/acc/?k={key}"
        acc = {"group": ACC_GROUP, "key": key, "rate": RATE}

        background = Loader(nodes, threads=3, pause=0.01).start()
        try:
            before = Loader(nodes, path=path, threads=3, total=BEFORE).run()
            converge(nodes, BEFORE, 10, **acc)
            proxy.cut()
            cut_at = time.monotonic()
            during = Loader(nodes, path=path, threads=3, total=600).run()
            mine = sum(1 for r in during.replies if r.port == cut_off.port)
            # The two connected ones agree once their last round is in (if they never
            # do, the test says what they saw).
            with contextlib.suppress(AssertionError):
                converge(others, BEFORE + len(during.replies) - mine, 10, **acc)
            local = {"cut_off": counts([cut_off], **acc)[0], "others": counts(others, **acc)}
            time.sleep(max(0.0, CUT_FOR - (time.monotonic() - cut_at)))
            proxy.restore()
            restored = time.monotonic()
            background_snapshot = len(background.snapshot())
            time.sleep(1.0)  # traffic goes on across the restore
        finally:
            background.stop()
        served = len(before.replies) + len(during.replies)
        result: dict[str, Any] = {
            "before": tally(before.replies),
            "during": tally(during.replies),
            "background": tally(background.replies),
            "during_replies": during.replies,
            "cut_off_port": cut_off.port,
            "local": local,
            "served": served,
        }
        try:
            result["converged_in"] = converge(nodes, served, 30, **acc)
            converge(nodes, len(background.replies), 30, group=FAULTS_GROUP, key=SHARED_KEY)
            result["all_converged_after"] = time.monotonic() - restored
        except AssertionError as exc:
            result["converge_error"] = str(exc)
        sync = proc(cut_off)["sync"]
        result["broker_errors"] = sync["metrics"]["broker_errors"] if sync else None
        result["background_before_restore"] = background_snapshot
        yield result
    finally:
        fleet.close()
        proxy.close()
        redis.close()


def admitted_by_side(result: dict[str, Any]) -> tuple[int, int]:
    replies = result["during_replies"]
    port = result["cut_off_port"]
    mine = sum(r.status == 200 for r in replies if r.port == port)
    theirs = sum(r.status == 200 for r in replies if r.port != port)
    return mine, theirs


def request_rate(result: dict[str, Any]) -> float:
    replies = result["during_replies"]
    elapsed: float = max(r.done for r in replies) - min(r.sent for r in replies)
    return len(replies) / elapsed


def test_the_cut_off_process_limits_on_local_counts_and_converges_after(
    partition: dict[str, Any],
) -> None:
    for phase in ("before", "during", "background"):
        counted = partition[phase]
        assert counted["no_answer"] == counted["server_errors"] == counted["other"] == 0, counted

    # During the partition each side counted only its own hits on top of the 30 from before.
    replies = partition["during_replies"]
    port = partition["cut_off_port"]
    mine = sum(1 for r in replies if r.port == port)
    local = partition["local"]
    assert local["cut_off"] == BEFORE + mine, local
    assert local["others"] == [BEFORE + len(replies) - mine] * 2, local

    # The bound without budgets: each side of the partition admits up to the limit on
    # its own counts (P: what is left of it, the others: that plus one sync round).
    p_admitted, others_admitted = admitted_by_side(partition)
    assert p_admitted == LIMIT - BEFORE
    rate = request_rate(partition)
    assert others_admitted <= LIMIT - BEFORE + rate * (SYNC_INTERVAL + LATENCY_ALLOWANCE)
    admitted = BEFORE + p_admitted + others_admitted
    sides = 2
    assert admitted <= sides * LIMIT + rate * (SYNC_INTERVAL + LATENCY_ALLOWANCE)

    assert "converge_error" not in partition, partition.get("converge_error")
    keep(
        "partition",
        cut_for_s=CUT_FOR,
        limit=LIMIT,
        admitted_in_window=admitted,
        admitted_by_cut_off=p_admitted,
        admitted_by_others=others_admitted,
        rate_per_s=round(rate),
        converged_after_restore_s=round(partition["all_converged_after"], 2),
        cut_off_broker_errors=partition["broker_errors"],
        requests=partition["served"] + partition["background"]["admitted"],
    )
