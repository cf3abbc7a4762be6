"""New budgets once per wake-up of the sync thread, not once per message.

Rounds end on the same wall-clock boundaries in every process (``rounds``),
so the peers' messages of one round arrive together and the sync thread reads
them in one wake-up. Each message is a new picture, but for a bucket they all
changed only the last picture matters: the buckets are gathered here and
planned once, when the event loop next gets control, after the wake-up's
messages. At ``n`` processes a bucket counted everywhere was planned up to
``n - 1`` times a round (``bench/bench_replan.py`` gives the cost of each).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from ..local.store import BucketKey
from ..logutil import log_throttled


class Replans:
    """The buckets waiting for a new budget, and the one call that plans them."""

    def __init__(self, plan: Callable[[set[BucketKey]], None]) -> None:
        self._plan = plan
        self._pending: set[BucketKey] = set()
        self._scheduled = False

    def add(self, bucket_keys: Iterable[BucketKey]) -> None:
        """Plan these buckets soon: after what the loop is reading now, in one go."""
        self._pending.update(bucket_keys)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the sync thread's loop: plan now
            self.run()
            return
        self._scheduled = True
        loop.call_soon(self.run)

    def run(self) -> None:
        """Plan every pending bucket now."""
        self._scheduled = False
        pending, self._pending = self._pending, set()
        if not pending:
            return
        try:
            self._plan(pending)
        except Exception:  # a bug, not bad input (messages are checked before the merge)
            # Logged, not raised: from a loop callback it would only reach asyncio's
            # handler. The buckets keep their last budgets until the next picture.
            log_throttled("replan", logging.ERROR, "dratelimit: new budgets failed", exc_info=True)
