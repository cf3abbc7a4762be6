"""The partition of issue 15 with budgets on: the cut-off process admits its last share only.

Three uvicorn servers with budgets on (the default; the rest of the suite turns
them off); P reaches Redis through a proxy. A key with a limit of 100 a minute
is loaded, then the proxy resets P's connections and refuses new ones for 10 s
while every process is loaded. P gets no new picture of the cluster, so its
plan stays as it was: it admits what it was last promised beyond its count,
its *share* ``s``, and no more. The connected side takes back P's unused
promise once it lapses (``max(1 s, 4 rounds)``), so it goes up to the limit
less what P had counted. The window admits at most ``L + s`` (docs/budgets.md)
plus the budgets' rounding slack. After the restore every process converges on
the exact totals.

The scenario runs three times (a module fixture, see ``CUTS``): cut while the
bucket's first equal promises still hold, cut once the counts alone put it in
budget mode, and cut far from the limit (no budget yet: P gives itself an equal
share of what remains at its first broker error). Each test asserts one promise.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster import RedisServer, meet, wait_for
from tests.faults.conftest import (
    LATENCY_ALLOWANCE,
    SYNC_INTERVAL,
    Fleet,
    converge,
    counts,
    fresh_key,
    keep,
    proc,
    server_env,
)
from tests.faults.load import Loader, Reply, tally
from tests.faults.proxy import Proxy

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

ACC_GROUP, LIMIT, PROCESSES = "bench-acc", 100, 3
RATE = f"{LIMIT}/m"
CUT_FOR = 10.0
LOADED_FOR = CUT_FOR - 2.5  # the load during the cut; then the connected side settles
# The first burst: most of the limit at once, so the key's observed rate is high and
# budget mode starts with a few hits to spare; then one hit per process at a time.
BURST, STEP = 75, PROCESSES
# A fresh bucket starts with equal promises (L // n each) that hold for max(1 s,
# 4 rounds). Three cuts: "promised" while they hold (the plan at the cut is what
# was left of them), "counted" once they lapsed (the plan comes from the counts,
# in budget mode by its rule: what remains is small against one round's hits),
# and "far": FAR hits only, promises lapsed, no process in budget mode at the cut.
CUTS = ("promised", "counted", "far")
PROMISES_LAPSE = 1.2
FAR = 30
# Budget mode's margin, the one issue 11's targets give every load (at most 103, plus
# one per process, for a limit of 100; docs/budgets.md): one hit per process for the
# largest-remainder rounding and the floors, and 3 for what two pictures a round apart
# disagree on. Here that is the moment P's promise lapses: budgets refuse, refused hits
# are not counted, the connected side's observed rate falls, and one of them may decide
# on totals for a round while the other still holds a share. Measured 0 to 3 over
# L - c_P on a quiet machine, 5 once under CI's load.
SLACK = 3 + PROCESSES


def plan_of(server: Any, key: str) -> dict[str, int] | None:
    """The levels a process planned for ``key`` (its own report), or None if not in budget mode."""
    for plan in proc(server)["plans"]:
        # @ratelimit stores the key with its rate: "key [100/60s]".
        if plan["group"] == ACC_GROUP and plan["key"].partition(" [")[0] == key:
            levels: dict[str, int] = plan["levels"]
            return levels
    return None


def admitted(replies: list[Reply], port: int | None = None, other_than: int | None = None) -> int:
    return sum(
        r.status == 200
        for r in replies
        if (port is None or r.port == port) and (other_than is None or r.port != other_than)
    )


@pytest.fixture(scope="module", params=CUTS)
def partition(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    redis = RedisServer()
    redis.start()
    proxy = Proxy(redis.port).start()
    fleet = Fleet()
    try:
        env = {"DEMO_BENCH_ACC_RATE": RATE, "DRATELIMIT_BUDGETS": "1"}
        cut_off = fleet("uvicorn", server_env(proxy.url, **env))
        others = [fleet("uvicorn", server_env(redis.url, **env)) for _ in range(PROCESSES - 1)]
        nodes = [cut_off, *others]
        meet(nodes)
        # A window that has just begun: the scenario takes about 20 s of it, and the
        # observed rate (count / time the window has run) is high after the burst.
        key = fresh_key(ACC_GROUP, 60, needed=57)
        path = f"/bench/eventual/acc/?k={key}"
        acc = {"group": ACC_GROUP, "key": key, "rate": RATE}

        # Near the limit (but for the "far" cut): hits until every process decides on
        # a budget. Refusals by a budget are not counted: the count is what was admitted.
        cut = request.param
        first = FAR if cut == "far" else BURST
        before = Loader(nodes, path=path, threads=3, total=first).run().replies
        if cut != "promised":
            time.sleep(PROMISES_LAPSE)
            before += Loader(nodes, path=path, threads=3, total=STEP).run().replies
        plans: list[dict[str, int] | None] = []
        while True:
            converge(nodes, admitted(before), 10, **acc)
            time.sleep(0.5)  # a few rounds: the last pictures are in, the plans settled
            plans = [plan_of(n, key) for n in nodes]
            if cut == "far" or all(plans) or admitted(before) >= LIMIT:
                break
            before += Loader(nodes, path=path, threads=3, total=STEP).run().replies
        cut_off_origin = proc(cut_off)["node"]
        plan_at_cut = plans[0]
        own_before = admitted(before, port=cut_off.port)

        proxy.cut()
        cut_at = time.monotonic()
        during_load = Loader(nodes, path=path, threads=3, pause=0.005).start()
        time.sleep(LOADED_FOR)
        during = during_load.stop().replies
        p_during = admitted(during, port=cut_off.port)
        others_during = admitted(during, other_than=cut_off.port)
        result: dict[str, Any] = {}
        # The connected side agrees once its last round is in; on what, it says
        # (hits refused at the limit itself, outside budget mode, are counted too).
        wait_for(lambda: len(set(counts(others, **acc))) == 1, 10, "the others to agree")
        local: dict[str, Any] = {
            "cut_off": counts([cut_off], **acc)[0],
            "others": counts(others, **acc),
        }
        plan_at_end = plan_of(cut_off, key)
        time.sleep(max(0.0, CUT_FOR - (time.monotonic() - cut_at)))
        proxy.restore()
        restored = time.monotonic()
        # The exact totals: the count of before the cut, plus what each side added.
        exact = local["others"][0] + local["cut_off"] - admitted(before)
        try:
            converge(nodes, exact, 30, **acc)
            result["converged_after"] = time.monotonic() - restored
        except AssertionError as exc:
            result["converge_error"] = str(exc)
        sync = proc(cut_off)["sync"]
        result.update(
            cut=cut,
            figures=f"partition_budgets_{cut}",
            before=before,
            during=during,
            cut_off_port=cut_off.port,
            origin=cut_off_origin,
            plan_at_cut=plan_at_cut,
            plan_at_end=plan_at_end,
            plans_before=plans,
            own_before=own_before,
            p_during=p_during,
            others_during=others_during,
            local=local,
            broker_errors=sync["metrics"]["broker_errors"] if sync else None,
        )
        yield result
    finally:
        fleet.close()
        proxy.close()
        redis.close()


def last_share(partition: dict[str, Any]) -> int:
    """What the cut-off process may admit beyond its own count, by its plan during the cut."""
    plan = partition["plan_at_end"]
    assert plan, "cut off, P decides on totals: it may admit all that remains alone"
    share = int(plan[partition["origin"]]) - int(partition["own_before"])
    assert share >= 0, plan
    return share


def test_every_request_is_answered_and_none_is_a_5xx(partition: dict[str, Any]) -> None:
    for phase in ("before", "during"):
        counted = tally(partition[phase])
        assert counted["no_answer"] == counted["server_errors"] == counted["other"] == 0, counted


def test_the_cut_off_process_admits_its_last_share_only(partition: dict[str, Any]) -> None:
    plans, before = partition["plans_before"], admitted(partition["before"])
    share = last_share(partition)
    if partition["cut"] == "far":
        # Nobody was in budget mode at the cut. P decides on totals until its first
        # failed send (``early`` hits: at most its hits of one round, the interval plus
        # the loopback latency allowance), then gives every process the equal share of
        # what remained, as a fresh bucket starts with.
        assert not any(plans), plans
        plan, port = partition["plan_at_end"], partition["cut_off_port"]
        others = sum(v for o, v in plan.items() if o != partition["origin"])
        equal = (others - admitted(partition["before"], other_than=port)) // (PROCESSES - 1)
        early = share - equal
        assert equal == (LIMIT - before - early) // PROCESSES, plan
        p_replies = [r for r in partition["during"] if r.port == port]
        p_rate = len(p_replies) / (max(r.done for r in p_replies) - min(r.sent for r in p_replies))
        assert 0 <= early <= p_rate * (SYNC_INTERVAL + LATENCY_ALLOWANCE), (early, p_rate)
        keep(partition["figures"], admitted_on_totals_before_noticing=early)
    else:
        # Every process was in budget mode at the cut, and with no picture while cut
        # off the plan P decides on stays the one it had.
        assert all(plans), plans
        assert partition["plan_at_end"] == partition["plan_at_cut"]
    # P got a third of a load of hundreds of requests, far more than its share: it
    # admits all of it, and not one more (no margin: the plan is P's own and fixed).
    assert partition["p_during"] == share, (partition["p_during"], partition["plan_at_cut"])
    # Its count is its own hits on top of what it knew of the others at the cut.
    assert partition["local"]["cut_off"] == before + partition["p_during"]
    keep(
        partition["figures"],
        processes=PROCESSES,
        limit=LIMIT,
        cut_for_s=CUT_FOR,
        admitted_before_cut=before,
        cut_off_count_at_cut=partition["own_before"],
        cut_off_share=share,
        admitted_by_cut_off=partition["p_during"],
        cut_off_broker_errors=partition["broker_errors"],
    )


def test_the_connected_side_and_the_window_stay_within_the_partition_bound(
    partition: dict[str, Any],
) -> None:
    before, during = partition["before"], partition["during"]
    share = last_share(partition)
    port = partition["cut_off_port"]
    # The connected side goes on with budgets among itself; once P's promise lapses
    # it counts P at what P had counted at the cut: it admits up to the limit less
    # that, plus the budgets' slack.
    connected = admitted(before, other_than=port) + partition["others_during"]
    seen = {k: partition[k] for k in ("own_before", "p_during", "others_during", "plans_before")}
    assert connected <= LIMIT - partition["own_before"] + SLACK, (connected, share, seen)
    # The window: L + s (docs/budgets.md, partition), plus the same slack.
    in_window = admitted(before) + partition["p_during"] + partition["others_during"]
    assert in_window <= LIMIT + share + SLACK, (in_window, share, seen)
    elapsed = max(r.done for r in during) - min(r.sent for r in during)
    plan = partition["plan_at_end"]
    others_levels = sum(level for o, level in plan.items() if o != partition["origin"])
    keep(
        partition["figures"],
        # What P's last plan left the others: they get P's unused share on top once
        # P's promise lapses (admitted_by_others minus this).
        others_share_at_cut=others_levels - admitted(before, other_than=port),
        admitted_by_others=partition["others_during"],
        connected_side_total=connected,
        admitted_in_window=in_window,
        bound_in_window=LIMIT + share + SLACK,
        requests_during_cut=len(during),
        rate_per_s=round(len(during) / elapsed),
    )


def test_every_process_converges_on_the_exact_totals_after_the_restore(
    partition: dict[str, Any],
) -> None:
    # What each side counted while cut, on top of the count of before the cut (which
    # was what was admitted: refusals by a budget are not counted).
    before = admitted(partition["before"])
    assert partition["local"]["others"][0] >= before + partition["others_during"]
    assert "converge_error" not in partition, partition.get("converge_error")
    keep(partition["figures"], converged_after_restore_s=round(partition["converged_after"], 2))
