"""Hostile sync input: a fuzzer publishes random and mutated v2 messages to a real node.

The node is this process's real sync thread (``Limiter()`` with the pub/sub
layer on the test's redis-server); the fuzzer publishes on the group's Redis
channel and on the node's own channel, as anybody who can reach Redis could:
messages signed with the site's key and with wrong keys, truncated or flipped
payloads, wrong types everywhere, huge numbers, unknown types, replays.

After each example: the sync thread still runs, every message reached the
node and was either applied or dropped under a counted reason, no count is
negative or beyond the protocol's bound, and each total is the sum of its
origins. At the end a second node still syncs with it.
"""

from __future__ import annotations

import hmac
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
import redis
from django.test import override_settings
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from django_dratelimit.limiter import Limiter
from django_dratelimit.sync import protocol
from django_dratelimit.sync.keys import signing_keys
from django_dratelimit.sync.metrics import DROP_REASONS
from django_dratelimit.sync.node import SyncNode
from tests.cluster import RedisServer, wait_for
from tests.conftest import layer_config

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

RATE = "1000/h"
GROUP = "fuzz"
KEYS = [f"client-{n}" for n in range(5)]
WRONG_KEY = b"somebody who can reach Redis but not SECRET_KEY"
EXAMPLES = 600


@dataclass
class Target:
    limiter: Limiter
    node: SyncNode
    client: redis.Redis

    @property
    def group_channel(self) -> str:
        return f"asgi__group__{self.node.group}"

    def publish(self, channel: str, raw: bytes) -> None:
        self.client.publish(channel, raw)

    def foreign(self) -> int:
        """Messages received that were not the node's own."""
        metrics = self.node.metrics
        return metrics.messages_received - metrics.own_messages

    def drops(self) -> dict[str, int]:
        return {r: getattr(self.node.metrics, f"dropped_{r}") for r in DROP_REASONS}


@pytest.fixture
def target(redis_db: RedisServer) -> Iterator[Target]:
    with override_settings(
        CHANNEL_LAYERS={"default": layer_config("pubsub", redis_db.url)},
        DRATELIMIT={"SYNC_INTERVAL": 0.01, "ANTI_ENTROPY_INTERVAL": 2.0},
    ):
        limiter = Limiter()
        try:
            for n, key in enumerate(KEYS):
                for _ in range(n + 1):
                    limiter.hit(GROUP, key, RATE)
            assert limiter.sync is not None
            assert limiter.sync.node is not None
            node = limiter.sync.node
            wait_for(lambda: node.channel and node.joined.is_set(), 10, "the node to join")
            client = redis.Redis(host="127.0.0.1", port=redis_db.port, socket_timeout=5)
            # The group's Redis channel has a subscriber: the node.
            wait_for(
                lambda: client.pubsub_numsub(f"asgi__group__{node.group}")[0][1] >= 1,
                10,
                "the node to subscribe to its group",
            )
            yield Target(limiter, node, client)
            client.close()
        finally:
            limiter.close()


# -- what the fuzzer sends ------------------------------------------------------------

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)


# What msgpack can carry in the envelope itself (it has no integers past 64 bits).
envelope_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=5), st.binary()
)
wild = st.one_of(
    json_value,
    st.integers(min_value=-(2**64), max_value=2**70),
    st.sampled_from([protocol.MAX_COUNT + 1, -1, 2**63, 2**64, "", "x" * 2000, True, 1.5]),
)
legal_counts = st.one_of(
    st.integers(0, 1000), st.integers(0, protocol.MAX_COUNT), st.just(protocol.MAX_COUNT)
)


def mutate(draw: st.DrawFn, fields: dict[str, Any] | list[Any], most: int) -> None:
    """Replace (or, in a dict, delete) up to ``most`` fields with hostile values."""
    for _ in range(draw(st.sampled_from([0] * 8 + list(range(1, most + 1))))):
        if not fields:
            return
        if isinstance(fields, dict):
            name = draw(st.sampled_from(sorted(fields)))
            if draw(st.integers(0, 3)) == 0:
                del fields[name]
            else:
                fields[name] = draw(wild)
        else:
            fields[draw(st.integers(0, len(fields) - 1))] = draw(wild)


