"""Logging that cannot flood: one line per reason per interval."""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger("django_dratelimit")

_last: dict[str, float] = {}
_lock = threading.Lock()


def log_throttled(
    reason: str, level: int, msg: str, *args: object, every: float = 30.0, exc_info: bool = False
) -> bool:
    """Log ``msg`` unless the same ``reason`` was logged less than ``every`` seconds ago."""
    now = time.monotonic()
    with _lock:
        if now - _last.get(reason, float("-inf")) < every:
            return False
        _last[reason] = now
    logger.log(level, msg, *args, exc_info=exc_info)
    return True


def forget(reason: str | None = None) -> None:
    """Forget when ``reason`` (every reason, if None) was last logged: it logs at once next."""
    with _lock:
        if reason is None:
            _last.clear()
        else:
            _last.pop(reason, None)
