"""The sync messages (protocol v2): a signed envelope around a JSON payload.

On the channel layer every message is ``{"type": T, "v": 2, "p": payload, "s":
[signatures]}``. ``payload`` is the JSON text (bytes) of a dict that always
holds the sender's node id (``node``), its reply channel (``ch``) and its clock
(``ts``); ``s`` holds an HMAC-SHA256 of ``T`` and ``payload`` under each key the
sender knows (``SECRET_KEY`` and its fallbacks), so processes that are half-way
through a key rotation still understand each other.

Everything on the group may come from another app sharing the broker, an older
version of this one, or somebody who can reach Redis but does not know the
site's secret. A message is either fully valid and signed or dropped as a whole
with a reason (:class:`Rejected`).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Sequence
from typing import Any

from ..local.algorithms import EPOCH_PERIODS
from ..local.store import BucketState, Entry, ResetState
from ..rates import MAX_PERIOD as MAX_RATE_PERIOD

VERSION = 2
# Broadcast to the group.
STATE = "ratelimit.state"  # this node's own counts of the buckets it changed
HEARTBEAT = "ratelimit.heartbeat"  # "my last state message was number seq"
SYNC_REQUEST = "ratelimit.sync_request"  # a node joined (or is back): send me your own counts
BYE = "ratelimit.bye"  # a node leaves cleanly
# Sent straight to one node's channel.
OWN = "ratelimit.own"  # all of a node's own counts: the answer to sync_request and pull
PULL = "ratelimit.pull"  # "I missed some of your messages": answered with OWN
RELAY_REQUEST = "ratelimit.relay_request"  # a joiner asks one node for the departed origins
RELAY = "ratelimit.relay"  # counts of origins other than the sender's, and every reset
# The management command.
INSPECT = "ratelimit.inspect"
RESET = "ratelimit.reset"
REPLY = "ratelimit.reply"
TYPES = frozenset(
    (STATE, HEARTBEAT, SYNC_REQUEST, BYE, OWN, PULL, RELAY_REQUEST, RELAY, INSPECT, RESET, REPLY)
)

# More than any real window sees (token-bucket registers, in thousandths of a
# token, reach 16,000 x the capacity): a bigger count is a lie.
MAX_COUNT = 10**15
MAX_TEXT = 1024
MAX_BUCKETS = 10_000  # entries in one message
MAX_ORIGINS = 1_000
MAX_RESETS = 10_000
MAX_INSPECT_BUCKETS = 5_000  # buckets in one answer to inspect (the command's --limit)
MAX_PAYLOAD = 4 * 1024 * 1024  # bytes of JSON
MAX_SIGNATURES = 8
CLOCK_SKEW = 60.0  # seconds a peer's window may be ahead of ours
REPLAY_WINDOW = 30.0  # a message stamped further from our clock than this is stale
MAX_PERIOD = EPOCH_PERIODS * MAX_RATE_PERIOD  # the bucket algorithms count in longer epochs


class Rejected(ValueError):
    """Why a message was dropped; ``reason`` names the drop counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class MalformedMessage(Rejected):
    def __init__(self, detail: str) -> None:
        super().__init__("malformed", detail)


# -- the envelope ----------------------------------------------------------------------


def signed_bytes(kind: str, payload: bytes) -> bytes:
    """What the signatures cover: the type, so a body cannot be replayed as another type."""
    return kind.encode() + b"\n" + payload


