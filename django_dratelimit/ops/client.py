"""Ask the running processes about their counters, from another process.

Counters live in the memory of each process, so ``manage.py ratelimit`` (or any
script) cannot read them directly: it sends a request to the sync group with a
reply channel of its own and gathers the answers until a timeout::

    from django_dratelimit.ops import client

    answers = client.inspect(group="login")
    rows = client.merge_buckets(answers.answers)
    result = client.reset_cluster("login", "203.0.113.7")

Everything runs on a private channel-layer instance inside one ``asyncio.run``:
the cached ``get_channel_layer()`` instance may be bound to another loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from channels.layers import channel_layers

from ..conf import conf
from ..sync import protocol
from ..sync.keys import signing_keys, sync_groups
from ..sync.layers import close_layer, is_idle_timeout, is_shared, layer_config
from ..sync.protocol import MalformedMessage

# The answers, their parsing and their merging live beside this module; the
# names stay reachable here, where the command, the admin page and scripts look.
from .answers import (
    Answer,
    BucketView,
    ClusterError,
    Gathered,
    LocalOnly,
    NoAnswer,
    NodeInfo,
    ResetResult,
)
from .buckets import known_limit, merge_buckets
from .replies import ForeignReply, parse_info, parse_plans, parse_rates, parse_reply

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_TIMEOUT",
    "Answer",
    "BucketView",
    "ClusterError",
    "Gathered",
    "LocalOnly",
    "NoAnswer",
    "NodeInfo",
    "ResetResult",
    "ask",
    "check_timeout",
    "inspect",
    "known_limit",
    "layer_alias",
    "merge_buckets",
    "nodes",
    "parse_info",
    "parse_plans",
    "parse_rates",
    "parse_reply",
    "reset_cluster",
]

logger = logging.getLogger("django_dratelimit")

DEFAULT_TIMEOUT = 2.0
MAX_TIMEOUT = 60.0
NO_ANSWER = (
    "no running process answered; is the site running and configured with the same CHANNEL_LAYERS?"
)
_LOCAL_ONLY = (
    "Rate-limit counters live in the memory of each process and cannot be seen from "
    "another process with {why}. Use a shared layer such as "
    "django_dratelimit.layers.RedisPubSubChannelLayer (see README, 'Running a cluster')."
)


# -- asking the group ----------------------------------------------------------------------


def layer_alias() -> str:
    """The configured alias, if it can reach other processes; else LocalOnly says why."""
    alias = conf.CHANNEL_LAYER
    if alias is None:
        raise LocalOnly(_LOCAL_ONLY.format(why="DRATELIMIT['CHANNEL_LAYER'] = None"))
    config = layer_config(alias)
    if not config:
        raise LocalOnly(_LOCAL_ONLY.format(why=f"no {alias!r} entry in CHANNEL_LAYERS"))
    if not is_shared(config):
        raise LocalOnly(_LOCAL_ONLY.format(why=f"the InMemoryChannelLayer as {alias!r}"))
    return alias


def check_timeout(timeout: float) -> float:
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(f"the timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds")
    return timeout


async def ask(
    kind: str, fields: dict[str, Any], seconds: float = DEFAULT_TIMEOUT, alias: str | None = None
) -> Gathered:
    """Send one request to the sync group and gather the replies for ``seconds``."""
    alias = layer_alias() if alias is None else alias
    timeout = check_timeout(seconds)
    group = conf.GROUP
    try:
        # A private instance: the cached one may belong to another loop or thread.
        layer = channel_layers.make_backend(alias)
    except Exception as exc:
        raise ClusterError(f"cannot build the channel layer {alias!r}: {exc}") from exc
    gathered = Gathered([], alias, group, timeout, sync_groups())
    try:
        await _ask(layer, kind, fields, gathered)
    finally:
        await close_layer(layer)
    if not gathered.answers:
        detail = f"waited {timeout:g} s for an answer on group {group!r} of layer {alias!r}"
        if gathered.ignored:
            were = "reply was" if gathered.ignored == 1 else "replies were"
            detail += f"; {gathered.ignored} malformed or foreign {were} ignored, see the log"
        raise NoAnswer(f"{NO_ANSWER} ({detail})")
    return gathered


async def _ask(layer: Any, kind: str, fields: dict[str, Any], gathered: Gathered) -> None:
    timeout = gathered.timeout
    request = uuid.uuid4().hex
    try:
        # Before sending: the pub/sub layer subscribes here, and a reply published
        # before the subscription would be lost.
        reply = await asyncio.wait_for(layer.new_channel(), timeout)
    except Exception as exc:
        raise _broker_error(gathered, exc) from exc
    keys = signing_keys()
    payload = {
        # Our own id: a node ignores messages that carry its id.
        "node": uuid.uuid4().hex,
        "ch": reply,
        "ts": time.time(),
        "id": request,
        **fields,
    }
    message = protocol.seal(kind, payload, keys)
    answers: dict[str, Answer] = {}
    # One receive for the whole wait: cancelling a pub/sub receive unsubscribes.
    receiving = asyncio.ensure_future(
        _collect(layer, reply, request, kind, keys, gathered, answers)
    )
    try:
        try:
            for group in gathered.groups:
                # A process in two groups (a key rotation) drops the second as a replay.
                await asyncio.wait_for(layer.group_send(group, message), timeout)
        except Exception as exc:
            raise _broker_error(gathered, exc) from exc
        # The whole timeout, counted from the moment the request is out (connecting
        # to a busy broker must not eat into it): a busy node may answer late, and
        # we cannot know how many nodes there are.
        await asyncio.wait([receiving], timeout=timeout)
        if receiving.done() and not receiving.cancelled():
            error = receiving.exception()
            if error is not None and not answers:
                raise _broker_error(gathered, error) from error
    finally:
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
        gathered.answers = list(answers.values())


async def _collect(
    layer: Any,
    reply: str,
    request: str,
    kind: str,
    keys: list[bytes],
    gathered: Gathered,
    answers: dict[str, Answer],
) -> None:
    while True:
        try:
            message = await layer.receive(reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_idle_timeout(exc):
                continue  # redis-py's socket timeout while nobody answers: keep waiting
            raise
        try:
            answer = parse_reply(message, request, gathered.groups, kind, keys)
        except MalformedMessage as exc:
            gathered.ignored += 1
            level = logging.DEBUG if isinstance(exc, ForeignReply) else logging.WARNING
            logger.log(level, "dratelimit: ignored a reply: %s", exc)
            continue
        if answer.info.node in answers:
            gathered.duplicates += 1  # at-least-once delivery, or a replayed message
            continue
        answers[answer.info.node] = answer


def _broker_error(gathered: Gathered, exc: BaseException) -> ClusterError:
    if isinstance(exc, TimeoutError):
        detail = f"no response from the broker within {gathered.timeout:g} s"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return ClusterError(f"cannot reach the channel layer {gathered.alias!r} ({detail})")


# -- the three requests ---------------------------------------------------------------------


def inspect(
    group: str | None = None,
    key: str | None = None,
    limit: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Gathered:
    """Every node's info and live buckets (``key`` matches as a substring)."""
    fields: dict[str, Any] = {"group": group, "key": key}
    if limit is not None:
        fields["limit"] = limit
    return asyncio.run(ask(protocol.INSPECT, fields, timeout))


