"""When a node sends: rounds on the wall clock's multiples of the interval, pulls, heartbeats.

Request threads wake the loop through the store's hooks (the first change of a
round, or every hit when SYNC_INTERVAL is 0); nothing wakes it while nothing
changed but the heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from typing import TYPE_CHECKING

from ..local.store import BucketKey
from . import protocol

if TYPE_CHECKING:
    from .node import SyncNode

MAX_QUEUED_HITS = 10_000


class Rounds:
    """The send side's schedule for one node."""

    def __init__(self, node: SyncNode) -> None:
        self.node = node
        self.wake = asyncio.Event()
        self.round_due = False
        self.hits: asyncio.Queue[BucketKey] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hook into the store, so that its changes wake the send loop on ``loop``."""
        store = self.node.store
        self.loop = loop
        store.track_dirty = True
        store.on_dirty = self.wake_threadsafe
        # What was queued before on_dirty was set woke nobody (the first request
        # starts this thread and counts at once): it is this round's, not the
        # heartbeat's. A change made after the line above wakes the loop itself.
        if store.has_changes():
            self.start_round()
        if self.node.interval == 0:
            self.hits = asyncio.Queue()
            store.on_hit = self.queue_hit

    def wake_threadsafe(self) -> None:
        # Called from request threads (under the store's lock) by the round's first change.
        loop = self.loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closes at shutdown
                loop.call_soon_threadsafe(self.start_round)

    def start_round(self) -> None:
        self.round_due = True
        self.wake.set()

    def poke(self) -> None:
        """Wake the send loop for something other than a round (a pull is due)."""
        self.wake.set()

    def queue_hit(self, bucket_key: BucketKey) -> None:
        # SYNC_INTERVAL = 0: wake the loop for every hit.
        loop, hits = self.loop, self.hits
        if loop is not None and hits is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(put_hit, hits, bucket_key)

    async def run(self) -> None:
        """The send loop: a round's state, the pulls that are due, the heartbeat."""
        node = self.node
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time() + node.heartbeat_interval()
        while True:
            if self.hits is not None:
                await self.send_next_hit()
            else:
                timeout = next_heartbeat - loop.time()
                pull_at = node.peers.next_pull()
                if pull_at is not None:
                    timeout = min(timeout, pull_at - node.clock())
                # A timer, not wait_for(): that makes a task on every round.
                alarm = loop.call_later(max(0.0, timeout), self.wake.set)
                await self.wake.wait()
                alarm.cancel()
                self.wake.clear()
                if self.round_due:
                    self.round_due = False
                    await asyncio.sleep(self.until_next_round())  # gather the round's hits
            if node.degraded:
                await asyncio.sleep(node.backoff())
                if not await node.attempt(node.recover):
                    continue
                node.degraded = False
            await node.attempt(node.flush)
            for peer in node.peers.due_pulls(node.clock()):
                fields = {"id": uuid.uuid4().hex}
                if peer.channel and await node.attempt(
                    functools.partial(node.outbox.send, peer.channel, protocol.PULL, fields)
                ):
                    node.metrics.pulls_sent += 1
            if loop.time() >= next_heartbeat:
                await node.attempt(node.send_heartbeat)
                next_heartbeat = loop.time() + node.heartbeat_interval()

    async def send_next_hit(self) -> None:
        """SYNC_INTERVAL = 0: one message per hit, as the seed did (kept to compare)."""
        assert self.hits is not None
        node = self.node
        with contextlib.suppress(TimeoutError):
            bucket_key = await asyncio.wait_for(self.hits.get(), timeout=0.5)
            entries = node.store.entries([bucket_key])
            if entries:
                await node.attempt(lambda: node.outbox.broadcast_state(entries, []))

    def until_next_round(self) -> float:
        """Rounds end on multiples of the interval, by the wall clock, in every process.

        So the peers' messages of one round reach a process together, and it
        reads them in one wake-up instead of one each: the receive path of the
        Redis layers costs far more per wake-up than per message.
        """
        interval = self.node.effective_interval
        return interval - time.time() % interval if interval > 0 else 0.0


def put_hit(queue: asyncio.Queue[BucketKey], bucket_key: BucketKey) -> None:
    if queue.qsize() < MAX_QUEUED_HITS:
        queue.put_nowait(bucket_key)
