"""This process as a member of the sync group (protocol v2), on whatever loop runs it.

What it sends (``protocol`` has the message types):

- a ``state`` message, after a round of ``effective_interval`` seconds, with its
  own counts of the buckets it changed: never other origins' counts;
- a ``heartbeat`` every ``heartbeat_interval``, carrying its last sequence
  number so a peer finds a lost message even at the end of a burst;
- when it starts or recovers, a ``sync_request`` (see ``join``).

The node wires its parts together and keeps the broker's health: ``rounds``
decides when it sends, ``outbox`` seals and sends, ``join`` catches it up, and
``handlers`` reads what it hears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..local.store import BucketKey, CounterStore
from ..logutil import log_throttled
from . import protocol
from .handlers import Handlers
from .join import Join
from .layers import close_layer, is_idle_timeout, is_undecodable, raise_if_cancelling
from .metrics import Metrics
from .outbox import Outbox
from .peers import Peers
from .replans import Replans
from .rounds import Rounds

logger = logging.getLogger("django_dratelimit")

MAX_BACKOFF = 5.0
PEERS_PER_HEARTBEAT = 8  # past this many peers, heartbeats slow down in proportion
LATENCY_ALLOWANCE = 0.05  # broker latency and scheduling: part of a round, for the budgets


class SyncNode:
    """One member of the group; request threads never call into it."""

    def __init__(
        self,
        store: CounterStore,
        layer: Any,
        *,
        groups: Sequence[str] = ("dratelimit",),
        interval: float = 0.05,
        anti_entropy: float = 5.0,
        chunk: int = 500,
        clock: Callable[[], float] = time.time,
        layer_name: str = "",
        keys: Sequence[bytes],
        receive_budget: float = 35.0,
        budgets: bool = True,
        budget_headroom: float = 2.0,
    ) -> None:
        self.store = store
        self.layer = layer
        self.groups = list(groups)
        self.interval = interval
        self.anti_entropy = anti_entropy
        self.chunk = chunk
        self.clock = clock
        self.layer_name = layer_name or type(layer).__name__
        self.keys = list(keys)
        self.receive_budget = receive_budget
        self.budgets = budgets
        self.budget_headroom = budget_headroom
        self.members: list[str] = []  # the live peers' ids, for the budgets
        self.metrics = Metrics()
        self.peers = Peers(store.origin)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.channel = ""
        self.effective_interval = interval
        self.joined = asyncio.Event()
        self.join = Join(self)
        self.caught_up = self.join.caught_up  # STARTUP_SYNC_WAIT waits on it
        self.outbox = Outbox(self)
        self.handlers = Handlers(self)
        self.rounds = Rounds(self)
        self.replans = Replans(self._replan)
        self.degraded = False  # cut off from the broker: recovering
        self._failures = 0

    @property
    def group(self) -> str:
        return self.groups[0]

    # -- lifecycle ---------------------------------------------------------------

    async def run(self) -> None:
        """Join the group, catch up, then receive and send until cancelled."""
        self.rounds.start(asyncio.get_running_loop())
        # The pub/sub layer subscribes here, so even this needs the broker.
        while not await self.attempt(self._open_channel):
            self.joined.set()
            await asyncio.sleep(self.backoff())
        joined = await self.attempt(self.join.begin)
        self.joined.set()
        raise_if_cancelling()
        tasks = [
            asyncio.ensure_future(self._receive_loop()),
            asyncio.ensure_future(self.rounds.run()),
        ]
        if joined:
            tasks.append(asyncio.ensure_future(self.join.finish()))
        else:
            self.degraded = True
        try:
            await asyncio.gather(*tasks)
        finally:
            replies = self.outbox.replies
            for task in [*tasks, *replies]:
                task.cancel()
            await asyncio.gather(*tasks, *replies, return_exceptions=True)

    async def close(self) -> None:
        """Say goodbye, leave the group and release the layer's connections."""
        self.store.stop_tracking()
        if self.channel:
            # The broker may be down; the peers then notice the silence.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.outbox.broadcast(protocol.BYE, {}), 1)
            for group in self.groups:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.layer.group_discard(group, self.channel), 2)
        await close_layer(self.layer)

    async def _open_channel(self) -> None:
        self.channel = await self.layer.new_channel()

    # -- sending -----------------------------------------------------------------------

    async def flush(self) -> None:
        """Broadcast this process's own counts of every bucket changed since the last round."""
        entries = self.store.take_dirty()
        resets = self.store.take_pending_resets()
        if not entries and not resets:
            return
        try:
            await self.outbox.broadcast_state(entries, resets)
        except BaseException:
            self.store.mark_dirty(e[:4] for e in entries)
            self.store.requeue_resets(resets)
            raise
        # Our part of the picture moved on: new budgets for what we sent.
        self.rebudget(e[:4] for e in entries)

    def rebudget(self, bucket_keys: Iterable[BucketKey]) -> None:
        """New budgets for these buckets, once the messages read with this one are in."""
        if self.budgets and self.members:
            self.replans.add(bucket_keys)

    def _replan(self, bucket_keys: set[BucketKey]) -> None:
        self.metrics.replans += 1
        if self.members:
            round_time = self.effective_interval + LATENCY_ALLOWANCE
            self.store.rebudget(
                bucket_keys, self.members, self.clock(), round_time, self.budget_headroom
            )

    async def send_heartbeat(self) -> None:
        # Re-join too: channels_redis forgets members after group_expiry, and a
        # Redis restart forgets every group.
        for group in self.groups:
            await self.layer.group_add(group, self.channel)
        await self.outbox.broadcast(protocol.HEARTBEAT, {"seq": self.outbox.seq})
        now = self.clock()
        self.peers.forget_silent(now, self.heartbeat_interval())
        self.effective_interval = self._stretched_interval(now)
        self._count_members(now)

    def heartbeat_interval(self) -> float:
        return self.anti_entropy * max(1.0, len(self.peers.table) / PEERS_PER_HEARTBEAT)

    def _stretched_interval(self, now: float) -> float:
        """SYNC_INTERVAL, stretched so that peers x rounds per second stays in the budget."""
        if self.interval == 0:
            return 0.0
        live = len(self.peers.live(now, self.heartbeat_interval()))
        return max(self.interval, live / self.receive_budget)

    def peer_joined(self) -> None:
        now = self.clock()
        self.effective_interval = self._stretched_interval(now)
        self._count_members(now)

    def _count_members(self, now: float) -> None:
        """Who shares the budgets. Not while cut off: then the last shares hold."""
        if self.degraded:
            return
        self.members = [p.origin for p in self.peers.live(now, self.heartbeat_interval())]
        self.store.members = list(self.members)
        self.store.processes = len(self.members) + 1 if self.budgets else 1

    async def recover(self) -> None:
        """Back after a broker error: re-join, catch up, and re-send all our own counts."""
        await self.join.begin()
        await self.outbox.broadcast_state(self.store.own_entries(self.clock()), [], full=True)
        logger.info("dratelimit: sync is back after %d failed attempt(s)", self._failures)
        self._failures = 0
        self.outbox.reply(self.join.finish)

    # -- receiving -------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise_if_cancelling()
                if is_undecodable(exc):
                    # Somebody published bytes that are no message at all: a drop,
                    # not a broker outage (that would make every node re-join).
                    self.handlers.undecodable(exc)
                    continue
                if is_idle_timeout(exc):
                    self.metrics.receive_timeouts += 1
                    log_throttled(
                        "idle-timeout",
                        logging.WARNING,
                        "dratelimit: the channel layer's receive timed out while idle; set "
                        "socket_timeout above 5 s in the Redis host config (see README)",
                        every=3600.0,
                    )
                    continue
                self._broker_error("receive", exc)
                await asyncio.sleep(self.backoff())
                continue
            self.metrics.messages_received += 1
            self.handlers.dispatch(message)

    # -- what the management command sees ------------------------------------------------

    def node_info(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "node": self.store.origin,
            "host": self.host,
            "pid": self.pid,
            "layer": self.layer_name,
            "group": self.group,
            "protocol": protocol.VERSION,
            "buckets": len(self.store),
            "sync_interval": self.interval,
            "effective_interval": self.effective_interval,
            "heartbeat_interval": self.heartbeat_interval(),
            "peers": len(self.peers.live(now, self.heartbeat_interval())),
            "metrics": self.metrics.as_dict(),
        }

    # -- errors ------------------------------------------------------------------------

    async def attempt(self, operation: Callable[[], Any]) -> bool:
        """Run a broker operation; on failure count it, log it (throttled), degrade."""
        try:
            await operation()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise_if_cancelling()
            self._broker_error("send", exc)
            return False
        return True

    def _broker_error(self, where: str, exc: BaseException) -> None:
        self.metrics.broker_errors += 1
        self.metrics.last_error = f"{where}: {type(exc).__name__}: {exc}"
        self._failures += 1
        if not self.degraded and self.budgets:
            self.store.cut_off()  # every bucket on its last share, not the rest
        self.degraded = True
        self.rounds.poke()  # the send loop recovers without waiting for a hit
        log_throttled(
            f"broker-{where}:{self.store.origin}",
            logging.WARNING,
            "dratelimit: channel layer %s failed (%s: %s); limiting with local counts and retrying",
            where,
            type(exc).__name__,
            exc,
            every=max(self.anti_entropy, 5.0),
        )

    def backoff(self) -> float:
        return float(min(MAX_BACKOFF, 0.1 * 2 ** min(self._failures, 10)))
