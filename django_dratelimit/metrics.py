"""Per-process sync counters, shown by ``manage.py ratelimit nodes``."""

from __future__ import annotations

import dataclasses
import time
from typing import Any


@dataclasses.dataclass
class Metrics:
    started_at: float = dataclasses.field(default_factory=time.time)
    messages_sent: int = 0
    buckets_sent: int = 0
    messages_received: int = 0
    buckets_received: int = 0
    merges: int = 0
    resets_applied: int = 0
    own_messages: int = 0
    malformed: int = 0
    unknown_types: int = 0
    handler_errors: int = 0
    broker_errors: int = 0
    receive_timeouts: int = 0
    last_send_ok: float | None = None
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
