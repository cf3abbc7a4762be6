"""One bucket's counts, and the shapes they travel in between processes.

A bucket is a G-counter: per origin process, how many hits that origin counted
in one window of one key. Memory matters (``MAX_KEYS`` of them per process, a
key flood fills them all; ``bench/bench_memory.py``): a bucket is one slotted
object, and keeps no per-bucket dict until a peer's count arrives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .budget_store import Plan

BucketKey = tuple[str, str, int, int]  # group, key, period, window start
# Origins that start with "~" are registers (max-merged like any origin, but not
# hits and not part of the total): the token bucket keeps its running maximum there.
REGISTER = "~max"


class BucketState(NamedTuple):
    """What travels between processes for one bucket: absolute counts per origin."""

    group: str
    key: str
    period: int
    window_start: int
    generation: int
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(c for origin, c in self.counts.items() if not origin.startswith("~"))


class Entry(NamedTuple):
    """One origin's absolute count in one bucket: what sync protocol v2 sends."""

    group: str
    key: str
    period: int
    window_start: int
    generation: int
    amount: int  # this origin's count: hits (or, for the token buckets, thousandths of tokens)
    register: int  # the token buckets' max-merged register (0 for other algorithms)


def expiry(bucket_key: BucketKey) -> int:
    """When a bucket ends: its window, kept one extra period for the sliding windows."""
    _group, _key, period, start = bucket_key
    return start + 2 * period


class Bucket:
    __slots__ = (
        "dirty",
        "generation",
        "key",
        "limit",
        "local",
        "others",
        "peer",
        "peer_count",
        "plan",
        "total",
    )

    def __init__(self, key: BucketKey, generation: int) -> None:
        # Its own key: eviction order holds buckets, and a key deleted and created
        # again is another bucket (see lifetimes).
        self.key = key
        self.local = 0
        # Other origins' counts: the first one in two slots (16 bytes), a dict (184
        # bytes with one key, a third of a bucket) only once a second origin or a
        # register arrives. A key flood's buckets in the other processes, created by
        # one peer's message, have one origin each. Either ``peer`` or ``others``.
        self.peer: str | None = None
        self.peer_count = 0
        self.others: dict[str, int] | None = None  # other origins' counts and the registers
        self.total = 0
        self.generation = generation
        # Already queued for the next sync round: later hits need not queue it again.
        self.dirty = False
        self.limit = 0  # the limit it is checked against (0: not known, no budgets)
        self.plan: Plan | None = None  # its budget, while in budget mode (see budgets)

    @property
    def remote(self) -> dict[str, int]:
        """Every other origin's count and the registers, as a dict to read or write into."""
        others = self.others
        if others is None:
            others = self.others = {}
            if self.peer is not None:
                others[self.peer] = self.peer_count
                self.peer, self.peer_count = None, 0
        return others

    def count_of(self, origin: str) -> int:
        """Another origin's count (or a register's value)."""
        if origin == self.peer:
            return self.peer_count
        others = self.others
        return others.get(origin, 0) if others else 0

    def set_count(self, origin: str, count: int) -> None:
        """Another origin's count (registers go into ``remote``)."""
        if self.others is None and (self.peer is None or self.peer == origin):
            self.peer, self.peer_count = origin, count
        else:
            self.remote[origin] = count

    def counts(self) -> dict[str, int]:
        """A copy of the other origins' counts and the registers."""
        if self.peer is not None:
            return {self.peer: self.peer_count}
        return dict(self.others) if self.others else {}

    @property
    def register(self) -> int:
        others = self.others
        return others.get(REGISTER, 0) if others else 0

    @property
    def expires_at(self) -> int:
        return expiry(self.key)
