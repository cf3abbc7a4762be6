"""What many test files need: waiting on a condition, windows with time left, server settings.

One copy of each, so a change to how windows are staggered or how the demo
servers read their settings is made once.
"""

from __future__ import annotations

import os
import time
from typing import Any

from django_dratelimit.local.scopes import window_offset

SYNC_INTERVAL = 0.05  # the demo servers' SYNC_INTERVAL unless a test says otherwise
ANTI_ENTROPY = 1.0  # and their ANTI_ENTROPY_INTERVAL


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something true; TimeoutError after ``timeout`` s.

    An exception from ``condition`` counts as "not yet" (a server still starting).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except Exception:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def seconds_left(period: int, offset: float = 0.0, now: float | None = None) -> float:
    """What is left of the current window of ``period`` s, shifted by ``offset``."""
    now = time.time() if now is None else now
    return period - (now - offset) % period


def wait_for_window(period: int, needed: float, offset: float = 0.0) -> float:
    """Wait for the next window if fewer than ``needed`` s of this one are left.

    The sleep waits for a clock boundary, not for another thread: a test's hits
    must all count in one window. Returns the seconds waited.
    """
    left = seconds_left(period, offset)
    if left >= needed:
        return 0.0
    time.sleep(left + 0.05)
    return left + 0.05


def fresh_window(group: str, key: str, period: int, needed: float) -> float:
    """``wait_for_window`` for a key that ``@ratelimit`` counts: its windows are staggered."""
    return wait_for_window(period, needed, window_offset(group, key, period))


def fresh_key(group: str, period: int, needed: float, prefix: str = "k") -> str:
    """A new key whose current window has at least ``needed`` seconds left (no waiting)."""
    for n in range(10_000):
        key = f"{prefix}-{os.getpid()}-{time.time_ns()}-{n}"
        if seconds_left(period, window_offset(group, key, period)) >= needed:
            return key
    raise AssertionError("no key with a fresh window")  # pragma: no cover


def server_env(
    redis_url: str,
    layer: str = "pubsub",
    rate: str = "1000000/h",
    **extra: str,
) -> dict[str, str]:
    """The demo servers' environment (see testproject/settings.py).

    ``extra`` adds variables or overrides these. Budgets off: the tests that use
    this check that every hit reaches every process, and the bound without
    budgets; tests/test_budgets*.py check budgets.
    """
    return {
        "REDIS_URL": redis_url,
        "DEMO_CLUSTER_RATE": rate,
        "DRATELIMIT_LAYER": layer,
        "DRATELIMIT_SYNC_INTERVAL": str(SYNC_INTERVAL),
        "DRATELIMIT_ANTI_ENTROPY": str(ANTI_ENTROPY),
        "DRATELIMIT_BUDGETS": "0",
        **extra,
    }
