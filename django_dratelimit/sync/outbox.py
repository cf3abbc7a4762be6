"""What a node puts on the channel layer: sealed, numbered, counted, and answers off the loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..local.chunks import chunks
from ..local.store import Entry, ResetState
from ..logutil import log_throttled
from . import protocol
from .layers import raise_if_cancelling

if TYPE_CHECKING:
    from .node import SyncNode

MAX_REPLIES_IN_FLIGHT = 64


class Outbox:
    """The send side of one node."""

    def __init__(self, node: SyncNode) -> None:
        self.node = node
        self.seq = 0  # the number of the last state message broadcast
        self.replies: set[asyncio.Task[None]] = set()

    def fields(self, extra: dict[str, Any]) -> dict[str, Any]:
        node = self.node
        return {"node": node.store.origin, "ch": node.channel, "ts": node.clock(), **extra}

    async def broadcast(self, kind: str, extra: dict[str, Any], buckets: int = 0) -> None:
        node = self.node
        message = protocol.seal(kind, self.fields(extra), node.keys)
        for group in node.groups:
            await node.layer.group_send(group, message)
        self.sent(buckets)

    async def send(self, channel: str, kind: str, extra: dict[str, Any], buckets: int = 0) -> None:
        node = self.node
        await node.layer.send(channel, protocol.seal(kind, self.fields(extra), node.keys))
        self.sent(buckets)

    def sent(self, buckets: int) -> None:
        metrics = self.node.metrics
        metrics.messages_sent += 1
        metrics.buckets_sent += buckets
        metrics.last_send_ok = self.node.clock()

    async def broadcast_state(
        self, entries: list[Entry], resets: list[ResetState], full: bool = False
    ) -> None:
        batches = list(chunks(entries, self.node.chunk))
        for index, batch in enumerate(batches):
            # Numbered before sending: a send that fails leaves a gap, and a peer
            # that did get it and one that did not both end up right.
            self.seq += 1
            fields: dict[str, Any] = {"seq": self.seq, "e": protocol.encode_entries(batch)}
            if index == 0 and resets:
                fields["r"] = protocol.encode_resets(resets)
            if full and index == len(batches) - 1:
                fields["full"] = True
            await self.broadcast(protocol.STATE, fields, buckets=len(batch))

    def reply(self, coroutine: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Answer a request from the receive loop without making the loop wait for the send."""
        if len(self.replies) >= MAX_REPLIES_IN_FLIGHT:
            self.node.metrics.replies_dropped += 1
            return
        task = asyncio.ensure_future(self.answer(coroutine))
        self.replies.add(task)
        task.add_done_callback(self.replies.discard)

    async def answer(self, coroutine: Callable[[], Coroutine[Any, Any, None]]) -> None:
        # A failed answer (a joiner gone, a full channel) is counted, not a broker outage:
        # it must not send this node into recovery.
        try:
            await coroutine()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise_if_cancelling()
            self.node.metrics.replies_dropped += 1
            log_throttled(
                "sync-answer",
                logging.WARNING,
                "dratelimit: could not answer a peer (%s: %s)",
                type(exc).__name__,
                exc,
                every=60.0,
            )
