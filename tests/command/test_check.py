"""``manage.py ratelimit check``, and the pieces the command prints with: tables, merging."""

from __future__ import annotations

import re
import time

import pytest
from django.core.management import CommandError
from django.test import override_settings

from django_dratelimit.local.store import BucketState
from django_dratelimit.ops import client
from django_dratelimit.ops.table import WIDTH, table
from django_dratelimit.rates import Rate
from tests.command.conftest import (
    run,
)

# -- check -----------------------------------------------------------------------------------


@override_settings(DRATELIMIT={"CHANNEL_LAYER": None})  # needs no layer, no process
def test_check_explains_a_rate() -> None:
    lines = run("check", "10/5m").splitlines()
    assert lines[:4] == [
        "10/5m: 10 per 5 minutes",
        "  limit    10 requests per window",
        "  period   300 seconds",
        "  windows  fixed, each starts at a multiple of 5m since the Unix epoch (UTC)",
    ]
    now = time.time()
    start = int(now // 300) * 300
    start_text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start))
    end_text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start + 300))
    assert lines[4].startswith(f"  now      {start_text} to {end_text} UTC, ")
    assert lines[4].endswith(" left")
    assert run("check", "0/m").splitlines()[1] == "  limit    0: every request is limited"
    assert run("check", "1/d").splitlines()[1] == "  limit    1 request per window"


def test_check_explains_each_part_of_a_multi_rate() -> None:
    lines = run("check", "10/s; 500/h").splitlines()
    assert lines[0] == "10/s; 500/h: 2 limits; a request must be within all of them."
    assert "10/s: 10 per 1 second" in lines
    assert "500/h: 500 per 1 hour" in lines
    assert all(len(line) <= WIDTH for line in lines)


def test_check_a_dotted_path() -> None:
    text = run("check", "tests.views.vip_rate")
    assert text.startswith("tests.views.vip_rate: a rate callable (vip_rate);")
    with pytest.raises(CommandError, match="does not import"):
        run("check", "tests.views.no_such_rate")


@pytest.mark.parametrize(
    ("rate", "message"),
    [
        ("5/M", "rate '5/M' has an unknown unit 'M'"),
        ("five/m", "rate 'five/m' is malformed"),
        ("5/0m", "has a zero period"),
        ("", "is empty"),
        ("5/40d", "the period must be at most 31 days"),
    ],
)
def test_check_rejects_a_bad_rate(rate: str, message: str) -> None:
    with pytest.raises(CommandError, match=re.escape(message)):
        run("check", rate)


# -- pieces ------------------------------------------------------------------------------------


def test_table_fits_80_columns_and_cuts_with_an_ellipsis() -> None:
    rows = [["myproject.views.a_very_long_view_name", "k" * 60, "1"], ["g", "short", "22"]]
    lines = table(["GROUP", "KEY", "N"], rows, right={2}, shrink=[(0, 16), (1, 8)], keep_tail={0})
    assert all(len(line) <= WIDTH for line in lines)
    assert max(len(line) for line in lines) == WIDTH
    assert lines[1].startswith("…_long_view_name  k")  # a group's tail says the most
    assert "k…" in lines[1]
    assert lines[2].split() == ["g", "short", "22"]
    assert lines[2].endswith("22")  # numbers are right-aligned
    lines = table(["KEY"], [["evil\nkey\x1b[2J"]], right=set(), shrink=[])
    assert lines == ["KEY", "evil?key?[2J"]  # a key from a request cannot break the table


def test_merge_counts_a_missing_bucket_as_zero_unless_the_answer_was_cut() -> None:
    now = time.time()
    start = int(now // 60) * 60

    def answer(node: str, buckets: list[BucketState], truncated: bool = False) -> client.Answer:
        info = client.parse_info(
            {
                "node": node,
                "host": "h",
                "pid": 1,
                "layer": "",
                "group": "dratelimit",
                "buckets": len(buckets),
                "sync_interval": 0.05,
                "metrics": {"started_at": now},
            },
            node,
            now,
        )
        return client.Answer(info, tuple(buckets), {"g": (Rate(3, 60),)}, truncated)

    current = BucketState("g", "k", 60, start, 0, {"a": 2})
    ended = BucketState("g", "old", 60, start - 60, 0, {"a": 9})
    views = client.merge_buckets([answer("a", [current, ended]), answer("b", [])], now)
    assert [(v.key, v.total, v.low, v.limit) for v in views] == [("k", 2, 0, 3)]
    views = client.merge_buckets([answer("a", [current]), answer("b", [], truncated=True)], now)
    assert [(v.key, v.total, v.low) for v in views] == [("k", 2, 2)]
    views = client.merge_buckets([answer("a", [ended])], now, current_only=False)
    assert [(v.key, v.total) for v in views] == [("old", 9)]
