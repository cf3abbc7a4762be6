"""The channel-layer group consumer: merges remote counts and answers requests."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from channels.consumer import AsyncConsumer

from . import protocol
from .logutil import log_throttled

if TYPE_CHECKING:
    from .sync import SyncNode


class RateLimitConsumer(AsyncConsumer):  # type: ignore[misc]
    """Member of the sync group; ``ratelimit.state`` is handled by ``ratelimit_state``.

    It is driven by :class:`~django_dratelimit.sync.SyncNode`'s own receive
    loop, not by ``AsyncConsumer.__call__``: that would use the shared cached
    layer, end on the first receive error, and hop to a thread to close
    database connections before every message.
    """

    HANDLED = {
        protocol.STATE: "ratelimit_state",
        protocol.SYNC_REQUEST: "ratelimit_sync_request",
        protocol.INSPECT: "ratelimit_inspect",
        protocol.RESET: "ratelimit_reset",
    }

    def __init__(self, node: SyncNode) -> None:
        self.node = node
        self.metrics = node.metrics
        self.channel_layer = node.layer
        self.channel_name = node.channel
        self.scope: dict[str, Any] = {"type": "dratelimit.sync"}

    async def dispatch(self, message: Any) -> None:
        """Handle one message; nothing it contains can raise out of here."""
        kind = message.get("type") if isinstance(message, dict) else None
        handler_name = self.HANDLED.get(kind) if isinstance(kind, str) else None
        if handler_name is None:
            self.metrics.unknown_types += 1
            log_throttled(
                "unknown-type",
                logging.DEBUG,
                "dratelimit: ignoring a message of type %r on the sync group",
                kind,
            )
            return
        try:
            sender = protocol.check_envelope(message)
            if sender == self.node.store.origin:
                self.metrics.own_messages += 1
                return
            await getattr(self, handler_name)(message)
        except protocol.MalformedMessage as exc:
            self.metrics.malformed += 1
            log_throttled(
                "malformed",
                logging.WARNING,
                "dratelimit: dropped a malformed %s message: %s",
                kind,
                exc,
            )
        except Exception:
            self.metrics.handler_errors += 1
            log_throttled(
                "handler-error",
                logging.ERROR,
                "dratelimit: error while handling a %s message",
                kind,
                exc_info=True,
            )

    async def ratelimit_state(self, message: dict[str, Any]) -> None:
        """Max-merge another process's absolute counts (and apply its resets)."""
        now = self.node.clock()
        states, resets = protocol.decode_state(message, now)
        store = self.node.store
        if resets:
            store.apply_resets(resets)
            self.metrics.resets_applied += len(resets)
        self.metrics.buckets_received += len(states)
        self.metrics.merges += store.merge(states, now)
        self.node.heard_from_peer()

    async def ratelimit_sync_request(self, message: dict[str, Any]) -> None:
        """A process joined: send it everything we know, straight to its channel."""
        reply = protocol._text(message.get("reply"), "reply")
        await self.node.send_full_state(reply, own_only=False)

    async def ratelimit_inspect(self, message: dict[str, Any]) -> None:
        reply = protocol._text(message.get("reply"), "reply")
        await self.node.answer_inspect(reply, message)  # type: ignore[arg-type]

    async def ratelimit_reset(self, message: dict[str, Any]) -> None:
        reply = protocol._text(message.get("reply"), "reply", optional=True)
        await self.node.answer_reset(reply, message)
