"""The limiter facade: ``hit``, ``get`` and ``reset`` on a (group, key, rate) triple.

One instance per process, built lazily from settings and dropped when they change::

    from django_dratelimit.limiter import limiter

    usage = limiter.hit("password-reset", email, "3/h")
    if not usage.allowed:
        ...  # usage.retry_after seconds to wait
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from django.core.signals import setting_changed
from django.dispatch import receiver

from .conf import conf
from .local.algorithms import (
    BUCKET_ALGORITHMS,
    FIXED_WINDOW,
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
from .local.store import CounterStore
from .logutil import log_throttled
from .rates import Rate, parse_rate, parse_rate_string
from .registry import known_periods, known_scopes, strict_groups
from .strict.counter import StrictUnavailable, StrictUnsupported, get_strict_counter
from .usage import Usage, combine, new_usage, window_usage

if TYPE_CHECKING:
    from .sync.thread import SyncThread

Clock = Callable[[], float]
logger = logging.getLogger("django_dratelimit")


class Limiter:
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
        # The limiter is rebuilt when settings change, so this cannot go stale.
        self.algorithm = conf.ALGORITHM
        self.sync: SyncThread | None = None
        # False until the first use; then the sync thread is started (if configured).
        self._sync_wanted = sync
        self._sync_checked = not sync
        # Replaced as the process limiter: calls kept from before go to the new one.
        self._retired = False
        self._fast = False
        self._update_fast()
        self._sync_lock = threading.Lock()

    def _update_fast(self) -> None:
        # The inline path of hit() applies: fixed windows by default, sync checked,
        # and still the process limiter (if it ever was).
        self._fast = self._sync_checked and not self._retired and self.algorithm == FIXED_WINDOW

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
        single = _SINGLE_RATES[rate] if rate.__class__ is str else None
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
        seconds = _floor(now)  # algorithms.window_start(), inlined
        start = seconds - seconds % period
        current = self._add((group, key, period, start), cost, now, limit)
        end = start + period
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
        current = self._current()
        if current is not self:
            return current._hit(group, key, rate, algorithm, cost, name, consistency)
        if not key or not group:
            raise ValueError("limiter.hit() needs a non-empty group and key")
        rates = _rates(rate)
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
        current = self._current()
        if current is not self:
            return current.get(
                group, key, rate, algorithm=algorithm, name=name, consistency=consistency
            )
        return self.check(
            group, key, _rates(rate), algorithm or self.algorithm, 0, name, consistency
        )

    def reset(self, group: str, key: str | None = None) -> int:
        """Forget the counts of ``key`` (or of the whole group) on every process.

        Returns how many buckets this process dropped (plus the strict-cache
        counters deleted, for strict groups); the reset travels to the other
        processes with the next sync round.
        """
        current = self._current()
        if current is not self:
            return current.reset(group, key)
        self._ensure_sync()
        removed = self.store.reset(group, key)
        if group in strict_groups():
            try:
                removed += get_strict_counter().reset(
                    group, key, periods=known_periods(group), scopes=known_scopes(group)
                )
            except (StrictUnavailable, StrictUnsupported) as exc:
                logger.warning("dratelimit: strict counters of %r not reset: %s", group, exc)
        return removed

    # -- core ------------------------------------------------------------------

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
        if not self._sync_checked:
            self._ensure_sync()
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
        store = self.store
        period = rate.period
        if scope is None and not stagger:
            stored, start = key, window_start(now, period)
        else:
            stored, start = bucket(group, key, rate.limit, period, now, scope, stagger)
        bucket_key = (group, stored, period, start)
        previous = (
            store.total((group, stored, period, start - period))
            if algorithm == SLIDING_WINDOW
            else 0
        )
        if not cost:
            current = store.total(bucket_key)
        else:
            # What this window may still take: the sliding estimate carries part
            # of the previous window (budgets are shares of what remains).
            carried = math.ceil(previous * (start + period - now) / period) if previous else 0
            current = store.add(bucket_key, cost, now, max(0, rate.limit - carried))
            if current < 0:
                return over_budget(group, key, rate.limit, period, now, algorithm, name)
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
                end = start + rate.period
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

    # -- sync --------------------------------------------------------------------

    def _current(self) -> Limiter:
        """Who answers calls made on this limiter: itself, unless it was replaced."""
        # get_limiter() never returns a retired limiter for long; never forward to self.
        return get_limiter() if self._retired else self

    def _ensure_sync(self) -> None:
        with self._sync_lock:
            if self._sync_checked or self._retired:
                return  # a replaced limiter must not start a thread nobody would stop
            from .sync.thread import start_sync

            # Other threads wait on the lock meanwhile (STARTUP_SYNC_WAIT included):
            # none decides before this process has joined.
            try:
                self.sync = start_sync(self.store)
            finally:
                self._sync_checked = True  # tried once, whatever happened
                self._update_fast()

    def budget_policies(self) -> set[str]:
        """The groups with a bucket in budget mode in this process right now."""
        return {group for group, *_ in self.store.planned(self.clock())}

    def close(self) -> None:
        """Stop the sync thread (tests, clean shutdown)."""
        with self._sync_lock:
            sync, self.sync = self.sync, None
        if sync is not None:
            sync.stop()

    def _after_fork_in_child(self) -> None:
        # The parent's sync thread does not exist here; start our own on first use.
        self._sync_lock = threading.Lock()
        if self.sync is not None:
            self.sync = None
            self._sync_checked = False
            self._update_fast()

    def _set_retired(self, retired: bool) -> None:
        """Another limiter became the process limiter (or this one did again)."""
        with self._sync_lock:  # _ensure_sync() writes _fast too
            self._retired = retired
            if not retired and self._sync_wanted and self.sync is None:
                self._sync_checked = False  # closed when it was replaced: sync again
            self._update_fast()


def over_budget(
    group: str, key: str, limit: int, period: int, now: float, algorithm: str, name: str
) -> Usage:
    """Refused by this process's budget (see ``budgets``): nothing left here until the
    next sync round brings a new one, so ``remaining`` is 0 and a retry is worth it in 1 s.
    """
    return _new_usage(
        Usage, (group, key, limit, limit, period, True, 1.0, now + 1.0, algorithm, name, ())
    )


class _SingleRates(dict[str, "tuple[int, int] | None"]):
    """Rate string -> (period, limit) when it is one rate, else None; filled on first use."""

    def __missing__(self, text: str) -> tuple[int, int] | None:
        try:
            rates = parse_rate_string(text)
        except ValueError:
            return None  # the slow path raises the proper error
        value = (rates[0].period, rates[0].limit) if len(rates) == 1 else None
        if len(self) < 1024:
            self[text] = value
        return value


_SINGLE_RATES = _SingleRates()
_new_usage = tuple.__new__
_floor = math.floor


def _rates(rate: Any) -> tuple[Rate, ...]:
    if isinstance(rate, tuple) and rate and isinstance(rate[0], Rate):
        return rate
    parsed = parse_rate(rate)
    if parsed is None:
        raise ValueError("rate None means no limit: there is nothing to hit")
    return parsed


_limiter: Limiter | None = None
_limiter_lock = threading.Lock()


def get_limiter() -> Limiter:
    """This process's limiter, built from settings on first use."""
    current = _limiter
    if current is not None:
        return current
    return _build_limiter()


