"""The limiter: ``hit``, ``get`` and ``reset`` on a (group, key, rate) triple.

The process's limiter is ``limiter`` (see ``process``), built lazily from
settings and rebuilt in place when they change::

    from django_dratelimit.limiter import limiter

    usage = limiter.hit("password-reset", email, "3/h")
    if not usage.allowed:
        ...  # usage.retry_after seconds to wait

``limiter``, ``get_limiter`` and ``set_limiter`` live in ``process`` and are
importable from here too, as they always were.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from .conf import conf
from .decide import Clock, Decider, over_budget
from .hit_rates import SINGLE_RATES, hit_rates
from .local.algorithms import FIXED_WINDOW, Edges, window_edges
from .local.store import CounterStore
from .registry import known_periods, known_scopes, strict_groups
from .strict.counter import StrictUnavailable, StrictUnsupported, get_strict_counter
from .usage import Usage

if TYPE_CHECKING:
    from .process import get_limiter, limiter, set_limiter, start_sync_on_request
    from .sync.thread import SyncThread

__all__ = [
    "Clock",
    "Limiter",
    "get_limiter",
    "limiter",
    "over_budget",
    "set_limiter",
    "start_sync_on_request",
]
# What ``process`` defines; read from there on first use (it imports this module).
_PROCESS_NAMES = frozenset({"get_limiter", "limiter", "set_limiter", "start_sync_on_request"})
logger = logging.getLogger("django_dratelimit")


class Limiter(Decider):
    """Counts hits in the local store and decides; never touches the network."""

    def __init__(
        self,
        store: CounterStore | None = None,
        clock: Clock = time.time,
        sync: bool = True,
    ) -> None:
        self.store = store if store is not None else CounterStore(conf.MAX_KEYS)
        self._add = self.store.add
        self.clock = clock
        # The process limiter is rebuilt when settings change: this cannot go stale.
        self.algorithm = conf.ALGORITHM
        self.sync: SyncThread | None = None
        # False until the first use; then the sync thread is started (if configured).
        self._sync_wanted = sync
        self.sync_checked = not sync
        self._fast = False
        self._update_fast()
        # period -> the current epoch-aligned window (see window_edges), for hit().
        self._windows: dict[int, Edges] = {}
        self._sync_lock = threading.Lock()

    def _update_fast(self) -> None:
        # The inline path of hit() applies: fixed windows by default, and sync checked.
        self._fast = self.sync_checked and self.algorithm == FIXED_WINDOW

    # -- public API --------------------------------------------------------

    def hit(
        self,
        group: str,
        key: str,
        rate: Any,
        *,
        algorithm: str | None = None,
        cost: int = 1,
        name: str = "",
        consistency: str = "eventual",
    ) -> Usage:
        """Count ``cost`` hits for ``key`` and say whether the limit is exceeded."""
        # The facade's hot path: one fixed-window rate given as a string. Every
        # step here is measured (bench/bench_local.py); keep it short.
        single = SINGLE_RATES[rate] if rate.__class__ is str else None
        if (
            single is None
            or algorithm
            or consistency != "eventual"
            or not self._fast
            or not key
            or not group
        ):
            return self._hit(group, key, rate, algorithm, cost, name, consistency)
        period, limit = single
        now = self.clock()
        window = self._windows.get(period)
        if window is None or not window[1] <= now < window[2]:
            window = self._windows[period] = window_edges(now, period)
        start, _begins, end = window
        current = self._add((group, key, period, start), cost, now, limit)
        if current < 0:
            return over_budget(group, key, limit, period, now, FIXED_WINDOW, name)
        return _new_usage(
            Usage,
            (
                group,
                key,
                current,
                limit,
                period,
                current > limit,
                end - now,
                end,
                FIXED_WINDOW,
                name,
                (),
            ),
        )

    def _hit(
        self,
        group: str,
        key: str,
        rate: Any,
        algorithm: str | None,
        cost: int,
        name: str,
        consistency: str,
    ) -> Usage:
        if not key or not group:
            raise ValueError("limiter.hit() needs a non-empty group and key")
        rates = hit_rates(rate)
        return self.check(group, key, rates, algorithm or self.algorithm, cost, name, consistency)

    def get(
        self,
        group: str,
        key: str,
        rate: Any,
        *,
        algorithm: str | None = None,
        name: str = "",
        consistency: str = "eventual",
    ) -> Usage:
        """The usage of ``key`` without counting a hit."""
        return self.check(
            group, key, hit_rates(rate), algorithm or self.algorithm, 0, name, consistency
        )

    def reset(self, group: str, key: str | None = None) -> int:
        """Forget the counts of ``key`` (or of the whole group) on every process.

        Returns how many buckets this process dropped (plus the strict-cache
        counters deleted, for strict groups); the reset travels to the other
        processes with the next sync round.
        """
        self.ensure_sync()
        removed = self.store.reset(group, key)
        if group in strict_groups():
            try:
                removed += get_strict_counter().reset(
                    group, key, periods=known_periods(group), scopes=known_scopes(group)
                )
            except (StrictUnavailable, StrictUnsupported) as exc:
                logger.warning("dratelimit: strict counters of %r not reset: %s", group, exc)
        return removed

    # -- sync --------------------------------------------------------------------

    def ensure_sync(self) -> None:
        with self._sync_lock:
            if self.sync_checked:
                return
            from .sync.thread import start_sync

            # Other threads wait on the lock meanwhile (STARTUP_SYNC_WAIT included):
            # none decides before this process has joined.
            try:
                self.sync = start_sync(self.store)
            finally:
                self.sync_checked = True  # tried once, whatever happened
                self._update_fast()

    def budget_policies(self) -> set[str]:
        """The groups with a bucket in budget mode in this process right now."""
        return {group for group, *_ in self.store.planned(self.clock())}

    def close(self) -> None:
        """Stop the sync thread and start none again (tests, clean shutdown, a swap)."""
        with self._sync_lock:
            sync, self.sync = self.sync, None
            # A closed limiter still counts, locally: it must not start a thread
            # nobody would stop (set_limiter() re-arms the one it installs).
            self.sync_checked = True
            self._update_fast()
        if sync is not None:
            sync.stop()

    def rearm(self) -> None:
        """Installed as the process limiter: join the cluster again on first use."""
        with self._sync_lock:
            if self._sync_wanted and self.sync is None:
                self.sync_checked = False
                self._update_fast()

    def after_fork_in_child(self) -> None:
        # The parent's sync thread does not exist here; start our own on first use.
        self._sync_lock = threading.Lock()
        if self.sync is not None:
            self.sync = None
            self.sync_checked = False
            self._update_fast()


_new_usage = tuple.__new__


def __getattr__(name: str) -> Any:
    """``from django_dratelimit.limiter import limiter`` (and get/set_limiter): the old paths."""
    if name not in _PROCESS_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import process

    value = getattr(process, name)
    globals()[name] = value  # found directly from now on
    return value
