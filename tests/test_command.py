"""``manage.py ratelimit``: against sync nodes in this process, then against real servers.

The in-process tests run several ``Limiter`` instances (each one a sync node
with its own thread, layer and node id) on the test-owned redis-server, and
ask them with ``call_command``. The real-process tests start the demo project
under uvicorn and gunicorn and run ``manage.py ratelimit`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from channels.layers import channel_layers
from django.core.management import CommandError, call_command
from django.test import override_settings

from django_dratelimit import registry
from django_dratelimit.conf import conf
from django_dratelimit.limiter import Limiter
from django_dratelimit.local.scopes import base_key
from django_dratelimit.local.store import BucketState, Entry, ResetState
from django_dratelimit.ops import client
from django_dratelimit.ops.table import WIDTH, table
from django_dratelimit.rates import Rate
from django_dratelimit.sync import protocol
from django_dratelimit.sync.keys import signing_keys
from django_dratelimit.sync.layers import close_layer
from testproject import settings as demo_settings
from tests.cluster import ROOT, DemoServer, RedisServer, free_port, load, wait_for
from tests.conftest import layer_config

FAST = "0.5"  # seconds to wait for answers: every node here is on loopback
HOUR = 3600


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("ratelimit", *args, stdout=out)
    return out.getvalue()


def run_json(*args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run(*args, "--json"))
    return data


def fresh_hour(needed: float = 30.0) -> None:
    """Keep a test's hits in one hourly window (sleeps only in the last seconds of an hour)."""
    left = HOUR - time.time() % HOUR
    if left < needed:
        time.sleep(left + 0.05)


