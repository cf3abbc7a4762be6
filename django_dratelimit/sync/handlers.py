"""What a node does with each message it receives: ``ratelimit.state`` -> ``ratelimit_state``.

Dispatch works like channels' ``AsyncConsumer`` (by message type) but is driven
by the node's own receive loop: a message is opened (signature, replay window,
shape) first, and nothing it contains can raise out of here. A drop is counted
under its reason and logged, at most once a minute per reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..local.chunks import chunks
from ..local.store import Entry
from ..logutil import log_throttled
from . import protocol
from .answers import inspect_answer, reset_answer
from .peers import GAP, OLD

if TYPE_CHECKING:
    from .node import SyncNode

Handler = Callable[[str, dict[str, Any], float], None]
MAX_SEEN_REQUESTS = 10_000

V1_WARNING = (
    "dratelimit: ignoring unsigned sync messages on group %r: a process running sync "
    "protocol v1 (django-dratelimit 0.1) shares this group. v1 and v2 processes do not "
    "share counts; see the docs on upgrading."
)


class Handlers:
    """The receive side of one node; only its loop calls in."""

    def __init__(self, node: SyncNode) -> None:
        self.node = node
        self.metrics = node.metrics
        self.store = node.store
        self.peers = node.peers
        self._seen: dict[str, float] = {}

    def dispatch(self, message: Any) -> None:
        """Handle one message from the layer."""
        node = self.node
        now = node.clock()
        try:
            kind, payload = protocol.open_message(message, node.keys, now)
            sender = payload["node"]
            if sender == self.store.origin:
                self.metrics.own_messages += 1
                return
            handler: Handler = getattr(self, kind.replace(".", "_"))
            handler(sender, payload, now)
        except protocol.Rejected as exc:
            self._dropped(exc.reason, message, str(exc))
        except Exception:
            self._dropped("handler_error", message, "", exc_info=True)

    def undecodable(self, exc: BaseException) -> None:
        """The layer could not even deserialize a message."""
        self._dropped("malformed", None, f"{type(exc).__name__}: {exc}")

    def _dropped(self, reason: str, message: Any, detail: str, exc_info: bool = False) -> None:
        self.metrics.drop(reason)
        kind = message.get("type") if isinstance(message, dict) else type(message).__name__
        if reason == "unsigned" and isinstance(message, dict) and message.get("v") == 1:
            log_throttled("sync-v1", logging.WARNING, V1_WARNING, self.node.group, every=1e9)
            return
        level = logging.ERROR if reason == "handler_error" else logging.WARNING
        log_throttled(
            f"sync-drop-{reason}",
            level,
            "dratelimit: dropped a %s sync message (%s): %s",
            kind,
            reason,
            detail,
            every=60.0,
            exc_info=exc_info,
        )

    def _request_once(self, payload: dict[str, Any], now: float) -> None:
        """Requests carry an id: one replayed within the window is dropped, not answered."""
        request = protocol.required_text(payload.get("id"), "id")
        if request in self._seen:
            raise protocol.Rejected("replayed", "a request already answered")
        if len(self._seen) >= MAX_SEEN_REQUESTS:
            horizon = now - 2 * protocol.REPLAY_WINDOW
            self._seen = {r: t for r, t in self._seen.items() if t > horizon}
        self._seen[request] = now

    def _reply_channel(self, payload: dict[str, Any]) -> str:
        return protocol.required_text(payload.get("ch"), "ch")

    def _seq(self, payload: dict[str, Any]) -> int:
        return protocol.integer(payload.get("seq"), "seq", 0, 2**62)

    def _merge(self, origin: str, raw: Any, now: float) -> None:
        entries = protocol.check_entries(raw, now)
        self.metrics.buckets_received += len(entries)
        self.metrics.merges += self.store.merge(origin, entries, now)
        self.node.rebudget((e[0], e[1], e[2], e[3]) for e in entries)

    def _apply_resets(self, raw: Any, now: float) -> None:
        resets = protocol.decode_resets(raw, now)
        if resets:
            self.store.apply_resets(resets)
            self.metrics.resets_applied += len(resets)

    def _heard(self, sender: str, payload: dict[str, Any], now: float) -> Any:
        known = sender in self.peers.table
        peer = self.peers.heard(sender, payload.get("ch"), now)
        if not known:
            self.node.peer_joined()
        return peer

    # -- broadcasts ----------------------------------------------------------------------

    def ratelimit_state(self, sender: str, payload: dict[str, Any], now: float) -> None:
        """A peer's own counts of the buckets it changed: max-merge them."""
        seq = self._seq(payload)
        entries = protocol.check_entries(payload.get("e"), now)
        resets = protocol.decode_resets(payload.get("r"), now)
        peer = self._heard(sender, payload, now)
        verdict = self.peers.sequence(peer, seq, now, self.node.join.catching_up)
        if verdict == OLD:
            self.metrics.duplicates += 1
            return
        if verdict == GAP:
            self.metrics.gaps += 1
            self.node.rounds.poke()
        if resets:
            self.store.apply_resets(resets)
            self.metrics.resets_applied += len(resets)
        self.metrics.buckets_received += len(entries)
        self.metrics.merges += self.store.merge(sender, entries, now)
        self.node.rebudget((e[0], e[1], e[2], e[3]) for e in entries)  # a new picture: new budgets
        if payload.get("full") is True:
            self.peers.caught_up_to(peer, seq)

    def ratelimit_heartbeat(self, sender: str, payload: dict[str, Any], now: float) -> None:
        seq = self._seq(payload)
        peer = self._heard(sender, payload, now)
        if not self.node.join.catching_up and self.peers.heartbeat(peer, seq, now):
            self.metrics.gaps += 1
            self.node.rounds.poke()

    def ratelimit_sync_request(self, sender: str, payload: dict[str, Any], now: float) -> None:
        """A process joined (or is back): send it our own counts, to its channel only."""
        self._request_once(payload, now)
        channel = self._reply_channel(payload)
        self._heard(sender, payload, now)
        self.node.outbox.reply(lambda: self._send_own(channel))

    def ratelimit_bye(self, sender: str, payload: dict[str, Any], now: float) -> None:
        self.peers.left(sender)
        self.node.peer_joined()

    # -- answers and requests sent to this node ---------------------------------------------

    def ratelimit_own(self, sender: str, payload: dict[str, Any], now: float) -> None:
        """All of a peer's own counts (it answered our join, or our pull)."""
        seq = self._seq(payload)
        self._merge(sender, payload.get("e"), now)
        self._apply_resets(payload.get("r"), now)
        peer = self._heard(sender, payload, now)
        if payload.get("last") is True:
            self.peers.caught_up_to(peer, seq)
            self.node.join.answered(sender)

    def ratelimit_pull(self, sender: str, payload: dict[str, Any], now: float) -> None:
        self._request_once(payload, now)
        channel = self._reply_channel(payload)
        self.node.outbox.reply(lambda: self._send_own(channel))

    def ratelimit_relay_request(self, sender: str, payload: dict[str, Any], now: float) -> None:
        """A joiner asks for every origin that did not answer it itself, and the resets."""
        self._request_once(payload, now)
        channel = self._reply_channel(payload)
        exclude = payload.get("exclude")
        if not isinstance(exclude, list) or len(exclude) > protocol.MAX_ORIGINS:
            raise protocol.MalformedMessage("exclude must be a list of node ids")
        skip = {protocol.required_text(o, "excluded node") for o in exclude} | {sender}
        self.node.outbox.reply(lambda: self._send_relay(channel, skip))

    def ratelimit_relay(self, sender: str, payload: dict[str, Any], now: float) -> None:
        relay = protocol.decode_relay(payload.get("rl"), now)
        self._apply_resets(payload.get("r"), now)
        for origin, entries in relay.items():
            self.metrics.buckets_received += len(entries)
            self.metrics.merges += self.store.merge(origin, entries, now)
            self.node.rebudget((e[0], e[1], e[2], e[3]) for e in entries)
        if payload.get("last") is True:
            self.node.join.relay_received.set()

    def ratelimit_inspect(self, sender: str, payload: dict[str, Any], now: float) -> None:
        self._request_once(payload, now)
        channel = self._reply_channel(payload)
        answer = inspect_answer(self.node, payload)
        self.node.outbox.reply(lambda: self.node.outbox.send(channel, protocol.REPLY, answer))

    def ratelimit_reset(self, sender: str, payload: dict[str, Any], now: float) -> None:
        self._request_once(payload, now)
        channel = protocol.text(payload.get("ch"), "ch", optional=True)
        answer = reset_answer(self.node, payload)
        if channel is not None:
            self.node.outbox.reply(lambda: self.node.outbox.send(channel, protocol.REPLY, answer))

    def ratelimit_reply(self, sender: str, payload: dict[str, Any], now: float) -> None:
        """Replies are for the management command; a node has nothing to do with them."""

    # -- the answers -----------------------------------------------------------------------

    async def _send_own(self, channel: str) -> None:
        node = self.node
        seq = node.outbox.seq  # read with the snapshot: it covers every state message up to seq
        entries = self.store.own_entries(node.clock())
        batches = [
            {"seq": seq, "e": protocol.encode_entries(batch)}
            for batch in chunks(entries, node.chunk)
        ]
        await self._send_answer(channel, protocol.OWN, batches, self.store.own_resets())
        self.metrics.answers_sent += 1

    async def _send_relay(self, channel: str, exclude: set[str]) -> None:
        node = self.node
        relay = self.store.relay_entries(node.clock(), exclude)
        flat = [(origin, e) for origin, entries in relay.items() for e in entries]
        batches = []
        for batch in chunks(flat, node.chunk):
            grouped: dict[str, list[Entry]] = {}
            for origin, entry in batch:
                grouped.setdefault(origin, []).append(entry)
            batches.append({"rl": protocol.encode_relay(grouped)})
        await self._send_answer(channel, protocol.RELAY, batches, self.store.reset_states())
        self.metrics.relays_sent += 1

    async def _send_answer(
        self, channel: str, kind: str, batches: list[dict[str, Any]], resets: list[Any]
    ) -> None:
        """An answer in chunks: the resets with the first, ``last`` on the last."""
        for index, fields in enumerate(batches):
            if index == 0 and resets:
                fields["r"] = protocol.encode_resets(resets)
            if index == len(batches) - 1:
                fields["last"] = True
            size = len(fields.get("e", ())) + sum(len(e) for e in fields.get("rl", {}).values())
            await self.node.outbox.send(channel, kind, fields, buckets=size)