@st.composite
def entries(draw: st.DrawFn) -> list[Any]:
    """[group, key, period, start, generation, count, register]: valid, then maybe mutated."""
    start = int(time.time() // 3600 * 3600)  # the window limiter.hit(..., "1000/h") counts in
    fields: list[Any] = [
        GROUP,
        draw(st.sampled_from(KEYS) | st.text(min_size=1, max_size=5)),
        3600,
        start,
        # 0, or now: a signed reset earlier in the run voids everything counted before it.
        time.time_ns() if draw(st.booleans()) else 0,
        draw(legal_counts),
        draw(st.just(0) | legal_counts),
    ]
    mutate(draw, fields, 2)
    shape = draw(st.sampled_from(["as is"] * 18 + ["short", "long"]))
    if shape == "short":
        fields = fields[: draw(st.integers(0, 6))]
    elif shape == "long":
        fields = [*fields, draw(json_value)]
    return fields


# One in six is a replay of "r1".
PEERS = [f"peer-{c}" for c in "abcdef"]
NEXT = -1  # stands for "the next sequence number"
_sequence = itertools.count(1)
request_ids = st.sampled_from(["r1", *["new"] * 5]).flatmap(
    lambda r: st.just(r) if r == "r1" else st.uuids().map(lambda u: u.hex)
)
entry_lists = st.lists(entries(), max_size=4)
REQUIRED: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    protocol.STATE: {"seq": st.just(NEXT), "e": entry_lists},
    protocol.HEARTBEAT: {"seq": st.integers(0, 10**6)},
    protocol.SYNC_REQUEST: {"id": request_ids},
    protocol.BYE: {},
    protocol.OWN: {
        "seq": st.just(NEXT) | st.integers(0, 10**6),
        "e": entry_lists,
        "last": st.booleans(),
    },
    protocol.PULL: {"id": request_ids},
    protocol.RELAY_REQUEST: {"id": request_ids, "exclude": st.lists(st.text(max_size=5))},
    protocol.RELAY: {
        "rl": st.dictionaries(st.sampled_from(["peer-c", "peer-d"]), entry_lists, max_size=2),
        "last": st.booleans(),
    },
    protocol.INSPECT: {"id": request_ids},
    protocol.RESET: {
        "id": request_ids,
        "group": st.just(GROUP),
        "key": st.sampled_from(KEYS) | st.none(),
    },
    protocol.REPLY: {"request": st.text(max_size=5), "info": st.just({})},
}


def payload_fields(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """A payload of the right shape for ``kind`` (a random one for unknown kinds), then mutated."""
    fields: dict[str, Any] = {
        # A few senders only: every new one is a live peer, which stretches the node's
        # interval (peers / SYNC_RECEIVE_BUDGET) for the rest of the run.
        "node": draw(st.sampled_from(PEERS)),
        "ch": "asgispecific.nowhere",
        "ts": time.time(),
    }
    for name, strategy in REQUIRED.get(kind, {}).items():
        fields[name] = draw(strategy)
    if fields.get("seq") == NEXT:
        # Each sender's next number, so that its counts are new to the node (not
        # drawn: what came before in the run decides it, not the example).
        fields["seq"] = next(_sequence)
    if kind == protocol.RESET and draw(st.booleans()):
        fields["generation"] = draw(st.integers(1, 2 * 10**18) | wild)
    if draw(st.integers(0, 4)) == 0:
        fields.update(draw(st.dictionaries(st.sampled_from(["r", "full", "x", "e"]), wild)))
    mutate(draw, fields, 3)
    return fields


@dataclass(frozen=True)
class Case:
    raw: bytes  # what goes on the Redis channel
    to_group: bool
    must_drop: str | None  # the drop reason an independent rule predicts, or None
    note: str

    def __repr__(self) -> str:
        shown = self.raw if len(self.raw) < 300 else self.raw[:300] + b"..."
        return f"Case({shown!r}, to_group={self.to_group}, {self.must_drop!r}, {self.note!r})"


MUTATIONS = ["none", "wrong_key", "truncated", "truncated_resigned", "flipped", "unsigned"]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from([*sorted(protocol.TYPES), "?"]))
    if kind == "?":  # one in twelve: a type nobody handles
        kind = draw(st.text(max_size=12))
    payload = payload_fields(draw, kind)
    mutation = draw(st.sampled_from(["none"] * 10 + MUTATIONS))
    keys = [WRONG_KEY] if mutation == "wrong_key" else signing_keys()
    message = protocol.seal(kind, payload, keys)
    if mutation in ("truncated", "truncated_resigned"):
        # Positions drawn apart from the length (timestamps make it vary between runs).
        message["p"] = message["p"][: draw(st.integers(0, 2**16)) % len(message["p"])]
        if mutation == "truncated_resigned":
            # The right key, but not JSON any more (a strict prefix of an object).
            signed = protocol.signed_bytes(kind, message["p"])
            message["s"] = [hmac.digest(k, signed, "sha256") for k in keys]
    elif mutation == "flipped":
        body = bytearray(message["p"])
        body[draw(st.integers(0, 2**16)) % len(body)] ^= draw(st.integers(1, 255))
        message["p"] = bytes(body)
    elif mutation == "unsigned":
        message = draw(
            st.sampled_from(
                [
                    {"type": kind, "v": 1, "node": "peer-a", "e": []},  # protocol v1
                    {**message, "v": draw(st.integers(-3, 9).filter(lambda v: v != 2))},
                    {**message, "p": message["p"].decode("latin-1")},
                    {**message, "s": draw(envelope_values)},
                ]
            )
        )
    return Case(
        msgpack.packb(message, use_bin_type=True),
        draw(st.booleans()),
        predicted_drop(kind, payload, mutation),
        f"{kind} {mutation}",
    )


