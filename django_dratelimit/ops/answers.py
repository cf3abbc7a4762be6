"""What the cluster said: the errors of asking it, and the answers as dataclasses.

Built by ``ops.replies`` from validated replies, merged by ``ops.buckets``,
shown by the command and the admin page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..local.store import BucketState
from ..rates import Rate


class ClusterError(Exception):
    """The cluster cannot be asked: configuration, broker, or nobody answered."""


class LocalOnly(ClusterError):
    """The configured layer cannot carry messages between processes."""


class NoAnswer(ClusterError):
    """The request went out, but no process answered within the timeout."""


@dataclass(frozen=True)
class NodeInfo:
    """One process as it describes itself."""

    node: str
    host: str
    pid: int
    layer: str
    group: str
    buckets: int
    sync_interval: float
    # Sync v2: SYNC_INTERVAL stretched for the number of peers, and who they are.
    effective_interval: float | None
    peers: int | None
    started_at: float
    messages_sent: int
    messages_received: int
    dropped: int
    broker_errors: int
    last_send_ok: float | None
    last_error: str
    metrics: dict[str, Any]
    # Our clock when the answer arrived: uptime and "last send" are as of then,
    # not as of the end of the wait.
    received_at: float

    @property
    def uptime(self) -> float:
        return max(0.0, self.received_at - self.started_at)

    @property
    def last_send_age(self) -> float | None:
        if self.last_send_ok is None:
            return None
        return max(0.0, self.received_at - self.last_send_ok)

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "host": self.host,
            "pid": self.pid,
            "uptime": round(self.uptime, 3),
            "layer": self.layer,
            "group": self.group,
            "buckets": self.buckets,
            "sync_interval": self.sync_interval,
            "effective_interval": self.effective_interval,
            "peers": self.peers,
            "messages_sent": self.messages_sent,
            "messages_received": self.messages_received,
            "dropped": self.dropped,
            "broker_errors": self.broker_errors,
            "last_send_ok": self.last_send_ok,
            "last_error": self.last_error,
            "metrics": self.metrics,
        }


@dataclass(frozen=True)
class Answer:
    """One node's validated reply."""

    info: NodeInfo
    buckets: tuple[BucketState, ...] = ()
    rates: dict[str, tuple[Rate, ...]] = field(default_factory=dict)
    truncated: bool = False
    removed: int = 0
    generation: int | None = None
    # Buckets in budget mode on this node: the level each process may count up to.
    plans: dict[tuple[str, str, int, int], dict[str, int]] = field(default_factory=dict)


@dataclass
class Gathered:
    """Every answer to one request, one per node."""

    answers: list[Answer]
    alias: str
    group: str
    timeout: float
    groups: list[str] = field(default_factory=list)
    ignored: int = 0  # malformed replies, or replies to another request or group
    duplicates: int = 0

    @property
    def truncated(self) -> bool:
        return any(a.truncated for a in self.answers)


@dataclass(frozen=True)
class ResetResult:
    group: str
    key: str | None
    generation: int
    gathered: Gathered

    @property
    def confirmed(self) -> int:
        return len(self.gathered.answers)

    @property
    def removed(self) -> int:
        return sum(a.removed for a in self.gathered.answers)


@dataclass(frozen=True)
class BucketView:
    """One bucket as the cluster sees it, merged over every node's answer."""

    group: str
    key: str
    period: int
    window_start: int
    total: int  # the highest total any node holds (they converge on it)
    low: int  # the lowest: how far the slowest node lags
    per_node: dict[str, int]
    counts: dict[str, int]  # per origin, max-merged over the nodes
    limit: int | None
    strict: bool = False  # read from the strict cache, not from the nodes
    # In budget mode: per process, the level it may count up to (as its nodes say).
    budget: dict[str, int] | None = None

    @property
    def window_end(self) -> int:
        return self.window_start + self.period

    def seconds_left(self, now: float) -> float:
        return self.window_end - now

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "group": self.group,
            "key": self.key,
            "period": self.period,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "seconds_left": round(self.seconds_left(now), 3),
            "total": self.total,
            "min": self.low,
            "max": self.total,
            "limit": self.limit,
            "nodes": self.per_node,
            "counts": self.counts,
            "strict": self.strict,
            "budget": self.budget,
        }