def seal(kind: str, payload: dict[str, Any], keys: Sequence[bytes]) -> dict[str, Any]:
    """The message to put on the layer: ``payload`` as JSON, signed with every key."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    signed = signed_bytes(kind, body)
    return {
        "type": kind,
        "v": VERSION,
        "p": body,
        "s": [hmac.digest(key, signed, "sha256") for key in keys],
    }


def open_message(message: Any, keys: Sequence[bytes], now: float) -> tuple[str, dict[str, Any]]:
    """Check a message from the layer; return its type and payload, or raise Rejected."""
    if not isinstance(message, dict):
        raise MalformedMessage("not a dict")
    kind = message.get("type")
    if kind not in TYPES:
        raise Rejected("unknown_type", f"unknown message type {kind!r}")
    version = message.get("v")
    body, signatures = message.get("p"), message.get("s")
    if version != VERSION or not isinstance(body, bytes) or not isinstance(signatures, list):
        # Protocol v1 sent plain dicts with "v": 1 and no signature.
        raise Rejected("unsigned", f"unsigned message (format version {version!r})")
    if len(body) > MAX_PAYLOAD or len(signatures) > MAX_SIGNATURES:
        raise MalformedMessage("message too large")
    signed = signed_bytes(kind, body)
    expected = [hmac.digest(key, signed, "sha256") for key in keys]
    if not any(
        isinstance(sig, bytes) and hmac.compare_digest(sig, want)
        for sig in signatures
        for want in expected
    ):
        raise Rejected("bad_signature", "no signature matches SECRET_KEY or its fallbacks")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise MalformedMessage(f"payload is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise MalformedMessage("payload is not a dict")
    text(payload.get("node"), "node")
    text(payload.get("ch"), "ch", optional=True)
    stamp = payload.get("ts")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float):
        raise MalformedMessage("ts must be a number")
    if abs(stamp - now) > REPLAY_WINDOW:
        raise Rejected("stale", f"stamped {stamp - now:+.1f} s from our clock")
    return kind, payload


# -- fields ---------------------------------------------------------------------------


def text(value: Any, what: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise MalformedMessage(f"{what} must be a non-empty string of at most {MAX_TEXT} chars")
    return value


def required_text(value: Any, what: str) -> str:
    checked = text(value, what)
    assert checked is not None
    return checked


def integer(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MalformedMessage(f"{what} must be an integer from {low} to {high}")
    return value


def count(value: Any, what: str) -> int:
    return integer(value, what, 0, MAX_COUNT)


def _generation_high(now: float) -> int:
    return int((now + CLOCK_SKEW) * 1e9)


# -- entries and resets -------------------------------------------------------------------


def encode_entries(entries: Iterable[Entry]) -> list[list[Any]]:
    return [list(e) for e in entries]


def decode_entries(raw: Any, now: float) -> list[Entry]:
    return [Entry._make(item) for item in check_entries(raw, now)]


def check_entries(raw: Any, now: float) -> list[Sequence[Any]]:
    """``raw`` itself once every entry in it is valid (no copy: this runs per message)."""
    if not isinstance(raw, list) or len(raw) > MAX_BUCKETS:
        raise MalformedMessage(f"entries must be a list of at most {MAX_BUCKETS}")
    latest_start = int(now + CLOCK_SKEW)
    generation_high = _generation_high(now)
    for item in raw:
        # The common case in one expression (this runs for every entry of every
        # message); anything off goes through the field checks for the reason.
        if (
            type(item) is list
            and len(item) == 7
            and type(item[0]) is str
            and 0 < len(item[0]) <= MAX_TEXT
            and type(item[1]) is str
            and 0 < len(item[1]) <= MAX_TEXT
            and type(item[2]) is int
            and 1 <= item[2] <= MAX_PERIOD
            # Not checked against the period: windows may be staggered per key.
            and type(item[3]) is int
            and 0 <= item[3] <= latest_start
            and type(item[4]) is int
            and 0 <= item[4] <= generation_high
            and type(item[5]) is int
            and 0 <= item[5] <= MAX_COUNT
            and type(item[6]) is int
            and 0 <= item[6] <= MAX_COUNT
        ):
            continue
        _explain_entry(item, latest_start, generation_high)
    return raw


def _explain_entry(item: Any, latest_start: int, generation_high: int) -> None:
    """Raise MalformedMessage naming what is wrong with an entry."""
    if not isinstance(item, list) or len(item) != 7:
        raise MalformedMessage("an entry is [group, key, period, start, gen, count, register]")
    group, key, period, start, generation, value, register = item
    required_text(group, "group")
    required_text(key, "key")
    integer(period, "period", 1, MAX_PERIOD)
    integer(start, "window start", 0, latest_start)
    integer(generation, "generation", 0, generation_high)
    count(value, "count")
    count(register, "register")
    raise MalformedMessage("an entry field has the wrong type")  # e.g. a str subclass


def encode_relay(relay: dict[str, list[Entry]]) -> dict[str, list[list[Any]]]:
    return {origin: encode_entries(entries) for origin, entries in relay.items()}


def decode_relay(raw: Any, now: float) -> dict[str, list[Entry]]:
    if not isinstance(raw, dict) or len(raw) > MAX_ORIGINS:
        raise MalformedMessage(f"relay must be a dict of at most {MAX_ORIGINS} origins")
    return {required_text(o, "origin"): decode_entries(e, now) for o, e in raw.items()}


def encode_states(states: Iterable[BucketState]) -> list[list[Any]]:
    """Buckets with every origin's count, for the management command (never merged)."""
    return [[s.group, s.key, s.period, s.window_start, s.generation, s.counts] for s in states]


def decode_states(raw: Any, now: float) -> list[BucketState]:
    if not isinstance(raw, list) or len(raw) > MAX_BUCKETS:
        raise MalformedMessage(f"buckets must be a list of at most {MAX_BUCKETS}")
    states = []
    for item in raw:
        if not isinstance(item, list) or len(item) != 6:
            raise MalformedMessage("a bucket must be [group, key, period, start, gen, counts]")
        *head, counts = item
        group, key, period, start, generation, _, _ = decode_entries([[*head, 0, 0]], now)[0]
        if not isinstance(counts, dict) or len(counts) > MAX_ORIGINS:
            raise MalformedMessage(f"counts must be a dict of at most {MAX_ORIGINS} origins")
        clean = {required_text(o, "origin"): count(c, "count") for o, c in counts.items()}
        states.append(BucketState(group, key, period, start, generation, clean))
    return states


def encode_resets(resets: Iterable[ResetState]) -> list[list[Any]]:
    return [list(r) for r in resets]


def decode_resets(raw: Any, now: float) -> list[ResetState]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_RESETS:
        raise MalformedMessage(f"resets must be a list of at most {MAX_RESETS}")
    high = _generation_high(now)
    resets = []
    for item in raw:
        if not isinstance(item, list) or len(item) != 3:
            raise MalformedMessage("a reset must be [group, key or null, generation]")
        group, key, generation = item
        resets.append(
            ResetState(
                required_text(group, "group"),
                text(key, "key", optional=True),
                integer(generation, "generation", 1, high),
            )
        )
    return resets
