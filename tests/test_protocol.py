"""Sync protocol v2: envelopes open only with the site's keys; bad fields drop the message."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from django_dratelimit.local.store import BucketState, Entry, ResetState
from django_dratelimit.sync import protocol
from django_dratelimit.sync.protocol import (
    CLOCK_SKEW,
    MAX_BUCKETS,
    MAX_COUNT,
    MAX_ORIGINS,
    MAX_PERIOD,
    MAX_RESETS,
    MAX_TEXT,
    REPLAY_WINDOW,
    MalformedMessage,
    Rejected,
    decode_entries,
    decode_relay,
    decode_resets,
    decode_states,
    open_message,
    seal,
)

NOW = 1_700_000_010.0
START = 1_699_999_980  # the minute that contains NOW
NOW_NS = int(NOW * 1e9)
SKEW_NS = int(CLOCK_SKEW * 1e9)
KEY, OLD_KEY, WRONG_KEY = b"k" * 32, b"o" * 32, b"w" * 32

ENTRIES = [
    Entry("login", "203.0.113.7", 60, START, 0, 3, 0),
    Entry("login", "203.0.113.7", 60, START - 60, 0, 1, 0),
    Entry("api", "user:42", 3600, START - START % 3600, NOW_NS - 5, 0, 12_000),
    Entry("api", "ключ", 1, int(NOW), 7, 2, 0),
]


def payload(**extra: Any) -> dict[str, Any]:
    return {"node": "n0", "ch": "specific.abc", "ts": NOW, **extra}


def entry(**changes: Any) -> list[Any]:
    """A valid encoded entry, with some fields replaced."""
    fields = dict(Entry("login", "203.0.113.7", 60, START, 0, 3, 0)._asdict())
    fields.update(changes)
    return list(fields.values())


def rejected(message: Any, keys: list[bytes] | None = None, now: float = NOW) -> str:
    with pytest.raises(Rejected) as caught:
        open_message(message, keys or [KEY], now)
    return caught.value.reason


# -- the envelope -------------------------------------------------------------------------


def test_a_sealed_message_opens_with_the_same_key() -> None:
    message = seal(protocol.STATE, payload(seq=1), [KEY])
    assert set(message) == {"type", "v", "p", "s"}
    assert message["v"] == 2
    assert open_message(message, [KEY], NOW) == (protocol.STATE, payload(seq=1))


def test_it_survives_the_redis_layers_serialisation() -> None:
    message = seal(protocol.STATE, payload(e=protocol.encode_entries(ENTRIES)), [KEY])
    wire = msgpack.unpackb(msgpack.packb(message, use_bin_type=True), raw=False)
    _, body = open_message(wire, [KEY], NOW)
    assert decode_entries(body["e"], NOW) == ENTRIES


def test_signed_with_several_keys_it_opens_with_any_of_them() -> None:
    message = seal(protocol.HEARTBEAT, payload(seq=0), [KEY, OLD_KEY])
    for keys in ([KEY], [OLD_KEY], [WRONG_KEY, OLD_KEY]):
        assert open_message(message, keys, NOW)[0] == protocol.HEARTBEAT


def test_a_wrong_key_is_a_bad_signature() -> None:
    assert rejected(seal(protocol.STATE, payload(), [WRONG_KEY])) == "bad_signature"


@pytest.mark.parametrize("kind", sorted(protocol.TYPES))
def test_the_signature_covers_the_type(kind: str) -> None:
    other = protocol.RESET if kind != protocol.RESET else protocol.STATE
    message = seal(other, payload(), [KEY])
    message["type"] = kind
    assert rejected(message) == "bad_signature"


def test_the_signature_covers_the_payload() -> None:
    message = seal(protocol.RESET, payload(group="login", generation=5), [KEY])
    message["p"] = message["p"].replace(b"login", b"other")
    assert rejected(message) == "bad_signature"


@pytest.mark.parametrize(
    "message",
    [
        {"type": protocol.STATE, "v": 1, "node": "x", "buckets": []},  # protocol v1
        {"type": protocol.STATE, "v": 2, "p": "{}", "s": []},
        {"type": protocol.STATE, "v": 2, "p": b"{}"},
        {"type": protocol.STATE, "v": 2, "s": [b"x"]},
        {"type": protocol.STATE, "v": 3, "p": b"{}", "s": []},
        {"type": protocol.STATE, "v": True, "p": b"{}", "s": []},
    ],
)
def test_unsigned_or_other_formats_are_unsigned(message: dict[str, Any]) -> None:
    assert rejected(message) == "unsigned"


@pytest.mark.parametrize("signatures", [[], ["text"], [None], [b""], [b"x" * 32]])
def test_missing_or_junk_signatures(signatures: list[Any]) -> None:
    message = seal(protocol.STATE, payload(), [KEY])
    message["s"] = signatures
    assert rejected(message) == "bad_signature"


def test_too_many_signatures_or_too_large_a_payload() -> None:
    message = seal(protocol.STATE, payload(), [KEY])
    assert rejected({**message, "s": message["s"] * 9}) == "malformed"
    big = seal(protocol.STATE, payload(pad="x" * protocol.MAX_PAYLOAD), [KEY])
    assert rejected(big) == "malformed"


@pytest.mark.parametrize("message", [None, [], "ratelimit.state", 5, b"x"])
def test_not_a_dict(message: Any) -> None:
    assert rejected(message) == "malformed"


@pytest.mark.parametrize("kind", [None, "", "chat.message", "ratelimit.hits", 5])
def test_unknown_types(kind: Any) -> None:
    message = seal(protocol.STATE, payload(), [KEY])
    assert rejected({**message, "type": kind}) == "unknown_type"


def sign_raw(kind: str, body: bytes) -> dict[str, Any]:
    import hmac

    signature = hmac.digest(KEY, kind.encode() + b"\n" + body, "sha256")
    return {"type": kind, "v": 2, "p": body, "s": [signature]}


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"5", b"\xff\xfe"])
def test_signed_junk_is_malformed(body: bytes) -> None:
    assert rejected(sign_raw(protocol.STATE, body)) == "malformed"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"node": ""}, "node"),
        ({"node": None}, "node"),
        ({"node": 5}, "node"),
        ({"ch": ""}, "ch"),
        ({"ch": 5}, "ch"),
        ({"ts": None}, "ts"),
        ({"ts": "now"}, "ts"),
        ({"ts": True}, "ts"),
    ],
)
def test_bad_envelope_fields(changes: dict[str, Any], reason: str) -> None:
    body = json.dumps({**payload(), **changes}).encode()
    with pytest.raises(MalformedMessage, match=reason):
        open_message(sign_raw(protocol.STATE, body), [KEY], NOW)


@pytest.mark.parametrize("offset", [REPLAY_WINDOW + 0.5, -REPLAY_WINDOW - 0.5, 3600, -86400])
def test_a_message_stamped_outside_the_replay_window_is_stale(offset: float) -> None:
    message = seal(protocol.RESET, payload(ts=NOW + offset), [KEY])
    assert rejected(message) == "stale"


@pytest.mark.parametrize("offset", [REPLAY_WINDOW - 0.5, -REPLAY_WINDOW + 0.5, 0])
def test_inside_the_replay_window_is_fine(offset: float) -> None:
    message = seal(protocol.RESET, payload(ts=NOW + offset), [KEY])
    assert open_message(message, [KEY], NOW)[0] == protocol.RESET


# -- entries ------------------------------------------------------------------------------


def test_entries_round_trip() -> None:
    assert decode_entries(protocol.encode_entries(ENTRIES), NOW) == ENTRIES
    assert decode_entries([], NOW) == []


def test_many_entries_up_to_the_limit() -> None:
    assert len(decode_entries([entry()] * MAX_BUCKETS, NOW)) == MAX_BUCKETS
    with pytest.raises(MalformedMessage, match=f"at most {MAX_BUCKETS}"):
        decode_entries([entry()] * (MAX_BUCKETS + 1), NOW)


@pytest.mark.parametrize("raw", [None, {}, "[]", 5, (entry(),)])
def test_entries_must_be_a_list(raw: Any) -> None:
    with pytest.raises(MalformedMessage, match="entries must be a list"):
        decode_entries(raw, NOW)


@pytest.mark.parametrize("item", [entry()[:6], [*entry(), "x"], [], "login", None, 5, {"a": 1}])
def test_entry_wrong_arity_or_type(item: Any) -> None:
    with pytest.raises(MalformedMessage, match="an entry is"):
        decode_entries([item], NOW)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"group": ""}, "group"),
        ({"group": None}, "group"),
        ({"group": 5}, "group"),
        ({"group": "x" * (MAX_TEXT + 1)}, "group"),
        ({"key": ""}, "key"),
        ({"key": 42}, "key"),
        ({"key": "k" * (MAX_TEXT + 1)}, "key"),
        ({"period": 0}, "period"),
        ({"period": -60}, "period"),
        ({"period": True}, "period"),
        ({"period": 60.0}, "period"),
        ({"period": MAX_PERIOD + 1}, "period"),
        ({"window_start": -60}, "window start"),
        ({"window_start": float(START)}, "window start"),
        ({"window_start": START + 120}, "window start"),  # two minutes ahead: a clock far off
        ({"generation": -1}, "generation"),
        ({"generation": 1.5}, "generation"),
        ({"generation": NOW_NS + SKEW_NS + 1}, "generation"),
        ({"amount": -1}, "count"),
        ({"amount": True}, "count"),
        ({"amount": 3.0}, "count"),
        ({"amount": "3"}, "count"),
        ({"amount": None}, "count"),
        ({"amount": MAX_COUNT + 1}, "count"),
        ({"register": -1}, "register"),
        ({"register": MAX_COUNT + 1}, "register"),
    ],
)
def test_bad_entry_fields(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        decode_entries([entry(**changes)], NOW)


def test_one_bad_entry_drops_the_whole_list() -> None:
    with pytest.raises(MalformedMessage):
        decode_entries([*protocol.encode_entries(ENTRIES), entry(amount=-1)], NOW)


def test_staggered_window_starts_are_accepted() -> None:
    assert decode_entries([entry(window_start=START + 17)], NOW)[0].window_start == START + 17


def test_relay_round_trips_and_is_checked() -> None:
    relay = {"gone": ENTRIES[:2], "also-gone": ENTRIES[2:]}
    assert decode_relay(protocol.encode_relay(relay), NOW) == relay
    bad: Any
    for bad in ([], {"": []}, {"o": "x"}, {f"o{i}": [] for i in range(MAX_ORIGINS + 1)}):
        with pytest.raises(MalformedMessage):
            decode_relay(bad, NOW)


def test_inspected_states_round_trip() -> None:
    states = [BucketState("login", "k", 60, START, 0, {"n0": 3, "~max": 7})]
    assert decode_states(protocol.encode_states(states), NOW) == states
    for bad in ([["login", "k", 60, START, 0, {"n0": -1}]], [["login", "k", 60, START, 0]]):
        with pytest.raises(MalformedMessage):
            decode_states(bad, NOW)


# -- resets -------------------------------------------------------------------------------


def test_resets_round_trip() -> None:
    resets = [ResetState("login", "203.0.113.7", NOW_NS - 10), ResetState("api", None, 1)]
    assert decode_resets(protocol.encode_resets(resets), NOW) == resets
    assert decode_resets(None, NOW) == []


@pytest.mark.parametrize(
    "raw",
    [
        {},
        "[]",
        [["login", "k"]],
        [["login", "k", 0]],
        [["", "k", 5]],
        [["login", "", 5]],
        [["login", "k", NOW_NS + SKEW_NS + 1]],
        [["login", "k", True]],
    ],
)
def test_bad_resets(raw: Any) -> None:
    with pytest.raises(MalformedMessage):
        decode_resets(raw, NOW)


def test_too_many_resets() -> None:
    with pytest.raises(MalformedMessage, match=f"at most {MAX_RESETS}"):
        decode_resets([["login", "k", 5]] * (MAX_RESETS + 1), NOW)


def test_a_rejection_is_a_value_error_with_a_reason() -> None:
    assert issubclass(Rejected, ValueError)
    assert MalformedMessage("x").reason == "malformed"
