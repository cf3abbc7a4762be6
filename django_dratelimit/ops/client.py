"""Ask the running processes about their counters, from another process.

Counters live in the memory of each process, so ``manage.py ratelimit`` (or any
script) cannot read them directly: it sends a request to the sync group with a
reply channel of its own and gathers the answers until a timeout::

    from django_dratelimit import client

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from channels.layers import channel_layers

from ..conf import conf
from ..local.store import BucketState
from ..rates import MAX_LIMIT, MAX_PERIOD, Rate
from ..sync import protocol
from ..sync.keys import signing_keys, sync_groups
from ..sync.layers import close_layer, is_idle_timeout, is_shared, layer_config
from ..sync.protocol import MalformedMessage

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
_COUNTERS = ("messages_sent", "messages_received", "broker_errors")


class ClusterError(Exception):
    """The cluster cannot be asked: configuration, broker, or nobody answered."""


class LocalOnly(ClusterError):
    """The configured layer cannot carry messages between processes."""


class NoAnswer(ClusterError):
    """The request went out, but no process answered within the timeout."""


# -- what the nodes said -------------------------------------------------------------


@dataclass(frozen=True)
class NodeInfo:
    """One process as it describes itself."""

    node: str
    host: str
    pid: int
    layer: str
    group: str
    buckets: int
    sync_interval: float
    # Sync v2: SYNC_INTERVAL stretched for the number of peers, and who they are.
    effective_interval: float | None
    peers: int | None
    started_at: float
    messages_sent: int
    messages_received: int
    dropped: int
    broker_errors: int
    last_send_ok: float | None
    last_error: str
    metrics: dict[str, Any]
    # Our clock when the answer arrived: uptime and "last send" are as of then,
    # not as of the end of the wait.
    received_at: float

    @property
    def uptime(self) -> float:
        return max(0.0, self.received_at - self.started_at)

    @property
    def last_send_age(self) -> float | None:
        if self.last_send_ok is None:
            return None
        return max(0.0, self.received_at - self.last_send_ok)

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "host": self.host,
            "pid": self.pid,
            "uptime": round(self.uptime, 3),
            "layer": self.layer,
            "group": self.group,
            "buckets": self.buckets,
            "sync_interval": self.sync_interval,
            "effective_interval": self.effective_interval,
            "peers": self.peers,
            "messages_sent": self.messages_sent,
            "messages_received": self.messages_received,
            "dropped": self.dropped,
            "broker_errors": self.broker_errors,
            "last_send_ok": self.last_send_ok,
            "last_error": self.last_error,
            "metrics": self.metrics,
        }


@dataclass(frozen=True)
class Answer:
    """One node's validated reply."""

    info: NodeInfo
    buckets: tuple[BucketState, ...] = ()
    rates: dict[str, tuple[Rate, ...]] = field(default_factory=dict)
    truncated: bool = False
    removed: int = 0
    generation: int | None = None
    # Buckets in budget mode on this node: the level each process may count up to.
    plans: dict[tuple[str, str, int, int], dict[str, int]] = field(default_factory=dict)


@dataclass
class Gathered:
    """Every answer to one request, one per node."""

    answers: list[Answer]
    alias: str
    group: str
    timeout: float
    groups: list[str] = field(default_factory=list)
    ignored: int = 0  # malformed replies, or replies to another request or group
    duplicates: int = 0

    @property
    def truncated(self) -> bool:
        return any(a.truncated for a in self.answers)


@dataclass(frozen=True)
class ResetResult:
    group: str
    key: str | None
    generation: int
    gathered: Gathered

    @property
    def confirmed(self) -> int:
        return len(self.gathered.answers)

    @property
    def removed(self) -> int:
        return sum(a.removed for a in self.gathered.answers)


