"""What ``manage.py ratelimit`` reports, as data: the inspect result and its summaries.

The command only parses arguments and prints; gathering the nodes' answers
and the strict counters into one list of buckets happens here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..conf import conf
from ..rates import format_period
from . import client
from .answers import BucketView, ClusterError, Gathered, NodeInfo
from .render import clock, duration, plural, short_layer
from .strict_cache import strict_counters, strict_views

BUCKET_HEADERS = ["GROUP", "KEY", "WINDOW (UTC)", "LEFT", "COUNT", "LIMIT", "NODES MIN..MAX"]
NODE_HEADERS = ["NODE", "HOST:PID", "UPTIME", "BUCKETS", "SENT", "RECV", "DROP"]
NODE_HEADERS += ["LAST SEND", "ERRORS"]


@dataclass(frozen=True)
class InspectReport:
    """The hottest buckets, from the nodes and from the strict cache."""

    gathered: Gathered
    views: list[BucketView]  # hottest first, at most the limit asked for
    truncated: bool  # a node held back buckets, or there were more than the limit
    strict_note: str | None
    now: float


def inspect_cluster(
    group: str | None, key: str | None, limit: int, timeout: float
) -> InspectReport:
    """Ask every node and read the strict cache; strict counters alone if nobody answers."""
    strict, strict_note = strict_counters(group, key)
    try:
        gathered = client.inspect(group, key, limit, timeout)
    except ClusterError as exc:
        if not strict:
            raise
        gathered = Gathered(
            answers=[], alias=str(conf.CHANNEL_LAYER), group=conf.GROUP, timeout=timeout
        )
        strict_note = f"{exc}; showing the strict counters only"
    now = time.time()
    views = client.merge_buckets(gathered.answers, now) + strict_views(strict, now)
    views.sort(key=lambda view: -view.total)
    truncated = gathered.truncated or len(views) > limit
    return InspectReport(gathered, views[:limit], truncated, strict_note, now)


def summary(gathered: Gathered, now: float) -> dict[str, Any]:
    """The fields every ``--json`` answer starts with."""
    return {
        "sync_group": gathered.group,
        "layer_alias": gathered.alias,
        "answered": len(gathered.answers),
        "ignored_replies": gathered.ignored,
        "timeout": gathered.timeout,
        "now": now,
    }


def sorted_infos(gathered: Gathered) -> list[NodeInfo]:
    return sorted((a.info for a in gathered.answers), key=lambda i: (i.host, i.pid, i.node))


def nodes_json(gathered: Gathered) -> list[dict[str, Any]]:
    return [info.as_dict() for info in sorted_infos(gathered)]


def footer(gathered: Gathered) -> str:
    text = f"{plural(len(gathered.answers), 'node')} answered within {gathered.timeout:g} s"
    text += f" (sync group {gathered.group!r}"
    if gathered.ignored:
        text += f"; {plural(gathered.ignored, 'reply')} ignored"
    return text + ")."


def effective_intervals(infos: list[NodeInfo]) -> str | None:
    """The sync interval the nodes stretched for their peers, as one figure or a range."""
    intervals = sorted(i.effective_interval for i in infos if i.effective_interval is not None)
    if not intervals:
        return None
    low, high = f"{intervals[0]:g} s", f"{intervals[-1]:g} s"
    return low if low == high else f"{low} to {high}"


def bucket_row(view: BucketView, now: float) -> list[str]:
    """One row of the inspect table; a ``*`` marks a bucket in budget mode."""
    return [
        view.group,
        view.key,
        f"{clock(view.window_start, view.period)} {format_period(view.period)}",
        duration(view.seconds_left(now)),
        str(view.total) + ("*" if view.budget else ""),
        "?" if view.limit is None else str(view.limit),
        "strict cache" if view.strict else f"{view.low}..{view.total}",
    ]


def node_row(info: NodeInfo, with_layer: bool) -> list[str]:
    """One row of the nodes table."""
    age = info.last_send_age
    row = [
        info.node[:8],
        f"{info.host}:{info.pid}",
        duration(info.uptime),
        str(info.buckets),
        str(info.messages_sent),
        str(info.messages_received),
        str(info.dropped),
        "never" if age is None else f"{duration(age)} ago",
        str(info.broker_errors),
    ]
    if with_layer:
        row.append(short_layer(info.layer))
    return row
