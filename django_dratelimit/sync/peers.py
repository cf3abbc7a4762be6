"""What one node knows of the others: who is live, and which of their messages it has.

Every state message a node broadcasts carries the next number of its own
sequence. A receiver that sees a number skipped knows it missed a message and
asks that node for its counts again (a *pull*); a heartbeat carries the last
number sent, so a loss at the end of a burst is found too. That replaces v1's
periodic full re-sends: nothing is re-sent unless something was missed.
"""

from __future__ import annotations

from dataclasses import dataclass

# A peer not heard from for this many heartbeat intervals is taken as gone.
LIVE_HEARTBEATS = 3.5
PULL_EVERY = 1.0  # at most one pull per peer a second
NEW, GAP, OLD = "new", "gap", "old"


@dataclass
class Peer:
    origin: str
    channel: str | None
    last_heard: float
    last_seq: int = 0
    pull_at: float | None = None  # when to ask it for its counts (a gap was seen)
    pulled_at: float = float("-inf")


class Peers:
    """The peer table of one node (only its sync loop touches it)."""

    def __init__(self, own: str) -> None:
        self.own = own
        self.table: dict[str, Peer] = {}

    def heard(self, origin: str, channel: str | None, now: float) -> Peer:
        peer = self.table.get(origin)
        if peer is None:
            peer = self.table[origin] = Peer(origin, channel, now)
        peer.last_heard = now
        if channel:
            peer.channel = channel
        return peer

    def sequence(self, peer: Peer, seq: int, now: float, catching_up: bool) -> str:
        """Note state message ``seq`` of ``peer``: "new", "gap" (some were missed) or "old".

        A gap schedules a pull, except while this node is catching up: the
        answers to its own sync request bring everything anyway.
        """
        if seq <= peer.last_seq:
            return OLD
        verdict = NEW
        if seq != peer.last_seq + 1 and not catching_up:
            verdict = GAP
            self.gap(peer, now)
        peer.last_seq = seq
        return verdict

    def caught_up_to(self, peer: Peer, seq: int) -> None:
        """A full answer from ``peer`` covers everything up to its message ``seq``."""
        peer.last_seq = max(peer.last_seq, seq)
        peer.pull_at = None

    def heartbeat(self, peer: Peer, seq: int, now: float) -> bool:
        """A heartbeat says ``peer`` sent up to ``seq``; True if that is news (a gap)."""
        return seq > peer.last_seq and self.gap(peer, now)

    def gap(self, peer: Peer, now: float) -> bool:
        if peer.pull_at is not None:
            return False  # already asked for
        peer.pull_at = max(now, peer.pulled_at + PULL_EVERY)
        return True

    def due_pulls(self, now: float) -> list[Peer]:
        due = [
            p
            for p in self.table.values()
            if p.pull_at is not None and p.pull_at <= now and p.channel
        ]
        for peer in due:
            peer.pull_at = None
            peer.pulled_at = now
        return due

    def next_pull(self) -> float | None:
        times = [p.pull_at for p in self.table.values() if p.pull_at is not None]
        return min(times) if times else None

    def left(self, origin: str) -> None:
        self.table.pop(origin, None)

    def live(self, now: float, heartbeat: float) -> list[Peer]:
        horizon = now - LIVE_HEARTBEATS * heartbeat
        return [p for p in self.table.values() if p.last_heard >= horizon]

    def forget_silent(self, now: float, heartbeat: float) -> None:
        """Drop peers not heard from for long (their counts stay in the store)."""
        horizon = now - 4 * LIVE_HEARTBEATS * heartbeat
        for origin in [o for o, p in self.table.items() if p.last_heard < horizon]:
            del self.table[origin]
