"""Sync messages: valid ones round-trip, anything else is dropped whole with a reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from django_dratelimit import protocol
from django_dratelimit.algorithms import EPOCH_PERIODS
from django_dratelimit.protocol import (
    CLOCK_SKEW,
    MAX_BUCKETS,
    MAX_COUNT,
    MAX_ORIGINS,
    MAX_RESETS,
    MAX_TEXT,
    MalformedMessage,
    check_envelope,
    decode_buckets,
    decode_resets,
    decode_state,
    state_message,
)
from django_dratelimit.rates import MAX_PERIOD
from django_dratelimit.store import BucketState, ResetState

NOW = 1_700_000_010.0
START = 1_699_999_980  # the minute that contains NOW
NOW_NS = int(NOW * 1e9)
SKEW_NS = int(CLOCK_SKEW * 1e9)

STATES = [
    BucketState("login", "203.0.113.7", 60, START, 0, {"n0": 3, "n1": 2}),
    BucketState("login", "203.0.113.7", 60, START - 60, 0, {"n0": 1}),
    BucketState("api", "user:42", 3600, START - START % 3600, NOW_NS - 5, {"n2": 0}),
    BucketState("api", "ключ", 1, int(NOW), 7, {}),
]
RESETS = [ResetState("login", "203.0.113.7", NOW_NS - 10), ResetState("api", None, 1)]


def bucket(**changes: Any) -> list[Any]:
    """A valid encoded bucket, with some fields replaced."""
    fields = {
        "group": "login",
        "key": "203.0.113.7",
        "period": 60,
        "start": START,
        "generation": 0,
        "counts": {"n0": 3},
    }
    fields.update(changes)
    return list(fields.values())


def reset(**changes: Any) -> list[Any]:
    fields: dict[str, Any] = {"group": "login", "key": "k", "generation": 5}
    fields.update(changes)
    return list(fields.values())


# -- valid messages -------------------------------------------------------------------


def test_state_message_shape() -> None:
    message = state_message("n0", STATES[:1], RESETS[:1])
    assert message == {
        "type": "ratelimit.state",
        "v": 1,
        "node": "n0",
        "buckets": [["login", "203.0.113.7", 60, START, 0, {"n0": 3, "n1": 2}]],
        "resets": [["login", "203.0.113.7", NOW_NS - 10]],
    }


def test_valid_messages_round_trip() -> None:
    message = state_message("node-1", STATES, RESETS)
    assert check_envelope(message) == "node-1"
    assert decode_state(message, NOW) == (STATES, RESETS)


def test_valid_messages_round_trip_through_serialisation() -> None:
    message = json.loads(json.dumps(state_message("node-1", STATES, RESETS)))
    assert check_envelope(message) == "node-1"
    assert decode_state(message, NOW) == (STATES, RESETS)


def test_empty_message_round_trips() -> None:
    message = state_message("n0", [])
    assert decode_state(message, NOW) == ([], [])


def test_tuples_are_accepted_like_lists() -> None:
    assert decode_buckets([tuple(bucket())], NOW) == [
        BucketState("login", "203.0.113.7", 60, START, 0, {"n0": 3})
    ]
    assert decode_resets([("g", None, 3)], NOW) == [ResetState("g", None, 3)]


def test_missing_resets_mean_none() -> None:
    assert decode_resets(None, NOW) == []
    message = state_message("n0", STATES)
    del message["resets"]
    assert decode_state(message, NOW) == (STATES, [])


def test_decode_state_uses_the_wall_clock_by_default() -> None:
    message = state_message("n0", [BucketState("g", "k", 60, 0, 0, {"n0": 1})])
    assert decode_state(message) == ([BucketState("g", "k", 60, 0, 0, {"n0": 1})], [])


@pytest.mark.parametrize(
    "changes",
    [
        {"group": "x" * MAX_TEXT},
        {"key": "k" * MAX_TEXT},
        {"period": MAX_PERIOD, "start": 0},
        {"period": 1, "start": int(NOW + CLOCK_SKEW)},
        {"start": START + 60},  # a peer a little ahead of us
        {"start": 0},
        {"start": START + 17},  # a staggered window (scopes.py): not a multiple of the period
        {"generation": NOW_NS + SKEW_NS},
        {"counts": {"n0": MAX_COUNT}},
        {"counts": {"n0": 0}},
        {"counts": {}},
        {"counts": {f"n{i}": 1 for i in range(MAX_ORIGINS)}},
        {"counts": {"o" * MAX_TEXT: 1}},
    ],
)
def test_limits_are_inclusive(changes: dict[str, Any]) -> None:
    [state] = decode_buckets([bucket(**changes)], NOW)
    assert state == BucketState(*bucket(**changes))


def test_many_buckets_up_to_the_limit() -> None:
    assert len(decode_buckets([bucket()] * MAX_BUCKETS, NOW)) == MAX_BUCKETS
    assert len(decode_resets([reset()] * MAX_RESETS, NOW)) == MAX_RESETS


# -- envelopes ----------------------------------------------------------------------------


@pytest.mark.parametrize("message", [None, [], "ratelimit.state", 1, b"{}", ({"v": 1},)])
def test_envelope_must_be_a_dict(message: Any) -> None:
    with pytest.raises(MalformedMessage, match="not a dict"):
        check_envelope(message)


@pytest.mark.parametrize("version", [0, 2, "1", None, [1], -1])
def test_envelope_wrong_version(version: Any) -> None:
    with pytest.raises(MalformedMessage, match="version"):
        check_envelope({"type": protocol.STATE, "v": version, "node": "n0"})


def test_envelope_missing_version() -> None:
    with pytest.raises(MalformedMessage, match="version"):
        check_envelope({"type": protocol.STATE, "node": "n0"})


@pytest.mark.parametrize("version", [True, 1.0])
def test_envelope_version_must_be_the_integer_1(version: Any) -> None:
    # True == 1 and 1.0 == 1 in Python; the format version is an int like every other field.
    with pytest.raises(MalformedMessage, match="version"):
        check_envelope({"type": protocol.STATE, "v": version, "node": "n0"})


@pytest.mark.parametrize("node", [None, "", 5, True, ["n0"], "n" * (MAX_TEXT + 1)])
def test_envelope_bad_node(node: Any) -> None:
    with pytest.raises(MalformedMessage, match="node"):
        check_envelope({"type": protocol.STATE, "v": 1, "node": node})


def test_envelope_missing_node() -> None:
    with pytest.raises(MalformedMessage, match="node"):
        check_envelope({"type": protocol.STATE, "v": 1})


# -- buckets ------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, {}, (), "[]", 5, {"buckets": []}])
def test_buckets_must_be_a_list(raw: Any) -> None:
    with pytest.raises(MalformedMessage, match="buckets must be a list"):
        decode_buckets(raw, NOW)


def test_missing_buckets_are_an_error() -> None:
    message = state_message("n0", STATES)
    del message["buckets"]
    with pytest.raises(MalformedMessage, match="buckets"):
        decode_state(message, NOW)


def test_too_many_buckets() -> None:
    with pytest.raises(MalformedMessage, match=f"at most {MAX_BUCKETS}"):
        decode_buckets([bucket()] * (MAX_BUCKETS + 1), NOW)


@pytest.mark.parametrize(
    "item",
    [
        bucket()[:5],
        [*bucket(), "extra"],
        [],
        "login",
        {"group": "login"},
        None,
        5,
    ],
)
def test_bucket_wrong_arity_or_type(item: Any) -> None:
    with pytest.raises(MalformedMessage, match="a bucket must be"):
        decode_buckets([item], NOW)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"group": ""}, "group"),
        ({"group": None}, "group"),
        ({"group": 5}, "group"),
        ({"group": True}, "group"),
        ({"group": b"login"}, "group"),
        ({"group": "x" * (MAX_TEXT + 1)}, "group"),
        ({"key": ""}, "key"),
        ({"key": None}, "key"),
        ({"key": 42}, "key"),
        ({"key": "k" * (MAX_TEXT + 1)}, "key"),
        ({"period": 0}, "period"),
        ({"period": -60}, "period"),
        ({"period": True}, "period"),
        ({"period": 60.0}, "period"),
        ({"period": "60"}, "period"),
        ({"period": None}, "period"),
        ({"period": EPOCH_PERIODS * MAX_PERIOD + 1}, "period"),
        ({"start": -60}, "window start"),
        ({"start": True}, "window start"),
        ({"start": float(START)}, "window start"),
        ({"start": str(START)}, "window start"),
        ({"start": START + 120}, "window start"),  # two minutes ahead: a clock far off
        ({"start": 10**12 * 60}, "window start"),
        ({"generation": -1}, "generation"),
        ({"generation": True}, "generation"),
        ({"generation": 1.5}, "generation"),
        ({"generation": "1"}, "generation"),
        ({"generation": NOW_NS + SKEW_NS + 1}, "generation"),
        ({"counts": None}, "counts"),
        ({"counts": [["n0", 3]]}, "counts"),
        ({"counts": "n0"}, "counts"),
        ({"counts": {f"n{i}": 1 for i in range(MAX_ORIGINS + 1)}}, "counts"),
        ({"counts": {"": 1}}, "origin"),
        ({"counts": {5: 1}}, "origin"),
        ({"counts": {None: 1}}, "origin"),
        ({"counts": {"o" * (MAX_TEXT + 1): 1}}, "origin"),
        ({"counts": {"n0": True}}, "count"),
        ({"counts": {"n0": False}}, "count"),
        ({"counts": {"n0": 3.0}}, "count"),
        ({"counts": {"n0": 3.5}}, "count"),
        ({"counts": {"n0": "3"}}, "count"),
        ({"counts": {"n0": None}}, "count"),
        ({"counts": {"n0": -1}}, "count"),
        ({"counts": {"n0": MAX_COUNT + 1}}, "count"),
        ({"counts": {"n0": 1, "n1": -5}}, "count"),
    ],
)
def test_bad_bucket_fields(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        decode_buckets([bucket(**changes)], NOW)


def test_one_bad_bucket_drops_the_whole_message() -> None:
    message = state_message("n0", STATES)
    message["buckets"].append(bucket(counts={"n0": -1}))
    with pytest.raises(MalformedMessage):
        decode_state(message, NOW)


def test_the_clock_skew_allowance_follows_now() -> None:
    ahead = bucket(start=START + 120)
    with pytest.raises(MalformedMessage):
        decode_buckets([ahead], NOW)
    assert len(decode_buckets([ahead], NOW + 60)) == 1


# -- resets -------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [{}, (), "[]", 5, {"resets": []}])
def test_resets_must_be_a_list(raw: Any) -> None:
    with pytest.raises(MalformedMessage, match="resets must be a list"):
        decode_resets(raw, NOW)


def test_too_many_resets() -> None:
    with pytest.raises(MalformedMessage, match=f"at most {MAX_RESETS}"):
        decode_resets([reset()] * (MAX_RESETS + 1), NOW)


@pytest.mark.parametrize("item", [reset()[:2], [*reset(), 1], [], "g", {"group": "g"}, None])
def test_reset_wrong_arity_or_type(item: Any) -> None:
    with pytest.raises(MalformedMessage, match="a reset must be"):
        decode_resets([item], NOW)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"group": ""}, "group"),
        ({"group": None}, "group"),
        ({"group": 1}, "group"),
        ({"group": "g" * (MAX_TEXT + 1)}, "group"),
        ({"key": ""}, "key"),
        ({"key": 1}, "key"),
        ({"key": False}, "key"),
        ({"key": "k" * (MAX_TEXT + 1)}, "key"),
        ({"generation": 0}, "generation"),
        ({"generation": -1}, "generation"),
        ({"generation": True}, "generation"),
        ({"generation": 5.0}, "generation"),
        ({"generation": None}, "generation"),
        ({"generation": NOW_NS + SKEW_NS + 1}, "generation"),
    ],
)
def test_bad_reset_fields(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        decode_resets([reset(**changes)], NOW)


def test_one_bad_reset_drops_the_whole_message() -> None:
    message = state_message("n0", STATES, RESETS)
    message["resets"].append(reset(generation=0))
    with pytest.raises(MalformedMessage):
        decode_state(message, NOW)


def test_reset_of_a_whole_group() -> None:
    assert decode_resets([["g", None, NOW_NS + SKEW_NS]], NOW) == [
        ResetState("g", None, NOW_NS + SKEW_NS)
    ]


# -- chunks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [(1, [[0], [1], [2], [3], [4]]), (2, [[0, 1], [2, 3], [4]]), (5, [[0, 1, 2, 3, 4]])],
)
def test_chunks(size: int, expected: list[list[int]]) -> None:
    assert list(protocol.chunks(list(range(5)), size)) == expected
    assert list(protocol.chunks([], size)) == []


def test_malformed_message_is_a_value_error() -> None:
    assert issubclass(MalformedMessage, ValueError)
