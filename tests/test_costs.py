"""A request may count for several hits: ``cost=N``, a cost callable, a rule's "cost"."""

from __future__ import annotations

from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory, override_settings

from django_dratelimit import ratelimit
from django_dratelimit.checks import check_settings
from django_dratelimit.costs import MAX_COST, InvalidCost, compile_cost, resolve_cost
from django_dratelimit.exceptions import Ratelimited
from django_dratelimit.limiter import Limiter, set_limiter
from django_dratelimit.local.store import CounterStore
from tests.conftest import FakeClock
from tests.scoped import seconds_left


def rows(group: str, request: HttpRequest) -> int:
    return int(request.GET.get("rows", "1"))


def broken_cost(group: str, request: HttpRequest) -> int:
    raise RuntimeError("no cost today")


@pytest.mark.parametrize("bad", [0, -1, MAX_COST + 1, 1.5, True, "tests.no_such.cost", None])
def test_invalid_costs_are_rejected(bad: Any) -> None:
    with pytest.raises(InvalidCost):
        compile_cost(bad)


def test_a_failing_cost_callable_counts_once(caplog: pytest.LogCaptureFixture) -> None:
    request = RequestFactory().get("/")
    assert resolve_cost(broken_cost, "cost-group", request) == 1
    assert resolve_cost(lambda g, r: 0, "cost-group-2", request) == 1  # not a valid cost
    assert "cost callable of group 'cost-group' failed" in caplog.text


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "token_bucket"])
def test_decorator_cost_counts_several_hits(algorithm: str, clock: FakeClock) -> None:
    clock.now = 1_700_000_000 - 1_700_000_000 % 960  # an epoch start for 60 s buckets
    set_limiter(Limiter(CounterStore(), clock=clock, sync=False))

    @ratelimit(key="ip", rate="10/m", cost="tests.test_costs.rows", algorithm=algorithm)
    def export(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    factory = RequestFactory()
    assert export(factory.get("/", {"rows": "6"})).status_code == 200
    assert export(factory.get("/", {"rows": "4"})).status_code == 200
    with pytest.raises(Ratelimited):
        export(factory.get("/", {"rows": "1"}))


def test_rule_cost_and_its_check(client: Any, clock: FakeClock) -> None:
    rule = {"name": "bulk", "path": r"^/api/", "key": "ip", "rate": "5/m", "cost": 3}
    with override_settings(DRATELIMIT={"RULES": [rule]}):
        set_limiter(Limiter(CounterStore(), clock=clock, sync=False))
        assert client.get("/api/thing/").status_code == 200
        second = client.get("/api/thing/")
        assert second.status_code == 429
        left = round(seconds_left("bulk", "127.0.0.1", 60, clock.now))
        assert second.headers["RateLimit"] == f'"bulk";r=0;t={left}'
    with override_settings(DRATELIMIT={"RULES": [{**rule, "cost": 0}]}):
        assert [m.id for m in check_settings()] == ["dratelimit.E024"]
