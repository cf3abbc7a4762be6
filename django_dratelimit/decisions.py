"""Decisions by policy and outcome, counted per process for the Prometheus collector.

The only per-request cost of the metrics, so ``count()`` is two dict/list
lookups and an integer increment, with no lock. On CPython with the GIL the
increment cannot lose a count to another thread: ``row[i] += 1`` on a list of
ints runs no Python code between its read and its write, and the GIL only
changes hands at the points where Python code runs (calls, loop jumps). A
free-threaded build may lose an increment under contention; the numbers stay
within a few counts of the truth there, which is good enough for a rate.
(A per-thread table is exact everywhere but measured ~40 ns more per request,
a lock ~100 ns: both outside the noise of ``bench/bench_local.py``.)
"""

from __future__ import annotations

import logging
import os
import threading

ALLOWED = "allowed"
LIMITED = "limited"
# A policy is a decorator's group or a rule's name, so the set is fixed by the
# code; a group built per request (``is_ratelimited(group=f"user-{pk}")``) would
# grow it without end, and with it the series in Prometheus.
MAX_POLICIES = 1_000
OTHER = "(other)"

logger = logging.getLogger("django_dratelimit")
# policy -> [allowed, limited], indexed by ``should_limit``.
_table: dict[str, list[int]] = {}
_lock = threading.Lock()  # only for adding a policy: never on the common path


def count(policy: str, limited: bool) -> None:
    """Count one decision: a request counted against ``policy``, allowed or limited."""
    try:
        _table[policy][limited] += 1
    except KeyError:
        _add_policy(policy)[limited] += 1


def _add_policy(policy: str) -> list[int]:
    with _lock:
        row = _table.get(policy)
        if row is not None:  # another thread added it meanwhile
            return row
        if len(_table) >= MAX_POLICIES:
            # Every policy past the cap takes this path, and the lock, on each
            # decision: the price of a bounded table, paid only by such a site.
            if OTHER not in _table:
                logger.warning(
                    "dratelimit: more than %d policies decided; counting %r and later ones "
                    "as %r in the metrics",
                    MAX_POLICIES,
                    policy,
                    OTHER,
                )
            return _table.setdefault(OTHER, [0, 0])
        row = _table[policy] = [0, 0]
        return row


def snapshot() -> dict[tuple[str, str], int]:
    """``{(policy, "allowed" | "limited"): decisions}`` since the process started."""
    with _lock:  # no policy is added while we copy
        rows = [(policy, tuple(row)) for policy, row in _table.items()]
    totals: dict[tuple[str, str], int] = {}
    for policy, (allowed, limited) in rows:
        totals[policy, ALLOWED] = allowed
        totals[policy, LIMITED] = limited
    return totals


def _after_fork_in_child() -> None:
    # Another thread may have held the lock at the fork; it does not exist in the child.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
