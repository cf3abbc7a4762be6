"""The ``limiter`` facade: hit / get / reset on (group, key, rate), with an injected clock."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import pytest
from django.test import override_settings

from django_dratelimit.limiter import Limiter, get_limiter, limiter, set_limiter
from django_dratelimit.local.store import CounterStore
from django_dratelimit.rates import InvalidRate, Rate
from django_dratelimit.usage import Usage

if TYPE_CHECKING:
    from tests.conftest import FakeClock

# Every test gets the process limiter with the fake clock (10 s into a minute).
pytestmark = pytest.mark.usefixtures("limiter")


def allowed(usages: list[Usage]) -> list[bool]:
    return [u.allowed for u in usages]


def test_hit_admits_limit_hits_then_refuses() -> None:
    usages = [limiter.hit("g", "k", "2/m") for _ in range(4)]

    assert allowed(usages) == [True, True, False, False]
    assert [u.count for u in usages] == [1, 2, 3, 4]
    assert [u.remaining for u in usages] == [1, 0, 0, 0]
    assert usages[2].should_limit is True


def test_usage_fields_follow_the_clock(clock: FakeClock) -> None:
    usage = limiter.hit("g", "k", "2/m")

    assert (usage.group, usage.key, usage.limit, usage.period) == ("g", "k", 2, 60)
    assert usage.time_left == 50.0
    assert usage.reset_at == clock.now + 50.0
    assert usage.retry_after == 50
    assert usage.algorithm == "fixed_window"
    assert usage.policy == "g"


def test_retry_after_is_whole_seconds_and_at_least_one(clock: FakeClock) -> None:
    limiter.hit("g", "k", "1/m")
    clock.advance(0.25)
    assert limiter.hit("g", "k", "1/m").retry_after == 50  # 49.75 s rounds up

    clock.advance(49.7)
    late = limiter.hit("g", "k", "1/m")
    assert late.time_left == pytest.approx(0.05)
    assert late.retry_after == 1


def test_get_does_not_count() -> None:
    for _ in range(3):
        assert limiter.get("g", "k", "1/m").count == 0
    limiter.hit("g", "k", "1/m")
    limiter.hit("g", "k", "1/m")
    usage = limiter.get("g", "k", "1/m")

    assert (usage.count, usage.allowed) == (2, False)
    assert limiter.get("g", "k", "1/m").count == 2


def test_groups_and_keys_are_independent() -> None:
    limiter.hit("g", "a", "1/m")

    assert limiter.hit("g", "a", "1/m").allowed is False
    assert limiter.hit("g", "b", "1/m").allowed is True
    assert limiter.hit("h", "a", "1/m").allowed is True


def test_window_boundary_resets_the_count(clock: FakeClock) -> None:
    assert allowed([limiter.hit("g", "k", "2/m") for _ in range(3)]) == [True, True, False]
    clock.advance(49.999)
    assert limiter.hit("g", "k", "2/m").allowed is False
    clock.advance(0.001)  # the next minute starts

    fresh = limiter.hit("g", "k", "2/m")
    assert (fresh.count, fresh.allowed, fresh.time_left) == (1, True, 60.0)


def test_windows_are_aligned_to_the_epoch(clock: FakeClock) -> None:
    # Each period has its own window, starting at a multiple of the period since the epoch.
    assert limiter.hit("g", "k", "1/s").time_left == 1.0
    assert limiter.hit("g", "k", "1/10s").time_left == 10.0
    assert limiter.hit("g", "k", "1/h").time_left == 3600 - (clock.now % 3600)


def test_multi_rate_is_decided_by_the_most_restrictive(clock: FakeClock) -> None:
    first = [limiter.hit("g", "k", "2/s;3/m") for _ in range(3)]

    assert allowed(first) == [True, True, False]
    assert (first[2].limit, first[2].period) == (2, 1)
    assert [(u.limit, u.period, u.count) for u in first[2].others] == [(2, 1, 3), (3, 60, 3)]

    clock.advance(1)
    minute = limiter.hit("g", "k", "2/s;3/m")
    assert minute.allowed is False
    assert (minute.limit, minute.period, minute.retry_after) == (3, 60, 49)


def test_multi_rate_reports_the_least_room_when_allowed() -> None:
    usage = limiter.hit("g", "k", "10/s;2/m")

    assert usage.allowed is True
    assert (usage.limit, usage.remaining) == (2, 1)


def test_cost_counts_several_hits() -> None:
    first = limiter.hit("g", "k", "5/m", cost=3)
    second = limiter.hit("g", "k", "5/m", cost=2)
    third = limiter.hit("g", "k", "5/m", cost=1)

    assert (first.count, first.allowed) == (3, True)
    assert (second.count, second.allowed, second.remaining) == (5, True, 0)
    assert (third.count, third.allowed) == (6, False)


def test_cost_too_big_for_the_limit_is_refused() -> None:
    assert limiter.hit("g", "k", "5/m", cost=6).allowed is False


def test_reset_removes_the_keys_buckets_and_the_next_hit_is_allowed() -> None:
    for _ in range(4):
        limiter.hit("g", "k", "2/s;3/m")
    limiter.hit("g", "other", "2/s;3/m")

    assert limiter.reset("g", "k") == 2  # one bucket per rate
    after = limiter.hit("g", "k", "2/s;3/m")
    assert (after.allowed, after.count) == (True, 1)
    assert limiter.get("g", "other", "2/s;3/m").count == 1


def test_reset_counts_buckets_across_windows(clock: FakeClock) -> None:
    limiter.hit("g", "k", "1/s")
    clock.advance(1)
    limiter.hit("g", "k", "1/s")  # the previous second's bucket is still kept

    assert limiter.reset("g", "k") == 2


def test_reset_of_a_whole_group() -> None:
    for key in ("a", "b", "c"):
        limiter.hit("g", key, "1/m")
        limiter.hit("g", key, "1/m")
    limiter.hit("h", "a", "1/m")

    assert limiter.reset("g") == 3
    assert [limiter.hit("g", key, "1/m").allowed for key in ("a", "b", "c")] == [True] * 3
    assert limiter.get("h", "a", "1/m").count == 1


def test_reset_of_nothing_returns_zero() -> None:
    assert limiter.reset("g", "never-seen") == 0
    assert limiter.reset("never-seen") == 0


def test_sliding_window_algorithm(clock: FakeClock) -> None:
    for _ in range(2):
        limiter.hit("g", "k", "2/m", algorithm="sliding_window")
    clock.advance(80)  # 30 s into the next minute: the previous window weighs half

    first = limiter.hit("g", "k", "2/m", algorithm="sliding_window")
    second = limiter.hit("g", "k", "2/m", algorithm="sliding_window")

    assert (first.allowed, first.count, first.algorithm) == (True, 2, "sliding_window")
    assert (second.allowed, second.count) == (False, 3)
    # Two hits in this window: room for one more once the estimate is back to 1, 60 s later.
    assert second.retry_after == 60


def test_sliding_and_fixed_keep_separate_views_of_the_same_counters(clock: FakeClock) -> None:
    for _ in range(2):
        limiter.hit("g", "k", "2/m")
    clock.advance(80)

    assert limiter.get("g", "k", "2/m").count == 0
    assert limiter.get("g", "k", "2/m", algorithm="sliding_window").count == 1


@pytest.mark.parametrize("rate", ["2/m", (2, 60), [2, 60], Rate(2, 60), (Rate(2, 60),)])
def test_rate_forms(rate: object) -> None:
    usages = [limiter.hit("g", "k", rate) for _ in range(3)]

    assert allowed(usages) == [True, True, False]
    assert (usages[0].limit, usages[0].period) == (2, 60)


def test_rate_none_cannot_be_hit() -> None:
    with pytest.raises(ValueError, match="no limit"):
        limiter.hit("g", "k", None)


@pytest.mark.parametrize("rate", ["2/M", "2 per minute", (2, 0), 5])
def test_bad_rate_raises(rate: object) -> None:
    with pytest.raises(InvalidRate):
        limiter.hit("g", "k", rate)


def test_name_sets_the_policy() -> None:
    usage = limiter.hit("g", "k", "2/m", name="login")

    assert (usage.name, usage.policy) == ("login", "login")
    assert limiter.get("g", "k", "2/m", name="x").policy == "x"


def test_zero_limit_refuses_everything() -> None:
    usage = limiter.hit("g", "k", "0/m")

    assert (usage.allowed, usage.remaining) == (False, 0)


# -- the process limiter ----------------------------------------------------------------------


def test_facade_reaches_the_installed_limiter(clock: FakeClock) -> None:
    installed = get_limiter()
    limiter.hit("g", "k", "2/m")

    assert installed.clock is clock
    assert installed.get("g", "k", "2/m").count == 1


def test_set_limiter_swaps_and_returns_the_old_one(clock: FakeClock) -> None:
    original = get_limiter()
    limiter.hit("g", "k", "1/m")
    replacement = Limiter(CounterStore(), clock=clock, sync=False)

    assert set_limiter(replacement) is original
    assert get_limiter() is replacement
    assert limiter.hit("g", "k", "1/m").allowed is True  # a new store: counts start over
    assert original.store.total(("g", "k", 60, int(clock.now) // 60 * 60)) == 1
    assert set_limiter(original) is replacement
    assert limiter.hit("g", "k", "1/m").allowed is False


def test_set_limiter_none_builds_a_fresh_one_on_next_use() -> None:
    installed = get_limiter()
    limiter.hit("g", "k", "1/m")

    assert set_limiter(None) is installed
    rebuilt = get_limiter()
    assert rebuilt is not installed
    assert get_limiter() is rebuilt
    assert limiter.get("g", "k", "1/m").count == 0


def test_changing_dratelimit_drops_the_process_limiter(clock: FakeClock) -> None:
    installed = get_limiter()
    with override_settings(DRATELIMIT={"MAX_KEYS": 7, "ALGORITHM": "sliding_window"}):
        rebuilt = get_limiter()
        assert rebuilt is not installed
        assert rebuilt.store.max_keys == 7
        set_limiter(Limiter(CounterStore(), clock=clock, sync=False))
        # No algorithm given: the DRATELIMIT default applies.
        assert limiter.hit("g", "k", "1/m").algorithm == "sliding_window"
    assert get_limiter().store.max_keys == 100_000


def bound_to(method: object) -> object:
    return getattr(method, "__self__", None)


def test_the_facade_is_the_process_limiter_itself() -> None:
    set_limiter(None)
    limiter.hit("g", "k", "1/m")  # the first call builds its state from settings
    built = get_limiter()
    # Its own bound methods: no forwarding call on the request path.
    assert built is limiter
    assert bound_to(limiter.hit) is built
    assert bound_to(limiter.get) is built
    assert bound_to(limiter.reset) is built
    assert limiter.get("g", "k", "1/m").count == 1
    assert limiter.reset("g", "k") == 1
    assert "facade" in repr(limiter)


def test_a_method_kept_from_before_a_swap_reaches_the_current_limiter(clock: FakeClock) -> None:
    kept_hit, kept_get, kept_reset = limiter.hit, limiter.get, limiter.reset
    before = get_limiter()
    replacement = Limiter(CounterStore(), clock=clock, sync=False)
    set_limiter(replacement)
    kept_hit("g", "k", "5/m")
    kept_hit("g", "k", "5/m", cost=2)
    assert replacement.get("g", "k", "5/m").count == 3
    assert kept_get("g", "k", "5/m").count == 3
    assert before.store.total(("g", "k", 60, int(clock.now) // 60 * 60)) == 0
    assert kept_reset("g", "k") == 1
    assert replacement.get("g", "k", "5/m").count == 0
    set_limiter(before)  # current again: it answers for itself
    assert kept_hit("g", "k", "5/m").count == 1
    assert before._fast is True


def test_a_method_kept_from_before_a_settings_change_follows_it(clock: FakeClock) -> None:
    set_limiter(None)
    kept_hit = limiter.hit
    kept_hit("g", "k", "5/m")
    with override_settings(DRATELIMIT={"ALGORITHM": "sliding_window"}):
        assert kept_hit("g", "k", "5/m").algorithm == "sliding_window"
        assert get_limiter().get("g", "k", "5/m").count == 1


@pytest.mark.parametrize("first", ["hit", "get", "reset"])
def test_any_facade_method_builds_the_limiter_first(first: str) -> None:
    set_limiter(None)
    args = ("g", "k") if first == "reset" else ("g", "k", "1/m")
    getattr(limiter, first)(*args)
    assert bound_to(getattr(limiter, first)) is get_limiter()


def test_the_facade_follows_a_swap(clock: FakeClock) -> None:
    replacement = Limiter(CounterStore(), clock=clock, sync=False)
    set_limiter(replacement)
    limiter.hit("g", "k", "1/m")
    assert replacement.get("g", "k", "1/m").count == 1
    set_limiter(None)
    limiter.hit("g", "k", "1/m")
    assert get_limiter() is not replacement
    assert get_limiter().get("g", "k", "1/m").count == 1
    assert replacement.get("g", "k", "1/m").count == 1  # no longer counted in


def test_changing_channel_layers_drops_the_process_limiter() -> None:
    installed = get_limiter()
    with override_settings(CHANNEL_LAYERS={}):
        assert get_limiter() is not installed


def test_hit_refuses_an_empty_group_or_key() -> None:
    from django_dratelimit.limiter import Limiter

    limiter = Limiter(sync=False)
    with pytest.raises(ValueError, match="non-empty"):
        limiter.hit("g", "", "1/m")
    with pytest.raises(ValueError, match="non-empty"):
        limiter.hit("", "k", "1/m")


def test_threads_wait_while_the_first_one_joins_the_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django_dratelimit.sync import thread as sync

    entered, joined = threading.Event(), threading.Event()
    order: list[str] = []

    def slow_start(store: CounterStore) -> None:
        entered.set()
        time.sleep(0.2)  # joining, and STARTUP_SYNC_WAIT: a while, not a synchronisation
        order.append("joined")
        joined.set()

    monkeypatch.setattr(sync, "start_sync", slow_start)
    fresh = Limiter(CounterStore())
    first = threading.Thread(target=fresh.hit, args=("g", "k", "5/m"))
    first.start()
    assert entered.wait(10)  # the first thread is inside start_sync, holding the lock
    fresh.hit("g", "k", "5/m")
    order.append("second decided")
    first.join()
    assert order == ["joined", "second decided"]
    assert fresh._fast is True


def test_a_failing_start_is_tried_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from django_dratelimit.sync import thread as sync

    calls: list[int] = []

    def broken(store: CounterStore) -> None:
        calls.append(1)
        raise RuntimeError("broken layer settings")

    monkeypatch.setattr(sync, "start_sync", broken)
    fresh = Limiter(CounterStore())
    with pytest.raises(RuntimeError):
        fresh.hit("g", "k", "5/m")
    assert fresh.hit("g", "k", "5/m").count == 1  # counted locally from then on
    assert calls == [1]


class FakeSync:
    """What start_sync() returns, minus the thread: it only records being stopped."""

    def __init__(self) -> None:
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


def test_a_replaced_limiter_starts_no_sync_and_a_reinstalled_one_starts_again(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    from django_dratelimit.sync import thread as sync

    started: list[FakeSync] = []

    def fake_start(store: CounterStore) -> FakeSync:
        started.append(FakeSync())
        return started[-1]

    monkeypatch.setattr(sync, "start_sync", fake_start)
    first = Limiter(CounterStore(), clock=clock)
    set_limiter(first)
    set_limiter(Limiter(CounterStore(), clock=clock, sync=False))  # before first's first use
    first.hit("g", "k", "5/m")
    assert started == []  # nobody would ever stop it
    set_limiter(first)
    kept_hit = limiter.hit
    kept_hit("g", "k", "5/m")
    assert len(started) == 1
    assert first.sync is not None
    set_limiter(None)
    assert started[0].stopped


def test_a_settings_change_stops_the_sync_and_the_next_use_starts_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django_dratelimit.sync import thread as sync

    started: list[FakeSync] = []

    def fake_start(store: CounterStore) -> FakeSync:
        started.append(FakeSync())
        return started[-1]

    monkeypatch.setattr(sync, "start_sync", fake_start)
    set_limiter(None)
    kept_hit = limiter.hit
    kept_hit("g", "k", "5/m")
    assert len(started) == 1
    with override_settings(DRATELIMIT={"MAX_KEYS": 7}):
        assert started[0].stopped
        assert kept_hit("g", "k", "5/m").count == 1  # a fresh store, and the same limiter
        assert len(started) == 2
        assert get_limiter().store.max_keys == 7
    assert started[1].stopped
    set_limiter(None)
