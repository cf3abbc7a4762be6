"""The ``algorithm`` and ``consistency`` arguments, checked where a user gives them."""

from __future__ import annotations

from .exceptions import ConfigurationError
from .local.algorithms import ALGORITHMS, BUCKET_ALGORITHMS, CONSISTENCIES, STRICT


def validate_choice(algorithm: str | None, consistency: str) -> None:
    """Raise ConfigurationError (a ValueError) for an unknown algorithm or consistency."""
    if algorithm is not None and algorithm not in ALGORITHMS:
        raise ConfigurationError(
            f"unknown algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}"
        )
    if consistency not in CONSISTENCIES:
        raise ConfigurationError(f"unknown consistency {consistency!r}; use 'eventual' or 'strict'")
    if consistency == STRICT and algorithm in BUCKET_ALGORITHMS:
        raise ConfigurationError(
            "consistency 'strict' works with fixed_window and sliding_window only"
        )
