"""``manage.py ratelimit``: see, explain and reset live counters across the cluster."""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import time
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...conf import conf
from ...local.algorithms import window_start
from ...local.store import BucketKey
from ...ops import client
from ...ops.render import duration as _duration
from ...ops.render import plural as _plural
from ...rates import (
    InvalidRate,
    Rate,
    describe,
    format_period,
    is_dynamic,
    load_rate_callable,
    parse_rate,
    parse_rate_string,
)
from ...rules import get_rules
from ...strict.counter import (
    StrictCounter,
    StrictUnavailable,
    StrictUnsupported,
    get_strict_counter,
)
from ...sync.answers import MAX_INSPECT_BUCKETS
from ...sync.protocol import MalformedMessage

WIDTH = 80
GAP = "  "
ELLIPSIS = "…"
DEFAULT_LIMIT = 50


class Command(BaseCommand):
    help = (
        "See, explain and reset the live rate-limit counters of every running process "
        "(asked over the channel layer)."
    )
    # Works on a project whose other settings have problems: it is a diagnostic tool.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

        inspect = actions.add_parser(
            "inspect",
            help="live counters, one row per bucket, hottest first",
            description="Show the live counters of every running process, merged by bucket.",
        )
        inspect.add_argument("--group", help="only this group (exact name)")
        inspect.add_argument("--key", help="only keys that contain this text")
        inspect.add_argument(
            "--limit",
            type=int,
            default=DEFAULT_LIMIT,
            help=f"at most this many buckets (default {DEFAULT_LIMIT})",
        )
        self._common(inspect)

        nodes = actions.add_parser(
            "nodes",
            help="every process that answered, with its sync statistics",
            description="List every running process in the sync group.",
        )
        self._common(nodes)

        reset = actions.add_parser(
            "reset",
            help="reset a key, or a whole group, on every process",
            description="Reset a key (or the whole group without KEY) on every process.",
        )
        reset.add_argument("group", metavar="GROUP")
        reset.add_argument("key", metavar="KEY", nargs="?")
        self._common(reset)

        check = actions.add_parser(
            "check",
            help="explain a rate string such as '5/m' or '10/s;500/h'",
            description="Parse a rate and print what it means; needs no running process.",
        )
        check.add_argument("rate", metavar="RATE")

    def _common(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument(
            "--timeout",
            type=float,
            default=client.DEFAULT_TIMEOUT,
            help=f"seconds to wait for answers (default {client.DEFAULT_TIMEOUT:g})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        action: str = options["action"]
        handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "inspect": self.handle_inspect,
            "nodes": self.handle_nodes,
            "reset": self.handle_reset,
            "check": self.handle_check,
        }
        try:
            handlers[action](options)
        except client.ClusterError as exc:
            raise CommandError(str(exc)) from exc

    # -- inspect ---------------------------------------------------------------------

    def handle_inspect(self, options: dict[str, Any]) -> None:
        limit = options["limit"]
        if not 1 <= limit <= MAX_INSPECT_BUCKETS:
            raise CommandError(f"--limit must be from 1 to {MAX_INSPECT_BUCKETS}")
        group, key = options["group"], options["key"]
        if group == "" or key == "":
            raise CommandError("--group and --key cannot be empty")
        strict, strict_note = strict_counters(group, key)
        try:
            gathered = client.inspect(group, key, limit, _timeout(options))
        except client.ClusterError as exc:
            if not strict:
                raise
            gathered = client.Gathered(
                answers=[],
                alias=str(conf.CHANNEL_LAYER),
                group=conf.GROUP,
                timeout=_timeout(options),
            )
            strict_note = f"{exc}; showing the strict counters only"
        now = time.time()
        views = client.merge_buckets(gathered.answers, now) + strict_views(strict, now)
        views.sort(key=lambda view: -view.total)
        truncated = gathered.truncated or len(views) > limit
        views = views[:limit]
        if options["json"]:
            self._json(
                {
                    **_summary(gathered, now),
                    "truncated": truncated,
                    "buckets": [view.as_dict(now) for view in views],
                    "nodes": _nodes_json(gathered),
                    "strict_note": strict_note,
                }
            )
            return
        if views:
            rows = [
                [
                    view.group,
                    view.key,
                    f"{_clock(view.window_start, view.period)} {format_period(view.period)}",
                    _duration(view.seconds_left(now)),
                    str(view.total) + ("*" if view.budget else ""),
                    "?" if view.limit is None else str(view.limit),
                    "strict cache" if view.strict else f"{view.low}..{view.total}",
                ]
                for view in views
            ]
            self._table(
                ["GROUP", "KEY", "WINDOW (UTC)", "LEFT", "COUNT", "LIMIT", "NODES MIN..MAX"],
                rows,
                right={3, 4, 5, 6},
                # Long dotted-path groups give way first, keeping their tail (the view's name).
                shrink=[(0, 16), (1, 16), (0, 8), (1, 8)],
                keep_tail={0},
            )
            self.stdout.write("")
            if any(view.budget for view in views):
                self.stdout.write(
                    "* in budget mode: near its limit, each process admits only its share "
                    "(inspect --json shows the shares)."
                )
        else:
            self.stdout.write("No live counters match.")
        if gathered.answers:
            self.stdout.write(_footer(gathered))
        if strict_note:
            self.stdout.write(strict_note)
        if truncated:
            self.stdout.write(f"Showing the {limit} hottest buckets; raise --limit to see more.")

    # -- nodes -------------------------------------------------------------------------

    def handle_nodes(self, options: dict[str, Any]) -> None:
        gathered = client.nodes(_timeout(options))
        now = time.time()
        if options["json"]:
            self._json({**_summary(gathered, now), "nodes": _nodes_json(gathered)})
            return
        infos = _sorted_infos(gathered)
        layers = {info.layer for info in infos}
        headers = ["NODE", "HOST:PID", "UPTIME", "BUCKETS", "SENT", "RECV", "DROP"]
        headers += ["LAST SEND", "ERRORS"]
        if len(layers) > 1:
            headers.append("LAYER")  # a mixed cluster is worth a column
        rows = []
        for info in infos:
            age = info.last_send_age
            row = [
                info.node[:8],
                f"{info.host}:{info.pid}",
                _duration(info.uptime),
                str(info.buckets),
                str(info.messages_sent),
                str(info.messages_received),
                str(info.dropped),
                "never" if age is None else f"{_duration(age)} ago",
                str(info.broker_errors),
            ]
            if len(layers) > 1:
                row.append(_short_layer(info.layer))
            rows.append(row)
        self._table(
            headers, rows, right={2, 3, 4, 5, 6, 7, 8}, shrink=[(1, 12), (9, 8)], keep_tail={1}
        )
        self.stdout.write("")
        self.stdout.write(_footer(gathered))
        if len(layers) == 1:
            self.stdout.write(f"Channel layer: {layers.pop()}.")
        intervals = sorted({i.effective_interval for i in infos} - {None})  # type: ignore[type-var]
        if intervals:
            low, high = f"{intervals[0]:g} s", f"{intervals[-1]:g} s"
            shown = low if low == high else f"{low} to {high}"
            self.stdout.write(f"Effective sync interval: {shown} (stretched for the peers).")

    # -- reset -------------------------------------------------------------------------

    def handle_reset(self, options: dict[str, Any]) -> None:
        group, key = options["group"], options["key"]
        strict_removed, strict_note = reset_strict(group, key)
        try:
            result = client.reset_cluster(group, key, _timeout(options))
        except MalformedMessage as exc:
            raise CommandError(f"invalid reset: {exc}") from exc
        except client.ClusterError:
            if not strict_removed:
                raise
            # A site with strict rules only runs no sync thread: nobody to ask.
            self.stdout.write(
                f"Reset {group!r}{'' if key is None else f' key {key!r}'}: "
                f"{_plural(strict_removed, 'strict counter')} deleted; no running process "
                "answered for the local counters."
            )
            return
        if options["json"]:
            now = time.time()
            self._json(
                {
                    **_summary(result.gathered, now),
                    "reset": {"group": group, "key": key, "generation": result.generation},
                    "confirmed": result.confirmed,
                    "removed": result.removed,
                    "per_node": {a.info.node: a.removed for a in result.gathered.answers},
                    "strict_removed": strict_removed,
                }
            )
            return
        what = f"group {group!r}" if key is None else f"key {key!r} in group {group!r}"
        confirmed = _plural(result.confirmed, "node")
        if result.removed:
            removed = f"{_plural(result.removed, 'bucket')} removed"
        else:
            removed = "no matching counters"
        self.stdout.write(f"Reset {what}: {confirmed} confirmed, {removed}.")
        if strict_removed:
            self.stdout.write(f"{_plural(strict_removed, 'strict counter')} deleted too.")
        elif strict_note:
            self.stdout.write(strict_note)
        if result.gathered.ignored:
            self.stdout.write(f"{_plural(result.gathered.ignored, 'reply')} ignored (malformed).")

    # -- check -------------------------------------------------------------------------

    def handle_check(self, options: dict[str, Any]) -> None:
        text: str = options["rate"]
        if is_dynamic(text):
            try:
                function = load_rate_callable(text)
            except InvalidRate as exc:
                raise CommandError(str(exc)) from exc
            name = getattr(function, "__qualname__", repr(function))
            self.stdout.write(
                f"{text}: a rate callable ({name}); it is called with (group, request) "
                "and the rate is decided per request."
            )
            return
        try:
            rates = parse_rate_string(text)
        except InvalidRate as exc:
            raise CommandError(str(exc)) from exc
        now = time.time()
        if len(rates) > 1:
            self.stdout.write(
                f"{text.strip()}: {len(rates)} limits; a request must be within all of them."
            )
            self.stdout.write("")
        for index, rate in enumerate(rates):
            if index:
                self.stdout.write("")
            self.stdout.write("\n".join(explain(rate, now)))

    # -- output helpers ------------------------------------------------------------------

    def _json(self, data: dict[str, Any]) -> None:
        self.stdout.write(json.dumps(data, indent=2))

    def _table(
        self,
        headers: list[str],
        rows: list[list[str]],
        right: set[int],
        shrink: list[tuple[int, int]],
        keep_tail: frozenset[int] | set[int] = frozenset(),
    ) -> None:
        # The terminal's width (COLUMNS when set), 80 when not a terminal.
        width = shutil.get_terminal_size((WIDTH, 24)).columns
        for line in table(headers, rows, right, shrink, keep_tail, width=max(width, 40)):
            self.stdout.write(line)


def explain(rate: Rate, now: float) -> list[str]:
    """What a rate means, for ``check``: limit, period, and the window we are in."""
    start = window_start(now, rate.period)
    end = start + rate.period
    if rate.limit == 0:
        limit = "0: every request is limited"
    else:
        limit = f"{rate.limit} {'request' if rate.limit == 1 else 'requests'} per window"
    period = _plural(rate.period, "second")
    whole = format_period(rate.period)
    return [
        f"{rate}: {describe(rate)}",
        f"  limit    {limit}",
        f"  period   {period}",
        f"  windows  fixed, each starts at a multiple of {whole} since the Unix epoch (UTC)",
        f"  now      {_stamp(start)} to {_stamp(end)} UTC, {_duration(end - now)} left",
    ]


def table(
    headers: list[str],
    rows: list[list[str]],
    right: set[int],
    shrink: list[tuple[int, int]],
    keep_tail: frozenset[int] | set[int] = frozenset(),
    width: int = WIDTH,
) -> list[str]:
    """Plain-text columns within ``width``.

    ``shrink`` lists (column, narrowest) steps, taken in order until the table
    fits; a cut cell ends (or, for ``keep_tail`` columns, starts) with an ellipsis.
    """
    # Keys come from requests: a newline or escape sequence must not break the table.
    rows = [[_printable(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    over = sum(widths) + len(GAP) * (len(widths) - 1) - width
    for column, narrowest in shrink:
        if over <= 0:
            break
        if column >= len(widths):
            continue
        spare = widths[column] - max(len(headers[column]), narrowest)
        cut = min(max(spare, 0), over)
        widths[column] -= cut
        over -= cut

    def cell(text: str, column: int) -> str:
        size = widths[column]
        if len(text) > size:
            text = (
                ELLIPSIS + text[-(size - 1) :]
                if column in keep_tail
                else text[: size - 1] + ELLIPSIS
            )
        return text.rjust(size) if column in right else text.ljust(size)

    lines = [GAP.join(cell(h, i) for i, h in enumerate(headers)).rstrip()]
    lines += [GAP.join(cell(c, i) for i, c in enumerate(row)).rstrip() for row in rows]
    return lines


def _printable(text: str) -> str:
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def _timeout(options: dict[str, Any]) -> float:
    try:
        return client.check_timeout(float(options["timeout"]))
    except ValueError as exc:
        raise CommandError(f"--timeout: {exc}") from exc


def _summary(gathered: client.Gathered, now: float) -> dict[str, Any]:
    return {
        "sync_group": gathered.group,
        "layer_alias": gathered.alias,
        "answered": len(gathered.answers),
        "ignored_replies": gathered.ignored,
        "timeout": gathered.timeout,
        "now": now,
    }


def _sorted_infos(gathered: client.Gathered) -> list[client.NodeInfo]:
    return sorted((a.info for a in gathered.answers), key=lambda i: (i.host, i.pid, i.node))


def _nodes_json(gathered: client.Gathered) -> list[dict[str, Any]]:
    return [info.as_dict() for info in _sorted_infos(gathered)]


def _footer(gathered: client.Gathered) -> str:
    text = f"{_plural(len(gathered.answers), 'node')} answered within {gathered.timeout:g} s"
    text += f" (sync group {gathered.group!r}"
    if gathered.ignored:
        text += f"; {_plural(gathered.ignored, 'reply')} ignored"
    return text + ")."


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


def _clock(start: int, period: int) -> str:
    # A window of a day or more starts at midnight: the date says more than the time.
    return _utc(start).strftime("%m-%d" if period >= 86400 else "%H:%M:%S")


def _stamp(timestamp: float) -> str:
    return _utc(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _short_layer(backend: str) -> str:
    return backend.rsplit(".", 1)[-1].removesuffix("ChannelLayer") or backend


# -- strict counters: they live in the strict cache, which the command reads itself ----


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


def strict_views(counters: list[tuple[BucketKey, int]], now: float) -> list[client.BucketView]:
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
            client.BucketView(
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