@dataclass(frozen=True)
class BucketView:
    """One bucket as the cluster sees it, merged over every node's answer."""

    group: str
    key: str
    period: int
    window_start: int
    total: int  # the highest total any node holds (they converge on it)
    low: int  # the lowest: how far the slowest node lags
    per_node: dict[str, int]
    counts: dict[str, int]  # per origin, max-merged over the nodes
    limit: int | None
    strict: bool = False  # read from the strict cache, not from the nodes
    # In budget mode: per process, the level it may count up to (as its nodes say).
    budget: dict[str, int] | None = None

    @property
    def window_end(self) -> int:
        return self.window_start + self.period

    def seconds_left(self, now: float) -> float:
        return self.window_end - now

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "group": self.group,
            "key": self.key,
            "period": self.period,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "seconds_left": round(self.seconds_left(now), 3),
            "total": self.total,
            "min": self.low,
            "max": self.total,
            "limit": self.limit,
            "nodes": self.per_node,
            "counts": self.counts,
            "strict": self.strict,
            "budget": self.budget,
        }


# -- validation of replies ------------------------------------------------------------


class _Ignored(MalformedMessage):
    """A well-formed reply that is not for us (another request or another group)."""


def _number(value: Any, what: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise MalformedMessage(f"{what} must be a non-negative number")
    return float(value)


def _string(value: Any, what: str) -> str:
    # Unlike protocol.text, may be empty (a layer name, the last error).
    if not isinstance(value, str) or len(value) > protocol.MAX_TEXT:
        raise MalformedMessage(f"{what} must be a string of at most {protocol.MAX_TEXT} chars")
    return value


def _count(value: Any, what: str) -> int:
    return protocol.count(value, what)


def _optional_count(value: Any, what: str) -> int | None:
    return None if value is None else _count(value, what)


def parse_info(raw: Any, sender: str, now: float) -> NodeInfo:
    if not isinstance(raw, dict):
        raise MalformedMessage("info must be a dict")
    if raw.get("node") != sender:
        raise MalformedMessage("info.node is not the sender")
    metrics = raw.get("metrics")
    if not isinstance(metrics, dict) or len(metrics) > 100:
        raise MalformedMessage("info.metrics must be a dict")
    # Unknown metrics (a newer version) are kept for --json, if they are plain values.
    plain = {
        k: v
        for k, v in metrics.items()
        if isinstance(k, str) and (v is None or isinstance(v, bool | int | float | str))
    }
    counters = {name: _count(metrics.get(name, 0), f"metrics.{name}") for name in _COUNTERS}
    # What a node received and could not use: dropped, not applied (dropped_<reason>).
    dropped = sum(
        _count(value, f"metrics.{name}")
        for name, value in metrics.items()
        if isinstance(name, str) and name.startswith("dropped_")
    )
    return NodeInfo(
        node=sender,
        host=protocol.required_text(raw.get("host"), "info.host"),
        pid=protocol.integer(raw.get("pid"), "info.pid", 0, 2**32),
        layer=_string(raw.get("layer"), "info.layer"),
        group=protocol.required_text(raw.get("group"), "info.group"),
        buckets=_count(raw.get("buckets"), "info.buckets"),
        sync_interval=_number(raw.get("sync_interval"), "info.sync_interval") or 0.0,
        effective_interval=_number(raw.get("effective_interval"), "info.effective_interval", True),
        peers=_optional_count(raw.get("peers"), "info.peers"),
        started_at=_number(metrics.get("started_at"), "metrics.started_at") or 0.0,
        messages_sent=counters["messages_sent"],
        messages_received=counters["messages_received"],
        dropped=dropped,
        broker_errors=counters["broker_errors"],
        last_send_ok=_number(metrics.get("last_send_ok"), "metrics.last_send_ok", True),
        last_error=_string(metrics.get("last_error", ""), "metrics.last_error"),
        metrics=plain,
        received_at=now,
    )


def parse_rates(raw: Any) -> dict[str, tuple[Rate, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > protocol.MAX_BUCKETS:
        raise MalformedMessage("rates must be a dict of groups")
    rates = {}
    for group, pairs in raw.items():
        protocol.text(group, "rate group")
        if not isinstance(pairs, list) or len(pairs) > 16:
            raise MalformedMessage("a group's rates must be a list of [limit, period]")
        parsed = []
        for pair in pairs:
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise MalformedMessage("a rate must be [limit, period]")
            limit = protocol.integer(pair[0], "rate limit", 0, MAX_LIMIT)
            period = protocol.integer(pair[1], "rate period", 1, MAX_PERIOD)
            parsed.append(Rate(limit, period))
        rates[group] = tuple(parsed)
    return rates


def parse_reply(
    message: Any,
    request: str,
    groups: Iterable[str],
    kind: str,
    keys: list[bytes],
    now: float | None = None,
) -> Answer:
    """Open and validate one reply as a whole; raise MalformedMessage (or _Ignored) to drop it."""
    now = time.time() if now is None else now
    try:
        reply_kind, payload = protocol.open_message(message, keys, now)
    except protocol.Rejected as exc:
        raise MalformedMessage(f"{exc} ({exc.reason})") from None
    if reply_kind != protocol.REPLY:
        raise MalformedMessage(f"type {reply_kind!r}, expected {protocol.REPLY}")
    if payload.get("request") != request:
        raise _Ignored("a reply to another request")
    info = parse_info(payload.get("info"), payload["node"], now)
    if info.group not in groups:
        raise _Ignored(f"a reply from group {info.group!r}, not one of {list(groups)}")
    if kind == protocol.RESET:
        generation = payload.get("generation")
        if generation is not None:
            # As the nodes bound a reset's generation: ns, not far past our clock.
            high = int(now * 1e9) + int(protocol.CLOCK_SKEW * 1e9)
            generation = protocol.integer(generation, "generation", 0, high)
        return Answer(
            info, removed=_count(payload.get("removed"), "removed"), generation=generation
        )
    truncated = payload.get("truncated", False)
    if not isinstance(truncated, bool):
        raise MalformedMessage("truncated must be a boolean")
    return Answer(
        info,
        buckets=tuple(protocol.decode_states(payload.get("buckets"), now)),
        rates=parse_rates(payload.get("rates")),
        truncated=truncated,
        plans=parse_plans(payload.get("plans"), now),
    )


def parse_plans(raw: Any, now: float) -> dict[tuple[str, str, int, int], dict[str, int]]:
    if raw is None:
        return {}  # a node that predates budgets
    states = protocol.decode_states(raw, now)
    return {(s.group, s.key, s.period, s.window_start): s.counts for s in states}


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
            level = logging.DEBUG if isinstance(exc, _Ignored) else logging.WARNING
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


# -- merging the answers ----------------------------------------------------------------------


def known_limit(answers: Iterable[Answer], group: str, period: int) -> int | None:
    for answer in answers:
        for rate in answer.rates.get(group, ()):
            if rate.period == period:
                return rate.limit
    return None


def _budget(answers: list[Answer], bucket: tuple[str, str, int, int]) -> dict[str, int] | None:
    """The levels of a bucket in budget mode, max-merged over the nodes that say so."""
    levels: dict[str, int] = {}
    for answer in answers:
        for origin, level in answer.plans.get(bucket, {}).items():
            levels[origin] = max(levels.get(origin, 0), level)
    return levels or None


def merge_buckets(
    answers: list[Answer], now: float | None = None, current_only: bool = True
) -> list[BucketView]:
    """One row per bucket, hottest first; ``current_only`` skips windows that ended."""
    now = time.time() if now is None else now
    seen: dict[tuple[str, str, int, int], dict[str, BucketState]] = {}
    for answer in answers:
        for state in answer.buckets:
            if current_only and state.window_start + state.period <= now:
                continue  # kept by the nodes for sliding windows; no longer counting
            bucket_key = (state.group, state.key, state.period, state.window_start)
            seen.setdefault(bucket_key, {})[answer.info.node] = state
    complete = [a.info.node for a in answers if not a.truncated]
    views = []
    for (group, key, period, start), by_node in seen.items():
        per_node = {node: state.total for node, state in by_node.items()}
        # A node that answered in full without this bucket holds zero of it.
        totals = [*per_node.values(), *(0 for node in complete if node not in per_node)]
        counts: dict[str, int] = {}
        for state in by_node.values():
            for origin, count in state.counts.items():
                counts[origin] = max(counts.get(origin, 0), count)
        views.append(
            BucketView(
                group,
                key,
                period,
                start,
                max(totals),
                min(totals),
                per_node,
                counts,
                known_limit(answers, group, period),
                budget=_budget(answers, (group, key, period, start)),
            )
        )
    views.sort(key=lambda v: (-v.total, v.group, v.key, v.period, v.window_start))
    return views
