"""What the live admin page shows and does: ask the cluster, shape the answer, reset.

Imported by the admin views on first use, never at startup: it pulls in the
client (and with it the channel layers), which a site that never opens the
page does not need. Every failure becomes a message for the page, not an
exception: the page must say what is wrong, not answer 500.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..local.scopes import base_key
from ..rates import format_period
from . import client
from .render import duration, plural
from .strict_cache import reset_strict, strict_counters, strict_views

logger = logging.getLogger("django_dratelimit")


@dataclass(frozen=True)
class Row:
    """One bucket as the page shows it."""

    group: str
    key: str
    period: int
    window_start: int
    count: int  # the highest total a process holds: they converge on it
    low: int  # the lowest: how far the slowest process lags
    limit: int | None
    seconds_left: float
    processes: int  # how many processes hold some of it
    strict: bool
    budget: str | None  # in budget mode: each process's level, as "3 / 2 / 2"; else None

    @property
    def client(self) -> str:
        """The key without its limit's scope: what a reset of this client names."""
        return base_key(self.key)

    @property
    def spread(self) -> int:
        """How far the processes disagree on the count (0 once they have synced)."""
        return self.count - self.low

    @property
    def window(self) -> str:
        return format_period(self.period)

    @property
    def left(self) -> str:
        return duration(self.seconds_left)

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "key": self.key,
            "client": self.client,
            "period": self.period,
            "window": self.window,
            "window_start": self.window_start,
            "count": self.count,
            "low": self.low,
            "spread": self.spread,
            "limit": self.limit,
            "seconds_left": round(self.seconds_left, 3),
            "left": self.left,
            "processes": self.processes,
            "strict": self.strict,
            "budget": self.budget,
        }


@dataclass(frozen=True)
class Group:
    name: str
    rows: list[Row]  # the hottest, at most ``per_group``
    buckets: int  # all of the group's live buckets in the answers

    @property
    def hidden(self) -> int:
        return self.buckets - len(self.rows)


@dataclass
class Snapshot:
    """One look at the cluster; ``error`` says why there is nothing to show."""

    groups: list[Group] = field(default_factory=list)
    processes: int = 0
    truncated: bool = False
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    taken_at: float = 0.0

    @property
    def taken_at_utc(self) -> str:
        return datetime.datetime.fromtimestamp(self.taken_at, datetime.UTC).strftime("%H:%M:%S")

    def as_dict(self) -> dict[str, Any]:
        return {
            "processes": self.processes,
            "truncated": self.truncated,
            "error": self.error,
            "notes": self.notes,
            "taken_at": self.taken_at,
            "groups": [
                {
                    "group": g.name,
                    "buckets": g.buckets,
                    "hidden": g.hidden,
                    "rows": [row.as_dict() for row in g.rows],
                }
                for g in self.groups
            ],
        }


def row_of(view: client.BucketView, now: float) -> Row:
    return Row(
        group=view.group,
        key=view.key,
        period=view.period,
        window_start=view.window_start,
        count=view.total,
        low=view.low,
        limit=view.limit,
        seconds_left=max(0.0, view.seconds_left(now)),
        processes=len(view.per_node),
        strict=view.strict,
        # Issue 11 adds it to BucketView; until then every row shows "—".
        budget=" / ".join(str(n) for _, n in sorted(view.budget.items())) if view.budget else None,
    )


def snapshot(
    group: str | None, key: str | None, timeout: float, limit: int, per_group: int
) -> Snapshot:
    """The hottest buckets of each group, as every process that answers sees them."""
    result = Snapshot()
    strict, note = strict_counters(group, key)
    if note:
        result.notes.append(note)
    views: list[client.BucketView] = []
    try:
        gathered = client.inspect(group=group, key=key, limit=limit, timeout=timeout)
    except client.ClusterError as exc:
        result.error = _explain(exc)
    except Exception as exc:  # a bug or a broken layer: logged, shown, never a 500
        logger.exception("dratelimit: the live page could not ask the cluster")
        result.error = f"Unexpected error while asking the cluster: {type(exc).__name__}: {exc}"
    else:
        result.processes = len(gathered.answers)
        result.truncated = gathered.truncated
        if gathered.ignored:
            ignored = plural(gathered.ignored, "malformed or foreign reply")
            result.notes.append(f"{ignored} ignored.")
        views = client.merge_buckets(gathered.answers)
    now = time.time()
    views += strict_views(strict, now)
    if result.error and strict:
        result.notes.append("Showing the strict counters only.")
    by_group: dict[str, list[Row]] = {}
    for view in sorted(views, key=lambda v: (-v.total, v.group, v.key)):
        by_group.setdefault(view.group, []).append(row_of(view, now))
    # The hottest group first: the one that holds the hottest bucket.
    result.groups = [
        Group(name, rows[:per_group], len(rows))
        for name, rows in sorted(by_group.items(), key=lambda item: (-item[1][0].count, item[0]))
    ]
    result.taken_at = now
    return result


def _explain(exc: client.ClusterError) -> str:
    if isinstance(exc, client.LocalOnly):
        return f"Counters cannot be seen from here. {exc}"
    if isinstance(exc, client.NoAnswer):
        return f"No process answered. {exc}"
    return f"Cannot ask the cluster: {exc}"


@dataclass(frozen=True)
class ResetOutcome:
    ok: bool
    message: str


def reset(group: str, key: str | None, timeout: float, user: str) -> ResetOutcome:
    """Reset a key, or a whole group, on every process (and in the strict cache)."""
    what = f"group {group!r}" if key is None else f"key {key!r} in group {group!r}"
    strict_removed, strict_note = reset_strict(group, key)
    try:
        result = client.reset_cluster(group, key, timeout)
    except Exception as exc:
        if isinstance(exc, client.ClusterError | ValueError):  # ValueError: a malformed name
            logger.warning("dratelimit: %s could not reset %s from the admin: %s", user, what, exc)
            text = _explain(exc) if isinstance(exc, client.ClusterError) else str(exc)
        else:  # a bug: logged with its traceback, shown, never a 500
            logger.exception("dratelimit: %s could not reset %s from the admin", user, what)
            text = f"Unexpected error: {type(exc).__name__}: {exc}"
        if strict_removed:
            text += f" {plural(strict_removed, 'strict counter')} deleted."
        return ResetOutcome(False, f"Reset of {what} failed. {text}")
    logger.info(
        "dratelimit: %s reset %s from the admin: %d processes confirmed, %d buckets removed",
        user,
        what,
        result.confirmed,
        result.removed,
    )
    confirmed = plural(result.confirmed, "process")
    message = f"Reset {what}: {confirmed} confirmed, {plural(result.removed, 'bucket')} removed."
    if strict_removed:
        message += f" {plural(strict_removed, 'strict counter')} deleted."
    elif strict_note:
        message += f" {strict_note}."
    return ResetOutcome(True, message)
