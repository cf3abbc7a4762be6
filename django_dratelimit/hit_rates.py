"""The ``rate`` argument of ``limiter.hit``, parsed once per distinct string."""

from __future__ import annotations

from typing import Any

from .rates import Rate, parse_rate, parse_rate_string


class SingleRates(dict[str, "tuple[int, int] | None"]):
    """Rate string -> (period, limit) when it is one rate, else None; filled on first use.

    ``hit``'s inline path reads it: one dict lookup instead of a parse.
    """

    def __missing__(self, text: str) -> tuple[int, int] | None:
        try:
            rates = parse_rate_string(text)
        except ValueError:
            return None  # the slow path raises the proper error
        value = (rates[0].period, rates[0].limit) if len(rates) == 1 else None
        if len(self) < 1024:
            self[text] = value
        return value


SINGLE_RATES = SingleRates()


def hit_rates(rate: Any) -> tuple[Rate, ...]:
    """The rates of a ``hit``/``get`` call: a rate spec, or Rates already parsed."""
    if isinstance(rate, tuple) and rate and isinstance(rate[0], Rate):
        return rate
    parsed = parse_rate(rate)
    if parsed is None:
        raise ValueError("rate None means no limit: there is nothing to hit")
    return parsed
