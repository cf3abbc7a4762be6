"""``manage.py ratelimit inspect``, ``nodes`` and ``reset`` against sync nodes in this process."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from channels.layers import channel_layers
from django.test import override_settings

from django_dratelimit.conf import conf
from django_dratelimit.limiter import Limiter
from django_dratelimit.local.store import Entry, ResetState
from django_dratelimit.ops import client
from django_dratelimit.ops.table import WIDTH
from django_dratelimit.sync import protocol
from django_dratelimit.sync.keys import signing_keys
from django_dratelimit.sync.layers import close_layer
from tests.cluster import RedisServer, wait_for
from tests.command.conftest import (
    FAST,
    HOUR,
    bucket_key,
    converge,
    fresh_hour,
    run,
    run_json,
)
from tests.conftest import layer_config

# -- inspect ---------------------------------------------------------------------------


def test_inspect_shows_every_bucket_as_every_node_sees_it(
    layer: str, loaded: list[Limiter]
) -> None:
    data = run_json("inspect", "--timeout", FAST)
    assert data["answered"] == 3
    assert data["ignored_replies"] == 0
    rows = [(b["group"], b["key"], b["total"]) for b in data["buckets"]]
    assert rows == [("api", "alice", 7), ("login", "1.2.3.4", 5), ("login", "5.6.7.8", 1)]
    login = data["buckets"][1]
    origins = {lim.store.origin for lim in loaded}
    assert login["nodes"] == dict.fromkeys(origins, 5)  # the per-node view: all agree
    assert (login["min"], login["max"]) == (5, 5)
    assert login["counts"] == {loaded[0].store.origin: 3, loaded[1].store.origin: 2}
    assert login["limit"] == 5  # from the nodes' registry of static rates
    assert data["buckets"][0]["limit"] is None  # "api" registered no rate
    assert login["period"] == HOUR
    assert login["window_start"] == bucket_key("login", "x")[3]
    assert 0 < login["seconds_left"] <= HOUR
    assert {n["node"] for n in data["nodes"]} == origins

    text = run("inspect", "--timeout", FAST)
    lines = text.splitlines()
    assert lines[0].split() == [
        "GROUP", "KEY", "WINDOW", "(UTC)", "LEFT", "COUNT", "LIMIT", "NODES", "MIN..MAX"
    ]  # fmt: skip
    assert lines[1].split()[:2] == ["api", "alice"]
    login_row = lines[2].split()
    assert login_row[:2] == ["login", "1.2.3.4"]
    assert login_row[3] == "1h"  # the window: start time, then the period
    assert login_row[5:] == ["5", "5", "5..5"]
    assert "3 nodes answered within 0.5 s" in text
    assert all(len(line) <= WIDTH for line in lines)


def test_inspect_fits_the_terminal_width(
    core: str, nodes: Callable[[int], list[Limiter]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_hour()
    [node] = nodes(1)
    long_key = "user:" + "x" * 90
    node.hit("password-reset", long_key, "5/h")
    narrow = run("inspect", "--timeout", FAST)
    assert long_key not in narrow
    assert all(len(line) <= 80 for line in narrow.splitlines())
    monkeypatch.setenv("COLUMNS", "200")
    wide = run("inspect", "--timeout", FAST)
    assert long_key in wide
    assert "password-reset" in wide


def test_inspect_filters_and_limits(core: str, loaded: list[Limiter]) -> None:
    data = run_json("inspect", "--group", "login", "--timeout", FAST)
    assert [(b["group"], b["key"]) for b in data["buckets"]] == [
        ("login", "1.2.3.4"),
        ("login", "5.6.7.8"),
    ]
    data = run_json("inspect", "--key", "5.6", "--timeout", FAST)
    assert [b["key"] for b in data["buckets"]] == ["5.6.7.8"]
    data = run_json("inspect", "--limit", "1", "--timeout", FAST)
    assert [b["key"] for b in data["buckets"]] == ["alice"]
    assert data["truncated"] is True
    text = run("inspect", "--limit", "1", "--timeout", FAST)
    assert "Showing the 1 hottest buckets; raise --limit to see more." in text


def test_unknown_groups_and_keys_print_an_empty_result(core: str, loaded: list[Limiter]) -> None:
    text = run("inspect", "--group", "no-such-group", "--timeout", FAST)
    assert text.splitlines() == [
        "No live counters match.",
        f"3 nodes answered within 0.5 s (sync group '{conf.GROUP}').",
    ]
    data = run_json("inspect", "--key", "no-such-key", "--timeout", FAST)
    assert data["buckets"] == []
    assert data["answered"] == 3


def test_a_node_that_lags_shows_as_disagreement(
    core: str, nodes: Callable[[int], list[Limiter]]
) -> None:
    fresh_hour()
    first, second = nodes(2)
    for _ in range(4):
        first.hit("g", "k", "10/h")
    converge([first, second], "g", "k", "10/h", 4)
    # A count only `first` knows of, as if the message to `second` were in flight.
    key = bucket_key("g", "k")
    first.store.merge("elsewhere", [Entry(*key, 0, 6, 0)], time.time())
    data = run_json("inspect", "--timeout", FAST)
    (row,) = data["buckets"]
    assert (row["total"], row["min"], row["max"]) == (10, 4, 10)
    assert row["nodes"] == {first.store.origin: 10, second.store.origin: 4}


# -- nodes -------------------------------------------------------------------------------


def test_nodes_lists_every_process(layer: str, loaded: list[Limiter]) -> None:
    data = run_json("nodes", "--timeout", FAST)
    assert data["answered"] == 3
    by_node = {n["node"]: n for n in data["nodes"]}
    assert set(by_node) == {lim.store.origin for lim in loaded}
    backend = layer_config(layer, "redis://x")["BACKEND"]
    for limiter in loaded:
        info = by_node[limiter.store.origin]
        assert info["pid"] == os.getpid()
        assert info["layer"] == backend
        assert info["group"] == conf.GROUP
        assert info["buckets"] == len(limiter.store)
        assert info["messages_sent"] > 0
        assert info["messages_received"] > 0
        assert info["dropped"] == 0
        assert info["broker_errors"] == 0
        assert info["last_send_ok"] is not None
        assert 0 <= info["uptime"] < 60

    lines = run("nodes", "--timeout", FAST).splitlines()
    assert lines[0].split() == [
        "NODE", "HOST:PID", "UPTIME", "BUCKETS", "SENT", "RECV", "DROP", "LAST", "SEND", "ERRORS"
    ]  # fmt: skip
    assert {line.split()[0] for line in lines[1:4]} == {lim.store.origin[:8] for lim in loaded}
    assert all(f":{os.getpid()}" in line for line in lines[1:4])
    assert lines[5] == f"3 nodes answered within 0.5 s (sync group '{conf.GROUP}')."
    assert lines[6] == f"Channel layer: {backend}."
    assert all(len(line) <= WIDTH for line in lines)


# -- reset -------------------------------------------------------------------------------


def test_reset_zeroes_the_key_everywhere_and_old_messages_cannot_bring_it_back(
    layer: str, loaded: list[Limiter]
) -> None:
    key = bucket_key("login", "1.2.3.4")
    assert not any(lim.hit("login", "1.2.3.4", "5/h").allowed for lim in loaded)
    converge(loaded, "login", "1.2.3.4", "5/h", 8)
    old = loaded[0].store.entries([key])  # a sync message still "in flight"

    text = run("reset", "login", "1.2.3.4", "--timeout", FAST)
    assert text == "Reset key '1.2.3.4' in group 'login': 3 nodes confirmed, 3 buckets removed.\n"
    # Every node confirmed after applying it: no waiting needed.
    assert [lim.get("login", "1.2.3.4", "5/h").count for lim in loaded] == [0, 0, 0]
    assert [lim.get("login", "5.6.7.8", "5/h").count for lim in loaded] == [1, 1, 1]
    assert all(lim.hit("login", "1.2.3.4", "5/h").allowed for lim in loaded)
    converge(loaded, "login", "1.2.3.4", "5/h", 3)

    # The old state, merged directly and sent over the group, is dropped everywhere.
    loaded[1].store.merge(loaded[0].store.origin, old, time.time())
    asyncio.run(send_states([*old, Entry(*bucket_key("marker", "m"), 0, 1, 0)]))
    converge(loaded, "marker", "m", "5/h", 1)  # the old state arrived before the marker
    assert [lim.get("login", "1.2.3.4", "5/h").count for lim in loaded] == [3, 3, 3]
    # Nor does an anti-entropy round (every 0.5 s here).
    nodes = [lim.sync.node for lim in loaded if lim.sync is not None and lim.sync.node]
    sent = [node.metrics.messages_sent for node in nodes]
    wait_for(
        lambda: all(n.metrics.messages_sent > s + 1 for n, s in zip(nodes, sent, strict=True)),
        5,
        "an anti-entropy round",
    )
    assert [lim.get("login", "1.2.3.4", "5/h").count for lim in loaded] == [3, 3, 3]


async def send_states(entries: list[Entry]) -> None:
    layer = channel_layers.make_backend("default")
    payload: dict[str, Any] = {"node": "old-sender", "ch": None, "ts": time.time(), "seq": 1}
    payload["e"] = protocol.encode_entries(entries)
    try:
        await layer.group_send(conf.GROUP, protocol.seal(protocol.STATE, payload, signing_keys()))
    finally:
        await close_layer(layer)


def test_reset_a_whole_group(core: str, loaded: list[Limiter]) -> None:
    data = run_json("reset", "login", "--timeout", FAST)
    assert data["confirmed"] == 3
    assert data["removed"] == 6  # two login buckets on each of three nodes
    assert data["reset"]["key"] is None
    for limiter in loaded:
        assert limiter.get("login", "1.2.3.4", "5/h").count == 0
        assert limiter.get("login", "5.6.7.8", "5/h").count == 0
        assert limiter.get("api", "alice", "100/h").count == 7


def test_reset_with_no_matching_key_says_so(core: str, loaded: list[Limiter]) -> None:
    text = run("reset", "login", "9.9.9.9", "--timeout", FAST)
    assert (
        text == "Reset key '9.9.9.9' in group 'login': 3 nodes confirmed, no matching counters.\n"
    )
    text = run("reset", "no-such-group", "--timeout", FAST)
    assert "group 'no-such-group': 3 nodes confirmed, no matching counters." in text
    assert [lim.get("login", "1.2.3.4", "5/h").count for lim in loaded] == [5, 5, 5]


def test_reset_goes_above_a_newer_generation_from_a_clock_ahead(
    core: str, nodes: Callable[[int], list[Limiter]]
) -> None:
    fresh_hour()
    first, second = nodes(2)
    # A reset made on a host whose clock runs 30 s ahead; then new hits.
    ahead = time.time_ns() + 30 * 10**9
    for limiter in (first, second):
        limiter.store.apply_resets([ResetState("g", "k", ahead)])
    for _ in range(4):
        first.hit("g", "k", "10/h")
    converge([first, second], "g", "k", "10/h", 4)
    result = client.reset_cluster("g", "k", timeout=float(FAST))
    assert result.generation == ahead + 1  # a plain time_ns() reset would not have counted
    assert result.confirmed == 2
    assert result.removed == 2
    assert [lim.get("g", "k", "10/h").count for lim in (first, second)] == [0, 0]


def test_reset_from_python(core: str, loaded: list[Limiter]) -> None:
    result = client.reset_cluster("api", "alice", timeout=float(FAST))
    assert (result.confirmed, result.removed) == (3, 3)
    assert [lim.get("api", "alice", "100/h").count for lim in loaded] == [0, 0, 0]
    # limiter.reset() on one process travels with its next sync round.
    for _ in range(2):
        loaded[0].hit("api", "bob", "100/h")
    converge(loaded, "api", "bob", "100/h", 2)
    loaded[0].reset("api", "bob")
    converge(loaded, "api", "bob", "100/h", 0)


def test_inspect_shows_budget_mode_and_every_process_share(
    redis_db: RedisServer, nodes: Callable[[int], list[Limiter]]
) -> None:
    fresh_hour()
    settings = {"SYNC_INTERVAL": 0.01, "ANTI_ENTROPY_INTERVAL": 0.5}  # budgets on (default)
    with override_settings(
        CHANNEL_LAYERS={"default": layer_config("core", redis_db.url)}, DRATELIMIT=settings
    ):
        first, second, third = nodes(3)
        origins = {lim.store.origin for lim in (first, second, third)}
        wait_for(lambda: first.store.processes == 3, 5, "the first node to know the others")
        # A fresh bucket in a cluster: an equal share each until the first picture.
        admitted = sum(first.hit("login", "9.9.9.9", "9/h").allowed for _ in range(5))
        assert admitted == 3  # 9 // 3
        data = run_json("inspect", "--group", "login", "--timeout", FAST)
        (bucket,) = data["buckets"]
        assert bucket["budget"] is not None
        assert set(bucket["budget"]) <= origins
        text = run("inspect", "--group", "login", "--timeout", FAST)
        assert "* in budget mode" in text


def test_nodes_shows_the_effective_interval(
    core: str, nodes: Callable[[int], list[Limiter]]
) -> None:
    nodes(2)
    wait_for(lambda: "Effective" in run("nodes", "--timeout", FAST), 5, "both nodes")
    lines = run("nodes", "--timeout", FAST).splitlines()
    # One peer against a receive budget of 35 messages a second: 1/35 s, not 0.01 s.
    assert lines[-1] == f"Effective sync interval: {1 / 35:g} s (stretched for the peers)."
    data = run_json("nodes", "--timeout", FAST)
    assert {n["effective_interval"] for n in data["nodes"]} == {1 / 35}
    assert {n["peers"] for n in data["nodes"]} == {1}
