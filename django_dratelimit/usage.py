"""The answer to "may this hit go through?": a Usage, readable like django-ratelimit's dict."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

_MAPPING_KEYS = ("count", "limit", "should_limit", "time_left", "remaining", "reset_at")


class Usage(Mapping[str, Any]):
    """The state of one rate for one key after (or without) a hit.

    A plain slots class rather than a frozen dataclass: it is built on every
    request, and a frozen dataclass costs five times as much to construct.
    """

    __slots__ = (
        "algorithm",
        "count",
        "group",
        "key",
        "limit",
        "name",
        "others",
        "period",
        "reset_at",
        "should_limit",
        "time_left",
    )

    def __init__(
        self,
        group: str,
        key: str,
        count: int,
        limit: int,
        period: int,
        should_limit: bool,
        time_left: float,
        reset_at: float,
        algorithm: str = "fixed_window",
        name: str = "",
        others: tuple[Usage, ...] = (),
    ) -> None:
        self.group = group
        self.key = key
        self.count = count
        self.limit = limit
        self.period = period
        self.should_limit = should_limit
        self.time_left = time_left
        self.reset_at = reset_at
        self.algorithm = algorithm
        self.name = name
        self.others = others

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.count)

    @property
    def allowed(self) -> bool:
        return not self.should_limit

    @property
    def retry_after(self) -> int:
        """Whole seconds to wait before retrying (at least 1), as in ``Retry-After``."""
        return max(1, math.ceil(self.time_left))

    @property
    def policy(self) -> str:
        """The policy name used in the RateLimit headers."""
        return self.name or self.group

    def __getitem__(self, name: str) -> Any:
        if name not in _MAPPING_KEYS:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(_MAPPING_KEYS)

    def __len__(self) -> int:
        return len(_MAPPING_KEYS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Usage):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self.__slots__ if s != "others")

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Usage(group={self.group!r}, key={self.key!r}, count={self.count}, "
            f"limit={self.limit}, period={self.period}, should_limit={self.should_limit}, "
            f"time_left={self.time_left:.3f})"
        )

    def with_name(self, name: str) -> Usage:
        return Usage(
            self.group,
            self.key,
            self.count,
            self.limit,
            self.period,
            self.should_limit,
            self.time_left,
            self.reset_at,
            self.algorithm,
            name,
            self.others,
        )


def most_restrictive(usages: list[Usage]) -> Usage:
    """The usage that decides: a limiting one with the longest wait, else the least room."""
    limiting = [u for u in usages if u.should_limit]
    if limiting:
        return max(limiting, key=lambda u: u.time_left)
    return min(usages, key=lambda u: (u.remaining / u.limit if u.limit else 0.0, -u.time_left))
