"""``manage.py ratelimit`` when answers are wrong, missing or cannot come: replies not
for us, no process, no broker, no shared layer, bad arguments.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from channels.layers import channel_layers
from django.core.management import CommandError
from django.test import override_settings

from django_dratelimit.conf import conf
from django_dratelimit.sync import protocol
from django_dratelimit.sync.layers import close_layer
from tests.cluster import free_port
from tests.command.conftest import (
    FAST,
    HOUR,
    bucket_key,
    opened,
    run,
    run_json,
    sealed,
)
from tests.conftest import layer_config

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
