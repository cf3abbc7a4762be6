"""Open and validate the replies to a request, one at a time, as a whole.

A reply that fails any check raises ``MalformedMessage`` and is dropped; one
that is well formed but meant for another request or group raises
``ForeignReply`` (logged more quietly).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from ..rates import MAX_LIMIT, MAX_PERIOD, Rate
from ..sync import protocol
from ..sync.protocol import MalformedMessage
from .answers import Answer, NodeInfo

_COUNTERS = ("messages_sent", "messages_received", "broker_errors")


class ForeignReply(MalformedMessage):
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
    """Open and validate one reply; raise MalformedMessage (or ForeignReply) to drop it."""
    now = time.time() if now is None else now
    try:
        reply_kind, payload = protocol.open_message(message, keys, now)
    except protocol.Rejected as exc:
        raise MalformedMessage(f"{exc} ({exc.reason})") from None
    if reply_kind != protocol.REPLY:
        raise MalformedMessage(f"type {reply_kind!r}, expected {protocol.REPLY}")
    if payload.get("request") != request:
        raise ForeignReply("a reply to another request")
    info = parse_info(payload.get("info"), payload["node"], now)
    if info.group not in groups:
        raise ForeignReply(f"a reply from group {info.group!r}, not one of {list(groups)}")
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
