"""How counts and durations read, the same in ``manage.py ratelimit`` and the admin.

Periods read as ``rates.format_period`` has them, like the rates themselves.
"""

from __future__ import annotations


def plural(count: int, word: str) -> str:
    """``1 node``, ``2 nodes``, ``3 replies``, ``4 processes``."""
    if count == 1:
        return f"1 {word}"
    if word.endswith("y"):
        return f"{count} {word[:-1]}ies"
    return f"{count} {word}{'es' if word.endswith('s') else 's'}"


def duration(seconds: float) -> str:
    """Compact and coarse: ``0.4s``, ``42s``, ``4m12s``, ``2h05m``, ``3d04h``."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"
