"""This process as a member of the sync group (protocol v2), on whatever loop runs it.

What it sends (``protocol`` has the message types):

- a ``state`` message, after a round of ``effective_interval`` seconds, with its
  own counts of the buckets it changed: never other origins' counts;
- a ``heartbeat`` every ``heartbeat_interval``, carrying its last sequence
  number so a peer finds a lost message even at the end of a burst;
- when it starts or recovers, a ``sync_request``: every peer answers with its
  own counts only, then one peer (the lowest id among those that answered) is
  asked for everything else: the counts of departed origins, and the resets.

Nothing wakes it while nothing changed but the heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from ..local.store import BucketKey, CounterStore, Entry, ResetState
from ..logutil import log_throttled
from . import protocol
from .handlers import Handlers
from .layers import close_layer, is_idle_timeout, is_undecodable
from .metrics import Metrics
from .peers import Peers

logger = logging.getLogger("django_dratelimit")

MAX_BACKOFF = 5.0
MAX_QUEUED_HITS = 10_000
MAX_REPLIES_IN_FLIGHT = 64
PEERS_PER_HEARTBEAT = 8  # past this many peers, heartbeats slow down in proportion
JOIN_MIN, JOIN_QUIET, JOIN_MAX = 0.15, 0.1, 1.0  # seconds to gather the answers to a join
RELAY_WAIT = 1.0
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
        self.seq = 0  # the number of the last state message broadcast
        self.effective_interval = interval
        self.joined = asyncio.Event()
        # Set once a join is complete (peers' answers and the relay are in): STARTUP_SYNC_WAIT.
        self.caught_up = threading.Event()
        self.catching_up = False
        self.join_answers: set[str] = set()
        self.last_join_answer = 0.0
        self.relay_received = asyncio.Event()
        self._relay_asked = False
        self.handlers = Handlers(self)
        self._wake = asyncio.Event()
        self._round_due = False
        self._degraded = False
        self._failures = 0
        self._hits: asyncio.Queue[BucketKey] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._replies: set[asyncio.Task[None]] = set()

    @property
    def group(self) -> str:
        return self.groups[0]

    # -- lifecycle ---------------------------------------------------------------

    async def run(self) -> None:
        """Join the group, catch up, then receive and send until cancelled."""
        self._loop = asyncio.get_running_loop()
        self.store.track_dirty = True
        self.store.on_dirty = self._wake_threadsafe
        if self.interval == 0:
            self._hits = asyncio.Queue()
            self.store.on_hit = self._queue_hit
        # The pub/sub layer subscribes here, so even this needs the broker.
        while not await self._attempt(self._open_channel):
            self.joined.set()
            await asyncio.sleep(self._backoff())
        joined = await self._attempt(self._join)
        self.joined.set()
        _raise_if_cancelling()
        tasks = [
            asyncio.ensure_future(self._receive_loop()),
            asyncio.ensure_future(self._send_loop()),
        ]
        if joined:
            tasks.append(asyncio.ensure_future(self._finish_join()))
        else:
            self._degraded = True
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in [*tasks, *self._replies]:
                task.cancel()
            await asyncio.gather(*tasks, *self._replies, return_exceptions=True)

    async def close(self) -> None:
        """Say goodbye, leave the group and release the layer's connections."""
        self.store.stop_tracking()
        if self.channel:
            # The broker may be down; the peers then notice the silence.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._broadcast(protocol.BYE, {}), 1)
            for group in self.groups:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.layer.group_discard(group, self.channel), 2)
        await close_layer(self.layer)

    def _wake_threadsafe(self) -> None:
        # Called from request threads (under the store's lock) by the round's first change.
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closes at shutdown
                loop.call_soon_threadsafe(self._start_round)

    def _start_round(self) -> None:
        self._round_due = True
        self._wake.set()

    def poke(self) -> None:
        """Wake the send loop for something other than a round (a pull is due)."""
        self._wake.set()

    def _queue_hit(self, bucket_key: BucketKey) -> None:
        # SYNC_INTERVAL = 0: wake the loop for every hit.
        loop, hits = self._loop, self._hits
        if loop is not None and hits is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_put_hit, hits, bucket_key)

    # -- joining ---------------------------------------------------------------------

    async def _open_channel(self) -> None:
        self.channel = await self.layer.new_channel()

    async def _join(self) -> None:
        for group in self.groups:
            await self.layer.group_add(group, self.channel)
        self.catching_up = True
        self.join_answers = set()
        self.last_join_answer = 0.0
        self.relay_received.clear()
        self._relay_asked = False
        await self._broadcast(protocol.SYNC_REQUEST, {"id": uuid.uuid4().hex})

    async def _finish_join(self) -> None:
        """Once the peers' answers are in, ask the lowest of them for the departed origins.

        Nobody answering may mean we are alone, or that the peers are slow: then
        ``caught_up`` stays unset (STARTUP_SYNC_WAIT waits its full time, as it
        should) until a late answer comes and finishes the join.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            now = loop.time()
            quiet = now - max(started, self.last_join_answer)
            if now - started >= JOIN_MAX or (now - started >= JOIN_MIN and quiet >= JOIN_QUIET):
                break
            await asyncio.sleep(0.02)
        self.catching_up = False
        answered = sorted(self.join_answers)
        if answered:
            await self._ask_for_relay(answered)

    async def _ask_for_relay(self, answered: list[str]) -> None:
        for origin in answered[:2]:  # the lowest, and one more if it does not answer
            peer = self.peers.table.get(origin)
            if peer is None or not peer.channel:
                continue
            fields = {"id": uuid.uuid4().hex, "exclude": answered}
            request = functools.partial(self._send, peer.channel, protocol.RELAY_REQUEST, fields)
            if await self._attempt(request):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.relay_received.wait(), RELAY_WAIT)
            if self.relay_received.is_set():
                break
        self.caught_up.set()

    def late_join_answer(self) -> None:
        """An answer to our join came after the window closed with none: finish it now."""
        if not self.catching_up and not self.caught_up.is_set() and not self._relay_asked:
            self._relay_asked = True
            self.reply(lambda: self._ask_for_relay(sorted(self.join_answers)))

    # -- sending -----------------------------------------------------------------------

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time() + self.heartbeat_interval()
        while True:
            if self._hits is not None:
                await self._send_next_hit()
            else:
                timeout = next_heartbeat - loop.time()
                pull_at = self.peers.next_pull()
                if pull_at is not None:
                    timeout = min(timeout, pull_at - self.clock())
                # A timer, not wait_for(): that makes a task on every round.
                alarm = loop.call_later(max(0.0, timeout), self._wake.set)
                await self._wake.wait()
                alarm.cancel()
                self._wake.clear()
                if self._round_due:
                    self._round_due = False
                    await asyncio.sleep(self._until_next_round())  # gather the round's hits
            if self._degraded:
                await asyncio.sleep(self._backoff())
                if not await self._attempt(self._recover):
                    continue
                self._degraded = False
            await self._attempt(self.flush)
            for peer in self.peers.due_pulls(self.clock()):
                fields = {"id": uuid.uuid4().hex}
                if peer.channel and await self._attempt(
                    functools.partial(self._send, peer.channel, protocol.PULL, fields)
                ):
                    self.metrics.pulls_sent += 1
            if loop.time() >= next_heartbeat:
                await self._attempt(self._heartbeat)
                next_heartbeat = loop.time() + self.heartbeat_interval()

    async def _send_next_hit(self) -> None:
        """SYNC_INTERVAL = 0: one message per hit, as the seed did (kept to compare)."""
        assert self._hits is not None
        with contextlib.suppress(TimeoutError):
            bucket_key = await asyncio.wait_for(self._hits.get(), timeout=0.5)
            entries = self.store.entries([bucket_key])
            if entries:
                await self._attempt(lambda: self._broadcast_state(entries, []))

    async def flush(self) -> None:
        """Broadcast this process's own counts of every bucket changed since the last round."""
        entries = self.store.take_dirty()
        resets = self.store.take_pending_resets()
        if not entries and not resets:
            return
        try:
            await self._broadcast_state(entries, resets)
        except BaseException:
            self.store.mark_dirty(e[:4] for e in entries)
            self.store.requeue_resets(resets)
            raise
        # Our part of the picture moved on: new budgets for what we sent.
        self.rebudget(e[:4] for e in entries)

    def rebudget(self, bucket_keys: Iterable[BucketKey]) -> None:
        if self.budgets and self.members:
            round_time = self.effective_interval + LATENCY_ALLOWANCE
            self.store.rebudget(
                bucket_keys, self.members, self.clock(), round_time, self.budget_headroom
            )

    async def _broadcast_state(
        self, entries: list[Entry], resets: list[ResetState], full: bool = False
    ) -> None:
        batches = list(protocol.chunks(entries, self.chunk))
        for index, batch in enumerate(batches):
            # Numbered before sending: a send that fails leaves a gap, and a peer
            # that did get it and one that did not both end up right.
            self.seq += 1
            fields: dict[str, Any] = {"seq": self.seq, "e": protocol.encode_entries(batch)}
            if index == 0 and resets:
                fields["r"] = protocol.encode_resets(resets)
            if full and index == len(batches) - 1:
                fields["full"] = True
            await self._broadcast(protocol.STATE, fields, buckets=len(batch))

    async def _heartbeat(self) -> None:
        # Re-join too: channels_redis forgets members after group_expiry, and a
        # Redis restart forgets every group.
        for group in self.groups:
            await self.layer.group_add(group, self.channel)
        await self._broadcast(protocol.HEARTBEAT, {"seq": self.seq})
        now = self.clock()
        self.peers.forget_silent(now, self.heartbeat_interval())
        self.effective_interval = self._stretched_interval(now)
        self._count_members(now)

    def _until_next_round(self) -> float:
        """Rounds end on multiples of the interval, by the wall clock, in every process.

        So the peers' messages of one round reach a process together, and it
        reads them in one wake-up instead of one each: the receive path of the
        Redis layers costs far more per wake-up than per message.
        """
        interval = self.effective_interval
        return interval - time.time() % interval if interval > 0 else 0.0

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
        if self._degraded:
            return
        self.members = [p.origin for p in self.peers.live(now, self.heartbeat_interval())]
        self.store.members = list(self.members)
        self.store.processes = len(self.members) + 1 if self.budgets else 1

    def fields(self, kind: str, extra: dict[str, Any]) -> dict[str, Any]:
        return {"node": self.store.origin, "ch": self.channel, "ts": self.clock(), **extra}

    async def _broadcast(self, kind: str, extra: dict[str, Any], buckets: int = 0) -> None:
        message = protocol.seal(kind, self.fields(kind, extra), self.keys)
        for group in self.groups:
            await self.layer.group_send(group, message)
        self._sent(buckets)

    async def _send(self, channel: str, kind: str, extra: dict[str, Any], buckets: int = 0) -> None:
        await self.layer.send(channel, protocol.seal(kind, self.fields(kind, extra), self.keys))
        self._sent(buckets)

    def _sent(self, buckets: int) -> None:
        self.metrics.messages_sent += 1
        self.metrics.buckets_sent += buckets
        self.metrics.last_send_ok = self.clock()

    def reply(self, coroutine: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Answer a request from the receive loop without making the loop wait for the send."""
        if len(self._replies) >= MAX_REPLIES_IN_FLIGHT:
            self.metrics.replies_dropped += 1
            return
        task = asyncio.ensure_future(self._answer(coroutine))
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    async def _answer(self, coroutine: Callable[[], Coroutine[Any, Any, None]]) -> None:
        # A failed answer (a joiner gone, a full channel) is counted, not a broker outage:
        # it must not send this node into recovery.
        try:
            await coroutine()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _raise_if_cancelling()
            self.metrics.replies_dropped += 1
            log_throttled(
                "sync-answer",
                logging.WARNING,
                "dratelimit: could not answer a peer (%s: %s)",
                type(exc).__name__,
                exc,
                every=60.0,
            )

    async def _recover(self) -> None:
        """Back after a broker error: re-join, catch up, and re-send all our own counts."""
        await self._join()
        await self._broadcast_state(self.store.own_entries(self.clock()), [], full=True)
        logger.info("dratelimit: sync is back after %d failed attempt(s)", self._failures)
        self._failures = 0
        self.reply(self._finish_join)

    # -- receiving -------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _raise_if_cancelling()
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
                await asyncio.sleep(self._backoff())
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

    async def _attempt(self, operation: Callable[[], Any]) -> bool:
        """Run a broker operation; on failure count it, log it (throttled), degrade."""
        try:
            await operation()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _raise_if_cancelling()
            self._broker_error("send", exc)
            return False
        return True

    def _broker_error(self, where: str, exc: BaseException) -> None:
        self.metrics.broker_errors += 1
        self.metrics.last_error = f"{where}: {type(exc).__name__}: {exc}"
        self._failures += 1
        if not self._degraded and self.budgets:
            self.store.cut_off()  # every bucket on its last share, not the rest
        self._degraded = True
        self._wake.set()  # the send loop recovers without waiting for a hit
        log_throttled(
            f"broker-{where}:{self.store.origin}",
            logging.WARNING,
            "dratelimit: channel layer %s failed (%s: %s); limiting with local counts and retrying",
            where,
            type(exc).__name__,
            exc,
            every=max(self.anti_entropy, 5.0),
        )

    def _backoff(self) -> float:
        return float(min(MAX_BACKOFF, 0.1 * 2 ** min(self._failures, 10)))


def _raise_if_cancelling() -> None:
    """redis-py can turn a cancellation into a connection error; don't swallow it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _put_hit(queue: asyncio.Queue[BucketKey], bucket_key: BucketKey) -> None:
    if queue.qsize() < MAX_QUEUED_HITS:
        queue.put_nowait(bucket_key)
