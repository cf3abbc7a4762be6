"""Strict counters for the operator: they live in the strict cache, read here directly.

No node holds them, so the command and the admin page read (and reset) them
themselves, and show them as rows beside the nodes' merged buckets.
"""

from __future__ import annotations

from ..local.store import BucketKey
from ..rates import is_dynamic, parse_rate
from ..rules import get_rules
from ..strict.counter import (
    StrictCounter,
    StrictUnavailable,
    StrictUnsupported,
    get_strict_counter,
)
from .answers import BucketView


def _strict_counter() -> tuple[StrictCounter | None, str | None]:
    """The strict counter, when the strict cache is one whose keys can be listed."""
    try:
        counter = get_strict_counter()
        if not counter.can_enumerate:
            return None, None  # LocMem and friends: strict mode is not in use there
    except Exception as exc:  # no such alias, or its backend does not import
        return None, f"strict cache not read: {exc}"
    return counter, None


def strict_counters(
    group: str | None, key: str | None
) -> tuple[list[tuple[BucketKey, int]], str | None]:
    counter, note = _strict_counter()
    if counter is None:
        return [], note
    try:
        return counter.live(group, key), None
    except (StrictUnavailable, StrictUnsupported) as exc:
        return [], f"strict cache not read: {exc}"


def strict_views(counters: list[tuple[BucketKey, int]], now: float) -> list[BucketView]:
    """Strict counters as rows of the inspect table (exact: no per-node disagreement)."""
    limits = {
        (rule.name, rate.period): rate.limit
        for rule in get_rules()
        if not is_dynamic(rule.rate)
        for rate in (parse_rate(rule.rate) or ())
    }
    views = []
    for (group, key, period, start), total in counters:
        if start + period <= now:
            continue  # kept one more window for sliding windows; not live
        views.append(
            BucketView(
                group=group,
                key=key,
                period=period,
                window_start=start,
                total=total,
                low=total,
                per_node={},
                counts={},
                limit=limits.get((group, period)),
                strict=True,
            )
        )
    return views


def reset_strict(group: str, key: str | None) -> tuple[int, str | None]:
    counter, note = _strict_counter()
    if counter is None:
        return 0, note
    try:
        return counter.reset(group, key), None
    except (StrictUnavailable, StrictUnsupported) as exc:
        return 0, f"strict counters not reset: {exc}"