def _build_limiter() -> Limiter:
    global _limiter
    with _limiter_lock:
        if _limiter is None:
            _limiter = Limiter()
            _facade._bind(_limiter)
        return _limiter


def set_limiter(new: Limiter | None) -> Limiter | None:
    """Swap this process's limiter (tests); closes the old one. Returns the old one."""
    global _limiter
    with _limiter_lock:
        # Un-retire the new one before publishing it, retire the old one after:
        # a call kept from the old one must always find a current limiter.
        if new is not None:
            new._set_retired(False)
        old, _limiter = _limiter, new
        if old is not None and old is not new:
            old._set_retired(True)
        _facade._bind(new)
    if old is not None and old is not new:
        old.close()
    return old


@receiver(setting_changed)
def _drop_limiter(setting: str, **kwargs: Any) -> None:
    if setting in ("DRATELIMIT", "CHANNEL_LAYERS"):
        set_limiter(None)


def start_sync_on_request(**kwargs: Any) -> None:
    """``request_started``: a process joins the cluster at its first request of any kind.

    Joining at the first *limited* request would decide that request, and every
    limited request until the peers' answer arrives, on this process's counts
    alone. Connected in ``AppConfig.ready()``; after the first request it costs
    one attribute read.
    """
    current = _limiter
    if current is not None and current._sync_checked:
        return
    try:
        if conf.ENABLED:
            get_limiter()._ensure_sync()
    except Exception:
        # Bad settings (system checks do not run under gunicorn or uvicorn): only the
        # limited routes may fail, never a health check.
        log_throttled(
            "sync-start", logging.ERROR, "dratelimit: cannot start the limiter", exc_info=True
        )


def _after_fork() -> None:
    if _limiter is not None:
        _limiter._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork)


class LimiterFacade(Protocol):
    """What ``limiter`` offers: the Limiter's public methods (keep the signatures in step)."""

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
    ) -> Usage: ...

    def get(
        self,
        group: str,
        key: str,
        rate: Any,
        *,
        algorithm: str | None = None,
        name: str = "",
        consistency: str = "eventual",
    ) -> Usage: ...

    def reset(self, group: str, key: str | None = None) -> int: ...


class _LimiterFacade:
    """``limiter.hit(...)`` reaches this process's current limiter without an extra call.

    ``hit``, ``get`` and ``reset`` are the current limiter's own bound methods,
    rebound whenever it is built or swapped; before that they build it first.
    A forwarding method would cost ~200 ns a call, a fifth of ``hit`` itself.
    A method kept from before a swap (``check = limiter.hit``) still works: a
    replaced limiter hands every call to the current one.
    """

    hit: Callable[..., Usage]
    get: Callable[..., Usage]
    reset: Callable[..., int]

    def __init__(self) -> None:
        self._bind(None)

    def _bind(self, current: Limiter | None) -> None:
        if current is None:
            self.hit = lambda *args, **kwargs: get_limiter().hit(*args, **kwargs)
            self.get = lambda *args, **kwargs: get_limiter().get(*args, **kwargs)
            self.reset = lambda *args, **kwargs: get_limiter().reset(*args, **kwargs)
        else:
            self.hit = current.hit
            self.get = current.get
            self.reset = current.reset

    def __repr__(self) -> str:
        return f"<limiter facade of {_limiter!r}>"


_facade = _LimiterFacade()
limiter: LimiterFacade = _facade
