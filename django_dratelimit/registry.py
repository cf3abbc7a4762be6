"""The static rates this process knows by group, so ``ratelimit inspect`` can show limits."""

from __future__ import annotations

from .rates import Rate, is_dynamic, parse_rate

_known: dict[str, tuple[Rate, ...]] = {}
_strict: set[str] = set()
# group -> (limit, period, method scope) of its scoped (decorator) limits, for strict resets.
_scopes: dict[str, set[tuple[int, int, str]]] = {}


def register(group: str, rate: object, strict: bool = False, scope: str | None = None) -> None:
    """Remember a decorator's or rule's rate (dynamic rates are only known per request)."""
    if strict:
        _strict.add(group)
    if is_dynamic(rate):
        return
    parsed = parse_rate(rate)
    if parsed is not None:
        _known[group] = parsed
        if scope is not None:
            _scopes.setdefault(group, set()).update((r.limit, r.period, scope) for r in parsed)


def known_rates() -> dict[str, list[list[int]]]:
    """``{group: [[limit, period], ...]}`` for every registered group."""
    return {group: [[r.limit, r.period] for r in rates] for group, rates in _known.items()}


def strict_groups() -> set[str]:
    """Groups counted in the strict cache (their resets must reach it too)."""
    return set(_strict)


def known_periods(group: str) -> list[int]:
    return [rate.period for rate in _known.get(group, ())]


def known_scopes(group: str) -> list[tuple[int, int, str]]:
    """The (limit, period, method scope) of each static scoped limit of ``group``."""
    return sorted(_scopes.get(group, ()))
