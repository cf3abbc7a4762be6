"""The sync messages: how buckets and resets travel, and strict validation of what arrives.

Everything on the group may come from another app sharing the broker, an
older or newer version of this one, or somebody with access to Redis. A
message is either fully valid or dropped as a whole with a reason.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from .algorithms import EPOCH_PERIODS
from .rates import MAX_PERIOD
from .store import BucketState, ResetState

VERSION = 1
STATE = "ratelimit.state"
SYNC_REQUEST = "ratelimit.sync_request"
INSPECT = "ratelimit.inspect"
RESET = "ratelimit.reset"
REPLY = "ratelimit.reply"

# More than any real window sees (token-bucket registers, in thousandths of a
# token, reach 16,000 x the capacity): a bigger count is a lie.
MAX_COUNT = 10**15
MAX_TEXT = 1024
MAX_BUCKETS = 10_000
MAX_ORIGINS = 1_000
MAX_RESETS = 10_000
CLOCK_SKEW = 60.0  # seconds a peer's window may be ahead of ours


class MalformedMessage(ValueError):
    """Why a message was dropped."""


def encode_buckets(states: Iterable[BucketState]) -> list[list[Any]]:
    return [[s.group, s.key, s.period, s.window_start, s.generation, s.counts] for s in states]


def encode_resets(resets: Iterable[ResetState]) -> list[list[Any]]:
    return [[r.group, r.key, r.generation] for r in resets]


def state_message(
    node: str, states: Iterable[BucketState], resets: Iterable[ResetState] = ()
) -> dict[str, Any]:
    return {
        "type": STATE,
        "v": VERSION,
        "node": node,
        "buckets": encode_buckets(states),
        "resets": encode_resets(resets),
    }


def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- validation --------------------------------------------------------------------


def _text(value: Any, what: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise MalformedMessage(f"{what} must be a non-empty string of at most {MAX_TEXT} chars")
    return value


def _int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MalformedMessage(f"{what} must be an integer from {low} to {high}")
    return value


def check_envelope(message: Any) -> str:
    """Check the parts every message has; return the sender's node id."""
    if not isinstance(message, dict):
        raise MalformedMessage("not a dict")
    version = message.get("v")
    if type(version) is not int or version != VERSION:
        raise MalformedMessage(f"format version {message.get('v')!r}, expected {VERSION}")
    return _text(message.get("node"), "node")  # type: ignore[return-value]


def decode_buckets(raw: Any, now: float) -> list[BucketState]:
    if not isinstance(raw, list) or len(raw) > MAX_BUCKETS:
        raise MalformedMessage(f"buckets must be a list of at most {MAX_BUCKETS}")
    now_ns = int(now * 1e9)
    states = []
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) != 6:
            raise MalformedMessage("a bucket must be [group, key, period, start, gen, counts]")
        group, key, period, start, generation, counts = item
        group = _text(group, "group")
        key = _text(key, "key")
        period = _int(period, "period", 1, EPOCH_PERIODS * MAX_PERIOD)
        start = _int(start, "window start", 0, int(now + CLOCK_SKEW))
        generation = _int(generation, "generation", 0, now_ns + int(CLOCK_SKEW * 1e9))
        if not isinstance(counts, dict) or len(counts) > MAX_ORIGINS:
            raise MalformedMessage(f"counts must be a dict of at most {MAX_ORIGINS} origins")
        clean = {}
        for origin, count in counts.items():
            clean[_text(origin, "origin")] = _int(count, "count", 0, MAX_COUNT)
        states.append(BucketState(group, key, period, start, generation, clean))  # type: ignore[arg-type]
    return states


def decode_resets(raw: Any, now: float) -> list[ResetState]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_RESETS:
        raise MalformedMessage(f"resets must be a list of at most {MAX_RESETS}")
    now_ns = int(now * 1e9)
    resets = []
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) != 3:
            raise MalformedMessage("a reset must be [group, key or null, generation]")
        group, key, generation = item
        resets.append(
            ResetState(
                _text(group, "group"),  # type: ignore[arg-type]
                _text(key, "key", optional=True),
                _int(generation, "generation", 1, now_ns + int(CLOCK_SKEW * 1e9)),
            )
        )
    return resets


def decode_state(
    message: dict[str, Any], now: float | None = None
) -> tuple[list[BucketState], list[ResetState]]:
    now = time.time() if now is None else now
    return decode_buckets(message.get("buckets"), now), decode_resets(message.get("resets"), now)
