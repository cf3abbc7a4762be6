"""Answers to the management command: what this node holds, and the resets it is asked for."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..local.store import ResetState
from ..registry import known_rates
from . import protocol

if TYPE_CHECKING:
    from .node import SyncNode


def inspect_answer(node: SyncNode, payload: dict[str, Any]) -> dict[str, Any]:
    """This node's info and its live buckets, filtered as the command asked."""
    group = payload.get("group")
    key = payload.get("key")
    limit = payload.get("limit")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        limit = protocol.MAX_INSPECT_BUCKETS
    states = node.store.live_states(node.clock())
    if isinstance(group, str) and group:
        states = [s for s in states if s.group == group]
    if isinstance(key, str) and key:
        states = [s for s in states if key in s.key]
    states.sort(key=lambda s: -s.total)
    shown = states[: min(limit, protocol.MAX_INSPECT_BUCKETS)]
    planned = node.store.planned(node.clock())
    plans = [[*s[:4], s.generation, planned[s[:4]]] for s in shown if s[:4] in planned]
    return {
        "request": payload.get("id"),
        "info": node.node_info(),
        "buckets": protocol.encode_states(shown),
        # Buckets in budget mode here: the level each process may count up to.
        "plans": plans,
        "rates": known_rates(),
        "truncated": len(states) > limit,
    }


def reset_answer(node: SyncNode, payload: dict[str, Any]) -> dict[str, Any]:
    """Apply a reset sent to the whole group; the generation makes it idempotent."""
    now = node.clock()
    (reset,) = protocol.decode_resets(
        [[payload.get("group"), payload.get("key"), payload.get("generation")]], now
    )
    removed = node.store.apply_resets([reset])
    node.metrics.resets_applied += 1
    return {
        "request": payload.get("id"),
        "info": node.node_info(),
        "removed": removed,
        # The generation now in force. Above the request's when a newer reset (from
        # a process whose clock runs ahead) already covered this one: the sender can
        # then retry above it, or counts made since that newer reset would stay.
        "generation": generation_in_force(node, reset),
    }


def generation_in_force(node: SyncNode, reset: ResetState) -> int:
    """The highest reset generation that applies to what ``reset`` targets on this node."""
    return max(
        (
            r.generation
            for r in node.store.reset_states()
            # A group reset must rise above every key's generation in the group too.
            if r.group == reset.group and (r.key is None or reset.key is None or r.key == reset.key)
        ),
        default=0,
    )
