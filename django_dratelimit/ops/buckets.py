"""Merge every node's answer into one row per bucket, as the cluster sees it."""

from __future__ import annotations

import time
from collections.abc import Iterable

from ..local.store import BucketState
from .answers import Answer, BucketView


def known_limit(answers: Iterable[Answer], group: str, period: int) -> int | None:
    for answer in answers:
        for rate in answer.rates.get(group, ()):
            if rate.period == period:
                return rate.limit
    return None


def _budget(answers: list[Answer], bucket: tuple[str, str, int, int]) -> dict[str, int] | None:
    """The levels of a bucket in budget mode, max-merged over the nodes that say so."""
    levels: dict[str, int] = {}
    for answer in answers:
        for origin, level in answer.plans.get(bucket, {}).items():
            levels[origin] = max(levels.get(origin, 0), level)
    return levels or None


def merge_buckets(
    answers: list[Answer], now: float | None = None, current_only: bool = True
) -> list[BucketView]:
    """One row per bucket, hottest first; ``current_only`` skips windows that ended."""
    now = time.time() if now is None else now
    seen: dict[tuple[str, str, int, int], dict[str, BucketState]] = {}
    for answer in answers:
        for state in answer.buckets:
            if current_only and state.window_start + state.period <= now:
                continue  # kept by the nodes for sliding windows; no longer counting
            bucket_key = (state.group, state.key, state.period, state.window_start)
            seen.setdefault(bucket_key, {})[answer.info.node] = state
    complete = [a.info.node for a in answers if not a.truncated]
    views = []
    for (group, key, period, start), by_node in seen.items():
        per_node = {node: state.total for node, state in by_node.items()}
        # A node that answered in full without this bucket holds zero of it.
        totals = [*per_node.values(), *(0 for node in complete if node not in per_node)]
        counts: dict[str, int] = {}
        for state in by_node.values():
            for origin, count in state.counts.items():
                counts[origin] = max(counts.get(origin, 0), count)
        views.append(
            BucketView(
                group,
                key,
                period,
                start,
                max(totals),
                min(totals),
                per_node,
                counts,
                known_limit(answers, group, period),
                budget=_budget(answers, (group, key, period, start)),
            )
        )
    views.sort(key=lambda v: (-v.total, v.group, v.key, v.period, v.window_start))
    return views
