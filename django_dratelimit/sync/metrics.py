"""Per-process sync counters, shown by ``manage.py ratelimit nodes``."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

# Why a received message was not applied; each has a ``dropped_<reason>`` counter.
DROP_REASONS = (
    "malformed",
    "unsigned",
    "bad_signature",
    "stale",
    "replayed",
    "unknown_type",
    "handler_error",
)


@dataclasses.dataclass
class Metrics:
    started_at: float = dataclasses.field(default_factory=time.time)
    messages_sent: int = 0
    buckets_sent: int = 0
    messages_received: int = 0
    buckets_received: int = 0
    merges: int = 0
    replans: int = 0  # passes for new budgets: one per wake-up that changed buckets
    resets_applied: int = 0
    own_messages: int = 0
    duplicates: int = (
        0  # state messages already applied (a replay, or two groups during a rotation)
    )
    gaps: int = 0  # missed state messages found by their sequence numbers
    pulls_sent: int = 0
    answers_sent: int = 0  # full own-count answers, to joiners and pulls
    relays_sent: int = 0  # departed origins' counts, to joiners
    replies_dropped: int = 0  # answers not sent because too many were in flight
    dropped_malformed: int = 0
    dropped_unsigned: int = 0
    dropped_bad_signature: int = 0
    dropped_stale: int = 0
    dropped_replayed: int = 0
    dropped_unknown_type: int = 0
    dropped_handler_error: int = 0
    broker_errors: int = 0
    receive_timeouts: int = 0
    last_send_ok: float | None = None
    last_error: str = ""

    def drop(self, reason: str) -> None:
        name = f"dropped_{reason}"
        setattr(self, name, getattr(self, name) + 1)

    @property
    def dropped(self) -> int:
        return sum(getattr(self, f"dropped_{reason}") for reason in DROP_REASONS)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