def bucket_key(group: str, key: str, period: int = HOUR) -> tuple[str, str, int, int]:
    return (group, key, period, int(time.time() // period) * period)


def opened(message: Any) -> dict[str, Any]:
    """The payload of a message the command sent (checked with the site's keys)."""
    return protocol.open_message(message, signing_keys(), time.time())[1]


def sealed(payload: dict[str, Any]) -> dict[str, Any]:
    """A payload as a node would send it; ``_kind`` and ``_keys`` fake other messages."""
    fields = {k: v for k, v in payload.items() if not k.startswith("_")}
    keys = payload.get("_keys") or signing_keys()
    return protocol.seal(payload.get("_kind", protocol.REPLY), fields, keys)


@pytest.fixture(autouse=True)
def terminal_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # tables fit the terminal: make it the usual one


@pytest.fixture(params=["core", "pubsub"])
def layer(request: pytest.FixtureRequest, redis_db: RedisServer) -> Iterator[str]:
    with override_settings(
        CHANNEL_LAYERS={"default": layer_config(request.param, redis_db.url)},
        # Exact counts per node to inspect and reset: budgets (tested apart) would hold
        # back the rapid hits these fixtures make on a fresh bucket.
        DRATELIMIT={"SYNC_INTERVAL": 0.01, "ANTI_ENTROPY_INTERVAL": 0.5, "BUDGETS": False},
    ):
        yield request.param


@pytest.fixture
def core(redis_db: RedisServer) -> Iterator[str]:
    with override_settings(
        CHANNEL_LAYERS={"default": layer_config("core", redis_db.url)},
        DRATELIMIT={"SYNC_INTERVAL": 0.01, "ANTI_ENTROPY_INTERVAL": 0.5, "BUDGETS": False},
    ):
        yield "core"


@pytest.fixture
def nodes() -> Iterator[Callable[[int], list[Limiter]]]:
    """Start limiters whose sync nodes have joined the group; all are closed at the end."""
    made: list[Limiter] = []

    def start(count: int) -> list[Limiter]:
        limiters = [Limiter() for _ in range(count)]
        made.extend(limiters)
        for limiter in limiters:
            limiter.get("warm-up", "-", "1/m")  # the first use starts the sync thread
            sync = limiter.sync
            assert sync is not None
            node = sync.node
            assert node is not None
            wait_for(lambda n=node: n.joined.is_set() and n.channel, 5, "the node to join")
        return limiters

    yield start
    for limiter in made:
        limiter.close()


def converge(limiters: list[Limiter], group: str, key: str, rate: str, count: int) -> None:
    wait_for(
        lambda: all(lim.get(group, key, rate).count == count for lim in limiters),
        5,
        f"every node to count {count} for {group}/{key}",
    )


@pytest.fixture
def known_rates(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rates a decorator or rule would have registered, without leaking them."""
    monkeypatch.setitem(registry._known, "login", (Rate(5, HOUR),))


@pytest.fixture
def loaded(nodes: Callable[[int], list[Limiter]], known_rates: None) -> list[Limiter]:
    """Three nodes: login/1.2.3.4 at 5 (3 + 2 + 0), login/5.6.7.8 at 1, api/alice at 7."""
    fresh_hour()
    first, second, third = limiters = nodes(3)
    for _ in range(3):
        first.hit("login", "1.2.3.4", "5/h")
    for _ in range(2):
        second.hit("login", "1.2.3.4", "5/h")
    third.hit("login", "5.6.7.8", "5/h")
    for _ in range(7):
        third.hit("api", "alice", "100/h")
    converge(limiters, "login", "1.2.3.4", "5/h", 5)
    converge(limiters, "login", "5.6.7.8", "5/h", 1)
    converge(limiters, "api", "alice", "100/h", 7)
    return limiters


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


# -- replies that are not for us ------------------------------------------------------------


class Responder:
    """A fake process on the group that answers every request with crafted replies."""

    def __init__(self, answer: Callable[[dict[str, Any]], list[Any]]) -> None:
        self.answer = answer
        self.ready = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="responder")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        layer = channel_layers.make_backend("default")
        channel = await layer.new_channel()
        await layer.group_add(conf.GROUP, channel)
        self.ready.set()
        serving = asyncio.ensure_future(self._serve(layer, channel))
        await self.stop.wait()
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await layer.group_discard(conf.GROUP, channel)
        await close_layer(layer)

    async def _serve(self, layer: Any, channel: str) -> None:
        while True:
            request = opened(await layer.receive(channel))
            for reply in self.answer(request):
                await layer.send(request["ch"], sealed(reply))

    def __enter__(self) -> Responder:
        self.thread.start()
        assert self.ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(5)
        assert not self.thread.is_alive()


def reply(message: dict[str, Any], node: str = "fake-node", **changes: Any) -> dict[str, Any]:
    """A valid reply to ``message``, from ``node``, with ``changes`` applied."""
    now = time.time()
    info = {
        "node": node,
        "host": "elsewhere",
        "pid": 4242,
        "layer": "channels_redis.core.RedisChannelLayer",
        "group": conf.GROUP,
        "buckets": 1,
        "sync_interval": 0.05,
        "metrics": {"started_at": now - 60, "messages_sent": 3, "last_send_ok": now},
    }
    answer: dict[str, Any] = {
        "node": node,
        "ch": None,
        "ts": now,
        "request": message["id"],
        "info": info,
        "buckets": [["g", "k", HOUR, bucket_key("g", "k")[3], 0, {node: 2}]],
        "rates": {"g": [[10, HOUR]]},
        "truncated": False,
    }
    for name, value in changes.items():
        if name.startswith("info_"):
            info[name[5:]] = value
        else:
            answer[name] = value
    return answer


def test_malformed_foreign_and_repeated_replies_are_ignored(core: str) -> None:
    def answer(message: dict[str, Any]) -> list[Any]:
        good = reply(message)
        return [
            reply(message, _keys=[b"not the site's secret"]),
            reply(message, node="n2", buckets=[["g", "k", HOUR, 0, 0, {"n2": -1}]]),
            reply(message, node="n3", info_pid="4242"),
            reply(message, node="n4", rates={"g": [[-1, 60]]}),
            reply(message, node="n5", request="somebody else's"),
            reply(message, node="n6", info_group="another-group"),
            reply(message, node="n7", _kind=protocol.STATE),
            good,
            good,  # delivered twice
        ]

    with Responder(answer):
        data = run_json("inspect", "--timeout", FAST)
    assert data["answered"] == 1
    assert data["ignored_replies"] == 7
    assert [n["node"] for n in data["nodes"]] == ["fake-node"]
    assert [(b["group"], b["total"], b["limit"]) for b in data["buckets"]] == [("g", 2, 10)]


def test_only_bad_replies_is_no_answer(core: str) -> None:
    with (
        Responder(lambda message: [reply(message, info_node="someone-else")]),
        pytest.raises(
            CommandError,
            match=r"no running process answered.*1 malformed or foreign reply was ignored",
        ),
    ):
        run("nodes", "--timeout", FAST)


def test_reset_replies_are_validated(core: str) -> None:
    def answer(message: dict[str, Any]) -> list[Any]:
        base = {k: v for k, v in reply(message).items() if k not in ("buckets", "rates")}
        return [
            {**base, "node": "a", "info": {**base["info"], "node": "a"}, "removed": -1},
            {**base, "node": "b", "info": {**base["info"], "node": "b"}, "generation": "x"},
            {**base, "removed": 2, "generation": message["generation"]},
        ]

    with Responder(answer):
        data = run_json("reset", "g", "k", "--timeout", FAST)
    assert (data["confirmed"], data["removed"], data["ignored_replies"]) == (1, 2, 2)
    assert data["per_node"] == {"fake-node": 2}


# -- no answer, no layer, bad arguments ------------------------------------------------------


def test_no_running_process(core: str) -> None:
    for args in (["inspect"], ["nodes"], ["reset", "login", "1.2.3.4"]):
        started = time.monotonic()
        with pytest.raises(CommandError) as caught:
            run(*args, "--timeout", "0.3")
        assert str(caught.value).startswith(
            "no running process answered; is the site running and configured with the "
            "same CHANNEL_LAYERS? (waited 0.3 s"
        )
        assert time.monotonic() - started < 3


def test_broker_unreachable(core: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with (
        override_settings(CHANNEL_LAYERS={"default": layer_config("core", url)}),
        pytest.raises(CommandError, match="cannot reach the channel layer 'default'"),
    ):
        run("nodes", "--timeout", FAST)


class ScriptedLayer:
    """A channel layer whose receive() follows a script: messages, errors, or a hang."""

    def __init__(self, script: list[Any], hang_on: str = "") -> None:
        self.script = script
        self.hang_on = hang_on
        self.sent: list[dict[str, Any]] = []
        self.closed = False
        self.requested = asyncio.Event()

    async def _maybe_hang(self, name: str) -> None:
        if self.hang_on == name:
            await asyncio.Event().wait()

    async def new_channel(self) -> str:
        await self._maybe_hang("new_channel")
        return "specific.command"

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await self._maybe_hang("group_send")
        self.sent.append(message)
        self.requested.set()

    async def receive(self, channel: str) -> dict[str, Any]:
        if not self.script:
            await asyncio.Event().wait()  # nothing more: the command's timeout ends it
        await self.requested.wait()  # as a broker would: no answer before the request
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        answer: dict[str, Any] = sealed(step(opened(self.sent[-1])))
        return answer

    async def close_pools(self) -> None:
        self.closed = True


def test_receive_errors_and_a_silent_broker(core: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import redis.exceptions

    def use(layer: Any) -> Any:
        monkeypatch.setattr(channel_layers, "make_backend", lambda alias: layer)
        return layer

    def never_sent(message: dict[str, Any]) -> dict[str, Any]:
        node = reply(message)
        del node["info"]["metrics"]["last_send_ok"]
        return node

    # redis-py's idle socket timeout is not an error: keep waiting for answers.
    layer = use(ScriptedLayer([redis.exceptions.TimeoutError("idle"), never_sent]))
    lines = run("nodes", "--timeout", "0.2").splitlines()
    assert lines[1].split()[-2:] == ["never", "0"]
    assert layer.closed
    assert layer.sent[0]["type"] == protocol.INSPECT
    request = opened(layer.sent[0])
    assert request["node"] != request["id"]  # fresh ids, not a node's

    use(ScriptedLayer([ConnectionError("connection reset")]))
    with pytest.raises(CommandError, match=r"cannot reach .* \(ConnectionError: connection reset"):
        run("inspect", "--timeout", "0.2")
    use(ScriptedLayer([], hang_on="new_channel"))
    with pytest.raises(CommandError, match=r"no response from the broker within 0\.2 s"):
        run("inspect", "--timeout", "0.2")
    use(ScriptedLayer([], hang_on="group_send"))
    with pytest.raises(CommandError, match=r"no response from the broker within 0\.2 s"):
        run("reset", "g", "--timeout", "0.2")

    def broken(alias: str) -> Any:
        raise ImportError("no module named 'channels_redis'")

    monkeypatch.setattr(channel_layers, "make_backend", broken)
    with pytest.raises(CommandError, match="cannot build the channel layer 'default'"):
        run("nodes")


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"DRATELIMIT": {"CHANNEL_LAYER": None}}, "DRATELIMIT\\['CHANNEL_LAYER'\\] = None"),
        ({"CHANNEL_LAYERS": {}}, "no 'default' entry in CHANNEL_LAYERS"),
        (
            {"DRATELIMIT": {"CHANNEL_LAYER": "sync"}, "CHANNEL_LAYERS": {"default": {}}},
            "no 'sync' entry in CHANNEL_LAYERS",
        ),
        (
            {"CHANNEL_LAYERS": {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}},
            "the InMemoryChannelLayer as 'default'",
        ),
    ],
)
def test_local_only_configurations_say_so(overrides: dict[str, Any], why: str) -> None:
    with override_settings(**overrides):
        for args in (["inspect"], ["nodes"], ["reset", "g"]):
            with pytest.raises(CommandError) as caught:
                run(*args)
            message = str(caught.value)
            assert message.startswith(
                "Rate-limit counters live in the memory of each process and cannot be seen "
                "from another process with "
            )
            assert re.search(why, message)
            assert "django_dratelimit.layers.RedisPubSubChannelLayer" in message
            assert "Running a cluster" in message


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: ACTION"),
        (["explode"], "invalid choice: 'explode'"),
        (["inspect", "--limit", "0"], "--limit must be from 1 to 5000"),
        (["inspect", "--limit", "many"], "invalid int value: 'many'"),
        (["inspect", "--group", ""], "--group and --key cannot be empty"),
        (["inspect", "--timeout", "0"], "--timeout: the timeout must be more than 0"),
        (["nodes", "--timeout", "-1"], "--timeout: the timeout must be more than 0"),
        (["nodes", "--timeout", "600"], "at most 60 seconds"),
        (["nodes", "--timeout", "nan"], "--timeout: the timeout must be more than 0"),
        (["reset"], "the following arguments are required: GROUP"),
        (["reset", ""], "invalid reset: group must be a non-empty string"),
        (["reset", "g", "k", "extra"], "unrecognized arguments: extra"),
        (["check"], "the following arguments are required: RATE"),
    ],
)
def test_bad_arguments(core: str, args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=re.escape(message)):
        run(*args)


# -- check -----------------------------------------------------------------------------------


@override_settings(DRATELIMIT={"CHANNEL_LAYER": None})  # needs no layer, no process
def test_check_explains_a_rate() -> None:
    lines = run("check", "10/5m").splitlines()
    assert lines[:4] == [
        "10/5m: 10 per 5 minutes",
        "  limit    10 requests per window",
        "  period   300 seconds",
        "  windows  fixed, each starts at a multiple of 5m since the Unix epoch (UTC)",
    ]
    now = time.time()
    start = int(now // 300) * 300
    start_text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start))
    end_text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start + 300))
    assert lines[4].startswith(f"  now      {start_text} to {end_text} UTC, ")
    assert lines[4].endswith(" left")
    assert run("check", "0/m").splitlines()[1] == "  limit    0: every request is limited"
    assert run("check", "1/d").splitlines()[1] == "  limit    1 request per window"


def test_check_explains_each_part_of_a_multi_rate() -> None:
    lines = run("check", "10/s; 500/h").splitlines()
    assert lines[0] == "10/s; 500/h: 2 limits; a request must be within all of them."
    assert "10/s: 10 per 1 second" in lines
    assert "500/h: 500 per 1 hour" in lines
    assert all(len(line) <= WIDTH for line in lines)


def test_check_a_dotted_path() -> None:
    text = run("check", "tests.views.vip_rate")
    assert text.startswith("tests.views.vip_rate: a rate callable (vip_rate);")
    with pytest.raises(CommandError, match="does not import"):
        run("check", "tests.views.no_such_rate")


@pytest.mark.parametrize(
    ("rate", "message"),
    [
        ("5/M", "rate '5/M' has an unknown unit 'M'"),
        ("five/m", "rate 'five/m' is malformed"),
        ("5/0m", "has a zero period"),
        ("", "is empty"),
        ("5/40d", "the period must be at most 31 days"),
    ],
)
def test_check_rejects_a_bad_rate(rate: str, message: str) -> None:
    with pytest.raises(CommandError, match=re.escape(message)):
        run("check", rate)


# -- pieces ------------------------------------------------------------------------------------


def test_table_fits_80_columns_and_cuts_with_an_ellipsis() -> None:
    rows = [["myproject.views.a_very_long_view_name", "k" * 60, "1"], ["g", "short", "22"]]
    lines = table(["GROUP", "KEY", "N"], rows, right={2}, shrink=[(0, 16), (1, 8)], keep_tail={0})
    assert all(len(line) <= WIDTH for line in lines)
    assert max(len(line) for line in lines) == WIDTH
    assert lines[1].startswith("…_long_view_name  k")  # a group's tail says the most
    assert "k…" in lines[1]
    assert lines[2].split() == ["g", "short", "22"]
    assert lines[2].endswith("22")  # numbers are right-aligned
    lines = table(["KEY"], [["evil\nkey\x1b[2J"]], right=set(), shrink=[])
    assert lines == ["KEY", "evil?key?[2J"]  # a key from a request cannot break the table


def test_merge_counts_a_missing_bucket_as_zero_unless_the_answer_was_cut() -> None:
    now = time.time()
    start = int(now // 60) * 60

    def answer(node: str, buckets: list[BucketState], truncated: bool = False) -> client.Answer:
        info = client.parse_info(
            {
                "node": node,
                "host": "h",
                "pid": 1,
                "layer": "",
                "group": "dratelimit",
                "buckets": len(buckets),
                "sync_interval": 0.05,
                "metrics": {"started_at": now},
            },
            node,
            now,
        )
        return client.Answer(info, tuple(buckets), {"g": (Rate(3, 60),)}, truncated)

    current = BucketState("g", "k", 60, start, 0, {"a": 2})
    ended = BucketState("g", "old", 60, start - 60, 0, {"a": 9})
    views = client.merge_buckets([answer("a", [current, ended]), answer("b", [])], now)
    assert [(v.key, v.total, v.low, v.limit) for v in views] == [("k", 2, 0, 3)]
    views = client.merge_buckets([answer("a", [current]), answer("b", [], truncated=True)], now)
    assert [(v.key, v.total, v.low) for v in views] == [("k", 2, 2)]
    views = client.merge_buckets([answer("a", [ended])], now, current_only=False)
    assert [(v.key, v.total) for v in views] == [("old", 9)]


# -- real processes ------------------------------------------------------------------------------


def server_env(redis: RedisServer, layer: str) -> dict[str, str]:
    env = {
        "REDIS_URL": redis.url,
        "DEMO_CLUSTER_RATE": "100/h",
        "DRATELIMIT_SYNC_INTERVAL": "0.05",
        "DRATELIMIT_ANTI_ENTROPY": "1.0",
        "DRATELIMIT_BUDGETS": "0",  # exact per-node counts to inspect
    }
    env["DRATELIMIT_LAYER"] = layer
    return env


def manage(
    redis: RedisServer | None, *args: str, layer: str = "core"
) -> subprocess.CompletedProcess[str]:
    """``python manage.py ratelimit ...`` in a process of its own, as a user runs it."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings", "DJANGO_DEBUG": "0"}
    env.pop("REDIS_URL", None)
    if redis is not None:
        env["REDIS_URL"] = redis.url
        env["DRATELIMIT_LAYER"] = layer  # the same layer as the servers it asks
    return subprocess.run(
        [sys.executable, "manage.py", "ratelimit", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def servers() -> Iterator[Callable[[list[str], dict[str, str]], list[DemoServer]]]:
    """Start demo servers side by side; every one is stopped at the end."""
    started: list[DemoServer] = []

    def start(kinds: list[str], env: dict[str, str]) -> list[DemoServer]:
        made = [DemoServer(kind, env) for kind in kinds]
        started.extend(made)
        with ThreadPoolExecutor(len(made)) as pool:
            list(pool.map(DemoServer.start, made))
        return made

    yield start
    for server in started:
        server.stop()


def counts(servers: list[DemoServer]) -> list[int]:
    return [int(server.state()["count"]) for server in servers]


class TestRealProcesses:
    pytestmark = pytest.mark.cluster

    def test_inspect_nodes_and_reset_on_uvicorn_and_gunicorn(
        self,
        redis_db: RedisServer,
        servers: Callable[[list[str], dict[str, str]], list[DemoServer]],
    ) -> None:
        fresh_hour()
        demo = servers(["uvicorn", "uvicorn", "gunicorn"], server_env(redis_db, "core"))
        result = load(demo, 150)
        assert result["errors"] == 0
        wait_for(lambda: counts(demo) == [150, 150, 150], 5, "every server to count 150")
        states = [server.state() for server in demo]
        node_ids = {state["node"] for state in states}

        inspected = manage(redis_db, "inspect", "--json", "--timeout", "1")
        assert inspected.returncode == 0, inspected.stderr
        data = json.loads(inspected.stdout)
        assert data["answered"] == 3
        (shared,) = [
            b for b in data["buckets"] if (b["group"], base_key(b["key"])) == ("cluster", "shared")
        ]
        assert shared["nodes"] == dict.fromkeys(node_ids, 150)  # every node holds all 150
        assert sum(shared["counts"].values()) == 150
        assert shared["limit"] is None  # the demo's rate is a callable: known per request

        listed = manage(redis_db, "nodes", "--json", "--timeout", "1")
        assert listed.returncode == 0, listed.stderr
        data = json.loads(listed.stdout)
        assert {(n["node"], n["pid"]) for n in data["nodes"]} == {
            (s["node"], s["pid"]) for s in states
        }
        assert all(n["messages_received"] > 0 and n["broker_errors"] == 0 for n in data["nodes"])

        table_run = manage(redis_db, "inspect", "--group", "cluster", "--timeout", "1")
        assert table_run.returncode == 0, table_run.stderr
        lines = table_run.stdout.splitlines()
        assert lines[1].split()[:2] == ["cluster", "shared"]
        assert lines[1].split()[-3:] == ["150", "?", "150..150"]
        # The demo's own SECRET_KEY names its group.
        assert re.fullmatch(
            r"3 nodes answered within 1 s \(sync group 'dratelimit-[0-9a-f]{10}'\)\.", lines[-1]
        )

        reset = manage(redis_db, "reset", "cluster", "shared", "--timeout", "1")
        assert reset.returncode == 0, reset.stderr
        assert reset.stdout == (
            "Reset key 'shared' in group 'cluster': 3 nodes confirmed, 3 buckets removed.\n"
        )
        assert counts(demo) == [0, 0, 0]
        assert [server.get("/cluster/hit/")[0] for server in demo] == [200, 200, 200]
        # Anti-entropy rounds (every second) carry the three new hits, not the old 150.
        wait_for(lambda: counts(demo) == [3, 3, 3], 5, "every server to count 3")

    def test_call_command_against_pubsub_servers(
        self,
        redis_db: RedisServer,
        servers: Callable[[list[str], dict[str, str]], list[DemoServer]],
    ) -> None:
        fresh_hour()
        demo = servers(["uvicorn", "gunicorn"], server_env(redis_db, "pubsub"))
        load(demo, 40)
        wait_for(lambda: counts(demo) == [40, 40], 5, "every server to count 40")
        # The site's settings: its layer, and its SECRET_KEY, which names its sync group.
        with override_settings(
            CHANNEL_LAYERS={"default": layer_config("pubsub", redis_db.url)},
            SECRET_KEY=demo_settings.SECRET_KEY,
        ):
            data = run_json("inspect", "--group", "cluster", "--timeout", "1")
            rows = [(base_key(b["key"]), b["min"], b["max"]) for b in data["buckets"]]
            assert rows == [("shared", 40, 40)]
            assert run("reset", "cluster", "--timeout", "1") == (
                "Reset group 'cluster': 2 nodes confirmed, 2 buckets removed.\n"
            )
        assert counts(demo) == [0, 0]
        assert [server.get("/cluster/hit/")[0] for server in demo] == [200, 200]

    def test_a_subprocess_says_when_nothing_answers(self, redis_db: RedisServer) -> None:
        nothing = manage(redis_db, "nodes", "--timeout", "0.5")
        assert nothing.returncode == 1
        assert nothing.stdout == ""
        assert (
            "CommandError: no running process answered; is the site running and configured "
            "with the same CHANNEL_LAYERS?" in nothing.stderr
        )
        local = manage(None, "inspect")  # the demo without REDIS_URL: in-memory layer
        assert local.returncode == 1
        assert "cannot be seen from another process" in local.stderr
        checked = manage(None, "check", "5/m")
        assert checked.returncode == 0
        assert checked.stdout.startswith("5/m: 5 per 1 minute\n")
        wrong = manage(None, "inspect", "--limit", "x")
        assert wrong.returncode == 2  # argparse's usage error, from the command line
        assert "invalid int value: 'x'" in wrong.stderr


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
