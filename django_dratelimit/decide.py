"""Deciding a hit: fixed and sliding windows, token and leaky buckets, strict mode.

``Decider`` holds the decision code the ``Limiter`` runs on its own store and
clock; ``limiter.py`` adds the process wiring (the facade, the sync thread).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .conf import conf
from .local.algorithms import (
    BUCKET_ALGORITHMS,
    REGISTER_SCALE,
    SLIDING_WINDOW,
    STRICT,
    Decision,
    bucket_decision,
    carried_level,
    epoch_length,
    epoch_level,
    window_start,
)
from .local.scopes import bucket, scoped_key
from .local.store import BucketKey, CounterStore
from .rates import Rate
from .strict.counter import StrictUnavailable, get_strict_counter
from .usage import Usage, combine, new_usage, window_usage

Clock = Callable[[], float]
_new_usage = tuple.__new__


class Decider:
    """The decision code, run on ``self.store`` at ``self.clock()``."""

    store: CounterStore
    _add: Callable[[BucketKey, int, float, int], int]  # store.add, bound once (Limiter)
    clock: Clock
    sync_checked: bool

    def ensure_sync(self) -> None:
        """Start the sync thread if this limiter wants one (the Limiter's)."""
        raise NotImplementedError

    def check(
        self,
        group: str,
        key: str,
        rates: tuple[Rate, ...],
        algorithm: str,
        cost: int,
        name: str = "",
        consistency: str = "eventual",
        *,
        scope: str | None = None,
        stagger: bool = False,
    ) -> Usage:
        """Decide for ``key``: the slow path of ``hit``, and what the decorator calls.

        ``scope`` (see ``scopes``) keeps a count per limit and methods, as
        django-ratelimit does; ``stagger`` shifts the key's windows from the epoch.
        """
        if consistency == STRICT:
            return self._check_strict(group, key, rates, algorithm, cost, name, scope, stagger)
        if not self.sync_checked:
            self.ensure_sync()
        now = self.clock()
        if algorithm in BUCKET_ALGORITHMS:
            return self._check_buckets(group, key, rates, algorithm, cost, name, now, scope)
        if len(rates) == 1:  # the common case: no list, no combining
            return self._window_usage(
                group, key, rates[0], algorithm, cost, name, now, scope, stagger
            )
        usages = [
            self._window_usage(group, key, r, algorithm, cost, name, now, scope, stagger)
            for r in rates
        ]
        return combine(usages, algorithm, name)

    def _window_usage(
        self,
        group: str,
        key: str,
        rate: Rate,
        algorithm: str,
        cost: int,
        name: str,
        now: float,
        scope: str | None = None,
        stagger: bool = False,
    ) -> Usage:
        """Fixed and sliding windows: count in the window containing ``now``."""
        if scope is None and not stagger:
            stored, start = key, window_start(now, rate.period)
        else:
            stored, start = bucket(group, key, rate.limit, rate.period, now, scope, stagger)
        end = float(start + rate.period)
        return self.count_window(group, key, stored, start, end, rate, algorithm, cost, name, now)

    def count_window(
        self,
        group: str,
        key: str,
        stored: str,
        start: int,
        end: float,
        rate: Rate,
        algorithm: str,
        cost: int,
        name: str,
        now: float,
    ) -> Usage:
        """Count ``cost`` hits in the window of ``stored`` (the key as stored) from ``start``.

        ``end`` is ``start + rate.period``, as a float where the caller keeps one: the
        time left is then float arithmetic rather than an epoch-sized integer's.

        A compiled limit (``limits.py``) calls it directly, having found the
        window itself; the caller has checked ``sync_checked``.
        """
        store = self.store
        period, limit = rate.period, rate.limit
        if algorithm != SLIDING_WINDOW:
            if not cost:
                current = store.total((group, stored, period, start))
            else:
                current = self._add((group, stored, period, start), cost, now, limit)
                if current < 0:
                    return over_budget(group, key, limit, period, now, algorithm, name)
            # window_usage()'s fixed window, built here: this runs on every request.
            time_left = end - now
            return _new_usage(
                Usage,
                (
                    group,
                    key,
                    current,
                    limit,
                    period,
                    current > limit,
                    time_left,
                    end,
                    algorithm,
                    name,
                    (),
                ),
            )
        bucket_key = (group, stored, period, start)
        previous = store.total((group, stored, period, start - period))
        if not cost:
            current = store.total(bucket_key)
        else:
            # What this window may still take: the sliding estimate carries part
            # of the previous window (budgets are shares of what remains).
            carried = math.ceil(previous * (start + period - now) / period) if previous else 0
            current = store.add(bucket_key, cost, now, max(0, limit - carried))
            if current < 0:
                return over_budget(group, key, limit, period, now, algorithm, name)
        return window_usage(group, key, rate, algorithm, name, now, start, current, previous)

    def _check_strict(
        self,
        group: str,
        key: str,
        rates: tuple[Rate, ...],
        algorithm: str,
        cost: int,
        name: str,
        scope: str | None,
        stagger: bool,
    ) -> Usage:
        """Exact across the cluster: one atomic round trip to the strict cache."""
        now = self.clock()
        try:
            return get_strict_counter().check(
                group, key, rates, algorithm, cost, now, name, scope=scope, stagger=stagger
            )
        except StrictUnavailable:
            # Already logged (throttled) by the counter; STRICT_FAIL_OPEN decides.
            fail_open = conf.STRICT_FAIL_OPEN
            usages = []
            for rate in rates:
                _, start = bucket(group, key, rate.limit, rate.period, now, None, stagger)
                end = float(start + rate.period)
                usages.append(
                    new_usage(
                        group,
                        key,
                        0 if fail_open else rate.limit,
                        rate.limit,
                        rate.period,
                        not fail_open,
                        end - now,
                        end,
                        algorithm,
                        name,
                    )
                )
            return combine(usages, algorithm, name)

    def _check_buckets(
        self,
        group: str,
        key: str,
        rates: tuple[Rate, ...],
        algorithm: str,
        cost: int,
        name: str,
        now: float,
        scope: str | None,
    ) -> Usage:
        """Token and leaky buckets: tokens are only taken when every rate has them.

        A bucket refills continuously: it has no window to stagger.
        """

        def usage(rate: Rate, take: bool) -> Usage:
            return self._bucket_usage(group, key, rate, algorithm, cost, name, now, take, scope)

        if len(rates) == 1:
            return usage(rates[0], cost > 0)
        probes = [usage(r, False) for r in rates]
        usages = probes
        if cost > 0 and not any(u.should_limit for u in probes):
            usages = [usage(r, True) for r in rates]
        return combine(usages, algorithm, name)

    def _bucket_usage(
        self,
        group: str,
        key: str,
        rate: Rate,
        algorithm: str,
        cost: int,
        name: str,
        now: float,
        take: bool,
        scope: str | None = None,
    ) -> Usage:
        period, capacity = rate.period, rate.limit
        stored = key if scope is None else scoped_key(key, capacity, period, scope)
        length = epoch_length(period)
        start = window_start(now, length)
        elapsed = now - start
        previous = self.store.read((group, stored, length, start - length))
        start_level = carried_level(*previous, capacity, period)
        outcome: list[Decision] = []

        def decide(total: int, register: int) -> tuple[int, int, float]:
            level = epoch_level(total, register, start_level, elapsed, capacity, period)
            admitted, decision = bucket_decision(level.level, cost, capacity, period)
            outcome.append(decision)
            # Rounding the register up only ever lowers the level: never over-admits.
            taken = cost if admitted and take else 0
            return taken, math.ceil(level.register * REGISTER_SCALE), level.level

        bucket_key = (group, stored, length, start)
        budget = None
        if take:
            taken, budget = self.store.take(bucket_key, now, decide, capacity, period)
            if taken < 0:  # refused by this process's budget (see local.bucket_budget)
                return over_budget(group, key, capacity, period, now, algorithm, name)
        else:
            decide(*self.store.read(bucket_key))
            # A probe before the takes of several rates asks the budget too.
            if (
                cost > 0
                and not outcome[0].should_limit
                and not self.store.holds(bucket_key, cost, now)
            ):
                return over_budget(group, key, capacity, period, now, algorithm, name)
        in_use, limited, time_left = outcome[0]
        if budget is not None:
            in_use = max(in_use, capacity - budget)  # RateLimit's r: what this process may take
        return new_usage(
            group,
            key,
            in_use,
            capacity,
            period,
            limited,
            time_left,
            now + time_left,
            algorithm,
            name,
        )


def over_budget(
    group: str, key: str, limit: int, period: int, now: float, algorithm: str, name: str
) -> Usage:
    """Refused by this process's budget (see ``budgets``): nothing left here until the
    next sync round brings a new one, so ``remaining`` is 0 and a retry is worth it in 1 s.
    """
    return _new_usage(
        Usage, (group, key, limit, limit, period, True, 1.0, now + 1.0, algorithm, name, ())
    )