def nodes(timeout: float = DEFAULT_TIMEOUT) -> Gathered:
    """Every node's info (an inspect request that asks for one bucket)."""
    return asyncio.run(ask(protocol.INSPECT, {"limit": 1}, timeout))


def reset_cluster(
    group: str, key: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> ResetResult:
    """Reset a key (or a whole group) on every node and gather confirmations.

    The generation is this process's clock (ns). A node holding a newer one
    for the same key (a reset made on a host whose clock runs ahead) reports
    it, and the reset is sent once more just above it, so it always wins.
    """
    protocol.text(group, "group")
    protocol.text(key, "key", optional=True)
    return asyncio.run(_reset(group, key, timeout))


async def _reset(group: str, key: str | None, seconds: float) -> ResetResult:
    generation = time.time_ns()
    fields = {"group": group, "key": key, "generation": generation}
    gathered = await ask(protocol.RESET, fields, seconds)
    newer = max((a.generation or 0 for a in gathered.answers), default=0)
    if newer > generation:
        logger.info("dratelimit: a newer reset was in force; resetting again above it")
        generation = newer + 1
        again = await ask(protocol.RESET, {**fields, "generation": generation}, seconds)
        removed = {a.info.node: a.removed for a in gathered.answers}
        for answer in again.answers:
            removed[answer.info.node] = removed.get(answer.info.node, 0) + answer.removed
        again.answers = [
            Answer(a.info, removed=removed[a.info.node], generation=a.generation)
            for a in again.answers
        ]
        again.ignored += gathered.ignored
        gathered = again
    return ResetResult(group, key, generation, gathered)