def predicted_drop(kind: str, payload: dict[str, Any], mutation: str) -> str | None:
    """The reason a message must be dropped for, by rules written apart from the protocol's.

    None: the envelope is sound; the handler may still drop it for a bad field.
    """
    if kind not in protocol.TYPES:
        return "unknown_type"
    if mutation == "unsigned":
        return "unsigned"
    if mutation in ("wrong_key", "truncated", "flipped"):
        return "bad_signature"
    if mutation == "truncated_resigned":
        return "malformed"

    def bad_text(value: Any) -> bool:
        return not isinstance(value, str) or not 0 < len(value) <= protocol.MAX_TEXT

    node, channel, stamp = payload.get("node"), payload.get("ch"), payload.get("ts")
    if bad_text(node) or (channel is not None and bad_text(channel)):
        return "malformed"
    if isinstance(stamp, bool) or not isinstance(stamp, int | float):
        return "malformed"
    if abs(stamp - time.time()) > protocol.REPLAY_WINDOW:
        return "stale"
    return None


# -- the checks ------------------------------------------------------------------------


def check_store(target: Target) -> None:
    """No negative or absurd count; every total is the sum of its origins."""
    store = target.limiter.store
    with store._lock:
        buckets = list(store._buckets.items())
    assert len(buckets) <= store.max_keys
    for bucket_key, bucket in buckets:
        assert bucket.local >= 0, bucket_key
        for origin, value in bucket.counts().items():
            assert 0 <= value <= protocol.MAX_COUNT, (bucket_key, origin, value)
        hits = bucket.local + sum(v for o, v in bucket.counts().items() if o[0] != "~")
        assert bucket.total == hits, (bucket_key, bucket.total, hits)


PROBE = "fuzz-probe"


def deliver(target: Target, batch: list[Case]) -> dict[str, int]:
    """Publish a batch, then a probe; once the node has heard the probe it has read the batch.

    Both channels feed the node's one queue, in the order Redis delivers them.
    Returns the drops the node counted for the batch.
    """
    before_seen, before = target.foreign(), target.drops()
    probe = target.node.peers.table.get(PROBE)
    heard = probe.last_heard if probe is not None else float("-inf")
    for case in batch:
        channel = target.group_channel if case.to_group else target.node.channel
        target.publish(channel, case.raw)
    heartbeat = protocol.seal(
        protocol.HEARTBEAT, {"node": PROBE, "ch": None, "ts": time.time(), "seq": 0}, signing_keys()
    )
    target.publish(target.node.channel, msgpack.packb(heartbeat, use_bin_type=True))

    def probe_heard() -> bool:
        peer = target.node.peers.table.get(PROBE)
        return peer is not None and peer.last_heard > heard

    wait_for(probe_heard, 10, "the node to read the batch and the probe", interval=0.001)
    # Every message reached the node. (Read from this thread, while the node may be
    # half-way through counting one of its own heartbeats: +-1.)
    assert len(batch) <= target.foreign() - before_seen <= len(batch) + 2
    after = target.drops()
    return {r: after[r] - before[r] for r in DROP_REASONS if after[r] != before[r]}


