"""Joining the group and catching up, for a node that starts or recovers.

The node asks with a ``sync_request``: every peer answers with its own counts
only. Once the answers are in, one peer (the lowest id among those that
answered) is asked for everything else: the counts of departed origins, and
the resets. ``caught_up`` is set then (``STARTUP_SYNC_WAIT`` waits for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import uuid
from typing import TYPE_CHECKING

from . import protocol

if TYPE_CHECKING:
    from .node import SyncNode

JOIN_MIN, JOIN_QUIET, JOIN_MAX = 0.15, 0.1, 1.0  # seconds to gather the answers to a join
RELAY_WAIT = 1.0


class Join:
    """One node's join: whom it heard from, and whether it is caught up."""

    def __init__(self, node: SyncNode) -> None:
        self.node = node
        # Set once a join is complete (peers' answers and the relay are in).
        self.caught_up = threading.Event()
        self.catching_up = False
        self.answers: set[str] = set()
        self.last_answer = 0.0
        self.relay_received = asyncio.Event()
        self.relay_asked = False

    async def begin(self) -> None:
        """Enter the groups and ask every peer for its own counts."""
        node = self.node
        for group in node.groups:
            await node.layer.group_add(group, node.channel)
        self.catching_up = True
        self.answers = set()
        self.last_answer = 0.0
        self.relay_received.clear()
        self.relay_asked = False
        await node.outbox.broadcast(protocol.SYNC_REQUEST, {"id": uuid.uuid4().hex})

    def answered(self, origin: str) -> None:
        """A peer's answer to our join is complete."""
        self.answers.add(origin)
        self.last_answer = asyncio.get_running_loop().time()
        if not self.catching_up and not self.caught_up.is_set() and not self.relay_asked:
            # It came after the window closed with none: finish the join now.
            self.relay_asked = True
            self.node.outbox.reply(lambda: self.ask_for_relay(sorted(self.answers)))

    async def finish(self) -> None:
        """Once the peers' answers are in, ask the lowest of them for the departed origins.

        Nobody answering may mean we are alone, or that the peers are slow: then
        ``caught_up`` stays unset (STARTUP_SYNC_WAIT waits its full time, as it
        should) until a late answer comes and finishes the join.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            now = loop.time()
            quiet = now - max(started, self.last_answer)
            if now - started >= JOIN_MAX or (now - started >= JOIN_MIN and quiet >= JOIN_QUIET):
                break
            await asyncio.sleep(0.02)
        self.catching_up = False
        answered = sorted(self.answers)
        if answered:
            await self.ask_for_relay(answered)

    async def ask_for_relay(self, answered: list[str]) -> None:
        node = self.node
        for origin in answered[:2]:  # the lowest, and one more if it does not answer
            peer = node.peers.table.get(origin)
            if peer is None or not peer.channel:
                continue
            fields = {"id": uuid.uuid4().hex, "exclude": answered}
            request = functools.partial(
                node.outbox.send, peer.channel, protocol.RELAY_REQUEST, fields
            )
            if await node.attempt(request):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.relay_received.wait(), RELAY_WAIT)
            if self.relay_received.is_set():
                break
        self.caught_up.set()
