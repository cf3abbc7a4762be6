"""``manage.py ratelimit``: see, explain and reset live counters across the cluster."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...ops import client
from ...ops.render import explain, plural
from ...ops.report import (
    BUCKET_HEADERS,
    NODE_HEADERS,
    bucket_row,
    effective_intervals,
    footer,
    inspect_cluster,
    node_row,
    nodes_json,
    sorted_infos,
    summary,
)
from ...ops.strict_cache import reset_strict
from ...ops.table import WIDTH, table
from ...rates import InvalidRate, is_dynamic, load_rate_callable, parse_rate_string
from ...sync.protocol import MAX_INSPECT_BUCKETS, MalformedMessage

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
        report = inspect_cluster(group, key, limit, _timeout(options))
        gathered, views, now = report.gathered, report.views, report.now
        if options["json"]:
            self._json(
                {
                    **summary(gathered, now),
                    "truncated": report.truncated,
                    "buckets": [view.as_dict(now) for view in views],
                    "nodes": nodes_json(gathered),
                    "strict_note": report.strict_note,
                }
            )
            return
        if views:
            rows = [bucket_row(view, now) for view in views]
            self._table(
                BUCKET_HEADERS,
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
            self.stdout.write(footer(gathered))
        if report.strict_note:
            self.stdout.write(report.strict_note)
        if report.truncated:
            self.stdout.write(f"Showing the {limit} hottest buckets; raise --limit to see more.")

    # -- nodes -------------------------------------------------------------------------

    def handle_nodes(self, options: dict[str, Any]) -> None:
        gathered = client.nodes(_timeout(options))
        now = time.time()
        if options["json"]:
            self._json({**summary(gathered, now), "nodes": nodes_json(gathered)})
            return
        infos = sorted_infos(gathered)
        layers = {info.layer for info in infos}
        mixed = len(layers) > 1  # a mixed cluster is worth a column
        headers = NODE_HEADERS + (["LAYER"] if mixed else [])
        rows = [node_row(info, with_layer=mixed) for info in infos]
        self._table(
            headers, rows, right={2, 3, 4, 5, 6, 7, 8}, shrink=[(1, 12), (9, 8)], keep_tail={1}
        )
        self.stdout.write("")
        self.stdout.write(footer(gathered))
        if len(layers) == 1:
            self.stdout.write(f"Channel layer: {layers.pop()}.")
        shown = effective_intervals(infos)
        if shown:
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
                f"{plural(strict_removed, 'strict counter')} deleted; no running process "
                "answered for the local counters."
            )
            return
        if options["json"]:
            now = time.time()
            self._json(
                {
                    **summary(result.gathered, now),
                    "reset": {"group": group, "key": key, "generation": result.generation},
                    "confirmed": result.confirmed,
                    "removed": result.removed,
                    "per_node": {a.info.node: a.removed for a in result.gathered.answers},
                    "strict_removed": strict_removed,
                }
            )
            return
        what = f"group {group!r}" if key is None else f"key {key!r} in group {group!r}"
        confirmed = plural(result.confirmed, "node")
        if result.removed:
            removed = f"{plural(result.removed, 'bucket')} removed"
        else:
            removed = "no matching counters"
        self.stdout.write(f"Reset {what}: {confirmed} confirmed, {removed}.")
        if strict_removed:
            self.stdout.write(f"{plural(strict_removed, 'strict counter')} deleted too.")
        elif strict_note:
            self.stdout.write(strict_note)
        if result.gathered.ignored:
            self.stdout.write(f"{plural(result.gathered.ignored, 'reply')} ignored (malformed).")

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


def _timeout(options: dict[str, Any]) -> float:
    try:
        return client.check_timeout(float(options["timeout"]))
    except ValueError as exc:
        raise CommandError(f"--timeout: {exc}") from exc