def test_fuzzed_sync_messages_never_break_the_node(
    target: Target, record: Callable[..., None]
) -> None:
    checked: dict[str, int] = {"examples": 0, "messages": 0, "predicted_drops": 0, "accepted": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(batch=st.lists(cases(), min_size=1, max_size=4))
    @example(batch=[big_payload()])
    def run(batch: list[Case]) -> None:
        dropped = deliver(target, batch)
        checked["examples"] += 1
        checked["messages"] += len(batch)
        checked["accepted"] += len(batch) - sum(dropped.values())
        predicted: dict[str, int] = {}
        for case in batch:
            if case.must_drop:
                predicted[case.must_drop] = predicted.get(case.must_drop, 0) + 1
        checked["predicted_drops"] += sum(predicted.values())
        # Every message an independent rule says is bad was dropped under that reason
        # (others may be dropped too: a signed payload with a bad field).
        for reason, n in predicted.items():
            assert dropped.get(reason, 0) >= n, (reason, dropped, [c.note for c in batch])
        assert sum(dropped.values()) <= len(batch)
        # Every rejection is a named reason: no handler met what it did not expect.
        assert "handler_error" not in dropped, [c.note for c in batch]
        assert target.limiter.sync is not None
        assert target.limiter.sync.is_alive()
        check_store(target)

    run()
    assert target.node.metrics.broker_errors == 0  # nothing was taken for an outage

    # Still a working member of the group: a second node's hits reach it, and back.
    # (In a group of its own: signed resets of GROUP, some with generations up to a
    # minute ahead, are legitimate input and would void the other node's fresh hits.)
    with override_settings(DRATELIMIT={"SYNC_INTERVAL": 0.01, "ANTI_ENTROPY_INTERVAL": 2.0}):
        other = Limiter()
        try:
            group, key = f"after-{uuid.uuid4().hex}", "k"
            target.limiter.hit(group, key, RATE)
            for _ in range(4):
                other.hit(group, key, RATE)
            wait_for(lambda: target.limiter.get(group, key, RATE).count == 5, 10, "5 on target")
            wait_for(lambda: other.get(group, key, RATE).count == 5, 10, "5 on the other")
        finally:
            other.close()
    assert checked["examples"] >= EXAMPLES // 2, checked
    metrics = target.node.metrics
    record(
        "hostile_input",
        **checked,
        dropped={r: n for r, n in target.drops().items() if n},
        merged_buckets=metrics.merges,
        peers_after=target.node.node_info()["peers"],
        effective_interval_s=round(target.node.effective_interval, 3),
        broker_errors=metrics.broker_errors,
    )


def big_payload() -> Case:
    """A signed message over the 4 MiB payload limit."""
    filler = "x" * (protocol.MAX_PAYLOAD + 1)
    message = protocol.seal(
        protocol.STATE,
        {"node": "peer-big", "ch": "c", "ts": time.time(), "seq": 1, "e": [], "pad": filler},
        signing_keys(),
    )
    return Case(msgpack.packb(message, use_bin_type=True), True, "malformed", "big")


def test_undecodable_bytes_are_a_counted_drop_not_an_outage(target: Target) -> None:
    before = sum(target.drops().values())
    for raw in (b"\xc1", b"not msgpack at all", json.dumps({"type": "x"}).encode()[:-1]):
        target.publish(target.group_channel, raw)
    wait_for(
        lambda: sum(target.drops().values()) - before == 3 or target.node.metrics.broker_errors,
        10,
        "three drops (or a broker error)",
    )
    assert target.node.metrics.broker_errors == 0, target.node.metrics.last_error
    assert sum(target.drops().values()) - before == 3
